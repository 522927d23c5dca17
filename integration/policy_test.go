package integration

// policy_test.go: dynamic groups and policy, end to end. A job change at
// the IdP moves a user's access between the seed's groups A, C and B and
// closes the live connections the new groups no longer allow (seed 000);
// a GitOps policy directory is hot-reloaded, a broken change is refused
// while the old policy keeps deciding; and policy swaps under load never
// give a request anything but one version's answer.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy"
)

// policyAudit is an audit event with the policy version that decided it.
type policyAudit struct {
	Kind     string `json:"kind"`
	User     string `json:"user"`
	App      string `json:"app"`
	Method   string `json:"method"`
	Path     string `json:"path"`
	Decision string `json:"decision"`
	Rule     string `json:"rule"`
	Reason   string `json:"reason"`
	Policy   string `json:"policy"`
}

// policyAudits parses the audit output so far. The writer flushes a full
// buffer as it is, which may end inside a line: that last, unfinished
// line is left for the next call.
func policyAudits(t *testing.T, env *devenv.Env) []policyAudit {
	t.Helper()
	var out []policyAudit
	for _, line := range auditLines(t, env) {
		var ev policyAudit
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("audit line is not JSON: %v: %q", err, line)
		}
		out = append(out, ev)
	}
	return out
}

