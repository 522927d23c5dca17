package redisstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/redistest"
	"github.com/ztna-dev/ztna/internal/store/storetest"
)

func TestMain(m *testing.M) {
	// The outage and failure tests make go-redis log every failed dial.
	RouteClientLogs(slog.New(slog.DiscardHandler))
	goleak.VerifyTestMain(m)
}

// testCtx bounds every test's Redis calls.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var prefixes atomic.Int64

// uniquePrefix gives every store of a test binary its own keys, so stores
// sharing one server never see each other's entries.
func uniquePrefix(base string) string {
	return fmt.Sprintf("%s%d:", base, prefixes.Add(1))
}

func openT(t *testing.T, c Config) *Store {
	t.Helper()
	s, err := Open(testCtx(t), c, slog.New(slog.DiscardHandler))
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
	srv := redistest.Start(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		return openT(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: uniquePrefix("conf")})
	})
}

// TestConformanceLeastPrivilege runs the suite as an ACL user that has only
// ACLCommands on the store's key prefix, so the documented ACL is enough.
func TestConformanceLeastPrivilege(t *testing.T) {
	srv := redistest.Start(t, redistest.WithUser("ztna", "test-password-1",
		"resetkeys", "~acl:*", "resetchannels", ACLCommands))
	base := Config{Addrs: []string{srv.Addr()}, Username: "ztna", PasswordFile: srv.PasswordFile()}
	storetest.Run(t, func(t *testing.T) store.Store {
		c := base
		c.KeyPrefix = uniquePrefix("acl:")
		return openT(t, c)
	})

	// And the ACL is really in force: keys outside the pattern are refused.
	c := base
	c.KeyPrefix = "other:"
	s := openT(t, c)
	err := s.Put(testCtx(t), "b", "k", []byte("v"), 0)
	if err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("Put outside the user's key pattern: %v, want a NOPERM error", err)
	}
}

func TestCluster(t *testing.T) {
	start := time.Now()
	cl := redistest.StartCluster(t, 3)
	t.Logf("%v up in %v", cl, time.Since(start).Round(time.Millisecond))
	storetest.Run(t, func(t *testing.T) store.Store {
		return openT(t, Config{Addrs: cl.Addrs(), KeyPrefix: uniquePrefix("cl")})
	})

	// Every key of a bucket, braces in its name or not, is in one slot;
	// different buckets spread over slots.
	s := openT(t, Config{Addrs: cl.Addrs(), KeyPrefix: uniquePrefix("slots")})
	rdb := cl.Nodes[0].Client()
	ctx := testCtx(t)
	slots := map[int64]bool{}
	for _, bucket := range []string{"sessions", "a{b}c", "}{", "%7B"} {
		b := s.bucket(bucket)
		want, err := rdb.ClusterKeySlot(ctx, b.idx).Result()
		if err != nil {
			t.Fatal(err)
		}
		slots[want] = true
		for _, k := range []string{b.exp, b.data("k"), b.data("{x}"), b.data("}")} {
			if got, err := rdb.ClusterKeySlot(ctx, k).Result(); err != nil || got != want {
				t.Errorf("bucket %q: key %q in slot %d (%v), index in slot %d", bucket, k, got, err, want)
			}
		}
		if err := s.Put(ctx, bucket, "k", []byte("v"), time.Minute); err != nil {
			t.Errorf("Put in bucket %q: %v", bucket, err)
		}
	}
	if len(slots) < 2 {
		t.Errorf("4 buckets all in slot %v", slots)
	}
}

