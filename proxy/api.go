package proxy

// The edge's JSON APIs on the auth host, each behind its own bearer token:
// the signal API that detection tools (Falcosidekick, an EDR) post to, and
// the admin API that lists, quarantines, releases and revokes devices.

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/posture"
)

// API paths.
const (
	PathSignals      = "/api/signals"       // generic JSON signal
	PathSignalsFalco = "/api/signals/falco" // Falcosidekick webhook output
	PathQuarantine   = "/api/quarantine"    // admin: list quarantines
	PathPolicy       = "/api/policy"        // admin: the policy version each replica serves
	pathDevicesAPI   = "/api/devices/"      // admin: /api/devices/ID/{quarantine,release,revoke}
	pathUsersAPI     = "/api/users/"        // admin: /api/users/ID/{release,refresh,sign-out}
	apiPrefix        = "/api/"
)

// serveAPI answers /api/ on the auth host.
func (e *Edge) serveAPI(w http.ResponseWriter, r *http.Request, st *State) {
	var err error
	switch p := r.URL.Path; {
	case p == PathSignals || p == PathSignalsFalco:
		err = e.serveSignal(w, r, st)
	case p == PathQuarantine || p == PathPolicy || strings.HasPrefix(p, pathDevicesAPI) || strings.HasPrefix(p, pathUsersAPI):
		err = e.serveAdmin(w, r, st)
	default:
		err = httperr.New(http.StatusNotFound, "not_found", "No such API.")
	}
	if err != nil {
		e.fail(w, r, err)
	}
}

// bearer checks r's bearer token against want in constant time. A nil want
// means the API is switched off.
func bearer(w http.ResponseWriter, r *http.Request, want []byte, api string) error {
	if want == nil {
		return httperr.New(http.StatusNotFound, "not_found", "The "+api+" API is not enabled on this edge.")
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ztna `+api+` API"`)
		return httperr.New(http.StatusUnauthorized, "unauthenticated", "A valid bearer token for the "+api+" API is required.")
	}
	return nil
}

// serveSignal takes one signal and acts on it: a detection at or above
// signals.min_severity quarantines its device (and user, if configured);
// an EDR check-in is recorded as contact with the EDR's manager.
func (e *Edge) serveSignal(w http.ResponseWriter, r *http.Request, st *State) error {
	if err := bearer(w, r, st.signalsToken, "signal"); err != nil {
		return err
	}
	if r.Method != http.MethodPost {
		return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "POST a signal.")
	}
	received := time.Now()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, posture.MaxSignalBytes))
	if err != nil {
		return &httperr.Error{Status: http.StatusRequestEntityTooLarge, Code: "too_large", Message: fmt.Sprintf("A signal is at most %d bytes.", posture.MaxSignalBytes), Cause: err}
	}
	source := "webhook"
	var sig posture.Signal
	if r.URL.Path == PathSignalsFalco {
		source = posture.SourceFalco
		sig, err = posture.ParseFalco(body)
	} else {
		sig, err = posture.ParseSignal(body)
	}
	if err != nil {
		e.metrics.signals.WithLabelValues(source, "rejected").Inc()
		return httperr.BadRequest("The signal is not valid: "+errors.Unwrap(err).Error()+".", err)
	}
	source = sig.Source
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	devs, err := e.signalDevices(ctx, sig)
	if err != nil {
		return err
	}
	outcome := func(o string, extra map[string]any) error {
		e.metrics.signals.WithLabelValues(source, o).Inc()
		e.opts.Audit.Record(audit.Event{Time: received, Kind: "signal", User: sig.UserID, Device: strings.Join(deviceIDs(devs), ","),
			Source: source, Decision: o, Rule: sig.Rule, Reason: sig.Reason, Latency: time.Since(received)})
		resp := map[string]any{"outcome": o, "devices": deviceIDs(devs)}
		for k, v := range extra {
			resp[k] = v
		}
		return writeJSON(w, http.StatusOK, resp)
	}

	if sig.Kind == posture.SignalEDRCheckIn {
		if len(devs) == 0 {
			e.metrics.signals.WithLabelValues(source, "unknown_device").Inc()
			return httperr.New(http.StatusNotFound, "unknown_device", "No enrolled device matches the signal's device_id or hostname.")
		}
		for _, d := range devs {
			if err := e.reports.CheckIn(r.Context(), d.ID, sig.EDR, sig.Time, received); err != nil {
				return err
			}
		}
		return outcome("checkin", nil)
	}
	if len(devs) == 0 && sig.UserID == "" {
		e.metrics.signals.WithLabelValues(source, "unknown_device").Inc()
		return httperr.New(http.StatusNotFound, "unknown_device", "No enrolled device matches the signal's device_id or hostname.")
	}
	if sig.Severity < st.minSeverity {
		return outcome("recorded", map[string]any{"min_severity": st.minSeverity.String()})
	}
	entry := posture.QuarantineEntry{Reason: sig.Reason, Fix: sig.Fix, Source: source, Rule: sig.Rule,
		Severity: sig.Severity, At: time.Now(), SignalAt: received, AutoRelease: st.releaseProfile != nil}
	users := map[string]bool{}
	if sig.UserID != "" {
		users[sig.UserID] = true
	}
	for _, d := range devs {
		q := entry
		q.Kind, q.ID = posture.QuarantineDevice, d.ID
		if _, err := e.quarantine.Isolate(ctx, q); err != nil {
			return err
		}
		if st.Config.Signals.QuarantineUser {
			users[d.UserID] = true
		}
	}
	for u := range users {
		q := entry
		q.Kind, q.ID, q.AutoRelease = posture.QuarantineUser, u, false
		if _, err := e.quarantine.Isolate(ctx, q); err != nil {
			return err
		}
	}
	// Isolate closed the live connections before returning: this is the
	// time from the signal's arrival to the device being cut off.
	e.metrics.isolation.Observe(time.Since(received).Seconds())
	e.logger.Warn("quarantined by signal", "source", source, "rule", sig.Rule, "severity", sig.Severity.String(),
		"devices", deviceIDs(devs), "users", len(users), "isolated_in", time.Since(received))
	return outcome("quarantined", nil)
}

