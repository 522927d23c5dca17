package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/store/memory"
	"github.com/ztna-dev/ztna/posture"
)

// postureEdge serves the reporting protocol over real TLS (client
// certificates verified against the real device CA) on top of the real
// device registry, nonce book and report verifier, as the edge does.
type postureEdge struct {
	srv      *httptest.Server
	devs     *posture.Devices
	ca       *posture.DeviceCA
	book     *posture.NonceBook // under mu (rotateNonceKey replaces it)
	verifier posture.ReportVerifier
	interval int // suggested to the agent, seconds

	offset       atomic.Int64 // added to the edge's clock (and the runner's, when it uses e.now)
	fail503      atomic.Int32 // the next N report requests answer 503
	blockReports atomic.Bool  // report requests hang until the client gives up
	blocked      atomic.Int32 // report requests hanging
	quarantine   atomic.Bool  // accepted reports answer quarantined
	failRenew    atomic.Bool  // renew requests answer 503

	mu       sync.Mutex
	counters map[string]uint64 // the last accepted counter per device
	nonces   int               // nonce requests
	reports  []seenReport      // every report request, in order
	renewals []int             // per renew request: client certificates presented
}

// seenReport is one report request as the edge saw it.
type seenReport struct {
	At      time.Time
	Serial  string // of the client certificate presented; "" if none
	Status  int
	Counter uint64 // of an accepted report
}

func newPostureEdge(t *testing.T) *postureEdge {
	t.Helper()
	dir := t.TempDir()
	ca, err := posture.LoadOrCreateDeviceCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	st := memory.New(memory.Options{})
	e := &postureEdge{devs: posture.NewDevices(st, ca, nil), ca: ca, interval: 30, counters: map[string]uint64{}}
	e.book = posture.NewNonceBook(posture.NonceBookConfig{Now: e.now})
	e.verifier = posture.ReportVerifier{Nonces: e.book}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /.ztna/device/nonce", e.nonce)
	mux.HandleFunc("POST /.ztna/device/report", e.report)
	mux.HandleFunc("POST /.ztna/device/renew", e.renew)
	e.srv = httptest.NewUnstartedServer(mux)
	e.srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ca.Pool(), Time: e.now}
	e.srv.StartTLS()
	t.Cleanup(func() { e.srv.Close(); st.Close() })
	return e
}

func (e *postureEdge) now() time.Time { return time.Now().Add(time.Duration(e.offset.Load())) }

