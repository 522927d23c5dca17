package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/config"
	"github.com/ztna-dev/ztna/internal/files"
)

const policyUsage = `Usage: ztna policy COMMAND [flags]

Works on a policy directory: the *.yaml files (groups and app rules) that the
edge reads from policy.dir and hot-reloads, kept in Git and reviewed like code,
with *_test.yaml files that say what the policy must decide (see
deploy/policy/README.md).

Commands:
  check [flags] DIR     compile the policy in DIR; print a summary or the first error (file:line: field: message)
  test [flags] DIR      check, then run the test cases of DIR's *_test.yaml files (what CI runs)
  explain --dir DIR --user NAME|ID --app APP [flags]
                        decide one request and say why: each group, each rule

With --config FILE, the edge config's apps, posture profiles, groups and app
rules are joined with DIR as the edge joins them, and the names the policy uses
are checked against the config.

Exit status: 0 ok, 1 an error or a failing test, 2 bad usage.
explain: 0 the request is allowed, 2 it is denied, 1 an error or bad usage.

Run 'ztna policy COMMAND -h' for the flags of a command.
`

// Sentinel outcomes of the policy commands, mapped to exit codes by
// runPolicy.
var (
	errDenied = errors.New("denied")       // explain: the request is denied (exit 2)
	errFailed = errors.New("tests failed") // test: already reported (exit 1)
)

// runPolicy runs `ztna policy …` and returns the exit code.
func runPolicy(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return 2
	}
	name := args[0]
	var err error
	switch name {
	case "check":
		err = runPolicyCheck(args[1:], stdout, stderr)
	case "test":
		err = runPolicyTest(args[1:], stdout, stderr)
	case "explain":
		err = runPolicyExplain(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, policyUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "ztna policy: unknown command %q\n\n%s", name, policyUsage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errDenied):
		return 2
	case errors.Is(err, errUsage):
		if name == "explain" {
			return 1 // 2 means "denied" there
		}
		return 2
	case errors.Is(err, errFailed):
		return 1
	}
	// One line per problem, each naming the file and line it is about.
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(stderr, "ztna policy %s: %s\n", name, line)
	}
	return 1
}

// policyFlags are the flags every policy command has.
type policyFlags struct {
	config, geoip string
}

func (pf *policyFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&pf.config, "config", "", "the edge config (ztna serve --config): check names against its apps and posture profiles,\nand join its groups and app rules with the policy, as the edge does")
	fs.StringVar(&pf.geoip, "geoip", "", "a MaxMind country database (.mmdb) for rules with countries\n(default: the config's policy.geoip_file)")
}

// parseWithDir parses args into fs, which take one positional DIR; flags may
// come before and after it.
func parseWithDir(fs *flag.FlagSet, args []string, stderr io.Writer) (string, error) {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", err
		}
		return "", errUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprintf(stderr, "ztna %s: the policy directory DIR is required\n", fs.Name())
		return "", errUsage
	}
	dir := fs.Arg(0)
	if err := fs.Parse(fs.Args()[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", err
		}
		return "", errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ztna %s: unexpected argument %q (one DIR only)\n", fs.Name(), fs.Arg(0))
		return "", errUsage
	}
	return dir, nil
}

