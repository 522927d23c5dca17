package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
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
		{[]string{"help"}, 0, "", "ztna agent enroll|run|status"},
		{[]string{"agent", "-h"}, 0, "", "run                                 report this device's posture on a schedule"},
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
		{[]string{"agent", "run", "-h"}, 0, "Usage: ztna agent run [flags]", ""},
		{[]string{"agent", "run", "--once", "--state-dir", empty}, 1, "ztna agent: run: this device is not enrolled (no " + filepath.Join(empty, "device.json") + "): run 'ztna agent enroll --server https://AUTH_HOST' first", ""},
		{[]string{"agent", "run", "--state-dir", empty}, 1, "ztna agent: run: this device is not enrolled (no " + filepath.Join(empty, "device.json") + "): run 'ztna agent enroll --server https://AUTH_HOST' first", ""},
		{[]string{"agent", "run", "--state-dir", empty, "--edr-ca-file", missingCA}, 1, "ztna agent: --edr-ca-file: open " + missingCA, ""},
		{[]string{"agent", "run", "--state-dir", empty, "--ca-file", missingCA}, 1, "ztna agent: --ca-file: open " + missingCA, ""},
		{[]string{"agent", "run", "extra"}, 2, `ztna agent run: unexpected argument "extra"`, ""},
		{[]string{"agent", "run", "--bogus"}, 2, "flag provided but not defined: -bogus", ""},
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
			// Only enroll makes a key; run never does.
			if _, err := os.Stat(filepath.Join(empty, agent.KeyFile)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%v: %s exists (%v)", c.args, agent.KeyFile, err)
			}
		})
	}
}

// TestAgentRunFlagErrors: a bad flag value is one line naming the flag and
// the expected form, with exit code 2.
func TestAgentRunFlagErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--edr", "falcon"}, `ztna agent run: --edr "falcon": want NAME=PROC[,PROC…][@HOST:PORT]`},
		{[]string{"--edr", "=falcon-sensor"}, `ztna agent run: --edr "=falcon-sensor": want NAME=PROC`},
		{[]string{"--edr", "falcon="}, `ztna agent run: --edr "falcon=": want NAME=PROC`},
		{[]string{"--edr", "falcon=a,,b"}, `ztna agent run: --edr "falcon=a,,b": empty process name`},
		{[]string{"--edr", "falcon=falcon-sensor@manager"}, `ztna agent run: --edr "falcon=falcon-sensor@manager": management server "manager" is not HOST:PORT`},
		{[]string{"--edr", "falcon=falcon-sensor@:443"}, `management server ":443" is not HOST:PORT`},
		{[]string{"--edr", "falcon=a", "--edr", "falcon=b"}, `ztna agent run: --edr: edr[1]: duplicate name "falcon"`},
		{[]string{"--interval", "10ms"}, "ztna agent run: --interval must be at least 1s"},
		{[]string{"--interval", "-1s"}, "ztna agent run: --interval must be at least 1s"},
		{[]string{"--state-dir", ""}, "ztna agent run: --state-dir must not be empty"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, "_"), func(t *testing.T) {
			code, stdout, stderr := runZtna(t, append([]string{"agent", "run", "--once", "--state-dir", dir}, c.args...)...)
			if code != 2 || !strings.Contains(stderr, c.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2 and one line containing %q", code, stdout, stderr, c.want)
			}
		})
	}
}

