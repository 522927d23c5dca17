package groups

import (
	"errors"
	"strings"
	"testing"
)

func TestCompileErrors(t *testing.T) {
	// one wraps a single rule into a one-app policy.
	one := func(r Rule) []AppRules { return []AppRules{{App: "wiki", Rules: []Rule{r}}} }
	tests := []struct {
		name    string
		apps    []AppRules
		wantErr string // the whole message
		want    RuleError
	}{
		{
			name:    "app name required",
			apps:    []AppRules{{App: "ok"}, {App: ""}},
			wantErr: `apps[1]: app: required`,
			want:    RuleError{AppIndex: 1, Rule: -1, Field: "app", Msg: "required"},
		},
		{
			name:    "app name with control character",
			apps:    []AppRules{{App: "wi\nki"}},
			wantErr: `apps[0]: app: "wi\nki" contains a control character`,
			want:    RuleError{AppIndex: 0, Rule: -1, Field: "app", Msg: `"wi\nki" contains a control character`},
		},
		{
			name:    "app name too long",
			apps:    []AppRules{{App: strings.Repeat("a", 129)}},
			wantErr: `apps[0]: app: longer than 128 bytes`,
			want:    RuleError{AppIndex: 0, Rule: -1, Field: "app", Msg: "longer than 128 bytes"},
		},
		{
			name:    "rule name required",
			apps:    []AppRules{{App: "wiki", Rules: []Rule{{Name: "a"}, {Groups: []string{"eng"}}}}},
			wantErr: `app "wiki" rules[1]: name: required`,
			want:    RuleError{App: "wiki", Rule: 1, Field: "name", Msg: "required"},
		},
		{
			name:    "rule name with surrounding spaces",
			apps:    one(Rule{Name: " eng"}),
			wantErr: `app "wiki" rules[0]: name: " eng" has leading or trailing spaces`,
			want:    RuleError{App: "wiki", Rule: 0, Field: "name", Msg: `" eng" has leading or trailing spaces`},
		},
		{
			name:    "rule name not UTF-8",
			apps:    one(Rule{Name: "\xff"}),
			wantErr: `app "wiki" rules[0]: name: not valid UTF-8`,
			want:    RuleError{App: "wiki", Rule: 0, Field: "name", Msg: "not valid UTF-8"},
		},
		{
			name: "duplicate rule name",
			apps: []AppRules{
				{App: "git", Rules: []Rule{{Name: "eng"}}}, // the same name in another app is fine
				{App: "wiki", Rules: []Rule{{Name: "eng"}, {Name: "ops"}, {Name: "eng"}}},
			},
			wantErr: `app "wiki" rule "eng": name: duplicate rule name "eng" (also rules[0])`,
			want:    RuleError{AppIndex: 1, App: "wiki", Rule: 2, RuleName: "eng", Field: "name", Msg: `duplicate rule name "eng" (also rules[0])`},
		},
		{
			name:    "unknown action",
			apps:    one(Rule{Name: "eng", Action: "Allow"}),
			wantErr: `app "wiki" rule "eng": action: must be "allow" or "deny", not "Allow"`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "action", Msg: `must be "allow" or "deny", not "Allow"`},
		},
		{
			name:    "empty user",
			apps:    one(Rule{Name: "eng", Users: []string{"u1", ""}}),
			wantErr: `app "wiki" rule "eng": users[1]: empty`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "users[1]", Msg: "empty"},
		},
		{
			name:    "user with trailing space",
			apps:    one(Rule{Name: "eng", Users: []string{"alice@example.com "}}),
			wantErr: `app "wiki" rule "eng": users[0]: "alice@example.com " has leading or trailing spaces`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "users[0]", Msg: `"alice@example.com " has leading or trailing spaces`},
		},
		{
			name:    "empty group",
			apps:    one(Rule{Name: "eng", Groups: []string{""}}),
			wantErr: `app "wiki" rule "eng": groups[0]: empty`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "groups[0]", Msg: "empty"},
		},
		{
			name:    "group with control character",
			apps:    one(Rule{Name: "eng", Groups: []string{"idp:eng", "a\tb"}}),
			wantErr: `app "wiki" rule "eng": groups[1]: "a\tb" contains a control character`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "groups[1]", Msg: `"a\tb" contains a control character`},
		},
		{
			name:    "method with a space",
			apps:    one(Rule{Name: "eng", Methods: []string{"GET", "GET POST"}}),
			wantErr: `app "wiki" rule "eng": methods[1]: "GET POST" is not an HTTP method token`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "methods[1]", Msg: `"GET POST" is not an HTTP method token`},
		},
		{
			name:    "empty method",
			apps:    one(Rule{Name: "eng", Methods: []string{""}}),
			wantErr: `app "wiki" rule "eng": methods[0]: "" is not an HTTP method token`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "methods[0]", Msg: `"" is not an HTTP method token`},
		},
		{
			name:    "relative path",
			apps:    one(Rule{Name: "eng", Paths: []string{"/ok", "api"}}),
			wantErr: `app "wiki" rule "eng": paths[1]: must start with "/" (or "=/" for an exact path)`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[1]", Msg: `must start with "/" (or "=/" for an exact path)`},
		},
		{
			name:    "empty path",
			apps:    one(Rule{Name: "eng", Paths: []string{""}}),
			wantErr: `app "wiki" rule "eng": paths[0]: must start with "/" (or "=/" for an exact path)`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[0]", Msg: `must start with "/" (or "=/" for an exact path)`},
		},
		{
			name:    "exact path not absolute",
			apps:    one(Rule{Name: "eng", Paths: []string{"=api"}}),
			wantErr: `app "wiki" rule "eng": paths[0]: must start with "/" (or "=/" for an exact path)`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[0]", Msg: `must start with "/" (or "=/" for an exact path)`},
		},
		{
			name:    "dot-dot",
			apps:    one(Rule{Name: "eng", Paths: []string{"/a/../admin"}}),
			wantErr: `app "wiki" rule "eng": paths[0]: "/a/../admin" is not canonical: contains ".."`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[0]", Msg: `"/a/../admin" is not canonical: contains ".."`},
		},
		{
			name:    "double slash",
			apps:    one(Rule{Name: "eng", Paths: []string{"//admin"}}),
			wantErr: `app "wiki" rule "eng": paths[0]: "//admin" is not canonical: contains "//"`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[0]", Msg: `"//admin" is not canonical: contains "//"`},
		},
		{
			name:    "backslash",
			apps:    one(Rule{Name: "eng", Paths: []string{`/a\b`}}),
			wantErr: `app "wiki" rule "eng": paths[0]: "/a\\b" is not canonical: contains "\\"`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[0]", Msg: `"/a\\b" is not canonical: contains "\\"`},
		},
		{
			name:    "percent-encoding",
			apps:    one(Rule{Name: "eng", Paths: []string{"/a%2Fb"}}),
			wantErr: `app "wiki" rule "eng": paths[0]: "/a%2Fb" is not canonical: contains "%"`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[0]", Msg: `"/a%2Fb" is not canonical: contains "%"`},
		},
		{
			name:    "query",
			apps:    one(Rule{Name: "eng", Paths: []string{"/a?b=1"}}),
			wantErr: `app "wiki" rule "eng": paths[0]: "/a?b=1" is not canonical: contains "?"`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[0]", Msg: `"/a?b=1" is not canonical: contains "?"`},
		},
		{
			name:    "dot segment",
			apps:    one(Rule{Name: "eng", Paths: []string{"/a/./b"}}),
			wantErr: `app "wiki" rule "eng": paths[0]: "/a/./b" is not canonical: contains a "." segment`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[0]", Msg: `"/a/./b" is not canonical: contains a "." segment`},
		},
		{
			name:    "trailing dot segment",
			apps:    one(Rule{Name: "eng", Paths: []string{"=/a/."}}),
			wantErr: `app "wiki" rule "eng": paths[0]: "=/a/." is not canonical: contains a "." segment`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[0]", Msg: `"=/a/." is not canonical: contains a "." segment`},
		},
		{
			name:    "space",
			apps:    one(Rule{Name: "eng", Paths: []string{"/a b"}}),
			wantErr: `app "wiki" rule "eng": paths[0]: "/a b" contains a space or control character`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[0]", Msg: `"/a b" contains a space or control character`},
		},
		{
			name:    "prefix with trailing slash",
			apps:    one(Rule{Name: "eng", Paths: []string{"/admin/"}}),
			wantErr: `app "wiki" rule "eng": paths[0]: "/admin/" has a trailing "/": write "/admin", which matches it and everything below it, or "=/admin/" for exactly this path`,
			want:    RuleError{App: "wiki", Rule: 0, RuleName: "eng", Field: "paths[0]", Msg: `"/admin/" has a trailing "/": write "/admin", which matches it and everything below it, or "=/admin/" for exactly this path`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := compileApps(tt.apps)
			if err == nil {
				t.Fatalf("Compile succeeded, want error %q", tt.wantErr)
			}
			if p != nil {
				t.Errorf("Compile returned a policy with its error")
			}
			if err.Error() != tt.wantErr {
				t.Errorf("error\n got %s\nwant %s", err, tt.wantErr)
			}
			var re *RuleError
			if !errors.As(err, &re) {
				t.Fatalf("error is %T, want *RuleError", err)
			}
			if *re != tt.want {
				t.Errorf("RuleError\n got %+v\nwant %+v", *re, tt.want)
			}
		})
	}
}

