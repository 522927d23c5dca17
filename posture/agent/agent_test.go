package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ztna-dev/ztna/posture"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"zero", Config{}, ""},
		{"ok", Config{EDR: []EDRConfig{{Name: "falcon", ProcessNames: []string{"falcon-sensor"}, ManagerAddr: "ts01-b.cloudsink.net:443"}}}, ""},
		{"no name", Config{EDR: []EDRConfig{{ProcessNames: []string{"x"}}}}, "name is empty"},
		{"duplicate", Config{EDR: []EDRConfig{{Name: "a", ProcessNames: []string{"x"}}, {Name: "a", ProcessNames: []string{"y"}}}}, "duplicate name"},
		{"no process", Config{EDR: []EDRConfig{{Name: "a"}}}, "no process names"},
		{"empty process", Config{EDR: []EDRConfig{{Name: "a", ProcessNames: []string{""}}}}, "empty process name"},
		{"bad addr", Config{EDR: []EDRConfig{{Name: "a", ProcessNames: []string{"x"}, ManagerAddr: "no-port"}}}, "manager address"},
		{"negative timeout", Config{Timeout: -time.Second}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestFactsJSONShape pins the wire names the lead maps onto posture.Report.
func TestFactsJSONShape(t *testing.T) {
	f := Facts{
		OS:            OS{Name: "Debian GNU/Linux", Version: "12", Kernel: "6.1.0", Arch: "amd64"},
		DiskEncrypted: boolPtr(true),
		EDR: []EDRState{{
			Name: "falcon", Running: true, PID: 42, ExePath: "/opt/f", ExeSHA256: "ab",
			ManagerAddr: "m:443", ManagerLastReached: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), ManagerError: "timeout",
		}},
	}
	data, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if keys := sortedKeys(got); !reflect.DeepEqual(keys, []string{"disk_encrypted", "edr", "firewall_active", "os", "screen_lock"}) {
		t.Errorf("top-level keys = %v", keys)
	}
	if got["firewall_active"] != nil || got["screen_lock"] != nil {
		t.Errorf("unknown facts must be null, got firewall_active=%v screen_lock=%v", got["firewall_active"], got["screen_lock"])
	}
	if keys := sortedKeys(got["os"].(map[string]any)); !reflect.DeepEqual(keys, []string{"arch", "kernel", "name", "version"}) {
		t.Errorf("os keys = %v", keys)
	}
	edr := got["edr"].([]any)[0].(map[string]any)
	want := []string{"exe_path", "exe_sha256", "manager_addr", "manager_error", "manager_last_reached", "name", "pid", "running"}
	if keys := sortedKeys(edr); !reflect.DeepEqual(keys, want) {
		t.Errorf("edr keys = %v, want %v", keys, want)
	}
	if edr["manager_last_reached"] != "2025-01-02T03:04:05Z" {
		t.Errorf("manager_last_reached = %v", edr["manager_last_reached"])
	}

	// A never-reached manager leaves the time out rather than sending year 1.
	data, _ = json.Marshal(EDRState{Name: "x"})
	if strings.Contains(string(data), "manager_last_reached") {
		t.Errorf("zero time serialised: %s", data)
	}
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// newTLSManager starts a real TLS server on loopback standing in for an EDR
// management server and returns it with a pool trusting its certificate.
func newTLSManager(t *testing.T) (*httptest.Server, *x509.CertPool) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	// Failed handshakes are the point of some tests; keep them off stderr.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv, pool
}

// collectOne runs one collection with only the given EDR configured and
// returns its state.
func collectOne(t *testing.T, c *Collector) EDRState {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	edr, _ := c.collectEDR(ctx)
	if len(edr) != 1 {
		t.Fatalf("collectEDR returned %d states, want 1", len(edr))
	}
	return edr[0]
}

// TestManagerProbe is seed bypass (3): the EDR runs, but its management
// server is blocked. The report must say so and keep the last success time
// rather than pretend it is current.
func TestManagerProbe(t *testing.T) {
	srv, pool := newTLSManager(t)
	addr := srv.Listener.Addr().String()
	c := New(Config{Timeout: 2 * time.Second, EDR: []EDRConfig{{
		Name: "falcon", ProcessNames: []string{"zz-no-such-process"},
		ManagerAddr: addr, ManagerRootCAs: pool,
	}}})

	before := time.Now()
	st := collectOne(t, c)
	if st.ManagerError != "" || st.ManagerLastReached.Before(before) || st.ManagerLastReached.After(time.Now()) {
		t.Fatalf("reachable manager: error=%q last=%v (started %v)", st.ManagerError, st.ManagerLastReached, before)
	}
	if st.ManagerAddr != addr {
		t.Errorf("ManagerAddr = %q, want %q", st.ManagerAddr, addr)
	}
	if st.Running {
		t.Errorf("Running = true for a process that does not exist")
	}
	first := st.ManagerLastReached

	srv.Close() // the "local firewall" now blocks the manager
	st = collectOne(t, c)
	if st.ManagerError != "connection refused" {
		t.Errorf("blocked manager: ManagerError = %q, want %q", st.ManagerError, "connection refused")
	}
	if !st.ManagerLastReached.Equal(first) {
		t.Errorf("blocked manager: ManagerLastReached = %v, want remembered %v", st.ManagerLastReached, first)
	}

	// Memory belongs to the Collector: a new one (a restarted agent) has
	// never reached the manager and must not claim otherwise.
	c2 := New(c.cfg)
	if st := collectOne(t, c2); !st.ManagerLastReached.IsZero() || st.ManagerError == "" {
		t.Errorf("fresh collector: last=%v error=%q, want zero time and an error", st.ManagerLastReached, st.ManagerError)
	}
}

