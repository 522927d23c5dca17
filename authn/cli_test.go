package authn

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

func TestValidateLoopbackRedirect(t *testing.T) {
	tests := []struct {
		raw string
		ok  bool
	}{
		{"http://127.0.0.1:8400/callback", true},
		{"http://[::1]:8400/callback", true},
		{"http://localhost:8400/callback", true},
		{"http://127.0.0.1:1/callback", true},
		{"http://127.0.0.1:65535/callback", true},

		{"https://127.0.0.1:8400/callback", false},
		{"HTTP://127.0.0.1:8400/callback", false},
		{"http://example.com:8400/callback", false},
		{"http://127.0.0.2:8400/callback", false},
		{"http://10.0.0.1:8400/callback", false},
		{"http://0.0.0.0:8400/callback", false},
		{"http://127.1:8400/callback", false},
		{"http://localhost.evil.com:8400/callback", false},
		{"http://LOCALHOST:8400/callback", false},
		{"http://127.0.0.1/callback", false},
		{"http://127.0.0.1:/callback", false},
		{"http://127.0.0.1:0/callback", false},
		{"http://127.0.0.1:65536/callback", false},
		{"http://127.0.0.1:08400/callback", false},
		{"http://127.0.0.1:+840/callback", false},
		{"http://[::1]/callback", false},
		{"http://::1:8400/callback", false},
		{"http://[::ffff:127.0.0.1]:8400/callback", false},
		{"http://127.0.0.1:8400/other", false},
		{"http://127.0.0.1:8400/callback/", false},
		{"http://127.0.0.1:8400/Callback", false},
		{"http://127.0.0.1:8400", false},
		{"http://127.0.0.1:8400/", false},
		{"http://user@127.0.0.1:8400/callback", false},
		{"http://evil.com@127.0.0.1:8400/callback", false},
		{"http://127.0.0.1:8400@evil.com/callback", false},
		{"http://127.0.0.1:8400/callback?x=1", false},
		{"http://127.0.0.1:8400/callback?", false},
		{"http://127.0.0.1:8400/callback#frag", false},
		{"http://127.0.0.1:8400/callback#", false},
		{"http://127.0.0.1:8400/%63allback", false},
		{"http://127.0.0.1:8400/x/../callback", false},
		{"http://evil.com/x?http://127.0.0.1:8400/callback", false},
		{"//127.0.0.1:8400/callback", false},
		{" http://127.0.0.1:8400/callback", false},
		{"http://127.0.0.1:8400/callback\n", false},
		{"", false},
	}
	for _, tt := range tests {
		got, err := ValidateLoopbackRedirect(tt.raw)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateLoopbackRedirect(%q) = %q, %v; want ok=%v", tt.raw, got, err, tt.ok)
		}
		if err == nil && got != tt.raw {
			t.Errorf("ValidateLoopbackRedirect(%q) = %q, want it unchanged", tt.raw, got)
		}
	}
}

const testCLIRedirect = "http://127.0.0.1:8400/callback"

// cliLoginURL is a native-app login link with the given parameters
// (empty: left out).
func cliLoginURL(redirectURI, challenge, method, state string) string {
	q := url.Values{}
	for k, v := range map[string]string{"redirect_uri": redirectURI, "code_challenge": challenge, "code_challenge_method": method, "state": state} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return testAuthOrigin + PathCLILogin + "?" + q.Encode()
}

