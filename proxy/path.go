package proxy

import (
	"errors"
	"strings"
)

var errPath = errors.New("non-canonical request path")

// CanonicalPath accepts only paths that mean the same thing to the edge,
// to its rules and to every app behind it: absolute, no "." or ".."
// segments, no empty segments ("//"), no backslashes, no control
// characters, no path parameters (";", which servlet containers strip:
// "/admin;x=1" is "/admin" to them), no encoded "/", "\", ".", ";" or NUL.
// Such tricks are how a
// request for /admin is dressed up to pass a rule for /public; rather than
// guess what the app would make of them, the edge refuses them.
//
// raw is the escaped path as it arrived (r.URL.EscapedPath()).
func CanonicalPath(raw string) error {
	if raw == "" || raw[0] != '/' || len(raw) > 8192 {
		return errPath
	}
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c < 0x20 || c == 0x7f || c == '\\' || c == ';' {
			return errPath
		}
		if c == '%' && i+2 < len(raw) {
			switch strings.ToLower(raw[i+1 : i+3]) {
			case "2f", "5c", "2e", "00", "3b":
				return errPath
			}
		}
	}
	// Segment checks; the final segment may be empty (trailing slash).
	rest := raw[1:]
	for rest != "" {
		seg, after, found := strings.Cut(rest, "/")
		if seg == "." || seg == ".." || (seg == "" && found) {
			return errPath
		}
		rest = after
	}
	return nil
}
