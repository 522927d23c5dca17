// Package memory is an in-process implementation of store.Store: a map
// guarded by a mutex, with the same semantics as the bbolt store (expiry,
// one-time Take, input limits). Unit tests of other packages use it instead
// of a file, and it is the reference the hot in-memory caches are held to.
//
// It must never be used where state has to survive a restart or be shared
// between replicas, and it must never log keys or values (they hold session
// IDs and tokens).
package memory

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ztna-dev/ztna/internal/store"
)

// Options configures New. The zero value is ready to use.
type Options struct {
	// SweepInterval is how often expired entries are removed from memory.
	// Expired entries are invisible at once; sweeping only frees memory.
	// Zero means one minute.
	SweepInterval time.Duration
	// Logger receives sweep statistics at debug level. Nil discards.
	Logger *slog.Logger
}

const defaultSweepInterval = time.Minute

// Store is an in-memory store.Store. Create it with New and stop its sweeper
// with Close.
type Store struct {
	log *slog.Logger

	mu      sync.RWMutex
	buckets map[string]map[string]entry
	closed  bool

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

// entry is one stored value. A zero expires means it never expires.
type entry struct {
	value   []byte
	expires time.Time
}

func (e entry) live(now time.Time) bool {
	return e.expires.IsZero() || now.Before(e.expires)
}

// New returns an empty store and starts its sweeper goroutine.
func New(opts Options) *Store {
	if opts.SweepInterval <= 0 {
		opts.SweepInterval = defaultSweepInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		log:     log,
		buckets: make(map[string]map[string]entry),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go s.sweepLoop(opts.SweepInterval)
	return s
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, bucket, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := store.CheckKey(bucket, key); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	e, ok := s.buckets[bucket][key]
	if !ok || !e.live(time.Now()) {
		return nil, store.ErrNotFound
	}
	return bytes.Clone(e.value), nil
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, bucket, key string, value []byte, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := store.CheckPut(bucket, key, value, ttl); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return store.ErrClosed
	}
	s.putLocked(bucket, key, value, ttl, time.Now())
	return nil
}

// PutIfAbsent implements store.Store.
func (s *Store) PutIfAbsent(ctx context.Context, bucket, key string, value []byte, ttl time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := store.CheckPut(bucket, key, value, ttl); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, store.ErrClosed
	}
	now := time.Now()
	if e, ok := s.buckets[bucket][key]; ok && e.live(now) {
		return false, nil
	}
	s.putLocked(bucket, key, value, ttl, now)
	return true, nil
}

func (s *Store) putLocked(bucket, key string, value []byte, ttl time.Duration, now time.Time) {
	b := s.buckets[bucket]
	if b == nil {
		b = make(map[string]entry)
		s.buckets[bucket] = b
	}
	e := entry{value: bytes.Clone(value)}
	if e.value == nil {
		e.value = []byte{}
	}
	if ttl > 0 {
		e.expires = now.Add(ttl)
	}
	b[key] = e
}

// Take implements store.Store.
func (s *Store) Take(ctx context.Context, bucket, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := store.CheckKey(bucket, key); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	e, ok := s.buckets[bucket][key]
	if !ok {
		return nil, store.ErrNotFound
	}
	delete(s.buckets[bucket], key)
	if !e.live(time.Now()) {
		return nil, store.ErrNotFound
	}
	// The entry is gone from the map, so nobody else can see e.value.
	return e.value, nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, bucket, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := store.CheckKey(bucket, key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return store.ErrClosed
	}
	delete(s.buckets[bucket], key)
	return nil
}

// List implements store.Store. It snapshots the matching keys, then looks
// each one up again before calling fn, so fn runs without the lock held and
// never sees an entry deleted or expired before its turn.
func (s *Store) List(ctx context.Context, bucket, prefix string, fn func(key string, value []byte) bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := store.CheckBucket(bucket); err != nil {
		return err
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return store.ErrClosed
	}
	var keys []string
	for k := range s.buckets[bucket] {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	s.mu.RUnlock()
	slices.Sort(keys) // Go string order is byte-wise, as in bbolt.

	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		s.mu.RLock()
		if s.closed {
			s.mu.RUnlock()
			return store.ErrClosed
		}
		e, ok := s.buckets[bucket][k]
		var v []byte
		if ok && e.live(time.Now()) {
			v = bytes.Clone(e.value)
		}
		s.mu.RUnlock()
		if v == nil {
			continue
		}
		if !fn(k, v) {
			return nil
		}
	}
	return nil
}

// Close stops the sweeper and drops all entries. It is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.mu.Lock()
		s.closed = true
		s.buckets = nil
		s.mu.Unlock()
	})
	return nil
}

func (s *Store) sweepLoop(interval time.Duration) {
	defer close(s.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			if n := s.sweep(); n > 0 {
				s.log.Debug("store: swept expired entries", "removed", n)
			}
		}
	}
}

// sweep removes expired entries and empty buckets and reports how many
// entries it removed.
func (s *Store) sweep() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	removed := 0
	for name, b := range s.buckets {
		for k, e := range b {
			if !e.live(now) {
				delete(b, k)
				removed++
			}
		}
		if len(b) == 0 {
			delete(s.buckets, name)
		}
	}
	return removed
}
