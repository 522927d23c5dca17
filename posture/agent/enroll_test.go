package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/store/memory"
	"github.com/ztna-dev/ztna/posture"
)

// The test edge's clock runs testScale times faster than real time and the
// client's protocol second lasts testSecond, so the registry's real 2 s
// polling pace (posture.PollInterval) costs 200 ms here.
const (
	testScale  = 10
	testSecond = time.Second / testScale
)

// testEdge serves the enrollment protocol over real TLS on top of the real
// device registry, as the edge does.
type testEdge struct {
	srv  *httptest.Server
	devs *posture.Devices
	ca   *posture.DeviceCA

	start     time.Time
	skew      atomic.Int64 // added to the edge's clock
	interval  int          // advertised polling interval
	expiresIn int          // advertised; 0 means the enrollment's own expiry

	polls     atomic.Int32
	slowDowns atomic.Int32

	mu         sync.Mutex
	lastEnroll enrollRequest
}

func newTestEdge(t *testing.T, interval int) *testEdge {
	t.Helper()
	dir := t.TempDir()
	ca, err := posture.LoadOrCreateDeviceCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	st := memory.New(memory.Options{})
	e := &testEdge{devs: posture.NewDevices(st, ca, nil), ca: ca, start: time.Now(), interval: interval}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /.ztna/device/enroll", e.enroll)
	mux.HandleFunc("POST /.ztna/device/token", e.token)
	e.srv = httptest.NewTLSServer(mux)
	t.Cleanup(func() { e.srv.Close(); st.Close() })
	return e
}

func (e *testEdge) now() time.Time {
	return e.start.Add(time.Since(e.start)*testScale + time.Duration(e.skew.Load()))
}

func (e *testEdge) client(out io.Writer) *EnrollClient {
	return &EnrollClient{Server: e.srv.URL, HTTPClient: e.srv.Client(), Out: out, second: testSecond}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (e *testEdge) enroll(w http.ResponseWriter, r *http.Request) {
	var req enrollRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		writeJSON(w, 400, errorResponse{"invalid_request", err.Error()})
		return
	}
	e.mu.Lock()
	e.lastEnroll = req
	e.mu.Unlock()
	der, err1 := base64.StdEncoding.DecodeString(req.PublicKey)
	proof, err2 := base64.StdEncoding.DecodeString(req.Proof)
	if err := errors.Join(err1, err2); err != nil {
		writeJSON(w, 400, errorResponse{"invalid_request", err.Error()})
		return
	}
	k, err := x509.ParsePKIXPublicKey(der)
	pub, ok := k.(*ecdsa.PublicKey)
	if err != nil || !ok {
		writeJSON(w, 400, errorResponse{"invalid_request", "public_key is not an ECDSA key"})
		return
	}
	p, err := e.devs.StartEnrollment(r.Context(), pub, req.Name, req.Platform, proof)
	if err != nil {
		writeJSON(w, 400, errorResponse{"invalid_request", err.Error()})
		return
	}
	expires := e.expiresIn
	if expires == 0 {
		expires = int(time.Until(p.ExpiresAt) / time.Second)
	}
	uri := e.srv.URL + "/.ztna/device"
	writeJSON(w, 200, enrollResponse{
		EnrollmentID: p.EnrollmentID, UserCode: p.UserCode,
		VerificationURI: uri, VerificationURIComplete: uri + "?code=" + p.UserCode,
		ExpiresIn: expires, Interval: e.interval,
	})
}

func (e *testEdge) token(w http.ResponseWriter, r *http.Request) {
	e.polls.Add(1)
	var req tokenRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		writeJSON(w, 400, errorResponse{"invalid_request", err.Error()})
		return
	}
	dev, der, err := e.devs.Poll(r.Context(), req.EnrollmentID, e.now())
	code := ""
	switch {
	case err == nil:
		writeJSON(w, 200, tokenResponse{
			DeviceID:    dev.ID,
			Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			CA:          string(e.ca.CertPEM()),
		})
		return
	case errors.Is(err, posture.ErrPending):
		code = "authorization_pending"
	case errors.Is(err, posture.ErrSlowDown):
		e.slowDowns.Add(1)
		code = "slow_down"
	case errors.Is(err, posture.ErrDenied):
		code = "access_denied"
	case errors.Is(err, posture.ErrExpired):
		code = "expired_token"
	case errors.Is(err, posture.ErrNoEnrollment):
		code = "invalid_request"
	default:
		writeJSON(w, 500, errorResponse{"server_error", err.Error()})
		return
	}
	writeJSON(w, 400, errorResponse{code, err.Error()})
}

