package groups

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// goldenFile is the format of testdata/*.yaml: a policy and the decisions it
// must make. Unknown fields are errors, so a typo cannot silently drop a
// condition from a case.
type goldenFile struct {
	Policy []AppRules   `yaml:"policy"`
	Cases  []goldenCase `yaml:"cases"`
}

type goldenCase struct {
	Name   string   `yaml:"name"`
	User   string   `yaml:"user"`
	Email  string   `yaml:"email"`
	Groups []string `yaml:"groups"`
	App    string   `yaml:"app"`
	Method string   `yaml:"method"`
	Path   string   `yaml:"path"`
	Want   string   `yaml:"want"`   // "allow" or "deny"
	Rule   string   `yaml:"rule"`   // the deciding rule; "" (or absent) for a deny by no rule
	Reason string   `yaml:"reason"` // a substring of Decision.Reason
}

func loadGolden(t *testing.T, file string) goldenFile {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	var g goldenFile
	if err := dec.Decode(&g); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if err := dec.Decode(new(any)); !errors.Is(err, io.EOF) {
		t.Fatalf("%s: want exactly one YAML document (err %v)", file, err)
	}
	if len(g.Cases) == 0 {
		t.Fatalf("%s: no cases", file)
	}
	for i, c := range g.Cases {
		// Every case spells out what it checks; defaults would hide it.
		if c.Name == "" || c.App == "" || c.Method == "" || c.Path == "" || c.Reason == "" {
			t.Fatalf("%s: cases[%d] %q: name, app, method, path and reason are required", file, i, c.Name)
		}
		if c.Want != "allow" && c.Want != "deny" {
			t.Fatalf("%s: cases[%d] %q: want must be allow or deny, not %q", file, i, c.Name, c.Want)
		}
	}
	return g
}

func TestGoldenDecisions(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata/*.yaml files")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			g := loadGolden(t, file)
			p, err := Compile(g.Policy)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			seen := map[string]bool{}
			for _, c := range g.Cases {
				if seen[c.Name] {
					t.Fatalf("duplicate case name %q", c.Name)
				}
				seen[c.Name] = true
				t.Run(c.Name, func(t *testing.T) {
					req := Request{
						App:     c.App,
						Subject: Subject{User: c.User, Email: c.Email, Groups: c.Groups},
						Method:  c.Method,
						Path:    c.Path,
					}
					got := p.Decide(req)
					if got.Allow != (c.Want == "allow") || got.Rule != c.Rule || !strings.Contains(got.Reason, c.Reason) {
						t.Errorf("%s %s %s as user=%q email=%q groups=%q:\n got %s rule=%q reason=%q\nwant %s rule=%q reason containing %q",
							c.App, c.Method, c.Path, c.User, c.Email, c.Groups,
							verdict(got.Allow), got.Rule, got.Reason, c.Want, c.Rule, c.Reason)
					}
				})
			}
		})
	}
}

func verdict(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}
