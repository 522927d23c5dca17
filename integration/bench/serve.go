package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy"
	"github.com/ztna-dev/ztna/proxy/identity"
)

// The bench apps on the edge and the demo user who loads them.
const (
	benchApp      = "bench"
	benchHost     = "bench.localhost"
	benchUser     = "alice"
	benchPassword = "alice-password"
	benchSubject  = "u-alice" // the demo user's subject at the dev IdP
	benchGroup    = "engineering"

	// ppApp is the same upstream behind PROXY v2: every upstream connection
	// starts with a header carrying the signed identity, which the app
	// verifies once per connection (identity.NewListener).
	ppApp  = "bench-pp"
	ppHost = "bench-pp.localhost"
	// tcpApp is a raw TCP echo app behind PROXY v2, reached with
	// Edge.DialTCP in the new-connection measurement.
	tcpApp = "bench-tcp"
)

// Upstream paths that are not part of the load. countPath answers only
// requests that did not come through a proxy.
const (
	countPath    = "/.bench/count"
	identityPath = "/.bench/identity"
)

// serverInfo is the first line the child writes to stdout.
type serverInfo struct {
	PID      int    `json:"pid"`
	Direct   string `json:"direct"`    // http://127.0.0.1:P/ — the upstream itself
	Bare     string `json:"bare"`      // https://127.0.0.1:Q/ — bare httputil.ReverseProxy
	Edge     string `json:"edge"`      // https://127.0.0.1:R/ — the ztna edge
	EdgeHost string `json:"edge_host"` // the Host header of the bench app: bench.localhost:R
	PPHost   string `json:"pp_host"`   // the Host header of the PROXY v2 bench app: bench-pp.localhost:R
	Cookie   string `json:"cookie"`    // the session cookie value: a secret, never printed
	CAFile   string `json:"ca_file"`   // the dev CA that signed the edge (and bare) certificate

	// The tunnel benchmark (tunnel.go, tunnel_relay.go).
	EdgeUDP      string `json:"edge_udp"`          // 127.0.0.1:R — the edge's QUIC port (the tunnel)
	Sink         string `json:"sink"`              // 127.0.0.1:S — the TCP sink/source of sinkApp
	Relay        string `json:"relay"`             // 127.0.0.1:U — the bare quic-go relay (UDP)
	RelayBuffers [2]int `json:"relay_udp_buffers"` // its socket's SO_RCVBUF, SO_SNDBUF
}

// counts is what countPath reports.
type counts struct {
	Total     int64 `json:"total"`
	Assertion int64 `json:"assertion"`
	// ProxyIdentity counts requests that arrived on the PROXY v2 port on a
	// connection whose header carried a verified identity of benchSubject
	// for ppApp; ProxyAccepts counts the connections that port accepted.
	ProxyIdentity int64 `json:"proxy_identity"`
	ProxyAccepts  int64 `json:"proxy_accepts"`
}

// identityReport is what identityPath reports about the request it got.
type identityReport struct {
	Verified bool     `json:"verified"`
	Error    string   `json:"error,omitempty"`
	Subject  string   `json:"sub,omitempty"`
	Audience string   `json:"aud,omitempty"`
	Email    string   `json:"email,omitempty"`
	Groups   []string `json:"groups,omitempty"`
	User     string   `json:"x_forwarded_user,omitempty"`
	// From the PROXY v2 header of the connection, on the PROXY v2 port only.
	ProxySubject  string `json:"proxy_sub,omitempty"`
	ProxyAudience string `json:"proxy_aud,omitempty"`
}

