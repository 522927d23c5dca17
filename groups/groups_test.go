package groups

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ztna-dev/ztna/internal/config"
)

func TestGroupErrors(t *testing.T) {
	tests := []struct {
		name   string
		groups []Group
		rules  []Rule
		want   string // the whole message
	}{
		{"empty group", []Group{{Name: "a"}}, nil, `group "a": a group needs when, members or include`},
		{"no name", []Group{{When: `user.x == "y"`}}, nil, `groups[0]: name: required`},
		{"reserved prefix", []Group{{Name: "idp:eng", Members: []string{"u"}}}, nil,
			`group "idp:eng": name: "idp:eng": the prefix "idp:" is reserved for IdP group claims`},
		{"duplicate", []Group{{Name: "a", Members: []string{"u"}}, {Name: "a", Members: []string{"v"}}}, nil,
			`group "a": name: duplicate group (also groups[0])`},
		{"bad condition", []Group{{Name: "a", When: `user.department = "x"`}}, nil,
			`group "a": when: at column 17: `},
		{"unknown include", []Group{{Name: "a", Include: []string{"bee"}}, {Name: "be", Members: []string{"u"}}}, nil,
			`group "a": include[0]: unknown group "bee" (did you mean "be"?)`},
		{"self include", []Group{{Name: "a", Include: []string{"a"}}}, nil, `group "a": include[0]: a group cannot include itself`},
		{"cycle", []Group{
			{Name: "a", Include: []string{"b"}},
			{Name: "b", Include: []string{"c"}},
			{Name: "c", Include: []string{"a"}},
		}, nil, `group "a": include: include cycle: "a" → "b" → "c" → "a"`},
		{"empty member", []Group{{Name: "a", Members: []string{"u", " "}}}, nil, `group "a": members[1]: " " has leading or trailing spaces`},
		{"rule names an unknown group", []Group{{Name: "eng", Members: []string{"u"}}}, []Rule{{Name: "r", Groups: []string{"engg"}}},
			`app "wiki" rule "r": groups[0]: unknown group "engg" (did you mean "eng"?)`},
		{"rule names an IdP group without the prefix", nil, []Rule{{Name: "r", AllGroups: []string{"engineering"}}},
			`app "wiki" rule "r": all_groups[0]: unknown group "engineering"; define it under groups, or write "idp:engineering" for the IdP's group claim`},
		{"countries without GeoIP", nil, []Rule{{Name: "r", Countries: []string{"KR"}}},
			`app "wiki" rule "r": countries: needs a GeoIP database: set policy.geoip_file in the config`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &Source{Groups: tt.groups, Apps: []AppRules{{App: "wiki", Rules: tt.rules}}}
			p, err := Compile(src, Options{})
			if err == nil || p != nil {
				t.Fatalf("Compile = %v, %v; want error %q", p, err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error\n got %s\nwant %s", err, tt.want)
			}
		})
	}
}

func TestCompileChecksNamesAgainstTheConfig(t *testing.T) {
	src := &Source{Apps: []AppRules{{App: "wiki", Rules: []Rule{{Name: "r", Posture: "strikt"}}}}}
	if _, err := Compile(src, Options{Apps: []string{"wiki"}, Profiles: []string{"strict"}}); err == nil ||
		err.Error() != `app "wiki" rule "r": posture: no posture profile "strikt" is defined in the config (posture.profiles)` {
		t.Errorf("unknown profile: %v", err)
	}
	if _, err := Compile(src, Options{Apps: []string{"git"}}); err == nil ||
		err.Error() != `app "wiki": app: no app of this name is defined in the config` {
		t.Errorf("unknown app: %v", err)
	}
}

// writePolicy writes files (name → content) into a new policy dir.
func writePolicy(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadDirNamesFileLineAndField(t *testing.T) {
	dir := writePolicy(t, map[string]string{
		"groups.yaml": "groups:\n  - name: eng\n    when: user.department == \"Engineering\"\n",
		"team/wiki.yaml": `apps:
  - app: wiki
    rules:
      - name: eng
        groups: [eng]
      - name: bad
        methods: [GET]
        paths: [/ok, "/a/../b"]
`,
	})
	var src Source
	if err := LoadDir(dir, &src); err != nil {
		t.Fatal(err)
	}
	_, err := Compile(&src, Options{})
	var fe *config.FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T), want a *config.FieldError", err, err)
	}
	if fe.File != filepath.Join(dir, "team/wiki.yaml") || fe.Line != 8 || fe.Field != "apps[0].rules[1].paths[1]" {
		t.Errorf("located at %s:%d %s, want team/wiki.yaml:8 apps[0].rules[1].paths[1] (%v)", fe.File, fe.Line, fe.Field, err)
	}

	// A bad condition points at the group's when in its file.
	dir = writePolicy(t, map[string]string{"g.yaml": "groups:\n  - name: ok\n    members: [u]\n  - name: eng\n    when: user.department ==\n"})
	src = Source{}
	if err := LoadDir(dir, &src); err != nil {
		t.Fatal(err)
	}
	_, err = Compile(&src, Options{})
	if !errors.As(err, &fe) || fe.Line != 5 || fe.Field != "groups[1].when" {
		t.Errorf("got %v, want g.yaml:5: groups[1].when", err)
	}
}

