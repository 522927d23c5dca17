package integration

// console_security_test.go attacks the admin console: forged form posts
// from other sites (in a real browser and by hand), markup in group names,
// descriptions and attributes, a non-admin at the door, framing, and an
// admin who tries to make themselves an owner or hand the console to
// someone else. Each attack must be refused and change nothing.

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy"
)

// consoleCSRF finds the CSRF token the console's forms carry.
var consoleCSRF = regexp.MustCompile(`name="csrf" value="([0-9a-f]{16,})"`)

// csrfFrom reads the CSRF token from a console page.
func csrfFrom(t *testing.T, r *response) string {
	t.Helper()
	m := consoleCSRF.FindSubmatch(r.Body)
	if r.StatusCode != http.StatusOK || m == nil {
		t.Fatalf("%s: status %d, no csrf field: %.300s", r.Request.URL, r.StatusCode, r.Body)
	}
	return string(m[1])
}

// consolePost posts form to the console's path with c, adding headers
// ("Name: value").
func consolePost(t *testing.T, env *devenv.Env, c *http.Client, path string, form url.Values, headers ...string) *response {
	t.Helper()
	req := newRequest(t, http.MethodPost, consoleURL(env, path), strings.NewReader(form.Encode()), asNavigation)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	return do(t, c, req)
}

// expectRefused checks that r is the console's refusal with status whose
// text contains msg.
func expectRefused(t *testing.T, what string, r *response, status int, msg string) {
	t.Helper()
	if r.StatusCode != status {
		t.Errorf("%s: status %d, want %d: %.300s", what, r.StatusCode, status, r.Body)
		return
	}
	if body := string(r.Body); !strings.Contains(body, msg) {
		t.Errorf("%s: the answer does not say %q: %.500s", what, msg, body)
	}
}

// attackerServer serves html at / (and "inner" at /inner) on 127.0.0.1.
// With tlsFiles (certificate, key) it serves HTTPS with them.
func attackerServer(t *testing.T, html string, tlsFiles ...string) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = fmt.Fprint(w, html)
	})
	mux.HandleFunc("/inner", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = fmt.Fprint(w, `<!doctype html><title>inner</title><p id="inner">framed fine</p>`)
	})
	srv := httptest.NewUnstartedServer(mux)
	if len(tlsFiles) == 2 {
		cert, err := tls.LoadX509KeyPair(tlsFiles[0], tlsFiles[1])
		if err != nil {
			t.Fatal(err)
		}
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv
}

// sameSiteOrigin is the origin under which the browser reaches srv as
// the console's own host name on srv's port: same site as the console
// (cookies ignore ports, so the admin's SameSite=Lax session goes along),
// but another origin. It is the attacker SameSite cannot stop; srv serves
// the dev edge certificate, which names the console host.
func sameSiteOrigin(t *testing.T, env *devenv.Env, srv *httptest.Server) string {
	t.Helper()
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return "https://" + hostOnly(t, env.AppURL("console")) + ":" + port
}

func hostOnly(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Hostname()
}

// forgedAttributesForm is an attacker's page that posts bob's new
// department to the console as soon as it loads.
func forgedAttributesForm(env *devenv.Env) string {
	return `<!doctype html><title>You won a prize</title>
<form id="f" method="post" action="` + consoleURL(env, "/user/attributes") + `">
<input type="hidden" name="sub" value="u-bob">
<input type="hidden" name="overrides" value="department=Security Tech">
</form>
<script>document.getElementById("f").submit()</script>`
}

// waitLeft waits until tab has navigated away from origin and finished
// loading, and returns where it is.
func waitLeft(t *testing.T, tab context.Context, origin string) string {
	t.Helper()
	var loc string
	waitFor(t, consoleWait, "the forged post to be answered", func() bool {
		loc = browserLocation(t, tab)
		if strings.HasPrefix(loc, origin) || loc == "about:blank" {
			return false
		}
		return browserRun(t, tab, "read readyState", chromedp.Evaluate[string](`document.readyState`)) == "complete"
	})
	return loc
}

