package posture

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/bus"
	"github.com/ztna-dev/ztna/internal/store"
)

// told records what a registry told the other replicas.
type told struct {
	mu     sync.Mutex
	events []bus.Event
}

func (r *told) publish(kind, key string) {
	r.mu.Lock()
	r.events = append(r.events, bus.Event{Kind: kind, Key: key})
	r.mu.Unlock()
}

func (r *told) has(kind, key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.events, bus.Event{Kind: kind, Key: key})
}

// TestRegistriesAcrossReplicas: two of each registry over one store, as
// two replicas over Redis. What one changes it announces after the store
// write; the other applies it from the store — a device revocation ends
// its live connections there too (unless the store says the device is
// live), an accepted report becomes its evidence, a quarantine its own.
func TestRegistriesAcrossReplicas(t *testing.T) {
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		var a told

		// Devices.
		ca := newTestDeviceCA(t)
		da, clk := newTestDevices(t, st, ca)
		db, _ := newTestDevices(t, st, ca)
		da.Announce(a.publish)
		var bRevoked revocations
		db.OnRevoke(bRevoked.record)
		dev, _, _ := enrollDevice(t, da, clk, "alice")
		if _, err := db.Get(ctx, dev.ID); err != nil {
			t.Fatal(err)
		}
		db.Forget(ctx, dev.ID) // an event the store contradicts
		db.Forget(ctx, "../x")
		if len(bRevoked.get()) != 0 {
			t.Fatal("b ended a live device on an event the store contradicts")
		}
		if err := da.Revoke(ctx, dev.ID, "lost"); err != nil {
			t.Fatal(err)
		}
		if !a.has(bus.DeviceRevoked, dev.ID) {
			t.Fatalf("no announcement: %+v", a.events)
		}
		db.Forget(ctx, dev.ID)
		if got := bRevoked.get(); len(got) != 1 || got[0] != dev.ID {
			t.Fatalf("b's revoke hooks saw %v", got)
		}

		// Reports.
		book, rdev, sign := newReportsFixture(t, st)
		other := NewReports(st, ReportsConfig{})
		book.Announce(a.publish)
		var seen []uint64
		other.OnUpdate(func(id string, ev *Evidence) { seen = append(seen, ev.Report.Counter) })
		now := time.Now()
		if _, err := book.Submit(ctx, rdev, sign(7, book.IssueNonce(rdev.ID), now), now); err != nil {
			t.Fatal(err)
		}
		if !a.has(bus.Report, rdev.ID) {
			t.Fatalf("no announcement: %+v", a.events)
		}
		if err := other.Refresh(ctx, rdev.ID); err != nil {
			t.Fatal(err)
		}
		if ev := other.Evidence(rdev.ID); ev == nil || ev.Report.Counter != 7 || len(seen) != 1 {
			t.Fatalf("b's evidence %+v, hooks %v", ev, seen)
		}
		if err := other.Refresh(ctx, rdev.ID); err != nil || len(seen) != 1 { // nothing newer: no hook
			t.Fatalf("a second refresh: %v, hooks %v", err, seen)
		}
		// An EDR vendor's check-in reaches the other replica too.
		checkedIn := now.Add(-time.Minute).Truncate(time.Millisecond)
		if err := book.CheckIn(ctx, rdev.ID, "falcon-sensor", checkedIn, now); err != nil {
			t.Fatal(err)
		}
		if err := other.Refresh(ctx, rdev.ID); err != nil {
			t.Fatal(err)
		}
		if ev := other.Evidence(rdev.ID); ev == nil || !ev.CheckIns["falcon-sensor"].Equal(checkedIn) || ev.Report.Counter != 7 {
			t.Fatalf("b's evidence after the check-in on a: %+v", ev)
		}
		fresh := NewReports(st, ReportsConfig{}) // a replica starting now
		if err := fresh.Load(ctx); err != nil {
			t.Fatal(err)
		}
		if ev := fresh.Evidence(rdev.ID); ev == nil || !ev.CheckIns["falcon-sensor"].Equal(checkedIn) {
			t.Fatalf("a starting replica's evidence: %+v", ev)
		}

		// Quarantine.
		qa, _ := newTestQuarantine(t, st)
		qb, _ := newTestQuarantine(t, st)
		qa.Announce(a.publish)
		if _, err := qa.Isolate(ctx, deviceEntry("dev-q", "EDR alert")); err != nil {
			t.Fatal(err)
		}
		if !a.has(bus.Quarantine, "") {
			t.Fatalf("no announcement: %+v", a.events)
		}
		if err := qb.Load(ctx); err != nil {
			t.Fatal(err)
		}
		if _, ok := qb.Device("dev-q"); !ok {
			t.Fatal("b does not see the quarantine after loading")
		}
	})
}

// refusingStore refuses writes while refuse is set.
type refusingStore struct {
	store.Store
	mu     sync.Mutex
	refuse bool
}

func (s *refusingStore) set(refuse bool) { s.mu.Lock(); s.refuse = refuse; s.mu.Unlock() }

func (s *refusingStore) Put(ctx context.Context, bucket, key string, v []byte, ttl time.Duration) error {
	s.mu.Lock()
	refuse := s.refuse
	s.mu.Unlock()
	if refuse {
		return errors.New("store unavailable")
	}
	return s.Store.Put(ctx, bucket, key, v, ttl)
}

// TestQuarantineSurvivesAStoreFailure: an isolation the store refused is
// kept in memory; reloading from the store (another replica's event, a
// resync) does not release it, and stores it once the store takes writes.
func TestQuarantineSurvivesAStoreFailure(t *testing.T) {
	ctx := context.Background()
	st := &refusingStore{Store: newQuarantineMemoryStore(t)}
	q, _ := newTestQuarantine(t, st)
	st.set(true)
	if _, err := q.Isolate(ctx, deviceEntry("dev-x", "EDR alert")); err == nil {
		t.Fatal("Isolate reported success with the store refusing writes")
	}
	if _, ok := q.Device("dev-x"); !ok {
		t.Fatal("not isolated locally")
	}
	if err := q.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := q.Device("dev-x"); !ok {
		t.Fatal("a reload released an isolation the store had refused")
	}
	st.set(false)
	if err := q.Load(ctx); err != nil {
		t.Fatal(err)
	}
	other, _ := newTestQuarantine(t, st)
	if err := other.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := other.Device("dev-x"); !ok {
		t.Fatal("the isolation was not stored once the store took writes")
	}
}
