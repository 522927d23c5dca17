package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy"
)

// Demo credentials (devidp.DemoUsers).
const (
	alicePassword = "alice-password"
	bobPassword   = "bob-password"
	carolPassword = "carol-password"
)

// maxBody bounds every response body a test reads.
const maxBody = 1 << 20

// syncBuffer is a bytes.Buffer that the audit writer, the loggers and the
// test may use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testLogWriter forwards log lines to t.Log until the test's cleanup stops
// it: a background goroutine logging after the test ended must not panic.
type testLogWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// envExtras is what newEnv keeps beside a devenv.Env for the helpers.
type envExtras struct {
	audit *syncBuffer
	logs  *syncBuffer
	pool  *x509.CertPool
}

var extras sync.Map // *devenv.Env → *envExtras

func extrasOf(t *testing.T, env *devenv.Env) *envExtras {
	t.Helper()
	x, ok := extras.Load(env)
	if !ok {
		t.Fatal("env was not made by newEnv")
	}
	return x.(*envExtras)
}

// newEnv starts the whole dev system on loopback with fresh state and stops
// it when the test ends. Audit events and the process log are captured (see
// auditLog and processLog); with -v the log also goes to t.Log, otherwise it
// is printed only if the test fails.
func newEnv(t *testing.T) *devenv.Env {
	t.Helper()
	return newEnvWith(t, nil)
}

// newEnvWith is newEnv with options adjusted by tune (nil: none).
func newEnvWith(t *testing.T, tune func(*devenv.Options)) *devenv.Env {
	t.Helper()
	audit, logs := &syncBuffer{}, &syncBuffer{}
	var out io.Writer = logs
	if testing.Verbose() {
		tw := &testLogWriter{t: t}
		t.Cleanup(tw.stop) // registered first, so it runs after env.Close
		out = io.MultiWriter(logs, tw)
	}
	t.Cleanup(func() {
		if t.Failed() && !testing.Verbose() {
			s := logs.String()
			if len(s) > 64<<10 {
				s = "…" + s[len(s)-64<<10:]
			}
			t.Logf("process log:\n%s", s)
		}
	})
	logger := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := devenv.Options{
		DataDir:      t.TempDir(),
		Listen:       "127.0.0.1:0",
		AdminListen:  "127.0.0.1:0",
		IdPListen:    "127.0.0.1:0",
		Audit:        audit,
		Logger:       logger,
		GraceTimeout: 2 * time.Second,
	}
	if tune != nil {
		tune(&opts)
	}
	env, err := devenv.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start dev env: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := env.Close(ctx); err != nil {
			t.Errorf("close dev env: %v", err)
		}
		extras.Delete(env)
	})
	pem, err := os.ReadFile(env.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("dev CA: no certificate")
	}
	extras.Store(env, &envExtras{audit: audit, logs: logs, pool: pool})
	return env
}

// currentConfig returns a deep copy of the config the edge serves now,
// for a test to change and Apply (or write out) without touching the
// running one.
func currentConfig(env *devenv.Env) *proxy.Config {
	c := *env.Edge.State().Config
	c.OIDC.Scopes = slices.Clone(c.OIDC.Scopes)
	c.OIDC.SigningAlgs = slices.Clone(c.OIDC.SigningAlgs)
	c.OIDC.Claims.Attributes = maps.Clone(c.OIDC.Claims.Attributes)
	c.Posture.Profiles = slices.Clone(c.Posture.Profiles)
	c.Apps = slices.Clone(c.Apps)
	for i := range c.Apps {
		rules := slices.Clone(c.Apps[i].Rules)
		for j := range rules {
			r := &rules[j]
			r.Users, r.Groups, r.Methods, r.Paths = slices.Clone(r.Users), slices.Clone(r.Groups), slices.Clone(r.Methods), slices.Clone(r.Paths)
		}
		c.Apps[i].Rules = rules
	}
	return &c
}

// auditLog is the audit output of env (JSON lines; flushed every 200ms).
func auditLog(t *testing.T, env *devenv.Env) *syncBuffer { return extrasOf(t, env).audit }

