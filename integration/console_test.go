package integration

import (
	"context"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy"
)

// The console over plain HTTP, as the admin's browser drives it: the
// changes that need no browser to show (a role change cutting a live
// WebSocket, a device approval) end to end through the real pipeline.

var csrfInput = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// adminPost loads page in the console as c (to read the form's CSRF
// token, as a browser would) and posts form to action; it returns the
// response to the post.
func adminPost(t *testing.T, env *devenv.Env, c *http.Client, page, action string, form url.Values) *response {
	t.Helper()
	r := get(t, c, env.AppURL("console")+page, asNavigation)
	if r.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %.300s", page, r.StatusCode, r.Body)
	}
	m := csrfInput.FindSubmatch(r.Body)
	if m == nil {
		t.Fatalf("GET %s: no form with a CSRF token: %.500s", page, r.Body)
	}
	form.Set("csrf", string(m[1]))
	req := newRequest(t, http.MethodPost, env.AppURL("console")+action, strings.NewReader(form.Encode()), asNavigation)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", env.AppURL("console"))
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	return do(t, c, req)
}

// TestConsoleAttributeChangeCutsLiveConnections: alice (Security Tech)
// holds a WebSocket to secure; an admin moves her to Finance in the
// console; the WebSocket closes within a second and her next request to
// secure is denied, with no new login; the change is audited with the
// admin as actor.
func TestConsoleAttributeChangeCutsLiveConnections(t *testing.T) {
	env := newEnv(t)
	admin := loginAs(t, env, "console", "admin", "admin-password")
	alice := loginAs(t, env, "secure", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "secure")

	h := http.Header{}
	h.Set("Cookie", authn.SessionCookie+"="+cookie)
	ws, _, err := wsDialer(t, env).Dial(strings.Replace(env.AppURL("secure"), "https://", "wss://", 1)+"/ws", h)
	if err != nil {
		t.Fatalf("alice's WebSocket to secure: %v", err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ws.ReadMessage(); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	r := adminPost(t, env, admin, "/user?sub=u-alice", "/user/attributes",
		url.Values{"sub": {"u-alice"}, "overrides": {"department=Finance"}})
	if r.StatusCode != http.StatusSeeOther || !strings.Contains(r.Header.Get("Location"), "ok=attributes") {
		t.Fatalf("attribute change: %d %s %.300s", r.StatusCode, r.Header.Get("Location"), r.Body)
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := ws.ReadMessage(); err == nil {
		t.Fatal("alice's WebSocket to secure stayed open after she left Security Tech")
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("the WebSocket closed %s after the change, want within 1s", el)
	}
	t.Logf("WebSocket closed %s after the console's POST", time.Since(start).Round(time.Millisecond))
	expectJSONError(t, getWithCookie(t, newClient(t, env), env.AppURL("secure")+"/", cookie), http.StatusForbidden, "access_denied")
	if r := getWithCookie(t, newClient(t, env), env.AppURL("whoami")+"/?format=json", cookie); r.StatusCode != http.StatusOK {
		t.Fatalf("alice's session should still work where Finance may go: %d", r.StatusCode)
	}
	waitFor(t, 5*time.Second, "the attribute change in the audit log with its actor", func() bool {
		log := auditLog(t, env).String()
		return strings.Contains(log, `"decision":"set-attributes"`) && strings.Contains(log, `"actor":"admin@example.com (u-admin)"`)
	})

	// Cleared: her IdP attributes again, and secure opens.
	r = adminPost(t, env, admin, "/user?sub=u-alice", "/user/attributes", url.Values{"sub": {"u-alice"}, "overrides": {""}})
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("clearing: %d %.300s", r.StatusCode, r.Body)
	}
	if r := getWithCookie(t, newClient(t, env), env.AppURL("secure")+"/", cookie); r.StatusCode != http.StatusOK {
		t.Fatalf("secure after the override was cleared: %d", r.StatusCode)
	}
}

// TestConsoleDeviceApproval: with devices.admin_approval a new device
// reports its posture but reaches no app until an admin approves it in
// the console.
func TestConsoleDeviceApproval(t *testing.T) {
	env := newEnvWith(t, func(o *devenv.Options) {
		o.Configure = func(c *proxy.Config) { c.Devices.AdminApproval = true }
	})
	admin := loginAs(t, env, "console", "admin", "admin-password")
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	devID, cert := enrollDevice(t, env, "u-alice")
	dc := withDeviceCert(t, env, cert)

	r := getWithCookie(t, dc, env.AppURL("whoami")+"/?format=json", cookie)
	expectJSONError(t, r, http.StatusForbidden, "device_pending")
	// The device may talk to the edge's device endpoints meanwhile.
	nr := do(t, dc, newRequest(t, http.MethodPost, env.AuthOrigin+proxy.PathDeviceNonce, nil, asAPI))
	if nr.StatusCode != http.StatusOK {
		t.Fatalf("a pending device's nonce request: %d %.200s", nr.StatusCode, nr.Body)
	}
	page := get(t, admin, env.AppURL("console")+"/device?id="+devID, asNavigation)
	if page.StatusCode != http.StatusOK || !strings.Contains(string(page.Body), "waiting for approval") {
		t.Fatalf("device page: %d %.300s", page.StatusCode, page.Body)
	}
	r = adminPost(t, env, admin, "/device?id="+devID, "/device/approve", url.Values{"id": {devID}})
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("approve: %d %.300s", r.StatusCode, r.Body)
	}
	dc2 := withDeviceCert(t, env, cert)
	if r := getWithCookie(t, dc2, env.AppURL("whoami")+"/?format=json", cookie); r.StatusCode != http.StatusOK {
		t.Fatalf("alice on her approved device: %d %.300s", r.StatusCode, r.Body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := env.Edge.Devices().Get(ctx, devID)
	if err != nil || d.PendingApproval || d.ApprovedBy != "admin@example.com" {
		t.Fatalf("device after approval: %v %+v", err, d)
	}
	// Approving twice is refused with a clear error.
	if r := adminPost(t, env, admin, "/device?id="+devID, "/device/approve", url.Values{"id": {devID}}); r.StatusCode != http.StatusConflict {
		t.Fatalf("second approval: %d", r.StatusCode)
	}
}

// TestConsoleIsolateInformReconnect is the seed's loop from the console:
// an admin isolates alice's device with a reason and a fix, alice is told
// both on her next request, and after the admin releases the device her
// next request gets through, with no new sign-in or enrollment.
func TestConsoleIsolateInformReconnect(t *testing.T) {
	env := newEnv(t)
	admin := loginAs(t, env, "console", "admin", "admin-password")
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	devID, cert := enrollDevice(t, env, "u-alice")
	dc := withDeviceCert(t, env, cert)
	app := env.AppURL("whoami") + "/?format=json"
	if r := getWithCookie(t, dc, app, cookie); r.StatusCode != http.StatusOK {
		t.Fatalf("before: %d", r.StatusCode)
	}
	r := adminPost(t, env, admin, "/device?id="+devID, "/device/quarantine",
		url.Values{"id": {devID}, "reason": {"Malware found by the EDR"}, "fix": {"Bring the laptop to the IT desk"}})
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("quarantine: %d %.300s", r.StatusCode, r.Body)
	}
	refused := getWithCookie(t, dc, app, cookie)
	expectJSONError(t, refused, http.StatusForbidden, "quarantined")
	if body := string(refused.Body); !strings.Contains(body, "Malware found by the EDR") || !strings.Contains(body, "Bring the laptop to the IT desk") {
		t.Fatalf("alice is not told the reason and the fix: %s", body)
	}
	r = adminPost(t, env, admin, "/device?id="+devID, "/device/release", url.Values{"id": {devID}})
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("release: %d %.300s", r.StatusCode, r.Body)
	}
	if r := getWithCookie(t, dc, app, cookie); r.StatusCode != http.StatusOK {
		t.Fatalf("after release: %d %.300s", r.StatusCode, r.Body)
	}
	waitFor(t, 5*time.Second, "quarantine and release audited with the admin", func() bool {
		log := auditLog(t, env).String()
		return strings.Contains(log, `"decision":"quarantine"`) && strings.Contains(log, `"decision":"release"`) &&
			strings.Count(log, `"actor":"admin@example.com (u-admin)"`) >= 2
	})
}

// TestConsoleLiveListsTunnels: alice's tunnel connection and her stream to
// echo are on the console's Live page with her device; revoking her
// session there ends both.
func TestConsoleLiveListsTunnels(t *testing.T) {
	env := newEnv(t)
	admin := loginAs(t, env, "console", "admin", "admin-password")
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	devID, cert := enrollDevice(t, env, "u-alice")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, s, br := echoStream(t, ctx, tunnelClient(t, env, cookie, &cert))

	page := get(t, admin, env.AppURL("console")+"/live", asNavigation)
	body := string(page.Body)
	for _, want := range []string{"Tunnel connections", "Tunnel streams", "alice@example.com", devID, ">echo<", authn.RefOf(hashOf(cookie))} {
		if !strings.Contains(body, want) {
			t.Fatalf("/live does not show %q: %.2000s", want, body)
		}
	}
	r := adminPost(t, env, admin, "/live", "/session/revoke", url.Values{"ref": {authn.RefOf(hashOf(cookie))}})
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("revoke: %d %.300s", r.StatusCode, r.Body)
	}
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadString('\n'); err == nil {
		t.Fatal("the tunnel stream outlived its revoked session")
	}
	waitFor(t, 5*time.Second, "/live without alice's tunnel", func() bool {
		return !strings.Contains(string(get(t, admin, env.AppURL("console")+"/live", asNavigation).Body), devID)
	})
}

// hashOf is the store key of a session cookie value (what its reference is
// cut from).
func hashOf(cookie string) string {
	key, ok := authn.ParseSessionID(cookie)
	if !ok {
		panic("not a session cookie")
	}
	return key
}