func TestParseEDR(t *testing.T) {
	for in, want := range map[string]agent.EDRConfig{
		"falcon=falcon-sensor":                              {Name: "falcon", ProcessNames: []string{"falcon-sensor"}},
		"falcon=falcon-sensor,falcond@ts01.example.com:443": {Name: "falcon", ProcessNames: []string{"falcon-sensor", "falcond"}, ManagerAddr: "ts01.example.com:443"},
		"s1=sentinelone@[2001:db8::1]:443":                  {Name: "s1", ProcessNames: []string{"sentinelone"}, ManagerAddr: "[2001:db8::1]:443"},
	} {
		got, err := parseEDR(in)
		if err != nil || got.Name != want.Name || strings.Join(got.ProcessNames, ",") != strings.Join(want.ProcessNames, ",") || got.ManagerAddr != want.ManagerAddr {
			t.Errorf("parseEDR(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
}

// cannedEdge answers the reporting protocol with fixed answers over TLS,
// parsing each report with the real parser; it stands in for the edge to
// test what `agent run --once` prints and exits with.
func cannedEdge(t *testing.T, refuse bool) (url, caFile string, reports *atomic.Int32) {
	t.Helper()
	reports = new(atomic.Int32)
	mux := http.NewServeMux()
	answer := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("POST /.ztna/device/nonce", func(w http.ResponseWriter, r *http.Request) {
		if refuse {
			answer(w, 403, map[string]string{"error": "device_refused", "message": "this device was revoked"})
			return
		}
		if len(r.TLS.PeerCertificates) != 1 {
			answer(w, 401, map[string]string{"error": "device_certificate_required"})
			return
		}
		answer(w, 200, map[string]any{"nonce": "NONCE1", "interval": 30})
	})
	mux.HandleFunc("POST /.ztna/device/report", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, posture.MaxReportBytes+1))
		sr, err := posture.ParseReport(body)
		if err != nil || sr.Report.Nonce != "NONCE1" || sr.Report.DeviceID != "dev-0123456789abcdef" {
			answer(w, 400, map[string]string{"error": "malformed_report", "message": fmt.Sprint(err)})
			return
		}
		reports.Add(1)
		answer(w, 200, map[string]any{
			"accepted": true, "next_nonce": "NONCE2", "interval": 30, "quarantined": true,
			"quarantine": map[string]string{"reason": "Falco: shell in container", "fix": "contact security", "source": "falco"},
			"profiles": []any{
				map[string]any{"name": "baseline", "ok": true},
				map[string]any{"name": "strict", "ok": false, "failures": []any{
					map[string]string{"check": "disk_encryption", "reason": "disk encryption is off", "fix": "turn on LUKS"},
				}},
			},
		})
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile = filepath.Join(t.TempDir(), "edge-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL, caFile, reports
}

func TestAgentRunOnce(t *testing.T) {
	t.Run("accepted", func(t *testing.T) {
		url, caFile, reports := cannedEdge(t, false)
		dir := writeAgentState(t, url, time.Now(), 24*time.Hour)
		code, stdout, stderr := runZtna(t, "agent", "run", "--once", "--state-dir", dir, "--ca-file", caFile, "--edr", "falcon=falcon-sensor-not-here")
		if code != 0 || reports.Load() != 1 {
			t.Fatalf("exit %d after %d reports; stderr: %s", code, reports.Load(), stderr)
		}
		for _, want := range []string{
			"The edge accepted this device's posture report at ",
			"Profiles      baseline: OK\n",
			"              strict: failing\n",
			"                disk_encryption: disk encryption is off\n",
			"                  fix: turn on LUKS\n",
			"Quarantine    QUARANTINED: Falco: shell in container (source: falco)\n",
			"                fix: contact security\n",
		} {
			if !strings.Contains(stdout, want) {
				t.Errorf("stdout lacks %q:\n%s", want, stdout)
			}
		}
		code, stdout, _ = runZtna(t, "agent", "status", "--state-dir", dir)
		if code != 0 || !strings.Contains(stdout, ": accepted\n") || !strings.Contains(stdout, "strict: failing") || !strings.Contains(stdout, "QUARANTINED") {
			t.Errorf("status after the report (exit %d):\n%s", code, stdout)
		}
	})
	t.Run("refused", func(t *testing.T) {
		url, caFile, _ := cannedEdge(t, true)
		dir := writeAgentState(t, url, time.Now(), 24*time.Hour)
		code, stdout, stderr := runZtna(t, "agent", "run", "--once", "--state-dir", dir, "--ca-file", caFile)
		want := "ztna agent: run: get a report nonce from " + url + ": the edge answered 403 device_refused: this device was revoked"
		if code != 1 || strings.TrimSpace(stderr) != want || stdout != "" {
			t.Errorf("exit %d, stdout %q, stderr %q; want 1 and %q", code, stdout, stderr, want)
		}
		code, stdout, _ = runZtna(t, "agent", "status", "--state-dir", dir)
		if code != 0 || !strings.Contains(stdout, ": failed: get a report nonce") || !strings.Contains(stdout, "Verdicts      none yet") {
			t.Errorf("status after the refusal (exit %d):\n%s", code, stdout)
		}
	})
}

func TestPrintStatusReport(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	base := agent.Status{DeviceID: "dev-1", Server: "https://auth.example.com", Subject: "CN=dev-1", NotBefore: now.Add(-20 * time.Hour), NotAfter: now.Add(4 * time.Hour), RenewalDue: true}
	accepted := now.Add(-time.Minute)
	tests := []struct {
		name string
		st   func(agent.Status) agent.Status
		want []string
		not  []string
	}{
		{"never reported", func(s agent.Status) agent.Status { return s },
			[]string{"valid for 4h0m0s; renewal due ('ztna agent run' renews it before its next report)", "Last report   none yet: run 'ztna agent run'"}, []string{"Profiles"}},
		{"failed after an accepted one", func(s agent.Status) agent.Status {
			s.RenewalDue = false
			s.LastReport = &agent.LastReport{At: now, Error: "report to https://auth.example.com: the edge answered 503 Service Unavailable", RenewError: "renew: 503",
				AcceptedAt: accepted, Profiles: []agent.ProfileVerdict{{Name: "baseline", OK: true}}}
			return s
		}, []string{": failed: report to https://auth.example.com: the edge answered 503", "Renewal       failed: renew: 503", "Last accepted " + accepted.Local().Format(time.RFC3339) + "; the verdicts below are from then", "Profiles      baseline: OK", "Quarantine    no"},
			[]string{"renewal due"}},
		{"unreadable record", func(s agent.Status) agent.Status {
			s.LastReportErr = errors.New("last-report.json: unexpected end of JSON input")
			return s
		}, []string{"Last report   unreadable: last-report.json: unexpected end of JSON input"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			printStatus(&b, tt.st(base), now)
			for _, w := range tt.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, b.String())
				}
			}
			for _, w := range tt.not {
				if strings.Contains(b.String(), w) {
					t.Errorf("output has %q:\n%s", w, b.String())
				}
			}
		})
	}
}

