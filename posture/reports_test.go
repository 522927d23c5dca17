package posture

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/store"
)

// newReportsFixture enrolls a device and returns a report book over st and
// a function that signs a report of that device.
func newReportsFixture(t *testing.T, st store.Store) (*Reports, *Device, func(counter uint64, nonce string, at time.Time) []byte) {
	t.Helper()
	d, clk := newTestDevices(t, st, newTestDeviceCA(t))
	dev, key, _ := enrollDevice(t, d, clk, "alice")
	book := NewReports(st, ReportsConfig{})
	sign := func(counter uint64, nonce string, at time.Time) []byte {
		r := rptReport()
		r.DeviceID, r.Counter, r.Nonce, r.CollectedAt = dev.ID, counter, nonce, at
		return rptSign(t, key, r)
	}
	return book, dev, sign
}

func TestReportsSubmit(t *testing.T) {
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		book, dev, sign := newReportsFixture(t, st)
		var updates []uint64
		var mu sync.Mutex
		book.OnUpdate(func(id string, ev *Evidence) {
			mu.Lock()
			defer mu.Unlock()
			if id != dev.ID {
				t.Errorf("update for %s", id)
			}
			updates = append(updates, ev.Report.Counter)
		})
		now := time.Now()
		if ev := book.Evidence(dev.ID); ev != nil {
			t.Fatalf("evidence before any report: %+v", ev)
		}
		nonce := book.IssueNonce(dev.ID)

		ev, err := book.Submit(ctx, dev, sign(5, nonce, now), now)
		if err != nil {
			t.Fatalf("first report: %v", err)
		}
		if ev.Report.Counter != 5 || !ev.ReceivedAt.Equal(now) || book.Evidence(dev.ID) != ev {
			t.Fatalf("evidence after submit: %+v", ev)
		}

		// Each attack changes nothing: the latest stays counter 5.
		other := rptKey(t)
		r := rptReport()
		r.DeviceID, r.Counter, r.Nonce, r.CollectedAt = dev.ID, 9, nonce, now
		for _, tc := range []struct {
			name string
			wire []byte
			dev  *Device
			want error
			code string
		}{
			{"replayed", sign(5, nonce, now), dev, ErrReplay, "replay"},
			{"lower counter", sign(4, nonce, now), dev, ErrReplay, "replay"},
			{"signed by another key", rptSign(t, other, r), dev, ErrSignature, "bad_signature"},
			{"nonce never issued", sign(9, "FORGED", now), dev, ErrStaleNonce, "stale_nonce"},
			{"collected an hour ago", sign(9, nonce, now.Add(-time.Hour)), dev, ErrClock, "clock"},
			{"garbage", []byte("not a report"), dev, ErrMalformedReport, "malformed_report"},
			{"moved to another device", sign(9, nonce, now), &Device{ID: "dev-other", PublicKey: dev.PublicKey}, ErrWrongDevice, "wrong_device"},
			{"revoked device", sign(9, nonce, now), &Device{ID: dev.ID, PublicKey: dev.PublicKey, Revoked: true}, ErrDeviceRevoked, "device_refused"},
		} {
			_, err := book.Submit(ctx, tc.dev, tc.wire, now)
			if !errors.Is(err, tc.want) {
				t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
			}
			if got := ReportErrorCode(err); got != tc.code {
				t.Errorf("%s: code %q, want %q", tc.name, got, tc.code)
			}
			if c := book.Evidence(dev.ID).Report.Counter; c != 5 {
				t.Fatalf("%s changed the latest report to counter %d", tc.name, c)
			}
		}

		later := now.Add(30 * time.Second)
		if _, err := book.Submit(ctx, dev, sign(6, book.IssueNonce(dev.ID), later), later); err != nil {
			t.Fatalf("next report: %v", err)
		}
		mu.Lock()
		if fmt.Sprint(updates) != "[5 6]" {
			t.Errorf("updates %v, want [5 6]", updates)
		}
		mu.Unlock()

		h, err := book.History(ctx, dev.ID, 10)
		if err != nil || len(h) != 2 || h[0].Report.Counter != 6 || h[1].Report.Counter != 5 {
			t.Fatalf("history %+v, %v", h, err)
		}

		// A restarted edge knows the latest report and refuses its replay.
		again := NewReports(st, ReportsConfig{})
		if err := again.Load(ctx); err != nil {
			t.Fatal(err)
		}
		got := again.Evidence(dev.ID)
		if got == nil || got.Report.Counter != 6 || !got.ReceivedAt.Equal(later) {
			t.Fatalf("after Load: %+v", got)
		}
		if _, err := again.Submit(ctx, dev, sign(6, again.IssueNonce(dev.ID), later), later); !errors.Is(err, ErrReplay) {
			t.Fatalf("replay after restart: %v", err)
		}
	})
}

