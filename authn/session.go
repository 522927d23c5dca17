package authn

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ztna-dev/ztna/internal/bus"
	"github.com/ztna-dev/ztna/internal/store"
)

// SessionCookie is the name of the cookie that carries the session ID on
// every host the edge serves. The __Host- prefix makes browsers refuse it
// unless it is Secure, host-only and Path=/.
const SessionCookie = "__Host-ztna_session"

// Store buckets owned by authn.
const (
	bucketSessions   = "sessions"
	bucketLoginState = "login_state"
	bucketHandoff    = "handoff"
	bucketLogoutJTI  = "logout_jti"
	bucketRevoked    = "revoked_sessions"
	// bucketRefreshLock holds one marker per session being refreshed, so
	// replicas never refresh one at the same time.
	bucketRefreshLock = "refresh_lock"
)

// sessionIDLen is the length of an encoded session ID: 32 random bytes,
// unpadded base64url.
const sessionIDLen = 43

// ErrNoSession means the request carries no live session.
var ErrNoSession = errors.New("no session")

// Session is a server-side login. The browser knows only ID; the store keys
// the record by Key (a hash of ID), so a copy of the store does not yield
// usable cookies.
type Session struct {
	ID  string `json:"-"` // the secret cookie value; never stored, never logged
	Key string `json:"-"` // hex SHA-256 of ID: the store key

	Identity     Identity  `json:"identity"`
	CreatedAt    time.Time `json:"created_at"`
	ExpiresAt    time.Time `json:"expires_at"` // absolute lifetime
	IdleTimeout  Duration  `json:"idle_timeout"`
	LastSeen     time.Time `json:"last_seen"`
	IDToken      string    `json:"id_token,omitempty"`      // for RP-initiated logout (id_token_hint)
	RefreshToken string    `json:"refresh_token,omitempty"` // secret
	RefreshAt    time.Time `json:"refresh_at,omitempty"`    // when to refresh the IdP tokens
	IdPSession   string    `json:"idp_sid,omitempty"`       // the IdP's sid claim, for back-channel logout
}

// Duration is a time.Duration that encodes as nanoseconds in JSON records.
type Duration = time.Duration

// Ref is a short, non-secret reference to the session for logs, audit
// events and assertions.
func (s Session) Ref() string { return RefOf(s.Key) }

// RefOf is the reference of the session with store key key.
func RefOf(key string) string { return key[:16] }

// LogValue keeps secrets out of logs whatever a caller passes to slog.
func (s Session) LogValue() slog.Value {
	return slog.GroupValue(slog.String("ref", s.Ref()), slog.String("user", s.Identity.Subject))
}

// NewSessionID returns a fresh random session ID.
func NewSessionID() string { return randomToken() }

func randomToken() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err)) // never happens on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// ParseSessionID checks that s has the exact shape of a session ID and
// returns its store key. Cookie values are attacker-controlled: anything
// else is rejected before it reaches a cache or store lookup.
func ParseSessionID(s string) (key string, ok bool) {
	if len(s) != sessionIDLen {
		return "", false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "", false
		}
	}
	// The last character carries 2 padding bits that must be zero, so each
	// ID has exactly one encoding.
	if _, err := base64.RawURLEncoding.Strict().DecodeString(s); err != nil {
		return "", false
	}
	return hashKey(s), true
}

// validKey reports whether key has the form of a session's store key (a
// hex SHA-256): keys from other replicas are checked before use.
func validKey(key string) bool {
	if len(key) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(key)
	return err == nil
}

func hashKey(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// SessionsConfig are the lifetimes of sessions.
type SessionsConfig struct {
	// IdleTimeout ends a session unused for this long. 0 → 8h.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// AbsoluteTimeout ends a session this long after login, used or not. 0 → 24h.
	AbsoluteTimeout time.Duration `yaml:"absolute_timeout"`
}

func (c SessionsConfig) withDefaults() SessionsConfig {
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 8 * time.Hour
	}
	if c.AbsoluteTimeout <= 0 {
		c.AbsoluteTimeout = 24 * time.Hour
	}
	return c
}

// cacheTTL bounds how long a cached session is trusted without re-reading
// the store; revocations made elsewhere are seen within this time even
// before the revocation bus (replicas) tells us.
const cacheTTL = 30 * time.Second

// touchEvery is how stale the stored LastSeen may get before it is written
// back: idle tracking must not cost a write per request.
const touchEvery = time.Minute

// maxCached bounds the session cache.
const maxCached = 100_000

