package console

import (
	"context"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/posture"
)

// harness drives a console over a fakeBackend.
type harness struct {
	f *fakeBackend
	h *Handler
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	f := newFake(t)
	h := New(f, nil)
	h.now = func() time.Time { return testNow }
	return &harness{f: f, h: h}
}

// do serves one request as the admin u-admin with role, and returns the
// response and its body. A non-nil form is sent as a POST body.
func (hs *harness) do(t *testing.T, role Role, method, target string, form url.Values) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	r := httptest.NewRequestWithContext(ctx, method, target, body)
	if form != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	r = r.WithContext(WithActor(ctx, Actor{User: "u-admin", Email: "admin@example.com", Session: "ref-admin", CSRF: "tok", Role: role}))
	w := httptest.NewRecorder()
	hs.h.ServeHTTP(w, r)
	res := w.Result()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

func (hs *harness) get(t *testing.T, target string) (*http.Response, string) {
	t.Helper()
	return hs.do(t, RoleAdmin, http.MethodGet, target, nil)
}

func TestPagesRender(t *testing.T) {
	hs := newHarness(t)
	for _, tc := range []struct {
		name, target string
		role         Role
		want         []string
		absent       []string
	}{
		{"overview", "/", RoleAdmin, []string{"<h1>Overview</h1>", "<b>3</b>users seen", ">1</b>quarantined", "<b>3</b>live exchanges",
			"<b>2</b>sessions", "<b>2</b>devices", "falco: shell in container", "deletes are refused", "replica-a", "current"}, nil},
		{"app list", "/apps", RoleAdmin, []string{`href="/app?name=wiki"`, "wiki.corp.example", "TCP via tunnel", "builtin: console", "managed"}, nil},
		{"app page", "/app?name=wiki", RoleAdmin, []string{"<h1>App wiki</h1>", "no-delete", "DELETE", "mon-fri 09:00–18:00 Asia/Seoul",
			"Save and apply", `name="csrf" value="tok"`, "- name: no-delete"}, nil},
		{"app page, viewer", "/app?name=wiki", RoleViewer, []string{"- name: security-staff", "read-only"}, []string{"Save and apply", `action="/app/rules"`}},
		{"tcp app page", "/app?name=db", RoleAdmin, []string{"TCP via tunnel", "device meets profile managed", "CONNECT"}, nil},
		{"device list", "/devices", RoleAdmin, []string{"alice-mbp", "bob-laptop", "alice@example.com", "quarantined", "revoked", `title="fails managed"`, `title="passes managed"`}, nil},
		{"device list of a user", "/devices?user=u-bob", RoleAdmin, []string{"Devices of bob@example.com", "bob-laptop"}, []string{"alice-mbp"}},
		{"device page", "/device?id=d-alice", RoleAdmin, []string{"Device alice-mbp", "disk encryption is off on this device",
			"turn on disk encryption (FileVault, BitLocker or LUKS)", "falcon-sensor", "macos 14.5", "Quarantine now", "Revoke device", "Not quarantined"}, nil},
		{"quarantined device", "/device?id=d-bob", RoleAdmin, []string{"falco: shell in container", "call the security team", `action="/device/release"`}, []string{"Quarantine now"}},
		{"device page, viewer", "/device?id=d-alice", RoleViewer, []string{"disk encryption is off"}, []string{"Quarantine now", "Revoke device"}},
		{"live", "/live", RoleAdmin, []string{"replica-a", "Tunnel connections", "Tunnel streams", "/events", "ref-alice", `action="/session/revoke"`, "this session"}, nil},
		{"live, viewer", "/live", RoleViewer, []string{"ref-alice"}, []string{`action="/session/revoke"`}},
		{"audit", "/audit", RoleAdmin, []string{"replica-a", "deletes are refused", "posture: disk", "security-staff"}, []string{"Older"}},
		{"what-if form", "/whatif", RoleAdmin, []string{`value="u-alice"`, `value="d-alice"`, `name="profile" value="managed" checked`, `name="zone" value="UTC"`}, []string{"role=\"alert\""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, body := hs.do(t, tc.role, http.MethodGet, tc.target, nil)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200:\n%s", res.StatusCode, body)
			}
			if csp := res.Header.Get("Content-Security-Policy"); csp != ContentSecurityPolicy {
				t.Errorf("CSP %q", csp)
			}
			if m := missing(body, tc.want...); m != "" {
				t.Errorf("page lacks %q:\n%s", m, body)
			}
			for _, a := range tc.absent {
				if strings.Contains(body, a) {
					t.Errorf("page has %q", a)
				}
			}
			// No inline script or style: the CSP would block it.
			for _, bad := range []string{"<script>", " style=", " onclick=", "javascript:"} {
				if strings.Contains(body, bad) {
					t.Errorf("page contains %q", bad)
				}
			}
		})
	}
}

