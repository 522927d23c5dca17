package proxy

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/posture"
)

// Admin actions, shared by the admin API (api.go) and the console
// (console.go): each checks its input, acts, and records one audit event
// naming who did it. Errors are *httperr.Error where the admin can fix
// the input.

// actor is who takes an admin action: the admin API's token holder, or a
// console user.
type actor struct {
	via   string // "api" or "console"
	user  string // the console user's ID; "" for the API
	email string
}

// auditAdmin records an admin action.
func (e *Edge) auditAdmin(by actor, action, user, device, reason string) {
	e.opts.Audit.Record(audit.Event{Time: time.Now(), Kind: "admin", Decision: action, User: user, Device: device,
		Reason: reason, Source: by.via, Actor: by.email + actorSuffix(by)})
}

func actorSuffix(by actor) string {
	if by.user == "" {
		return by.via
	}
	return " (" + by.user + ")"
}

// isolate quarantines a device or a user now: their live connections
// close and every request of theirs is refused until released.
func (e *Edge) isolate(ctx context.Context, by actor, kind, id, reason, fix string) error {
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return httperr.BadRequest("Give a reason: it is shown to the user and kept in the audit log.", errors.New("no reason"))
	}
	if kind == posture.QuarantineDevice {
		if err := e.knownDevice(ctx, id); err != nil {
			return err
		}
	}
	q := posture.QuarantineEntry{Kind: kind, ID: id, Reason: reason, Fix: fix, Source: "admin", Severity: posture.SeverityCritical, At: time.Now()}
	if _, err := e.quarantine.Isolate(ctx, q); err != nil {
		if errors.Is(err, posture.ErrInvalidQuarantine) {
			return httperr.BadRequest("The quarantine was not accepted: "+strings.TrimPrefix(err.Error(), posture.ErrInvalidQuarantine.Error()+": "), err)
		}
		return err
	}
	e.auditAdmin(by, "quarantine", userOf(q), deviceOf(q), reason)
	return nil
}

// release lifts a quarantine.
func (e *Edge) release(ctx context.Context, by actor, kind, id, reason string) (posture.QuarantineEntry, error) {
	q, found, err := e.quarantine.Release(ctx, kind, id, by.via)
	if err != nil {
		return q, err
	}
	if !found {
		return q, httperr.New(http.StatusNotFound, "not_quarantined", "That "+kind+" is not quarantined.")
	}
	e.metrics.releases.WithLabelValues("admin").Inc()
	e.auditAdmin(by, "release", userOf(q), deviceOf(q), reason)
	return q, nil
}

// revokeDevice revokes a device's enrollment for good.
func (e *Edge) revokeDevice(ctx context.Context, by actor, id, reason string) error {
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return httperr.BadRequest("Give a reason: it is shown to the user and kept in the audit log.", errors.New("no reason"))
	}
	if err := e.knownDevice(ctx, id); err != nil {
		return err
	}
	if err := e.devices.Revoke(ctx, id, reason); err != nil {
		return err
	}
	e.auditAdmin(by, "revoke", "", id, reason)
	return nil
}

// approveDevice lets a device waiting for an admin's approval reach apps.
func (e *Edge) approveDevice(ctx context.Context, by actor, id string) error {
	if err := e.knownDevice(ctx, id); err != nil {
		return err
	}
	d, err := e.devices.ApproveDevice(ctx, id, by.email)
	if errors.Is(err, posture.ErrNotPending) {
		return httperr.New(http.StatusConflict, "not_pending", "That device is not waiting for approval.")
	}
	if err != nil {
		return err
	}
	e.auditAdmin(by, "approve-device", d.UserID, id, "")
	return nil
}

func (e *Edge) knownDevice(ctx context.Context, id string) error {
	if e.devices == nil {
		return httperr.New(http.StatusNotFound, "not_found", "Device trust is not enabled on this edge.")
	}
	if _, err := e.devices.Get(ctx, id); err != nil {
		if errors.Is(err, posture.ErrNoDevice) {
			return httperr.New(http.StatusNotFound, "unknown_device", "No such device.")
		}
		return err
	}
	return nil
}

// signOut ends every session of user sub, on every replica: their live
// connections close and every device must sign in again.
func (e *Edge) signOut(ctx context.Context, by actor, sub, reason string) (int, error) {
	n, err := e.sessions.RevokeMatching(ctx, func(x *authn.Session) bool { return x.Identity.Subject == sub })
	if err != nil {
		return n, err
	}
	e.auditAdmin(by, "sign-out", sub, "", reason)
	return n, nil
}

// revokeSession ends the one session with reference ref.
func (e *Edge) revokeSession(ctx context.Context, by actor, ref string) error {
	if len(ref) != 16 {
		return httperr.New(http.StatusNotFound, "unknown_session", "No such session.")
	}
	var user string
	n, err := e.sessions.RevokeMatching(ctx, func(x *authn.Session) bool {
		if x.Ref() == ref {
			user = x.Identity.Subject
			return true
		}
		return false
	})
	if err != nil {
		return err
	}
	if n == 0 {
		return httperr.New(http.StatusNotFound, "unknown_session", "No such session: it has ended already.")
	}
	e.auditAdmin(by, "revoke-session", user, "", "session "+ref)
	return nil
}
