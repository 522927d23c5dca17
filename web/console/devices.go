package console

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/posture"
)

// Devices: every enrolled device with its posture now, one device's
// posture, latest report and history, and the admin's actions on it —
// the seed's detect → isolate → inform → reconnect loop: quarantine with
// the reason and fix the user sees, release, revoke.

const (
	// deviceHistory is how many of a device's reports its page lists.
	deviceHistory = 50
	// maxField bounds a console form or filter value.
	maxField = 256
)

// profileMark is whether a device passes one posture profile.
type profileMark struct {
	Name string
	OK   bool
}

// deviceRow is one device of the list.
type deviceRow struct {
	Device      *posture.Device
	Owner       string // the owner's email, or their ID
	LastReport  time.Time
	Quarantined bool // the device, or its owner
	Profiles    []profileMark
}

// profileNames are ps's posture profiles, sorted.
func profileNames(ps PolicyState) []string {
	return slices.Sorted(maps.Keys(ps.Profiles))
}

// marks evaluates ev against every profile at now.
func marks(ps PolicyState, names []string, ev *posture.Evidence, now time.Time) []profileMark {
	out := make([]profileMark, len(names))
	for i, n := range names {
		out[i] = profileMark{Name: n, OK: ps.Profiles[n].Evaluate(ev, now).OK}
	}
	return out
}

// quarantined indexes the quarantine by kind and ID.
func quarantined(entries []posture.QuarantineEntry) map[string]posture.QuarantineEntry {
	out := make(map[string]posture.QuarantineEntry, len(entries))
	for _, e := range entries {
		out[e.Kind+":"+e.ID] = e
	}
	return out
}

func (h *Handler) deviceList(w http.ResponseWriter, r *http.Request, act Actor) error {
	ctx := r.Context()
	user := r.URL.Query().Get("user")
	if len(user) > maxField {
		return badInput("The user filter is longer than %d bytes.", maxField)
	}
	devices, err := h.b.Devices(ctx, user)
	if err != nil {
		return err
	}
	owners, err := usersByID(ctx, h.b)
	if err != nil {
		return err
	}
	ps := h.b.Policy()
	names := profileNames(ps)
	q := quarantined(h.b.Quarantines())
	now := h.now()
	rows := make([]deviceRow, len(devices))
	for i, d := range devices {
		row := deviceRow{Device: d, Owner: ownerName(owners, d.UserID)}
		_, qd := q[posture.QuarantineDevice+":"+d.ID]
		_, qu := q[posture.QuarantineUser+":"+d.UserID]
		row.Quarantined = qd || qu
		ev := h.b.Evidence(d.ID)
		if ev != nil {
			row.LastReport = ev.ReceivedAt
		}
		if !d.Revoked {
			row.Profiles = marks(ps, names, ev, now)
		}
		rows[i] = row
	}
	// Revoked devices last; otherwise the backend's order (device ID).
	slices.SortStableFunc(rows, func(a, b deviceRow) int {
		switch {
		case a.Device.Revoked == b.Device.Revoked:
			return 0
		case a.Device.Revoked:
			return 1
		}
		return -1
	})
	title := "Devices"
	if user != "" {
		title = "Devices of " + ownerName(owners, user)
	}
	h.render(w, r, act, http.StatusOK, "devices.html", title, "devices", map[string]any{
		"Devices": rows, "Profiles": names, "User": user,
	})
	return nil
}

// ownerName is how a device's owner is shown.
func ownerName(owners map[string]*authn.DirectoryUser, sub string) string {
	if u := owners[sub]; u != nil && u.IdP.Email != "" {
		return u.IdP.Email
	}
	return sub
}

// usersByID indexes the directory by subject.
func usersByID(ctx context.Context, b Backend) (map[string]*authn.DirectoryUser, error) {
	users, err := b.Users(ctx)
	if err != nil {
		return nil, err
	}
	return indexUsers(users), nil
}

