// Package redisstore is the implementation of store.Store on Redis, for
// several edge replicas sharing one state (sessions, devices, posture,
// quarantine, revocations). It talks to a standalone server, a master found
// through Sentinel, or a Redis Cluster, through go-redis's UniversalClient
// as Config selects, with optional TLS and ACL authentication. It needs
// Redis 6.2 or later (GETDEL, HELLO) or a compatible server.
//
// # Keys
//
// An entry of bucket B with key K is the string key
//
//	PREFIX{B}k:K
//
// and each bucket has two sorted sets beside its entries:
//
//	PREFIX{B}idx   every key of the bucket, all with score 0 (lexical index)
//	PREFIX{B}exp   the keys that have a TTL, scored by their expiry (ms)
//
// B is escaped ("%", "{" and "}" as %25, %7B, %7D), so a bucket name ends
// at the first "}" and "a"+"b:c" can never meet "a:b"+"c". One more key,
// PREFIXbuckets, is the set of bucket names the sweeper walks.
//
// # Why one hash slot per bucket
//
// The braces are a Redis Cluster hash tag: every key of a bucket, and its
// two indexes, live in one hash slot, so on one Cluster shard. That is what
// lets List be correct and cheap on a Cluster: List pages through the
// bucket's lexical index with ZRANGEBYLEX (byte-wise order and prefix ranges
// are what a sorted set with equal scores gives natively), then reads the
// page with one MGET, and every write updates the entry and the index in
// one Lua script, atomically, which Redis only allows for keys in one slot.
// The alternative — keys spread over all shards, List as SCAN on every
// master plus a client-side sort — walks the whole keyspace (every bucket,
// and anything else in the database) on each List, and List is on request
// paths: counting pending CLI device grants, a device's report history.
//
// The trade-off: a bucket cannot be bigger or busier than one shard. For
// this store that is a small price — its buckets hold sessions, devices,
// posture reports and pending logins, megabytes to a few hundred MB even
// for a large company, and the edge keeps a memory cache in front of the
// hot lookups — and a Cluster still spreads different buckets over shards
// and gives failover. Should a bucket ever outgrow a shard, its owner must
// split it (one bucket per tenant, say), not this package. The indexes cost
// memory too: every key is stored in the index, and again in the expiry
// index if it has a TTL.
//
// # Invariants and expiry
//
// Entries expire by Redis's own PX TTL, so an expired entry is gone for Get,
// Take and PutIfAbsent at once, on the server's clock. The index is kept so
// that every live entry has its index member: Put, PutIfAbsent, Take and
// Delete change the entry and both sorted sets in one script, and a member
// is removed only together with its entry or after checking, atomically,
// that the entry no longer exists. An expired entry leaves a stale member
// behind; List skips it (the MGET finds nothing) and removes it, and a
// sweeper goroutine removes the members whose expiry score has passed, so
// the indexes do not grow with entries nobody lists.
//
// # Failure
//
// Every method is bounded by the context and by Config's timeouts; while
// Redis is unreachable every method fails with an error naming the bucket
// and the cause (never ErrNotFound, never a stale answer). go-redis retries
// a command on a broken connection, so a PutIfAbsent or Take whose reply was
// lost may be seen as "already there" or "gone": both fail closed.
//
// Durability is Redis's: without persistence (AOF) or replicas, a Redis
// restart loses every session and revocation, which the operator chooses.
//
// It must never log or put into an error a key or a value: keys are session
// IDs and one-time codes, values hold tokens. Bucket names may appear.
package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/ztna-dev/ztna/internal/store"
)

// ACLCommands are the commands this store sends, as Redis ACL rules (Redis
// 7.0 names; COMMAND and CLUSTER|SLOTS only matter on a Cluster, SELECT
// only with a db). A least-privilege user for the store is
//
//	ACL SETUSER ztna on >PASSWORD resetkeys ~PREFIX* resetchannels ACLCommands
//
// plus whatever the users of Client (pub/sub) need. The tests run the
// conformance suite as such a user.
const ACLCommands = "-@all +ping +hello +auth +select +command +cluster|slots " +
	"+get +mget +pttl +smembers +zrangebylex +zrangebyscore +time " +
	"+set +getdel +del +sadd +zadd +zrem +evalsha +eval"

