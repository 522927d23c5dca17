// Package bolt is the embedded, single-node implementation of store.Store on
// a bbolt file in the data directory (what `ztna dev` and a one-replica
// `ztna serve` use).
//
// Every write is its own durable bbolt transaction (fsync before return), so
// a one-time code handed out or a session revoked survives a crash. Values
// are stored behind a small header carrying their expiry; expired entries are
// invisible at once and removed later by a sweeper goroutine.
//
// It must never be opened by two processes at once (bbolt holds an exclusive
// flock; the second Open fails with ErrLocked), and it must never log keys or
// values: keys are session IDs and one-time codes, values hold tokens.
package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/ztna-dev/ztna/internal/store"
)

// ErrLocked is wrapped by Open's error when another process (or another
// Open in this one) holds the store file.
var ErrLocked = errors.New("locked by another ztna process")

// Options configures Open. The zero value is ready to use.
type Options struct {
	// Timeout bounds how long Open waits for the file lock before failing
	// with ErrLocked. Zero means 5s.
	Timeout time.Duration
	// SweepInterval is how often expired entries are deleted from the file.
	// Expired entries are invisible at once; sweeping only reclaims space.
	// Zero means one minute.
	SweepInterval time.Duration
	// Logger receives sweep problems and statistics. Nil discards.
	Logger *slog.Logger
}

const (
	defaultTimeout       = 5 * time.Second
	defaultSweepInterval = time.Minute

	// listPageLive and listPageScan bound one List read transaction, so fn
	// runs outside it and a long List never pins old pages for long.
	listPageLive = 256
	listPageScan = 4096
	// sweepBatch bounds the keys deleted in one sweeper write transaction,
	// so the sweeper never holds the writer lock for long.
	sweepBatch = 1000
)

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = defaultSweepInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Store is a store.Store on a bbolt file. Create it with Open; Close it to
// release the file lock.
type Store struct {
	db   *bbolt.DB
	path string
	log  *slog.Logger

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open opens (creating with mode 0600 if needed) the store file at path and
// starts its sweeper. The directory must exist.
func Open(path string, opts Options) (*Store, error) {
	opts = opts.withDefaults()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: opts.Timeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("store %s is %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// bbolt applies the mode only when it creates the file; an existing
	// file that others can read exposes every session, so say so.
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		opts.Logger.Warn("store file is accessible to other users; it should be mode 0600",
			"path", path, "mode", fi.Mode().Perm().String())
	}
	s := &Store{
		db:   db,
		path: path,
		log:  opts.Logger,
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go s.sweepLoop(opts.SweepInterval)
	return s, nil
}

// Value encoding: one format byte, the expiry as big-endian Unix
// nanoseconds (0 = never), then the value. The format byte lets a later
// version change the layout without guessing.
const (
	formatV1  = 1
	headerLen = 1 + 8
)

func encode(value []byte, ttl time.Duration, now time.Time) []byte {
	buf := make([]byte, headerLen+len(value))
	buf[0] = formatV1
	if ttl > 0 {
		binary.BigEndian.PutUint64(buf[1:headerLen], uint64(now.Add(ttl).UnixNano()))
	}
	copy(buf[headerLen:], value)
	return buf
}

var errCorrupt = errors.New("store: corrupt entry")

// decode returns the value inside raw and whether it is still live at now.
// The value aliases raw, which bbolt owns only until the transaction ends.
func decode(raw []byte, now time.Time) (value []byte, live bool, err error) {
	if len(raw) < headerLen || raw[0] != formatV1 {
		return nil, false, errCorrupt
	}
	exp := binary.BigEndian.Uint64(raw[1:headerLen])
	live = exp == 0 || now.UnixNano() < int64(exp)
	return raw[headerLen:], live, nil
}

// mapErr turns bbolt's "closed" into store.ErrClosed; other errors pass.
func mapErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return store.ErrClosed
	}
	return err
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, bucket, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := store.CheckKey(bucket, key); err != nil {
		return nil, err
	}
	var out []byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		_, v, err := liveValue(tx, bucket, key, "get")
		out = v
		return err
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return out, nil
}

// liveValue returns a copy of the live value of key, and its bucket, or
// ErrNotFound when it is missing or expired.
func liveValue(tx *bbolt.Tx, bucket, key, op string) (*bbolt.Bucket, []byte, error) {
	b := tx.Bucket([]byte(bucket))
	if b == nil {
		return nil, nil, store.ErrNotFound
	}
	raw := b.Get([]byte(key))
	if raw == nil {
		return nil, nil, store.ErrNotFound
	}
	v, live, err := decode(raw, time.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("%s from bucket %q: %w", op, bucket, err)
	}
	if !live {
		return nil, nil, store.ErrNotFound
	}
	// A copy: raw points into a page that is gone after the transaction.
	return b, bytes.Clone(v), nil
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, bucket, key string, value []byte, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := store.CheckPut(bucket, key, value, ttl); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return err
		}
		return b.Put([]byte(key), encode(value, ttl, time.Now()))
	})
	return mapErr(err)
}

