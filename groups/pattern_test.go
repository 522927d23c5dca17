package groups

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/bmatcuk/doublestar/v4"
)

func TestCompilePathPattern(t *testing.T) {
	valid := []struct {
		pattern string
		kind    patternKind
		all     bool
	}{
		{"/", allPattern, true},
		{"/**", allPattern, true},
		{"/**/**", allPattern, true},
		{"/api", prefixPattern, false},
		{"/a.b", prefixPattern, false},
		{"/.well-known/x", prefixPattern, false},
		{"/admin;x", prefixPattern, false},
		{"=/", exactPattern, false},
		{"=/api", exactPattern, false},
		{"=/docs/", exactPattern, false},
		{"/*", globPattern, false},
		{"/api/*", globPattern, false},
		{"/api/**", globPattern, false},
		{"/api/*/orders", globPattern, false},
		{"/files/**/*.pdf", globPattern, false},
		{"/users/*/keys/**", globPattern, false},
		{"/a*b*c", globPattern, false},
		{"/**/secret", globPattern, false},
	}
	for _, tc := range valid {
		pp, msg := compilePathPattern(tc.pattern)
		if msg != "" {
			t.Errorf("compilePathPattern(%q): unexpected error %q", tc.pattern, msg)
			continue
		}
		if pp.kind != tc.kind || pp.matchesAll() != tc.all || pp.String() != tc.pattern {
			t.Errorf("compilePathPattern(%q) = kind %d, matchesAll %v, String %q; want kind %d, matchesAll %v, String %q",
				tc.pattern, pp.kind, pp.matchesAll(), pp.String(), tc.kind, tc.all, tc.pattern)
		}
	}

	invalid := []struct{ pattern, msg string }{
		{"", `must start with "/" (or "=/" for an exact path)`},
		{"api", `must start with "/" (or "=/" for an exact path)`},
		{"=api", `must start with "/" (or "=/" for an exact path)`},
		{"=", `must start with "/" (or "=/" for an exact path)`},
		{"*/x", `must start with "/" (or "=/" for an exact path)`},
		{"/a/../admin", `"/a/../admin" is not canonical: contains ".."`},
		{"/users/*/", `"/users/*/" has a trailing "/": write "/users/*" (a glob matches the whole path; "**" at the end also matches a trailing "/")`},
		{"/admin/**/", `"/admin/**/" has a trailing "/": write "/admin/**" (a glob matches the whole path; "**" at the end also matches a trailing "/")`},
		{"/a/..", `"/a/.." is not canonical: contains ".."`},
		{"//admin", `"//admin" is not canonical: contains "//"`},
		{"/api//*", `"/api//*" is not canonical: contains "//"`},
		{`/a\b`, `"/a\\b" is not canonical: contains "\\"`},
		{`/a\*`, `"/a\\*" is not canonical: contains "\\"`},
		{"/a%2Fb", `"/a%2Fb" is not canonical: contains "%"`},
		{"/a?b=1", `"/a?b=1" is not canonical: contains "?"`},
		{"/a?", `"/a?" is not canonical: contains "?"`},
		{"/a#x", `"/a#x" is not canonical: contains "#"`},
		{"/a/./b", `"/a/./b" is not canonical: contains a "." segment`},
		{"=/a/.", `"=/a/." is not canonical: contains a "." segment`},
		{"/.", `"/." is not canonical: contains a "." segment`},
		{"/a b", `"/a b" contains a space or control character`},
		{"/a\tb", `"/a\tb" contains a space or control character`},
		{"/a\x7f", `"/a\x7f" contains a space or control character`},
		{"/a\xffb", `"/a\xffb" is not valid UTF-8`},
		{"/admin/", `"/admin/" has a trailing "/": write "/admin", which matches it and everything below it, or "=/admin/" for exactly this path`},
		{"/files/[ab]", `"/files/[ab]" contains "[": only "*" and "**" have a meaning in paths; character classes and alternatives are not supported (write one path per entry)`},
		{"/files/a]", `"/files/a]" contains "]": only "*" and "**" have a meaning in paths; character classes and alternatives are not supported (write one path per entry)`},
		{"/files/{a,b}", `"/files/{a,b}" contains "{": only "*" and "**" have a meaning in paths; character classes and alternatives are not supported (write one path per entry)`},
		{"/files/a}", `"/files/a}" contains "}": only "*" and "**" have a meaning in paths; character classes and alternatives are not supported (write one path per entry)`},
		{"=/api/*", `"=/api/*": a pattern with "*" is always matched against the whole path; drop the "="`},
		{"/files/**.pdf", `"/files/**.pdf": "**" must be a whole segment, as in "/a/**/b"; use "*" for part of a segment`},
		{"/a**", `"/a**": "**" must be a whole segment, as in "/a/**/b"; use "*" for part of a segment`},
		{"/***", `"/***": "**" must be a whole segment, as in "/a/**/b"; use "*" for part of a segment`},
		{"/" + strings.Repeat("a", maxPatternLen), "longer than 1024 bytes"},
	}
	for _, tc := range invalid {
		if _, msg := compilePathPattern(tc.pattern); msg != tc.msg {
			t.Errorf("compilePathPattern(%q):\n got %q\nwant %q", tc.pattern, msg, tc.msg)
		}
	}
}