type cached struct {
	s        *Session
	loadedAt time.Time
	lastSeen atomic.Int64 // unix nanos, newer than s.LastSeen while in use
	stored   atomic.Int64 // unix nanos of the LastSeen last written to the store
}

// Sessions keeps sessions in the store with a memory cache in front: the
// per-request lookup is a hash and a map read, with no I/O when nothing
// changed.
type Sessions struct {
	st     store.Store
	cfg    SessionsConfig
	logger *slog.Logger
	now    func() time.Time

	mu    sync.RWMutex
	cache map[string]*cached // by store key
	byID  map[string]*cached // the same entries by cookie value: a hit skips decoding and hashing

	onRevokeMu sync.RWMutex
	onRevoke   []func(key string)
	onUpdate   []func(s *Session)

	announce bus.Publisher // tells the edge's other replicas

	wg      sync.WaitGroup // background touches
	touchMu sync.Mutex     // serialises last-seen write-backs
}

// NewSessions returns the session keeper over st.
func NewSessions(st store.Store, cfg SessionsConfig, logger *slog.Logger) *Sessions {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Sessions{st: st, cfg: cfg.withDefaults(), logger: logger, now: time.Now, cache: make(map[string]*cached), byID: make(map[string]*cached)}
}

// OnRevoke registers fn to be called with the key of every session that is
// revoked or expires through this keeper, so live connections under it can
// be closed.
func (m *Sessions) OnRevoke(fn func(key string)) {
	m.onRevokeMu.Lock()
	m.onRevoke = append(m.onRevoke, fn)
	m.onRevokeMu.Unlock()
}

// OnUpdate registers fn to be called with every session whose record
// Update replaced (a token refresh brought new attributes), so live
// connections can be re-authorized with the new identity.
func (m *Sessions) OnUpdate(fn func(s *Session)) {
	m.onRevokeMu.Lock()
	m.onUpdate = append(m.onUpdate, fn)
	m.onRevokeMu.Unlock()
}

// Announce sets how this keeper tells the edge's other replicas about a
// session it revoked (bus.SessionRevoked) or updated (bus.SessionUpdated),
// after the store has the change: a bus's Publish. Call it before use.
func (m *Sessions) Announce(publish bus.Publisher) { m.announce = publish }

// Forget applies another replica's revocation of the session with key:
// the cached copy is dropped and, unless the store still holds the session
// as live, the revoke hooks run (its live connections close here too). A
// store that cannot be read counts as "revoked": the other replica said so.
func (m *Sessions) Forget(ctx context.Context, key string) {
	if !validKey(key) {
		return
	}
	m.drop(key)
	if _, err := m.load(ctx, key); err == nil {
		return
	} else if !errors.Is(err, store.ErrNotFound) {
		m.logger.Warn("session revoked by another replica; the store could not confirm it, ending it here too", "ref", RefOf(key), "err", err)
	}
	m.notify(key)
}

// Reread applies another replica's update of the session with key (new
// attributes from a token refresh): a cached copy is replaced from the
// store and the update hooks run, so its live connections are decided
// again with the new identity. A session not cached here is left alone.
func (m *Sessions) Reread(ctx context.Context, key string) {
	if !validKey(key) || m.cached(key) == nil {
		return
	}
	s, err := m.load(ctx, key)
	if err != nil {
		m.Forget(ctx, key)
		return
	}
	if c := m.cachedEntry(key); c != nil {
		s.ID = c.s.ID
	}
	m.put(s, m.now())
	m.runUpdateHooks(s)
}

// Resync reconciles after events from other replicas may have been
// missed (the bus reconnected): every cached session is dropped, so the
// next use re-reads the store, and each session of live (those holding
// live connections) that the store no longer holds is ended here too.
func (m *Sessions) Resync(ctx context.Context, live []string) {
	m.mu.Lock()
	clear(m.cache)
	clear(m.byID)
	m.mu.Unlock()
	for _, key := range live {
		if _, err := m.load(ctx, key); err != nil && errors.Is(err, store.ErrNotFound) {
			m.notify(key)
		}
	}
}

// Create stores a new session for id and returns it with its secret ID.
func (m *Sessions) Create(ctx context.Context, id Identity, t Tokens) (*Session, error) {
	now := m.now()
	s := &Session{
		ID:           NewSessionID(),
		Identity:     id,
		CreatedAt:    now,
		ExpiresAt:    now.Add(m.cfg.AbsoluteTimeout),
		IdleTimeout:  m.cfg.IdleTimeout,
		LastSeen:     now,
		IDToken:      t.IDToken,
		RefreshToken: t.RefreshToken,
		RefreshAt:    t.refreshAt(),
		IdPSession:   t.IdPSession,
	}
	s.Key = hashKey(s.ID)
	if err := m.save(ctx, s); err != nil {
		return nil, err
	}
	m.put(s, now)
	return s, nil
}

