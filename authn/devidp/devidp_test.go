package devidp

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"go.uber.org/goleak"
	"golang.org/x/oauth2"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testClientID   = "ztna-edge"
	testSecret     = "edge-secret"
	testRedirect   = "http://127.0.0.1:9/rp/callback"
	testPostLogout = "http://127.0.0.1:9/rp/signed-out"
)

var defaultScopes = []string{oidc.ScopeOpenID, "profile", "email", "groups"}

// testEnv is a running dev IdP on 127.0.0.1 plus a go-oidc relying party.
type testEnv struct {
	idp      *Provider
	srv      *httptest.Server
	skew     atomic.Int64 // nanoseconds added to the IdP's storage clock
	rpClient *http.Client
	ctx      context.Context
	provider *oidc.Provider
	oauth    oauth2.Config
	verifier *oidc.IDTokenVerifier
}

func newEnv(t *testing.T, mutate func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{}
	e.srv = httptest.NewUnstartedServer(nil)
	issuer := "http://" + e.srv.Listener.Addr().String()
	cfg := Config{
		Issuer: issuer,
		Users:  DemoUsers(),
		Clients: []Client{{
			ID: testClientID, Secret: testSecret,
			RedirectURIs:           []string{testRedirect},
			PostLogoutRedirectURIs: []string{testPostLogout},
		}},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	idp, err := New(cfg)
	if err != nil {
		e.srv.Listener.Close()
		t.Fatalf("New: %v", err)
	}
	e.idp = idp
	idp.st.now = func() time.Time { return time.Now().Add(time.Duration(e.skew.Load())) }
	e.srv.Config.Handler = idp.Handler()
	e.srv.Start()
	t.Cleanup(e.srv.Close)
	t.Cleanup(func() { _ = idp.Close() })

	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	e.rpClient = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	e.ctx = oidc.ClientContext(ctx, e.rpClient)
	e.provider, err = oidc.NewProvider(e.ctx, issuer)
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	e.oauth = oauth2.Config{
		ClientID:     testClientID,
		ClientSecret: testSecret,
		Endpoint:     e.provider.Endpoint(),
		RedirectURL:  testRedirect,
		Scopes:       defaultScopes,
	}
	e.oauth.Endpoint.AuthStyle = oauth2.AuthStyleInHeader
	e.verifier = e.provider.Verifier(&oidc.Config{ClientID: testClientID})
	return e
}

// browser is a user agent with a cookie jar that never follows redirects,
// so each hop can be inspected.
func browser(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Jar:           jar,
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type response struct {
	status   int
	header   http.Header
	body     string
	location *url.URL
}

func do(t *testing.T, c *http.Client, req *http.Request) response {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, body: string(b)}
	if loc := resp.Header.Get("Location"); loc != "" {
		u, err := req.URL.Parse(loc)
		if err != nil {
			t.Fatalf("bad Location %q: %v", loc, err)
		}
		r.location = u
	}
	return r
}

func get(t *testing.T, c *http.Client, u string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, c, req)
}

func postForm(t *testing.T, c *http.Client, u string, v url.Values) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(v.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(t, c, req)
}

// authStart is an authorization request the relying party sent.
type authStart struct {
	state, nonce, verifier string
	browser                *http.Client
	loginURL               *url.URL // the IdP's login page for this request
}

// startAuth sends the browser to /authorize with PKCE S256, state and nonce
// and follows it to the login page.
func (e *testEnv) startAuth(t *testing.T, scopes []string) authStart {
	t.Helper()
	a := authStart{state: rand.Text(), nonce: rand.Text(), verifier: oauth2.GenerateVerifier(), browser: browser(t)}
	cfg := e.oauth
	if scopes != nil {
		cfg.Scopes = scopes
	}
	r := get(t, a.browser, cfg.AuthCodeURL(a.state, oidc.Nonce(a.nonce), oauth2.S256ChallengeOption(a.verifier)))
	if r.status != http.StatusFound || r.location == nil || r.location.Path != loginPath {
		t.Fatalf("authorize: got %d %v, want 302 to %s; body %q", r.status, r.location, loginPath, r.body)
	}
	a.loginURL = r.location
	return a
}

func (a authStart) authRequestID() string { return a.loginURL.Query().Get("authRequestID") }

// submitLogin posts credentials to the login form.
func (a authStart) submitLogin(t *testing.T, username, password string) response {
	t.Helper()
	form := url.Values{"authRequestID": {a.authRequestID()}, "username": {username}, "password": {password}}
	return postForm(t, a.browser, a.loginURL.Scheme+"://"+a.loginURL.Host+loginPath, form)
}

// finish follows the login's redirect through the OP callback and returns
// the authorization response at the relying party's redirect URI.
func (a authStart) finish(t *testing.T, login response) url.Values {
	t.Helper()
	if login.status != http.StatusSeeOther || login.location == nil {
		t.Fatalf("login: got %d %v, want 303; body %q", login.status, login.location, login.body)
	}
	r := get(t, a.browser, login.location.String())
	if r.status != http.StatusFound || r.location == nil {
		t.Fatalf("callback: got %d, want 302; body %q", r.status, r.body)
	}
	if got := r.location.Scheme + "://" + r.location.Host + r.location.Path; got != testRedirect {
		t.Fatalf("redirected to %q, want %q", got, testRedirect)
	}
	return r.location.Query()
}

type flow struct {
	authStart
	code string
}

