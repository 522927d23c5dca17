package agent

// Reporting, the agent's side of continuous posture: on a schedule, collect
// the device's facts, sign them with the device key (counter + the edge's
// latest nonce) and send them to {server}/.ztna/device/report over TLS with
// the device certificate; keep that certificate fresh by renewing it with a
// proof signed by the device key ({server}/.ztna/device/renew) before it
// runs out.
//
// The counter is what stops a captured report from being replayed: it must
// grow with every report, across restarts, so it is persisted before each
// report is sent. It starts from the clock (microseconds since 1970) so a
// lost counter file does not push the agent below what the edge has seen,
// and jumps forward when the edge says it has seen a higher one.

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ztna-dev/ztna/posture"
)

// Files the running agent keeps in its state directory.
const (
	CounterFile    = "report-counter"   // the last report counter used, decimal
	LastReportFile = "last-report.json" // the latest attempt and the edge's latest verdicts (LastReport)
)

// Reporting endpoints on the edge's auth host.
const (
	noncePath         = "/.ztna/device/nonce"
	reportPath        = "/.ztna/device/report"
	renewPath         = "/.ztna/device/renew"
	reportContentType = "application/ztna-posture-report"
)

// DefaultInterval is the time between reports when neither the Runner nor
// the edge names one.
const DefaultInterval = 30 * time.Second

const (
	// minEdgeInterval and maxEdgeInterval bound the interval the edge
	// suggests, so a confused edge can neither make agents hammer it nor
	// let their reports go stale.
	minEdgeInterval = 5 * time.Second
	maxEdgeInterval = 10 * time.Minute
	// collectTimeout bounds one collection of facts (each probe has its
	// own, shorter timeout too).
	collectTimeout = 30 * time.Second
	// backoffBase is the first retry delay after a transient failure; it
	// doubles per failure up to the interval.
	backoffBase = time.Second
	// minWait keeps the loop from spinning whatever the interval.
	minWait = 10 * time.Millisecond
	// replayJump is how far the counter jumps on the first "replay" answer;
	// it doubles with every further one in a row.
	replayJump = uint64(time.Hour / time.Microsecond)
	// maxCounter keeps the counter far from overflowing.
	maxCounter = uint64(1) << 62
	// forcedRenewAfter: when the edge stops accepting the certificate
	// before it is due (a renewal whose answer was lost leaves the edge
	// holding a newer one), the agent renews anyway, at most this often.
	forcedRenewAfter = 5 * time.Minute
	// Bounds on the verdicts kept from an edge's answer.
	maxProfiles        = 64
	maxProfileFailures = 32
)

// ErrDeviceRefused: the edge refuses this device; an admin revoked or
// disabled it. The agent keeps reporting at its interval, since the admin
// may enable it again.
var ErrDeviceRefused = errors.New("the edge refuses this device")

// Is lets errors.Is(err, ErrDeviceRefused) find the edge's device_refused
// answer.
func (e *edgeError) Is(target error) bool {
	return target == ErrDeviceRefused && e.code == "device_refused"
}

// Runner sends this device's posture to the edge on a schedule and keeps
// its certificate fresh. Set the fields before the first call; a Runner
// reads its state directory once, on first use. Run and ReportOnce may be
// called concurrently: attempts take turns.
type Runner struct {
	// StateDir is the enrolled state directory (device.json names the
	// edge's auth origin and the device ID). Run never creates a key or an
	// enrollment there.
	StateDir string
	// Collector gathers the facts; nil means New(Config{}).
	Collector *Collector
	// Transport is the base transport (root CAs, dialer); nil means a clone
	// of http.DefaultTransport. The Runner clones it and presents the
	// current device certificate on every TLS handshake (swapped after a
	// renewal).
	Transport *http.Transport
	// Interval is the time between reports; 0 means the edge's suggestion,
	// else DefaultInterval.
	Interval time.Duration
	// Logger receives what happens, each kind of failure once per change;
	// nil discards.
	Logger *slog.Logger
	// Now is the clock (counters, collection times, renewal proofs and
	// decisions); nil means time.Now. It must be safe for concurrent use.
	Now func() time.Time
	// OnResult, if set, is called after every attempt, from the goroutine
	// that made it; it must not block for long.
	OnResult func(Result)

	mu    sync.Mutex // one attempt at a time; guards state
	state *runState
}

