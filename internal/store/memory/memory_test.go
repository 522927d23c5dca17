package memory

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sweep time.Duration
	}{
		// Expired entries must be invisible long before a slow sweeper runs,
		// and a fast sweeper must not race with the operations.
		{"SlowSweeper", time.Hour},
		{"FastSweeper", time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) store.Store {
				s := New(Options{SweepInterval: tc.sweep})
				t.Cleanup(func() { s.Close() })
				return s
			})
		})
	}
}

func (s *Store) entries() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, b := range s.buckets {
		n += len(b)
	}
	return n
}

// TestSweeperFreesExpired checks that expired entries leave memory, not
// just view, on the sweep interval; synctest's fake clock makes it exact.
func TestSweeperFreesExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := New(Options{SweepInterval: time.Minute})
		defer s.Close()
		ctx := context.Background()
		for _, k := range []string{"a", "b", "c"} {
			if err := s.Put(ctx, "b", k, []byte("v"), 30*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Put(ctx, "b", "keep", []byte("v"), 0); err != nil {
			t.Fatal(err)
		}

		time.Sleep(45 * time.Second) // expired, not yet swept
		synctest.Wait()
		if _, err := s.Get(ctx, "b", "a"); err != store.ErrNotFound {
			t.Fatalf("Get of an expired entry: %v, want ErrNotFound", err)
		}
		if n := s.entries(); n != 4 {
			t.Fatalf("%d entries before the first sweep, want 4", n)
		}

		time.Sleep(30 * time.Second) // past the first tick at 1m
		synctest.Wait()
		if n := s.entries(); n != 1 {
			t.Fatalf("%d entries after the sweep, want 1", n)
		}
	})
}

func TestDefaults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := New(Options{}) // zero options: 1m sweep, discarded logs
		defer s.Close()
		if err := s.Put(context.Background(), "b", "k", []byte("v"), time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if n := s.entries(); n != 1 {
			t.Fatalf("swept before the default interval: %d entries", n)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := s.entries(); n != 0 {
			t.Fatalf("not swept after the default interval: %d entries", n)
		}
	})
}
