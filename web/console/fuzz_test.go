package console

import (
	"testing"

	"github.com/ztna-dev/ztna/authn"
)

// FuzzConsoleForms feeds the console's form parsers — attribute
// overrides, an app's rules as YAML, member lists — arbitrary text: they
// never panic, and what they accept is within the limits the rest of the
// edge relies on.
func FuzzConsoleForms(f *testing.F) {
	for _, s := range []string{
		"department=Security Tech\ntitle=",
		"a=b\na=c",
		"=x",
		"- name: admins\n  groups: [ztna-admins]\n",
		"- {name: x, methods: [GET], paths: [/a]}\n---\n- name: y",
		"&a [*a, *a]",
		"u-1, bob@example.com\n\n carol ",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if o, err := parseOverrides(s); err == nil {
			if err := authn.CheckOverrides(o); err != nil {
				t.Fatalf("parseOverrides accepted what CheckOverrides refuses: %v", err)
			}
		}
		if rules, err := parseRules(s); err == nil && len(s) > maxRulesYAML {
			t.Fatalf("parseRules accepted %d bytes (%d rules)", len(s), len(rules))
		}
		for _, e := range splitList(s) {
			if e == "" {
				t.Fatal("splitList returned an empty entry")
			}
		}
	})
}
