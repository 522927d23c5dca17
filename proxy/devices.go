package proxy

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/web"
)

// Device enrollment endpoints on the auth host. The agent speaks JSON (an
// RFC 8628-shaped device flow); the user approves in the browser, signed in,
// on the approval page.
const (
	PathDevice       = authn.PathDevice       // approval page (GET) and decision (POST)
	PathDeviceEnroll = "/.ztna/device/enroll" // agent: start
	PathDeviceToken  = "/.ztna/device/token"  // agent: poll for the certificate
	PathDeviceNonce  = "/.ztna/device/nonce"  // agent (device certificate): a nonce for the next report
	PathDeviceReport = "/.ztna/device/report" // agent (device certificate): a signed posture report
	PathDeviceRenew  = "/.ztna/device/renew"  // agent: a new certificate, by proof of the device key
	maxDeviceBody    = 64 << 10

	// ReportContentType is the media type of a posture report's wire form.
	ReportContentType = "application/ztna-posture-report"
)

// serveDevice answers the device endpoints. It reports whether r was one.
func (e *Edge) serveDevice(w http.ResponseWriter, r *http.Request, st *State) bool {
	switch r.URL.Path {
	case PathDevice, PathDeviceEnroll, PathDeviceToken, PathDeviceNonce, PathDeviceReport, PathDeviceRenew:
	default:
		return false
	}
	if e.devices == nil {
		e.fail(w, r, httperr.New(http.StatusNotFound, "not_found", "Device enrollment is not enabled on this edge."))
		return true
	}
	var err error
	switch {
	case r.URL.Path == PathDeviceEnroll && r.Method == http.MethodPost:
		err = e.deviceEnroll(w, r)
	case r.URL.Path == PathDeviceToken && r.Method == http.MethodPost:
		err = e.deviceToken(w, r)
	case r.URL.Path == PathDeviceNonce && r.Method == http.MethodPost:
		err = e.deviceNonce(w, r, st)
	case r.URL.Path == PathDeviceReport && r.Method == http.MethodPost:
		err = e.deviceReport(w, r, st)
	case r.URL.Path == PathDeviceRenew && r.Method == http.MethodPost:
		err = e.deviceRenew(w, r)
	case r.URL.Path == PathDevice && (r.Method == http.MethodGet || r.Method == http.MethodPost):
		err = e.deviceApproval(w, r, st)
	default:
		err = httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "Method not allowed here.")
	}
	if err != nil {
		e.fail(w, r, err)
	}
	return true
}

type enrollRequest struct {
	PublicKey string `json:"public_key"` // base64 PKIX DER
	Name      string `json:"name"`
	Platform  string `json:"platform"`
	Proof     string `json:"proof"` // base64 signature by the device key
}