func TestCLILoginRejectsBadInput(t *testing.T) {
	e := newSvcEnv(t)
	good := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	tests := []struct {
		name                               string
		redirectURI, challenge, method, st string
	}{
		{"foreign redirect", "https://evil.example/callback", good, "S256", "s"},
		{"non-loopback host", "http://evil.example:8400/callback", good, "S256", "s"},
		{"no redirect", "", good, "S256", "s"},
		{"plain method", testCLIRedirect, good, "plain", "s"},
		{"no method", testCLIRedirect, good, "", "s"},
		{"no challenge", testCLIRedirect, "", "S256", "s"},
		{"short challenge", testCLIRedirect, good[:42], "S256", "s"},
		{"long challenge", testCLIRedirect, strings.Repeat("a", 129), "S256", "s"},
		{"challenge outside base64url", testCLIRedirect, good[:42] + "+", "S256", "s"},
		{"challenge with padding", testCLIRedirect, good + "=", "S256", "s"},
		{"no state", testCLIRedirect, good, "S256", ""},
		{"long state", testCLIRedirect, good, "S256", strings.Repeat("s", 257)},
		{"state with control char", testCLIRedirect, good, "S256", "a\nb"},
		{"state with non-ASCII", testCLIRedirect, good, "S256", "é"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := e.serve(newReq(http.MethodGet, cliLoginURL(tt.redirectURI, tt.challenge, tt.method, tt.st)), true)
			wantHTTPError(t, err, http.StatusBadRequest, "")
			if loc := w.Header().Get("Location"); loc != "" {
				t.Errorf("redirected to %q", loc)
			}
		})
	}
	n := 0
	_ = e.st.List(t.Context(), bucketLoginState, "", func(string, []byte) bool { n++; return true })
	if n != 0 {
		t.Errorf("%d login states stored for refused links", n)
	}
	// The edge of the range is accepted: a 128-character challenge, a
	// 256-character state with spaces.
	w, err := e.serve(newReq(http.MethodGet, cliLoginURL("http://[::1]:1/callback", strings.Repeat("A", 128), "S256", strings.Repeat("~ ", 128))), true)
	if err != nil {
		t.Fatalf("valid link refused: %v", err)
	}
	location(t, w, http.StatusFound)
	// Only on the auth host, and only GET.
	_, err = e.serve(newReq(http.MethodGet, "https://app.example"+PathCLILogin+"?redirect_uri="+url.QueryEscape(testCLIRedirect)), false)
	wantHTTPError(t, err, http.StatusNotFound, "")
	_, err = e.serve(postReq(cliLoginURL(testCLIRedirect, good, "S256", "s"), nil), true)
	wantHTTPError(t, err, http.StatusMethodNotAllowed, "")
}

// cliFlow runs a native-app login through the IdP as alice and returns
// the code and state the browser was sent to the loopback listener with.
func (e *svcEnv) cliFlow(t *testing.T, redirectURI, verifier, state string) (code string) {
	t.Helper()
	authURL, bind := e.startLogin(t, cliLoginURL(redirectURI, oauth2.S256ChallengeFromVerifier(verifier), "S256", state))
	q := e.idpLogin(t, authURL.String(), "alice")
	w, err := e.callback(q, bind)
	if err != nil {
		t.Fatalf("callback: %v", err)
	}
	loc := location(t, w, http.StatusSeeOther)
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != redirectURI {
		t.Fatalf("callback redirected to %s, want %s", loc, redirectURI)
	}
	if loc.Query().Get("state") != state {
		t.Fatalf("state came back as %q, want %q", loc.Query().Get("state"), state)
	}
	if c := responseCookie(w, SessionCookie); c != nil {
		t.Errorf("a CLI login set a session cookie in the browser: %+v", c)
	}
	if w.Header().Get("Referrer-Policy") != "no-referrer" {
		t.Error("no Referrer-Policy: no-referrer on the redirect to the loopback")
	}
	code = loc.Query().Get("code")
	if len(code) != sessionIDLen {
		t.Fatalf("code %q", code)
	}
	return code
}

// redeem posts to the token endpoint and returns the status and body.
func (e *svcEnv) redeem(t *testing.T, form url.Values) (int, []byte) {
	t.Helper()
	w, err := e.serve(postReq(testAuthOrigin+PathCLIToken, form), true)
	if err != nil {
		t.Fatalf("token endpoint: %v", err)
	}
	if w.Header().Get("Cache-Control") != "no-store" || w.Header().Get("Content-Type") != "application/json" {
		t.Errorf("token answer headers %v", w.Header())
	}
	return w.Code, w.Body.Bytes()
}

func wantInvalidGrant(t *testing.T, status int, body []byte) {
	t.Helper()
	if status != http.StatusBadRequest || strings.TrimSpace(string(body)) != `{"error":"invalid_grant"}` {
		t.Fatalf("got %d %s, want 400 {\"error\":\"invalid_grant\"}", status, body)
	}
}