// enroll enrolls the device key in stateDir through the registry's real
// device flow, for user alice, and leaves the state directory as `ztna
// agent enroll` does. It returns the device ID.
func (e *postureEdge) enroll(t *testing.T, stateDir string) string {
	t.Helper()
	ctx := context.Background()
	key, err := LoadOrCreateKey(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := posture.SignEnrollProof(key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.devs.StartEnrollment(ctx, &key.PublicKey, "laptop", "linux", proof)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.devs.Approve(ctx, p.UserCode, "alice"); err != nil {
		t.Fatal(err)
	}
	dev, der, err := e.devs.Poll(ctx, p.EnrollmentID, e.now())
	if err != nil {
		t.Fatal(err)
	}
	if err := saveEnrollment(stateDir, der, e.ca.CertPEM(), deviceState{DeviceID: dev.ID, Server: e.srv.URL, EnrolledAt: e.now()}); err != nil {
		t.Fatal(err)
	}
	return dev.ID
}

// device identifies the request's device as the edge does, answering the
// protocol's errors itself.
func (e *postureEdge) device(w http.ResponseWriter, r *http.Request) (*posture.Device, bool) {
	dev, err := e.devs.Check(r.Context(), r.TLS.PeerCertificates, e.now())
	switch {
	case err == nil:
		return dev, true
	case errors.Is(err, posture.ErrDeviceRevoked):
		writeJSON(w, 403, errorResponse{"device_refused", "this device was revoked by an admin"})
	default:
		writeJSON(w, 401, errorResponse{"device_certificate_required", err.Error()})
	}
	return nil, false
}

func (e *postureEdge) nonce(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	e.nonces++
	book := e.book
	e.mu.Unlock()
	if r.Header.Get("Content-Type") != "application/json" {
		writeJSON(w, 415, errorResponse{"unsupported_media_type", ""})
		return
	}
	dev, ok := e.device(w, r)
	if !ok {
		return
	}
	writeJSON(w, 200, map[string]any{"nonce": book.Issue(dev.ID), "interval": e.interval})
}

func (e *postureEdge) report(w http.ResponseWriter, r *http.Request) {
	seen := seenReport{At: time.Now()}
	if len(r.TLS.PeerCertificates) > 0 {
		seen.Serial = r.TLS.PeerCertificates[0].SerialNumber.Text(16)
	}
	rw := &statusWriter{ResponseWriter: w}
	defer func() {
		seen.Status = rw.status
		e.mu.Lock()
		e.reports = append(e.reports, seen)
		e.mu.Unlock()
	}()
	if e.blockReports.Load() {
		// The server notices the client going away only once the body
		// has been read.
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, posture.MaxReportBytes))
		e.blocked.Add(1)
		<-r.Context().Done()
		return
	}
	if e.fail503.Load() > 0 {
		e.fail503.Add(-1)
		writeJSON(rw, 503, errorResponse{"unavailable", "the edge is restarting"})
		return
	}
	if r.Header.Get("Content-Type") != "application/ztna-posture-report" {
		writeJSON(rw, 415, errorResponse{"unsupported_media_type", ""})
		return
	}
	dev, ok := e.device(rw, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, posture.MaxReportBytes+1))
	if err != nil {
		writeJSON(rw, 400, errorResponse{"malformed_report", err.Error()})
		return
	}
	sr, err := posture.ParseReport(body)
	if err != nil {
		writeJSON(rw, 400, errorResponse{"malformed_report", err.Error()})
		return
	}
	key, err := dev.Key()
	if err != nil {
		writeJSON(rw, 500, errorResponse{"server_error", err.Error()})
		return
	}
	e.mu.Lock()
	err = e.verifier.Verify(sr, dev.ID, key, e.counters[dev.ID], e.now())
	if err == nil {
		e.counters[dev.ID] = sr.Report.Counter
		seen.Counter = sr.Report.Counter
	}
	book := e.book
	e.mu.Unlock()
	switch {
	case err == nil:
	case errors.Is(err, posture.ErrStaleNonce):
		writeJSON(rw, 409, errorResponse{"stale_nonce", err.Error()})
		return
	case errors.Is(err, posture.ErrReplay):
		writeJSON(rw, 409, errorResponse{"replay", err.Error()})
		return
	case errors.Is(err, posture.ErrClock):
		writeJSON(rw, 400, errorResponse{"clock", err.Error()})
		return
	case errors.Is(err, posture.ErrWrongDevice):
		writeJSON(rw, 403, errorResponse{"wrong_device", err.Error()})
		return
	default:
		writeJSON(rw, 403, errorResponse{"bad_signature", err.Error()})
		return
	}
	// The protocol's JSON, spelled out rather than through the agent's
	// types, so a wrong tag on those fails here.
	resp := map[string]any{
		"accepted": true, "next_nonce": book.Issue(dev.ID), "interval": e.interval, "quarantined": false,
		"profiles": []map[string]any{
			{"name": "baseline", "ok": true},
			{"name": "strict", "ok": false, "failures": []map[string]any{
				{"check": "edr_running", "reason": "falcon is not running\x1b[2J", "fix": "start the falcon-sensor service"},
			}},
		},
	}
	if e.quarantine.Load() {
		resp["quarantined"] = true
		resp["quarantine"] = map[string]any{"reason": "Falco: shell spawned in a container", "fix": "contact security", "source": "falco"}
	}
	writeJSON(rw, 200, resp)
}

