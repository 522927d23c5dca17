package integration

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// grantBrowser is a browser (cookie jar, no redirects followed) on the
// device grant's pages.
type grantBrowser struct {
	c   *http.Client
	jar http.CookieJar
}

func newGrantBrowser(t *testing.T, env *devenv.Env) *grantBrowser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, env)
	c.Jar = jar
	return &grantBrowser{c: c, jar: jar}
}

// idpSignIn follows an authorization request at the IdP to its login form,
// signs in, and returns where the IdP sends the code: the edge's callback.
func (b *grantBrowser) idpSignIn(t *testing.T, env *devenv.Env, authorize *url.URL, user, password string) *url.URL {
	t.Helper()
	idpHost := hostOf(t, env.IdP.Issuer())
	if authorize.Host != idpHost {
		t.Fatalf("sign-in went to %s, want the IdP %s", authorize, idpHost)
	}
	page := idpLoginPage(t, b.c, authorize, idpHost)
	action, fields := formFields(t, page.Body)
	target, err := page.Request.URL.Parse(action)
	if err != nil {
		t.Fatal(err)
	}
	f := &loginForm{Client: b.c, Jar: b.jar, Action: target.String(), AuthRequestID: fields.Get("authRequestID")}
	r := f.submit(t, user, password)
	loc := expectRedirect(t, r, http.StatusSeeOther, idpHost, "")
	for hop := 0; loc.Host == idpHost; hop++ {
		if hop > 4 {
			t.Fatal("IdP redirected too often after the login")
		}
		r = get(t, b.c, loc.String(), asNavigation)
		if loc, err = r.Location(); err != nil {
			t.Fatalf("IdP after login: %d %v: %.300s", r.StatusCode, err, r.Body)
		}
	}
	if loc.Host != hostOf(t, env.AuthOrigin) || loc.Path != authn.PathCallback {
		t.Fatalf("IdP sent the code to %s, want the edge's callback", loc)
	}
	return loc
}

// openPage opens the verification URI the CLI printed. Without a session
// on the auth host, it goes through the normal login as user and back to
// the page. It returns the page.
func (b *grantBrowser) openPage(t *testing.T, env *devenv.Env, pageURL, user, password string) *response {
	t.Helper()
	authHost := hostOf(t, env.AuthOrigin)
	r := get(t, b.c, pageURL, asNavigation)
	if r.StatusCode == http.StatusFound {
		loc := expectRedirect(t, r, http.StatusFound, authHost, authn.PathLogin)
		if rd := loc.Query().Get("rd"); rd != pageURL {
			t.Fatalf("login returns to %q, want %q", rd, pageURL)
		}
		r = get(t, b.c, loc.String(), asNavigation)
		callback := b.idpSignIn(t, env, expectRedirect(t, r, http.StatusFound, hostOf(t, env.IdP.Issuer()), ""), user, password)
		r = get(t, b.c, callback.String(), asNavigation)
		back := expectRedirect(t, r, http.StatusFound, authHost, authn.PathCLIDevice)
		if back.String() != pageURL {
			t.Fatalf("login came back to %s, want %s", back, pageURL)
		}
		r = get(t, b.c, back.String(), asNavigation)
	}
	return r
}

// decide posts the page's form with the decision; approving signs in at
// the IdP again as idpUser (the CLI's own session). It returns the last
// answer: the callback's page, or the decision's.
func (b *grantBrowser) decide(t *testing.T, env *devenv.Env, page *response, decision, idpUser, password string) *response {
	t.Helper()
	action, fields := formFields(t, page.Body)
	if action != authn.PathCLIDeviceDecide || fields.Get("csrf") == "" || fields.Get("user_code") == "" {
		t.Fatalf("decision form: action %q, fields %v", action, fields)
	}
	fields.Set("decision", decision)
	r := b.post(t, env, fields)
	if decision != "approve" || r.StatusCode != http.StatusFound {
		return r
	}
	callback := b.idpSignIn(t, env, expectRedirect(t, r, http.StatusFound, hostOf(t, env.IdP.Issuer()), ""), idpUser, password)
	return get(t, b.c, callback.String(), asNavigation)
}

