package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

type testRule struct {
	Name    string   `yaml:"name"`
	Methods []string `yaml:"methods"`
	Paths   []string `yaml:"paths"`
}

type testApp struct {
	Name     string            `yaml:"name"`
	Upstream string            `yaml:"upstream"`
	Port     int               `yaml:"port"`
	Timeout  time.Duration     `yaml:"timeout"`
	Rules    []testRule        `yaml:"rules"`
	Labels   map[string]string `yaml:"labels"`
}

type testBase struct {
	Region string `yaml:"region"`
}

type testConfig struct {
	testBase `yaml:",inline"`
	Listen   string        `yaml:"listen"`
	Debug    bool          `yaml:"debug"`
	Drain    time.Duration `yaml:"drain"`
	Apps     []testApp     `yaml:"apps"`
	Extra    any           `yaml:"extra"`
	Ignored  string        `yaml:"-"`
}

const good = `# ztna test config
listen: ":8443"
region: eu
drain: 30s
apps:
  - name: wiki
    upstream: http://127.0.0.1:8080
    timeout: 1m30s
    rules:
      - name: staff
        methods: [GET, HEAD]
      - name: admins
        methods:
          - GET
          - POST
        paths: ["/admin"]
  - name: whoami
    upstream: http://127.0.0.1:8081
    labels: {team: sec, tier: "1"}
extra:
  anything: [1, 2]
`

func TestParseGood(t *testing.T) {
	var c testConfig
	doc, err := Parse("ztna.yaml", []byte(good), &c)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if doc.File() != "ztna.yaml" {
		t.Errorf("File() = %q", doc.File())
	}
	// yaml v3 decodes duration strings into time.Duration natively.
	if c.Drain != 30*time.Second || c.Apps[0].Timeout != 90*time.Second {
		t.Errorf("durations = %v, %v; want 30s, 1m30s", c.Drain, c.Apps[0].Timeout)
	}
	if c.Region != "eu" || c.Listen != ":8443" || len(c.Apps) != 2 ||
		c.Apps[0].Rules[1].Methods[1] != "POST" || c.Apps[1].Labels["tier"] != "1" {
		t.Errorf("decoded %+v", c)
	}
}

func TestLine(t *testing.T) {
	var c testConfig
	doc, err := Parse("ztna.yaml", []byte(good), &c)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want int
	}{
		{"", 2},
		{"listen", 2},
		{"region", 3},
		{"apps", 5},
		{"apps[0]", 6},
		{"apps[0].name", 6},
		{"apps[0].upstream", 7},
		{"apps[0].rules", 9},
		{"apps[0].rules[0].methods", 11},
		{"apps[0].rules[0].methods[1]", 11},
		{"apps[0].rules[1]", 12},
		{"apps[0].rules[1].methods", 13},
		{"apps[0].rules[1].methods[1]", 15},
		{"apps[0].rules[1].paths[0]", 16},
		{"apps[1].labels.tier", 19},
		// Missing paths fall back to the nearest ancestor that exists.
		{"apps[1].rules", 17},
		{"apps[1].rules[0].methods", 17},
		{"apps[0].rules[5].name", 9},
		{"apps[7]", 5},
		{"apps.name", 5},
		{"nothing.here", 2},
		// Malformed paths find nothing.
		{"apps[x]", 0},
		{"apps[0", 0},
		{"apps[-1]", 0},
	}
	for _, tc := range tests {
		if got := doc.Line(tc.path); got != tc.want {
			t.Errorf("Line(%q) = %d, want %d", tc.path, got, tc.want)
		}
	}
	var empty *Doc
	if got := empty.Line("apps"); got != 0 {
		t.Errorf("nil Doc: Line = %d, want 0", got)
	}
}

