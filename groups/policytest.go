package groups

// Policy test files: YAML cases that sit next to a policy (any NAME_test.yaml
// below the policy directory) and say what the policy must decide for named
// people on named devices. `ztna policy test` runs them in CI, so that a
// change to a group condition or a rule is reviewed together with its effect
// on real roles; `ztna policy explain` reuses their fixtures by name.
//
//	users:                      # fixtures, shared by every test file of the dir
//	  kim:
//	    id: u-kim               # required
//	    email: kim@corp.example
//	    groups: [employees]     # IdP group claims
//	    attributes: {department: Security Tech, title: Security Engineer}
//	devices:
//	  kims-mac: {id: d-1, platform: macos, profiles: [baseline, strict]}
//	tests:
//	  - name: kim reaches the SOC console   # required, unique per file
//	    user: kim                           # required fixture
//	    device: kims-mac                    # optional fixture; absent = no device certificate
//	    app: soc                            # required
//	    method: GET                         # default GET
//	    path: /alerts                       # default /
//	    source: 10.1.2.3                    # optional
//	    time: 2026-11-23T10:00:00+09:00     # optional RFC 3339; default: when the tests run
//	    want: allow                         # allow | deny (required)
//	    rule: soc-read                      # optional: the deciding rule ("" = the default deny)
//	    groups: [security-tech]             # optional: the user is in at least these policy groups
//	    not_groups: [security-policy]       # optional: and in none of these
//
// A mistake in a test file (a typo in a fixture, app, rule or group name, a
// bad time) is an error, not a failing or — worse — a passing test: an
// expectation that names nothing real could never fail.

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/internal/config"
	"github.com/ztna-dev/ztna/internal/files"
)

// ptFile is the schema of one policy test file.
type ptFile struct {
	Users   map[string]ptUser   `yaml:"users"`
	Devices map[string]ptDevice `yaml:"devices"`
	Tests   []ptCase            `yaml:"tests"`
}

type ptUser struct {
	ID         string            `yaml:"id"`
	Email      string            `yaml:"email"`
	Groups     []string          `yaml:"groups"`
	Attributes map[string]string `yaml:"attributes"`
}

type ptDevice struct {
	ID       string   `yaml:"id"`
	Platform string   `yaml:"platform"`
	Profiles []string `yaml:"profiles"`
}

type ptCase struct {
	Name      string   `yaml:"name"`
	User      string   `yaml:"user"`
	Device    string   `yaml:"device"`
	App       string   `yaml:"app"`
	Method    string   `yaml:"method"`
	Path      string   `yaml:"path"`
	Source    string   `yaml:"source"`
	Time      string   `yaml:"time"`
	Want      string   `yaml:"want"`
	Rule      *string  `yaml:"rule"` // nil: not checked; "": the default deny
	Groups    []string `yaml:"groups"`
	NotGroups []string `yaml:"not_groups"`
}

// TestResult is the outcome of one test case.
type TestResult struct {
	File string // the test file
	Line int    // the line the case starts on
	Name string
	Pass bool
	Got  Decision
	Msg  string // why it failed; "" when it passed
}

// TestSuite is the parsed test files of a policy directory: the user and
// device fixtures (one namespace for the whole directory) and the cases.
type TestSuite struct {
	dir     string
	users   map[string]userFixture
	devices map[string]deviceFixture
	cases   []suiteCase
}

type userFixture struct {
	subject Subject
	at      string // file:line, for "also defined at"
}

type deviceFixture struct {
	device Device
	at     string
}

// suiteCase is one syntactically valid case and the request it describes;
// its fixtures are resolved once every file is read, and its names are
// checked against the policy it runs on.
type suiteCase struct {
	ptCase
	doc  *config.Doc
	path string // YAML path of the case: "tests[3]"
	line int
	req  Request // Subject and Device set from the fixtures; Time zero: when the suite runs
}

// errorf is an error at field of the case, naming its file and line.
func (c *suiteCase) errorf(field, format string, args ...any) error {
	return c.doc.Errorf(c.path+"."+field, format, args...)
}

// maxTestErrors bounds how many problems one load or run reports: a
// renamed group can break hundreds of cases, and the first few say why.
const maxTestErrors = 20

// maxFixtureName bounds a fixture name: fixture names are keys that tests
// and `policy explain --user` refer to, not data.
const maxFixtureName = 64

// errList collects problems, keeping at most maxTestErrors.
type errList struct {
	list []error
	more int
}

func (e *errList) add(err error) {
	if len(e.list) == maxTestErrors {
		e.more++
		return
	}
	e.list = append(e.list, err)
}

