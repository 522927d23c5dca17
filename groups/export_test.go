package groups

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/config"
)

// exportConfig is the part of the edge config file that holds policy, as
// proxy's Config has it: groups, and apps that carry their rules.
type exportConfig struct {
	Listen string  `yaml:"listen"`
	Groups []Group `yaml:"groups"`
	Apps   []struct {
		Name     string `yaml:"name"`
		Host     string `yaml:"host"`
		Upstream string `yaml:"upstream"`
		Rules    []Rule `yaml:"rules"`
	} `yaml:"apps"`
	Policy struct {
		Dir string `yaml:"dir"`
	} `yaml:"policy"`
}

// exportTree is a checkout: a config file and a policy directory.
var exportTree = map[string]string{
	"ztna.yaml": `# Edge config
listen: ":8443"
groups:
  - name: admins   # the on-call admins
    members: [alice@example.com]
apps:
  - name: wiki
    host: wiki.corp.example
    upstream: http://127.0.0.1:8080
    rules:
      - name: staff
        groups: [eng]
  - rules: [{name: ops-only, groups: ["idp:ops"]}]
    name: grafana
    host: grafana.corp.example
    upstream: http://127.0.0.1:3000
  - name: ssh
    host: ssh.corp.example
    upstream: http://127.0.0.1:2222
policy:
  dir: policy
`,
	"policy/groups.yaml": `# Groups owned by the security team.
groups:
  # Engineers, by department.
  - name: eng
    description: Engineering
    when: user.department == "Engineering"

  # Operations: on-call staff.
  - name: ops
    members:
      - bob@example.com
      - carol@example.com

  # Security engineers.
  - name: sec
    when: user.department == "Security Tech"
    include: [ops]
`,
	"policy/wiki.yaml": `apps:
  # The wiki's extra rules.
  - app: wiki
    rules:
      - name: no-deletes
        action: deny
        methods: [DELETE]
  - app: grafana
    rules: []
# trailing note
`,
	"policy/git.yaml": `apps:
  - app: git   # the code host
    rules:
      - name: eng-read
        groups: [eng]
        methods: [GET]
`,
}

// hostile is text a console user could type: HTML, quotes, YAML syntax.
const hostile = `<script>alert("x")</script> 'q' # not a comment: {a: [b]} &anchor *alias !tag | > - @ % ` + "`"