func TestLineThroughAliasAndMerge(t *testing.T) {
	src := `defaults: &d
  timeout: 5s
  port: 80
apps:
  - <<: *d
    name: a
  - *d
`
	var c struct {
		Defaults testApp   `yaml:"defaults"`
		Apps     []testApp `yaml:"apps"`
	}
	doc, err := Parse("x.yaml", []byte(src), &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Apps[0].Port != 80 || c.Apps[1].Timeout != 5*time.Second {
		t.Fatalf("decoded %+v", c)
	}
	for path, want := range map[string]int{
		"apps[0].name":    6,
		"apps[0].timeout": 2, // written in the anchored mapping
		"apps[1].port":    3,
	} {
		if got := doc.Line(path); got != want {
			t.Errorf("Line(%q) = %d, want %d", path, got, want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string // the complete error text
	}{
		{
			name: "unknown field at nested path",
			src:  "apps:\n  - name: a\n    rules:\n      - name: r\n        metods: [GET]\n",
			want: `ztna.yaml:5: apps[0].rules[0].metods: unknown field (did you mean "methods"?)`,
		},
		{
			name: "unknown field with no close match lists the known ones",
			src:  "apps:\n  - name: a\n    colour: red\n",
			want: "ztna.yaml:3: apps[0].colour: unknown field; known fields: name, upstream, port, timeout, rules, labels",
		},
		{
			name: "unknown top-level field includes inlined fields",
			src:  "regoin: eu\n",
			want: `ztna.yaml:1: regoin: unknown field (did you mean "region"?)`,
		},
		{
			name: "string for an integer",
			src:  "apps:\n  - name: a\n    port: eighty\n",
			want: `ztna.yaml:3: apps[0].port: must be an integer, not the string "eighty"`,
		},
		{
			name: "long string for an integer is clipped by yaml but shown whole",
			src:  "apps:\n  - name: a\n    port: eighty-eight-eighty\n",
			want: `ztna.yaml:3: apps[0].port: must be an integer, not the string "eighty-eight-eighty"`,
		},
		{
			name: "mapping for a list",
			src:  "apps:\n  name: a\n",
			want: "ztna.yaml:2: apps: must be a list, not a mapping",
		},
		{
			name: "list for a string",
			src:  "listen: [a, b]\n",
			want: "ztna.yaml:1: listen: must be a string, not a list",
		},
		{
			name: "bad boolean",
			src:  "debug: maybe\n",
			want: `ztna.yaml:1: debug: must be true or false, not the string "maybe"`,
		},
		{
			name: "duration without unit",
			src:  "drain: 30\n",
			want: `ztna.yaml:1: drain: must be a duration with a unit, like "30s" or "1h30m", not the integer "30"`,
		},
		{
			name: "duration that does not parse",
			src:  "apps:\n  - timeout: 30 seconds\n",
			want: `ztna.yaml:2: apps[0].timeout: must be a duration with a unit, like "30s" or "1h30m", not the string "30 seconds"`,
		},
		{
			name: "mismatch in a flow list picks the right item",
			src:  "apps:\n  - rules: [{name: a}, {name: [x]}]\n",
			want: "ztna.yaml:2: apps[0].rules[1].name: must be a string, not a list",
		},
		{
			name: "duplicate key",
			src:  "listen: a\nregion: eu\nlisten: b\n",
			want: "ztna.yaml:3: listen: duplicate key (first set on line 1)",
		},
		{
			name: "duplicate key in a nested list item",
			src:  "apps:\n  - name: a\n    upstream: x\n    name: b\n",
			want: "ztna.yaml:4: apps[0].name: duplicate key (first set on line 2)",
		},
		{
			name: "duplicate key under a field decoded as any",
			src:  "extra:\n  k: 1\n  k: 2\n",
			want: "ztna.yaml:3: extra.k: duplicate key (first set on line 2)",
		},
		{
			name: "two documents",
			src:  "listen: a\n---\nlisten: b\n",
			want: "ztna.yaml:2: a second YAML document (---) is not allowed; keep everything in one document",
		},
		{
			name: "two documents, the second empty",
			src:  "listen: a\n---\n",
			want: "ztna.yaml:2: a second YAML document (---) is not allowed; keep everything in one document",
		},
		{
			name: "syntax error",
			src:  "listen: a\n  region: eu\n",
			want: "ztna.yaml:2: invalid YAML: mapping values are not allowed in this context",
		},
		{
			name: "tab indentation",
			src:  "apps:\n\t- name: a\n",
			want: "ztna.yaml:2: invalid YAML: found character that cannot start any token",
		},
		{
			name: "empty file",
			src:  "",
			want: "ztna.yaml: file has no YAML content",
		},
		{
			name: "only comments",
			src:  "# nothing yet\n",
			want: "ztna.yaml: file has no YAML content",
		},
		{
			name: "document is not a mapping",
			src:  "- a\n- b\n",
			want: "ztna.yaml:1: must be a mapping, not a list",
		},
		{
			name: "field tagged - is unknown in YAML",
			src:  "ignored: x\n",
			want: "ztna.yaml:1: ignored: unknown field; known fields: region, listen, debug, drain, apps, extra",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c testConfig
			doc, err := Parse("ztna.yaml", []byte(tc.src), &c)
			if err == nil {
				t.Fatalf("Parse succeeded (%+v), want error %q", c, tc.want)
			}
			if doc != nil {
				t.Errorf("Parse returned a Doc with an error")
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n got %s\nwant %s", err, tc.want)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.File != "ztna.yaml" {
				t.Errorf("error %#v is not a *FieldError for ztna.yaml", err)
			}
		})
	}
}

func TestSeveralErrorsOnePerLine(t *testing.T) {
	src := "apps:\n  - name: a\n    port: x\n    colur: red\n  - port: y\n"
	var c testConfig
	_, err := Parse("ztna.yaml", []byte(src), &c)
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	want := []string{
		`ztna.yaml:3: apps[0].port: must be an integer, not the string "x"`,
		"ztna.yaml:4: apps[0].colur: unknown field; known fields: name, upstream, port, timeout, rules, labels",
		`ztna.yaml:5: apps[1].port: must be an integer, not the string "y"`,
	}
	if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", err, strings.Join(want, "\n"))
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Line != 3 || fe.Field != "apps[0].port" {
		t.Errorf("first FieldError = %+v", fe)
	}
}

func TestErrorCountIsBounded(t *testing.T) {
	for name, item := range map[string]string{
		"type errors":    "  - port: x\n",
		"duplicate keys": "  - {name: a, name: b}\n",
	} {
		src := "apps:\n" + strings.Repeat(item, 25)
		var c testConfig
		_, err := Parse("ztna.yaml", []byte(src), &c)
		if err == nil {
			t.Fatalf("%s: Parse succeeded", name)
		}
		lines := strings.Split(err.Error(), "\n")
		if len(lines) != maxErrors+1 || lines[maxErrors] != "ztna.yaml: and 15 more errors" {
			t.Errorf("%s: %d error lines, last %q; want %d, \"ztna.yaml: and 15 more errors\"", name, len(lines), lines[len(lines)-1], maxErrors+1)
		}
	}
}

func TestErrorf(t *testing.T) {
	var c testConfig
	doc, err := Parse("deploy/ztna.yaml", []byte(good), &c)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		doc    *Doc
		path   string
		format string
		args   []any
		want   *FieldError
		text   string
	}{
		{doc, "apps[0].upstream", "must be an %s or %s URL", []any{"http", "https"},
			&FieldError{"deploy/ztna.yaml", 7, "apps[0].upstream", "must be an http or https URL"},
			"deploy/ztna.yaml:7: apps[0].upstream: must be an http or https URL"},
		{doc, "apps[1].host", "required", nil, // missing: points at the app
			&FieldError{"deploy/ztna.yaml", 17, "apps[1].host", "required"},
			"deploy/ztna.yaml:17: apps[1].host: required"},
		{doc, "", "no apps", nil,
			&FieldError{"deploy/ztna.yaml", 2, "", "no apps"},
			"deploy/ztna.yaml:2: no apps"},
		{nil, "listen", "bad %q", []any{"x"}, // a config built in code
			&FieldError{"", 0, "listen", `bad "x"`},
			`listen: bad "x"`},
	}
	for _, tc := range tests {
		got := tc.doc.Errorf(tc.path, tc.format, tc.args...)
		if *got != *tc.want {
			t.Errorf("Errorf(%q) = %+v, want %+v", tc.path, *got, *tc.want)
		}
		if got.Error() != tc.text {
			t.Errorf("Errorf(%q).Error() = %q, want %q", tc.path, got.Error(), tc.text)
		}
	}
}

func TestFieldErrorFormat(t *testing.T) {
	tests := []struct {
		e    FieldError
		want string
	}{
		{FieldError{"ztna.yaml", 12, "apps[0].upstream", "must be an http or https URL"}, "ztna.yaml:12: apps[0].upstream: must be an http or https URL"},
		{FieldError{"ztna.yaml", 12, "", "oops"}, "ztna.yaml:12: oops"},
		{FieldError{"ztna.yaml", 0, "apps", "oops"}, "ztna.yaml: apps: oops"},
		{FieldError{"ztna.yaml", 0, "", "oops"}, "ztna.yaml: oops"},
		{FieldError{"", 3, "a", "oops"}, "3: a: oops"},
		{FieldError{"", 0, "", "oops"}, "oops"},
	}
	for _, tc := range tests {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v.Error() = %q, want %q", tc.e, got, tc.want)
		}
	}
}

