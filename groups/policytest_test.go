package groups

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ptCompileDir compiles the policy files of dir the way `ztna policy test`
// does without a config.
func ptCompileDir(t *testing.T, dir string) *Policy {
	t.Helper()
	var src Source
	if err := LoadDir(dir, &src); err != nil {
		t.Fatal(err)
	}
	p, err := Compile(&src, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunTestsGood(t *testing.T) {
	dir := filepath.Join("testdata", "policytest", "good")
	results, err := RunTests(ptCompileDir(t, dir), dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 8 {
		t.Fatalf("%d results, want the 8 cases of team/soc_test.yaml", len(results))
	}
	for _, r := range results {
		if !r.Pass || r.Msg != "" {
			t.Errorf("%s:%d: %q failed: %s", r.File, r.Line, r.Name, r.Msg)
		}
	}
	first := results[0]
	if want := filepath.Join(dir, "team", "soc_test.yaml"); first.File != want || first.Line != 2 ||
		first.Name != "kim reads alerts from the office on a weekday" || !first.Got.Allow || first.Got.Rule != "soc-read" {
		t.Errorf("first result %+v, want %s:2, allowed by soc-read", first, want)
	}
}

func TestRunTestsFailures(t *testing.T) {
	dir := filepath.Join("testdata", "policytest", "failing")
	results, err := RunTests(ptCompileDir(t, dir), dir)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "cases_test.yaml")
	want := []struct {
		line int
		name string
		pass bool
		msg  string
	}{
		{6, "passes", true, ""},
		{10, "wrong verdict", false, `want allow, got deny: no rule of app "policy-portal" allows u-kim to GET /`},
		{14, "wrong rule", false, `want rule "no-contractors", got the default deny (no rule): no rule of app "soc" allows u-kim to POST /; rule "soc-write" allows it only from an enrolled device that meets the posture profile "strict"`},
		{20, "wrong groups", false, `want the user in "security-policy" and in none of "security-tech", but they are in groups "security-tech", "security-engineers"`},
	}
	if len(results) != len(want) {
		t.Fatalf("%d results, want %d: %+v", len(results), len(want), results)
	}
	for i, w := range want {
		r := results[i]
		if r.File != file || r.Line != w.line || r.Name != w.name || r.Pass != w.pass || r.Msg != w.msg {
			t.Errorf("result %d:\n got %s:%d %q pass=%v msg=%q\nwant %s:%d %q pass=%v msg=%q",
				i, r.File, r.Line, r.Name, r.Pass, r.Msg, file, w.line, w.name, w.pass, w.msg)
		}
	}
}

// policyForErrors is the policy the error cases below run against.
const policyForErrors = `groups:
  - name: eng
    include: ["idp:eng"]
apps:
  - app: wiki
    rules:
      - name: engineers
        groups: [eng]
`

func TestRunTestsErrors(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string // test files by name
		want  []string          // substrings of the error, in order
	}{
		{"no test files", nil, []string{"no tests found"}},
		{"fixtures but no cases", map[string]string{"a_test.yaml": "users:\n  kim: {id: u-kim}\n"}, []string{"no tests found"}},
		{"empty tests list", map[string]string{"a_test.yaml": "tests: []\n"}, []string{"no tests found"}},
		{"unknown field", map[string]string{"a_test.yaml": "tests:\n  - name: x\n    user: kim\n    app: wiki\n    want: allow\n    wnat: deny\n"},
			[]string{"a_test.yaml:6", "wnat"}},
		{"syntax error", map[string]string{"a_test.yaml": "tests:\n  - name: [\n"}, []string{"a_test.yaml:"}},
		{"unknown user fixture", map[string]string{"a_test.yaml": "users:\n  kim: {id: u-kim}\ntests:\n  - name: x\n    user: kin\n    app: wiki\n    want: allow\n"},
			[]string{`a_test.yaml:5: tests[0].user: unknown user "kin" (did you mean "kim"?)`}},
		{"unknown device fixture", map[string]string{"a_test.yaml": "users:\n  kim: {id: u-kim}\ntests:\n  - name: x\n    user: kim\n    device: laptop\n    app: wiki\n    want: allow\n"},
			[]string{`a_test.yaml:6: tests[0].device: unknown device "laptop": define it under devices: in a test file`}},
		{"unknown app", map[string]string{"a_test.yaml": "users:\n  kim: {id: u-kim}\ntests:\n  - name: x\n    user: kim\n    app: wikki\n    want: allow\n"},
			[]string{`a_test.yaml:6: tests[0].app: unknown app "wikki" (did you mean "wiki"?)`}},
		{"unknown rule", map[string]string{"a_test.yaml": "users:\n  kim: {id: u-kim}\ntests:\n  - name: x\n    user: kim\n    app: wiki\n    want: allow\n    rule: everyone\n"},
			[]string{`a_test.yaml:8: tests[0].rule: unknown rule "everyone": app "wiki" has no rule of this name`}},
		{"unknown groups", map[string]string{"a_test.yaml": "users:\n  kim: {id: u-kim}\ntests:\n  - name: x\n    user: kim\n    app: wiki\n    want: deny\n    groups: [eng]\n    not_groups: [enf, ops]\n"},
			[]string{`a_test.yaml:9: tests[0].not_groups[0]: unknown group "enf" (did you mean "eng"?)`, `tests[0].not_groups[1]: unknown group "ops"`}},
		{"fixtures are shared, so a name is defined once", map[string]string{
			"a_test.yaml":     "users:\n  kim: {id: u-kim}\n",
			"sub/b_test.yaml": "users:\n  kim: {id: u-kim2}\ntests:\n  - name: x\n    user: kim\n    app: wiki\n    want: deny\n"},
			[]string{`b_test.yaml:2: users.kim: user "kim" is also defined at `, `a_test.yaml:2`}},
		{"fixture without id", map[string]string{"a_test.yaml": "users:\n  kim: {email: kim@corp.example}\n"}, []string{"a_test.yaml:2: users.kim.id: required"}},
		{"bad fixture name", map[string]string{"a_test.yaml": "users:\n  kim.lee: {id: u-kim}\n"}, []string{`a_test.yaml:1: users: "kim.lee": fixture names are`}},
		{"duplicate test name", map[string]string{"a_test.yaml": "users:\n  kim: {id: u-kim}\ntests:\n  - {name: x, user: kim, app: wiki, want: deny}\n  - {name: x, user: kim, app: wiki, want: allow}\n"},
			[]string{`a_test.yaml:5: tests[1].name: duplicate test name "x" (also tests[0], line 4)`}},
		{"missing name", map[string]string{"a_test.yaml": "tests:\n  - {user: kim, app: wiki, want: deny}\n"}, []string{"a_test.yaml:2: tests[0].name: required"}},
		{"missing user", map[string]string{"a_test.yaml": "tests:\n  - {name: x, app: wiki, want: deny}\n"}, []string{"a_test.yaml:2: tests[0].user: required"}},
		{"missing app", map[string]string{"a_test.yaml": "tests:\n  - {name: x, user: kim, want: deny}\n"}, []string{"a_test.yaml:2: tests[0].app: required"}},
		{"missing want", map[string]string{"a_test.yaml": "tests:\n  - {name: x, user: kim, app: wiki}\n"}, []string{"a_test.yaml:2: tests[0].want: required: allow or deny"}},
		{"bad want", map[string]string{"a_test.yaml": "tests:\n  - {name: x, user: kim, app: wiki, want: allowed}\n"}, []string{`tests[0].want: must be allow or deny, not "allowed"`}},
		{"allow by the default deny", map[string]string{"a_test.yaml": "tests:\n  - {name: x, user: kim, app: wiki, want: allow, rule: \"\"}\n"}, []string{`tests[0].rule: "" means the default deny`}},
		{"bad method", map[string]string{"a_test.yaml": "tests:\n  - {name: x, user: kim, app: wiki, want: deny, method: \"GE T\"}\n"}, []string{`tests[0].method: "GE T" is not an HTTP method`}},
		{"relative path", map[string]string{"a_test.yaml": "tests:\n  - {name: x, user: kim, app: wiki, want: deny, path: docs}\n"}, []string{`tests[0].path: "docs" must start with /`}},
		{"bad source", map[string]string{"a_test.yaml": "tests:\n  - {name: x, user: kim, app: wiki, want: deny, source: 10.0.0.0/8}\n"}, []string{`tests[0].source: "10.0.0.0/8" is not an IP address`}},
		{"bad time", map[string]string{"a_test.yaml": "tests:\n  - name: x\n    user: kim\n    app: wiki\n    want: deny\n    time: 2026-11-23 10:00\n"}, []string{`a_test.yaml:6: tests[0].time: "2026-11-23 10:00" is not an RFC 3339 time`}},
		{"group expected both ways", map[string]string{"a_test.yaml": "tests:\n  - {name: x, user: kim, app: wiki, want: deny, groups: [eng], not_groups: [eng]}\n"}, []string{`tests[0].groups[0]: "eng" is also in not_groups`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			ptWriteFiles(t, dir, map[string]string{"policy.yaml": policyForErrors})
			p := ptCompileDir(t, dir)
			ptWriteFiles(t, dir, c.files)
			results, err := RunTests(p, dir)
			if err == nil {
				t.Fatalf("no error; results %+v", results)
			}
			if results != nil {
				t.Errorf("results %+v with an error, want none", results)
			}
			msg, rest := err.Error(), err.Error()
			for _, w := range c.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("error %q does not contain %q (in order)", msg, w)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

func TestRunTestsBoundsErrors(t *testing.T) {
	dir := t.TempDir()
	ptWriteFiles(t, dir, map[string]string{"policy.yaml": policyForErrors})
	p := ptCompileDir(t, dir)
	var b strings.Builder
	b.WriteString("tests:\n")
	for i := range 50 {
		b.WriteString("  - {name: case" + string(rune('A'+i%26)) + string(rune('a'+i/26)) + ", user: nobody, app: wiki, want: deny}\n")
	}
	ptWriteFiles(t, dir, map[string]string{"a_test.yaml": b.String()})
	_, err := RunTests(p, dir)
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxTestErrors+1 || lines[len(lines)-1] != "and 30 more errors" {
		t.Errorf("%d lines ending %q, want %d ending \"and 30 more errors\"", len(lines), lines[len(lines)-1], maxTestErrors+1)
	}
}

func TestRunTestsBadDir(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	ptWriteFiles(t, dir, map[string]string{"f": "x"})
	for _, c := range []struct{ dir, want string }{
		{filepath.Join(dir, "missing"), "policy dir: stat "},
		{file, "policy dir " + file + ": not a directory"},
	} {
		if _, err := LoadTests(c.dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LoadTests(%s) = %v, want an error containing %q", c.dir, err, c.want)
		}
	}
}

// TestRunTestsTimeDefaultsToNow checks that a case without a time is
// decided at the time of the run: its rule is open today and tomorrow (UTC,
// so that the run may cross midnight) and closed on the other days.
func TestRunTestsTimeDefaultsToNow(t *testing.T) {
	now := time.Now().UTC()
	day := func(d time.Time) string { return strings.ToLower(d.Weekday().String()[:3]) }
	today, tomorrow := day(now), day(now.AddDate(0, 0, 1))
	// The other five days, as a wrapping range from the day after tomorrow.
	others := day(now.AddDate(0, 0, 2)) + "-" + day(now.AddDate(0, 0, 6))
	dir := t.TempDir()
	ptWriteFiles(t, dir, map[string]string{
		"policy.yaml": fmt.Sprintf(`apps:
  - app: open
    rules:
      - name: today
        time: [{days: [%s, %s], zone: UTC}]
  - app: closed
    rules:
      - name: other-days
        time: [{days: [%s], zone: UTC}]
`, today, tomorrow, others),
		"a_test.yaml": `users:
  kim: {id: u-kim}
tests:
  - {name: open now, user: kim, app: open, want: allow, rule: today}
  - {name: closed now, user: kim, app: closed, want: deny, rule: ""}
`,
	})
	results, err := RunTests(ptCompileDir(t, dir), dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if !r.Pass {
			t.Errorf("%q: %s", r.Name, r.Msg)
		}
	}
}

func TestTestSuiteFixtures(t *testing.T) {
	ts, err := LoadTests(filepath.Join("testdata", "policytest", "good"))
	if err != nil {
		t.Fatal(err)
	}
	s, ok := ts.User("kim-after")
	if !ok || s.User != "u-kim" || s.Email != "kim@corp.example" || s.Attributes["department"] != "Security Policy" {
		t.Errorf("User(kim-after) = %+v, %v", s, ok)
	}
	// A copy: changing it must not change the fixture.
	s.Attributes["department"] = "Finance"
	if again, _ := ts.User("kim-after"); again.Attributes["department"] != "Security Policy" {
		t.Error("User returned the fixture's own attribute map")
	}
	d, ok := ts.Device("kims-mac")
	if !ok || d.ID != "d-1" || d.Platform != "macos" || strings.Join(d.Profiles, ",") != "baseline,strict" {
		t.Errorf("Device(kims-mac) = %+v, %v", d, ok)
	}
	d.Profiles[0] = "x"
	if again, _ := ts.Device("kims-mac"); again.Profiles[0] != "baseline" {
		t.Error("Device returned the fixture's own profile slice")
	}
	if _, ok := ts.User("nobody"); ok {
		t.Error("User(nobody) found a fixture")
	}
	if _, ok := ts.Device("nothing"); ok {
		t.Error("Device(nothing) found a fixture")
	}
}

func TestCheckFixtureName(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"kim", true}, {"kim-after", true}, {"kim_2", true}, {"2nd", true}, {"K", true},
		{"", false}, {"-kim", false}, {"_kim", false}, {"kim.lee", false}, {"kim lee", false},
		{"kim@corp", false}, {"kim[0]", false}, {strings.Repeat("a", maxFixtureName), true},
		{strings.Repeat("a", maxFixtureName+1), false}, {"킴", false},
	} {
		if got := checkFixtureName(c.name) == ""; got != c.ok {
			t.Errorf("checkFixtureName(%q) ok = %v, want %v", c.name, got, c.ok)
		}
	}
}

func ptWriteFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