func TestExportDiff(t *testing.T) {
	tests := []struct {
		name   string
		tree   map[string]string // default exportTree
		change Change
		files  []string          // the files the diff must touch, in order
		drop   []string          // comment lines the change removes
		want   map[string]string // whole files after the change, where it helps to read them
	}{
		{
			name:   "edit a group in the middle of a list",
			change: Change{OldName: "ops", Group: &Group{Name: "ops", Description: "On call", Members: []string{"bob@example.com", "dave@example.com"}}},
			files:  []string{"policy/groups.yaml"},
			want: map[string]string{"policy/groups.yaml": `# Groups owned by the security team.
groups:
  # Engineers, by department.
  - name: eng
    description: Engineering
    when: user.department == "Engineering"

  # Operations: on-call staff.
  - name: ops
    description: On call
    members:
      - bob@example.com
      - dave@example.com

  # Security engineers.
  - name: sec
    when: user.department == "Security Tech"
    include: [ops]
`},
		},
		{
			name: "comments inside the changed group stay with what is still there",
			tree: withFile("policy/groups.yaml", `groups:
  # Operations.
  - name: ops   # on call
    # People, by email.
    members:
      - bob@example.com   # until June
      # - zoe@example.com
      - carol@example.com
    include: ["idp:sre"]
  # Next.
  - name: eng
    when: user.department == "Engineering"
`),
			change: Change{OldName: "ops", Group: &Group{Name: "ops", Members: []string{"carol@example.com", "bob@example.com", "dave@example.com"}}},
			files:  []string{"policy/groups.yaml"},
			want: map[string]string{"policy/groups.yaml": `groups:
  # Operations.
  - name: ops # on call
    # People, by email.
    members:
      # - zoe@example.com
      - carol@example.com
      - bob@example.com # until June
      - dave@example.com
  # Next.
  - name: eng
    when: user.department == "Engineering"
`},
		},
		{
			name:   "rename a group written with a flow-style list",
			change: Change{OldName: "sec", Group: &Group{Name: "security", When: `user.department == "Security Tech"`, Include: []string{"ops", "admins"}}},
			files:  []string{"policy/groups.yaml"},
		},
		{
			name:   "edit a group of the config file, with a comment on its line",
			change: Change{OldName: "admins", Group: &Group{Name: "admins", Members: []string{"alice@example.com", "erin@example.com"}}},
			files:  []string{"ztna.yaml"},
		},
		{
			name:   "add a group to the file with the most groups",
			change: Change{Group: &Group{Name: "contractors", When: `user.type == "contractor"`}},
			files:  []string{"policy/groups.yaml"},
		},
		{
			name:   "remove a group with its head comment",
			change: Change{RemoveGroup: "ops"},
			tree:   withFile("policy/groups.yaml", strings.Replace(exportTree["policy/groups.yaml"], "include: [ops]", "include: [eng]", 1)),
			files:  []string{"policy/groups.yaml"},
			drop:   []string{"# Operations: on-call staff."},
			want: map[string]string{"policy/groups.yaml": `# Groups owned by the security team.
groups:
  # Engineers, by department.
  - name: eng
    description: Engineering
    when: user.department == "Engineering"

  # Security engineers.
  - name: sec
    when: user.department == "Security Tech"
    include: [eng]
`},
		},
		{
			name:   "remove the last group of a list",
			change: Change{RemoveGroup: "sec"},
			files:  []string{"policy/groups.yaml"},
			drop:   []string{"# Security engineers."},
		},
		{
			name:   "remove the only group of the config file",
			change: Change{RemoveGroup: "admins"},
			files:  []string{"ztna.yaml"},
		},
		{
			name:   "app rules in a policy file",
			change: Change{App: "git", Rules: []Rule{{Name: "eng-read", Groups: []string{"eng"}, Methods: []string{"GET", "HEAD"}}, {Name: "ops-push", Groups: []string{"ops"}}}},
			files:  []string{"policy/git.yaml"},
			want: map[string]string{"policy/git.yaml": `apps:
  - app: git   # the code host
    rules:
      - name: eng-read
        groups: [eng]
        methods: [GET, HEAD]
      - name: ops-push
        groups:
          - ops
`},
		},
		{
			name:   "app rules of the config file written in flow style on the item's first line",
			change: Change{App: "grafana", Rules: []Rule{{Name: "ops-only", Groups: []string{"idp:ops", "sec"}}}},
			files:  []string{"ztna.yaml"}, // its entry in wiki.yaml is already empty
		},
		{
			name:   "app rules in several files: the first gets them all, the others are emptied",
			change: Change{App: "wiki", Rules: []Rule{{Name: "staff", Groups: []string{"eng", "ops"}}, {Name: "no-deletes", Action: ActionDeny, Methods: []string{"DELETE"}}}},
			files:  []string{"policy/wiki.yaml", "ztna.yaml"},
		},
		{
			name:   "app rules added to a config app that had none",
			change: Change{App: "ssh", Rules: []Rule{{Name: "admins", Groups: []string{"admins"}, DeviceRequired: true}}},
			files:  []string{"ztna.yaml"},
			want: map[string]string{"ztna.yaml": strings.Replace(exportTree["ztna.yaml"], "    upstream: http://127.0.0.1:2222\n",
				"    upstream: http://127.0.0.1:2222\n    rules:\n      - name: admins\n        groups:\n          - admins\n        device_required: true\n", 1)},
		},
		{
			name:   "an app with no entry gets one in the policy file with the most",
			change: Change{App: "jira", Rules: []Rule{{Name: "everyone"}}},
			files:  []string{"policy/wiki.yaml"},
		},
		{
			name:   "all rules of an app removed",
			change: Change{App: "git", Rules: nil},
			files:  []string{"policy/git.yaml"},
		},
		{
			name:   "a first group in a file with none and no final newline",
			tree:   map[string]string{"policy/apps.yaml": "# Apps only.\napps:\n  - app: wiki\n    rules:\n      - name: all\n# end"},
			change: Change{Group: &Group{Name: "eng", Members: []string{"u1"}}},
			files:  []string{"policy/apps.yaml"},
			want:   map[string]string{"policy/apps.yaml": "# Apps only.\napps:\n  - app: wiki\n    rules:\n      - name: all\n# end\ngroups:\n  - name: eng\n    members:\n      - u1\n"},
		},
		{
			name:   "add to an indentless list",
			tree:   map[string]string{"policy/p.yaml": "groups:\n- name: a\n  members: [u]\n- name: b\n  members: [v]\n# apps\napps:\n- app: wiki\n  rules:\n  - name: r\n    groups: [a]\n"},
			change: Change{Group: &Group{Name: "c", Include: []string{"a", "b"}}},
			files:  []string{"policy/p.yaml"},
			want:   map[string]string{"policy/p.yaml": "groups:\n- name: a\n  members: [u]\n- name: b\n  members: [v]\n- name: c\n  include:\n    - a\n    - b\n# apps\napps:\n- app: wiki\n  rules:\n  - name: r\n    groups: [a]\n"},
		},
		{
			name:   "edit rules in an indentless list",
			tree:   map[string]string{"policy/p.yaml": "groups:\n- name: a\n  members: [u]\napps:\n- app: wiki\n  rules:\n  - name: r\n    groups: [a]\n- app: git\n"},
			change: Change{App: "wiki", Rules: []Rule{{Name: "r", Groups: []string{"a"}, Paths: []string{"/api"}}}},
			files:  []string{"policy/p.yaml"},
			want:   map[string]string{"policy/p.yaml": "groups:\n- name: a\n  members: [u]\napps:\n- app: wiki\n  rules:\n    - name: r\n      groups: [a]\n      paths:\n        - /api\n- app: git\n"},
		},
		{
			name:   "a group list that was empty",
			tree:   map[string]string{"policy/p.yaml": "groups: []   # none yet\napps:\n  - app: wiki\n"},
			change: Change{Group: &Group{Name: "eng", Members: []string{"u1"}}},
			files:  []string{"policy/p.yaml"},
		},
		{
			name:   "hostile text is quoted and comes back as written",
			change: Change{Group: &Group{Name: `ops: "#1" <b>x</b>`, Description: hostile, Members: []string{hostile, "yes", "null", "1.5", "- x", "~", "0x1F", "2024-01-01"}}},
			files:  []string{"policy/groups.yaml"},
		},
		{
			name: "hostile text replacing a group",
			change: Change{OldName: "eng", Group: &Group{Name: "eng", Description: "line 1\n  line 2\n\n# line 4 ---\n...",
				When: `user.title == "a: b <b>x</b>" or user.x in ["- y", "{z}", "&q", "*r", "!s", "%t", "@u"]`}},
			files: []string{"policy/groups.yaml"},
		},
		{
			name:   "nothing to change",
			change: Change{OldName: "eng", Group: &Group{Name: "eng", Description: "Engineering", When: `user.department == "Engineering"`}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tree := tt.tree
			if tree == nil {
				tree = exportTree
			}
			root := writeExportTree(t, tree)
			before := loadExportTree(t, root)
			if _, err := Compile(before, Options{}); err != nil {
				t.Fatalf("the tree does not compile before the change: %v", err)
			}

			diff, err := before.ExportDiff(tt.change, root)
			if err != nil {
				t.Fatalf("ExportDiff: %v", err)
			}
			t.Logf("diff:\n%s", diff)
			if got := diffFiles(diff); !reflect.DeepEqual(got, tt.files) {
				t.Fatalf("diff touches %q, want %q:\n%s", got, tt.files, diff)
			}
			if diff == "" {
				return
			}
			applyDiff(t, root, diff)

			after := loadExportTree(t, root)
			if _, err := Compile(after, Options{}); err != nil {
				t.Fatalf("the tree does not compile after the change: %v\n%s", err, diff)
			}
			checkChanged(t, before, after, tt.change)
			for name, want := range tt.want {
				if got := readFile(t, filepath.Join(root, name)); got != want {
					t.Errorf("%s after the change:\n%s\nwant:\n%s\ndiff:\n%s", name, got, want, diff)
				}
			}
			// Every comment line survives, except those that went with a
			// removed item.
			for name, content := range tree {
				got := readFile(t, filepath.Join(root, name))
				for _, l := range strings.Split(content, "\n") {
					if c := strings.TrimSpace(l); strings.HasPrefix(c, "#") && !strings.Contains(got, l) != contains(tt.drop, c) {
						t.Errorf("%s: comment %q: kept %v, want kept %v\n%s", name, c, strings.Contains(got, l), !contains(tt.drop, c), got)
					}
				}
			}
		})
	}
}