// TestConsoleCrossSiteFormPost: a page on another site — and one on the
// same site but another origin, which SameSite cookies do not stop —
// auto-submits a change of bob's attributes while the admin is signed in
// to the console in the same browser. Neither changes anything; by hand,
// a post without the CSRF token, with a wrong one, from another origin or
// site, or a GET of the change, is refused too.
func TestConsoleCrossSiteFormPost(t *testing.T) {
	t.Parallel()
	env := consoleEnv(t, "store", nil)
	bobBefore := subjectOfUser(t, env, "u-bob")
	unchanged := func(what string) {
		t.Helper()
		if o := overridesOf(t, env, "u-bob"); len(o) != 0 {
			t.Fatalf("%s changed bob's attributes: %v", what, o)
		}
		if got := subjectOfUser(t, env, "u-bob"); got.Attributes["department"] != bobBefore.Attributes["department"] {
			t.Fatalf("%s changed bob's department to %q", what, got.Attributes["department"])
		}
	}

	b := newBrowser(t, env)
	tab := consoleAdmin(t, b, env)

	t.Run("browser/cross-site", func(t *testing.T) {
		evil := attackerServer(t, forgedAttributesForm(env))
		browserDo(t, tab, "open the attacker's page", chromedp.Navigate(evil.URL+"/"))
		loc := waitLeft(t, tab, evil.URL)
		t.Logf("the cross-site post ended at %s with status %d", loc,
			consoleEval[int](t, tab, "read the status", `performance.getEntriesByType("navigation")[0].responseStatus`))
		// The session cookie is SameSite=Lax: a cross-site POST goes
		// without it, so the edge never lets it reach the console as the
		// admin.
		if u, err := url.Parse(loc); err == nil && u.Query().Get("ok") != "" {
			t.Errorf("the forged post ended on %s, a console page with a notice", loc)
		}
		if n := consoleEval[string](t, tab, "read the notice", `(document.querySelector("p.notice") || {innerText: ""}).innerText`); n != "" {
			t.Errorf("the forged post shows the notice %q", n)
		}
		unchanged("a cross-site form post")
	})

	t.Run("browser/same-site", func(t *testing.T) {
		// Same site, other origin: the browser sends the admin's cookie,
		// so only the console's own checks (Sec-Fetch-Site, Origin, the
		// CSRF token) stand between the page and the change.
		evil := attackerServer(t, forgedAttributesForm(env), env.Config().TLS.CertFile, env.Config().TLS.KeyFile)
		origin := sameSiteOrigin(t, env, evil)
		browserDo(t, tab, "open the same-site attacker's page", chromedp.Navigate(origin+"/"))
		loc := waitLeft(t, tab, origin)
		if want := consoleURL(env, "/user/attributes"); loc != want {
			t.Fatalf("the forged post ended at %s, want the console's answer at %s (%s)", loc, want, browserWhere(tab))
		}
		status := consoleEval[int](t, tab, "read the status", `performance.getEntriesByType("navigation")[0].responseStatus`)
		msg := consoleEval[string](t, tab, "read the message", `(document.querySelector(".error-message") || {innerText: ""}).innerText`)
		// Refused by where it came from (Sec-Fetch-Site, Origin) or, were
		// those checks gone, by the missing CSRF token.
		if status != http.StatusForbidden || !strings.Contains(msg, "another site") && !strings.Contains(msg, "did not come from the console") {
			t.Errorf("the same-site forged post: status %d, message %q; want 403 saying it came from another site", status, msg)
		}
		unchanged("a same-site, cross-origin form post")
	})

	t.Run("http", func(t *testing.T) {
		admin := loginAs(t, env, "console", "admin", adminPassword)
		csrf := csrfFrom(t, get(t, admin, consoleURL(env, "/user?sub=u-bob"), asNavigation))
		change := func(token string) url.Values {
			v := url.Values{"sub": {"u-bob"}, "overrides": {"department=Security Tech"}}
			if token != "" {
				v.Set("csrf", token)
			}
			return v
		}
		for _, tc := range []struct {
			name    string
			token   string
			headers []string
			msg     string
		}{
			{"no csrf", "", nil, "did not come from the console"},
			{"wrong csrf", strings.Repeat("0", len(csrf)), nil, "did not come from the console"},
			{"another session's csrf", "0123456789abcdef0123456789abcdef", nil, "did not come from the console"},
			{"other origin", csrf, []string{"Origin: https://evil.example"}, "another site"},
			{"same site, other port", csrf, []string{"Origin: https://" + hostOnly(t, consoleURL(env, "")) + ":1"}, "another site"},
			{"cross-site fetch", csrf, []string{"Sec-Fetch-Site: cross-site"}, "another site"},
			{"same-site fetch", csrf, []string{"Sec-Fetch-Site: same-site"}, "another site"},
		} {
			r := consolePost(t, env, admin, "/user/attributes", change(tc.token), tc.headers...)
			expectRefused(t, tc.name, r, http.StatusForbidden, tc.msg)
			unchanged(tc.name)
		}
		// A GET of the change route is not a change.
		q := change(csrf)
		r := get(t, admin, consoleURL(env, "/user/attributes?"+q.Encode()), asNavigation)
		if r.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("GET /user/attributes: status %d, want 405", r.StatusCode)
		}
		unchanged("a GET of /user/attributes")

		// The same post from the console itself is accepted: the refusals
		// above were for how they came, not what they asked.
		r = consolePost(t, env, admin, "/user/attributes", change(csrf), "Origin: "+consoleURL(env, ""), "Sec-Fetch-Site: same-origin")
		if r.StatusCode != http.StatusSeeOther {
			t.Fatalf("the genuine post: status %d, want 303: %.300s", r.StatusCode, r.Body)
		}
		if o := overridesOf(t, env, "u-bob"); o["department"] != "Security Tech" {
			t.Errorf("the genuine post did not change bob: %v", o)
		}
	})
}

