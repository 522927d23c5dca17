package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestServeH1H2H3(t *testing.T) {
	e := startEnv(t, fastConfig(), okHandler, Options{}, nil)
	udpPort := e.s.UDPAddr().(*net.UDPAddr).Port
	if tcpPort := e.s.Addr().(*net.TCPAddr).Port; udpPort != tcpPort {
		t.Fatalf("HTTP/3 on UDP port %d, HTTPS on TCP port %d: want the same", udpPort, tcpPort)
	}
	wantAltSvc := fmt.Sprintf(`h3=":%d"; ma=86400`, udpPort)

	tests := []struct {
		name       string
		client     *http.Client
		url        string
		wantProto  string
		wantAltSvc string
	}{
		{"h1", e.tcpClient(false), e.httpsURL("/"), "HTTP/1.1", wantAltSvc},
		{"h2", e.tcpClient(true), e.httpsURL("/"), "HTTP/2.0", wantAltSvc},
		{"h3", e.h3Client(), e.h3URL("/"), "HTTP/3.0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := get(t, tt.client, tt.url, nil)
			if resp.StatusCode != http.StatusOK || body != tt.wantProto {
				t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, tt.wantProto)
			}
			if got := resp.Header.Get("Alt-Svc"); got != tt.wantAltSvc {
				t.Errorf("Alt-Svc = %q, want %q", got, tt.wantAltSvc)
			}
			if resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
				t.Errorf("TLS state %+v, want TLS 1.2+", resp.TLS)
			}
		})
	}
	for _, p := range []string{protoH1, protoH2, protoH3} {
		if got := gauge(e, p); got != 1 {
			t.Errorf("ztna_edge_connections_open{proto=%q} = %v, want 1", p, got)
		}
	}
}

func TestHTTP3Off(t *testing.T) {
	off := false
	cfg := fastConfig()
	cfg.HTTP3 = &off
	e := startEnv(t, cfg, okHandler, Options{}, nil)
	if e.s.UDPAddr() != nil {
		t.Fatalf("UDPAddr = %v, want nil with http3: false", e.s.UDPAddr())
	}
	resp, _ := get(t, e.tcpClient(false), e.httpsURL("/"), nil)
	if got := resp.Header.Get("Alt-Svc"); got != "" {
		t.Errorf("Alt-Svc = %q with HTTP/3 off", got)
	}
}

func TestTLSSettings(t *testing.T) {
	e := startEnv(t, fastConfig(), okHandler, Options{TLSConfig: &tls.Config{NextProtos: []string{"acme-tls/1"}}}, nil)
	tests := []struct {
		name      string
		conf      *tls.Config
		wantErr   bool
		wantProto string
	}{
		{"TLS 1.1 refused", &tls.Config{MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10}, true, ""},
		{"TLS 1.2 accepted", &tls.Config{MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}, false, "h2"},
		{"http/1.1 offered", &tls.Config{NextProtos: []string{"http/1.1"}}, false, "http/1.1"},
		{"caller's extra ALPN kept", &tls.Config{NextProtos: []string{"acme-tls/1"}}, false, "acme-tls/1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf := tt.conf.Clone()
			conf.RootCAs = e.tc.pool
			conn, err := tls.Dial("tcp", e.s.Addr().String(), conf)
			if tt.wantErr {
				if err == nil {
					conn.Close()
					t.Fatal("handshake succeeded, want refused")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if got := conn.ConnectionState().NegotiatedProtocol; got != tt.wantProto {
				t.Errorf("ALPN %q, want %q", got, tt.wantProto)
			}
		})
	}
}

// rawHTTP sends one raw request and reads the response, so tests control the
// Host header byte for byte.
func rawHTTP(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(req, " ")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response to %q: %v", req, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return resp
}

func TestRedirectListener(t *testing.T) {
	cfg := fastConfig()
	cfg.HTTPRedirectAddress = "127.0.0.1:0"
	e := startEnv(t, cfg, okHandler, Options{}, nil)
	port := e.s.Addr().(*net.TCPAddr).Port
	addr := e.s.RedirectAddr().String()

	tests := []struct {
		name     string
		req      string
		status   int
		location string
	}{
		{"get with query", "GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: app.example.com\r\n\r\n", 308,
			fmt.Sprintf("https://app.example.com:%d/a/b?x=1&y=%%20", port)},
		{"head", "HEAD / HTTP/1.1\r\nHost: app.example.com\r\n\r\n", 308, fmt.Sprintf("https://app.example.com:%d/", port)},
		{"host port dropped, case folded", "GET /x HTTP/1.1\r\nHost: App.Example.COM:80\r\n\r\n", 308,
			fmt.Sprintf("https://app.example.com:%d/x", port)},
		{"ipv4", "GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n", 308, fmt.Sprintf("https://10.0.0.1:%d/", port)},
		{"ipv6", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 308, fmt.Sprintf("https://[::1]:%d/", port)},
		{"absolute-form target keeps Host, drops its authority", "GET http://app.example.com/p HTTP/1.1\r\nHost: app.example.com\r\n\r\n", 308,
			fmt.Sprintf("https://app.example.com:%d/p", port)},
		{"double slash path stays a path", "GET //evil.example/x HTTP/1.1\r\nHost: app.example.com\r\n\r\n", 308,
			fmt.Sprintf("https://app.example.com:%d//evil.example/x", port)},
		{"post refused", "POST /form HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 3\r\n\r\na=b", 400, ""},
		{"no host", "GET / HTTP/1.0\r\n\r\n", 400, ""},
		{"host with underscore", "GET / HTTP/1.1\r\nHost: bad_host.example\r\n\r\n", 400, ""},
		{"host with leading hyphen", "GET / HTTP/1.1\r\nHost: -bad.example\r\n\r\n", 400, ""},
		{"host with zone", "GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n", 400, ""},
		{"host with bad port", "GET / HTTP/1.1\r\nHost: app.example.com:http\r\n\r\n", 400, ""},
		{"empty label", "GET / HTTP/1.1\r\nHost: app..example.com\r\n\r\n", 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := rawHTTP(t, addr, tt.req)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if got := resp.Header.Get("Location"); got != tt.location {
				t.Errorf("Location %q, want %q", got, tt.location)
			}
		})
	}
}