func (e *Edge) deviceEnroll(w http.ResponseWriter, r *http.Request) error {
	var req enrollRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	der, err1 := base64.StdEncoding.DecodeString(req.PublicKey)
	proof, err2 := base64.StdEncoding.DecodeString(req.Proof)
	if err := errors.Join(err1, err2); err != nil {
		return httperr.BadRequest("public_key and proof must be base64.", err)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	pub, ok := k.(*ecdsa.PublicKey)
	if err != nil || !ok {
		return httperr.BadRequest("public_key must be an ECDSA P-256 key in PKIX form.", err)
	}
	pe, err := e.devices.StartEnrollment(r.Context(), pub, req.Name, req.Platform, proof)
	if err != nil {
		switch {
		case errors.Is(err, posture.ErrRateLimited):
			return &httperr.Error{Status: http.StatusTooManyRequests, Code: "slow_down", Message: "Too many enrollments; try again shortly.", Cause: err}
		case errors.Is(err, posture.ErrBadProof), errors.Is(err, posture.ErrInvalidEnrollment):
			return httperr.BadRequest("The enrollment request is not valid.", err)
		}
		return err
	}
	page := e.state.Load().Config.AuthOrigin() + PathDevice
	return writeJSON(w, http.StatusOK, map[string]any{
		"enrollment_id":             pe.EnrollmentID,
		"user_code":                 pe.UserCode,
		"verification_uri":          page,
		"verification_uri_complete": page + "?code=" + url.QueryEscape(pe.UserCode),
		"expires_in":                int(time.Until(pe.ExpiresAt).Seconds()),
		"interval":                  int(posture.PollInterval.Seconds()),
	})
}

func (e *Edge) deviceToken(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		EnrollmentID string `json:"enrollment_id"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	dev, der, err := e.devices.Poll(r.Context(), req.EnrollmentID, time.Now())
	if err != nil {
		code := ""
		switch {
		case errors.Is(err, posture.ErrPending):
			code = "authorization_pending"
		case errors.Is(err, posture.ErrSlowDown):
			code = "slow_down"
		case errors.Is(err, posture.ErrDenied):
			code = "access_denied"
		case errors.Is(err, posture.ErrExpired), errors.Is(err, posture.ErrNoEnrollment):
			code = "expired_token"
		default:
			return err
		}
		// RFC 8628 answers these with 400 and the code in "error".
		return &httperr.Error{Status: http.StatusBadRequest, Code: code, Message: code}
	}
	return writeJSON(w, http.StatusOK, map[string]any{
		"device_id":   dev.ID,
		"certificate": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		"ca":          string(e.opts.DeviceCA.CertPEM()),
	})
}

// certDevice is the device whose client certificate r presented.
func (e *Edge) certDevice(r *http.Request) (*posture.Device, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, &httperr.Error{Status: http.StatusUnauthorized, Code: "device_certificate_required",
			Message: "Present the device certificate (ztna agent does this after enrollment)."}
	}
	d, err := e.devices.Check(r.Context(), r.TLS.PeerCertificates, time.Now())
	if err != nil {
		return nil, &httperr.Error{Status: http.StatusForbidden, Code: "device_refused",
			Message: "This device's certificate is not accepted: it was revoked or replaced.",
			Hint:    "Run ztna agent status; if the device was revoked, enroll it again.", Cause: err}
	}
	return d, nil
}

func (e *Edge) deviceNonce(w http.ResponseWriter, r *http.Request, st *State) error {
	d, err := e.certDevice(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{
		"nonce":    e.reports.IssueNonce(d.ID),
		"interval": reportIntervalSeconds(st),
	})
}

// reportIntervalSeconds is the report interval agents are told, in whole
// seconds (at least 1).
func reportIntervalSeconds(st *State) int { return max(1, int(st.Config.reportInterval()/time.Second)) }

// profileVerdict is one profile's verdict in a report answer.
type profileVerdict struct {
	Name     string          `json:"name"`
	OK       bool            `json:"ok"`
	Failures []httperr.Check `json:"failures,omitempty"`
}

// deviceReport accepts a signed posture report from the device that
// presents the certificate, and answers with the next nonce and how the
// device now fares against every profile, so the agent can tell its user.
func (e *Edge) deviceReport(w http.ResponseWriter, r *http.Request, st *State) error {
	d, err := e.certDevice(r)
	if err != nil {
		e.metrics.reports.WithLabelValues(httperr.As(err).Code).Inc()
		return err
	}
	if ct := r.Header.Get("Content-Type"); ct != ReportContentType {
		return httperr.BadRequest("Send the report as "+ReportContentType+".", fmt.Errorf("content type %q", ct))
	}
	wire, err := io.ReadAll(http.MaxBytesReader(w, r.Body, posture.MaxReportBytes))
	if err != nil {
		e.metrics.reports.WithLabelValues("malformed_report").Inc()
		return &httperr.Error{Status: http.StatusRequestEntityTooLarge, Code: "malformed_report", Message: "The report is too large or was cut off.", Cause: err}
	}
	ev, err := e.reports.Submit(r.Context(), d, wire, time.Now())
	if err != nil {
		code := posture.ReportErrorCode(err)
		if code == "" {
			return err // the store failed: a 500, nothing accepted
		}
		e.metrics.reports.WithLabelValues(code).Inc()
		status := map[string]int{"replay": http.StatusConflict, "stale_nonce": http.StatusConflict,
			"bad_signature": http.StatusForbidden, "wrong_device": http.StatusForbidden, "device_refused": http.StatusForbidden}[code]
		if status == 0 {
			status = http.StatusBadRequest
		}
		e.logger.Info("posture report refused", "device", d.ID, "code", code, "err", err)
		return &httperr.Error{Status: status, Code: code, Message: "The posture report was refused (" + code + ").", Cause: err}
	}
	e.metrics.reports.WithLabelValues("accepted").Inc()
	now := time.Now()
	profiles := make([]profileVerdict, 0, len(st.profiles))
	for _, p := range st.Config.Posture.Profiles {
		v := st.profiles[p.Name].Evaluate(ev, now)
		pv := profileVerdict{Name: p.Name, OK: v.OK}
		for _, f := range v.Failures {
			pv.Failures = append(pv.Failures, httperr.Check{Check: f.Check, Reason: f.Reason, Fix: f.Fix})
		}
		profiles = append(profiles, pv)
	}
	resp := map[string]any{
		"accepted":   true,
		"next_nonce": e.reports.IssueNonce(d.ID),
		"interval":   reportIntervalSeconds(st),
		"profiles":   profiles,
	}
	q, isolated := e.quarantine.Device(d.ID)
	if !isolated {
		q, isolated = e.quarantine.User(d.UserID)
	}
	resp["quarantined"] = isolated
	if isolated {
		he := quarantined(q, "This device")
		resp["quarantine"] = map[string]string{"reason": q.Reason, "fix": he.Checks[0].Fix, "source": q.Source}
	}
	return writeJSON(w, http.StatusOK, resp)
}

// deviceRenew issues a new certificate to a device that proves possession
// of its key. It needs no client certificate, so an agent whose
// certificate lapsed (a laptop asleep for days) can still renew; if one is
// presented it must be the same device's.
func (e *Edge) deviceRenew(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		DeviceID string `json:"device_id"`
		Proof    string `json:"proof"` // base64 signature by the device key
	}
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		d, err := e.certDevice(r)
		if err != nil {
			return err
		}
		if d.ID != req.DeviceID {
			return &httperr.Error{Status: http.StatusForbidden, Code: "wrong_device", Message: "The certificate presented is another device's."}
		}
	}
	proof, err := base64.StdEncoding.DecodeString(req.Proof)
	if err != nil {
		return httperr.BadRequest("proof must be base64.", err)
	}
	der, err := e.devices.Renew(r.Context(), req.DeviceID, proof, time.Now())
	if err != nil {
		code := ""
		switch {
		case errors.Is(err, posture.ErrDeviceRevoked), errors.Is(err, posture.ErrNoDevice):
			return &httperr.Error{Status: http.StatusForbidden, Code: "device_refused", Message: "This device is not enrolled (revoked or unknown).", Cause: err}
		case errors.Is(err, posture.ErrBadProof):
			code = "bad_proof"
		case errors.Is(err, posture.ErrProofUsed):
			code = "proof_used"
		default:
			return err
		}
		return &httperr.Error{Status: http.StatusBadRequest, Code: code, Message: "The renewal proof was not accepted (" + code + ").", Cause: err}
	}
	return writeJSON(w, http.StatusOK, map[string]any{
		"device_id":   req.DeviceID,
		"certificate": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		"ca":          string(e.opts.DeviceCA.CertPEM()),
	})
}

// deviceApproval shows the device asking to be enrolled to the signed-in
// user and takes the decision. Signing in returns here.
func (e *Edge) deviceApproval(w http.ResponseWriter, r *http.Request, st *State) error {
	sess, err := st.auth.Authenticate(r)
	if err != nil {
		if !errors.Is(err, authn.ErrNoSession) {
			return err
		}
		rd := st.Config.AuthOrigin() + PathDevice
		if c := r.URL.Query().Get("code"); c != "" && r.Method == http.MethodGet {
			rd += "?code=" + url.QueryEscape(c)
		}
		login := st.Config.AuthOrigin() + authn.PathLogin + "?rd=" + url.QueryEscape(rd)
		if web.WantsHTML(r) && r.Method == http.MethodGet {
			http.Redirect(w, r, login, http.StatusFound)
			return nil
		}
		he := httperr.New(http.StatusUnauthorized, "unauthenticated", "Sign in to approve a device.")
		he.LoginURL = login
		return he
	}
	user := sess.Identity.Email
	if user == "" {
		user = sess.Identity.Subject
	}
	if r.Method == http.MethodGet {
		code := r.URL.Query().Get("code")
		if code == "" {
			e.pages.DeviceApproval(w, user, authn.CSRFToken(sess), nil)
			return nil
		}
		pe, err := e.devices.PendingByUserCode(r.Context(), code)
		if err != nil {
			return badDeviceCode(err)
		}
		e.pages.DeviceApproval(w, user, authn.CSRFToken(sess), &web.PendingDevice{
			Name: pe.Name, Platform: pe.Platform, UserCode: pe.UserCode, Fingerprint: pe.Fingerprint})
		return nil
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxDeviceBody)
	if err := r.ParseForm(); err != nil {
		return httperr.BadRequest("The form could not be read.", err)
	}
	if !authn.SecureEqual(r.PostForm.Get("csrf"), authn.CSRFToken(sess)) {
		return httperr.New(http.StatusForbidden, "csrf", "This request did not come from the device approval page.")
	}
	code := r.PostForm.Get("code")
	switch r.PostForm.Get("decision") {
	case "approve":
		if err := e.devices.Approve(r.Context(), code, sess.Identity.Subject); err != nil {
			return badDeviceCode(err)
		}
		e.logger.Info("device enrollment approved", "user", sess.Identity.Subject, "session", sess.Ref())
		e.pages.Message(w, http.StatusOK, "Device approved", "The device is enrolled to you. ztna agent on the device will finish on its own.")
	case "deny":
		if err := e.devices.Deny(r.Context(), code); err != nil {
			return badDeviceCode(err)
		}
		e.pages.Message(w, http.StatusOK, "Device denied", "The enrollment was refused; nothing was enrolled.")
	default:
		return httperr.BadRequest("Choose approve or deny.", errors.New("missing decision"))
	}
	return nil
}

func badDeviceCode(err error) error {
	he := httperr.BadRequest("This code is not valid or has expired.", err)
	he.Hint = "Run ztna agent enroll again on the device and use the new code."
	return he
}

// decodeJSON reads a bounded, strict JSON request body into v.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return httperr.BadRequest("Send application/json.", fmt.Errorf("content type %q", ct))
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxDeviceBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return httperr.BadRequest("The request body is not valid JSON for this endpoint.", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return httperr.BadRequest("The request body has data after the JSON object.", errors.New("trailing data"))
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}
