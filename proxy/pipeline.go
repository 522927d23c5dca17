package proxy

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/web"
)

// JWKSPath is where the auth host publishes the keys that verify assertions.
const JWKSPath = "/.well-known/ztna/jwks.json"

// ServeHTTP is the request pipeline. Its steps run in this order and only
// here:
//
//  1. route     the host (and path prefix) names an app, or the edge itself
//  2. identify  the session cookie names a live session (authn)
//  3. device    the client certificate names an enrolled device
//  4. posture   no quarantine applies, and the device's latest signed
//     report satisfies the app's posture profile
//  5. authorize the app's policy allows this user, method and path (groups)
//  6. forward   to the app, with the client's identity headers replaced by
//     the edge's signed ones — or, for the admin console (an app with
//     builtin: console), to the console in this process (console.go)
//
// Every step fails closed, and every decision is audited once. CONNECT
// requests are the client tunnel's HTTP/2 fallback (tunnel_h2.go).
func (e *Edge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// CONNECT is only ever the client tunnel's HTTP/2 fallback, whose
	// streams the tunnel endpoint authorizes one by one like QUIC streams.
	if r.Method == http.MethodConnect {
		e.serveTunnelH2(w, r)
		return
	}
	start := time.Now()
	st := e.state.Load()

	// 1. route
	host := strings.ToLower(r.Host)
	if host == st.authHost || strings.HasPrefix(r.URL.Path, authn.ReservedPrefix) {
		e.serveEdge(w, r, st, host == st.authHost)
		return
	}
	a := st.route(host, r.URL.Path)
	if a == nil {
		e.fail(w, r, httperr.New(http.StatusNotFound, "unknown_app", "No app is served at this address."))
		return
	}
	if err := CanonicalPath(r.URL.EscapedPath()); err != nil {
		e.fail(w, r, httperr.BadRequest("This address contains a path the access proxy does not accept (.., //, encoded slashes or control characters).", err))
		return
	}

	// 2. identify
	sess, err := st.auth.Authenticate(r)
	if err != nil {
		if !errors.Is(err, authn.ErrNoSession) {
			e.logger.Error("session lookup failed", "app", a.Name, "err", err)
			e.fail(w, r, &httperr.Error{Status: http.StatusServiceUnavailable, Code: "session_unavailable",
				Title: "Temporarily unavailable", Message: "Your session could not be checked.", Hint: "Try again in a moment.", Cause: err})
			return
		}
		e.record(r, st, a, nil, "", "", groups.Decision{Reason: "not signed in"}, start)
		if err := st.auth.Unauthenticated(w, r, web.WantsHTML(r)); err != nil {
			e.fail(w, r, err)
		}
		return
	}

	// 3. device
	dev, refused := e.device(r, sess)
	if refused != nil {
		e.record(r, st, a, sess, "", "", groups.Decision{Reason: refused.Message}, start)
		e.fail(w, r, refused)
		return
	}

	// 4. posture
	if refused := e.posture(a, sess.Identity.Subject, sess.Identity.Email, dev, start); refused != nil {
		verdict, reason := refusalVerdict(refused)
		e.countPostureFailure(refused)
		e.record(r, st, a, sess, dev, verdict, groups.Decision{Reason: reason}, start)
		e.fail(w, r, refused)
		return
	}

	// 5. authorize
	req := e.authzRequest(st, a.Name, &sess.Identity, dev, r, start)
	d := st.policy.Decide(req)
	e.record(r, st, a, sess, dev, a.PostureProfile, d, start)
	if !d.Allow {
		e.fail(w, r, denied(d))
		return
	}

	// 6. forward (the console is served here, not forwarded)
	if a.Builtin == BuiltinConsole {
		e.serveConsole(w, r, st, a, sess, req)
		return
	}
	e.forward(w, r, st, a, sess, dev, req)
}

// denied is the answer to a request the policy refuses.
func denied(d groups.Decision) *httperr.Error {
	return &httperr.Error{Status: http.StatusForbidden, Code: "access_denied", Title: "Access denied",
		Message: d.Reason, Rule: d.Rule,
		Hint: "If you need this app for your work, ask your manager or IT to grant your group access."}
}

// authzRequest is what the authorize step decides: the user with their
// current attributes, the device with its platform and the posture
// profiles it meets now, the source address and the time.
func (e *Edge) authzRequest(st *State, app string, id *authn.Identity, device string, r *http.Request, now time.Time) groups.Request {
	req := groups.Request{
		App:     app,
		Subject: subjectOf(id),
		Method:  r.Method,
		Path:    r.URL.Path,
		Time:    now,
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		req.Source = ap.Addr().Unmap()
	}
	if device != "" {
		req.Device = e.deviceAttrs(st, device, now)
	}
	return req
}

// subjectOf is how the policy sees an identity.
func subjectOf(id *authn.Identity) groups.Subject {
	return groups.Subject{User: id.Subject, Email: id.Email, Groups: id.Groups, Attributes: id.Attributes}
}

// deviceAttrs describes a device for the policy. Profiles are evaluated
// only when the policy reads them.
func (e *Edge) deviceAttrs(st *State, id string, now time.Time) *groups.Device {
	d := &groups.Device{ID: id}
	ev := e.reports.Evidence(id)
	if ev != nil && ev.Report != nil {
		d.Platform = ev.Report.OS.Name
	}
	if st.policy.NeedsProfiles() {
		for _, name := range st.profileNames {
			if st.profiles[name].Evaluate(ev, now).OK {
				d.Profiles = append(d.Profiles, name)
			}
		}
	}
	return d
}