// Get returns the live session named by the cookie value id.
func (m *Sessions) Get(ctx context.Context, id string) (*Session, error) {
	if len(id) != sessionIDLen {
		return nil, ErrNoSession
	}
	now := m.now()
	m.mu.RLock()
	c := m.byID[id]
	m.mu.RUnlock()
	var key string
	if c != nil {
		key = c.s.Key
	}
	if c == nil || now.Sub(c.loadedAt) > cacheTTL {
		var ok bool
		if key, ok = ParseSessionID(id); !ok {
			return nil, ErrNoSession
		}
		s, err := m.load(ctx, key)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				m.drop(key)
				return nil, ErrNoSession
			}
			return nil, fmt.Errorf("load session %s: %w", key[:16], err)
		}
		s.ID = id
		c = m.put(s, now)
	}
	s := c.s
	last := time.Unix(0, c.lastSeen.Load())
	if now.After(s.ExpiresAt) || now.Sub(last) > s.IdleTimeout {
		m.expire(key)
		return nil, ErrNoSession
	}
	c.lastSeen.Store(now.UnixNano())
	if now.Sub(time.Unix(0, c.stored.Load())) > touchEvery {
		m.touch(c, now)
	}
	return s, nil
}

// InUse records that the session with key holds live exchanges (a
// WebSocket, a streamed response, a tunnel) now: they use it without
// calling Get, so its idle clock restarts here. Past its absolute timeout
// the session ends instead and the revoke hooks close those exchanges: a
// live connection does not outlive its session. The edge calls it from its
// sweep; a session not in this replica's cache is left alone.
func (m *Sessions) InUse(key string) {
	m.mu.RLock()
	c := m.cache[key]
	m.mu.RUnlock()
	if c == nil {
		return
	}
	now := m.now()
	if now.After(c.s.ExpiresAt) {
		m.expire(key)
		return
	}
	c.lastSeen.Store(now.UnixNano())
	if now.Sub(time.Unix(0, c.stored.Load())) > touchEvery {
		m.touch(c, now)
	}
}

// Update replaces the stored record of s (after a token refresh or an
// attribute change) and the cached copy.
func (m *Sessions) Update(ctx context.Context, s *Session) error {
	if err := m.save(ctx, s); err != nil {
		return err
	}
	m.put(s, m.now())
	// A revocation may have landed while the caller (a token refresh) was
	// working. Checking the tombstone after the cache write means either we
	// see it here, or Revoke's cache drop comes after our write.
	if _, err := m.st.Get(ctx, bucketRevoked, s.Key); err == nil {
		m.drop(s.Key)
		_ = m.st.Delete(ctx, bucketSessions, s.Key)
		return ErrNoSession
	} else if !errors.Is(err, store.ErrNotFound) {
		m.drop(s.Key)
		return fmt.Errorf("update session %s: %w", s.Ref(), err)
	}
	m.runUpdateHooks(s)
	m.announce.Tell(bus.SessionUpdated, s.Key)
	return nil
}

func (m *Sessions) runUpdateHooks(s *Session) {
	m.onRevokeMu.RLock()
	fns := m.onUpdate
	m.onRevokeMu.RUnlock()
	for _, fn := range fns {
		fn(s)
	}
}

// Revoke ends the session with the given key everywhere.
func (m *Sessions) Revoke(ctx context.Context, key string) error {
	// The tombstone outlives any session, so a background write racing with
	// this revocation (a last-seen touch, a token refresh) cannot bring the
	// session back: load refuses tombstoned keys.
	if err := m.st.Put(ctx, bucketRevoked, key, []byte{1}, m.cfg.AbsoluteTimeout); err != nil {
		return fmt.Errorf("revoke session %s: %w", key[:min(16, len(key))], err)
	}
	if err := m.st.Delete(ctx, bucketSessions, key); err != nil {
		return fmt.Errorf("revoke session %s: %w", key[:min(16, len(key))], err)
	}
	m.drop(key)
	m.notify(key)
	m.announce.Tell(bus.SessionRevoked, key)
	return nil
}

