package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/internal/ratelimit"
	"github.com/ztna-dev/ztna/internal/usercode"
)

// grantHandler is the auth host in-process, with errors rendered the way
// package web renders them for API clients: status and {"error": code}.
func (e *svcEnv) grantHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := e.svc.ServeReserved(w, r, true); err != nil {
			he := httperr.As(err)
			writeJSON(w, he.Status, map[string]string{"error": he.Code})
		}
	})
}

// handlerTransport sends every request to h in-process.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	w := httptest.NewRecorder()
	t.h.ServeHTTP(w, r)
	return w.Result(), nil
}

func (e *svcEnv) startGrant(t *testing.T, form url.Values) DeviceGrantStart {
	t.Helper()
	w, err := e.serve(postReq(testAuthOrigin+PathCLIDevice, form), true)
	if err != nil || w.Code != http.StatusOK {
		t.Fatalf("start: %d %s, %v", w.Code, w.Body, err)
	}
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Error("start answer without Cache-Control: no-store")
	}
	var st DeviceGrantStart
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func (e *svcEnv) newGrant(t *testing.T) DeviceGrantStart {
	t.Helper()
	return e.startGrant(t, url.Values{"client": {"ztna-cli/test"}, "host": {"alice-laptop"}})
}

// poll is one device-code poll: the status, the RFC 8628 error ("" on
// success) and the token.
func (e *svcEnv) poll(t *testing.T, deviceCode string) (int, string, *CLIToken) {
	t.Helper()
	status, body := e.redeem(t, url.Values{"grant_type": {DeviceCodeGrantType}, "device_code": {deviceCode}})
	if status == http.StatusOK {
		tok, err := parseCLIToken(body)
		if err != nil {
			t.Fatal(err)
		}
		return status, "", tok
	}
	var er struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &er); err != nil {
		t.Fatalf("poll answer %d %q: %v", status, body, err)
	}
	return status, er.Error, nil
}

func (e *svcEnv) wantPoll(t *testing.T, deviceCode, want string) {
	t.Helper()
	status, got, _ := e.poll(t, deviceCode)
	if status != http.StatusBadRequest || got != want {
		t.Fatalf("poll: %d %q, want 400 %q", status, got, want)
	}
	e.clock.Advance(time.Minute) // the next poll is not early
}

func (e *svcEnv) grantPage(cookie *http.Cookie, userCode string) (*httptest.ResponseRecorder, error) {
	target := testAuthOrigin + PathCLIDevice
	if userCode != "" {
		target += "?user_code=" + url.QueryEscape(userCode)
	}
	return e.serve(newReq(http.MethodGet, target, cookie), true)
}

func (e *svcEnv) decide(cookie *http.Cookie, form url.Values) (*httptest.ResponseRecorder, error) {
	return e.serve(postReq(testAuthOrigin+PathCLIDeviceDecide, form, cookie), true)
}

// approve presses Approve as the signed-in browser b and signs in at the
// IdP as idpUser; it returns the callback's answer.
func (e *svcEnv) approve(t *testing.T, b signedIn, userCode, idpUser string) (*httptest.ResponseRecorder, error) {
	t.Helper()
	w, err := e.decide(b.authCookie, url.Values{"csrf": {CSRFToken(b.session)}, "user_code": {userCode}, "decision": {"approve"}})
	if err != nil {
		t.Fatalf("approve: %v", err)
	}
	authURL := location(t, w, http.StatusFound)
	bind := hostCookie(t, w, bindCookie)
	return e.callback(e.idpLogin(t, authURL.String(), idpUser), bind)
}

var csrfFieldRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

