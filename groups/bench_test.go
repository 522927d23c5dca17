package groups

import (
	"fmt"
	"testing"
)

// benchPolicy is 200 apps × 25 rules (5,000 rules) over 500 groups. In every
// app, rule 0 denies contractors on /admin, rules 1–23 allow two groups each
// on a path (some restricted to GET/HEAD, some naming a few users), and rule
// 24 allows group "all-staff" on /public.
func benchPolicy(b *testing.B) *Policy {
	const nApps, nRules, nGroups = 200, 25, 500
	apps := make([]AppRules, nApps)
	for i := range apps {
		rules := make([]Rule, nRules)
		rules[0] = Rule{Name: "no-contractors-admin", Action: ActionDeny, Groups: []string{"idp:contractors"}, Paths: []string{"/admin"}}
		for j := 1; j < nRules-1; j++ {
			r := Rule{
				Name:   fmt.Sprintf("rule-%d", j),
				Groups: []string{fmt.Sprintf("idp:g%03d", (i*7+j*13)%nGroups), fmt.Sprintf("idp:g%03d", (i*11+j*17)%nGroups)},
				Paths:  []string{fmt.Sprintf("/section-%d", j)},
			}
			if j%3 == 0 {
				r.Methods = []string{"GET", "HEAD"}
			}
			if j%5 == 0 {
				r.Users = []string{fmt.Sprintf("user-%d", j), fmt.Sprintf("user-%d@example.com", j)}
			}
			rules[j] = r
		}
		rules[nRules-1] = Rule{Name: "staff-public", Groups: []string{"idp:all-staff"}, Paths: []string{"/public"}}
		apps[i] = AppRules{App: fmt.Sprintf("app-%03d", i), Rules: rules}
	}
	p, err := compileApps(apps)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// benchSubject is in 10 groups; the last one only matches rule 24.
var benchSubject = Subject{
	User:   "4a1f6c1e-0d1b-4c55-9a7e-3f0a2b9d8e71",
	Email:  "Alice.Example@Example.com",
	Groups: []string{"g001", "g042", "g097", "g123", "g256", "g300", "g333", "g404", "g499", "all-staff"},
}

func BenchmarkDecide(b *testing.B) {
	p := benchPolicy(b)
	cases := []struct {
		name, path, want string
		allow            bool
	}{
		// The allow is decided by the last rule after every rule was
		// considered: the slowest allow.
		{"allow", "/public/handbook/page-17", "staff-public", true},
		{"deny-by-rule", "/admin/users", "no-contractors-admin", false},
		{"default-deny", "/nowhere/x", "", false},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			subj := benchSubject
			if c.want == "no-contractors-admin" {
				subj.Groups = append(subj.Groups[:9:9], "contractors")
			}
			reqs := make([]Request, 200)
			for i := range reqs {
				reqs[i] = Request{App: fmt.Sprintf("app-%03d", i), Subject: subj, Method: "GET", Path: c.path}
				if d := p.Decide(reqs[i]); d.Allow != c.allow || d.Rule != c.want {
					b.Fatalf("%s: %+v, want allow=%v rule=%q", reqs[i].App, d, c.allow, c.want)
				}
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p.Decide(reqs[i])
				if i++; i == len(reqs) {
					i = 0
				}
			}
		})
	}
}
