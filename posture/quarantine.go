package posture

// The quarantine registry: which devices and users are isolated, and why.
// Records live in the shared store (bucket "quarantine", key kind:id, no
// expiry) so they survive restarts; every replica keeps all of them in
// memory, so the per-request check is a map read. Memory is authoritative
// for the replica that holds it: a replica learns of another replica's
// changes when Load runs again (at start-up, and later when the revocation
// bus says so), and Load reconciles memory with the store.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ztna-dev/ztna/internal/bus"
	"github.com/ztna-dev/ztna/internal/store"
)

// Quarantine subject kinds.
const (
	QuarantineDevice = "device"
	QuarantineUser   = "user"
)

const (
	bucketQuarantine = "quarantine"
	// MaxQuarantined bounds the entries a Quarantine holds (devices and
	// users together), so a flood of signals cannot exhaust memory.
	MaxQuarantined = 100_000
)

var (
	// ErrInvalidQuarantine: an entry, kind or ID that Isolate or Release
	// cannot accept.
	ErrInvalidQuarantine = errors.New("posture: invalid quarantine entry")
	// ErrQuarantineFull: MaxQuarantined subjects are isolated already.
	ErrQuarantineFull = errors.New("posture: quarantine full")
)

// QuarantineEntry says a device or user is isolated and why.
type QuarantineEntry struct {
	Kind     string   `json:"kind"`   // QuarantineDevice or QuarantineUser
	ID       string   `json:"id"`     // device ID or user ID (OIDC subject)
	Reason   string   `json:"reason"` // what was detected (for the inform page); required
	Fix      string   `json:"fix"`    // how to fix it / what happens next (for the inform page)
	Source   string   `json:"source"` // falco, crowdstrike, admin, …
	Rule     string   `json:"rule,omitempty"`
	Severity Severity `json:"severity"`
	// At is when the edge first isolated the subject; a later isolation of
	// the same subject keeps it. Zero in Isolate means now.
	At time.Time `json:"at"`
	// LastAt is when the latest isolation of the subject was recorded
	// (Isolate sets it). Auto-release compares with it, so a report
	// collected between two detections does not release the second.
	LastAt time.Time `json:"last_at,omitzero"`
	// SignalAt is when the (first) signal arrived at the edge, for MTTR.
	SignalAt time.Time `json:"signal_at,omitzero"`
	// AutoRelease: a fresh passing report collected after LastAt releases
	// the subject. A re-isolation keeps it only if both isolations allowed
	// it, so a milder signal cannot make a manual-release quarantine
	// automatic.
	AutoRelease bool `json:"auto_release,omitempty"`
}

// LogValue keeps log lines short.
func (e QuarantineEntry) LogValue() slog.Value {
	return slog.GroupValue(slog.String("kind", e.Kind), slog.String("id", e.ID), slog.String("source", e.Source),
		slog.String("rule", e.Rule), slog.String("severity", e.Severity.String()))
}

func quarantineKey(kind, id string) string { return kind + ":" + id }

// checkSubject validates a quarantine subject.
func checkSubject(kind, id string) error {
	switch kind {
	case QuarantineDevice:
		if err := checkDeviceID(id); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidQuarantine, err)
		}
	case QuarantineUser:
		if err := checkUserID(id); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidQuarantine, err)
		}
	default:
		return fmt.Errorf("%w: kind %q is not %s or %s", ErrInvalidQuarantine, truncateForError(kind), QuarantineDevice, QuarantineUser)
	}
	return nil
}

// validate checks what Isolate stores and Load accepts: a valid subject,
// printable bounded texts, a known severity.
func (e *QuarantineEntry) validate() error {
	if err := checkSubject(e.Kind, e.ID); err != nil {
		return err
	}
	if strings.TrimSpace(e.Reason) == "" {
		return fmt.Errorf("%w: reason is required", ErrInvalidQuarantine)
	}
	for _, f := range [...]struct{ name, v string }{{"reason", e.Reason}, {"fix", e.Fix}, {"rule", e.Rule}} {
		if _, err := signalText(f.name, f.v, MaxStringLen); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidQuarantine, err)
		}
	}
	if e.Source != "" && !isSourceName(e.Source) {
		return fmt.Errorf("%w: source: want 1-%d letters, digits, '-', '_' or '.'", ErrInvalidQuarantine, maxSignalSourceLen)
	}
	if !e.Severity.valid() {
		return fmt.Errorf("%w: severity %d", ErrInvalidQuarantine, int(e.Severity))
	}
	return nil
}

