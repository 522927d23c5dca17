package authn

import (
	"errors"
	"net/url"
	"strings"
)

// maxReturnURL bounds the return address a login carries.
const maxReturnURL = 2048

var errReturnURL = errors.New("invalid return address")

// ValidateReturnURL accepts only an absolute https URL whose host (with port)
// is one the edge serves, as judged by isAppHost, and whose path is a plain
// same-origin path. Everything else is an error: no open redirect in any form
// (`//evil`, `/\evil`, `https:evil`, userinfo, control characters, encoded
// variants). It returns the URL re-serialised, without a fragment.
func ValidateReturnURL(raw string, isAppHost func(hostport string) bool) (string, error) {
	if raw == "" || len(raw) > maxReturnURL || hasUnsafeChars(raw) {
		return "", errReturnURL
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", errReturnURL
	}
	if u.Scheme != "https" || u.Opaque != "" || u.User != nil || u.Host == "" {
		return "", errReturnURL
	}
	if strings.ContainsAny(u.Host, "%@\\") || !isAppHost(strings.ToLower(u.Host)) {
		return "", errReturnURL
	}
	p, err := validatePath(u.EscapedPath())
	if err != nil {
		return "", err
	}
	out := "https://" + strings.ToLower(u.Host) + p
	if u.RawQuery != "" {
		out += "?" + u.RawQuery
	}
	// Escaping can make the output longer than the input: bound what we
	// return too, so a validated address always validates again.
	if len(out) > maxReturnURL {
		return "", errReturnURL
	}
	return out, nil
}

// ValidateLocalPath accepts a same-origin path with an optional query
// ("/docs?page=2") and rejects anything a browser could resolve to another
// origin.
func ValidateLocalPath(raw string) (string, error) {
	if raw == "" || len(raw) > maxReturnURL || hasUnsafeChars(raw) {
		return "", errReturnURL
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		return "", errReturnURL
	}
	p, err := validatePath(u.EscapedPath())
	if err != nil {
		return "", err
	}
	if u.RawQuery != "" {
		p += "?" + u.RawQuery
	}
	if len(p) > maxReturnURL {
		return "", errReturnURL
	}
	return p, nil
}

func validatePath(p string) (string, error) {
	if p == "" {
		return "/", nil
	}
	if p[0] != '/' || strings.HasPrefix(p, "//") {
		return "", errReturnURL
	}
	// Encoded slashes and backslashes are how "/%2F%2Fevil" and "/%5Cevil"
	// become "//evil" after a decode further down the line.
	lower := strings.ToLower(p)
	if strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") || strings.Contains(lower, "%00") {
		return "", errReturnURL
	}
	return p, nil
}

// hasUnsafeChars reports backslashes, whitespace and control characters,
// which browsers strip or reinterpret in URLs.
func hasUnsafeChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c == 0x7f || c == '\\' {
			return true
		}
	}
	return false
}