// Result is the outcome of one report attempt.
type Result struct {
	At       time.Time // when the attempt started (Runner clock)
	Counter  uint64    // the counter of the last report sent; 0 if none was
	Accepted bool
	// Err is why the report was not accepted; nil when it was.
	// errors.Is(Err, ErrDeviceRefused) when the edge refuses the device.
	Err error
	// Profiles, Quarantined and Quarantine are the edge's verdicts on an
	// accepted report.
	Profiles    []ProfileVerdict
	Quarantined bool
	Quarantine  *QuarantineInfo
	// Renewed is whether the device certificate was renewed before the
	// report; RenewErr is why a due renewal failed (the report then went
	// out with the current certificate, unless it had expired).
	Renewed  bool
	RenewErr error
}

// ProfileVerdict is the edge's verdict on the device for one posture
// profile.
type ProfileVerdict struct {
	Name     string           `json:"name"`
	OK       bool             `json:"ok"`
	Failures []ProfileFailure `json:"failures,omitempty"`
}

// ProfileFailure is one failed check of a profile: what the edge detected
// and what the user can do about it.
type ProfileFailure struct {
	Check  string `json:"check"`
	Reason string `json:"reason"`
	Fix    string `json:"fix"`
}

// QuarantineInfo says why the edge quarantined the device and how to get
// out.
type QuarantineInfo struct {
	Reason string `json:"reason"`
	Fix    string `json:"fix"`
	Source string `json:"source"`
}

// LastReport is last-report.json: the agent's latest attempt and the edge's
// verdicts on the latest report it accepted.
type LastReport struct {
	At       time.Time `json:"at"`
	Counter  uint64    `json:"counter,omitempty"`
	Accepted bool      `json:"accepted"`
	Error    string    `json:"error,omitempty"`
	Renewed  bool      `json:"renewed,omitempty"`
	// RenewError is why a due certificate renewal failed.
	RenewError string `json:"renew_error,omitempty"`
	// AcceptedAt is when the latest accepted report was sent; Profiles,
	// Quarantined and Quarantine are the edge's answer to it.
	AcceptedAt  time.Time        `json:"accepted_at,omitzero"`
	Profiles    []ProfileVerdict `json:"profiles,omitempty"`
	Quarantined bool             `json:"quarantined,omitempty"`
	Quarantine  *QuarantineInfo  `json:"quarantine,omitempty"`
}

type nonceResponse struct {
	Nonce    string `json:"nonce"`
	Interval int    `json:"interval"`
}

type reportResponse struct {
	Accepted    bool             `json:"accepted"`
	NextNonce   string           `json:"next_nonce"`
	Interval    int              `json:"interval"`
	Quarantined bool             `json:"quarantined"`
	Quarantine  *QuarantineInfo  `json:"quarantine"`
	Profiles    []ProfileVerdict `json:"profiles"`
}

type renewRequest struct {
	DeviceID string `json:"device_id"`
	Proof    string `json:"proof"`
}

// runState is what a Runner keeps between attempts.
type runState struct {
	dir       string
	dev       deviceState
	key       *ecdsa.PrivateKey
	collector *Collector
	tr        *http.Transport
	hc        *http.Client
	cert      atomic.Pointer[tls.Certificate] // Leaf set; read by TLS handshakes

	counter      uint64
	nonce        string        // "" means fetch one first
	edgeInterval time.Duration // the edge's latest suggestion; 0: none
	replays      int           // "replay" answers in a row
	forceRenew   bool
	lastRenewTry time.Time
	last         LastReport

	// What was logged last, so each kind of failure is logged once per
	// change rather than every interval.
	outcome, renewOutcome, collectOutcome string
}

func (r *Runner) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// interval is the time between reports.
func (r *Runner) interval(s *runState) time.Duration {
	switch {
	case r.Interval > 0:
		return r.Interval
	case s.edgeInterval > 0:
		return s.edgeInterval
	default:
		return DefaultInterval
	}
}

