package authn

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn/devidp"
	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/memory"
	"github.com/ztna-dev/ztna/web"
)

// fakePages records the sign-out pages the service asked to render; the
// real pages render the rest (the device grant's, whose HTML tests read).
type fakePages struct {
	*web.Pages
	mu        sync.Mutex
	signOuts  []signOutCall
	signedOut int
}

type signOutCall struct{ action, csrf, user string }

func (p *fakePages) SignOut(w http.ResponseWriter, action, csrfToken, user string, _ ...string) {
	p.mu.Lock()
	p.signOuts = append(p.signOuts, signOutCall{action, csrfToken, user})
	p.mu.Unlock()
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "sign-out page")
}

func (p *fakePages) SignedOut(w http.ResponseWriter) {
	p.mu.Lock()
	p.signedOut++
	p.mu.Unlock()
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "signed-out page")
}

func (p *fakePages) calls() ([]signOutCall, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.signOuts), p.signedOut
}

// logoutReceiver is the edge's auth host as the IdP's back-channel logout
// POSTs see it: an HTTP server in front of Service.ServeReserved.
type logoutReceiver struct {
	srv *httptest.Server
	svc atomic.Pointer[Service]

	mu       sync.Mutex
	tokens   []string
	statuses []int
}

func (l *logoutReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	form, _ := url.ParseQuery(string(body))
	r.Body = io.NopCloser(bytes.NewReader(body))
	status := http.StatusOK
	if err := l.svc.Load().ServeReserved(w, r, true); err != nil {
		status = httperr.As(err).Status
		w.WriteHeader(status)
	}
	l.mu.Lock()
	l.tokens = append(l.tokens, form.Get("logout_token"))
	l.statuses = append(l.statuses, status)
	l.mu.Unlock()
}

func (l *logoutReceiver) received() ([]string, []int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.tokens), slices.Clone(l.statuses)
}

type svcEnv struct {
	*idpEnv
	st       *memory.Store
	sessions *Sessions
	svc      *Service
	pages    *fakePages
	rev      *revocations
	clock    *testClock // the service's clock (refresh scheduling)
	logout   *logoutReceiver
}

func testIsAppHost(h string) bool { return h == "app.example" || h == "other.example" }

func newSvcEnv(t *testing.T) *svcEnv {
	t.Helper()
	rcv := &logoutReceiver{}
	rcv.srv = httptest.NewServer(rcv)
	t.Cleanup(rcv.srv.Close)
	ie := newIDPEnv(t, func(c *devidp.Config) {
		c.Clients[0].BackChannelLogoutURI = rcv.srv.URL + PathBackchannel
	})
	e := &svcEnv{idpEnv: ie, st: newMemoryStore(t), pages: &fakePages{Pages: web.New(slog.New(slog.DiscardHandler))}, rev: &revocations{}, clock: newTestClock(), logout: rcv}
	e.sessions = NewSessions(e.st, SessionsConfig{}, nil)
	t.Cleanup(e.sessions.Wait)
	e.sessions.OnRevoke(e.rev.record)
	e.svc = NewService(e.rp, e.sessions, e.st, ServiceOptions{
		AuthOrigin: testAuthOrigin,
		IsAppHost:  testIsAppHost,
		Pages:      e.pages,
		Now:        e.clock.Now,
	})
	t.Cleanup(e.svc.Close)
	rcv.svc.Store(e.svc)
	return e
}

func newReq(method, target string, cookies ...*http.Cookie) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	for _, c := range cookies {
		if c != nil {
			r.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
		}
	}
	return r
}

