package integration

import (
	"context"
	"crypto/x509"
	"html"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy"
	"github.com/ztna-dev/ztna/proxy/identity"
)

// Alice signs in through the real browser flow; the app behind the edge
// sees who she is, verified, and never sees her session cookie.
func TestLoginAliceReachesWhoami(t *testing.T) {
	env := newEnv(t)
	c := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, c, "whoami")

	rep := whoamiAs(t, c, env, "whoami", "/")
	if !rep.Verified || rep.Claims == nil {
		t.Fatalf("upstream could not verify the assertion: %s", rep.VerifyError)
	}
	if rep.Claims.Audience != "whoami" || rep.Claims.Subject != "u-alice" || rep.Claims.Email != "alice@example.com" {
		t.Errorf("assertion claims aud=%q sub=%q email=%q, want whoami, u-alice, alice@example.com",
			rep.Claims.Audience, rep.Claims.Subject, rep.Claims.Email)
	}
	if !slices.Contains(rep.Claims.Groups, "engineering") || !slices.Contains(rep.Claims.Groups, "security") {
		t.Errorf("assertion groups %v, want engineering and security", rep.Claims.Groups)
	}
	if want := sessionKey(cookie)[:16]; rep.Claims.SessionID != want {
		t.Errorf("assertion sid %q, want the session reference %q", rep.Claims.SessionID, want)
	}
	if rep.User != "u-alice" || rep.Email != "alice@example.com" || rep.Groups != "engineering,security" {
		t.Errorf("X-Forwarded-User/Email/Groups = %q/%q/%q, want u-alice/alice@example.com/engineering,security",
			rep.User, rep.Email, rep.Groups)
	}
	if rep.ForwardedFor != "127.0.0.1" {
		t.Errorf("X-Forwarded-For = %q, want 127.0.0.1", rep.ForwardedFor)
	}
	if _, ok := rep.Headers[identity.HeaderName]; !ok {
		t.Errorf("upstream got no %s header", identity.HeaderName)
	}
	if ck, ok := rep.Headers["Cookie"]; ok {
		t.Errorf("upstream received a Cookie header %q; the edge's cookies must never reach apps", ck)
	}

	// The app's own cookies pass; the edge's are cut out of the same header.
	req := withCookie(t, http.MethodGet, env.AppURL("whoami")+"/?format=json", cookie, asAPI)
	req.Header.Set("Cookie", "theme=dark; "+authn.SessionCookie+"="+cookie+"; lang=en")
	r := do(t, newClient(t, env), req)
	if r.StatusCode != http.StatusOK {
		t.Fatalf("with app cookies: status %d: %.300s", r.StatusCode, r.Body)
	}
	rep = decodeReport(t, r.Body)
	if got := rep.Headers["Cookie"]; got != "theme=dark; lang=en" {
		t.Errorf("upstream Cookie = %q, want %q", got, "theme=dark; lang=en")
	}
	for k, v := range rep.Headers {
		if strings.Contains(v, cookie) {
			t.Errorf("upstream header %s carries the session cookie value", k)
		}
	}

	// Single sign-on: the second app needs no password.
	r = navigate(t, env, c, env.AppURL("secure")+"/")
	if r.StatusCode != http.StatusOK {
		t.Fatalf("alice on secure: status %d, want 200: %.300s", r.StatusCode, r.Body)
	}
	rep = whoamiAs(t, c, env, "secure", "/")
	if !rep.Verified || rep.Claims.Audience != "secure" || rep.Claims.Subject != "u-alice" {
		t.Errorf("secure: verified=%v claims=%+v (%s), want aud secure sub u-alice", rep.Verified, rep.Claims, rep.VerifyError)
	}
}

// Wrong credentials stay at the IdP; the edge creates no session.
func TestLoginWrongPassword(t *testing.T) {
	env := newEnv(t)
	f := startLogin(t, env, "whoami", "/")
	r := f.submit(t, "alice", "wrong-password")
	if r.StatusCode != http.StatusUnauthorized || r.Header.Get("Location") != "" {
		t.Fatalf("wrong password: status %d Location %q, want 401 and no redirect", r.StatusCode, r.Header.Get("Location"))
	}
	if sessionCookie(t, env, f.Client, "whoami") != "" {
		t.Fatal("a session cookie after a failed login")
	}
	// The same form still works with the right password.
	if r := f.submit(t, "alice", alicePassword); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("right password after a wrong one: status %d, want 303", r.StatusCode)
	}
}

