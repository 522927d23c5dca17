package console

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/internal/audit"
)

// The audit log: this replica's recent events, filtered, newest first,
// paged backwards by sequence number.

// auditFields are the filter's text fields, in form order.
var auditFields = []string{"user", "device", "app", "kind", "decision", "text", "since", "until", "limit"}

// auditKinds are the event kinds offered as suggestions.
var auditKinds = []string{"request", "stream", "stream_close", "admin", "signal"}

// datetime-local values, with and without seconds.
const (
	localMinute = "2006-01-02T15:04"
	localSecond = "2006-01-02T15:04:05"
)

// parseLocal reads a datetime-local value in loc.
func parseLocal(s string, loc *time.Location) (time.Time, error) {
	t, err := time.ParseInLocation(localMinute, s, loc)
	if err != nil {
		t, err = time.ParseInLocation(localSecond, s, loc)
	}
	return t, err
}

// auditQuery reads the filter form. Every value is bounded; a value that
// cannot be read is reported, never ignored (an ignored filter would show
// more than the admin asked for, silently).
func auditQuery(v url.Values) (audit.Query, []string) {
	var q audit.Query
	var errs []string
	for _, f := range slices.Concat(auditFields, []string{"before"}) {
		if len(v.Get(f)) > maxField {
			errs = append(errs, "The "+f+" filter is longer than "+strconv.Itoa(maxField)+" bytes.")
		}
	}
	if len(errs) > 0 {
		return q, errs
	}
	q.User = strings.TrimSpace(v.Get("user"))
	q.Device = strings.TrimSpace(v.Get("device"))
	q.App = strings.TrimSpace(v.Get("app"))
	q.Kind = strings.TrimSpace(v.Get("kind"))
	q.Decision = strings.TrimSpace(v.Get("decision"))
	q.Text = strings.TrimSpace(v.Get("text"))
	for _, tf := range []struct {
		field string
		dst   *time.Time
	}{{"since", &q.Since}, {"until", &q.Until}} {
		s := strings.TrimSpace(v.Get(tf.field))
		if s == "" {
			continue
		}
		t, err := parseLocal(s, time.UTC)
		if err != nil {
			errs = append(errs, "The "+tf.field+" time is not a date and time (YYYY-MM-DDTHH:MM, UTC).")
			continue
		}
		*tf.dst = t
	}
	if s := strings.TrimSpace(v.Get("limit")); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > audit.MaxFindLimit {
			errs = append(errs, "The limit must be a number from 1 to "+strconv.Itoa(audit.MaxFindLimit)+".")
		}
		q.Limit = n
	}
	if s := strings.TrimSpace(v.Get("before")); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n == 0 {
			errs = append(errs, "The page cursor is not valid; start again from the newest events.")
		}
		q.Before = n
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		errs = append(errs, "The since time must be before the until time.")
	}
	return q, errs
}

// auditForm is the filter as the form shows it back.
type auditForm struct {
	User, Device, App, Kind, Decision, Text, Since, Until, Limit string
}

func (h *Handler) auditPage(w http.ResponseWriter, r *http.Request, act Actor) error {
	v := r.URL.Query()
	f := auditForm{}
	// Shown back only when bounded: an over-long value is reported, not
	// echoed.
	clip := func(s string) string {
		if len(s) > maxField {
			return ""
		}
		return s
	}
	f.User, f.Device, f.App, f.Kind = clip(v.Get("user")), clip(v.Get("device")), clip(v.Get("app")), clip(v.Get("kind"))
	f.Decision, f.Text, f.Since, f.Until, f.Limit = clip(v.Get("decision")), clip(v.Get("text")), clip(v.Get("since")), clip(v.Get("until")), clip(v.Get("limit"))

	data := map[string]any{"Form": f, "Kinds": auditKinds, "Replica": h.b.Replica()}
	q, errs := auditQuery(v)
	if len(errs) > 0 {
		data["Errors"] = errs
		h.render(w, r, act, http.StatusBadRequest, "audit.html", "Audit log", "audit", data)
		return nil
	}
	entries, more := h.b.Audit(q)
	data["Entries"] = entries
	filters := url.Values{}
	for _, k := range auditFields {
		if s := v.Get(k); s != "" {
			filters.Set(k, s)
		}
	}
	if q.Before != 0 {
		data["Newest"] = "/audit?" + filters.Encode()
	}
	if more && len(entries) > 0 {
		filters.Set("before", strconv.FormatUint(entries[len(entries)-1].Seq, 10))
		data["Older"] = "/audit?" + filters.Encode()
	}
	h.render(w, r, act, http.StatusOK, "audit.html", "Audit log", "audit", data)
	return nil
}