func TestDeviceGrantFlow(t *testing.T) {
	e := newSvcEnv(t)
	st := e.newGrant(t)
	if _, ok := ParseSessionID(st.DeviceCode); !ok {
		t.Errorf("device code %q is not 32 random bytes", st.DeviceCode)
	}
	if !regexp.MustCompile(`^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$`).MatchString(st.UserCode) {
		t.Errorf("user code %q", st.UserCode)
	}
	if st.VerificationURI != testAuthOrigin+PathCLIDevice || st.VerificationURIComplete != st.VerificationURI+"?user_code="+st.UserCode ||
		st.ExpiresIn != 600 || st.Interval != 5 {
		t.Errorf("start answer %+v", st)
	}

	// Not signed in: the normal login, back to this page with the code.
	w, err := e.grantPage(nil, strings.ToLower(st.UserCode))
	if err != nil {
		t.Fatal(err)
	}
	loc := location(t, w, http.StatusFound)
	if loc.Path != PathLogin || loc.Query().Get("rd") != st.VerificationURIComplete {
		t.Fatalf("unauthenticated page redirects to %s", loc)
	}
	authURL, _ := e.startLogin(t, loc.String())
	if authURL.Host != hostOf(e.cfg.Issuer) {
		t.Fatalf("login for the page went to %s", authURL)
	}

	e.wantPoll(t, st.DeviceCode, "authorization_pending")

	// Signed in: the page shows the code, who asks and the warning.
	alice := e.signIn(t, "alice", "https://app.example/")
	w, err = e.grantPage(alice.authCookie, strings.ToLower(strings.ReplaceAll(st.UserCode, "-", "")))
	if err != nil || w.Code != http.StatusOK {
		t.Fatalf("page: %d, %v", w.Code, err)
	}
	page := w.Body.String()
	for _, want := range []string{st.UserCode, "ztna-cli/test", "alice-laptop", "alice@example.com", "only approve if you started this in your terminal",
		`action="/.ztna/cli/device/decide"`, `value="approve"`, `value="deny"`} {
		if !strings.Contains(strings.ToLower(page), strings.ToLower(want)) {
			t.Errorf("page lacks %q:\n%s", want, page)
		}
	}
	if m := csrfFieldRE.FindStringSubmatch(page); m == nil || m[1] != CSRFToken(alice.session) {
		t.Errorf("page has no CSRF token of the session")
	}
	csp := w.Header().Get("Content-Security-Policy")
	if !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "form-action 'self' "+testAuthOrigin+" "+e.srv.URL+";") {
		t.Errorf("CSP %q: want frame-ancestors 'none' and the IdP in form-action", csp)
	}

	// Approve: the IdP signs alice in again, for the CLI's own session; the
	// browser gets no cookie and keeps its own session.
	w, err = e.approve(t, alice, st.UserCode, "alice")
	if err != nil || w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "signed in as alice@example.com") {
		t.Fatalf("callback: %d %s, %v", w.Code, w.Body, err)
	}
	if c := responseCookie(w, SessionCookie); c != nil {
		t.Errorf("the approval set a session cookie: %+v", c)
	}
	status, errCode, tok := e.poll(t, st.DeviceCode)
	if status != http.StatusOK || tok == nil {
		t.Fatalf("poll after approval: %d %q", status, errCode)
	}
	if tok.User != "u-alice" || tok.Email != "alice@example.com" || tok.Token == alice.session.ID {
		t.Errorf("token %+v: want alice's own new session", tok)
	}
	sess, err := e.sessions.Get(t.Context(), tok.Token)
	if err != nil || sess.RefreshToken == "" || sess.RefreshToken == alice.session.RefreshToken {
		t.Fatalf("the CLI's session %v: want its own IdP tokens", err)
	}
	if _, err := e.sessions.Get(t.Context(), alice.session.ID); err != nil {
		t.Errorf("the browser's session ended: %v", err)
	}
	// The store never held the bearer or the device code in a usable form.
	for _, bucket := range []string{bucketSessions, bucketLoginState, bucketCLIGrant, bucketCLIGrantCode, bucketCLIGrantPoll, bucketCLIGrantFail} {
		_ = e.st.List(t.Context(), bucket, "", func(k string, v []byte) bool {
			for _, secret := range []string{tok.Token, st.DeviceCode} {
				if strings.Contains(k, secret) || strings.Contains(string(v), secret) {
					t.Errorf("bucket %s holds a raw secret", bucket)
				}
			}
			return true
		})
	}
	// One-time.
	e.clock.Advance(time.Minute)
	e.wantPoll(t, st.DeviceCode, "invalid_grant")
}