// compileApps compiles a policy of app rules only, as the foundation's
// config had them.
func compileApps(apps []AppRules) (*Policy, error) {
	return Compile(&Source{Apps: apps}, Options{})
}

func TestCompileAccepts(t *testing.T) {
	tests := []struct {
		name string
		apps []AppRules
	}{
		{"no apps", nil},
		{"app without rules", []AppRules{{App: "closed"}}},
		{"rule without conditions", []AppRules{{App: "a", Rules: []Rule{{Name: "all"}}}}},
		{"explicit allow and deny", []AppRules{{App: "a", Rules: []Rule{{Name: "x", Action: "allow"}, {Name: "y", Action: "deny"}}}}},
		{"extension and lower-case methods", []AppRules{{App: "a", Rules: []Rule{{Name: "x", Methods: []string{"get", "PROPFIND", "m-search"}}}}}},
		{"root, prefix, exact and exact-with-slash paths", []AppRules{{App: "a", Rules: []Rule{{Name: "x", Paths: []string{"/", "/api", "=/", "=/docs/", "/a.b", "/.well-known/x"}}}}}},
		{"unicode names and entries", []AppRules{{App: "위키", Rules: []Rule{{Name: "엔지니어링", Groups: []string{"idp:개발팀"}, Users: []string{"Émile@example.com"}}}}}},
		{"duplicate entries", []AppRules{{App: "a", Rules: []Rule{{Name: "x", Users: []string{"u", "u"}, Groups: []string{"idp:g", "idp:g"}}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := compileApps(tt.apps)
			if err != nil || p == nil {
				t.Fatalf("Compile = %v, %v; want a policy", p, err)
			}
		})
	}
}

// TestCompileRetainsNothing checks that the policy is a snapshot: a config
// struct edited after Compile (say, by a reload that reuses it) must not
// change decisions.
func TestCompileRetainsNothing(t *testing.T) {
	apps := []AppRules{{App: "wiki", Rules: []Rule{{
		Name: "eng", Groups: []string{"idp:eng"}, Users: []string{"u1"}, Methods: []string{"GET"}, Paths: []string{"/docs"},
	}}}}
	p, err := compileApps(apps)
	if err != nil {
		t.Fatal(err)
	}
	req := Request{App: "wiki", Subject: Subject{User: "u1", Groups: []string{"eng"}}, Method: "GET", Path: "/docs/x"}
	before := p.Decide(req)
	if !before.Allow {
		t.Fatalf("before: %+v, want allow", before)
	}
	r := &apps[0].Rules[0]
	r.Name, r.Action = "changed", "deny"
	r.Groups[0], r.Users[0], r.Methods[0], r.Paths[0] = "x", "x", "PUT", "/x"
	apps[0].App = "other"
	if after := p.Decide(req); after != before {
		t.Errorf("after editing the input: %+v, want %+v", after, before)
	}
}
