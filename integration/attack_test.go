package integration

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy/identity"
)

// signWithEdgeKey signs claims with the edge's own signing key, read from
// the data dir: the strongest forgery a client could bring, a token the
// app would accept if the edge passed it on.
func signWithEdgeKey(t *testing.T, env *devenv.Env, c identity.Claims) string {
	t.Helper()
	keys, err := identity.LoadOrCreateKeySet(filepath.Join(env.Config().DataDir, "signing-keys.json"), 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c.IssuedAt, c.NotBefore, c.Expiry = now.Unix(), now.Unix(), now.Add(5*time.Minute).Unix()
	tok, err := keys.Signer(env.AuthOrigin).Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// expectAlice checks that whoami saw exactly alice's identity as the edge
// sets it, whatever the client sent.
func expectAlice(t *testing.T, env *devenv.Env, name string, rep devenv.WhoamiReport) {
	t.Helper()
	if !rep.Verified || rep.Claims.Subject != "u-alice" || rep.Claims.Audience != "whoami" {
		t.Errorf("%s: upstream assertion verified=%v (%s) claims=%+v, want alice's for whoami", name, rep.Verified, rep.VerifyError, rep.Claims)
	}
	if rep.User != "u-alice" || rep.Email != "alice@example.com" || rep.Groups != "engineering,security" {
		t.Errorf("%s: upstream identity headers %q/%q/%q, want alice's", name, rep.User, rep.Email, rep.Groups)
	}
	if rep.ForwardedFor != "127.0.0.1" {
		t.Errorf("%s: upstream X-Forwarded-For %q, want 127.0.0.1 only", name, rep.ForwardedFor)
	}
	if got, want := rep.Headers["X-Forwarded-Host"], hostOf(t, env.AppURL("whoami")); got != want {
		t.Errorf("%s: upstream X-Forwarded-Host %q, want %q", name, got, want)
	}
	if got := rep.Headers["X-Forwarded-Proto"]; got != "https" {
		t.Errorf("%s: upstream X-Forwarded-Proto %q, want https", name, got)
	}
	for _, h := range []string{"Forwarded", "X-Real-Ip", "X-Original-Url", "X-Rewrite-Url", "X-Remote-User", "X-Auth-Request-User", "X-Ztna-Device", "X-Client-Ip", "True-Client-Ip"} {
		if v, ok := rep.Headers[h]; ok {
			t.Errorf("%s: upstream received client header %s: %q", name, h, v)
		}
	}
}

// Identity and origin headers from the client never reach the app: the
// app sees the edge's values only, even when the client names them in
// Connection to have a proxy drop the edge's copies.
func TestAttackSpoofedIdentityHeaders(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	adminForWhoami := signWithEdgeKey(t, env, identity.Claims{Issuer: env.AuthOrigin, Subject: "u-admin", Audience: "whoami",
		Email: "admin@example.com", Groups: []string{"ztna-admins"}, ID: "forged-1"})
	aliceForSecure := signWithEdgeKey(t, env, identity.Claims{Issuer: env.AuthOrigin, Subject: "u-alice", Audience: "secure",
		Email: "alice@example.com", ID: "other-app-1"})

	spoofed := map[string]string{
		"X-Forwarded-User":    "u-admin",
		"X-Forwarded-Email":   "admin@example.com",
		"X-Forwarded-Groups":  "ztna-admins",
		"X-Forwarded-For":     "10.0.0.1",
		"X-Forwarded-Host":    "admin.corp.example",
		"X-Forwarded-Proto":   "http",
		"Forwarded":           "for=10.0.0.1;host=admin.corp.example;proto=http",
		"X-Real-IP":           "10.0.0.1",
		"X-Client-IP":         "10.0.0.1",
		"True-Client-IP":      "10.0.0.1",
		"X-Original-URL":      "/admin",
		"X-Rewrite-URL":       "/admin",
		"X-Remote-User":       "u-admin",
		"X-Auth-Request-User": "u-admin",
		"X-Ztna-Device":       "trusted-device",
	}
	for _, tc := range []struct{ name, assertion string }{
		{"garbage assertion", "garbage.garbage.garbage"},
		{"forged admin assertion signed with the edge key", adminForWhoami},
		{"alice's real assertion for another app", aliceForSecure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// HTTP/2 through the Go client.
			req := withCookie(t, http.MethodGet, env.AppURL("whoami")+"/spoof?format=json", cookie, asAPI)
			for k, v := range spoofed {
				req.Header.Set(k, v)
			}
			req.Header.Set(identity.HeaderName, tc.assertion)
			r := do(t, newClient(t, env), req)
			if r.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %.300s", r.StatusCode, r.Body)
			}
			rep := decodeReport(t, r.Body)
			expectAlice(t, env, "h2", rep)
			if rep.Path != "/spoof" {
				t.Errorf("h2: upstream path %q, want /spoof (X-Original-URL must not reroute)", rep.Path)
			}

			// HTTP/1.1 with the same headers also named in Connection, which
			// makes hop-by-hop processing drop them: if that ran after the
			// edge set its own, the app would get none or the client's.
			headers := []string{"Cookie: " + authn.SessionCookie + "=" + cookie, "Accept: application/json",
				identity.HeaderName + ": " + tc.assertion}
			names := []string{identity.HeaderName}
			for k, v := range spoofed {
				headers = append(headers, k+": "+v)
				names = append(names, k)
			}
			headers = append(headers, "Connection: close, "+strings.Join(names, ", "))
			r = rawHTTP1(t, env, "whoami.localhost", rawRequest("GET", "/spoof-conn?format=json", hostOf(t, env.AppURL("whoami")), headers...))
			if r.StatusCode != http.StatusOK {
				t.Fatalf("h1 with Connection: status %d: %.300s", r.StatusCode, r.Body)
			}
			expectAlice(t, env, "h1+Connection", decodeReport(t, r.Body))
		})
	}

	// Without a session the same headers buy nothing.
	req := withCookie(t, http.MethodGet, env.AppURL("whoami")+"/spoof", "", asAPI)
	for k, v := range spoofed {
		req.Header.Set(k, v)
	}
	req.Header.Set(identity.HeaderName, adminForWhoami)
	expectJSONError(t, do(t, newClient(t, env), req), http.StatusUnauthorized, "unauthenticated")

	// Nor do they change the decision: bob spoofing alice's groups is bob.
	bob := loginAs(t, env, "whoami", "bob", bobPassword)
	req = newRequest(t, http.MethodPost, env.AppURL("whoami")+"/spoof", strings.NewReader(""), asAPI)
	req.Header.Set("X-Forwarded-User", "u-alice")
	req.Header.Set("X-Forwarded-Groups", "engineering,security")
	req.Header.Set(identity.HeaderName, adminForWhoami)
	expectJSONError(t, do(t, bob, req), http.StatusForbidden, "access_denied")
}

