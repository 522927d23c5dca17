package authn

import (
	"context"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/bolt"
	"github.com/ztna-dev/ztna/internal/store/memory"
	redisstore "github.com/ztna-dev/ztna/internal/store/redis"
	"github.com/ztna-dev/ztna/internal/store/redistest"
)

// benchSessions is how many sessions each backend holds while
// BenchmarkSessionLookup looks them up in turn.
const benchSessions = 1000

// readCounter counts the Gets that reach the store, so the benchmark
// checks that "cached" never reads it and "store" always does.
type readCounter struct {
	store.Store
	gets atomic.Int64
}

func (c *readCounter) Get(ctx context.Context, bucket, key string) ([]byte, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, bucket, key)
}

// BenchmarkSessionLookup is the per-request cost of Sessions.Get over each
// backend: "cached" is a hit in the keeper's memory cache (what nearly
// every request pays), "store" a miss that reads the store (the first
// request of a session on a replica, once per cache lifetime after that,
// and every request during a resync) — a tombstone check and the record,
// decoded. Each lookup is of the next of benchSessions sessions with a
// realistic record (an ID token of a real IdP's size). Reports
// store-reads/op beside ns/op and fails if a path did not take the route
// it is named for.
func BenchmarkSessionLookup(b *testing.B) {
	for _, backend := range []struct {
		name string
		open func(b *testing.B) store.Store
	}{
		{"memory", func(b *testing.B) store.Store {
			st := memory.New(memory.Options{})
			b.Cleanup(func() { _ = st.Close() })
			return st
		}},
		{"bolt", func(b *testing.B) store.Store {
			st, err := bolt.Open(filepath.Join(b.TempDir(), "ztna.db"), bolt.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = st.Close() })
			return st
		}},
		{"redis", func(b *testing.B) store.Store {
			srv := redistest.Start(b)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := redisstore.Open(ctx, redisstore.Config{Addrs: []string{srv.Addr()}}, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = st.Close() })
			return st
		}},
	} {
		b.Run(backend.name, func(b *testing.B) {
			st := &readCounter{Store: backend.open(b)}
			m := NewSessions(st, SessionsConfig{}, nil)
			b.Cleanup(m.Wait)
			ctx := context.Background()
			tokens := Tokens{
				IDToken:      strings.Repeat("h", 100) + "." + strings.Repeat("p", 600) + "." + strings.Repeat("s", 86),
				RefreshToken: strings.Repeat("r", 43), IdPSession: "idp-sid-1", refreshEvery: 5 * time.Minute,
			}
			ids := make([]string, benchSessions)
			keys := make([]string, benchSessions)
			for i := range ids {
				s, err := m.Create(ctx, testIdentity, tokens)
				if err != nil {
					b.Fatal(err)
				}
				ids[i], keys[i] = s.ID, s.Key
			}

			for _, path := range []struct {
				name      string
				readsPer  float64 // store Gets each lookup must make
				dropFirst bool
			}{
				{"cached", 0, false},
				{"store", 2, true}, // the tombstone, then the record
			} {
				b.Run(path.name, func(b *testing.B) {
					for i := range ids { // every session cached and fresh
						if _, err := m.Get(ctx, ids[i]); err != nil {
							b.Fatal(err)
						}
					}
					before := st.gets.Load()
					b.ReportAllocs()
					i, n := 0, 0
					for b.Loop() {
						n++
						if path.dropFirst {
							m.drop(keys[i])
						}
						if _, err := m.Get(ctx, ids[i]); err != nil {
							b.Fatal(err)
						}
						if i++; i == len(ids) {
							i = 0
						}
					}
					reads := float64(st.gets.Load()-before) / float64(n)
					b.ReportMetric(reads, "store-reads/op")
					// A background last-seen write (once a minute per
					// session) reads the store too: allow a little.
					if reads < path.readsPer || reads > path.readsPer+0.01 {
						b.Fatalf("%s lookups made %.3f store reads each, want %v", path.name, reads, path.readsPer)
					}
				})
			}
		})
	}
}
