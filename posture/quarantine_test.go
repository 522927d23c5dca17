package posture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/memory"
)

var quarantineT0 = time.Date(2025, 3, 4, 10, 0, 0, 0, time.UTC)

func newTestQuarantine(t *testing.T, st store.Store) (*Quarantine, *testClock) {
	t.Helper()
	clk := &testClock{t: quarantineT0}
	q := NewQuarantine(st, nil)
	q.now = clk.Now
	return q, clk
}

// newQuarantineMemoryStore returns a memory store with a leak check
// registered before its cleanup, so the check runs after it is closed.
func newQuarantineMemoryStore(t *testing.T) *memory.Store {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	st := memory.New(memory.Options{})
	t.Cleanup(func() { st.Close() })
	return st
}

func deviceEntry(id, reason string) QuarantineEntry {
	return QuarantineEntry{Kind: QuarantineDevice, ID: id, Reason: reason, Fix: "Reinstall the EDR", Source: "falco", Rule: "Terminal shell in container", Severity: SeverityCritical}
}

type changeEvent struct {
	cb       int
	kind, id string
	reason   string
	released bool
	// visible: whether Device/User showed the subject isolated from inside
	// the callback.
	visible bool
}

// recordChanges registers n callbacks that append to the returned log.
func recordChanges(q *Quarantine, n int) func() []changeEvent {
	var mu sync.Mutex
	var log []changeEvent
	for i := range n {
		q.OnChange(func(e QuarantineEntry, released bool) {
			_, visible := q.lookup(e.Kind, e.ID)
			mu.Lock()
			log = append(log, changeEvent{cb: i, kind: e.Kind, id: e.ID, reason: e.Reason, released: released, visible: visible})
			mu.Unlock()
		})
	}
	return func() []changeEvent {
		mu.Lock()
		defer mu.Unlock()
		return append([]changeEvent(nil), log...)
	}
}

func TestQuarantineIsolateRelease(t *testing.T) {
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := t.Context()
		q, clk := newTestQuarantine(t, st)

		e := deviceEntry("dev-a", "Shell in container")
		e.SignalAt = quarantineT0.Add(-time.Second)
		e.AutoRelease = true
		isNew, err := q.Isolate(ctx, e)
		if err != nil || !isNew {
			t.Fatalf("Isolate = %v, %v", isNew, err)
		}
		got, ok := q.Device("dev-a")
		if !ok || got.At != quarantineT0 || got.LastAt != quarantineT0 || got.Reason != e.Reason || !got.AutoRelease {
			t.Fatalf("Device = %+v, %v", got, ok)
		}
		if _, ok := q.User("dev-a"); ok {
			t.Error("a device ID shows up as a user")
		}
		if _, ok := q.Device("dev-b"); ok {
			t.Error("dev-b isolated")
		}

		// A second isolation replaces the entry but keeps the earliest
		// times, and cannot make it auto-release.
		t1 := clk.Advance(time.Minute)
		e2 := deviceEntry("dev-a", "Crypto miner")
		e2.Severity = SeverityWarning
		e2.SignalAt = t1
		e2.AutoRelease = false
		if isNew, err = q.Isolate(ctx, e2); err != nil || isNew {
			t.Fatalf("second Isolate = %v, %v", isNew, err)
		}
		got, _ = q.Device("dev-a")
		want := e2
		want.At, want.LastAt, want.SignalAt, want.AutoRelease = quarantineT0, t1, e.SignalAt, false
		if !got.equal(&want) {
			t.Fatalf("after replace\n got %+v\nwant %+v", got, want)
		}
		e3 := deviceEntry("dev-a", "Again")
		e3.AutoRelease = true
		if _, err := q.Isolate(ctx, e3); err != nil {
			t.Fatal(err)
		}
		if got, _ = q.Device("dev-a"); got.AutoRelease {
			t.Error("a re-isolation made a manual-release quarantine automatic")
		}

		u := QuarantineEntry{Kind: QuarantineUser, ID: "alice@example.com", Reason: "Impossible travel", Source: "admin", At: quarantineT0.Add(-time.Hour)}
		if isNew, err := q.Isolate(ctx, u); err != nil || !isNew {
			t.Fatalf("Isolate user = %v, %v", isNew, err)
		}
		if got, ok := q.User("alice@example.com"); !ok || !got.At.Equal(u.At) {
			t.Fatalf("User = %+v, %v (an explicit At is kept)", got, ok)
		}
		list := q.List()
		if len(list) != 2 || list[0].Kind != QuarantineUser || list[1].ID != "dev-a" {
			t.Fatalf("List = %+v", list)
		}

		rel, ok, err := q.Release(ctx, QuarantineDevice, "dev-a", "admin@example.com")
		if err != nil || !ok || rel.Reason != "Again" {
			t.Fatalf("Release = %+v, %v, %v", rel, ok, err)
		}
		if _, ok := q.Device("dev-a"); ok {
			t.Error("still isolated after Release")
		}
		if _, err := st.Get(ctx, bucketQuarantine, "device:dev-a"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("store still holds the released entry: %v", err)
		}
		if _, ok, err := q.Release(ctx, QuarantineDevice, "dev-a", "admin"); ok || err != nil {
			t.Errorf("second Release = %v, %v", ok, err)
		}
		if isNew, err := q.Isolate(ctx, deviceEntry("dev-a", "back")); err != nil || !isNew {
			t.Errorf("Isolate after Release = %v, %v", isNew, err)
		}
	})
}