func (b *grantBrowser) post(t *testing.T, env *devenv.Env, form url.Values) *response {
	t.Helper()
	req := newRequest(t, http.MethodPost, env.AuthOrigin+authn.PathCLIDeviceDecide, strings.NewReader(form.Encode()), asNavigation)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(t, b.c, req)
}

// startGrant is the CLI's start of a device grant.
func startGrant(t *testing.T, env *devenv.Env, c *http.Client) authn.DeviceGrantStart {
	t.Helper()
	form := url.Values{"client": {"ztna-cli/it"}, "host": {"it-box"}}
	req := newRequest(t, http.MethodPost, env.AuthOrigin+authn.PathCLIDevice, strings.NewReader(form.Encode()), asAPI)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r := do(t, c, req)
	if r.StatusCode != http.StatusOK {
		t.Fatalf("start: %d %s", r.StatusCode, r.Body)
	}
	var st authn.DeviceGrantStart
	if err := json.Unmarshal(r.Body, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// pollGrant is one device-code poll: the status and the "error" (or "").
func pollGrant(t *testing.T, env *devenv.Env, c *http.Client, deviceCode string) (int, string, *authn.CLIToken) {
	t.Helper()
	form := url.Values{"grant_type": {authn.DeviceCodeGrantType}, "device_code": {deviceCode}}
	req := newRequest(t, http.MethodPost, env.AuthOrigin+authn.PathCLIToken, strings.NewReader(form.Encode()), asAPI)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r := do(t, c, req)
	if r.StatusCode == http.StatusOK {
		var tok authn.CLIToken
		if err := json.Unmarshal(r.Body, &tok); err != nil {
			t.Fatal(err)
		}
		return r.StatusCode, "", &tok
	}
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("poll: %d %q", r.StatusCode, r.Body)
	}
	return r.StatusCode, e.Error, nil
}

func expectPoll(t *testing.T, env *devenv.Env, c *http.Client, deviceCode, want string) {
	t.Helper()
	if status, got, _ := pollGrant(t, env, c, deviceCode); status != http.StatusBadRequest || got != want {
		t.Fatalf("poll: %d %q, want 400 %q", status, got, want)
	}
}

// TestTunnelDeviceGrant: `ztna tunnel login --device`'s client against the
// real edge and dev IdP. A browser elsewhere opens the printed address,
// signs in, sees the code, who asks and the warning, and approves (signing
// in at the IdP once more, for the CLI's own session); the client's poll
// gets the session, which opens a real tunnel from alice's device.
func TestTunnelDeviceGrant(t *testing.T) {
	env := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	browser := newGrantBrowser(t, env)
	var approved *response
	login := &authn.CLIDeviceLogin{
		Edge: env.AuthOrigin, HTTPClient: newClient(t, env), Client: "ztna-cli/it", Host: "alice-box",
		Prompt: func(p authn.DeviceGrantPrompt) {
			if p.VerificationURI != env.AuthOrigin+authn.PathCLIDevice || !regexp.MustCompile(`^[B-Z]{4}-[B-Z]{4}$`).MatchString(p.UserCode) {
				t.Errorf("prompt %+v", p)
			}
			page := browser.openPage(t, env, p.VerificationURIComplete, "alice", alicePassword)
			if page.StatusCode != http.StatusOK {
				t.Fatalf("page: %d %.300s", page.StatusCode, page.Body)
			}
			for _, want := range []string{p.UserCode, "ztna-cli/it", "alice-box", "alice@example.com", "only approve if you started this in your terminal"} {
				if !strings.Contains(strings.ToLower(string(page.Body)), strings.ToLower(want)) {
					t.Errorf("page lacks %q", want)
				}
			}
			if csp := page.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "form-action 'self' "+env.AuthOrigin+" "+env.IdP.Issuer()) {
				t.Errorf("page CSP %q does not let Approve redirect to the IdP", csp)
			}
			approved = browser.decide(t, env, page, "approve", "alice", alicePassword)
		},
	}
	tok, err := login.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if approved == nil || approved.StatusCode != http.StatusOK || !strings.Contains(string(approved.Body), "signed in as alice@example.com") {
		t.Fatalf("after approval: %+v", approved)
	}
	if setsSession(approved) {
		t.Error("the approval set a session cookie in the browser")
	}
	if tok.User != "u-alice" || tok.Email != "alice@example.com" || !tok.ExpiresAt.After(time.Now()) {
		t.Errorf("token %+v", tok)
	}
	// A session of the CLI's own, beside the browser's.
	browserSession := ""
	for _, ck := range browser.jar.Cookies(&url.URL{Scheme: "https", Host: hostOf(t, env.AuthOrigin)}) {
		if ck.Name == authn.SessionCookie {
			browserSession = ck.Value
		}
	}
	if browserSession == "" || browserSession == tok.Token {
		t.Errorf("the CLI got the browser's session (or the browser has none)")
	}
	if n, err := env.Edge.Sessions().Matching(ctx, func(s *authn.Session) bool { return s.Identity.Subject == "u-alice" }); err != nil || len(n) != 2 {
		t.Errorf("alice's sessions: %d, %v; want 2 (browser and CLI)", len(n), err)
	}

	// The token is a tunnel bearer.
	expectAliceTunnel(t, ctx, env, tok.Token)
	// Nothing secret in the logs.
	if logs := processLog(t, env).String(); strings.Contains(logs, tok.Token) {
		t.Error("the process log holds the CLI's token")
	}
}

