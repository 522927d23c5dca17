package authn

import (
	"strings"
	"testing"
)

// testAppHosts is the edge's app set for return-URL tests: one host with an
// explicit port, one without.
func testAppHosts(hostport string) bool {
	return hostport == "app.example:8443" || hostport == "wiki.example"
}

func TestValidateReturnURLAccepts(t *testing.T) {
	long := "https://wiki.example/" + strings.Repeat("a", maxReturnURL-len("https://wiki.example/"))
	tests := []struct {
		name, in, want string
	}{
		{"plain", "https://app.example:8443/ok", "https://app.example:8443/ok"},
		{"no path", "https://app.example:8443", "https://app.example:8443/"},
		{"host without port", "https://wiki.example/docs", "https://wiki.example/docs"},
		{"query kept, fragment dropped", "https://app.example:8443/a/b?x=1&y=%2F#frag", "https://app.example:8443/a/b?x=1&y=%2F"},
		{"fragment only", "https://wiki.example/p#@evil.com", "https://wiki.example/p"},
		{"host lower-cased", "https://APP.EXAMPLE:8443/ok", "https://app.example:8443/ok"},
		{"scheme lower-cased, path case kept", "HTTPS://Wiki.Example/Case/Kept", "https://wiki.example/Case/Kept"},
		{"escaped space kept", "https://wiki.example/p%20q", "https://wiki.example/p%20q"},
		{"non-ASCII path escaped", "https://wiki.example/\u00fc", "https://wiki.example/%C3%BC"},
		{"fullwidth slash in path stays a path byte", "https://app.example:8443/\uff0fevil", "https://app.example:8443/%EF%BC%8Fevil"},
		{"empty query dropped", "https://wiki.example/x?", "https://wiki.example/x"},
		{"at the length limit", long, long},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ValidateReturnURL(tt.in, testAppHosts)
			if err != nil {
				t.Fatalf("ValidateReturnURL(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ValidateReturnURL(%q) = %q, want %q", tt.in, got, tt.want)
			}
			again, err := ValidateReturnURL(got, testAppHosts)
			if err != nil || again != got {
				t.Fatalf("not a fixed point: ValidateReturnURL(%q) = %q, %v", got, again, err)
			}
		})
	}
}