func TestQuarantineStoreRoundTrip(t *testing.T) {
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := t.Context()
		q1, clk := newTestQuarantine(t, st)
		entries := []QuarantineEntry{
			deviceEntry("dev-a", "Shell in container"),
			{Kind: QuarantineUser, ID: "https://idp.example.com/users/42:x", Reason: "Phished", Fix: "Reset your password", Source: "admin", Severity: SeverityAlert, SignalAt: quarantineT0, AutoRelease: true},
			deviceEntry("dev-b", "Ransomware"),
		}
		for _, e := range entries {
			clk.Advance(time.Second)
			if _, err := q1.Isolate(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		// Records the registry cannot read are skipped, not fatal.
		if err := st.Put(ctx, bucketQuarantine, "device:dev-bad", []byte("{not json"), 0); err != nil {
			t.Fatal(err)
		}
		moved, _ := json.Marshal(deviceEntry("dev-c", "x"))
		if err := st.Put(ctx, bucketQuarantine, "device:dev-d", moved, 0); err != nil {
			t.Fatal(err)
		}

		q2, _ := newTestQuarantine(t, st)
		if len(q2.List()) != 0 {
			t.Fatal("a new Quarantine is not empty before Load")
		}
		if err := q2.Load(ctx); err != nil {
			t.Fatal(err)
		}
		a, b := q1.List(), q2.List()
		if len(a) != 3 || len(b) != 3 {
			t.Fatalf("lists: %d vs %d entries", len(a), len(b))
		}
		for i := range a {
			if !a[i].equal(&b[i]) {
				t.Errorf("entry %d:\n  stored %+v\n  loaded %+v", i, a[i], b[i])
			}
		}
		for _, id := range []string{"dev-bad", "dev-c", "dev-d"} {
			if _, ok := q2.Device(id); ok {
				t.Errorf("%s loaded from a bad record", id)
			}
		}
	})
}

func TestQuarantineRecordFormat(t *testing.T) {
	st := newQuarantineMemoryStore(t)
	q, _ := newTestQuarantine(t, st)
	if _, err := q.Isolate(t.Context(), deviceEntry("dev-a", "r")); err != nil {
		t.Fatal(err)
	}
	b, err := st.Get(t.Context(), bucketQuarantine, "device:dev-a")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"kind": "device", "id": "dev-a", "reason": "r", "fix": "Reinstall the EDR", "source": "falco",
		"rule": "Terminal shell in container", "severity": "Critical",
		"at": "2025-03-04T10:00:00Z", "last_at": "2025-03-04T10:00:00Z",
	}
	if fmt.Sprint(m) != fmt.Sprint(want) {
		t.Errorf("record %s\nwant %v", b, want)
	}
}