// syncBuffer is the agent's Out, read by the test while Enroll writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var promptRE = regexp.MustCompile(`To enroll this device, open (\S+) in a browser where you are signed in, and confirm the code ([A-Z]{4}-[A-Z]{4})\.\n`)

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// decideWhenShown waits (in its own goroutine) for the prompt on out and
// for ready, then calls decide with the user code, as a person in the
// browser would. The channel yields the outcome.
func decideWhenShown(out *syncBuffer, ready func() bool, decide func(code string) error) <-chan error {
	done := make(chan error, 1)
	go func() {
		var code string
		if !waitFor(10*time.Second, func() bool {
			m := promptRE.FindStringSubmatch(out.String())
			if m != nil {
				code = m[2]
			}
			return m != nil && (ready == nil || ready())
		}) {
			done <- fmt.Errorf("no prompt (or not ready) within 10s; out: %q", out.String())
			return
		}
		done <- decide(code)
	}()
	return done
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func readCertFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseOneCert(data)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestEnrollApproved(t *testing.T) {
	e := newTestEdge(t, 2)
	stateDir := filepath.Join(t.TempDir(), "ztna", "agent")
	ctx := testContext(t, 30*time.Second)

	enrollOnce := func(name string) string {
		t.Helper()
		out := &syncBuffer{}
		approved := decideWhenShown(out, nil, func(code string) error { return e.devs.Approve(ctx, code, "alice") })
		id, err := e.client(out).Enroll(ctx, stateDir, name)
		if aerr := <-approved; aerr != nil {
			t.Fatalf("approve: %v", aerr)
		}
		if err != nil {
			t.Fatalf("Enroll: %v; out: %s", err, out.String())
		}
		m := promptRE.FindStringSubmatch(out.String())
		if want := e.srv.URL + "/.ztna/device?code=" + m[2]; m[1] != want {
			t.Errorf("printed URL %q, want verification_uri_complete %q", m[1], want)
		}
		key, err := LoadOrCreateKey(stateDir)
		if err != nil {
			t.Fatal(err)
		}
		fp, _ := posture.KeyFingerprint(&key.PublicKey)
		if !strings.Contains(out.String(), fp[:16]) {
			t.Errorf("out does not show the key fingerprint %s…: %s", fp[:16], out.String())
		}
		return id
	}

	id1 := enrollOnce("laptop-1")
	e.mu.Lock()
	if e.lastEnroll.Name != "laptop-1" || e.lastEnroll.Platform != runtime.GOOS {
		t.Errorf("enroll request name %q platform %q, want laptop-1 %s", e.lastEnroll.Name, e.lastEnroll.Platform, runtime.GOOS)
	}
	e.mu.Unlock()

	// The certificate is the registry's, for this device's key, from the
	// CA the edge verifies client certificates with.
	key, err := LoadOrCreateKey(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM1, _ := os.ReadFile(filepath.Join(stateDir, KeyFile))
	cert := readCertFile(t, filepath.Join(stateDir, CertFile))
	devID, userID, err := e.ca.DeviceFromCert([]*x509.Certificate{cert}, e.now())
	if err != nil || devID != id1 || userID != "alice" {
		t.Fatalf("DeviceFromCert = %q, %q, %v; want %q, alice", devID, userID, err, id1)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Error("certificate is not for the device key")
	}
	dev, err := e.devs.Get(ctx, id1)
	if err != nil || dev.Name != "laptop-1" || dev.UserID != "alice" {
		t.Fatalf("registry device = %+v, %v", dev, err)
	}
	if caPEM, _ := os.ReadFile(filepath.Join(stateDir, CAFile)); !bytes.Equal(caPEM, e.ca.CertPEM()) {
		t.Error("device-ca.pem is not the edge's device CA")
	}
	var ds deviceState
	if data, err := os.ReadFile(filepath.Join(stateDir, DeviceFile)); err != nil || json.Unmarshal(data, &ds) != nil {
		t.Fatalf("device.json: %v", err)
	}
	if ds.DeviceID != id1 || ds.Server != e.srv.URL || ds.EnrolledAt.IsZero() {
		t.Errorf("device.json = %+v", ds)
	}
	if m := mode(t, stateDir); m != 0o700 {
		t.Errorf("state dir mode %#o, want 0700", m)
	}
	for _, f := range []string{KeyFile, CertFile, CAFile, DeviceFile} {
		if m := mode(t, filepath.Join(stateDir, f)); m != 0o600 {
			t.Errorf("%s mode %#o, want 0600", f, m)
		}
	}

	st, err := ReadStatus(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if st.DeviceID != id1 || st.UserID != "alice" || st.Server != e.srv.URL || !st.NotAfter.Equal(cert.NotAfter) ||
		st.Expired || !strings.Contains(st.Subject, "CN="+id1) {
		t.Errorf("status = %+v", st)
	}

	// Enrolling again keeps the key; the edge makes a new device for it.
	id2 := enrollOnce("laptop-1")
	if id2 == id1 {
		t.Error("second enrollment returned the same device ID")
	}
	if keyPEM2, _ := os.ReadFile(filepath.Join(stateDir, KeyFile)); !bytes.Equal(keyPEM1, keyPEM2) {
		t.Error("the device key changed on the second enrollment")
	}
	cert2 := readCertFile(t, filepath.Join(stateDir, CertFile))
	if !key.PublicKey.Equal(cert2.PublicKey) {
		t.Error("second certificate is not for the same key")
	}
	if st, err := ReadStatus(stateDir); err != nil || st.DeviceID != id2 {
		t.Errorf("status after re-enrolling = %+v, %v; want device %s", st, err, id2)
	}
}

// TestEnrollSlowDown: the edge advertises a 1 s interval, faster than the
// registry allows, so the registry answers slow_down; the agent adds 2 s and
// is never told again.
func TestEnrollSlowDown(t *testing.T) {
	e := newTestEdge(t, 1)
	stateDir := t.TempDir()
	ctx := testContext(t, 30*time.Second)
	out := &syncBuffer{}
	slowed := func() bool { return e.slowDowns.Load() > 0 }
	approved := decideWhenShown(out, slowed, func(code string) error {
		// Two more polls after the slow_down, both at the slower pace.
		if !waitFor(10*time.Second, func() bool { return e.polls.Load() >= 4 }) {
			return errors.New("polling stopped after slow_down")
		}
		return e.devs.Approve(ctx, code, "bob")
	})
	id, err := e.client(out).Enroll(ctx, stateDir, "box")
	if aerr := <-approved; aerr != nil {
		t.Fatal(aerr)
	}
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	if id == "" {
		t.Fatal("no device ID")
	}
	if n := e.slowDowns.Load(); n != 1 {
		t.Errorf("%d slow_down answers, want exactly 1 (the interval must grow by 2s after the first)", n)
	}
}

func TestEnrollNotApproved(t *testing.T) {
	tests := []struct {
		name      string
		expiresIn int           // advertised by the edge; 0 = real
		skew      time.Duration // the edge's clock ahead by
		timeout   time.Duration
		decide    func(e *testEdge, code string) error // nil: nobody decides
		want      error
	}{
		{name: "denied", decide: func(e *testEdge, code string) error { return e.devs.Deny(context.Background(), code) }, want: ErrDenied},
		{name: "expired at the edge", skew: posture.EnrollmentTTL + time.Minute, want: ErrExpired},
		{name: "expired at the agent", expiresIn: 1, want: ErrExpired},
		{name: "context timeout", timeout: 700 * time.Millisecond, want: context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEdge(t, 2)
			e.expiresIn = tt.expiresIn
			e.skew.Store(int64(tt.skew))
			stateDir := t.TempDir()
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 30 * time.Second
			}
			ctx := testContext(t, timeout)
			out := &syncBuffer{}
			var decided <-chan error
			if tt.decide != nil {
				decided = decideWhenShown(out, nil, func(code string) error { return tt.decide(e, code) })
			}
			start := time.Now()
			_, err := e.client(out).Enroll(ctx, stateDir, "box")
			if decided != nil {
				if derr := <-decided; derr != nil {
					t.Fatal(derr)
				}
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Enroll error = %v, want %v", err, tt.want)
			}
			if el := time.Since(start); el > 10*time.Second {
				t.Errorf("Enroll took %s to give up", el)
			}
			if _, err := os.Stat(filepath.Join(stateDir, KeyFile)); err != nil {
				t.Errorf("the device key should stay: %v", err)
			}
			for _, f := range []string{CertFile, CAFile, DeviceFile} {
				if _, err := os.Stat(filepath.Join(stateDir, f)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s written although not enrolled (%v)", f, err)
				}
			}
			if _, err := ReadStatus(stateDir); !errors.Is(err, ErrNotEnrolled) {
				t.Errorf("ReadStatus = %v, want ErrNotEnrolled", err)
			}
		})
	}
}

// badEdge answers the protocol in broken ways; the agent must fail with a
// clear error and write nothing.
func TestEnrollBadEdge(t *testing.T) {
	caDir := t.TempDir()
	ca, err := posture.LoadOrCreateDeviceCA(filepath.Join(caDir, "ca.pem"), filepath.Join(caDir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := posture.LoadOrCreateDeviceCA(filepath.Join(caDir, "ca2.pem"), filepath.Join(caDir, "ca2.key"))
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	issued := func(t *testing.T, issuer *posture.DeviceCA, id string, pub *ecdsa.PublicKey) tokenResponse {
		der, err := issuer.Issue(id, "alice", pub, 0, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tokenResponse{DeviceID: id, Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), CA: string(ca.CertPEM())}
	}
	big := `{"enrollment_id":"` + strings.Repeat("a", 70<<10) + `"}`
	redirected := &atomic.Int32{}
	elsewhere := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { redirected.Add(1) }))
	defer elsewhere.Close()

	type reply func(t *testing.T, w http.ResponseWriter, pub *ecdsa.PublicKey, n int)
	raw := func(status int, body string) reply {
		return func(_ *testing.T, w http.ResponseWriter, _ *ecdsa.PublicKey, _ int) {
			w.WriteHeader(status)
			io.WriteString(w, body)
		}
	}
	js := func(status int, v any) reply {
		return func(_ *testing.T, w http.ResponseWriter, _ *ecdsa.PublicKey, _ int) { writeJSON(w, status, v) }
	}
	start := func(mod func(*enrollResponse)) reply {
		return func(_ *testing.T, w http.ResponseWriter, _ *ecdsa.PublicKey, _ int) {
			r := enrollResponse{EnrollmentID: "id-1", UserCode: "BCDF-GHJK", VerificationURI: "https://auth.test/.ztna/device",
				VerificationURIComplete: "https://auth.test/.ztna/device?code=BCDF-GHJK", ExpiresIn: 60, Interval: 1}
			if mod != nil {
				mod(&r)
			}
			writeJSON(w, 200, r)
		}
	}
	tests := []struct {
		name    string
		enroll  reply // nil: a valid start
		token   reply // called with the number of the poll, from 1
		wantErr string
	}{
		{name: "start not JSON", enroll: raw(200, "<html>hello</html>"), wantErr: "not the expected JSON"},
		{name: "start oversized", enroll: raw(200, big), wantErr: "larger than 65536 bytes"},
		{name: "start refused", enroll: js(400, errorResponse{"invalid_request", "name is required\x1b[2J"}), wantErr: "answered 400 invalid_request: name is required"},
		{name: "start 500", enroll: raw(500, "oops"), wantErr: "answered 500 Internal Server Error"},
		{name: "start redirected", enroll: func(_ *testing.T, w http.ResponseWriter, _ *ecdsa.PublicKey, _ int) {
			w.Header().Set("Location", elsewhere.URL+"/.ztna/device/enroll")
			w.WriteHeader(http.StatusTemporaryRedirect)
		}, wantErr: "answered 307"},
		{name: "no user code", enroll: start(func(r *enrollResponse) { r.UserCode = "" }), wantErr: "user_code"},
		{name: "user code with escape", enroll: start(func(r *enrollResponse) { r.UserCode = "\x1b[31mX" }), wantErr: "user_code"},
		{name: "uri not https", enroll: start(func(r *enrollResponse) { r.VerificationURIComplete = "http://auth.test/x" }), wantErr: "not an https URL"},
		{name: "uri javascript", enroll: start(func(r *enrollResponse) { r.VerificationURIComplete = "javascript:alert(1)" }), wantErr: "not an https URL"},
		{name: "no expiry", enroll: start(func(r *enrollResponse) { r.ExpiresIn = 0 }), wantErr: "expires_in"},
		{name: "token not JSON", token: raw(200, "garbage"), wantErr: "not the expected JSON"},
		{name: "token oversized", token: raw(200, big), wantErr: "larger than 65536 bytes"},
		{name: "token unknown error", token: js(400, errorResponse{"bogus_code", "what"}), wantErr: "answered 400 bogus_code: what"},
		{name: "token 400 not JSON", token: raw(400, "nope"), wantErr: "answered 400 Bad Request"},
		{name: "token 500 repeatedly", token: raw(500, "down"), wantErr: "answered 500"},
		{name: "token 500 once then pending then issued", token: func(t *testing.T, w http.ResponseWriter, pub *ecdsa.PublicKey, n int) {
			switch n {
			case 1:
				w.WriteHeader(503)
			case 2:
				writeJSON(w, 400, errorResponse{"authorization_pending", ""})
			default:
				writeJSON(w, 200, issued(t, ca, "dev-0123456789abcdef", pub))
			}
		}},
		{name: "cert for another key", token: func(t *testing.T, w http.ResponseWriter, _ *ecdsa.PublicKey, _ int) {
			writeJSON(w, 200, issued(t, ca, "dev-0123456789abcdef", &otherKey.PublicKey))
		}, wantErr: "not for this device's key"},
		{name: "cert from another CA", token: func(t *testing.T, w http.ResponseWriter, pub *ecdsa.PublicKey, _ int) {
			writeJSON(w, 200, issued(t, otherCA, "dev-0123456789abcdef", pub))
		}, wantErr: "not signed by the CA"},
		{name: "cert for another device", token: func(t *testing.T, w http.ResponseWriter, pub *ecdsa.PublicKey, _ int) {
			tr := issued(t, ca, "dev-0123456789abcdef", pub)
			tr.DeviceID = "dev-ffffffffffffffff"
			writeJSON(w, 200, tr)
		}, wantErr: "does not name device dev-ffffffffffffffff"},
		{name: "CA not a CA", token: func(t *testing.T, w http.ResponseWriter, pub *ecdsa.PublicKey, _ int) {
			tr := issued(t, ca, "dev-0123456789abcdef", pub)
			tr.CA = tr.Certificate
			writeJSON(w, 200, tr)
		}, wantErr: "not a CA"},
		{name: "no device id", token: func(t *testing.T, w http.ResponseWriter, pub *ecdsa.PublicKey, _ int) {
			tr := issued(t, ca, "dev-0123456789abcdef", pub)
			tr.DeviceID = ""
			writeJSON(w, 200, tr)
		}, wantErr: "no usable device_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				mu    sync.Mutex
				pub   *ecdsa.PublicKey
				polls int
			)
			mux := http.NewServeMux()
			mux.HandleFunc("POST /.ztna/device/enroll", func(w http.ResponseWriter, r *http.Request) {
				var req enrollRequest
				_ = json.NewDecoder(r.Body).Decode(&req)
				der, _ := base64.StdEncoding.DecodeString(req.PublicKey)
				k, _ := x509.ParsePKIXPublicKey(der)
				mu.Lock()
				pub, _ = k.(*ecdsa.PublicKey)
				mu.Unlock()
				if tt.enroll != nil {
					tt.enroll(t, w, nil, 0)
					return
				}
				start(nil)(t, w, nil, 0)
			})
			mux.HandleFunc("POST /.ztna/device/token", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				polls++
				n, p := polls, pub
				mu.Unlock()
				if tt.token == nil {
					t.Error("polled although the start failed")
					return
				}
				tt.token(t, w, p, n)
			})
			srv := httptest.NewTLSServer(mux)
			defer srv.Close()
			stateDir := t.TempDir()
			c := &EnrollClient{Server: srv.URL, HTTPClient: srv.Client(), Out: io.Discard, second: 10 * time.Millisecond}
			id, err := c.Enroll(testContext(t, 20*time.Second), stateDir, "box")
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Enroll: %v", err)
				}
				if st, err := ReadStatus(stateDir); err != nil || st.DeviceID != id {
					t.Fatalf("ReadStatus = %+v, %v", st, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Enroll error = %v, want one containing %q", err, tt.wantErr)
			}
			if strings.ContainsAny(err.Error(), "\x1b\n\r") {
				t.Errorf("error %q carries control characters from the edge", err)
			}
			if _, err := os.Stat(filepath.Join(stateDir, DeviceFile)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("device.json written on failure (%v)", err)
			}
		})
	}
	if n := redirected.Load(); n != 0 {
		t.Errorf("the agent followed a redirect to another host %d times", n)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.MarshalPKCS8PrivateKey(p384)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sec1DER, _ := x509.MarshalECPrivateKey(p256)
	tests := []struct {
		name        string
		setup       func(t *testing.T, dir string) // dir is the state dir, not yet created
		wantErr     string
		wantDirMode fs.FileMode // 0 means 0700
	}{
		{name: "fresh"},
		{name: "existing private dir", setup: func(t *testing.T, dir string) { mkdir(t, dir, 0o700) }},
		{name: "existing dir others can read", setup: func(t *testing.T, dir string) { mkdir(t, dir, 0o755) }, wantDirMode: 0o755},
		{name: "dir group can write", setup: func(t *testing.T, dir string) { mkdir(t, dir, 0o775) }, wantErr: "want 0700"},
		{name: "dir others can write", setup: func(t *testing.T, dir string) { mkdir(t, dir, 0o757) }, wantErr: "want 0700"},
		{name: "state dir is a file", setup: func(t *testing.T, dir string) { writeFile(t, dir, "x", 0o600) }, wantErr: "state directory"},
		{name: "key readable by others", setup: func(t *testing.T, dir string) {
			mkdir(t, dir, 0o700)
			if _, err := LoadOrCreateKey(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(dir, KeyFile), 0o644); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "want 0600"},
		{name: "garbage key", setup: func(t *testing.T, dir string) {
			mkdir(t, dir, 0o700)
			writeFile(t, filepath.Join(dir, KeyFile), "not a key", 0o600)
		}, wantErr: "no PEM PRIVATE KEY"},
		{name: "P-384 key", setup: func(t *testing.T, dir string) {
			mkdir(t, dir, 0o700)
			writeFile(t, filepath.Join(dir, KeyFile), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p384DER})), 0o600)
		}, wantErr: "not an ECDSA P-256 key"},
		{name: "SEC 1 key", setup: func(t *testing.T, dir string) {
			mkdir(t, dir, 0o700)
			writeFile(t, filepath.Join(dir, KeyFile), string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1DER})), 0o600)
		}, wantErr: "no PEM PRIVATE KEY (PKCS#8)"},
		{name: "key is a directory", setup: func(t *testing.T, dir string) {
			mkdir(t, dir, 0o700)
			mkdir(t, filepath.Join(dir, KeyFile), 0o700)
		}, wantErr: "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			if tt.setup != nil {
				tt.setup(t, dir)
			}
			key, err := LoadOrCreateKey(dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadOrCreateKey error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantDir := tt.wantDirMode
			if wantDir == 0 {
				wantDir = 0o700
			}
			if m := mode(t, dir); m != wantDir {
				t.Errorf("dir mode %#o, want %#o", m, wantDir)
			}
			if m := mode(t, filepath.Join(dir, KeyFile)); m != 0o600 {
				t.Errorf("key mode %#o", m)
			}
			again, err := LoadOrCreateKey(dir)
			if err != nil || !again.Equal(key) {
				t.Fatalf("second load: %v (same key: %v)", err, err == nil && again.Equal(key))
			}
		})
	}
}