func TestValidateReturnURLRejects(t *testing.T) {
	tests := []struct {
		name, in string
	}{
		{"empty", ""},
		{"protocol-relative", "//evil.com"},
		{"protocol-relative to app host", "//app.example:8443/ok"},
		{"slash backslash", "/\\evil.com"},
		{"double backslash", "\\\\evil"},
		{"scheme without slashes", "https:evil.com"},
		{"scheme with one slash", "https:/evil.com"},
		{"scheme with three slashes", "https:///app.example:8443/"},
		{"other host", "https://evil.com"},
		{"other host with path", "https://evil.com/app.example:8443"},
		{"userinfo with app host", "https://app.example:8443@evil.com/"},
		{"userinfo before app host", "https://user@app.example:8443/"},
		{"empty userinfo", "https://:@app.example:8443/"},
		{"fragment hides host", "https://evil.com#@app.example:8443"},
		{"app host as subdomain", "https://app.example:8443.evil.com/"},
		{"app host prefix", "https://app.example.evil.com/"},
		{"wrong port", "https://app.example:9999/"},
		{"missing port", "https://app.example/"},
		{"empty port", "https://app.example:/"},
		{"double port", "https://app.example:8443:8443/"},
		{"leading-zero port", "https://app.example:08443/"},
		{"trailing dot", "https://wiki.example./"},
		{"not https", "http://app.example:8443/"},
		{"ftp", "ftp://app.example:8443/"},
		{"javascript", "javascript:alert(1)"},
		{"javascript with slashes", "javascript://app.example:8443/%0aalert(1)"},
		{"data", "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="},
		{"relative path", "/ok"},
		{"encoded slashes", "https://app.example:8443/%2F%2Fevil.com"},
		{"encoded slashes lower-case", "https://app.example:8443/%2f%2fevil.com"},
		{"encoded slash inside", "https://app.example:8443/a%2Fb"},
		{"encoded backslash", "https://wiki.example/%5Cevil"},
		{"encoded backslash lower-case", "https://wiki.example/%5cevil"},
		{"encoded NUL", "https://wiki.example/a%00b"},
		{"double slash path", "https://wiki.example//evil.com"},
		{"backslash path", "https://wiki.example/\\evil.com"},
		{"backslash before userinfo", "https://app.example:8443\\@evil.com/"},
		{"tab in host", "https://app.exa\tmple:8443/"},
		{"newline in host", "https://app.exa\nmple:8443/"},
		{"CR in path", "https://app.example:8443/\r/evil"},
		{"NUL in path", "https://app.example:8443/\x00"},
		{"NUL before userinfo", "https://app.example:8443\x00@evil.com/"},
		{"DEL", "https://app.example:8443/\x7f"},
		{"space", "https://app.example:8443/a b"},
		{"leading space", " https://app.example:8443/"},
		{"tab slash", "/\t/evil"},
		{"fullwidth slash after port", "https://app.example:8443\uff0fevil"},
		{"fullwidth slash after host", "https://wiki.example\uff0fevil.com/"},
		{"fullwidth solidus as userinfo", "https://wiki.example\uff0f@evil.com/"},
		{"ideographic full stop", "https://wiki\u3002example/"},
		{"percent-encoded host", "https://wiki%2eexample/"},
		{"IPv6 literal", "https://[::1]:8443/"},
		{"over-long", "https://wiki.example/" + strings.Repeat("a", maxReturnURL)},
		{"one byte over the limit", "https://wiki.example/" + strings.Repeat("a", maxReturnURL-len("https://wiki.example/")+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ValidateReturnURL(tt.in, testAppHosts)
			if err == nil {
				t.Fatalf("ValidateReturnURL(%q) = %q, want an error", tt.in, got)
			}
			if got != "" {
				t.Errorf("rejected input returned %q, want \"\"", got)
			}
		})
	}
}

// The host function sees the lower-cased host:port exactly once per call and
// nothing else (no userinfo, no path).
func TestValidateReturnURLAsksAboutHostOnly(t *testing.T) {
	var asked []string
	_, err := ValidateReturnURL("https://WIKI.example/p?q#f", func(h string) bool {
		asked = append(asked, h)
		return testAppHosts(h)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(asked) != 1 || asked[0] != "wiki.example" {
		t.Fatalf("isAppHost called with %q, want [wiki.example]", asked)
	}
}

func TestValidateLocalPath(t *testing.T) {
	accept := []struct{ in, want string }{
		{"/ok?x=1", "/ok?x=1"},
		{"/", "/"},
		{"/a/b#frag", "/a/b"},
		{"/docs?page=2&q=%2F", "/docs?page=2&q=%2F"},
		{"/p%20q", "/p%20q"},
	}
	for _, tt := range accept {
		t.Run("accept "+tt.in, func(t *testing.T) {
			got, err := ValidateLocalPath(tt.in)
			if err != nil || got != tt.want {
				t.Fatalf("ValidateLocalPath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			if again, err := ValidateLocalPath(got); err != nil || again != got {
				t.Fatalf("not a fixed point: %q → %q, %v", got, again, err)
			}
		})
	}
	reject := []string{
		"",
		"//evil",
		"//evil/ok",
		"/\\evil",
		"\\\\evil",
		"https://x",
		"https://x/ok",
		"http:/evil",
		"/%2f%2fevil",
		"/%2F%2Fevil",
		"/%5Cevil",
		"/a%00",
		"javascript:x",
		"javascript:alert(1)//",
		"data:text/html,x",
		"evil",
		"./x",
		"../x",
		"/\t/evil",
		"/\n/evil",
		"/ok\x00",
		"/ok\x7f",
		"/ok ok",
		"/" + strings.Repeat("a", maxReturnURL),
	}
	for _, in := range reject {
		t.Run("reject "+in, func(t *testing.T) {
			if got, err := ValidateLocalPath(in); err == nil {
				t.Fatalf("ValidateLocalPath(%q) = %q, want an error", in, got)
			}
		})
	}
}
