package groups

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ztna-dev/ztna/internal/config"
)

// FuzzCompilePolicy feeds arbitrary policy files through the loader and
// the compiler: neither may panic, every rejection is an error that names
// where it is, and a policy that compiles decides without panicking and
// agrees with Explain.
func FuzzCompilePolicy(f *testing.F) {
	// The golden files' policies are the seeds.
	seeds, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	for _, s := range seeds {
		var g struct {
			Policy yaml.Node `yaml:"policy"`
		}
		if b, err := os.ReadFile(s); err == nil && yaml.Unmarshal(b, &g) == nil {
			if out, err := yaml.Marshal(&g.Policy); err == nil {
				f.Add(out)
			}
		}
	}
	f.Add([]byte("groups:\n  - {name: a, include: [b]}\n  - {name: b, include: [a]}\n"))
	f.Add([]byte("apps:\n  - app: x\n    rules:\n      - {name: r, paths: [\"/a/**/b\"], time: [{days: [fri-mon], from: \"22:00\", to: \"06:00\", zone: Asia/Seoul}]}\n"))
	subjects := []Subject{
		{User: "u-kim", Attributes: map[string]string{"department": "Security Tech", "title": "Security Engineer"}},
		{User: "u-x", Email: "x@example.com", Groups: []string{"engineering", "contractors"}},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var file File
		doc, err := config.Parse("fuzz.yaml", data, &file)
		if err != nil {
			return
		}
		var src Source
		src.AddFile(doc, &file)
		p, err := Compile(&src, Options{GeoIP: goldenGeo})
		if err != nil {
			var fe *config.FieldError
			if !errors.As(err, &fe) || fe.File != "fuzz.yaml" {
				t.Fatalf("error %v (%T) does not name the file", err, err)
			}
			return
		}
		if p.Version() == "" {
			t.Fatal("compiled policy without a version")
		}
		for _, ar := range file.Apps {
			for _, s := range subjects {
				for _, dev := range []*Device{nil, {ID: "d", Platform: "linux", Profiles: []string{"strict"}}} {
					r := Request{App: ar.App, Subject: s, Device: dev, Method: "GET", Path: "/a/b",
						Source: netip.MustParseAddr("203.0.113.9"), Time: time.Date(2026, 3, 8, 2, 30, 0, 0, time.UTC)}
					d := p.Decide(r)
					if d.Reason == "" {
						t.Fatalf("%+v: decision without a reason", r)
					}
					if x := p.Explain(r); x.Decision != d {
						t.Fatalf("%+v: Explain %+v, Decide %+v", r, x.Decision, d)
					}
				}
			}
		}
	})
}
