package groups

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/ztna-dev/ztna/internal/config"
)

// Options are what Compile checks names against. Nil lists are not
// checked (`ztna policy check` on a directory alone does not know the
// config's apps).
type Options struct {
	Apps     []string  // apps defined in the config
	Profiles []string  // posture profiles defined in the config
	GeoIP    Countries // nil: rules with countries are rejected
}

// Limits on a policy, far above any real one, so that a generated or
// malicious file cannot make compilation or a decision unbounded.
const (
	maxGroups       = 20_000
	maxRulesPerApp  = 10_000
	maxListLen      = 10_000 // entries in one members/users/groups/… list
	maxDescription  = 1024
	idpPrefix       = "idp:"
	maxIncludeDepth = 64
)

// Compile validates src and builds the immutable Policy that decides
// requests. It returns the first problem found — as a *config.FieldError
// naming file, line and field when src knows where the item was written,
// else as a *RuleError or *GroupError — and retains nothing from src.
func Compile(src *Source, opt Options) (*Policy, error) {
	p, err := compile(src, opt)
	if err != nil {
		return nil, src.locate(err)
	}
	return p, nil
}

func compile(src *Source, opt Options) (*Policy, error) {
	p := &Policy{apps: map[string]*app{}, byName: map[string]int32{}, geo: opt.GeoIP}
	if len(src.Groups) > maxGroups {
		return nil, &GroupError{Index: maxGroups, Msg: fmt.Sprintf("more than %d groups", maxGroups)}
	}
	if err := p.compileGroups(src); err != nil {
		return nil, err
	}
	cond, err := compileConditions(p.groups)
	if err != nil {
		return nil, err
	}
	p.cond = cond
	p.members = indexMembers(p.groups)
	p.cache = newMemberCache()

	var knownApps, knownProfiles map[string]bool
	if opt.Apps != nil {
		knownApps = setOf(opt.Apps)
	}
	if opt.Profiles != nil {
		knownProfiles = setOf(opt.Profiles)
	}
	// Rules of an app may come from several entries (files); they are
	// joined in order, and rule names are unique across them.
	type ruleAt struct{ entry, index int }
	var order []string
	byApp := map[string][]ruleAt{}
	for i, ar := range src.Apps {
		if msg := checkName(ar.App); msg != "" {
			return nil, &RuleError{AppIndex: i, App: printableOrEmpty(ar.App), Rule: -1, Field: "app", Msg: msg}
		}
		if knownApps != nil && !knownApps[ar.App] {
			return nil, &RuleError{AppIndex: i, App: ar.App, Rule: -1, Field: "app", Msg: "no app of this name is defined in the config"}
		}
		if _, ok := byApp[ar.App]; !ok {
			order = append(order, ar.App)
			byApp[ar.App] = nil
		}
		for j := range ar.Rules {
			byApp[ar.App] = append(byApp[ar.App], ruleAt{i, j})
		}
	}
	for _, name := range order {
		at := byApp[name]
		if len(at) > maxRulesPerApp {
			return nil, &RuleError{AppIndex: at[0].entry, App: name, Rule: -1, Field: "app", Msg: fmt.Sprintf("more than %d rules", maxRulesPerApp)}
		}
		a := newApp(name, len(at))
		seen := make(map[string]ruleAt, len(at))
		for k, ra := range at {
			r := &src.Apps[ra.entry].Rules[ra.index]
			fail := func(field, msg string) error {
				return &RuleError{AppIndex: ra.entry, App: name, Rule: ra.index, RuleName: printableOrEmpty(r.Name), Field: field, Msg: msg}
			}
			if msg := checkName(r.Name); msg != "" {
				return nil, fail("name", msg)
			}
			if prev, dup := seen[r.Name]; dup {
				where := fmt.Sprintf("rules[%d]", prev.index)
				if prev.entry != ra.entry {
					where = fmt.Sprintf("%s rules[%d]", src.whereApp(prev.entry), prev.index)
				}
				return nil, fail("name", fmt.Sprintf("duplicate rule name %q (also %s)", r.Name, where))
			}
			seen[r.Name] = ra
			if err := p.compileRule(a, k, r, knownProfiles, fail); err != nil {
				return nil, err
			}
		}
		p.apps[name] = a
	}
	p.version = versionOf(src)
	p.needsProfiles = slices.Contains(p.cond.refs, "device.profiles")
	for _, a := range p.apps {
		for i := range a.rules {
			p.needsProfiles = p.needsProfiles || a.rules[i].posture != ""
		}
	}
	return p, nil
}

