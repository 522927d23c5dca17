package integration

// browser_test.go drives the dev system with a real headless Chromium: the
// redirects, cookies (__Host-, SameSite=Lax), CSP form-action rules and the
// IdP's HTML form are exercised by the browser that users run, not by a Go
// client imitating one.
//
// Trust: the browser gets a private HOME whose NSS database trusts the dev
// CA (certutil -t "C,,"), so TLS is verified for real. Only if certutil is
// missing does it fall back to --ignore-certificate-errors (logged).

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/ztna-dev/ztna/authn/devidp"
	"github.com/ztna-dev/ztna/internal/devenv"
)

const (
	browserExecPath = "/usr/lib/chromium/chromium"
	// browserStepTimeout bounds every navigation and every DOM wait.
	browserStepTimeout = 15 * time.Second
	// browserStartTimeout bounds the browser's start and a new tab's first
	// Run. Those Runs must not get a context with a deadline (the browser
	// or tab would live only as long as it), so a timer cancels them instead.
	browserStartTimeout = 60 * time.Second
	// browserScreenshotsEnv=1 writes screenshots for the README into
	// docs/ (repository root); by default nothing is written outside t.TempDir.
	browserScreenshotsEnv = "ZTNA_SCREENSHOTS"
)

// browserEnv starts the dev system for one browser test. It is stopped
// after the browser (t.Cleanup runs last-registered first, and the browser
// is started after this), so no browser connection holds up the drain.
func browserEnv(t *testing.T) *devenv.Env {
	t.Helper()
	env, err := devenv.Start(context.Background(), devenv.Options{
		DataDir:     t.TempDir(),
		Listen:      "127.0.0.1:0",
		AdminListen: "off",
		IdPListen:   "127.0.0.1:0",
		Audit:       io.Discard,
	})
	if err != nil {
		t.Fatalf("devenv.Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.Close(ctx); err != nil {
			// The IdP listener is closed twice (by its server's Shutdown,
			// then by its own closer): reported, not this test's subject.
			if errors.Is(err, net.ErrClosed) {
				t.Logf("devenv Close: %v (known double close of the IdP listener)", err)
				return
			}
			t.Errorf("devenv Close: %v", err)
		}
	})
	return env
}

// browser is one Chromium process; each tab it opens has its own browser
// context (its own cookie jar), so users signed in on two tabs never meet.
type browser struct {
	ctx context.Context // the process's first tab: parent of every new tab
}

// newBrowser starts headless Chromium trusting env's dev CA. The process and
// its temp directories are gone when the test ends.
func newBrowser(t *testing.T, env *devenv.Env) *browser { return startBrowser(t, env, nil) }

