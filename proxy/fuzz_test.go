package proxy

import (
	"net/url"
	"path"
	"strings"
	"testing"
)

// FuzzCanonicalPath checks what acceptance promises: an accepted path,
// decoded the way an app decodes it, is already clean, so the app and the
// edge's rules see the same path.
func FuzzCanonicalPath(f *testing.F) {
	for _, s := range []string{
		"/", "/a", "/a/", "/a/b.c", "/a/..b", "/%41", "/a;b=1", "/..", "/./a", "//", "/a//b",
		`/a\b`, "/a%2fb", "/%2e%2e/", "/a%00", "/..;/x", "/.;x/", "/a%5c", "/%252e", "/a/%2E%2E/b",
		"/.%2e/", "/%zz", "/%", "/a%2", "", "a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if CanonicalPath(raw) != nil {
			return
		}
		if raw == "" || raw[0] != '/' || len(raw) > 8192 {
			t.Fatalf("accepted %q: not absolute or too long", raw)
		}
		decoded, err := url.PathUnescape(raw)
		if err != nil {
			// net/http refuses invalid escapes before the pipeline sees
			// them; the raw form must still be clean.
			decoded = raw
		}
		want := decoded
		if len(want) > 1 {
			want = strings.TrimSuffix(want, "/")
		}
		if got := path.Clean(decoded); got != want {
			t.Fatalf("accepted %q: decoded %q cleans to %q", raw, decoded, got)
		}
		for _, bad := range []string{"//", `\`, "\x00"} {
			if strings.Contains(decoded, bad) {
				t.Fatalf("accepted %q: decoded %q contains %q", raw, decoded, bad)
			}
		}
		// Servlet containers strip path parameters from the raw path
		// before decoding, and then read "..;x" as "..".
		for _, seg := range strings.Split(raw, "/")[1:] {
			name, _, _ := strings.Cut(seg, ";")
			if name == "." || name == ".." {
				t.Fatalf("accepted %q: segment %q is %q without its parameters", raw, seg, name)
			}
		}
		for i := 0; i < len(raw); i++ {
			if c := raw[i]; c < 0x20 || c == 0x7f {
				t.Fatalf("accepted %q: control character at %d", raw, i)
			}
		}
	})
}
