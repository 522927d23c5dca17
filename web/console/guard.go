package console

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/internal/httperr"
)

// The escalation guard. Who may use the console is itself policy: the
// console app's rules, the groups they name, console.owner_groups, and
// the user attributes those groups read. Every change an admin makes —
// a group, an app's rules, a user's attributes — is checked before it is
// applied:
//
//   - No one may widen their own console access: not from viewer to
//     admin, not from admin to owner, not into the console at all.
//   - Only an owner may make a change that alters anyone's console
//     access, or that touches the console's rules or the groups they (and
//     console.owner_groups) name, even if nobody's access moves today.
//
// Access is compared as the policy decides it for a device that meets
// every posture profile, from anywhere, now: what the person could do at
// best, so a rule that also requires a device or a network does not hide
// a change.

// RoleOf is what req's subject may do in the console under policy p: the
// console app's rules decide viewing (GET) and changing (POST) the
// console's root; an admin in one of owners is an owner. The edge calls
// it with the real request; the guard with a best-case one.
func RoleOf(p *groups.Policy, consoleApp string, owners []string, req groups.Request) Role {
	if p == nil || consoleApp == "" {
		return 0
	}
	req.App, req.Path = consoleApp, "/"
	req.Method = http.MethodPost
	if !p.Decide(req).Allow {
		req.Method = http.MethodGet
		if p.Decide(req).Allow {
			return RoleViewer
		}
		return 0
	}
	if len(owners) > 0 {
		if in, err := p.Groups(req.Subject, req.Device); err == nil {
			for _, g := range in {
				if slices.Contains(owners, g) {
					return RoleOwner
				}
			}
		}
	}
	return RoleAdmin
}

// bestCase is the request the guard decides for a subject.
func bestCase(ps PolicyState, s groups.Subject) groups.Request {
	d := &groups.Device{ID: "console-guard"}
	for name := range ps.Profiles {
		d.Profiles = append(d.Profiles, name)
	}
	slices.Sort(d.Profiles)
	return groups.Request{Subject: s, Device: d}
}

// subjectOf is how the policy sees a directory user.
func subjectOf(id authn.Identity) groups.Subject {
	return groups.Subject{User: id.Subject, Email: id.Email, Groups: id.Groups, Attributes: id.Attributes}
}

// proposal is a change the guard checks: a new policy, or new attributes
// for one user (after is then the serving policy).
type proposal struct {
	after    *groups.Policy
	afterSrc *groups.Source
	// user and attrs: the user whose effective identity changes, and to
	// what ("" for a policy change).
	user  string
	attrs groups.Subject
}

// guard refuses a proposal that escalates the actor or, from a non-owner,
// touches console access. A refusal is audited like a change: someone
// tried.
func (h *Handler) guard(ctx context.Context, act Actor, ps PolicyState, pr proposal) error {
	err := h.check(ctx, act, ps, pr)
	if he, ok := err.(*httperr.Error); ok && he.Code == "escalation" {
		h.b.Record(audit.Event{Kind: "admin", Decision: "refused", User: pr.user, Reason: he.Message,
			Source: "console", Actor: act.Email + " (" + act.User + ")"})
	}
	return err
}

func (h *Handler) check(ctx context.Context, act Actor, ps PolicyState, pr proposal) error {
	if pr.user != "" && pr.user == act.User {
		return refuse("You cannot change your own attributes: ask another admin.")
	}
	users, err := h.b.Users(ctx)
	if err != nil {
		return err
	}
	subjects := make([]groups.Subject, 0, len(users)+1)
	seenActor := false
	for _, u := range users {
		s := subjectOf(u.Effective())
		seenActor = seenActor || s.User == act.User
		subjects = append(subjects, s)
	}
	if !seenActor {
		subjects = append(subjects, act.Subject)
	}
	owner := act.Role >= RoleOwner
	var moved string
	for _, s := range subjects {
		before := RoleOf(ps.Compiled, ps.ConsoleApp, ps.OwnerGroups, bestCase(ps, s))
		afterSubj := s
		if pr.user != "" && s.User == pr.user {
			afterSubj = pr.attrs
		}
		after := RoleOf(pr.after, ps.ConsoleApp, ps.OwnerGroups, bestCase(ps, afterSubj))
		if s.User == act.User && after > before {
			return refuse(fmt.Sprintf("This change would raise your own console access from %s to %s. Ask another owner to make it.", roleName(before), roleName(after)))
		}
		if after != before && moved == "" {
			moved = fmt.Sprintf("%s from %s to %s", nameOf(s), roleName(before), roleName(after))
		}
	}
	if owner {
		return nil
	}
	if moved != "" {
		return refuse("Only console owners may change who can use the console: this change would move " + moved + ".")
	}
	if pr.afterSrc != nil && touchesConsole(ps, pr.afterSrc) {
		return refuse("Only console owners may change the console's rules or the groups that grant console access.")
	}
	return nil
}

func roleName(r Role) string {
	if r == 0 {
		return "no access"
	}
	return r.String()
}

func nameOf(s groups.Subject) string {
	if s.Email != "" {
		return s.Email
	}
	return s.User
}

func refuse(msg string) error {
	return &httperr.Error{Status: http.StatusForbidden, Code: "escalation", Title: "Not allowed", Message: msg}
}

// touchesConsole reports whether after differs from the serving policy in
// the console app's rules or in a group that grants console access.
func touchesConsole(ps PolicyState, after *groups.Source) bool {
	before := ps.Source
	if !reflect.DeepEqual(appRules(before, ps.ConsoleApp), appRules(after, ps.ConsoleApp)) {
		return true
	}
	for name := range protectedGroups(before, ps).union(protectedGroups(after, ps)) {
		if !reflect.DeepEqual(groupDef(before, name), groupDef(after, name)) {
			return true
		}
	}
	return false
}

// appRules are the rules of app in src.
func appRules(src *groups.Source, app string) []groups.Rule {
	var out []groups.Rule
	for _, ar := range src.Apps {
		if ar.App == app {
			out = append(out, ar.Rules...)
		}
	}
	return out
}

func groupDef(src *groups.Source, name string) *groups.Group {
	for i := range src.Groups {
		if src.Groups[i].Name == name {
			return &src.Groups[i]
		}
	}
	return nil
}

type nameSet map[string]bool

func (a nameSet) union(b nameSet) nameSet {
	for k := range b {
		a[k] = true
	}
	return a
}

// protectedGroups are the groups that grant console access in src: those
// the console's rules and console.owner_groups name, and every group they
// include.
func protectedGroups(src *groups.Source, ps PolicyState) nameSet {
	set := nameSet{}
	var walk func(string)
	walk = func(name string) {
		if strings.HasPrefix(name, "idp:") || set[name] {
			return
		}
		set[name] = true
		if g := groupDef(src, name); g != nil {
			for _, inc := range g.Include {
				walk(inc)
			}
		}
	}
	for _, r := range appRules(src, ps.ConsoleApp) {
		for _, g := range r.Groups {
			walk(g)
		}
		for _, g := range r.AllGroups {
			walk(g)
		}
	}
	for _, g := range ps.OwnerGroups {
		walk(g)
	}
	return set
}