func TestExportDiffErrors(t *testing.T) {
	flow := map[string]string{"policy/p.yaml": "groups: [{name: a, members: [u]}, {name: b, members: [v]}]\n"}
	anchored := map[string]string{"policy/p.yaml": "groups:\n  - name: a\n    members: &m [u]\n  - name: b\n    members: *m\n"}
	builtInGo := func(s *Source) {
		s.Groups = append(s.Groups, Group{Name: "go", Members: []string{"u"}})
		s.Apps = append(s.Apps, AppRules{App: "goapp", Rules: []Rule{{Name: "r"}}})
	}
	tests := []struct {
		name   string
		tree   map[string]string
		extra  func(*Source)
		change Change
		want   string // a part of the error
	}{
		{"empty change", nil, nil, Change{}, "the change is empty"},
		{"group and app at once", nil, nil, Change{App: "wiki", Group: &Group{Name: "x"}}, "either a group or an app"},
		{"remove and add at once", nil, nil, Change{RemoveGroup: "eng", Group: &Group{Name: "x"}}, "changes nothing else"},
		{"rules without an app", nil, nil, Change{Group: &Group{Name: "x", Members: []string{"u"}}, Rules: []Rule{{Name: "r"}}}, "Rules need App"},
		{"unnamed group", nil, nil, Change{Group: &Group{Members: []string{"u"}}}, "group name: required"},
		{"unknown group", nil, nil, Change{OldName: "nope", Group: &Group{Name: "nope"}}, `no group "nope" to change`},
		{"remove an unknown group", nil, nil, Change{RemoveGroup: "nope"}, `no group "nope" to remove`},
		{"add a group that exists", nil, nil, Change{Group: &Group{Name: "eng", Members: []string{"u"}}}, `a group named "eng" already exists`},
		{"rename onto another group", nil, nil, Change{OldName: "eng", Group: &Group{Name: "ops", Members: []string{"u"}}}, `cannot rename group "eng" to "ops"`},
		{"group built in Go", nil, builtInGo, Change{OldName: "go", Group: &Group{Name: "go", Members: []string{"v"}}}, `group "go" was not written in a file`},
		{"removing a group built in Go", nil, builtInGo, Change{RemoveGroup: "go"}, `group "go" was not written in a file`},
		{"app rules built in Go", nil, builtInGo, Change{App: "goapp", Rules: []Rule{{Name: "s"}}}, `the rules of app "goapp" were not written in a file`},
		{"flow-style group list", flow, nil, Change{OldName: "a", Group: &Group{Name: "a", Members: []string{"w"}}}, "flow-style"},
		{"add to a flow-style group list", flow, nil, Change{Group: &Group{Name: "c", Members: []string{"w"}}}, "flow-style"},
		{"an anchor another group uses", anchored, nil, Change{OldName: "a", Group: &Group{Name: "a", Members: []string{"w"}}}, "would not parse"},
		{"CRLF", map[string]string{"policy/p.yaml": "groups:\r\n  - name: a\r\n    members: [u]\r\n"}, nil,
			Change{OldName: "a", Group: &Group{Name: "a", Members: []string{"w"}}}, "line endings"},
		{"app in a flow-style config entry", map[string]string{"ztna.yaml": "apps:\n  - {name: wiki, host: w, upstream: http://x, rules: [{name: r}]}\n"}, nil,
			Change{App: "wiki", Rules: []Rule{{Name: "s"}}}, "cannot be edited in place"},
		{"a new app with only the config file", map[string]string{"ztna.yaml": "apps:\n  - name: wiki\n    host: w\n    upstream: http://x\n"}, nil,
			Change{App: "jira", Rules: []Rule{{Name: "s"}}}, "no policy file to add them to"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tree := tt.tree
			if tree == nil {
				tree = exportTree
			}
			src := loadExportTree(t, writeExportTree(t, tree))
			if tt.extra != nil {
				tt.extra(src)
			}
			diff, err := src.ExportDiff(tt.change, "")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ExportDiff = %q, %v; want an error containing %q", diff, err, tt.want)
			}
			if diff != "" {
				t.Errorf("a diff with the error: %q", diff)
			}
		})
	}

	// A Source with no file at all has nowhere to put a new group.
	var s Source
	if _, err := s.ExportDiff(Change{Group: &Group{Name: "a", Members: []string{"u"}}}, ""); err == nil ||
		!strings.Contains(err.Error(), "not read from any file") {
		t.Errorf("no files: %v", err)
	}
}