func TestRedirectHandlerPort443(t *testing.T) {
	h := redirectHandler(443)
	req, _ := http.NewRequest(http.MethodGet, "http://app.example.com/x?y", nil)
	rec := newRecorder()
	h.ServeHTTP(rec, req)
	if rec.status != 308 || rec.h.Get("Location") != "https://app.example.com/x?y" {
		t.Fatalf("got %d %q, want 308 https://app.example.com/x?y", rec.status, rec.h.Get("Location"))
	}
}

// recorder is a minimal ResponseWriter (httptest would be fine too; this
// keeps the package's test imports small).
type recorder struct {
	h      http.Header
	status int
}

func newRecorder() *recorder                    { return &recorder{h: http.Header{}} }
func (r *recorder) Header() http.Header         { return r.h }
func (r *recorder) Write(p []byte) (int, error) { return len(p), nil }
func (r *recorder) WriteHeader(s int)           { r.status = s }

func TestAdminListener(t *testing.T) {
	var ready sync.Mutex
	isReady := true
	e := startEnv(t, fastConfig(), okHandler, Options{Ready: func() bool {
		ready.Lock()
		defer ready.Unlock()
		return isReady
	}}, nil)
	c := &http.Client{Timeout: 5 * time.Second}

	resp, body := get(t, c, e.adminURL("/healthz"), nil)
	if resp.StatusCode != 200 {
		t.Errorf("/healthz %d %q", resp.StatusCode, body)
	}
	resp, _ = get(t, c, e.adminURL("/readyz"), nil)
	if resp.StatusCode != 200 {
		t.Errorf("/readyz %d while ready", resp.StatusCode)
	}
	ready.Lock()
	isReady = false
	ready.Unlock()
	resp, _ = get(t, c, e.adminURL("/readyz"), nil)
	if resp.StatusCode != 503 {
		t.Errorf("/readyz %d with Ready() false, want 503", resp.StatusCode)
	}
	get(t, e.tcpClient(false), e.httpsURL("/"), nil) // so the gauge has a sample worth seeing
	resp, body = get(t, c, e.adminURL("/metrics"), nil)
	if resp.StatusCode != 200 || !strings.Contains(body, `ztna_edge_connections_open{proto="h1"} 1`) ||
		!strings.Contains(body, "ztna_edge_connections_max_duration_closed_total") {
		t.Errorf("/metrics %d, body lacks edge metrics:\n%s", resp.StatusCode, body)
	}
	resp, _ = get(t, c, e.adminURL("/nope"), nil)
	if resp.StatusCode != 404 {
		t.Errorf("/nope %d, want 404", resp.StatusCode)
	}
}

func TestAdminOff(t *testing.T) {
	cfg := fastConfig()
	cfg.AdminAddress = AdminOff
	e := startEnv(t, cfg, okHandler, Options{}, nil)
	if e.s.AdminAddr() != nil || e.s.RedirectAddr() != nil {
		t.Fatalf("AdminAddr %v RedirectAddr %v, want both nil", e.s.AdminAddr(), e.s.RedirectAddr())
	}
}

// gate is a handler that blocks until released, reporting when it started.
type gate struct {
	started chan string
	release chan struct{}
}

