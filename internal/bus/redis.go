package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Bounds of the Redis bus.
const (
	queueLen       = 4096                   // events waiting to be published
	publishTimeout = time.Second            // one PUBLISH
	publishRetry   = 5 * time.Second        // how long an event is retried while Redis is away
	pingEvery      = 500 * time.Millisecond // an idle subscription is pinged this often
	maxBackoff     = 2 * time.Second        // between reconnect attempts
)

// Redis is the bus of replicas sharing one Redis: events are published on
// one channel (PUBLISH; in a Redis Cluster they reach every node's
// subscribers) and received by every replica's subscription.
type Redis struct {
	client  redis.UniversalClient
	channel string
	id      string
	logger  *slog.Logger

	// OnDrop, if set before Start, is called for every event that could
	// not be published (queue full, or Redis away past publishRetry).
	OnDrop func(kind string)

	queue     chan Event
	connected atomic.Bool
	downSince atomic.Int64 // unix nanos; 0 while connected

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// NewRedis returns a bus on channel (e.g. "ztna:events"). It starts
// disconnected; Start connects it.
func NewRedis(client redis.UniversalClient, channel string, logger *slog.Logger) *Redis {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	r := &Redis{client: client, channel: channel, id: hex.EncodeToString(b[:]), logger: logger,
		queue: make(chan Event, queueLen)}
	r.downSince.Store(time.Now().UnixNano())
	return r
}

// ID is this replica's ID on the bus.
func (r *Redis) ID() string { return r.id }

// Start subscribes and runs the publisher and the subscriber until Close.
// h receives the other replicas' events and a Resync after every
// (re)subscription.
func (r *Redis) Start(ctx context.Context, h Handler) {
	ctx, r.cancel = context.WithCancel(ctx)
	r.wg.Add(2)
	go r.publisher(ctx)
	go r.subscriber(ctx, h)
}

// Publish queues an event for the other replicas.
func (r *Redis) Publish(kind, key string) {
	select {
	case r.queue <- Event{Kind: kind, Key: key, Origin: r.id}:
	default:
		r.dropped(kind, errors.New("queue full"))
	}
}

// Connected reports the subscription's state.
func (r *Redis) Connected() (bool, time.Time) {
	if r.connected.Load() {
		return true, time.Time{}
	}
	return false, time.Unix(0, r.downSince.Load())
}

// Close stops the bus and waits for it.
func (r *Redis) Close() error {
	r.once.Do(func() {
		if r.cancel != nil {
			r.cancel()
		}
	})
	r.wg.Wait()
	return nil
}

func (r *Redis) dropped(kind string, err error) {
	r.logger.Warn("bus: event not published; other replicas find the change when they resync", "kind", kind, "err", err)
	if r.OnDrop != nil {
		r.OnDrop(kind)
	}
}

func (r *Redis) publisher(ctx context.Context) {
	defer r.wg.Done()
	for {
		var e Event
		select {
		case <-ctx.Done():
			return
		case e = <-r.queue:
		}
		payload, err := json.Marshal(e)
		if err != nil {
			r.dropped(e.Kind, err)
			continue
		}
		deadline := time.Now().Add(publishRetry)
		backoff := 50 * time.Millisecond
		for {
			pctx, cancel := context.WithTimeout(ctx, publishTimeout)
			err = r.client.Publish(pctx, r.channel, payload).Err()
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
			if time.Now().After(deadline) {
				r.dropped(e.Kind, err)
				break
			}
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, maxBackoff)
		}
	}
}

func (r *Redis) markUp() {
	if !r.connected.Swap(true) {
		r.downSince.Store(0)
		r.logger.Info("bus: subscribed", "channel", r.channel, "replica", r.id)
	}
}

func (r *Redis) markDown(err error) {
	if r.connected.Swap(false) {
		r.downSince.Store(time.Now().UnixNano())
		r.logger.Warn("bus: subscription lost; events from other replicas may be missed until it is back", "err", err)
	}
}

func (r *Redis) subscriber(ctx context.Context, h Handler) {
	defer r.wg.Done()
	defer r.markDown(errors.New("closed"))
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		ps := r.client.Subscribe(ctx, r.channel)
		r.receive(ctx, ps, h, &backoff)
		_ = ps.Close()
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// receive delivers messages until the subscription fails. go-redis
// re-subscribes by itself after a network error; every (re)subscription
// is confirmed by a Subscription message, which is when the handler
// resyncs: events may have been missed while it was away.
func (r *Redis) receive(ctx context.Context, ps *redis.PubSub, h Handler, backoff *time.Duration) {
	for {
		m, err := ps.ReceiveTimeout(ctx, pingEvery)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Idle: a ping finds a dead connection (its Pong, or the
				// error, comes through Receive).
				pctx, cancel := context.WithTimeout(ctx, pingEvery)
				perr := ps.Ping(pctx)
				cancel()
				if perr == nil {
					continue
				}
				err = perr
			}
			r.markDown(err)
			return
		}
		switch m := m.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" && m.Channel == r.channel {
				r.markUp()
				*backoff = 50 * time.Millisecond
				h.Resync()
			}
		case *redis.Pong:
			r.markUp()
		case *redis.Message:
			e, err := decode([]byte(m.Payload))
			if err != nil {
				r.logger.Warn("bus: ignored a malformed event", "err", err)
				continue
			}
			if e.Origin != r.id {
				h.Event(e)
			}
		}
	}
}

// sleep waits d or until ctx is done; false if ctx is done.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