// processLog is the process log of env (slog text lines).
func processLog(t *testing.T, env *devenv.Env) *syncBuffer { return extrasOf(t, env).logs }

// devCAPool trusts the dev CA that signed the edge certificate.
func devCAPool(t *testing.T, env *devenv.Env) *x509.CertPool { return extrasOf(t, env).pool }

// newClient is env.Client() with its connections closed at the end of the
// test. It follows no redirects and keeps no cookies.
func newClient(t *testing.T, env *devenv.Env) *http.Client {
	t.Helper()
	c, err := env.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hostOf returns the host[:port] of a URL.
func hostOf(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("parse %q: %v", raw, err)
	}
	return u.Host
}

// response is a finished exchange with its body read (bounded).
type response struct {
	*http.Response
	Body []byte
}

// do sends req with c and reads the whole (bounded) body.
func do(t *testing.T, c *http.Client, req *http.Request) *response {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}
	return &response{Response: resp, Body: b}
}

// Request flavours: what a browser sends for a navigation, what fetch()
// sends, and what an API client sends.
const (
	asNavigation = "navigate"
	asFetch      = "cors"
	asAPI        = "api"
)

func newRequest(t *testing.T, method, rawURL string, body io.Reader, kind string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, body)
	if err != nil {
		t.Fatal(err)
	}
	switch kind {
	case asNavigation:
		req.Header.Set("Accept", "text/html,application/xhtml+xml")
		req.Header.Set("Sec-Fetch-Mode", "navigate")
	case asFetch:
		req.Header.Set("Accept", "application/json")
		req.Header.Set("Sec-Fetch-Mode", "cors")
	case asAPI:
		req.Header.Set("Accept", "application/json")
	}
	return req
}

// get is a GET of rawURL of the given kind.
func get(t *testing.T, c *http.Client, rawURL, kind string) *response {
	t.Helper()
	return do(t, c, newRequest(t, http.MethodGet, rawURL, nil, kind))
}

// expectRedirect checks that r is a redirect with status to wantHost and
// wantPath, and returns the absolute target.
func expectRedirect(t *testing.T, r *response, status int, wantHost, wantPath string) *url.URL {
	t.Helper()
	if r.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d; body: %.300s", r.Request.Method, r.Request.URL, r.StatusCode, status, r.Body)
	}
	loc, err := r.Location()
	if err != nil {
		t.Fatalf("%s %s: %d without a Location: %v", r.Request.Method, r.Request.URL, r.StatusCode, err)
	}
	if loc.Host != wantHost || (wantPath != "" && loc.Path != wantPath) {
		t.Fatalf("%s %s: redirect to %s, want host %s path %s", r.Request.Method, r.Request.URL, loc, wantHost, wantPath)
	}
	return loc
}

// loginResult is what a completed browser login leaves behind.
type loginResult struct {
	Client      *http.Client // with the cookie jar of the "browser"
	Jar         http.CookieJar
	CallbackURL string // the edge's OIDC callback URL as the IdP sent it
	HandoffURL  string // the app host's handoff URL as the edge sent it
	Final       *response
}

var (
	formActionRE = regexp.MustCompile(`<form[^>]*\baction="([^"]*)"`)
	hiddenRE     = regexp.MustCompile(`<input[^>]*\bname="([^"]+)"[^>]*\bvalue="([^"]*)"`)
)

// formFields returns the action of the first form in page and its named
// inputs that have a value (html-unescaped).
func formFields(t *testing.T, page []byte) (action string, fields url.Values) {
	t.Helper()
	m := formActionRE.FindSubmatch(page)
	if m == nil {
		t.Fatalf("no form in page: %.500s", page)
	}
	fields = url.Values{}
	for _, f := range hiddenRE.FindAllSubmatch(page, -1) {
		fields.Set(html.UnescapeString(string(f[1])), html.UnescapeString(string(f[2])))
	}
	return html.UnescapeString(string(m[1])), fields
}