// login runs the browser part of the code flow as username.
func (e *testEnv) login(t *testing.T, username, password string, scopes []string) flow {
	t.Helper()
	a := e.startAuth(t, scopes)
	page := get(t, a.browser, a.loginURL.String())
	if page.status != http.StatusOK || !strings.Contains(page.body, `name="authRequestID"`) {
		t.Fatalf("login page: got %d %q", page.status, page.body)
	}
	q := a.finish(t, a.submitLogin(t, username, password))
	if q.Get("state") != a.state {
		t.Fatalf("state = %q, want %q", q.Get("state"), a.state)
	}
	if q.Get("code") == "" || q.Get("error") != "" {
		t.Fatalf("no code in authorization response: %v", q)
	}
	return flow{authStart: a, code: q.Get("code")}
}

func (e *testEnv) exchange(t *testing.T, f flow) *oauth2.Token {
	t.Helper()
	tok, err := e.oauth.Exchange(e.ctx, f.code, oauth2.VerifierOption(f.verifier))
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	return tok
}

type idClaims struct {
	Email             string   `json:"email"`
	EmailVerified     bool     `json:"email_verified"`
	Name              string   `json:"name"`
	PreferredUsername string   `json:"preferred_username"`
	Groups            []string `json:"groups"`
	Department        string   `json:"department"`
	Title             string   `json:"title"`
	Sid               string   `json:"sid"`
}

func (e *testEnv) verifyIDToken(t *testing.T, tok *oauth2.Token) (*oidc.IDToken, idClaims) {
	t.Helper()
	raw, ok := tok.Extra("id_token").(string)
	if !ok || raw == "" {
		t.Fatal("token response has no id_token")
	}
	idt, err := e.verifier.Verify(e.ctx, raw)
	if err != nil {
		t.Fatalf("verify ID token: %v", err)
	}
	var c idClaims
	if err := idt.Claims(&c); err != nil {
		t.Fatal(err)
	}
	return idt, c
}

func wantOAuthError(t *testing.T, err error, code string) {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != code {
		t.Fatalf("got error %v, want OAuth error %q", err, code)
	}
}

func jwsHeader(t *testing.T, raw string) jose.Header {
	t.Helper()
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("parse JWS: %v", err)
	}
	return jws.Signatures[0].Header
}

func TestDiscovery(t *testing.T) {
	e := newEnv(t, nil)
	var d struct {
		Issuer           string   `json:"issuer"`
		Scopes           []string `json:"scopes_supported"`
		PKCE             []string `json:"code_challenge_methods_supported"`
		IDTokenAlgs      []string `json:"id_token_signing_alg_values_supported"`
		AuthMethods      []string `json:"token_endpoint_auth_methods_supported"`
		BackChannel      bool     `json:"backchannel_logout_supported"`
		BackChannelSID   bool     `json:"backchannel_logout_session_supported"`
		EndSession       string   `json:"end_session_endpoint"`
		JWKS             string   `json:"jwks_uri"`
		ClaimsSupported  []string `json:"claims_supported"`
		UserinfoEndpoint string   `json:"userinfo_endpoint"`
	}
	if err := e.provider.Claims(&d); err != nil {
		t.Fatal(err)
	}
	if d.Issuer != e.idp.Issuer() || e.idp.Issuer() != e.srv.URL {
		t.Errorf("issuer = %q, Issuer() = %q, want %q", d.Issuer, e.idp.Issuer(), e.srv.URL)
	}
	for _, s := range []string{"openid", "profile", "email", "groups", "offline_access"} {
		if !slices.Contains(d.Scopes, s) {
			t.Errorf("scopes_supported %v lacks %q", d.Scopes, s)
		}
	}
	if !slices.Equal(d.PKCE, []string{"S256"}) {
		t.Errorf("code_challenge_methods_supported = %v, want [S256]", d.PKCE)
	}
	if !slices.Equal(d.IDTokenAlgs, []string{"RS256"}) {
		t.Errorf("id_token algs = %v, want [RS256]", d.IDTokenAlgs)
	}
	for _, m := range []string{"client_secret_basic", "client_secret_post"} {
		if !slices.Contains(d.AuthMethods, m) {
			t.Errorf("token auth methods %v lack %q", d.AuthMethods, m)
		}
	}
	if !d.BackChannel || !d.BackChannelSID {
		t.Errorf("back-channel logout not advertised: %+v", d)
	}
	if !strings.HasPrefix(d.EndSession, e.srv.URL) || !strings.HasPrefix(d.JWKS, e.srv.URL) || !strings.HasPrefix(d.UserinfoEndpoint, e.srv.URL) {
		t.Errorf("endpoints not under issuer: %+v", d)
	}
	for _, c := range []string{"groups", "sid"} {
		if !slices.Contains(d.ClaimsSupported, c) {
			t.Errorf("claims_supported lacks %q", c)
		}
	}
}

