package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/bus"
	redisstore "github.com/ztna-dev/ztna/internal/store/redis"
	"github.com/ztna-dev/ztna/internal/store/redistest"
)

// replicaProcess is one `ztna serve` process.
type replicaProcess struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
	logs   *logWatcher
	https  string
}

func startReplica(t *testing.T, cfgPath string) *replicaProcess {
	t.Helper()
	p := &replicaProcess{cmd: exec.Command(ztnaBin, "serve", "--config", cfgPath), exited: make(chan struct{}), logs: &logWatcher{}}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.logs.read(stderr); _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { _ = p.cmd.Process.Kill(); <-p.exited })
	l := p.logs.wait(t, 20*time.Second, "edge: listening", func(m map[string]any) bool { return m["msg"] == "edge: listening" })
	p.https, _ = l["https"].(string)
	p.logs.wait(t, 10*time.Second, "bus subscribed", func(m map[string]any) bool { return m["msg"] == "bus: subscribed" })
	return p
}

// status is GET https://app.test/x on the replica with the session cookie.
func (p *replicaProcess) status(t *testing.T, cookie string) int {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the test's own self-signed cert
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, p.https)
		},
	}, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest("GET", "https://app.test/x", nil)
	req.Header.Set("Accept", "application/json")
	req.AddCookie(&http.Cookie{Name: authn.SessionCookie, Value: cookie})
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET app.test on %s: %v", p.https, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestServeReplicasShareRedis runs two `ztna serve` processes with
// store.backend redis on one real redis-server: a session either replica
// wrote is served by both; a revocation announced on the bus is refused by
// both at once (not after their 30 s session cache); while Redis is down a
// session neither read recently gets 503; a replica killed and started
// again serves with its state intact.
func TestServeReplicasShareRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAppendOnly())
	f := newServeFixture(t)
	prefix := fmt.Sprintf("ztna:%d:", time.Now().UnixNano())
	cfg := f.config("") + fmt.Sprintf("store:\n  backend: redis\n  redis:\n    addrs: [%q]\n    key_prefix: %q\n", srv.Addr(), prefix)
	f.write(t, cfg)
	a := startReplica(t, f.cfgPath)
	b := startReplica(t, f.cfgPath)

	// The test is a third party on the same Redis: it writes sessions as a
	// replica's login would, and revokes like another replica would.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rs, err := redisstore.Open(ctx, redisstore.Config{Addrs: []string{srv.Addr()}, KeyPrefix: prefix}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	third := bus.NewRedis(rs.Client(), rs.Prefix()+"events", slog.New(slog.DiscardHandler))
	defer third.Close()
	sessions := authn.NewSessions(rs, authn.SessionsConfig{}, nil)
	sessions.Announce(third.Publish)
	third.Start(ctx, noEvents{})
	newSession := func() *authn.Session {
		s, err := sessions.Create(ctx, authn.Identity{Subject: "u-alice", Email: "alice@example.com"}, authn.Tokens{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	s1 := newSession()
	for name, p := range map[string]*replicaProcess{"A": a, "B": b} {
		if code := p.status(t, s1.ID); code != http.StatusOK {
			t.Fatalf("the shared session on %s: %d, want 200", name, code)
		}
	}
	// Both replicas have it cached now; the revocation reaches them on the
	// bus and they refuse it at once.
	start := time.Now()
	if err := sessions.Revoke(ctx, s1.Key); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]*replicaProcess{"A": a, "B": b} {
		deadline := time.Now().Add(time.Second)
		for p.status(t, s1.ID) != http.StatusUnauthorized {
			if time.Now().After(deadline) {
				t.Fatalf("replica %s still serves a session revoked %v ago", name, time.Since(start))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Logf("revocation refused by both replicas within %v", time.Since(start).Round(time.Millisecond))

	// Redis down: a session neither replica read is "unavailable", not
	// "signed out", and not allowed.
	s2 := newSession()
	srv.Stop()
	if code := a.status(t, s2.ID); code != http.StatusServiceUnavailable {
		t.Errorf("an unread session while Redis is down: %d, want 503", code)
	}
	srv.Restart()

	// A replica killed and started again serves the session it never saw.
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-a.exited
	a = startReplica(t, f.cfgPath)
	if code := a.status(t, s2.ID); code != http.StatusOK {
		t.Errorf("after the restarts, the session on the restarted replica: %d, want 200", code)
	}
	if code := b.status(t, s2.ID); code != http.StatusOK {
		t.Errorf("after the restarts, the session on B: %d, want 200", code)
	}
}

// noEvents ignores the replicas' events (the test only publishes).
type noEvents struct{}

func (noEvents) Event(bus.Event) {}
func (noEvents) Resync()         {}
