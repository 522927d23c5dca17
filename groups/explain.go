package groups

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Explanation is a decision with everything behind it: why the subject is
// or is not in each group the app's rules name, and what each rule made
// of the request. `ztna policy explain` and the console's what-if
// simulator print it; the Decision is exactly the one Decide returns.
type Explanation struct {
	Decision Decision           `json:"decision"`
	Version  string             `json:"version"` // the policy version that decided
	Groups   []GroupExplanation `json:"groups"`  // the groups the app's rules name, and the groups they include
	Rules    []RuleExplanation  `json:"rules"`   // every rule of the app, in order
}

// GroupExplanation says whether and why the subject is in one group.
type GroupExplanation struct {
	Name   string `json:"name"`
	Member bool   `json:"member"`
	Why    string `json:"why"`
}

// RuleExplanation says what one rule made of the request.
type RuleExplanation struct {
	Name    string `json:"name"`
	Action  string `json:"action"`  // allow or deny
	Matched bool   `json:"matched"` // every condition matched
	Why     string `json:"why"`     // "matches", or the first condition that did not
}

// Explain decides r like Decide and explains the decision.
func (p *Policy) Explain(r Request) Explanation {
	x := Explanation{Version: p.Version()}
	a, _, d, ok := p.prepare(&r)
	if !ok {
		x.Decision = d
		return x
	}
	m, groupWhy, err := p.membershipWhy(&r.Subject, r.Device)
	if err != nil {
		x.Decision = Decision{Reason: "group membership could not be evaluated"}
		return x
	}
	attrs := attrsOf(&r.Subject, r.Device)
	x.Decision, _ = a.decide(p, &r, m, func(i int, userOK, groupOK, methodOK, pathOK bool, failed string) {
		rl := &a.rules[i]
		re := RuleExplanation{Name: rl.name, Action: ActionAllow, Matched: userOK && groupOK && methodOK && pathOK && failed == ""}
		if rl.deny {
			re.Action = ActionDeny
		}
		switch {
		case !userOK:
			re.Why = "the user is not one of " + clipList(quoteAll(rl.users), ", ")
		case !groupOK:
			re.Why = "the user is in none of the groups " + clipList(p.groupNames(rl.anyGroups, rl.anyIdP), ", ")
		case !methodOK:
			re.Why = "the method is not one of " + clipList(rl.methodNames, ", ")
		case !pathOK:
			paths := make([]string, len(rl.paths))
			for k, pp := range rl.paths {
				paths[k] = pp.String()
			}
			re.Why = "the path matches none of " + clipList(paths, ", ")
		case failed != "":
			re.Why = "applies only " + rl.describe(failed)
		default:
			re.Why = "matches"
		}
		x.Rules = append(x.Rules, re)
	})
	for _, g := range p.relevantGroups(a) {
		x.Groups = append(x.Groups, p.explainGroup(g, m, groupWhy, &attrs))
	}
	return x
}

// membershipWhy is the subject's membership with, per group it is in, how
// it got there.
func (p *Policy) membershipWhy(s *Subject, d *Device) (*membership, map[int32]string, error) {
	groupWhy := make(map[int32]string)
	m, err := p.computeMembership(s, d, func(g int32, member bool, via string, from int32) {
		switch {
		case via == viaInclude:
			groupWhy[g] = "includes group " + strconv.Quote(p.groups[from].name) + ", which the user is in"
		case via == viaMember:
			groupWhy[g] = "listed in members"
		case via == viaIdP:
			groupWhy[g] = "includes an IdP group claim the user has"
		case member:
			groupWhy[g] = "condition is true"
		}
	})
	return m, groupWhy, err
}

func (p *Policy) explainGroup(g int32, m *membership, groupWhy map[int32]string, attrs *Attrs) GroupExplanation {
	grp := p.groups[g]
	ge := GroupExplanation{Name: grp.name, Member: m.has(g)}
	if ge.Member {
		ge.Why = groupWhy[g]
		if grp.when != nil && ge.Why == "condition is true" {
			ge.Why = grp.when.Explain(attrs)
		}
	} else {
		ge.Why = p.whyNot(grp, attrs)
	}
	return ge
}

// ExplainGroups says, for every group of the policy in policy order (or
// only those named in only, when it is not empty), whether and why s on
// device d is a member: the console's group previews and user pages.
func (p *Policy) ExplainGroups(s Subject, d *Device, only ...string) ([]GroupExplanation, error) {
	if p == nil {
		return nil, nil
	}
	m, why, err := p.membershipWhy(&s, d)
	if err != nil {
		return nil, err
	}
	attrs := attrsOf(&s, d)
	var out []GroupExplanation
	for g := range p.groups {
		if len(only) > 0 && !slices.Contains(only, p.groups[g].name) {
			continue
		}
		out = append(out, p.explainGroup(int32(g), m, why, &attrs))
	}
	return out, nil
}

// whyNot explains a group the subject is not in.
func (p *Policy) whyNot(g *group, attrs *Attrs) string {
	var parts []string
	if g.when != nil {
		parts = append(parts, g.when.Explain(attrs))
	}
	if len(g.members) > 0 {
		parts = append(parts, "not listed in members")
	}
	if len(g.includes) > 0 || len(g.idp) > 0 {
		parts = append(parts, "in none of the included groups "+clipList(p.groupNames(g.includes, g.idp), ", "))
	}
	return strings.Join(parts, "; ")
}