// TestConsoleMarkupRendersAsText: markup typed into a group's name,
// description or a user's attribute is shown as text everywhere — no
// element is created from it and no script runs.
func TestConsoleMarkupRendersAsText(t *testing.T) {
	t.Parallel()
	env := consoleEnv(t, "store", nil)
	b := newBrowser(t, env)
	tab := consoleAdmin(t, b, env)
	opened := watchDialogs(t, tab)
	const script = `<script>alert(1)</script>`
	const markup = `<script>alert(1)</script><img src=x onerror=alert(2)>`
	// noMarkup counts the elements the typed markup would have created
	// inside css if it were rendered as HTML rather than text.
	noMarkup := func(where, css string) {
		t.Helper()
		n := consoleEval[int](t, tab, "count injected elements",
			`document.querySelectorAll(`+strconv.Quote(css+" script, "+css+" img")+`).length`)
		if n != 0 {
			t.Errorf("%s: %d script/img elements were created from the typed markup", where, n)
		}
	}

	// The editor: the markup as the name and description, and as an
	// included group, which does not exist: the preview's error names it.
	consoleOpen(t, tab, env, "/group")
	browserRun(t, tab, "type markup", chromedp.Steps(
		chromedp.SendKeys(chromedp.CSS(`form.editor input[name="name"]`), script),
		chromedp.SendKeys(chromedp.CSS(`form.editor input[name="description"]`), markup),
		chromedp.SendKeys(chromedp.CSS(`form.editor textarea[name="include"]`), `<img src=x onerror=alert(3)>`),
	))
	var preview string
	waitFor(t, consoleWait, "the preview's error naming the markup", func() bool {
		preview = consoleEval[string](t, tab, "read the preview", `(document.querySelector("#preview .invalid") || {innerText: ""}).innerText`)
		return strings.Contains(preview, "<img src=x onerror=alert(3)>") || strings.Contains(preview, script)
	})
	t.Logf("preview: %q", preview)
	noMarkup("#preview", "#preview")
	if n := consoleEval[int](t, tab, "count scripts", `document.querySelectorAll("#preview script").length`); n != 0 {
		t.Errorf("#preview holds %d script elements", n)
	}

	// Saved with a valid include: the name and the description are shown
	// as text on the group list and on the group's page.
	browserRun(t, tab, "fix the include", chromedp.Steps(
		clearField(`form.editor textarea[name="include"]`),
		chromedp.SendKeys(chromedp.CSS(`form.editor textarea[name="include"]`), "finance"),
		chromedp.SendKeys(chromedp.CSS(`form.editor input[name="message"]`), "markup test"),
	))
	browserDo(t, tab, "save the group", chromedp.Click(chromedp.CSS(`form.editor button[type="submit"]`)))
	if n := consoleNotice(t, tab); !strings.HasPrefix(n, "Saved.") {
		// A group name may be refused; then only the description is
		// under test below, under a plain name.
		t.Logf("saving a group named %q: %q (%s)", script, n, browserWhere(tab))
		consoleOpen(t, tab, env, "/group")
		browserRun(t, tab, "type the description", chromedp.Steps(
			chromedp.SendKeys(chromedp.CSS(`form.editor input[name="name"]`), "markup-test"),
			chromedp.SendKeys(chromedp.CSS(`form.editor input[name="description"]`), markup),
			chromedp.SendKeys(chromedp.CSS(`form.editor textarea[name="include"]`), "finance"),
		))
		browserDo(t, tab, "save the group", chromedp.Click(chromedp.CSS(`form.editor button[type="submit"]`)))
		if n := consoleNotice(t, tab); !strings.HasPrefix(n, "Saved.") {
			t.Fatalf("saving a group with a markup description: notice %q (%s)", n, browserWhere(tab))
		}
	} else if h := consoleHeading(t, tab); h != "Group "+script {
		t.Errorf("the group's page: heading %q, want the name as text", h)
	}
	noMarkup("the group's page", "main")

	consoleOpen(t, tab, env, "/groups")
	list := consoleEval[string](t, tab, "read the list", `document.querySelector("main table.list").innerText`)
	if !strings.Contains(list, markup) {
		t.Errorf("/groups does not show the description as text: %q", list)
	}
	noMarkup("/groups", "main")

	// An attribute value set on the user page.
	consoleOpen(t, tab, env, "/user?sub=u-carol")
	browserRun(t, tab, "set a markup attribute", chromedp.Steps(
		clearField(`#attributes-form textarea[name="overrides"]`),
		chromedp.SendKeys(chromedp.CSS(`#attributes-form textarea[name="overrides"]`), "nickname="+markup),
	))
	browserDo(t, tab, "save the attribute", chromedp.Click(chromedp.CSS(`#attributes-form button[type="submit"]`)))
	if n := consoleNotice(t, tab); !strings.HasPrefix(n, "Attributes changed.") {
		t.Fatalf("saving the attribute: notice %q (%s)", n, browserWhere(tab))
	}
	if row := rowWith(consoleRows(t, tab, "#attributes"), "nickname"); len(row) < 4 || row[3] != markup {
		t.Errorf("#attributes: nickname %q, want the markup as text", row)
	}
	noMarkup("the user page", "main")
	consoleOpen(t, tab, env, "/users")
	if users := consoleEval[string](t, tab, "read users", `document.querySelector("main").innerText`); !strings.Contains(users, markup) {
		t.Errorf("/users does not show the attribute as text")
	}
	noMarkup("/users", "main")

	if d := opened.list(); len(d) > 0 {
		t.Errorf("dialogs opened: %q", d)
	}
}