// waitPolicyAudit waits for an audit event that match accepts.
func waitPolicyAudit(t *testing.T, env *devenv.Env, what string, match func(policyAudit) bool) policyAudit {
	t.Helper()
	var found policyAudit
	waitFor(t, 5*time.Second, "an audit event: "+what, func() bool {
		for _, ev := range policyAudits(t, env) {
			if match(ev) {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// metricLines returns the lines of the admin listener's /metrics that
// start with prefix.
func metricLines(t *testing.T, env *devenv.Env, prefix string) []string {
	t.Helper()
	addr := env.Server.AdminAddr()
	if addr == nil {
		t.Fatal("the admin listener is off")
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			out = append(out, sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	return out
}

var policyInfoRE = regexp.MustCompile(`^ztna_policy_info\{version="([0-9a-f]+)"\} 1$`)

// policyVersion is the policy version in use as ztna_policy_info shows
// it: exactly one series, set to 1.
func policyVersion(t *testing.T, env *devenv.Env) string {
	t.Helper()
	lines := metricLines(t, env, "ztna_policy_info{")
	if len(lines) != 1 {
		t.Fatalf("ztna_policy_info: %q, want exactly one version", lines)
	}
	m := policyInfoRE.FindStringSubmatch(lines[0])
	if m == nil {
		t.Fatalf("ztna_policy_info: %q, want version=\"HEX\" set to 1", lines[0])
	}
	return m[1]
}

// readyz is the status of the admin listener's /readyz.
func readyz(t *testing.T, env *devenv.Env) int {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + env.Server.AdminAddr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// defaultDeny is the reason of a deny by no rule, as users and the audit
// log see it.
func defaultDeny(app, who, method, path string) string {
	return fmt.Sprintf("no rule of app %q allows %s to %s %s", app, who, method, path)
}

// expectDefaultDeny checks that c's GET of app's path is refused by no
// rule, with the reason that says so.
func expectDefaultDeny(t *testing.T, env *devenv.Env, c *http.Client, app, path string) {
	t.Helper()
	e := expectJSONError(t, get(t, c, env.AppURL(app)+path, asAPI), http.StatusForbidden, "access_denied")
	if want := defaultDeny(app, "alice@example.com", "GET", path); e.Rule != "" || e.Message != want {
		t.Errorf("%s%s: rule %q message %q, want the default deny %q", app, path, e.Rule, e.Message, want)
	}
}

// openWS opens a WebSocket to app's echo with the session cookie and
// checks one round trip as alice.
func openWS(t *testing.T, env *devenv.Env, app, cookie string) *websocket.Conn {
	t.Helper()
	conn, resp, err := wsDial(t, env, app, "/ws", cookie)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("WebSocket to %s: %v (status %d)", app, err, status)
	}
	echo(t, conn, "hello "+app, "u-alice")
	return conn
}

// aliceInSecurityTech signs alice in on secure and hands her session to
// soc and grc, checks the seed's starting point — Security Tech / Security
// Engineer: groups A and C, so secure and soc but not grc — and opens a
// live WebSocket to secure and to soc. It returns her browser and cookie.
func aliceInSecurityTech(t *testing.T, env *devenv.Env) (*http.Client, string, map[string]*websocket.Conn) {
	t.Helper()
	alice := loginAs(t, env, "secure", "alice", alicePassword)
	if r := navigate(t, env, alice, env.AppURL("soc")+"/"); r.StatusCode != http.StatusOK {
		t.Fatalf("alice on soc: %d, want 200", r.StatusCode)
	}
	if r := navigate(t, env, alice, env.AppURL("grc")+"/"); r.StatusCode != http.StatusForbidden {
		t.Fatalf("alice on grc: %d, want 403", r.StatusCode)
	}
	cookie := sessionCookie(t, env, alice, "secure")
	for _, app := range []string{"soc", "grc"} {
		if sessionCookie(t, env, alice, app) != cookie {
			t.Fatalf("the handoff to %s gave another session", app)
		}
	}
	for _, app := range []string{"secure", "soc"} {
		if rep := whoamiAs(t, alice, env, app, "/"); rep.User != "u-alice" || !rep.Verified {
			t.Fatalf("alice on %s before the move: user %q verified %v", app, rep.User, rep.Verified)
		}
	}
	expectDefaultDeny(t, env, alice, "grc", "/")
	conns := map[string]*websocket.Conn{"secure": openWS(t, env, "secure", cookie), "soc": openWS(t, env, "soc", cookie)}
	return alice, cookie, conns
}

// moveAliceToSecurityPolicy is the seed's job change, made at the IdP:
// Security Policy / Policy Manager, which is group B only.
func moveAliceToSecurityPolicy(t *testing.T, env *devenv.Env) {
	t.Helper()
	if err := env.IdP.SetAttribute("alice", "department", "Security Policy"); err != nil {
		t.Fatal(err)
	}
	if err := env.IdP.SetAttribute("alice", "title", "Policy Manager"); err != nil {
		t.Fatal(err)
	}
}

// expectAliceMoved checks alice's access after the move: secure and soc
// refused by no rule, for requests and new WebSockets alike; grc open,
// with her verified identity; and the audit events of those decisions
// carry the policy version in use, which the move did not change.
func expectAliceMoved(t *testing.T, env *devenv.Env, alice *http.Client, cookie, version string) {
	t.Helper()
	expectDefaultDeny(t, env, alice, "secure", "/")
	expectDefaultDeny(t, env, alice, "soc", "/")
	rep := whoamiAs(t, alice, env, "grc", "/")
	// The whoami page shows the assertion's claims (user, email, name,
	// IdP groups), not the department or title: the attributes themselves
	// are not forwarded to apps, so there is nothing more to check there.
	if rep.User != "u-alice" || !rep.Verified || rep.Claims == nil || rep.Claims.Subject != "u-alice" || rep.Claims.Audience != "grc" {
		t.Errorf("alice on grc after the move: %+v", rep)
	}
	if _, resp, err := wsDial(t, env, "secure", "/ws", cookie); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("a new WebSocket to secure after the move: err %v resp %v, want 403", err, resp)
	}
	openWS(t, env, "grc", cookie)

	if v := policyVersion(t, env); v != version {
		t.Errorf("the policy version changed from %s to %s: a job change is not a policy change", version, v)
	}
	for _, app := range []string{"secure", "soc"} {
		waitPolicyAudit(t, env, "alice refused on "+app+" by no rule", func(ev policyAudit) bool {
			return ev.Kind == "request" && ev.User == "u-alice" && ev.App == app && ev.Decision == "deny" &&
				ev.Rule == "" && ev.Reason == defaultDeny(app, "alice@example.com", "GET", "/") && ev.Policy == version
		})
	}
	waitPolicyAudit(t, env, "alice allowed on grc by group B", func(ev policyAudit) bool {
		return ev.Kind == "request" && ev.User == "u-alice" && ev.App == "grc" && ev.Decision == "allow" &&
			ev.Rule == "security-policy" && ev.Policy == version
	})
}

// Seed 000's example, end to end: alice moves from Security Tech /
// Security Engineer (groups A and C) to Security Policy / Policy Manager
// (group B). An admin's refresh makes the IdP's change take effect at
// once: her live WebSockets to the apps of A and C close within a second,
// A and C refuse her, B lets her in.
func TestRoleChangeMovesAccess(t *testing.T) {
	env := newEnv(t)
	alice, cookie, conns := aliceInSecurityTech(t, env)
	version := policyVersion(t, env)
	waitPolicyAudit(t, env, "alice allowed on secure by group A", func(ev policyAudit) bool {
		return ev.Kind == "request" && ev.User == "u-alice" && ev.App == "secure" && ev.Decision == "allow" &&
			ev.Rule == "security-team" && ev.Policy == version
	})

	moveAliceToSecurityPolicy(t, env)
	// The IdP's change alone moves nothing yet: the session holds the
	// attributes of the last refresh (5 minutes apart by default).
	for app, conn := range conns {
		echo(t, conn, "still "+app, "u-alice")
	}

	closed := map[string]<-chan time.Time{}
	for app, conn := range conns {
		closed[app] = closedAt(conn)
	}
	start := time.Now()
	r := adminCall(t, env, http.MethodPost, "/api/users/u-alice/refresh", "")
	answered := time.Since(start)
	out := decodeObject(t, r, http.StatusOK)
	if n, _ := out["refreshed"].(float64); n < 1 || out["user"] != "u-alice" || out["ended"] != float64(0) || out["failed"] != nil {
		t.Fatalf("refresh answer %v, want u-alice with refreshed ≥ 1, ended 0", out)
	}
	t.Logf("the refresh call answered after %v", answered.Round(time.Millisecond))
	for _, app := range []string{"secure", "soc"} {
		expectCutOff(t, "alice's WebSocket to "+app+" after the refresh call", start, closed[app])
	}

	expectAliceMoved(t, env, alice, cookie, version)
	waitPolicyAudit(t, env, "the admin's refresh", func(ev policyAudit) bool {
		return ev.Kind == "admin" && ev.Decision == "refresh" && ev.User == "u-alice"
	})
	// Refreshing someone without a session refreshes nothing and is no error.
	out = decodeObject(t, adminCall(t, env, http.MethodPost, "/api/users/u-nobody/refresh", ""), http.StatusOK)
	if out["refreshed"] != float64(0) || out["ended"] != float64(0) {
		t.Errorf("refresh of a user without sessions: %v", out)
	}
}

// The same job change without an admin: the session's own token refresh
// (due every oidc.refresh_interval, started by the next request after it
// is due) brings the new attributes, and the live connections the new
// groups do not allow close at once.
func TestRoleChangeMovesAccessOnTokenRefresh(t *testing.T) {
	const refreshInterval = 300 * time.Millisecond
	env := newEnv(t)
	applyConfig(t, env, func(cfg *proxy.Config) { cfg.OIDC.RefreshInterval = refreshInterval })
	alice, cookie, conns := aliceInSecurityTech(t, env)
	version := policyVersion(t, env)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sess, err := env.Edge.Sessions().Get(ctx, cookie)
	if err != nil {
		t.Fatal(err)
	}
	if until := time.Until(sess.RefreshAt); sess.RefreshAt.IsZero() || until > 2*refreshInterval {
		t.Fatalf("the session's next refresh is in %v, want within oidc.refresh_interval (%v)", until, refreshInterval)
	}

	closed := map[string]<-chan time.Time{}
	for app, conn := range conns {
		closed[app] = closedAt(conn)
	}
	moveAliceToSecurityPolicy(t, env)
	changed := time.Now()
	// Alice goes on using secure. The first request after the refresh is
	// due starts it in the background (that request is still decided with
	// the attributes it found); once it lands she is refused.
	var firstDenied time.Time
	requests := 0
	waitFor(t, 5*time.Second, "alice's requests to secure to be refused after her token refresh", func() bool {
		requests++
		r := get(t, alice, env.AppURL("secure")+"/", asAPI)
		switch r.StatusCode {
		case http.StatusOK:
			return false
		case http.StatusForbidden:
			firstDenied = time.Now()
			return true
		}
		t.Fatalf("alice on secure while her refresh was due: %d %.300s", r.StatusCode, r.Body)
		return false
	})
	t.Logf("refused on request %d, %v after the IdP change (refresh interval %v)", requests, firstDenied.Sub(changed).Round(time.Millisecond), refreshInterval)
	for _, app := range []string{"secure", "soc"} {
		d := expectCutOff(t, "alice's WebSocket to "+app+", from her first refused request", firstDenied, closed[app])
		t.Logf("%s: closed %v after the IdP change", app, (d + firstDenied.Sub(changed)).Round(time.Millisecond))
	}
	expectAliceMoved(t, env, alice, cookie, version)
}

// Policy files for TestPolicyDirHotReload. grcReaders is group
// grc-readers as written by a policy author; line 5 holds its condition.
const (
	grcReaders = `# Groups, managed in Git.
groups:
  - name: grc-readers
    description: People who may read the GRC app
    when: user.title == "Security Engineer"
`
	grcReadersBroken = `# Groups, managed in Git.
groups:
  - name: grc-readers
    description: People who may read the GRC app
    when: user.title === "Security Engineer"
`
	grcReadersFixed = `# Groups, managed in Git.
groups:
  - name: grc-readers
    description: People who may read the GRC app
    when: user.title in ["Security Engineer", "Policy Manager"]
`
	grcReadRule = `apps:
  - app: grc
    rules:
      - name: readers-get
        groups: [grc-readers]
        methods: [GET, HEAD]
`
)

// A policy directory next to the config file (GitOps) is watched and
// hot-reloaded: a rule added in a new file applies within a few polls; a
// broken change is refused — the old policy keeps deciding, the error
// names the file and line, ztna_policy_reload_errors_total counts it and
// the edge stays ready — and the fix applies. ztna_policy_info and the
// audit events name the version that decides.
func TestPolicyDirHotReload(t *testing.T) {
	const pollEvery = 50 * time.Millisecond
	t.Setenv(secretEnv, "dev-edge-secret")
	env := newEnv(t)
	alice := loginAs(t, env, "secure", "alice", alicePassword)
	if r := navigate(t, env, alice, env.AppURL("grc")+"/"); r.StatusCode != http.StatusForbidden {
		t.Fatalf("alice on grc before any policy file: %d, want 403", r.StatusCode)
	}

	dir := filepath.Join(t.TempDir(), "policy")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	groupsFile, rulesFile := filepath.Join(dir, "groups.yaml"), filepath.Join(dir, "grc.yaml")
	writeFile(t, groupsFile, []byte(grcReaders))
	cfg := currentConfig(env)
	cfg.Policy.Dir = dir
	path := filepath.Join(t.TempDir(), "ztna.yaml")
	writeFile(t, path, configYAML(t, cfg, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !env.Edge.Reload(ctx, path) {
		t.Fatalf("the config with policy.dir was refused:\n%s", processLog(t, env))
	}
	v0 := policyVersion(t, env)
	errors0, _ := scrapeMetric(t, env, "ztna_policy_reload_errors_total")
	expectDefaultDeny(t, env, alice, "grc", "/")

	wctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { env.Edge.WatchConfig(wctx, path, pollEvery) })
	t.Cleanup(func() { stop(); wg.Wait() })

	// changeDir makes one change to the policy directory and waits for the
	// watcher to apply it.
	changeDir := func(what string, change func()) {
		t.Helper()
		before := env.Edge.State().Version
		start := time.Now()
		change()
		waitFor(t, 5*time.Second, "the watcher to apply "+what, func() bool { return env.Edge.State().Version > before })
		took := time.Since(start)
		t.Logf("%s: applied %v after the write (%d polls)", what, took.Round(time.Millisecond), took/pollEvery)
		if took > 40*pollEvery {
			t.Errorf("%s: applied after %v, want within a few polls of %v", what, took, pollEvery)
		}
	}

	// 1. A rule in a new file: grc readers may GET, nothing more.
	changeDir("a new rule file", func() { writeFile(t, rulesFile, []byte(grcReadRule)) })
	v1 := policyVersion(t, env)
	if v1 == v0 {
		t.Fatalf("ztna_policy_info still shows %s after a rule was added", v0)
	}
	if rep := whoamiAs(t, alice, env, "grc", "/"); rep.User != "u-alice" || !rep.Verified {
		t.Errorf("alice on grc with the new rule: user %q verified %v", rep.User, rep.Verified)
	}
	post := withCookie(t, http.MethodPost, env.AppURL("grc")+"/reports", sessionCookie(t, env, alice, "grc"), asAPI)
	if e := expectJSONError(t, do(t, newClient(t, env), post), http.StatusForbidden, "access_denied"); e.Rule != "" {
		t.Errorf("alice's POST on grc refused by rule %q, want by no rule", e.Rule)
	}
	waitPolicyAudit(t, env, "alice allowed on grc by the new rule", func(ev policyAudit) bool {
		return ev.Kind == "request" && ev.App == "grc" && ev.Decision == "allow" && ev.Rule == "readers-get" && ev.Policy == v1
	})

	// 2. A broken condition is refused; the old policy keeps deciding.
	stateVersion := env.Edge.State().Version
	logBefore := len(processLog(t, env).String())
	writeFile(t, groupsFile, []byte(grcReadersBroken))
	waitFor(t, 5*time.Second, "ztna_policy_reload_errors_total to count the broken file", func() bool {
		n, _ := scrapeMetric(t, env, "ztna_policy_reload_errors_total")
		return n > errors0
	})
	if n, _ := scrapeMetric(t, env, "ztna_policy_reload_errors_total"); n != errors0+1 {
		t.Errorf("ztna_policy_reload_errors_total = %v after one broken change, want %v", n, errors0+1)
	}
	if v := env.Edge.State().Version; v != stateVersion {
		t.Fatalf("the broken policy changed the config version to %d", v)
	}
	if v := policyVersion(t, env); v != v1 {
		t.Errorf("ztna_policy_info shows %s after a refused change, want %s", v, v1)
	}
	if rep := whoamiAs(t, alice, env, "grc", "/"); rep.User != "u-alice" {
		t.Errorf("alice on grc under the kept policy: user %q", rep.User)
	}
	if s := readyz(t, env); s != http.StatusOK {
		t.Errorf("/readyz = %d after a refused policy change, want 200", s)
	}
	// The metric counts the refusal just before the error is logged.
	var errLine string
	waitFor(t, 5*time.Second, "the reload error in the process log", func() bool {
		for _, l := range strings.Split(processLog(t, env).String()[logBefore:], "\n") {
			if strings.Contains(l, "level=ERROR") && strings.Contains(l, "reload rejected") {
				errLine = l
			}
		}
		return errLine != ""
	})
	if where := fmt.Sprintf("%s:%d", groupsFile, lineOf(t, []byte(grcReadersBroken), "===")); !strings.Contains(errLine, where) || !strings.Contains(errLine, "groups[0].when") {
		t.Errorf("reload error %q does not name %s and groups[0].when", errLine, where)
	}
	waitPolicyAudit(t, env, "alice allowed on grc by the kept policy", func(ev policyAudit) bool {
		return ev.Kind == "request" && ev.App == "grc" && ev.Decision == "allow" && ev.Policy == v1
	})

	// 3. The fix applies, as a new version.
	changeDir("the fixed groups file", func() { writeFile(t, groupsFile, []byte(grcReadersFixed)) })
	v2 := policyVersion(t, env)
	if v2 == v1 || v2 == v0 {
		t.Errorf("the fixed policy has version %s (before: %s, %s)", v2, v0, v1)
	}
	if n, _ := scrapeMetric(t, env, "ztna_policy_reload_errors_total"); n != errors0+1 {
		t.Errorf("ztna_policy_reload_errors_total = %v after the fix, want %v", n, errors0+1)
	}
	whoamiAs(t, alice, env, "grc", "/")
	waitPolicyAudit(t, env, "alice allowed on grc by the fixed policy", func(ev policyAudit) bool {
		return ev.Kind == "request" && ev.App == "grc" && ev.Decision == "allow" && ev.Rule == "readers-get" && ev.Policy == v2
	})

	// 4. Removing the file removes the rule.
	changeDir("the removal of the rule file", func() {
		if err := os.Remove(rulesFile); err != nil {
			t.Fatal(err)
		}
	})
	expectDefaultDeny(t, env, alice, "grc", "/")
	if v := policyVersion(t, env); v == v2 || v == v1 || v == v0 {
		t.Errorf("without the rule file the policy is version %s, want a new one (before: %s, %s, %s)", v, v0, v1, v2)
	}
}

// The policy is swapped ~50 times between two valid versions while
// several clients send requests as alice. Every request gets exactly one
// version's answer: 200 or 403 with that version's rule — never a 5xx or a
// broken connection — and its audit event names the version that decided.
func TestPolicyReloadUnderLoad(t *testing.T) {
	const (
		clients = 6
		swaps   = 50
		pace    = 40 * time.Millisecond // ~2s of swaps
	)
	env := newEnv(t)
	// Version A lets alice (group A, security-tech) GET /a and denies /b
	// by rule; version B the other way round. /c is denied by no rule in
	// both. Each 403 names the rule, so each answer tells its version.
	versions := [2]*proxy.Config{currentConfig(env), currentConfig(env)}
	for v, paths := range [2][2]string{{"/a", "/b"}, {"/b", "/a"}} {
		cfg := versions[v]
		for i := range cfg.Apps {
			if cfg.Apps[i].Name == "grc" {
				cfg.Apps[i].Rules = append(cfg.Apps[i].Rules,
					groups.Rule{Name: "deny" + strings.ReplaceAll(paths[1], "/", "-"), Action: groups.ActionDeny, Groups: []string{"security-tech"}, Paths: []string{paths[1]}},
					groups.Rule{Name: "allow" + strings.ReplaceAll(paths[0], "/", "-"), Groups: []string{"security-tech"}, Paths: []string{paths[0]}})
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var vers [2]string
	for v := 1; v >= 0; v-- { // ends on A
		if err := env.Edge.Apply(ctx, versions[v]); err != nil {
			t.Fatalf("apply version %d: %v", v, err)
		}
		vers[v] = policyVersion(t, env)
	}
	if vers[0] == vers[1] {
		t.Fatalf("both versions are %s", vers[0])
	}
	login := loginFlow(t, env, "grc", "/a", "alice", alicePassword)
	if login.Final.StatusCode != http.StatusOK {
		t.Fatalf("alice on grc/a under version A: %d", login.Final.StatusCode)
	}
	cookie := sessionCookie(t, env, login.Client, "grc")

	// allowedUnder says which version allows path: 0 (A), 1 (B), -1 none.
	allowedUnder := map[string]int{"/a": 0, "/b": 1, "/c": -1}
	denyRule := map[string]string{"/a": "deny-a", "/b": "deny-b", "/c": ""}
	type tally struct{ allowed, denied int }
	var (
		mu       sync.Mutex
		counts   = map[string]*tally{"/a": {}, "/b": {}, "/c": {}}
		failed   int
		failures = map[string]int{} // wrong answers by kind
		example  = map[string]string{}
		kinds    []string
	)
	// fail records a wrong answer of a kind (what went wrong, without the
	// details that differ each time), with the first one as an example.
	fail := func(kind, format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		failed++
		if failures[kind]++; failures[kind] == 1 {
			kinds = append(kinds, kind)
			example[kind] = fmt.Sprintf(format, args...)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < clients; g++ {
		c := newClient(t, env)
		wg.Go(func() {
			for n := g; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				path := []string{"/a", "/b", "/c"}[n%3]
				// Built by hand: the helpers may call t.Fatal, which only
				// the test's own goroutine may.
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, env.AppURL("grc")+path+"?format=json", nil)
				if err != nil {
					fail("bad request", "GET %s: %v", path, err)
					return
				}
				req.Header.Set("Accept", "application/json")
				req.Header.Set("Cookie", authn.SessionCookie+"="+cookie)
				r, err := tryDo(c, req)
				if err != nil {
					fail("GET "+path+": connection error", "GET %s: %v", path, err)
					continue
				}
				switch r.StatusCode {
				case http.StatusOK:
					var rep devenv.WhoamiReport
					if err := json.Unmarshal(r.Body, &rep); err != nil || rep.User != "u-alice" || !rep.Verified || allowedUnder[path] < 0 {
						fail("GET "+path+": 200 that no version gives", "GET %s: 200 %.200s", path, r.Body)
						continue
					}
					mu.Lock()
					counts[path].allowed++
					mu.Unlock()
				case http.StatusForbidden:
					var e errorJSON
					if err := json.Unmarshal(r.Body, &e); err != nil || e.Error != "access_denied" || e.Rule != denyRule[path] {
						fail("GET "+path+": 403 that no version gives", "GET %s: 403: %.300s", path, r.Body)
						continue
					}
					if path == "/c" && e.Message != defaultDeny("grc", "alice@example.com", "GET", "/c") {
						fail("GET /c: wrong reason", "GET /c: reason %q", e.Message)
					}
					mu.Lock()
					counts[path].denied++
					mu.Unlock()
				default:
					fail(fmt.Sprintf("GET %s: status %d", path, r.StatusCode), "GET %s: status %d: %.300s", path, r.StatusCode, r.Body)
				}
			}
		})
	}

	var applyErr error
	tick := time.NewTicker(pace)
	start := time.Now()
	for i := 0; i < swaps && applyErr == nil; i++ {
		<-tick.C
		applyErr = env.Edge.Apply(ctx, versions[(i+1)%2])
	}
	tick.Stop()
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	if applyErr != nil {
		t.Fatalf("apply during the load: %v", applyErr)
	}

	total := 0
	for _, p := range []string{"/a", "/b", "/c"} {
		total += counts[p].allowed + counts[p].denied
	}
	t.Logf("%d swaps in %v; %d requests: /a %+v, /b %+v, /c %+v", swaps, elapsed.Round(time.Millisecond), total+failed, *counts["/a"], *counts["/b"], *counts["/c"])
	for _, k := range kinds {
		t.Errorf("%d× %s, e.g. %s", failures[k], k, example[k])
	}
	for _, p := range []string{"/a", "/b"} {
		if counts[p].allowed == 0 || counts[p].denied == 0 {
			t.Errorf("%s was not answered by both versions (%+v): the load did not span the swaps", p, *counts[p])
		}
	}

	// The audit log agrees: each of those decisions names the version that
	// made it, and is that version's decision.
	var evs []policyAudit
	waitFor(t, 10*time.Second, "the load's audit events", func() bool {
		evs = evs[:0]
		for _, ev := range policyAudits(t, env) {
			if ev.Kind == "request" && ev.App == "grc" && ev.User == "u-alice" && (ev.Path == "/a" || ev.Path == "/b" || ev.Path == "/c") {
				evs = append(evs, ev)
			}
		}
		return len(evs) >= total
	})
	bad := 0
	versionIndex := map[string]int{vers[0]: 0, vers[1]: 1}
	for _, ev := range evs {
		ver, ok := versionIndex[ev.Policy]
		wantAllow := ok && allowedUnder[ev.Path] == ver
		wantRule := denyRule[ev.Path]
		if wantAllow {
			wantRule = "allow-" + ev.Path[1:]
		}
		if !ok || (ev.Decision == "allow") != wantAllow || ev.Rule != wantRule {
			if bad++; bad <= 5 {
				t.Errorf("audit event %+v: not what policy %q decides (A is %s, B is %s)", ev, ev.Policy, vers[0], vers[1])
			}
		}
	}
	if bad > 5 {
		t.Errorf("… and %d more audit events at odds with their policy version", bad-5)
	}
}
