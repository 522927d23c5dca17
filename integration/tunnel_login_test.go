package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
)

// cliBrowserLogin plays the user's browser for a `ztna tunnel login` link:
// auth host /.ztna/cli/login → IdP /authorize → login form → POST
// credentials → IdP → edge /.ztna/callback, which must send it to the
// CLI's loopback redirect URI with a code and the CLI's state. It returns
// that loopback URL without following it.
func cliBrowserLogin(t *testing.T, env *devenv.Env, loginURL, user, password string) *url.URL {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, env)
	c.Jar = jar
	authHost, idpHost := hostOf(t, env.AuthOrigin), hostOf(t, env.IdP.Issuer())
	lu, err := url.Parse(loginURL)
	if err != nil {
		t.Fatal(err)
	}

	// 1. The auth host starts the normal code flow at the IdP.
	r := get(t, c, loginURL, asNavigation)
	loc := expectRedirect(t, r, http.StatusFound, idpHost, "")
	if q := loc.Query(); q.Get("code_challenge_method") != "S256" || q.Get("state") == "" || q.Get("nonce") == "" {
		t.Fatalf("authorize request lacks PKCE S256, state or nonce: %s", loc)
	}
	// 2. The IdP's login form, after its own redirects.
	page := idpLoginPage(t, c, loc, idpHost)
	action, fields := formFields(t, page.Body)
	target, err := page.Request.URL.Parse(action)
	if err != nil {
		t.Fatal(err)
	}
	f := &loginForm{Client: c, Jar: jar, Action: target.String(), AuthRequestID: fields.Get("authRequestID")}
	// 3. Credentials; the IdP sends the code to the edge.
	r = f.submit(t, user, password)
	loc = expectRedirect(t, r, http.StatusSeeOther, idpHost, "")
	for hop := 0; loc.Host == idpHost; hop++ {
		if hop > 4 {
			t.Fatal("IdP redirected too often after the login")
		}
		r = get(t, c, loc.String(), asNavigation)
		if loc, err = r.Location(); err != nil {
			t.Fatalf("IdP after login: %d %v: %.300s", r.StatusCode, err, r.Body)
		}
	}
	if loc.Host != authHost || loc.Path != authn.PathCallback {
		t.Fatalf("IdP sent the code to %s, want %s%s", loc, authHost, authn.PathCallback)
	}
	// 4. The edge's callback sends the browser to the CLI, not to an app,
	// and gives the browser neither the session ID nor a session cookie.
	r = get(t, c, loc.String(), asNavigation)
	redirectURI := lu.Query().Get("redirect_uri")
	back := expectRedirect(t, r, http.StatusSeeOther, hostOf(t, redirectURI), "/callback")
	if back.Scheme != "http" || back.Query().Get("state") != lu.Query().Get("state") || back.Query().Get("code") == "" {
		t.Fatalf("callback sent the browser to %s", back)
	}
	if setsSession(r) {
		t.Error("a CLI login set a session cookie in the browser")
	}
	au, _ := url.Parse(env.AuthOrigin)
	for _, ck := range jar.Cookies(au) {
		if ck.Name == authn.SessionCookie {
			t.Error("the browser holds a session cookie for the auth host after a CLI login")
		}
	}
	return back
}

// TestTunnelLogin: `ztna tunnel login` (its login function, in-process)
// signs alice in through the browser flow and the real dev IdP; the stored
// session is hers, readable only by her, and its token opens a real tunnel
// to the echo app from her enrolled device.
func TestTunnelLogin(t *testing.T) {
	env := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var loopbackPage *response
	login := &authn.CLILogin{
		Edge:       env.AuthOrigin,
		HTTPClient: newClient(t, env),
		Timeout:    time.Minute,
		OpenBrowser: func(loginURL string) error {
			if !strings.HasPrefix(loginURL, env.AuthOrigin+authn.PathCLILogin+"?") {
				t.Errorf("login URL %s", loginURL)
			}
			back := cliBrowserLogin(t, env, loginURL, "alice", alicePassword)
			loopbackPage = get(t, newClient(t, env), back.String(), asNavigation)
			return nil
		},
	}
	tok, err := login.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if loopbackPage == nil || loopbackPage.StatusCode != http.StatusOK || !strings.Contains(string(loopbackPage.Body), "close this tab") {
		t.Errorf("loopback page %+v", loopbackPage)
	}
	if tok.User != "u-alice" || tok.Email != "alice@example.com" || !tok.ExpiresAt.After(time.Now()) {
		t.Errorf("token answer %+v", tok)
	}

	// What `ztna tunnel login` stores, and what `ztna tunnel up` loads.
	dir := filepath.Join(t.TempDir(), "ztna", "tunnel")
	if err := authn.SaveCLISession(dir, &authn.CLISession{Edge: env.AuthOrigin, Token: tok.Token, User: tok.User, Email: tok.Email, ExpiresAt: tok.ExpiresAt}); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" {
		fi, err := os.Stat(filepath.Join(dir, authn.CLISessionFile))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("session.json: %v, %v; want mode 0600", fi, err)
		}
	}
	raw, err := os.ReadFile(filepath.Join(dir, authn.CLISessionFile))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk map[string]any
	if err := json.Unmarshal(raw, &onDisk); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"edge", "token", "user", "email", "expires_at"} {
		if _, ok := onDisk[k]; !ok {
			t.Errorf("session.json has no %q: %s", k, raw)
		}
	}
	sess, err := authn.LoadCLISession(dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	// The token is a normal edge session: listed and revocable.
	if n, err := env.Edge.Sessions().Matching(ctx, func(s *authn.Session) bool { return s.Identity.Subject == "u-alice" }); err != nil || len(n) != 1 {
		t.Errorf("alice's sessions: %d, %v; want 1", len(n), err)
	}

	// It authenticates a real tunnel from alice's enrolled device.
	expectAliceTunnel(t, ctx, env, sess.Token)
}

