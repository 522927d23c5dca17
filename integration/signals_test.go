package integration

// signals_test.go: detect → isolate → inform → reconnect, end to end. A
// Falcosidekick webhook (or a generic JSON signal) with the signal token
// quarantines a device: its live connections close within a second, its
// requests get the inform page naming the detection, and it comes back when
// an admin releases it or, where configured, when its agent reports it
// healthy again. The signal and admin APIs refuse what they must.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/proxy"
)

// falcoRule and falcoReason are the detection in testdata/falco-critical.json
// (its output line without Falco's time and priority prefix).
const (
	falcoRule   = "Read sensitive file untrusted"
	falcoReason = "Sensitive file opened for reading by non-trusted program (file=/etc/shadow"
)

// falcoPayload is the Falcosidekick webhook body of
// testdata/falco-critical.json about device (output_fields["ztna.device"];
// left out when "") on host hostname, changed by tune (nil: as is).
func falcoPayload(t *testing.T, device, hostname string, tune func(map[string]any)) []byte {
	t.Helper()
	raw, err := os.ReadFile("testdata/falco-critical.json")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // keep evt.time's nanoseconds as sent
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("testdata/falco-critical.json: %v", err)
	}
	m["hostname"] = hostname
	fields := m["output_fields"].(map[string]any)
	if device == "" {
		delete(fields, posture.FalcoDeviceField)
	} else {
		fields[posture.FalcoDeviceField] = device
	}
	if tune != nil {
		tune(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// adminCall calls the admin API with the admin token; body "" sends none.
func adminCall(t *testing.T, env *devenv.Env, method, path, body string) *response {
	t.Helper()
	req := newRequest(t, method, env.AuthOrigin+path, strings.NewReader(body), asAPI)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+env.AdminToken)
	return do(t, newClient(t, env), req)
}

// quarantineList is GET /api/quarantine.
func quarantineList(t *testing.T, env *devenv.Env) []posture.QuarantineEntry {
	t.Helper()
	r := adminCall(t, env, http.MethodGet, proxy.PathQuarantine, "")
	if r.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %.300s", proxy.PathQuarantine, r.StatusCode, r.Body)
	}
	var out struct {
		Quarantine []posture.QuarantineEntry `json:"quarantine"`
	}
	if err := json.Unmarshal(r.Body, &out); err != nil {
		t.Fatalf("quarantine list: %v: %.300s", err, r.Body)
	}
	return out.Quarantine
}

// expectSignal checks a signal API answer: 200 with outcome and exactly
// the devices given.
func expectSignal(t *testing.T, r *response, outcome string, devices ...string) {
	t.Helper()
	out := decodeObject(t, r, http.StatusOK)
	var got []string
	if list, ok := out["devices"].([]any); ok {
		for _, d := range list {
			s, _ := d.(string)
			got = append(got, s)
		}
	}
	if out["outcome"] != outcome || !slices.Equal(got, devices) {
		t.Fatalf("signal answer %v, want outcome %s for devices %v", out, outcome, devices)
	}
}

// scrapeMetric reads one sample (name with its labels, as exposed) from
// the admin listener's /metrics.
func scrapeMetric(t *testing.T, env *devenv.Env, name string) (float64, bool) {
	t.Helper()
	addr := env.Server.AdminAddr()
	if addr == nil {
		t.Fatal("the admin listener is off")
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f, true
		}
	}
	return 0, false
}

// expectQuarantined checks that c's request to url is refused as
// quarantined by who ("This device", "Your account") and returns the check.
func expectQuarantined(t *testing.T, c *http.Client, url, who string) postureError {
	t.Helper()
	e := decodePostureError(t, get(t, c, url, asAPI), http.StatusForbidden, "quarantined")
	if !slices.Equal(e.checkNames(), []string{"quarantine"}) || !strings.HasPrefix(e.Message, who) {
		t.Fatalf("quarantine refusal: message %q checks %v, want %q… with [quarantine]", e.Message, e.checkNames(), who)
	}
	return e
}