// Bob (finance) may read whoami but not change anything, and may not use
// secure at all; Carol (contractor) gets the default deny.
func TestLoginDecisions(t *testing.T) {
	env := newEnv(t)
	bob := loginAs(t, env, "whoami", "bob", bobPassword)
	bobCookie := sessionCookie(t, env, bob, "whoami")

	rep := whoamiAs(t, bob, env, "whoami", "/")
	if rep.User != "u-bob" || !rep.Verified {
		t.Fatalf("bob GET whoami: user %q verified %v (%s)", rep.User, rep.Verified, rep.VerifyError)
	}
	r := do(t, bob, newRequest(t, http.MethodPost, env.AppURL("whoami")+"/items", strings.NewReader("x=1"), asAPI))
	e := expectJSONError(t, r, http.StatusForbidden, "access_denied")
	if e.Rule != "finance-read-only" {
		t.Errorf("bob POST: rule %q, want finance-read-only", e.Rule)
	}

	// secure: an HTML deny page for the navigation, JSON for fetch.
	r = navigate(t, env, bob, env.AppURL("secure")+"/")
	if r.StatusCode != http.StatusForbidden {
		t.Fatalf("bob on secure: status %d, want 403: %.300s", r.StatusCode, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("bob on secure (navigation): Content-Type %q, want HTML", ct)
	}
	wantReason := `no rule of app "secure" allows bob@example.com to GET /`
	if page := html.UnescapeString(string(r.Body)); !strings.Contains(page, wantReason) {
		t.Errorf("deny page does not give the reason %q: %.600s", wantReason, r.Body)
	}
	r = get(t, bob, env.AppURL("secure")+"/", asFetch)
	e = expectJSONError(t, r, http.StatusForbidden, "access_denied")
	if e.Message != wantReason {
		t.Errorf("JSON deny message %q, want %q", e.Message, wantReason)
	}
	// The handoff to secure gave bob's browser a cookie there; the edge
	// still refuses it on every request.
	if sessionCookie(t, env, bob, "secure") != bobCookie {
		t.Errorf("bob's secure cookie differs from his whoami cookie: one session per browser expected")
	}

	res := loginFlow(t, env, "whoami", "/", "carol", carolPassword)
	if res.Final.StatusCode != http.StatusForbidden {
		t.Fatalf("carol on whoami: status %d, want 403", res.Final.StatusCode)
	}
	if page := html.UnescapeString(string(res.Final.Body)); !strings.Contains(page, "carol@example.com") {
		t.Errorf("carol's deny page does not name her: %.600s", res.Final.Body)
	}
	e = expectJSONError(t, get(t, res.Client, env.AppURL("whoami")+"/", asAPI), http.StatusForbidden, "access_denied")
	if !strings.Contains(e.Message, "carol@example.com") || e.Rule != "" {
		t.Errorf("carol default deny: message %q rule %q, want her email and no rule", e.Message, e.Rule)
	}
}

// Clients that cannot follow a login redirect get 401 with the login URL.
func TestUnauthenticatedNonNavigation(t *testing.T) {
	env := newEnv(t)
	c := newClient(t, env)
	for _, kind := range []string{asFetch, asAPI} {
		r := get(t, c, env.AppURL("whoami")+"/data", kind)
		e := expectJSONError(t, r, http.StatusUnauthorized, "unauthenticated")
		if loc := r.Header.Get("Location"); loc != "" {
			t.Errorf("%s: 401 with Location %q", kind, loc)
		}
		lu, err := url.Parse(e.LoginURL)
		if err != nil || lu.Host != hostOf(t, env.AuthOrigin) || lu.Path != authn.PathLogin {
			t.Errorf("%s: login_url %q, want the auth host's %s", kind, e.LoginURL, authn.PathLogin)
		}
		if rd := lu.Query().Get("rd"); rd != env.AppURL("whoami")+"/data" {
			t.Errorf("%s: login_url rd %q", kind, rd)
		}
	}
	// A POST navigation (a form) is not redirected either.
	r := do(t, c, newRequest(t, http.MethodPost, env.AppURL("whoami")+"/", strings.NewReader(""), asNavigation))
	if r.StatusCode != http.StatusUnauthorized {
		t.Errorf("unauthenticated POST navigation: status %d, want 401", r.StatusCode)
	}

	_, resp, err := wsDial(t, env, "whoami", "/ws", "")
	if err == nil {
		t.Fatal("unauthenticated WebSocket upgrade succeeded")
	}
	if resp == nil || resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Location") != "" {
		t.Fatalf("unauthenticated WebSocket: err %v resp %v, want 401 without Location", err, resp)
	}
}