func TestCodeFlow(t *testing.T) {
	tests := []struct {
		name      string
		authStyle oauth2.AuthStyle
		user      User
	}{
		{"client_secret_basic alice", oauth2.AuthStyleInHeader, DemoUsers()[0]},
		{"client_secret_post bob", oauth2.AuthStyleInParams, DemoUsers()[1]},
	}
	e := newEnv(t, nil)
	sids := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.oauth.Endpoint.AuthStyle = tt.authStyle
			t.Cleanup(func() { e.oauth.Endpoint.AuthStyle = oauth2.AuthStyleInHeader })

			f := e.login(t, tt.user.Username, tt.user.Password, nil)
			tok := e.exchange(t, f)
			if tok.RefreshToken != "" {
				t.Errorf("got a refresh token without offline_access")
			}
			idt, c := e.verifyIDToken(t, tok)
			if idt.Nonce != f.nonce {
				t.Errorf("nonce = %q, want %q", idt.Nonce, f.nonce)
			}
			if idt.Subject != tt.user.Subject {
				t.Errorf("sub = %q, want %q", idt.Subject, tt.user.Subject)
			}
			if err := idt.VerifyAccessToken(tok.AccessToken); err != nil {
				t.Errorf("at_hash: %v", err)
			}
			want := idClaims{
				Email: tt.user.Email, EmailVerified: true, Name: tt.user.Name,
				PreferredUsername: tt.user.Username, Groups: tt.user.Groups,
				Department: tt.user.Attributes["department"], Title: tt.user.Attributes["title"],
				Sid: c.Sid,
			}
			if !equalClaims(c, want) {
				t.Errorf("ID token claims = %+v, want %+v", c, want)
			}
			if c.Sid == "" || sids[c.Sid] {
				t.Errorf("sid %q empty or reused", c.Sid)
			}
			sids[c.Sid] = true

			ui, err := e.provider.UserInfo(e.ctx, oauth2.StaticTokenSource(tok))
			if err != nil {
				t.Fatalf("userinfo: %v", err)
			}
			if ui.Subject != idt.Subject {
				t.Errorf("userinfo sub = %q, want %q", ui.Subject, idt.Subject)
			}
			var uc idClaims
			if err := ui.Claims(&uc); err != nil {
				t.Fatal(err)
			}
			if !equalClaims(uc, c) {
				t.Errorf("userinfo claims = %+v, want ID token's %+v", uc, c)
			}
		})
	}
}

func equalClaims(a, b idClaims) bool {
	return a.Email == b.Email && a.EmailVerified == b.EmailVerified && a.Name == b.Name &&
		a.PreferredUsername == b.PreferredUsername && slices.Equal(a.Groups, b.Groups) &&
		a.Department == b.Department && a.Title == b.Title && a.Sid == b.Sid
}

func TestScopesLimitClaims(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.exchange(t, e.login(t, "alice", "alice-password", []string{oidc.ScopeOpenID}))
	_, c := e.verifyIDToken(t, tok)
	if c.Email != "" || c.Name != "" || c.Groups != nil || c.Department != "" {
		t.Errorf("openid-only ID token carries profile claims: %+v", c)
	}
	if c.Sid == "" {
		t.Error("sid missing")
	}
}

func TestLoginForm(t *testing.T) {
	e := newEnv(t, nil)
	a := e.startAuth(t, nil)

	page := get(t, a.browser, a.loginURL.String())
	if page.status != http.StatusOK {
		t.Fatalf("GET login: %d", page.status)
	}
	for _, want := range []string{`id="username"`, `id="password"`, `type="password"`, testClientID} {
		if !strings.Contains(page.body, want) {
			t.Errorf("login page lacks %q", want)
		}
	}
	for _, secret := range []string{"alice-password", testSecret, "bob"} {
		if strings.Contains(page.body, secret) {
			t.Errorf("login page shows %q", secret)
		}
	}
	if csp := page.header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("CSP = %q", csp)
	}

	bad := []struct{ name, user, pass string }{
		{"wrong password", "alice", "bob-password"},
		{"unknown user", "mallory", "alice-password"},
		{"empty password", "alice", ""},
		{"markup in username", "<b>alice</b>", "x"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			r := a.submitLogin(t, tt.user, tt.pass)
			if r.status != http.StatusUnauthorized || r.location != nil {
				t.Fatalf("got %d %v, want 401 without redirect", r.status, r.location)
			}
			if !strings.Contains(r.body, "Invalid username or password") || !strings.Contains(r.body, `name="authRequestID"`) {
				t.Errorf("form not re-rendered with error: %q", r.body)
			}
			if strings.Contains(r.body, "<b>alice</b>") {
				t.Error("username echoed unescaped")
			}
		})
	}

	// The same request still completes with the right credentials, once.
	q := a.finish(t, a.submitLogin(t, "alice", "alice-password"))
	if q.Get("code") == "" || q.Get("state") != a.state {
		t.Fatalf("authorization response %v", q)
	}
	if r := a.submitLogin(t, "alice", "alice-password"); r.status != http.StatusBadRequest {
		t.Errorf("second login on a completed request: got %d, want 400", r.status)
	}
	if r := get(t, a.browser, a.loginURL.String()); r.status != http.StatusBadRequest {
		t.Errorf("login page of a completed request: got %d, want 400", r.status)
	}

	t.Run("unknown request", func(t *testing.T) {
		if r := get(t, a.browser, e.srv.URL+loginPath+"?authRequestID=nope"); r.status != http.StatusBadRequest {
			t.Errorf("got %d, want 400", r.status)
		}
	})
	t.Run("oversized body", func(t *testing.T) {
		b := e.startAuth(t, nil)
		form := url.Values{"authRequestID": {b.authRequestID()}, "username": {"alice"}, "password": {strings.Repeat("x", 100<<10)}}
		if r := postForm(t, b.browser, e.srv.URL+loginPath, form); r.status != http.StatusRequestEntityTooLarge {
			t.Errorf("got %d, want 413", r.status)
		}
	})
	t.Run("expired request", func(t *testing.T) {
		b := e.startAuth(t, nil)
		e.skew.Store(int64(authRequestTTL + time.Second))
		t.Cleanup(func() { e.skew.Store(0) })
		if r := b.submitLogin(t, "alice", "alice-password"); r.status != http.StatusBadRequest {
			t.Errorf("got %d, want 400", r.status)
		}
	})
}

