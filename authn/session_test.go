package authn

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/memory"
)

// The package starts goroutines (background touches and deletes, token
// refreshes); none may outlive its owner.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testClock is a settable clock for time travel; safe for the background
// writers that read it.
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *testClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *testClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func newMemoryStore(t *testing.T) *memory.Store {
	t.Helper()
	st := memory.New(memory.Options{})
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// newTestSessions returns a keeper over st whose clock the test controls.
func newTestSessions(t *testing.T, st store.Store, cfg SessionsConfig) (*Sessions, *testClock) {
	t.Helper()
	m := NewSessions(st, cfg, nil)
	clock := newTestClock()
	m.now = clock.Now
	t.Cleanup(m.Wait)
	return m, clock
}

// revocations records the keys OnRevoke reports.
type revocations struct {
	mu   sync.Mutex
	keys []string
}

func (r *revocations) record(key string) {
	r.mu.Lock()
	r.keys = append(r.keys, key)
	r.mu.Unlock()
}

func (r *revocations) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.keys...)
}

func (r *revocations) has(key string) bool {
	for _, k := range r.list() {
		if k == key {
			return true
		}
	}
	return false
}

var testIdentity = Identity{
	Subject: "u-alice", Email: "alice@example.com", Name: "Alice Kim",
	Groups:     []string{"engineering", "security"},
	Attributes: map[string]string{"department": "Security Tech"},
}

var testTokens = Tokens{
	IDToken: "header.payload.signature", RefreshToken: "refresh-secret-value",
	IdPSession: "idp-sid-1", refreshEvery: 5 * time.Minute,
}