// writeAgentState writes a state directory as `ztna agent enroll` leaves
// it for the edge at server, with a certificate valid from issuedAt for ttl.
func writeAgentState(t *testing.T, server string, issuedAt time.Time, ttl time.Duration) string {
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
	js, _ := json.Marshal(map[string]any{"device_id": "dev-0123456789abcdef", "server": server, "enrolled_at": issuedAt})
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
		dir := writeAgentState(t, "https://auth.example.com:8443", time.Now(), 24*time.Hour)
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
			"Last report   none yet: run 'ztna agent run'",
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
		if strings.Contains(stdout, "expired") || strings.Contains(stdout, "renewal due") {
			t.Errorf("a fresh certificate reported expired or due:\n%s", stdout)
		}
	})
	t.Run("renewal due", func(t *testing.T) {
		dir := writeAgentState(t, "https://auth.example.com:8443", time.Now().Add(-20*time.Hour), 24*time.Hour)
		code, stdout, stderr := runZtna(t, "agent", "status", "--state-dir", dir)
		if code != 0 || !strings.Contains(stdout, "; renewal due ('ztna agent run' renews it before its next report)") {
			t.Errorf("exit %d, stderr %s, status:\n%s", code, stderr, stdout)
		}
	})
	t.Run("expired", func(t *testing.T) {
		dir := writeAgentState(t, "https://auth.example.com:8443", time.Now().Add(-48*time.Hour), time.Hour)
		code, stdout, stderr := runZtna(t, "agent", "status", "--state-dir", dir)
		if code != 0 {
			t.Fatalf("exit %d; stderr: %s", code, stderr)
		}
		if !strings.Contains(stdout, "expired; the edge no longer accepts it") || strings.Contains(stdout, "valid for") {
			t.Errorf("status of an expired certificate:\n%s", stdout)
		}
	})
	t.Run("key open to others", func(t *testing.T) {
		dir := writeAgentState(t, "https://auth.example.com:8443", time.Now(), time.Hour)
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