// TestSentinel reaches the master through a Sentinel, in a non-zero db.
func TestSentinel(t *testing.T) {
	master := redistest.Start(t)
	sentinel := redistest.StartSentinel(t, master)
	cfg := func() Config {
		return Config{Addrs: []string{sentinel.Addr()}, MasterName: redistest.SentinelMaster, DB: 3, KeyPrefix: uniquePrefix("sent")}
	}
	storetest.Run(t, func(t *testing.T) store.Store { return openT(t, cfg()) })

	c := cfg()
	s := openT(t, c)
	ctx := testCtx(t)
	if err := s.Put(ctx, "b", "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: master.Addr(), DB: 3})
	defer rdb.Close()
	n, err := rdb.Exists(ctx, c.KeyPrefix+"{b}k:k").Result()
	if err != nil || n != 1 {
		t.Fatalf("entry in the master's db 3: %d, %v; want 1", n, err)
	}
}

// TestSentinelAuth: Sentinels that require a password and a master with an
// ACL user, each reached with its own credentials; without the Sentinel's
// password, or with a wrong one, Open fails with a clear error that does
// not contain it.
func TestSentinelAuth(t *testing.T) {
	const sentinelPassword = "sentinel-secret-9"
	master := redistest.Start(t, redistest.WithUser("edge", "master-secret-3"))
	sentinel := redistest.StartSentinel(t, master, sentinelPassword)
	base := Config{Addrs: []string{sentinel.Addr()}, MasterName: redistest.SentinelMaster,
		Username: "edge", PasswordFile: master.PasswordFile(), KeyPrefix: uniquePrefix("sentauth")}

	good := base
	good.SentinelPasswordFile = sentinel.PasswordFile()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	s := openT(t, good)
	if err := s.Put(testCtx(t), "b", "k", []byte("v"), 0); err != nil {
		t.Fatalf("Put through an authenticated Sentinel: %v", err)
	}

	wrong := base
	wrong.SentinelPasswordFile = writeFile(t, "not-it\n", 0o600)
	for name, c := range map[string]Config{"no sentinel password": base, "wrong sentinel password": wrong} {
		s, err := Open(testCtx(t), c, nil)
		if err == nil {
			s.Close()
			t.Fatalf("%s: Open succeeded", name)
		}
		if strings.Contains(err.Error(), sentinelPassword) || strings.Contains(err.Error(), "not-it") {
			t.Errorf("%s: the error contains a password: %v", name, err)
		}
	}

	// Sentinel credentials without a Sentinel are a config error.
	bad := Config{Addrs: []string{master.Addr()}, SentinelPasswordFile: sentinel.PasswordFile()}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "sentinel_username: sentinel credentials need master_name") {
		t.Fatalf("Validate: %v", err)
	}
}

func TestAuth(t *testing.T) {
	const password = "right-password-7"
	srv := redistest.Start(t, redistest.WithUser("edge", password))
	good := srv.PasswordFile()
	wrong := writeFile(t, "wrong-password\n", 0o600)

	s := openT(t, Config{Addrs: []string{srv.Addr()}, Username: "edge", PasswordFile: good, KeyPrefix: uniquePrefix("auth")})
	if err := s.Put(testCtx(t), "b", "k", []byte("v"), 0); err != nil {
		t.Fatalf("Put with the right password: %v", err)
	}

	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"wrong password", Config{Username: "edge", PasswordFile: wrong}, "WRONGPASS"},
		{"default user (disabled)", Config{}, "NOAUTH"},
		{"unknown user", Config{Username: "nobody", PasswordFile: good}, "WRONGPASS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.Addrs = []string{srv.Addr()}
			start := time.Now()
			s, err := Open(testCtx(t), c, nil)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open: %v; want it to mention %s", err, tc.want)
			}
			if strings.Contains(err.Error(), password) || strings.Contains(err.Error(), "wrong-password") {
				t.Errorf("Open's error contains a password: %v", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Open took %v to fail", d)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	srv := redistest.Start(t, redistest.WithTLSClientAuth())
	files := srv.TLS()
	otherCA := redistest.Start(t, redistest.WithTLS()).TLS().CAFile

	tlsOn := TLSConfig{Enabled: true, CAFile: files.CAFile, CertFile: files.CertFile, KeyFile: files.KeyFile}
	s := openT(t, Config{Addrs: []string{srv.Addr()}, TLS: tlsOn, KeyPrefix: uniquePrefix("tls")})
	if err := s.Put(testCtx(t), "b", "k", []byte("v"), 0); err != nil {
		t.Fatalf("Put over TLS: %v", err)
	}

	for _, tc := range []struct {
		name string
		tls  TLSConfig
		want string
	}{
		{"no client certificate", TLSConfig{Enabled: true, CAFile: files.CAFile}, ""},
		{"unknown CA", TLSConfig{Enabled: true, CAFile: otherCA, CertFile: files.CertFile, KeyFile: files.KeyFile}, "certificate"},
		{"wrong server name", TLSConfig{Enabled: true, CAFile: files.CAFile, CertFile: files.CertFile, KeyFile: files.KeyFile, ServerName: "redis.example"}, "redis.example"},
		{"plain text", TLSConfig{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			s, err := Open(testCtx(t), Config{Addrs: []string{srv.Addr()}, TLS: tc.tls}, nil)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open: %v; want it to mention %q", err, tc.want)
			}
			if d := time.Since(start); d > 8*time.Second {
				t.Errorf("Open took %v to fail", d)
			}
		})
	}
}