// Paths that could mean one thing to a rule and another to the app are
// refused before anything else happens, whoever asks.
func TestAttackPathTricks(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	targets := []string{
		"/..%2fsecure", "/..%2Fsecure", "/a/../b", "/..", "/a/..", "//x", "//secure.localhost/", "/a//b",
		"/%2e%2e/", "/%2E%2E/admin", "/.%2e/admin", "/a%5cb", "/a\\b", "/..;/admin", "/a/..;x/b",
		"/a/./b", "/.", "/a%00b", "/%2fadmin",
	}
	for _, app := range []string{"whoami", "secure"} {
		host := hostOf(t, env.AppURL(app))
		for _, target := range targets {
			for _, withSession := range []bool{true, false} {
				var headers []string
				if withSession {
					headers = append(headers, "Cookie: "+authn.SessionCookie+"="+cookie)
				}
				r := rawHTTP1(t, env, app+".localhost", rawRequest("GET", target, host, append(headers, "Accept: application/json")...))
				if r.StatusCode != http.StatusBadRequest {
					t.Errorf("%s %s (session %v): status %d, want 400: %.200s", app, target, withSession, r.StatusCode, r.Body)
				}
			}
		}
	}
	// Nothing was forwarded or allowed: no audit event names those paths,
	// and the session still works for canonical ones.
	whoamiAs(t, alice, env, "whoami", "/after-tricks")
	waitAudit(t, env, "/after-tricks", 1)
	for _, ev := range auditEvents(t, env) {
		if ev.Decision == "allow" && ev.Path != "/" && ev.Path != "/after-tricks" {
			t.Errorf("a path trick reached a decision: %+v", ev)
		}
	}
}

// Requests for hosts the edge does not serve get 404, never an app.
func TestAttackUnknownHost(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	port := env.EdgeAddr[strings.LastIndex(env.EdgeAddr, ":"):]
	c := newClient(t, env)
	for _, host := range []string{"nope.localhost" + port, "localhost" + port, "127.0.0.1" + port, "whoami.localhost", "whoami.localhost:1", "whoami.localhost.evil" + port} {
		req := withCookie(t, http.MethodGet, env.AppURL("whoami")+"/", cookie, asAPI)
		req.Host = host
		r := do(t, c, req)
		if r.StatusCode != http.StatusNotFound {
			t.Errorf("Host %q: status %d, want 404: %.200s", host, r.StatusCode, r.Body)
		}
	}
	// By name too, where the certificate allows.
	expectJSONError(t, get(t, c, "https://localhost"+port+"/", asAPI), http.StatusNotFound, "")
}

