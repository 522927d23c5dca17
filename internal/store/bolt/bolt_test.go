package bolt

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func openT(t *testing.T, path string, opts Options) *Store {
	t.Helper()
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sweep time.Duration
	}{
		// Expired entries must be invisible long before a slow sweeper runs,
		// and a fast sweeper must not disturb the operations.
		{"SlowSweeper", time.Hour},
		{"FastSweeper", 5 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) store.Store {
				return openT(t, filepath.Join(t.TempDir(), "ztna.db"), Options{SweepInterval: tc.sweep})
			})
		})
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "ztna.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	puts := []struct {
		key string
		ttl time.Duration
	}{{"forever", 0}, {"hour", time.Hour}, {"short", 50 * time.Millisecond}}
	for _, p := range puts {
		if err := s.Put(ctx, "sessions", p.key, []byte("v-"+p.key), p.ttl); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openT(t, path, Options{})
	for _, key := range []string{"forever", "hour"} {
		got, err := s.Get(ctx, "sessions", key)
		if err != nil || string(got) != "v-"+key {
			t.Errorf("after reopen, Get(%q) = %q, %v", key, got, err)
		}
	}
	// The expiry survived the reopen too.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := s.Get(ctx, "sessions", "short")
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("entry with a 50ms ttl still readable after reopen: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSecondOpenFailsClearly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ztna.db")
	openT(t, path, Options{})

	const timeout = 200 * time.Millisecond
	begin := time.Now()
	s2, err := Open(path, Options{Timeout: timeout})
	elapsed := time.Since(begin)
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a locked store succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("error %v does not wrap ErrLocked", err)
	}
	if want := "store " + path + " is locked by another ztna process"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if elapsed < timeout/2 || elapsed > timeout+3*time.Second {
		t.Errorf("second Open returned after %v, want about %v", elapsed, timeout)
	}
}

func TestCloseReleasesLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ztna.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	openT(t, path, Options{Timeout: 200 * time.Millisecond})
}

func TestFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ztna.db")
	openT(t, path, Options{})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("store file mode = %v, want 0600", got)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	notBolt := filepath.Join(dir, "not-a-db")
	if err := os.WriteFile(notBolt, []byte("this is not a bbolt file, it is text"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{
		filepath.Join(dir, "missing-dir", "ztna.db"),
		notBolt,
	} {
		s, err := Open(path, Options{Timeout: time.Second})
		if err == nil {
			s.Close()
			t.Errorf("Open(%s) succeeded", path)
			continue
		}
		if errors.Is(err, ErrLocked) {
			t.Errorf("Open(%s) = %v, which is not a locking problem", path, err)
		}
		if want := "open store " + path + ": "; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
			t.Errorf("Open(%s) = %q, want it to start with %q", path, err, want)
		}
	}
}

func TestDefaults(t *testing.T) {
	o := Options{}.withDefaults()
	if o.Timeout != 5*time.Second || o.SweepInterval != time.Minute || o.Logger == nil {
		t.Errorf("defaults = %+v", o)
	}
	o = Options{Timeout: time.Second, SweepInterval: time.Hour}.withDefaults()
	if o.Timeout != time.Second || o.SweepInterval != time.Hour {
		t.Errorf("explicit options changed: %+v", o)
	}
}

// rawCount counts the entries physically in bucket, expired or not.
func rawCount(t *testing.T, s *Store, bucket string) int {
	t.Helper()
	n := 0
	err := s.db.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket([]byte(bucket)); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSweeperDeletesExpired(t *testing.T) {
	ctx := t.Context()
	s := openT(t, filepath.Join(t.TempDir(), "ztna.db"), Options{SweepInterval: 10 * time.Millisecond})
	// More than one sweep batch, in two buckets, around live entries.
	const expiring = sweepBatch + 200
	err := s.db.Update(func(tx *bbolt.Tx) error {
		now := time.Now()
		for _, name := range []string{"a", "b"} {
			b, err := tx.CreateBucketIfNotExists([]byte(name))
			if err != nil {
				return err
			}
			for i := range expiring {
				if err := b.Put([]byte{byte(i >> 8), byte(i), 'x'}, encode([]byte("v"), 50*time.Millisecond, now)); err != nil {
					return err
				}
			}
			for _, k := range []string{"live", "\x00live", "\xfflive"} {
				if err := b.Put([]byte(k), encode([]byte("v"), 0, now)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for rawCount(t, s, "a") != 3 || rawCount(t, s, "b") != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("sweeper left %d and %d entries, want 3 and 3", rawCount(t, s, "a"), rawCount(t, s, "b"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, k := range []string{"live", "\x00live", "\xfflive"} {
		if _, err := s.Get(ctx, "a", k); err != nil {
			t.Errorf("live entry %q: %v", k, err)
		}
	}
}

func TestCorruptEntryIsAnError(t *testing.T) {
	ctx := t.Context()
	s := openT(t, filepath.Join(t.TempDir(), "ztna.db"), Options{})
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("b"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte{9, 9})
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "b", "k"); !errors.Is(err, errCorrupt) {
		t.Errorf("Get of a corrupt entry: %v", err)
	}
	if ok, err := s.PutIfAbsent(ctx, "b", "k", []byte("v"), 0); ok || !errors.Is(err, errCorrupt) {
		t.Errorf("PutIfAbsent over a corrupt entry = %v, %v; want false, corrupt", ok, err)
	}
	if err := s.List(ctx, "b", "", func(string, []byte) bool { return true }); !errors.Is(err, errCorrupt) {
		t.Errorf("List over a corrupt entry: %v", err)
	}
	// Put repairs it.
	if err := s.Put(ctx, "b", "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, "b", "k"); err != nil || string(got) != "v" {
		t.Errorf("Get after repair = %q, %v", got, err)
	}
}