func TestAuthorizeRejects(t *testing.T) {
	e := newEnv(t, nil)
	verifier := oauth2.GenerateVerifier()
	tests := []struct {
		name      string
		redirect  string
		clientID  string
		opts      []oauth2.AuthCodeOption
		wantError string // error at the redirect URI; "" = a 400 page at the IdP, no redirect
	}{
		{"plain PKCE", testRedirect, testClientID, []oauth2.AuthCodeOption{
			oauth2.SetAuthURLParam("code_challenge", verifier),
			oauth2.SetAuthURLParam("code_challenge_method", "plain"),
		}, "invalid_request"},
		{"PKCE without method", testRedirect, testClientID, []oauth2.AuthCodeOption{
			oauth2.SetAuthURLParam("code_challenge", oauth2.S256ChallengeFromVerifier(verifier)),
		}, "invalid_request"},
		{"no PKCE", testRedirect, testClientID, nil, "invalid_request"},
		{"malformed S256 challenge", testRedirect, testClientID, []oauth2.AuthCodeOption{
			oauth2.SetAuthURLParam("code_challenge", "short"),
			oauth2.SetAuthURLParam("code_challenge_method", "S256"),
		}, "invalid_request"},
		{"prompt=none", testRedirect, testClientID, []oauth2.AuthCodeOption{
			oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("prompt", "none"),
		}, "login_required"},
		{"unregistered redirect_uri", "http://127.0.0.1:9/evil", testClientID, []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}, ""},
		{"redirect_uri prefix trick", testRedirect + "/../evil", testClientID, []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}, ""},
		{"unknown client", testRedirect, "nobody", []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := e.oauth
			cfg.RedirectURL = tt.redirect
			cfg.ClientID = tt.clientID
			state := rand.Text()
			r := get(t, browser(t), cfg.AuthCodeURL(state, tt.opts...))
			if tt.wantError == "" {
				if r.status != http.StatusBadRequest || r.location != nil {
					t.Fatalf("got %d %v, want 400 without redirect", r.status, r.location)
				}
				return
			}
			if r.status != http.StatusFound || r.location == nil || !strings.HasPrefix(r.location.String(), testRedirect+"?") {
				t.Fatalf("got %d %v, want 302 to the redirect URI", r.status, r.location)
			}
			q := r.location.Query()
			if q.Get("error") != tt.wantError || q.Get("state") != state || q.Get("code") != "" {
				t.Errorf("authorization response %v, want error=%s with state", q, tt.wantError)
			}
		})
	}
}