func TestPagesNotFound(t *testing.T) {
	hs := newHarness(t)
	for _, target := range []string{"/app?name=nope", "/app", "/device?id=nope", "/device"} {
		res, body := hs.get(t, target)
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("%s: status %d, want 404:\n%s", target, res.StatusCode, body)
		}
	}
}

// The app page says who can reach the app, from the same decision the
// edge makes: alice through the security group, bob through sales in
// office hours (testNow is Monday 10:00 in Seoul), the admin through
// neither.
func TestAppPageWhoCanReach(t *testing.T) {
	hs := newHarness(t)
	for _, tc := range []struct {
		app             string
		allowed, denied []string
	}{
		{"wiki", []string{"alice@example.com", "rule security-staff", "bob@example.com", "rule sales-office-hours"}, []string{"admin@example.com"}},
		{"db", []string{"alice@example.com", "rule security-managed"}, []string{"admin@example.com", "bob@example.com"}},
		{"console", []string{"admin@example.com"}, []string{"alice@example.com", "bob@example.com"}},
	} {
		t.Run(tc.app, func(t *testing.T) {
			res, body := hs.get(t, "/app?name="+tc.app)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d", res.StatusCode)
			}
			_, reach, ok := strings.Cut(body, "<h2>Who can reach it</h2>")
			allowed, denied, ok2 := strings.Cut(reach, "<h3>Denied")
			if !ok || !ok2 {
				t.Fatalf("no reach section:\n%s", body)
			}
			denied, _, _ = strings.Cut(denied, "<h2>")
			if m := missing(allowed, tc.allowed...); m != "" {
				t.Errorf("allowed lacks %q:\n%s", m, allowed)
			}
			if m := missing(denied, tc.denied...); m != "" {
				t.Errorf("denied lacks %q:\n%s", m, denied)
			}
			for _, d := range tc.denied {
				if strings.Contains(allowed, d) {
					t.Errorf("%s listed as allowed", d)
				}
			}
		})
	}
}

func TestPostsRequireAdminCSRFAndOrigin(t *testing.T) {
	for _, tc := range []struct {
		name   string
		role   Role
		form   url.Values
		origin string
	}{
		{"no csrf", RoleAdmin, url.Values{"id": {"d-alice"}, "reason": {"r"}}, ""},
		{"wrong csrf", RoleAdmin, url.Values{"id": {"d-alice"}, "reason": {"r"}, "csrf": {"nope"}}, ""},
		{"viewer", RoleViewer, url.Values{"id": {"d-alice"}, "reason": {"r"}, "csrf": {"tok"}}, ""},
		{"cross-site", RoleAdmin, url.Values{"id": {"d-alice"}, "reason": {"r"}, "csrf": {"tok"}}, "https://evil.example"},
	} {
		for _, path := range []string{"/device/quarantine", "/device/release", "/device/revoke", "/session/revoke", "/app/rules"} {
			t.Run(tc.name+path, func(t *testing.T) {
				hs := newHarness(t)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				r := httptest.NewRequestWithContext(ctx, http.MethodPost, path, strings.NewReader(tc.form.Encode()))
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				if tc.origin != "" {
					r.Header.Set("Origin", tc.origin)
				}
				r = r.WithContext(WithActor(ctx, Actor{User: "u-admin", Email: "admin@example.com", CSRF: "tok", Role: tc.role}))
				w := httptest.NewRecorder()
				hs.h.ServeHTTP(w, r)
				if w.Code != http.StatusForbidden {
					t.Errorf("status %d, want 403", w.Code)
				}
				if c := hs.f.Calls(); len(c) != 0 {
					t.Errorf("backend called: %q", c)
				}
			})
		}
	}
}