func TestSessionCreateGet(t *testing.T) {
	ctx := t.Context()
	st := newMemoryStore(t)
	m, clock := newTestSessions(t, st, SessionsConfig{})

	s, err := m.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.ID) != sessionIDLen {
		t.Fatalf("ID has %d characters, want %d", len(s.ID), sessionIDLen)
	}
	if key, ok := ParseSessionID(s.ID); !ok || key != s.Key || key != hashKey(s.ID) {
		t.Fatalf("Key = %q, ParseSessionID = %q %v, want hashKey(ID)", s.Key, key, ok)
	}
	if s.Ref() != s.Key[:16] {
		t.Errorf("Ref = %q", s.Ref())
	}
	now := clock.Now()
	if !s.ExpiresAt.Equal(now.Add(24*time.Hour)) || s.IdleTimeout != 8*time.Hour {
		t.Errorf("ExpiresAt = %v, IdleTimeout = %v; want now+24h and 8h defaults", s.ExpiresAt, s.IdleTimeout)
	}
	if s.RefreshAt.IsZero() {
		t.Error("RefreshAt is zero although there is a refresh token")
	}

	got, err := m.Get(ctx, s.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if !reflect.DeepEqual(got.Identity, testIdentity) {
		t.Errorf("Identity = %+v", got.Identity)
	}

	// A second keeper (another replica, or this one after a restart) has
	// an empty cache and must read the same record from the store.
	cold, _ := newTestSessions(t, st, SessionsConfig{})
	got, err = cold.Get(ctx, s.ID)
	if err != nil {
		t.Fatalf("Get from a cold cache: %v", err)
	}
	if got.ID != s.ID || got.Key != s.Key || !reflect.DeepEqual(got.Identity, testIdentity) ||
		got.IDToken != testTokens.IDToken || got.RefreshToken != testTokens.RefreshToken ||
		got.IdPSession != testTokens.IdPSession || !got.ExpiresAt.Equal(s.ExpiresAt) ||
		!got.CreatedAt.Equal(s.CreatedAt) || got.IdleTimeout != s.IdleTimeout {
		t.Errorf("round trip through the store changed the session:\n got %+v\nwant %+v", got, s)
	}

	// No refresh token, nothing to refresh.
	s2, err := m.Create(ctx, testIdentity, Tokens{IDToken: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if !s2.RefreshAt.IsZero() {
		t.Errorf("RefreshAt = %v without a refresh token", s2.RefreshAt)
	}
	if s2.ID == s.ID {
		t.Error("two sessions got the same ID")
	}
}

func TestSessionGetUnknown(t *testing.T) {
	ctx := t.Context()
	cs := &countingStore{Store: newMemoryStore(t)}
	m, _ := newTestSessions(t, cs, SessionsConfig{})

	if _, err := m.Get(ctx, NewSessionID()); !errors.Is(err, ErrNoSession) {
		t.Fatalf("unknown ID: got %v, want ErrNoSession", err)
	}
	before := cs.gets.Load()
	for _, id := range []string{"", "garbage", strings.Repeat("A", 44), strings.Repeat("A", 42) + "B", strings.Repeat("A", 42) + "="} {
		if _, err := m.Get(ctx, id); !errors.Is(err, ErrNoSession) {
			t.Errorf("Get(%q): got %v, want ErrNoSession", id, err)
		}
	}
	if n := cs.gets.Load() - before; n != 0 {
		t.Errorf("malformed IDs caused %d store reads, want 0", n)
	}
}

func TestParseSessionID(t *testing.T) {
	valid := base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32))
	canonicalEnd := strings.Repeat("A", 42) + "A"
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"fresh ID", NewSessionID(), true},
		{"fixed ID with - and _", valid, true},
		{"all zero bytes", canonicalEnd, true},
		{"last character with zero padding bits", strings.Repeat("_", 42) + "w", true},
		{"empty", "", false},
		{"one short", valid[:42], false},
		{"one long", valid + "A", false},
		{"padded", valid + "=", false},
		{"padding inside", valid[:42] + "=", false},
		{"std alphabet +", "+" + valid[1:], false},
		{"std alphabet /", "/" + valid[1:], false},
		{"dot", "." + valid[1:], false},
		{"space", " " + valid[1:], false},
		{"NUL", "\x00" + valid[1:], false},
		{"non-ASCII", "\u00e9" + valid[2:], false},
		{"non-canonical last character B", strings.Repeat("A", 42) + "B", false},
		{"non-canonical last character D", strings.Repeat("A", 42) + "D", false},
		{"non-canonical last character _", strings.Repeat("A", 42) + "_", false},
		{"hex key instead of ID", hashKey(valid), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, ok := ParseSessionID(tt.in)
			if ok != tt.ok {
				t.Fatalf("ParseSessionID(%q) ok = %v, want %v", tt.in, ok, tt.ok)
			}
			if ok && key != hashKey(tt.in) {
				t.Fatalf("key = %q, want hashKey", key)
			}
			if !ok && key != "" {
				t.Fatalf("rejected, but key = %q", key)
			}
		})
	}
}

func TestSessionIdleTimeout(t *testing.T) {
	ctx := t.Context()
	st := newMemoryStore(t)
	m, clock := newTestSessions(t, st, SessionsConfig{IdleTimeout: time.Hour, AbsoluteTimeout: 10 * time.Hour})
	var rev revocations
	m.OnRevoke(rev.record)
	s, err := m.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}

	// Use keeps the session alive well past one idle timeout.
	for range 4 {
		clock.Advance(50 * time.Minute)
		if _, err := m.Get(ctx, s.ID); err != nil {
			t.Fatalf("Get after 50m of idleness: %v", err)
		}
	}
	m.Wait()
	// Another replica sees the idle clock written back to the store.
	cold, _ := newTestSessions(t, st, SessionsConfig{})
	cold.now = clock.Now
	if _, err := cold.Get(ctx, s.ID); err != nil {
		t.Fatalf("cold Get: %v (last-seen not written back?)", err)
	}
	if len(rev.list()) != 0 {
		t.Fatalf("OnRevoke called for a live session: %v", rev.list())
	}

	clock.Advance(time.Hour + time.Second)
	if _, err := m.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Fatalf("Get after idle timeout: got %v, want ErrNoSession", err)
	}
	if !rev.has(s.Key) {
		t.Errorf("OnRevoke not called with the key of the idle session; got %v", rev.list())
	}
	m.Wait()
	if _, err := st.Get(ctx, bucketSessions, s.Key); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("expired session still in the store: %v", err)
	}
	if _, err := m.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("second Get after idle timeout: got %v", err)
	}
}

