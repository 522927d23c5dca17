package console

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/posture"
)

// The what-if simulator: pick or describe a user, a device, an app, a
// method and path, a time and a source address, and see the decision with
// its whole explanation — the same engine and the same words as
// `ztna policy explain`. It changes nothing, so it is a GET viewers may
// use too.

// Limits of the simulator's form.
const (
	maxWhatIfPath   = 1024
	maxWhatIfMethod = 32
	maxWhatIfZone   = 64
	maxWhatIfList   = 64 // IdP groups, attributes, profiles
	maxAttrKeyLen   = 64
	whatIfDevices   = 1000 // devices offered in the device select
)

// Device modes of the form.
const (
	whatIfNoDevice = "none"
	whatIfEnrolled = "enrolled"
	whatIfProfiles = "profiles"
	whatIfCustom   = "custom"
)

// whatIfForm is the simulator's form, as submitted and as shown back.
type whatIfForm struct {
	User                             string // a directory user's subject, or whatIfCustom
	Subject, Email, IdPGroups, Attrs string // the custom user
	DeviceMode                       string
	DeviceID                         string
	Profiles                         map[string]bool
	Platform                         string
	App, Method, Path, Time, Zone    string
	Source                           string
}

func readWhatIf(v url.Values, ps PolicyState) whatIfForm {
	f := whatIfForm{
		User: v.Get("user"), Subject: strings.TrimSpace(v.Get("subject")), Email: strings.TrimSpace(v.Get("email")),
		IdPGroups: v.Get("idp_groups"), Attrs: v.Get("attrs"),
		DeviceMode: v.Get("device_mode"), DeviceID: v.Get("device_id"), Platform: strings.TrimSpace(v.Get("platform")),
		App: v.Get("app"), Method: strings.TrimSpace(v.Get("method")), Path: strings.TrimSpace(v.Get("path")),
		Time: strings.TrimSpace(v.Get("time")), Zone: strings.TrimSpace(v.Get("zone")), Source: strings.TrimSpace(v.Get("source")),
		Profiles: map[string]bool{},
	}
	if v.Get("run") == "" {
		// A fresh form: the best case the rest of the console uses.
		f.DeviceMode = whatIfProfiles
		for name := range ps.Profiles {
			f.Profiles[name] = true
		}
	} else {
		for _, p := range v["profile"] {
			if len(f.Profiles) < maxWhatIfList {
				f.Profiles[p] = true
			}
		}
	}
	if f.DeviceMode == "" {
		f.DeviceMode = whatIfNoDevice
	}
	if f.Method == "" {
		f.Method = http.MethodGet
	}
	if f.Path == "" {
		f.Path = "/"
	}
	if f.Zone == "" {
		f.Zone = "UTC"
	}
	return f
}

// whatIfResult is a decided request and its explanation.
type whatIfResult struct {
	Request     groups.Request
	Explanation groups.Explanation
	Zone        string
	// Notes are what the edge would do before the policy decides
	// (a quarantine, a revoked device), which the explanation does not
	// show.
	Notes []string
}

// whatIfOption is one entry of a select.
type whatIfOption struct {
	Value, Label string
}

// checkedProfile is one profile checkbox.
type checkedProfile struct {
	Name    string
	Checked bool
}