func TestDeviceActions(t *testing.T) {
	for _, tc := range []struct {
		name       string
		path       string
		form       url.Values
		status     int
		location   string
		call       string // the backend call expected; "" for none
		wantInBody string
	}{
		{"quarantine", "/device/quarantine", url.Values{"id": {"d-alice"}, "reason": {" EDR reported malware "}, "fix": {"Reinstall the OS"}},
			http.StatusSeeOther, "/device?id=d-alice&ok=quarantined", "quarantine u-admin device d-alice EDR reported malware|Reinstall the OS", ""},
		{"quarantine without reason", "/device/quarantine", url.Values{"id": {"d-alice"}, "reason": {"  "}},
			http.StatusBadRequest, "", "", "Give a reason"},
		{"quarantine, reason too long", "/device/quarantine", url.Values{"id": {"d-alice"}, "reason": {strings.Repeat("x", posture.MaxStringLen+1)}},
			http.StatusBadRequest, "", "", "longer than"},
		{"quarantine unknown device", "/device/quarantine", url.Values{"id": {"d-nope"}, "reason": {"r"}},
			http.StatusNotFound, "", "", "No such device"},
		{"release", "/device/release", url.Values{"id": {"d-bob"}},
			http.StatusSeeOther, "/device?id=d-bob&ok=released", "release u-admin device d-bob", ""},
		{"revoke", "/device/revoke", url.Values{"id": {"d-alice"}, "reason": {"stolen"}},
			http.StatusSeeOther, "/device?id=d-alice&ok=revoked", "revoke-device u-admin d-alice stolen", ""},
		{"revoke without reason", "/device/revoke", url.Values{"id": {"d-alice"}},
			http.StatusBadRequest, "", "", "Give a reason"},
		{"revoke session", "/session/revoke", url.Values{"ref": {"ref-alice"}},
			http.StatusSeeOther, "/live?ok=revoked", "revoke-session u-admin ref-alice", ""},
		{"revoke no session", "/session/revoke", url.Values{},
			http.StatusBadRequest, "", "", "Choose a session"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t)
			tc.form.Set("csrf", "tok")
			res, body := hs.do(t, RoleAdmin, http.MethodPost, tc.path, tc.form)
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d:\n%s", res.StatusCode, tc.status, body)
			}
			if got := res.Header.Get("Location"); got != tc.location {
				t.Errorf("Location %q, want %q", got, tc.location)
			}
			calls := hs.f.Calls()
			switch {
			case tc.call == "" && len(calls) != 0:
				t.Errorf("backend called: %q", calls)
			case tc.call != "" && (len(calls) != 1 || calls[0] != tc.call):
				t.Errorf("calls %q, want [%q]", calls, tc.call)
			}
			if tc.wantInBody != "" && !strings.Contains(body, tc.wantInBody) {
				t.Errorf("body lacks %q:\n%s", tc.wantInBody, body)
			}
		})
	}
}

// After a quarantine the device page shows what the user sees and offers
// Release: the seed's isolate → inform → reconnect loop.
func TestQuarantineThenPage(t *testing.T) {
	hs := newHarness(t)
	res, _ := hs.do(t, RoleAdmin, http.MethodPost, "/device/quarantine",
		url.Values{"csrf": {"tok"}, "id": {"d-alice"}, "reason": {"malware found"}, "fix": {"call IT"}})
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("status %d", res.StatusCode)
	}
	res, body := hs.get(t, res.Header.Get("Location"))
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
	if m := missing(body, "Quarantined. Live connections were closed.", "malware found", "call IT", `action="/device/release"`); m != "" {
		t.Errorf("page lacks %q:\n%s", m, body)
	}
}