// Logout asks for confirmation with a CSRF-protected form, ends the
// session everywhere and sends the browser to the IdP's end_session.
func TestLogout(t *testing.T) {
	env := newEnv(t)
	c := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, c, "whoami")
	logoutURL := env.AppURL("whoami") + authn.PathLogout

	r := get(t, c, logoutURL, asNavigation)
	if r.StatusCode != http.StatusOK {
		t.Fatalf("GET logout: status %d", r.StatusCode)
	}
	m := signOutCSRF.FindSubmatch(r.Body)
	if m == nil {
		t.Fatalf("logout page has no csrf field: %.600s", r.Body)
	}
	post := func(csrf string) *response {
		req := newRequest(t, http.MethodPost, logoutURL, strings.NewReader(url.Values{"csrf": {csrf}}.Encode()), asNavigation)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return do(t, c, req)
	}

	// A forged form changes nothing.
	if r := post(strings.Repeat("0", len(m[1]))); r.StatusCode != http.StatusForbidden {
		t.Fatalf("logout with a wrong csrf token: status %d, want 403", r.StatusCode)
	}
	if rep := whoamiAs(t, c, env, "whoami", "/"); rep.User != "u-alice" {
		t.Fatalf("after a forged logout alice is %q", rep.User)
	}

	r = post(string(m[1]))
	idpHost := hostOf(t, env.IdP.Issuer())
	loc := expectRedirect(t, r, http.StatusSeeOther, idpHost, "")
	if !strings.Contains(loc.Path, "end_session") {
		t.Errorf("logout redirects to %s, want the IdP's end_session", loc)
	}
	if q := loc.Query(); q.Get("id_token_hint") == "" || !strings.HasPrefix(q.Get("post_logout_redirect_uri"), env.AuthOrigin) {
		t.Errorf("end_session URL lacks id_token_hint or the edge's post-logout URI: %s", loc)
	}
	if sessionCookie(t, env, c, "whoami") != "" {
		t.Errorf("logout did not clear the session cookie")
	}
	// The IdP ends its session and sends the browser to the signed-out page.
	for hop := 0; loc.Host == idpHost; hop++ {
		if hop > 4 {
			t.Fatal("IdP redirected too often after end_session")
		}
		r = get(t, c, loc.String(), asNavigation)
		if r.StatusCode/100 != 3 {
			t.Fatalf("IdP end_session: status %d: %.300s", r.StatusCode, r.Body)
		}
		loc, _ = r.Location()
	}
	if loc.Host != hostOf(t, env.AuthOrigin) || loc.Path != authn.PathSignedOut {
		t.Errorf("after end_session the browser goes to %s, want %s%s", loc, env.AuthOrigin, authn.PathSignedOut)
	}
	if r := get(t, c, loc.String(), asNavigation); r.StatusCode != http.StatusOK {
		t.Errorf("signed-out page: status %d", r.StatusCode)
	}

	// The old cookie, replayed by hand, is dead on every kind of request.
	plain := newClient(t, env)
	r = do(t, plain, withCookie(t, http.MethodGet, env.AppURL("whoami")+"/", cookie, asNavigation))
	expectRedirect(t, r, http.StatusFound, hostOf(t, env.AuthOrigin), authn.PathLogin)
	r = do(t, plain, withCookie(t, http.MethodGet, env.AppURL("whoami")+"/", cookie, asAPI))
	expectJSONError(t, r, http.StatusUnauthorized, "unauthenticated")
	r = do(t, plain, withCookie(t, http.MethodGet, env.AppURL("secure")+"/", cookie, asAPI))
	expectJSONError(t, r, http.StatusUnauthorized, "unauthenticated")
}