// TestSessionInUse: a session holding live exchanges stays alive past its
// idle timeout without a Get, but not past its absolute timeout: then it
// ends and the revoke hooks run (which close the exchanges).
func TestSessionInUse(t *testing.T) {
	ctx := t.Context()
	m, clock := newTestSessions(t, newMemoryStore(t), SessionsConfig{IdleTimeout: time.Hour, AbsoluteTimeout: 3 * time.Hour})
	var rev revocations
	m.OnRevoke(rev.record)
	s, err := m.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, s.ID); err != nil { // cached, as at a tunnel's hello
		t.Fatal(err)
	}
	for range 5 {
		clock.Advance(30 * time.Minute)
		m.InUse(s.Key)
	}
	if _, err := m.Get(ctx, s.ID); err != nil {
		t.Fatalf("Get after 2h30 in use with an idle timeout of 1h: %v", err)
	}
	if len(rev.list()) != 0 {
		t.Fatalf("revoked while in use: %v", rev.list())
	}
	clock.Advance(31 * time.Minute)
	m.InUse(s.Key)
	if !rev.has(s.Key) {
		t.Fatal("a session in use past its absolute timeout was not ended")
	}
	m.Wait()
	if _, err := m.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("Get after the absolute timeout: %v", err)
	}
	m.InUse("no-such-key") // not cached: nothing happens
}

func TestSessionAbsoluteTimeout(t *testing.T) {
	ctx := t.Context()
	st := newMemoryStore(t)
	m, clock := newTestSessions(t, st, SessionsConfig{IdleTimeout: 8 * time.Hour, AbsoluteTimeout: 24 * time.Hour})
	var rev revocations
	m.OnRevoke(rev.record)
	s, err := m.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	for elapsed := 7 * time.Hour; elapsed < 24*time.Hour; elapsed += 7 * time.Hour {
		clock.Advance(7 * time.Hour)
		if _, err := m.Get(ctx, s.ID); err != nil {
			t.Fatalf("Get at %v: %v", elapsed, err)
		}
	}
	clock.Advance(3*time.Hour + time.Second) // 24h and 1s after login, used 3h ago
	if _, err := m.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Fatalf("Get after the absolute timeout: got %v, want ErrNoSession", err)
	}
	if !rev.has(s.Key) {
		t.Errorf("OnRevoke not called for the expired session; got %v", rev.list())
	}
	// A cold keeper refuses it too, whatever the store still holds.
	m.Wait()
	cold, _ := newTestSessions(t, st, SessionsConfig{})
	cold.now = clock.Now
	if _, err := cold.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("cold Get after the absolute timeout: got %v", err)
	}
	// An expired session cannot be written back.
	if err := m.Update(ctx, s); err == nil {
		t.Error("Update of an expired session succeeded")
	}
}

func TestSessionRevoke(t *testing.T) {
	ctx := t.Context()
	st := newMemoryStore(t)
	m, _ := newTestSessions(t, st, SessionsConfig{})
	other, _ := newTestSessions(t, st, SessionsConfig{})
	var rev revocations
	m.OnRevoke(rev.record)

	s, err := m.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	keep, err := m.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if err := m.Revoke(ctx, s.Key); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if _, err := m.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("Get after Revoke: got %v, want ErrNoSession", err)
	}
	if _, err := other.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("Get on another keeper after Revoke: got %v, want ErrNoSession", err)
	}
	if got := rev.list(); len(got) != 1 || got[0] != s.Key {
		t.Errorf("OnRevoke keys = %v, want [%s]", got, s.Key)
	}
	if _, err := m.Get(ctx, keep.ID); err != nil {
		t.Errorf("unrelated session: %v", err)
	}
}

