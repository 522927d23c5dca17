package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/posture/agent"
)

// runZtna runs the built binary and returns its exit code and output.
func runZtna(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(ztnaBin, args...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errOut.String()
}

func TestAgentUsageAndBadFlags(t *testing.T) {
	empty := t.TempDir()
	missingCA := filepath.Join(empty, "nope.pem")
	// A loopback port nobody listens on: the enrollment cannot start.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := ln.Addr().String()
	ln.Close()
	cases := []struct {
		args     []string
		code     int
		inStderr string
		inStdout string
	}{
		{[]string{"help"}, 0, "", "ztna agent enroll|status"},
		{[]string{"agent", "-h"}, 0, "", "Coming next: run"},
		{[]string{"agent", "help"}, 0, "", "status  "},
		{[]string{"agent"}, 2, "Usage: ztna agent COMMAND", ""},
		{[]string{"agent", "frob"}, 2, `ztna agent: unknown command "frob"`, ""},
		{[]string{"agent", "enroll"}, 2, "ztna agent enroll: --server is required", ""},
		{[]string{"agent", "enroll", "--nope"}, 2, "flag provided but not defined: -nope", ""},
		{[]string{"agent", "enroll", "--server", "http://auth.example.com"}, 2, "--server: server \"http://auth.example.com\" must start with https://", ""},
		{[]string{"agent", "enroll", "--server", "https://auth.example.com/path"}, 2, "without a path", ""},
		{[]string{"agent", "enroll", "--server", "https://auth.example.com", "--timeout", "0s"}, 2, "--timeout must be positive", ""},
		{[]string{"agent", "enroll", "--server", "https://auth.example.com", "extra"}, 2, `ztna agent enroll: unexpected argument "extra"`, ""},
		{[]string{"agent", "enroll", "-h"}, 0, "Usage: ztna agent enroll --server https://AUTH_HOST[:PORT]", ""},
		{[]string{"agent", "enroll", "--server", "https://auth.example.com", "--state-dir", empty, "--ca-file", missingCA}, 1, "ztna agent: --ca-file: open " + missingCA, ""},
		{[]string{"agent", "enroll", "--server", "https://" + deadAddr, "--state-dir", filepath.Join(empty, "state"), "--timeout", "20s"}, 1,
			"ztna agent: enroll: start enrollment at https://" + deadAddr + ": ", ""},
		{[]string{"agent", "status", "--state-dir", empty}, 1, "ztna agent: status: this device is not enrolled (no " + filepath.Join(empty, "device.json") + "); run 'ztna agent enroll --server https://AUTH_HOST' first", ""},
		{[]string{"agent", "status", "--bogus"}, 2, "flag provided but not defined: -bogus", ""},
		{[]string{"agent", "status", "extra"}, 2, `ztna agent status: unexpected argument "extra"`, ""},
		{[]string{"agent", "status", "-h"}, 0, "Usage: ztna agent status", ""},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, "_"), func(t *testing.T) {
			code, stdout, stderr := runZtna(t, c.args...)
			if code != c.code {
				t.Errorf("exit code %d, want %d; stderr: %s", code, c.code, stderr)
			}
			if !strings.Contains(stderr, c.inStderr) {
				t.Errorf("stderr %q does not contain %q", stderr, c.inStderr)
			}
			if !strings.Contains(stdout, c.inStdout) {
				t.Errorf("stdout %q does not contain %q", stdout, c.inStdout)
			}
			if code == 1 && strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("want one line on stderr, got:\n%s", stderr)
			}
		})
	}
}

