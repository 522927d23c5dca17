package authn

import (
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"
)

// FuzzValidateReturnURL checks that whatever ValidateReturnURL accepts is a
// same-origin https address on an allowed host that a browser cannot read
// as anything else, and that validation is idempotent. The same input is fed
// to ValidateLocalPath, which must only ever return a single-slash path.
func FuzzValidateReturnURL(f *testing.F) {
	for _, s := range []string{
		"https://app.example:8443/ok",
		"https://app.example:8443/a/b?x=1#frag",
		"https://APP.EXAMPLE:8443/ok",
		"https://wiki.example",
		"https://wiki.example/\u00fc?q=\uff0f",
		"//evil.com",
		"/\\evil.com",
		"\\\\evil",
		"https:evil.com",
		"https:/evil.com",
		"https://evil.com",
		"https://app.example:8443@evil.com/",
		"https://evil.com#@app.example:8443",
		"https://app.example:8443.evil.com/",
		"https://app.example:9999/",
		"http://app.example:8443/",
		"javascript:alert(1)",
		"data:text/html,<script>alert(1)</script>",
		"https://app.example:8443/%2F%2Fevil.com",
		"/%5Cevil",
		"https://app.exa\tmple:8443/",
		"/\t/evil",
		"https://app.example:8443\uff0fevil",
		"https://wi\u212Ai.example/",
		"https://wiki.example/a/../..//evil",
		"https://wiki.example/.//evil",
		"/ok?x=1",
		"",
	} {
		f.Add(s)
	}
	allowed := map[string]bool{"app.example:8443": true, "wiki.example": true}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := ValidateReturnURL(in, testAppHosts)
		if err == nil {
			checkReturnURL(t, in, out, allowed)
		} else if out != "" {
			t.Fatalf("rejected %q but returned %q", in, out)
		}

		p, err := ValidateLocalPath(in)
		if err != nil {
			return
		}
		checkSafeChars(t, in, p)
		if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") {
			t.Fatalf("ValidateLocalPath(%q) = %q: not a single-slash path", in, p)
		}
		u, err := url.Parse(p)
		if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" || u.Fragment != "" {
			t.Fatalf("ValidateLocalPath(%q) = %q parses as %#v, %v", in, p, u, err)
		}
		if again, err := ValidateLocalPath(p); err != nil || again != p {
			t.Fatalf("ValidateLocalPath not idempotent: %q → %q → %q, %v", in, p, again, err)
		}
	})
}

func checkReturnURL(t *testing.T, in, out string, allowed map[string]bool) {
	t.Helper()
	checkSafeChars(t, in, out)
	u, err := url.Parse(out)
	if err != nil {
		t.Fatalf("ValidateReturnURL(%q) = %q, which does not parse: %v", in, out, err)
	}
	if u.Scheme != "https" || u.User != nil || u.Opaque != "" || u.Fragment != "" || !allowed[u.Host] {
		t.Fatalf("ValidateReturnURL(%q) = %q: scheme %q user %v opaque %q fragment %q host %q",
			in, out, u.Scheme, u.User, u.Opaque, u.Fragment, u.Host)
	}
	if !strings.HasPrefix(out, "https://"+u.Host+"/") {
		t.Fatalf("ValidateReturnURL(%q) = %q: does not start with https://%s/", in, out, u.Host)
	}
	p := u.EscapedPath()
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") {
		t.Fatalf("ValidateReturnURL(%q) = %q: path %q is not a single-slash path", in, out, p)
	}
	lp := strings.ToLower(p)
	if strings.Contains(lp, "%2f") || strings.Contains(lp, "%5c") || strings.Contains(lp, "%00") {
		t.Fatalf("ValidateReturnURL(%q) = %q: encoded slash, backslash or NUL in path", in, out)
	}
	again, err := ValidateReturnURL(out, testAppHosts)
	if err != nil || again != out {
		t.Fatalf("ValidateReturnURL not idempotent: %q → %q → %q, %v", in, out, again, err)
	}
	// What the handoff does with it: the local part must pass as a path.
	if _, err := ValidateLocalPath(u.RequestURI()); err != nil {
		t.Fatalf("ValidateReturnURL(%q) = %q, but its request URI %q is not a valid local path: %v", in, out, u.RequestURI(), err)
	}
}

func checkSafeChars(t *testing.T, in, out string) {
	t.Helper()
	for i := 0; i < len(out); i++ {
		if c := out[i]; c <= ' ' || c == 0x7f || c == '\\' {
			t.Fatalf("%q → %q contains byte %#x", in, out, c)
		}
	}
}

// FuzzParseSessionID checks that only canonical encodings of 32 bytes are
// accepted and that the key is the hex SHA-256 of the ID.
func FuzzParseSessionID(f *testing.F) {
	valid := NewSessionID()
	for _, s := range []string{
		valid,
		valid[:42],
		valid + "A",
		valid[:42] + "B", // non-canonical last character
		valid[:42] + "=",
		strings.Repeat("A", 43),
		strings.Repeat("_", 43),
		strings.Repeat("-", 42) + "w",
		strings.Repeat("+", 43),
		strings.Repeat("/", 43),
		strings.Repeat("A", 42) + "\x00",
		strings.Repeat("\u00e9", 21) + "A",
		base64.URLEncoding.EncodeToString(make([]byte, 32)),
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		key, ok := ParseSessionID(s)
		if !ok {
			if key != "" {
				t.Fatalf("ParseSessionID(%q) rejected but returned key %q", s, key)
			}
			return
		}
		if len(s) != sessionIDLen {
			t.Fatalf("ParseSessionID accepted %q of length %d", s, len(s))
		}
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || len(b) != 32 {
			t.Fatalf("ParseSessionID accepted %q, which decodes to %d bytes, %v", s, len(b), err)
		}
		if canon := base64.RawURLEncoding.EncodeToString(b); canon != s {
			t.Fatalf("ParseSessionID accepted non-canonical %q (canonical %q)", s, canon)
		}
		if len(key) != 64 {
			t.Fatalf("key %q is not 64 characters", key)
		}
		if _, err := hex.DecodeString(key); err != nil || strings.ToLower(key) != key {
			t.Fatalf("key %q is not lower-case hex", key)
		}
		if key != hashKey(s) {
			t.Fatalf("key %q != hashKey %q", key, hashKey(s))
		}
	})
}
