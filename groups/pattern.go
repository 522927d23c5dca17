package groups

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// pathPattern is one compiled entry of Rule.Paths. There are three forms:
//
//   - "/api" is a prefix on a segment boundary: it matches "/api", "/api/"
//     and everything below, but not "/apix", "/api.", "/api;x" or "/Api".
//     "/" matches every path.
//   - "=/api" matches exactly "/api".
//   - A pattern containing "*" is a glob matched against the whole path.
//     "*" matches within one segment and "**", which must be a whole
//     segment, matches zero or more segments: "/api/*/orders",
//     "/files/**/*.pdf", "/users/*/keys/**". A wildcard only ever stands
//     for a real name: it never matches an empty, "." or ".." segment, so a
//     glob matches nothing but canonical paths (see isCanonicalPath). The
//     one empty segment of a canonical path, a trailing "/", is matched
//     only by "**": "/a/**/b" does not match "/a/b/", "/a/**" does. A glob
//     may not end in "/" itself.
//
// Matching is byte for byte and case-sensitive on the canonical path the
// edge forwards, so patterns must be canonical themselves, and "?", "[",
// "]", "{", "}" and "\" are rejected rather than given a meaning: a pattern
// means what it looks like. Globs are matched by the segment-wise algorithm
// below rather than by a glob library because the usual libraries let "*"
// match an empty segment ("/api/*/orders" would match "/api//orders") and
// give "[", "{" and "\" meanings an author may not expect.
type pathPattern struct {
	raw  string      // as written, for String
	kind patternKind // how path is compared
	path string      // prefixPattern, exactPattern: the path to compare with
	segs []globSeg   // globPattern: the segments after the leading "/"
}

type patternKind uint8

const (
	allPattern    patternKind = iota // "/" (and "/**"): every path
	prefixPattern                    // "/x": x and below
	exactPattern                     // "=/x": x only
	globPattern                      // contains "*"
)

// globSeg is one segment of a glob pattern.
type globSeg struct {
	text string // the segment as written; "" only for a trailing "/"
	kind segKind
}

type segKind uint8

const (
	literalSeg    segKind = iota // compared exactly
	wildSeg                      // contains "*" (never "**"): one non-empty name
	doubleStarSeg                // "**": zero or more names
)

// maxPatternLen bounds a pattern, and with it the work one glob match can
// take on an attacker-chosen path.
const maxPatternLen = 1024