func setOf(list []string) map[string]bool {
	m := make(map[string]bool, len(list))
	for _, s := range list {
		m[s] = true
	}
	return m
}

// versionOf is the policy version: a hash of what the policy says (not of
// comments or layout), shown in metrics and audit events so that a decision
// can be traced to the policy that made it.
func versionOf(src *Source) string {
	b, _ := json.Marshal(struct {
		G []Group
		A []AppRules
	}{src.Groups, src.Apps})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:6])
}

// compileGroups validates groups, resolves includes and orders groups so
// that every group comes after the groups it includes.
func (p *Policy) compileGroups(src *Source) error {
	for i, g := range src.Groups {
		if msg := checkGroupName(g.Name); msg != "" {
			return &GroupError{Index: i, Name: printableOrEmpty(g.Name), Field: "name", Msg: msg}
		}
		if prev, dup := p.byName[g.Name]; dup {
			return &GroupError{Index: i, Name: g.Name, Field: "name", Msg: fmt.Sprintf("duplicate group (also %s)", src.whereGroup(int(prev)))}
		}
		p.byName[g.Name] = int32(i)
	}
	p.groups = make([]*group, len(src.Groups))
	for i, g := range src.Groups {
		fail := func(field, msg string) error { return &GroupError{Index: i, Name: g.Name, Field: field, Msg: msg} }
		cg := &group{name: g.Name, description: g.Description, index: int32(i)}
		if len(g.Description) > maxDescription {
			return fail("description", fmt.Sprintf("longer than %d bytes", maxDescription))
		}
		if g.When == "" && len(g.Members) == 0 && len(g.Include) == 0 {
			return fail("", "a group needs when, members or include")
		}
		if g.When != "" {
			x, err := ParseExpr(g.When)
			if err != nil {
				return fail("when", err.Error())
			}
			cg.when = x
		}
		if len(g.Members) > maxListLen {
			return fail("members", fmt.Sprintf("more than %d entries", maxListLen))
		}
		for k, m := range g.Members {
			if msg := checkEntry(m); msg != "" {
				return fail(fmt.Sprintf("members[%d]", k), msg)
			}
			cg.members = append(cg.members, m)
		}
		for k, inc := range g.Include {
			field := fmt.Sprintf("include[%d]", k)
			j, idp, msg := p.groupRef(inc)
			switch {
			case msg != "":
				return fail(field, msg)
			case idp != "":
				cg.idp = append(cg.idp, idp)
			case int(j) == i:
				return fail(field, "a group cannot include itself")
			default:
				cg.includes = append(cg.includes, j)
			}
		}
		p.groups[i] = cg
	}
	return p.orderGroups()
}