// RevokeMatching revokes every session for which match returns true and
// reports how many it revoked. It scans the store: used by back-channel
// logout and admin actions, not per request.
func (m *Sessions) RevokeMatching(ctx context.Context, match func(*Session) bool) (int, error) {
	found, err := m.Matching(ctx, match)
	if err != nil {
		return 0, err
	}
	for _, s := range found {
		if err := m.Revoke(ctx, s.Key); err != nil {
			return 0, err
		}
	}
	return len(found), nil
}

// Matching returns the stored sessions for which match returns true
// (without their secret IDs). It scans the store: for admin actions, not
// per request.
func (m *Sessions) Matching(ctx context.Context, match func(*Session) bool) ([]*Session, error) {
	var found []*Session
	err := m.st.List(ctx, bucketSessions, "", func(key string, v []byte) bool {
		var s Session
		if json.Unmarshal(v, &s) == nil {
			s.Key = key
			if match(&s) {
				found = append(found, &s)
			}
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	return found, nil
}

// Wait blocks until background writes finish (shutdown, tests).
func (m *Sessions) Wait() { m.wg.Wait() }

func (m *Sessions) save(ctx context.Context, s *Session) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode session: %w", err)
	}
	ttl := s.ExpiresAt.Sub(m.now())
	if ttl <= 0 {
		return ErrNoSession
	}
	if err := m.st.Put(ctx, bucketSessions, s.Key, b, ttl); err != nil {
		return fmt.Errorf("store session %s: %w", s.Ref(), err)
	}
	return nil
}

func (m *Sessions) load(ctx context.Context, key string) (*Session, error) {
	if _, err := m.st.Get(ctx, bucketRevoked, key); err == nil {
		return nil, store.ErrNotFound
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	b, err := m.st.Get(ctx, bucketSessions, key)
	if err != nil {
		return nil, err
	}
	var s Session
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode session: %w", err)
	}
	s.Key = key
	return &s, nil
}

func (m *Sessions) put(s *Session, now time.Time) *cached {
	c := &cached{s: s, loadedAt: now}
	last := s.LastSeen
	m.mu.Lock()
	if old := m.cache[s.Key]; old != nil {
		if t := time.Unix(0, old.lastSeen.Load()); t.After(last) {
			last = t
		}
		delete(m.byID, old.s.ID)
	}
	c.lastSeen.Store(last.UnixNano())
	c.stored.Store(s.LastSeen.UnixNano())
	if len(m.cache) >= maxCached {
		for k, e := range m.cache { // evict an arbitrary entry: a miss only costs a store read
			delete(m.cache, k)
			delete(m.byID, e.s.ID)
			break
		}
	}
	m.cache[s.Key] = c
	if s.ID != "" {
		m.byID[s.ID] = c
	}
	m.mu.Unlock()
	return c
}

// cached returns the session with store key key from memory, or nil.
// cachedEntry returns the cache entry of key, or nil.
func (m *Sessions) cachedEntry(key string) *cached {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.cache[key]
}

func (m *Sessions) cached(key string) *Session {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if c := m.cache[key]; c != nil {
		return c.s
	}
	return nil
}

func (m *Sessions) drop(key string) {
	m.mu.Lock()
	if c := m.cache[key]; c != nil {
		delete(m.byID, c.s.ID)
	}
	delete(m.cache, key)
	m.mu.Unlock()
}

func (m *Sessions) expire(key string) {
	m.drop(key)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := m.st.Delete(ctx, bucketSessions, key); err != nil {
			m.logger.Warn("delete expired session", "ref", key[:16], "err", err)
		}
	}()
	m.notify(key)
}

// touch writes LastSeen back in the background, at most once per touchEvery.
func (m *Sessions) touch(c *cached, now time.Time) {
	prev := c.stored.Load()
	if !c.stored.CompareAndSwap(prev, now.UnixNano()) {
		return // another request is already writing it
	}
	key := c.s.Key
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// Serialised, and applied to the stored record rather than to our
		// copy: writes must neither go back in time nor overwrite a record
		// a token refresh has just replaced. A revocation racing with this
		// write is held by its tombstone (see Revoke).
		m.touchMu.Lock()
		defer m.touchMu.Unlock()
		cur, err := m.load(ctx, key)
		if err != nil || !cur.LastSeen.Before(now) {
			return
		}
		cur.LastSeen = now
		if err := m.save(ctx, cur); err != nil {
			m.logger.Warn("update session last-seen", "ref", cur.Ref(), "err", err)
		}
	}()
}

func (m *Sessions) notify(key string) {
	m.onRevokeMu.RLock()
	fns := m.onRevoke
	m.onRevokeMu.RUnlock()
	for _, fn := range fns {
		fn(key)
	}
}