func TestQuarantineValidation(t *testing.T) {
	st := newQuarantineMemoryStore(t)
	q, _ := newTestQuarantine(t, st)
	log := recordChanges(q, 1)
	edit := func(f func(e *QuarantineEntry)) QuarantineEntry {
		e := deviceEntry("dev-a", "reason")
		f(&e)
		return e
	}
	cases := map[string]QuarantineEntry{
		"kind empty":          edit(func(e *QuarantineEntry) { e.Kind = "" }),
		"kind unknown":        edit(func(e *QuarantineEntry) { e.Kind = "host" }),
		"device ID empty":     edit(func(e *QuarantineEntry) { e.ID = "" }),
		"device ID malformed": edit(func(e *QuarantineEntry) { e.ID = "dev/a" }),
		"device ID too long":  edit(func(e *QuarantineEntry) { e.ID = strings.Repeat("d", 65) }),
		"user ID empty":       edit(func(e *QuarantineEntry) { e.Kind, e.ID = QuarantineUser, "" }),
		"user ID too long":    edit(func(e *QuarantineEntry) { e.Kind, e.ID = QuarantineUser, strings.Repeat("u", 256) }),
		"user ID control":     edit(func(e *QuarantineEntry) { e.Kind, e.ID = QuarantineUser, "a\nb" }),
		"reason missing":      edit(func(e *QuarantineEntry) { e.Reason = "  " }),
		"reason too long":     edit(func(e *QuarantineEntry) { e.Reason = strings.Repeat("r", MaxStringLen+1) }),
		"reason line break":   edit(func(e *QuarantineEntry) { e.Reason = "a\nb" }),
		"fix too long":        edit(func(e *QuarantineEntry) { e.Fix = strings.Repeat("f", MaxStringLen+1) }),
		"rule control":        edit(func(e *QuarantineEntry) { e.Rule = "a\x00" }),
		"source malformed":    edit(func(e *QuarantineEntry) { e.Source = "crowd strike" }),
		"severity invalid":    edit(func(e *QuarantineEntry) { e.Severity = 8 }),
	}
	for name, e := range cases {
		if _, err := q.Isolate(t.Context(), e); !errors.Is(err, ErrInvalidQuarantine) {
			t.Errorf("%s: Isolate error %v, want ErrInvalidQuarantine", name, err)
		}
	}
	if _, _, err := q.Release(t.Context(), "host", "dev-a", "admin"); !errors.Is(err, ErrInvalidQuarantine) {
		t.Errorf("Release of an unknown kind: %v", err)
	}
	if _, _, err := q.Release(t.Context(), QuarantineDevice, "", "admin"); !errors.Is(err, ErrInvalidQuarantine) {
		t.Errorf("Release of an empty ID: %v", err)
	}
	if n := len(q.List()); n != 0 {
		t.Errorf("%d entries after invalid isolations", n)
	}
	if ev := log(); len(ev) != 0 {
		t.Errorf("callbacks ran for invalid entries: %+v", ev)
	}
	n := 0
	st.List(t.Context(), bucketQuarantine, "", func(string, []byte) bool { n++; return true })
	if n != 0 {
		t.Errorf("%d records stored", n)
	}
	// Surrounding spaces are trimmed rather than refused.
	e := deviceEntry("dev-a", "  padded  ")
	if _, err := q.Isolate(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	if got, _ := q.Device("dev-a"); got.Reason != "padded" {
		t.Errorf("reason %q", got.Reason)
	}
}

func TestQuarantineLimit(t *testing.T) {
	st := newQuarantineMemoryStore(t)
	q, _ := newTestQuarantine(t, st)
	q.max = 2
	ctx := t.Context()
	for _, id := range []string{"dev-a", "dev-b"} {
		if _, err := q.Isolate(ctx, deviceEntry(id, "r")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.Isolate(ctx, deviceEntry("dev-c", "r")); !errors.Is(err, ErrQuarantineFull) {
		t.Fatalf("third subject: %v", err)
	}
	if _, ok := q.Device("dev-c"); ok {
		t.Error("dev-c isolated beyond the limit")
	}
	// Replacing an entry is not a new subject.
	if _, err := q.Isolate(ctx, deviceEntry("dev-a", "again")); err != nil {
		t.Errorf("replacing at the limit: %v", err)
	}
	if _, _, err := q.Release(ctx, QuarantineDevice, "dev-b", "admin"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Isolate(ctx, deviceEntry("dev-c", "r")); err != nil {
		t.Errorf("after a release: %v", err)
	}
}

func TestQuarantineCallbacks(t *testing.T) {
	st := newQuarantineMemoryStore(t)
	q, _ := newTestQuarantine(t, st)
	log := recordChanges(q, 2)
	ctx := t.Context()
	steps := []func() error{
		func() error { _, err := q.Isolate(ctx, deviceEntry("dev-a", "one")); return err },
		func() error { _, err := q.Isolate(ctx, deviceEntry("dev-a", "two")); return err },
		func() error {
			_, err := q.Isolate(ctx, QuarantineEntry{Kind: QuarantineUser, ID: "bob", Reason: "three"})
			return err
		},
		func() error { _, _, err := q.Release(ctx, QuarantineDevice, "dev-a", "admin"); return err },
		func() error { _, _, err := q.Release(ctx, QuarantineDevice, "dev-a", "admin"); return err }, // nothing to release: no callback
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	want := []changeEvent{
		{0, "device", "dev-a", "one", false, true}, {1, "device", "dev-a", "one", false, true},
		{0, "device", "dev-a", "two", false, true}, {1, "device", "dev-a", "two", false, true},
		{0, "user", "bob", "three", false, true}, {1, "user", "bob", "three", false, true},
		{0, "device", "dev-a", "two", true, false}, {1, "device", "dev-a", "two", true, false},
	}
	if got := log(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("callbacks\n got %+v\nwant %+v", got, want)
	}
}

// TestQuarantineLoadReconciles: a second replica learns of the first one's
// changes by Load, and its callbacks say what changed.
func TestQuarantineLoadReconciles(t *testing.T) {
	st := newQuarantineMemoryStore(t)
	ctx := t.Context()
	q1, _ := newTestQuarantine(t, st)
	q2, _ := newTestQuarantine(t, st)
	log := recordChanges(q2, 1)
	for _, id := range []string{"dev-a", "dev-b"} {
		if _, err := q1.Isolate(ctx, deviceEntry(id, "first")); err != nil {
			t.Fatal(err)
		}
	}
	if err := q2.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(log()); got != 2 {
		t.Fatalf("%d callbacks after the first Load, want 2", got)
	}
	if err := q2.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(log()); got != 2 {
		t.Fatalf("a Load without changes ran %d callbacks", got-2)
	}
	if _, _, err := q1.Release(ctx, QuarantineDevice, "dev-a", "admin"); err != nil {
		t.Fatal(err)
	}
	if _, err := q1.Isolate(ctx, deviceEntry("dev-b", "second")); err != nil {
		t.Fatal(err)
	}
	if _, err := q1.Isolate(ctx, QuarantineEntry{Kind: QuarantineUser, ID: "carol", Reason: "third"}); err != nil {
		t.Fatal(err)
	}
	if err := q2.Load(ctx); err != nil {
		t.Fatal(err)
	}
	changes := map[string]changeEvent{}
	for _, ev := range log()[2:] {
		changes[ev.kind+":"+ev.id] = ev
	}
	want := map[string]changeEvent{
		"device:dev-a": {0, "device", "dev-a", "first", true, false},
		"device:dev-b": {0, "device", "dev-b", "second", false, true},
		"user:carol":   {0, "user", "carol", "third", false, true},
	}
	if fmt.Sprint(changes) != fmt.Sprint(want) {
		t.Errorf("changes\n got %+v\nwant %+v", changes, want)
	}
	if _, ok := q2.Device("dev-a"); ok {
		t.Error("dev-a still isolated on the second replica")
	}
	// Releasing on the replica that has not heard of the release still
	// reports what it held, and the entry is gone everywhere.
	if _, err := q1.Isolate(ctx, deviceEntry("dev-z", "z")); err != nil {
		t.Fatal(err)
	}
	if err := q2.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := q1.Release(ctx, QuarantineDevice, "dev-z", "admin"); err != nil {
		t.Fatal(err)
	}
	if e, ok, err := q2.Release(ctx, QuarantineDevice, "dev-z", "admin"); err != nil || !ok || e.Reason != "z" {
		t.Errorf("Release on the stale replica = %+v, %v, %v", e, ok, err)
	}
}

// TestQuarantineFailsClosed: a store that fails still isolates on this
// replica, and never releases.
func TestQuarantineFailsClosed(t *testing.T) {
	st := newQuarantineMemoryStore(t)
	ctx := t.Context()
	q, _ := newTestQuarantine(t, st)
	log := recordChanges(q, 1)
	if _, err := q.Isolate(ctx, deviceEntry("dev-a", "before")); err != nil {
		t.Fatal(err)
	}
	st.Close()
	isNew, err := q.Isolate(ctx, deviceEntry("dev-b", "store down"))
	if err == nil || !errors.Is(err, store.ErrClosed) || !isNew {
		t.Fatalf("Isolate with the store closed = %v, %v", isNew, err)
	}
	if e, ok := q.Device("dev-b"); !ok || e.Reason != "store down" {
		t.Errorf("dev-b not isolated in memory: %+v, %v", e, ok)
	}
	if isNew, err := q.Isolate(ctx, deviceEntry("dev-a", "again")); err == nil || isNew {
		t.Errorf("re-isolation with the store down = %v, %v (memory knows dev-a)", isNew, err)
	}
	if _, ok, err := q.Release(ctx, QuarantineDevice, "dev-a", "admin"); err == nil || ok {
		t.Errorf("Release with the store closed = %v, %v", ok, err)
	}
	if _, ok := q.Device("dev-a"); !ok {
		t.Error("a failed Release released dev-a")
	}
	if err := q.Load(ctx); err == nil {
		t.Error("Load from a closed store succeeded")
	}
	if len(q.List()) != 2 {
		t.Errorf("a failed Load changed memory: %+v", q.List())
	}
	if ev := log(); len(ev) != 3 || ev[1].id != "dev-b" || ev[2].reason != "again" {
		t.Errorf("callbacks %+v", ev)
	}
}

func TestQuarantineConcurrent(t *testing.T) {
	st := newQuarantineMemoryStore(t)
	ctx := t.Context()
	q, _ := newTestQuarantine(t, st)
	var mu sync.Mutex
	lastEvent := map[string]bool{} // subject → isolated, by the callbacks
	q.OnChange(func(e QuarantineEntry, released bool) {
		mu.Lock()
		lastEvent[e.Kind+":"+e.ID] = !released
		mu.Unlock()
	})
	ids := []string{"dev-a", "dev-b", "dev-c"}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 200 {
				id := ids[(w+i)%len(ids)]
				switch i % 4 {
				case 0, 1:
					if _, err := q.Isolate(ctx, deviceEntry(id, fmt.Sprintf("w%d-%d", w, i))); err != nil {
						t.Error(err)
						return
					}
				case 2:
					if _, _, err := q.Release(ctx, QuarantineDevice, id, "test"); err != nil {
						t.Error(err)
						return
					}
				case 3:
					if _, err := q.Isolate(ctx, QuarantineEntry{Kind: QuarantineUser, ID: id, Reason: "u"}); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
		wg.Go(func() {
			for range 400 {
				for _, id := range ids {
					if e, ok := q.Device(id); ok && e.ID != id {
						t.Errorf("Device(%s) returned %s", id, e.ID)
						return
					}
					q.User(id)
				}
				q.List()
			}
		})
	}
	wg.Wait()

	// Memory, the store and the callbacks agree.
	fresh, _ := newTestQuarantine(t, st)
	if err := fresh.Load(ctx); err != nil {
		t.Fatal(err)
	}
	mem, stored := q.List(), fresh.List()
	if fmt.Sprint(mem) != fmt.Sprint(stored) {
		t.Fatalf("memory and store differ:\n%+v\n%+v", mem, stored)
	}
	isolated := map[string]bool{}
	for _, e := range mem {
		isolated[e.Kind+":"+e.ID] = true
	}
	mu.Lock()
	defer mu.Unlock()
	for subject, on := range lastEvent {
		if on != isolated[subject] {
			t.Errorf("%s: last callback said isolated=%v, memory says %v", subject, on, isolated[subject])
		}
	}
}

func TestQuarantineLookupDoesNotAllocate(t *testing.T) {
	st := newQuarantineMemoryStore(t)
	q, _ := newTestQuarantine(t, st)
	if _, err := q.Isolate(context.Background(), deviceEntry("dev-a", "r")); err != nil {
		t.Fatal(err)
	}
	miss := strings.Repeat("dev-x", 3)
	allocs := testing.AllocsPerRun(100, func() {
		if _, ok := q.Device("dev-a"); !ok {
			t.Fatal("miss")
		}
		if _, ok := q.Device(miss); ok {
			t.Fatal("hit")
		}
		if _, ok := q.User(miss); ok {
			t.Fatal("hit")
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per lookup", allocs)
	}
}