func TestAppRules(t *testing.T) {
	newRules := "- name: everyone-reads\n  methods: [GET, HEAD]\n  paths: [/docs]\n"
	for _, tc := range []struct {
		name   string
		store  bool
		app    string
		rules  string
		status int
		want   string // in the Location (redirect) or the body
		commit bool
		export bool
	}{
		{"save", true, "wiki", newRules, http.StatusSeeOther, "/app?name=wiki&ok=saved", true, false},
		{"clear", true, "wiki", "", http.StatusSeeOther, "/app?name=wiki&ok=saved", true, false},
		{"export", false, "wiki", newRules, http.StatusOK, "@@ rules of wiki @@", false, true},
		{"unknown field", true, "wiki", "- name: x\n  colour: red\n", http.StatusBadRequest, "field colour not found", false, false},
		{"not a list", true, "wiki", "name: x\n", http.StatusBadRequest, "not a valid YAML list", false, false},
		{"two documents", true, "wiki", "- name: x\n---\n- name: y\n", http.StatusBadRequest, "single YAML document", false, false},
		{"too long", true, "wiki", "# " + strings.Repeat("x", maxRulesYAML), http.StatusBadRequest, "longer than 64 KiB", false, false},
		{"does not compile", true, "wiki", "- name: x\n  groups: [nope]\n", http.StatusUnprocessableEntity, "does not compile", false, false},
		{"unknown app", true, "nope", newRules, http.StatusNotFound, "No such app", false, false},
		{"console rules need an owner", true, "console", "- name: admins\n  groups: [console-admins]\n  methods: [GET]\n", http.StatusForbidden, "Only console owners", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t)
			hs.f.ps.Store = tc.store
			res, body := hs.do(t, RoleAdmin, http.MethodPost, "/app/rules",
				url.Values{"csrf": {"tok"}, "name": {tc.app}, "rules": {tc.rules}, "parent": {"3"}})
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d:\n%s", res.StatusCode, tc.status, body)
			}
			if got := res.Header.Get("Location") + html.UnescapeString(body); !strings.Contains(got, tc.want) {
				t.Errorf("response lacks %q:\n%s", tc.want, got)
			}
			if got := len(hs.f.commits) == 1; got != tc.commit {
				t.Fatalf("commits %d, want commit %v", len(hs.f.commits), tc.commit)
			}
			if got := len(hs.f.exports) == 1; got != tc.export {
				t.Fatalf("exports %d, want export %v", len(hs.f.exports), tc.export)
			}
			if tc.commit {
				file := hs.f.commits[0]
				if calls := hs.f.Calls(); len(calls) != 1 || !strings.HasPrefix(calls[0], "commit u-admin parent=3 Rules of app wiki") {
					t.Errorf("calls %q", calls)
				}
				if !reflect.DeepEqual(file.Groups, testSource().Groups) {
					t.Errorf("groups changed: %+v", file.Groups)
				}
				var apps []string
				var wiki []groups.Rule
				for _, ar := range file.Apps {
					apps = append(apps, ar.App)
					if ar.App == "wiki" {
						wiki = ar.Rules
					}
				}
				if want := []string{"wiki", "db", "console", xss}; !reflect.DeepEqual(apps, want) {
					t.Errorf("apps %q, want %q", apps, want)
				}
				want := []groups.Rule{{Name: "everyone-reads", Methods: []string{"GET", "HEAD"}, Paths: []string{"/docs"}}}
				if tc.rules == "" {
					want = nil
				}
				if !reflect.DeepEqual(wiki, want) {
					t.Errorf("wiki rules %+v, want %+v", wiki, want)
				}
			}
			if tc.export {
				if c := hs.f.exports[0]; c.App != "wiki" || len(c.Rules) != 1 || c.Rules[0].Name != "everyone-reads" {
					t.Errorf("export %+v", c)
				}
			}
		})
	}
}

