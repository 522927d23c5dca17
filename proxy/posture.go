package proxy

// Pipeline step 4, posture, and what keeps its decisions true while
// connections live: a device's new report, a report going stale and a
// quarantine re-check the device's live exchanges at once.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/internal/files"
	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/posture"
)

// postureSweep is how often live exchanges to apps with a posture profile
// are re-evaluated, which bounds how long one outlives its device's report
// going stale (the other triggers act at once).
const postureSweep = 250 * time.Millisecond

// posture is pipeline step 4: a quarantined user (by subject or email, as
// signals may name either) or device is refused everywhere; an app with a
// posture profile needs an enrolled device whose latest evidence satisfies
// it. It reads memory only and has no side effects, so live re-checks use
// it too.
func (e *Edge) posture(a *app, user, email, device string, now time.Time) *httperr.Error {
	if refused := e.quarantineRefusal(user, email, device); refused != nil {
		return refused
	}
	if a.profile == nil {
		return nil
	}
	if device == "" {
		return &httperr.Error{Status: http.StatusForbidden, Code: "device_required", Title: "Enrolled device required",
			Message: fmt.Sprintf("%s is available only from an enrolled device that meets the %q security profile, and this browser did not present a device certificate.", a.Name, a.PostureProfile),
			Hint:    "Enroll this computer with `ztna agent enroll`, keep `ztna agent run` running, and import the device certificate into this browser (`ztna agent status` shows how)."}
	}
	v := a.profile.Evaluate(e.reports.Evidence(device), now)
	if v.OK {
		return nil
	}
	checks := make([]httperr.Check, len(v.Failures))
	for i, f := range v.Failures {
		checks[i] = httperr.Check{Check: f.Check, Reason: f.Reason, Fix: f.Fix}
	}
	return &httperr.Error{Status: http.StatusForbidden, Code: "posture_failed", Title: "This device does not meet the security requirements",
		Message: fmt.Sprintf("%s requires the %q device profile. This device fails %d check(s):", a.Name, a.PostureProfile, len(checks)),
		Hint:    "Fix the items above; access returns with the agent's next report, within a minute.",
		Checks:  checks, Cause: fmt.Errorf("device %s fails profile %s: %s", device, a.PostureProfile, checks[0].Check)}
}

// quarantineRefusal refuses a user (by subject or email) or device in
// quarantine, everywhere; nil when neither is.
func (e *Edge) quarantineRefusal(user, email, device string) *httperr.Error {
	if q, ok := e.quarantine.User(user); ok {
		return quarantined(q, "Your account")
	}
	if email != "" {
		if q, ok := e.quarantine.User(email); ok {
			return quarantined(q, "Your account")
		}
	}
	if device != "" {
		if q, ok := e.quarantine.Device(device); ok {
			return quarantined(q, "This device")
		}
	}
	return nil
}

// quarantined is the inform page of a quarantine: what was detected and how
// to get back.
func quarantined(q posture.QuarantineEntry, who string) *httperr.Error {
	fix := q.Fix
	if fix == "" {
		fix = "Contact IT security; they release the quarantine once the cause is handled."
		if q.AutoRelease {
			fix = "Fix the cause; access returns automatically when the agent reports the device healthy again."
		}
	}
	return &httperr.Error{Status: http.StatusForbidden, Code: "quarantined", Title: "Access suspended: security alert",
		Message: fmt.Sprintf("%s was isolated at %s because of a security alert from %s.", who, q.At.UTC().Format(time.RFC3339), q.Source),
		Hint:    "All company apps are blocked until this is resolved.",
		Checks:  []httperr.Check{{Check: "quarantine", Reason: q.Reason, Fix: fix}},
		Cause:   fmt.Errorf("quarantined %s %s (%s)", q.Kind, q.ID, q.Rule)}
}

// livePostureOK re-checks a live exchange against the current state.
func (e *Edge) livePostureOK(st *State, le *liveEntry, now time.Time) bool {
	if le.req.App == "" {
		return true // a tunnel connection: quarantine closes it (onQuarantine), posture its streams
	}
	a := st.apps[le.req.App]
	return a != nil && e.posture(a, le.req.Subject.User, le.req.Subject.Email, le.device, now) == nil
}

// recheckPosture closes the live exchanges matching filter that the
// posture step would now refuse.
func (e *Edge) recheckPosture(filter func(*liveEntry) bool, reason string) {
	st, now := e.state.Load(), time.Now()
	e.live.closeWhere(func(le *liveEntry) bool {
		return filter(le) && !e.livePostureOK(st, le, now)
	}, reason)
}

// recheck decides a live exchange again against st at now: the posture
// step, then the policy with the current time and the device's current
// platform and profiles. It returns why the exchange must close, or nil.
func (e *Edge) recheck(st *State, le *liveEntry, now time.Time) *cut {
	if le.req.App == "" {
		return nil // a tunnel connection: its streams are decided one by one
	}
	a := st.apps[le.req.App]
	if a == nil {
		return &cut{reason: "the app was removed"}
	}
	if refused := e.posture(a, le.req.Subject.User, le.req.Subject.Email, le.device, now); refused != nil {
		return &cut{reason: "device posture no longer met"}
	}
	req := le.req
	req.Time = now
	if le.device != "" {
		req.Device = e.deviceAttrs(st, le.device, now)
	}
	if d := st.policy.Decide(req); !d.Allow {
		return &cut{reason: "access no longer allowed: " + d.Reason, decision: &d}
	}
	return nil
}