func TestExportPath(t *testing.T) {
	tests := []struct {
		file, base, want string
	}{
		{"/repo/policy/a.yaml", "/repo", "policy/a.yaml"},
		{"/repo/policy/a.yaml", "/repo/", "policy/a.yaml"},
		{"/etc/ztna/ztna.yaml", "/repo", "/etc/ztna/ztna.yaml"},
		{"/repo2/a.yaml", "/repo", "/repo2/a.yaml"},
		{"policy/a.yaml", "", "policy/a.yaml"},
		{"/repo/../x/a.yaml", "/repo", "/repo/../x/a.yaml"},
	}
	for _, tt := range tests {
		if got, err := exportPath(tt.file, tt.base); err != nil || got != tt.want {
			t.Errorf("exportPath(%q, %q) = %q, %v; want %q", tt.file, tt.base, got, err, tt.want)
		}
	}
	for _, bad := range []string{"a\n+++ b/evil.yaml", "a\rb", ""} {
		if got, err := exportPath(bad, ""); err == nil {
			t.Errorf("exportPath(%q) = %q, want an error", bad, got)
		}
	}
}

// TestExportPlace checks the re-indentation of encoded YAML, including a
// block scalar whose empty lines must stay empty.
func TestExportPlace(t *testing.T) {
	tests := []struct {
		text, prefix string
		indent       int
		want         string
	}{
		{"- name: a\n  when: x\n", "  ", 2, "  - name: a\n    when: x\n"},
		{"rules: []\n", "  - ", 4, "  - rules: []\n"},
		{"- d: |-\n    a\n\n    b\n", "", 0, "- d: |-\n    a\n\n    b\n"},
		{"- d: |-\n    a\n\n    b\n", "    ", 4, "    - d: |-\n        a\n\n        b\n"},
	}
	for _, tt := range tests {
		if got := exportPlace(tt.text, tt.prefix, tt.indent); got != tt.want {
			t.Errorf("exportPlace(%q, %q, %d) = %q, want %q", tt.text, tt.prefix, tt.indent, got, tt.want)
		}
	}
}