func (e *postureEdge) renew(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	e.renewals = append(e.renewals, len(r.TLS.PeerCertificates))
	e.mu.Unlock()
	if e.failRenew.Load() {
		writeJSON(w, 503, errorResponse{"unavailable", "the registry is unavailable"})
		return
	}
	var req struct {
		DeviceID string `json:"device_id"`
		Proof    string `json:"proof"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		writeJSON(w, 400, errorResponse{"invalid_request", err.Error()})
		return
	}
	proof, err := base64.StdEncoding.DecodeString(req.Proof)
	if err != nil {
		writeJSON(w, 400, errorResponse{"bad_proof", err.Error()})
		return
	}
	der, err := e.devs.Renew(r.Context(), req.DeviceID, proof, e.now())
	switch {
	case err == nil:
		writeJSON(w, 200, map[string]any{
			"device_id":   req.DeviceID,
			"certificate": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			"ca":          string(e.ca.CertPEM()),
		})
	case errors.Is(err, posture.ErrDeviceRevoked), errors.Is(err, posture.ErrNoDevice):
		writeJSON(w, 403, errorResponse{"device_refused", err.Error()})
	case errors.Is(err, posture.ErrProofUsed):
		writeJSON(w, 400, errorResponse{"proof_used", err.Error()})
	case errors.Is(err, posture.ErrBadProof):
		writeJSON(w, 400, errorResponse{"bad_proof", err.Error()})
	default:
		writeJSON(w, 500, errorResponse{"server_error", err.Error()})
	}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (e *postureEdge) seen() []seenReport {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]seenReport(nil), e.reports...)
}

func (e *postureEdge) statuses() []int {
	var out []int
	for _, s := range e.seen() {
		out = append(out, s.Status)
	}
	return out
}

// rotateNonceKey gives the edge a new nonce key, so every nonce it issued
// before is stale (its stored key was deleted and it restarted).
func (e *postureEdge) rotateNonceKey() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.book = posture.NewNonceBook(posture.NonceBookConfig{Now: e.now})
	e.verifier.Nonces = e.book
}

func (e *postureEdge) nonceRequests() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.nonces
}

func (e *postureEdge) renewRequests() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]int(nil), e.renewals...)
}

// registrySerial is the serial of the certificate the registry holds as the
// device's current one.
func (e *postureEdge) registrySerial(t *testing.T, id string) string {
	t.Helper()
	dev, err := e.devs.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return dev.CertSerial
}

// quietCollector collects from an empty fake root with no firewall or
// desktop tools, so tests do not depend on the host.
func quietCollector(t *testing.T) *Collector {
	c := New(Config{Root: t.TempDir(), Timeout: time.Second})
	c.binPaths = map[string]string{"nft": "", "iptables": "", "gsettings": ""}
	return c
}

func (e *postureEdge) runner(t *testing.T, stateDir string) *Runner {
	return &Runner{
		StateDir:  stateDir,
		Collector: quietCollector(t),
		Transport: e.srv.Client().Transport.(*http.Transport),
		Now:       e.now,
	}
}

// results makes r deliver its results on the returned channel (never
// blocking the runner).
func results(r *Runner) <-chan Result {
	ch := make(chan Result, 1000)
	r.OnResult = func(res Result) {
		select {
		case ch <- res:
		default:
		}
	}
	return ch
}

func nextResult(t *testing.T, ch <-chan Result) Result {
	t.Helper()
	select {
	case res := <-ch:
		return res
	case <-time.After(10 * time.Second):
		t.Fatal("no report result within 10s")
		return Result{}
	}
}

// startRun runs r until the returned stop is called (or the test ends);
// stop cancels and fails the test unless Run returns nil within 2s.
func startRun(t *testing.T, r *Runner) (stop func(), done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-ch:
				if err != nil {
					t.Errorf("Run = %v, want nil after cancel", err)
				}
			case <-time.After(2 * time.Second):
				t.Error("Run did not return within 2s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop, ch
}

func readCounterFile(t *testing.T, dir string) uint64 {
	t.Helper()
	c, err := readCounter(filepath.Join(dir, CounterFile))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRunnerReportsAcrossRestart(t *testing.T) {
	e := newPostureEdge(t)
	dir := filepath.Join(t.TempDir(), "agent")
	id := e.enroll(t, dir)
	ctx := testContext(t, 30*time.Second)
	// The runner's clock stands still, so the counter can only keep
	// growing across the restart through the counter file.
	fixed := time.Now()
	first := uint64(fixed.UnixMicro())

	r1 := e.runner(t, dir)
	r1.Now = func() time.Time { return fixed }
	for i := range 2 {
		res, err := r1.ReportOnce(ctx)
		if err != nil || !res.Accepted {
			t.Fatalf("report %d: %+v, %v", i, res, err)
		}
		if want := first + uint64(i); res.Counter != want {
			t.Errorf("report %d: counter %d, want %d", i, res.Counter, want)
		}
		if i == 0 {
			want := []ProfileVerdict{
				{Name: "baseline", OK: true},
				{Name: "strict", Failures: []ProfileFailure{{Check: "edr_running", Reason: "falcon is not running [2J", Fix: "start the falcon-sensor service"}}},
			}
			if got, _ := json.Marshal(res.Profiles); string(got) != string(must(json.Marshal(want))) {
				t.Errorf("profiles = %s, want %s (control characters removed)", got, must(json.Marshal(want)))
			}
			if res.Quarantined || res.Quarantine != nil || res.Renewed {
				t.Errorf("result = %+v", res)
			}
		}
	}

	// A new runner (a restart) on the same state directory.
	r2 := e.runner(t, dir)
	r2.Now = func() time.Time { return fixed }
	r2.Interval = 20 * time.Millisecond
	ch := results(r2)
	stop, _ := startRun(t, r2)
	for i := range 3 {
		res := nextResult(t, ch)
		if !res.Accepted || res.Err != nil {
			t.Fatalf("run report %d: %+v", i, res)
		}
		if want := first + 2 + uint64(i); res.Counter != want {
			t.Errorf("run report %d: counter %d, want %d", i, res.Counter, want)
		}
	}
	stop()

	serial := e.registrySerial(t, id)
	var counters []uint64
	for _, s := range e.seen() {
		if s.Status != 200 || s.Serial != serial {
			t.Errorf("edge saw %+v, want 200 with the registry's certificate %s", s, serial)
		}
		counters = append(counters, s.Counter)
	}
	for i := 1; i < len(counters); i++ {
		if counters[i] <= counters[i-1] {
			t.Errorf("counters not increasing: %v", counters)
		}
	}
	last := counters[len(counters)-1]
	if c := readCounterFile(t, dir); c != last {
		t.Errorf("%s holds %d, want the last counter sent %d", CounterFile, c, last)
	}
	if n := e.nonceRequests(); n != 2 {
		t.Errorf("%d nonce requests, want 2 (one per runner; each report's answer carries the next)", n)
	}

	st, err := readStatus(dir, fixed)
	if err != nil {
		t.Fatal(err)
	}
	lr := st.LastReport
	if st.LastReportErr != nil || lr == nil || !lr.Accepted || lr.Counter != last || lr.Error != "" || !lr.AcceptedAt.Equal(fixed) ||
		len(lr.Profiles) != 2 || lr.Profiles[1].OK || lr.Profiles[1].Failures[0].Fix != "start the falcon-sensor service" {
		t.Errorf("status last report = %+v, %v", lr, st.LastReportErr)
	}
	if st.RenewalDue {
		t.Error("a fresh certificate is reported due for renewal")
	}
	if m := mode(t, filepath.Join(dir, CounterFile)); m != 0o600 {
		t.Errorf("%s mode %#o, want 0600", CounterFile, m)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestRunnerQuarantineAndFailureRecorded(t *testing.T) {
	e := newPostureEdge(t)
	dir := t.TempDir()
	e.enroll(t, dir)
	ctx := testContext(t, 30*time.Second)
	r := e.runner(t, dir)

	e.quarantine.Store(true)
	res, err := r.ReportOnce(ctx)
	if err != nil || !res.Accepted || !res.Quarantined || res.Quarantine == nil ||
		*res.Quarantine != (QuarantineInfo{Reason: "Falco: shell spawned in a container", Fix: "contact security", Source: "falco"}) {
		t.Fatalf("ReportOnce = %+v, %v", res, err)
	}
	accepted := res.At

	// A failure keeps the edge's latest verdicts beside the error.
	e.fail503.Store(1)
	res, err = r.ReportOnce(ctx)
	if err == nil || res.Accepted || !isTransient(err) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("ReportOnce = %+v, %v; want a transient 503", res, err)
	}
	st, err := ReadStatus(dir)
	if err != nil {
		t.Fatal(err)
	}
	lr := st.LastReport
	if lr == nil || lr.Accepted || !strings.Contains(lr.Error, "503") || !lr.AcceptedAt.Equal(accepted) ||
		!lr.Quarantined || lr.Quarantine == nil || lr.Quarantine.Source != "falco" || len(lr.Profiles) != 2 {
		t.Errorf("last report = %+v", lr)
	}
}

func TestRunnerStaleNonce(t *testing.T) {
	e := newPostureEdge(t)
	dir := t.TempDir()
	e.enroll(t, dir)
	ctx := testContext(t, 30*time.Second)
	fixed := time.Now()
	r := e.runner(t, dir)
	r.Now = func() time.Time { return fixed }

	res1, err := r.ReportOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The nonce the agent holds goes stale (the edge's nonce key changed).
	e.rotateNonceKey()
	res2, err := r.ReportOnce(ctx)
	if err != nil || !res2.Accepted {
		t.Fatalf("after the agent's nonce went stale: %+v, %v", res2, err)
	}
	if res2.Counter != res1.Counter+2 {
		t.Errorf("counter %d, want %d (the refused report used one)", res2.Counter, res1.Counter+2)
	}
	if got, want := e.statuses(), []int{200, 409, 200}; !slicesEqual(got, want) {
		t.Errorf("edge answered %v, want %v", got, want)
	}
	if n := e.nonceRequests(); n != 2 {
		t.Errorf("%d nonce requests, want 2", n)
	}
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRunnerReplayJumpsCounter(t *testing.T) {
	e := newPostureEdge(t)
	dir := t.TempDir()
	id := e.enroll(t, dir)
	ctx := testContext(t, 30*time.Second)
	fixed := time.Now()
	r := e.runner(t, dir)
	r.Now = func() time.Time { return fixed }

	// The edge has seen a counter half an hour ahead of this clock (the
	// device's clock was ahead once, and the counter file was lost).
	seen := uint64(fixed.Add(30 * time.Minute).UnixMicro())
	e.mu.Lock()
	e.counters[id] = seen
	e.mu.Unlock()
	res, err := r.ReportOnce(ctx)
	if err != nil || !res.Accepted {
		t.Fatalf("ReportOnce = %+v, %v", res, err)
	}
	if want := uint64(fixed.UnixMicro()) + 1 + replayJump; res.Counter != want || res.Counter <= seen {
		t.Errorf("counter %d, want %d (> %d)", res.Counter, want, seen)
	}
	if c := readCounterFile(t, dir); c != res.Counter {
		t.Errorf("counter file %d, want %d", c, res.Counter)
	}
	if got, want := e.statuses(), []int{409, 200}; !slicesEqual(got, want) {
		t.Errorf("edge answered %v, want %v", got, want)
	}

	// Far ahead: one jump is not enough, and the runner retries only once.
	e.mu.Lock()
	e.counters[id] = res.Counter + uint64(100*24*time.Hour/time.Microsecond)
	e.mu.Unlock()
	res, err = r.ReportOnce(ctx)
	if err == nil || res.Accepted || edgeCode(err) != "replay" {
		t.Fatalf("ReportOnce = %+v, %v; want a replay refusal", res, err)
	}
	if got, want := e.statuses(), []int{409, 200, 409, 409}; !slicesEqual(got, want) {
		t.Errorf("edge answered %v, want %v", got, want)
	}
}

func TestRunnerRenewsNearExpiry(t *testing.T) {
	t.Run("running agent", func(t *testing.T) {
		e := newPostureEdge(t)
		dir := t.TempDir()
		id := e.enroll(t, dir)
		r := e.runner(t, dir)
		r.Interval = 30 * time.Millisecond
		ch := results(r)
		startRun(t, r)

		res := nextResult(t, ch)
		if !res.Accepted || res.Renewed {
			t.Fatalf("first report: %+v", res)
		}
		oldSerial := e.registrySerial(t, id)
		if s := e.seen()[0].Serial; s != oldSerial {
			t.Fatalf("first report presented serial %s, registry holds %s", s, oldSerial)
		}

		// 17 hours later (both clocks), a third of the day-long
		// certificate is left: the next report renews first, on the
		// connection it kept alive until then.
		e.offset.Store(int64(17 * time.Hour))
		for !res.Renewed {
			res = nextResult(t, ch)
		}
		if !res.Accepted {
			t.Fatalf("report after renewal: %+v", res)
		}
		newSerial := e.registrySerial(t, id)
		if newSerial == oldSerial {
			t.Fatal("the registry's serial did not change")
		}
		// Every report after the renewal presented the new certificate.
		var afterRenewal bool
		for _, s := range e.seen() {
			if s.Counter == res.Counter {
				afterRenewal = true
			}
			if afterRenewal && s.Serial != newSerial {
				t.Errorf("report %+v after the renewal presented %s, want the new serial %s", s, s.Serial, newSerial)
			}
		}
		if !afterRenewal {
			t.Errorf("the edge did not see the report %d", res.Counter)
		}
		// Not renewed again.
		for range 3 {
			if res := nextResult(t, ch); !res.Accepted || res.Renewed {
				t.Errorf("later report: %+v", res)
			}
		}
		if n := len(e.renewRequests()); n != 1 {
			t.Errorf("%d renew requests, want 1", n)
		}
		st, err := readStatus(dir, e.now())
		if err != nil {
			t.Fatal(err)
		}
		if cert := readCertFile(t, filepath.Join(dir, CertFile)); cert.SerialNumber.Text(16) != newSerial || st.RenewalDue || st.Expired {
			t.Errorf("state dir holds serial %s (due %t), want %s", cert.SerialNumber.Text(16), st.RenewalDue, newSerial)
		}
	})

	t.Run("expired certificate renews by key proof", func(t *testing.T) {
		e := newPostureEdge(t)
		dir := t.TempDir()
		id := e.enroll(t, dir)
		// The device was off for two days: its certificate has expired.
		key, err := LoadOrCreateKey(dir)
		if err != nil {
			t.Fatal(err)
		}
		der, err := e.ca.Issue(id, "alice", &key.PublicKey, time.Hour, time.Now().Add(-48*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if err := writeFileAtomic(filepath.Join(dir, CertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
			t.Fatal(err)
		}
		if st, err := ReadStatus(dir); err != nil || !st.Expired || !st.RenewalDue {
			t.Fatalf("status before = %+v, %v; want expired and due", st, err)
		}

		res, err := e.runner(t, dir).ReportOnce(testContext(t, 30*time.Second))
		if err != nil || !res.Accepted || !res.Renewed {
			t.Fatalf("ReportOnce = %+v, %v", res, err)
		}
		// The expired certificate was not presented (it would fail the
		// handshake); the key proof alone renewed it.
		if got := e.renewRequests(); !slicesEqual(got, []int{0}) {
			t.Errorf("renew requests presented %v certificates, want [0]", got)
		}
		serial := e.registrySerial(t, id)
		if s := e.seen(); len(s) != 1 || s[0].Serial != serial {
			t.Errorf("reports %+v, want one with the renewed serial %s", s, serial)
		}
		if st, err := ReadStatus(dir); err != nil || st.Expired || st.RenewalDue || st.LastReport == nil || !st.LastReport.Renewed {
			t.Errorf("status after = %+v, %v", st, err)
		}
	})
}

// syncLog is a log destination read by the test while the runner writes.
type syncLog struct{ syncBuffer }

func (l *syncLog) count(s string) int { return strings.Count(l.String(), s) }

func TestRunnerRevokedKeepsRunning(t *testing.T) {
	e := newPostureEdge(t)
	dir := t.TempDir()
	id := e.enroll(t, dir)
	logs := &syncLog{}
	const interval = 50 * time.Millisecond
	r := e.runner(t, dir)
	r.Interval = interval
	r.Logger = slog.New(slog.NewTextHandler(logs, nil))
	ch := results(r)
	stop, done := startRun(t, r)

	if res := nextResult(t, ch); !res.Accepted {
		t.Fatalf("first report: %+v", res)
	}
	if err := e.devs.Revoke(context.Background(), id, "reported lost"); err != nil {
		t.Fatal(err)
	}
	for res := nextResult(t, ch); !errors.Is(res.Err, ErrDeviceRefused); res = nextResult(t, ch) {
		if !res.Accepted {
			t.Fatalf("before the refusal: %+v", res)
		}
	}
	// Count the edge's requests over the next results: one report per
	// interval, no retry storm.
	before, start := len(e.seen())+e.nonceRequests(), time.Now()
	const more = 6
	for i := range more {
		if res := nextResult(t, ch); !errors.Is(res.Err, ErrDeviceRefused) || res.Accepted || isTransient(res.Err) {
			t.Fatalf("refused report %d: %+v", i, res)
		}
	}
	window := time.Since(start)
	requests := len(e.seen()) + e.nonceRequests() - before
	if limit := int(window/interval) + 2; requests > limit || requests < more {
		t.Errorf("%d requests in %s at a %s interval; want between %d and %d", requests, window, interval, more, limit)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned %v while refused; it must keep running", err)
	default:
	}
	if n := logs.count("refuses this device"); n != 1 {
		t.Errorf("the refusal was logged %d times, want once:\n%s", n, logs.String())
	}
	if n := len(e.renewRequests()); n != 0 {
		t.Errorf("%d renew requests, want none", n)
	}
	stop()
	if st, err := ReadStatus(dir); err != nil || st.LastReport == nil || !strings.Contains(st.LastReport.Error, "device_refused") {
		t.Errorf("status = %+v, %v", st.LastReport, err)
	}
}

func TestRunnerTransientBackoff(t *testing.T) {
	e := newPostureEdge(t)
	dir := t.TempDir()
	e.enroll(t, dir)
	const interval = 400 * time.Millisecond // backoff from interval/4 = 100ms
	r := e.runner(t, dir)
	r.Interval = interval
	ch := results(r)
	e.fail503.Store(3)
	startRun(t, r)

	for i := range 3 {
		if res := nextResult(t, ch); res.Accepted || !isTransient(res.Err) {
			t.Fatalf("result %d: %+v, want a transient failure", i, res)
		}
	}
	if res := nextResult(t, ch); !res.Accepted {
		t.Fatalf("after the edge recovered: %+v", res)
	}
	seen := e.seen()
	if got := e.statuses()[:4]; !slicesEqual(got, []int{503, 503, 503, 200}) {
		t.Fatalf("edge answered %v", got)
	}
	// Each wait is at least half of a delay doubling from 100ms.
	for i, minGap := range []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond} {
		if gap := seen[i+1].At.Sub(seen[i].At); gap < minGap {
			t.Errorf("retry %d came %s after the failure, want at least %s", i+1, gap, minGap)
		}
	}
}

func TestBackoff(t *testing.T) {
	for _, interval := range []time.Duration{30 * time.Second, 400 * time.Millisecond, 5 * time.Millisecond} {
		base := min(backoffBase, interval/4)
		for n := 1; n <= 70; n++ {
			d := interval
			if n <= 30 && base<<(n-1) < interval {
				d = base << (n - 1)
			}
			lo, hi := max(d/2, minWait), max(d, minWait)
			for range 20 {
				if got := backoff(n, interval); got < lo || got > hi {
					t.Fatalf("backoff(%d, %s) = %s, want within [%s, %s]", n, interval, got, lo, hi)
				}
			}
		}
	}
}

func TestRunnerStopsOnCancel(t *testing.T) {
	t.Run("waiting", func(t *testing.T) {
		e := newPostureEdge(t)
		dir := t.TempDir()
		e.enroll(t, dir)
		r := e.runner(t, dir)
		r.Interval = time.Hour
		ch := results(r)
		stop, _ := startRun(t, r)
		if res := nextResult(t, ch); !res.Accepted {
			t.Fatalf("report: %+v", res)
		}
		stop() // fails the test unless Run returns nil within 2s
	})
	t.Run("request in flight", func(t *testing.T) {
		e := newPostureEdge(t)
		dir := t.TempDir()
		e.enroll(t, dir)
		e.blockReports.Store(true)
		r := e.runner(t, dir)
		ch := results(r)
		stop, _ := startRun(t, r)
		if !waitFor(10*time.Second, func() bool { return e.blocked.Load() == 1 }) {
			t.Fatal("no report request reached the edge")
		}
		stop()
		select {
		case res := <-ch:
			t.Errorf("a cancelled attempt was reported: %+v", res)
		default:
		}
		if _, err := os.Stat(filepath.Join(dir, LastReportFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a cancelled attempt was recorded: %v", err)
		}
	})
}

func TestRunnerNotEnrolled(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "agent")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	r := &Runner{StateDir: dir, Collector: quietCollector(t)}
	ctx := testContext(t, 10*time.Second)
	_, err := r.ReportOnce(ctx)
	if !errors.Is(err, ErrNotEnrolled) || !strings.Contains(err.Error(), "run 'ztna agent enroll --server https://AUTH_HOST' first") {
		t.Errorf("ReportOnce = %v", err)
	}
	if err := r.Run(ctx); !errors.Is(err, ErrNotEnrolled) {
		t.Errorf("Run = %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("the state directory gained %v; run must never create a key or state", entries)
	}
}

func TestRunnerRefusesForeignCertificate(t *testing.T) {
	// A renewal answer for another key or device is not saved.
	e := newPostureEdge(t)
	dir := t.TempDir()
	id := e.enroll(t, dir)
	key, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(id string, pub *ecdsa.PublicKey) string {
		der, err := e.ca.Issue(id, "alice", pub, 24*time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	const otherID = "dev-ffffffffffffffff"
	tests := []struct {
		name string
		tok  tokenResponse
		want string
	}{
		{"other key", tokenResponse{DeviceID: id, Certificate: issue(id, &otherKey.PublicKey), CA: string(e.ca.CertPEM())}, "not for this device's key"},
		{"other device", tokenResponse{DeviceID: otherID, Certificate: issue(otherID, &key.PublicKey), CA: string(e.ca.CertPEM())}, `is for device "` + otherID + `", not ` + id},
		{"other CA", tokenResponse{DeviceID: id, Certificate: issue(id, &key.PublicKey), CA: string(newPostureEdge(t).ca.CertPEM())}, "not signed by the CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, tt.tok) }))
			defer srv.Close()
			r := &Runner{StateDir: dir, Transport: srv.Client().Transport.(*http.Transport)}
			s, err := r.load()
			if err != nil {
				t.Fatal(err)
			}
			defer s.tr.CloseIdleConnections()
			s.dev.Server = srv.URL
			before, _ := os.ReadFile(filepath.Join(dir, CertFile))
			err = r.renew(context.Background(), s, time.Now())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("renew = %v, want an error containing %q", err, tt.want)
			}
			if after, _ := os.ReadFile(filepath.Join(dir, CertFile)); string(after) != string(before) {
				t.Error("the refused certificate was saved")
			}
		})
	}
}

func TestRunnerRenewsWhenEdgeHoldsNewerCertificate(t *testing.T) {
	// A renewal went through on the edge but its answer never reached the
	// agent: the edge now refuses the agent's certificate as replaced,
	// although it is not due. The agent renews anyway, and recovers. A
	// running agent is refused at its report, a restarted one (no nonce
	// yet) at the nonce.
	for _, restart := range []bool{false, true} {
		t.Run("restart="+strconv.FormatBool(restart), func(t *testing.T) {
			e := newPostureEdge(t)
			dir := t.TempDir()
			id := e.enroll(t, dir)
			ctx := testContext(t, 30*time.Second)
			r := e.runner(t, dir)
			if res, err := r.ReportOnce(ctx); err != nil || !res.Accepted {
				t.Fatalf("first report: %+v, %v", res, err)
			}
			key, err := LoadOrCreateKey(dir)
			if err != nil {
				t.Fatal(err)
			}
			// Signed for the previous minute, so the agent's own proof
			// (this minute) is not refused as used.
			proof, err := posture.SignRenewProof(key, id, e.now().Add(-time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.devs.Renew(ctx, id, proof, e.now()); err != nil {
				t.Fatal(err)
			}
			if restart {
				r = e.runner(t, dir)
			}
			nonces := e.nonceRequests()
			res, err := r.ReportOnce(ctx)
			if err == nil || edgeCode(err) != "device_certificate_required" || res.Renewed {
				t.Fatalf("report with the replaced certificate: %+v, %v", res, err)
			}
			if refusedAtNonce := e.nonceRequests() > nonces; refusedAtNonce != restart {
				t.Errorf("refused at the nonce: %t, want %t", refusedAtNonce, restart)
			}
			res, err = r.ReportOnce(ctx)
			if err != nil || !res.Accepted || !res.Renewed || res.RenewErr != nil {
				t.Fatalf("next report: %+v, %v; want renewed and accepted", res, err)
			}
			if got, want := e.seen()[len(e.seen())-1].Serial, e.registrySerial(t, id); got != want {
				t.Errorf("the report presented %s, the registry holds %s", got, want)
			}
			// Accepted again: no further renewals.
			if res, err := r.ReportOnce(ctx); err != nil || res.Renewed {
				t.Errorf("third report: %+v, %v", res, err)
			}
			if n := len(e.renewRequests()); n != 1 {
				t.Errorf("%d renew requests from the agent, want 1", n)
			}
		})
	}
}

func TestRunnerRenewalFailureKeepsReporting(t *testing.T) {
	// Renewal is due but the edge cannot renew: the report still goes out
	// with the valid certificate, the failure is recorded, and the next
	// report renews.
	e := newPostureEdge(t)
	dir := t.TempDir()
	e.enroll(t, dir)
	ctx := testContext(t, 30*time.Second)
	r := e.runner(t, dir)
	e.offset.Store(int64(17 * time.Hour))
	e.failRenew.Store(true)

	res, err := r.ReportOnce(ctx)
	if err != nil || !res.Accepted || res.Renewed || res.RenewErr == nil || !strings.Contains(res.RenewErr.Error(), "503") {
		t.Fatalf("ReportOnce = %+v, %v; want accepted with a renewal error", res, err)
	}
	st, err := readStatus(dir, e.now())
	if err != nil || !st.RenewalDue || st.LastReport == nil || !strings.Contains(st.LastReport.RenewError, "503") {
		t.Errorf("status = %+v, %v", st, err)
	}

	e.failRenew.Store(false)
	res, err = r.ReportOnce(ctx)
	if err != nil || !res.Accepted || !res.Renewed || res.RenewErr != nil {
		t.Fatalf("ReportOnce = %+v, %v; want renewed", res, err)
	}
	st, err = readStatus(dir, e.now())
	if err != nil || st.RenewalDue || st.LastReport.RenewError != "" || !st.LastReport.Renewed {
		t.Errorf("status = %+v, %v", st, err)
	}
}