// indexUsers indexes users by subject.
func indexUsers(users []*authn.DirectoryUser) map[string]*authn.DirectoryUser {
	out := make(map[string]*authn.DirectoryUser, len(users))
	for _, u := range users {
		out[u.IdP.Subject] = u
	}
	return out
}

// lookupDevice reads device id, mapping an unknown one to a 404.
func (h *Handler) lookupDevice(ctx context.Context, id string) (*posture.Device, error) {
	if id == "" || len(id) > posture.MaxDeviceIDLen {
		return nil, notFound("device")
	}
	d, err := h.b.Device(ctx, id)
	if errors.Is(err, store.ErrNotFound) || err == nil && d == nil {
		return nil, notFound("device")
	}
	return d, err
}

// state is a tri-state property of a report: on, off or unknown.
type state struct {
	Text  string
	Class string
}

func stateOf(v *bool) state {
	switch {
	case v == nil:
		return state{"unknown", "warn"}
	case *v:
		return state{"on", "ok"}
	}
	return state{"off", "bad"}
}

// reportView is a report as the device page shows it.
type reportView struct {
	Report     *posture.Report
	ReceivedAt time.Time
	Disk       state
	Firewall   state
	ScreenLock state
}

func viewReport(r *posture.Report, at time.Time) *reportView {
	return &reportView{Report: r, ReceivedAt: at, Disk: stateOf(r.DiskEncrypted), Firewall: stateOf(r.FirewallActive), ScreenLock: stateOf(r.ScreenLock)}
}

// profileVerdict is a device's posture now under one profile.
type profileVerdict struct {
	Name    string
	Verdict posture.Verdict
}

// checkIn is one EDR vendor's latest word about the device.
type checkIn struct {
	EDR string
	At  time.Time
}

// historyRow is one accepted report of a device's history, judged by every
// profile as of when it arrived.
type historyRow struct {
	ReceivedAt time.Time
	Counter    uint64
	Summary    string
	Profiles   []profileMark
}

func (h *Handler) devicePage(w http.ResponseWriter, r *http.Request, act Actor) error {
	ctx := r.Context()
	dev, err := h.lookupDevice(ctx, r.URL.Query().Get("id"))
	if err != nil {
		return err
	}
	owners, err := usersByID(ctx, h.b)
	if err != nil {
		return err
	}
	ps := h.b.Policy()
	names := profileNames(ps)
	now := h.now()
	ev := h.b.Evidence(dev.ID)

	verdicts := make([]profileVerdict, len(names))
	for i, n := range names {
		verdicts[i] = profileVerdict{Name: n, Verdict: ps.Profiles[n].Evaluate(ev, now)}
	}
	var latest *reportView
	var checkIns []checkIn
	if ev != nil {
		if ev.Report != nil {
			latest = viewReport(ev.Report, ev.ReceivedAt)
		}
		for _, name := range slices.Sorted(maps.Keys(ev.CheckIns)) {
			checkIns = append(checkIns, checkIn{EDR: name, At: ev.CheckIns[name]})
		}
	}
	hist, err := h.b.History(ctx, dev.ID, deviceHistory)
	if err != nil {
		return err
	}
	history := make([]historyRow, len(hist))
	for i, e := range hist {
		history[i] = historyRow{ReceivedAt: e.ReceivedAt, Counter: e.Report.Counter, Summary: reportSummary(&e.Report),
			Profiles: marks(ps, names, historicEvidence(e, ev), e.ReceivedAt)}
	}
	q := quarantined(h.b.Quarantines())
	var devQ, userQ *posture.QuarantineEntry
	if e, ok := q[posture.QuarantineDevice+":"+dev.ID]; ok {
		devQ = &e
	}
	if e, ok := q[posture.QuarantineUser+":"+dev.UserID]; ok {
		userQ = &e
	}
	title := "Device " + dev.ID
	if dev.Name != "" {
		title = "Device " + dev.Name
	}
	h.render(w, r, act, http.StatusOK, "device.html", title, "devices", map[string]any{
		"Device": dev, "Owner": ownerName(owners, dev.UserID), "Verdicts": verdicts, "Latest": latest,
		"CheckIns": checkIns, "History": history, "Quarantine": devQ, "UserQuarantine": userQ,
	})
	return nil
}

