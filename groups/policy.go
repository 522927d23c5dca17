package groups

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Rule is one line of an app's policy. A rule matches a request when every
// non-empty condition matches; an empty condition matches anything. In
// particular, a rule with neither Users nor Groups matches every
// authenticated user: that is how an app is opened to everyone who is signed
// in. A rule with both Users and Groups requires both (the subject is one of
// Users AND a member of one of Groups).
type Rule struct {
	// Name is required and unique within the app. It is shown in decisions,
	// deny pages and audit events, so it must not be a secret.
	Name string `yaml:"name"`
	// Action is "allow" or "deny"; empty means "allow". Any matching deny
	// rule wins over every allow rule of the app, whatever the order.
	Action string `yaml:"action"`
	// Users lists user IDs (the OIDC subject, compared exactly) and email
	// addresses (any entry containing "@", compared with the subject's email
	// case-insensitively in ASCII; the entry is also compared exactly with
	// the user ID, for IdPs whose subject is an email address).
	Users []string `yaml:"users"`
	// Groups lists IdP group names, compared exactly; the condition matches
	// if the subject is in any of them.
	Groups []string `yaml:"groups"`
	// Methods lists HTTP methods. They are upper-cased here and compared
	// case-insensitively with the request, so that a deny on DELETE cannot
	// be sidestepped by sending "delete" to an upstream that accepts it.
	Methods []string `yaml:"methods"`
	// Paths lists request paths. "/api" matches "/api" and everything below
	// it on a segment boundary ("/api/x"), but not "/apix"; "/" matches every
	// path. "=/api" matches exactly "/api". Paths are compared byte for byte
	// (case-sensitively) with the canonical request path, so they must
	// themselves be canonical: no "..", "." segments, "//", "\", "%", "?",
	// "#", wildcards or, for prefixes, a trailing "/".
	Paths []string `yaml:"paths"`
}

// AppRules is the policy of one app: its rules, evaluated as a set (deny
// wins, then the first matching allow rule, else deny). An app with no rules
// denies everything.
type AppRules struct {
	App   string `yaml:"app"`
	Rules []Rule `yaml:"rules"`
}

// Rule actions.
const (
	ActionAllow = "allow"
	ActionDeny  = "deny"
)

// maxNameLen bounds app and rule names: they end up in deny pages, audit
// events and response headers.
const maxNameLen = 128

// RuleError is a validation error in the input to Compile. It says where the
// error is precisely enough for a config loader to point at a YAML node:
// apps[AppIndex].rules[Rule].<Field>.
type RuleError struct {
	AppIndex int    // index into the apps given to Compile
	App      string // the app's name as written, "" if missing
	Rule     int    // index into that app's Rules; -1 for an error about the app itself
	RuleName string // the rule's name when it is valid, for the message; else ""
	Field    string // "name", "action", "users[0]", "paths[1]"…; "app" for the app name
	Msg      string
}