var hex16RE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// Each decision is one audit event that says who, which app, the decision,
// the rule and the reason, and names the session by a reference that is
// not the cookie.
func TestAuditEvents(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	aliceCookie := sessionCookie(t, env, alice, "whoami")
	bob := loginAs(t, env, "whoami", "bob", bobPassword)
	bobCookie := sessionCookie(t, env, bob, "whoami")
	anon := newClient(t, env)

	get(t, alice, env.AppURL("whoami")+"/audit-allow", asAPI)
	do(t, bob, newRequest(t, http.MethodPost, env.AppURL("whoami")+"/audit-deny", strings.NewReader(""), asAPI))
	navigate(t, env, bob, env.AppURL("secure")+"/") // a 403, but the cookie is set there
	get(t, bob, env.AppURL("secure")+"/audit-default", asAPI)
	get(t, anon, env.AppURL("whoami")+"/audit-anon", asAPI)
	get(t, alice, env.AppURL("whoami")+"/audit-last", asAPI)
	// Events are written in order: once the last is out, all are.
	waitAudit(t, env, "/audit-last", 1)

	want := []struct {
		path, user, app, decision, rule, reasonHas, cookie string
	}{
		{"/audit-allow", "u-alice", "whoami", "allow", "employees", "", aliceCookie},
		{"/audit-deny", "u-bob", "whoami", "deny", "finance-read-only", "", bobCookie},
		{"/audit-default", "u-bob", "secure", "deny", "", "bob@example.com", bobCookie},
		{"/audit-anon", "", "whoami", "deny", "", "not signed in", ""},
	}
	for _, w := range want {
		evs := waitAudit(t, env, w.path, 1)
		if len(evs) != 1 {
			t.Errorf("%s: %d audit events, want exactly 1: %+v", w.path, len(evs), evs)
			continue
		}
		ev := evs[0]
		if ev.Kind != "request" || ev.User != w.user || ev.App != w.app || ev.Decision != w.decision || ev.Rule != w.rule {
			t.Errorf("%s: event %+v, want user %q app %q decision %q rule %q", w.path, ev, w.user, w.app, w.decision, w.rule)
		}
		if ev.Reason == "" || !strings.Contains(ev.Reason, w.reasonHas) {
			t.Errorf("%s: reason %q, want one containing %q", w.path, ev.Reason, w.reasonHas)
		}
		if w.cookie == "" {
			if ev.Session != "" {
				t.Errorf("%s: session %q on an anonymous request", w.path, ev.Session)
			}
		} else if !hex16RE.MatchString(ev.Session) || ev.Session != sessionKey(w.cookie)[:16] {
			t.Errorf("%s: session %q, want the 16-hex reference %s", w.path, ev.Session, sessionKey(w.cookie)[:16])
		}
		if !strings.HasPrefix(ev.Source, "127.0.0.1:") {
			t.Errorf("%s: source %q", w.path, ev.Source)
		}
	}
	// No secret anywhere: not in audit, not in the process log.
	for name, out := range map[string]string{"audit log": auditLog(t, env).String(), "process log": processLog(t, env).String()} {
		for who, secret := range map[string]string{"alice": aliceCookie, "bob": bobCookie} {
			if strings.Contains(out, secret) {
				t.Errorf("%s contains %s's session cookie value", name, who)
			}
		}
		for _, pw := range []string{alicePassword, bobPassword} {
			if strings.Contains(out, pw) {
				t.Errorf("%s contains a password", name)
			}
		}
	}
}

