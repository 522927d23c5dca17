package groups

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// goldenFile is the format of testdata/*.yaml: a policy file and the
// decisions it must make. Unknown fields are errors, so a typo cannot
// silently drop a condition from a case.
type goldenFile struct {
	Policy File         `yaml:"policy"`
	Cases  []goldenCase `yaml:"cases"`
}

type goldenCase struct {
	Name       string            `yaml:"name"`
	User       string            `yaml:"user"`
	Email      string            `yaml:"email"`
	Groups     []string          `yaml:"groups"`
	Attributes map[string]string `yaml:"attributes"`
	Device     *goldenDevice     `yaml:"device"`
	Source     string            `yaml:"source"`
	Time       string            `yaml:"time"`
	App        string            `yaml:"app"`
	Method     string            `yaml:"method"`
	Path       string            `yaml:"path"`
	Want       string            `yaml:"want"`   // "allow" or "deny"
	Rule       string            `yaml:"rule"`   // the deciding rule; "" (or absent) for a deny by no rule
	Reason     string            `yaml:"reason"` // a substring of Decision.Reason
}

type goldenDevice struct {
	ID       string   `yaml:"id"`
	Platform string   `yaml:"platform"`
	Profiles []string `yaml:"profiles"`
}

// goldenTime is when a case happens unless it says: a Monday morning in
// Seoul.
var goldenTime = time.Date(2026, 11, 23, 10, 0, 0, 0, time.FixedZone("KST", 9*3600))

// goldenCountries is the golden runner's GeoIP: a fixed table (GeoIP itself
// is tested against a real MaxMind database in geoip_test.go).
type goldenCountries map[netip.Prefix]string

func (g goldenCountries) Country(a netip.Addr) (string, bool) {
	for p, c := range g {
		if p.Contains(a) {
			return c, true
		}
	}
	return "", false
}

var goldenGeo = goldenCountries{
	netip.MustParsePrefix("203.0.113.0/24"):  "KR",
	netip.MustParsePrefix("198.51.100.0/24"): "US",
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

// request builds the Request a golden case describes.
func (c *goldenCase) request(t *testing.T) Request {
	t.Helper()
	req := Request{
		App:     c.App,
		Subject: Subject{User: c.User, Email: c.Email, Groups: c.Groups, Attributes: c.Attributes},
		Method:  c.Method,
		Path:    c.Path,
		Time:    goldenTime,
	}
	if c.Device != nil {
		req.Device = &Device{ID: c.Device.ID, Platform: c.Device.Platform, Profiles: c.Device.Profiles}
	}
	if c.Source != "" {
		a, err := netip.ParseAddr(c.Source)
		if err != nil {
			t.Fatalf("source: %v", err)
		}
		req.Source = a
	}
	if c.Time != "" {
		tm, err := time.Parse(time.RFC3339, c.Time)
		if err != nil {
			t.Fatalf("time: %v", err)
		}
		req.Time = tm
	}
	return req
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
			var src Source
			src.AddFile(nil, &g.Policy)
			p, err := Compile(&src, Options{GeoIP: goldenGeo})
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
					req := c.request(t)
					got := p.Decide(req)
					if got.Allow != (c.Want == "allow") || got.Rule != c.Rule || !strings.Contains(got.Reason, c.Reason) {
						t.Errorf("%s %s %s as user=%q email=%q groups=%q attrs=%v:\n got %s rule=%q reason=%q\nwant %s rule=%q reason containing %q",
							c.App, c.Method, c.Path, c.User, c.Email, c.Groups, c.Attributes,
							verdict(got.Allow), got.Rule, got.Reason, c.Want, c.Rule, c.Reason)
					}
					// Explain must tell the same story as Decide.
					if x := p.Explain(req); x.Decision != got {
						t.Errorf("Explain decided %+v, Decide %+v", x.Decision, got)
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