// loginAs signs user in to app through the real browser flow and returns
// a client whose cookie jar holds the session for the app host.
func loginAs(t *testing.T, env *devenv.Env, app, user, password string) *http.Client {
	t.Helper()
	res := loginFlow(t, env, app, "/", user, password)
	if res.Final.StatusCode != http.StatusOK {
		t.Fatalf("%s on %s after login: status %d, want 200: %.300s", user, app, res.Final.StatusCode, res.Final.Body)
	}
	return res.Client
}

// loginForm is a browser flow stopped at the IdP's login form.
type loginForm struct {
	Client        *http.Client // with the browser's cookie jar
	Jar           http.CookieJar
	Action        string // absolute URL the form posts to
	AuthRequestID string
}

// startLogin navigates to app's path without a session and follows the
// flow to the IdP's login form, checking each hop: app → auth host
// /.ztna/login → IdP /authorize (PKCE S256, state, nonce) → login form.
func startLogin(t *testing.T, env *devenv.Env, app, path string) *loginForm {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, env)
	c.Jar = jar
	appURL := env.AppURL(app)
	if appURL == "" {
		t.Fatalf("no app %q", app)
	}
	authHost, idpHost := hostOf(t, env.AuthOrigin), hostOf(t, env.IdP.Issuer())

	// 1. The navigation without a session goes to the auth host.
	r := get(t, c, appURL+path, asNavigation)
	loc := expectRedirect(t, r, http.StatusFound, authHost, authn.PathLogin)
	if rd := loc.Query().Get("rd"); rd != appURL+path {
		t.Fatalf("login rd = %q, want %q", rd, appURL+path)
	}
	// 2. The auth host starts the code flow at the IdP.
	r = get(t, c, loc.String(), asNavigation)
	loc = expectRedirect(t, r, http.StatusFound, idpHost, "")
	if q := loc.Query(); q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("state") == "" || q.Get("nonce") == "" {
		t.Fatalf("authorize request lacks PKCE S256, state or nonce: %s", loc)
	}
	// 3. The IdP shows its login form (after its own redirects).
	page := idpLoginPage(t, c, loc, idpHost)
	action, fields := formFields(t, page.Body)
	if fields.Get("authRequestID") == "" {
		t.Fatalf("login form without authRequestID: %.500s", page.Body)
	}
	target, err := page.Request.URL.Parse(action)
	if err != nil {
		t.Fatal(err)
	}
	return &loginForm{Client: c, Jar: jar, Action: target.String(), AuthRequestID: fields.Get("authRequestID")}
}

// submit posts the credentials to the IdP's login form.
func (f *loginForm) submit(t *testing.T, user, password string) *response {
	t.Helper()
	form := url.Values{"authRequestID": {f.AuthRequestID}, "username": {user}, "password": {password}}
	req := newRequest(t, http.MethodPost, f.Action, strings.NewReader(form.Encode()), asNavigation)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(t, f.Client, req)
}

// loginFlow runs the browser flow by hand, hop by hop, checking each one:
// app → auth host /.ztna/login → IdP /authorize → IdP login form → POST
// credentials → IdP callback → edge /.ztna/callback → app /.ztna/handoff →
// the app path, whose answer is in Final (200, or a deny page).
// idpLoginPage follows the IdP's own redirects from the authorize request
// at loc to its login form.
func idpLoginPage(t *testing.T, c *http.Client, loc *url.URL, idpHost string) *response {
	t.Helper()
	for hop := 0; ; hop++ {
		if hop > 4 {
			t.Fatalf("IdP redirected too often before showing the login form")
		}
		r := get(t, c, loc.String(), asNavigation)
		if r.StatusCode == http.StatusOK {
			return r
		}
		loc = expectRedirect(t, r, r.StatusCode, idpHost, "")
	}
}