func withFile(name, content string) map[string]string {
	m := make(map[string]string, len(exportTree))
	for k, v := range exportTree {
		m[k] = v
	}
	m[name] = content
	return m
}

func writeExportTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// loadExportTree loads root the way the edge does: the config file's
// policy (if there is one), then the policy directory's files.
func loadExportTree(t *testing.T, root string) *Source {
	t.Helper()
	var src Source
	if _, err := os.Stat(filepath.Join(root, "ztna.yaml")); err == nil {
		var cfg exportConfig
		doc, err := config.Load(filepath.Join(root, "ztna.yaml"), &cfg)
		if err != nil {
			t.Fatal(err)
		}
		rules := make([]AppRules, len(cfg.Apps))
		for i, a := range cfg.Apps {
			rules[i] = AppRules{App: a.Name, Rules: a.Rules}
		}
		src.AddConfig(doc, cfg.Groups, rules)
	}
	if _, err := os.Stat(filepath.Join(root, "policy")); err == nil {
		if err := LoadDir(filepath.Join(root, "policy"), &src); err != nil {
			t.Fatal(err)
		}
	}
	return &src
}

// diffFiles lists the files a diff changes, from its "+++ b/" headers.
func diffFiles(diff string) []string {
	var files []string
	for _, l := range strings.Split(diff, "\n") {
		if p, ok := strings.CutPrefix(l, "+++ b/"); ok {
			files = append(files, p)
		}
	}
	return files
}

