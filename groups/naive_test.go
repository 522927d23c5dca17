package groups

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/casbin/casbin/v2"
	"github.com/casbin/casbin/v2/model"
)

// The baseline the design is measured against: the same policy written as
// one Casbin model the way a newcomer to Casbin's ABAC would write it —
// one policy row per (rule, path pattern), the rule's subject condition
// stored in the row and run with eval(), Casbin scanning every row of
// every app on every request. Only the benchmark and its shape test use
// it; it shows what indexing, one compiled matcher per group and the
// membership cache buy.
//
// What the translation cannot say: time windows and source networks (the
// request has no time or address). Rules that have them keep their other
// conditions, so the naive model costs the same, but apps with such rules
// (benchApp.context) are left out of the comparison with Policy.Decide.
const naiveModelText = `[request_definition]
r = sub, app, act, path
[policy_definition]
p = app, act, path, cond, eft
[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))
[matchers]
m = r.app == p.app && regexMatch(r.act, p.act) && keyMatch2(r.path, p.path) && eval(p.cond)
`

// naiveModel is the policy as one Casbin enforcer.
type naiveModel struct {
	enf  *casbin.SyncedEnforcer
	refs []string // every attribute any row's condition reads: the keys of r.sub
	rows int
}

// newNaiveModel translates src into the naive model.
func newNaiveModel(src *Source) (*naiveModel, error) {
	x := naiveTranslator{byName: map[string]*Group{}, memo: map[string]string{}}
	for i := range src.Groups {
		x.byName[src.Groups[i].Name] = &src.Groups[i]
	}
	refs := map[string]bool{}
	seen := map[string]bool{}
	var rows [][]string
	for _, ar := range src.Apps {
		for _, r := range ar.Rules {
			if len(r.Users) > 0 || len(r.AllGroups) > 0 || len(r.Countries) > 0 || r.Posture != "" || r.DeviceRequired {
				return nil, fmt.Errorf("app %s rule %s: the naive translation has no users, all_groups, countries or posture", ar.App, r.Name)
			}
			cond, err := x.ruleCond(r.Groups)
			if err != nil {
				return nil, fmt.Errorf("app %s rule %s: %w", ar.App, r.Name, err)
			}
			for _, ref := range cond.Refs() {
				refs[ref] = true
			}
			eft := r.Action
			if eft == "" {
				eft = ActionAllow
			}
			act := "^.*$"
			if len(r.Methods) > 0 {
				act = "^(" + strings.Join(r.Methods, "|") + ")$"
			}
			for _, pth := range r.Paths {
				keys, err := naiveKeys(pth)
				if err != nil {
					return nil, fmt.Errorf("app %s rule %s: %w", ar.App, r.Name, err)
				}
				for _, k := range keys {
					row := []string{ar.App, act, k, cond.Casbin(), eft}
					if id := strings.Join(row, "\x00"); !seen[id] {
						seen[id] = true
						rows = append(rows, row)
					}
				}
			}
		}
	}
	m, err := model.NewModelFromString(naiveModelText)
	if err != nil {
		return nil, err
	}
	enf, err := casbin.NewSyncedEnforcer(m)
	if err != nil {
		return nil, err
	}
	if _, err := enf.AddPolicies(rows); err != nil {
		return nil, err
	}
	if got, err := enf.GetPolicy(); err != nil || len(got) != len(rows) {
		return nil, fmt.Errorf("casbin holds %d rows (%v), want %d", len(got), err, len(rows))
	}
	nm := &naiveModel{enf: enf, rows: len(rows)}
	for r := range refs {
		nm.refs = append(nm.refs, r)
	}
	slices.Sort(nm.refs)
	return nm, nil
}

// allow decides r with the naive model. Building r.sub is part of the
// decision.
func (nm *naiveModel) allow(r *Request) (bool, error) {
	a := attrsOf(&r.Subject, r.Device)
	return nm.enf.Enforce(CasbinSubject(&a, nm.refs), r.App, r.Method, r.Path)
}

// naiveTranslator expands groups into conditions: a group is its `when`,
// or its members, or any group it includes.
type naiveTranslator struct {
	byName map[string]*Group
	memo   map[string]string // group name → its expanded condition source
}

// ruleCond is the condition of a rule naming groups: a member of any.
func (x *naiveTranslator) ruleCond(groups []string) (*Expr, error) {
	if len(groups) == 0 {
		return ParseExpr("true")
	}
	parts := make([]string, len(groups))
	for i, g := range groups {
		s, err := x.group(g)
		if err != nil {
			return nil, err
		}
		parts[i] = "(" + s + ")"
	}
	return ParseExpr(strings.Join(parts, " or "))
}

// group returns the condition source of group (or "idp:NAME") name.
func (x *naiveTranslator) group(name string) (string, error) {
	if idp, ok := strings.CutPrefix(name, idpPrefix); ok {
		return strconv.Quote(idp) + " in user.groups", nil
	}
	if s, ok := x.memo[name]; ok {
		return s, nil
	}
	g := x.byName[name]
	if g == nil {
		return "", fmt.Errorf("unknown group %q", name)
	}
	var parts []string
	if g.When != "" {
		parts = append(parts, "("+g.When+")")
	}
	if len(g.Members) > 0 {
		ids := make([]string, len(g.Members))
		for i, m := range g.Members {
			// An entry with "@" is also compared with the email,
			// case-insensitively; the generator writes user IDs only.
			if strings.Contains(m, "@") {
				return "", fmt.Errorf("group %q: member %q: the naive translation has user IDs only", name, m)
			}
			ids[i] = strconv.Quote(m)
		}
		parts = append(parts, "user.id in ["+strings.Join(ids, ", ")+"]")
	}
	for _, inc := range g.Include {
		s, err := x.group(inc)
		if err != nil {
			return "", err
		}
		parts = append(parts, "("+s+")")
	}
	s := strings.Join(parts, " or ")
	x.memo[name] = s
	return s, nil
}

// naiveKeys translates a path pattern into keyMatch2 patterns: a prefix
// is the path itself and everything below it ("/p", "/p/*"), an exact path
// is itself, and a glob's single-segment "*" is a named parameter
// (keyMatch2's "*" would span segments). Other globs are not generated.
func naiveKeys(pattern string) ([]string, error) {
	if exact, ok := strings.CutPrefix(pattern, "="); ok {
		return []string{exact}, nil
	}
	if !strings.Contains(pattern, "*") {
		if pattern == "/" {
			return []string{"/*"}, nil
		}
		return []string{pattern, pattern + "/*"}, nil
	}
	segs := strings.Split(pattern, "/")
	for i, s := range segs {
		switch {
		case s == "*":
			segs[i] = ":p" + strconv.Itoa(i)
		case strings.Contains(s, "*"):
			return nil, fmt.Errorf("path %q: the naive translation has whole-segment * only", pattern)
		}
	}
	return []string{strings.Join(segs, "/")}, nil
}