// TestTunnelDeviceGrantRefusals: the poll answers (pending, slow_down,
// denied, replayed), CSRF on the decision, a user-code brute force, and the
// endpoints living on the auth host only.
func TestTunnelDeviceGrantRefusals(t *testing.T) {
	env := newEnv(t)
	cli := newClient(t, env)

	// Pending, then polled too soon. (Expiry needs a clock the dev system
	// does not expose: authn's TestDeviceTokenErrors covers it, with the
	// real dev IdP and a test clock.)
	st := startGrant(t, env, cli)
	expectPoll(t, env, cli, st.DeviceCode, "authorization_pending")
	expectPoll(t, env, cli, st.DeviceCode, "slow_down")

	// CSRF: the decision without the page's token, or with another one.
	st = startGrant(t, env, cli)
	alice := newGrantBrowser(t, env)
	page := alice.openPage(t, env, st.VerificationURIComplete, "alice", alicePassword)
	for _, csrf := range []string{"", "0123456789abcdef0123456789abcdef"} {
		form := url.Values{"user_code": {st.UserCode}, "decision": {"approve"}}
		if csrf != "" {
			form.Set("csrf", csrf)
		}
		if r := alice.post(t, env, form); r.StatusCode != http.StatusForbidden || r.Header.Get("Location") != "" {
			t.Errorf("decision with csrf %q: %d, Location %q; want 403", csrf, r.StatusCode, r.Header.Get("Location"))
		}
	}
	// Without the browser's session at all: 401, never a decision.
	_, fields := formFields(t, page.Body)
	fields.Set("decision", "approve")
	req := newRequest(t, http.MethodPost, env.AuthOrigin+authn.PathCLIDeviceDecide, strings.NewReader(fields.Encode()), asNavigation)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if r := do(t, newClient(t, env), req); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("decision without a session: %d, want 401", r.StatusCode)
	}

	// Denied.
	if r := alice.decide(t, env, page, "deny", "", ""); r.StatusCode != http.StatusOK || !strings.Contains(string(r.Body), "refused") {
		t.Fatalf("deny: %d %.300s", r.StatusCode, r.Body)
	}
	expectPoll(t, env, cli, st.DeviceCode, "access_denied")

	// Approved, redeemed once; the replay is refused.
	st = startGrant(t, env, cli)
	page = alice.openPage(t, env, st.VerificationURIComplete, "alice", alicePassword)
	if r := alice.decide(t, env, page, "approve", "alice", alicePassword); r.StatusCode != http.StatusOK {
		t.Fatalf("approve: %d %.300s", r.StatusCode, r.Body)
	}
	if status, got, tok := pollGrant(t, env, cli, st.DeviceCode); status != http.StatusOK || tok.User != "u-alice" {
		t.Fatalf("first redemption: %d %q", status, got)
	}
	expectPoll(t, env, cli, st.DeviceCode, "invalid_grant")

	// Approve as alice, sign in at the IdP as bob: refused.
	st = startGrant(t, env, cli)
	page = alice.openPage(t, env, st.VerificationURIComplete, "alice", alicePassword)
	if r := alice.decide(t, env, page, "approve", "bob", "bob-password"); r.StatusCode != http.StatusForbidden {
		t.Errorf("approval completed by another user: %d, want 403", r.StatusCode)
	}
	expectPoll(t, env, cli, st.DeviceCode, "authorization_pending")

	// Brute force: a few wrong codes, then even the right one is refused.
	mallory := newGrantBrowser(t, env)
	guess := env.AuthOrigin + authn.PathCLIDevice + "?user_code="
	if r := mallory.openPage(t, env, guess+"BCDF-BCDF", "bob", "bob-password"); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("wrong code: %d", r.StatusCode)
	}
	refused := 0
	for _, code := range []string{"BCDF-BCDG", "BCDF-BCDH", "BCDF-BCDJ", "BCDF-BCDK", st.UserCode} {
		r := get(t, mallory.c, guess+code, asNavigation)
		if r.StatusCode == http.StatusTooManyRequests {
			refused++
		} else if r.StatusCode != http.StatusBadRequest {
			t.Fatalf("guess %s: %d", code, r.StatusCode)
		}
	}
	if refused == 0 {
		t.Fatal("guessing user codes was never locked out")
	}
	if r := get(t, mallory.c, guess+st.UserCode, asNavigation); r.StatusCode != http.StatusTooManyRequests {
		t.Errorf("the right code after the lockout: %d, want 429", r.StatusCode)
	}
	// Alice is not locked out by bob's guesses.
	if r := alice.openPage(t, env, st.VerificationURIComplete, "alice", alicePassword); r.StatusCode != http.StatusOK {
		t.Errorf("alice after bob's lockout: %d", r.StatusCode)
	}

	// Auth host only.
	if r := get(t, alice.c, env.AppURL("whoami")+authn.PathCLIDevice+"?user_code="+st.UserCode, asNavigation); r.StatusCode != http.StatusNotFound {
		t.Errorf("device page on an app host: %d, want 404", r.StatusCode)
	}
}