// A Falcosidekick detection about a device isolates it at once: its live
// WebSocket closes within 1s, its requests get the inform page naming the
// detection, its agent hears it, the isolation time is measured, the admin
// lists it and releases it, and access returns. The same user on another
// device, or without one, is not affected.
func TestSignalFalcoQuarantinesDevice(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	a := enrollReporter(t, env, "u-alice", "alice-laptop")
	other := enrollReporter(t, env, "u-alice", "alice-desktop")
	onA := onDevice(t, env, alice, a.cert, "whoami")
	onOther := onDevice(t, env, alice, other.cert, "whoami")
	whoami := env.AppURL("whoami") + "/?format=json"
	waitAllowed(t, onA, whoami, time.Second)
	if n, _ := scrapeMetric(t, env, "ztna_posture_isolation_seconds_count"); n != 0 {
		t.Fatalf("isolation samples before any signal: %v", n)
	}

	_, closed := deviceWS(t, env, onA, "whoami", a.cert)
	sent := time.Now()
	r := postSignal(t, env, proxy.PathSignalsFalco, "Bearer "+env.SignalsToken, falcoPayload(t, a.id, "alice-laptop", nil))
	expectSignal(t, r, "quarantined", a.id)
	select {
	case at := <-closed:
		el := at.Sub(sent)
		t.Logf("the device's WebSocket closed %v after the signal was sent", el.Round(time.Millisecond))
		if el > time.Second {
			t.Errorf("the WebSocket closed %v after the signal, want within 1s", el)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the quarantined device's WebSocket stayed open 2s after the signal")
	}

	// Inform: what was detected, by whom, and what to do.
	e := expectQuarantined(t, onA, whoami, "This device")
	if reason := e.Checks[0].Reason; !strings.HasPrefix(reason, falcoReason) || strings.Contains(reason, "09:42:17") {
		t.Errorf("quarantine reason %q, want Falco's output line without its time and priority", reason)
	}
	if !strings.Contains(e.Message, "falco") {
		t.Errorf("quarantine message %q does not name the source", e.Message)
	}
	page := get(t, onA, env.AppURL("whoami")+"/", asNavigation)
	if page.StatusCode != http.StatusForbidden || !bytes.Contains(page.Body, []byte(`data-check="quarantine"`)) || !bytes.Contains(page.Body, []byte("Sensitive file opened for reading")) {
		t.Errorf("quarantine page: %d %.500s", page.StatusCode, page.Body)
	}
	// Only that device: alice elsewhere is not isolated.
	waitAllowed(t, onOther, whoami, time.Second)
	waitAllowed(t, alice, whoami, time.Second)
	// The agent hears it in the answer to its next report.
	ans := a.accept(t, env, sign(t, a.key, a.report(a.nonce(t, env))))
	if !ans.Quarantined || ans.Quarantine == nil || !strings.HasPrefix(ans.Quarantine.Reason, falcoReason) || ans.Quarantine.Source != "falco" {
		t.Errorf("report answer while quarantined: %+v", ans)
	}

	// Measured and listed.
	if n, ok := scrapeMetric(t, env, "ztna_posture_isolation_seconds_count"); !ok || n < 1 {
		t.Errorf("ztna_posture_isolation_seconds_count = %v (found %t), want a sample", n, ok)
	}
	if n, _ := scrapeMetric(t, env, `ztna_posture_isolation_seconds_bucket{le="1"}`); n < 1 {
		t.Errorf("no isolation within 1s recorded")
	}
	if n, _ := scrapeMetric(t, env, "ztna_posture_quarantined"); n != 1 {
		t.Errorf("ztna_posture_quarantined = %v, want 1", n)
	}
	list := quarantineList(t, env)
	if len(list) != 1 || list[0].Kind != posture.QuarantineDevice || list[0].ID != a.id || list[0].Source != "falco" ||
		list[0].Rule != falcoRule || list[0].Severity != posture.SeverityCritical || list[0].SignalAt.IsZero() {
		t.Errorf("quarantine list %+v", list)
	}
	waitPostureAudit(t, env, "the signal", func(ev postureAudit) bool {
		return ev.Kind == "signal" && ev.Device == a.id && ev.Decision == "quarantined" && ev.Rule == falcoRule && ev.Source == "falco"
	})
	waitPostureAudit(t, env, "a request refused as quarantined", func(ev postureAudit) bool {
		return ev.Kind == "request" && ev.App == "whoami" && ev.Device == a.id && ev.Posture == "quarantined" && ev.Decision == "deny"
	})

	// The same detection again, a while later, while still isolated: the
	// time to isolate it is measured from this signal, not the first one.
	waitFor(t, 5*time.Second, "1.5s since the first signal", func() bool { return time.Since(sent) > 1500*time.Millisecond })
	expectSignal(t, postSignal(t, env, proxy.PathSignalsFalco, "Bearer "+env.SignalsToken, falcoPayload(t, a.id, "alice-laptop", nil)), "quarantined", a.id)
	count, _ := scrapeMetric(t, env, "ztna_posture_isolation_seconds_count")
	within, _ := scrapeMetric(t, env, `ztna_posture_isolation_seconds_bucket{le="1"}`)
	if count != 2 || within != count {
		t.Errorf("isolation samples: %v, of which %v within 1s; want 2, both within 1s (a repeat detection was measured from the first signal)", count, within)
	}

	// Reconnect: the admin releases the device.
	decodeObject(t, adminCall(t, env, http.MethodPost, "/api/devices/"+a.id+"/release", ""), http.StatusOK)
	waitAllowed(t, onA, whoami, time.Second)
	expectJSONError(t, adminCall(t, env, http.MethodPost, "/api/devices/"+a.id+"/release", ""), http.StatusNotFound, "not_quarantined")
	if n, _ := scrapeMetric(t, env, "ztna_posture_quarantined"); n != 0 {
		t.Errorf("ztna_posture_quarantined after the release = %v, want 0", n)
	}
}

// The signal API refuses what it must and changes nothing then: no, a
// wrong or the admin's token (and the admin API refuses the signal token),
// oversized and malformed bodies. Below min_severity a detection is
// recorded, not acted on; an unknown device is reported as such; a Falco
// event without the device field finds the device by its enrolled name.
func TestSignalAPIRefusesAndMatches(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	a := enrollReporter(t, env, "u-alice", "alice-laptop")
	b := enrollReporter(t, env, "u-alice", "alice-desktop")
	onA := onDevice(t, env, alice, a.cert, "whoami")
	onB := onDevice(t, env, alice, b.cert, "whoami")
	whoami := env.AppURL("whoami") + "/?format=json"
	body := falcoPayload(t, a.id, "alice-laptop", nil)

	for name, auth := range map[string]string{
		"no token":        "",
		"wrong token":     "Bearer " + strings.Repeat("x", len(env.SignalsToken)),
		"token prefix":    "Bearer " + env.SignalsToken[:len(env.SignalsToken)-1],
		"the admin token": "Bearer " + env.AdminToken,
		"not bearer":      "Basic " + env.SignalsToken,
	} {
		r := postSignal(t, env, proxy.PathSignalsFalco, auth, body)
		expectJSONError(t, r, http.StatusUnauthorized, "unauthenticated")
		if r.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", name)
		}
	}
	req := newRequest(t, http.MethodGet, env.AuthOrigin+proxy.PathQuarantine, nil, asAPI)
	req.Header.Set("Authorization", "Bearer "+env.SignalsToken)
	expectJSONError(t, do(t, newClient(t, env), req), http.StatusUnauthorized, "unauthenticated")

	signals := "Bearer " + env.SignalsToken
	oversized := []byte(`{"priority":"Critical","rule":"x","output":"` + strings.Repeat("A", posture.MaxSignalBytes) + `","hostname":"alice-laptop"}`)
	expectJSONError(t, postSignal(t, env, proxy.PathSignalsFalco, signals, oversized), http.StatusRequestEntityTooLarge, "")
	for name, bad := range map[string][]byte{
		"not JSON":       []byte(`{"priority":`),
		"no priority":    falcoPayload(t, a.id, "alice-laptop", func(m map[string]any) { delete(m, "priority") }),
		"two priorities": append([]byte(`{"priority":"Debug",`), falcoPayload(t, a.id, "alice-laptop", nil)[1:]...),
	} {
		if r := postSignal(t, env, proxy.PathSignalsFalco, signals, bad); r.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400: %.200s", name, r.StatusCode, r.Body)
		}
	}
	if r := postSignal(t, env, proxy.PathSignals, signals, map[string]any{"severity": "critical", "device_id": a.id, "reason": "x", "extra": 1}); r.StatusCode != http.StatusBadRequest {
		t.Errorf("generic signal with an unknown field: %d, want 400", r.StatusCode)
	}
	req = newRequest(t, http.MethodGet, env.AuthOrigin+proxy.PathSignals, nil, asAPI)
	req.Header.Set("Authorization", signals)
	expectJSONError(t, do(t, newClient(t, env), req), http.StatusMethodNotAllowed, "")

	// Below min_severity (warning here): recorded only.
	notice := falcoPayload(t, a.id, "alice-laptop", func(m map[string]any) {
		m["priority"] = "Notice"
		m["output"] = strings.Replace(m["output"].(string), "Critical", "Notice", 1)
	})
	expectSignal(t, postSignal(t, env, proxy.PathSignalsFalco, signals, notice), "recorded", a.id)
	expectSignal(t, postSignal(t, env, proxy.PathSignals, signals, map[string]string{
		"source": "crowdstrike", "severity": "low", "device_id": a.id, "reason": "Adware bundle detected"}), "recorded", a.id)
	waitPostureAudit(t, env, "the recorded signal", func(ev postureAudit) bool {
		return ev.Kind == "signal" && ev.Device == a.id && ev.Decision == "recorded"
	})
	// About no enrolled device.
	unknown := postSignal(t, env, proxy.PathSignalsFalco, signals, falcoPayload(t, "dev-nosuchdevice", "alice-laptop", nil))
	expectJSONError(t, unknown, http.StatusNotFound, "unknown_device")

	// None of that changed anything.
	if list := quarantineList(t, env); len(list) != 0 {
		t.Fatalf("quarantined by refused or minor signals: %+v", list)
	}
	waitAllowed(t, onA, whoami, time.Second)

	// No ztna.device: the host name (any case) names the device.
	byHost := falcoPayload(t, "", "ALICE-LAPTOP", nil)
	expectSignal(t, postSignal(t, env, proxy.PathSignalsFalco, signals, byHost), "quarantined", a.id)
	expectQuarantined(t, onA, whoami, "This device")
	waitAllowed(t, onB, whoami, time.Second)
}