func TestWithAppRulesJoinsEntries(t *testing.T) {
	src := &groups.Source{Apps: []groups.AppRules{
		{App: "a", Rules: []groups.Rule{{Name: "1"}}},
		{App: "b", Rules: []groups.Rule{{Name: "2"}}},
		{App: "a", Rules: []groups.Rule{{Name: "3"}}},
	}}
	for _, tc := range []struct {
		app  string
		want []groups.AppRules
	}{
		{"a", []groups.AppRules{{App: "a", Rules: []groups.Rule{{Name: "new"}}}, {App: "b", Rules: []groups.Rule{{Name: "2"}}}}},
		{"c", []groups.AppRules{src.Apps[0], src.Apps[1], src.Apps[2], {App: "c", Rules: []groups.Rule{{Name: "new"}}}}},
	} {
		got := withAppRules(src, tc.app, []groups.Rule{{Name: "new"}})
		if !reflect.DeepEqual(got.Apps, tc.want) {
			t.Errorf("%s: %+v, want %+v", tc.app, got.Apps, tc.want)
		}
	}
	if len(src.Apps) != 3 || src.Apps[0].Rules[0].Name != "1" {
		t.Errorf("source modified: %+v", src.Apps)
	}
}

// The simulator decides exactly as Explain does for the same request.
func TestWhatIfMatchesExplain(t *testing.T) {
	hs := newHarness(t)
	seoul, err := time.LoadLocation("Asia/Seoul")
	if err != nil {
		t.Fatal(err)
	}
	monday := time.Date(2026, 3, 2, 10, 0, 0, 0, seoul)
	sunday := time.Date(2026, 3, 1, 10, 0, 0, 0, seoul)
	alice := groups.Subject{User: "u-alice", Email: "alice@example.com", Attributes: map[string]string{"department": "Security Tech"}}
	bob := groups.Subject{User: "u-bob", Email: "bob@example.com", Attributes: map[string]string{"department": "Sales", "title": xss}}
	base := url.Values{"run": {"1"}, "zone": {"Asia/Seoul"}, "time": {"2026-03-02T10:00"}, "method": {"GET"}, "path": {"/"}, "device_mode": {"none"}}
	with := func(kv ...string) url.Values {
		v := url.Values{}
		for k, vs := range base {
			v[k] = vs
		}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	for _, tc := range []struct {
		name  string
		q     url.Values
		req   groups.Request
		allow bool
		rule  string
	}{
		{"alice reads the wiki", with("user", "u-alice", "app", "wiki"),
			groups.Request{App: "wiki", Subject: alice, Method: "GET", Path: "/", Time: monday}, true, "security-staff"},
		{"alice deletes", with("user", "u-alice", "app", "wiki", "method", "DELETE", "path", "/page"),
			groups.Request{App: "wiki", Subject: alice, Method: "DELETE", Path: "/page", Time: monday}, false, "no-delete"},
		{"bob in office hours", with("user", "u-bob", "app", "wiki"),
			groups.Request{App: "wiki", Subject: bob, Method: "GET", Path: "/", Time: monday}, true, "sales-office-hours"},
		{"bob on sunday", with("user", "u-bob", "app", "wiki", "time", "2026-03-01T10:00"),
			groups.Request{App: "wiki", Subject: bob, Method: "GET", Path: "/", Time: sunday}, false, ""},
		{"described user", with("user", "custom", "subject", "u-x", "email", "x@example.com", "attrs", "department = Security Tech\n", "idp_groups", "eng", "app", "wiki", "source", "192.0.2.7"),
			groups.Request{App: "wiki", Subject: groups.Subject{User: "u-x", Email: "x@example.com", Groups: []string{"eng"}, Attributes: map[string]string{"department": "Security Tech"}},
				Method: "GET", Path: "/", Time: monday, Source: netip.MustParseAddr("192.0.2.7")}, true, "security-staff"},
		{"alice's failing device", with("user", "u-alice", "app", "db", "method", "CONNECT", "device_mode", "enrolled", "device_id", "d-alice"),
			groups.Request{App: "db", Subject: alice, Method: "CONNECT", Path: "/", Time: monday, Device: &groups.Device{ID: "d-alice", Platform: "macos"}}, false, ""},
		{"a managed device", with("user", "u-alice", "app", "db", "method", "CONNECT", "device_mode", "profiles", "profile", "managed", "platform", "linux"),
			groups.Request{App: "db", Subject: alice, Method: "CONNECT", Path: "/", Time: monday, Device: &groups.Device{ID: "what-if", Platform: "linux", Profiles: []string{"managed"}}}, true, "security-managed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := hs.f.ps.Compiled.Explain(tc.req)
			if x.Decision.Allow != tc.allow || x.Decision.Rule != tc.rule {
				t.Fatalf("the fixture decides %+v, want allow=%v rule=%q", x.Decision, tc.allow, tc.rule)
			}
			res, body := hs.get(t, "/whatif?"+tc.q.Encode())
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d:\n%s", res.StatusCode, body)
			}
			verdict, other := ">DENY<", ">ALLOW<"
			if tc.allow {
				verdict, other = other, verdict
			}
			if !strings.Contains(body, verdict) || strings.Contains(body, other) {
				t.Errorf("page does not say %s:\n%s", verdict, body)
			}
			text := html.UnescapeString(body)
			want := []string{x.Decision.Reason, x.Version}
			if x.Decision.Rule != "" {
				want = append(want, "rule <b>"+x.Decision.Rule+"</b>")
			}
			for _, g := range x.Groups {
				want = append(want, g.Name, g.Why)
			}
			for _, r := range x.Rules {
				want = append(want, r.Name, r.Why)
			}
			if m := missing(text, want...); m != "" {
				t.Errorf("page lacks %q:\n%s", m, text)
			}
		})
	}
}