func (e *errList) err() error {
	if e.more > 0 {
		return errors.Join(append(e.list, fmt.Errorf("and %d more errors", e.more))...)
	}
	return errors.Join(e.list...)
}

// RunTests loads every test file below dir and runs it against p. An error
// is returned for a file that cannot be parsed or references an unknown
// fixture, app, rule or group (naming file:line: field); failures are
// results. A directory without a single test case is an error, so that CI
// cannot pass vacuously.
func RunTests(p *Policy, dir string) ([]TestResult, error) {
	ts, err := LoadTests(dir)
	if err != nil {
		return nil, err
	}
	return ts.Run(p)
}

// LoadTests parses every test file below dir (see IsTestFile). A directory
// without test files gives an empty suite: Run refuses to run it, while
// `policy explain` can do without fixtures.
func LoadTests(dir string) (*TestSuite, error) {
	info, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("policy dir: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("policy dir %s: not a directory", dir)
	}
	paths, err := ListFiles(dir, IsTestFile)
	if err != nil {
		return nil, fmt.Errorf("policy dir: %w", err)
	}
	ts := &TestSuite{dir: dir, users: map[string]userFixture{}, devices: map[string]deviceFixture{}}
	var e errList
	for _, path := range paths {
		if err := ts.loadFile(path, &e); err != nil {
			return nil, err
		}
	}
	// Fixtures are shared by every file, so references are resolved once
	// all files are read.
	for i := range ts.cases {
		c := &ts.cases[i]
		if u, ok := ts.users[c.User]; ok {
			c.req.Subject = cloneSubject(u.subject)
		} else {
			e.add(c.errorf("user", "%s", unknownFixtureMsg("user", c.User, ts.users)))
		}
		if c.Device == "" {
			continue
		}
		if d, ok := ts.devices[c.Device]; ok {
			c.req.Device = cloneDevice(&d.device)
		} else {
			e.add(c.errorf("device", "%s", unknownFixtureMsg("device", c.Device, ts.devices)))
		}
	}
	if err := e.err(); err != nil {
		return nil, err
	}
	return ts, nil
}

// loadFile parses one test file into ts. Problems with its content go to
// e; the returned error is for a file that cannot be read or parsed at all.
func (ts *TestSuite) loadFile(path string, e *errList) error {
	data, _, err := files.ReadRegular(path, config.MaxFileSize)
	if err != nil {
		return fmt.Errorf("policy test file %s: %w", path, err)
	}
	var f ptFile
	doc, err := config.Parse(path, data, &f)
	if err != nil {
		return err
	}
	at := func(p string) string { return fmt.Sprintf("%s:%d", path, doc.Line(p)) }

	for _, name := range sortedKeys(f.Users) {
		u, p := f.Users[name], "users."+name
		switch prev, dup := ts.users[name]; {
		case checkFixtureName(name) != "":
			e.add(doc.Errorf("users", "%q: %s", name, checkFixtureName(name)))
		case dup:
			e.add(doc.Errorf(p, "user %q is also defined at %s; fixture names are shared by every test file of the directory", name, prev.at))
		case u.ID == "":
			e.add(doc.Errorf(p+".id", "required: the user ID (OIDC subject) the edge would see"))
		default:
			ts.users[name] = userFixture{Subject{User: u.ID, Email: u.Email, Groups: u.Groups, Attributes: u.Attributes}, at(p)}
		}
	}
	for _, name := range sortedKeys(f.Devices) {
		d, p := f.Devices[name], "devices."+name
		switch prev, dup := ts.devices[name]; {
		case checkFixtureName(name) != "":
			e.add(doc.Errorf("devices", "%q: %s", name, checkFixtureName(name)))
		case dup:
			e.add(doc.Errorf(p, "device %q is also defined at %s; fixture names are shared by every test file of the directory", name, prev.at))
		case d.ID == "":
			e.add(doc.Errorf(p+".id", "required: the device ID"))
		default:
			ts.devices[name] = deviceFixture{Device{ID: d.ID, Platform: d.Platform, Profiles: d.Profiles}, at(p)}
		}
	}

	seen := map[string]int{}
	for i, tc := range f.Tests {
		c := suiteCase{ptCase: tc, doc: doc, path: fmt.Sprintf("tests[%d]", i)}
		c.line = doc.Line(c.path)
		if err := c.parse(); err != nil {
			e.add(err)
			continue
		}
		if prev, dup := seen[tc.Name]; dup {
			e.add(c.errorf("name", "duplicate test name %q (also tests[%d], line %d)", tc.Name, prev, doc.Line(fmt.Sprintf("tests[%d]", prev))))
			continue
		}
		seen[tc.Name] = i
		ts.cases = append(ts.cases, c)
	}
	return nil
}