func loginFlow(t *testing.T, env *devenv.Env, app, path, user, password string) *loginResult {
	t.Helper()
	f := startLogin(t, env, app, path)
	c := f.Client
	appHost, authHost, idpHost := hostOf(t, env.AppURL(app)), hostOf(t, env.AuthOrigin), hostOf(t, env.IdP.Issuer())

	// 4. Post the credentials.
	r := f.submit(t, user, password)
	if r.StatusCode == http.StatusUnauthorized {
		t.Fatalf("IdP refused the credentials of %s", user)
	}
	loc := expectRedirect(t, r, http.StatusSeeOther, idpHost, "")
	// 5. The IdP's callback sends the code to the edge.
	for hop := 0; loc.Host == idpHost; hop++ {
		if hop > 4 {
			t.Fatalf("IdP redirected too often after the login")
		}
		r = get(t, c, loc.String(), asNavigation)
		if r.StatusCode != http.StatusFound && r.StatusCode != http.StatusSeeOther {
			t.Fatalf("IdP after login: status %d: %.300s", r.StatusCode, r.Body)
		}
		var err error
		if loc, err = r.Location(); err != nil {
			t.Fatal(err)
		}
	}
	if loc.Host != authHost || loc.Path != authn.PathCallback {
		t.Fatalf("IdP sent the code to %s, want %s%s", loc, authHost, authn.PathCallback)
	}
	res := &loginResult{Client: c, Jar: f.Jar, CallbackURL: loc.String()}
	// 6. The edge's callback creates the session and hands it to the app host.
	r = get(t, c, res.CallbackURL, asNavigation)
	loc = expectRedirect(t, r, http.StatusFound, appHost, authn.PathHandoff)
	if !setsSession(r) {
		t.Fatal("the callback set no session cookie on the auth host")
	}
	res.HandoffURL = loc.String()
	// 7. The handoff sets the session cookie on the app host.
	r = get(t, c, res.HandoffURL, asNavigation)
	loc = expectRedirect(t, r, http.StatusFound, appHost, path)
	if !setsSession(r) {
		t.Fatal("the handoff set no session cookie on the app host")
	}
	// 8. The app (the caller checks the answer: it may be a deny page).
	res.Final = get(t, c, loc.String(), asNavigation)
	if sessionCookie(t, env, c, app) == "" {
		t.Fatalf("no session cookie for %s after login", app)
	}
	return res
}

// sessionCookie is the session cookie value c holds for app ("" if none).
func sessionCookie(t *testing.T, env *devenv.Env, c *http.Client, app string) string {
	t.Helper()
	if c.Jar == nil {
		return ""
	}
	u, err := url.Parse(env.AppURL(app))
	if err != nil {
		t.Fatal(err)
	}
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == authn.SessionCookie {
			return ck.Value
		}
	}
	return ""
}

// setsSession reports whether r sets a (non-empty) session cookie.
func setsSession(r *response) bool {
	for _, c := range r.Cookies() {
		if c.Name == authn.SessionCookie && c.Value != "" {
			return true
		}
	}
	return false
}

// sessionKey is the store key of a session cookie value (hex SHA-256), as
// Sessions.Revoke takes it.
func sessionKey(cookie string) string {
	h := sha256.Sum256([]byte(cookie))
	return hex.EncodeToString(h[:])
}

// whoamiAs fetches app's whoami JSON at path with c and decodes it; it fails
// the test unless the answer is 200.
func whoamiAs(t *testing.T, c *http.Client, env *devenv.Env, app, path string) devenv.WhoamiReport {
	t.Helper()
	r := get(t, c, env.AppURL(app)+path+"?format=json", asAPI)
	if r.StatusCode != http.StatusOK {
		t.Fatalf("GET %s%s: status %d, want 200: %.300s", app, path, r.StatusCode, r.Body)
	}
	return decodeReport(t, r.Body)
}

func decodeReport(t *testing.T, b []byte) devenv.WhoamiReport {
	t.Helper()
	var rep devenv.WhoamiReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("decode whoami report: %v: %.300s", err, b)
	}
	return rep
}

// errorJSON is the edge's JSON error body.
type errorJSON struct {
	Error    string `json:"error"`
	Message  string `json:"message"`
	Hint     string `json:"hint"`
	Rule     string `json:"rule"`
	LoginURL string `json:"login_url"`
}

