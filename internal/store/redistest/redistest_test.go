package redistest

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{}) // Stop makes go-redis log failed dials
	goleak.VerifyTestMain(m)
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestStopRestart(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     []Option
		keepData bool
	}{
		{"append only", []Option{WithAppendOnly()}, true},
		{"in memory", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t)
			s := Start(t, tc.opts...)
			rdb := s.Client()
			if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
			addr := s.Addr()

			s.Stop()
			once := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1})
			defer once.Close()
			if err := once.Ping(ctx).Err(); err == nil {
				t.Fatal("PING succeeded after Stop")
			}

			s.Restart()
			if s.Addr() != addr {
				t.Errorf("restarted on %s, want %s", s.Addr(), addr)
			}
			got, err := rdb.Get(ctx, "k").Result()
			switch {
			case tc.keepData && (err != nil || got != "v"):
				t.Errorf("after restart GET = %q, %v; want the value written before", got, err)
			case !tc.keepData && !errors.Is(err, redis.Nil):
				t.Errorf("after restart without append-only GET = %q, %v; want nothing", got, err)
			}
		})
	}
}

func TestCleanupKillsServer(t *testing.T) {
	var pid int
	t.Run("owner", func(t *testing.T) {
		s := Start(t)
		pid = s.proc.cmd.Process.Pid
	})
	// The subtest's cleanup has run: the process is gone (and reaped).
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("redis-server pid %d after its test ended: kill(0) = %v, want ESRCH", pid, err)
	}
}

func TestUser(t *testing.T) {
	ctx := ctxT(t)
	s := Start(t, WithUser("app", "pw-123"))
	if err := s.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("PING as the user: %v", err)
	}
	anon := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer anon.Close()
	if err := anon.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("PING without credentials: %v, want NOAUTH", err)
	}
}

func TestTLS(t *testing.T) {
	ctx := ctxT(t)
	s := Start(t, WithTLSClientAuth())
	if err := s.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("PING over TLS with a client certificate: %v", err)
	}
	plain := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, ReadTimeout: 500 * time.Millisecond})
	defer plain.Close()
	if err := plain.Ping(ctx).Err(); err == nil {
		t.Fatal("PING in plain text to the TLS port succeeded")
	}
}

func TestClusterReady(t *testing.T) {
	info := "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\ncluster_known_nodes:3\r\n"
	for _, tc := range []struct {
		info  string
		nodes int
		want  bool
	}{
		{info, 3, true},
		{info, 4, false},
		{strings.Replace(info, "state:ok", "state:fail", 1), 3, false},
		{strings.Replace(info, "slots_ok:16384", "slots_ok:16000", 1), 3, false},
		{"", 3, false},
	} {
		if got := clusterReady(tc.info, tc.nodes); got != tc.want {
			t.Errorf("clusterReady(%q, %d) = %v", tc.info, tc.nodes, got)
		}
	}
}
