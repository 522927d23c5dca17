package console

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
)

// Apps: every app the config defines, its rules as written, who can reach
// it, and (admins) its rules edited as YAML.

const (
	// maxMessage bounds a change message.
	maxMessage = 1024
	// maxRulesYAML bounds the rules an admin submits for one app.
	maxRulesYAML = 64 << 10
	// reachOthers is how many users who cannot reach an app are listed.
	reachOthers = 20
	// maxReachDecisions bounds the decisions the app list makes to count
	// who can reach each app; above it the counts are left out.
	maxReachDecisions = 200_000
)

// appRow is one app of the list.
type appRow struct {
	App   App
	Rules int
	// Reach is how many directory users can reach the app; -1 when not
	// counted.
	Reach int
}

func (h *Handler) appList(w http.ResponseWriter, r *http.Request, act Actor) error {
	ps := h.b.Policy()
	users, err := h.b.Users(r.Context())
	if err != nil {
		return err
	}
	apps := allApps(ps)
	counted := len(users)*len(apps) <= maxReachDecisions
	now := h.now()
	subjects := make([]groups.Subject, len(users))
	for i, u := range users {
		subjects[i] = subjectOf(u.Effective())
	}
	rows := make([]appRow, len(apps))
	for i, a := range apps {
		rows[i] = appRow{App: a, Rules: len(appRules(sourceOf(ps), a.Name)), Reach: -1}
		if !counted {
			continue
		}
		rows[i].Reach = 0
		for _, s := range subjects {
			if ps.Compiled.Decide(reachRequest(ps, a, s, now)).Allow {
				rows[i].Reach++
			}
		}
	}
	h.render(w, r, act, http.StatusOK, "apps.html", "Apps", "apps", map[string]any{"Apps": rows, "Users": len(users)})
	return nil
}

// allApps are the config's apps, then any app only the policy names (a
// policy that compiled without the config's list of apps).
func allApps(ps PolicyState) []App {
	out := slices.Clone(ps.Apps)
	if ps.Source == nil {
		return out
	}
	for _, ar := range ps.Source.Apps {
		if !slices.ContainsFunc(out, func(a App) bool { return a.Name == ar.App }) {
			out = append(out, App{Name: ar.App})
		}
	}
	return out
}

func findApp(ps PolicyState, name string) (App, bool) {
	for _, a := range allApps(ps) {
		if a.Name == name {
			return a, true
		}
	}
	return App{}, false
}

// reachRequest is the request "can s reach a" is decided with: the best
// case (a device meeting every posture profile, now), the app's root, and
// for a TCP app the tunnel stream's CONNECT.
func reachRequest(ps PolicyState, a App, s groups.Subject, now time.Time) groups.Request {
	req := bestCase(ps, s)
	req.App, req.Method, req.Path, req.Time = a.Name, http.MethodGet, "/", now
	if a.TCP {
		req.Method = http.MethodConnect
	}
	return req
}

// ruleView is one rule as the app page shows it.
type ruleView struct {
	groups.Rule
	Deny    bool
	Windows []string
	// Anyone: the rule names no users or groups.
	Anyone bool
}

func viewRules(rules []groups.Rule) []ruleView {
	out := make([]ruleView, len(rules))
	for i, rl := range rules {
		v := ruleView{Rule: rl, Deny: rl.Action == groups.ActionDeny,
			Anyone: len(rl.Users) == 0 && len(rl.Groups) == 0 && len(rl.AllGroups) == 0}
		for _, tw := range rl.Time {
			v.Windows = append(v.Windows, windowText(tw))
		}
		out[i] = v
	}
	return out
}

// windowText renders a time window as it reads: "mon-fri 08:00–20:00
// Asia/Seoul".
func windowText(tw groups.TimeWindow) string {
	days := "every day"
	if len(tw.Days) > 0 {
		days = strings.Join(tw.Days, ", ")
	}
	hours := "all day"
	if tw.From != "" || tw.To != "" {
		hours = tw.From + "–" + tw.To
	}
	return days + " " + hours + " " + tw.Zone
}

// reachRow is one user on an app page: can they reach it, and why.
type reachRow struct {
	User, Email, Name string
	Decision          groups.Decision
}

// reach says who of the directory can reach app a under ps.
type reach struct {
	Allowed []reachRow
	Denied  []reachRow // the first reachOthers
	More    int        // denied users not listed
	Total   int
}

