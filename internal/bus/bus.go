// Package bus carries trust events between the edge's replicas: a session
// revoked or refreshed, a device revoked, a quarantine changed, a posture
// report accepted, a policy version applied. The replica where it happened
// publishes the event after writing the change to the shared store; every
// other replica applies it from the store (drops its cached copy, re-reads,
// closes the live connections no longer allowed). Events carry only what
// changed — a kind and a key — never the record, so nothing secret travels
// on the bus and the store stays the one source of truth.
//
// Delivery is best effort (Redis pub/sub drops messages while a replica is
// disconnected), so a subscriber is told when it may have missed events and
// reconciles from the store before trusting its caches again (Resync).
//
// What it must never do: block the caller of Publish (events are queued,
// bounded, and dropped with a count when the queue is full — the store has
// the change and the next resync finds it); carry record contents; deliver
// a replica's own events back to it.
package bus

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Event kinds.
const (
	SessionRevoked = "session_revoked" // Key: the session key
	SessionUpdated = "session_updated" // Key: the session key (new attributes)
	DeviceRevoked  = "device_revoked"  // Key: the device ID
	Quarantine     = "quarantine"      // Key: "" (reload the registry)
	Report         = "report"          // Key: the device ID
	Policy         = "policy"          // Key: the policy version now applied
)

// MaxKey bounds an event's key (session keys are 64 hex characters).
const MaxKey = 256

// Event is one change another replica made.
type Event struct {
	Kind   string `json:"k"`
	Key    string `json:"id,omitempty"`
	Origin string `json:"o"` // the publishing replica's ID
}

// Handler receives the bus's events from other replicas, in the order they
// were published by each replica, on one goroutine. Resync is called when
// events may have been missed (a reconnect) and once when the subscription
// starts; handlers reconcile from the store there.
type Handler interface {
	Event(Event)
	Resync()
}

// Bus publishes this replica's events and delivers the others'.
type Bus interface {
	// Publish queues e for the other replicas; it never blocks.
	Publish(kind, key string)
	// Connected reports whether the bus is connected now, and since when
	// it has been disconnected otherwise (zero while connected).
	Connected() (ok bool, downSince time.Time)
	// Close stops delivery and waits for the bus's goroutines.
	Close() error
	// ID names this replica (random per process; "local" for one replica).
	ID() string
}

// Publisher is how a registry tells the other replicas about a change it
// made (a Bus's Publish). The zero value, nil, is a single replica: there
// is nobody to tell, and Tell does nothing.
type Publisher func(kind, key string)

// Tell publishes the event, if there is anyone to tell.
func (p Publisher) Tell(kind, key string) {
	if p != nil {
		p(kind, key)
	}
}

// errBadEvent is wrapped by every decode error.
var errBadEvent = errors.New("bus: bad event")

// decode parses and checks one message.
func decode(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return Event{}, fmt.Errorf("%w: %v", errBadEvent, err)
	}
	switch e.Kind {
	case SessionRevoked, SessionUpdated, DeviceRevoked, Quarantine, Report, Policy:
	default:
		return Event{}, fmt.Errorf("%w: kind %q", errBadEvent, truncate(e.Kind))
	}
	if len(e.Key) > MaxKey || e.Origin == "" || len(e.Origin) > MaxKey {
		return Event{}, fmt.Errorf("%w: key or origin out of bounds", errBadEvent)
	}
	return e, nil
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

// Local is the bus of a single replica: there is nobody to tell.
type Local struct{}

func (Local) Publish(string, string)       {}
func (Local) Connected() (bool, time.Time) { return true, time.Time{} }
func (Local) Close() error                 { return nil }
func (Local) ID() string                   { return "local" }