// TestDeviceTokenErrors: every answer of the token endpoint to a
// device-code poll that is not a token.
func TestDeviceTokenErrors(t *testing.T) {
	e := newSvcEnv(t)
	alice := e.signIn(t, "alice", "https://app.example/")
	tests := []struct {
		name string
		// prepare returns the device code to poll (after any setup).
		prepare func(t *testing.T) string
		want    string
	}{
		{"pending", func(t *testing.T) string { return e.newGrant(t).DeviceCode }, "authorization_pending"},
		{"polled too soon", func(t *testing.T) string {
			st := e.newGrant(t)
			e.poll(t, st.DeviceCode)
			e.clock.Advance(DeviceGrantInterval - time.Second)
			return st.DeviceCode
		}, "slow_down"},
		{"on time after a slow_down is too soon", func(t *testing.T) string {
			st := e.newGrant(t)
			e.poll(t, st.DeviceCode)
			e.poll(t, st.DeviceCode) // slow_down: the interval is now 10 s
			e.clock.Advance(DeviceGrantInterval + time.Second)
			return st.DeviceCode
		}, "slow_down"},
		{"denied", func(t *testing.T) string {
			st := e.newGrant(t)
			w, err := e.decide(alice.authCookie, url.Values{"csrf": {CSRFToken(alice.session)}, "user_code": {st.UserCode}, "decision": {"deny"}})
			if err != nil || !strings.Contains(w.Body.String(), "refused") {
				t.Fatalf("deny: %d %s, %v", w.Code, w.Body, err)
			}
			return st.DeviceCode
		}, "access_denied"},
		{"expired", func(t *testing.T) string {
			st := e.newGrant(t)
			e.clock.Advance(DeviceGrantTTL)
			return st.DeviceCode
		}, "expired_token"},
		{"approved, then expired", func(t *testing.T) string {
			st := e.newGrant(t)
			if w, err := e.approve(t, alice, st.UserCode, "alice"); err != nil || w.Code != http.StatusOK {
				t.Fatalf("approve: %v", err)
			}
			before := len(e.rev.list())
			e.clock.Advance(DeviceGrantTTL)
			t.Cleanup(func() {
				// The session nobody collected was ended.
				if len(e.rev.list()) != before+1 {
					t.Errorf("the uncollected session of an expired grant was not revoked")
				}
			})
			return st.DeviceCode
		}, "expired_token"},
		{"replayed", func(t *testing.T) string {
			st := e.newGrant(t)
			if w, err := e.approve(t, alice, st.UserCode, "alice"); err != nil || w.Code != http.StatusOK {
				t.Fatalf("approve: %v", err)
			}
			if status, _, _ := e.poll(t, st.DeviceCode); status != http.StatusOK {
				t.Fatalf("first redemption: %d", status)
			}
			e.clock.Advance(time.Minute)
			return st.DeviceCode
		}, "invalid_grant"},
		{"session revoked before redemption", func(t *testing.T) string {
			st := e.newGrant(t)
			if w, err := e.approve(t, alice, st.UserCode, "alice"); err != nil || w.Code != http.StatusOK {
				t.Fatalf("approve: %v", err)
			}
			// The only other session of alice is the browser's.
			if _, err := e.sessions.RevokeMatching(t.Context(), func(s *Session) bool { return s.Key != alice.session.Key }); err != nil {
				t.Fatal(err)
			}
			return st.DeviceCode
		}, "invalid_grant"},
		{"unknown code", func(*testing.T) string { return NewSessionID() }, "invalid_grant"},
		{"malformed code", func(*testing.T) string { return "short" }, "invalid_grant"},
		{"oversized code", func(*testing.T) string { return strings.Repeat("A", 3000) }, "invalid_grant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code := tt.prepare(t)
			status, got, _ := e.poll(t, code)
			if status != http.StatusBadRequest || got != tt.want {
				t.Errorf("poll: %d %q, want 400 %q", status, got, tt.want)
			}
		})
	}
	status, body := e.redeem(t, url.Values{"grant_type": {"password"}, "username": {"alice"}})
	if status != http.StatusBadRequest || !strings.Contains(string(body), "unsupported_grant_type") {
		t.Errorf("unknown grant_type: %d %s", status, body)
	}
	status, body = e.redeem(t, url.Values{"grant_type": {DeviceCodeGrantType}, "device_code": {strings.Repeat("A", maxCLITokenForm)}})
	wantInvalidGrant(t, status, body)
}

