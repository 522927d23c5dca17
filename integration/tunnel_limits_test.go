package integration

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// TestTunnelLimitsAndUpdates, over QUIC and over the HTTP/2 fallback: a
// user's streams are bounded across connections (the next one is refused
// with a reason, and allowed again once one closes); a stream on which
// nothing moves is closed after the idle timeout with that reason; a
// policy reload that takes an app away sends the client its new app list
// (and cuts the live stream); ping is answered.
func TestTunnelLimitsAndUpdates(t *testing.T) {
	for _, via := range []string{viaQUIC, viaUDPBlocked} {
		t.Run(via, func(t *testing.T) { testTunnelLimitsAndUpdates(t, via) })
	}
}

func testTunnelLimitsAndUpdates(t *testing.T, via string) {
	env := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cfg := currentConfig(env)
	cfg.Tunnel.MaxStreamsPerUser = 2
	cfg.Tunnel.StreamIdleTimeout = time.Second
	if err := env.Edge.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}

	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	_, cert := enrollDevice(t, env, "u-alice")
	var mu sync.Mutex
	var events []tunnel.Frame
	client := tunnelClientVia(t, env, cookie, &cert, via)
	client.OnEvent = func(f tunnel.Frame) {
		mu.Lock()
		events = append(events, f)
		mu.Unlock()
	}
	conn, err := client.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if rtt, err := conn.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	} else {
		t.Logf("ping over %s: %v", conn.Transport(), rtt)
	}

	// A second connection of the same user shares the limit.
	conn2, err := tunnelClientVia(t, env, cookie, &cert, via).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	open := func(c *tunnel.Conn) (net.Conn, *bufio.Reader) {
		t.Helper()
		s, err := c.Dial(ctx, "echo")
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(s)
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		return s, br
	}
	s1, _ := open(conn)
	s2, br2 := open(conn2)
	_, err = conn.Dial(ctx, "echo")
	var de *tunnel.DialError
	if !errors.As(err, &de) || de.Status != tunnel.StatusLimit || !strings.Contains(de.Message, "2 tunnel connections") {
		t.Fatalf("third stream: %v, want the per-user limit", err)
	}
	s1.Close()
	waitFor(t, 5*time.Second, "a stream slot after closing one", func() bool {
		s, err := conn.Dial(ctx, "echo")
		if err != nil {
			return false
		}
		s1 = s
		return true
	})
	defer s1.Close()

	// Idle: s2 has moved nothing since its greeting.
	start := time.Now()
	_ = s2.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = br2.ReadString('\n')
	idleAfter := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "idle") {
		t.Fatalf("idle stream: %v, want closed as idle", err)
	}
	if idleAfter > 3*time.Second {
		t.Errorf("idle stream closed after %v, want about 1 s", idleAfter)
	}
	t.Logf("idle stream closed after %v: %v", idleAfter, err)

	// A reload that takes echo away: the app list follows.
	cfg = currentConfig(env)
	for i := range cfg.Apps {
		if cfg.Apps[i].Name == "echo" {
			cfg.Apps[i].Rules = nil
		}
	}
	if err := env.Edge.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "an empty app list pushed to the client", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, f := range events {
			if f.Type == tunnel.FrameApps && len(f.Apps) == 0 {
				return true
			}
		}
		return false
	})
	if apps := conn.Apps(); len(apps) != 0 {
		t.Errorf("apps after the reload: %+v, want none", apps)
	}
	_, err = conn.Dial(ctx, "echo")
	if !errors.As(err, &de) || de.Status != tunnel.StatusUnknownApp {
		t.Errorf("dial after the reload: %v, want unknown app", err)
	}
}