func postReq(target string, form url.Values, cookies ...*http.Cookie) *http.Request {
	r := newReq(http.MethodPost, target, cookies...)
	r.Body = io.NopCloser(strings.NewReader(form.Encode()))
	r.ContentLength = int64(len(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return r
}

func (e *svcEnv) serve(r *http.Request, authHost bool) (*httptest.ResponseRecorder, error) {
	w := httptest.NewRecorder()
	err := e.svc.ServeReserved(w, r, authHost)
	return w, err
}

func location(t *testing.T, w *httptest.ResponseRecorder, status int) *url.URL {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d; body %q", w.Code, status, w.Body.String())
	}
	u, err := url.Parse(w.Header().Get("Location"))
	if err != nil || w.Header().Get("Location") == "" {
		t.Fatalf("Location %q: %v", w.Header().Get("Location"), err)
	}
	return u
}

func responseCookie(w *httptest.ResponseRecorder, name string) *http.Cookie {
	for _, c := range w.Result().Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// hostCookie returns the cookie name set by w and checks the attributes
// browsers require of a __Host- cookie, plus the ones ztna wants.
func hostCookie(t *testing.T, w *httptest.ResponseRecorder, name string) *http.Cookie {
	t.Helper()
	c := responseCookie(w, name)
	if c == nil {
		t.Fatalf("no %s cookie set; Set-Cookie %q", name, w.Header().Values("Set-Cookie"))
	}
	if !strings.HasPrefix(c.Name, "__Host-") || !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.Domain != "" {
		t.Errorf("cookie %s: Secure=%v HttpOnly=%v SameSite=%v Path=%q Domain=%q; want __Host-, Secure, HttpOnly, Lax, Path=/, no Domain",
			c.Name, c.Secure, c.HttpOnly, c.SameSite, c.Path, c.Domain)
	}
	return c
}

func wantHTTPError(t *testing.T, err error, status int, code string) *httperr.Error {
	t.Helper()
	var he *httperr.Error
	if !errors.As(err, &he) {
		t.Fatalf("got %v, want an *httperr.Error with status %d", err, status)
	}
	if he.Status != status || (code != "" && he.Code != code) {
		t.Fatalf("got %d %s (%v), want %d %s", he.Status, he.Code, he, status, code)
	}
	return he
}

func (e *svcEnv) countSessions(t *testing.T) int {
	t.Helper()
	n := 0
	if err := e.st.List(t.Context(), bucketSessions, "", func(string, []byte) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	return n
}

// navigate is an unauthenticated browser navigation to target on an app
// host; it returns the login URL and the app-host bind cookie.
func (e *svcEnv) navigate(t *testing.T, target string) (*url.URL, *http.Cookie) {
	t.Helper()
	r := newReq(http.MethodGet, target)
	r.Header.Set("Sec-Fetch-Mode", "navigate")
	r.Header.Set("Accept", "text/html")
	w := httptest.NewRecorder()
	if err := e.svc.Unauthenticated(w, r, true); err != nil {
		t.Fatalf("Unauthenticated: %v", err)
	}
	return location(t, w, http.StatusFound), hostCookie(t, w, handoffBindCookie)
}

// startLogin opens the login URL on the auth host; it returns the IdP
// authorization URL and the auth-host bind cookie.
func (e *svcEnv) startLogin(t *testing.T, loginURL string, cookies ...*http.Cookie) (*url.URL, *http.Cookie) {
	t.Helper()
	w, err := e.serve(newReq(http.MethodGet, loginURL, cookies...), true)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	return location(t, w, http.StatusFound), hostCookie(t, w, bindCookie)
}

func (e *svcEnv) callback(q url.Values, cookies ...*http.Cookie) (*httptest.ResponseRecorder, error) {
	return e.serve(newReq(http.MethodGet, testRedirectURL+"?"+q.Encode(), cookies...), true)
}

// signedIn is a browser after a completed login.
type signedIn struct {
	appCookie  *http.Cookie // session cookie on the app host
	authCookie *http.Cookie // session cookie on the auth host
	session    *Session
}

// signIn runs the whole browser flow for user and returns to target.
func (e *svcEnv) signIn(t *testing.T, user, target string) signedIn {
	t.Helper()
	loginURL, hb := e.navigate(t, target)
	authURL, bind := e.startLogin(t, loginURL.String())
	q := e.idpLogin(t, authURL.String(), user)
	w, err := e.callback(q, bind)
	if err != nil {
		t.Fatalf("callback: %v", err)
	}
	handoff := location(t, w, http.StatusFound)
	authCookie := hostCookie(t, w, SessionCookie)
	w, err = e.serve(newReq(http.MethodGet, handoff.String(), hb), false)
	if err != nil {
		t.Fatalf("handoff: %v", err)
	}
	location(t, w, http.StatusFound)
	appCookie := hostCookie(t, w, SessionCookie)
	sess, err := e.sessions.Get(t.Context(), appCookie.Value)
	if err != nil {
		t.Fatal(err)
	}
	return signedIn{appCookie: appCookie, authCookie: authCookie, session: sess}
}

func TestServiceLoginFlow(t *testing.T) {
	e := newSvcEnv(t)
	ctx := t.Context()

	// 1. An unauthenticated navigation on the app host is sent to log in,
	// with a fresh bind cookie for the handoff.
	loginURL, hb := e.navigate(t, "https://app.example/x?y=1")
	if loginURL.Scheme+"://"+loginURL.Host+loginURL.Path != testAuthOrigin+PathLogin {
		t.Fatalf("login URL %s is not the auth host's login", loginURL)
	}
	if rd := loginURL.Query().Get("rd"); rd != "https://app.example/x?y=1" {
		t.Errorf("rd = %q", rd)
	}
	if got := loginURL.Query().Get("hb"); got != hashKey(hb.Value) {
		t.Errorf("hb = %q, want sha256 hex of the %s cookie", got, handoffBindCookie)
	}

	// 2. The auth host starts the code flow: PKCE S256, state, nonce, and
	// a bind cookie; the state is stored only as a hash.
	authURL, bind := e.startLogin(t, loginURL.String())
	if !strings.HasPrefix(authURL.String(), e.srv.URL+"/") {
		t.Fatalf("login redirected to %s, not to the IdP", authURL)
	}
	aq := authURL.Query()
	for k, v := range map[string]string{"client_id": testClientID, "redirect_uri": testRedirectURL, "response_type": "code", "code_challenge_method": "S256"} {
		if aq.Get(k) != v {
			t.Errorf("authorization request %s = %q, want %q", k, aq.Get(k), v)
		}
	}
	state := aq.Get("state")
	if len(state) < 43 || len(aq.Get("nonce")) < 43 || len(aq.Get("code_challenge")) != 43 {
		t.Errorf("state %q, nonce %q, code_challenge %q: want 43+ random characters each", state, aq.Get("nonce"), aq.Get("code_challenge"))
	}
	if _, err := e.st.Get(ctx, bucketLoginState, hashKey(state)); err != nil {
		t.Errorf("login state not stored under the state's hash: %v", err)
	}
	if _, err := e.st.Get(ctx, bucketLoginState, state); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("login state stored under the raw state")
	}

	// 3. The user signs in at the IdP, which sends the browser back.
	q := e.idpLogin(t, authURL.String(), "alice")
	if q.Get("state") != state {
		t.Fatalf("state came back as %q", q.Get("state"))
	}

	// 4. The callback creates the session and hands the browser to the app.
	w, err := e.callback(q, bind)
	if err != nil {
		t.Fatalf("callback: %v", err)
	}
	handoff := location(t, w, http.StatusFound)
	authCookie := hostCookie(t, w, SessionCookie)
	if handoff.Scheme != "https" || handoff.Host != "app.example" || handoff.Path != PathHandoff || len(handoff.Query().Get("code")) != 43 {
		t.Fatalf("callback redirected to %s, want https://app.example%s?code=…", handoff, PathHandoff)
	}
	if strings.Contains(handoff.String(), authCookie.Value) {
		t.Fatal("the session ID is in the handoff URL")
	}
	if w.Header().Get("Referrer-Policy") != "no-referrer" {
		t.Error("callback without Referrer-Policy: no-referrer")
	}

	// 5. The handoff on the app host sets the cookie there and returns to
	// the page the user wanted.
	w, err = e.serve(newReq(http.MethodGet, handoff.String(), hb), false)
	if err != nil {
		t.Fatalf("handoff: %v", err)
	}
	if back := location(t, w, http.StatusFound); back.String() != "/x?y=1" {
		t.Errorf("handoff redirected to %q, want /x?y=1", back)
	}
	appCookie := hostCookie(t, w, SessionCookie)
	if appCookie.Value != authCookie.Value || appCookie.MaxAge <= 0 {
		t.Errorf("app cookie %+v, want the auth host's session with a positive Max-Age", appCookie)
	}
	// The bind cookie stays: other tabs may still be completing handoffs.
	if c := responseCookie(w, handoffBindCookie); c != nil {
		t.Errorf("handoff changed %s: %+v", handoffBindCookie, c)
	}
	if w.Header().Get("Referrer-Policy") != "no-referrer" {
		t.Error("handoff without Referrer-Policy: no-referrer")
	}

	// 6. The app host now knows the user.
	sess, err := e.svc.Authenticate(newReq(http.MethodGet, "https://app.example/x", appCookie))
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	if sess.Identity.Subject != "u-alice" || sess.Identity.Email != "alice@example.com" || sess.IdPSession == "" || sess.IDToken == "" {
		t.Errorf("session = %+v", sess)
	}

	// Once the handoff is done, the store holds no raw session ID.
	for _, bucket := range []string{bucketSessions, bucketLoginState, bucketHandoff} {
		_ = e.st.List(ctx, bucket, "", func(k string, v []byte) bool {
			if strings.Contains(k, appCookie.Value) || bytes.Contains(v, []byte(appCookie.Value)) {
				t.Errorf("bucket %s holds the raw session ID", bucket)
			}
			return true
		})
	}

	// 7. Signed in on the auth host: another app skips the IdP.
	loginURL, hb2 := e.navigate(t, "https://other.example/docs")
	w, err = e.serve(newReq(http.MethodGet, loginURL.String(), authCookie), true)
	if err != nil {
		t.Fatalf("second login: %v", err)
	}
	handoff = location(t, w, http.StatusFound)
	if handoff.Host != "other.example" || handoff.Path != PathHandoff {
		t.Fatalf("second login went to %s, want other.example's handoff", handoff)
	}
	w, err = e.serve(newReq(http.MethodGet, handoff.String(), hb2), false)
	if err != nil {
		t.Fatalf("second handoff: %v", err)
	}
	if back := location(t, w, http.StatusFound); back.String() != "/docs" {
		t.Errorf("second handoff redirected to %q", back)
	}
	if c := hostCookie(t, w, SessionCookie); c.Value != authCookie.Value {
		t.Error("second app got a different session")
	}
	if n := e.countSessions(t); n != 1 {
		t.Errorf("%d sessions, want 1", n)
	}
}

func TestServiceLoginAttacks(t *testing.T) {
	e := newSvcEnv(t)

	// begin runs the flow up to the IdP's answer.
	type begun struct {
		hb, bind *http.Cookie
		q        url.Values
	}
	begin := func(t *testing.T, target string) begun {
		t.Helper()
		loginURL, hb := e.navigate(t, target)
		authURL, bind := e.startLogin(t, loginURL.String())
		return begun{hb: hb, bind: bind, q: e.idpLogin(t, authURL.String(), "alice")}
	}
	// throughCallback runs it up to the handoff URL.
	throughCallback := func(t *testing.T, target string) (*url.URL, *http.Cookie) {
		t.Helper()
		b := begin(t, target)
		w, err := e.callback(b.q, b.bind)
		if err != nil {
			t.Fatalf("callback: %v", err)
		}
		return location(t, w, http.StatusFound), b.hb
	}
	noSessionCookie := func(t *testing.T, w *httptest.ResponseRecorder) {
		t.Helper()
		if c := responseCookie(w, SessionCookie); c != nil && c.Value != "" {
			t.Errorf("a session cookie was set: %+v", c)
		}
	}

	t.Run("forged state", func(t *testing.T) {
		before := e.countSessions(t)
		_, bind := e.startLogin(t, mustLoginURL(t, e, "https://app.example/"))
		w, err := e.callback(url.Values{"state": {randomToken()}, "code": {"stolen"}}, bind)
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
		noSessionCookie(t, w)
		if n := e.countSessions(t); n != before {
			t.Errorf("sessions %d → %d", before, n)
		}
	})
	t.Run("no state", func(t *testing.T) {
		_, err := e.callback(url.Values{"code": {"x"}})
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
	})
	t.Run("replayed callback", func(t *testing.T) {
		b := begin(t, "https://app.example/")
		if _, err := e.callback(b.q, b.bind); err != nil {
			t.Fatalf("first callback: %v", err)
		}
		before := e.countSessions(t)
		w, err := e.callback(b.q, b.bind)
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
		noSessionCookie(t, w)
		if n := e.countSessions(t); n != before {
			t.Errorf("replay created a session: %d → %d", before, n)
		}
	})
	t.Run("callback without bind cookie", func(t *testing.T) {
		b := begin(t, "https://app.example/")
		w, err := e.callback(b.q)
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
		noSessionCookie(t, w)
		// The state was spent: the right browser cannot use it afterwards either.
		_, err = e.callback(b.q, b.bind)
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
	})
	t.Run("callback with another browser's bind cookie", func(t *testing.T) {
		victim := begin(t, "https://app.example/")
		_, attackerBind := e.startLogin(t, mustLoginURL(t, e, "https://app.example/"))
		if attackerBind.Value == victim.bind.Value {
			t.Fatal("two browsers got the same bind cookie")
		}
		w, err := e.callback(victim.q, attackerBind)
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
		noSessionCookie(t, w)
	})
	t.Run("code of another login (PKCE)", func(t *testing.T) {
		loginURL, _ := e.navigate(t, "https://app.example/")
		auth1, bind := e.startLogin(t, loginURL.String())
		auth2, bind2 := e.startLogin(t, loginURL.String(), bind)
		if bind2.Value != bind.Value {
			t.Fatal("the browser's bind cookie changed between logins")
		}
		q1 := e.idpLogin(t, auth1.String(), "alice")
		q2 := e.idpLogin(t, auth2.String(), "bob")
		q1.Set("code", q2.Get("code"))
		w, err := e.callback(q1, bind)
		wantHTTPError(t, err, http.StatusUnauthorized, "login_failed")
		noSessionCookie(t, w)
	})
	t.Run("IdP error", func(t *testing.T) {
		loginURL, _ := e.navigate(t, "https://app.example/")
		authURL, bind := e.startLogin(t, loginURL.String())
		q := url.Values{"state": {authURL.Query().Get("state")}, "error": {"access_denied"}, "error_description": {"<script>"}}
		w, err := e.callback(q, bind)
		he := wantHTTPError(t, err, http.StatusForbidden, "login_refused")
		if strings.Contains(he.Message+he.Hint, "<script>") {
			t.Error("the IdP's error description reaches the user-facing message")
		}
		noSessionCookie(t, w)
	})
	t.Run("callback without code", func(t *testing.T) {
		loginURL, _ := e.navigate(t, "https://app.example/")
		authURL, bind := e.startLogin(t, loginURL.String())
		_, err := e.callback(url.Values{"state": {authURL.Query().Get("state")}}, bind)
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
	})
	t.Run("callback by POST", func(t *testing.T) {
		_, err := e.serve(postReq(testRedirectURL, url.Values{"state": {"x"}}), true)
		wantHTTPError(t, err, http.StatusMethodNotAllowed, "")
	})
	t.Run("handoff code replay", func(t *testing.T) {
		handoff, hb := throughCallback(t, "https://app.example/")
		if _, err := e.serve(newReq(http.MethodGet, handoff.String(), hb), false); err != nil {
			t.Fatalf("first handoff: %v", err)
		}
		w, err := e.serve(newReq(http.MethodGet, handoff.String(), hb), false)
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
		noSessionCookie(t, w)
	})
	t.Run("handoff on another host", func(t *testing.T) {
		handoff, hb := throughCallback(t, "https://app.example/")
		other := *handoff
		other.Host = "other.example"
		w, err := e.serve(newReq(http.MethodGet, other.String(), hb), false)
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
		noSessionCookie(t, w)
		// The code is spent even for its own host.
		_, err = e.serve(newReq(http.MethodGet, handoff.String(), hb), false)
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
	})
	t.Run("handoff on the auth host", func(t *testing.T) {
		handoff, hb := throughCallback(t, "https://app.example/")
		_, err := e.serve(newReq(http.MethodGet, handoff.String(), hb), true)
		wantHTTPError(t, err, http.StatusNotFound, "not_found")
	})
	t.Run("handoff without hb cookie", func(t *testing.T) {
		handoff, _ := throughCallback(t, "https://app.example/")
		w, err := e.serve(newReq(http.MethodGet, handoff.String()), false)
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
		noSessionCookie(t, w)
	})
	t.Run("handoff with another browser's hb cookie", func(t *testing.T) {
		handoff, _ := throughCallback(t, "https://app.example/")
		_, otherHB := e.navigate(t, "https://app.example/")
		w, err := e.serve(newReq(http.MethodGet, handoff.String(), otherHB), false)
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
		noSessionCookie(t, w)
	})
	t.Run("handoff with a made-up code", func(t *testing.T) {
		_, hb := e.navigate(t, "https://app.example/")
		for _, code := range []string{"", "short", randomToken(), randomToken() + "x"} {
			_, err := e.serve(newReq(http.MethodGet, "https://app.example"+PathHandoff+"?code="+url.QueryEscape(code), hb), false)
			wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
		}
	})
	t.Run("login to a host that is not an app", func(t *testing.T) {
		hb := hashKey(randomToken())
		for _, rd := range []string{
			// (https://auth.example/... is a valid return address: the auth
			// host's own pages, such as device approval.)
			"https://evil.example/x", "https://auth.example.evil/x", "http://auth.example/x", "http://app.example/x", "//evil.example",
			"https://app.example@evil.example/", "https://app.example:8443/", "/x", "javascript:alert(1)", "",
		} {
			u := testAuthOrigin + PathLogin + "?" + url.Values{"rd": {rd}, "hb": {hb}}.Encode()
			w, err := e.serve(newReq(http.MethodGet, u), true)
			wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
			if w.Header().Get("Location") != "" || len(w.Result().Cookies()) != 0 {
				t.Errorf("rd %q: redirected or set cookies", rd)
			}
		}
	})
	t.Run("login without a valid hb", func(t *testing.T) {
		for _, hb := range []string{"", "abc", strings.Repeat("g", 64), hashKey("x") + "0", strings.Repeat("0", 63)} {
			u := testAuthOrigin + PathLogin + "?" + url.Values{"rd": {"https://app.example/"}, "hb": {hb}}.Encode()
			if hb == "" {
				u = testAuthOrigin + PathLogin + "?rd=" + url.QueryEscape("https://app.example/")
			}
			w, err := e.serve(newReq(http.MethodGet, u), true)
			wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
			if w.Header().Get("Location") != "" {
				t.Errorf("hb %q: redirected", hb)
			}
		}
	})
	t.Run("login by POST", func(t *testing.T) {
		_, err := e.serve(postReq(mustLoginURL(t, e, "https://app.example/"), nil), true)
		wantHTTPError(t, err, http.StatusMethodNotAllowed, "")
	})
	t.Run("login on an app host", func(t *testing.T) {
		_, err := e.serve(newReq(http.MethodGet, "https://app.example"+PathLogin+"?rd=x"), false)
		wantHTTPError(t, err, http.StatusNotFound, "not_found")
	})
	t.Run("unknown reserved path", func(t *testing.T) {
		_, err := e.serve(newReq(http.MethodGet, "https://auth.example/.ztna/nope"), true)
		wantHTTPError(t, err, http.StatusNotFound, "not_found")
	})
}

func mustLoginURL(t *testing.T, e *svcEnv, target string) string {
	t.Helper()
	u, _ := e.navigate(t, target)
	return u.String()
}

func TestServiceUnauthenticated(t *testing.T) {
	e := newSvcEnv(t)
	const target = "https://app.example/api/x?y=1"
	wantLogin := testAuthOrigin + PathLogin + "?rd=" + url.QueryEscape(target)

	tests := []struct {
		name      string
		method    string
		header    map[string]string
		wantsHTML bool // as the edge's classifier (web.WantsHTML) decides
	}{
		{"fetch", http.MethodGet, map[string]string{"Sec-Fetch-Mode": "cors", "Accept": "application/json"}, false},
		{"XHR", http.MethodGet, map[string]string{"X-Requested-With": "XMLHttpRequest", "Accept": "application/json"}, false},
		{"WebSocket", http.MethodGet, map[string]string{"Upgrade": "websocket", "Connection": "Upgrade", "Sec-Fetch-Mode": "websocket"}, false},
		{"API client", http.MethodGet, map[string]string{"Accept": "*/*"}, false},
		{"form POST navigation", http.MethodPost, map[string]string{"Sec-Fetch-Mode": "navigate", "Accept": "text/html"}, true},
		{"PUT", http.MethodPut, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newReq(tt.method, target)
			for k, v := range tt.header {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			err := e.svc.Unauthenticated(w, r, tt.wantsHTML)
			he := wantHTTPError(t, err, http.StatusUnauthorized, "unauthenticated")
			if he.LoginURL != wantLogin {
				t.Errorf("LoginURL = %q, want %q", he.LoginURL, wantLogin)
			}
			if loc := w.Header().Get("Location"); loc != "" {
				t.Errorf("redirected to %q", loc)
			}
			if c := w.Result().Cookies(); len(c) != 0 {
				t.Errorf("set cookies %v", c)
			}
		})
	}

	t.Run("navigation", func(t *testing.T) {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			r := newReq(method, target)
			w := httptest.NewRecorder()
			if err := e.svc.Unauthenticated(w, r, true); err != nil {
				t.Fatalf("%s: %v", method, err)
			}
			loc := location(t, w, http.StatusFound)
			hb := hostCookie(t, w, handoffBindCookie)
			if !strings.HasPrefix(loc.String(), wantLogin+"&hb=") || loc.Query().Get("hb") != hashKey(hb.Value) {
				t.Errorf("%s: redirected to %s, want %s&hb=sha256(cookie)", method, loc, wantLogin)
			}
			if hb.MaxAge <= 0 || hb.MaxAge > int(loginStateTTL.Seconds()) {
				t.Errorf("hb cookie Max-Age %d", hb.MaxAge)
			}
		}
	})
	t.Run("each browser gets a fresh bind", func(t *testing.T) {
		_, a := e.navigate(t, target)
		_, b := e.navigate(t, target)
		if a.Value == b.Value {
			t.Error("two browsers got the same hb cookie")
		}
	})
	t.Run("tabs of one browser share the bind", func(t *testing.T) {
		_, a := e.navigate(t, target)
		for _, tc := range []struct {
			name  string
			sent  *http.Cookie
			reuse bool
		}{
			{"valid cookie reused", a, true},
			{"malformed cookie replaced", &http.Cookie{Name: handoffBindCookie, Value: "attacker-chosen"}, false},
			{"non-canonical cookie replaced", &http.Cookie{Name: handoffBindCookie, Value: strings.Repeat("A", 42) + "B"}, false},
		} {
			w := httptest.NewRecorder()
			if err := e.svc.Unauthenticated(w, newReq(http.MethodGet, target, tc.sent), true); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			loc := location(t, w, http.StatusFound)
			got := hostCookie(t, w, handoffBindCookie)
			if (got.Value == tc.sent.Value) != tc.reuse || loc.Query().Get("hb") != hashKey(got.Value) {
				t.Errorf("%s: sent %q, cookie now %q, hb %q", tc.name, tc.sent.Value, got.Value, loc.Query().Get("hb"))
			}
		}
	})
	t.Run("Authenticate without or with a bad cookie", func(t *testing.T) {
		for _, c := range []*http.Cookie{nil, {Name: SessionCookie, Value: "garbage"}, {Name: SessionCookie, Value: NewSessionID()}} {
			if _, err := e.svc.Authenticate(newReq(http.MethodGet, target, c)); !errors.Is(err, ErrNoSession) {
				t.Errorf("cookie %v: got %v, want ErrNoSession", c, err)
			}
		}
	})
}

func TestServiceLogout(t *testing.T) {
	e := newSvcEnv(t)
	ctx := t.Context()
	in := e.signIn(t, "alice", "https://app.example/")
	other := e.signIn(t, "bob", "https://app.example/")
	logoutURL := "https://app.example" + PathLogout

	// GET renders the confirmation page with the session's CSRF token.
	w, err := e.serve(newReq(http.MethodGet, logoutURL, in.appCookie), false)
	if err != nil || w.Code != http.StatusOK {
		t.Fatalf("GET logout: %d %v", w.Code, err)
	}
	calls, _ := e.pages.calls()
	if len(calls) != 1 {
		t.Fatalf("SignOut rendered %d times", len(calls))
	}
	csrf := calls[0].csrf
	if calls[0].action != PathLogout || calls[0].user != "alice@example.com" || csrf != CSRFToken(in.session) {
		t.Errorf("SignOut(%+v), want action %s, user alice@example.com, the session's CSRF token", calls[0], PathLogout)
	}
	if len(csrf) != 32 || strings.Contains(csrf, in.session.ID) || csrf == CSRFToken(other.session) {
		t.Errorf("CSRF token %q: want 32 hex characters, per session, not the ID", csrf)
	}

	for name, form := range map[string]url.Values{
		"no csrf":                   nil,
		"empty csrf":                {"csrf": {""}},
		"wrong csrf":                {"csrf": {strings.Repeat("0", 32)}},
		"another session's csrf":    {"csrf": {CSRFToken(other.session)}},
		"csrf prefix":               {"csrf": {csrf[:16]}},
		"csrf in the query instead": nil,
	} {
		t.Run(name, func(t *testing.T) {
			u := logoutURL
			if name == "csrf in the query instead" {
				u += "?csrf=" + csrf
			}
			w, err := e.serve(postReq(u, form, in.appCookie), false)
			wantHTTPError(t, err, http.StatusForbidden, "csrf")
			if c := responseCookie(w, SessionCookie); c != nil {
				t.Errorf("session cookie touched: %+v", c)
			}
			if _, err := e.sessions.Get(ctx, in.session.ID); err != nil {
				t.Fatalf("session ended by a forged logout: %v", err)
			}
		})
	}
	t.Run("other methods", func(t *testing.T) {
		_, err := e.serve(newReq(http.MethodPut, logoutURL, in.appCookie), false)
		wantHTTPError(t, err, http.StatusMethodNotAllowed, "")
	})

	// POST with the token ends the session and sends the browser to the IdP.
	w, err = e.serve(postReq(logoutURL, url.Values{"csrf": {csrf}}, in.appCookie), false)
	if err != nil {
		t.Fatalf("logout: %v", err)
	}
	end := location(t, w, http.StatusSeeOther)
	if !strings.HasPrefix(end.String(), e.srv.URL+"/") {
		t.Fatalf("logout redirected to %s, not to the IdP", end)
	}
	eq := end.Query()
	if eq.Get("id_token_hint") != in.session.IDToken || eq.Get("post_logout_redirect_uri") != testAuthOrigin+PathSignedOut || eq.Get("client_id") != testClientID {
		t.Errorf("end-session query %v", eq)
	}
	if c := responseCookie(w, SessionCookie); c == nil || c.MaxAge >= 0 || c.Value != "" || !c.Secure || c.Path != "/" {
		t.Errorf("session cookie not cleared: %+v", c)
	}
	if _, err := e.sessions.Get(ctx, in.session.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("session alive after logout: %v", err)
	}
	if !e.rev.has(in.session.Key) {
		t.Error("OnRevoke not called for the logged-out session")
	}
	if _, err := e.sessions.Get(ctx, other.session.ID); err != nil {
		t.Errorf("another user's session ended: %v", err)
	}

	// The IdP accepts the hint and returns the browser to the edge.
	b := newBrowser(t)
	req, _ := http.NewRequest(http.MethodGet, end.String(), nil)
	status, loc, body := browse(t, b, req)
	if status < 300 || status > 399 || loc == nil || loc.Scheme+"://"+loc.Host+loc.Path != testAuthOrigin+PathSignedOut {
		t.Errorf("IdP end-session: %d %v; body %q", status, loc, body)
	}

	// Afterwards both pages just say "signed out".
	_, before := e.pages.calls()
	for _, r := range []*http.Request{
		newReq(http.MethodGet, logoutURL, in.appCookie),
		postReq(logoutURL, url.Values{"csrf": {csrf}}, in.appCookie),
		newReq(http.MethodGet, logoutURL),
		newReq(http.MethodGet, testAuthOrigin+PathSignedOut),
	} {
		authHost := r.Host == "auth.example"
		if _, err := e.serve(r, authHost); err != nil {
			t.Errorf("%s %s after logout: %v", r.Method, r.URL, err)
		}
	}
	if _, after := e.pages.calls(); after != before+4 {
		t.Errorf("SignedOut rendered %d times, want 4", after-before)
	}
}

func TestServiceBackChannelLogout(t *testing.T) {
	e := newSvcEnv(t)
	ctx := t.Context()
	alice1 := e.signIn(t, "alice", "https://app.example/")
	alice2 := e.signIn(t, "alice", "https://other.example/")
	bob := e.signIn(t, "bob", "https://app.example/")
	if alice1.session.IdPSession == alice2.session.IdPSession {
		t.Fatal("two IdP logins share a sid")
	}

	// The IdP tells the edge; BackChannelLogout fails unless every POST
	// got a 2xx.
	if err := e.idp.BackChannelLogout(ctx, "alice"); err != nil {
		t.Fatalf("BackChannelLogout: %v", err)
	}
	tokens, statuses := e.logout.received()
	if len(tokens) != 2 || !slices.Equal(statuses, []int{http.StatusOK, http.StatusOK}) {
		t.Fatalf("receiver got %d tokens with statuses %v, want 2 × 200", len(tokens), statuses)
	}
	for _, s := range []signedIn{alice1, alice2} {
		if _, err := e.sessions.Get(ctx, s.session.ID); !errors.Is(err, ErrNoSession) {
			t.Errorf("alice's session %s survived back-channel logout: %v", s.session.Ref(), err)
		}
		if !e.rev.has(s.session.Key) {
			t.Errorf("OnRevoke not called for %s", s.session.Ref())
		}
	}
	if _, err := e.sessions.Get(ctx, bob.session.ID); err != nil {
		t.Fatalf("bob's session ended: %v", err)
	}

	post := func(form url.Values) (*httptest.ResponseRecorder, error) {
		return e.serve(postReq(testAuthOrigin+PathBackchannel, form), true)
	}
	t.Run("replayed token", func(t *testing.T) {
		_, err := post(url.Values{"logout_token": {tokens[0]}})
		wantHTTPError(t, err, http.StatusBadRequest, "bad_request")
	})
	t.Run("GET", func(t *testing.T) {
		_, err := e.serve(newReq(http.MethodGet, testAuthOrigin+PathBackchannel+"?logout_token="+tokens[1]), true)
		wantHTTPError(t, err, http.StatusMethodNotAllowed, "")
	})
	t.Run("on an app host", func(t *testing.T) {
		_, err := e.serve(postReq("https://app.example"+PathBackchannel, url.Values{"logout_token": {tokens[1]}}), false)
		wantHTTPError(t, err, http.StatusNotFound, "not_found")
	})
	t.Run("bad tokens", func(t *testing.T) {
		forged := e.sign(t, map[string]any{
			"iss": e.idp.Issuer(), "aud": "another-client", "iat": time.Now().Unix(), "exp": time.Now().Add(time.Minute).Unix(),
			"jti": randomToken(), "sub": "u-bob", "events": map[string]any{backchannelEvent: map[string]any{}},
		})
		for name, form := range map[string]url.Values{
			"missing":   nil,
			"garbage":   {"logout_token": {"garbage"}},
			"wrong aud": {"logout_token": {forged}},
			"ID token":  {"logout_token": {bob.session.IDToken}},
			"oversized": {"logout_token": {strings.Repeat("a", maxFormBytes)}},
		} {
			if _, err := post(form); err == nil {
				t.Errorf("%s: accepted", name)
			} else if he := httperr.As(err); he.Status != http.StatusBadRequest {
				t.Errorf("%s: status %d, want 400", name, he.Status)
			}
		}
		if _, err := e.sessions.Get(ctx, bob.session.ID); err != nil {
			t.Fatalf("a rejected logout token ended bob's session: %v", err)
		}
	})
	t.Run("sub-only token ends every session of the user", func(t *testing.T) {
		bob2 := e.signIn(t, "bob", "https://other.example/")
		raw := e.sign(t, map[string]any{
			"iss": e.idp.Issuer(), "aud": testClientID, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Minute).Unix(),
			"jti": randomToken(), "sub": "u-bob", "events": map[string]any{backchannelEvent: map[string]any{}},
		})
		w, err := post(url.Values{"logout_token": {raw}})
		if err != nil || w.Code != http.StatusOK {
			t.Fatalf("logout: %d %v", w.Code, err)
		}
		if w.Header().Get("Cache-Control") != "no-store" {
			t.Error("back-channel answer without Cache-Control: no-store")
		}
		for _, s := range []signedIn{bob, bob2} {
			if _, err := e.sessions.Get(ctx, s.session.ID); !errors.Is(err, ErrNoSession) {
				t.Errorf("bob's session %s survived: %v", s.session.Ref(), err)
			}
		}
	})
}