func TestWhatIfBadInput(t *testing.T) {
	hs := newHarness(t)
	ok := url.Values{"run": {"1"}, "user": {"u-alice"}, "app": {"wiki"}, "method": {"GET"}, "path": {"/"}, "zone": {"UTC"}, "device_mode": {"none"}}
	for _, tc := range []struct {
		field, value, want string
	}{
		{"path", "x", `The path must start with "/"`},
		{"source", "nope", `The source "nope" is not an IP address.`},
		{"zone", "Mars/X", `The time zone "Mars/X" is not an IANA time zone name`},
		{"zone", "Local", `The time zone "Local" is not an IANA time zone name`},
		{"method", "GE T", `is not an HTTP method`},
		{"time", "yesterday", `The time "yesterday" is not a date and time`},
		{"user", "u-nobody", `The user "u-nobody" is not in the directory.`},
		{"user", "", `Choose a user`},
		{"app", "nope", `Choose an app.`},
		{"device_mode", "enrolled", `Choose an enrolled device.`},
		{"device_mode", "sideways", `Choose no device`},
	} {
		t.Run(tc.field+"="+tc.value, func(t *testing.T) {
			q := url.Values{}
			for k, v := range ok {
				q[k] = v
			}
			q.Set(tc.field, tc.value)
			res, body := hs.get(t, "/whatif?"+q.Encode())
			if res.StatusCode != http.StatusBadRequest {
				t.Errorf("status %d, want 400", res.StatusCode)
			}
			if text := html.UnescapeString(body); !strings.Contains(text, tc.want) || strings.Contains(text, ">ALLOW<") || strings.Contains(text, ">DENY<") {
				t.Errorf("page lacks %q or shows a decision:\n%s", tc.want, text)
			}
		})
	}
	// The same form with good values decides.
	res, body := hs.get(t, "/whatif?"+ok.Encode())
	if res.StatusCode != http.StatusOK || !strings.Contains(body, ">ALLOW<") {
		t.Errorf("good form: status %d:\n%s", res.StatusCode, body)
	}
}

func TestWhatIfNotes(t *testing.T) {
	hs := newHarness(t)
	q := url.Values{"run": {"1"}, "user": {"u-alice"}, "app": {"wiki"}, "device_mode": {"enrolled"}, "device_id": {"d-bob"}}
	res, body := hs.get(t, "/whatif?"+q.Encode())
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d:\n%s", res.StatusCode, body)
	}
	text := html.UnescapeString(body)
	if m := missing(text, "The device belongs to another user", "The device is quarantined (falco: shell in container)"); m != "" {
		t.Errorf("page lacks %q", m)
	}
}