func TestCLILoginFlow(t *testing.T) {
	e := newSvcEnv(t)
	verifier := oauth2.GenerateVerifier()
	code := e.cliFlow(t, testCLIRedirect, verifier, "cli-state ~!")

	form := url.Values{"code": {code}, "code_verifier": {verifier}, "redirect_uri": {testCLIRedirect}}
	status, body := e.redeem(t, form)
	if status != http.StatusOK {
		t.Fatalf("token: %d %s", status, body)
	}
	var tok CLIToken
	if err := json.Unmarshal(body, &tok); err != nil {
		t.Fatal(err)
	}
	if tok.User != "u-alice" || tok.Email != "alice@example.com" || tok.ExpiresAt.Before(time.Now().Add(time.Hour)) {
		t.Errorf("token answer %+v", tok)
	}
	// The token is a normal server-side session: it authenticates, and it
	// is listed (revocable) like a browser session.
	sess, err := e.sessions.Get(t.Context(), tok.Token)
	if err != nil || sess.Identity.Subject != "u-alice" {
		t.Fatalf("the token is not a live session of alice: %v", err)
	}
	if n := e.countSessions(t); n != 1 {
		t.Errorf("%d sessions, want 1", n)
	}
	// The store never held the bearer in a usable form.
	for _, bucket := range []string{bucketSessions, bucketLoginState, bucketCLICode} {
		_ = e.st.List(t.Context(), bucket, "", func(k string, v []byte) bool {
			if strings.Contains(k, tok.Token) || strings.Contains(string(v), tok.Token) {
				t.Errorf("bucket %s holds the raw session ID", bucket)
			}
			return true
		})
	}
	// One-time: the same exchange again is refused.
	status, body = e.redeem(t, form)
	wantInvalidGrant(t, status, body)
	// Revoking the session ends the bearer.
	if err := e.sessions.Revoke(t.Context(), sess.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sessions.Get(t.Context(), tok.Token); !errors.Is(err, ErrNoSession) {
		t.Errorf("revoked CLI session still authenticates: %v", err)
	}
	// The callback's state was one-time too.
	_, err = e.serve(newReq(http.MethodGet, testRedirectURL+"?state=x&code=y"), true)
	wantHTTPError(t, err, http.StatusBadRequest, "")
}

func TestCLITokenRefusals(t *testing.T) {
	e := newSvcEnv(t)
	otherVerifier := oauth2.GenerateVerifier()
	tests := []struct {
		name    string
		advance time.Duration
		mutate  func(url.Values)
	}{
		{"wrong verifier", 0, func(f url.Values) { f.Set("code_verifier", otherVerifier) }},
		{"challenge as verifier", 0, func(f url.Values) { f.Set("code_verifier", oauth2.S256ChallengeFromVerifier(f.Get("code_verifier"))) }},
		{"no verifier", 0, func(f url.Values) { f.Del("code_verifier") }},
		{"wrong redirect_uri", 0, func(f url.Values) { f.Set("redirect_uri", "http://127.0.0.1:8401/callback") }},
		{"no redirect_uri", 0, func(f url.Values) { f.Del("redirect_uri") }},
		{"expired code", cliCodeTTL + time.Second, func(url.Values) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verifier := oauth2.GenerateVerifier()
			code := e.cliFlow(t, testCLIRedirect, verifier, "s")
			good := url.Values{"code": {code}, "code_verifier": {verifier}, "redirect_uri": {testCLIRedirect}}
			bad := url.Values{}
			for k, v := range good {
				bad[k] = v
			}
			tt.mutate(bad)
			e.clock.Advance(tt.advance)
			status, body := e.redeem(t, bad)
			wantInvalidGrant(t, status, body)
			// The code is gone: the right exchange now fails too.
			status, body = e.redeem(t, good)
			wantInvalidGrant(t, status, body)
		})
	}
	// Malformed requests get the same answer.
	for _, form := range []url.Values{
		{},
		{"code": {"short"}},
		{"code": {NewSessionID()}, "code_verifier": {oauth2.GenerateVerifier()}, "redirect_uri": {testCLIRedirect}},
		{"code": {strings.Repeat("a", 5000)}},
	} {
		status, body := e.redeem(t, form)
		wantInvalidGrant(t, status, body)
	}
	// Only POST, only on the auth host.
	_, err := e.serve(newReq(http.MethodGet, testAuthOrigin+PathCLIToken), true)
	wantHTTPError(t, err, http.StatusMethodNotAllowed, "")
	_, err = e.serve(postReq("https://app.example"+PathCLIToken, url.Values{}), false)
	wantHTTPError(t, err, http.StatusNotFound, "")
	// No refusal left a code behind.
	n := 0
	_ = e.st.List(t.Context(), bucketCLICode, "", func(string, []byte) bool { n++; return true })
	if n != 0 {
		t.Errorf("%d CLI codes left in the store", n)
	}
}