// The IdP's back-channel logout ends the user's sessions at the edge, and
// only theirs.
func TestBackChannelLogout(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	bob := loginAs(t, env, "whoami", "bob", bobPassword)
	whoamiAs(t, alice, env, "whoami", "/")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := env.IdP.BackChannelLogout(ctx, "alice"); err != nil {
		t.Fatalf("back-channel logout: %v", err)
	}
	// The edge revoked before answering the IdP: no waiting.
	expectJSONError(t, get(t, alice, env.AppURL("whoami")+"/", asAPI), http.StatusUnauthorized, "unauthenticated")
	r := get(t, alice, env.AppURL("whoami")+"/", asNavigation)
	expectRedirect(t, r, http.StatusFound, hostOf(t, env.AuthOrigin), authn.PathLogin)
	if rep := whoamiAs(t, bob, env, "whoami", "/"); rep.User != "u-bob" {
		t.Errorf("bob after alice's back-channel logout: user %q", rep.User)
	}
}

// HTTP/3 on the edge's UDP port serves the same pipeline.
func TestHTTP3(t *testing.T) {
	env := newEnv(t)
	c := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, c, "whoami")

	h3 := h3Client(t, env)
	r := do(t, h3, withCookie(t, http.MethodGet, env.AppURL("whoami")+"/h3?format=json", cookie, asAPI))
	if r.StatusCode != http.StatusOK || r.ProtoMajor != 3 {
		t.Fatalf("HTTP/3: status %d proto %s: %.300s", r.StatusCode, r.Proto, r.Body)
	}
	rep := decodeReport(t, r.Body)
	if !rep.Verified || rep.Claims.Subject != "u-alice" || rep.User != "u-alice" || rep.ForwardedFor != "127.0.0.1" {
		t.Errorf("HTTP/3 upstream saw verified=%v (%s) claims=%+v user=%q xff=%q", rep.Verified, rep.VerifyError, rep.Claims, rep.User, rep.ForwardedFor)
	}
	if _, ok := rep.Headers["Cookie"]; ok {
		t.Errorf("HTTP/3: the session cookie reached the upstream")
	}
	// Without a session, HTTP/3 gets the same 401.
	expectJSONError(t, do(t, h3, withCookie(t, http.MethodGet, env.AppURL("whoami")+"/", "", asAPI)), http.StatusUnauthorized, "unauthenticated")
	// And the HTTPS listener advertises it.
	if alt := get(t, c, env.AppURL("whoami")+"/", asAPI).Header.Get("Alt-Svc"); !strings.Contains(alt, "h3=") {
		t.Errorf("Alt-Svc %q does not advertise h3", alt)
	}
}

// The dev system exactly as `ztna dev` starts it: its config is valid and
// published as YAML, whoami verifies the assertions it receives, and Close
// reports no error after a clean stop.
func TestDevEnvAsShipped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env, err := devenv.Start(ctx, devenv.Options{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", IdPListen: "127.0.0.1:0",
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			_ = env.Close(context.Background())
		}
	}()
	pem, err := os.ReadFile(env.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	extras.Store(env, &envExtras{audit: &syncBuffer{}, logs: &syncBuffer{}, pool: pool})
	defer extras.Delete(env)

	if env.ConfigYAML == "" {
		t.Error("Env.ConfigYAML is empty; it is documented as the edge config for people to read")
	} else if _, err := proxy.ParseConfig("dev.yaml", []byte(env.ConfigYAML)); err != nil {
		t.Errorf("Env.ConfigYAML does not load: %v", err)
	}
	cfg := currentConfig(env)
	if err := cfg.Validate(); err != nil {
		t.Errorf("the dev config does not validate: %v", err)
	}
	c := loginAs(t, env, "whoami", "alice", alicePassword)
	if rep := whoamiAs(t, c, env, "whoami", "/"); !rep.Verified {
		t.Errorf("whoami as shipped cannot verify the edge's assertion: %s", rep.VerifyError)
	}
	c.CloseIdleConnections()
	closed = true
	if err := env.Close(ctx); err != nil {
		t.Errorf("Close after a clean run: %v", err)
	}
}