// startBrowser is newBrowser with setup, if not nil, run on the browser's
// HOME (whose NSS database then trusts the dev CA) and user data dir before
// the browser starts: where a test installs a device identity.
func startBrowser(t *testing.T, env *devenv.Env, setup func(home, udd string)) *browser {
	t.Helper()
	if _, err := os.Stat(browserExecPath); err != nil {
		msg := "chromium not installed (" + browserExecPath + "): run make test, which installs it"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}

	// A short directory: Chromium's singleton socket path under TMPDIR must
	// fit in 108 bytes, which t.TempDir() under a long TMPDIR does not.
	dir, err := os.MkdirTemp("/tmp", "zb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove browser dir: %v", err)
		}
	})
	home, tmp, udd := filepath.Join(dir, "home"), filepath.Join(dir, "tmp"), filepath.Join(dir, "udd")
	for _, d := range []string{home, tmp, filepath.Join(udd, "Default")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browserExecPath),
		chromedp.NoSandbox, // tests run as root in CI containers
		chromedp.UserDataDir(udd),
		chromedp.Env("HOME="+home, "TMPDIR="+tmp),
		chromedp.DisableGPU,
		chromedp.WindowSize(1100, 850),
		// Chromium resolves *.localhost to loopback itself, but possibly to
		// ::1 first; the edge listens on 127.0.0.1 only.
		chromedp.Flag("host-resolver-rules", "MAP *.localhost 127.0.0.1"),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-first-run", true),
	)
	switch trusted := browserTrustCA(t, home, env.CAFile); {
	case trusted:
		t.Log("browser trust: dev CA added to the browser's NSS database (certificates are verified)")
	case setup != nil:
		// A device identity needs the NSS tools anyway: no fallback.
		msg := "certutil not installed (libnss3-tools): run make test, which installs it"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	default:
		t.Log("browser trust: certutil not found, falling back to --ignore-certificate-errors")
		opts = append(opts, chromedp.Flag("ignore-certificate-errors", true))
	}
	if setup != nil {
		setup(home, udd)
	}

	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(acancel) // kills the browser and waits for it
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)

	start := time.Now()
	watchdog := time.AfterFunc(browserStartTimeout, acancel)
	err = chromedp.Do(bctx, chromedp.Navigate("about:blank")) // starts the browser: no deadline
	stopped := watchdog.Stop()
	if err != nil {
		if !stopped {
			t.Fatalf("browser did not start within %v: %v", browserStartTimeout, err)
		}
		t.Fatalf("start browser: %v", err)
	}
	t.Logf("browser started in %v", time.Since(start).Round(time.Millisecond))
	return &browser{ctx: bctx}
}

// browserTrustCA creates an NSS database in home that trusts caFile for
// TLS servers. It reports false if certutil is not installed.
func browserTrustCA(t *testing.T, home, caFile string) bool {
	t.Helper()
	certutil, err := exec.LookPath("certutil")
	if err != nil {
		return false
	}
	db := filepath.Join(home, ".pki", "nssdb")
	if err := os.MkdirAll(db, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"-N", "-d", "sql:" + db, "--empty-password"},
		{"-A", "-d", "sql:" + db, "-n", "ztna dev CA", "-t", "C,,", "-i", caFile},
	} {
		if out, err := exec.CommandContext(ctx, certutil, args...).CombinedOutput(); err != nil {
			t.Fatalf("certutil %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return true
}

// browserConsole keeps the last console messages of a tab (CSP
// violations, blocked navigations) for failure messages.
type browserConsole struct {
	mu   sync.Mutex
	msgs []string
}

type browserConsoleKey struct{}

func (c *browserConsole) add(m string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.msgs) == 20 {
		c.msgs = c.msgs[1:]
	}
	c.msgs = append(c.msgs, m)
}

func (c *browserConsole) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.msgs, "; ")
}

// newTab opens a tab in a fresh browser context: no cookies, no session.
func (b *browser) newTab(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	watchdog := time.AfterFunc(browserStartTimeout, cancel)
	err := chromedp.Do(ctx, chromedp.Navigate("about:blank")) // creates the tab: no deadline
	if !watchdog.Stop() {
		t.Fatalf("new tab: not ready within %v: %v", browserStartTimeout, err)
	}
	if err != nil {
		t.Fatalf("new tab: %v", err)
	}

	// Subscribe only now: before the first Run the tab does not exist, and
	// Console would race with Run to create it.
	console := &browserConsole{}
	messages := chromedp.Console(ctx)
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done // the reader ends with the tab
	})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type != chromedp.ConsoleDebug && m.Type != chromedp.ConsoleLog {
				console.add(m.String())
			}
		}
	}()
	return context.WithValue(ctx, browserConsoleKey{}, console)
}

// browserRun runs one bounded step in tab and fails the test with where the
// tab is if the step fails.
func browserRun[T any](t *testing.T, tab context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, browserStepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v (tab at %s)", what, err, browserWhere(tab))
	}
	return v
}