// TestReportsConcurrentCounters submits many reports at once: the latest
// always ends up with the highest accepted counter, and no counter is
// accepted twice.
func TestReportsConcurrentCounters(t *testing.T) {
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		book, dev, sign := newReportsFixture(t, st)
		now := time.Now()
		nonce := book.IssueNonce(dev.ID)
		wires := make([][]byte, 20)
		for i := range wires {
			wires[i] = sign(uint64(i%10+1), nonce, now) // every counter twice
		}
		var mu sync.Mutex
		accepted := map[uint64]int{}
		var wg sync.WaitGroup
		for _, w := range wires {
			wg.Go(func() {
				ev, err := book.Submit(ctx, dev, w, now)
				if err == nil {
					mu.Lock()
					accepted[ev.Report.Counter]++
					mu.Unlock()
				} else if !errors.Is(err, ErrReplay) {
					t.Errorf("submit: %v", err)
				}
			})
		}
		wg.Wait()
		for c, n := range accepted {
			if n > 1 {
				t.Errorf("counter %d accepted %d times", c, n)
			}
		}
		if book.Evidence(dev.ID).Report.Counter != 10 {
			t.Errorf("latest counter %d, want 10", book.Evidence(dev.ID).Report.Counter)
		}
	})
}

func TestReportsCheckIn(t *testing.T) {
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		book, dev, sign := newReportsFixture(t, st)
		now := time.Now()
		book.CheckIn(ctx, dev.ID, "falcon-sensor", now.Add(-time.Minute), now)
		ev := book.Evidence(dev.ID)
		if ev == nil || ev.Report != nil || !ev.CheckIns["falcon-sensor"].Equal(now.Add(-time.Minute)) {
			t.Fatalf("after check-in: %+v", ev)
		}
		// Older check-ins do not move it back; future ones count as now.
		book.CheckIn(ctx, dev.ID, "falcon-sensor", now.Add(-time.Hour), now)
		if got := book.Evidence(dev.ID).CheckIns["falcon-sensor"]; !got.Equal(now.Add(-time.Minute)) {
			t.Errorf("older check-in moved it to %v", got)
		}
		book.CheckIn(ctx, dev.ID, "falcon-sensor", now.Add(time.Hour), now)
		if got := book.Evidence(dev.ID).CheckIns["falcon-sensor"]; !got.Equal(now) {
			t.Errorf("future check-in recorded as %v", got)
		}
		// A report keeps the check-ins; the earlier evidence is unchanged.
		before := book.Evidence(dev.ID)
		if _, err := book.Submit(ctx, dev, sign(1, book.IssueNonce(dev.ID), now), now); err != nil {
			t.Fatal(err)
		}
		after := book.Evidence(dev.ID)
		if after.Report == nil || !after.CheckIns["falcon-sensor"].Equal(now) || before.Report != nil {
			t.Errorf("before %+v after %+v", before, after)
		}
		book.Forget(dev.ID)
		if book.Evidence(dev.ID) != nil {
			t.Error("Forget kept evidence")
		}
	})
}