// load reads the state directory once; a failure is not remembered, so
// the next call tries again.
func (r *Runner) load() (*runState, error) {
	if r.state != nil {
		return r.state, nil
	}
	if r.Interval < 0 {
		return nil, errors.New("the report interval is negative")
	}
	e, err := loadEnrolled(r.StateDir)
	if errors.Is(err, ErrNotEnrolled) {
		return nil, fmt.Errorf("%w: run 'ztna agent enroll --server https://AUTH_HOST' first", err)
	}
	if err != nil {
		return nil, err
	}
	// Whoever can write the directory can swap the certificate or reset
	// the counter; refuse as enrollment does.
	if err := ensureStateDir(r.StateDir); err != nil {
		return nil, err
	}
	server, err := ParseServer(e.dev.Server)
	if err != nil {
		return nil, fmt.Errorf("%s: %w; enroll again", filepath.Join(r.StateDir, DeviceFile), err)
	}
	s := &runState{dir: r.StateDir, dev: e.dev, key: e.key, collector: r.Collector}
	s.dev.Server = server
	if s.collector == nil {
		s.collector = New(Config{Logger: r.Logger})
	}
	s.setCert(e.cert, e.key)
	if s.counter, err = readCounter(filepath.Join(r.StateDir, CounterFile)); err != nil {
		// The clock-based counter and the replay answer recover from this.
		r.log().Warn("report counter unreadable; starting from the clock", "err", err)
	}
	if last, err := readLastReport(r.StateDir); err == nil && last != nil {
		s.last = *last
	}

	base := r.Transport
	if base == nil {
		base = http.DefaultTransport.(*http.Transport)
	}
	s.tr = base.Clone()
	if s.tr.TLSClientConfig == nil {
		s.tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	s.tr.TLSClientConfig.Certificates = nil
	s.tr.TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		c := s.cert.Load()
		if c == nil || r.now().After(c.Leaf.NotAfter) {
			// An expired certificate fails the handshake; without one
			// the edge still answers (renewal works by key proof).
			return &tls.Certificate{}, nil
		}
		return c, nil
	}
	// A resumed TLS session carries the certificate of the handshake that
	// created it, which after a renewal is the replaced one.
	s.tr.TLSClientConfig.ClientSessionCache = nil
	s.hc = &http.Client{
		Transport: s.tr,
		// A report or renewal must not be moved to another host.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	r.state = s
	return s, nil
}

func (s *runState) setCert(cert *x509.Certificate, key *ecdsa.PrivateKey) {
	s.cert.Store(&tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert})
}

// Run reports at the interval until ctx is done, then returns nil. It
// fails at once when the state directory holds no usable enrollment.
// Transient failures (the edge unreachable, 5xx) are retried sooner, with
// capped exponential backoff and jitter; any other failure (including the
// edge refusing the device) waits for the next interval.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	s, err := r.load()
	r.mu.Unlock()
	if err != nil {
		return err
	}
	defer s.tr.CloseIdleConnections()
	interval := "the edge's suggestion"
	if r.Interval > 0 {
		interval = r.Interval.String()
	}
	r.log().Info("reporting device posture", "device", s.dev.DeviceID, "server", s.dev.Server, "interval", interval)

	timer := time.NewTimer(0)
	defer timer.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		r.mu.Lock()
		res := r.attempt(ctx, s)
		wait := r.interval(s)
		r.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		if res.Err != nil && isTransient(res.Err) {
			failures++
			wait = backoff(failures, wait)
		} else {
			failures = 0
		}
		timer.Reset(max(wait, minWait))
	}
}

// ReportOnce makes one report attempt (renewing the certificate first when
// it is due) and returns its result; the error is Result.Err, or why the
// state directory is unusable. It closes the connections it leaves idle.
func (r *Runner) ReportOnce(ctx context.Context) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, err := r.load()
	if err != nil {
		return Result{At: r.now(), Err: err}, err
	}
	defer s.tr.CloseIdleConnections()
	res := r.attempt(ctx, s)
	return res, res.Err
}

// backoff is the wait after the n-th transient failure in a row: a delay
// doubling from backoffBase (shorter for short intervals), capped at the
// interval, of which a random half is waited.
func backoff(n int, interval time.Duration) time.Duration {
	base := min(backoffBase, interval/4)
	d := base << min(max(n-1, 0), 30)
	if d <= 0 || d > interval {
		d = interval
	}
	return max(d/2+rand.N(d/2+1), minWait)
}