func TestDeviceGrantStartRefusals(t *testing.T) {
	e := newSvcEnv(t)
	for _, form := range []url.Values{
		{},
		{"client": {"curl/8"}},
		{"client": {"ztna-cli/" + strings.Repeat("1", maxGrantClientLen)}},
		{"client": {"ztna-cli/1\n"}},
		{"client": {"ztna-cli/1"}, "host": {strings.Repeat("h", maxGrantHostLen+1)}},
		{"client": {"ztna-cli/1"}, "host": {"evil\u202ehost"}},
		{"client": {"ztna-cli/1"}, "host": {"a\x00b"}},
		{"client": {"ztna-cli/1"}, "pad": {strings.Repeat("x", maxDeviceForm)}},
	} {
		_, err := e.serve(postReq(testAuthOrigin+PathCLIDevice, form), true)
		wantHTTPError(t, err, http.StatusBadRequest, "")
	}
	_, err := e.serve(newReq(http.MethodPut, testAuthOrigin+PathCLIDevice), true)
	wantHTTPError(t, err, http.StatusMethodNotAllowed, "")
	_, err = e.serve(postReq("https://app.example"+PathCLIDevice, url.Values{"client": {"ztna-cli/1"}}), false)
	wantHTTPError(t, err, http.StatusNotFound, "")

	// Bounded: with maxDeviceGrants outstanding, starts are refused.
	for i := range maxDeviceGrants - 1 {
		if err := e.st.Put(t.Context(), bucketCLIGrant, fmt.Sprintf("filler-%04d", i), []byte("{}"), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	e.newGrant(t) // the last one fits
	w, err := e.serve(postReq(testAuthOrigin+PathCLIDevice, url.Values{"client": {"ztna-cli/1"}}), true)
	wantHTTPError(t, err, http.StatusServiceUnavailable, "temporarily_unavailable")
	if w.Header().Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
}

func TestDeviceGrantDecisionRefusals(t *testing.T) {
	e := newSvcEnv(t)
	alice := e.signIn(t, "alice", "https://app.example/")
	st := e.newGrant(t)
	csrf := CSRFToken(alice.session)

	// Not signed in: 401 with the way to sign in.
	_, err := e.decide(nil, url.Values{"csrf": {csrf}, "user_code": {st.UserCode}, "decision": {"approve"}})
	if he := wantHTTPError(t, err, http.StatusUnauthorized, "unauthenticated"); !strings.HasPrefix(he.LoginURL, testAuthOrigin+PathLogin+"?rd=") {
		t.Errorf("login URL %q", he.LoginURL)
	}
	// CSRF: missing, wrong, another session's.
	bob := e.signIn(t, "bob", "https://app.example/")
	for _, token := range []string{"", "00", CSRFToken(bob.session)} {
		_, err := e.decide(alice.authCookie, url.Values{"csrf": {token}, "user_code": {st.UserCode}, "decision": {"approve"}})
		wantHTTPError(t, err, http.StatusForbidden, "csrf")
	}
	_, err = e.decide(alice.authCookie, url.Values{"csrf": {csrf}, "user_code": {st.UserCode}, "decision": {"maybe"}})
	wantHTTPError(t, err, http.StatusBadRequest, "")
	_, err = e.serve(newReq(http.MethodGet, testAuthOrigin+PathCLIDeviceDecide, alice.authCookie), true)
	wantHTTPError(t, err, http.StatusMethodNotAllowed, "")
	e.clock.Advance(time.Minute)
	e.wantPoll(t, st.DeviceCode, "authorization_pending")

	// Alice approves, but bob signs in at the IdP: refused, bob's new
	// session ended, the grant still waiting for alice.
	before := e.countSessions(t)
	_, err = e.approve(t, alice, st.UserCode, "bob")
	wantHTTPError(t, err, http.StatusForbidden, "wrong_user")
	if n := e.countSessions(t); n != before {
		t.Errorf("%d sessions after a refused approval, want %d", n, before)
	}
	e.wantPoll(t, st.DeviceCode, "authorization_pending")

	// A code decides once.
	if w, err := e.approve(t, alice, st.UserCode, "alice"); err != nil || w.Code != http.StatusOK {
		t.Fatalf("approve: %v", err)
	}
	_, err = e.decide(alice.authCookie, url.Values{"csrf": {csrf}, "user_code": {st.UserCode}, "decision": {"deny"}})
	wantHTTPError(t, err, http.StatusBadRequest, "")
	_, err = e.grantPage(alice.authCookie, st.UserCode)
	wantHTTPError(t, err, http.StatusBadRequest, "")

	// Two approvals in flight: the second callback finds the code gone and
	// its session is ended.
	st = e.newGrant(t)
	w1, err := e.decide(alice.authCookie, url.Values{"csrf": {csrf}, "user_code": {st.UserCode}, "decision": {"approve"}})
	if err != nil {
		t.Fatal(err)
	}
	w2, err := e.decide(alice.authCookie, url.Values{"csrf": {csrf}, "user_code": {st.UserCode}, "decision": {"approve"}})
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range []*httptest.ResponseRecorder{w1, w2} {
		before := e.countSessions(t)
		w, err := e.callback(e.idpLogin(t, location(t, w, http.StatusFound).String(), "alice"), hostCookie(t, w, bindCookie))
		switch {
		case i == 0 && (err != nil || w.Code != http.StatusOK):
			t.Fatalf("first approval: %v", err)
		case i == 1:
			wantHTTPError(t, err, http.StatusBadRequest, "")
			if n := e.countSessions(t); n != before {
				t.Errorf("the losing approval left a session: %d, want %d", n, before)
			}
		}
	}
}

// TestDeviceGrantCodeLockout: a user who enters too many unknown codes is
// refused even the right one until the window ends.
func TestDeviceGrantCodeLockout(t *testing.T) {
	e := newSvcEnv(t)
	mallory := e.signIn(t, "bob", "https://app.example/")
	st := e.newGrant(t)
	for i := range maxCodeFailures {
		guess := usercode.Format(usercode.New())
		if i == 0 {
			guess = "not a code"
		}
		_, err := e.grantPage(mallory.authCookie, guess)
		wantHTTPError(t, err, http.StatusBadRequest, "")
	}
	_, err := e.grantPage(mallory.authCookie, st.UserCode)
	wantHTTPError(t, err, http.StatusTooManyRequests, "too_many_codes")
	_, err = e.decide(mallory.authCookie, url.Values{"csrf": {CSRFToken(mallory.session)}, "user_code": {st.UserCode}, "decision": {"deny"}})
	wantHTTPError(t, err, http.StatusTooManyRequests, "too_many_codes")
	e.wantPoll(t, st.DeviceCode, "authorization_pending")

	// Another user is not locked out.
	alice := e.signIn(t, "alice", "https://app.example/")
	if w, err := e.grantPage(alice.authCookie, st.UserCode); err != nil || w.Code != http.StatusOK {
		t.Fatalf("alice's page: %v", err)
	}
	// After the window, the locked-out user may try again.
	e.clock.Advance(codeFailureWindow)
	st = e.newGrant(t) // the first one expired meanwhile
	if w, err := e.grantPage(mallory.authCookie, st.UserCode); err != nil || w.Code != http.StatusOK {
		t.Fatalf("page after the window: %v", err)
	}
}

func TestDeviceGrantPageEscapes(t *testing.T) {
	e := newSvcEnv(t)
	alice := e.signIn(t, "alice", "https://app.example/")
	st := e.startGrant(t, url.Values{"client": {`ztna-cli/<script>alert(1)</script>`}, "host": {`"><img src=x onerror=alert(1)>`}})
	w, err := e.grantPage(alice.authCookie, st.UserCode)
	if err != nil {
		t.Fatal(err)
	}
	if body := w.Body.String(); strings.Contains(body, "<script>alert") || strings.Contains(body, "<img") {
		t.Errorf("page does not escape the client or host:\n%s", body)
	}
	// Without a code: the entry form.
	w, err = e.grantPage(alice.authCookie, "")
	if err != nil || !strings.Contains(w.Body.String(), `name="user_code"`) {
		t.Fatalf("entry form: %v\n%s", err, w.Body)
	}
}

func TestCLILogout(t *testing.T) {
	e := newSvcEnv(t)
	alice := e.signIn(t, "alice", "https://app.example/")
	logout := func(r *http.Request) *httptest.ResponseRecorder {
		t.Helper()
		w, err := e.serve(r, true)
		if err != nil {
			t.Fatalf("logout: %v", err)
		}
		return w
	}
	bearer := func(token string) *http.Request {
		r := newReq(http.MethodPost, testAuthOrigin+PathCLILogout)
		r.Header.Set("Authorization", "Bearer "+token)
		return r
	}
	// The cookie alone does nothing: a page elsewhere cannot sign anyone out.
	if w := logout(newReq(http.MethodPost, testAuthOrigin+PathCLILogout, alice.authCookie)); w.Code != http.StatusUnauthorized {
		t.Errorf("cookie-only logout: %d, want 401", w.Code)
	}
	for _, h := range []string{"", "Basic " + alice.session.ID, "Bearer", "Bearer short", "bearer " + alice.session.ID} {
		r := newReq(http.MethodPost, testAuthOrigin+PathCLILogout)
		r.Header.Set("Authorization", h)
		if w := logout(r); w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("Authorization %q: %d, want 401 with WWW-Authenticate", h, w.Code)
		}
	}
	if _, err := e.sessions.Get(t.Context(), alice.session.ID); err != nil {
		t.Fatalf("a refused logout ended the session: %v", err)
	}
	if w := logout(bearer(alice.session.ID)); w.Code != http.StatusNoContent {
		t.Fatalf("logout: %d %s", w.Code, w.Body)
	}
	if _, err := e.sessions.Get(t.Context(), alice.session.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("after logout: %v, want no session", err)
	}
	if !e.rev.has(alice.session.Key) {
		t.Error("logout did not run the revoke hooks")
	}
	// Already gone: still 204.
	if w := logout(bearer(alice.session.ID)); w.Code != http.StatusNoContent {
		t.Errorf("second logout: %d", w.Code)
	}
	_, err := e.serve(newReq(http.MethodGet, testAuthOrigin+PathCLILogout), true)
	wantHTTPError(t, err, http.StatusMethodNotAllowed, "")
	_, err = e.serve(bearer(NewSessionID()), false)
	wantHTTPError(t, err, http.StatusNotFound, "")

	// RevokeCLISession is the client of it.
	bob := e.signIn(t, "bob", "https://app.example/")
	hc := &http.Client{Transport: handlerTransport{e.grantHandler()}}
	if err := RevokeCLISession(t.Context(), hc, &CLISession{Edge: testAuthOrigin, Token: bob.session.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sessions.Get(t.Context(), bob.session.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("after RevokeCLISession: %v", err)
	}
	if err := RevokeCLISession(t.Context(), hc, &CLISession{Edge: testAuthOrigin, Token: "junk"}); err == nil {
		t.Error("RevokeCLISession with a malformed token reported success")
	}
}

// TestCLIDeviceLoginClient runs the client side against the service, the
// "browser" approving (or denying) while the client waits.
func TestCLIDeviceLoginClient(t *testing.T) {
	e := newSvcEnv(t)
	alice := e.signIn(t, "alice", "https://app.example/")
	hc := &http.Client{Transport: handlerTransport{e.grantHandler()}}
	run := func(browser func(p DeviceGrantPrompt)) (*CLIToken, error) {
		c := &CLIDeviceLogin{Edge: testAuthOrigin, HTTPClient: hc, Client: "ztna-cli/test", Host: "box", Prompt: browser}
		return c.Run(t.Context())
	}
	tok, err := run(func(p DeviceGrantPrompt) {
		if p.VerificationURI != testAuthOrigin+PathCLIDevice || p.ExpiresIn != DeviceGrantTTL {
			t.Errorf("prompt %+v", p)
		}
		if w, err := e.approve(t, alice, p.UserCode, "alice"); err != nil || w.Code != http.StatusOK {
			t.Errorf("approve: %v", err)
		}
	})
	if err != nil || tok.User != "u-alice" {
		t.Fatalf("run: %+v, %v", tok, err)
	}
	_, err = run(func(p DeviceGrantPrompt) {
		if _, err := e.decide(alice.authCookie, url.Values{"csrf": {CSRFToken(alice.session)}, "user_code": {p.UserCode}, "decision": {"deny"}}); err != nil {
			t.Errorf("deny: %v", err)
		}
	})
	if !errors.Is(err, ErrDeviceGrantDenied) {
		t.Errorf("denied: %v", err)
	}
	_, err = run(func(DeviceGrantPrompt) { e.clock.Advance(DeviceGrantTTL) })
	if !errors.Is(err, ErrDeviceGrantExpired) {
		t.Errorf("expired: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	c := &CLIDeviceLogin{Edge: testAuthOrigin, HTTPClient: hc, Client: "ztna-cli/test", Prompt: func(DeviceGrantPrompt) { cancel() }}
	if _, err := c.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("interrupted: %v", err)
	}
	// The edge refuses to start: the reason is shown.
	c = &CLIDeviceLogin{Edge: testAuthOrigin, HTTPClient: hc, Client: "not-ztna"}
	if _, err := c.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "bad_request") {
		t.Errorf("refused start: %v", err)
	}
}

// fakeGrantEdge answers a device grant with a scripted sequence of poll
// answers and records when each poll came.
type fakeGrantEdge struct {
	start   DeviceGrantStart
	answers []string // "" → the token
	mu      sync.Mutex
	polls   []time.Time
}

func (f *fakeGrantEdge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	switch r.URL.Path {
	case PathCLIDevice:
		writeJSON(w, http.StatusOK, f.start)
	case PathCLIToken:
		f.mu.Lock()
		n := len(f.polls)
		f.polls = append(f.polls, time.Now())
		f.mu.Unlock()
		if r.PostForm.Get("grant_type") != DeviceCodeGrantType || r.PostForm.Get("device_code") != f.start.DeviceCode {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant"})
			return
		}
		switch {
		case n >= len(f.answers):
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "authorization_pending"})
		case f.answers[n] == "":
			writeJSON(w, http.StatusOK, CLIToken{Token: NewSessionID(), User: "u-alice", ExpiresAt: time.Now().Add(time.Hour)})
		case f.answers[n] == "500":
			w.WriteHeader(http.StatusInternalServerError)
		default:
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": f.answers[n]})
		}
	}
}

// TestCLIDeviceLoginPacing checks the client's timing with a fake clock:
// the first poll at once, then the interval, 5 s more after each
// slow_down, a few transient failures tolerated, and the end at expires_in.
func TestCLIDeviceLoginPacing(t *testing.T) {
	tests := []struct {
		name    string
		answers []string
		gaps    []time.Duration // between consecutive polls
		wantErr error
	}{
		{"pending then approved", []string{"authorization_pending", "authorization_pending", ""}, []time.Duration{5 * time.Second, 5 * time.Second}, nil},
		{"slow_down", []string{"authorization_pending", "slow_down", "authorization_pending", "slow_down", ""},
			[]time.Duration{5 * time.Second, 10 * time.Second, 10 * time.Second, 15 * time.Second}, nil},
		{"transient failures", []string{"500", "500", ""}, []time.Duration{5 * time.Second, 5 * time.Second}, nil},
		{"denied", []string{"authorization_pending", "access_denied"}, []time.Duration{5 * time.Second}, ErrDeviceGrantDenied},
		{"expired by the edge", []string{"expired_token"}, nil, ErrDeviceGrantExpired},
		{"unknown error", []string{"server_error"}, nil, errors.New("server_error")},
		{"nobody approves", nil, nil, ErrDeviceGrantExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := &fakeGrantEdge{answers: tt.answers, start: DeviceGrantStart{DeviceCode: NewSessionID(), UserCode: "BCDF-GHJK",
					VerificationURI: testAuthOrigin + PathCLIDevice, VerificationURIComplete: testAuthOrigin + PathCLIDevice + "?user_code=BCDF-GHJK",
					ExpiresIn: 60, Interval: 5}}
				c := &CLIDeviceLogin{Edge: testAuthOrigin, HTTPClient: &http.Client{Transport: handlerTransport{f}}, Client: "ztna-cli/test"}
				begin := time.Now()
				tok, err := c.Run(t.Context())
				switch {
				case tt.wantErr == nil && (err != nil || tok == nil):
					t.Fatalf("run: %v", err)
				case tt.wantErr != nil && (err == nil || !errors.Is(err, tt.wantErr) && !strings.Contains(err.Error(), tt.wantErr.Error())):
					t.Fatalf("run: %v, want %v", err, tt.wantErr)
				}
				if f.polls[0] != begin {
					t.Errorf("first poll after %v, want at once", f.polls[0].Sub(begin))
				}
				if tt.name == "nobody approves" {
					if d := time.Since(begin); d != time.Minute {
						t.Errorf("gave up after %v, want expires_in (1m)", d)
					}
					return
				}
				if len(f.polls) != len(tt.gaps)+1 {
					t.Fatalf("%d polls, want %d", len(f.polls), len(tt.gaps)+1)
				}
				for i, want := range tt.gaps {
					if got := f.polls[i+1].Sub(f.polls[i]); got != want {
						t.Errorf("gap %d: %v, want %v", i, got, want)
					}
				}
			})
		})
	}
}

