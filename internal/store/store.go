// Package store is ztna's shared state: a small key/value interface with
// expiry and one-time reads that sessions, login state, devices, posture and
// revocations are kept in. Domain packages (authn, posture, groups) own
// their record formats and encode them to bytes; the store never interprets
// values. Implementations: bbolt (embedded, single node; package store/bolt)
// and Redis for replicas (package store/redis). Both must pass the
// conformance suite in storetest.
//
// A store must never log values: they hold session secrets and tokens.
package store

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned when a key does not exist or has expired.
var ErrNotFound = errors.New("store: not found")

// Store is the shared state behind every replica. Keys live in named buckets
// ("sessions", "login_state", …) that exist as soon as something is put in
// them. A zero ttl means the entry never expires; an expired entry behaves
// exactly like a missing one and is removed in the background.
//
// Every method must be safe for concurrent use and must return ctx.Err() when
// ctx is already done. Empty or oversized buckets, keys and values (see
// MaxKeySize, MaxValueSize) and negative ttls fail with an error wrapping
// ErrInvalid; every method called after Close fails with ErrClosed. Byte
// slices passed in and handed out are never retained or shared by the store,
// so callers may keep or modify them.
type Store interface {
	// Get returns the value of key in bucket, or ErrNotFound.
	Get(ctx context.Context, bucket, key string) ([]byte, error)
	// Put stores value under key, replacing any previous value.
	Put(ctx context.Context, bucket, key string, value []byte, ttl time.Duration) error
	// PutIfAbsent stores value only if key does not exist (or has expired);
	// it reports whether it stored it. Used for one-time markers (token jti).
	PutIfAbsent(ctx context.Context, bucket, key string, value []byte, ttl time.Duration) (bool, error)
	// Take atomically reads and deletes key: of two concurrent callers exactly
	// one gets the value, the other ErrNotFound. Used for one-time codes.
	Take(ctx context.Context, bucket, key string) ([]byte, error)
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, bucket, key string) error
	// List calls fn for every live entry in bucket whose key starts with
	// prefix (all entries for ""), in byte-wise key order, until fn returns
	// false. fn is called without any lock or transaction held, so it may use
	// the store; entries written meanwhile may or may not be seen. List stops
	// with ctx.Err() when ctx is done between calls.
	List(ctx context.Context, bucket, prefix string, fn func(key string, value []byte) bool) error
	// Close stops background work and releases the store. It is idempotent.
	Close() error
}