// postureWatcher re-decides every live exchange every postureSweep, so one
// whose device stops reporting is closed within that of its report passing
// max_age, one whose rule's time window ends is closed when it ends, and
// one whose session's attributes change at the IdP is re-decided after the
// refresh the sweep starts, and one whose session reaches its absolute
// timeout is closed (live exchanges keep their session's idle clock going).
func (e *Edge) postureWatcher(ctx context.Context) {
	defer e.janitorW.Done()
	t := time.NewTicker(postureSweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			st, now := e.state.Load(), time.Now()
			e.live.closeEach(func(le *liveEntry) *cut { return e.recheck(st, le, now) })
			// A session that only holds a WebSocket sends no request that
			// would start its token refresh: start it here, so that its
			// attributes still follow the IdP (the refresh re-decides).
			for _, key := range e.live.sessions() {
				e.sessions.InUse(key) // past its absolute timeout it ends, and so do they
				st.auth.RefreshIfDue(key)
			}
		}
	}
}

// onQuarantine reacts to a quarantine or release: cut the subject's live
// exchanges (this runs before Isolate returns, so a signal's answer means
// the device is isolated), count and notify new quarantines. A repeated
// detection of a subject already isolated only cuts again.
func (e *Edge) onQuarantine(q posture.QuarantineEntry, released bool) {
	e.metrics.quarantined.Set(float64(e.quarantine.Len()))
	if released {
		if e.notifier != nil {
			e.notifier.Released(q, "")
		}
		return
	}
	match := func(le *liveEntry) bool { return le.device == q.ID }
	if q.Kind == posture.QuarantineUser {
		match = func(le *liveEntry) bool { return le.req.Subject.User == q.ID || le.req.Subject.Email == q.ID }
	}
	e.live.closeWhere(match, "quarantined: "+q.Reason)
	if !q.At.Equal(q.LastAt) {
		return // already isolated since At
	}
	e.metrics.quarantines.WithLabelValues(q.Source).Inc()
	if e.notifier != nil {
		var dev *posture.Device
		if q.Kind == posture.QuarantineDevice && e.devices != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			dev, _ = e.devices.Get(ctx, q.ID)
			cancel()
		}
		e.notifier.Quarantined(q, dev)
	}
}

// onReport reacts to a device's new evidence: re-check its live exchanges
// and, when its quarantine may be lifted by a passing report, lift it.
func (e *Edge) onReport(deviceID string, ev *posture.Evidence) {
	e.recheckPosture(func(le *liveEntry) bool { return le.device == deviceID }, "device posture no longer met")
	e.live.notify(func(le *liveEntry) bool { return le.device == deviceID }) // apps available or not
	q, ok := e.quarantine.Device(deviceID)
	st := e.state.Load()
	if !ok || !q.AutoRelease || st.releaseProfile == nil || ev.Report == nil {
		return
	}
	// Only a report made after the latest detection shows the remediation.
	since := q.At
	if q.LastAt.After(since) {
		since = q.LastAt
	}
	if !ev.Report.CollectedAt.After(since) || !ev.ReceivedAt.After(since) {
		return
	}
	if v := st.releaseProfile.Evaluate(ev, time.Now()); !v.OK {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := e.quarantine.Release(ctx, q.Kind, q.ID, "auto: passing report ("+st.releaseProfile.Name()+")"); err != nil {
		e.logger.Error("automatic quarantine release failed", "device", deviceID, "err", err)
		return
	}
	e.metrics.releases.WithLabelValues("auto").Inc()
}

// startPosture builds device trust from the start-only settings: the device
// registry (with a device CA), the report book (its nonce key shared by
// every replica through the store) and the quarantine (loaded from the
// store), and the webhook notifier.
func (e *Edge) startPosture(ctx context.Context, cfg *Config) error {
	opts := e.opts
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	nonceKey, err := posture.LoadNonceKey(lctx, opts.Store)
	if err != nil {
		return err
	}
	e.reports = posture.NewReports(opts.Store, posture.ReportsConfig{
		Nonces:  posture.NewNonceBook(posture.NonceBookConfig{Key: nonceKey}),
		History: cfg.Posture.History, Logger: e.logger,
	})
	e.quarantine = posture.NewQuarantine(opts.Store, e.logger)
	if err := e.reports.Load(lctx); err != nil {
		return err
	}
	if err := e.quarantine.Load(lctx); err != nil {
		return err
	}
	e.metrics.quarantined.Set(float64(e.quarantine.Len()))
	if opts.DeviceCA != nil {
		e.devices = posture.NewDevices(opts.Store, opts.DeviceCA, opts.Logger)
		if cfg.Devices.CertTTL > 0 {
			e.devices.SetCertTTL(cfg.Devices.CertTTL)
		}
		e.devices.SetAdminApproval(cfg.Devices.AdminApproval)
		e.devices.OnRevoke(func(id string) {
			e.assertions.dropDevice(id)
			e.reports.Forget(id)
			e.live.revokeDevice(id, "device revoked")
		})
	}
	e.reports.OnUpdate(e.onReport)
	e.quarantine.OnChange(e.onQuarantine)
	if f := cfg.Signals.WebhookURLFile; f != "" {
		b, _, err := files.ReadRegular(f, 4096)
		if err != nil {
			return fmt.Errorf("signals.webhook_url_file: %w", err)
		}
		n, err := posture.NewNotifier(posture.NotifierConfig{URL: strings.TrimSpace(string(b)), Logger: e.logger})
		if err != nil {
			return fmt.Errorf("signals.webhook_url_file %s: %w", f, err)
		}
		e.notifier = n
	}
	return nil
}