func TestLoadDirRules(t *testing.T) {
	t.Run("unknown field", func(t *testing.T) {
		dir := writePolicy(t, map[string]string{"a.yaml": "apps:\n  - app: wiki\n    rules:\n      - name: x\n        grups: [eng]\n"})
		err := LoadDir(dir, &Source{})
		if err == nil || !strings.Contains(err.Error(), "a.yaml:5") || !strings.Contains(err.Error(), "grups") {
			t.Errorf("got %v, want an error at a.yaml:5 naming grups", err)
		}
	})
	t.Run("empty dir", func(t *testing.T) {
		err := LoadDir(writePolicy(t, map[string]string{"README.md": "x", "x_test.yaml": "tests: []\n"}), &Source{})
		if err == nil || !strings.Contains(err.Error(), "no policy files") {
			t.Errorf("got %v, want no policy files", err)
		}
	})
	t.Run("test files, hidden files and directories are skipped", func(t *testing.T) {
		dir := writePolicy(t, map[string]string{
			"a.yaml":            "groups:\n  - {name: a, members: [u]}\n",
			"a_test.yaml":       "this is not a policy file: [",
			".hidden.yaml":      "broken: [",
			".git/config.yaml":  "broken: [",
			"sub/b.yml":         "groups:\n  - {name: b, members: [u]}\n",
			"sub/notes.txt":     "x",
			"sub/.cache/c.yaml": "broken: [",
		})
		var src Source
		if err := LoadDir(dir, &src); err != nil {
			t.Fatal(err)
		}
		if len(src.Groups) != 2 || src.Groups[0].Name != "a" || src.Groups[1].Name != "b" {
			t.Errorf("groups %+v, want a then b", src.Groups)
		}
	})
	t.Run("rules of one app from two files join; names stay unique", func(t *testing.T) {
		dir := writePolicy(t, map[string]string{
			"a.yaml": "apps:\n  - app: wiki\n    rules:\n      - {name: r1}\n",
			"b.yaml": "apps:\n  - app: wiki\n    rules:\n      - {name: r1, action: deny}\n",
		})
		var src Source
		if err := LoadDir(dir, &src); err != nil {
			t.Fatal(err)
		}
		_, err := Compile(&src, Options{})
		if err == nil || !strings.Contains(err.Error(), "b.yaml:4") || !strings.Contains(err.Error(), `duplicate rule name "r1" (also `+filepath.Join(dir, "a.yaml")+`:2 rules[0])`) {
			t.Errorf("got %v", err)
		}
	})
}