func TestSessionRevokeMatching(t *testing.T) {
	ctx := t.Context()
	st := newMemoryStore(t)
	m, _ := newTestSessions(t, st, SessionsConfig{})
	var rev revocations
	m.OnRevoke(rev.record)

	bob := Identity{Subject: "u-bob", Email: "bob@example.com"}
	a1, _ := m.Create(ctx, testIdentity, testTokens)
	a2, _ := m.Create(ctx, testIdentity, Tokens{})
	b1, err := m.Create(ctx, bob, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	n, err := m.RevokeMatching(ctx, func(s *Session) bool { return s.Identity.Subject == "u-alice" })
	if err != nil || n != 2 {
		t.Fatalf("RevokeMatching = %d, %v; want 2", n, err)
	}
	for _, s := range []*Session{a1, a2} {
		if _, err := m.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
			t.Errorf("alice's session %s survived: %v", s.Ref(), err)
		}
		if !rev.has(s.Key) {
			t.Errorf("OnRevoke not called for %s", s.Ref())
		}
	}
	if _, err := m.Get(ctx, b1.ID); err != nil {
		t.Errorf("bob's session: %v", err)
	}
	// The matcher sees the store key, never the secret ID.
	var sawID bool
	_, _ = m.RevokeMatching(ctx, func(s *Session) bool {
		sawID = sawID || s.ID != "" || s.Key != b1.Key
		return false
	})
	if sawID {
		t.Error("RevokeMatching exposed an ID or a wrong key to the matcher")
	}
}

// hookStore lets a test act in the middle of a store call.
type hookStore struct {
	store.Store
	mu        sync.Mutex
	beforePut func(bucket, key string)
}

func (h *hookStore) Put(ctx context.Context, bucket, key string, value []byte, ttl time.Duration) error {
	h.mu.Lock()
	f := h.beforePut
	h.mu.Unlock()
	if f != nil {
		f(bucket, key)
	}
	return h.Store.Put(ctx, bucket, key, value, ttl)
}

func (h *hookStore) setBeforePut(f func(bucket, key string)) {
	h.mu.Lock()
	h.beforePut = f
	h.mu.Unlock()
}

// countingStore counts Get calls.
type countingStore struct {
	store.Store
	gets atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, bucket, key string) ([]byte, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, bucket, key)
}

// A last-seen touch that read the record before a revocation and writes it
// after must not bring the session back.
func TestSessionRevokeBeatsRacingTouch(t *testing.T) {
	ctx := t.Context()
	hs := &hookStore{Store: newMemoryStore(t)}
	m, clock := newTestSessions(t, hs, SessionsConfig{})
	s, err := m.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}

	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hs.setBeforePut(func(bucket, _ string) {
		if bucket == bucketSessions {
			once.Do(func() {
				close(entered)
				<-release
			})
		}
	})
	clock.Advance(2 * touchEvery) // the next Get writes last-seen back
	if _, err := m.Get(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("the background touch never wrote the session")
	}
	revokeErr := m.Revoke(ctx, s.Key)
	close(release)
	m.Wait()
	if revokeErr != nil {
		t.Fatalf("Revoke: %v", revokeErr)
	}
	if _, err := hs.Get(ctx, bucketSessions, s.Key); err != nil {
		t.Fatalf("the touch did not rewrite the record (%v): this test no longer reproduces the race", err)
	}

	if _, err := m.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("Get after Revoke and a racing touch: got %v, want ErrNoSession", err)
	}
	cold, _ := newTestSessions(t, hs, SessionsConfig{})
	cold.now = clock.Now
	if _, err := cold.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("cold Get after Revoke and a racing touch: got %v, want ErrNoSession", err)
	}
}

// A token refresh that loaded the session before a logout and stores its
// result after must not bring the session back (Service.refresh does
// exactly this: Get … Refresh at the IdP … Update).
func TestSessionRevokeBeatsRacingUpdate(t *testing.T) {
	ctx := t.Context()
	st := newMemoryStore(t)
	m, clock := newTestSessions(t, st, SessionsConfig{})
	s, err := m.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	refreshed := *s // what the refresh goroutine holds
	refreshed.Identity.Attributes = map[string]string{"department": "Security Policy"}

	if err := m.Revoke(ctx, s.Key); err != nil {
		t.Fatal(err)
	}
	_ = m.Update(ctx, &refreshed) // may report the revocation; must not undo it

	if got, err := m.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("Get after Revoke and a late Update: got session %s (err %v), want ErrNoSession", got.Ref(), err)
	}
	cold, _ := newTestSessions(t, st, SessionsConfig{})
	cold.now = clock.Now
	if _, err := cold.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("cold Get after Revoke and a late Update: got %v, want ErrNoSession", err)
	}
}

