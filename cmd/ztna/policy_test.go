package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"

	"github.com/ztna-dev/ztna/groups"
)

// examplePolicy is the GitOps example shipped in deploy/: it must pass.
var examplePolicy = filepath.Join("..", "..", "deploy", "policy")

// policyRun runs `ztna policy ARGS…` in-process.
func policyRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = runPolicy(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// writeTree writes files (by path relative to dir) and returns dir.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const smallPolicy = `groups:
  - name: eng
    include: ["idp:eng"]
apps:
  - app: wiki
    rules:
      - name: engineers
        groups: [eng]
`

const smallTests = `users:
  ann: {id: u-ann, groups: [eng]}
  bob: {id: u-bob}
tests:
  - {name: ann reads, user: ann, app: wiki, want: allow, rule: engineers}
  - {name: bob does not, user: bob, app: wiki, want: deny, rule: ""}
`

func TestPolicyUsage(t *testing.T) {
	dir := writeTree(t, map[string]string{"p.yaml": smallPolicy, "p_test.yaml": smallTests})
	cases := []struct {
		args             []string
		code             int
		inStdout, inStdr string
	}{
		{nil, 2, "", "Usage: ztna policy COMMAND"},
		{[]string{"--help"}, 0, "explain --dir DIR --user NAME|ID --app APP", ""},
		{[]string{"help"}, 0, "Exit status: 0 ok, 1 an error or a failing test, 2 bad usage.", ""},
		{[]string{"frob"}, 2, "", `ztna policy: unknown command "frob"`},
		{[]string{"check"}, 2, "", "ztna policy check: the policy directory DIR is required"},
		{[]string{"check", dir, "extra"}, 2, "", `ztna policy check: unexpected argument "extra"`},
		{[]string{"check", "--nope", dir}, 2, "", "flag provided but not defined: -nope"},
		{[]string{"check", "-h"}, 0, "", "Usage: ztna policy check [--config FILE] [--geoip FILE] [--casbin] DIR"},
		{[]string{"test", "-h"}, 0, "", "not_groups: [security-policy]"},
		{[]string{"test", dir, "--bogus"}, 2, "", "flag provided but not defined: -bogus"},
		{[]string{"explain", "--help"}, 0, "", "Exit status: 0 the request is allowed, 2 it is denied, 1 an error or bad usage."},
		// explain's usage errors exit 1: its 2 means "denied".
		{[]string{"explain", "--user", "ann", "--app", "wiki"}, 1, "", "ztna policy explain: --dir is required"},
		{[]string{"explain", "--dir", dir, "--app", "wiki"}, 1, "", "--user is required"},
		{[]string{"explain", "--dir", dir, "--user", "ann"}, 1, "", "--app is required"},
		{[]string{"explain", "--dir", dir, "--user", "ann", "--app", "wiki", "--time", "tomorrow"}, 1, "", `--time "tomorrow": want RFC 3339`},
		{[]string{"explain", "--dir", dir, "--user", "ann", "--app", "wiki", "--source", "10.0.0.0/8"}, 1, "", `--source "10.0.0.0/8": not an IP address`},
		{[]string{"explain", "--dir", dir, "--user", "ann", "--app", "wiki", "--attr", "department"}, 1, "", `--attr "department": want KEY=VALUE`},
		{[]string{"explain", "--dir", dir, "--user", "ann", "--app", "wiki", "--nope"}, 1, "", "flag provided but not defined: -nope"},
		{[]string{"explain", "--dir", dir, "--user", "ann", "--app", "wikki"}, 1, "", `ztna policy explain: --app "wikki": the policy has no rules for this app`},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, "_"), func(t *testing.T) {
			code, stdout, stderr := policyRun(t, c.args...)
			if code != c.code {
				t.Errorf("exit code %d, want %d; stderr: %s", code, c.code, stderr)
			}
			if !strings.Contains(stdout, c.inStdout) {
				t.Errorf("stdout %q does not contain %q", stdout, c.inStdout)
			}
			if !strings.Contains(stderr, c.inStdr) {
				t.Errorf("stderr %q does not contain %q", stderr, c.inStdr)
			}
		})
	}
}

func TestPolicyExampleRepositoryPasses(t *testing.T) {
	summary := regexp.MustCompile(`^ok: 11 groups, 7 apps, 16 rules, version [0-9a-f]{12}$`)

	code, stdout, stderr := policyRun(t, "check", examplePolicy)
	if code != 0 || stderr != "" || !summary.MatchString(strings.TrimSuffix(stdout, "\n")) {
		t.Fatalf("check: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}

	// --casbin prints the generated model: one matcher per group condition.
	code, stdout, _ = policyRun(t, "check", "--casbin", examplePolicy)
	if code != 0 || !strings.Contains(stdout, "[matchers]\n# group \"security-tech\"\nm = (r.sub.user_department == \"Security Tech\")\n") {
		t.Errorf("check --casbin: exit %d\n%s", code, stdout)
	}

	// -v after DIR: flags may follow the directory.
	code, stdout, stderr = policyRun(t, "test", examplePolicy, "-v")
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if code != 0 || stderr != "" {
		t.Fatalf("test: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if !summary.MatchString(lines[0]) || lines[len(lines)-1] != "ok: 33 tests passed" || len(lines) != 33+2 {
		t.Errorf("test -v output:\n%s", stdout)
	}
	wantLine := filepath.Join(examplePolicy, "security_test.yaml") + `:56: test "after the move Kim grants policy exceptions": ok: allow by rule "policy-team"`
	if !strings.Contains(stdout, wantLine+"\n") {
		t.Errorf("test -v output lacks %q:\n%s", wantLine, stdout)
	}

	// Without -v only the summaries.
	code, stdout, _ = policyRun(t, "test", examplePolicy)
	if code != 0 || strings.Count(stdout, "\n") != 2 {
		t.Errorf("test: exit %d, output:\n%s", code, stdout)
	}

	// The dispatch from `ztna`.
	var out, errOut bytes.Buffer
	if code := run([]string{"policy", "check", examplePolicy}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "ok: ") {
		t.Errorf("ztna policy check: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
}

func TestPolicyCheckAndTestErrors(t *testing.T) {
	brokenPolicy := strings.Replace(smallPolicy, "groups: [eng]", "groups: [engg]", 1)
	failingTests := strings.Replace(smallTests, `want: deny, rule: ""`, "want: allow", 1)
	cases := []struct {
		name     string
		files    map[string]string
		cmds     []string // run as each of these commands
		inStdout []string
		inStderr string
	}{
		{"broken policy", map[string]string{"p.yaml": brokenPolicy, "p_test.yaml": smallTests}, []string{"check", "test"}, nil,
			`p.yaml:8: apps[0].rules[0].groups[0]: unknown group "engg" (did you mean "eng"?)`},
		{"policy syntax error", map[string]string{"p.yaml": "apps:\n  - app: [\n"}, []string{"check", "test"}, nil, "p.yaml:"},
		{"no policy files", map[string]string{"p_test.yaml": smallTests}, []string{"check", "test"}, nil, "no policy files (*.yaml)"},
		{"failing test", map[string]string{"p.yaml": smallPolicy, "p_test.yaml": failingTests}, []string{"test"},
			[]string{`p_test.yaml:6: test "bob does not": want allow, got deny: no rule of app "wiki" allows u-bob to GET /` + "\n", "FAIL: 1 of 2 tests failed\n"}, ""},
		{"no tests", map[string]string{"p.yaml": smallPolicy}, []string{"test"}, nil, "no tests found"},
		{"a test file names an unknown fixture", map[string]string{"p.yaml": smallPolicy, "p_test.yaml": strings.Replace(smallTests, "user: bob", "user: bobb", 1)},
			[]string{"test"}, nil, `p_test.yaml:6: tests[1].user: unknown user "bobb" (did you mean "bob"?)`},
	}
	for _, c := range cases {
		for _, cmd := range c.cmds {
			t.Run(c.name+"/"+cmd, func(t *testing.T) {
				dir := writeTree(t, c.files)
				code, stdout, stderr := policyRun(t, cmd, dir)
				if code != 1 {
					t.Errorf("exit %d, want 1", code)
				}
				for _, w := range c.inStdout {
					if !strings.Contains(stdout, w) {
						t.Errorf("stdout %q does not contain %q", stdout, w)
					}
				}
				if c.inStderr != "" {
					if !strings.HasPrefix(stderr, "ztna policy "+cmd+": ") || !strings.Contains(stderr, c.inStderr) {
						t.Errorf("stderr %q does not start with %q and contain %q", stderr, "ztna policy "+cmd+": ", c.inStderr)
					}
				}
			})
		}
	}
}

func TestPolicyExplain(t *testing.T) {
	type args = []string
	base := args{"explain", "--dir", examplePolicy}
	cases := []struct {
		name     string
		args     args
		code     int
		inStdout []string
	}{
		{"a fixture, allowed", args{"--user", "kim-2025", "--app", "soc", "--path", "/alerts"}, 0, []string{
			`user        u-kim <kim@corp.example> (fixture "kim-2025")`,
			`attributes  department="Security Tech" title="Security Engineer"`,
			"device      none (no device certificate)",
			"\nALLOW: allowed by rule \"analysts-read\"\n",
			"✔ security-engineers",
		}},
		{"a fixture and a device fixture, denied", args{"--user", "kim-2025", "--device", "kims-mac-edr-stopped", "--app", "soc", "--method", "POST", "--path", "/alerts/1/close"}, 2, []string{
			`device      d-kim-mac (fixture "kims-mac-edr-stopped"), macos; meets posture profiles: baseline`,
			`DENY: no rule of app "soc" allows kim@corp.example to POST /alerts/1/close; rule "engineers-respond" allows it only from an enrolled device that meets the posture profile "strict"`,
		}},
		{"what if: the fixture after a change of job", args{"--user", "kim-2025", "--attr", "department=Security Policy", "--attr", "title=Policy Manager",
			"--app", "policy-portal", "--method", "POST", "--path", "/exceptions"}, 0, []string{
			`attributes  department="Security Policy" title="Policy Manager"`,
			`ALLOW: allowed by rule "policy-team"`,
		}},
		{"a user ID built from flags", args{"--user", "u-new", "--email", "new@corp.example", "--idp-group", "employees", "--app", "policy-portal", "--path", "/standards"}, 0, []string{
			"user        u-new <new@corp.example>\n",
			"idp groups  employees",
			`ALLOW: allowed by rule "everyone-reads-standards"`,
		}},
		{"an unknown device is an enrolled device that meets no profile", args{"--user", "kim-2026", "--device", "d-other", "--app", "payments-admin"}, 2, []string{
			"device      d-other; meets posture profiles: none",
			`rule "policy-managers" allows it only from an enrolled device that meets the posture profile "strict"`,
		}},
		{"time and source", args{"--user", "jae", "--app", "ledger", "--method", "POST", "--path", "/ledger/approvals", "--time", "2026-11-28T10:00:00+09:00", "--source", "10.20.1.1"}, 2, []string{
			"request     POST /ledger/approvals of app \"ledger\" from 10.20.1.1 at 2026-11-28T10:00:00+09:00",
			`rule "approvers-in-office-hours" allows it only during mon-fri 08:00–20:00 Asia/Seoul`,
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := policyRun(t, append(base, c.args...)...)
			if code != c.code || stderr != "" {
				t.Errorf("exit %d, want %d; stderr: %s", code, c.code, stderr)
			}
			for _, w := range c.inStdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout does not contain %q:\n%s", w, stdout)
				}
			}
		})
	}
}

func TestPolicyExplainJSON(t *testing.T) {
	code, stdout, stderr := policyRun(t, "explain", "--dir", examplePolicy, "--user", "lee", "--app", "soc", "--json")
	if code != 2 {
		t.Fatalf("exit %d, want 2 (denied); stderr: %s", code, stderr)
	}
	var x groups.Explanation
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&x); err != nil {
		t.Fatalf("not an Explanation: %v\n%s", err, stdout)
	}
	if x.Decision.Allow || x.Decision.Rule != "no-contractors" || x.Version == "" || len(x.Rules) != 3 || !x.Rules[0].Matched {
		t.Errorf("explanation %+v", x)
	}
}

// TestPolicyWithConfig checks --config: the config's app and profile
// names are what the policy may name, and its groups and rules join the
// policy, with errors naming the config's lines.
func TestPolicyWithConfig(t *testing.T) {
	const cfg = `# an edge config; fields the policy does not depend on are ignored
listen: {address: ":443"}
groups:
  - name: staff
    include: ["idp:staff"]
apps:
  - name: wiki
    host: wiki.corp.example
    upstream: http://10.0.0.5:8080
    rules:
      - name: staff-read
        groups: [staff]
        methods: [GET]
  - name: git
    host: git.corp.example
    upstream: http://10.0.0.6:8080
posture:
  report_interval: 30s
  profiles:
    - name: strict
      max_age: 90s
`
	const policy = `apps:
  - app: wiki
    rules:
      - name: engineers
        groups: ["idp:eng"]
        posture: strict
`
	const tests = `users:
  sam: {id: u-sam, groups: [staff]}
tests:
  - {name: the config's rule, user: sam, app: wiki, want: allow, rule: staff-read}
  - {name: an app of the config without rules, user: sam, app: git, want: deny, rule: ""}
`
	cases := []struct {
		name     string
		cfg      string
		policy   string
		code     int
		inStdout string
		inStderr string
	}{
		{"ok", cfg, policy, 0, "ok: 1 groups, 2 apps, 2 rules, version ", ""},
		{"an app the config lacks", cfg, strings.Replace(policy, "app: wiki", "app: wikki", 1), 1, "",
			"p.yaml:2: apps[0].app: no app of this name is defined in the config"},
		{"a profile the config lacks", cfg, strings.Replace(policy, "posture: strict", "posture: strickt", 1), 1, "",
			`p.yaml:6: apps[0].rules[0].posture: no posture profile "strickt" is defined in the config (posture.profiles)`},
		{"an error in the config's rules names the config's line", strings.Replace(cfg, "groups: [staff]", "groups: [stuff]", 1), policy, 1, "",
			`c.yaml:12: apps[0].rules[0].groups[0]: unknown group "stuff" (did you mean "staff"?)`},
		{"a rule name in both", cfg, strings.Replace(policy, "name: engineers", "name: staff-read", 1), 1, "",
			`p.yaml:4: apps[0].rules[0].name: duplicate rule name "staff-read" (also `},
		{"a bad config", "apps: {name: x}\n", policy, 1, "", "c.yaml:1: apps: "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeTree(t, map[string]string{"c.yaml": c.cfg, "policy/p.yaml": c.policy, "policy/p_test.yaml": tests})
			code, stdout, stderr := policyRun(t, "test", "--config", filepath.Join(dir, "c.yaml"), filepath.Join(dir, "policy"))
			if code != c.code || !strings.Contains(stdout, c.inStdout) || !strings.Contains(stderr, c.inStderr) {
				t.Errorf("exit %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", code, c.code, stdout, c.inStdout, stderr, c.inStderr)
			}
		})
	}
	// Without a config, the posture profile the directory names is not
	// checked: nothing says which profiles exist.
	dir := writeTree(t, map[string]string{"p.yaml": policy})
	if code, stdout, stderr := policyRun(t, "check", dir); code != 0 {
		t.Errorf("check without --config: exit %d\n%s%s", code, stdout, stderr)
	}
}

func TestPolicyGeoIP(t *testing.T) {
	const policy = `apps:
  - app: wiki
    rules:
      - name: from-korea
        countries: [KR]
`
	const tests = `users:
  ann: {id: u-ann}
tests:
  - {name: from Korea, user: ann, app: wiki, source: 203.0.113.9, want: allow, rule: from-korea}
  - {name: from elsewhere, user: ann, app: wiki, source: 198.51.100.9, want: deny, rule: ""}
`
	dir := writeTree(t, map[string]string{"policy/p.yaml": policy, "policy/p_test.yaml": tests})
	db := writeCountryDB(t, filepath.Join(dir, "country.mmdb"))
	pdir := filepath.Join(dir, "policy")

	code, _, stderr := policyRun(t, "check", pdir)
	if code != 1 || !strings.Contains(stderr, "countries: needs a GeoIP database") {
		t.Errorf("without --geoip: exit %d, stderr %q", code, stderr)
	}
	code, stdout, stderr := policyRun(t, "test", "--geoip", db, pdir)
	if code != 0 || !strings.HasSuffix(stdout, "ok: 2 tests passed\n") {
		t.Errorf("--geoip: exit %d\n%s%s", code, stdout, stderr)
	}
	// The config's policy.geoip_file is the default.
	cfg := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(cfg, []byte("apps: [{name: wiki}]\npolicy: {geoip_file: "+db+"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := policyRun(t, "test", "--config", cfg, pdir); code != 0 {
		t.Errorf("geoip_file from --config: exit %d\n%s%s", code, stdout, stderr)
	}
	missing := filepath.Join(dir, "missing.mmdb")
	code, _, stderr = policyRun(t, "check", "--geoip", missing, pdir)
	if code != 1 || !strings.Contains(stderr, "ztna policy check: --geoip: open GeoIP database "+missing) {
		t.Errorf("missing --geoip: exit %d, stderr %q", code, stderr)
	}
}

// writeCountryDB writes a MaxMind country database: 203.0.113.0/24 is KR,
// 198.51.100.0/24 is US.
func writeCountryDB(t *testing.T, path string) string {
	t.Helper()
	w, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            "GeoLite2-Country",
		Description:             map[string]string{"en": "ztna test database"},
		IncludeReservedNetworks: true, // the documentation ranges are reserved
		IPVersion:               6,
	})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, code := range map[string]string{"203.0.113.0/24": "KR", "198.51.100.0/24": "US"} {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Insert(n, mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(code)}}); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}