// compilePathPattern validates p and returns the pattern, or msg != ""
// saying what is wrong (shown after "paths[i]: " in config errors).
func compilePathPattern(p string) (pp pathPattern, msg string) {
	body := p
	isExact := strings.HasPrefix(p, "=")
	if isExact {
		body = p[1:]
	}
	if !strings.HasPrefix(body, "/") {
		return pathPattern{}, `must start with "/" (or "=/" for an exact path)`
	}
	if len(p) > maxPatternLen {
		return pathPattern{}, fmt.Sprintf("longer than %d bytes", maxPatternLen)
	}
	if !utf8.ValidString(body) {
		return pathPattern{}, fmt.Sprintf("%q is not valid UTF-8", p)
	}
	for i := 0; i < len(body); i++ {
		if c := body[i]; c <= ' ' || c == 0x7f {
			return pathPattern{}, fmt.Sprintf("%q contains a space or control character", p)
		}
	}
	for _, c := range []string{"..", "//", `\`, "%", "?", "#"} {
		if strings.Contains(body, c) {
			return pathPattern{}, fmt.Sprintf("%q is not canonical: contains %q", p, c)
		}
	}
	if body == "/." || strings.HasSuffix(body, "/.") || strings.Contains(body, "/./") {
		return pathPattern{}, fmt.Sprintf(`%q is not canonical: contains a "." segment`, p)
	}
	if i := strings.IndexAny(body, "[]{}"); i >= 0 {
		return pathPattern{}, fmt.Sprintf(`%q contains %q: only "*" and "**" have a meaning in paths; character classes and alternatives are not supported (write one path per entry)`,
			p, body[i:i+1])
	}
	glob := strings.Contains(body, "*")
	switch {
	case glob && isExact:
		return pathPattern{}, fmt.Sprintf(`%q: a pattern with "*" is always matched against the whole path; drop the "="`, p)
	case glob && strings.HasSuffix(body, "/"):
		// "/a/**/" would match "/a/x/" but not "/a/x": as a deny rule, a
		// bypass waiting to happen.
		return pathPattern{}, fmt.Sprintf(`%q has a trailing "/": write %q (a glob matches the whole path; "**" at the end also matches a trailing "/")`,
			p, strings.TrimRight(body, "/"))
	case glob:
		return compileGlob(p)
	case isExact:
		return pathPattern{raw: p, kind: exactPattern, path: body}, ""
	case body == "/":
		return pathPattern{raw: p, kind: allPattern}, ""
	case strings.HasSuffix(body, "/"):
		return pathPattern{}, fmt.Sprintf(`%q has a trailing "/": write %q, which matches it and everything below it, or %q for exactly this path`,
			p, strings.TrimSuffix(body, "/"), "="+body)
	}
	return pathPattern{raw: p, kind: prefixPattern, path: body}, ""
}

// compileGlob compiles a canonical pattern p ("/…") that contains "*".
func compileGlob(p string) (pathPattern, string) {
	parts := strings.Split(p[1:], "/")
	segs := make([]globSeg, 0, len(parts))
	for _, s := range parts {
		switch {
		case s == "**":
			if n := len(segs); n > 0 && segs[n-1].kind == doubleStarSeg {
				continue // "/**/**" is "/**"
			}
			segs = append(segs, globSeg{text: s, kind: doubleStarSeg})
		case strings.Contains(s, "**"):
			return pathPattern{}, fmt.Sprintf(`%q: "**" must be a whole segment, as in "/a/**/b"; use "*" for part of a segment`, p)
		case strings.Contains(s, "*"):
			segs = append(segs, globSeg{text: s, kind: wildSeg})
		default:
			segs = append(segs, globSeg{text: s, kind: literalSeg})
		}
	}
	if len(segs) == 1 && segs[0].kind == doubleStarSeg {
		// "/**" matches every canonical path, exactly like "/".
		return pathPattern{raw: p, kind: allPattern}, ""
	}
	return pathPattern{raw: p, kind: globPattern, segs: segs}, ""
}

// String returns the pattern as written.
func (pp pathPattern) String() string { return pp.raw }

// matchesAll reports whether the pattern matches every canonical path ("/"
// or "/**"), so that a rule holding it needs no path check at all.
func (pp pathPattern) matchesAll() bool { return pp.kind == allPattern }

// match reports whether path, a canonical request path (see
// isCanonicalPath), matches the pattern. It does not allocate. Prefix and
// exact patterns compare strings and nothing more; a glob never matches a
// path that is not canonical.
func (pp pathPattern) match(path string) bool {
	switch pp.kind {
	case allPattern:
		return true
	case prefixPattern:
		return strings.HasPrefix(path, pp.path) && (len(path) == len(pp.path) || path[len(pp.path)] == '/')
	case exactPattern:
		return path == pp.path
	case globPattern:
		return isCanonicalPath(path) && matchSegments(pp.segs, path[1:])
	}
	return false
}

// matchSegments matches the segments of rest (a canonical path without its
// leading "/") against segs. It is the classic wildcard algorithm one level
// up: "**" is the star, every other pattern segment matches exactly one path
// segment, and only the most recent "**" is ever backtracked to, so the work
// is bounded by len(segs)·len(rest) segment comparisons.
func matchSegments(segs []globSeg, rest string) bool {
	var (
		i        int  // next pattern segment
		pos      int  // start of the next path segment in rest; len(rest)+1 when none is left
		starI    = -1 // index of the last "**" seen
		starNext int  // where the path resumes if that "**" absorbs one more segment
	)
	for pos <= len(rest) {
		if i < len(segs) && segs[i].kind == doubleStarSeg {
			starI, starNext = i, pos
			i++
			continue
		}
		seg, next := segmentAt(rest, pos)
		if i < len(segs) && segs[i].matchOne(seg) {
			i++
			pos = next
			continue
		}
		if starI < 0 {
			return false
		}
		// Let the last "**" absorb one more segment and retry after it.
		_, starNext = segmentAt(rest, starNext)
		i, pos = starI+1, starNext
	}
	for i < len(segs) && segs[i].kind == doubleStarSeg {
		i++
	}
	return i == len(segs)
}

// segmentAt returns the segment of rest that starts at pos and the start of
// the segment after it (len(rest)+1 after the last one).
func segmentAt(rest string, pos int) (seg string, next int) {
	end := strings.IndexByte(rest[pos:], '/')
	if end < 0 {
		return rest[pos:], len(rest) + 1
	}
	return rest[pos : pos+end], pos + end + 1
}

// matchOne matches one path segment against a literal or "*" segment.
func (g globSeg) matchOne(seg string) bool {
	if g.kind == literalSeg {
		return seg == g.text
	}
	// The path is canonical, so seg is never "." or ".." here; an empty seg
	// is the trailing "/", which is not a name.
	return seg != "" && matchStar(g.text, seg)
}

// matchStar matches s against pat, in which "*" stands for any run of
// bytes, with the linear backtracking of path.Match's inner loop.
func matchStar(pat, s string) bool {
	px, sx := 0, 0
	starPx, starSx := -1, 0
	for px < len(pat) || sx < len(s) {
		if px < len(pat) {
			if c := pat[px]; c == '*' {
				starPx, starSx = px, sx+1
				px++
				continue
			} else if sx < len(s) && s[sx] == c {
				px++
				sx++
				continue
			}
		}
		if starPx >= 0 && starSx <= len(s) {
			px, sx = starPx+1, starSx
			starSx++
			continue
		}
		return false
	}
	return true
}