// TestTunnelMigration: a QUIC tunnel connection moves to a new local
// socket (connection migration, as after a network change) and its live
// stream carries on through the edge; the HTTP/2 fallback says it cannot.
func TestTunnelMigration(t *testing.T) {
	env := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	_, cert := enrollDevice(t, env, "u-alice")
	for _, via := range []string{viaQUIC, viaUDPBlocked} {
		conn, s, br := echoStream(t, ctx, tunnelClientVia(t, env, cookie, &cert, via))
		err := conn.Migrate(ctx)
		if via == viaUDPBlocked {
			if !errors.Is(err, tunnel.ErrNoMigration) {
				t.Errorf("migrate over HTTP/2: %v, want ErrNoMigration", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("migrate: %v", err)
		}
		if _, err := s.Write([]byte("after the move\n")); err != nil {
			t.Fatal(err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != "after the move\n" {
			t.Fatalf("echo after migrating: %q, %v", line, err)
		}
	}
}

// TestTunnelAppsSayWhyUnavailable: an app the policy opens to the user but
// whose posture profile this device fails is listed with the reason and
// the fix (what `ztna tunnel status` prints), and a stream to it is
// refused with the same reason.
func TestTunnelAppsSayWhyUnavailable(t *testing.T) {
	env := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := currentConfig(env)
	for i := range cfg.Apps {
		if cfg.Apps[i].Name == "echo" {
			cfg.Apps[i].PostureProfile = "strict"
		}
	}
	if err := env.Edge.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	_, cert := enrollDevice(t, env, "u-alice") // enrolled, no posture report yet
	conn, err := tunnelClient(t, env, sessionCookie(t, env, alice, "whoami"), &cert).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	apps := conn.Apps()
	if len(apps) != 1 || apps[0].Name != "echo" || !strings.Contains(apps[0].Unavailable, `"strict"`) {
		t.Fatalf("apps %+v, want echo unavailable because of the strict profile", apps)
	}
	t.Logf("echo: %s", apps[0].Unavailable)
	_, err = conn.Dial(ctx, "echo")
	var de *tunnel.DialError
	if !errors.As(err, &de) || de.Status != tunnel.StatusDenied || de.Message != apps[0].Unavailable {
		t.Errorf("dial: %v, want denied with %q", err, apps[0].Unavailable)
	}

	// carol may not use echo at all: her device fails the profile too, but
	// she learns nothing about echo, not even that it wants a profile.
	carol := loginFlow(t, env, "whoami", "/", "carol", carolPassword)
	_, carolCert := enrollDevice(t, env, "u-carol")
	cconn, err := tunnelClient(t, env, sessionCookie(t, env, carol.Client, "whoami"), &carolCert).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cconn.Close()
	_, err = cconn.Dial(ctx, "echo")
	if !errors.As(err, &de) || de.Status != tunnel.StatusUnknownApp || strings.Contains(de.Message, "strict") {
		t.Errorf("carol dials echo: %v, want unknown app", err)
	}
}

// TestTunnelCarriesHTTPApp: an internal HTTP app declared as a TCP app is
// used through the tunnel with an ordinary HTTP client (here the whoami
// app, which only accepts connections with the edge's PROXY v2 identity):
// the app sees alice, verified from the header the edge signed, over QUIC
// and over the HTTP/2 fallback. The forged headers the client sends are
// just bytes to the app — the identity is the PROXY header's.
func TestTunnelCarriesHTTPApp(t *testing.T) {
	for _, via := range []string{viaQUIC, viaUDPBlocked} {
		t.Run(via, func(t *testing.T) {
			env := newEnv(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			alice := loginAs(t, env, "whoami", "alice", alicePassword)
			cookie := sessionCookie(t, env, alice, "whoami")
			_, cert := enrollDevice(t, env, "u-alice")
			cfg := currentConfig(env)
			for i := range cfg.Apps {
				if a := &cfg.Apps[i]; a.Name == "whoami" {
					u, err := url.Parse(a.Upstream)
					if err != nil {
						t.Fatal(err)
					}
					a.TCP, a.Upstream, a.Host, a.PathPrefix = u.Host, "", "", ""
				}
			}
			if err := env.Edge.Apply(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			conn, err := tunnelClientVia(t, env, cookie, &cert, via).Connect(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return conn.Dial(ctx, "whoami") },
			}}
			defer hc.CloseIdleConnections()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://whoami/hello?format=json", nil)
			req.Header.Set("X-Forwarded-User", "u-admin") // not the edge's: the app must not believe it
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			rep := decodeReport(t, body)
			if resp.StatusCode != 200 || rep.ProxyIdentity == nil || rep.ProxyIdentity.Subject != "u-alice" ||
				rep.ProxyIdentity.Audience != "whoami" || rep.Path != "/hello" {
				t.Fatalf("through the tunnel: %d %+v", resp.StatusCode, rep)
			}
		})
	}
}

// TestTunnelStreamEndsWithItsSession: live streams keep their session's
// idle clock going, but not past its absolute timeout: then the session
// ends and the stream is cut within the sweep, saying why.
func TestTunnelStreamEndsWithItsSession(t *testing.T) {
	const lifetime = 3 * time.Second
	env := newEnvWith(t, func(o *devenv.Options) {
		o.Configure = func(c *proxy.Config) {
			c.OIDC.Sessions.AbsoluteTimeout = lifetime
			c.OIDC.Sessions.IdleTimeout = time.Second // the live stream keeps it alive
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	loggedIn := time.Now()
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	_, cert := enrollDevice(t, env, "u-alice")
	_, _, br := echoStream(t, ctx, tunnelClient(t, env, sessionCookie(t, env, alice, "whoami"), &cert))
	_, err := br.ReadString('\n') // nothing moves: only the session's end can end this
	ended := time.Since(loggedIn)
	var ce *tunnel.CutError
	if !errors.As(err, &ce) || !strings.Contains(ce.Reason, "session ended") {
		t.Fatalf("the stream ended with %v, want a cut because the session ended", err)
	}
	if ended < 2*time.Second || ended > lifetime+2*time.Second {
		t.Errorf("the stream ended %v after the login, want about %v (the absolute timeout)", ended, lifetime)
	}
	t.Logf("stream cut %v after the login (absolute timeout %v): %v", ended.Round(time.Millisecond), lifetime, err)
}
