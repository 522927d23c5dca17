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
// particular, a rule with no Users, Groups or AllGroups matches every
// authenticated user: that is how an app is opened to everyone who is signed
// in. A rule with both Users and Groups requires both (the subject is one of
// Users AND a member of one of Groups).
type Rule struct {
	// Name is required and unique within the app. It is shown in decisions,
	// deny pages and audit events, so it must not be a secret.
	Name string `yaml:"name"`
	// Action is "allow" or "deny"; empty means "allow". Any matching deny
	// rule wins over every allow rule of the app, whatever the order.
	Action string `yaml:"action,omitempty"`
	// Users lists user IDs (the OIDC subject, compared exactly) and email
	// addresses (any entry containing "@", compared with the subject's email
	// case-insensitively in ASCII; the entry is also compared exactly with
	// the user ID, for IdPs whose subject is an email address).
	Users []string `yaml:"users,omitempty"`
	// Groups names policy groups (see Group) and IdP group claims written
	// "idp:NAME"; the condition matches if the subject is in any of them.
	Groups []string `yaml:"groups,omitempty"`
	// AllGroups is like Groups but the subject must be in every one.
	AllGroups []string `yaml:"all_groups,omitempty"`
	// Methods lists HTTP methods. They are upper-cased here and compared
	// case-insensitively with the request, so that a deny on DELETE cannot
	// be sidestepped by sending "delete" to an upstream that accepts it.
	Methods []string `yaml:"methods,omitempty"`
	// Paths lists request paths. "/api" matches "/api" and everything below
	// it on a segment boundary ("/api/x"), but not "/apix"; "/" matches every
	// path. "=/api" matches exactly "/api". A pattern with "*" is a glob
	// matched against the whole path: "*" stays within one segment, "**"
	// spans segments ("/api/*/orders", "/files/**/*.pdf"). Paths are compared
	// byte for byte (case-sensitively) with the canonical request path, so
	// they must themselves be canonical: no "..", "." segments, "//", "\",
	// "%", "?", "#" or, for prefixes, a trailing "/".
	Paths []string `yaml:"paths,omitempty"`
	// Time lists time windows (days, from–to, zone); the rule applies only
	// inside one of them.
	Time []TimeWindow `yaml:"time,omitempty"`
	// Networks lists source networks (CIDRs) the request must come from.
	Networks []string `yaml:"networks,omitempty"`
	// Countries lists ISO 3166-1 alpha-2 codes the source address must be
	// located in (policy.geoip_file). For an allow rule an address of
	// unknown location does not match; for a deny rule it does: unknown is
	// never an excuse to let a request through.
	Countries []string `yaml:"countries,omitempty"`
	// Posture names a posture profile the device must meet now: the
	// request must come from an enrolled device whose latest report passes
	// it.
	Posture string `yaml:"posture,omitempty"`
	// DeviceRequired requires an enrolled device's certificate.
	DeviceRequired bool `yaml:"device_required,omitempty"`
}

// AppRules is the policy of one app: its rules, evaluated as a set (deny
// wins, then the first matching allow rule, else deny). An app with no rules
// denies everything. Several AppRules may name the same app (say, one per
// policy file); their rules are joined in order.
type AppRules struct {
	App   string `yaml:"app"`
	Rules []Rule `yaml:"rules,omitempty"`
}

// Group is a dynamic group: a subject is a member when its attributes
// satisfy When, when it is one of Members, or when it is a member of a
// group in Include. Membership is evaluated per request from the subject's
// current attributes, so a changed attribute moves access at once.
type Group struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description,omitempty"`
	// When is a condition over user and device attributes, e.g.
	// `user.department == "Security Tech" and user.title in ["Engineer"]`.
	When string `yaml:"when,omitempty"`
	// Members lists user IDs and email addresses (as in Rule.Users).
	Members []string `yaml:"members,omitempty"`
	// Include names other groups (or "idp:NAME" claims) whose members are
	// members of this one. Cycles are rejected.
	Include []string `yaml:"include,omitempty"`
}

// File is the schema of one policy file of a policy directory.
type File struct {
	Groups []Group    `yaml:"groups,omitempty"`
	Apps   []AppRules `yaml:"apps,omitempty"`
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

// GroupError is a validation error in a group: groups[Index].<Field>.
type GroupError struct {
	Index int    // index into the groups given to Compile
	Name  string // the group's name when it is valid, else ""
	Field string // "name", "when", "members[0]", "include[1]"…; "" for the group as a whole
	Msg   string
}

func (e *GroupError) Error() string {
	var b strings.Builder
	if e.Name != "" {
		b.WriteString("group ")
		b.WriteString(strconv.Quote(e.Name))
	} else {
		fmt.Fprintf(&b, "groups[%d]", e.Index)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
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

// printableOrEmpty keeps an invalid name out of the error text when it
// would make the message unreadable; the index still locates it.
func printableOrEmpty(s string) string {
	if checkName(s) == "" {
		return s
	}
	return ""
}