// TestOutage kills Redis under an open store: every operation fails with
// an error (not "not found", not a stale value) while it is down, and the
// same store works again, with the data, once it is back.
func TestOutage(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAppendOnly())
	s := openT(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: uniquePrefix("outage")})
	ctx := testCtx(t)
	const secretKey = "session-id-secret-0123"
	if err := s.Put(ctx, "sessions", secretKey, []byte("alice"), time.Hour); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	ops := map[string]func() error{
		"Get":  func() error { _, err := s.Get(ctx, "sessions", secretKey); return err },
		"Put":  func() error { return s.Put(ctx, "sessions", secretKey, []byte("mallory"), 0) },
		"Take": func() error { _, err := s.Take(ctx, "sessions", secretKey); return err },
		"PutIfAbsent": func() error {
			_, err := s.PutIfAbsent(ctx, "sessions", "other", []byte("x"), 0)
			return err
		},
		"Delete": func() error { return s.Delete(ctx, "sessions", secretKey) },
		"List": func() error {
			return s.List(ctx, "sessions", "", func(string, []byte) bool {
				t.Error("List called fn while Redis is down")
				return true
			})
		},
	}
	for name, op := range ops {
		start := time.Now()
		err := op()
		d := time.Since(start)
		switch {
		case err == nil:
			t.Errorf("%s while Redis is down succeeded", name)
		case errors.Is(err, store.ErrNotFound):
			t.Errorf("%s while Redis is down: %v; want an error other than ErrNotFound", name, err)
		case !strings.Contains(err.Error(), `bucket "sessions"`):
			t.Errorf("%s while Redis is down: %v; want the bucket named", name, err)
		case strings.Contains(err.Error(), secretKey):
			t.Errorf("%s's error contains the key: %v", name, err)
		}
		if d > 5*time.Second {
			t.Errorf("%s took %v to fail while Redis is down", name, d)
		}
		t.Logf("%s while down (%v): %v", name, d.Round(time.Millisecond), err)
	}

	srv.Restart()
	deadline := time.Now().Add(15 * time.Second)
	for {
		v, err := s.Get(ctx, "sessions", secretKey)
		if err == nil {
			if string(v) != "alice" {
				t.Fatalf("after restart Get = %q, want the value put before the outage", v)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store still failing 15s after Redis restarted: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, with a deadline
	}
	if err := s.Put(ctx, "sessions", "after", []byte("x"), 0); err != nil {
		t.Fatalf("Put after restart: %v", err)
	}
}

// TestIndexCleanup checks that index members of expired entries do not
// accumulate: List prunes those it meets, the sweeper the others.
func TestIndexCleanup(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	s := openT(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: uniquePrefix("sweep")})
	ctx := testCtx(t)
	put := func(bucket, key string, ttl time.Duration) {
		t.Helper()
		if err := s.Put(ctx, bucket, key, []byte("v"), ttl); err != nil {
			t.Fatal(err)
		}
	}
	card := func(key string) int64 {
		t.Helper()
		n, err := rdb.ZCard(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	const n = 1200 // more than one sweep batch
	for i := range n {
		put("swept", fmt.Sprintf("e%04d", i), 50*time.Millisecond)
	}
	put("swept", "forever", 0)
	put("swept", "hour", time.Hour)
	put("listed", "short", 50*time.Millisecond)
	put("listed", "forever", 0)
	// A re-put without ttl takes the key off the expiry index.
	put("swept", "was-short", time.Millisecond)
	put("swept", "was-short", 0)

	sw, ls := s.bucket("swept"), s.bucket("listed")
	if got, want := card(sw.idx), int64(n+3); got != want {
		t.Fatalf("index has %d members, want %d", got, want)
	}
	if got, want := card(sw.exp), int64(n+1); got != want {
		t.Fatalf("expiry index has %d members, want %d", got, want)
	}
	waitGone(t, s, "swept", fmt.Sprintf("e%04d", n-1))
	waitGone(t, s, "listed", "short")

	var listed []string
	if err := s.List(ctx, "listed", "", func(k string, _ []byte) bool { listed = append(listed, k); return true }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(listed) != "[forever]" {
		t.Fatalf("List = %q", listed)
	}
	if got := card(ls.idx); got != 1 {
		t.Errorf("after List, the index has %d members, want 1 (the expired one pruned)", got)
	}

	removed, err := s.sweep(ctx)
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	// The swept bucket's expired entries; "listed/short" was pruned by List.
	if removed != n {
		t.Errorf("sweep removed %d index entries, want %d", removed, n)
	}
	if got, want := card(sw.idx), int64(3); got != want {
		t.Errorf("after sweep, index has %d members, want %d", got, want)
	}
	if got, want := card(sw.exp), int64(1); got != want {
		t.Errorf("after sweep, expiry index has %d members, want %d (the hour entry)", got, want)
	}
	if got := card(ls.exp); got != 0 {
		t.Errorf("after sweep, the listed bucket's expiry index has %d members, want 0", got)
	}
	for _, k := range []string{"forever", "hour", "was-short"} {
		if _, err := s.Get(ctx, "swept", k); err != nil {
			t.Errorf("Get(%q) after sweep: %v", k, err)
		}
	}
}

// TestSweeperRuns lets the background sweeper, not a direct call, clean
// the indexes; it also drops from the expiry index an entry whose TTL was
// removed behind the store's back.
func TestSweeperRuns(t *testing.T) {
	old := sweepInterval
	sweepInterval = 20 * time.Millisecond
	t.Cleanup(func() { sweepInterval = old })
	srv := redistest.Start(t)
	rdb := srv.Client()
	s := openT(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: uniquePrefix("loop")})
	ctx := testCtx(t)
	for i := range 10 {
		if err := s.Put(ctx, "b", fmt.Sprint(i), []byte("v"), 30*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"forever", "persisted"} {
		ttl := time.Duration(0)
		if k == "persisted" {
			ttl = time.Hour
		}
		if err := s.Put(ctx, "b", k, []byte("v"), ttl); err != nil {
			t.Fatal(err)
		}
	}
	b := s.bucket("b")
	if err := rdb.Persist(ctx, b.data("persisted")).Err(); err != nil {
		t.Fatal(err)
	}
	// The persisted entry's expiry score is an hour away; make it due.
	if err := rdb.ZAdd(ctx, b.exp, redis.Z{Score: 1, Member: "persisted"}).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		idx, err1 := rdb.ZCard(ctx, b.idx).Result()
		exp, err2 := rdb.ZCard(ctx, b.exp).Result()
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		if idx == 2 && exp == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sweeper left %d index and %d expiry index members, want 2 and 0", idx, exp)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
	for _, k := range []string{"forever", "persisted"} {
		if _, err := s.Get(ctx, "b", k); err != nil {
			t.Errorf("Get(%q) after sweeps: %v", k, err)
		}
	}
}

func waitGone(t *testing.T, s *Store, bucket, key string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := s.Get(testCtx(t), bucket, key)
		if errors.Is(err, store.ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s not expired: %v", bucket, key, err)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
}

// TestKeysStayUnderPrefix checks that everything the store writes is under
// its prefix (so one ACL key pattern covers it), and values are stored as
// given.
func TestKeysStayUnderPrefix(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	prefix := uniquePrefix("layout")
	s := openT(t, Config{Addrs: []string{srv.Addr()}, KeyPrefix: prefix})
	if s.Prefix() != prefix {
		t.Errorf("Prefix() = %q, want %q", s.Prefix(), prefix)
	}
	if s.Client() == nil {
		t.Error("Client() = nil")
	}
	ctx := testCtx(t)
	val := []byte("\x00binary\xffvalue")
	if err := s.Put(ctx, "a{b}", "k", val, time.Minute); err != nil {
		t.Fatal(err)
	}
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix) {
			t.Errorf("key %q outside the prefix %q", k, prefix)
		}
	}
	if len(keys) != 4 { // entry, idx, exp, bucket set
		t.Errorf("keys = %q, want 4", keys)
	}
	got, err := rdb.Get(ctx, prefix+"{a%7Bb%7D}k:k").Bytes()
	if err != nil || !bytes.Equal(got, val) {
		t.Errorf("raw entry = %q, %v", got, err)
	}
}

func TestOpenFailsFast(t *testing.T) {
	// A port nothing listens on (the server is stopped before Open).
	srv := redistest.Start(t)
	addr := srv.Addr()
	srv.Stop()
	start := time.Now()
	_, err := Open(testCtx(t), Config{Addrs: []string{addr}}, nil)
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("Open of a stopped server: %v; want an error naming %s", err, addr)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("Open took %v to fail", d)
	}

	// And a cancelled ctx wins over the timeouts.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Open(ctx, Config{Addrs: []string{addr}}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with a cancelled ctx: %v, want context.Canceled", err)
	}

	// An invalid config is not even dialled.
	if _, err := Open(t.Context(), Config{}, nil); err == nil || !strings.Contains(err.Error(), "addrs") {
		t.Errorf("Open with no addrs: %v", err)
	}
}