func TestVersionFollowsContent(t *testing.T) {
	compile := func(files map[string]string) string {
		t.Helper()
		var src Source
		if err := LoadDir(writePolicy(t, files), &src); err != nil {
			t.Fatal(err)
		}
		p, err := Compile(&src, Options{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Version()
	}
	v1 := compile(map[string]string{"a.yaml": "groups:\n  - {name: a, members: [u]}\n"})
	v2 := compile(map[string]string{"a.yaml": "# a comment changes nothing\ngroups:\n  - name: a\n    members: [u]\n"})
	v3 := compile(map[string]string{"a.yaml": "groups:\n  - {name: a, members: [v]}\n"})
	if v1 == "" || v1 != v2 || v1 == v3 {
		t.Errorf("versions %q %q %q: want the first two equal and the third different", v1, v2, v3)
	}
}

func seedPolicy(t *testing.T) *Policy {
	t.Helper()
	p, err := Compile(&Source{
		Groups: []Group{
			{Name: "security-tech", When: `user.department == "Security Tech"`},
			{Name: "security-policy", When: `user.department == "Security Policy"`},
			{Name: "security-engineers", When: `user.title == "Security Engineer"`},
			{Name: "security", Include: []string{"security-tech", "security-policy"}},
			{Name: "contractors", Include: []string{"idp:contractors"}},
		},
		Apps: []AppRules{
			{App: "a", Rules: []Rule{{Name: "group-a", Groups: []string{"security-tech"}}}},
			{App: "b", Rules: []Rule{{Name: "group-b", Groups: []string{"security-policy"}}}},
			{App: "c", Rules: []Rule{{Name: "group-c", Groups: []string{"security-engineers"}, Methods: []string{"GET"}}}},
			{App: "wiki", Rules: []Rule{
				{Name: "security", Groups: []string{"security"}},
				{Name: "no-contractors", Action: ActionDeny, Groups: []string{"contractors"}},
			}},
			{App: "closed"},
		},
	}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExplain(t *testing.T) {
	p := seedPolicy(t)
	kim := Subject{User: "u-kim", Attributes: map[string]string{"department": "Security Policy", "title": "Policy Manager"}}
	x := p.Explain(Request{App: "wiki", Subject: kim, Method: "GET", Path: "/"})
	if !x.Decision.Allow || x.Decision.Rule != "security" || x.Version != p.Version() {
		t.Fatalf("decision %+v version %q", x.Decision, x.Version)
	}
	want := []GroupExplanation{
		{Name: "security-tech", Member: false, Why: "`user.department == \"Security Tech\"` is false: user.department is \"Security Policy\""},
		{Name: "security-policy", Member: true, Why: "`user.department == \"Security Policy\"` is true: user.department is \"Security Policy\""},
		{Name: "security", Member: true, Why: `includes group "security-policy", which the user is in`},
		{Name: "contractors", Member: false, Why: `in none of the included groups "idp:contractors"`},
	}
	if !slices.Equal(x.Groups, want) {
		t.Errorf("groups:\n got %+v\nwant %+v", x.Groups, want)
	}
	wantRules := []RuleExplanation{
		{Name: "security", Action: "allow", Matched: true, Why: "matches"},
		{Name: "no-contractors", Action: "deny", Matched: false, Why: `the user is in none of the groups "contractors"`},
	}
	if !slices.Equal(x.Rules, wantRules) {
		t.Errorf("rules:\n got %+v\nwant %+v", x.Rules, wantRules)
	}
	out := x.String()
	for _, s := range []string{"ALLOW: allowed by rule \"security\"", "security-policy", "✔ allow security", "policy version " + p.Version()} {
		if !strings.Contains(out, s) {
			t.Errorf("String() lacks %q:\n%s", s, out)
		}
	}

	// A method mismatch is named as the reason the rule did not match.
	x = p.Explain(Request{App: "c", Subject: Subject{User: "u", Attributes: map[string]string{"title": "Security Engineer"}}, Method: "POST", Path: "/"})
	if x.Decision.Allow || len(x.Rules) != 1 || x.Rules[0].Why != "the method is not one of GET" {
		t.Errorf("method mismatch: %+v", x)
	}
	// Requests refused before the rules are explained by the same reason.
	x = p.Explain(Request{App: "nope", Subject: kim, Method: "GET", Path: "/"})
	if x.Decision.Allow || x.Decision.Reason != `no policy for app "nope"` || len(x.Rules) != 0 {
		t.Errorf("unknown app: %+v", x)
	}
}

// TestAppsIsTheOutboundAllowList: an app no rule allows the user is not
// listed; an unconditional deny hides it too.
func TestAppsIsTheOutboundAllowList(t *testing.T) {
	p := seedPolicy(t)
	kimBefore := Subject{User: "u-kim", Attributes: map[string]string{"department": "Security Tech", "title": "Security Engineer"}}
	kimAfter := Subject{User: "u-kim", Attributes: map[string]string{"department": "Security Policy", "title": "Policy Manager"}}
	contractor := Subject{User: "u-c", Groups: []string{"contractors"}, Attributes: map[string]string{"department": "Security Tech"}}
	for _, tt := range []struct {
		name string
		s    Subject
		want []string
	}{
		{"Kim before", kimBefore, []string{"a", "c", "wiki"}},
		{"Kim after", kimAfter, []string{"b", "wiki"}},
		{"a contractor in security-tech is shut out of wiki by the deny", contractor, []string{"a"}},
		{"nobody", Subject{User: "u-x"}, nil},
	} {
		if got := p.Apps(tt.s, nil); !slices.Equal(got, tt.want) {
			t.Errorf("%s: Apps = %q, want %q", tt.name, got, tt.want)
		}
	}
	if got, err := p.Groups(kimBefore, nil); err != nil || !slices.Equal(got, []string{"security-tech", "security-engineers", "security"}) {
		t.Errorf("Groups(Kim before) = %q, %v", got, err)
	}
}

// TestMembershipCacheKeyedByContent: two subjects that differ only in an
// attribute a condition reads get different memberships, through the
// cache, and a reload (a new Policy) starts empty.
func TestMembershipCacheKeyedByContent(t *testing.T) {
	p := seedPolicy(t)
	req := func(dept string) Request {
		return Request{App: "a", Subject: Subject{User: "u-kim", Attributes: map[string]string{"department": dept}}, Method: "GET", Path: "/"}
	}
	for range 3 {
		if !p.Decide(req("Security Tech")).Allow || p.Decide(req("Security Policy")).Allow {
			t.Fatal("cached membership leaked between attribute sets")
		}
	}
	// Length-prefixed fields: moving characters between fields changes the key.
	a := p.cacheKey(nil, &Subject{User: "ab", Email: "c"}, nil)
	b := p.cacheKey(nil, &Subject{User: "a", Email: "bc"}, nil)
	if string(a) == string(b) {
		t.Error("cache keys of different subjects collide")
	}
	// A bounded cache: a full shard is emptied, never grown past the limit.
	c := newMemberCache()
	for i := range maxShardMember*memberShards*2 + 10 {
		c.put([]byte(strings.Repeat("k", i%7)+string(rune(i))), &membership{})
	}
	for i := range c.shards {
		if n := len(c.shards[i].m); n > maxShardMember {
			t.Errorf("shard %d holds %d entries, limit %d", i, n, maxShardMember)
		}
	}
}
