package integration

// posture_test.go: pipeline step 4 end to end, against the seed's three
// ways around a one-time antivirus check — a fake file, killing the EDR
// after login, firewalling its management server — with a real agent
// (posture/agent Collector + Runner, enrolled through the device flow over
// HTTP) reporting to the real edge about a real process standing in for the
// EDR, whose management server is a real TLS listener. Then the attacks on
// the report channel itself: replays, transplanted and forged reports,
// forged nonces, revoked, foreign and expired device certificates.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/posture/agent"
	"github.com/ztna-dev/ztna/proxy"
)

// Short posture bounds, so reports age and managers go quiet within the
// tests' seconds rather than the production minutes.
const (
	testReportInterval = 200 * time.Millisecond
	testMaxAge         = 2 * time.Second
	testManagerWindow  = 2 * time.Second
	// testEDR is the EDR's name in profiles and reports.
	testEDR = "test-edr"
)

// applyConfig applies the edge's current config (a copy) changed by change.
func applyConfig(t *testing.T, env *devenv.Env, change func(*proxy.Config)) {
	t.Helper()
	cfg := currentConfig(env)
	change(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := env.Edge.Apply(ctx, cfg); err != nil {
		t.Fatalf("apply config: %v", err)
	}
}

// setAppProfile makes app require profile.
func setAppProfile(t *testing.T, cfg *proxy.Config, app, profile string) {
	t.Helper()
	for i := range cfg.Apps {
		if cfg.Apps[i].Name == app {
			cfg.Apps[i].PostureProfile = profile
			return
		}
	}
	t.Fatalf("no app %q in the config", app)
}

// edrProfile is a profile that asks for nothing but a report younger than
// maxAge with testEDR running one of the allowed builds and in contact with
// its manager.
func edrProfile(name string, maxAge, window time.Duration, contactFrom string, allowed ...string) posture.Profile {
	return posture.Profile{Name: name, MaxAge: maxAge, EDR: &posture.EDRRequirement{
		Name: testEDR, AllowedSHA256: allowed, ManagerWindow: window, ContactFrom: contactFrom}}
}

// installExecutable copies the executable src into a new directory as name
// and returns its path and SHA-256.
func installExecutable(t *testing.T, src, name string) (path, sum string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("read %s: %v", src, err)
	}
	path = filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return path, hex.EncodeToString(h[:])
}

// startProcess runs path with args until the returned stop (kill and reap)
// is called or the test ends.
func startProcess(t *testing.T, path string, args ...string) (stop func()) {
	t.Helper()
	var cmd *exec.Cmd
	for attempt := 0; ; attempt++ {
		cmd = exec.Command(path, args...)
		err := cmd.Start()
		if err == nil {
			break
		}
		// A process forked elsewhere in this test binary between our write
		// of the file and its close may still hold it open for writing
		// (golang.org/issue/22315): retry, bounded.
		if errors.Is(err, syscall.ETXTBSY) && attempt < 100 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		t.Fatalf("start %s: %v", path, err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(stop)
	return stop
}

// edrManager is the EDR vendor's management server: a TLS listener with a
// certificate from its own CA, which completes handshakes and hangs up.
type edrManager struct {
	addr  string
	roots *x509.CertPool
	ln    net.Listener
	wg    sync.WaitGroup
	once  sync.Once
}

func startEDRManager(t *testing.T) *edrManager {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test EDR vendor CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "edr-manager"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	m := &edrManager{addr: ln.Addr().String(), roots: roots, ln: ln}
	m.wg.Add(1)
	go m.serve()
	t.Cleanup(m.close)
	return m
}

func (m *edrManager) serve() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_ = c.(*tls.Conn).Handshake()
		}()
	}
}

// close stops the manager: from then on the agent's probes are refused, as
// when a local firewall blocks the server.
func (m *edrManager) close() {
	m.once.Do(func() {
		_ = m.ln.Close()
		m.wg.Wait()
	})
}