// attempt makes one report; the caller holds r.mu.
func (r *Runner) attempt(ctx context.Context, s *runState) Result {
	now := r.now()
	res := Result{At: now}
	r.renewIfDue(ctx, s, now, &res)
	if res.Err == nil {
		r.report(ctx, s, &res)
	}
	if edgeCode(res.Err) == "device_certificate_required" && (s.lastRenewTry.IsZero() || now.Sub(s.lastRenewTry) >= forcedRenewAfter) {
		// Not due, yet refused: the edge may hold a newer certificate
		// whose answer never reached us. Renew next time.
		s.forceRenew = true
	}
	if ctx.Err() != nil {
		// Stopping is not a result worth recording.
		if res.Err == nil {
			res.Err = ctx.Err()
		}
		return res
	}
	r.record(s, res)
	if r.OnResult != nil {
		r.OnResult(res)
	}
	return res
}

// renewIfDue renews the certificate when less than a third of its life is
// left (or the edge stopped accepting it). A failed renewal only fails the
// attempt when the certificate has expired; otherwise the report goes out
// with the current one and the renewal is tried again next time.
func (r *Runner) renewIfDue(ctx context.Context, s *runState, now time.Time, res *Result) {
	cur := s.cert.Load().Leaf
	if !renewalDue(cur, now) && !s.forceRenew {
		return
	}
	s.forceRenew = false
	s.lastRenewTry = now
	err := r.renew(ctx, s, now)
	if err == nil {
		s.renewOutcome = ""
		res.Renewed = true
		r.log().Info("device certificate renewed", "device", s.dev.DeviceID, "not_after", s.cert.Load().Leaf.NotAfter)
		return
	}
	res.RenewErr = fmt.Errorf("renew the device certificate at %s: %w", s.dev.Server, err)
	if ctx.Err() == nil {
		if msg := res.RenewErr.Error(); msg != s.renewOutcome {
			s.renewOutcome = msg
			r.log().Warn("device certificate renewal failed", "err", res.RenewErr, "not_after", cur.NotAfter)
		}
	}
	if now.After(cur.NotAfter) {
		res.Err = res.RenewErr
	}
}