// applyDiff applies diff to the tree at root the ways a reviewer would:
// `git apply --check` and `patch -p1` with no fuzz where installed, and
// applyUnified always, and checks they agree.
func applyDiff(t *testing.T, root, diff string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Our own strict applier, one file section at a time.
	want := map[string]string{}
	for _, section := range splitDiff(diff) {
		name := diffFiles(section)[0]
		out, err := applyUnified(section, readFile(t, filepath.Join(root, name)))
		if err != nil {
			t.Fatalf("apply %s: %v\n%s", name, err, section)
		}
		want[name] = out
	}

	if git, err := exec.LookPath("git"); err == nil {
		cmd := exec.CommandContext(ctx, git, "apply", "--check", "-p1", "-")
		cmd.Dir = root
		// Not inside whatever repository holds the temp dir.
		cmd.Env = append(os.Environ(), "GIT_CEILING_DIRECTORIES="+filepath.Dir(root))
		cmd.Stdin = strings.NewReader(diff)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git apply --check: %v\n%s\n%s", err, out, diff)
		}
	} else {
		t.Logf("git is not installed: git apply not tried")
	}
	if patch, err := exec.LookPath("patch"); err == nil {
		cmd := exec.CommandContext(ctx, patch, "-p1", "--batch", "--forward", "--fuzz=0", "--no-backup-if-mismatch")
		cmd.Dir = root
		cmd.Stdin = strings.NewReader(diff)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("patch -p1: %v\n%s\n%s", err, out, diff)
		}
		for name, w := range want {
			if got := readFile(t, filepath.Join(root, name)); got != w {
				t.Fatalf("patch and udiff disagree on %s:\n%s\n---\n%s", name, got, w)
			}
		}
		return
	}
	t.Logf("patch is not installed: applied with applyUnified only")
	for name, w := range want {
		if err := os.WriteFile(filepath.Join(root, name), []byte(w), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// applyUnified applies a one-file unified diff to before, requiring every
// context and deleted line to match exactly (udiff's ApplyUnified takes
// only diffs without context).
func applyUnified(section, before string) (string, error) {
	old := strings.Split(strings.TrimSuffix(before, "\n"), "\n")
	if before == "" {
		old = nil
	}
	var out []string
	pos, newNoEOL, inHunk := 0, false, false
	prev := byte(0)
	for _, l := range strings.Split(strings.TrimSuffix(section, "\n"), "\n") {
		if !inHunk && (strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "+++ ")) {
			continue
		}
		if l == "" {
			return "", fmt.Errorf("empty line in a hunk")
		}
		switch l[0] {
		case '@':
			inHunk = true
			var a, b, c, d int
			if _, err := fmt.Sscanf(l, "@@ -%d,%d +%d,%d @@", &a, &b, &c, &d); err != nil {
				if _, err := fmt.Sscanf(l, "@@ -%d +%d,%d @@", &a, &c, &d); err != nil {
					return "", fmt.Errorf("bad hunk header %q", l)
				}
				b = 1
			}
			start := a - 1
			if b == 0 {
				start = a
			}
			if start < pos || start > len(old) {
				return "", fmt.Errorf("hunk %q out of order or range", l)
			}
			out = append(out, old[pos:start]...)
			pos = start
		case ' ', '-':
			if pos >= len(old) || old[pos] != l[1:] {
				return "", fmt.Errorf("line %d: %q does not match %q", pos+1, l, strings.Join(old[pos:min(pos+1, len(old))], ""))
			}
			if l[0] == ' ' {
				out = append(out, l[1:])
			}
			pos++
		case '+':
			out = append(out, l[1:])
		case '\\':
			if prev == '+' || prev == ' ' {
				newNoEOL = true
			}
		default:
			return "", fmt.Errorf("unexpected line %q", l)
		}
		prev = l[0]
	}
	if pos < len(old) && !strings.HasSuffix(before, "\n") {
		newNoEOL = true // the unchanged last line still has no newline
	}
	out = append(out, old[pos:]...)
	if len(out) == 0 {
		return "", nil
	}
	res := strings.Join(out, "\n")
	if !newNoEOL {
		res += "\n"
	}
	return res, nil
}

// splitDiff splits a multi-file diff at its "--- " headers.
func splitDiff(diff string) []string {
	var out []string
	for _, l := range strings.SplitAfter(diff, "\n") {
		if strings.HasPrefix(l, "--- a/") || len(out) == 0 {
			out = append(out, "")
		}
		out[len(out)-1] += l
	}
	return out
}

// checkChanged checks that after says what c says and everything else
// says what before said.
func checkChanged(t *testing.T, before, after *Source, c Change) {
	t.Helper()
	wantGroups := map[string]Group{}
	for _, g := range before.Groups {
		wantGroups[g.Name] = g
	}
	switch {
	case c.RemoveGroup != "":
		delete(wantGroups, c.RemoveGroup)
	case c.Group != nil:
		delete(wantGroups, c.OldName)
		wantGroups[c.Group.Name] = *c.Group
	}
	gotGroups := map[string]Group{}
	for _, g := range after.Groups {
		gotGroups[g.Name] = g
	}
	if !reflect.DeepEqual(gotGroups, wantGroups) {
		t.Errorf("groups after the change:\n%#v\nwant\n%#v", gotGroups, wantGroups)
	}

	rulesOf := func(s *Source) map[string][]Rule {
		m := map[string][]Rule{}
		for _, a := range s.Apps {
			m[a.App] = append(m[a.App], a.Rules...)
		}
		return m
	}
	want, got := rulesOf(before), rulesOf(after)
	if c.App != "" {
		want[c.App] = c.Rules
	}
	for app := range mergeKeys(want, got) {
		if w, g := want[app], got[app]; !(len(w) == 0 && len(g) == 0) && !reflect.DeepEqual(w, g) {
			t.Errorf("rules of %s after the change:\n%#v\nwant\n%#v", app, g, w)
		}
	}
}

func mergeKeys(a, b map[string][]Rule) map[string]bool {
	m := map[string]bool{}
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// TestExportDiffLeavesTheSourceAlone: exporting is read-only.
func TestExportDiffLeavesTheSourceAlone(t *testing.T) {
	root := writeExportTree(t, exportTree)
	src := loadExportTree(t, root)
	groups := append([]Group(nil), src.Groups...)
	apps := append([]AppRules(nil), src.Apps...)
	for _, c := range []Change{
		{RemoveGroup: "ops"},
		{Group: &Group{Name: "new", Members: []string{"u"}}},
		{App: "wiki", Rules: []Rule{{Name: "x"}}},
	} {
		if _, err := src.ExportDiff(c, root); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(src.Groups, groups) || !reflect.DeepEqual(src.Apps, apps) {
		t.Error("ExportDiff changed the Source")
	}
	names := []string{}
	for name := range exportTree {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if got := readFile(t, filepath.Join(root, name)); !bytes.Equal([]byte(got), []byte(exportTree[name])) {
			t.Errorf("ExportDiff wrote %s", name)
		}
	}
}