func TestSessionUpdate(t *testing.T) {
	ctx := t.Context()
	st := newMemoryStore(t)
	m, _ := newTestSessions(t, st, SessionsConfig{})
	s, err := m.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	cp := *s
	cp.Identity = Identity{Subject: "u-alice", Attributes: map[string]string{"department": "Security Policy"}}
	cp.RefreshToken = "rotated"
	if err := m.Update(ctx, &cp); err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]*Sessions{"same keeper": m, "cold keeper": NewSessions(st, SessionsConfig{}, nil)} {
		got, err := k.Get(ctx, s.ID)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.Identity.Attributes["department"] != "Security Policy" || got.RefreshToken != "rotated" {
			t.Errorf("%s: Update not visible: %+v", name, got)
		}
		k.Wait()
	}
}

// The store must not yield usable cookies: keys are hashes, and no record
// holds the raw session ID.
func TestSessionStoreHoldsNoID(t *testing.T) {
	ctx := t.Context()
	st := newMemoryStore(t)
	m, clock := newTestSessions(t, st, SessionsConfig{})
	var ids []string
	for range 3 {
		s, err := m.Create(ctx, testIdentity, testTokens)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	clock.Advance(2 * touchEvery)
	for _, id := range ids {
		if _, err := m.Get(ctx, id); err != nil { // writes last-seen back
			t.Fatal(err)
		}
	}
	m.Wait()
	if err := m.Revoke(ctx, hashKey(ids[0])); err != nil {
		t.Fatal(err)
	}

	found := map[string]int{}
	for _, bucket := range []string{bucketSessions, bucketRevoked, bucketLoginState, bucketHandoff, bucketLogoutJTI} {
		err := st.List(ctx, bucket, "", func(key string, v []byte) bool {
			found[bucket]++
			for _, id := range ids {
				if strings.Contains(key, id) || bytes.Contains(v, []byte(id)) {
					t.Errorf("bucket %s, key %s holds a raw session ID", bucket, key)
				}
			}
			if bucket == bucketSessions || bucket == bucketRevoked {
				if _, err := hexKey(key); err != nil {
					t.Errorf("bucket %s: key %q is not a hex hash", bucket, key)
				}
			}
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if found[bucketSessions] != 2 || found[bucketRevoked] != 1 {
		t.Fatalf("store holds %v, want 2 sessions and 1 tombstone (did the scan see anything?)", found)
	}
}

func hexKey(k string) (string, error) {
	if !isHexHash(k) {
		return "", errors.New("not a hex hash")
	}
	return k, nil
}

// Whatever form a caller hands slog, no secret reaches the log.
func TestSessionLogValue(t *testing.T) {
	ctx := t.Context()
	m, _ := newTestSessions(t, newMemoryStore(t), SessionsConfig{})
	s, err := m.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	handlers := map[string]func(*bytes.Buffer) slog.Handler{
		"json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		"text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	}
	args := map[string]any{"pointer": s, "value": *s}
	for hname, h := range handlers {
		for aname, arg := range args {
			t.Run(hname+" "+aname, func(t *testing.T) {
				var buf bytes.Buffer
				slog.New(h(&buf)).Info("login", "session", arg)
				out := buf.String()
				for what, secret := range map[string]string{"ID": s.ID, "refresh token": s.RefreshToken, "ID token": s.IDToken} {
					if strings.Contains(out, secret) {
						t.Errorf("log line contains the %s: %s", what, out)
					}
				}
				if !strings.Contains(out, s.Ref()) {
					t.Errorf("log line lacks the session ref: %s", out)
				}
			})
		}
	}
}