// A due refresh runs in the background and brings the IdP's new attributes
// into the session; a refused refresh ends it.
func TestServiceRefresh(t *testing.T) {
	e := newSvcEnv(t)
	ctx := t.Context()
	alice := e.signIn(t, "alice", "https://app.example/")
	if alice.session.RefreshAt.IsZero() || alice.session.RefreshToken == "" {
		t.Fatalf("session without refresh: %+v", alice.session)
	}
	if err := e.idp.SetAttribute("alice", "department", "Security Policy"); err != nil {
		t.Fatal(err)
	}
	// Nothing is due yet.
	sess, err := e.svc.Authenticate(newReq(http.MethodGet, "https://app.example/", alice.appCookie))
	if err != nil || sess.Identity.Attributes["department"] != "Security Tech" {
		t.Fatalf("Authenticate: %v, %+v", err, sess)
	}
	e.clock.Advance(10 * time.Minute)
	sess, err = e.svc.Authenticate(newReq(http.MethodGet, "https://app.example/", alice.appCookie))
	if err != nil {
		t.Fatalf("Authenticate with a refresh due: %v", err)
	}
	if sess.Identity.Subject != "u-alice" {
		t.Fatalf("session = %+v", sess)
	}
	waitFor(t, "the refreshed department", func() bool {
		s, err := e.sessions.Get(ctx, alice.session.ID)
		return err == nil && s.Identity.Attributes["department"] == "Security Policy"
	})
	s, _ := e.sessions.Get(ctx, alice.session.ID)
	if s.RefreshToken == alice.session.RefreshToken || s.RefreshToken == "" {
		t.Error("refresh token not replaced by the rotated one")
	}

	t.Run("refused refresh ends the session", func(t *testing.T) {
		bob := e.signIn(t, "bob", "https://app.example/")
		cp := *bob.session
		cp.RefreshToken = "revoked-at-the-idp"
		if err := e.sessions.Update(ctx, &cp); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Authenticate(newReq(http.MethodGet, "https://app.example/", bob.appCookie)); err != nil {
			t.Fatalf("Authenticate: %v", err)
		}
		waitFor(t, "bob's session to end", func() bool {
			_, err := e.sessions.Get(ctx, bob.session.ID)
			return errors.Is(err, ErrNoSession)
		})
		if !e.rev.has(bob.session.Key) {
			t.Error("OnRevoke not called for the refused session")
		}
	})
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}
