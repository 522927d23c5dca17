package groups

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The authorization benchmark's world: a generated policy at the scale the
// product targets (500 groups, 200 apps × 25 rules = 5,000 rules) and
// 10,000 users with varied attributes, from a fixed seed so that every run
// measures the same thing. The shapes follow what a company writes: most
// groups are a department, a set of titles or a department at one site,
// some follow an IdP group, a few are an unindexable `or`, nest other
// groups or list people; every app denies contractors its admin area,
// opens its sections to a few groups each and its home page to all staff.

const (
	benchSeed        = 20260611
	benchGroups      = 500
	benchApps        = 200
	benchRulesPerApp = 25
	benchUsers       = 10_000

	benchDepts     = 40
	benchTitles    = 30
	benchLocations = 10
	benchIdPGroups = 50
)

// benchEmployment are the employment types and how many in 100 users have
// each: all-staff is the first two, contractors the third.
var benchEmployment = []struct {
	name   string
	weight int
}{{"employee", 72}, {"part-time", 10}, {"contractor", 13}, {"intern", 5}}

var benchPlatforms = []string{"linux", "macos", "windows"}

// benchMethods is the method mix of requests that a rule does not steer.
var benchMethods = []struct {
	name   string
	weight int
}{{"GET", 60}, {"POST", 20}, {"HEAD", 5}, {"PUT", 8}, {"DELETE", 4}, {"PATCH", 3}}

// benchTime is a Wednesday, 10:00 in Seoul; requests spread over the 24
// hours after it, so time windows both match and fail.
var benchTime = time.Date(2026, 6, 10, 1, 0, 0, 0, time.UTC)

// benchWorld is the generated policy, its users and what requests to its
// apps look like. It is shared by the benchmarks and TestBenchPolicyShape
// and must not be modified.
type benchWorld struct {
	src   Source
	users []benchUser
	apps  []benchApp
}

type benchUser struct {
	subject Subject
	device  *Device // nil for users without an enrolled device
	dept    int
}

// benchApp is one generated app: which department mostly uses it, whether
// a rule has conditions the naive Casbin model does not express, and for
// every rule (by index) the requests that rule is written for.
type benchApp struct {
	name    string
	dept    int
	context bool
	targets []benchTarget
}

// benchTarget is what a request aimed at one rule looks like.
type benchTarget struct {
	methods []string // the rule's methods; nil means any
	paths   []string // concrete paths its patterns match
}

var (
	benchWorldOnce sync.Once
	benchWorldVal  *benchWorld
)

// sharedBenchWorld generates the world once per test binary.
func sharedBenchWorld() *benchWorld {
	benchWorldOnce.Do(func() { benchWorldVal = genBenchWorld(benchSeed) })
	return benchWorldVal
}

func benchDept(i int) string     { return fmt.Sprintf("dept-%02d", i) }
func benchTitle(i int) string    { return fmt.Sprintf("title-%02d", i) }
func benchLocation(i int) string { return fmt.Sprintf("site-%d", i) }
func benchIdP(i int) string      { return fmt.Sprintf("team-%02d", i) }
func benchUserID(i int) string   { return fmt.Sprintf("u%05d", i) }

// genBenchWorld generates the world from seed.
func genBenchWorld(seed uint64) *benchWorld {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	w := &benchWorld{}
	w.users = genBenchUsers(rng)
	groups, byDept := genBenchGroups(rng)
	w.src.Groups = groups
	w.src.Apps, w.apps = genBenchApps(rng, groups, byDept)
	return w
}

func genBenchUsers(rng *rand.Rand) []benchUser {
	users := make([]benchUser, benchUsers)
	for i := range users {
		dept := rng.IntN(benchDepts)
		// Titles go with departments: a department has about eight.
		title := (dept*3 + rng.IntN(8)) % benchTitles
		attrs := map[string]string{
			"department": benchDept(dept),
			"title":      benchTitle(title),
			"location":   benchLocation(rng.IntN(benchLocations)),
			"employment": benchPick(rng, benchEmployment),
		}
		var idp []string
		for _, g := range rng.Perm(benchIdPGroups)[:rng.IntN(6)] {
			idp = append(idp, benchIdP(g))
		}
		u := benchUser{dept: dept, subject: Subject{
			User:       benchUserID(i),
			Email:      fmt.Sprintf("user%05d@corp.example", i),
			Groups:     idp,
			Attributes: attrs,
		}}
		if rng.IntN(10) < 4 {
			u.device = &Device{ID: fmt.Sprintf("dev-%05d", i), Platform: benchPlatforms[rng.IntN(len(benchPlatforms))], Profiles: []string{"baseline"}}
		}
		users[i] = u
	}
	return users
}

// benchPick picks a name by weight.
func benchPick(rng *rand.Rand, items []struct {
	name   string
	weight int
}) string {
	total := 0
	for _, it := range items {
		total += it.weight
	}
	x := rng.IntN(total)
	for _, it := range items {
		if x < it.weight {
			return it.name
		}
		x -= it.weight
	}
	panic("unreachable")
}