// writeAgentState writes a state directory as `ztna agent enroll` leaves
// it, with a certificate valid from issuedAt for ttl.
func writeAgentState(t *testing.T, issuedAt time.Time, ttl time.Duration) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "agent")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	caDir := t.TempDir()
	ca, err := posture.LoadOrCreateDeviceCA(filepath.Join(caDir, "ca.pem"), filepath.Join(caDir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	der, err := ca.Issue("dev-0123456789abcdef", "alice", &key.PublicKey, ttl, issuedAt)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(map[string]any{"device_id": "dev-0123456789abcdef", "server": "https://auth.example.com:8443", "enrolled_at": issuedAt})
	files := map[string][]byte{
		agent.KeyFile:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
		agent.CertFile:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		agent.CAFile:     ca.CertPEM(),
		agent.DeviceFile: js,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestAgentStatus(t *testing.T) {
	t.Run("valid", func(t *testing.T) {
		dir := writeAgentState(t, time.Now(), 24*time.Hour)
		code, stdout, stderr := runZtna(t, "agent", "status", "--state-dir", dir)
		if code != 0 {
			t.Fatalf("exit %d; stderr: %s", code, stderr)
		}
		for _, want := range []string{
			"Device        dev-0123456789abcdef",
			"User          alice",
			"Server        https://auth.example.com:8443",
			"CN=dev-0123456789abcdef,O=ztna devices",
			"valid for 2", // 23h59m or 24h0m, rounded to the minute
			"certutil -d sql:$HOME/.pki/nssdb -N --empty-password",
			"(umask 077 && openssl pkcs12 -export -in " + filepath.Join(dir, "device-cert.pem") + " -inkey " + filepath.Join(dir, "device-key.pem"),
			"pk12util -d sql:$HOME/.pki/nssdb -i " + filepath.Join(dir, "device.p12"),
			"Without an auto-select rule Chromium asks",
			`\"pattern\":\"https://[*.]example.com:8443\"`,
			`\"ISSUER\":{\"CN\":\"ztna device CA\"}`,
		} {
			if !strings.Contains(stdout, want) {
				t.Errorf("status output lacks %q:\n%s", want, stdout)
			}
		}
		if strings.Contains(stdout, "expired") {
			t.Errorf("a valid certificate reported expired:\n%s", stdout)
		}
	})
	t.Run("expired", func(t *testing.T) {
		dir := writeAgentState(t, time.Now().Add(-48*time.Hour), time.Hour)
		code, stdout, stderr := runZtna(t, "agent", "status", "--state-dir", dir)
		if code != 0 {
			t.Fatalf("exit %d; stderr: %s", code, stderr)
		}
		if !strings.Contains(stdout, "expired; the edge no longer accepts it") || strings.Contains(stdout, "valid for") {
			t.Errorf("status of an expired certificate:\n%s", stdout)
		}
	})
	t.Run("key open to others", func(t *testing.T) {
		dir := writeAgentState(t, time.Now(), time.Hour)
		if err := os.Chmod(filepath.Join(dir, agent.KeyFile), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := runZtna(t, "agent", "status", "--state-dir", dir)
		if code != 1 || !strings.Contains(stderr, "chmod 600 "+filepath.Join(dir, agent.KeyFile)) {
			t.Errorf("exit %d, stderr %q; want 1 and a chmod hint", code, stderr)
		}
	})
}

func TestAutoSelectPattern(t *testing.T) {
	for in, want := range map[string]string{
		"https://auth.example.com":      "https://[*.]example.com",
		"https://auth.localhost:8443":   "https://[*.]localhost:8443",
		"https://auth.corp.example.com": "https://[*.]corp.example.com",
		"https://localhost:8443":        "https://[*.]localhost:8443",
		"https://10.0.0.1:8443":         "https://10.0.0.1:8443",
		"https://[::1]:8443":            "https://[::1]:8443",
	} {
		if got := autoSelectPattern(in); got != want {
			t.Errorf("autoSelectPattern(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLoopbackForLocalhost(t *testing.T) {
	for in, want := range map[string]string{
		"auth.localhost:8443":   "127.0.0.1:8443",
		"AUTH.LocalHost.:443":   "127.0.0.1:443",
		"localhost:8443":        "127.0.0.1:8443",
		"auth.example.com:443":  "auth.example.com:443",
		"notlocalhost:443":      "notlocalhost:443",
		"localhost.example:443": "localhost.example:443",
		"[::1]:443":             "[::1]:443",
	} {
		if got := loopbackForLocalhost(in); got != want {
			t.Errorf("loopbackForLocalhost(%q) = %q, want %q", in, got, want)
		}
	}
}