// With signals.release_profile, a device isolated by a signal comes back on
// its own once a report collected after the quarantine passes that profile;
// an earlier or failing report does not release it. An admin's quarantine
// is lifted only by an admin.
func TestQuarantineAutoRelease(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	applyConfig(t, env, func(cfg *proxy.Config) {
		cfg.Posture.Profiles = append(cfg.Posture.Profiles, posture.Profile{Name: "healthy", RequireFirewall: true, MaxAge: time.Minute})
		cfg.Signals.ReleaseProfile = "healthy"
	})
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	a := enrollReporter(t, env, "u-alice", "alice-laptop")
	onA := onDevice(t, env, alice, a.cert, "whoami")
	whoami := env.AppURL("whoami") + "/?format=json"
	nonce := a.accept(t, env, sign(t, a.key, a.report(a.nonce(t, env)))).NextNonce

	beforeSignal := time.Now()
	expectSignal(t, postSignal(t, env, proxy.PathSignals, "Bearer "+env.SignalsToken, map[string]string{
		"source": "crowdstrike", "severity": "critical", "device_id": a.id, "rule": "Ransomware.FileEncryption",
		"reason": "Mass file encryption by an unsigned process"}), "quarantined", a.id)
	e := expectQuarantined(t, onA, whoami, "This device")
	if !strings.Contains(e.Checks[0].Fix, "automatically") {
		t.Errorf("quarantine fix %q should say access returns automatically", e.Checks[0].Fix)
	}

	report := func(collected time.Time, firewall bool) reportAnswer {
		t.Helper()
		r := a.report(nonce)
		r.CollectedAt, r.FirewallActive = collected, &firewall
		ans := a.accept(t, env, sign(t, a.key, r))
		nonce = ans.NextNonce
		return ans
	}
	if ans := report(beforeSignal, true); !ans.Quarantined {
		t.Fatal("a report collected before the quarantine released it")
	}
	if ans := report(time.Now(), false); !ans.Quarantined {
		t.Fatal("a report failing the release profile released the quarantine")
	}
	expectQuarantined(t, onA, whoami, "This device")
	if ans := report(time.Now(), true); ans.Quarantined {
		t.Fatalf("a passing report after the quarantine did not release it: %+v", ans)
	}
	waitAllowed(t, onA, whoami, time.Second)
	if list := quarantineList(t, env); len(list) != 0 {
		t.Errorf("still listed after the automatic release: %+v", list)
	}

	// Two detections: a report collected between them shows nothing about
	// the second, so it must not release (posture.QuarantineEntry.LastAt:
	// "Auto-release compares with it").
	detect := func(rule string) {
		t.Helper()
		expectSignal(t, postSignal(t, env, proxy.PathSignals, "Bearer "+env.SignalsToken, map[string]string{
			"source": "crowdstrike", "severity": "critical", "device_id": a.id, "rule": rule, "reason": "Detection " + rule}), "quarantined", a.id)
	}
	detect("First.Detection")
	between := time.Now()
	detect("Second.Detection")
	if ans := report(between, true); !ans.Quarantined {
		t.Errorf("a report collected between two detections released the second quarantine")
	}
	if ans := report(time.Now(), true); ans.Quarantined {
		t.Fatalf("a passing report after both detections did not release: %+v", ans)
	}
	waitAllowed(t, onA, whoami, time.Second)

	// An admin's quarantine, with the admin's words.
	expectJSONError(t, adminCall(t, env, http.MethodPost, "/api/devices/"+a.id+"/quarantine", `{"reason":" "}`), http.StatusBadRequest, "")
	expectJSONError(t, adminCall(t, env, http.MethodPost, "/api/devices/dev-nosuchdevice/quarantine", `{"reason":"x"}`), http.StatusNotFound, "unknown_device")
	decodeObject(t, adminCall(t, env, http.MethodPost, "/api/devices/"+a.id+"/quarantine",
		`{"reason":"Laptop reported stolen","fix":"Call the service desk to get it back"}`), http.StatusOK)
	e = expectQuarantined(t, onA, whoami, "This device")
	if c := e.Checks[0]; c.Reason != "Laptop reported stolen" || c.Fix != "Call the service desk to get it back" {
		t.Errorf("admin quarantine check %+v", c)
	}
	if ans := report(time.Now(), true); !ans.Quarantined {
		t.Fatal("a passing report released an admin's quarantine")
	}
	decodeObject(t, adminCall(t, env, http.MethodPost, "/api/devices/"+a.id+"/release", `{"reason":"found"}`), http.StatusOK)
	waitAllowed(t, onA, whoami, time.Second)
}

