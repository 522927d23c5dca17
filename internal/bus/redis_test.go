package bus

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	redisstore "github.com/ztna-dev/ztna/internal/store/redis"
	"github.com/ztna-dev/ztna/internal/store/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Handler that keeps what it is given.
type recorder struct {
	mu      sync.Mutex
	events  []Event
	resyncs int
}

func (r *recorder) Event(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) Resync() {
	r.mu.Lock()
	r.resyncs++
	r.mu.Unlock()
}

func (r *recorder) snapshot() ([]Event, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...), r.resyncs
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startBus opens a bus on srv as the least-privileged ACL user the README
// documents: the store's commands and keys, and the bus's channel.
func startBus(t *testing.T, srv *redistest.Server, h Handler) *Redis {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := redisstore.Open(ctx, redisstore.Config{Addrs: []string{srv.Addr()}, Username: "ztna",
		PasswordFile: srv.PasswordFile(), KeyPrefix: "ztna:"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	b := NewRedis(rs.Client(), rs.Prefix()+"events", nil)
	t.Cleanup(func() { b.Close() })
	b.Start(context.Background(), h)
	waitUntil(t, "the subscription", func() bool { ok, _ := b.Connected(); return ok })
	return b
}

// TestRedisBus: two replicas on one real redis-server, as a least-privileged
// ACL user. What one publishes the other receives, in order, and never its
// own; a malformed message on the channel is ignored; when Redis goes away
// both report it, and when it is back they resubscribe and resync (they may
// have missed events), then deliver again.
func TestRedisBus(t *testing.T) {
	srv := redistest.Start(t, redistest.WithUser("ztna", "bus-test-password",
		"resetkeys", "~ztna:*", "resetchannels", "&ztna:events", redisstore.ACLCommands,
		"+publish", "+subscribe", "+unsubscribe"))
	var ra, rb recorder
	a := startBus(t, srv, &ra)
	b := startBus(t, srv, &rb)
	waitUntil(t, "the first resyncs", func() bool {
		_, na := ra.snapshot()
		_, nb := rb.snapshot()
		return na == 1 && nb == 1
	})

	a.Publish(SessionRevoked, "k1")
	a.Publish(Quarantine, "")
	b.Publish(Report, "dev-1")
	waitUntil(t, "the events", func() bool {
		ea, _ := ra.snapshot()
		eb, _ := rb.snapshot()
		return len(ea) == 1 && len(eb) == 2
	})
	eb, _ := rb.snapshot()
	if eb[0].Kind != SessionRevoked || eb[0].Key != "k1" || eb[0].Origin != a.ID() || eb[1].Kind != Quarantine {
		t.Errorf("b received %+v", eb)
	}
	if ea, _ := ra.snapshot(); ea[0].Kind != Report || ea[0].Key != "dev-1" || ea[0].Origin != b.ID() {
		t.Errorf("a received %+v", ea)
	}

	// Garbage on the channel (any client allowed to publish there) is
	// ignored; what follows still arrives.
	if err := srv.Client().Publish(context.Background(), "ztna:events", `{"k":"drop_tables","o":"x"}`).Err(); err != nil {
		t.Fatal(err)
	}
	a.Publish(DeviceRevoked, "dev-2")
	waitUntil(t, "the event after the garbage", func() bool {
		eb, _ := rb.snapshot()
		return len(eb) == 3
	})
	if eb, _ := rb.snapshot(); eb[2].Kind != DeviceRevoked {
		t.Errorf("after the garbage b received %+v", eb[2])
	}

	// Redis away: both see it; back: both resubscribe and resync.
	srv.Stop()
	waitUntil(t, "both to notice the outage", func() bool {
		okA, sinceA := a.Connected()
		okB, _ := b.Connected()
		return !okA && !okB && !sinceA.IsZero()
	})
	srv.Restart()
	waitUntil(t, "the resyncs after the outage", func() bool {
		_, na := ra.snapshot()
		_, nb := rb.snapshot()
		return na >= 2 && nb >= 2
	})
	a.Publish(Policy, "v2")
	waitUntil(t, "an event after the outage", func() bool {
		eb, _ := rb.snapshot()
		return len(eb) == 4 && eb[3].Kind == Policy && eb[3].Key == "v2"
	})
}

// TestRedisBusOnCluster: on a real 3-node Redis Cluster (go-redis's
// cluster client; PUBLISH is broadcast to every node, whichever one the
// publisher and the subscriber talk to), an event reaches the other
// replica and not the publisher.
func TestRedisBusOnCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	open := func(h Handler) *Redis {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rs, err := redisstore.Open(ctx, redisstore.Config{Addrs: c.Addrs(), KeyPrefix: "ztna:"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rs.Close() })
		b := NewRedis(rs.Client(), rs.Prefix()+"events", nil)
		t.Cleanup(func() { b.Close() })
		b.Start(context.Background(), h)
		waitUntil(t, "the subscription", func() bool { ok, _ := b.Connected(); return ok })
		return b
	}
	var ra, rb recorder
	a := open(&ra)
	open(&rb)
	a.Publish(SessionRevoked, "k-cluster")
	waitUntil(t, "the event across the cluster", func() bool {
		eb, _ := rb.snapshot()
		return len(eb) == 1 && eb[0].Key == "k-cluster"
	})
	if ea, _ := ra.snapshot(); len(ea) != 0 {
		t.Errorf("the publisher received its own event: %+v", ea)
	}
}
