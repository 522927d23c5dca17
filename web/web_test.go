package web

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ztna-dev/ztna/internal/httperr"
)

func TestWantsHTML(t *testing.T) {
	cases := []struct {
		name    string
		method  string
		headers map[string]string
		want    bool
	}{
		{"navigation", "GET", map[string]string{"Sec-Fetch-Mode": "navigate", "Accept": "text/html"}, true},
		{"old browser", "GET", map[string]string{"Accept": "text/html,application/xhtml+xml"}, true},
		{"fetch", "GET", map[string]string{"Sec-Fetch-Mode": "cors", "Accept": "text/html"}, false},
		{"xhr", "GET", map[string]string{"X-Requested-With": "XMLHttpRequest", "Accept": "text/html"}, false},
		{"websocket", "GET", map[string]string{"Upgrade": "websocket", "Sec-Fetch-Mode": "websocket"}, false},
		{"websocket navigate spoof", "GET", map[string]string{"Upgrade": "websocket", "Sec-Fetch-Mode": "navigate"}, false},
		{"api json", "GET", map[string]string{"Accept": "application/json"}, false},
		{"curl", "GET", map[string]string{"Accept": "*/*"}, false},
		{"post without fetch metadata", "POST", map[string]string{"Accept": "text/html"}, false},
		{"form post navigation", "POST", map[string]string{"Sec-Fetch-Mode": "navigate"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest(c.method, "https://app.example/", nil)
			for k, v := range c.headers {
				r.Header.Set(k, v)
			}
			if got := WantsHTML(r); got != c.want {
				t.Errorf("WantsHTML = %v, want %v", got, c.want)
			}
		})
	}
}

func TestErrorRendersHTMLForBrowsersJSONOtherwise(t *testing.T) {
	p := New(nil)
	e := &httperr.Error{Status: http.StatusForbidden, Code: "access_denied", Title: "Access denied",
		Message: `no rule allows <script>alert(1)</script>`, Hint: "ask IT", Rule: "r<1>",
		Cause: errStr("internal detail: db password=hunter2")}

	// Browser: HTML, escaped, strict headers, no cause.
	r := httptest.NewRequest("GET", "https://app.example/", nil)
	r.Header.Set("Sec-Fetch-Mode", "navigate")
	w := httptest.NewRecorder()
	p.Error(w, r, e)
	body := w.Body.String()
	if w.Code != http.StatusForbidden || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("got %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	if strings.Contains(body, "<script>") || !strings.Contains(body, "&lt;script&gt;") {
		t.Errorf("message not escaped:\n%s", body)
	}
	if strings.Contains(body, "hunter2") {
		t.Error("the internal cause reached the page")
	}
	for h, want := range map[string]string{
		"Content-Security-Policy": ContentSecurityPolicy, "X-Frame-Options": "DENY",
		"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
	} {
		if got := w.Header().Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	if !strings.Contains(ContentSecurityPolicy, "frame-ancestors 'none'") {
		t.Error("CSP must forbid framing")
	}

	// API: JSON with the same reason and rule, no cause.
	r = httptest.NewRequest("GET", "https://app.example/api", nil)
	r.Header.Set("Accept", "application/json")
	w = httptest.NewRecorder()
	p.Error(w, r, e)
	var got errorBody
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatalf("not JSON: %v: %s", err, w.Body)
	}
	if w.Code != http.StatusForbidden || got.Error != "access_denied" || got.Message != e.Message || got.Rule != "r<1>" || got.Hint != "ask IT" {
		t.Errorf("JSON = %+v (status %d)", got, w.Code)
	}
	if strings.Contains(w.Body.String(), "hunter2") {
		t.Error("the internal cause reached the JSON")
	}
}

func TestUnauthorizedCarriesLoginURL(t *testing.T) {
	p := New(nil)
	e := httperr.New(http.StatusUnauthorized, "unauthenticated", "sign in")
	e.LoginURL = "https://auth.example/.ztna/login?rd=x"
	r := httptest.NewRequest("GET", "https://app.example/api", nil)
	w := httptest.NewRecorder()
	p.Error(w, r, e)
	if w.Header().Get("Location") != "" {
		t.Error("an API client must never be redirected")
	}
	if !strings.Contains(w.Body.String(), `"login_url":"https://auth.example/.ztna/login?rd=x"`) {
		t.Errorf("body %s lacks the login URL", w.Body)
	}
	if w.Header().Get("WWW-Authenticate") == "" {
		t.Error("401 without WWW-Authenticate")
	}
}

func TestSignOutFormActionAllowsOnlyAValidOrigin(t *testing.T) {
	p := New(nil)
	cases := []struct {
		origin string
		want   string
	}{
		{"", "form-action 'self';"},
		{"https://idp.example", "form-action 'self' https://idp.example;"},
		{"http://127.0.0.1:5556", "form-action 'self' http://127.0.0.1:5556;"},
		{"https://idp.example; script-src *", "form-action 'self';"},
		{"https://idp.example https://auth.example", "form-action 'self';"},
		{"https://idp.example/path", "form-action 'self';"},
		{"javascript:alert(1)", "form-action 'self';"},
		{"https://idp.example 'unsafe-inline'", "form-action 'self';"},
	}
	for _, c := range cases {
		w := httptest.NewRecorder()
		p.SignOut(w, "/.ztna/logout", "tok", "a@example.com", c.origin)
		if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, c.want) {
			t.Errorf("origin %q: CSP %q, want it to contain %q", c.origin, csp, c.want)
		}
		if !strings.Contains(w.Body.String(), `name="csrf" value="tok"`) {
			t.Errorf("sign-out form lacks the CSRF token: %s", w.Body)
		}
	}
}

func TestAssetsServed(t *testing.T) {
	p := New(nil)
	w := httptest.NewRecorder()
	p.Assets().ServeHTTP(w, httptest.NewRequest("GET", AssetPrefix+"style.css", nil))
	if w.Code != 200 || !strings.Contains(w.Header().Get("Content-Type"), "text/css") {
		t.Errorf("style.css: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
}

type errStr string

func (e errStr) Error() string { return string(e) }

func TestSignOutAllowsSeveralOrigins(t *testing.T) {
	w := httptest.NewRecorder()
	New(nil).SignOut(w, "/.ztna/logout", "tok", "", "http://127.0.0.1:5556", "https://auth.example:8443", "bad origin")
	want := "form-action 'self' http://127.0.0.1:5556 https://auth.example:8443;"
	if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, want) {
		t.Errorf("CSP %q, want %q", csp, want)
	}
}