// orderGroups sorts groups topologically by include (included first) and
// rejects cycles, naming one.
func (p *Policy) orderGroups() error {
	const (
		unvisited = iota
		visiting
		done
	)
	state := make([]byte, len(p.groups))
	var stack []int32
	var visit func(i int32) error
	visit = func(i int32) error {
		switch state[i] {
		case done:
			return nil
		case visiting:
			start := slices.Index(stack, i)
			names := make([]string, 0, len(stack)-start+1)
			for _, j := range stack[start:] {
				names = append(names, strconv.Quote(p.groups[j].name))
			}
			names = append(names, strconv.Quote(p.groups[i].name))
			return &GroupError{Index: int(i), Name: p.groups[i].name, Field: "include", Msg: "include cycle: " + strings.Join(names, " → ")}
		}
		if len(stack) >= maxIncludeDepth {
			return &GroupError{Index: int(i), Name: p.groups[i].name, Field: "include", Msg: fmt.Sprintf("includes nest deeper than %d groups", maxIncludeDepth)}
		}
		state[i] = visiting
		stack = append(stack, i)
		for _, j := range p.groups[i].includes {
			if err := visit(j); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = done
		p.topo = append(p.topo, i)
		return nil
	}
	for i := range p.groups {
		if err := visit(int32(i)); err != nil {
			return err
		}
	}
	return nil
}

// groupRef resolves an entry that names a group: a policy group (its
// index) or an IdP group claim written "idp:NAME" (idp). msg says what is
// wrong with it.
func (p *Policy) groupRef(ref string) (g int32, idp, msg string) {
	if msg := checkEntry(ref); msg != "" {
		return -1, "", msg
	}
	if claim, ok := strings.CutPrefix(ref, idpPrefix); ok {
		if msg := checkEntry(claim); msg != "" {
			return -1, "", msg
		}
		return -1, claim, ""
	}
	g, ok := p.byName[ref]
	if !ok {
		return -1, "", unknownGroupMsg(ref, p.byName)
	}
	return g, "", ""
}

// checkGroupName validates a group name: a name, and not something a rule
// would read as an IdP group.
func checkGroupName(s string) string {
	if msg := checkName(s); msg != "" {
		return msg
	}
	if strings.HasPrefix(s, idpPrefix) {
		return fmt.Sprintf("%q: the prefix %q is reserved for IdP group claims", s, idpPrefix)
	}
	return ""
}

// unknownGroupMsg says that name is not a group, suggesting the closest
// one and the idp: form.
func unknownGroupMsg(name string, known map[string]int32) string {
	msg := fmt.Sprintf("unknown group %q", name)
	best, bestD := "", 4
	for k := range known {
		if d := config.EditDistance(name, k); d < bestD || d == bestD && k < best {
			best, bestD = k, d
		}
	}
	if best != "" {
		return msg + fmt.Sprintf(" (did you mean %q?)", best)
	}
	return msg + fmt.Sprintf(`; define it under groups, or write "idp:%s" for the IdP's group claim`, name)
}

// compileRule compiles rule k of app a.
func (p *Policy) compileRule(a *app, k int, r *Rule, knownProfiles map[string]bool, fail func(field, msg string) error) error {
	w, bit := k/64, uint64(1)<<(k%64)
	cr := rule{name: r.Name}
	switch r.Action {
	case "", ActionAllow:
		a.allow[w] |= bit
		cr.reason = "allowed by rule " + strconv.Quote(r.Name)
	case ActionDeny:
		a.deny[w] |= bit
		cr.deny = true
		cr.reason = "denied by rule " + strconv.Quote(r.Name)
	default:
		return fail("action", fmt.Sprintf(`must be "allow" or "deny", not %q`, r.Action))
	}
	for _, l := range []struct {
		field string
		n     int
	}{{"users", len(r.Users)}, {"groups", len(r.Groups)}, {"all_groups", len(r.AllGroups)}, {"methods", len(r.Methods)},
		{"paths", len(r.Paths)}, {"time", len(r.Time)}, {"networks", len(r.Networks)}, {"countries", len(r.Countries)}} {
		if l.n > maxListLen {
			return fail(l.field, fmt.Sprintf("more than %d entries", maxListLen))
		}
	}
	for k, u := range r.Users {
		if msg := checkEntry(u); msg != "" {
			return fail(fmt.Sprintf("users[%d]", k), msg)
		}
		setBit(a, a.byUser, u, w, bit)
		cr.users = append(cr.users, u)
		if strings.Contains(u, "@") {
			setBit(a, a.byEmail, lowerASCII(u), w, bit)
		}
	}
	if len(r.Users) > 0 {
		a.needUser[w] |= bit
	}
	for k, g := range r.Groups {
		j, idp, msg := p.groupRef(g)
		switch {
		case msg != "":
			return fail(fmt.Sprintf("groups[%d]", k), msg)
		case idp != "":
			setBit(a, a.byIdP, idp, w, bit)
			cr.anyIdP = append(cr.anyIdP, idp)
		default:
			setBit(a, a.byGroup, j, w, bit)
			cr.anyGroups = append(cr.anyGroups, j)
		}
	}
	if len(r.Groups) > 0 {
		a.needGroup[w] |= bit
	}
	for k, g := range r.AllGroups {
		j, idp, msg := p.groupRef(g)
		switch {
		case msg != "":
			return fail(fmt.Sprintf("all_groups[%d]", k), msg)
		case idp != "":
			cr.allIdP = append(cr.allIdP, idp)
		default:
			cr.allGroups = append(cr.allGroups, j)
		}
	}
	cr.anyMethod = len(r.Methods) == 0
	for k, m := range r.Methods {
		if !isToken(m) {
			return fail(fmt.Sprintf("methods[%d]", k), fmt.Sprintf("%q is not an HTTP method token", m))
		}
		m = strings.ToUpper(m) // a token is ASCII
		cr.methodNames = append(cr.methodNames, m)
		if b := methodBit(m); b != 0 {
			cr.methods |= b
		} else {
			cr.otherMethods = append(cr.otherMethods, m)
		}
	}
	cr.anyPath = len(r.Paths) == 0
	for k, pth := range r.Paths {
		pp, msg := compilePathPattern(pth)
		if msg != "" {
			return fail(fmt.Sprintf("paths[%d]", k), msg)
		}
		if pp.matchesAll() {
			cr.anyPath = true
		}
		cr.paths = append(cr.paths, pp)
	}
	for k, tw := range r.Time {
		ctw, field, msg := compileTimeWindow(tw)
		if msg != "" {
			f := fmt.Sprintf("time[%d]", k)
			if field != "" {
				f += "." + field
			}
			return fail(f, msg)
		}
		cr.windows = append(cr.windows, ctw)
	}
	if len(r.Networks) > 0 {
		nets, i, msg := compileNetworks(r.Networks)
		if msg != "" {
			return fail(fmt.Sprintf("networks[%d]", i), msg)
		}
		cr.networks = nets
	}
	if len(r.Countries) > 0 {
		codes, i, msg := compileCountries(r.Countries)
		if msg != "" {
			return fail(fmt.Sprintf("countries[%d]", i), msg)
		}
		if p.geo == nil {
			return fail("countries", "needs a GeoIP database: set policy.geoip_file in the config")
		}
		cr.countries = codes
	}
	if r.Posture != "" {
		if knownProfiles != nil && !knownProfiles[r.Posture] {
			return fail("posture", fmt.Sprintf("no posture profile %q is defined in the config (posture.profiles)", r.Posture))
		}
		if msg := checkEntry(r.Posture); msg != "" {
			return fail("posture", msg)
		}
		cr.posture = r.Posture
	}
	cr.deviceRequired = r.DeviceRequired || r.Posture != ""
	cr.hasContext = len(cr.windows) > 0 || len(cr.networks) > 0 || len(cr.countries) > 0 || cr.deviceRequired ||
		len(cr.allGroups) > 0 || len(cr.allIdP) > 0
	a.rules[k] = cr
	return nil
}

// newApp allocates the compiled form of an app with n rules.
func newApp(name string, n int) *app {
	words := (n + 63) / 64
	return &app{
		name:        name,
		words:       words,
		rules:       make([]rule, n),
		deny:        make([]uint64, words),
		allow:       make([]uint64, words),
		needUser:    make([]uint64, words),
		needGroup:   make([]uint64, words),
		byUser:      map[string]uint32{},
		byEmail:     map[string]uint32{},
		byGroup:     map[int32]uint32{},
		byIdP:       map[string]uint32{},
		noRule:      "no rule of app " + strconv.Quote(name) + " allows ",
		notSignedIn: "app " + strconv.Quote(name) + " requires a signed-in user",
	}
}

// setBit marks rule bit (in word w) in the bitset that m holds for key,
// creating the bitset in the app's pool on first use.
func setBit[K comparable](a *app, m map[K]uint32, key K, w int, bit uint64) {
	off, ok := m[key]
	if !ok {
		off = uint32(len(a.pool))
		a.pool = append(a.pool, make([]uint64, a.words)...)
		m[key] = off
	}
	a.pool[int(off)+w] |= bit
}