func (h *Handler) whatIf(w http.ResponseWriter, r *http.Request, act Actor) error {
	ctx := r.Context()
	ps := h.b.Policy()
	q := r.URL.Query()
	f := readWhatIf(q, ps)
	users, err := h.b.Users(ctx)
	if err != nil {
		return err
	}
	devices, err := h.b.Devices(ctx, "")
	if err != nil {
		return err
	}
	owners := indexUsers(users)

	userOpts := make([]whatIfOption, 0, len(users))
	for _, u := range users {
		id := u.Effective()
		label := id.Subject
		if id.Email != "" {
			label = id.Email
		}
		if id.Name != "" {
			label += " (" + id.Name + ")"
		}
		userOpts = append(userOpts, whatIfOption{Value: id.Subject, Label: label})
	}
	slices.SortFunc(userOpts, func(a, b whatIfOption) int { return strings.Compare(a.Label, b.Label) })
	var devOpts []whatIfOption
	for _, d := range devices {
		if d.Revoked || len(devOpts) == whatIfDevices {
			continue
		}
		devOpts = append(devOpts, whatIfOption{Value: d.ID,
			Label: fmt.Sprintf("%s · %s · %s", cmp.Or(d.Name, d.ID), d.Platform, ownerName(owners, d.UserID))})
	}
	var appOpts []string
	for _, a := range allApps(ps) {
		appOpts = append(appOpts, a.Name)
	}
	names := profileNames(ps)
	checked := make([]checkedProfile, len(names))
	for i, n := range names {
		checked[i] = checkedProfile{Name: n, Checked: f.Profiles[n]}
	}
	data := map[string]any{"Form": f, "Users": userOpts, "Devices": devOpts, "Apps": appOpts, "Profiles": checked}

	status := http.StatusOK
	if q.Get("run") != "" {
		res, errs := h.simulate(ctx, ps, f, owners)
		if len(errs) > 0 {
			data["Errors"] = errs
			status = http.StatusBadRequest
		} else {
			data["Result"] = res
		}
	}
	h.render(w, r, act, status, "whatif.html", "What if", "whatif", data)
	return nil
}