// TestLoadOrCreateKeyConcurrent: agents starting at once share one key.
func TestLoadOrCreateKeyConcurrent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	keys := make([]*ecdsa.PrivateKey, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := LoadOrCreateKey(dir)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if k == nil || !k.Equal(keys[0]) {
			t.Fatal("concurrent LoadOrCreateKey returned different keys")
		}
	}
}

func mkdir(t *testing.T, dir string, perm fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, perm); err != nil { // MkdirAll is subject to the umask
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, data string, perm fs.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), perm); err != nil {
		t.Fatal(err)
	}
}

func TestReadStatus(t *testing.T) {
	caDir := t.TempDir()
	ca, err := posture.LoadOrCreateDeviceCA(filepath.Join(caDir, "ca.pem"), filepath.Join(caDir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	const id = "dev-0123456789abcdef"
	// enrolled writes a state dir as Enroll leaves it, with a certificate
	// issued to pub (nil: the device key).
	enrolled := func(t *testing.T, pub *ecdsa.PublicKey, deviceJSONID string) string {
		dir := filepath.Join(t.TempDir(), "state")
		key, err := LoadOrCreateKey(dir)
		if err != nil {
			t.Fatal(err)
		}
		if pub == nil {
			pub = &key.PublicKey
		}
		der, err := ca.Issue(id, "alice@example.com", pub, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := saveEnrollment(dir, der, ca.CertPEM(), deviceState{DeviceID: deviceJSONID, Server: "https://auth.example.com", EnrolledAt: now}); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	tests := []struct {
		name        string
		dir         func(t *testing.T) string
		at          time.Time
		wantErr     error
		wantErrText string
		wantExpired bool
	}{
		{name: "valid", dir: func(t *testing.T) string { return enrolled(t, nil, id) }, at: now},
		{name: "expired", dir: func(t *testing.T) string { return enrolled(t, nil, id) }, at: now.Add(2 * time.Hour), wantExpired: true},
		{name: "empty dir", dir: func(t *testing.T) string { return t.TempDir() }, wantErr: ErrNotEnrolled},
		{name: "missing dir", dir: func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope") }, wantErr: ErrNotEnrolled},
		{name: "device.json names another device", dir: func(t *testing.T) string { return enrolled(t, nil, "dev-ffffffffffffffff") }, wantErrText: "is for device"},
		{name: "certificate for another key", dir: func(t *testing.T) string { return enrolled(t, &otherKey.PublicKey, id) }, wantErrText: "not for the key"},
		{name: "certificate missing", dir: func(t *testing.T) string {
			dir := enrolled(t, nil, id)
			os.Remove(filepath.Join(dir, CertFile))
			return dir
		}, wantErrText: "device certificate"},
		{name: "device.json garbage", dir: func(t *testing.T) string {
			dir := enrolled(t, nil, id)
			writeFile(t, filepath.Join(dir, DeviceFile), "{", 0o600)
			return dir
		}, wantErrText: DeviceFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := readStatus(tt.dir(t), tt.at)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			case tt.wantErrText != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErrText) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErrText)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if st.DeviceID != id || st.UserID != "alice@example.com" || st.Server != "https://auth.example.com" ||
				st.Subject != "CN="+id+",O=ztna devices" || st.Expired != tt.wantExpired {
				t.Errorf("status = %+v", st)
			}
		})
	}
}

func TestParseServer(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{in: "https://auth.example.com", want: "https://auth.example.com"},
		{in: "https://auth.localhost:8443/", want: "https://auth.localhost:8443"},
		{in: "http://auth.example.com", wantErr: "https://"},
		{in: "auth.example.com", wantErr: "https://"},
		{in: "https://", wantErr: "no host"},
		{in: "https://:8443", wantErr: "no host"},
		{in: "https://u:p@auth.example.com", wantErr: "user info"},
		{in: "https://auth.example.com/x", wantErr: "without a path"},
		{in: "https://auth.example.com?x=1", wantErr: "without a path"},
		{in: "https://auth.example.com#f", wantErr: "without a path"},
		{in: "https://auth example.com", wantErr: "not a URL"},
	}
	for _, tt := range tests {
		got, err := ParseServer(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseServer(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseServer(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