// PutIfAbsent implements store.Store. The check and the write are one
// transaction, and bbolt runs one write transaction at a time.
func (s *Store) PutIfAbsent(ctx context.Context, bucket, key string, value []byte, ttl time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := store.CheckPut(bucket, key, value, ttl); err != nil {
		return false, err
	}
	stored := false
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return err
		}
		now := time.Now()
		if raw := b.Get([]byte(key)); raw != nil {
			// A corrupt entry counts as present: overwriting it would
			// let a replayed one-time marker through.
			_, live, err := decode(raw, now)
			if err != nil {
				return fmt.Errorf("put-if-absent in bucket %q: %w", bucket, err)
			}
			if live {
				return nil
			}
		}
		stored = true
		return b.Put([]byte(key), encode(value, ttl, now))
	})
	if err != nil {
		return false, mapErr(err)
	}
	return stored, nil
}

// Take implements store.Store: read and delete in one write transaction.
func (s *Store) Take(ctx context.Context, bucket, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := store.CheckKey(bucket, key); err != nil {
		return nil, err
	}
	var out []byte
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, v, err := liveValue(tx, bucket, key, "take")
		if err != nil {
			// Returning an error rolls the transaction back; the sweeper
			// removes an expired entry later.
			return err
		}
		out = v
		return b.Delete([]byte(key))
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return out, nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, bucket, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := store.CheckKey(bucket, key); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.Delete([]byte(key))
	})
	return mapErr(err)
}

type kv struct {
	key   string
	value []byte
}

// List implements store.Store. It reads a page of entries in one read
// transaction, then calls fn for them with no transaction open (so fn may
// write to the store without deadlocking on bbolt's remap lock), then
// resumes after the last key it scanned.
func (s *Store) List(ctx context.Context, bucket, prefix string, fn func(key string, value []byte) bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := store.CheckBucket(bucket); err != nil {
		return err
	}
	pfx := []byte(prefix)
	from := pfx
	after := false // skip from itself: it was scanned by the previous page
	for {
		var page []kv
		more := false
		err := s.db.View(func(tx *bbolt.Tx) error {
			b := tx.Bucket([]byte(bucket))
			if b == nil {
				return nil
			}
			c := b.Cursor()
			k, raw := c.Seek(from)
			if after && bytes.Equal(k, from) {
				k, raw = c.Next()
			}
			now := time.Now()
			for scanned := 0; k != nil && bytes.HasPrefix(k, pfx); k, raw = c.Next() {
				if len(page) == listPageLive || scanned == listPageScan {
					more = true
					return nil
				}
				scanned++
				from = bytes.Clone(k)
				if raw == nil { // a nested bucket; this store never makes one
					continue
				}
				v, live, err := decode(raw, now)
				if err != nil {
					return fmt.Errorf("list bucket %q: %w", bucket, err)
				}
				if live {
					page = append(page, kv{string(k), bytes.Clone(v)})
				}
			}
			return nil
		})
		if err != nil {
			return mapErr(err)
		}
		for _, e := range page {
			if err := ctx.Err(); err != nil {
				return err
			}
			if !fn(e.key, e.value) {
				return nil
			}
		}
		if !more {
			return nil
		}
		after = true
	}
}

// Close stops the sweeper, waits for it, and closes the file (releasing the
// lock). It is idempotent and returns the first close error every time.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.closeErr = s.db.Close()
	})
	return s.closeErr
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
			n, err := s.sweep()
			if err != nil {
				s.log.Error("store: sweeping expired entries failed", "path", s.path, "removed", n, "err", err)
			} else if n > 0 {
				s.log.Debug("store: swept expired entries", "path", s.path, "removed", n)
			}
		}
	}
}

// sweep deletes expired entries from every bucket and reports how many. It
// finds them in read transactions and deletes them in small write
// transactions (re-checking expiry, since a key may have been rewritten in
// between), so writers are never blocked for a whole scan. It returns early
// when the store is closing.
func (s *Store) sweep() (int, error) {
	var buckets [][]byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
			buckets = append(buckets, bytes.Clone(name))
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, name := range buckets {
		var from []byte
		for {
			select {
			case <-s.stop:
				return removed, nil
			default:
			}
			var expired [][]byte
			more := false
			err := s.db.View(func(tx *bbolt.Tx) error {
				b := tx.Bucket(name)
				if b == nil {
					return nil
				}
				c := b.Cursor()
				k, raw := c.Seek(from)
				if from != nil && bytes.Equal(k, from) {
					k, raw = c.Next()
				}
				now := time.Now()
				for ; k != nil; k, raw = c.Next() {
					if len(expired) == sweepBatch {
						more = true
						return nil
					}
					from = bytes.Clone(k)
					if raw == nil {
						continue
					}
					// Corrupt entries are left alone for someone to inspect.
					if _, live, err := decode(raw, now); err == nil && !live {
						expired = append(expired, from)
					}
				}
				return nil
			})
			if err != nil {
				return removed, err
			}
			if len(expired) > 0 {
				n := 0
				err = s.db.Update(func(tx *bbolt.Tx) error {
					n = 0
					b := tx.Bucket(name)
					if b == nil {
						return nil
					}
					now := time.Now()
					for _, k := range expired {
						raw := b.Get(k)
						if raw == nil {
							continue
						}
						if _, live, err := decode(raw, now); err == nil && !live {
							if err := b.Delete(k); err != nil {
								return err
							}
							n++
						}
					}
					return nil
				})
				if err != nil {
					return removed, err
				}
				removed += n
			}
			if !more {
				break
			}
		}
	}
	return removed, nil
}