// simulate builds the request the form describes and explains its
// decision, or says what is wrong with the form.
func (h *Handler) simulate(ctx context.Context, ps PolicyState, f whatIfForm, owners map[string]*authn.DirectoryUser) (*whatIfResult, []string) {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	res := &whatIfResult{Zone: f.Zone}
	req := &res.Request

	// Who.
	switch {
	case f.User == "":
		bad("Choose a user, or describe one.")
	case f.User == whatIfCustom:
		s, msgs := customSubject(f)
		errs = append(errs, msgs...)
		req.Subject = s
	default:
		u := owners[f.User]
		if u == nil {
			bad("The user %q is not in the directory.", clipText(f.User))
			break
		}
		req.Subject = subjectOf(u.Effective())
	}

	// What.
	if _, ok := findApp(ps, f.App); !ok {
		bad("Choose an app.")
	}
	req.App = f.App
	if len(f.Method) > maxWhatIfMethod || !isMethodToken(f.Method) {
		bad("The method %q is not an HTTP method (a token such as GET, POST or CONNECT).", clipText(f.Method))
	}
	req.Method = f.Method
	switch {
	case len(f.Path) > maxWhatIfPath:
		bad("The path is longer than %d bytes.", maxWhatIfPath)
	case !strings.HasPrefix(f.Path, "/"):
		bad("The path must start with \"/\" (got %q).", clipText(f.Path))
	}
	req.Path = f.Path

	// From where and when.
	if f.Source != "" {
		a, err := netip.ParseAddr(f.Source)
		if err != nil || len(f.Source) > maxField {
			bad("The source %q is not an IP address.", clipText(f.Source))
		}
		req.Source = a.Unmap()
	}
	var loc *time.Location
	if len(f.Zone) > maxWhatIfZone || f.Zone == "Local" {
		bad("The time zone %q is not an IANA time zone name such as Asia/Seoul or UTC.", clipText(f.Zone))
	} else if l, err := time.LoadLocation(f.Zone); err != nil {
		bad("The time zone %q is not an IANA time zone name such as Asia/Seoul or UTC.", clipText(f.Zone))
	} else {
		loc = l
	}
	req.Time = h.now()
	if f.Time != "" && loc != nil {
		t, err := parseLocal(f.Time, loc)
		if err != nil || len(f.Time) > maxField {
			bad("The time %q is not a date and time (YYYY-MM-DDTHH:MM).", clipText(f.Time))
		}
		req.Time = t
	}
	if loc != nil {
		req.Time = req.Time.In(loc)
	}

	// Which device.
	switch f.DeviceMode {
	case whatIfNoDevice:
	case whatIfEnrolled:
		d, notes, msg := h.enrolledDevice(ctx, ps, f.DeviceID, req.Subject.User)
		if msg != "" {
			bad("%s", msg)
		}
		req.Device, res.Notes = d, notes
	case whatIfProfiles:
		d := &groups.Device{ID: "what-if", Platform: f.Platform}
		if len(f.Platform) > maxField {
			bad("The platform is longer than %d bytes.", maxField)
		}
		for _, name := range slices.Sorted(maps.Keys(f.Profiles)) {
			if ps.Profiles[name] == nil {
				bad("There is no posture profile %q.", clipText(name))
				continue
			}
			d.Profiles = append(d.Profiles, name)
		}
		req.Device = d
	default:
		bad("Choose no device, an enrolled device, or a device meeting profiles.")
	}
	if req.Subject.User != "" && f.User != whatIfCustom {
		if e, ok := quarantined(h.b.Quarantines())[posture.QuarantineUser+":"+req.Subject.User]; ok {
			res.Notes = append(res.Notes, "The user is quarantined ("+e.Reason+"): the edge refuses every request of theirs before the policy decides.")
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	res.Explanation = ps.Compiled.Explain(*req)
	return res, nil
}

// enrolledDevice describes a real device as the edge would: its platform
// from its latest report, and the profiles that report passes now.
func (h *Handler) enrolledDevice(ctx context.Context, ps PolicyState, id, user string) (*groups.Device, []string, string) {
	if id == "" {
		return nil, nil, "Choose an enrolled device."
	}
	dev, err := h.lookupDevice(ctx, id)
	if err != nil {
		return nil, nil, fmt.Sprintf("There is no enrolled device %q.", clipText(id))
	}
	var notes []string
	if dev.Revoked {
		notes = append(notes, "The device is revoked: the edge refuses its certificate before the policy decides.")
	}
	if user != "" && dev.UserID != user {
		notes = append(notes, "The device belongs to another user: the edge refuses it for this one before the policy decides.")
	}
	if e, ok := quarantined(h.b.Quarantines())[posture.QuarantineDevice+":"+dev.ID]; ok {
		notes = append(notes, "The device is quarantined ("+e.Reason+"): the edge refuses it before the policy decides.")
	}
	d := &groups.Device{ID: dev.ID}
	ev := h.b.Evidence(dev.ID)
	if ev != nil && ev.Report != nil {
		d.Platform = ev.Report.OS.Name
	}
	now := h.now()
	for _, name := range profileNames(ps) {
		if ps.Profiles[name].Evaluate(ev, now).OK {
			d.Profiles = append(d.Profiles, name)
		}
	}
	return d, notes, ""
}

// customSubject reads the described user.
func customSubject(f whatIfForm) (groups.Subject, []string) {
	var errs []string
	s := groups.Subject{User: f.Subject, Email: f.Email}
	switch {
	case s.User == "":
		errs = append(errs, "Give the described user an ID (the OIDC subject).")
	case len(s.User) > maxField:
		errs = append(errs, fmt.Sprintf("The user ID is longer than %d bytes.", maxField))
	}
	if len(s.Email) > maxField {
		errs = append(errs, fmt.Sprintf("The email is longer than %d bytes.", maxField))
	}
	s.Groups = splitList(f.IdPGroups)
	if len(s.Groups) > maxWhatIfList {
		errs = append(errs, fmt.Sprintf("List at most %d IdP groups.", maxWhatIfList))
	}
	for _, g := range s.Groups {
		if len(g) > maxField {
			errs = append(errs, fmt.Sprintf("An IdP group is longer than %d bytes.", maxField))
			break
		}
	}
	s.Attributes = map[string]string{}
	for i, line := range strings.Split(f.Attrs, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok || k == "":
			errs = append(errs, fmt.Sprintf("Attributes line %d: write name=value.", i+1))
		case len(k) > maxAttrKeyLen || len(v) > maxField:
			errs = append(errs, fmt.Sprintf("Attributes line %d: the name is limited to %d bytes and the value to %d.", i+1, maxAttrKeyLen, maxField))
		case len(s.Attributes) == maxWhatIfList:
			errs = append(errs, fmt.Sprintf("Give at most %d attributes.", maxWhatIfList))
		default:
			if _, dup := s.Attributes[k]; dup {
				errs = append(errs, fmt.Sprintf("Attributes line %d: %q is set twice.", i+1, clipText(k)))
			}
			s.Attributes[k] = v
		}
	}
	return s, errs
}

// isMethodToken reports whether s is an RFC 9110 token, the syntax of a
// method.
func isMethodToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// clipText shortens a value quoted back in an error message.
func clipText(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