func TestSizeLimit(t *testing.T) {
	dir := t.TempDir()
	// A valid document just over the limit: one long comment line.
	big := "listen: a\n#" + strings.Repeat("x", MaxFileSize) + "\n"
	atLimit := "listen: a\n#" + strings.Repeat("x", MaxFileSize-len("listen: a\n#\n")) + "\n"
	if len(atLimit) != MaxFileSize {
		t.Fatalf("test file is %d bytes", len(atLimit))
	}
	for _, tc := range []struct {
		name, src string
		wantErr   string
	}{
		{"over", big, "big.yaml: file is larger than the 4 MiB limit"},
		{"at", atLimit, ""},
	} {
		path := filepath.Join(dir, tc.name+".yaml")
		if tc.name == "over" {
			path = filepath.Join(dir, "big.yaml")
		}
		if err := os.WriteFile(path, []byte(tc.src), 0o600); err != nil {
			t.Fatal(err)
		}
		var c testConfig
		if tc.wantErr == "" {
			// Only Load: parsing 4 MiB twice is slow under -race.
			if _, err := Load(path, &c); err != nil {
				t.Errorf("Load at the limit: %v", err)
			}
			continue
		}
		_, errLoad := Load(path, &c)
		_, errParse := Parse(filepath.Base(path), []byte(tc.src), &c)
		if errLoad == nil || errLoad.Error() != filepath.Join(dir, tc.wantErr) {
			t.Errorf("Load %s the limit: %v, want %s", tc.name, errLoad, filepath.Join(dir, tc.wantErr))
		}
		if errParse == nil || errParse.Error() != tc.wantErr {
			t.Errorf("Parse %s the limit: %v, want %s", tc.name, errParse, tc.wantErr)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ztna.yaml")
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	var c testConfig
	doc, err := Load(path, &c)
	if err != nil {
		t.Fatal(err)
	}
	if doc.File() != path || doc.Line("apps[1].name") != 17 || c.Apps[1].Name != "whoami" {
		t.Errorf("Load: file %q, line %d, %+v", doc.File(), doc.Line("apps[1].name"), c.Apps)
	}

	if _, err := Load(filepath.Join(dir, "missing.yaml"), &c); !errors.Is(err, os.ErrNotExist) ||
		!strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestParseRejectsBadOut(t *testing.T) {
	var c testConfig
	for _, out := range []any{nil, c, (*testConfig)(nil)} {
		if _, err := Parse("x.yaml", []byte("listen: a\n"), out); err == nil {
			t.Errorf("Parse into %T succeeded", out)
		}
	}
}

func TestTypeAt(t *testing.T) {
	for path, want := range map[string]string{
		"":                         "config.testConfig",
		"region":                   "string",
		"apps":                     "[]config.testApp",
		"apps[3].rules[0].methods": "[]string",
		"apps[0].labels.x":         "string",
		"apps[0].nope":             "<nil>",
		"listen[0]":                "<nil>",
	} {
		got := "<nil>"
		if tt := typeAt(reflect.TypeFor[testConfig](), path); tt != nil {
			got = tt.String()
		}
		if got != want {
			t.Errorf("typeAt(%q) = %s, want %s", path, got, want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"a", "", 1}, {"", "abc", 3}, {"metods", "methods", 1},
		{"upstrem", "upstream", 1}, {"kitten", "sitting", 3}, {"abc", "abc", 0},
	} {
		if got := EditDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("EditDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("apps:\n  - name: a\n    port: x\n    colur: red\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("listen: a\n---\nx: 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c testConfig
		doc, err := Parse("f.yaml", data, &c)
		if err != nil {
			if doc != nil {
				t.Fatal("Doc returned with an error")
			}
			if !strings.HasPrefix(err.Error(), "f.yaml") {
				t.Fatalf("error does not name the file: %q", err)
			}
			return
		}
		doc.Line("apps[0].rules[0].methods")
		doc.Errorf("apps[1]", "x")
	})
}