// TestCLILoginClient runs the client side against the service: the
// "browser" follows the login URL through the IdP and lands on the
// loopback listener.
func TestCLILoginClient(t *testing.T) {
	e := newSvcEnv(t)
	edge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := e.svc.ServeReserved(w, r, true); err != nil {
			w.WriteHeader(500)
		}
	}))
	defer edge.Close()
	browserGot := make(chan string, 1)
	c := &CLILogin{
		Edge:       edge.URL,
		HTTPClient: edge.Client(),
		Timeout:    time.Minute,
		OpenBrowser: func(loginURL string) error {
			u, err := url.Parse(loginURL)
			if err != nil || u.Path != PathCLILogin {
				t.Errorf("login URL %q", loginURL)
				return errors.New("bad URL")
			}
			redirectURI := u.Query().Get("redirect_uri")
			if _, err := ValidateLoopbackRedirect(redirectURI); err != nil || !strings.HasPrefix(redirectURI, "http://127.0.0.1:") {
				t.Errorf("redirect_uri %q: %v", redirectURI, err)
			}
			// A request to the listener without the state does not end the wait.
			resp, err := http.Get(redirectURI + "?code=" + NewSessionID() + "&state=forged")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("forged callback: %d", resp.StatusCode)
			}
			authURL, bind := e.startLogin(t, testAuthOrigin+u.RequestURI())
			w, err := e.callback(e.idpLogin(t, authURL.String(), "alice"), bind)
			if err != nil {
				return err
			}
			resp, err = http.Get(location(t, w, http.StatusSeeOther).String())
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			browserGot <- string(b)
			return nil
		},
	}
	tok, err := c.Run(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if page := <-browserGot; !strings.Contains(page, "close this tab") {
		t.Errorf("loopback page %q", page)
	}
	if tok.User != "u-alice" {
		t.Errorf("token %+v", tok)
	}
	if _, err := e.sessions.Get(t.Context(), tok.Token); err != nil {
		t.Errorf("token is not a session: %v", err)
	}

	// A login nobody completes ends at the timeout.
	c = &CLILogin{Edge: edge.URL, HTTPClient: edge.Client(), Timeout: 50 * time.Millisecond, OpenBrowser: func(string) error { return nil }}
	if _, err := c.Run(t.Context()); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("abandoned login: %v, want deadline exceeded", err)
	}
}

func TestCLISessionFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ztna", "tunnel")
	now := time.Now()
	if _, err := LoadCLISession(dir, now); !errors.Is(err, ErrNoCLISession) {
		t.Fatalf("no file: %v, want ErrNoCLISession", err)
	}
	want := &CLISession{Edge: "https://auth.example", Token: NewSessionID(), User: "u-alice", Email: "alice@example.com", ExpiresAt: now.Add(time.Hour).UTC().Truncate(time.Second)}
	if err := SaveCLISession(dir, want); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" {
		for path, mode := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, CLISessionFile): 0o600} {
			fi, err := os.Stat(path)
			if err != nil || fi.Mode().Perm() != mode {
				t.Errorf("%s: mode %v, %v; want %v", path, fi.Mode().Perm(), err, mode)
			}
		}
	}
	got, err := LoadCLISession(dir, now)
	if err != nil || *got != *want {
		t.Fatalf("loaded %+v, %v; want %+v", got, err, want)
	}
	if _, err := LoadCLISession(dir, want.ExpiresAt); err == nil || !strings.Contains(err.Error(), "ztna tunnel login") {
		t.Errorf("expired session: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, CLISessionFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCLISession(dir, now); err == nil {
		t.Error("a corrupt session file loaded")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %d entries, want only %s", len(entries), CLISessionFile)
	}
}
