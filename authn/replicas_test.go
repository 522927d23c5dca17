package authn

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/ztna-dev/ztna/internal/bus"
)

// announced records what a keeper told the other replicas.
type announced struct {
	mu     sync.Mutex
	events []bus.Event
}

func (a *announced) publish(kind, key string) {
	a.mu.Lock()
	a.events = append(a.events, bus.Event{Kind: kind, Key: key})
	a.mu.Unlock()
}

func (a *announced) has(kind, key string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Contains(a.events, bus.Event{Kind: kind, Key: key})
}

// TestSessionsAcrossReplicas: two keepers over one store, as two replicas
// over Redis. What one revokes or updates it announces; the other applies
// it from the store (its cached copy goes, its hooks run), checks the store
// rather than trusting the event, and after a gap resyncs.
func TestSessionsAcrossReplicas(t *testing.T) {
	ctx := t.Context()
	st := newMemoryStore(t)
	a, _ := newTestSessions(t, st, SessionsConfig{})
	b, _ := newTestSessions(t, st, SessionsConfig{})
	var told announced
	a.Announce(told.publish)
	var bRevoked revocations
	b.OnRevoke(bRevoked.record)
	var bUpdated []string
	b.OnUpdate(func(s *Session) { bUpdated = append(bUpdated, s.Identity.Attributes["department"]) })

	s, err := a.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, s.ID); err != nil { // cached on b
		t.Fatal(err)
	}

	// An event about a session the store still holds changes nothing.
	b.Forget(ctx, s.Key)
	if len(bRevoked.list()) != 0 {
		t.Fatal("b ended a live session on an event the store contradicts")
	}
	b.Forget(ctx, "not-a-key")
	b.Reread(ctx, "../../etc")
	if _, err := b.Get(ctx, s.ID); err != nil { // Forget dropped b's copy: read again
		t.Fatal(err)
	}

	// Updated on a: b rereads it and re-decides with the new attributes.
	upd := *s
	upd.Identity.Attributes = map[string]string{"department": "Security Policy"}
	if err := a.Update(ctx, &upd); err != nil {
		t.Fatal(err)
	}
	if !told.has(bus.SessionUpdated, s.Key) {
		t.Fatalf("a did not announce the update: %+v", told.events)
	}
	b.Reread(ctx, s.Key)
	if len(bUpdated) != 1 || bUpdated[0] != "Security Policy" {
		t.Fatalf("b's update hooks saw %v", bUpdated)
	}
	if got, err := b.Get(ctx, s.ID); err != nil || got.Identity.Attributes["department"] != "Security Policy" {
		t.Fatalf("b serves %+v, %v after the reread", got, err)
	}

	// Revoked on a: b's cached copy goes and its hooks close live
	// connections.
	if err := a.Revoke(ctx, s.Key); err != nil {
		t.Fatal(err)
	}
	if !told.has(bus.SessionRevoked, s.Key) {
		t.Fatalf("a did not announce the revocation: %+v", told.events)
	}
	b.Forget(ctx, s.Key)
	if !bRevoked.has(s.Key) {
		t.Fatal("b did not end the revoked session")
	}
	if _, err := b.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Fatalf("b still serves the revoked session: %v", err)
	}

	// A missed event: after a resync b ends the live sessions the store
	// no longer holds, keeps the others, and rereads everything.
	gone, err := a.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := a.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []*Session{gone, kept} {
		if _, err := b.Get(ctx, x.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Revoke(ctx, gone.Key); err != nil { // b never hears of it
		t.Fatal(err)
	}
	b.Resync(ctx, []string{gone.Key, kept.Key})
	if !bRevoked.has(gone.Key) || bRevoked.has(kept.Key) {
		t.Fatalf("after the resync b ended %v", bRevoked.list())
	}
	if b.cached(kept.Key) != nil {
		t.Error("the resync kept a cached copy")
	}
	if _, err := b.Get(ctx, kept.ID); err != nil {
		t.Errorf("b lost a live session in the resync: %v", err)
	}
}