// expectAliceTunnel checks that token, a CLI's bearer, opens a tunnel as
// alice from her enrolled device and reaches echo, which greets her and
// echoes a line.
func expectAliceTunnel(t *testing.T, ctx context.Context, env *devenv.Env, token string) {
	t.Helper()
	_, cert := enrollDevice(t, env, "u-alice")
	conn, err := tunnelClient(t, env, token, &cert).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if w := conn.Welcome(); w.User != "u-alice" || w.Email != "alice@example.com" {
		t.Errorf("welcome %+v", w)
	}
	c, err := conn.Dial(ctx, "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if greeting, err := br.ReadString('\n'); err != nil || !strings.Contains(greeting, "alice@example.com") {
		t.Fatalf("greeting %q, %v", greeting, err)
	}
	fmt.Fprintf(c, "logged in from the CLI\n")
	if line, err := br.ReadString('\n'); err != nil || line != "logged in from the CLI\n" {
		t.Fatalf("echo %q, %v", line, err)
	}
}

// TestTunnelLoginAttacks: a replayed code, a wrong verifier and a foreign
// redirect_uri all fail at the real edge.
func TestTunnelLoginAttacks(t *testing.T) {
	env := newEnv(t)
	c := newClient(t, env)
	const redirectURI = "http://127.0.0.1:9/callback" // never followed
	loginLink := func(verifier string) string {
		return env.AuthOrigin + authn.PathCLILogin + "?" + url.Values{
			"redirect_uri": {redirectURI}, "state": {"st"},
			"code_challenge": {oauth2.S256ChallengeFromVerifier(verifier)}, "code_challenge_method": {"S256"},
		}.Encode()
	}
	redeem := func(code, verifier, ru string) *response {
		t.Helper()
		form := url.Values{"code": {code}, "code_verifier": {verifier}, "redirect_uri": {ru}}
		req := newRequest(t, http.MethodPost, env.AuthOrigin+authn.PathCLIToken, strings.NewReader(form.Encode()), asAPI)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return do(t, c, req)
	}
	invalidGrant := func(what string, r *response) {
		t.Helper()
		if r.StatusCode != http.StatusBadRequest || strings.TrimSpace(string(r.Body)) != `{"error":"invalid_grant"}` {
			t.Errorf("%s: %d %s, want 400 invalid_grant", what, r.StatusCode, r.Body)
		}
	}

	// A replayed code.
	verifier := oauth2.GenerateVerifier()
	code := cliBrowserLogin(t, env, loginLink(verifier), "alice", alicePassword).Query().Get("code")
	if r := redeem(code, verifier, redirectURI); r.StatusCode != http.StatusOK {
		t.Fatalf("first exchange: %d %s", r.StatusCode, r.Body)
	}
	invalidGrant("replayed code", redeem(code, verifier, redirectURI))

	// A wrong verifier (a stolen code without the CLI's secret); the code
	// is gone afterwards.
	verifier = oauth2.GenerateVerifier()
	code = cliBrowserLogin(t, env, loginLink(verifier), "alice", alicePassword).Query().Get("code")
	invalidGrant("wrong verifier", redeem(code, oauth2.GenerateVerifier(), redirectURI))
	invalidGrant("right verifier after a wrong one", redeem(code, verifier, redirectURI))

	// A foreign redirect_uri: 400 and no redirect anywhere.
	for _, ru := range []string{"https://evil.example/callback", "http://evil.example:8400/callback", "http://127.0.0.1:9/other", "http://localhost.evil.com:9/callback"} {
		link := strings.Replace(loginLink(verifier), url.QueryEscape(redirectURI), url.QueryEscape(ru), 1)
		r := get(t, c, link, asNavigation)
		if r.StatusCode != http.StatusBadRequest || r.Header.Get("Location") != "" {
			t.Errorf("redirect_uri %s: %d, Location %q; want 400 without a redirect", ru, r.StatusCode, r.Header.Get("Location"))
		}
	}
	// The endpoints are on the auth host only.
	r := get(t, c, env.AppURL("whoami")+authn.PathCLILogin+"?"+strings.SplitN(loginLink(verifier), "?", 2)[1], asNavigation)
	if r.StatusCode != http.StatusNotFound {
		t.Errorf("CLI login on an app host: %d, want 404", r.StatusCode)
	}
}
