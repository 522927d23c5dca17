package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn/devidp"
)

// These tests run the real binary as a process: signals, exit codes and
// what an operator reads on stderr are the behaviour under test.

var ztnaBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ztna-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ztnaBin = filepath.Join(dir, "ztna")
	build := exec.Command("go", "build", "-race", "-o", ztnaBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build ztna:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestUsageAndBadFlags(t *testing.T) {
	cases := []struct {
		args     []string
		code     int
		inStderr string
		inStdout string
	}{
		{nil, 2, "Usage:", ""},
		{[]string{"help"}, 0, "", "ztna serve --config FILE"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`, ""},
		{[]string{"serve"}, 2, "--config is required", ""},
		{[]string{"serve", "--nope"}, 2, "flag provided but not defined: -nope", ""},
		{[]string{"serve", "--config", "/does/not/exist.yaml"}, 1, "/does/not/exist.yaml", ""},
		{[]string{"dev", "--log-level", "loud"}, 2, "-log-level: must be debug, info, warn or error", ""},
		{[]string{"serve", "-h"}, 0, "Usage: ztna serve --config FILE", ""},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, "_"), func(t *testing.T) {
			cmd := exec.Command(ztnaBin, c.args...)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != c.code {
				t.Errorf("exit code %d, want %d; stderr: %s", code, c.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), c.inStderr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), c.inStderr)
			}
			if !strings.Contains(stdout.String(), c.inStdout) {
				t.Errorf("stdout %q does not contain %q", stdout.String(), c.inStdout)
			}
		})
	}
}

// serveFixture is what `ztna serve` needs around it: an IdP, an upstream,
// a certificate and a config file.
type serveFixture struct {
	dir, cfgPath, certFile, keyFile, issuer, upstream string
}

func newServeFixture(t *testing.T) *serveFixture {
	t.Helper()
	f := &serveFixture{dir: t.TempDir()}
	f.cfgPath = filepath.Join(f.dir, "ztna.yaml")
	f.certFile, f.keyFile = writeSelfSigned(t, f.dir, []string{"auth.test", "app.test", "app2.test"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.issuer = "http://" + ln.Addr().String()
	idp, err := devidp.New(devidp.Config{Issuer: f.issuer, Users: devidp.DemoUsers(), Clients: []devidp.Client{{
		ID: "edge", Secret: "s3cret", RedirectURIs: []string{"https://auth.test/.ztna/callback"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: idp.Handler()}}
	srv.Start()
	t.Cleanup(func() { srv.Close(); idp.Close() })
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "upstream") }))
	t.Cleanup(up.Close)
	f.upstream = up.URL
	if err := os.WriteFile(filepath.Join(f.dir, "secret"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *serveFixture) config(extraApps string) string {
	return fmt.Sprintf(`listen:
  address: 127.0.0.1:0
  admin_address: 127.0.0.1:0
  http3: false
  drain_delay: 1s
  grace_timeout: 2s
auth_host: auth.test
public_port: 443
data_dir: %s
tls:
  cert_file: %s
  key_file: %s
oidc:
  issuer: %s
  client_id: edge
  client_secret_file: %s
apps:
  - name: app
    host: app.test
    upstream: %s
    rules:
      - name: everyone
%s`, filepath.Join(f.dir, "data"), f.certFile, f.keyFile, f.issuer, filepath.Join(f.dir, "secret"), f.upstream, extraApps)
}

func (f *serveFixture) write(t *testing.T, content string) {
	t.Helper()
	tmp := f.cfgPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, f.cfgPath); err != nil {
		t.Fatal(err)
	}
}

func TestServeRejectsBadConfigWithFileLineField(t *testing.T) {
	f := newServeFixture(t)
	f.write(t, strings.Replace(f.config(""), "    upstream:", "    upstreem:", 1))
	out, err := exec.Command(ztnaBin, "serve", "--config", f.cfgPath).CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("want exit 1, got %v; output: %s", err, out)
	}
	line := strings.TrimSpace(string(out))
	if strings.Count(line, "\n") != 0 {
		t.Errorf("want one line, got:\n%s", line)
	}
	want := f.cfgPath + ":20:"
	if !strings.Contains(line, want) || !strings.Contains(line, "upstreem") {
		t.Errorf("error %q should name %q and the field", line, want)
	}
}

// logWatcher collects the JSON log lines of a process.
type logWatcher struct {
	mu    sync.Mutex
	lines []map[string]any
	raw   []string
}

func (l *logWatcher) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		_ = json.Unmarshal(sc.Bytes(), &m)
		l.mu.Lock()
		l.lines = append(l.lines, m)
		l.raw = append(l.raw, sc.Text())
		l.mu.Unlock()
	}
}

// wait polls until a log line satisfies match, or fails after d.
func (l *logWatcher) wait(t *testing.T, d time.Duration, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		for _, m := range l.lines {
			if m != nil && match(m) {
				l.mu.Unlock()
				return m
			}
		}
		l.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Fatalf("no log line %s within %s; log:\n%s", what, d, strings.Join(l.raw, "\n"))
	return nil
}

func TestServeReloadAndDrain(t *testing.T) {
	f := newServeFixture(t)
	f.write(t, f.config(""))
	cmd := exec.Command(ztnaBin, "serve", "--config", f.cfgPath)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	logs := &logWatcher{}
	go func() { logs.read(stderr); done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	listening := logs.wait(t, 20*time.Second, "edge: listening", func(m map[string]any) bool { return m["msg"] == "edge: listening" })
	httpsAddr, _ := listening["https"].(string)
	adminAddr, _ := listening["admin"].(string)
	if httpsAddr == "" || adminAddr == "" {
		t.Fatalf("listening line lacks addresses: %v", listening)
	}
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the test's own self-signed cert
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, httpsAddr)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	get := func(host string) (int, string) {
		req, _ := http.NewRequest("GET", "https://"+host+"/x", nil)
		req.Header.Set("Accept", "text/html")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Location")
	}
	ready := func() int {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := ready(); c != 200 {
		t.Fatalf("/readyz = %d, want 200", c)
	}
	if code, loc := get("app.test"); code != http.StatusFound || !strings.HasPrefix(loc, "https://auth.test/.ztna/login?rd=https%3A%2F%2Fapp.test%2Fx") {
		t.Fatalf("app.test: %d %q, want a redirect to the login", code, loc)
	}
	if code, _ := get("app2.test"); code != http.StatusNotFound {
		t.Fatalf("app2.test before reload: %d, want 404", code)
	}

	// An invalid config is rejected with file:line:field; the old one serves.
	f.write(t, f.config("  - name: app2\n    host: app2.test\n    upstream: ftp://nope\n"))
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	rej := logs.wait(t, 10*time.Second, "reload rejected", func(m map[string]any) bool {
		return strings.HasPrefix(fmt.Sprint(m["msg"]), "config reload rejected")
	})
	if e := fmt.Sprint(rej["err"]); !strings.Contains(e, f.cfgPath+":25: apps[1].upstream") {
		t.Errorf("rejection %q should name %s:25: apps[1].upstream", e, f.cfgPath)
	}
	if code, _ := get("app.test"); code != http.StatusFound {
		t.Fatalf("after a rejected reload app.test answers %d", code)
	}

	// A valid change is picked up from the file alone (no signal).
	f.write(t, f.config("  - name: app2\n    host: app2.test\n    upstream: "+f.upstream+"\n    rules:\n      - name: everyone\n"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _ := get("app2.test"); code == http.StatusFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("app2.test not served 10s after the config file changed")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// SIGTERM drains: not ready first, then exit 0.
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sawNotReady := false
	for time.Since(start) < 900*time.Millisecond {
		if ready() == http.StatusServiceUnavailable {
			sawNotReady = true
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !sawNotReady {
		t.Error("/readyz never reported 503 during the drain delay")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ztna serve exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ztna serve did not exit within 10s of SIGTERM")
	}
	if el := time.Since(start); el < time.Second {
		t.Errorf("exited after %s, before the 1s drain delay", el)
	}
}

func writeSelfSigned(t *testing.T, dir string, hosts []string) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ztna test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: hosts, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	cert, keyf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyf, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, keyf
}