func whoReaches(ps PolicyState, a App, users []*authn.DirectoryUser, now time.Time) reach {
	out := reach{Total: len(users)}
	for _, u := range users {
		id := u.Effective()
		d := ps.Compiled.Decide(reachRequest(ps, a, subjectOf(id), now))
		row := reachRow{User: id.Subject, Email: id.Email, Name: id.Name, Decision: d}
		switch {
		case d.Allow:
			out.Allowed = append(out.Allowed, row)
		case len(out.Denied) < reachOthers:
			out.Denied = append(out.Denied, row)
		default:
			out.More++
		}
	}
	return out
}

func (h *Handler) appPage(w http.ResponseWriter, r *http.Request, act Actor) error {
	ps := h.b.Policy()
	a, ok := findApp(ps, r.URL.Query().Get("name"))
	if !ok {
		return notFound("app")
	}
	users, err := h.b.Users(r.Context())
	if err != nil {
		return err
	}
	rules := appRules(sourceOf(ps), a.Name)
	text, err := rulesYAML(rules)
	if err != nil {
		return err
	}
	h.render(w, r, act, http.StatusOK, "app.html", "App "+a.Name, "apps", map[string]any{
		"App": a, "Rules": viewRules(rules), "YAML": text, "Reach": whoReaches(ps, a, users, h.now()),
		"Files": entriesOf(ps.Source, a.Name) > 1,
	})
	return nil
}

// entriesOf counts the AppRules items that name app.
func entriesOf(src *groups.Source, app string) int {
	n := 0
	if src != nil {
		for _, ar := range src.Apps {
			if ar.App == app {
				n++
			}
		}
	}
	return n
}

// rulesYAML is the editor's text for rules: a YAML list, as in a policy
// file's `rules:`.
func rulesYAML(rules []groups.Rule) (string, error) {
	if len(rules) == 0 {
		return "", nil
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(rules); err != nil {
		return "", fmt.Errorf("encode rules: %w", err)
	}
	if err := enc.Close(); err != nil {
		return "", fmt.Errorf("encode rules: %w", err)
	}
	return b.String(), nil
}

// parseRules reads the editor's YAML strictly: one document, a list of
// rules, no unknown fields. Empty text is no rules (the app then denies
// everything).
func parseRules(text string) ([]groups.Rule, error) {
	if len(text) > maxRulesYAML {
		return nil, badInput("The rules are longer than %d KiB.", maxRulesYAML>>10)
	}
	if strings.TrimSpace(text) == "" {
		return nil, nil
	}
	dec := yaml.NewDecoder(strings.NewReader(text))
	dec.KnownFields(true)
	var rules []groups.Rule
	if err := dec.Decode(&rules); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, badInput("The rules are not a valid YAML list of rules: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, badInput("The rules must be a single YAML document (a list of rules).")
	}
	return rules, nil
}

// withAppRules is src with app's rules replaced by rules: the first item
// naming app gets them, other items naming it are dropped, and an app with
// no item gets one at the end.
func withAppRules(src *groups.Source, app string, rules []groups.Rule) *groups.Source {
	out := &groups.Source{Groups: src.Groups}
	replaced := false
	for _, ar := range src.Apps {
		if ar.App != app {
			out.Apps = append(out.Apps, ar)
			continue
		}
		if !replaced {
			out.Apps = append(out.Apps, groups.AppRules{App: app, Rules: rules})
			replaced = true
		}
	}
	if !replaced {
		out.Apps = append(out.Apps, groups.AppRules{App: app, Rules: rules})
	}
	return out
}

func (h *Handler) appRules(w http.ResponseWriter, r *http.Request, act Actor) error {
	ps := h.b.Policy()
	name := r.PostForm.Get("name")
	if _, ok := findApp(ps, name); !ok {
		return notFound("app")
	}
	rules, err := parseRules(r.PostForm.Get("rules"))
	if err != nil {
		return err
	}
	msg := strings.TrimSpace(r.PostForm.Get("message"))
	if len(msg) > maxMessage {
		return badInput("The change message is longer than %d bytes.", maxMessage)
	}
	if msg == "" {
		msg = "Rules of app " + name + " edited in the console"
	}
	return h.propose(w, r, act, ps, withAppRules(sourceOf(ps), name, rules), groups.Change{App: name, Rules: rules}, msg,
		"/app", url.Values{"name": {name}}, "saved")
}

// sourceOf is the serving policy as written; never nil.
func sourceOf(ps PolicyState) *groups.Source {
	if ps.Source == nil {
		return &groups.Source{}
	}
	return ps.Source
}