// TestConsoleNonAdminForbidden: users outside the console's rule get a 403
// without the console's navigation, in a browser and by hand.
func TestConsoleNonAdminForbidden(t *testing.T) {
	t.Parallel()
	env := consoleEnv(t, "store", nil)
	b := newBrowser(t, env)

	tab, resp := consoleSignIn(t, b, env, "alice", alicePassword)
	if resp.Status != http.StatusForbidden {
		t.Errorf("alice at the console: status %d, want 403 (%s)", resp.Status, browserWhere(tab))
	}
	if n := consoleEval[int](t, tab, "count console links", `document.querySelectorAll('a[href="/groups"], nav').length`); n != 0 {
		t.Errorf("alice's 403 page shows the console's navigation (%d elements)", n)
	}
	// The same for a page deeper in, and for a change.
	for _, path := range []string{"/groups", "/user?sub=u-bob", "/whatif?run=1&user=u-alice&app=secure"} {
		resp := browserDo(t, tab, "open "+path, chromedp.Navigate(consoleURL(env, path)))
		if resp.Status != http.StatusForbidden {
			t.Errorf("alice at %s: status %d, want 403", path, resp.Status)
		}
	}

	for _, user := range []struct{ name, password string }{{"alice", alicePassword}, {"bob", bobPassword}, {"carol", carolPassword}} {
		res := loginFlow(t, env, "console", "/", user.name, user.password)
		if res.Final.StatusCode != http.StatusForbidden {
			t.Errorf("%s at the console: status %d, want 403", user.name, res.Final.StatusCode)
		}
		if strings.Contains(string(res.Final.Body), `href="/groups"`) {
			t.Errorf("%s's 403 page links to /groups", user.name)
		}
		r := consolePost(t, env, res.Client, "/user/attributes", url.Values{"sub": {"u-" + user.name}, "overrides": {"department=IT"}})
		if r.StatusCode != http.StatusForbidden {
			t.Errorf("%s posting to the console: status %d, want 403", user.name, r.StatusCode)
		}
		if o := overridesOf(t, env, "u-"+user.name); len(o) != 0 {
			t.Errorf("%s changed their attributes through the console: %v", user.name, o)
		}
	}

	// The admin, by contrast, gets the navigation: the checks above look
	// for something that is there for those allowed.
	admin := loginAs(t, env, "console", "admin", adminPassword)
	if r := get(t, admin, consoleURL(env, "/"), asNavigation); !strings.Contains(string(r.Body), `href="/groups"`) {
		t.Errorf("the admin's overview has no link to /groups: %.300s", r.Body)
	}
}

