package integration

// console_browser_test.go drives the admin console with headless Chromium
// as an admin would: sign in at the dev IdP, build a group by attribute
// and watch the live preview, move a user's department and see their
// access follow, quarantine a device and see its live connection end, ask
// the what-if simulator, and read every page. Each flow also takes the
// screenshot of its page for the README (docs/console-*.png, written only
// with ZTNA_SCREENSHOTS=1).

import (
	"bytes"
	"context"
	"crypto/tls"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy"
)

const (
	adminPassword = "admin-password"
	// consoleWait bounds a wait for something the console shows after a
	// change (a preview, a live list).
	consoleWait = 10 * time.Second
)

// consoleEnv starts the dev system for a console test with the policy
// from source ("store": edited in the console; "": from files, read-only)
// and configure, if not nil, applied to the demo config.
func consoleEnv(t *testing.T, source string, configure func(*proxy.Config)) *devenv.Env {
	t.Helper()
	return newEnvWith(t, func(o *devenv.Options) {
		o.PolicySource = source
		o.Configure = configure
	})
}

// consoleURL is the console's URL for path.
func consoleURL(env *devenv.Env, path string) string { return env.AppURL("console") + path }

// consoleSignIn opens the console in a fresh tab, which sends the browser
// to the dev IdP's form, and signs in as user. It returns the tab and the
// response the sign-in ended on.
func consoleSignIn(t *testing.T, b *browser, env *devenv.Env, user, password string) (context.Context, *network.Response) {
	t.Helper()
	tab := b.newTab(t)
	browserDo(t, tab, "open the console", chromedp.Navigate(consoleURL(env, "/")))
	browserExpectLoginForm(t, tab, env)
	return tab, browserSubmitLogin(t, tab, user, password)
}

// consoleAdmin signs the demo admin in to the console and checks that the
// sign-in ended on the overview.
func consoleAdmin(t *testing.T, b *browser, env *devenv.Env) context.Context {
	t.Helper()
	tab, resp := consoleSignIn(t, b, env, "admin", adminPassword)
	if resp.Status != http.StatusOK {
		t.Fatalf("admin's sign-in to the console: status %d, want 200 (%s)", resp.Status, browserWhere(tab))
	}
	if loc, want := browserLocation(t, tab), consoleURL(env, "/"); loc != want {
		t.Fatalf("after sign-in at %s, want the console's overview %s", loc, want)
	}
	if h := consoleHeading(t, tab); h != "Overview" {
		t.Fatalf("after sign-in the console shows %q, want the Overview (%s)", h, browserWhere(tab))
	}
	return tab
}

// consoleOpen navigates tab to the console's path and expects a 200.
func consoleOpen(t *testing.T, tab context.Context, env *devenv.Env, path string) {
	t.Helper()
	resp := browserDo(t, tab, "open "+path, chromedp.Navigate(consoleURL(env, path)))
	if resp.Status != http.StatusOK {
		t.Fatalf("%s: status %d, want 200 (%s)", path, resp.Status, browserWhere(tab))
	}
}

// consoleHeading is the page's main heading.
func consoleHeading(t *testing.T, tab context.Context) string {
	t.Helper()
	return strings.TrimSpace(browserRun(t, tab, "read the heading", chromedp.Text(chromedp.CSS("main h1"))))
}

// consoleNotice is the notice a change redirected with ("" if none).
func consoleNotice(t *testing.T, tab context.Context) string {
	t.Helper()
	return strings.TrimSpace(browserRun(t, tab, "read the notice", chromedp.Evaluate[string](
		`(document.querySelector("main p.notice") || {innerText: ""}).innerText`)))
}

// clearField empties the form field css selects, as a user selecting all
// and deleting would (the page hears an input event).
func clearField(css string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](`(() => {
		const e = document.querySelector(` + strconv.Quote(css) + `);
		e.value = "";
		e.dispatchEvent(new Event("input", {bubbles: true}));
	})()`)
}

// consoleEval evaluates js in tab and returns its value as T.
func consoleEval[T any](t *testing.T, tab context.Context, what, js string) T {
	t.Helper()
	return browserRun(t, tab, what, chromedp.Evaluate[T](js))
}