// renew asks the edge for a new certificate with a proof signed by the
// device key, checks it, writes it and presents it from the next
// handshake on.
func (r *Runner) renew(ctx context.Context, s *runState, now time.Time) error {
	proof, err := posture.SignRenewProof(s.key, s.dev.DeviceID, now)
	if err != nil {
		return err
	}
	var tok tokenResponse
	req := renewRequest{DeviceID: s.dev.DeviceID, Proof: base64.StdEncoding.EncodeToString(proof)}
	if err := postJSON(ctx, s.hc, s.dev.Server+renewPath, req, &tok); err != nil {
		return err
	}
	certDER, caPEM, err := checkIssued(&tok, &s.key.PublicKey)
	if err != nil {
		return fmt.Errorf("the renewed certificate: %w", err)
	}
	if tok.DeviceID != s.dev.DeviceID {
		return fmt.Errorf("the renewed certificate is for device %q, not %s", tok.DeviceID, s.dev.DeviceID)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return fmt.Errorf("the renewed certificate: %w", err)
	}
	if !now.Before(cert.NotAfter) {
		return fmt.Errorf("the renewed certificate expired at %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if err := saveEnrollment(s.dir, certDER, caPEM, s.dev); err != nil {
		return fmt.Errorf("save the renewed certificate: %w", err)
	}
	s.setCert(cert, s.key)
	// Kept-alive connections were authenticated with the old certificate,
	// which the edge no longer accepts.
	s.tr.CloseIdleConnections()
	return nil
}

// renewalDue reports whether less than a third of cert's lifetime is left
// at now.
func renewalDue(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return life <= 0 || cert.NotAfter.Sub(now) < life/3
}

// report fetches a nonce if needed, collects, signs and sends one report,
// retrying once on a stale nonce and once on a replayed counter, and fills
// res.
func (r *Runner) report(ctx context.Context, s *runState, res *Result) {
	if s.nonce == "" {
		if res.Err = r.fetchNonce(ctx, s); res.Err != nil {
			return
		}
	}
	facts := r.collect(ctx, s)
	collectedAt := r.now()
	if ctx.Err() != nil {
		res.Err = ctx.Err()
		return
	}
	var jump uint64
	retriedStale, retriedReplay := false, false
	for {
		counter, err := s.nextCounter(r.now(), jump)
		if err != nil {
			res.Err = err
			return
		}
		jump = 0
		res.Counter = counter
		wire, err := posture.SignReport(s.key, facts.Report(s.dev.DeviceID, counter, s.nonce, collectedAt))
		if err != nil {
			res.Err = err
			return
		}
		var resp reportResponse
		err = post(ctx, s.hc, s.dev.Server+reportPath, reportContentType, wire, &resp)
		switch code := edgeCode(err); {
		case err == nil:
			r.answered(s, res, &resp)
			return
		case code == "stale_nonce" && !retriedStale:
			// Our nonce is past its lifetime (a long sleep) or the edge's
			// nonce key changed: the same facts go out again with a new
			// nonce and counter.
			retriedStale = true
			s.nonce = ""
			if res.Err = r.fetchNonce(ctx, s); res.Err != nil {
				return
			}
		case code == "replay" && !retriedReplay:
			// The edge has seen a counter at least as high as ours (a
			// restored state directory, a clock that was ahead).
			retriedReplay = true
			s.replays++
			jump = replayJump << min(s.replays-1, 24)
		default:
			if code == "stale_nonce" {
				s.nonce = ""
			}
			res.Err = fmt.Errorf("report to %s: %w", s.dev.Server, err)
			return
		}
	}
}

// answered takes in the edge's 200 answer to a report.
func (r *Runner) answered(s *runState, res *Result, resp *reportResponse) {
	s.replays = 0
	s.nonce = ""
	if validNonce(resp.NextNonce) {
		s.nonce = resp.NextNonce
	}
	s.noteInterval(resp.Interval)
	if !resp.Accepted {
		res.Err = fmt.Errorf("report to %s: the edge did not accept it", s.dev.Server)
		return
	}
	res.Accepted = true
	res.Profiles = cleanProfiles(resp.Profiles)
	res.Quarantined = resp.Quarantined
	if resp.Quarantine != nil {
		q := QuarantineInfo{Reason: cleanMessage(resp.Quarantine.Reason), Fix: cleanMessage(resp.Quarantine.Fix), Source: cleanMessage(resp.Quarantine.Source)}
		res.Quarantine = &q
	}
}

// fetchNonce asks the edge for a nonce to put in the next report.
func (r *Runner) fetchNonce(ctx context.Context, s *runState) error {
	var resp nonceResponse
	if err := postJSON(ctx, s.hc, s.dev.Server+noncePath, struct{}{}, &resp); err != nil {
		return fmt.Errorf("get a report nonce from %s: %w", s.dev.Server, err)
	}
	if !validNonce(resp.Nonce) {
		return fmt.Errorf("get a report nonce from %s: the answer has no usable nonce", s.dev.Server)
	}
	s.nonce = resp.Nonce
	s.noteInterval(resp.Interval)
	return nil
}

// collect gathers the facts within collectTimeout. Facts that stay unknown
// are logged once per change of reasons; they are reported as unknown.
func (r *Runner) collect(ctx context.Context, s *runState) Facts {
	ctx, cancel := context.WithTimeout(ctx, collectTimeout)
	defer cancel()
	facts, err := s.collector.Collect(ctx)
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if msg != s.collectOutcome {
		s.collectOutcome = msg
		if err != nil {
			r.log().Info("some posture facts could not be determined; they are reported as unknown", "err", err)
		}
	}
	return facts
}

func (s *runState) noteInterval(seconds int) {
	if seconds > 0 {
		s.edgeInterval = min(max(time.Duration(seconds)*time.Second, minEdgeInterval), maxEdgeInterval)
	}
}

// nextCounter returns the next report counter, above the last one and not
// below the clock in microseconds, plus jump, and persists it before it is
// used.
func (s *runState) nextCounter(now time.Time, jump uint64) (uint64, error) {
	if s.counter >= maxCounter || jump >= maxCounter {
		return 0, errors.New("the report counter is exhausted; enroll again")
	}
	c := s.counter + 1
	if t := now.UnixMicro(); t > 0 && uint64(t) > c {
		c = uint64(t)
	}
	c = min(c+jump, maxCounter)
	path := filepath.Join(s.dir, CounterFile)
	if err := writeFileAtomic(path, []byte(strconv.FormatUint(c, 10)+"\n")); err != nil {
		return 0, fmt.Errorf("save the report counter: %w", err)
	}
	s.counter = c
	return c, nil
}

// readCounter reads the counter file; a missing file is 0.
func readCounter(path string) (uint64, error) {
	data, _, err := readStateFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	c, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: not a counter", path)
	}
	return c, nil
}

