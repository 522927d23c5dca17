package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/proxy"
)

// postJSON posts v to the auth host's path and decodes the JSON answer.
func postJSON(t *testing.T, env *devenv.Env, path string, v any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(v)
	req, err := http.NewRequest("POST", env.AuthOrigin+path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	r := do(t, newClient(t, env), req)
	out := map[string]any{}
	if err := json.Unmarshal(r.Body, &out); err != nil {
		t.Fatalf("POST %s: %d, not JSON: %.300s", path, r.StatusCode, r.Body)
	}
	return r.StatusCode, out
}

// The device flow over HTTP, as `ztna agent enroll` and a browser do it:
// the agent starts, the signed-in user approves the code on the auth host,
// the agent collects a certificate that then identifies the device.
func TestDeviceEnrollmentOverHTTP(t *testing.T) {
	env := newEnv(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	proof, err := posture.SignEnrollProof(key)
	if err != nil {
		t.Fatal(err)
	}
	status, start := postJSON(t, env, proxy.PathDeviceEnroll, map[string]string{
		"public_key": base64.StdEncoding.EncodeToString(der), "name": "alice-laptop", "platform": "linux",
		"proof": base64.StdEncoding.EncodeToString(proof),
	})
	if status != 200 {
		t.Fatalf("enroll: %d %v", status, start)
	}
	enrollmentID, _ := start["enrollment_id"].(string)
	page, _ := start["verification_uri_complete"].(string)
	if enrollmentID == "" || !strings.HasPrefix(page, env.AuthOrigin+proxy.PathDevice+"?code=") {
		t.Fatalf("enroll answer %v", start)
	}

	// Before approval the agent hears "pending".
	if status, tok := postJSON(t, env, proxy.PathDeviceToken, map[string]string{"enrollment_id": enrollmentID}); status != 400 || tok["error"] != "authorization_pending" {
		t.Fatalf("token before approval: %d %v", status, tok)
	}

	// Signed out, the approval page sends the browser to sign in and back.
	anon := newClient(t, env)
	r := get(t, anon, page, asNavigation)
	loc := expectRedirect(t, r, http.StatusFound, hostOf(t, env.AuthOrigin), "/.ztna/login")
	if rd := loc.Query().Get("rd"); rd != page {
		t.Errorf("login return address %q, want the approval page %q", rd, page)
	}

	// Signed in as alice: the page shows the device; a post without the
	// CSRF token is refused; with it, the device is approved.
	alice := loginAs(t, env, "whoami", "alice", "alice-password")
	r = get(t, alice, page, asNavigation)
	if r.StatusCode != 200 || !bytes.Contains(r.Body, []byte("alice-laptop")) {
		t.Fatalf("approval page: %d %.300s", r.StatusCode, r.Body)
	}
	action, fields := formFields(t, r.Body)
	forged := url.Values{"code": {fields.Get("code")}, "decision": {"approve"}}
	req := newRequest(t, "POST", env.AuthOrigin+action, strings.NewReader(forged.Encode()), asNavigation)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if r := do(t, alice, req); r.StatusCode != http.StatusForbidden {
		t.Fatalf("approval without CSRF token: %d", r.StatusCode)
	}
	fields.Set("decision", "approve")
	req = newRequest(t, "POST", env.AuthOrigin+action, strings.NewReader(fields.Encode()), asNavigation)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if r := do(t, alice, req); r.StatusCode != 200 || !bytes.Contains(r.Body, []byte("Device approved")) {
		t.Fatalf("approve: %d %.300s", r.StatusCode, r.Body)
	}

	// Poll as an agent does: no faster than the interval (a faster poll
	// hears slow_down).
	var tok map[string]any
	deadline := time.Now().Add(15 * time.Second)
	for {
		status, tok = postJSON(t, env, proxy.PathDeviceToken, map[string]string{"enrollment_id": enrollmentID})
		if status == 200 || tok["error"] != "slow_down" || time.Now().After(deadline) {
			break
		}
		time.Sleep(posture.PollInterval)
	}
	if status != 200 {
		t.Fatalf("token after approval: %d %v", status, tok)
	}
	blk, _ := pem.Decode([]byte(tok["certificate"].(string)))
	if blk == nil {
		t.Fatalf("no certificate PEM in %v", tok)
	}
	devID := tok["device_id"].(string)
	// Collected once only.
	if status, again := postJSON(t, env, proxy.PathDeviceToken, map[string]string{"enrollment_id": enrollmentID}); status != 400 || again["error"] != "expired_token" {
		t.Errorf("second collection: %d %v", status, again)
	}

	dc := withDeviceCert(t, env, tls.Certificate{Certificate: [][]byte{blk.Bytes}, PrivateKey: key})
	r = getWithCookie(t, dc, env.AppURL("whoami")+"/?format=json", sessionCookie(t, env, alice, "whoami"))
	if rep := decodeReport(t, r.Body); rep.Claims == nil || rep.Claims.Device != devID {
		t.Fatalf("the enrolled device is not identified: %d %+v", r.StatusCode, rep.Claims)
	}
}

func TestDeviceEnrollRejectsBadRequests(t *testing.T) {
	env := newEnv(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	wrongProof, _ := posture.SignEnrollProof(other)
	for name, body := range map[string]any{
		"proof by another key": map[string]string{"public_key": base64.StdEncoding.EncodeToString(der), "name": "x", "platform": "linux", "proof": base64.StdEncoding.EncodeToString(wrongProof)},
		"not base64":           map[string]string{"public_key": "!!", "name": "x", "platform": "linux", "proof": "!!"},
		"unknown field":        map[string]string{"public_key": "", "nme": "x"},
		"not a key":            map[string]string{"public_key": base64.StdEncoding.EncodeToString([]byte("garbage")), "name": "x", "platform": "linux", "proof": "AA=="},
	} {
		if status, out := postJSON(t, env, proxy.PathDeviceEnroll, body); status != 400 {
			t.Errorf("%s: %d %v, want 400", name, status, out)
		}
	}
	if status, out := postJSON(t, env, proxy.PathDeviceToken, map[string]string{"enrollment_id": "forged"}); status != 400 || out["error"] != "expired_token" {
		t.Errorf("forged enrollment id: %d %v", status, out)
	}
}