func runPolicyCheck(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("policy check", flag.ContinueOnError)
	var pf policyFlags
	pf.register(fs)
	casbinModel := fs.Bool("casbin", false, "also print the Casbin model generated for the groups' conditions")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: ztna policy check [--config FILE] [--geoip FILE] [--casbin] DIR

Compiles the policy in DIR (every *.yaml file below it but *_test.yaml and
hidden ones) exactly as the edge does, and prints
  ok: N groups, M apps, K rules, version V
or the first problem as FILE:LINE: FIELD: MESSAGE. The version is the one the
edge reports in its audit events and metrics for the same policy (with
--config, when the config is the edge's). Exit status: 0 ok, 1 an error, 2 bad
usage.

Flags:
`)
		fs.PrintDefaults()
	}
	lp, _, err := checkPolicy(fs, args, &pf, stdout, stderr)
	if err != nil {
		return err
	}
	defer lp.close()
	if *casbinModel {
		fmt.Fprint(stdout, "\n"+lp.policy.CasbinModel())
	}
	return nil
}

// checkPolicy parses the flags and DIR of check and test, loads and
// compiles the policy and prints the summary line.
func checkPolicy(fs *flag.FlagSet, args []string, pf *policyFlags, stdout, stderr io.Writer) (*loadedPolicy, string, error) {
	dir, err := parseWithDir(fs, args, stderr)
	if err != nil {
		return nil, "", err
	}
	lp, err := loadPolicy(dir, *pf)
	if err != nil {
		return nil, "", err
	}
	fmt.Fprintln(stdout, lp.summary())
	return lp, dir, nil
}

func runPolicyTest(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("policy test", flag.ContinueOnError)
	var pf policyFlags
	pf.register(fs)
	verbose := fs.Bool("v", false, "print every test, not only the failures")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: ztna policy test [--config FILE] [--geoip FILE] [-v] DIR

Checks the policy in DIR (see 'ztna policy check -h'), then runs the cases of
every *_test.yaml file below DIR against it and prints one line per failure:
  FILE:LINE: test "NAME": want allow, got deny: REASON
and a summary. A test file that cannot be parsed or names an unknown user or
device fixture, app, rule or group is an error, and so is a DIR without a
single case: CI cannot pass vacuously. Exit status: 0 every test passed, 1 a
test failed or an error, 2 bad usage.

A test file (fixture names are shared by every test file of DIR):
  users:
    kim: {id: u-kim, email: kim@corp.example, groups: [employees],
          attributes: {department: Security Tech, title: Security Engineer}}
  devices:
    kims-mac: {id: d-1, platform: macos, profiles: [baseline, strict]}
  tests:
    - name: kim reaches the SOC console   # required, unique in the file
      user: kim                           # required
      device: kims-mac                    # absent: no device certificate
      app: soc                            # required
      method: GET                         # default GET
      path: /alerts                       # default /
      source: 10.1.2.3                    # the client's address
      time: 2026-11-23T10:00:00+09:00     # default: when the tests run
      want: allow                         # allow or deny (required)
      rule: soc-read                      # the deciding rule; "" is the default deny
      groups: [security-tech]             # the user is in these policy groups
      not_groups: [security-policy]       # and in none of these

Flags:
`)
		fs.PrintDefaults()
	}
	lp, dir, err := checkPolicy(fs, args, &pf, stdout, stderr)
	if err != nil {
		return err
	}
	defer lp.close()
	results, err := groups.RunTests(lp.policy, dir)
	if err != nil {
		return err
	}
	failed := 0
	for _, r := range results {
		switch {
		case !r.Pass:
			failed++
			fmt.Fprintf(stdout, "%s:%d: test %q: %s\n", r.File, r.Line, r.Name, r.Msg)
		case *verbose:
			fmt.Fprintf(stdout, "%s:%d: test %q: ok: %s\n", r.File, r.Line, r.Name, describeDecision(r.Got))
		}
	}
	if failed > 0 {
		fmt.Fprintf(stdout, "FAIL: %d of %d tests failed\n", failed, len(results))
		return errFailed
	}
	fmt.Fprintf(stdout, "ok: %d tests passed\n", len(results))
	return nil
}

// describeDecision is the short form of a decision in -v output.
func describeDecision(d groups.Decision) string {
	verdict := "deny"
	if d.Allow {
		verdict = "allow"
	}
	if d.Rule == "" {
		return verdict + " (no rule)"
	}
	return fmt.Sprintf("%s by rule %q", verdict, d.Rule)
}

// listFlag collects a repeatable flag.
type listFlag []string

func (f *listFlag) String() string     { return strings.Join(*f, " ") }
func (f *listFlag) Set(v string) error { *f = append(*f, v); return nil }