// The OIDC callback takes only the state it issued, once, in the browser
// it issued it to.
func TestAttackCallbackForgedAndReplayed(t *testing.T) {
	env := newEnv(t)
	c := newClient(t, env)
	cb := env.AuthOrigin + authn.PathCallback
	for _, q := range []string{
		"state=forged&code=forged",
		"code=forged",
		"state=&code=x",
		"state=" + strings.Repeat("a", 600) + "&code=x",
		"state=forged&error=access_denied",
	} {
		r := get(t, c, cb+"?"+q, asNavigation)
		if r.StatusCode != http.StatusBadRequest {
			t.Errorf("callback ?%.60s: status %d, want 400", q, r.StatusCode)
		}
		if setsSession(r) {
			t.Errorf("callback ?%.60s set a session cookie", q)
		}
	}

	res := loginFlow(t, env, "whoami", "/", "alice", alicePassword)
	if res.Final.StatusCode != http.StatusOK {
		t.Fatalf("login: status %d", res.Final.StatusCode)
	}
	// The same browser replaying the callback, and another browser.
	for name, client := range map[string]*http.Client{"same browser": res.Client, "other browser": newClient(t, env)} {
		r := get(t, client, res.CallbackURL, asNavigation)
		if r.StatusCode != http.StatusBadRequest {
			t.Errorf("replayed callback (%s): status %d, want 400", name, r.StatusCode)
		}
	}
	// The handoff code is one-time as well.
	r := get(t, newClient(t, env), res.HandoffURL, asNavigation)
	if r.StatusCode != http.StatusBadRequest || setsSession(r) {
		t.Errorf("replayed handoff: status %d, want 400", r.StatusCode)
	}
	r = get(t, res.Client, res.HandoffURL, asNavigation)
	if r.StatusCode != http.StatusBadRequest {
		t.Errorf("replayed handoff (same browser): status %d, want 400", r.StatusCode)
	}
	// Exactly one session was made.
	if n := strings.Count(processLog(t, env).String(), "msg=login user=u-alice"); n != 1 {
		t.Errorf("%d logins logged for alice, want 1", n)
	}
	whoamiAs(t, res.Client, env, "whoami", "/")
}

// A made-up handoff code sets no cookie.
func TestAttackForgedHandoff(t *testing.T) {
	env := newEnv(t)
	c := newClient(t, env)
	random := make([]byte, 32)
	_, _ = rand.Read(random)
	for _, code := range []string{base64.RawURLEncoding.EncodeToString(random), "short", "", strings.Repeat("A", 5000), "%00%00"} {
		for _, app := range []string{"whoami", "secure"} {
			r := get(t, c, env.AppURL(app)+authn.PathHandoff+"?code="+code, asNavigation)
			if r.StatusCode != http.StatusBadRequest {
				t.Errorf("%s handoff code %.20q: status %d, want 400", app, code, r.StatusCode)
			}
			if setsSession(r) {
				t.Errorf("%s forged handoff set a session cookie", app)
			}
		}
	}
	// The handoff belongs to app hosts, never the auth host.
	if r := get(t, c, env.AuthOrigin+authn.PathHandoff+"?code="+base64.RawURLEncoding.EncodeToString(random), asNavigation); r.StatusCode/100 != 4 {
		t.Errorf("handoff on the auth host: status %d, want 4xx", r.StatusCode)
	}
}

// The login endpoint returns only to apps the edge serves.
func TestAttackOpenRedirect(t *testing.T) {
	env := newEnv(t)
	c := newClient(t, env)
	hb := strings.Repeat("ab", 32)
	whoamiHost := hostOf(t, env.AppURL("whoami"))
	for _, rd := range []string{
		"https://evil.example/",
		"//evil",
		"//evil.example/x",
		"https:evil.example",
		"/\\evil.example",
		"javascript:alert(1)",
		"http://" + whoamiHost + "/",
		"https://" + whoamiHost + ".evil.example/",
		"https://evil.example@" + whoamiHost + "x/",
		"https://" + whoamiHost + "@evil.example/",
		"https://auth.localhost" + whoamiHost[strings.LastIndex(whoamiHost, ":"):] + "/",
		"",
	} {
		r := get(t, c, env.AuthOrigin+authn.PathLogin+"?rd="+url.QueryEscape(rd)+"&hb="+hb, asNavigation)
		if r.StatusCode != http.StatusBadRequest || r.Header.Get("Location") != "" {
			t.Errorf("login rd=%q: status %d Location %q, want 400 without a redirect", rd, r.StatusCode, r.Header.Get("Location"))
		}
	}
	// The genuine one is accepted (so the test can fail).
	r := get(t, c, env.AuthOrigin+authn.PathLogin+"?rd="+url.QueryEscape(env.AppURL("whoami")+"/x")+"&hb="+hb, asNavigation)
	expectRedirect(t, r, http.StatusFound, hostOf(t, env.IdP.Issuer()), "")
}