// TestTunnelCLILogoutEndpoint: POST /.ztna/cli/logout with the bearer ends
// the session at the real edge and cuts its live tunnel; a cookie alone
// ends nothing.
func TestTunnelCLILogoutEndpoint(t *testing.T) {
	env := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	token := sessionCookie(t, env, alice, "whoami")
	_, cert := enrollDevice(t, env, "u-alice")
	conn, err := tunnelClient(t, env, token, &cert).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	logout := func(authz, cookie string) int {
		req := newRequest(t, http.MethodPost, env.AuthOrigin+authn.PathCLILogout, nil, asAPI)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		if cookie != "" {
			req.AddCookie(&http.Cookie{Name: authn.SessionCookie, Value: cookie})
		}
		return do(t, newClient(t, env), req).StatusCode
	}
	if got := logout("", token); got != http.StatusUnauthorized {
		t.Errorf("cookie-only logout: %d, want 401", got)
	}
	if w := whoamiAs(t, alice, env, "whoami", "/"); w.Claims == nil {
		t.Fatal("the cookie-only logout ended the session")
	}
	start := time.Now()
	if got := logout("Bearer "+token, ""); got != http.StatusNoContent {
		t.Fatalf("logout: %d, want 204", got)
	}
	select {
	case <-conn.Done():
		if d := time.Since(start); d > time.Second {
			t.Errorf("the tunnel closed %v after the logout, want within 1s", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the live tunnel survived the logout")
	}
	_, err = tunnelClient(t, env, token, &cert).Connect(ctx)
	if ae := new(tunnel.AuthError); !errors.As(err, &ae) || ae.Code != "unauthenticated" {
		t.Fatalf("connect after logout: %v, want unauthenticated", err)
	}
	if got := logout("Bearer "+token, ""); got != http.StatusNoContent {
		t.Errorf("second logout: %d, want 204", got)
	}
}