// TestManagerProbeFailures checks that only a verified TLS handshake with
// the configured server counts as reaching it.
func TestManagerProbeFailures(t *testing.T) {
	srv, pool := newTLSManager(t)
	addr := srv.Listener.Addr().String()
	silent := newSilentListener(t)

	tests := []struct {
		name       string
		edr        EDRConfig
		wantReason string
	}{
		{"trusted", EDRConfig{ManagerAddr: addr, ManagerRootCAs: pool}, ""},
		{"explicit server name in certificate", EDRConfig{ManagerAddr: addr, ManagerRootCAs: pool, ManagerServerName: "example.com"}, ""},
		{"untrusted certificate", EDRConfig{ManagerAddr: addr, ManagerRootCAs: x509.NewCertPool()}, "certificate signed by unknown authority"},
		{"wrong server name", EDRConfig{ManagerAddr: addr, ManagerRootCAs: pool, ManagerServerName: "manager.corp.example"}, "certificate not valid for server name"},
		{"tcp accepted but no tls", EDRConfig{ManagerAddr: silent, ManagerRootCAs: pool}, "timeout"},
		{"dns failure", EDRConfig{ManagerAddr: "manager.invalid:443", ManagerRootCAs: pool}, "dns lookup failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.edr.Name = "edr"
			tt.edr.ProcessNames = []string{"zz-no-such-process"}
			// Short only where the timeout is the expected outcome: a loaded
			// machine may take a while over a real handshake.
			timeout := 5 * time.Second
			if tt.wantReason == "timeout" {
				timeout = 300 * time.Millisecond
			}
			c := New(Config{Timeout: timeout, EDR: []EDRConfig{tt.edr}})
			st := collectOne(t, c)
			if st.ManagerError != tt.wantReason {
				t.Errorf("ManagerError = %q, want %q", st.ManagerError, tt.wantReason)
			}
			if reached := !st.ManagerLastReached.IsZero(); reached != (tt.wantReason == "") {
				t.Errorf("ManagerLastReached = %v, want set only on success", st.ManagerLastReached)
			}
		})
	}
}

// newSilentListener accepts TCP connections and never answers, like a local
// interceptor that swallows the EDR's traffic.
func newSilentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func TestHashExecutableBounded(t *testing.T) {
	// An endless executable stops at the size bound instead of being read
	// forever.
	_, err := hashExecutable(t.Context(), zeroReader{})
	if err == nil || !strings.Contains(err.Error(), "larger than 512 MiB") {
		t.Fatalf("endless reader: err = %v, want size bound", err)
	}
	// And an ended context stops it before that.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := hashExecutable(ctx, zeroReader{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: err = %v, want context.Canceled", err)
	}
	sum, err := hashExecutable(t.Context(), strings.NewReader("abc"))
	if err != nil || sum != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("hash(abc) = %q, %v", sum, err)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestManagerErrorReasonFallback(t *testing.T) {
	long := errors.New(strings.Repeat("x", 300) + "\nsecond line")
	if got := managerErrorReason(long); len(got) != 200 || strings.Contains(got, "second") {
		t.Errorf("fallback reason not shortened: %q", got)
	}
	if got := managerErrorReason(tls.AlertError(40)); got != "tls handshake failed" {
		t.Errorf("alert reason = %q", got)
	}
}

func runtimeArch() string { return runtime.GOARCH }

// What the agent collects on a real host is a report the edge's strict
// parser accepts, once signed with the device key.
func TestFactsSignAsAReportTheEdgeAccepts(t *testing.T) {
	c := New(Config{EDR: []EDRConfig{{Name: "demo-edr", ProcessNames: []string{"no-such-edr-process"}}}})
	f, _ := c.Collect(t.Context()) // partial facts are fine; unknowns stay nil
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := posture.SignReport(key, f.Report("dev-0123456789abcdef", 1, "nonce-1", time.Now()))
	if err != nil {
		t.Fatalf("sign the collected facts: %v", err)
	}
	sr, err := posture.ParseReport(b)
	if err != nil {
		t.Fatalf("the edge refuses the agent's report: %v", err)
	}
	if sr.Report.OS != f.OS || len(sr.Report.EDR) != 1 || sr.Report.EDR[0].Name != "demo-edr" {
		t.Errorf("report %+v does not carry the facts %+v", sr.Report, f)
	}
}
