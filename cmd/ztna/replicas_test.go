package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/bus"
	redisstore "github.com/ztna-dev/ztna/internal/store/redis"
	"github.com/ztna-dev/ztna/internal/store/redistest"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/proxy"
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

// client is a browser at the replica: the edge's host names (*.test)
// reach its HTTPS port, anything else (the IdP) its own address.
func (p *replicaProcess) client(t *testing.T, jar http.CookieJar, follow bool) *http.Client {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Jar: jar, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the test's own self-signed cert
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if strings.HasSuffix(strings.Split(addr, ":")[0], ".test") {
				addr = p.https
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
	if !follow {
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// login signs user in through the replica as a browser does (app →
// edge login → IdP form → callback → handoff → app) and returns the
// session cookie the app host got.
func (p *replicaProcess) login(t *testing.T, user, password string) string {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := p.client(t, jar, true)
	get := func(u string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", u, nil)
		req.Header.Set("Accept", "text/html")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp, string(b)
	}
	resp, page := get("https://app.test/x") // ends at the IdP's login form
	action := regexp.MustCompile(`<form[^>]*action="([^"]+)"`).FindStringSubmatch(page)
	id := regexp.MustCompile(`name="authRequestID" value="([^"]+)"`).FindStringSubmatch(page)
	if action == nil || id == nil {
		t.Fatalf("no IdP login form at %s: %.300s", resp.Request.URL, page)
	}
	target, err := resp.Request.URL.Parse(html.UnescapeString(action[1]))
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{"authRequestID": {html.UnescapeString(id[1])}, "username": {user}, "password": {password}}
	resp, err = c.PostForm(target.String(), form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Host != "app.test" {
		t.Fatalf("after the login: %d at %s, want 200 at app.test", resp.StatusCode, resp.Request.URL)
	}
	for _, ck := range jar.Cookies(&url.URL{Scheme: "https", Host: "app.test"}) {
		if ck.Name == authn.SessionCookie {
			return ck.Value
		}
	}
	t.Fatal("no session cookie for app.test after the login")
	return ""
}

// status is GET https://app.test/x on the replica with the session cookie.
func (p *replicaProcess) status(t *testing.T, cookie string) int {
	t.Helper()
	c := p.client(t, nil, false)
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
// store.backend redis on one real redis-server: alice signs in through A
// (the real OIDC flow) and her session works on B; an admin signing her
// out on B ends her live WebSocket and streaming response on A within a
// second; a
// revocation announced on the bus by a third party is refused by both at
// once (not after their 30 s session cache); a device quarantined by a
// signal to A is refused by B; while Redis is down a session
// neither read recently gets 503; a replica killed and started again
// serves with its state intact.
func TestServeReplicasShareRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAppendOnly())
	f := newServeFixture(t)
	prefix := fmt.Sprintf("ztna:%d:", time.Now().UnixNano())
	adminToken := strings.Repeat("a", 40)
	tokenFile := filepath.Join(f.dir, "admin-token")
	if err := os.WriteFile(tokenFile, []byte(adminToken), 0o600); err != nil {
		t.Fatal(err)
	}
	streamer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" { // a WebSocket echo
			c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close()
			for {
				mt, m, err := c.ReadMessage()
				if err != nil || c.WriteMessage(mt, m) != nil {
					return
				}
			}
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			if _, err := io.WriteString(w, "data: tick\n\n"); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}))
	t.Cleanup(streamer.Close)
	signalsToken := strings.Repeat("s", 40)
	signalsFile := filepath.Join(f.dir, "signals-token")
	if err := os.WriteFile(signalsFile, []byte(signalsToken), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := f.config("  - name: app2\n    host: app2.test\n    upstream: "+streamer.URL+"\n    rules:\n      - name: everyone\n") +
		fmt.Sprintf("store:\n  backend: redis\n  redis:\n    addrs: [%q]\n    key_prefix: %q\nadmin:\n  token_file: %s\nsignals:\n  token_file: %s\n",
			srv.Addr(), prefix, tokenFile, signalsFile)
	f.write(t, cfg)
	a := startReplica(t, f.cfgPath)
	b := startReplica(t, f.cfgPath)

	// alice signs in through A; her session works on B.
	cookie := a.login(t, "alice", "alice-password")
	if code := b.status(t, cookie); code != http.StatusOK {
		t.Fatalf("alice's session from A on B: %d, want 200", code)
	}
	// A live WebSocket and a live streaming response on A; an admin signs
	// alice out on B.
	dialer := &websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, HandshakeTimeout: 5 * time.Second,
		NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, a.https)
		}}
	ws, _, err := dialer.Dial("wss://app2.test/ws", http.Header{"Cookie": {authn.SessionCookie + "=" + cookie}})
	if err != nil {
		t.Fatalf("WebSocket on A: %v", err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, m, err := ws.ReadMessage(); err != nil || string(m) != "hi" {
		t.Fatalf("WebSocket echo on A: %q, %v", m, err)
	}
	wsEnded := make(chan time.Time, 1)
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				wsEnded <- time.Now()
				return
			}
		}
	}()
	req, _ := http.NewRequest("GET", "https://app2.test/stream", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.AddCookie(&http.Cookie{Name: authn.SessionCookie, Value: cookie})
	stream, err := a.client(t, nil, false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	lines := bufio.NewScanner(stream.Body)
	if stream.StatusCode != http.StatusOK || !lines.Scan() {
		t.Fatalf("the stream on A: %d", stream.StatusCode)
	}
	ended := make(chan time.Time, 1)
	go func() {
		for lines.Scan() {
		}
		ended <- time.Now()
	}()
	signOut, _ := http.NewRequest("POST", "https://auth.test/api/users/u-alice/sign-out", nil)
	signOut.Header.Set("Authorization", "Bearer "+adminToken)
	start := time.Now()
	resp, err := b.client(t, nil, false).Do(signOut)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("sign-out on B: %d", resp.StatusCode)
	}
	select {
	case at := <-ended:
		if d := at.Sub(start); d > time.Second {
			t.Errorf("the stream on A ended %v after the sign-out on B, want ≤ 1 s", d)
		} else {
			t.Logf("signed out on B → stream on A ended after %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream on A outlived the sign-out on B")
	}
	select {
	case at := <-wsEnded:
		if d := at.Sub(start); d > time.Second {
			t.Errorf("the WebSocket on A closed %v after the sign-out on B, want ≤ 1 s", d)
		} else {
			t.Logf("signed out on B → WebSocket on A closed after %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the WebSocket on A outlived the sign-out on B")
	}
	if code := a.status(t, cookie); code != http.StatusUnauthorized {
		t.Errorf("the signed-out session on A: %d, want 401", code)
	}

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
	start = time.Now()
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

	// A device enrolled through the shared store (as replica A's enrollment
	// would) is known to B; quarantined by a signal to A, B refuses it.
	cookie3 := newSession().ID
	ca, err := posture.LoadOrCreateDeviceCA(filepath.Join(f.dir, "data", "device-ca.pem"), filepath.Join(f.dir, "data", "device-ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := posture.SignEnrollProof(key)
	if err != nil {
		t.Fatal(err)
	}
	dev, der, err := posture.NewDevices(rs, ca, nil).EnrollFor(ctx, "u-alice", &key.PublicKey, "laptop", "linux", proof, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	withDevice := func(p *replicaProcess) int {
		c := p.client(t, nil, false)
		c.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}
		req, _ := http.NewRequest("GET", "https://app.test/x", nil)
		req.Header.Set("Accept", "application/json")
		req.AddCookie(&http.Cookie{Name: authn.SessionCookie, Value: cookie3})
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := withDevice(b); code != http.StatusOK {
		t.Fatalf("the enrolled device on B: %d, want 200", code)
	}
	signal, _ := http.NewRequest("POST", "https://auth.test"+proxy.PathSignals,
		strings.NewReader(fmt.Sprintf(`{"source":"crowdstrike","severity":"critical","device_id":%q,"reason":"test: alert on A"}`, dev.ID)))
	signal.Header.Set("Authorization", "Bearer "+signalsToken)
	signal.Header.Set("Content-Type", "application/json")
	resp, err = a.client(t, nil, false).Do(signal)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the signal on A: %d", resp.StatusCode)
	}
	start = time.Now()
	for withDevice(b) != http.StatusForbidden {
		if time.Since(start) > time.Second {
			t.Fatal("B still serves a device quarantined on A a second ago")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("quarantined by a signal on A → refused by B within %v", time.Since(start).Round(time.Millisecond))

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