// With signals.quarantine_user, a detection on a device isolates its user
// too: every request of theirs is refused, from no device as well, and
// their live WebSocket closes. A user-level signal isolates a user with no
// device at all. Releasing the user leaves the device isolated.
func TestQuarantineUser(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	applyConfig(t, env, func(cfg *proxy.Config) { cfg.Signals.QuarantineUser = true })
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	bob := loginAs(t, env, "whoami", "bob", bobPassword)
	a := enrollReporter(t, env, "u-alice", "alice-laptop")
	onA := onDevice(t, env, alice, a.cert, "whoami")
	whoami := env.AppURL("whoami") + "/?format=json"

	// alice's WebSocket from a browser without a device.
	ws, _, err := wsDial(t, env, "whoami", "/ws", sessionCookie(t, env, alice, "whoami"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.ReadMessage(); err != nil || string(msg) != "u-alice: hi" {
		t.Fatalf("echo %q, %v", msg, err)
	}
	closed := watchClose(ws)

	sent := time.Now()
	expectSignal(t, postSignal(t, env, proxy.PathSignalsFalco, "Bearer "+env.SignalsToken, falcoPayload(t, a.id, "alice-laptop", nil)), "quarantined", a.id)
	select {
	case at := <-closed:
		if el := at.Sub(sent); el > time.Second {
			t.Errorf("alice's WebSocket closed %v after the signal, want within 1s", el)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the quarantined user's WebSocket stayed open")
	}
	expectQuarantined(t, alice, whoami, "Your account")
	expectQuarantined(t, onA, whoami, "Your account")
	waitAllowed(t, bob, whoami, time.Second)
	var kinds []string
	for _, q := range quarantineList(t, env) {
		kinds = append(kinds, q.Kind+":"+q.ID)
	}
	slices.Sort(kinds)
	if want := []string{"device:" + a.id, "user:u-alice"}; !slices.Equal(kinds, want) {
		t.Errorf("quarantined %v, want %v", kinds, want)
	}

	// A user-level signal: no device involved.
	expectSignal(t, postSignal(t, env, proxy.PathSignals, "Bearer "+env.SignalsToken, map[string]string{
		"source": "idp-risk", "severity": "critical", "user": "u-bob", "reason": "Sign-ins from two countries within 10 minutes"}), "quarantined")
	e := expectQuarantined(t, bob, whoami, "Your account")
	if !strings.Contains(e.Checks[0].Reason, "two countries") {
		t.Errorf("bob's quarantine reason %q", e.Checks[0].Reason)
	}

	// Releasing alice's account: her browser works; the device stays
	// isolated until it is released too.
	decodeObject(t, adminCall(t, env, http.MethodPost, "/api/users/u-alice/release", ""), http.StatusOK)
	waitAllowed(t, alice, whoami, time.Second)
	expectQuarantined(t, onA, whoami, "This device")
	decodeObject(t, adminCall(t, env, http.MethodPost, "/api/devices/"+a.id+"/release", ""), http.StatusOK)
	waitAllowed(t, onA, whoami, time.Second)
	decodeObject(t, adminCall(t, env, http.MethodPost, "/api/users/u-bob/release", ""), http.StatusOK)
	waitAllowed(t, bob, whoami, time.Second)
	if list := quarantineList(t, env); len(list) != 0 {
		t.Errorf("still quarantined: %+v", list)
	}
}