func TestPathPatternMatch(t *testing.T) {
	tests := []struct {
		pattern string
		yes, no []string
	}{
		{"/", []string{"/", "/a", "/a/b/", "/.well-known/x"}, nil},
		{"/**", []string{"/", "/a", "/a/b/", "/.well-known/x"}, nil},
		{
			// A prefix matches on a segment boundary only, byte for byte.
			"/admin",
			[]string{"/admin", "/admin/", "/admin/x", "/admin/x/y"},
			[]string{"/adminx", "/Admin", "/ADMIN/x", "/admin.", "/admin;x", "/admin%2F", "/", "/x/admin", "/admi"},
		},
		{
			// ";" has no special meaning: "/admin;x" is a different
			// segment, and only a pattern that says so matches it.
			"/admin;x",
			[]string{"/admin;x", "/admin;x/y"},
			[]string{"/admin", "/admin;"},
		},
		{
			"=/admin",
			[]string{"/admin"},
			[]string{"/admin/", "/admin/x", "/admin;x", "/admin.", "/Admin", "/adminx"},
		},
		{"=/docs/", []string{"/docs/"}, []string{"/docs", "/docs/x"}},
		{"=/", []string{"/"}, []string{"/a", "//"}},
		{
			// "*" is exactly one non-empty segment.
			"/api/*/orders",
			[]string{"/api/a/orders", "/api/v1.2/orders", "/api/.x/orders", "/api/x./orders", "/api/;/orders"},
			[]string{"/api/a/b/orders", "/api//orders", "/api/orders", "/api/a/orders/", "/api/a/orders/1",
				"/api/../orders", "/api/./orders", "/API/a/orders", "/api/a/Orders"},
		},
		{
			"/api/*",
			[]string{"/api/a", "/api/.hidden"},
			[]string{"/api", "/api/", "/api/a/", "/api/a/b", "/apix/a"},
		},
		{"/*", []string{"/a", "/.well-known"}, []string{"/", "/a/", "/a/b"}},
		{
			"/files/**/*.pdf",
			[]string{"/files/a.pdf", "/files/x/a.pdf", "/files/x/y/z/a.pdf", "/files/.pdf"},
			[]string{"/files/a.pdf/", "/files/a.PDF", "/files/a.pdfx", "/files", "/files/", "/filesx/a.pdf",
				"/files/../a.pdf", "/files//a.pdf", "/files/x/../a.pdf", "/other/files/a.pdf"},
		},
		{
			"/users/*/keys/**",
			[]string{"/users/u1/keys", "/users/u1/keys/", "/users/u1/keys/k1", "/users/u1/keys/k1/rotate"},
			[]string{"/users/keys", "/users//keys", "/users/u1/keysx", "/users/u1/u2/keys/k1", "/users/u1/keys/../../u2"},
		},
		{
			// A glob is matched against the whole path: no trailing "/"
			// unless the pattern has one.
			"/a/**/b",
			[]string{"/a/b", "/a/x/b", "/a/x/y/b"},
			[]string{"/a/b/", "/a/b/c", "/ab", "/a//b", "/a/./b", "/a/x/../b"},
		},
		{
			"/**/secret",
			[]string{"/secret", "/a/secret", "/a/b/secret"},
			[]string{"/secret/", "/secretx", "/a/secret/x", "/../secret", "/a/../secret"},
		},
		{
			// "*" does not stand for "." or "..", whatever surrounds it.
			"/a/*.*",
			[]string{"/a/b.c", "/a/.c", "/a/b.", "/a/..."},
			[]string{"/a/..", "/a/.", "/a/bc"},
		},
		{"/a*b*c", []string{"/abc", "/aXbYc", "/abbbc", "/acbc"}, []string{"/ab", "/abcX", "/a/bc", "/ac"}},
		{"/*a", []string{"/a", "/aa", "/ba"}, []string{"/ab", "/", "/b/a"}},
		{"/é*/x", []string{"/é/x", "/éa/x"}, []string{"/e/x", "/E/x"}},
	}
	for _, tc := range tests {
		pp, msg := compilePathPattern(tc.pattern)
		if msg != "" {
			t.Fatalf("compilePathPattern(%q): %s", tc.pattern, msg)
		}
		for _, p := range tc.yes {
			if !pp.match(p) {
				t.Errorf("%q should match %q", tc.pattern, p)
			}
		}
		for _, p := range tc.no {
			if pp.match(p) {
				t.Errorf("%q should not match %q", tc.pattern, p)
			}
		}
	}
}