// serveChild runs the targets, the echo apps of the new-connection
// measurement and the edge side of the tunnel benchmark in this process
// until stdin closes, answering the harness's commands (one per line) on
// stdout. idleAddr is the harness's idle TCP app ("" → none).
func serveChild(idleAddr string) error {
	if err := checkIdleAddr(idleAddr); err != nil {
		return err
	}
	// SIGINT/SIGTERM end it like a closed stdin, so the temp dir goes.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	dir, err := os.MkdirTemp("", "ztna-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	auditPath := filepath.Join(dir, "audit.jsonl")
	auditFile, err := os.OpenFile(auditPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer auditFile.Close()

	// (a) the upstream every target reaches.
	up := &upstream{}
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	upSrv := &http.Server{Handler: up, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: quietLog()}
	go func() { _ = upSrv.Serve(upLn) }()
	defer upSrv.Close()
	upstreamURL := "http://" + upLn.Addr().String()
	// The same upstream on a second port, for the PROXY v2 app: its
	// listener is wrapped (below, once the edge's keys are known) in
	// identity.NewListener. Connections wait in the backlog until then.
	ppRaw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ppLn := &countingListener{Listener: ppRaw, n: &up.proxyAccepts}
	defer ppLn.Close()

	// (c) the edge: the whole dev system, audit on and written to a file,
	// sessions in bolt, plus the bench apps (configured below).
	env, err := devenv.Start(ctx, devenv.Options{
		DataDir:      filepath.Join(dir, "dev"),
		Listen:       "127.0.0.1:0",
		AdminListen:  "off",
		IdPListen:    "127.0.0.1:0",
		Logger:       logger,
		Audit:        auditFile,
		DrainDelay:   time.Millisecond,
		GraceTimeout: 2 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("start dev system: %w", err)
	}
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = env.Close(sctx)
	}()
	edgeClient, err := env.Client()
	if err != nil {
		return err
	}
	up.verifier, err = identity.NewVerifier(identity.VerifierConfig{
		Issuer: env.AuthOrigin, Audience: benchApp, JWKSURL: env.AuthOrigin + proxy.JWKSPath, HTTPClient: edgeClient,
	})
	if err != nil {
		return err
	}
	// The PROXY v2 apps verify with the edge's keys fetched once: nothing
	// is fetched while the load runs.
	jwks, err := fetchJWKS(ctx, edgeClient, env.AuthOrigin+proxy.JWKSPath)
	if err != nil {
		return err
	}
	ppVerifier := func(app string) (*identity.Verifier, error) {
		return identity.NewVerifier(identity.VerifierConfig{Issuer: env.AuthOrigin, Audience: app, Keys: jwks})
	}
	v, err := ppVerifier(ppApp)
	if err != nil {
		return err
	}
	ppIdentityLn, err := identity.NewListener(ppLn, identity.ListenerConfig{Verifier: v, Logger: logger, TrustedPeers: loopback})
	if err != nil {
		return err
	}
	ppSrv := &http.Server{Handler: ppUpstream{upstream: up, verifier: v}, ConnContext: identity.ConnContext,
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: quietLog()}
	go func() { _ = ppSrv.Serve(ppIdentityLn) }()
	defer ppSrv.Close()

	// The echo servers of the new-connection measurement: plain, and
	// behind PROXY v2 for the tcp app.
	if v, err = ppVerifier(tcpApp); err != nil {
		return err
	}
	dials, err := startDialBench(v, logger)
	if err != nil {
		return err
	}
	defer dials.close()
	// The tunnel benchmark's sink; the bare relay starts below, once the
	// edge's certificate is known.
	tun := &tunnelSide{dials: dials}
	if tun.sink, err = startSink(); err != nil {
		return err
	}
	defer tun.close()

	cfg := *env.Config()
	rules := []groups.Rule{{Name: "engineers", Groups: []string{benchGroup}}}
	cfg.Apps = append(slices.Clone(cfg.Apps),
		proxy.AppConfig{Name: benchApp, Host: benchHost, Upstream: upstreamURL, Rules: rules},
		proxy.AppConfig{Name: ppApp, Host: ppHost, Upstream: "http://" + ppRaw.Addr().String(), ProxyProtocol: "v2", Rules: rules},
		proxy.AppConfig{Name: tcpApp, TCP: dials.ppAddr, ProxyProtocol: "v2", Rules: rules},
	)
	cfg.Apps = append(cfg.Apps, tun.apps(rules, idleAddr)...)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("bench config: %w", err)
	}
	if err := env.Edge.Apply(ctx, &cfg); err != nil {
		return fmt.Errorf("apply bench config: %w", err)
	}
	_, edgePort, _ := net.SplitHostPort(env.EdgeAddr)
	edgeHost := benchHost + ":" + edgePort

	// (b) the bare reverse proxy, over TLS with the edge's certificate.
	cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
	if err != nil {
		return err
	}
	if tun.relay, err = startRelay(cert, tun.sink.addr()); err != nil {
		return fmt.Errorf("bare QUIC relay: %w", err)
	}
	tun.edge = env.Edge
	target, _ := url.Parse(upstreamURL)
	bare := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded()
		},
		// The edge's own transport and buffers: the baseline is a tuned
		// ReverseProxy, and the difference measured is the pipeline.
		Transport:  proxy.NewUpstreamTransport(),
		BufferPool: proxy.CopyBuffers(),
		ErrorLog:   quietLog(),
	}
	bareLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	// The same server settings as the edge's HTTPS listener (proxy/edge).
	bareSrv := &http.Server{
		Handler:           bare,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          quietLog(),
	}
	go func() { _ = bareSrv.ServeTLS(bareLn, "", "") }()
	defer bareSrv.Close()

	lctx, lcancel := context.WithTimeout(ctx, 30*time.Second)
	cookie, err := login(lctx, env, edgeHost)
	lcancel()
	if err != nil {
		return fmt.Errorf("log in as %s: %w", benchUser, err)
	}
	// The tunnel would hold the session; DialTCP needs it.
	sess, err := env.Edge.Sessions().Get(ctx, cookie)
	if err != nil {
		return fmt.Errorf("the session after login: %w", err)
	}
	if sess.Identity.Subject != benchSubject {
		return fmt.Errorf("logged in as %q, want subject %q", sess.Identity.Subject, benchSubject)
	}
	edgeTCP, err := net.ResolveTCPAddr("tcp", env.EdgeAddr)
	if err != nil {
		return err
	}
	dials.edge, dials.sess, dials.local = env.Edge, sess, edgeTCP

	info := serverInfo{
		PID:      os.Getpid(),
		Direct:   upstreamURL + "/",
		Bare:     "https://" + bareLn.Addr().String() + "/",
		Edge:     "https://" + env.EdgeAddr + "/",
		EdgeHost: edgeHost,
		PPHost:   ppHost + ":" + edgePort,
		Cookie:   cookie,
		CAFile:   env.CAFile,

		EdgeUDP:      env.EdgeAddr,
		Sink:         tun.sink.addr(),
		Relay:        tun.relay.addr(),
		RelayBuffers: [2]int{tun.relay.rcvBuf, tun.relay.sndBuf},
	}
	out := bufio.NewWriter(os.Stdout)
	if err := json.NewEncoder(out).Encode(info); err != nil {
		return err
	}
	if err := out.Flush(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- commandLoop(os.Stdin, out, auditPath, dials, tun) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return nil
	}
}