// TestConsoleFramingRefused: the console forbids framing in its headers,
// and a browser indeed refuses to show it in another page's frame, even
// one on the same site whose frame request carries the admin's session.
func TestConsoleFramingRefused(t *testing.T) {
	t.Parallel()
	env := consoleEnv(t, "store", nil)
	admin := loginAs(t, env, "console", "admin", adminPassword)
	for _, path := range []string{"/", "/groups", "/user?sub=u-bob", "/whatif?run=1&path=x", "/nope", "/user/attributes"} {
		r := get(t, admin, consoleURL(env, path), asNavigation)
		if csp := r.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("%s (%d): Content-Security-Policy %q, want frame-ancestors 'none'", path, r.StatusCode, csp)
		}
		if xfo := r.Header.Get("X-Frame-Options"); xfo != "DENY" {
			t.Errorf("%s (%d): X-Frame-Options %q, want DENY", path, r.StatusCode, xfo)
		}
	}

	b := newBrowser(t, env)
	tab := consoleAdmin(t, b, env)
	messages := watchConsole(t, tab)
	victim := consoleURL(env, "/groups")
	// Served on the console's own host name, another port: same site, so
	// the browser sends the admin's SameSite=Lax cookie with the frame's
	// request (a cross-site frame would go without it, be sent to sign in,
	// and never show the console whatever its headers said).
	evil := attackerServer(t, `<!doctype html><title>Totally not the console</title>
<iframe name="victim" src="`+victim+`" width="800" height="400"></iframe>
<iframe name="control" src="/inner" width="200" height="100"></iframe>`, env.Config().TLS.CertFile, env.Config().TLS.KeyFile)
	origin := sameSiteOrigin(t, env, evil)
	before := consoleRequests(t, env, "/groups")
	browserDo(t, tab, "open the framing page", chromedp.Navigate(origin+"/"))

	frames := func() map[string]*cdp.Frame {
		ctx, cancel := context.WithTimeout(tab, browserStepTimeout)
		defer cancel()
		tree, err := chromedp.Call(ctx, page.GetFrameTree, cdp.Empty{})
		if err != nil {
			t.Fatalf("frame tree: %v", err)
		}
		out := map[string]*cdp.Frame{}
		for _, c := range tree.FrameTree.ChildFrames {
			out[c.Frame.Name] = c.Frame
		}
		return out
	}
	var fs map[string]*cdp.Frame
	waitFor(t, consoleWait, "both frames to load", func() bool {
		fs = frames()
		return fs["victim"] != nil && fs["victim"].URL != "" && fs["victim"].URL != "about:blank" &&
			fs["control"] != nil && fs["control"].URL == origin+"/inner"
	})
	// The control frame shows that the tree names a rendered frame's
	// document by its URL. Framing allowed, the victim frame would hold
	// the console's /groups the same way (its request carried the admin's
	// session, as the audit check below proves), and this check would
	// fail; refused, the browser puts an error page in its place.
	v := fs["victim"]
	t.Logf("victim frame: url %q, unreachable %q", v.URL, v.UnreachableURL)
	if strings.HasPrefix(v.URL, env.AppURL("console")) {
		t.Errorf("the console rendered inside another site's frame: %s", v.URL)
	}
	if !strings.HasPrefix(v.URL, "chrome-error://") || v.UnreachableURL != victim {
		t.Errorf("victim frame: url %q unreachable %q, want the browser's error page in place of %s", v.URL, v.UnreachableURL, victim)
	}
	// The frame's request reached the console as the admin: its refusal
	// was the headers', not a missing session's.
	waitFor(t, 5*time.Second, "the framed request in the audit log", func() bool {
		return consoleRequests(t, env, "/groups") > before
	})
	if m := append(messages.matching("frame-ancestors"), messages.matching("X-Frame-Options")...); len(m) == 0 {
		t.Logf("no console message about the refused frame (%v)", messages.matching("Refused"))
	}
}