func (e *QuarantineEntry) equal(o *QuarantineEntry) bool {
	return e.Kind == o.Kind && e.ID == o.ID && e.Reason == o.Reason && e.Fix == o.Fix && e.Source == o.Source &&
		e.Rule == o.Rule && e.Severity == o.Severity && e.At.Equal(o.At) && e.LastAt.Equal(o.LastAt) &&
		e.SignalAt.Equal(o.SignalAt) && e.AutoRelease == o.AutoRelease
}

// Quarantine is the registry of isolated devices and users over a
// store.Store, with every entry in memory. It is safe for concurrent use.
type Quarantine struct {
	st     store.Store
	logger *slog.Logger
	now    func() time.Time
	max    int // MaxQuarantined; smaller in tests

	// writeMu serialises changes on this replica (store write, memory
	// update, callbacks), so memory and callbacks follow the order of the
	// store writes.
	writeMu sync.Mutex

	mu      sync.RWMutex
	devices map[string]QuarantineEntry
	users   map[string]QuarantineEntry

	onChangeMu sync.RWMutex
	onChange   []func(e QuarantineEntry, released bool)

	announce bus.Publisher // tells the other replicas

	// unstored holds the isolations the store refused (by store key): they
	// are in memory only, so Load keeps them (and tries to store them
	// again) rather than releasing a subject because the store lost it.
	unstored map[string]QuarantineEntry
}

// Announce sets how this registry tells the edge's other replicas that it
// changed (bus.Quarantine), after the store has the change; they Load.
// Call it before use.
func (q *Quarantine) Announce(publish bus.Publisher) { q.announce = publish }

// NewQuarantine returns an empty registry over st; call Load to read the
// stored entries. A nil logger discards.
func NewQuarantine(st store.Store, logger *slog.Logger) *Quarantine {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Quarantine{
		st:      st,
		logger:  logger,
		now:     time.Now,
		max:     MaxQuarantined,
		devices: make(map[string]QuarantineEntry),
		users:   make(map[string]QuarantineEntry),
	}
}

// OnChange registers fn to be called after every change this registry
// makes or learns of: (entry, false) when a subject is isolated or its
// entry replaced, (entry, true) when it is released. Callbacks run
// synchronously, in registration order, after the store write and the
// memory update and while changes are serialised, so they see changes in
// order. fn must not block and must not call Isolate, Release or Load (it
// may call Device, User and List).
func (q *Quarantine) OnChange(fn func(e QuarantineEntry, released bool)) {
	q.onChangeMu.Lock()
	q.onChange = append(q.onChange, fn)
	q.onChangeMu.Unlock()
}

func (q *Quarantine) notify(e QuarantineEntry, released bool) {
	q.onChangeMu.RLock()
	fns := q.onChange
	q.onChangeMu.RUnlock()
	for _, fn := range fns {
		fn(e, released)
	}
}

// Device returns the quarantine entry of the device, if it is isolated.
// It reads memory only and does not allocate.
func (q *Quarantine) Device(id string) (QuarantineEntry, bool) {
	q.mu.RLock()
	e, ok := q.devices[id]
	q.mu.RUnlock()
	return e, ok
}

// User returns the quarantine entry of the user, if isolated. It reads
// memory only and does not allocate.
func (q *Quarantine) User(id string) (QuarantineEntry, bool) {
	q.mu.RLock()
	e, ok := q.users[id]
	q.mu.RUnlock()
	return e, ok
}

// Len returns how many devices and users are quarantined.
func (q *Quarantine) Len() int {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return len(q.devices) + len(q.users)
}