// parse validates what a case says on its own and builds its request,
// applying the defaults (GET, /).
func (c *suiteCase) parse() error {
	switch {
	case c.Name == "":
		return c.errorf("name", "required: say what the case checks")
	case checkText(c.Name) != "":
		return c.errorf("name", "%s", checkText(c.Name))
	case c.User == "":
		return c.errorf("user", "required: the name of a user under users:")
	case c.App == "":
		return c.errorf("app", "required")
	}
	switch c.Want {
	case ActionAllow, ActionDeny:
	case "":
		return c.errorf("want", "required: allow or deny")
	default:
		return c.errorf("want", "must be allow or deny, not %q", c.Want)
	}
	if c.Want == ActionAllow && c.Rule != nil && *c.Rule == "" {
		return c.errorf("rule", `"" means the default deny, which never allows: name the allow rule, or leave rule out`)
	}
	c.req.App = c.App
	c.req.Method = c.Method
	if c.req.Method == "" {
		c.req.Method = "GET"
	}
	if !isToken(c.req.Method) {
		return c.errorf("method", "%q is not an HTTP method", c.Method)
	}
	c.req.Path = c.Path
	if c.req.Path == "" {
		c.req.Path = "/"
	}
	if !strings.HasPrefix(c.req.Path, "/") {
		return c.errorf("path", "%q must start with /", c.Path)
	}
	if c.Source != "" {
		a, err := netip.ParseAddr(c.Source)
		if err != nil {
			return c.errorf("source", "%q is not an IP address", c.Source)
		}
		c.req.Source = a
	}
	if c.Time != "" {
		t, err := time.Parse(time.RFC3339, c.Time)
		if err != nil {
			return c.errorf("time", "%q is not an RFC 3339 time such as 2026-11-23T10:00:00+09:00", c.Time)
		}
		c.req.Time = t
	}
	for i, g := range c.Groups {
		if msg := checkEntry(g); msg != "" {
			return c.errorf(fmt.Sprintf("groups[%d]", i), "%s", msg)
		}
		if slices.Contains(c.NotGroups, g) {
			return c.errorf(fmt.Sprintf("groups[%d]", i), "%q is also in not_groups", g)
		}
	}
	for i, g := range c.NotGroups {
		if msg := checkEntry(g); msg != "" {
			return c.errorf(fmt.Sprintf("not_groups[%d]", i), "%s", msg)
		}
	}
	return nil
}

// Run runs the suite against p, in file order. It returns an error, and no
// results, when the suite is empty or a case names an app, rule or group
// that p does not have.
func (ts *TestSuite) Run(p *Policy) ([]TestResult, error) {
	if len(ts.cases) == 0 {
		return nil, fmt.Errorf("policy dir %s: no tests found (no case under tests: in any *_test.yaml file)", ts.dir)
	}
	if p == nil {
		return nil, errors.New("no policy to test")
	}
	var e errList
	for i := range ts.cases {
		ts.cases[i].checkNames(p, &e)
	}
	if err := e.err(); err != nil {
		return nil, err
	}
	// One "now" for the whole run: cases without a time see the same clock.
	now := time.Now()
	out := make([]TestResult, 0, len(ts.cases))
	for i := range ts.cases {
		out = append(out, ts.cases[i].run(p, now))
	}
	return out, nil
}

// checkNames reports the names of c that p does not know.
func (c *suiteCase) checkNames(p *Policy, e *errList) {
	a := p.apps[c.App]
	if a == nil {
		e.add(c.errorf("app", "%s", unknownNameMsg("app", c.App, mapKeys(p.apps), "the policy has no rules for it")))
		return
	}
	if c.Rule != nil && *c.Rule != "" && !slices.ContainsFunc(a.rules, func(r rule) bool { return r.name == *c.Rule }) {
		names := make([]string, len(a.rules))
		for i := range a.rules {
			names[i] = a.rules[i].name
		}
		e.add(c.errorf("rule", "%s", unknownNameMsg("rule", *c.Rule, names, fmt.Sprintf("app %q has no rule of this name", c.App))))
	}
	for _, l := range []struct {
		field string
		names []string
	}{{"groups", c.Groups}, {"not_groups", c.NotGroups}} {
		for i, g := range l.names {
			if _, ok := p.byName[g]; !ok {
				e.add(c.errorf(fmt.Sprintf("%s[%d]", l.field, i), "%s", unknownNameMsg("group", g, mapKeys(p.byName), "the policy defines no group of this name")))
			}
		}
	}
}