// historicEvidence is what the edge knew when e arrived: the report, and
// the vendor check-ins known now that came no later than it.
func historicEvidence(e posture.HistoryEntry, now *posture.Evidence) *posture.Evidence {
	ev := &posture.Evidence{Report: &e.Report, ReceivedAt: e.ReceivedAt}
	if now != nil {
		for name, at := range now.CheckIns {
			if !at.After(e.ReceivedAt) {
				if ev.CheckIns == nil {
					ev.CheckIns = map[string]time.Time{}
				}
				ev.CheckIns[name] = at
			}
		}
	}
	return ev
}

// reportSummary is one line about a report: OS, the three switches, EDRs.
func reportSummary(r *posture.Report) string {
	parts := []string{strings.TrimSpace(r.OS.Name + " " + r.OS.Version)}
	parts = append(parts, "disk encryption "+stateOf(r.DiskEncrypted).Text, "firewall "+stateOf(r.FirewallActive).Text,
		"screen lock "+stateOf(r.ScreenLock).Text)
	for _, e := range r.EDR {
		s := "not running"
		if e.Running {
			s = "running"
		}
		parts = append(parts, fmt.Sprintf("%s %s", e.Name, s))
	}
	return strings.Join(parts, " · ")
}

// deviceForm reads the device ID of a device action and checks the device
// exists.
func (h *Handler) deviceForm(r *http.Request) (*posture.Device, error) {
	return h.lookupDevice(r.Context(), r.PostForm.Get("id"))
}

// formText reads a bounded, trimmed text field of a change.
func formText(r *http.Request, field, what string, required bool) (string, error) {
	v := strings.TrimSpace(r.PostForm.Get(field))
	switch {
	case required && v == "":
		return "", badInput("Give %s.", what)
	case len(v) > posture.MaxStringLen:
		return "", badInput("The %s is longer than %d bytes.", field, posture.MaxStringLen)
	}
	return v, nil
}

func (h *Handler) deviceQuarantine(w http.ResponseWriter, r *http.Request, act Actor) error {
	dev, err := h.deviceForm(r)
	if err != nil {
		return err
	}
	reason, err := formText(r, "reason", "a reason: the user sees it, and it is kept in the audit log", true)
	if err != nil {
		return err
	}
	fix, err := formText(r, "fix", "", false)
	if err != nil {
		return err
	}
	if err := h.b.Quarantine(r.Context(), act, posture.QuarantineDevice, dev.ID, reason, fix); err != nil {
		return err
	}
	return done(w, r, "/device", url.Values{"id": {dev.ID}}, "quarantined")
}

func (h *Handler) deviceRelease(w http.ResponseWriter, r *http.Request, act Actor) error {
	dev, err := h.deviceForm(r)
	if err != nil {
		return err
	}
	if err := h.b.Release(r.Context(), act, posture.QuarantineDevice, dev.ID); err != nil {
		return err
	}
	return done(w, r, "/device", url.Values{"id": {dev.ID}}, "released")
}

// deviceApprove lets a device enrolled under devices.admin_approval reach
// apps.
func (h *Handler) deviceApprove(w http.ResponseWriter, r *http.Request, act Actor) error {
	dev, err := h.deviceForm(r)
	if err != nil {
		return err
	}
	if err := h.b.ApproveDevice(r.Context(), act, dev.ID); err != nil {
		return err
	}
	return done(w, r, "/device", url.Values{"id": {dev.ID}}, "approved")
}

func (h *Handler) deviceRevoke(w http.ResponseWriter, r *http.Request, act Actor) error {
	dev, err := h.deviceForm(r)
	if err != nil {
		return err
	}
	reason, err := formText(r, "reason", "a reason for the revocation", true)
	if err != nil {
		return err
	}
	if err := h.b.RevokeDevice(r.Context(), act, dev.ID, reason); err != nil {
		return err
	}
	return done(w, r, "/device", url.Values{"id": {dev.ID}}, "revoked")
}