// List returns every entry, earliest At first (ties by kind, then ID).
func (q *Quarantine) List() []QuarantineEntry {
	q.mu.RLock()
	out := make([]QuarantineEntry, 0, len(q.devices)+len(q.users))
	for _, e := range q.devices {
		out = append(out, e)
	}
	for _, e := range q.users {
		out = append(out, e)
	}
	q.mu.RUnlock()
	slices.SortFunc(out, func(a, b QuarantineEntry) int {
		if c := a.At.Compare(b.At); c != 0 {
			return c
		}
		if c := strings.Compare(a.Kind, b.Kind); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

func (q *Quarantine) memory(kind string) map[string]QuarantineEntry {
	if kind == QuarantineUser {
		return q.users
	}
	return q.devices
}

func (q *Quarantine) lookup(kind, id string) (QuarantineEntry, bool) {
	if kind == QuarantineUser {
		return q.User(id)
	}
	return q.Device(id)
}

// Isolate records that e.Kind/e.ID is isolated and returns whether it was
// not isolated before. e must name a valid subject and carry a reason; the
// texts must be printable and, trimmed, at most MaxStringLen bytes
// (ParseFalco and ParseSignal produce such strings). A zero e.At means now;
// LastAt is set to it.
//
// An existing entry for the subject (in the store, or in memory when the
// store cannot be read) is replaced, but keeps its earlier At and
// SignalAt, and stays AutoRelease only if both are.
//
// Isolating fails closed: when the store write fails the subject is still
// isolated on this replica (memory and callbacks), and the error is
// returned because the entry is then neither shared with other replicas
// nor kept across a restart.
func (q *Quarantine) Isolate(ctx context.Context, e QuarantineEntry) (isNew bool, err error) {
	e.Reason, e.Fix, e.Rule = strings.TrimSpace(e.Reason), strings.TrimSpace(e.Fix), strings.TrimSpace(e.Rule)
	if err := e.validate(); err != nil {
		return false, err
	}
	if e.At.IsZero() {
		e.At = q.now()
	}
	e.LastAt = e.At
	key := quarantineKey(e.Kind, e.ID)

	q.writeMu.Lock()
	defer q.writeMu.Unlock()

	prev, havePrev, storeErr := q.stored(ctx, key)
	if storeErr != nil {
		// The store is the shared truth; without it, this replica's
		// memory is the best knowledge of an earlier isolation.
		prev, havePrev = q.lookup(e.Kind, e.ID)
	}
	if !havePrev {
		q.mu.RLock()
		n := len(q.devices) + len(q.users)
		_, inMemory := q.memory(e.Kind)[e.ID]
		q.mu.RUnlock()
		if n >= q.max && !inMemory {
			q.logger.Error("quarantine full; subject not isolated", "entry", e, "limit", q.max)
			return false, fmt.Errorf("%w: %d entries", ErrQuarantineFull, q.max)
		}
	} else {
		if prev.At.Before(e.At) {
			e.At = prev.At
		}
		if !prev.SignalAt.IsZero() && (e.SignalAt.IsZero() || prev.SignalAt.Before(e.SignalAt)) {
			e.SignalAt = prev.SignalAt
		}
		e.AutoRelease = e.AutoRelease && prev.AutoRelease
	}

	if storeErr == nil {
		b, err := json.Marshal(&e)
		if err != nil {
			return false, fmt.Errorf("posture: encode quarantine entry: %w", err)
		}
		if err := q.st.Put(ctx, bucketQuarantine, key, b, 0); err != nil {
			storeErr = err
		}
	}

	q.mu.Lock()
	q.memory(e.Kind)[e.ID] = e
	q.mu.Unlock()

	if storeErr != nil {
		if q.unstored == nil {
			q.unstored = make(map[string]QuarantineEntry)
		}
		q.unstored[key] = e
		q.logger.Error("quarantine not stored; isolated on this replica only", "entry", e, "err", storeErr)
	} else {
		delete(q.unstored, key)
		q.logger.Info("quarantined", "entry", e, "new", !havePrev)
	}
	q.notify(e, false)
	if storeErr != nil {
		return !havePrev, fmt.Errorf("posture: store quarantine of %s %s: %w", e.Kind, e.ID, storeErr)
	}
	q.announce.Tell(bus.Quarantine, "")
	return !havePrev, nil
}

// stored reads the stored entry under key. An unreadable record counts as
// absent (Isolate overwrites it, Load skips it).
func (q *Quarantine) stored(ctx context.Context, key string) (QuarantineEntry, bool, error) {
	b, err := q.st.Get(ctx, bucketQuarantine, key)
	if errors.Is(err, store.ErrNotFound) {
		return QuarantineEntry{}, false, nil
	}
	if err != nil {
		return QuarantineEntry{}, false, err
	}
	e, err := decodeQuarantine(key, b)
	if err != nil {
		q.logger.Warn("unreadable quarantine record", "key", key, "err", err)
		return QuarantineEntry{}, false, nil
	}
	return e, true, nil
}

func decodeQuarantine(key string, b []byte) (QuarantineEntry, error) {
	var e QuarantineEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return QuarantineEntry{}, err
	}
	if err := e.validate(); err != nil {
		return QuarantineEntry{}, err
	}
	if quarantineKey(e.Kind, e.ID) != key {
		return QuarantineEntry{}, fmt.Errorf("record names %s %q", e.Kind, truncateForError(e.ID))
	}
	return e, nil
}

// Release ends the isolation of kind/id, on behalf of by (an admin's user
// ID, "auto-release", … — it is only logged). It returns the released
// entry and whether there was one (in the store or in this replica's
// memory). A store failure leaves the subject isolated (fail closed) and is
// returned.
func (q *Quarantine) Release(ctx context.Context, kind, id, by string) (QuarantineEntry, bool, error) {
	if err := checkSubject(kind, id); err != nil {
		return QuarantineEntry{}, false, err
	}
	key := quarantineKey(kind, id)

	q.writeMu.Lock()
	defer q.writeMu.Unlock()

	// Take, so that of two replicas releasing at once one gets the record.
	b, err := q.st.Take(ctx, bucketQuarantine, key)
	inStore := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return QuarantineEntry{}, false, fmt.Errorf("posture: release %s %s: %w", kind, id, err)
	}
	q.mu.Lock()
	mem, inMemory := q.memory(kind)[id]
	delete(q.memory(kind), id)
	q.mu.Unlock()
	delete(q.unstored, key)
	if !inStore && !inMemory {
		return QuarantineEntry{}, false, nil
	}
	e := mem
	if inStore {
		if se, err := decodeQuarantine(key, b); err == nil {
			e = se
		} else if !inMemory {
			e = QuarantineEntry{Kind: kind, ID: id}
		}
	}
	q.logger.Info("quarantine released", "entry", e, "by", cleanReason(by), "since", e.At)
	q.notify(e, true)
	q.announce.Tell(bus.Quarantine, "")
	return e, true, nil
}

// Load reads every stored entry into memory, replacing what memory held,
// and calls the OnChange callbacks for each difference: new or changed
// entries as isolated, entries gone from the store as released. Unreadable
// records are logged and skipped. On a store error memory is unchanged.
func (q *Quarantine) Load(ctx context.Context) error {
	q.writeMu.Lock()
	defer q.writeMu.Unlock()

	devices := make(map[string]QuarantineEntry)
	users := make(map[string]QuarantineEntry)
	n := 0
	err := q.st.List(ctx, bucketQuarantine, "", func(key string, v []byte) bool {
		e, err := decodeQuarantine(key, v)
		if err != nil {
			q.logger.Warn("skipping unreadable quarantine record", "key", truncateForError(key), "err", err)
			return true
		}
		if n == q.max {
			q.logger.Error("more quarantine records than the limit; the rest are not loaded", "limit", q.max)
			return false
		}
		n++
		if e.Kind == QuarantineUser {
			users[e.ID] = e
		} else {
			devices[e.ID] = e
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("posture: load quarantine: %w", err)
	}
	// Isolations only this replica knows (the store refused them) stay,
	// and are stored now if the store takes them.
	for key, e := range q.unstored {
		target := devices
		if e.Kind == QuarantineUser {
			target = users
		}
		if _, ok := target[e.ID]; !ok {
			target[e.ID] = e
		}
		if b, err := json.Marshal(&e); err == nil && q.st.Put(ctx, bucketQuarantine, key, b, 0) == nil {
			delete(q.unstored, key)
			q.announce.Tell(bus.Quarantine, "")
		}
	}

	q.mu.Lock()
	oldDevices, oldUsers := q.devices, q.users
	q.devices, q.users = devices, users
	q.mu.Unlock()

	for _, pair := range [...][2]map[string]QuarantineEntry{{oldDevices, devices}, {oldUsers, users}} {
		old, cur := pair[0], pair[1]
		for id, e := range cur {
			if o, ok := old[id]; !ok || !o.equal(&e) {
				q.notify(e, false)
			}
		}
		for id, o := range old {
			if _, ok := cur[id]; !ok {
				q.notify(o, true)
			}
		}
	}
	return nil
}