// Headers past the limit are refused before anything reads them.
func TestAttackOversizedHeader(t *testing.T) {
	env := newEnv(t)
	host := hostOf(t, env.AppURL("whoami"))
	r := rawHTTP1(t, env, "whoami.localhost", rawRequest("GET", "/", host, "X-Big: "+strings.Repeat("a", 80<<10)))
	if r.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("80 KiB header: status %d, want 431", r.StatusCode)
	}
	// Many small headers count as much as one big one.
	var many []string
	for i := 0; i < 2000; i++ {
		many = append(many, fmt.Sprintf("X-H%d: %s", i, strings.Repeat("b", 40)))
	}
	r = rawHTTP1(t, env, "whoami.localhost", rawRequest("GET", "/", host, many...))
	if r.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("2000 headers: status %d, want 431", r.StatusCode)
	}
	// Just under the limit is still served (the limit is not zero).
	r = rawHTTP1(t, env, "whoami.localhost", rawRequest("GET", "/", host, "Accept: application/json", "X-Big: "+strings.Repeat("a", 32<<10)))
	if r.StatusCode != http.StatusUnauthorized {
		t.Errorf("32 KiB header: status %d, want 401", r.StatusCode)
	}
}

// Cookie values that are not session IDs mean "no session": a login for a
// browser, a 401 for anything else, never a server error.
func TestAttackGarbageSessionCookies(t *testing.T) {
	env := newEnv(t)
	c := newClient(t, env)
	authHost := hostOf(t, env.AuthOrigin)
	for name, v := range map[string]string{
		"short":            "abc",
		"one too long":     authn.NewSessionID() + "A",
		"one too short":    authn.NewSessionID()[:42],
		"10 KB":            strings.Repeat("A", 10<<10),
		"invalid chars":    strings.Repeat("!", 43),
		"percent":          strings.Repeat("%", 43),
		"non-zero padding": authn.NewSessionID()[:42] + "B",
		"unknown ID":       authn.NewSessionID(),
		"empty":            "",
		"quoted":           `"` + authn.NewSessionID()[:41] + `"`,
		"utf-8":            strings.Repeat("é", 21) + "x",
	} {
		for _, app := range []string{"whoami", "secure"} {
			req := newRequest(t, http.MethodGet, env.AppURL(app)+"/", nil, asNavigation)
			req.Header.Set("Cookie", authn.SessionCookie+"="+v)
			r := do(t, c, req)
			if r.StatusCode != http.StatusFound {
				t.Errorf("%s cookie %q navigation: status %d, want 302 to login", app, name, r.StatusCode)
			} else {
				expectRedirect(t, r, http.StatusFound, authHost, authn.PathLogin)
			}
			req = newRequest(t, http.MethodGet, env.AppURL(app)+"/", nil, asAPI)
			req.Header.Set("Cookie", authn.SessionCookie+"="+v)
			if r := do(t, c, req); r.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s cookie %q API: status %d, want 401", app, name, r.StatusCode)
			}
		}
	}
}

// A cookie from before a revocation opens nothing afterwards, and a new
// login is a new session.
func TestAttackRevokedSessionCookie(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	old := sessionCookie(t, env, alice, "whoami")
	whoamiAs(t, alice, env, "whoami", "/")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := env.Edge.Sessions().Revoke(ctx, sessionKey(old)); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, env)
	for _, app := range []string{"whoami", "secure"} {
		expectJSONError(t, do(t, c, withCookie(t, http.MethodGet, env.AppURL(app)+"/", old, asAPI)), http.StatusUnauthorized, "unauthenticated")
		r := do(t, c, withCookie(t, http.MethodGet, env.AppURL(app)+"/", old, asNavigation))
		expectRedirect(t, r, http.StatusFound, hostOf(t, env.AuthOrigin), authn.PathLogin)
	}
	// Nor does it carry over to the auth host: the next login asks the IdP.
	r := do(t, c, withCookie(t, http.MethodGet, env.AuthOrigin+authn.PathLogin+"?rd="+url.QueryEscape(env.AppURL("whoami")+"/")+"&hb="+strings.Repeat("ab", 32), old, asNavigation))
	expectRedirect(t, r, http.StatusFound, hostOf(t, env.IdP.Issuer()), "")

	again := loginAs(t, env, "whoami", "alice", alicePassword)
	if nc := sessionCookie(t, env, again, "whoami"); nc == old {
		t.Fatal("a new login reused the revoked session ID")
	}
	whoamiAs(t, again, env, "whoami", "/")
	expectJSONError(t, do(t, c, withCookie(t, http.MethodGet, env.AppURL("whoami")+"/", old, asAPI)), http.StatusUnauthorized, "unauthenticated")
}