// A glob with many "**" on a long path must not backtrack exponentially;
// this test hangs (and times out) if it does.
func TestPathPatternGlobIsPolynomial(t *testing.T) {
	pattern := strings.Repeat("/**/a*a*a*a*a", 40) + "/b"
	pp, msg := compilePathPattern(pattern)
	if msg != "" {
		t.Fatal(msg)
	}
	path := strings.Repeat("/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 300) // no "b": forces every alternative
	if pp.match(path) {
		t.Fatal("matched a path without the final segment")
	}
	if !pp.match(path + "/b") {
		t.Fatal("did not match")
	}
}

func TestPathPatternMatchDoesNotAllocate(t *testing.T) {
	pp, _ := compilePathPattern("/files/**/*.pdf")
	allocs := testing.AllocsPerRun(100, func() {
		if !pp.match("/files/x/y/z/report.pdf") {
			t.Fatal("no match")
		}
	})
	if allocs != 0 {
		t.Errorf("match allocates %.1f times per call", allocs)
	}
}

// witness returns a path that a compiled glob must match: every wildcard
// replaced by a plain name.
func witness(pp pathPattern) string {
	var b strings.Builder
	for _, s := range pp.segs {
		b.WriteByte('/')
		switch s.kind {
		case doubleStarSeg:
			b.WriteString("w")
		default:
			b.WriteString(strings.ReplaceAll(s.text, "*", "w"))
		}
	}
	return b.String()
}

func FuzzPathPattern(f *testing.F) {
	for _, s := range [][2]string{
		{"/admin", "/admin/"}, {"/admin", "/adminx"}, {"=/admin", "/admin"}, {"/", "/x"},
		{"/api/*/orders", "/api//orders"}, {"/api/*/orders", "/api/a/orders"},
		{"/files/**/*.pdf", "/files/x/../a.pdf"}, {"/users/*/keys/**", "/users/u/keys/"},
		{"/**", "/"}, {"/**/x", "/x"}, {"/a/*.*", "/a/.."}, {"/a*b*c", "/aXbYc"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, path string) {
		pp, msg := compilePathPattern(pattern)
		if msg != "" {
			return
		}
		if pp.String() != pattern {
			t.Fatalf("String() = %q, want %q", pp.String(), pattern)
		}
		got := pp.match(path)
		body := strings.TrimPrefix(pattern, "=")
		switch pp.kind {
		case allPattern:
			if !got {
				t.Fatalf("%q does not match %q", pattern, path)
			}
		case prefixPattern:
			if want := path == body || strings.HasPrefix(path, body+"/"); got != want {
				t.Fatalf("prefix %q match %q = %v, want %v", pattern, path, got, want)
			}
			if !pp.match(body) || !pp.match(body+"/x") {
				t.Fatalf("prefix %q does not match itself or below", pattern)
			}
		case exactPattern:
			if want := path == body; got != want {
				t.Fatalf("exact %q match %q = %v, want %v", pattern, path, got, want)
			}
		case globPattern:
			if got && !isCanonicalPath(path) {
				t.Fatalf("glob %q matches non-canonical %q", pattern, path)
			}
			if w := witness(pp); !pp.match(w) {
				t.Fatalf("glob %q does not match %q", pattern, w)
			}
			// Where the semantics agree (canonical paths whose segments are
			// all names, so no trailing "/"), a glob library must agree.
			if isCanonicalPath(path) && !strings.HasSuffix(path, "/") && utf8.ValidString(path) {
				want, err := doublestarMatch(pattern, path)
				if err != nil {
					t.Fatalf("doublestar rejects %q: %v", pattern, err)
				}
				if got != want {
					t.Fatalf("glob %q match %q = %v, doublestar says %v", pattern, path, got, want)
				}
			}
		default:
			t.Fatalf("kind %d", pp.kind)
		}
	})
}

// doublestarMatch is doublestar.Match with one quirk of v4.10.4 taken out:
// it says "/a*/**" does not match "/a" (while "/a/**" matches "/a" and
// "/a*/**" matches "/ab"), so a trailing "/**" is checked as what it means,
// "X/**" = X or anything below X.
func doublestarMatch(pattern, path string) (bool, error) {
	ok, err := doublestar.Match(pattern, path)
	if err != nil || ok {
		return ok, err
	}
	if base, cut := strings.CutSuffix(pattern, "/**"); cut && base != "" {
		return doublestarMatch(base, path)
	}
	return false, nil
}

// Every glob over a small alphabet agrees with doublestar on every
// canonical path without a trailing "/" over that alphabet: the cases
// where the two are meant to mean the same.
func TestGlobAgreesWithDoublestar(t *testing.T) {
	patSegs := []string{"a", "b", "*", "**", "a*", "*a", "*.*"}
	pathSegs := []string{"a", "b", "aa", "ab", "ba", "x.y", "..."}
	var patterns, paths []string
	var build func(prefix string, depth, max int, segs []string, out *[]string)
	build = func(prefix string, depth, max int, segs []string, out *[]string) {
		if depth > 0 {
			*out = append(*out, prefix)
		}
		if depth == max {
			return
		}
		for _, s := range segs {
			build(prefix+"/"+s, depth+1, max, segs, out)
		}
	}
	build("", 0, 4, patSegs, &patterns)
	build("", 0, 4, pathSegs, &paths)
	checked := 0
	for _, pat := range patterns {
		if !strings.Contains(pat, "*") {
			continue
		}
		pp, msg := compilePathPattern(pat)
		if msg != "" {
			t.Fatalf("%q: %s", pat, msg)
		}
		for _, path := range paths {
			want, err := doublestarMatch(pat, path)
			if err != nil {
				t.Fatal(err)
			}
			if got := pp.match(path); got != want {
				t.Errorf("%q match %q = %v, doublestar says %v", pat, path, got, want)
			}
			checked++
		}
	}
	if checked < 100000 {
		t.Fatalf("only %d comparisons", checked)
	}
}