// commandLoop answers the harness until stdin closes:
//
//	profile-start PATH   start the CPU profile
//	profile-stop         stop it
//	audit-lines          how many audit events are in the file so far
//	dial-rate MODE WARMUP DURATION WORKERS
//	                     new connections to a TCP echo app, MODE plain
//	                     or pp (Edge.DialTCP, PROXY v2); JSON dialResult
//	tunnel-enroll, tunnel-mem, tunnel-counts
//	                     the tunnel benchmark's (tunnelSide.command)
func commandLoop(in io.Reader, out *bufio.Writer, auditPath string, dials *dialBench, tun *tunnelSide) error {
	var profile *os.File
	defer func() {
		if profile != nil {
			pprof.StopCPUProfile()
			_ = profile.Close()
		}
	}()
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		var reply string
		switch cmd {
		case "profile-start":
			f, err := os.Create(arg)
			if err == nil {
				err = pprof.StartCPUProfile(f)
				if err != nil {
					_ = f.Close()
				}
			}
			if err != nil {
				reply = "err " + err.Error()
				break
			}
			profile, reply = f, "ok"
		case "profile-stop":
			if profile == nil {
				reply = "err no profile running"
				break
			}
			pprof.StopCPUProfile()
			err := profile.Close()
			profile = nil
			reply = "ok"
			if err != nil {
				reply = "err " + err.Error()
			}
		case "dial-rate":
			res, err := dials.command(arg)
			if err != nil {
				// One reply is one line.
				reply = "err " + strings.ReplaceAll(err.Error(), "\n", " ")
				break
			}
			b, _ := json.Marshal(res)
			reply = "ok " + string(b)
		case "tunnel-enroll", "tunnel-mem", "tunnel-counts":
			res, err := tun.command(cmd, arg)
			reply = "ok " + res
			if err != nil {
				reply = "err " + strings.ReplaceAll(err.Error(), "\n", " ")
			}
		case "audit-lines":
			n, err := countLines(auditPath)
			reply = "ok " + strconv.Itoa(n)
			if err != nil {
				reply = "err " + err.Error()
			}
		default:
			reply = "err unknown command " + strconv.Quote(cmd)
		}
		if _, err := out.WriteString(reply + "\n"); err != nil {
			return err
		}
		if err := out.Flush(); err != nil {
			return err
		}
	}
	return sc.Err()
}