func TestCLIDeviceLoginRefusesOffEdgeVerification(t *testing.T) {
	for _, uri := range []string{"https://evil.example/.ztna/cli/device", testAuthOrigin + ".evil.example/x", testAuthOrigin + "/x\nforged line"} {
		f := &fakeGrantEdge{start: DeviceGrantStart{DeviceCode: NewSessionID(), UserCode: "BCDF-GHJK",
			VerificationURI: uri, VerificationURIComplete: uri, ExpiresIn: 60, Interval: 5}}
		prompted := false
		c := &CLIDeviceLogin{Edge: testAuthOrigin, HTTPClient: &http.Client{Transport: handlerTransport{f}}, Client: "ztna-cli/test",
			Prompt: func(DeviceGrantPrompt) { prompted = true }}
		if _, err := c.Run(t.Context()); err == nil || prompted {
			t.Errorf("verification URI %q: %v, prompted %v; want refused before the prompt", uri, err, prompted)
		}
	}
}

func hostOf(raw string) string {
	u, _ := url.Parse(raw)
	return u.Host
}

// One client address may start only so many grants; others are not held
// back by it.
func TestDeviceGrantStartRateLimitedPerClient(t *testing.T) {
	e := newSvcEnv(t)
	e.svc.opts.DeviceGrantLimit = ratelimit.New(time.Hour, 2, 100)
	start := func(addr string) (*httptest.ResponseRecorder, error) {
		r := postReq(testAuthOrigin+PathCLIDevice, url.Values{"client": {"ztna-cli/1"}})
		r.RemoteAddr = addr
		return e.serve(r, true)
	}
	for i := range 2 {
		if _, err := start("192.0.2.7:5000"); err != nil {
			t.Fatalf("start %d: %v", i+1, err)
		}
	}
	w, err := start("192.0.2.7:5001")
	wantHTTPError(t, err, http.StatusTooManyRequests, "slow_down")
	if w.Header().Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	n := 0
	_ = e.st.List(t.Context(), bucketCLIGrant, "", func(string, []byte) bool { n++; return true })
	if n != 2 {
		t.Fatalf("%d grants stored, want 2: a refused start must store nothing", n)
	}
	if _, err := start("198.51.100.9:5000"); err != nil {
		t.Fatalf("another client: %v", err)
	}
}