// serveEdge answers the edge's own endpoints: login and logout flows,
// device enrollment and posture reports, the signal and admin APIs, the
// JWKS, and page assets.
func (e *Edge) serveEdge(w http.ResponseWriter, r *http.Request, st *State, authHost bool) {
	switch {
	case strings.HasPrefix(r.URL.Path, web.AssetPrefix):
		e.assets.ServeHTTP(w, r)
		return
	case authHost && r.URL.Path == JWKSPath:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		_, _ = w.Write(e.jwks)
		return
	case authHost && strings.HasPrefix(r.URL.Path, apiPrefix):
		e.serveAPI(w, r, st)
		return
	case !strings.HasPrefix(r.URL.Path, authn.ReservedPrefix):
		e.fail(w, r, httperr.New(http.StatusNotFound, "not_found", "This is the sign-in service of the access proxy. Open an app to use it."))
		return
	}
	if authHost && e.serveDevice(w, r, st) {
		return
	}
	if !authHost && !st.isAppHost(strings.ToLower(r.Host)) {
		e.fail(w, r, httperr.New(http.StatusNotFound, "unknown_app", "No app is served at this address."))
		return
	}
	if err := st.auth.ServeReserved(w, r, authHost); err != nil {
		e.fail(w, r, err)
	}
}

// fail renders err in the one place errors are rendered, and logs the
// internal cause.
func (e *Edge) fail(w http.ResponseWriter, r *http.Request, err error) {
	he := httperr.As(err)
	if he.Cause != nil {
		lvl := e.logger.Info
		if he.Status >= 500 {
			lvl = e.logger.Error
		}
		lvl("request failed", "host", r.Host, "method", r.Method, "path", r.URL.Path, "status", he.Status, "code", he.Code, "err", he.Cause)
	}
	e.pages.Error(w, r, he)
}

// record emits the one audit event and the metrics of a decision. posture
// is the posture verdict: the profile passed, "fail:CHECKS", "quarantined"
// or "" when none applied.
func (e *Edge) record(r *http.Request, st *State, a *app, sess *authn.Session, device, posture string, d groups.Decision, start time.Time) {
	dec := "deny"
	counter := a.denied
	if d.Allow {
		dec, counter = "allow", a.allowed
	}
	lat := time.Since(start)
	ev := audit.Event{
		Time: start, Kind: "request", App: a.Name, Method: r.Method, Host: r.Host, Path: r.URL.Path,
		Source: r.RemoteAddr, Device: device, Posture: posture, Decision: dec, Rule: d.Rule, Reason: d.Reason,
		Policy: st.policy.Version(), Latency: lat,
	}
	if sess != nil {
		ev.User, ev.Email, ev.Session = sess.Identity.Subject, sess.Identity.Email, sess.Ref()
	}
	e.opts.Audit.Record(ev)
	counter.Inc()
	e.metrics.decisionTime.Observe(lat.Seconds())
}

// countPostureFailure counts a posture refusal by failed check ("device":
// no device certificate); quarantines are counted where they start.
func (e *Edge) countPostureFailure(he *httperr.Error) {
	switch he.Code {
	case "device_required":
		e.metrics.postureFailures.WithLabelValues("device").Inc()
	case "posture_failed":
		for _, c := range he.Checks {
			e.metrics.postureFailures.WithLabelValues(c.Check).Inc()
		}
	}
}

// refusalVerdict is the audit verdict and reason of a posture refusal.
func refusalVerdict(he *httperr.Error) (verdict, reason string) {
	switch he.Code {
	case "quarantined":
		return "quarantined", "quarantined: " + he.Checks[0].Reason
	case "posture_failed":
		checks := make([]string, len(he.Checks))
		for i, c := range he.Checks {
			checks[i] = c.Check
		}
		return "fail:" + strings.Join(checks, ","), "posture: " + he.Checks[0].Reason
	}
	return "fail:device", he.Message
}

// device identifies the device a request comes from by its client
// certificate: "" when the client presented none (browsers without an
// enrolled device). A certificate that is presented but refused — revoked,
// replaced by a renewal, or bound to another user — is a deny: the edge
// never falls back to "no device" for a device it does not trust.
func (e *Edge) device(r *http.Request, sess *authn.Session) (string, *httperr.Error) {
	if r.TLS == nil {
		return "", nil
	}
	return e.deviceOf(r.Context(), r.TLS.PeerCertificates, sess)
}

// deviceOf identifies the device by the client certificate chain a TLS or
// QUIC handshake presented: "" without one.
func (e *Edge) deviceOf(ctx context.Context, certs []*x509.Certificate, sess *authn.Session) (string, *httperr.Error) {
	if e.devices == nil || len(certs) == 0 {
		return "", nil
	}
	d, err := e.devices.Check(ctx, certs, time.Now())
	if err != nil {
		he := &httperr.Error{Status: http.StatusForbidden, Code: "device_refused", Title: "Device not accepted",
			Message: "This device's certificate is not accepted: it was revoked or replaced.",
			Hint:    "Run `ztna agent status` on this device; if it was revoked, ask IT and enroll it again.", Cause: err}
		return "", he
	}
	if d.UserID != sess.Identity.Subject {
		return "", &httperr.Error{Status: http.StatusForbidden, Code: "device_refused", Title: "Device not accepted",
			Message: "This device is enrolled to another user.",
			Hint:    "Sign in as the device's user, or enroll this device for yourself.",
			Cause:   fmt.Errorf("device %s belongs to %s, session is %s", d.ID, d.UserID, sess.Identity.Subject)}
	}
	if d.PendingApproval {
		return "", &httperr.Error{Status: http.StatusForbidden, Code: "device_pending", Title: "Device waiting for approval",
			Message: "This device is enrolled but waits for an admin to approve it before it reaches apps.",
			Hint:    "Ask IT to approve device " + d.ID + " in the admin console; access works as soon as they do."}
	}
	return d.ID, nil
}