func runPolicyExplain(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("policy explain", flag.ContinueOnError)
	var pf policyFlags
	dir := fs.String("dir", "", "the policy directory (required)")
	pf.register(fs)
	user := fs.String("user", "", "a user fixture name from DIR's *_test.yaml files; any other value is a user ID (required)")
	app := fs.String("app", "", "the app (required)")
	method := fs.String("method", "GET", "the request method")
	path := fs.String("path", "/", "the request path (canonical, as the edge forwards it)")
	at := fs.String("time", "", "when the request arrives, RFC 3339 such as 2026-11-23T10:00:00+09:00 (default now)")
	source := fs.String("source", "", "the client's IP address (default: unknown)")
	device := fs.String("device", "", "a device fixture name from DIR's *_test.yaml files; any other value is the ID of an\nenrolled device that meets no posture profile (default: no device certificate)")
	email := fs.String("email", "", "the user's email address (replaces the fixture's)")
	var attrs, idpGroups listFlag
	fs.Var(&attrs, "attr", "a user attribute as the IdP claims map it, `KEY=VALUE` (repeatable; replaces the fixture's value of KEY)")
	fs.Var(&idpGroups, "idp-group", "the `NAME` of an IdP group claim the user has (repeatable; added to the fixture's)")
	asJSON := fs.Bool("json", false, "print the explanation as JSON")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: ztna policy explain --dir DIR --user NAME|ID --app APP [flags]

Decides one request with the policy in DIR, as the edge would, and explains it:
the decision and its reason, whether and why the user is in each group the
app's rules name, and what each rule of the app made of the request. The user
(and the device) can be a fixture of DIR's test files; flags change it, to ask
"what if": --user kim --attr department="Security Policy".

Exit status: 0 the request is allowed, 2 it is denied, 1 an error or bad usage.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	usageErr := func(format string, a ...any) error {
		fmt.Fprintf(stderr, "ztna policy explain: "+format+"\n", a...)
		return errUsage
	}
	switch {
	case *dir == "":
		return usageErr("--dir is required")
	case *user == "":
		return usageErr("--user is required (a user fixture name or a user ID)")
	case *app == "":
		return usageErr("--app is required")
	}
	req := groups.Request{App: *app, Method: *method, Path: *path, Time: time.Now()}
	if *at != "" {
		t, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			return usageErr("--time %q: want RFC 3339, such as 2026-11-23T10:00:00+09:00", *at)
		}
		req.Time = t
	}
	if *source != "" {
		a, err := netip.ParseAddr(*source)
		if err != nil {
			return usageErr("--source %q: not an IP address", *source)
		}
		req.Source = a
	}
	setAttrs := map[string]string{}
	for _, kv := range attrs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usageErr("--attr %q: want KEY=VALUE", kv)
		}
		setAttrs[k] = v
	}

	lp, err := loadPolicy(*dir, pf)
	if err != nil {
		return err
	}
	defer lp.close()
	if !lp.policy.HasApp(*app) {
		// Deciding it would say "deny", which hides a typo.
		return fmt.Errorf("--app %q: the policy has no rules for this app", *app)
	}
	ts, err := groups.LoadTests(*dir)
	if err != nil {
		return fmt.Errorf("fixtures: %w", err)
	}
	userFixture, deviceFixture := "", ""
	if s, ok := ts.User(*user); ok {
		req.Subject, userFixture = s, *user
	} else {
		req.Subject.User = *user
	}
	if *email != "" {
		req.Subject.Email = *email
	}
	if len(setAttrs) > 0 && req.Subject.Attributes == nil {
		req.Subject.Attributes = map[string]string{}
	}
	for k, v := range setAttrs {
		req.Subject.Attributes[k] = v
	}
	req.Subject.Groups = append(req.Subject.Groups, idpGroups...)
	if *device != "" {
		if d, ok := ts.Device(*device); ok {
			req.Device, deviceFixture = d, *device
		} else {
			req.Device = &groups.Device{ID: *device}
		}
	}

	x := lp.policy.Explain(req)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(x); err != nil {
			return err
		}
	} else {
		fmt.Fprint(stdout, describeRequest(req, userFixture, deviceFixture))
		fmt.Fprintln(stdout)
		fmt.Fprint(stdout, x.String())
	}
	if !x.Decision.Allow {
		return errDenied
	}
	return nil
}

