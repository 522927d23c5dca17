package console

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/posture"
)

// Users: the directory, one user's attributes, groups (with reasons),
// app access, devices and sessions, and the admin's changes to them.

type userRow struct {
	User     *authn.DirectoryUser
	Identity authn.Identity // effective
	Groups   []string
	Sessions int
}

func (h *Handler) userList(w http.ResponseWriter, r *http.Request, act Actor) error {
	ps := h.b.Policy()
	users, err := h.b.Users(r.Context())
	if err != nil {
		return err
	}
	sessions, err := h.b.Sessions(r.Context(), "")
	if err != nil {
		return err
	}
	perUser := map[string]int{}
	for _, s := range sessions {
		perUser[s.User]++
	}
	filter := strings.ToLower(strings.TrimSpace(r.URL.Query().Get("q")))
	rows := make([]userRow, 0, len(users))
	for _, u := range users {
		id := u.Effective()
		if filter != "" && !strings.Contains(strings.ToLower(id.Email+" "+id.Name+" "+id.Subject+" "+attrsLine(id.Attributes)), filter) {
			continue
		}
		in, _ := ps.Compiled.Groups(subjectOf(id), nil)
		rows = append(rows, userRow{User: u, Identity: id, Groups: in, Sessions: perUser[id.Subject]})
	}
	h.render(w, r, act, http.StatusOK, "users.html", "Users", "users", map[string]any{"Users": rows, "Query": filter})
	return nil
}

func attrsLine(a map[string]string) string {
	keys := slices.Sorted(maps.Keys(a))
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s ", k, a[k])
	}
	return b.String()
}

// attrRow is one attribute of a user: as the IdP says, as overridden, as
// the policy sees it.
type attrRow struct {
	Name      string
	IdP       string
	Override  string
	HasIdP    bool
	Overrides bool
	Effective string
}

// appAccess is whether a user can reach an app (from a device meeting
// every profile) and why.
type appAccess struct {
	App      App
	Decision groups.Decision
}

func (h *Handler) userPage(w http.ResponseWriter, r *http.Request, act Actor) error {
	sub := r.URL.Query().Get("sub")
	u, err := h.b.User(r.Context(), sub)
	if err != nil {
		return err
	}
	ps := h.b.Policy()
	id := u.Effective()
	subj := subjectOf(id)
	x, err := ps.Compiled.ExplainGroups(subj, nil)
	if err != nil {
		return err
	}
	var access []appAccess
	now := h.now()
	for _, a := range ps.Apps {
		access = append(access, appAccess{App: a, Decision: ps.Compiled.Decide(reachRequest(ps, a, subj, now))})
	}
	devices, err := h.b.Devices(r.Context(), sub)
	if err != nil {
		return err
	}
	sessions, err := h.b.Sessions(r.Context(), sub)
	if err != nil {
		return err
	}
	var quarantined *posture.QuarantineEntry
	for _, q := range h.b.Quarantines() {
		if q.Kind == posture.QuarantineUser && q.ID == sub {
			quarantined = &q
		}
	}
	h.render(w, r, act, http.StatusOK, "user.html", nameOrEmail(id), "users", map[string]any{
		"User": u, "Identity": id, "Attrs": attrRows(u), "Overrides": overridesText(u.Overrides),
		"Groups": x, "Access": access, "Devices": devices, "Sessions": sessions, "Quarantine": quarantined,
		"Self": sub == act.User, "Role": RoleOf(ps.Compiled, ps.ConsoleApp, ps.OwnerGroups, bestCase(ps, subj)),
	})
	return nil
}

func nameOrEmail(id authn.Identity) string {
	switch {
	case id.Name != "":
		return id.Name
	case id.Email != "":
		return id.Email
	}
	return id.Subject
}

func attrRows(u *authn.DirectoryUser) []attrRow {
	eff := u.Effective().Attributes
	names := map[string]bool{}
	for k := range u.IdP.Attributes {
		names[k] = true
	}
	for k := range u.Overrides {
		names[k] = true
	}
	var out []attrRow
	for _, k := range slices.Sorted(maps.Keys(names)) {
		idp, hasIdP := u.IdP.Attributes[k]
		o, over := u.Overrides[k]
		out = append(out, attrRow{Name: k, IdP: idp, HasIdP: hasIdP, Override: o, Overrides: over, Effective: eff[k]})
	}
	return out
}

func overridesText(o map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(o)) {
		fmt.Fprintf(&b, "%s=%s\n", k, o[k])
	}
	return b.String()
}

// parseOverrides reads "name=value" lines; an empty value hides the IdP's
// attribute.
func parseOverrides(s string) (map[string]string, error) {
	out := map[string]string{}
	for i, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, badInput("Line %d: write attributes as name=value.", i+1)
		}
		k = strings.TrimSpace(k)
		if _, dup := out[k]; dup {
			return nil, badInput("Line %d: %q is set twice.", i+1, k)
		}
		out[k] = strings.TrimSpace(v)
	}
	if err := authn.CheckOverrides(out); err != nil {
		return nil, badInput("%s.", err.Error())
	}
	return out, nil
}

func (h *Handler) userAttributes(w http.ResponseWriter, r *http.Request, act Actor) error {
	sub := r.PostForm.Get("sub")
	u, err := h.b.User(r.Context(), sub)
	if err != nil {
		return err
	}
	o, err := parseOverrides(r.PostForm.Get("overrides"))
	if err != nil {
		return err
	}
	next := *u
	next.Overrides = o
	ps := h.b.Policy()
	if err := h.guard(r.Context(), act, ps, proposal{after: ps.Compiled, user: sub, attrs: subjectOf(next.Effective())}); err != nil {
		return err
	}
	if _, err := h.b.SetAttributes(r.Context(), act, sub, o); err != nil {
		return err
	}
	return done(w, r, "/user", url.Values{"sub": {sub}}, "attributes")
}

func (h *Handler) userSignOut(w http.ResponseWriter, r *http.Request, act Actor) error {
	sub := r.PostForm.Get("sub")
	if _, err := h.b.User(r.Context(), sub); err != nil {
		return err
	}
	if _, err := h.b.SignOut(r.Context(), act, sub); err != nil {
		return err
	}
	return done(w, r, "/user", url.Values{"sub": {sub}}, "signed-out")
}

// userQuarantine isolates (or, with release set, releases) a user: every
// request of theirs is refused, from any device.
func (h *Handler) userQuarantine(w http.ResponseWriter, r *http.Request, act Actor) error {
	sub := r.PostForm.Get("sub")
	if _, err := h.b.User(r.Context(), sub); err != nil {
		return err
	}
	if sub == act.User {
		return refuse("You cannot quarantine or release yourself.")
	}
	if r.PostForm.Get("release") != "" {
		if err := h.b.Release(r.Context(), act, posture.QuarantineUser, sub); err != nil {
			return err
		}
		return done(w, r, "/user", url.Values{"sub": {sub}}, "released")
	}
	if err := h.b.Quarantine(r.Context(), act, posture.QuarantineUser, sub, r.PostForm.Get("reason"), r.PostForm.Get("fix")); err != nil {
		return err
	}
	return done(w, r, "/user", url.Values{"sub": {sub}}, "quarantined")
}