func countLines(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	n := 0
	for {
		m, err := f.Read(buf)
		for _, b := range buf[:m] {
			if b == '\n' {
				n++
			}
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// upstream is the app behind every target: a fixed ~100-byte body, and
// counters of what arrived.
type upstream struct {
	total         atomic.Int64
	assertion     atomic.Int64
	proxyIdentity atomic.Int64
	proxyAccepts  atomic.Int64
	verifier      *identity.Verifier
}

var (
	upstreamBody   = []byte("hello from the bench upstream: a small response body of about one hundred bytes, as apps return.\n")
	upstreamType   = []string{"text/plain; charset=utf-8"}
	upstreamLength = []string{strconv.Itoa(len(upstreamBody))}
)

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case countPath:
		// Only the harness, directly: through a proxy it would be a way
		// to read the counters that could be mistaken for load.
		if r.Header.Get("X-Forwarded-For") != "" {
			http.NotFound(w, r)
			return
		}
		writeJSON(w, counts{Total: u.total.Load(), Assertion: u.assertion.Load(),
			ProxyIdentity: u.proxyIdentity.Load(), ProxyAccepts: u.proxyAccepts.Load()})
		return
	case identityPath:
		writeJSON(w, identityOf(r, u.verifier))
		return
	}
	u.total.Add(1)
	if len(r.Header[identity.HeaderName]) > 0 {
		u.assertion.Add(1)
	}
	h := w.Header()
	h["Content-Type"] = upstreamType
	h["Content-Length"] = upstreamLength
	_, _ = w.Write(upstreamBody)
}

// ppUpstream is the upstream on the PROXY v2 port: it counts the requests
// whose connection carried the bench user's verified identity for ppApp,
// then answers exactly as on the plain port.
type ppUpstream struct {
	*upstream
	verifier *identity.Verifier // audience ppApp
}

func (p ppUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case identityPath:
		writeJSON(w, identityOf(r, p.verifier))
		return
	case countPath:
	default:
		if c, ok := identity.ConnIdentity(r.Context()); ok && c.Subject == benchSubject && c.Audience == ppApp {
			p.proxyIdentity.Add(1)
		}
	}
	p.upstream.ServeHTTP(w, r)
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// loopback is where the edge's PROXY v2 connections come from.
var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// fetchJWKS reads the edge's published keys once.
func fetchJWKS(ctx context.Context, c *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, body, err := do(c, req)
	if err != nil {
		return nil, fmt.Errorf("fetch the edge's JWKS: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch the edge's JWKS: %s", resp.Status)
	}
	return body, nil
}

// identityOf verifies the request's assertion with v the way an app would,
// and reports the connection's PROXY v2 identity when it came with one.
func identityOf(r *http.Request, v *identity.Verifier) identityReport {
	rep := identityReport{User: r.Header.Get(proxy.HeaderUser)}
	if c, ok := identity.ConnIdentity(r.Context()); ok {
		rep.ProxySubject, rep.ProxyAudience = c.Subject, c.Audience
	}
	tok := r.Header.Get(identity.HeaderName)
	if tok == "" {
		rep.Error = "no " + identity.HeaderName + " header"
		return rep
	}
	c, err := v.Verify(r.Context(), tok)
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	rep.Verified, rep.Subject, rep.Audience, rep.Email, rep.Groups = true, c.Subject, c.Audience, c.Email, c.Groups
	return rep
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func quietLog() *log.Logger { return log.New(io.Discard, "", 0) }

// login signs in as the demo user through the real browser flow — app →
// edge login → IdP login form → IdP → edge callback → handoff → app — and
// returns the value of the session cookie on the bench app's host.
func login(ctx context.Context, env *devenv.Env, edgeHost string) (string, error) {
	base, err := env.Client()
	if err != nil {
		return "", err
	}
	tr := base.Transport.(*http.Transport).Clone()
	// The dev certificate does not name bench.localhost; verify it against
	// the dev CA under a name it does carry.
	tr.TLSClientConfig.ServerName = "localhost"
	defer tr.CloseIdleConnections()
	jar, err := cookiejar.New(nil)
	if err != nil {
		return "", err
	}
	c := &http.Client{
		Transport: tr, Jar: jar, Timeout: 15 * time.Second,
		CheckRedirect: func(_ *http.Request, via []*http.Request) error {
			if len(via) >= 20 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
	appURL := "https://" + edgeHost + "/"

	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, appURL, nil)
	req.Header.Set("Accept", "text/html")
	resp, body, err := do(c, req)
	if err != nil {
		return "", fmt.Errorf("open the app: %w", err)
	}
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/login" {
		return "", fmt.Errorf("open the app: want the IdP login form, got %d at %s", resp.StatusCode, resp.Request.URL.Redacted())
	}
	m := authRequestRE.FindSubmatch(body)
	if m == nil {
		return "", errors.New("IdP login form has no authRequestID")
	}
	form := url.Values{"authRequestID": {html.UnescapeString(string(m[1]))}, "username": {benchUser}, "password": {benchPassword}}
	loginURL := *resp.Request.URL
	loginURL.RawQuery = ""
	req, _ = http.NewRequestWithContext(ctx, http.MethodPost, loginURL.String(), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "text/html")
	resp, _, err = do(c, req)
	if err != nil {
		return "", fmt.Errorf("submit the login form: %w", err)
	}
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Host != edgeHost || resp.Request.URL.Path != "/" {
		return "", fmt.Errorf("after login: want 200 from the app, got %d at %s", resp.StatusCode, resp.Request.URL.Redacted())
	}
	u, _ := url.Parse(appURL)
	for _, ck := range jar.Cookies(u) {
		if ck.Name == authn.SessionCookie {
			return ck.Value, nil
		}
	}
	return "", errors.New("no session cookie for the bench app after login")
}

var authRequestRE = regexp.MustCompile(`name="authRequestID" value="([^"]+)"`)

// do sends req and reads at most 1 MiB of the answer.
func do(c *http.Client, req *http.Request) (*http.Response, []byte, error) {
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp, b, err
}