// The two groups every app's first and last rule name.
const (
	benchAllStaff    = "all-staff"
	benchContractors = "contractors"
)

// genBenchGroups generates the groups and, per department, the groups
// that are about it (apps of a department name mostly those).
func genBenchGroups(rng *rand.Rand) ([]Group, [][]string) {
	groups := make([]Group, 0, benchGroups)
	byDept := make([][]string, benchDepts)
	var leaves []int // groups another group may include: no includes themselves
	add := func(g Group, dept int, leaf bool) {
		if dept >= 0 {
			byDept[dept] = append(byDept[dept], g.Name)
		}
		if leaf && len(groups) >= 2 {
			leaves = append(leaves, len(groups))
		}
		groups = append(groups, g)
	}
	add(Group{Name: benchAllStaff, When: `user.employment in ["employee", "part-time"]`}, -1, true)
	add(Group{Name: benchContractors, When: `user.employment == "contractor"`}, -1, true)
	q := strconv.Quote
	for i := len(groups); i < benchGroups; i++ {
		d := rng.IntN(benchDepts)
		dept := q(benchDept(d))
		name := func(kind string) string { return fmt.Sprintf("g%03d-%s", i, kind) }
		switch x := rng.IntN(100); {
		case x < 30:
			when := "user.department == " + dept
			if rng.IntN(4) == 0 {
				when += ` and user.employment != "contractor"`
			}
			add(Group{Name: name("dept"), When: when}, d, true)
		case x < 48:
			var titles []string
			for _, t := range rng.Perm(benchTitles)[:2+rng.IntN(3)] {
				titles = append(titles, q(benchTitle(t)))
			}
			add(Group{Name: name("titles"), When: "user.title in [" + strings.Join(titles, ", ") + "]"}, -1, true)
		case x < 66:
			add(Group{Name: name("site"), When: "user.department == " + dept + " and user.location == " + q(benchLocation(rng.IntN(benchLocations)))}, d, true)
		case x < 74:
			when := q(benchIdP(rng.IntN(benchIdPGroups))) + " in user.groups"
			if rng.IntN(2) == 0 {
				add(Group{Name: name("idp"), When: when}, -1, true)
			} else {
				add(Group{Name: name("idp-dept"), When: when + " and user.department == " + dept}, d, true)
			}
		case x < 80:
			// No comparison guards the whole condition: evaluated for
			// every subject.
			add(Group{Name: name("or"), When: "user.department == " + dept + " or user.title == " + q(benchTitle(rng.IntN(benchTitles)))}, d, true)
		case x < 85:
			when := "device.managed and user.department == " + dept
			if rng.IntN(2) == 0 {
				when = "device.platform == " + q(benchPlatforms[rng.IntN(len(benchPlatforms))]) + " and user.department == " + dept
			}
			add(Group{Name: name("device"), When: when}, d, true)
		case x < 95 && len(leaves) >= 3:
			// Include 1–3 groups of one department when it has
			// enough, else any; sometimes an IdP group as well.
			pool := leavesOf(groups, leaves, byDept[d])
			if len(pool) < 3 {
				pool = leaves
			}
			g := Group{Name: name("nested")}
			for _, k := range rng.Perm(len(pool))[:1+rng.IntN(3)] {
				g.Include = append(g.Include, groups[pool[k]].Name)
			}
			if rng.IntN(10) < 3 {
				g.Include = append(g.Include, "idp:"+benchIdP(rng.IntN(benchIdPGroups)))
			}
			add(g, d, false)
		default:
			g := Group{Name: name("people")}
			for range 3 + rng.IntN(6) {
				g.Members = append(g.Members, benchUserID(rng.IntN(benchUsers)))
			}
			if rng.IntN(2) == 0 {
				g.When = "user.title == " + q(benchTitle(rng.IntN(benchTitles)))
			}
			add(g, -1, true)
		}
	}
	return groups, byDept
}

// leavesOf returns the indexes of the leaf groups named in names.
func leavesOf(groups []Group, leaves []int, names []string) []int {
	var out []int
	for _, i := range leaves {
		if slices.Contains(names, groups[i].Name) {
			out = append(out, i)
		}
	}
	return out
}