// expectJSONError checks that r is a JSON error with status and code.
func expectJSONError(t *testing.T, r *response, status int, code string) errorJSON {
	t.Helper()
	if r.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d: %.300s", r.Request.Method, r.Request.URL, r.StatusCode, status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("%s %s: Content-Type %q, want JSON", r.Request.Method, r.Request.URL, ct)
	}
	var e errorJSON
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("decode error body: %v: %.300s", err, r.Body)
	}
	if code != "" && e.Error != code {
		t.Fatalf("%s %s: error code %q, want %q (%s)", r.Request.Method, r.Request.URL, e.Error, code, e.Message)
	}
	return e
}

// withCookie returns a cookieless client request of kind carrying the
// session cookie value by hand (the way an attacker or a CLI would).
func withCookie(t *testing.T, method, rawURL, cookie, kind string) *http.Request {
	t.Helper()
	req := newRequest(t, method, rawURL, nil, kind)
	if cookie != "" {
		req.Header.Set("Cookie", authn.SessionCookie+"="+cookie)
	}
	return req
}

// rawHTTP1 sends the raw request text (request line and headers, CRLF
// separated, ending with a blank line) over a fresh TLS connection to the
// edge with SNI serverName and ALPN http/1.1, and parses the answer. Go's
// client would clean paths and refuse odd headers; this sends them as is.
func rawHTTP1(t *testing.T, env *devenv.Env, serverName, request string) *response {
	t.Helper()
	d := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: 5 * time.Second},
		Config:    &tls.Config{RootCAs: devCAPool(t, env), ServerName: serverName, NextProtos: []string{"http/1.1"}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", env.EdgeAddr)
	if err != nil {
		t.Fatalf("dial edge: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		// The edge may answer and close before a huge request is written
		// (431): read what it said.
		t.Logf("write request: %v", err)
	}
	line, _, _ := strings.Cut(request, "\r\n")
	method, rest, _ := strings.Cut(line, " ")
	target, _, _ := strings.Cut(rest, " ")
	req := &http.Request{Method: method, URL: &url.URL{Opaque: target}}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatalf("%s: read response: %v", line, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		t.Fatalf("%s: read body: %v", line, err)
	}
	return &response{Response: resp, Body: b}
}

// rawRequest builds the text of an HTTP/1.1 request with Connection: close.
func rawRequest(method, target, host string, headers ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, host)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	if !strings.Contains(strings.ToLower(strings.Join(headers, "\n")), "connection:") {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// auditEvent is the JSON form of one audit event.
type auditEvent struct {
	Kind     string `json:"kind"`
	User     string `json:"user"`
	Email    string `json:"email"`
	Session  string `json:"session"`
	App      string `json:"app"`
	Method   string `json:"method"`
	Host     string `json:"host"`
	Path     string `json:"path"`
	Source   string `json:"source"`
	Decision string `json:"decision"`
	Rule     string `json:"rule"`
	Reason   string `json:"reason"`
}

// auditEvents parses the audit output so far.
// auditLines returns the complete lines of the audit log so far: the writer
// flushes its buffer as it fills, which may end in the middle of a line.
func auditLines(t *testing.T, env *devenv.Env) []string {
	t.Helper()
	text := auditLog(t, env).String()
	text = text[:strings.LastIndexByte(text, '\n')+1]
	var lines []string
	for _, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) != "" {
			lines = append(lines, line)
		}
	}
	return lines
}

func auditEvents(t *testing.T, env *devenv.Env) []auditEvent {
	t.Helper()
	var evs []auditEvent
	for _, line := range auditLines(t, env) {
		var ev auditEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("audit line is not JSON: %v: %q", err, line)
		}
		evs = append(evs, ev)
	}
	return evs
}

// waitAudit waits until the audit log holds n events whose path is path.
func waitAudit(t *testing.T, env *devenv.Env, path string, n int) []auditEvent {
	t.Helper()
	var got []auditEvent
	waitFor(t, 5*time.Second, fmt.Sprintf("%d audit events for %s", n, path), func() bool {
		got = got[:0]
		for _, ev := range auditEvents(t, env) {
			if ev.Path == path {
				got = append(got, ev)
			}
		}
		return len(got) >= n
	})
	return got
}