const (
	// listPage bounds the entries one List round trip reads, so fn runs
	// between small reads and memory stays bounded (like bolt's pages).
	listPage = 256
	// sweepBatch bounds the stale index members one sweep script checks;
	// sweepMaxBatches bounds the batches per bucket and sweep.
	sweepBatch      = 500
	sweepMaxBatches = 20
)

// sweepInterval is how often stale index members are removed (a variable
// for tests). Expired entries are invisible at once; sweeping only
// reclaims space.
var sweepInterval = time.Minute

// Store is a store.Store on Redis. Create it with Open; Close it to stop the
// sweeper and close the client.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	log    *slog.Logger

	// registered holds the buckets this process has added to the bucket
	// set, so the SADD is sent once per bucket, not per write.
	registered sync.Map

	closed    atomic.Bool
	stop      context.CancelFunc // cancels the sweeper's context
	done      chan struct{}      // closed when the sweeper has returned
	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open connects to the Redis deployment c describes, checks that it
// answers PING within ctx (and at most the configured timeouts), and starts
// the sweeper. A nil logger discards.
func Open(ctx context.Context, c Config, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("redis store config: %w", err)
	}
	c = c.withDefaults()
	opts, err := c.options()
	if err != nil {
		return nil, fmt.Errorf("redis store config: %w", err)
	}
	if c.PasswordFile != "" {
		if _, fi, err := readPassword(c.PasswordFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
			logger.Warn("redis password file is accessible to other users; it should be mode 0600",
				"path", c.PasswordFile, "mode", fi.Mode().Perm().String())
		}
	}
	rdb := redis.NewUniversalClient(opts)

	// Bounded even when ctx is not: a dial, a retry and a reply.
	pingCtx, cancel := context.WithTimeout(ctx, 2*c.DialTimeout+c.ReadTimeout+c.WriteTimeout)
	defer cancel()
	if err := rdb.Ping(pingCtx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis store: connect to %s %s%s: %w",
			c.mode(), strings.Join(c.Addrs, ","), asUser(c.Username), err)
	}
	logger.Info("redis store connected", "mode", c.mode(), "addrs", c.Addrs,
		"master_name", c.MasterName, "username", c.Username, "db", c.DB,
		"tls", c.TLS.Enabled, "key_prefix", c.KeyPrefix)

	sweepCtx, stop := context.WithCancel(context.Background())
	s := &Store{
		rdb:    rdb,
		prefix: c.KeyPrefix,
		log:    logger,
		stop:   stop,
		done:   make(chan struct{}),
	}
	go s.sweepLoop(sweepCtx, sweepInterval)
	return s, nil
}

func asUser(u string) string {
	if u == "" {
		return ""
	}
	return " as user " + strconv.Quote(u)
}