// browserDo runs steps in tab, bounded, and waits for any navigation they
// start to finish loading. It returns the final document response.
func browserDo(t *testing.T, tab context.Context, what string, steps ...chromedp.Action[chromedp.Void]) *network.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, browserStepTimeout)
	defer cancel()
	resp, err := chromedp.RunResponse(ctx, steps...)
	if err != nil {
		t.Fatalf("%s: %v (tab at %s)", what, err, browserWhere(tab))
	}
	if resp == nil {
		t.Fatalf("%s: no document response (tab at %s)", what, browserWhere(tab))
	}
	return resp
}

// browserWhere describes the tab's current page for failure messages.
func browserWhere(tab context.Context) string {
	ctx, cancel := context.WithTimeout(tab, 3*time.Second)
	defer cancel()
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		return "(location unknown: " + err.Error() + ")"
	}
	body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText.slice(0, 400) : ""`))
	where := loc + " showing " + strconv.Quote(body)
	if c, ok := tab.Value(browserConsoleKey{}).(*browserConsole); ok {
		where += "; console: [" + c.String() + "]"
	}
	return where
}

func browserText(t *testing.T, tab context.Context, id string) string {
	t.Helper()
	return strings.TrimSpace(browserRun(t, tab, "read #"+id, chromedp.Text(chromedp.ID(id))))
}

// browserHas reports whether the current page has an element with id,
// without waiting for one to appear.
func browserHas(t *testing.T, tab context.Context, id string) bool {
	t.Helper()
	return browserRun(t, tab, "look for #"+id,
		chromedp.Evaluate[bool](`document.getElementById(`+strconv.Quote(id)+`) !== null`))
}

func browserLocation(t *testing.T, tab context.Context) string {
	t.Helper()
	return browserRun(t, tab, "read location", chromedp.Location())
}

// browserUser returns the demo user with username.
func browserUser(t *testing.T, env *devenv.Env, username string) devidp.User {
	t.Helper()
	for _, u := range env.Users {
		if u.Username == username {
			return u
		}
	}
	t.Fatalf("no demo user %q", username)
	return devidp.User{}
}

// browserExpectLoginForm checks that the tab shows the dev IdP's sign-in
// form (and so is not signed in).
func browserExpectLoginForm(t *testing.T, tab context.Context, env *devenv.Env) {
	t.Helper()
	browserRun(t, tab, "wait for the IdP's login form", chromedp.WaitVisible(chromedp.ID("username")))
	if loc, idp := browserLocation(t, tab), env.Config().OIDC.Issuer+"/"; !strings.HasPrefix(loc, idp) {
		t.Fatalf("login form at %s, want it served by the dev IdP %s", loc, idp)
	}
}

// browserSubmitLogin types user and password into the IdP's form (the
// username field may be prefilled after a failed attempt) and submits it.
// It returns the response that the submission's navigation ended on.
func browserSubmitLogin(t *testing.T, tab context.Context, user, password string) *network.Response {
	t.Helper()
	browserRun(t, tab, "fill in the login form", chromedp.Steps(
		chromedp.WaitVisible(chromedp.ID("username")),
		chromedp.Clear(chromedp.ID("username")),
		chromedp.SendKeys(chromedp.ID("username"), user),
		chromedp.Clear(chromedp.ID("password")),
		chromedp.SendKeys(chromedp.ID("password"), password),
	))
	return browserDo(t, tab, "submit the login form as "+user, chromedp.Click(chromedp.ID("submit")))
}

// browserExpectWhoami checks that the tab shows whoami for app, signed in
// as email, with an assertion that verified against the edge's JWKS.
func browserExpectWhoami(t *testing.T, tab context.Context, env *devenv.Env, app, email string) {
	t.Helper()
	if loc, want := browserLocation(t, tab), env.AppURL(app)+"/"; loc != want {
		t.Fatalf("at %s, want %s (tab showing %s)", loc, want, browserWhere(tab))
	}
	if got := browserText(t, tab, "user"); got != email {
		t.Errorf("%s: #user = %q, want %q", app, got, email)
	}
	verified := browserText(t, tab, "verified")
	if !strings.Contains(verified, "verified with") || !strings.Contains(verified, "audience "+app) {
		t.Errorf("%s: #verified = %q, want the assertion verified with audience %s", app, verified, app)
	}
}

// browserScreenshot saves the tab as docs/name.png, only
// when ZTNA_SCREENSHOTS=1 (they are for the README).
func browserScreenshot(t *testing.T, tab context.Context, name string) {
	t.Helper()
	if os.Getenv(browserScreenshotsEnv) != "1" {
		return
	}
	png := browserRun(t, tab, "screenshot "+name, chromedp.FullScreenshot(100))
	dir := filepath.Join("..", "docs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// TestBrowserLoginFlow follows alice through sign-in, single sign-on to a
// second app, sign-out, and back to the sign-in form.
func TestBrowserLoginFlow(t *testing.T) {
	t.Parallel()
	env := browserEnv(t)
	b := newBrowser(t, env)
	tab := b.newTab(t)
	start := time.Now()

	// An unauthenticated navigation ends on the IdP's form.
	browserDo(t, tab, "open whoami", chromedp.Navigate(env.AppURL("whoami")+"/"))
	browserExpectLoginForm(t, tab, env)

	// A wrong password shows the error and stays on the form, which still
	// works afterwards.
	if resp := browserSubmitLogin(t, tab, "alice", "not-alice-password"); resp.Status != 401 {
		t.Errorf("wrong password: status %d, want 401", resp.Status)
	}
	if msg := browserText(t, tab, "error"); !strings.Contains(msg, "Invalid username or password") {
		t.Errorf("wrong password: #error = %q", msg)
	}
	browserExpectLoginForm(t, tab, env)

	resp := browserSubmitLogin(t, tab, "alice", browserUser(t, env, "alice").Password)
	if resp.Status != 200 {
		t.Errorf("after login: status %d, want 200", resp.Status)
	}
	browserExpectWhoami(t, tab, env, "whoami", "alice@example.com")
	if got := browserText(t, tab, "sub"); got != "u-alice" {
		t.Errorf("#sub = %q, want u-alice", got)
	}
	if got := browserText(t, tab, "groups"); !strings.Contains(got, "engineering") {
		t.Errorf("#groups = %q, want it to contain engineering", got)
	}
	browserScreenshot(t, tab, "whoami")

	// The dev IdP asks for a password at every /authorize, so reaching the
	// second app without the form proves the edge's auth-host session
	// skipped the IdP and handed off directly.
	resp = browserDo(t, tab, "open secure", chromedp.Navigate(env.AppURL("secure")+"/"))
	if resp.Status != 200 {
		t.Errorf("secure: status %d, want 200", resp.Status)
	}
	if browserHas(t, tab, "username") {
		t.Fatalf("secure showed a login form although alice is signed in: %s", browserWhere(tab))
	}
	browserExpectWhoami(t, tab, env, "secure", "alice@example.com")

	// Sign out from whoami: the confirmation page, then the signed-out page
	// on the auth host after the IdP's end-session redirect.
	browserDo(t, tab, "back to whoami", chromedp.Navigate(env.AppURL("whoami")+"/"))
	browserExpectWhoami(t, tab, env, "whoami", "alice@example.com")
	browserDo(t, tab, "click Sign out on whoami", chromedp.Click(chromedp.ID("logout")))
	browserRun(t, tab, "wait for the sign-out page", chromedp.WaitVisible(chromedp.ID("signout")))
	if got := browserText(t, tab, "user"); got != "alice@example.com" {
		t.Errorf("sign-out page: #user = %q, want alice@example.com", got)
	}
	browserDo(t, tab, "confirm sign-out", chromedp.Click(chromedp.ID("signout")))
	if loc, want := browserLocation(t, tab), env.AuthOrigin+"/.ztna/signed-out"; loc != want {
		t.Errorf("after sign-out at %s, want %s (showing %s)", loc, want, browserWhere(tab))
	}
	if got := browserText(t, tab, "title"); got != "Signed out" {
		t.Errorf("signed-out page: #title = %q, want Signed out", got)
	}

	// The session is gone everywhere: both apps send the browser to the IdP.
	for _, app := range []string{"whoami", "secure"} {
		browserDo(t, tab, "open "+app+" after sign-out", chromedp.Navigate(env.AppURL(app)+"/"))
		browserExpectLoginForm(t, tab, env)
	}
	t.Logf("login flow took %v (after browser start)", time.Since(start).Round(time.Millisecond))
}

// TestBrowserDenied signs in users whom no rule of the app allows: they get
// ztna's deny page with a 403, saying who they are and what was refused.
func TestBrowserDenied(t *testing.T) {
	t.Parallel()
	env := browserEnv(t)
	b := newBrowser(t, env)
	start := time.Now()

	for _, tc := range []struct {
		user, email, app string
		// allowedApp is an app the same user may use: the deny did not end
		// the session, and single sign-on still works.
		allowedApp string
	}{
		{user: "carol", email: "carol@example.com", app: "whoami"},
		{user: "bob", email: "bob@example.com", app: "secure", allowedApp: "whoami"},
	} {
		t.Run(tc.user+"@"+tc.app, func(t *testing.T) {
			tab := b.newTab(t) // own cookies: the previous user is not signed in here
			browserDo(t, tab, "open "+tc.app, chromedp.Navigate(env.AppURL(tc.app)+"/"))
			browserExpectLoginForm(t, tab, env)
			resp := browserSubmitLogin(t, tab, tc.user, browserUser(t, env, tc.user).Password)
			if resp.Status != 403 {
				t.Errorf("status %d, want 403", resp.Status)
			}
			if loc, want := browserLocation(t, tab), env.AppURL(tc.app)+"/"; loc != want {
				t.Errorf("deny page at %s, want %s", loc, want)
			}
			if got := browserText(t, tab, "title"); got != "Access denied" {
				t.Errorf("#title = %q, want Access denied", got)
			}
			wantMsg := `no rule of app "` + tc.app + `" allows ` + tc.email
			if got := browserText(t, tab, "message"); !strings.Contains(got, wantMsg) {
				t.Errorf("#message = %q, want it to contain %q", got, wantMsg)
			}
			if got := browserText(t, tab, "code"); got != "access_denied" {
				t.Errorf("#code = %q, want access_denied", got)
			}
			if got := browserText(t, tab, "hint"); got == "" {
				t.Error("#hint is empty")
			}
			// No rule matched, so there is no rule to name.
			if browserHas(t, tab, "rule") {
				t.Errorf("#rule shown for a default deny: %q", browserText(t, tab, "rule"))
			}
			if browserHas(t, tab, "user") {
				t.Error("the deny page leaked the app's page (#user present)")
			}
			if tc.user == "carol" {
				browserScreenshot(t, tab, "deny")
			}

			// The edge answers the signed-in browser's next visit with the
			// same 403 at once, without another login.
			resp = browserDo(t, tab, "reload "+tc.app, chromedp.Navigate(env.AppURL(tc.app)+"/"))
			if resp.Status != 403 {
				t.Errorf("second visit: status %d, want 403", resp.Status)
			}
			if browserHas(t, tab, "username") {
				t.Errorf("second visit showed the login form: %s", browserWhere(tab))
			}

			if tc.allowedApp != "" {
				resp := browserDo(t, tab, "open "+tc.allowedApp, chromedp.Navigate(env.AppURL(tc.allowedApp)+"/"))
				if resp.Status != 200 {
					t.Errorf("%s: status %d, want 200", tc.allowedApp, resp.Status)
				}
				browserExpectWhoami(t, tab, env, tc.allowedApp, tc.email)
			}
		})
	}
	t.Logf("deny checks took %v (after browser start)", time.Since(start).Round(time.Millisecond))
}
