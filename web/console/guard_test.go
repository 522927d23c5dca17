package console

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/internal/httperr"
)

// guardWorld is the fake world with owners: group "owners" (members:
// u-admin) owns the console, and console-admins also admits the IT
// department by attribute.
func guardWorld(t *testing.T) *harness {
	t.Helper()
	hs := newHarness(t)
	src := hs.f.ps.Source
	for i := range src.Groups {
		if src.Groups[i].Name == "console-admins" {
			src.Groups[i].When = `user.department == "IT"`
		}
	}
	src.Groups = append(src.Groups, groups.Group{Name: "owners", Members: []string{"u-admin"}})
	p, err := hs.f.Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	hs.f.ps.Compiled, hs.f.ps.OwnerGroups = p, []string{"owners"}
	return hs
}

func TestRoleOf(t *testing.T) {
	hs := guardWorld(t)
	ps := hs.f.ps
	for _, tc := range []struct {
		user string
		want Role
	}{{"u-admin", RoleOwner}, {"u-alice", 0}, {"u-bob", 0}} {
		u, _ := hs.f.User(context.Background(), tc.user)
		if got := RoleOf(ps.Compiled, ps.ConsoleApp, ps.OwnerGroups, bestCase(ps, subjectOf(u.Effective()))); got != tc.want {
			t.Errorf("%s: role %v, want %v", tc.user, got, tc.want)
		}
	}
	if got := RoleOf(ps.Compiled, "", ps.OwnerGroups, groups.Request{}); got != 0 {
		t.Errorf("no console app: role %v, want none", got)
	}
}

// TestGuardEscalation posts changes as the admin u-admin with a given
// role: which go through (the backend commits or sets attributes) and
// which are refused, with the refusal audited.
func TestGuardEscalation(t *testing.T) {
	groupForm := func(orig, name, when, members string) url.Values {
		return url.Values{"orig": {orig}, "name": {name}, "when": {when}, "members": {members}, "parent": {"3"}}
	}
	for _, tc := range []struct {
		name    string
		role    Role
		path    string
		form    url.Values
		refused string // "" → the change goes through
	}{
		{"admin edits an ordinary group", RoleAdmin, "/group/save",
			groupForm("security", "security", `user.department in ["Security Tech", "Sales"]`, ""), ""},
		{"admin puts bob into the console", RoleAdmin, "/group/save",
			groupForm("console-admins", "console-admins", `user.department == "IT"`, "u-admin\nu-bob"), "Only console owners may change who can use the console: this change would move bob@example.com from no access to admin"},
		{"admin touches a console group without moving anyone", RoleAdmin, "/group/save",
			url.Values{"orig": {"console-admins"}, "name": {"console-admins"}, "when": {`user.department == "IT"`}, "members": {"u-admin"}, "description": {"new words"}},
			"Only console owners may change the console's rules or the groups that grant console access"},
		{"admin deletes the owners group", RoleAdmin, "/group/delete", url.Values{"name": {"owners"}}, "Only console owners"},
		{"admin moves bob into IT", RoleAdmin, "/user/attributes", url.Values{"sub": {"u-bob"}, "overrides": {"department=IT"}}, "Only console owners"},
		{"admin changes bob's title", RoleAdmin, "/user/attributes", url.Values{"sub": {"u-bob"}, "overrides": {"title=Lead"}}, ""},
		{"nobody changes their own attributes", RoleOwner, "/user/attributes", url.Values{"sub": {"u-admin"}, "overrides": {"title=CEO"}}, "You cannot change your own attributes"},
		{"owner puts bob into the console", RoleOwner, "/group/save",
			groupForm("console-admins", "console-admins", `user.department == "IT"`, "u-admin\nu-bob"), ""},
		{"owner moves bob into IT", RoleOwner, "/user/attributes", url.Values{"sub": {"u-bob"}, "overrides": {"department=IT"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := guardWorld(t)
			tc.form.Set("csrf", "tok")
			res, body := hs.do(t, tc.role, http.MethodPost, tc.path, tc.form)
			calls := hs.f.Calls()
			refusals, _ := hs.f.recent.Find(audit.Query{Decision: "refused"})
			if tc.refused == "" {
				if res.StatusCode != http.StatusSeeOther || len(calls) != 1 {
					t.Fatalf("status %d, calls %q, want the change made: %.400s", res.StatusCode, calls, body)
				}
				return
			}
			if res.StatusCode != http.StatusForbidden || len(calls) != 0 {
				t.Fatalf("status %d, calls %q, want 403 and nothing changed", res.StatusCode, calls)
			}
			if !strings.Contains(body, htmlEscape(tc.refused)) {
				t.Errorf("page does not say %q: %.600s", tc.refused, body)
			}
			if tc.path != "/user/attributes" || tc.form.Get("sub") != "u-admin" {
				if len(refusals) != 1 || refusals[0].Actor != "admin@example.com (u-admin)" || !strings.Contains(refusals[0].Reason, tc.refused) {
					t.Errorf("refusal audit %+v", refusals)
				}
			}
		})
	}
}

// Nobody, owner or not, raises their own console access: alice (no
// access) adding herself to a console group is refused whatever role the
// edge gave her, and so is bob becoming an owner through a group edit by
// bob.
func TestGuardSelfEscalation(t *testing.T) {
	hs := guardWorld(t)
	ps := hs.f.ps
	ctx := context.Background()
	for _, tc := range []struct {
		actor, group, member string
		want                 string
	}{
		{"u-alice", "console-admins", "u-alice", "raise your own console access from no access to admin"},
		{"u-admin", "owners", "u-admin", ""}, // already an owner: nothing rises
	} {
		g := *groupDef(ps.Source, tc.group)
		g.Members = append(append([]string(nil), g.Members...), tc.member)
		src := withGroup(ps.Source, tc.group, &g)
		p, err := hs.f.Compile(src)
		if err != nil {
			t.Fatal(err)
		}
		act := Actor{User: tc.actor, Email: tc.actor + "@example.com", Role: RoleOwner}
		err = hs.h.guard(ctx, act, ps, proposal{after: p, afterSrc: src})
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s editing %s: %v", tc.actor, tc.group, err)
			}
			continue
		}
		if he := httperr.As(err); err == nil || he.Status != http.StatusForbidden || !strings.Contains(he.Message, tc.want) {
			t.Errorf("%s adding themselves to %s: %v, want %q", tc.actor, tc.group, err, tc.want)
		}
	}
}

func htmlEscape(s string) string {
	return strings.NewReplacer(`"`, "&#34;", "'", "&#39;", "<", "&lt;", ">", "&gt;", "&", "&amp;").Replace(s)
}