func TestTokenRejects(t *testing.T) {
	e := newEnv(t, nil)

	t.Run("wrong verifier", func(t *testing.T) {
		f := e.login(t, "alice", "alice-password", nil)
		_, err := e.oauth.Exchange(e.ctx, f.code, oauth2.VerifierOption(oauth2.GenerateVerifier()))
		wantOAuthError(t, err, "invalid_grant")
		// The failed attempt spent the code.
		_, err = e.oauth.Exchange(e.ctx, f.code, oauth2.VerifierOption(f.verifier))
		wantOAuthError(t, err, "invalid_grant")
	})
	t.Run("no verifier", func(t *testing.T) {
		f := e.login(t, "alice", "alice-password", nil)
		_, err := e.oauth.Exchange(e.ctx, f.code)
		wantOAuthError(t, err, "invalid_request") // zitadel/oidc: "code_verifier required"
	})
	t.Run("replay revokes", func(t *testing.T) {
		f := e.login(t, "alice", "alice-password", []string{"openid", "profile", "offline_access"})
		tok := e.exchange(t, f)
		if _, err := e.provider.UserInfo(e.ctx, oauth2.StaticTokenSource(tok)); err != nil {
			t.Fatalf("userinfo before replay: %v", err)
		}
		_, err := e.oauth.Exchange(e.ctx, f.code, oauth2.VerifierOption(f.verifier))
		wantOAuthError(t, err, "invalid_grant")
		if _, err := e.provider.UserInfo(e.ctx, oauth2.StaticTokenSource(tok)); err == nil {
			t.Error("access token still valid after code replay")
		}
		_, err = e.oauth.TokenSource(e.ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
		wantOAuthError(t, err, "invalid_grant")
	})
	t.Run("expired code", func(t *testing.T) {
		f := e.login(t, "alice", "alice-password", nil)
		e.skew.Store(int64(codeTTL + time.Second))
		t.Cleanup(func() { e.skew.Store(0) })
		_, err := e.oauth.Exchange(e.ctx, f.code, oauth2.VerifierOption(f.verifier))
		wantOAuthError(t, err, "invalid_grant")
	})
	t.Run("wrong client secret", func(t *testing.T) {
		f := e.login(t, "alice", "alice-password", nil)
		cfg := e.oauth
		cfg.ClientSecret = "guess"
		_, err := cfg.Exchange(e.ctx, f.code, oauth2.VerifierOption(f.verifier))
		wantOAuthError(t, err, "invalid_client")
	})
	t.Run("redirect_uri mismatch", func(t *testing.T) {
		f := e.login(t, "alice", "alice-password", nil)
		cfg := e.oauth
		cfg.RedirectURL = "http://127.0.0.1:9/other"
		_, err := cfg.Exchange(e.ctx, f.code, oauth2.VerifierOption(f.verifier))
		wantOAuthError(t, err, "invalid_grant")
	})
	t.Run("forged code", func(t *testing.T) {
		_, err := e.oauth.Exchange(e.ctx, "not-a-code", oauth2.VerifierOption(oauth2.GenerateVerifier()))
		wantOAuthError(t, err, "invalid_grant")
	})
	t.Run("callback replay", func(t *testing.T) {
		a := e.startAuth(t, nil)
		login := a.submitLogin(t, "alice", "alice-password")
		a.finish(t, login)
		r := get(t, a.browser, login.location.String())
		if r.location == nil || r.location.Query().Get("code") != "" {
			t.Errorf("second callback issued another code: %d %v", r.status, r.location)
		}
	})
}

func TestRefreshSeesNewAttributes(t *testing.T) {
	e := newEnv(t, nil)
	scopes := append(slices.Clone(defaultScopes), oidc.ScopeOfflineAccess)
	tok := e.exchange(t, e.login(t, "alice", "alice-password", scopes))
	if tok.RefreshToken == "" {
		t.Fatal("no refresh token with offline_access")
	}
	_, before := e.verifyIDToken(t, tok)
	if before.Department != "Security Tech" {
		t.Fatalf("department = %q", before.Department)
	}

	if err := e.idp.SetAttribute("alice", "department", "Security Policy"); err != nil {
		t.Fatal(err)
	}
	if err := e.idp.SetAttribute("alice", "title", ""); err != nil {
		t.Fatal(err)
	}
	if err := e.idp.SetGroups("alice", []string{"policy"}); err != nil {
		t.Fatal(err)
	}

	tok2, err := e.oauth.TokenSource(e.ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if tok2.RefreshToken == "" || tok2.RefreshToken == tok.RefreshToken {
		t.Error("refresh token not rotated")
	}
	idt, after := e.verifyIDToken(t, tok2)
	if after.Department != "Security Policy" || after.Title != "" || !slices.Equal(after.Groups, []string{"policy"}) {
		t.Errorf("refreshed claims = %+v, want new department, no title, groups [policy]", after)
	}
	if after.Sid != before.Sid || idt.Subject != "u-alice" {
		t.Errorf("refreshed sid/sub = %q/%q, want %q/u-alice", after.Sid, idt.Subject, before.Sid)
	}
	ui, err := e.provider.UserInfo(e.ctx, oauth2.StaticTokenSource(tok2))
	if err != nil {
		t.Fatal(err)
	}
	var uc idClaims
	if err := ui.Claims(&uc); err != nil {
		t.Fatal(err)
	}
	if uc.Department != "Security Policy" {
		t.Errorf("userinfo department = %q", uc.Department)
	}

	// The rotated-out refresh token is dead.
	_, err = e.oauth.TokenSource(e.ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	wantOAuthError(t, err, "invalid_grant")
	// So is one past its TTL.
	e.skew.Store(int64(defaultRefreshTokenTTL + time.Second))
	_, err = e.oauth.TokenSource(e.ctx, &oauth2.Token{RefreshToken: tok2.RefreshToken}).Token()
	wantOAuthError(t, err, "invalid_grant")
}

func TestSetAttributeErrors(t *testing.T) {
	e := newEnv(t, nil)
	tests := []struct{ user, key string }{
		{"mallory", "department"},
		{"alice", "sub"},
		{"alice", "email"},
		{"alice", ""},
	}
	for _, tt := range tests {
		if err := e.idp.SetAttribute(tt.user, tt.key, "x"); err == nil {
			t.Errorf("SetAttribute(%q, %q) succeeded", tt.user, tt.key)
		}
	}
	if err := e.idp.SetGroups("mallory", nil); err == nil {
		t.Error("SetGroups on unknown user succeeded")
	}
}

func TestRevoke(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.exchange(t, e.login(t, "bob", "bob-password", []string{"openid", "offline_access"}))
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/revoke",
		strings.NewReader(url.Values{"token": {tok.RefreshToken}, "token_type_hint": {"refresh_token"}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(testClientID, testSecret)
	if r := do(t, e.rpClient, req); r.status != http.StatusOK {
		t.Fatalf("revoke: %d %s", r.status, r.body)
	}
	_, err = e.oauth.TokenSource(e.ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	wantOAuthError(t, err, "invalid_grant")
}

func fetchKids(t *testing.T, e *testEnv) []string {
	t.Helper()
	r := get(t, e.rpClient, e.srv.URL+"/keys")
	var set jose.JSONWebKeySet
	if err := json.Unmarshal([]byte(r.body), &set); err != nil {
		t.Fatalf("JWKS %q: %v", r.body, err)
	}
	var kids []string
	for _, k := range set.Keys {
		if k.Algorithm != "RS256" || k.Use != "sig" || !k.IsPublic() {
			t.Errorf("bad JWK %+v", k)
		}
		kids = append(kids, k.KeyID)
	}
	return kids
}

func TestRotateSigningKey(t *testing.T) {
	e := newEnv(t, nil)
	tok1 := e.exchange(t, e.login(t, "alice", "alice-password", nil))
	raw1 := tok1.Extra("id_token").(string)
	kid1 := jwsHeader(t, raw1).KeyID
	if _, err := e.verifier.Verify(e.ctx, raw1); err != nil { // caches the JWKS
		t.Fatal(err)
	}

	if err := e.idp.RotateSigningKey(); err != nil {
		t.Fatal(err)
	}
	tok2 := e.exchange(t, e.login(t, "alice", "alice-password", nil))
	raw2 := tok2.Extra("id_token").(string)
	kid2 := jwsHeader(t, raw2).KeyID
	if kid1 == "" || kid2 == "" || kid1 == kid2 {
		t.Fatalf("kids %q → %q, want two different ones", kid1, kid2)
	}
	for i, raw := range []string{raw1, raw2} {
		if _, err := e.verifier.Verify(e.ctx, raw); err != nil {
			t.Errorf("token %d does not verify after rotation: %v", i+1, err)
		}
	}
	if kids := fetchKids(t, e); !slices.Equal(kids, []string{kid2, kid1}) {
		t.Errorf("JWKS kids = %v, want [%s %s]", kids, kid2, kid1)
	}
	forged, err := e.idp.SignJWT(map[string]any{"iss": e.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if got := jwsHeader(t, forged).KeyID; got != kid2 {
		t.Errorf("SignJWT kid = %q, want current %q", got, kid2)
	}

	// Long after rotation the old key leaves the JWKS.
	e.skew.Store(int64(defaultRefreshTokenTTL + time.Hour))
	if kids := fetchKids(t, e); !slices.Equal(kids, []string{kid2}) {
		t.Errorf("JWKS kids long after rotation = %v, want [%s]", kids, kid2)
	}
}

func TestSignJWT(t *testing.T) {
	e := newEnv(t, nil)
	now := time.Now()
	raw, err := e.idp.SignJWT(map[string]any{
		"iss": e.idp.Issuer(), "sub": "u-alice", "aud": "some-other-app",
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if h := jwsHeader(t, raw); h.ExtraHeaders[jose.HeaderType] != "JWT" || h.KeyID == "" {
		t.Errorf("header = %+v", h)
	}
	// Validly signed, so only the audience check rejects it.
	if _, err := e.verifier.Verify(e.ctx, raw); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Errorf("verify with wrong audience: %v, want audience error", err)
	}
	v := e.provider.Verifier(&oidc.Config{ClientID: "some-other-app"})
	if _, err := v.Verify(e.ctx, raw); err != nil {
		t.Errorf("verify: %v", err)
	}
}

func TestEndSession(t *testing.T) {
	e := newEnv(t, nil)
	b := browser(t)
	scopes := []string{"openid", "offline_access"}
	tok := e.exchange(t, e.login(t, "alice", "alice-password", scopes))
	other := e.exchange(t, e.login(t, "alice", "alice-password", scopes)) // a second session
	rawID := tok.Extra("id_token").(string)

	t.Run("unregistered post_logout_redirect_uri", func(t *testing.T) {
		q := url.Values{"id_token_hint": {rawID}, "post_logout_redirect_uri": {"http://127.0.0.1:9/evil"}}
		if r := get(t, b, e.srv.URL+"/end_session?"+q.Encode()); r.status != http.StatusBadRequest || r.location != nil {
			t.Errorf("got %d %v, want 400", r.status, r.location)
		}
	})
	t.Run("forged id_token_hint", func(t *testing.T) {
		forged := rawID[:len(rawID)-4] + "AAAA"
		q := url.Values{"id_token_hint": {forged}, "post_logout_redirect_uri": {testPostLogout}}
		if r := get(t, b, e.srv.URL+"/end_session?"+q.Encode()); r.status != http.StatusBadRequest {
			t.Errorf("got %d, want 400", r.status)
		}
	})
	t.Run("registered", func(t *testing.T) {
		q := url.Values{"id_token_hint": {rawID}, "post_logout_redirect_uri": {testPostLogout}, "state": {"s1"}}
		r := get(t, b, e.srv.URL+"/end_session?"+q.Encode())
		if r.status != http.StatusFound || r.location == nil || r.location.String() != testPostLogout+"?state=s1" {
			t.Fatalf("got %d %v, want 302 to %s?state=s1", r.status, r.location, testPostLogout)
		}
		_, err := e.oauth.TokenSource(e.ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
		wantOAuthError(t, err, "invalid_grant")
		// Only the hinted session ended.
		if _, err := e.oauth.TokenSource(e.ctx, &oauth2.Token{RefreshToken: other.RefreshToken}).Token(); err != nil {
			t.Errorf("other session's refresh failed: %v", err)
		}
	})
	t.Run("no hint", func(t *testing.T) {
		r := get(t, b, e.srv.URL+"/end_session")
		if r.status != http.StatusFound || r.location == nil || r.location.Path != loggedOutPath {
			t.Fatalf("got %d %v, want 302 to %s", r.status, r.location, loggedOutPath)
		}
		if p := get(t, b, r.location.String()); p.status != http.StatusOK || !strings.Contains(p.body, "signed out") {
			t.Errorf("logged-out page: %d %q", p.status, p.body)
		}
	})
}

type logoutPost struct {
	path, contentType, token string
}

func TestBackChannelLogout(t *testing.T) {
	got := make(chan logoutPost, 10)
	var status atomic.Int32
	status.Store(http.StatusOK)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		got <- logoutPost{r.URL.Path, r.Header.Get("Content-Type"), r.PostFormValue("logout_token")}
		w.WriteHeader(int(status.Load()))
	}))
	t.Cleanup(rcv.Close)
	e := newEnv(t, func(c *Config) {
		c.Clients[0].BackChannelLogoutURI = rcv.URL + "/edge/bcl"
		c.Clients = append(c.Clients,
			Client{ID: "wiki", Secret: "wiki-secret", RedirectURIs: []string{"http://127.0.0.1:9/wiki/cb"}, BackChannelLogoutURI: rcv.URL + "/wiki/bcl"},
			Client{ID: "quiet", Secret: "quiet-secret", RedirectURIs: []string{"http://127.0.0.1:9/quiet/cb"}},
		)
	})
	tok := e.exchange(t, e.login(t, "alice", "alice-password", []string{"openid", "offline_access"}))
	_, c := e.verifyIDToken(t, tok)
	bobTok := e.exchange(t, e.login(t, "bob", "bob-password", []string{"openid", "offline_access"}))

	if err := e.idp.BackChannelLogout(e.ctx, "alice"); err != nil {
		t.Fatalf("BackChannelLogout: %v", err)
	}
	posts := map[string]logoutPost{}
	for len(posts) < 2 {
		select {
		case p := <-got:
			posts[p.path] = p
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d logout posts, want 2", len(posts))
		}
	}
	select {
	case p := <-got:
		t.Fatalf("unexpected extra logout post to %s", p.path)
	default:
	}

	tests := []struct {
		path, clientID, wantSID string
	}{
		{"/edge/bcl", testClientID, c.Sid}, // alice's session at the edge
		{"/wiki/bcl", "wiki", ""},          // no session at the wiki: sub only
	}
	for _, tt := range tests {
		t.Run(tt.clientID, func(t *testing.T) {
			p := posts[tt.path]
			if p.contentType != "application/x-www-form-urlencoded" || p.token == "" {
				t.Fatalf("post = %+v", p)
			}
			if typ := jwsHeader(t, p.token).ExtraHeaders[jose.HeaderType]; typ != "logout+jwt" {
				t.Errorf("typ = %v, want logout+jwt", typ)
			}
			lt, err := e.provider.Verifier(&oidc.Config{ClientID: tt.clientID}).VerifyLogout(e.ctx, p.token)
			if err != nil {
				t.Fatalf("VerifyLogout: %v", err)
			}
			if lt.Subject != "u-alice" || lt.SessionID != tt.wantSID || lt.TokenID == "" {
				t.Errorf("logout token sub=%q sid=%q jti=%q, want u-alice %q", lt.Subject, lt.SessionID, lt.TokenID, tt.wantSID)
			}
			if d := lt.Expiry.Sub(lt.IssuedAt); d != logoutTokenTTL {
				t.Errorf("exp-iat = %v, want %v", d, logoutTokenTTL)
			}
			var raw map[string]any
			if err := lt.Claims(&raw); err != nil {
				t.Fatal(err)
			}
			if _, ok := raw["nonce"]; ok {
				t.Error("logout token has a nonce")
			}
			ev, _ := raw["events"].(map[string]any)
			if m, ok := ev[backChannelEvent].(map[string]any); !ok || len(m) != 0 {
				t.Errorf("events = %v", raw["events"])
			}
		})
	}

	// Alice's session and tokens are gone; Bob's are untouched.
	_, err := e.oauth.TokenSource(e.ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	wantOAuthError(t, err, "invalid_grant")
	if _, err := e.oauth.TokenSource(e.ctx, &oauth2.Token{RefreshToken: bobTok.RefreshToken}).Token(); err != nil {
		t.Errorf("bob's refresh: %v", err)
	}

	t.Run("receiver fails", func(t *testing.T) {
		status.Store(http.StatusInternalServerError)
		t.Cleanup(func() { status.Store(http.StatusOK) })
		err := e.idp.BackChannelLogout(e.ctx, "bob")
		if err == nil || !strings.Contains(err.Error(), "500") {
			t.Errorf("got %v, want an error naming the 500", err)
		}
		for range 2 {
			<-got // both clients were still tried
		}
	})
	t.Run("unknown user", func(t *testing.T) {
		if err := e.idp.BackChannelLogout(e.ctx, "mallory"); err == nil {
			t.Error("no error for unknown user")
		}
	})
}

func TestBackChannelLogoutOverTLS(t *testing.T) {
	got := make(chan string, 1)
	rcv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.PostFormValue("logout_token")
	}))
	t.Cleanup(rcv.Close)
	t.Cleanup(rcv.Client().CloseIdleConnections)

	tests := []struct {
		name    string
		client  *http.Client
		wantErr bool
	}{
		{"built-in client does not trust the receiver", nil, true},
		{"Config.BackChannelClient trusts it", rcv.Client(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) {
				c.Clients[0].BackChannelLogoutURI = rcv.URL + "/bcl"
				c.BackChannelClient = tt.client
			})
			err := e.idp.BackChannelLogout(e.ctx, "alice")
			if (err != nil) != tt.wantErr {
				t.Fatalf("BackChannelLogout: %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			select {
			case tok := <-got:
				if _, err := e.provider.Verifier(&oidc.Config{ClientID: testClientID}).VerifyLogout(e.ctx, tok); err != nil {
					t.Errorf("VerifyLogout: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no logout token received")
			}
		})
	}
}

func TestNewValidation(t *testing.T) {
	good := func() Config {
		return Config{
			Issuer:  "http://127.0.0.1:5556",
			Users:   DemoUsers(),
			Clients: []Client{{ID: "c", Secret: "s", RedirectURIs: []string{"http://127.0.0.1/cb"}}},
		}
	}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr bool
	}{
		{"good", func(*Config) {}, false},
		{"https anywhere", func(c *Config) { c.Issuer = "https://idp.example.com" }, false},
		{"localhost", func(c *Config) { c.Issuer = "http://localhost:5556/" }, false},
		{"http not loopback", func(c *Config) { c.Issuer = "http://idp.example.com" }, true},
		{"issuer path", func(c *Config) { c.Issuer = "http://127.0.0.1:5556/idp" }, true},
		{"issuer query", func(c *Config) { c.Issuer = "http://127.0.0.1:5556?x=1" }, true},
		{"no issuer", func(c *Config) { c.Issuer = "" }, true},
		{"duplicate user", func(c *Config) { c.Users = append(c.Users, DemoUsers()[0]) }, true},
		{"duplicate subject", func(c *Config) { u := DemoUsers()[0]; u.Username = "alice2"; c.Users = append(c.Users, u) }, true},
		{"colon in subject", func(c *Config) { c.Users[0].Subject = "a:b" }, true},
		{"reserved attribute", func(c *Config) { c.Users[0].Attributes["sub"] = "u-admin" }, true},
		{"empty password", func(c *Config) { c.Users[0].Password = "" }, true},
		{"client without redirect", func(c *Config) { c.Clients[0].RedirectURIs = nil }, true},
		{"client without secret", func(c *Config) { c.Clients[0].Secret = "" }, true},
		{"relative redirect", func(c *Config) { c.Clients[0].RedirectURIs = []string{"/cb"} }, true},
		{"bad back-channel URI", func(c *Config) { c.Clients[0].BackChannelLogoutURI = "ftp://x" }, true},
		{"duplicate client", func(c *Config) { c.Clients = append(c.Clients, c.Clients[0]) }, true},
		{"negative TTL", func(c *Config) { c.IDTokenTTL = -time.Second }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good()
			tt.mutate(&cfg)
			p, err := New(cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("New: err = %v, wantErr %v", err, tt.wantErr)
			}
			if p != nil {
				_ = p.Close()
			}
		})
	}
}

func TestNewCopiesUsers(t *testing.T) {
	users := DemoUsers()
	e := newEnv(t, func(c *Config) { c.Users = users })
	if err := e.idp.SetAttribute("alice", "department", "Changed"); err != nil {
		t.Fatal(err)
	}
	if users[0].Attributes["department"] != "Security Tech" {
		t.Error("SetAttribute changed the caller's Config.Users")
	}
	if DemoUsers()[0].Attributes["department"] != "Security Tech" {
		t.Error("DemoUsers shares state")
	}
}

func postClient(t *testing.T, e *testEnv, path string, form url.Values) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(testClientID, testSecret)
	return do(t, e.rpClient, req)
}

func TestIntrospectAndRevokeAccessToken(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.exchange(t, e.login(t, "carol", "carol-password", nil))

	var in struct {
		Active     bool     `json:"active"`
		Sub        string   `json:"sub"`
		ClientID   string   `json:"client_id"`
		Scope      string   `json:"scope"`
		Department string   `json:"department"`
		Groups     []string `json:"groups"`
	}
	r := postClient(t, e, "/oauth/introspect", url.Values{"token": {tok.AccessToken}})
	if err := json.Unmarshal([]byte(r.body), &in); err != nil {
		t.Fatalf("introspect %d %q: %v", r.status, r.body, err)
	}
	if !in.Active || in.Sub != "u-carol" || in.ClientID != testClientID || in.Department != "External" ||
		!slices.Equal(in.Groups, []string{"contractors"}) || !strings.Contains(in.Scope, "groups") {
		t.Errorf("introspection = %+v", in)
	}

	if r := postClient(t, e, "/revoke", url.Values{"token": {tok.AccessToken}, "token_type_hint": {"access_token"}}); r.status != http.StatusOK {
		t.Fatalf("revoke: %d %s", r.status, r.body)
	}
	if _, err := e.provider.UserInfo(e.ctx, oauth2.StaticTokenSource(tok)); err == nil {
		t.Error("userinfo accepted a revoked access token")
	}
	r = postClient(t, e, "/oauth/introspect", url.Values{"token": {tok.AccessToken}})
	in.Active = true
	if err := json.Unmarshal([]byte(r.body), &in); err != nil || in.Active {
		t.Errorf("revoked token introspects as %q (%v)", r.body, err)
	}
}

func TestRefreshNarrowsScopes(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.exchange(t, e.login(t, "alice", "alice-password", append(slices.Clone(defaultScopes), "offline_access")))
	r := postClient(t, e, "/oauth/token", url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken}, "scope": {"openid groups"},
	})
	var resp struct {
		IDToken      string `json:"id_token"`
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal([]byte(r.body), &resp); err != nil || r.status != http.StatusOK {
		t.Fatalf("refresh: %d %q %v", r.status, r.body, err)
	}
	idt, err := e.verifier.Verify(e.ctx, resp.IDToken)
	if err != nil {
		t.Fatal(err)
	}
	var c idClaims
	if err := idt.Claims(&c); err != nil {
		t.Fatal(err)
	}
	if c.Email != "" || c.Department != "" || len(c.Groups) != 2 || c.Sid == "" {
		t.Errorf("narrowed refresh claims = %+v, want groups and sid only", c)
	}
	r = postClient(t, e, "/oauth/token", url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {resp.RefreshToken}, "scope": {"openid admin"},
	})
	if r.status != http.StatusBadRequest || !strings.Contains(r.body, "invalid_scope") {
		t.Errorf("widening refresh: %d %s, want 400 invalid_scope", r.status, r.body)
	}
	// The rotated refresh token keeps the grant's original scope.
	tok2, err := e.oauth.TokenSource(e.ctx, &oauth2.Token{RefreshToken: resp.RefreshToken}).Token()
	if err != nil {
		t.Fatal(err)
	}
	if _, c := e.verifyIDToken(t, tok2); c.Email != "alice@example.com" {
		t.Errorf("full-scope refresh after a narrowed one: email = %q", c.Email)
	}
}

func TestExpiredStateIsSwept(t *testing.T) {
	e := newEnv(t, nil)
	e.exchange(t, e.login(t, "alice", "alice-password", []string{"openid", "offline_access"}))
	e.startAuth(t, nil) // a pending request that expires too

	e.skew.Store(int64(defaultRefreshTokenTTL + time.Hour))
	e.startAuth(t, nil) // creating an auth request sweeps

	st := e.idp.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if n := [5]int{len(st.authRequests), len(st.codes), len(st.accessTokens), len(st.refreshTokens), len(st.sessions)}; n != [5]int{1, 0, 0, 0, 0} {
		t.Errorf("after sweep: authRequests, codes, accessTokens, refreshTokens, sessions = %v, want [1 0 0 0 0]", n)
	}
}