// options turns c (with defaults applied) into go-redis options, reading
// the password and TLS files.
func (c Config) options() (*redis.UniversalOptions, error) {
	var password string
	if c.PasswordFile != "" {
		pw, _, err := readPassword(c.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("password_file: %w", err)
		}
		password = pw
	}
	var sentinelPassword string
	if c.SentinelPasswordFile != "" {
		pw, _, err := readPassword(c.SentinelPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("sentinel_password_file: %w", err)
		}
		sentinelPassword = pw
	}
	tlsConf, err := c.TLS.tlsConfig()
	if err != nil {
		return nil, err
	}
	return &redis.UniversalOptions{
		Addrs:            c.Addrs,
		MasterName:       c.MasterName,
		SentinelUsername: c.SentinelUsername,
		SentinelPassword: sentinelPassword,
		Username:         c.Username,
		Password:         password,
		DB:               c.DB,
		TLSConfig:        tlsConf,
		DialTimeout:      c.DialTimeout,
		ReadTimeout:      c.ReadTimeout,
		WriteTimeout:     c.WriteTimeout,
		// A caller's deadline shorter than ReadTimeout must win.
		ContextTimeoutEnabled: true,
		// Two quick dial retries, not go-redis's five: while Redis is down
		// a call should fail within about a second, so callers can fall
		// back (fail closed) instead of piling up.
		DialerRetries:      2,
		DialerRetryTimeout: 50 * time.Millisecond,
		// No CLIENT SETINFO: Redis before 7.2 rejects it, and an ACL user
		// without it would fill the ACL log on every connection.
		DisableIdentity: true,
		// Maintenance notifications are for Redis Enterprise/Cloud; in auto
		// mode go-redis would probe for them and log on every connection.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}, nil
}

// Client is the underlying client, for pub/sub on the same connections and
// credentials. It is closed by Close.
func (s *Store) Client() redis.UniversalClient { return s.rdb }

// Prefix is the key prefix every key of this store starts with (Config's
// KeyPrefix or its default); users of Client put their own keys and
// channels under it too, so one ACL pattern covers them.
func (s *Store) Prefix() string { return s.prefix }

// bucketKeys are the Redis keys of one bucket.
type bucketKeys struct {
	base string // PREFIX{B}
	idx  string // PREFIX{B}idx
	exp  string // PREFIX{B}exp
}

var bucketEscaper = strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D")

func (s *Store) bucket(name string) bucketKeys {
	base := s.prefix + "{" + bucketEscaper.Replace(name) + "}"
	return bucketKeys{base: base, idx: base + "idx", exp: base + "exp"}
}

func (b bucketKeys) data(key string) string { return b.base + "k:" + key }

func (s *Store) bucketSet() string { return s.prefix + "buckets" }

// ttlMillis converts a ttl to whole milliseconds, rounding up so a positive
// ttl never becomes "no expiry"; 0 means none.
func ttlMillis(ttl time.Duration) int64 {
	ms := ttl.Milliseconds()
	if ttl%time.Millisecond != 0 {
		ms++
	}
	return ms
}

// check runs the checks every method starts with, in bolt's order: a done
// context, invalid arguments, a closed store.
func (s *Store) check(ctx context.Context, argErr error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if argErr != nil {
		return argErr
	}
	if s.closed.Load() {
		return store.ErrClosed
	}
	return nil
}

// wrap adds the operation and bucket to a Redis error and maps go-redis's
// "client is closed" (a call racing Close) to store.ErrClosed.
func wrap(op, bucket string, err error) error {
	if errors.Is(err, redis.ErrClosed) {
		err = store.ErrClosed
	}
	return fmt.Errorf("redis store: %s in bucket %q: %w", op, bucket, err)
}

// The scripts. KEYS are always declared (Redis Cluster routes and checks by
// them); all keys of one call share the bucket's hash slot.
var (
	// putScript: KEYS data, idx, exp; ARGV value, ttl ms ("0": none), key,
	// "nx" or "". Returns 1 if stored, 0 if NX found the key.
	putScript = redis.NewScript(`
local ttl = ARGV[2]
local ok
if ttl ~= '0' then
  if ARGV[4] == 'nx' then
    ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl, 'NX')
  else
    ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  end
else
  if ARGV[4] == 'nx' then
    ok = redis.call('SET', KEYS[1], ARGV[1], 'NX')
  else
    ok = redis.call('SET', KEYS[1], ARGV[1])
  end
end
if not ok then
  return 0
end
redis.call('ZADD', KEYS[2], 0, ARGV[3])
if ttl ~= '0' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[3], now + tonumber(ttl), ARGV[3])
else
  redis.call('ZREM', KEYS[3], ARGV[3])
end
return 1
`)
	// takeScript: KEYS data, idx, exp; ARGV key. Returns the value or nil.
	takeScript = redis.NewScript(`
local v = redis.call('GETDEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return v
`)
	// deleteScript: KEYS data, idx, exp; ARGV key.
	deleteScript = redis.NewScript(`
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
`)
	// pruneScript: KEYS idx, exp, data...; ARGV the keys of the data
	// KEYS. Removes the index members whose entry no longer exists, and
	// returns how many; an entry without a TTL (made so behind this
	// store's back) leaves the expiry index, so it cannot stall the sweep.
	pruneScript = redis.NewScript(`
local n = 0
for i = 1, #ARGV do
  local ttl = redis.call('PTTL', KEYS[i + 2])
  if ttl == -2 then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    n = n + 1
  elseif ttl == -1 then
    redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
return n
`)
	// expiredScript: KEYS exp; ARGV limit. The keys whose expiry has
	// passed on the server's clock (the clock their PX TTLs run on).
	expiredScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
`)
)

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, bucket, key string) ([]byte, error) {
	if err := s.check(ctx, store.CheckKey(bucket, key)); err != nil {
		return nil, err
	}
	v, err := s.rdb.Get(ctx, s.bucket(bucket).data(key)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, store.ErrNotFound
	case err != nil:
		return nil, wrap("get", bucket, err)
	}
	return v, nil
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, bucket, key string, value []byte, ttl time.Duration) error {
	if err := s.check(ctx, store.CheckPut(bucket, key, value, ttl)); err != nil {
		return err
	}
	_, err := s.put(ctx, bucket, key, value, ttl, "")
	if err != nil {
		return wrap("put", bucket, err)
	}
	return nil
}

// PutIfAbsent implements store.Store with SET NX: an expired entry no
// longer exists for Redis, so it is replaced.
func (s *Store) PutIfAbsent(ctx context.Context, bucket, key string, value []byte, ttl time.Duration) (bool, error) {
	if err := s.check(ctx, store.CheckPut(bucket, key, value, ttl)); err != nil {
		return false, err
	}
	stored, err := s.put(ctx, bucket, key, value, ttl, "nx")
	if err != nil {
		return false, wrap("put-if-absent", bucket, err)
	}
	return stored, nil
}

func (s *Store) put(ctx context.Context, bucket, key string, value []byte, ttl time.Duration, mode string) (bool, error) {
	if err := s.register(ctx, bucket); err != nil {
		return false, err
	}
	b := s.bucket(bucket)
	n, err := putScript.Run(ctx, s.rdb, []string{b.data(key), b.idx, b.exp},
		value, strconv.FormatInt(ttlMillis(ttl), 10), key, mode).Int()
	if err != nil {
		return false, err
	}
	return n == 1, nil
}

// register adds bucket to the bucket set the sweeper walks, once per
// process and bucket (concurrent first writes may both send it: SADD is
// idempotent).
func (s *Store) register(ctx context.Context, bucket string) error {
	if _, ok := s.registered.Load(bucket); ok {
		return nil
	}
	if err := s.rdb.SAdd(ctx, s.bucketSet(), bucket).Err(); err != nil {
		return err
	}
	s.registered.Store(bucket, struct{}{})
	return nil
}

// Take implements store.Store with GETDEL: of two concurrent callers Redis
// runs one script first, and the other finds nothing.
func (s *Store) Take(ctx context.Context, bucket, key string) ([]byte, error) {
	if err := s.check(ctx, store.CheckKey(bucket, key)); err != nil {
		return nil, err
	}
	b := s.bucket(bucket)
	v, err := takeScript.Run(ctx, s.rdb, []string{b.data(key), b.idx, b.exp}, key).Text()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, store.ErrNotFound
	case err != nil:
		return nil, wrap("take", bucket, err)
	}
	return []byte(v), nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, bucket, key string) error {
	if err := s.check(ctx, store.CheckKey(bucket, key)); err != nil {
		return err
	}
	b := s.bucket(bucket)
	if err := deleteScript.Run(ctx, s.rdb, []string{b.data(key), b.idx, b.exp}, key).Err(); err != nil {
		return wrap("delete", bucket, err)
	}
	return nil
}

type kv struct {
	key   string
	value []byte
}

// List implements store.Store. Each page is a ZRANGEBYLEX of the bucket's
// index from just after the last key seen, and an MGET of those entries;
// fn runs after both returned, with nothing held. Members whose entry has
// expired are skipped, and removed from the index.
func (s *Store) List(ctx context.Context, bucket, prefix string, fn func(key string, value []byte) bool) error {
	if err := s.check(ctx, store.CheckBucket(bucket)); err != nil {
		return err
	}
	b := s.bucket(bucket)
	lo, hi := "-", "+"
	if prefix != "" {
		lo = "[" + prefix
		if end, ok := prefixEnd(prefix); ok {
			hi = "(" + end
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		keys, err := s.rdb.ZRangeByLex(ctx, b.idx, &redis.ZRangeBy{Min: lo, Max: hi, Count: listPage}).Result()
		if err != nil {
			return wrap("list", bucket, err)
		}
		if len(keys) == 0 {
			return nil
		}
		page, err := s.readPage(ctx, b, keys)
		if err != nil {
			return wrap("list", bucket, err)
		}
		for _, e := range page {
			if err := ctx.Err(); err != nil {
				return err
			}
			if !fn(e.key, e.value) {
				return nil
			}
		}
		if len(keys) < listPage {
			return nil
		}
		lo = "(" + keys[len(keys)-1]
	}
}

// readPage reads the entries of keys (index members, in order) and prunes
// the members whose entry is gone.
func (s *Store) readPage(ctx context.Context, b bucketKeys, keys []string) ([]kv, error) {
	dataKeys := make([]string, len(keys))
	for i, k := range keys {
		dataKeys[i] = b.data(k)
	}
	vals, err := s.rdb.MGet(ctx, dataKeys...).Result()
	if err != nil {
		return nil, err
	}
	if len(vals) != len(keys) {
		return nil, fmt.Errorf("MGET of %d keys returned %d values", len(keys), len(vals))
	}
	page := make([]kv, 0, len(keys))
	var stale []string
	for i, v := range vals {
		switch v := v.(type) {
		case nil:
			stale = append(stale, keys[i])
		case string:
			page = append(page, kv{keys[i], []byte(v)})
		default:
			return nil, fmt.Errorf("MGET returned a %T", v)
		}
	}
	if len(stale) > 0 {
		// Best effort: a stale member is harmless (skipped here, removed
		// by the sweeper), so a failure only costs a log line.
		if _, err := s.prune(ctx, b, stale); err != nil && ctx.Err() == nil {
			s.log.Warn("redis store: prune expired index entries failed", "err", err)
		}
	}
	return page, nil
}

// prune removes the index members among keys whose entry no longer exists.
func (s *Store) prune(ctx context.Context, b bucketKeys, keys []string) (int, error) {
	scriptKeys := make([]string, 0, 2+len(keys))
	scriptKeys = append(scriptKeys, b.idx, b.exp)
	args := make([]any, len(keys))
	for i, k := range keys {
		scriptKeys = append(scriptKeys, b.data(k))
		args[i] = k
	}
	return pruneScript.Run(ctx, s.rdb, scriptKeys, args...).Int()
}

// prefixEnd returns the smallest string greater than every string with
// prefix p, or false if there is none (p is all 0xff bytes).
func prefixEnd(p string) (string, bool) {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

// sweepLoop prunes expired index members every interval until ctx (which
// Close cancels, so it never waits for a slow sweep) is done.
func (s *Store) sweepLoop(ctx context.Context, interval time.Duration) {
	defer close(s.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sweepCtx, cancel := context.WithTimeout(ctx, interval)
		removed, err := s.sweep(sweepCtx)
		cancel()
		// Writers add their bucket to the set again from time to time, in
		// case Redis lost it (a restart without persistence).
		s.registered.Clear()
		switch {
		case err != nil && !s.closed.Load():
			s.log.Warn("redis store: sweep of expired index entries failed", "removed", removed, "err", err)
		case removed > 0:
			s.log.Debug("redis store: swept expired index entries", "removed", removed)
		}
	}
}

// sweep removes, in every bucket this deployment has written, the index
// members whose expiry score has passed and whose entry is gone.
func (s *Store) sweep(ctx context.Context) (int, error) {
	buckets, err := s.rdb.SMembers(ctx, s.bucketSet()).Result()
	if err != nil {
		return 0, fmt.Errorf("list buckets: %w", err)
	}
	removed := 0
	for _, name := range buckets {
		b := s.bucket(name)
		for range sweepMaxBatches {
			keys, err := expiredScript.Run(ctx, s.rdb, []string{b.exp}, sweepBatch).StringSlice()
			if err != nil {
				return removed, wrap("sweep", name, err)
			}
			if len(keys) == 0 {
				break
			}
			n, err := s.prune(ctx, b, keys)
			removed += n
			if err != nil {
				return removed, wrap("sweep", name, err)
			}
			// A member still live (re-put meanwhile, or its TTL just not
			// reached in Redis's own rounding) stays in the next batch:
			// stop rather than loop over it.
			if n < len(keys) || len(keys) < sweepBatch {
				break
			}
		}
	}
	return removed, nil
}

// Close stops the sweeper, waits for it, and closes the client (and so
// every subscription made through Client). It is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.stop()
		<-s.done
		s.closeErr = s.rdb.Close()
	})
	return s.closeErr
}

// RouteClientLogs sends go-redis's own log lines (dial failures, pool
// trouble; never keys or values) to logger at Warn level instead of stderr
// as plain text. go-redis has one logger per process, so this is for main
// to call once, not for a library.
func RouteClientLogs(logger *slog.Logger) {
	redis.SetLogger(clientLog{logger})
}

type clientLog struct{ l *slog.Logger }

func (c clientLog) Printf(ctx context.Context, format string, v ...any) {
	c.l.WarnContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}