// agentCert is the device certificate and key the agent keeps in stateDir.
func agentCert(t *testing.T, stateDir string) tls.Certificate {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(stateDir, agent.CertFile), filepath.Join(stateDir, agent.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// testAgent is `ztna agent run` in process: a Runner reporting every
// testReportInterval what a Collector finds, with every result kept.
type testAgent struct {
	t        *testing.T
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once

	mu      sync.Mutex
	results []agentResult
}

// agentResult is one report attempt and when the test saw its outcome.
type agentResult struct {
	agent.Result
	Seen time.Time
}

func startAgent(t *testing.T, env *devenv.Env, stateDir string, edr agent.EDRConfig) *testAgent {
	t.Helper()
	a := &testAgent{t: t, done: make(chan error, 1)}
	// The agent logs into the process log, which a failing test prints,
	// with every change of outcome.
	logger := slog.New(slog.NewTextHandler(processLog(t, env), &slog.HandlerOptions{Level: slog.LevelInfo})).With("agent", stateDir)
	cfg := agent.Config{EDR: []agent.EDRConfig{edr}, Timeout: 2 * time.Second, Logger: logger}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var outcome string
	r := &agent.Runner{
		StateDir:  stateDir,
		Collector: agent.New(cfg),
		Transport: newClient(t, env).Transport.(*http.Transport),
		Interval:  testReportInterval,
		Logger:    logger,
		OnResult: func(res agent.Result) {
			a.mu.Lock()
			a.results = append(a.results, agentResult{Result: res, Seen: time.Now()})
			a.mu.Unlock()
			o := "error: " + errString(res.Err)
			if res.Accepted {
				o = fmt.Sprintf("accepted: %+v", res.Profiles)
			}
			if o != outcome {
				outcome = o
				logger.Info("agent outcome changed", "outcome", o, "attempt_at", res.At, "took", time.Since(res.At))
			}
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() { a.done <- r.Run(ctx) }()
	t.Cleanup(a.stop)
	return a
}

// stop stops the agent and waits for it.
func (a *testAgent) stop() {
	a.stopOnce.Do(func() {
		a.cancel()
		select {
		case err := <-a.done:
			if err != nil {
				a.t.Errorf("agent run: %v", err)
			}
		case <-time.After(15 * time.Second):
			a.t.Errorf("the agent did not stop within 15s")
		}
	})
}

// lastAccepted is the latest report the edge accepted.
func (a *testAgent) lastAccepted() (agentResult, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := len(a.results) - 1; i >= 0; i-- {
		if a.results[i].Accepted {
			return a.results[i], true
		}
	}
	return agentResult{}, false
}

// waitVerdict waits for an accepted report, collected after since, whose
// verdict for profile has exactly the failed checks want (none: passes).
func (a *testAgent) waitVerdict(t *testing.T, since time.Time, timeout time.Duration, profile string, want ...string) agentResult {
	t.Helper()
	last := "none"
	deadline := time.Now().Add(timeout)
	for {
		a.mu.Lock()
		results := slices.Clone(a.results)
		a.mu.Unlock()
		for _, r := range results {
			if !r.At.After(since) {
				continue
			}
			if !r.Accepted {
				last = "not accepted: " + errString(r.Err)
				continue
			}
			for _, p := range r.Profiles {
				if p.Name != profile {
					continue
				}
				var checks []string
				for _, f := range p.Failures {
					checks = append(checks, f.Check)
				}
				last = "fails " + strings.Join(checks, ",")
				if p.OK == (len(want) == 0) && slices.Equal(checks, want) {
					return r
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for a report whose %s verdict fails %v; last: %s", timeout, profile, want, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// onDevice is the signed-in user's browser on an enrolled device: the
// session cookies of signedIn, and cert on every connection. It visits each
// of apps once, so it holds a session cookie for their hosts.
func onDevice(t *testing.T, env *devenv.Env, signedIn *http.Client, cert tls.Certificate, apps ...string) *http.Client {
	t.Helper()
	dc := withDeviceCert(t, env, cert)
	dc.Jar = signedIn.Jar
	for _, app := range apps {
		navigate(t, env, dc, env.AppURL(app)+"/")
	}
	return dc
}

// postureError is the edge's JSON refusal with its checks.
type postureError struct {
	Error   string `json:"error"`
	Message string `json:"message"`
	Hint    string `json:"hint"`
	Checks  []struct {
		Check  string `json:"check"`
		Reason string `json:"reason"`
		Fix    string `json:"fix"`
	} `json:"checks"`
}

func (e postureError) checkNames() []string {
	var out []string
	for _, c := range e.Checks {
		out = append(out, c.Check)
	}
	return out
}

// decodePostureError decodes r as a JSON refusal with status and code.
func decodePostureError(t *testing.T, r *response, status int, code string) postureError {
	t.Helper()
	expectJSONError(t, r, status, code)
	var e postureError
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("decode refusal: %v: %.300s", err, r.Body)
	}
	for _, c := range e.Checks {
		if c.Reason == "" || c.Fix == "" {
			t.Errorf("check %q without a reason or a fix: %+v", c.Check, c)
		}
	}
	return e
}

// waitRefusal polls url with c until the edge refuses it for posture with
// exactly the failed checks want, and returns that refusal.
func waitRefusal(t *testing.T, c *http.Client, url string, timeout time.Duration, want ...string) postureError {
	t.Helper()
	var last *response
	deadline := time.Now().Add(timeout)
	for {
		last = get(t, c, url, asAPI)
		if last.StatusCode == http.StatusForbidden {
			var e postureError
			if json.Unmarshal(last.Body, &e) == nil && e.Error == "posture_failed" && slices.Equal(e.checkNames(), want) {
				return decodePostureError(t, last, http.StatusForbidden, "posture_failed")
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s to fail %v; last answer %d %.400s", timeout, url, want, last.StatusCode, last.Body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitAllowed polls url with c until it answers 200, and returns that.
func waitAllowed(t *testing.T, c *http.Client, url string, timeout time.Duration) *response {
	t.Helper()
	var last *response
	deadline := time.Now().Add(timeout)
	for {
		if last = get(t, c, url, asAPI); last.StatusCode == http.StatusOK {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s to answer 200; last answer %d %.400s", timeout, url, last.StatusCode, last.Body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// deviceWS opens a WebSocket to app's /ws from the device cert with the
// session cookie c holds for app, checks the echo, and returns a channel
// that receives the time the connection ended.
func deviceWS(t *testing.T, env *devenv.Env, c *http.Client, app string, cert tls.Certificate) (*websocket.Conn, <-chan time.Time) {
	t.Helper()
	d := wsDialer(t, env)
	d.TLSClientConfig.Certificates = []tls.Certificate{cert}
	h := http.Header{}
	h.Set("Cookie", authn.SessionCookie+"="+sessionCookie(t, env, c, app))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, resp, err := d.DialContext(ctx, strings.Replace(env.AppURL(app), "https://", "wss://", 1)+"/ws", h)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		t.Fatalf("websocket to %s from the device: %v", app, err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	if err := ws.WriteMessage(websocket.TextMessage, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, msg, err := ws.ReadMessage(); err != nil || !strings.HasSuffix(string(msg), ": ping") {
		t.Fatalf("websocket echo %q, %v", msg, err)
	}
	_ = ws.SetReadDeadline(time.Time{})
	return ws, watchClose(ws)
}

// watchClose reads ws until it fails and sends the time it did; the read is
// bounded, so the reader always ends.
func watchClose(ws *websocket.Conn) <-chan time.Time {
	closed := make(chan time.Time, 1)
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				closed <- time.Now()
				return
			}
		}
	}()
	return closed
}

// postureAudit is an audit event with the device trust fields.
type postureAudit struct {
	Kind     string `json:"kind"`
	User     string `json:"user"`
	Device   string `json:"device"`
	Posture  string `json:"posture"`
	App      string `json:"app"`
	Path     string `json:"path"`
	Source   string `json:"source"`
	Decision string `json:"decision"`
	Rule     string `json:"rule"`
	Reason   string `json:"reason"`
}

// waitPostureAudit waits for an audit event that match accepts.
func waitPostureAudit(t *testing.T, env *devenv.Env, what string, match func(postureAudit) bool) postureAudit {
	t.Helper()
	var found postureAudit
	waitFor(t, 5*time.Second, "an audit event: "+what, func() bool {
		for _, line := range strings.Split(auditLog(t, env).String(), "\n") {
			var ev postureAudit
			if strings.TrimSpace(line) == "" || json.Unmarshal([]byte(line), &ev) != nil {
				continue
			}
			if match(ev) {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// Seed bypass 1, the fake file: a file where the EDR belongs, or another
// program renamed to the EDR's name and running, does not pass; only the
// approved build running does.
func TestPostureBypassFakeEDR(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	const proc = "zedr-fake"
	genuine, genuineSum := installExecutable(t, "/bin/sleep", proc)
	dummy, dummySum := installExecutable(t, "/usr/bin/tail", proc)
	mgr := startEDRManager(t)
	// A generous max_age: what fails here is the EDR, never the report's age,
	// even when a loaded machine delays a report.
	profile := edrProfile("edr-fake", 10*time.Second, 0, "", genuineSum)
	applyConfig(t, env, func(cfg *proxy.Config) {
		cfg.Posture.ReportInterval = testReportInterval
		cfg.Posture.Profiles = append(cfg.Posture.Profiles, profile)
		setAppProfile(t, cfg, "strict", profile.Name)
	})
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	stateDir, devID := enrollAgent(t, env, alice, "alice-fake-edr")
	dc := onDevice(t, env, alice, agentCert(t, stateDir), "strict")
	start := time.Now()
	ag := startAgent(t, env, stateDir, agent.EDRConfig{Name: testEDR, ProcessNames: []string{proc}, ManagerAddr: mgr.addr, ManagerRootCAs: mgr.roots})
	strict := env.AppURL("strict") + "/?format=json"

	// Only the file: installed, never started.
	e := waitRefusal(t, dc, strict, 10*time.Second, posture.CheckEDRRunning)
	if !strings.Contains(e.Checks[0].Reason, testEDR) {
		t.Errorf("edr_running reason %q does not name the EDR", e.Checks[0].Reason)
	}
	// The agent hears the same verdict, to tell its user.
	ag.waitVerdict(t, start, 5*time.Second, profile.Name, posture.CheckEDRRunning)

	// Another program, renamed to the EDR's process name and running.
	stopDummy := startProcess(t, dummy, "-f", "/dev/null")
	e = waitRefusal(t, dc, strict, 5*time.Second, posture.CheckEDRBinary)
	if r := e.Checks[0].Reason; !strings.Contains(r, dummySum) || !strings.Contains(r, dummy) {
		t.Errorf("edr_binary reason %q should name the running executable %s and its hash %s", r, dummy, dummySum)
	}
	stopDummy()

	// The approved build running: access.
	startProcess(t, genuine, "600")
	rep := decodeReport(t, waitAllowed(t, dc, strict, 5*time.Second).Body)
	if rep.Claims == nil || rep.Claims.Device != devID || rep.Claims.Posture != profile.Name {
		t.Errorf("assertion device/posture = %+v, want %s / %s", rep.Claims, devID, profile.Name)
	}

	// Each decision's audit event carries its posture verdict.
	for _, verdict := range []string{"fail:" + posture.CheckEDRRunning, "fail:" + posture.CheckEDRBinary, profile.Name} {
		waitPostureAudit(t, env, "strict with posture "+verdict, func(ev postureAudit) bool {
			return ev.Kind == "request" && ev.App == "strict" && ev.Device == devID && ev.Posture == verdict && ev.User == "u-alice"
		})
	}
}

// Seed bypass 2, killing the EDR after login: the next report closes the
// device's live WebSocket and refuses its requests; an agent that stops
// reporting loses access once its last report is older than max_age.
func TestPostureBypassKillEDR(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	const proc = "zedr-kill"
	genuine, sum := installExecutable(t, "/bin/sleep", proc)
	stopEDR := startProcess(t, genuine, "600")
	mgr := startEDRManager(t)
	// The default manager window (10m): only the report's age can fail here.
	profile := edrProfile("edr-kill", testMaxAge, 0, "", sum)
	applyConfig(t, env, func(cfg *proxy.Config) {
		cfg.Posture.ReportInterval = testReportInterval
		cfg.Posture.Profiles = append(cfg.Posture.Profiles, profile)
		setAppProfile(t, cfg, "strict", profile.Name)
	})
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	stateDir, _ := enrollAgent(t, env, alice, "alice-kill-edr")
	cert := agentCert(t, stateDir)
	dc := onDevice(t, env, alice, cert, "strict")
	ag := startAgent(t, env, stateDir, agent.EDRConfig{Name: testEDR, ProcessNames: []string{proc}, ManagerAddr: mgr.addr, ManagerRootCAs: mgr.roots})
	strict := env.AppURL("strict") + "/?format=json"
	waitAllowed(t, dc, strict, 10*time.Second)

	// Kill the EDR with a WebSocket open.
	_, closed := deviceWS(t, env, dc, "strict", cert)
	killed := time.Now()
	stopEDR()
	res := ag.waitVerdict(t, killed, 5*time.Second, profile.Name, posture.CheckEDRRunning)
	select {
	case at := <-closed:
		t.Logf("WebSocket closed %v after the kill; the report was answered %v after it", at.Sub(killed).Round(time.Millisecond), res.Seen.Sub(killed).Round(time.Millisecond))
		if at.Before(killed) {
			t.Fatal("the WebSocket closed before the EDR was killed")
		}
	case <-time.After(time.Until(res.Seen.Add(time.Second))):
		t.Fatal("the WebSocket stayed open more than 1s after the report that the EDR stopped")
	}
	e := decodePostureError(t, get(t, dc, strict, asAPI), http.StatusForbidden, "posture_failed")
	if !slices.Equal(e.checkNames(), []string{posture.CheckEDRRunning}) {
		t.Errorf("after the kill: checks %v, want [edr_running]", e.checkNames())
	}

	// Restart it; then stop the agent instead.
	startProcess(t, genuine, "600")
	waitAllowed(t, dc, strict, 5*time.Second)
	_, closed = deviceWS(t, env, dc, "strict", cert)
	ag.stop()
	stopped := time.Now()
	last, ok := ag.lastAccepted()
	if !ok {
		t.Fatal("no accepted report")
	}
	// The last report is still fresh: access continues for now.
	if r := get(t, dc, strict, asAPI); r.StatusCode != http.StatusOK {
		if age := time.Since(last.At); age < testMaxAge-500*time.Millisecond {
			t.Fatalf("right after the agent stopped (last report %v old): %d %.300s", age, r.StatusCode, r.Body)
		}
	}
	e = waitRefusal(t, dc, strict, time.Until(stopped.Add(testMaxAge+time.Second)), posture.CheckReport)
	if !strings.Contains(e.Checks[0].Reason, "agent") {
		t.Errorf("report reason %q should point at the agent", e.Checks[0].Reason)
	}
	select {
	case at := <-closed:
		if at.Before(last.At.Add(testMaxAge)) {
			t.Errorf("the WebSocket closed %v after the last report started, before it was %v old", at.Sub(last.At), testMaxAge)
		}
	case <-time.After(time.Until(stopped.Add(testMaxAge + time.Second))):
		t.Fatalf("the WebSocket stayed open more than %v after the agent stopped", testMaxAge+time.Second)
	}
	waitPostureAudit(t, env, "strict with posture fail:report", func(ev postureAudit) bool {
		return ev.App == "strict" && ev.Posture == "fail:"+posture.CheckReport && ev.Decision == "deny"
	})
}

// Seed bypass 3, blocking the EDR's management server: the EDR runs, but
// once nobody has heard from it for manager_window the device fails; the
// vendor's own check-in (an edr_checkin signal) restores access where the
// profile accepts vendor check-ins, and not where only the agent's probe
// counts.
func TestPostureBypassBlockedManager(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	const proc = "zedr-mgr"
	genuine, sum := installExecutable(t, "/bin/sleep", proc)
	startProcess(t, genuine, "600")
	mgr := startEDRManager(t)
	// A generous max_age: what fails here is the contact, never the
	// report's age, even when a loaded machine delays a report.
	either := edrProfile("edr-either", 10*time.Second, testManagerWindow, posture.ContactEither, sum)
	agentOnly := edrProfile("edr-agent", 10*time.Second, testManagerWindow, posture.ContactAgent, sum)
	applyConfig(t, env, func(cfg *proxy.Config) {
		cfg.Posture.ReportInterval = testReportInterval
		cfg.Posture.Profiles = append(cfg.Posture.Profiles, either, agentOnly)
		setAppProfile(t, cfg, "strict", either.Name)
		setAppProfile(t, cfg, "secure", agentOnly.Name)
	})
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	stateDir, devID := enrollAgent(t, env, alice, "alice-blocked")
	dc := onDevice(t, env, alice, agentCert(t, stateDir), "strict", "secure")
	startAgent(t, env, stateDir, agent.EDRConfig{Name: testEDR, ProcessNames: []string{proc}, ManagerAddr: mgr.addr, ManagerRootCAs: mgr.roots})
	strict, secure := env.AppURL("strict")+"/?format=json", env.AppURL("secure")+"/?format=json"
	waitAllowed(t, dc, strict, 10*time.Second)
	waitAllowed(t, dc, secure, 5*time.Second)

	blocked := time.Now()
	mgr.close()
	e := waitRefusal(t, dc, strict, testManagerWindow+2*time.Second, posture.CheckEDRManager)
	if el := time.Since(blocked); el < testManagerWindow/2 {
		t.Errorf("edr_manager failed %v after the block: the window is %v", el, testManagerWindow)
	}
	if r := e.Checks[0].Reason; !strings.Contains(r, mgr.addr) || !strings.Contains(r, "connection refused") {
		t.Errorf("edr_manager reason %q should name the server %s and the last error", r, mgr.addr)
	}
	waitRefusal(t, dc, secure, time.Second, posture.CheckEDRManager)

	// The vendor says the EDR checked in.
	checkin := map[string]string{"kind": posture.SignalEDRCheckIn, "source": "edr-vendor", "device_id": devID, "edr": testEDR}
	if r := postSignal(t, env, proxy.PathSignals, "Bearer "+env.AdminToken, checkin); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("check-in with the admin token: %d, want 401", r.StatusCode)
	}
	checkedIn := time.Now()
	r := postSignal(t, env, proxy.PathSignals, "Bearer "+env.SignalsToken, checkin)
	if out := decodeObject(t, r, http.StatusOK); out["outcome"] != "checkin" {
		t.Fatalf("check-in answer %v", out)
	}
	if r := get(t, dc, strict, asAPI); r.StatusCode != http.StatusOK {
		t.Fatalf("after the vendor check-in, %s: %d %.300s", either.Name, r.StatusCode, r.Body)
	}
	e = decodePostureError(t, get(t, dc, secure, asAPI), http.StatusForbidden, "posture_failed")
	if !slices.Equal(e.checkNames(), []string{posture.CheckEDRManager}) {
		t.Errorf("%s after a vendor check-in: checks %v, want [edr_manager]", agentOnly.Name, e.checkNames())
	}
	if time.Since(checkedIn) >= testManagerWindow {
		t.Fatal("too slow: the check-in aged out before it was checked")
	}
	// A check-in ages like any contact.
	waitRefusal(t, dc, strict, time.Until(checkedIn.Add(testManagerWindow+time.Second)), posture.CheckEDRManager)

	// A check-in for no enrolled device changes nothing.
	checkin["device_id"] = "dev-unknown"
	if r := postSignal(t, env, proxy.PathSignals, "Bearer "+env.SignalsToken, checkin); r.StatusCode != http.StatusNotFound {
		t.Errorf("check-in for an unknown device: %d, want 404", r.StatusCode)
	}
}

// postSignal posts body (a []byte as is, anything else as JSON) to the
// auth host's path with the Authorization header auth ("" for none).
func postSignal(t *testing.T, env *devenv.Env, path, auth string, body any) *response {
	t.Helper()
	b, ok := body.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(body); err != nil {
			t.Fatal(err)
		}
	}
	req := newRequest(t, http.MethodPost, env.AuthOrigin+path, bytes.NewReader(b), asAPI)
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	return do(t, newClient(t, env), req)
}

// decodeObject checks r's status and decodes its JSON object.
func decodeObject(t *testing.T, r *response, status int) map[string]any {
	t.Helper()
	if r.StatusCode != status {
		t.Fatalf("%s %s: %d, want %d: %.300s", r.Request.Method, r.Request.URL.Path, r.StatusCode, status, r.Body)
	}
	out := map[string]any{}
	if err := json.Unmarshal(r.Body, &out); err != nil {
		t.Fatalf("%s: not a JSON object: %v: %.300s", r.Request.URL.Path, err, r.Body)
	}
	return out
}

// reportAnswer is the edge's answer to an accepted report.
type reportAnswer struct {
	Accepted    bool   `json:"accepted"`
	NextNonce   string `json:"next_nonce"`
	Quarantined bool   `json:"quarantined"`
	Quarantine  *struct {
		Reason, Fix, Source string
	} `json:"quarantine"`
	Profiles []struct {
		Name     string `json:"name"`
		OK       bool   `json:"ok"`
		Failures []struct {
			Check string `json:"check"`
		} `json:"failures"`
	} `json:"profiles"`
}

// reportingDevice sends reports it signs itself, as an agent would, through
// a client that presents its certificate.
type reportingDevice struct {
	id      string
	key     *ecdsa.PrivateKey
	cert    tls.Certificate
	c       *http.Client
	counter uint64
}

// enrollReporter enrolls a device named name for user through the registry
// (enrollment itself is not under test here).
func enrollReporter(t *testing.T, env *devenv.Env, user, name string) *reportingDevice {
	t.Helper()
	id, cert := enrollNamedDevice(t, env, user, name)
	return &reportingDevice{id: id, key: cert.PrivateKey.(*ecdsa.PrivateKey), cert: cert, c: withDeviceCert(t, env, cert)}
}

// nonce asks the edge for a report nonce with the device's certificate.
func (d *reportingDevice) nonce(t *testing.T, env *devenv.Env) string {
	t.Helper()
	req := newRequest(t, http.MethodPost, env.AuthOrigin+proxy.PathDeviceNonce, strings.NewReader("{}"), asAPI)
	req.Header.Set("Content-Type", "application/json")
	out := decodeObject(t, do(t, d.c, req), http.StatusOK)
	n, _ := out["nonce"].(string)
	if n == "" {
		t.Fatalf("nonce answer %v", out)
	}
	return n
}

// report is a report of this device with the next counter: firewall and
// disk encryption on, collected now.
func (d *reportingDevice) report(nonce string) posture.Report {
	d.counter++
	on := true
	return posture.Report{DeviceID: d.id, Counter: d.counter, Nonce: nonce, CollectedAt: time.Now(),
		OS:            posture.OSInfo{Name: "Debian GNU/Linux", Version: "12", Kernel: "6.1.0-25-amd64", Arch: "amd64"},
		DiskEncrypted: &on, FirewallActive: &on}
}

// sign signs r with key.
func sign(t *testing.T, key *ecdsa.PrivateKey, r posture.Report) []byte {
	t.Helper()
	wire, err := posture.SignReport(key, r)
	if err != nil {
		t.Fatal(err)
	}
	return wire
}

// sendReport posts wire to the report endpoint with c. A refused TLS
// handshake is returned as the error.
func sendReport(t *testing.T, env *devenv.Env, c *http.Client, wire []byte) (*response, error) {
	t.Helper()
	req := newRequest(t, http.MethodPost, env.AuthOrigin+proxy.PathDeviceReport, bytes.NewReader(wire), asAPI)
	req.Header.Set("Content-Type", proxy.ReportContentType)
	return tryDo(c, req)
}

// tryDo is do that returns a transport error instead of failing.
func tryDo(c *http.Client, req *http.Request) (*response, error) {
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, err
	}
	return &response{Response: resp, Body: b}, nil
}

// accept sends a report that must be accepted, and returns the answer.
func (d *reportingDevice) accept(t *testing.T, env *devenv.Env, wire []byte) reportAnswer {
	t.Helper()
	r, err := sendReport(t, env, d.c, wire)
	if err != nil {
		t.Fatalf("report: %v", err)
	}
	if r.StatusCode != http.StatusOK {
		t.Fatalf("report: %d %.300s", r.StatusCode, r.Body)
	}
	var a reportAnswer
	if err := json.Unmarshal(r.Body, &a); err != nil || !a.Accepted || a.NextNonce == "" {
		t.Fatalf("report answer %.300s (%v)", r.Body, err)
	}
	return a
}

// expectTLSRefusal checks that err is the edge refusing the TLS handshake
// (an alert), not some other failure.
func expectTLSRefusal(t *testing.T, what string, err error) {
	t.Helper()
	if !strings.Contains(err.Error(), "remote error: tls: ") {
		t.Errorf("%s: %v, want the edge to refuse the handshake", what, err)
		return
	}
	t.Logf("%s: the edge refused the handshake: %v", what, err)
}

// The report channel under attack: every forged, replayed, transplanted or
// stale report is refused with its own code and changes nothing; devices
// that are revoked, from another CA or expired are refused; a posture app
// refuses a browser without a device; the audit log carries each verdict.
func TestPostureReportAttacks(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	applyConfig(t, env, func(cfg *proxy.Config) { setAppProfile(t, cfg, "strict", "baseline") })
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	a := enrollReporter(t, env, "u-alice", "alice-a")
	b := enrollReporter(t, env, "u-alice", "alice-b")
	c := enrollReporter(t, env, "u-alice", "alice-c")
	strict := env.AppURL("strict") + "/?format=json"

	refused := func(name string, cl *http.Client, wire []byte, status int, code string) {
		t.Helper()
		r, err := sendReport(t, env, cl, wire)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		expectJSONError(t, r, status, code)
	}

	nonceA := a.nonce(t, env)
	good := sign(t, a.key, a.report(nonceA))
	ans := a.accept(t, env, good)
	if len(ans.Profiles) == 0 || ans.Quarantined {
		t.Errorf("report answer %+v: want profile verdicts, not quarantined", ans)
	}

	// The same bytes again.
	refused("replay", a.c, good, http.StatusConflict, "replay")
	// A's report signed by B's key.
	refused("signed by another device's key", a.c, sign(t, b.key, a.report(nonceA)), http.StatusForbidden, "bad_signature")
	// B's genuine report, sent with A's certificate...
	movedReport := b.report(b.nonce(t, env))
	moved := sign(t, b.key, movedReport)
	refused("another device's report", a.c, moved, http.StatusForbidden, "wrong_device")
	// ...is fine from B: it is the move that is refused.
	b.accept(t, env, moved)
	// Nonces: made up, or issued to another device.
	refused("forged nonce", a.c, sign(t, a.key, a.report("FORGEDNONCEAAAAAAAAAAAAAAA")), http.StatusConflict, "stale_nonce")
	refused("another device's nonce", a.c, sign(t, a.key, a.report(b.nonce(t, env))), http.StatusConflict, "stale_nonce")
	// Collected long ago (with a fresh nonce).
	old := a.report(a.nonce(t, env))
	old.CollectedAt = time.Now().Add(-10 * time.Minute)
	refused("collected 10 minutes ago", a.c, sign(t, a.key, old), http.StatusBadRequest, "clock")
	// No certificate.
	refused("no certificate", newClient(t, env), sign(t, a.key, a.report(nonceA)), http.StatusUnauthorized, "device_certificate_required")

	// Through all of that, A's accepted report stands and a good one still
	// goes through.
	a.accept(t, env, sign(t, a.key, a.report(nonceA)))
	onA := onDevice(t, env, alice, a.cert, "strict")
	if rep := decodeReport(t, waitAllowed(t, onA, strict, time.Second).Body); rep.Claims == nil || rep.Claims.Device != a.id || rep.Claims.Posture != "baseline" {
		t.Errorf("device A on strict: claims %+v", rep.Claims)
	}

	// A device that never reported fails "report"; revoked (admin API), it
	// is refused everywhere, reports included.
	onC := onDevice(t, env, alice, c.cert, "strict")
	e := decodePostureError(t, get(t, onC, strict, asAPI), http.StatusForbidden, "posture_failed")
	if !slices.Equal(e.checkNames(), []string{posture.CheckReport}) {
		t.Errorf("never reported: checks %v, want [report]", e.checkNames())
	}
	nonceC := c.nonce(t, env)
	req := newRequest(t, http.MethodPost, env.AuthOrigin+"/api/devices/"+c.id+"/revoke", strings.NewReader(`{"reason":"laptop stolen"}`), asAPI)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+env.AdminToken)
	decodeObject(t, do(t, newClient(t, env), req), http.StatusOK)
	refused("revoked device", c.c, sign(t, c.key, c.report(nonceC)), http.StatusForbidden, "device_refused")
	fresh := onDevice(t, env, alice, c.cert) // a new connection, the same cookies
	expectJSONError(t, get(t, fresh, strict, asAPI), http.StatusForbidden, "device_refused")

	// A's key with a certificate from another CA, and an expired one from
	// the edge's own CA: the handshake fails or the edge refuses.
	otherCA, err := posture.LoadOrCreateDeviceCA(filepath.Join(t.TempDir(), "ca.pem"), filepath.Join(t.TempDir(), "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := otherCA.Issue(a.id, "u-alice", &a.key.PublicKey, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	expired, err := env.DeviceCA.Issue(a.id, "u-alice", &a.key.PublicKey, time.Hour, time.Now().Add(-3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for name, der := range map[string][]byte{"another CA": foreign, "expired": expired} {
		cl := withDeviceCert(t, env, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: a.key})
		cl.Jar = alice.Jar
		// HTTP/1.1, whose errors keep the TLS alert (HTTP/2's hide it).
		tr := cl.Transport.(*http.Transport)
		tr.ForceAttemptHTTP2 = false
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		r, err := sendReport(t, env, cl, sign(t, a.key, a.report(nonceA)))
		switch {
		case err != nil:
			expectTLSRefusal(t, name+" certificate: report", err)
		case r.StatusCode != http.StatusUnauthorized && r.StatusCode != http.StatusForbidden:
			t.Errorf("%s certificate: report answered %d %.200s", name, r.StatusCode, r.Body)
		}
		r, err = tryDo(cl, newRequest(t, http.MethodGet, strict, nil, asAPI))
		switch {
		case err != nil:
			expectTLSRefusal(t, name+" certificate: strict", err)
		default:
			expectJSONError(t, r, http.StatusForbidden, "device_refused")
		}
	}

	// No device at all on a posture app.
	onBrowser := newClient(t, env)
	onBrowser.Jar = alice.Jar
	navigate(t, env, onBrowser, env.AppURL("strict")+"/")
	e = decodePostureError(t, get(t, onBrowser, strict, asAPI), http.StatusForbidden, "device_required")
	if e.Hint == "" || !strings.Contains(e.Message, "strict") {
		t.Errorf("device_required: message %q hint %q", e.Message, e.Hint)
	}

	for _, want := range []struct{ device, verdict, decision string }{
		{a.id, "baseline", "allow"},
		{c.id, "fail:" + posture.CheckReport, "deny"},
		{"", "fail:device", "deny"},
	} {
		waitPostureAudit(t, env, "strict from "+want.device+" with posture "+want.verdict, func(ev postureAudit) bool {
			return ev.Kind == "request" && ev.App == "strict" && ev.Device == want.device && ev.Posture == want.verdict && ev.Decision == want.decision
		})
	}
}
