package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/posture"
)

// enrollDevice enrolls a new device for user through the registry
// (enrollment itself is tested over HTTP elsewhere) and returns its ID and
// a TLS client certificate with its key.
func enrollDevice(t *testing.T, env *devenv.Env, user string) (string, tls.Certificate) {
	t.Helper()
	return enrollNamedDevice(t, env, user, "test laptop")
}

// enrollNamedDevice is enrollDevice for a device enrolled under name.
func enrollNamedDevice(t *testing.T, env *devenv.Env, user, name string) (string, tls.Certificate) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := posture.SignEnrollProof(key)
	if err != nil {
		t.Fatal(err)
	}
	dev, der, err := env.Edge.Devices().EnrollFor(ctx, user, &key.PublicKey, name, "linux", proof, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return dev.ID, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// withDeviceCert is a client of env that presents cert.
func withDeviceCert(t *testing.T, env *devenv.Env, cert tls.Certificate) *http.Client {
	t.Helper()
	c := newClient(t, env)
	c.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{cert}
	return c
}

func getWithCookie(t *testing.T, c *http.Client, url, cookie string) *response {
	t.Helper()
	req := newRequest(t, "GET", url, nil, asAPI)
	req.AddCookie(&http.Cookie{Name: authn.SessionCookie, Value: cookie})
	return do(t, c, req)
}

// The device step of the pipeline: a device certificate from the edge's
// device CA identifies the device on every request; the app's assertion
// and the audit log name it; a revoked device or one enrolled to another
// user is refused, and its live connections are closed.
func TestDeviceCertificateIdentifiesTheDevice(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", "alice-password")
	aliceCookie := sessionCookie(t, env, alice, "whoami")
	bob := loginAs(t, env, "whoami", "bob", "bob-password")
	bobCookie := sessionCookie(t, env, bob, "whoami")
	devID, cert := enrollDevice(t, env, "u-alice")
	dc := withDeviceCert(t, env, cert)

	r := getWithCookie(t, dc, env.AppURL("whoami")+"/?format=json", aliceCookie)
	if r.StatusCode != http.StatusOK {
		t.Fatalf("alice on her device: %d %s", r.StatusCode, r.Body)
	}
	rep := decodeReport(t, r.Body)
	if rep.Claims == nil || rep.Claims.Device != devID {
		t.Errorf("assertion device = %+v, want %s", rep.Claims, devID)
	}
	if rep.ProxyIdentity == nil || rep.ProxyIdentity.Device != devID {
		t.Errorf("PROXY identity device = %+v, want %s", rep.ProxyIdentity, devID)
	}
	waitFor(t, 5*time.Second, "an audit event naming the device", func() bool {
		return strings.Contains(auditLog(t, env).String(), `"device":"`+devID+`"`)
	})
	// Without a certificate the same session works, as no device.
	if rep := whoamiAs(t, alice, env, "whoami", "/"); rep.Claims == nil || rep.Claims.Device != "" {
		t.Errorf("no certificate should mean no device, got %+v", rep.Claims)
	}

	// A device enrolled to alice does not serve bob's session.
	r = getWithCookie(t, dc, env.AppURL("whoami")+"/?format=json", bobCookie)
	expectJSONError(t, r, http.StatusForbidden, "device_refused")

	// A live WebSocket from the device closes when the device is revoked,
	// and the device is refused from then on.
	d := wsDialer(t, env)
	d.TLSClientConfig.Certificates = []tls.Certificate{cert}
	h := http.Header{}
	h.Set("Cookie", authn.SessionCookie+"="+aliceCookie)
	ws, _, err := d.Dial(strings.Replace(env.AppURL("whoami"), "https://", "wss://", 1)+"/ws", h)
	if err != nil {
		t.Fatalf("websocket from the device: %v", err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.ReadMessage(); err != nil || string(msg) != "u-alice: hi" {
		t.Fatalf("echo %q, %v", msg, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := env.Edge.Devices().Revoke(ctx, devID, "lost laptop"); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := ws.ReadMessage(); err == nil {
		t.Fatal("the WebSocket of a revoked device stayed open")
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("the revoked device's WebSocket closed after %s, want within 1s", el)
	}
	dc2 := withDeviceCert(t, env, cert) // a fresh connection
	r = getWithCookie(t, dc2, env.AppURL("whoami")+"/?format=json", aliceCookie)
	expectJSONError(t, r, http.StatusForbidden, "device_refused")
}

// A client certificate from another CA never reaches the pipeline: the TLS
// handshake refuses it.
func TestDeviceCertificateFromAnotherCARefused(t *testing.T) {
	env := newEnv(t)
	other, err := posture.LoadOrCreateDeviceCA(t.TempDir()+"/ca.pem", t.TempDir()+"/ca-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := other.Issue("dev-forged", "u-alice", &key.PublicKey, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c := withDeviceCert(t, env, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key})
	req := newRequest(t, "GET", env.AppURL("whoami")+"/", nil, asAPI)
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a certificate from another CA got an answer: %d", resp.StatusCode)
	}
}