func newGate() *gate { return &gate{started: make(chan string, 10), release: make(chan struct{})} }

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/slow" {
		_, _ = io.WriteString(w, "fast")
		return
	}
	g.started <- r.Proto
	select {
	case <-g.release:
		_, _ = io.WriteString(w, "done")
	case <-r.Context().Done():
		panic(http.ErrAbortHandler)
	}
}

func TestGracefulShutdown(t *testing.T) {
	cfg := fastConfig()
	cfg.DrainDelay = 400 * time.Millisecond
	cfg.GraceTimeout = 5 * time.Second
	g := newGate()
	e := startEnv(t, cfg, g, Options{}, nil)
	admin := &http.Client{Timeout: 5 * time.Second}
	h1, h3 := e.tcpClient(false), e.h3Client()

	type result struct {
		proto, body string
		err         error
	}
	results := make(chan result, 2)
	slow := func(c *http.Client, url string) {
		resp, err := c.Get(url)
		if err != nil {
			results <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		results <- result{proto: resp.Proto, body: string(b), err: err}
	}
	go slow(h1, e.httpsURL("/slow"))
	go slow(h3, e.h3URL("/slow"))
	for range 2 {
		select {
		case <-g.started:
		case <-time.After(5 * time.Second):
			t.Fatal("slow requests did not reach the handler")
		}
	}

	shutdownErr := make(chan error, 1)
	began := time.Now()
	go func() { shutdownErr <- e.s.Shutdown(context.Background()) }()

	// During the drain delay: not ready, but still serving, with
	// Connection: close so clients move away.
	eventually(t, 2*time.Second, "/readyz 503 while draining", func() bool {
		resp, err := admin.Get(e.adminURL("/readyz"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if time.Since(began) < cfg.DrainDelay {
		resp, body := get(t, e.tcpClient(false), e.httpsURL("/fast"), nil)
		if body != "fast" || !resp.Close {
			t.Errorf("during drain delay: body %q, Close %v; want served with Connection: close", body, resp.Close)
		}
	}

	// After the drain delay the listener is closed.
	eventually(t, 3*time.Second, "new TCP connections refused", func() bool {
		c, err := net.DialTimeout("tcp", e.s.Addr().String(), 500*time.Millisecond)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	if d := time.Since(began); d < cfg.DrainDelay {
		t.Errorf("listener closed after %s, before the drain delay %s", d, cfg.DrainDelay)
	}
	select {
	case err := <-shutdownErr:
		t.Fatalf("Shutdown returned %v with requests in flight", err)
	default:
	}

	close(g.release)
	for range 2 {
		r := <-results
		if r.err != nil || r.body != "done" {
			t.Errorf("in-flight %s request: body %q err %v; want it completed", r.proto, r.body, r.err)
		}
	}
	select {
	case err := <-shutdownErr:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the in-flight requests finished")
	}
	if e.s.BaseContext().Err() == nil {
		t.Error("BaseContext not cancelled after Shutdown")
	}
	// Idempotent.
	if err := e.s.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

func TestShutdownGraceExpires(t *testing.T) {
	cfg := fastConfig()
	cfg.GraceTimeout = 300 * time.Millisecond
	var hijackedDone = make(chan struct{})
	baseSeen := make(chan error, 4)
	started := make(chan struct{}, 4)
	var e *testEnv
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream":
			w.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, "first part\n")
			http.NewResponseController(w).Flush()
			started <- struct{}{}
			<-r.Context().Done()
			baseSeen <- e.s.BaseContext().Err()
			panic(http.ErrAbortHandler)
		case "/ws":
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			defer close(hijackedDone)
			defer conn.Close()
			_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
			_ = brw.Flush()
			started <- struct{}{}
			// A relay that ignores its context: only the closed socket stops it.
			_, _ = io.Copy(io.Discard, conn)
		}
	})
	e = startEnv(t, cfg, h, Options{}, nil)

	streamErrs := make(chan error, 3)
	stream := func(c *http.Client, url string) {
		resp, err := c.Get(url)
		if err != nil {
			streamErrs <- err
			return
		}
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		streamErrs <- err
	}
	go stream(e.tcpClient(false), e.httpsURL("/stream"))
	go stream(e.tcpClient(true), e.httpsURL("/stream"))
	go stream(e.h3Client(), e.h3URL("/stream"))

	ws, err := tls.Dial("tcp", e.s.Addr().String(), &tls.Config{RootCAs: e.tc.pool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_, _ = io.WriteString(ws, "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
	wsr := bufio.NewReader(ws)
	if resp, err := http.ReadResponse(wsr, nil); err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	for range 4 {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("long-lived requests did not start")
		}
	}
	if got := gauge(e, protoH1); got != 2 {
		t.Errorf("open h1 connections = %v, want 2 (one hijacked)", got)
	}

	began := time.Now()
	if err := e.s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	elapsed := time.Since(began)
	if lo, hi := cfg.DrainDelay+cfg.GraceTimeout, cfg.DrainDelay+cfg.GraceTimeout+1500*time.Millisecond; elapsed < lo || elapsed > hi {
		t.Errorf("Shutdown took %s, want between %s and %s", elapsed, lo, hi)
	}
	if e.s.BaseContext().Err() == nil {
		t.Error("BaseContext not cancelled")
	}
	for range 3 {
		select {
		case err := <-streamErrs:
			if err == nil {
				t.Error("a stream outliving the grace period ended cleanly; want it cut off")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("stream client still blocked after Shutdown")
		}
	}
	for range 3 {
		if err := <-baseSeen; !errors.Is(err, context.Canceled) {
			t.Errorf("handler saw BaseContext().Err() = %v when its context ended, want Canceled", err)
		}
	}
	select {
	case <-hijackedDone:
	case <-time.After(time.Second):
		t.Fatal("hijacked connection's handler still running after Shutdown")
	}
	_ = ws.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := wsr.ReadByte(); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Errorf("hijacked client read: %v, want the connection closed", err)
	}
	for _, p := range []string{protoH1, protoH2, protoH3} {
		eventually(t, 2*time.Second, "gauge "+p+" back to 0", func() bool { return gauge(e, p) == 0 })
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestShutdownCallerContext(t *testing.T) {
	cfg := fastConfig()
	cfg.DrainDelay = time.Minute
	cfg.GraceTimeout = time.Minute
	tc := newTestCert(t)
	s, err := New(cfg, Options{Handler: okHandler, TLSConfig: &tls.Config{Certificates: []tls.Certificate{tc.cert}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	err = s.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded from the caller's context", err)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Errorf("Shutdown took %s despite the caller's 200ms context", d)
	}
}

func TestRun(t *testing.T) {
	tc := newTestCert(t)
	s, err := New(fastConfig(), Options{Handler: okHandler, TLSConfig: &tls.Config{Certificates: []tls.Certificate{tc.cert}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	eventually(t, 2*time.Second, "Run started", func() bool { return s.Addr() != nil && s.ready() })
	if err := s.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil after a clean stop", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if err := s.Start(); err == nil {
		t.Error("Start after Shutdown succeeded")
	}
}

func TestShutdownBeforeStart(t *testing.T) {
	tc := newTestCert(t)
	s, err := New(fastConfig(), Options{Handler: okHandler, TLSConfig: &tls.Config{Certificates: []tls.Certificate{tc.cert}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown before Start: %v", err)
	}
	if s.BaseContext().Err() == nil {
		t.Error("BaseContext alive after Shutdown")
	}
}

func TestStartBindFailureClosesOthers(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	// Find a free port for HTTPS (TCP and UDP), then make the redirect
	// listener fail: the HTTPS port must be free again afterwards.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpsAddr := probe.Addr().String()
	probe.Close()

	cfg := fastConfig()
	cfg.Address = httpsAddr
	cfg.HTTPRedirectAddress = busy.Addr().String()
	tc := newTestCert(t)
	s, err := New(cfg, Options{Handler: okHandler, TLSConfig: &tls.Config{Certificates: []tls.Certificate{tc.cert}}})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start()
	if err == nil || !strings.Contains(err.Error(), "http_redirect_address") {
		t.Fatalf("Start = %v, want an error naming http_redirect_address", err)
	}
	ln, err := net.Listen("tcp", httpsAddr)
	if err != nil {
		t.Fatalf("HTTPS TCP port still bound after failed Start: %v", err)
	}
	ln.Close()
	pc, err := net.ListenPacket("udp", httpsAddr)
	if err != nil {
		t.Fatalf("HTTP/3 UDP port still bound after failed Start: %v", err)
	}
	pc.Close()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after failed Start: %v", err)
	}
}

func TestNewRejects(t *testing.T) {
	tc := newTestCert(t)
	good := &tls.Config{Certificates: []tls.Certificate{tc.cert}}
	tests := []struct {
		name string
		cfg  Config
		opts Options
		want string
	}{
		{"no handler", Config{}, Options{TLSConfig: good}, "Handler"},
		{"no tls", Config{}, Options{Handler: okHandler}, "TLSConfig"},
		{"no certificate source", Config{}, Options{Handler: okHandler, TLSConfig: &tls.Config{}}, "certificate"},
		{"bad config", Config{Address: "nope"}, Options{Handler: okHandler, TLSConfig: good}, "listen.address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want error containing %q", err, tt.want)
			}
		})
	}
}