// record writes last-report.json and logs the outcome, each kind of
// failure once per change.
func (r *Runner) record(s *runState, res Result) {
	s.last.At, s.last.Counter, s.last.Accepted, s.last.Renewed, s.last.Error, s.last.RenewError = res.At, res.Counter, res.Accepted, res.Renewed, "", ""
	if res.RenewErr != nil {
		s.last.RenewError = res.RenewErr.Error()
	}
	if res.Accepted {
		s.last.AcceptedAt = res.At
		s.last.Profiles, s.last.Quarantined, s.last.Quarantine = res.Profiles, res.Quarantined, res.Quarantine
	} else if res.Err != nil {
		s.last.Error = res.Err.Error()
	}
	if js, err := json.MarshalIndent(&s.last, "", "  "); err == nil {
		if err := writeFileAtomic(filepath.Join(s.dir, LastReportFile), append(js, '\n')); err != nil {
			r.log().Warn("could not record the report result", "err", err)
		}
	}

	key := outcomeKey(res)
	changed := key != s.outcome
	s.outcome = key
	log := r.log()
	switch {
	case res.Accepted && changed:
		log.Info("posture report accepted", "counter", res.Counter, "failing_profiles", failingProfiles(res.Profiles), "quarantined", res.Quarantined)
		if res.Quarantine != nil {
			log.Warn("this device is quarantined", "reason", res.Quarantine.Reason, "fix", res.Quarantine.Fix, "source", res.Quarantine.Source)
		}
	case res.Accepted:
		log.Debug("posture report accepted", "counter", res.Counter)
	case errors.Is(res.Err, ErrDeviceRefused) && changed:
		log.Warn("the edge refuses this device (revoked or disabled by an admin); reporting continues in case it is enabled again", "err", res.Err)
	case changed:
		log.Warn("posture report not accepted", "err", res.Err)
	default:
		log.Debug("posture report not accepted", "err", res.Err)
	}
}

// outcomeKey names the kind of outcome, so a change of kind is logged and a
// repeat is not.
func outcomeKey(res Result) string {
	switch {
	case res.Accepted:
		return fmt.Sprintf("accepted quarantined=%t failing=%v", res.Quarantined, failingProfiles(res.Profiles))
	case isTransient(res.Err):
		return "transient"
	case edgeCode(res.Err) != "":
		return "edge " + edgeCode(res.Err)
	case res.Err != nil:
		return res.Err.Error()
	}
	return ""
}

func failingProfiles(ps []ProfileVerdict) []string {
	var out []string
	for _, p := range ps {
		if !p.OK {
			out = append(out, p.Name)
		}
	}
	return out
}

// edgeCode is the error code of the edge's answer in err, if any.
func edgeCode(err error) string {
	var ee *edgeError
	if errors.As(err, &ee) {
		return ee.code
	}
	return ""
}

// validNonce accepts what a report may carry as its nonce.
func validNonce(s string) bool {
	return s != "" && len(s) <= posture.MaxNonceLen && isPrintableASCII(s) && !strings.ContainsRune(s, ' ')
}

// cleanProfiles bounds the edge's verdicts and makes their text safe to
// print on one line.
func cleanProfiles(in []ProfileVerdict) []ProfileVerdict {
	out := slices.Clone(in[:min(len(in), maxProfiles)])
	for i := range out {
		p := &out[i]
		p.Name = cleanMessage(p.Name)
		p.Failures = slices.Clone(p.Failures[:min(len(p.Failures), maxProfileFailures)])
		for j := range p.Failures {
			f := &p.Failures[j]
			f.Check, f.Reason, f.Fix = cleanMessage(f.Check), cleanMessage(f.Reason), cleanMessage(f.Fix)
		}
	}
	return out
}

// readLastReport reads last-report.json; a missing file is nil.
func readLastReport(stateDir string) (*LastReport, error) {
	path := filepath.Join(stateDir, LastReportFile)
	data, _, err := readStateFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var lr LastReport
	if err := json.Unmarshal(data, &lr); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &lr, nil
}