func TestAuditFilters(t *testing.T) {
	hs := newHarness(t)
	q := url.Values{"user": {"alice"}, "device": {"d-1"}, "app": {"wiki"}, "kind": {"request"}, "decision": {"deny"}, "text": {"posture"},
		"since": {"2026-03-01T00:00"}, "until": {"2026-03-02T12:30:15"}, "limit": {"5"}, "before": {"10"}}
	res, body := hs.get(t, "/audit?"+q.Encode())
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d:\n%s", res.StatusCode, body)
	}
	want := audit.Query{User: "alice", Device: "d-1", App: "wiki", Kind: "request", Decision: "deny", Text: "posture",
		Since: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), Until: time.Date(2026, 3, 2, 12, 30, 15, 0, time.UTC), Limit: 5, Before: 10}
	if qs := hs.f.Queries(); len(qs) != 1 || !reflect.DeepEqual(qs[0], want) {
		t.Errorf("queries %+v, want [%+v]", qs, want)
	}
	if m := missing(body, `value="alice"`, `value="deny" selected`, `value="2026-03-02T12:30:15"`, "Newest"); m != "" {
		t.Errorf("form lacks %q", m)
	}

	// Paging: one entry per page, the Older link carries the filters and the last Seq.
	res, body = hs.get(t, "/audit?limit=1&app=wiki")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
	if m := missing(body, `href="/audit?app=wiki&amp;before=2&amp;limit=1"`, "deletes are refused"); m != "" {
		t.Errorf("page lacks %q:\n%s", m, body)
	}
}

func TestAuditBadFilters(t *testing.T) {
	for _, tc := range []struct {
		q    url.Values
		want string
	}{
		{url.Values{"user": {strings.Repeat("a", maxField+1)}}, "The user filter is longer than 256 bytes."},
		{url.Values{"text": {strings.Repeat("a", maxField+1)}}, "The text filter is longer than 256 bytes."},
		{url.Values{"limit": {"abc"}}, "The limit must be a number from 1 to 1000."},
		{url.Values{"limit": {"1001"}}, "The limit must be a number from 1 to 1000."},
		{url.Values{"since": {"yesterday"}}, "The since time is not a date and time"},
		{url.Values{"since": {"2026-03-02T00:00"}, "until": {"2026-03-01T00:00"}}, "The since time must be before the until time."},
		{url.Values{"before": {"-1"}}, "The page cursor is not valid"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			hs := newHarness(t)
			res, body := hs.get(t, "/audit?"+tc.q.Encode())
			if res.StatusCode != http.StatusBadRequest {
				t.Errorf("status %d, want 400", res.StatusCode)
			}
			if !strings.Contains(html.UnescapeString(body), tc.want) {
				t.Errorf("page lacks %q:\n%s", tc.want, body)
			}
			if qs := hs.f.Queries(); len(qs) != 0 {
				t.Errorf("backend queried with %+v", qs)
			}
		})
	}
}

// Names and attributes are untrusted: they render as text.
func TestUntrustedTextEscaped(t *testing.T) {
	hs := newHarness(t)
	for _, target := range []string{
		"/",
		"/apps",
		"/app?name=" + url.QueryEscape(xss),
		"/whatif?" + url.Values{"run": {"1"}, "user": {"u-bob"}, "app": {xss}}.Encode(),
		"/whatif?" + url.Values{"run": {"1"}, "user": {"custom"}, "subject": {"u-x"}, "attrs": {"title=" + xss}, "app": {"wiki"}}.Encode(),
		"/whatif?" + url.Values{"run": {"1"}, "user": {"custom"}, "subject": {"u-x"}, "app": {"wiki"}, "zone": {xss}}.Encode(),
		"/audit?" + url.Values{"text": {xss}}.Encode(),
	} {
		res, body := hs.get(t, target)
		if res.StatusCode != http.StatusOK && res.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d", target, res.StatusCode)
		}
		if strings.Contains(body, "<script>") {
			t.Errorf("%s: raw script tag in page:\n%s", target, body)
		}
		if target != "/" && !strings.Contains(body, xssEscaped) {
			t.Errorf("%s: escaped text missing:\n%s", target, body)
		}
	}
}