func (e *RuleError) Error() string {
	var b strings.Builder
	if e.App != "" {
		b.WriteString("app ")
		b.WriteString(strconv.Quote(e.App))
	} else {
		fmt.Fprintf(&b, "apps[%d]", e.AppIndex)
	}
	switch {
	case e.Rule >= 0 && e.RuleName != "":
		b.WriteString(" rule ")
		b.WriteString(strconv.Quote(e.RuleName))
	case e.Rule >= 0:
		fmt.Fprintf(&b, " rules[%d]", e.Rule)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Compile validates apps and builds the immutable Policy that decides
// requests. It returns the first problem found as a *RuleError and retains
// nothing from its argument.
func Compile(apps []AppRules) (*Policy, error) {
	p := &Policy{apps: make(map[string]*app, len(apps))}
	firstIndex := make(map[string]int, len(apps))
	for i, ar := range apps {
		if msg := checkName(ar.App); msg != "" {
			return nil, &RuleError{AppIndex: i, App: printableOrEmpty(ar.App), Rule: -1, Field: "app", Msg: msg}
		}
		if prev, dup := firstIndex[ar.App]; dup {
			return nil, &RuleError{AppIndex: i, App: ar.App, Rule: -1, Field: "app",
				Msg: fmt.Sprintf("duplicate app (also apps[%d])", prev)}
		}
		firstIndex[ar.App] = i
		a, err := compileApp(i, ar)
		if err != nil {
			return nil, err
		}
		p.apps[ar.App] = a
	}
	return p, nil
}

// printableOrEmpty keeps an invalid app name out of the error text when it
// would make the message unreadable; the index still locates it.
func printableOrEmpty(s string) string {
	if checkName(s) == "" {
		return s
	}
	return ""
}

func compileApp(i int, ar AppRules) (*app, error) {
	n := len(ar.Rules)
	words := (n + 63) / 64
	a := &app{
		name:        ar.App,
		words:       words,
		rules:       make([]rule, n),
		deny:        make([]uint64, words),
		allow:       make([]uint64, words),
		needUser:    make([]uint64, words),
		needGroup:   make([]uint64, words),
		byUser:      map[string]uint32{},
		byEmail:     map[string]uint32{},
		byGroup:     map[string]uint32{},
		noRule:      "no rule of app " + strconv.Quote(ar.App) + " allows ",
		notSignedIn: "app " + strconv.Quote(ar.App) + " requires a signed-in user",
	}
	seen := make(map[string]int, n)
	for j, r := range ar.Rules {
		fail := func(field, msg string) error {
			// A human looks for the rule by name; the loader uses the index.
			return &RuleError{AppIndex: i, App: ar.App, Rule: j, RuleName: printableOrEmpty(r.Name), Field: field, Msg: msg}
		}
		if msg := checkName(r.Name); msg != "" {
			return nil, fail("name", msg)
		}
		if prev, dup := seen[r.Name]; dup {
			return nil, fail("name", fmt.Sprintf("duplicate rule name %q (also rules[%d])", r.Name, prev))
		}
		seen[r.Name] = j
		w, bit := j/64, uint64(1)<<(j%64)
		cr := rule{name: r.Name}
		switch r.Action {
		case "", ActionAllow:
			a.allow[w] |= bit
			cr.reason = "allowed by rule " + strconv.Quote(r.Name)
		case ActionDeny:
			a.deny[w] |= bit
			cr.reason = "denied by rule " + strconv.Quote(r.Name)
		default:
			return nil, fail("action", fmt.Sprintf(`must be "allow" or "deny", not %q`, r.Action))
		}
		for k, u := range r.Users {
			field := fmt.Sprintf("users[%d]", k)
			if msg := checkEntry(u); msg != "" {
				return nil, fail(field, msg)
			}
			a.setBit(a.byUser, u, w, bit)
			if strings.Contains(u, "@") {
				a.setBit(a.byEmail, lowerASCII(u), w, bit)
			}
		}
		if len(r.Users) > 0 {
			a.needUser[w] |= bit
		}
		for k, g := range r.Groups {
			if msg := checkEntry(g); msg != "" {
				return nil, fail(fmt.Sprintf("groups[%d]", k), msg)
			}
			a.setBit(a.byGroup, g, w, bit)
		}
		if len(r.Groups) > 0 {
			a.needGroup[w] |= bit
		}
		cr.anyMethod = len(r.Methods) == 0
		for k, m := range r.Methods {
			if !isToken(m) {
				return nil, fail(fmt.Sprintf("methods[%d]", k), fmt.Sprintf("%q is not an HTTP method token", m))
			}
			m = strings.ToUpper(m) // a token is ASCII
			if b := methodBit(m); b != 0 {
				cr.methods |= b
			} else {
				cr.otherMethods = append(cr.otherMethods, m)
			}
		}
		cr.anyPath = len(r.Paths) == 0
		for k, pth := range r.Paths {
			exact, msg := checkRulePath(pth)
			if msg != "" {
				return nil, fail(fmt.Sprintf("paths[%d]", k), msg)
			}
			switch {
			case exact != "":
				cr.exact = append(cr.exact, exact)
			case pth == "/":
				cr.anyPath = true
			default:
				cr.prefixes = append(cr.prefixes, pth)
			}
		}
		a.rules[j] = cr
	}
	return a, nil
}

// setBit marks rule bit (in word w) in the bitset that m holds for key,
// creating the bitset in the app's pool on first use.
func (a *app) setBit(m map[string]uint32, key string, w int, bit uint64) {
	off, ok := m[key]
	if !ok {
		off = uint32(len(a.pool))
		a.pool = append(a.pool, make([]uint64, a.words)...)
		m[key] = off
	}
	a.pool[int(off)+w] |= bit
}

// checkName validates an app or rule name and returns "" or what is wrong.
func checkName(s string) string {
	switch {
	case s == "":
		return "required"
	case len(s) > maxNameLen:
		return fmt.Sprintf("longer than %d bytes", maxNameLen)
	}
	return checkText(s)
}

// checkEntry validates a user or group entry.
func checkEntry(s string) string {
	if s == "" {
		return "empty"
	}
	return checkText(s)
}

// checkText rejects text that cannot be what the author meant: invalid
// UTF-8, control characters, and surrounding spaces (an IdP never sends
// " eng", so such an entry would silently never match).
func checkText(s string) string {
	if !utf8.ValidString(s) {
		return "not valid UTF-8"
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Sprintf("%q contains a control character", s)
		}
	}
	if strings.TrimSpace(s) != s {
		return fmt.Sprintf("%q has leading or trailing spaces", s)
	}
	return ""
}

// checkRulePath validates one entry of Rule.Paths. For "=/x" it returns the
// exact path "/x"; for a prefix it returns "". msg is "" when p is valid.
func checkRulePath(p string) (exact, msg string) {
	body := p
	isExact := strings.HasPrefix(p, "=")
	if isExact {
		body = p[1:]
	}
	if !strings.HasPrefix(body, "/") {
		return "", `must start with "/" (or "=/" for an exact path)`
	}
	if strings.HasSuffix(body, "*") {
		prefix := strings.TrimRight(strings.TrimRight(body, "*"), "/")
		if prefix == "" {
			prefix = "/"
		}
		return "", fmt.Sprintf(`%q: wildcards are not supported; %q already matches everything below it`, p, prefix)
	}
	for _, c := range []string{"..", "//", `\`, "%", "?", "#", "*"} {
		if strings.Contains(body, c) {
			return "", fmt.Sprintf("%q is not canonical: contains %q", p, c)
		}
	}
	if body == "/." || strings.HasSuffix(body, "/.") || strings.Contains(body, "/./") {
		return "", fmt.Sprintf(`%q is not canonical: contains a "." segment`, p)
	}
	for i := 0; i < len(body); i++ {
		if c := body[i]; c <= ' ' || c == 0x7f {
			return "", fmt.Sprintf("%q contains a space or control character", p)
		}
	}
	if !utf8.ValidString(body) {
		return "", fmt.Sprintf("%q is not valid UTF-8", p)
	}
	if isExact {
		return body, ""
	}
	if len(body) > 1 && strings.HasSuffix(body, "/") {
		return "", fmt.Sprintf(`%q has a trailing "/": write %q, which matches it and everything below it, or %q for exactly this path`,
			p, strings.TrimSuffix(body, "/"), "="+body)
	}
	return "", ""
}

// isToken reports whether s is an RFC 9110 token, the syntax of a method.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// lowerASCII lower-cases the ASCII letters of s only: email matching must
// not depend on Unicode case folding (which maps, e.g., the Kelvin sign to
// "k") and must agree exactly with the allocation-free folding in Decide.
func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