// signalDevices finds the devices a signal is about: by device ID, else
// every device enrolled under the host name (several with one name are all
// meant: fail closed).
func (e *Edge) signalDevices(ctx context.Context, sig posture.Signal) ([]*posture.Device, error) {
	if e.devices == nil {
		return nil, nil
	}
	if sig.DeviceID != "" {
		d, err := e.devices.Get(ctx, sig.DeviceID)
		if errors.Is(err, posture.ErrNoDevice) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return []*posture.Device{d}, nil
	}
	if sig.Hostname == "" {
		return nil, nil
	}
	all, err := e.devices.List(ctx, "")
	if err != nil {
		return nil, err
	}
	var out []*posture.Device
	for _, d := range all {
		if !d.Revoked && strings.EqualFold(d.Name, sig.Hostname) {
			out = append(out, d)
		}
	}
	return out, nil
}

func deviceIDs(ds []*posture.Device) []string {
	ids := make([]string, len(ds))
	for i, d := range ds {
		ids[i] = d.ID
	}
	return ids
}

// serveAdmin is the admin API:
//
//	GET  /api/quarantine                   every quarantine
//	POST /api/devices/ID/quarantine        {"reason": "...", "fix": "..."}
//	POST /api/devices/ID/release           lift the device's quarantine
//	POST /api/devices/ID/revoke            {"reason": "..."}
//	POST /api/users/ID/release             lift the user's quarantine
//	POST /api/users/ID/refresh             re-read the user's attributes from the IdP now
func (e *Edge) serveAdmin(w http.ResponseWriter, r *http.Request, st *State) error {
	if err := bearer(w, r, st.adminToken, "admin"); err != nil {
		return err
	}
	if r.URL.Path == PathPolicy {
		if r.Method != http.MethodGet {
			return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "GET the policy versions.")
		}
		recs, err := e.PolicyRecords(r.Context())
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, map[string]any{"version": st.policy.Version(), "replica": e.opts.Bus.ID(), "replicas": recs})
	}
	if r.URL.Path == PathQuarantine {
		if r.Method != http.MethodGet {
			return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "GET the quarantine list.")
		}
		return writeJSON(w, http.StatusOK, map[string]any{"quarantine": e.quarantine.List()})
	}
	if r.Method != http.MethodPost {
		return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "POST an admin action.")
	}
	kind, rest := posture.QuarantineDevice, strings.TrimPrefix(r.URL.Path, pathDevicesAPI)
	if strings.HasPrefix(r.URL.Path, pathUsersAPI) {
		kind, rest = posture.QuarantineUser, strings.TrimPrefix(r.URL.Path, pathUsersAPI)
	}
	id, action, ok := strings.Cut(rest, "/")
	if !ok || id == "" || len(id) > 256 || strings.Contains(action, "/") {
		return httperr.New(http.StatusNotFound, "not_found", "No such API.")
	}
	var req struct {
		Reason string `json:"reason"`
		Fix    string `json:"fix"`
	}
	if r.ContentLength != 0 {
		if err := decodeJSON(w, r, &req); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	api := actor{via: "api"}
	switch {
	case action == "release":
		q, err := e.release(ctx, api, kind, id, req.Reason)
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, map[string]any{"released": q})
	case kind == posture.QuarantineDevice && action == "quarantine":
		if err := e.isolate(ctx, api, kind, id, req.Reason, req.Fix); err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, map[string]any{action: id})
	case kind == posture.QuarantineDevice && action == "revoke":
		if err := e.revokeDevice(ctx, api, id, req.Reason); err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, map[string]any{action: id})
	case kind == posture.QuarantineUser && action == "sign-out":
		n, err := e.signOut(ctx, api, id, req.Reason)
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, map[string]any{"user": id, "ended": n})
	case kind == posture.QuarantineUser && action == "refresh":
		// A role change at the IdP (or the directory behind it) takes
		// effect now: every session of the user refreshes its tokens and
		// attributes, and each refresh re-decides its live connections.
		refreshed, ended, err := st.auth.RefreshUser(ctx, id)
		e.auditAdmin(api, "refresh", id, "", req.Reason)
		if err != nil && refreshed == 0 && ended == 0 {
			return &httperr.Error{Status: http.StatusBadGateway, Code: "refresh_failed", Title: "Refresh failed",
				Message: "The IdP could not be asked for the user's attributes.", Cause: err}
		}
		out := map[string]any{"user": id, "refreshed": refreshed, "ended": ended}
		if err != nil {
			e.logger.Warn("refresh some sessions failed", "user", id, "err", err)
			out["failed"] = true
		}
		return writeJSON(w, http.StatusOK, out)
	}
	return httperr.New(http.StatusNotFound, "not_found", "No such API.")
}

func deviceOf(q posture.QuarantineEntry) string {
	if q.Kind == posture.QuarantineDevice {
		return q.ID
	}
	return ""
}

func userOf(q posture.QuarantineEntry) string {
	if q.Kind == posture.QuarantineUser {
		return q.ID
	}
	return ""
}