// consoleRows is the text of the cells of every body row of the tables
// matching css.
func consoleRows(t *testing.T, tab context.Context, css string) [][]string {
	t.Helper()
	return consoleEval[[][]string](t, tab, "read the rows of "+css,
		`Array.from(document.querySelectorAll(`+strconv.Quote(css+" tbody tr")+`)).map(tr => Array.from(tr.cells).map(td => td.innerText.trim()))`)
}

// rowWith returns the first row whose first cell's first line is first
// (nil if none): a name, without the description below it.
func rowWith(rows [][]string, first string) []string {
	for _, r := range rows {
		if len(r) > 0 {
			if line, _, _ := strings.Cut(r[0], "\n"); strings.TrimSpace(line) == first {
				return r
			}
		}
	}
	return nil
}

// consoleMessages records what a tab writes to its console: every
// message, so that a CSP violation anywhere on the way is seen (the
// browser's own log in newTab keeps only the last few).
type consoleMessages struct {
	mu   sync.Mutex
	msgs []string
}

const maxConsoleMessages = 1000

func (c *consoleMessages) add(m string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.msgs) < maxConsoleMessages {
		c.msgs = append(c.msgs, m)
	}
}

// matching returns the messages containing s.
func (c *consoleMessages) matching(s string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.msgs {
		if strings.Contains(m, s) {
			out = append(out, m)
		}
	}
	return out
}

// watchConsole records tab's console messages until the test ends.
func watchConsole(t *testing.T, tab context.Context) *consoleMessages {
	t.Helper()
	ctx, cancel := context.WithCancel(tab)
	msgs := chromedp.Console(ctx)
	c := &consoleMessages{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			c.add(m.String())
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// dialogs records every JavaScript dialog (alert, confirm, prompt) that a
// tab opens, and dismisses it so that the page goes on.
type dialogs struct {
	mu     sync.Mutex
	opened []string
}

func (d *dialogs) list() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.opened)
}