// relevantGroups lists the groups the app's rules name and, transitively,
// the groups those include, in policy order.
func (p *Policy) relevantGroups(a *app) []int32 {
	seen := make([]bool, len(p.groups))
	var walk func(g int32)
	walk = func(g int32) {
		if seen[g] {
			return
		}
		seen[g] = true
		for _, inc := range p.groups[g].includes {
			walk(inc)
		}
	}
	for i := range a.rules {
		for _, g := range a.rules[i].anyGroups {
			walk(g)
		}
		for _, g := range a.rules[i].allGroups {
			walk(g)
		}
	}
	var out []int32
	for g, ok := range seen {
		if ok {
			out = append(out, int32(g))
		}
	}
	return out
}

// groupNames renders policy groups and IdP claims as they are written in
// rules.
func (p *Policy) groupNames(gs []int32, idp []string) []string {
	out := make([]string, 0, len(gs)+len(idp))
	for _, g := range gs {
		out = append(out, strconv.Quote(p.groups[g].name))
	}
	for _, c := range idp {
		out = append(out, strconv.Quote(idpPrefix+c))
	}
	return out
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strconv.Quote(s)
	}
	return out
}

// String renders x for a terminal: the decision, then the groups, then the
// rules.
func (x Explanation) String() string {
	var b strings.Builder
	verdict := "DENY"
	if x.Decision.Allow {
		verdict = "ALLOW"
	}
	fmt.Fprintf(&b, "%s: %s\n", verdict, x.Decision.Reason)
	if x.Decision.Rule != "" {
		fmt.Fprintf(&b, "  decided by rule %q\n", x.Decision.Rule)
	}
	if x.Version != "" {
		fmt.Fprintf(&b, "  policy version %s\n", x.Version)
	}
	if len(x.Groups) > 0 {
		b.WriteString("\ngroups (✔ member, ✗ not):\n")
		for _, g := range x.Groups {
			fmt.Fprintf(&b, "  %s %-24s %s\n", mark(g.Member), g.Name, g.Why)
		}
	}
	if len(x.Rules) > 0 {
		b.WriteString("\nrules (✔ matches; deny rules win, then the first matching allow rule):\n")
		for _, r := range x.Rules {
			fmt.Fprintf(&b, "  %s %-5s %-24s %s\n", mark(r.Matched), r.Action, r.Name, r.Why)
		}
	}
	return b.String()
}

func mark(ok bool) string {
	if ok {
		return "✔"
	}
	return "✗"
}

// Groups returns the names of the policy groups s (on device d) is in, for
// the identity the edge sends upstream and for the console.
func (p *Policy) Groups(s Subject, d *Device) ([]string, error) {
	if p == nil {
		return nil, nil
	}
	m, err := p.membership(&s, d)
	if err != nil {
		return nil, err
	}
	var out []string
	m.each(func(g int32) { out = append(out, p.groups[g].name) })
	return out, nil
}

// NeedsProfiles reports whether any condition or rule reads the posture
// profiles a device meets, so that the edge evaluates them only then.
func (p *Policy) NeedsProfiles() bool { return p != nil && p.needsProfiles }

// Apps returns the apps s may use at all (some rule could allow them
// something): the outbound allow-list. An app absent from it is invisible
// to s — not listed by the tunnel, not reachable.
func (p *Policy) Apps(s Subject, d *Device) []string {
	if p == nil {
		return nil
	}
	m, err := p.membership(&s, d)
	if err != nil {
		return nil
	}
	var out []string
	for name, a := range p.apps {
		if a.mayAllow(&s, m) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// mayAllow reports whether some allow rule of a applies to s by who it is
// (users, groups) while no unconditional deny rule shuts s out; methods,
// paths and context conditions are left open.
func (a *app) mayAllow(s *Subject, m *membership) bool {
	allowed := false
	for i := range a.rules {
		rl := &a.rules[i]
		if !a.appliesTo(i, s, m) {
			continue
		}
		if rl.deny {
			if rl.anyMethod && rl.anyPath && !rl.hasContext {
				return false
			}
			continue
		}
		allowed = true
	}
	return allowed
}

// appliesTo reports whether rule i's subject conditions (users, groups,
// all_groups) hold for s.
func (a *app) appliesTo(i int, s *Subject, m *membership) bool {
	rl := &a.rules[i]
	email := lowerASCII(s.Email)
	if len(rl.users) > 0 && !slices.ContainsFunc(rl.users, func(u string) bool {
		return u == s.User || s.Email != "" && strings.Contains(u, "@") && lowerASCII(u) == email
	}) {
		return false
	}
	w, bit := i/64, uint64(1)<<(i%64)
	if a.needGroup[w]&bit != 0 && !slices.ContainsFunc(rl.anyGroups, m.has) &&
		!slices.ContainsFunc(rl.anyIdP, func(g string) bool { return slices.Contains(s.Groups, g) }) {
		return false
	}
	return !slices.ContainsFunc(rl.allGroups, func(g int32) bool { return !m.has(g) }) &&
		!slices.ContainsFunc(rl.allIdP, func(g string) bool { return !slices.Contains(s.Groups, g) })
}
