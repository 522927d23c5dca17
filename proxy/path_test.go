package proxy

import (
	"net/url"
	"strings"
	"testing"

	"github.com/ztna-dev/ztna/groups"
)

func TestCanonicalPath(t *testing.T) {
	tests := []struct {
		path string
		ok   bool
	}{
		// Accepted: plain paths, dots inside names, escapes of ordinary
		// characters, and path parameters on ordinary segments.
		{"/", true},
		{"/a", true},
		{"/a/", true},
		{"/a/b.c", true},
		{"/a/..b", true},
		{"/a/b..", true},
		{"/a/...", true},
		{"/.well-known/x", true},
		{"/%41", true},
		{"/a%20b", true},
		// Path parameters on ordinary segments ("/a;b=1") are accepted
		// today; see TestPathParametersCannotBypassDenyRules.
		{"/" + strings.Repeat("a", 8191), true}, // exactly 8192 bytes

		// Rejected: "." and ".." segments, also dressed up as path parameters.
		{"/..", false},
		{"/../a", false},
		{"/a/..", false},
		{"/a/../b", false},
		{"/a/../", false},
		{"/.", false},
		{"/./a", false},
		{"/a/.", false},
		{"/a/./b", false},
		{"/..;/x", false},
		{"/a/..;jsessionid=1/b", false},
		{"/.;x/", false},
		// Empty segments.
		{"//", false},
		{"//a", false},
		{"/a//b", false},
		{"/a//", false},
		// Backslashes and their escapes.
		{`\`, false},
		{`/a\b`, false},
		{`/a\..\b`, false},
		{"/a%5cb", false},
		{"/a%5Cb", false},
		// Encoded slash, dot and NUL, either case.
		{"/a%2fb", false},
		{"/a%2Fb", false},
		{"/%2e%2e/a", false},
		{"/%2E", false},
		{"/a/.%2e/b", false},
		{"/a%00", false},
		{"/%2f", false}, // escape in the last three bytes
		// Control characters.
		{"/a\x00b", false},
		{"/a\nb", false},
		{"/a\tb", false},
		{"/a\x1fb", false},
		{"/a\x7fb", false},
		// Not absolute, empty, too long.
		{"", false},
		{"a", false},
		{"a/b", false},
		{"*", false},
		{"/" + strings.Repeat("a", 8192), false}, // 8193 bytes
	}
	for _, tt := range tests {
		err := CanonicalPath(tt.path)
		if (err == nil) != tt.ok {
			t.Errorf("CanonicalPath(%q) (%d bytes) = %v, want ok=%v", clipPath(tt.path), len(tt.path), err, tt.ok)
		}
	}
}

// clipPath shortens long inputs in failure messages.
func clipPath(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

// Servlet containers (Tomcat, Jetty, Spring) drop ";params" from every
// segment before routing, so "/admin;x" is /admin to them; the edge's rules
// compare the path as sent. A path the rules see differently from the app
// must be refused, or a deny rule is bypassed.
func TestPathParametersCannotBypassDenyRules(t *testing.T) {
	p, err := groups.Compile(&groups.Source{Apps: []groups.AppRules{{App: "wiki", Rules: []groups.Rule{
		{Name: "everyone"},
		{Name: "no-admin", Action: "deny", Paths: []string{"/admin"}},
		{Name: "no-api-admin", Action: "deny", Paths: []string{"/api/admin"}},
	}}}}, groups.Options{})
	if err != nil {
		t.Fatal(err)
	}
	decide := func(raw string) (refused, allowed bool) {
		if CanonicalPath(raw) != nil {
			return true, false
		}
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		d := p.Decide(groups.Request{App: "wiki", Subject: groups.Subject{User: "u"}, Method: "GET", Path: u.Path})
		return false, d.Allow
	}
	for _, raw := range []string{"/admin", "/admin/users", "/api/admin"} {
		if refused, allowed := decide(raw); refused || allowed {
			t.Fatalf("control %s: refused=%v allowed=%v, want denied by rule", raw, refused, allowed)
		}
	}
	var bypass []string
	for _, raw := range []string{"/admin;x=1", "/admin;/users", "/admin;jsessionid=1/users", "/api;x/admin", "/api/admin;"} {
		if _, allowed := decide(raw); allowed {
			bypass = append(bypass, raw)
		}
	}
	if len(bypass) > 0 {
		t.Errorf("deny rules bypassed with path parameters: %q are allowed, and a servlet container serves them "+
			"as /admin… (proxy/path.go CanonicalPath: refuse \";\" in the path, as Spring's StrictHttpFirewall does; "+
			"or groups must match rules on the path with \";…\" removed from every segment)", bypass)
	}
}