// navigate follows a browser navigation to rawURL with c's cookie jar
// through the edge's own redirects (the auth host's login when already
// signed in there, the handoff), and returns the first answer that is not
// such a redirect.
func navigate(t *testing.T, env *devenv.Env, c *http.Client, rawURL string) *response {
	t.Helper()
	idpHost := hostOf(t, env.IdP.Issuer())
	for hop := 0; ; hop++ {
		r := get(t, c, rawURL, asNavigation)
		if r.StatusCode != http.StatusFound && r.StatusCode != http.StatusSeeOther {
			return r
		}
		if hop >= 5 {
			t.Fatalf("navigation redirected more than %d times", hop)
		}
		loc, err := r.Location()
		if err != nil {
			t.Fatal(err)
		}
		if loc.Host == idpHost {
			t.Fatalf("navigation to %s went to the IdP (%s): not signed in on the auth host", rawURL, loc)
		}
		rawURL = loc.String()
	}
}

// wsDialer dials WebSockets at the edge, trusting the dev CA.
func wsDialer(t *testing.T, env *devenv.Env) *websocket.Dialer {
	t.Helper()
	nd := &net.Dialer{Timeout: 5 * time.Second}
	return &websocket.Dialer{
		TLSClientConfig:  &tls.Config{RootCAs: devCAPool(t, env)},
		HandshakeTimeout: 5 * time.Second,
		NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return nd.DialContext(ctx, network, env.EdgeAddr)
		},
	}
}

// wsDial opens a WebSocket to app's path carrying the session cookie (none
// if cookie is ""). On success the connection is closed when the test ends.
func wsDial(t *testing.T, env *devenv.Env, app, path, cookie string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	u := "wss://" + strings.TrimPrefix(env.AppURL(app), "https://") + path
	h := http.Header{}
	if cookie != "" {
		h.Set("Cookie", authn.SessionCookie+"="+cookie)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := wsDialer(t, env).DialContext(ctx, u, h)
	if err == nil {
		t.Cleanup(func() { _ = conn.Close() })
	}
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	return conn, resp, err
}

// h3Client is an HTTP/3 client that reaches every dev host name at the
// edge's UDP port and trusts the dev CA.
func h3Client(t *testing.T, env *devenv.Env) *http.Client {
	t.Helper()
	udp := env.Server.UDPAddr()
	if udp == nil {
		t.Fatal("the edge serves no HTTP/3")
	}
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: devCAPool(t, env)},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return quic.DialAddrEarly(ctx, udp.String(), tlsCfg, cfg)
		},
	}
	t.Cleanup(func() { _ = tr.Close() })
	return &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var signOutCSRF = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// logoutVia signs out through app's sign-out page the way a browser does:
// GET the confirmation page, POST its form with the CSRF token. It returns
// the POST's answer (303 to the IdP's end_session).
func logoutVia(t *testing.T, env *devenv.Env, c *http.Client, app string) *response {
	t.Helper()
	u := env.AppURL(app) + authn.PathLogout
	page := get(t, c, u, asNavigation)
	m := signOutCSRF.FindSubmatch(page.Body)
	if page.StatusCode != http.StatusOK || m == nil {
		t.Fatalf("sign-out page: status %d, no csrf field: %.300s", page.StatusCode, page.Body)
	}
	req := newRequest(t, http.MethodPost, u, strings.NewReader(url.Values{"csrf": {string(m[1])}}.Encode()), asNavigation)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r := do(t, c, req)
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-out POST: status %d, want 303: %.300s", r.StatusCode, r.Body)
	}
	return r
}

// whoamiRules returns the rules of the whoami app in cfg (to change in
// place), checking they are still the demo's: the finance-read-only deny,
// then the employees allow.
func whoamiRules(t *testing.T, cfg *proxy.Config) []groups.Rule {
	t.Helper()
	for i := range cfg.Apps {
		if a := &cfg.Apps[i]; a.Name == "whoami" {
			if len(a.Rules) != 2 || a.Rules[0].Name != "finance-read-only" || a.Rules[1].Name != "employees" {
				t.Fatalf("whoami's demo rules changed: %+v", a.Rules)
			}
			return a.Rules
		}
	}
	t.Fatal("no whoami app in the config")
	return nil
}