// describeRequest says what explain decided: who, on what device, did what.
func describeRequest(r groups.Request, userFixture, deviceFixture string) string {
	var b strings.Builder
	line := func(label, format string, a ...any) {
		fmt.Fprintf(&b, "%-12s"+format+"\n", append([]any{label}, a...)...)
	}
	who := r.Subject.User
	if r.Subject.Email != "" {
		who += " <" + r.Subject.Email + ">"
	}
	if userFixture != "" {
		who += fmt.Sprintf(" (fixture %q)", userFixture)
	}
	line("user", "%s", who)
	if len(r.Subject.Attributes) > 0 {
		keys := make([]string, 0, len(r.Subject.Attributes))
		for k := range r.Subject.Attributes {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		kv := make([]string, len(keys))
		for i, k := range keys {
			kv[i] = k + "=" + strconv.Quote(r.Subject.Attributes[k])
		}
		line("attributes", "%s", strings.Join(kv, " "))
	}
	if len(r.Subject.Groups) > 0 {
		line("idp groups", "%s", strings.Join(r.Subject.Groups, ", "))
	}
	switch {
	case r.Device == nil:
		line("device", "none (no device certificate)")
	default:
		d := r.Device.ID
		if deviceFixture != "" {
			d += fmt.Sprintf(" (fixture %q)", deviceFixture)
		}
		if r.Device.Platform != "" {
			d += ", " + r.Device.Platform
		}
		profiles := "none"
		if len(r.Device.Profiles) > 0 {
			profiles = strings.Join(r.Device.Profiles, ", ")
		}
		line("device", "%s; meets posture profiles: %s", d, profiles)
	}
	from := "unknown"
	if r.Source.IsValid() {
		from = r.Source.String()
	}
	line("request", "%s %s of app %q from %s at %s", r.Method, r.Path, r.App, from, r.Time.Format(time.RFC3339))
	return b.String()
}

// edgeConfig is the part of an edge config file (`ztna serve --config`)
// that the policy depends on. The rest of each level is collected by the
// inline maps and ignored: the edge validates it, and this command must
// not break when the config grows a field. What is read is read as
// strictly as the edge reads it, so that errors name the same file, line
// and field.
type edgeConfig struct {
	Groups []groups.Group `yaml:"groups"`
	Apps   []struct {
		Name  string         `yaml:"name"`
		Rules []groups.Rule  `yaml:"rules"`
		Rest  map[string]any `yaml:",inline"`
	} `yaml:"apps"`
	Posture struct {
		Profiles []struct {
			Name string         `yaml:"name"`
			Rest map[string]any `yaml:",inline"`
		} `yaml:"profiles"`
		Rest map[string]any `yaml:",inline"`
	} `yaml:"posture"`
	Policy struct {
		GeoIPFile string         `yaml:"geoip_file"`
		Rest      map[string]any `yaml:",inline"`
	} `yaml:"policy"`
	Rest map[string]any `yaml:",inline"`
}

// loadedPolicy is a compiled policy and what it was compiled from.
type loadedPolicy struct {
	policy *groups.Policy
	src    groups.Source
	geo    *groups.GeoIP
}

func (lp *loadedPolicy) close() {
	if lp.geo != nil {
		lp.geo.Close()
	}
}

// summary is check's one line.
func (lp *loadedPolicy) summary() string {
	apps := map[string]bool{}
	rules := 0
	for _, a := range lp.src.Apps {
		apps[a.App] = true
		rules += len(a.Rules)
	}
	return fmt.Sprintf("ok: %d groups, %d apps, %d rules, version %s", len(lp.src.Groups), len(apps), rules, lp.policy.Version())
}

// loadPolicy loads and compiles the policy of dir, joined with the config
// given with --config as the edge joins them: the config's groups and app
// rules first, then the files of dir.
func loadPolicy(dir string, pf policyFlags) (*loadedPolicy, error) {
	lp := &loadedPolicy{}
	var opt groups.Options
	geoPath, geoFrom := pf.geoip, "--geoip"
	if pf.config != "" {
		data, _, err := files.ReadRegular(pf.config, config.MaxFileSize)
		if err != nil {
			return nil, fmt.Errorf("--config %s: %w", pf.config, err)
		}
		var cfg edgeConfig
		doc, err := config.Parse(pf.config, data, &cfg)
		if err != nil {
			return nil, err
		}
		opt.Apps = make([]string, len(cfg.Apps))
		rules := make([]groups.AppRules, len(cfg.Apps))
		for i, a := range cfg.Apps {
			opt.Apps[i] = a.Name
			rules[i] = groups.AppRules{App: a.Name, Rules: a.Rules}
		}
		lp.src.AddConfig(doc, cfg.Groups, rules)
		opt.Profiles = make([]string, 0, len(cfg.Posture.Profiles))
		for _, p := range cfg.Posture.Profiles {
			opt.Profiles = append(opt.Profiles, p.Name)
		}
		if geoPath == "" && cfg.Policy.GeoIPFile != "" {
			geoPath, geoFrom = cfg.Policy.GeoIPFile, "policy.geoip_file of "+pf.config+" (override with --geoip)"
		}
	}
	if geoPath != "" {
		geo, err := groups.OpenGeoIP(geoPath)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", geoFrom, err)
		}
		lp.geo, opt.GeoIP = geo, geo
	}
	if err := groups.LoadDir(dir, &lp.src); err != nil {
		lp.close()
		return nil, err
	}
	p, err := groups.Compile(&lp.src, opt)
	if err != nil {
		lp.close()
		return nil, err
	}
	lp.policy = p
	return lp, nil
}