// watchDialogs records tab's dialogs until the test ends.
func watchDialogs(t *testing.T, tab context.Context) *dialogs {
	t.Helper()
	ctx, cancel := context.WithCancel(tab)
	events := chromedp.Events(ctx, page.JavascriptDialogOpening)
	d := &dialogs{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev, err := range events {
			if err != nil {
				return
			}
			d.mu.Lock()
			d.opened = append(d.opened, string(ev.Type)+": "+ev.Message)
			d.mu.Unlock()
			// An open dialog blocks the page, and every later step with it.
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return d
}

// subjectOfUser is how the policy sees directory user sub now.
func subjectOfUser(t *testing.T, env *devenv.Env, sub string) groups.Subject {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	u, err := env.Edge.Directory().Get(ctx, sub)
	if err != nil {
		t.Fatalf("directory: %s: %v", sub, err)
	}
	id := u.Effective()
	return groups.Subject{User: id.Subject, Email: id.Email, Groups: id.Groups, Attributes: id.Attributes}
}

// overridesOf is the console-set attributes of directory user sub.
func overridesOf(t *testing.T, env *devenv.Env, sub string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	u, err := env.Edge.Directory().Get(ctx, sub)
	if err != nil {
		t.Fatalf("directory: %s: %v", sub, err)
	}
	return u.Overrides
}

// policyHead is the newest policy version in the store.
func policyHead(t *testing.T, env *devenv.Env) *groups.Version {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := env.Edge.PolicyVersions().Head(ctx)
	if err != nil {
		t.Fatalf("policy head: %v", err)
	}
	return v
}

// TestConsoleGroupPreview: the admin types a new group's condition and the
// live preview lists who would be in it, and why, before anything is
// saved; saving applies it, and the group list counts its member.
func TestConsoleGroupPreview(t *testing.T) {
	t.Parallel()
	env := consoleEnv(t, "store", nil)
	b := newBrowser(t, env)
	tab := consoleAdmin(t, b, env)
	csp := watchConsole(t, tab)

	consoleOpen(t, tab, env, "/group")
	if h := consoleHeading(t, tab); h != "New group" {
		t.Fatalf("/group: heading %q, want New group", h)
	}
	browserRun(t, tab, "type the group", chromedp.Steps(
		chromedp.SendKeys(chromedp.CSS(`form.editor input[name="name"]`), "finance-team"),
		chromedp.SendKeys(chromedp.CSS(`form.editor textarea[name="when"]`), `user.department == "Finance"`),
	))

	// The preview follows the typing (console.js asks /group/preview): it
	// lists bob, whose department is Finance, with the why, and not alice.
	type member struct{ Who, Why string }
	var members []member
	waitFor(t, consoleWait, "the preview to list exactly bob with the why", func() bool {
		members = consoleEval[[]member](t, tab, "read the preview",
			`Array.from(document.querySelectorAll("#preview ul.members li")).map(li => ({
				Who: (li.querySelector("a") || {innerText: ""}).innerText.trim(),
				Why: (li.querySelector(".why") || {innerText: ""}).innerText.trim()}))`)
		return len(members) == 1 && members[0].Who == "bob@example.com"
	})
	if !strings.Contains(members[0].Why, "department") {
		t.Errorf("preview: bob's why = %q, want it to name the department", members[0].Why)
	}
	// Nothing is saved by typing.
	if v := policyHead(t, env); v.N != 1 {
		t.Errorf("the preview saved a policy version: head is %d, want 1", v.N)
	}
	browserScreenshot(t, tab, "console-group")

	browserRun(t, tab, "write the message", chromedp.SendKeys(chromedp.CSS(`form.editor input[name="message"]`), "Finance team for the month-end close"))
	resp := browserDo(t, tab, "Save and apply", chromedp.Click(chromedp.CSS(`form.editor button[type="submit"]`)))
	if resp.Status != http.StatusOK {
		t.Fatalf("after saving: status %d (%s)", resp.Status, browserWhere(tab))
	}
	loc, err := url.Parse(browserLocation(t, tab))
	if err != nil {
		t.Fatal(err)
	}
	if loc.Path != "/group" || loc.Query().Get("name") != "finance-team" {
		t.Errorf("after saving at %s, want the group's page", loc)
	}
	if n := consoleNotice(t, tab); !strings.HasPrefix(n, "Saved.") {
		t.Errorf("after saving: notice %q, want Saved.", n)
	}
	if v := policyHead(t, env); v.N != 2 || v.Message != "Finance team for the month-end close" || v.Author != "admin@example.com" {
		t.Errorf("policy head after saving: version %d by %q: %q, want version 2 by admin@example.com with the message", v.N, v.Author, v.Message)
	}

	consoleOpen(t, tab, env, "/groups")
	row := rowWith(consoleRows(t, tab, "main table.list"), "finance-team")
	if row == nil {
		t.Fatalf("/groups does not list finance-team: %s", browserWhere(tab))
	}
	if len(row) < 4 || row[3] != "1" || !strings.Contains(row[1], `user.department == "Finance"`) {
		t.Errorf("/groups: finance-team row %q, want the condition and 1 member now", row)
	}
	browserScreenshot(t, tab, "console-groups")
	if v := csp.matching("Content Security Policy"); len(v) > 0 {
		t.Errorf("CSP violations: %q", v)
	}
}

// TestConsoleRoleChangeMovesAccess is the seed's role change: bob moves to
// Security Tech in the console, and his access moves with him at once —
// his signed-in session gets into the app it was refused, without signing
// in again.
func TestConsoleRoleChangeMovesAccess(t *testing.T) {
	t.Parallel()
	env := consoleEnv(t, "store", nil)
	bob := loginFlow(t, env, "secure", "/", "bob", bobPassword)
	if bob.Final.StatusCode != http.StatusForbidden {
		t.Fatalf("bob at secure before the change: status %d, want 403", bob.Final.StatusCode)
	}

	b := newBrowser(t, env)
	tab := consoleAdmin(t, b, env)
	consoleOpen(t, tab, env, "/user?sub=u-bob")
	access := func() []string {
		row := rowWith(consoleRows(t, tab, "#access"), "secure")
		if len(row) < 3 {
			t.Fatalf("#access has no row for secure: %s", browserWhere(tab))
		}
		return row
	}
	if row := access(); row[1] != "deny" {
		t.Fatalf("#access before the change: secure %q, want deny", row)
	}

	browserRun(t, tab, "set bob's department", chromedp.Steps(
		clearField(`#attributes-form textarea[name="overrides"]`),
		chromedp.SendKeys(chromedp.CSS(`#attributes-form textarea[name="overrides"]`), "department=Security Tech"),
	))
	browserDo(t, tab, "Save attributes", chromedp.Click(chromedp.CSS(`#attributes-form button[type="submit"]`)))
	if n := consoleNotice(t, tab); !strings.HasPrefix(n, "Attributes changed.") {
		t.Fatalf("after saving the attributes: notice %q (%s)", n, browserWhere(tab))
	}
	if row := access(); row[1] != "allow" || !strings.Contains(row[2], "security-team") {
		t.Errorf("#access after the change: secure %q, want allow by rule security-team", row)
	}
	if row := rowWith(consoleRows(t, tab, "#attributes"), "department"); len(row) < 4 || row[2] != "Security Tech" || row[3] != "Security Tech" {
		t.Errorf("#attributes: department %q, want Security Tech set here and seen by the policy", row)
	}
	if got := overridesOf(t, env, "u-bob"); got["department"] != "Security Tech" {
		t.Errorf("directory: bob's overrides %v", got)
	}
	browserScreenshot(t, tab, "console-user")

	// Bob's session follows at once: the same client, no new sign-in.
	secure := env.AppURL("secure") + "/?format=json"
	var r *response
	waitFor(t, 5*time.Second, "bob's existing session to reach secure", func() bool {
		r = get(t, bob.Client, secure, asAPI)
		return r.StatusCode == http.StatusOK
	})
	if rep := decodeReport(t, r.Body); rep.Claims == nil || rep.Claims.Subject != "u-bob" {
		t.Errorf("secure saw %+v, want bob", rep.Claims)
	}
}

// TestConsoleQuarantineCutsLiveSession: the admin sees alice's live
// WebSocket from her device on /live, quarantines the device from its
// page, and the WebSocket ends within a second; /live no longer lists it.
func TestConsoleQuarantineCutsLiveSession(t *testing.T) {
	// Not parallel: the cut-off is timed.
	env := consoleEnv(t, "store", nil)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	// A device that reports like an agent, so its page has posture and a
	// history to show.
	rd := enrollReporter(t, env, "u-alice", "alice-laptop")
	devID, cert := rd.id, rd.cert
	for range 3 {
		rd.accept(t, env, sign(t, rd.key, rd.report(rd.nonce(t, env))))
	}
	d := wsDialer(t, env)
	d.TLSClientConfig.Certificates = []tls.Certificate{cert}
	h := http.Header{}
	h.Set("Cookie", authn.SessionCookie+"="+sessionCookie(t, env, alice, "whoami"))
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	ws, _, err := d.DialContext(dctx, strings.Replace(env.AppURL("whoami"), "https://", "wss://", 1)+"/ws", h)
	if err != nil {
		t.Fatalf("WebSocket from alice's device: %v", err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	echo(t, ws, "hello", "u-alice")

	b := newBrowser(t, env)
	tab := consoleAdmin(t, b, env)
	liveRow := func() []string {
		for _, row := range consoleRows(t, tab, "main table.list") {
			if len(row) >= 4 && row[0] == "http" && row[1] == "alice@example.com" && row[2] == devID {
				return row
			}
		}
		return nil
	}
	consoleOpen(t, tab, env, "/live")
	row := liveRow()
	if row == nil {
		t.Fatalf("/live does not list alice's WebSocket from %s: %q", devID, consoleRows(t, tab, "main table.list"))
	}
	if row[3] != "whoami" {
		t.Errorf("/live: alice's exchange %q, want app whoami", row)
	}
	browserScreenshot(t, tab, "console-live")

	consoleOpen(t, tab, env, "/device?id="+url.QueryEscape(devID))
	const reason, fix = "EDR reported ransomware behaviour", "Bring the laptop to the IT desk for a reinstall"
	browserRun(t, tab, "fill in the quarantine", chromedp.Steps(
		chromedp.SendKeys(chromedp.CSS(`form[action="/device/quarantine"] input[name="reason"]`), reason),
		chromedp.SendKeys(chromedp.CSS(`form[action="/device/quarantine"] input[name="fix"]`), fix),
	))
	closed := closedAt(ws)
	start := time.Now()
	browserDo(t, tab, "Quarantine now", chromedp.Click(chromedp.CSS(`form[action="/device/quarantine"] button[type="submit"]`)))
	expectCutOff(t, "quarantine from the console", start, closed)
	if n := consoleNotice(t, tab); !strings.HasPrefix(n, "Quarantined.") {
		t.Errorf("after quarantine: notice %q (%s)", n, browserWhere(tab))
	}
	q := consoleEval[string](t, tab, "read the quarantine", `(document.querySelector(".card.quarantine") || {innerText: ""}).innerText`)
	if !strings.Contains(q, reason) || !strings.Contains(q, fix) {
		t.Errorf("device page after quarantine: %q, want the reason and the fix", q)
	}
	browserScreenshot(t, tab, "console-device")

	// The device is refused from now on, with the reason.
	r := getWithCookie(t, withDeviceCert(t, env, cert), env.AppURL("whoami")+"/?format=json", sessionCookie(t, env, alice, "whoami"))
	e := decodePostureError(t, r, http.StatusForbidden, "quarantined")
	if len(e.Checks) != 1 || e.Checks[0].Reason != reason || e.Checks[0].Fix != fix {
		t.Errorf("quarantined device's refusal %+v, want the admin's reason and fix", e)
	}
	waitFor(t, consoleWait, "/live to drop alice's WebSocket", func() bool {
		consoleOpen(t, tab, env, "/live")
		return liveRow() == nil
	})
}

// explainAs is the explanation the serving policy gives for user sub
// opening app's root from a device meeting every profile: what the
// what-if page decides for a fresh form.
func explainAs(t *testing.T, env *devenv.Env, sub, app string) groups.Explanation {
	t.Helper()
	p, err := env.Edge.CompilePolicy(policyHead(t, env).Source())
	if err != nil {
		t.Fatalf("compile the serving policy: %v", err)
	}
	dev := &groups.Device{ID: "what-if"}
	for _, pr := range env.Edge.State().Config.Posture.Profiles {
		dev.Profiles = append(dev.Profiles, pr.Name)
	}
	slices.Sort(dev.Profiles)
	return p.Explain(groups.Request{App: app, Subject: subjectOfUser(t, env, sub), Device: dev, Method: http.MethodGet, Path: "/"})
}

// TestConsoleWhatIf asks the simulator about bob and alice at secure: the
// same decision, reason and group explanations as the policy engine's
// Explain (`ztna policy explain`).
func TestConsoleWhatIf(t *testing.T) {
	t.Parallel()
	env := consoleEnv(t, "store", nil)
	b := newBrowser(t, env)
	tab := consoleAdmin(t, b, env)

	type group struct{ Member, Name, Why string }
	ask := func(sub string) (verdict, decidedBy string, gs []group) {
		t.Helper()
		consoleOpen(t, tab, env, "/whatif")
		browserRun(t, tab, "describe the request", chromedp.Steps(
			chromedp.SetValue(chromedp.CSS(`form.whatif select[name="user"]`), sub),
			chromedp.SetValue(chromedp.CSS(`form.whatif select[name="app"]`), "secure"),
			clearField(`form.whatif input[name="method"]`),
			chromedp.SendKeys(chromedp.CSS(`form.whatif input[name="method"]`), "GET"),
			clearField(`form.whatif input[name="path"]`),
			chromedp.SendKeys(chromedp.CSS(`form.whatif input[name="path"]`), "/"),
		))
		resp := browserDo(t, tab, "Decide", chromedp.Click(chromedp.CSS(`form.whatif button[type="submit"]`)))
		if resp.Status != http.StatusOK {
			t.Fatalf("what-if for %s: status %d (%s)", sub, resp.Status, browserWhere(tab))
		}
		verdict = strings.TrimSpace(browserRun(t, tab, "read the verdict", chromedp.Text(chromedp.CSS("section.result h2"))))
		facts := consoleRows(t, tab, "section.result table.facts")
		if r := rowWith(facts, "Decided by"); len(r) == 2 {
			decidedBy = r[1]
		}
		gs = consoleEval[[]group](t, tab, "read the groups",
			`Array.from(document.querySelectorAll("section.result table.list")[0].querySelectorAll("tbody tr")).map(tr => ({
				Member: tr.cells[0].innerText.trim(), Name: (tr.cells[1] || {innerText: ""}).innerText.trim(), Why: (tr.cells[2] || {innerText: ""}).innerText.trim()}))`)
		return verdict, decidedBy, gs
	}
	check := func(sub string, allow bool, rule string) {
		t.Helper()
		verdict, decidedBy, gs := ask(sub)
		want := explainAs(t, env, sub, "secure")
		if want.Decision.Allow != allow || want.Decision.Rule != rule {
			t.Fatalf("%s: the engine decides %+v, want allow=%v by %q (the demo policy changed?)", sub, want.Decision, allow, rule)
		}
		word := "DENY"
		if allow {
			word = "ALLOW"
		}
		if wantVerdict := word + " " + want.Decision.Reason; verdict != wantVerdict {
			t.Errorf("%s: verdict %q, want %q", sub, verdict, wantVerdict)
		}
		if rule != "" && !strings.Contains(decidedBy, rule) {
			t.Errorf("%s: decided by %q, want rule %s", sub, decidedBy, rule)
		}
		if len(gs) != len(want.Groups) {
			t.Fatalf("%s: groups table %q, want %d groups as Explain: %+v", sub, gs, len(want.Groups), want.Groups)
		}
		for i, g := range want.Groups {
			mark := "✗"
			if g.Member {
				mark = "✔"
			}
			if got := gs[i]; got.Member != mark || got.Name != g.Name || got.Why != g.Why {
				t.Errorf("%s: group row %d = %+v, want %s %s %q", sub, i, got, mark, g.Name, g.Why)
			}
		}
	}

	check("u-bob", false, "")
	// Bob's row for security-tech: not a member, because of his department.
	_, _, gs := ask("u-bob")
	i := slices.IndexFunc(gs, func(g group) bool { return g.Name == "security-tech" })
	if i < 0 || gs[i].Member != "✗" || !strings.Contains(gs[i].Why, "department") {
		t.Errorf("bob: security-tech row %+v, want ✗ with a why about the department", gs)
	}
	browserScreenshot(t, tab, "console-whatif")
	check("u-alice", true, "security-team")
}

// TestConsolePages reads every other page as the admin, after some
// traffic and one policy change, with no CSP violation anywhere.
func TestConsolePages(t *testing.T) {
	t.Parallel()
	env := consoleEnv(t, "store", nil)
	devID, _ := enrollNamedDevice(t, env, "u-alice", "alice-laptop")
	// A few decisions for the audit log: an allow and a deny.
	loginAs(t, env, "whoami", "alice", alicePassword)
	if r := loginFlow(t, env, "secure", "/", "bob", bobPassword); r.Final.StatusCode != http.StatusForbidden {
		t.Fatalf("bob at secure: %d, want 403", r.Final.StatusCode)
	}

	b := newBrowser(t, env)
	tab := consoleAdmin(t, b, env)
	csp := watchConsole(t, tab)

	// One policy change, through the editor.
	consoleOpen(t, tab, env, "/group?name=finance")
	browserRun(t, tab, "edit finance", chromedp.Steps(
		clearField(`form.editor input[name="description"]`),
		chromedp.SendKeys(chromedp.CSS(`form.editor input[name="description"]`), "The finance department, accounting included"),
		chromedp.SendKeys(chromedp.CSS(`form.editor input[name="message"]`), "Describe finance better"),
	))
	browserDo(t, tab, "save finance", chromedp.Click(chromedp.CSS(`form.editor button[type="submit"]`)))
	if n := consoleNotice(t, tab); !strings.HasPrefix(n, "Saved.") {
		t.Fatalf("saving finance: notice %q (%s)", n, browserWhere(tab))
	}

	for _, pg := range []struct {
		path, heading, shot string
		// contains are texts the page's main content must show.
		contains []string
	}{
		{"/", "Overview", "console-overview", []string{"users seen", "bob@example.com"}},
		{"/apps", "Apps", "console-apps", []string{"whoami", "secure", "TCP via tunnel"}},
		{"/app?name=whoami", "App whoami", "console-app", []string{"finance-read-only", "employees", "alice@example.com"}},
		{"/devices", "Devices", "console-devices", []string{"alice-laptop", devID, "alice@example.com"}},
		{"/audit", "Audit log", "console-audit", []string{"bob@example.com", "secure", "deny", "alice@example.com"}},
		{"/policy", "Policy", "console-policy", []string{"Describe finance better", "admin@example.com"}},
		{"/policy/version?n=2", "Policy version 2", "console-version", []string{"Describe finance better", "+", "version 1"}},
		{"/users", "Users", "console-users", []string{"alice@example.com", "bob@example.com", "Security Tech"}},
	} {
		consoleOpen(t, tab, env, pg.path)
		if h := consoleHeading(t, tab); h != pg.heading {
			t.Errorf("%s: heading %q, want %q", pg.path, h, pg.heading)
		}
		text := consoleEval[string](t, tab, "read "+pg.path, `document.querySelector("main").innerText`)
		for _, s := range pg.contains {
			if !strings.Contains(text, s) {
				t.Errorf("%s: the page does not show %q", pg.path, s)
			}
		}
		browserScreenshot(t, tab, pg.shot)
	}
	if v := csp.matching("Content Security Policy"); len(v) > 0 {
		t.Errorf("CSP violations on the console's pages: %q", v)
	}

	// The check above can fail: a violation on this page is reported.
	browserRun(t, tab, "violate the CSP", chromedp.Evaluate[chromedp.Void](
		`document.body.appendChild(Object.assign(document.createElement("img"), {src: "https://127.0.0.1:1/csp-probe.png"})); undefined`))
	waitFor(t, consoleWait, "the CSP violation to be reported", func() bool {
		return len(csp.matching("Content Security Policy")) > 0
	})
}

// TestConsoleFilesModeExportsDiff: with the policy from files the console
// changes nothing; a group edit comes back as a unified diff of the
// policy files, and the serving policy is as before.
func TestConsoleFilesModeExportsDiff(t *testing.T) {
	// Not parallel: reloadEnv sets the client secret's variable.
	env, path := reloadEnv(t) // the demo policy, served from a config file
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !env.Edge.Reload(ctx, path) {
		t.Fatalf("loading the config file failed:\n%s", processLog(t, env))
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, env)
	tab := consoleAdmin(t, b, env)
	before := env.Edge.State().Version

	consoleOpen(t, tab, env, "/group?name=finance")
	if label := browserRun(t, tab, "read the button", chromedp.Text(chromedp.CSS(`form.editor button[type="submit"]`))); strings.TrimSpace(label) != "Export as diff" {
		t.Errorf("files mode: the editor's button says %q, want Export as diff", label)
	}
	const cond = `user.department in ["Finance", "Accounting"]`
	browserRun(t, tab, "edit the condition", chromedp.Steps(
		clearField(`form.editor textarea[name="when"]`),
		chromedp.SendKeys(chromedp.CSS(`form.editor textarea[name="when"]`), cond),
		chromedp.SendKeys(chromedp.CSS(`form.editor input[name="message"]`), "Accounting joins finance"),
	))
	resp := browserDo(t, tab, "Export as diff", chromedp.Click(chromedp.CSS(`form.editor button[type="submit"]`)))
	if resp.Status != http.StatusOK {
		t.Fatalf("export: status %d (%s)", resp.Status, browserWhere(tab))
	}
	diff := browserRun(t, tab, "read #diff", chromedp.TextContent(chromedp.ID("diff")))
	t.Logf("exported diff:\n%s", diff)
	for _, s := range []string{"--- ", "+++ ", filepath.Base(path), "Accounting"} {
		if !strings.Contains(diff, s) {
			t.Errorf("#diff does not contain %q:\n%s", s, diff)
		}
	}
	var added, removed bool
	for _, line := range strings.Split(diff, "\n") {
		added = added || strings.HasPrefix(line, "+") && !strings.HasPrefix(line, "+++") && strings.Contains(line, "Accounting")
		removed = removed || strings.HasPrefix(line, "-") && !strings.HasPrefix(line, "---") && strings.Contains(line, "Finance")
	}
	if !added || !removed {
		t.Errorf("#diff does not replace the old condition with the new one:\n%s", diff)
	}

	// Nothing changed: the file is as it was, the same state serves, and
	// the group list shows the old condition.
	if now, err := os.ReadFile(path); err != nil || !bytes.Equal(now, file) {
		t.Errorf("exporting a diff wrote the config file (err %v)", err)
	}
	if after := env.Edge.State().Version; after != before {
		t.Errorf("exporting a diff swapped the edge's state: version %d → %d", before, after)
	}
	consoleOpen(t, tab, env, "/groups")
	row := rowWith(consoleRows(t, tab, "main table.list"), "finance")
	if len(row) < 2 || row[1] != `user.department == "Finance"` {
		t.Errorf("/groups: finance row %q, want the unchanged condition", row)
	}
}