// run decides c with p and compares the outcome with what c expects.
func (c *suiteCase) run(p *Policy, now time.Time) TestResult {
	req := c.req
	if req.Time.IsZero() {
		req.Time = now
	}
	got := p.Decide(req)
	res := TestResult{File: c.doc.File(), Line: c.line, Name: c.Name, Got: got}
	var problems []string
	wantAllow := c.Want == ActionAllow
	switch {
	case got.Allow != wantAllow:
		problems = append(problems, fmt.Sprintf("want %s, got %s: %s", c.Want, verdictWord(got.Allow), got.Reason))
	case c.Rule != nil && got.Rule != *c.Rule:
		problems = append(problems, fmt.Sprintf("want %s, got %s: %s", describeRule(*c.Rule), describeRule(got.Rule), got.Reason))
	}
	if len(c.Groups) > 0 || len(c.NotGroups) > 0 {
		in, err := p.Groups(req.Subject, req.Device)
		if err != nil {
			problems = append(problems, "group membership could not be evaluated: "+err.Error())
		} else {
			var missing, extra []string
			for _, g := range c.Groups {
				if !slices.Contains(in, g) {
					missing = append(missing, strconv.Quote(g))
				}
			}
			for _, g := range c.NotGroups {
				if slices.Contains(in, g) {
					extra = append(extra, strconv.Quote(g))
				}
			}
			if len(missing) > 0 || len(extra) > 0 {
				is := "no group"
				if len(in) > 0 {
					is = "groups " + strings.Join(quoteAll(in), ", ")
				}
				var want []string
				if len(missing) > 0 {
					want = append(want, "in "+strings.Join(missing, ", "))
				}
				if len(extra) > 0 {
					want = append(want, "in none of "+strings.Join(extra, ", "))
				}
				problems = append(problems, fmt.Sprintf("want the user %s, but they are in %s", strings.Join(want, " and "), is))
			}
		}
	}
	res.Pass = len(problems) == 0
	res.Msg = strings.Join(problems, "; ")
	return res
}

// User returns a copy of the subject of the user fixture name.
func (ts *TestSuite) User(name string) (Subject, bool) {
	u, ok := ts.users[name]
	if !ok {
		return Subject{}, false
	}
	return cloneSubject(u.subject), true
}

// Device returns a copy of the device fixture name.
func (ts *TestSuite) Device(name string) (*Device, bool) {
	d, ok := ts.devices[name]
	if !ok {
		return nil, false
	}
	return cloneDevice(&d.device), true
}

func verdictWord(allow bool) string {
	if allow {
		return ActionAllow
	}
	return ActionDeny
}

func describeRule(name string) string {
	if name == "" {
		return "the default deny (no rule)"
	}
	return "rule " + strconv.Quote(name)
}

// checkFixtureName returns "" or what is wrong with a fixture name.
func checkFixtureName(s string) string {
	const want = "fixture names are letters, digits, '-' and '_', starting with a letter or digit"
	if s == "" || len(s) > maxFixtureName {
		return fmt.Sprintf("%s, at most %d bytes", want, maxFixtureName)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (i == 0 || c != '-' && c != '_') {
			return want
		}
	}
	return ""
}

// unknownFixtureMsg says that a test names a fixture that does not exist.
func unknownFixtureMsg[V any](kind, name string, known map[string]V) string {
	return unknownNameMsg(kind, name, mapKeys(known), fmt.Sprintf("define it under %ss: in a test file of the directory", kind))
}

// unknownNameMsg says that name is not a known kind, suggesting the
// closest known name, else giving hint.
func unknownNameMsg(kind, name string, known []string, hint string) string {
	best, bestD := "", 4
	for _, k := range known {
		if d := config.EditDistance(name, k); d < bestD || d == bestD && k < best {
			best, bestD = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown %s %q (did you mean %q?)", kind, name, best)
	}
	return fmt.Sprintf("unknown %s %q: %s", kind, name, hint)
}

func mapKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := mapKeys(m)
	sort.Strings(out)
	return out
}

func cloneSubject(s Subject) Subject {
	s.Groups = slices.Clone(s.Groups)
	if s.Attributes != nil {
		attrs := make(map[string]string, len(s.Attributes))
		for k, v := range s.Attributes {
			attrs[k] = v
		}
		s.Attributes = attrs
	}
	return s
}

func cloneDevice(d *Device) *Device {
	c := *d
	c.Profiles = slices.Clone(d.Profiles)
	return &c
}