// genBenchApps generates the apps' rules and their request targets.
func genBenchApps(rng *rand.Rand, groups []Group, byDept [][]string) ([]AppRules, []benchApp) {
	rules := make([]AppRules, benchApps)
	apps := make([]benchApp, benchApps)
	// A section is most often for a whole department.
	wide := make([][]string, benchDepts)
	for d, names := range byDept {
		for _, n := range names {
			if strings.HasSuffix(n, "-dept") && !strings.HasSuffix(n, "-idp-dept") {
				wide[d] = append(wide[d], n)
			}
		}
	}
	for i := range rules {
		dept := i % benchDepts
		a := benchApp{name: fmt.Sprintf("app-%03d", i), dept: dept, targets: make([]benchTarget, benchRulesPerApp)}
		rs := make([]Rule, benchRulesPerApp)
		rs[0] = Rule{Name: "deny-contractors-admin", Action: ActionDeny, Groups: []string{benchContractors}, Paths: []string{"/admin"}}
		a.targets[0] = benchTarget{paths: []string{"/admin", "/admin/users", "/admin/settings/audit"}}
		last := benchRulesPerApp - 1
		for j := 1; j < last; j++ {
			r := Rule{Name: fmt.Sprintf("allow-s%02d", j)}
			for range 1 + rng.IntN(3) {
				var g string
				switch x := rng.IntN(10); {
				case x < 4 && len(wide[dept]) > 0:
					g = wide[dept][rng.IntN(len(wide[dept]))]
				case x < 7 && len(byDept[dept]) > 0:
					g = byDept[dept][rng.IntN(len(byDept[dept]))]
				case x < 8:
					g = "idp:" + benchIdP(rng.IntN(benchIdPGroups))
				default:
					g = groups[2+rng.IntN(len(groups)-2)].Name
				}
				if !slices.Contains(r.Groups, g) {
					r.Groups = append(r.Groups, g)
				}
			}
			t := &a.targets[j]
			sec := fmt.Sprintf("/s%02d", j)
			switch x := rng.IntN(10); {
			case x < 5:
				r.Paths = []string{sec}
				t.paths = []string{sec, sec + "/page-7", sec + "/a/b"}
			case x < 7:
				r.Paths = []string{"=" + sec + "/index"}
				t.paths = []string{sec + "/index"}
			case x < 9:
				r.Paths = []string{sec + "/*/edit"}
				t.paths = []string{sec + "/item-3/edit", sec + "/item-41/edit"}
			default:
				r.Paths = []string{sec + "/docs", sec + "/*/view"}
				t.paths = []string{sec + "/docs/guide", sec + "/doc-9/view"}
			}
			switch x := rng.IntN(10); {
			case x < 3:
				r.Methods = []string{"GET", "HEAD"}
			case x < 4:
				r.Methods = []string{"POST", "PUT"}
			}
			t.methods = r.Methods
			switch {
			case i%10 == 3 && j == last-1:
				r.Time = []TimeWindow{{Days: []string{"mon-fri"}, From: "08:00", To: "20:00", Zone: "Asia/Seoul"}}
				a.context = true
			case i%10 == 7 && j == last-2:
				r.Networks = []string{"10.0.0.0/8", "192.168.0.0/16"}
				a.context = true
			}
			rs[j] = r
		}
		rs[last] = Rule{Name: "staff-home", Groups: []string{benchAllStaff}, Methods: []string{"GET", "HEAD"}, Paths: []string{"/home", "/static"}}
		a.targets[last] = benchTarget{methods: rs[last].Methods, paths: []string{"/home", "/static/app.js", "/static/css/site.css"}}
		rules[i] = AppRules{App: a.name, Rules: rs}
		apps[i] = a
	}
	return rules, apps
}

// request generates a request of user u: 80 % to an app of the user's
// department, the rest to any app; aimed at the home page (20 %), the
// admin area (8 %), a section (67 %) or a path no rule mentions (5 %).
func (w *benchWorld) request(rng *rand.Rand, u int) Request {
	user := &w.users[u]
	ai := rng.IntN(benchApps)
	if rng.IntN(10) < 8 {
		ai = user.dept + benchDepts*rng.IntN(benchApps/benchDepts)
	}
	return w.requestTo(rng, u, ai)
}

// requestTo generates a request of user u to app ai.
func (w *benchWorld) requestTo(rng *rand.Rand, u, ai int) Request {
	user := &w.users[u]
	app := &w.apps[ai]
	r := Request{
		App:     app.name,
		Subject: user.subject,
		Device:  user.device,
		Time:    benchTime.Add(time.Duration(rng.IntN(96)) * 15 * time.Minute),
		Source:  netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + rng.IntN(254))}),
	}
	if rng.IntN(10) < 7 {
		r.Source = netip.AddrFrom4([4]byte{10, byte(rng.IntN(256)), byte(rng.IntN(256)), byte(1 + rng.IntN(254))})
	}
	var t *benchTarget
	switch x := rng.IntN(100); {
	case x < 20:
		t = &app.targets[benchRulesPerApp-1]
	case x < 28:
		t = &app.targets[0]
	case x < 95:
		t = &app.targets[1+rng.IntN(benchRulesPerApp-2)]
	}
	if t == nil {
		r.Method = benchPick(rng, benchMethods)
		r.Path = fmt.Sprintf("/nowhere/%d", rng.IntN(100))
		return r
	}
	if t.methods != nil && rng.IntN(10) < 8 {
		r.Method = t.methods[rng.IntN(len(t.methods))]
	} else {
		r.Method = benchPick(rng, benchMethods)
	}
	r.Path = t.paths[rng.IntN(len(t.paths))]
	return r
}