// consoleRequests counts the admin's allowed requests to the console's
// path in the audit log.
func consoleRequests(t *testing.T, env *devenv.Env, path string) int {
	t.Helper()
	n := 0
	for _, ev := range auditEvents(t, env) {
		if ev.App == "console" && ev.Path == path && ev.User == "u-admin" && ev.Decision == "allow" {
			n++
		}
	}
	return n
}

// escalationConfig makes alice a console admin who is not an owner (a
// member of ztna-admins), and lets the IT department in through group
// it-admins, so that an attribute decides console access.
func escalationConfig(cfg *proxy.Config) {
	for i := range cfg.Groups {
		if g := &cfg.Groups[i]; g.Name == "ztna-admins" {
			g.Members = append(g.Members, "alice@example.com")
			g.Include = append(g.Include, "it-admins")
		}
	}
	cfg.Groups = append(cfg.Groups, groups.Group{Name: "it-admins", Description: "The IT department", When: `user.department == "IT"`})
}

// TestConsoleSelfEscalationRefused: alice, an admin but not an owner, can
// change ordinary policy, but not make herself an owner, change her own
// attributes, or give someone console access through an attribute; the
// owner can do the last.
func TestConsoleSelfEscalationRefused(t *testing.T) {
	t.Parallel()
	env := consoleEnv(t, "store", escalationConfig)
	alice := loginAs(t, env, "console", "alice", alicePassword)
	if r := get(t, alice, consoleURL(env, "/"), asNavigation); !strings.Contains(string(r.Body), `<b class="role">admin</b>`) {
		t.Fatalf("alice is not a console admin with the test config: %.500s", r.Body)
	}
	groupForm := func(c *http.Client, name string, edit func(*groups.Group)) url.Values {
		t.Helper()
		page := get(t, c, consoleURL(env, "/group?name="+url.QueryEscape(name)), asNavigation)
		csrf := csrfFrom(t, page)
		var g groups.Group
		for _, gg := range policyHead(t, env).Policy.Groups {
			if gg.Name == name {
				g = gg
			}
		}
		edit(&g)
		return url.Values{"csrf": {csrf}, "orig": {name}, "name": {g.Name}, "description": {g.Description}, "when": {g.When},
			"members": {strings.Join(g.Members, "\n")}, "include": {strings.Join(g.Include, "\n")},
			"message": {"test"}, "parent": {strconv.Itoa(policyHead(t, env).N)}}
	}

	// An ordinary change goes through: alice really is an admin.
	r := consolePost(t, env, alice, "/group/save", groupForm(alice, "finance", func(g *groups.Group) { g.Description = "Finance, edited by alice" }))
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("alice's ordinary edit: status %d, want 303: %.300s", r.StatusCode, r.Body)
	}
	version := policyHead(t, env).N
	if version != 2 {
		t.Fatalf("after alice's edit the head is version %d, want 2", version)
	}

	// Making herself an owner.
	r = consolePost(t, env, alice, "/group/save", groupForm(alice, "ztna-owners", func(g *groups.Group) {
		g.Members = append(g.Members, "alice@example.com")
	}))
	expectRefused(t, "alice adding herself to ztna-owners", r, http.StatusForbidden, "owner")
	// Widening the console's groups another way: including a group she is in.
	r = consolePost(t, env, alice, "/group/save", groupForm(alice, "ztna-owners", func(g *groups.Group) {
		g.Include = append(g.Include, "security-tech")
	}))
	expectRefused(t, "alice including her own group in ztna-owners", r, http.StatusForbidden, "owner")
	if n := policyHead(t, env).N; n != version {
		t.Errorf("a refused change saved version %d", n)
	}

	// Her own attributes.
	csrf := csrfFrom(t, get(t, alice, consoleURL(env, "/user?sub=u-bob"), asNavigation))
	r = consolePost(t, env, alice, "/user/attributes", url.Values{"csrf": {csrf}, "sub": {"u-alice"}, "overrides": {"title=CISO"}})
	expectRefused(t, "alice changing her own attributes", r, http.StatusForbidden, "your own attributes")
	if o := overridesOf(t, env, "u-alice"); len(o) != 0 {
		t.Errorf("alice changed her own attributes: %v", o)
	}

	// Bob into IT, which would make him a console admin: only owners.
	r = consolePost(t, env, alice, "/user/attributes", url.Values{"csrf": {csrf}, "sub": {"u-bob"}, "overrides": {"department=IT"}})
	expectRefused(t, "alice moving bob into IT", r, http.StatusForbidden, "Only console owners")
	if o := overridesOf(t, env, "u-bob"); len(o) != 0 {
		t.Errorf("alice changed bob's attributes: %v", o)
	}
	// A change that does not touch console access is hers to make.
	r = consolePost(t, env, alice, "/user/attributes", url.Values{"csrf": {csrf}, "sub": {"u-bob"}, "overrides": {"title=Senior Accountant"}})
	if r.StatusCode != http.StatusSeeOther {
		t.Errorf("alice changing bob's title: status %d, want 303: %.300s", r.StatusCode, r.Body)
	}

	// The owner may move bob into IT, and bob can then use the console.
	admin := loginAs(t, env, "console", "admin", adminPassword)
	csrf = csrfFrom(t, get(t, admin, consoleURL(env, "/user?sub=u-bob"), asNavigation))
	r = consolePost(t, env, admin, "/user/attributes", url.Values{"csrf": {csrf}, "sub": {"u-bob"}, "overrides": {"department=IT"}})
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("the owner moving bob into IT: status %d, want 303: %.300s", r.StatusCode, r.Body)
	}
	if o := overridesOf(t, env, "u-bob"); o["department"] != "IT" {
		t.Errorf("bob's overrides after the owner's change: %v", o)
	}
	bob := loginFlow(t, env, "console", "/", "bob", bobPassword)
	if bob.Final.StatusCode != http.StatusOK || !strings.Contains(string(bob.Final.Body), `<b class="role">admin</b>`) {
		t.Errorf("bob in IT at the console: status %d, want 200 as admin: %.300s", bob.Final.StatusCode, bob.Final.Body)
	}
}
