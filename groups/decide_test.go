package groups

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// refDecide is the decision semantics written as plainly as possible, with
// no indexes: the compiled Policy must agree with it on every request.
func refDecide(apps []AppRules, r Request) (allow bool, rule string) {
	var ar *AppRules
	for i := range apps {
		if apps[i].App == r.App {
			ar = &apps[i]
		}
	}
	if ar == nil || r.Subject.User == "" || !refToken.MatchString(r.Method) || !refCanonical(r.Path) {
		return false, ""
	}
	for _, ru := range ar.Rules {
		if ru.Action == ActionDeny && refMatches(ru, r) {
			return false, ru.Name
		}
	}
	for _, ru := range ar.Rules {
		if ru.Action != ActionDeny && refMatches(ru, r) {
			return true, ru.Name
		}
	}
	return false, ""
}

var refToken = regexp.MustCompile("^[!#$%&'*+\\-.^_`|~0-9A-Za-z]+$")

func refCanonical(p string) bool {
	if !strings.HasPrefix(p, "/") || strings.Contains(p, `\`) {
		return false
	}
	for _, c := range []byte(p) {
		if c < ' ' || c == 0x7f {
			return false
		}
	}
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		if (s == "" && i != len(segs)-1) || s == "." || s == ".." {
			return false
		}
	}
	return true
}

func refMatches(ru Rule, r Request) bool {
	s := r.Subject
	if len(ru.Users) > 0 && !refAny(ru.Users, func(u string) bool {
		return u == s.User || (strings.Contains(u, "@") && s.Email != "" && refFoldASCII(u) == refFoldASCII(s.Email))
	}) {
		return false
	}
	if len(ru.Groups) > 0 && !refAny(ru.Groups, func(g string) bool {
		return refAny(s.Groups, func(sg string) bool { return idpPrefix+sg == g })
	}) {
		return false
	}
	if len(ru.Methods) > 0 && !refAny(ru.Methods, func(m string) bool { return strings.EqualFold(m, r.Method) }) {
		return false
	}
	if len(ru.Paths) > 0 && !refAny(ru.Paths, func(p string) bool {
		if exact, ok := strings.CutPrefix(p, "="); ok {
			return r.Path == exact
		}
		return p == "/" || r.Path == p || strings.HasPrefix(r.Path, p+"/")
	}) {
		return false
	}
	return true
}

func refAny(xs []string, f func(string) bool) bool {
	for _, x := range xs {
		if f(x) {
			return true
		}
	}
	return false
}

func refFoldASCII(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if 'A' <= c && c <= 'Z' {
			c += 32
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Small vocabularies so that random rules and requests collide often.
var (
	vocabUsers    = []string{"u0", "u1", "u2", "a@x.io", "A@X.io", "b@x.io", "Émile@x.io"}
	vocabEmails   = []string{"", "a@x.io", "A@x.IO", "b@X.io", "c@x.io", "Émile@x.io", "émile@x.io"}
	vocabGroups   = []string{"g0", "g1", "g2", "g3", "G0", "개발"}
	vocabMethods  = []string{"GET", "get", "HEAD", "POST", "DELETE", "Delete", "PROPFIND", "propfind", "OPTIONS"}
	vocabPaths    = []string{"/", "/a", "/ab", "/a/b", "/b", "/a/b/c", "=/a", "=/a/", "=/", "=/b/c"}
	vocabReqPaths = []string{"/", "/a", "/a/", "/ab", "/a/b", "/a/bc", "/a/b/c", "/b", "/b/c", "/c",
		"/a//b", "/a/../b", "/a/./b", `/a\b`, "", "*", "a", "/a/.."}
	vocabReqMethods = append([]string{"", "GET /", "M-SEARCH", "get\x00"}, vocabMethods...)
)

func pick(rnd *rand.Rand, xs []string, max int) []string {
	n := rnd.IntN(max + 1)
	if n == 0 {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = xs[rnd.IntN(len(xs))]
	}
	return out
}

// randomPolicy makes nApps apps of up to maxRules rules. Deny rules get
// rarer as apps grow, so that big apps still allow something.
func randomPolicy(rnd *rand.Rand, nApps, maxRules int) []AppRules {
	denyOneIn := 5 + maxRules/20
	apps := make([]AppRules, nApps)
	for i := range apps {
		apps[i].App = "app" + strconv.Itoa(i)
		apps[i].Rules = make([]Rule, rnd.IntN(maxRules+1))
		for j := range apps[i].Rules {
			r := Rule{
				Name:    "r" + strconv.Itoa(j),
				Users:   pick(rnd, vocabUsers, 1),
				Groups:  idpAll(pick(rnd, vocabGroups, 2)),
				Methods: pick(rnd, vocabMethods, 2),
				Paths:   pick(rnd, vocabPaths, 2),
			}
			switch {
			case rnd.IntN(denyOneIn) == 0:
				r.Action = ActionDeny
			case rnd.IntN(2) == 0:
				r.Action = ActionAllow
			}
			apps[i].Rules[j] = r
		}
	}
	return apps
}

// idpAll writes group claims as rules name them.
func idpAll(gs []string) []string {
	for i := range gs {
		gs[i] = idpPrefix + gs[i]
	}
	return gs
}

func randomRequest(rnd *rand.Rand, nApps int) Request {
	user := "u" + strconv.Itoa(rnd.IntN(4)) // u3 is in no Users list
	if rnd.IntN(20) == 0 {
		user = ""
	}
	return Request{
		App:     "app" + strconv.Itoa(rnd.IntN(nApps+1)), // one app too many: unknown
		Subject: Subject{User: user, Email: vocabEmails[rnd.IntN(len(vocabEmails))], Groups: pick(rnd, vocabGroups, 3)},
		Method:  vocabReqMethods[rnd.IntN(len(vocabReqMethods))],
		Path:    vocabReqPaths[rnd.IntN(len(vocabReqPaths))],
	}
}

// checkAgainstRef compares one decision with the reference and returns a
// description of the disagreement, or "".
func checkAgainstRef(apps []AppRules, p *Policy, r Request) string {
	got := p.Decide(r)
	allow, rule := refDecide(apps, r)
	if got.Allow != allow || got.Rule != rule {
		return fmt.Sprintf("%+v: got allow=%v rule=%q (%s), reference allow=%v rule=%q", r, got.Allow, got.Rule, got.Reason, allow, rule)
	}
	var want string
	switch {
	case allow:
		want = "allowed by rule " + strconv.Quote(rule)
	case rule != "":
		want = "denied by rule " + strconv.Quote(rule)
	}
	if want != "" && got.Reason != want {
		return fmt.Sprintf("%+v: reason %q, want %q", r, got.Reason, want)
	}
	if got.Reason == "" {
		return fmt.Sprintf("%+v: empty reason", r)
	}
	return ""
}

// TestDecideMatchesReference checks the indexed engine against refDecide on
// random policies, including apps with more than 64 rules (several bitset
// words) and more than 1024 (bitsets on the heap).
func TestDecideMatchesReference(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for round := range 60 {
		maxRules := 12
		switch round % 6 {
		case 4:
			maxRules = 200
		case 5:
			maxRules = 1100
		}
		apps := randomPolicy(rnd, 3, maxRules)
		p, err := compileApps(apps)
		if err != nil {
			t.Fatalf("round %d: Compile: %v", round, err)
		}
		var allowed, ruleDenied int
		for range 2000 {
			r := randomRequest(rnd, len(apps))
			if msg := checkAgainstRef(apps, p, r); msg != "" {
				t.Fatalf("round %d: %s", round, msg)
			}
			if d := p.Decide(r); d.Allow {
				allowed++
			} else if d.Rule != "" {
				ruleDenied++
			}
		}
		// Guard the generator: a round where nothing is allowed or denied
		// by a rule would compare only default denies.
		if maxRules > 12 && (allowed == 0 || ruleDenied == 0) {
			t.Fatalf("round %d: generator too weak: %d allowed, %d denied by a rule", round, allowed, ruleDenied)
		}
	}
}

// FuzzDecide compares the engine with the reference on policies and
// requests derived from the fuzzer's seed.
func FuzzDecide(f *testing.F) {
	for _, seed := range []uint64{0, 1, 42, 1 << 40} {
		f.Add(seed, "/a/b", "GET")
	}
	f.Fuzz(func(t *testing.T, seed uint64, path, method string) {
		rnd := rand.New(rand.NewPCG(seed, seed>>32))
		apps := randomPolicy(rnd, 2, 80)
		p, err := compileApps(apps)
		if err != nil {
			t.Fatal(err)
		}
		for range 50 {
			r := randomRequest(rnd, len(apps))
			if rnd.IntN(2) == 0 {
				r.Path, r.Method = path, method
			}
			if msg := checkAgainstRef(apps, p, r); msg != "" {
				t.Fatal(msg)
			}
		}
	})
}

func TestNilPolicyDenies(t *testing.T) {
	var p *Policy
	d := p.Decide(Request{App: "wiki", Subject: Subject{User: "u"}, Method: "GET", Path: "/"})
	if d.Allow || d.Rule != "" || d.Reason == "" {
		t.Errorf("nil policy: %+v, want a deny with a reason", d)
	}
	var a Authorizer = p
	if a.Decide(Request{}).Allow {
		t.Error("nil policy as Authorizer allowed")
	}
}

func TestDefaultDenyReasonIsBounded(t *testing.T) {
	p, err := compileApps([]AppRules{{App: "wiki"}})
	if err != nil {
		t.Fatal(err)
	}
	long := "/" + strings.Repeat("é", 300) // 2-byte runes: the cut must not split one
	d := p.Decide(Request{App: "wiki", Subject: Subject{User: "u1"}, Method: "get", Path: long})
	if d.Allow {
		t.Fatal("allowed")
	}
	const prefix = `no rule of app "wiki" allows u1 to GET /`
	if !strings.HasPrefix(d.Reason, prefix) || !strings.HasSuffix(d.Reason, "…") {
		t.Errorf("reason %q: want prefix %q and an ellipsis", d.Reason, prefix)
	}
	if n := len(d.Reason) - len(prefix); n > maxReasonPath+len("…") {
		t.Errorf("reason repeats %d bytes of the path, want at most %d", n, maxReasonPath)
	}
	if strings.ContainsRune(d.Reason, '\uFFFD') {
		t.Errorf("reason %q has a broken rune", d.Reason)
	}
}

// TestDecideDoesNotAllocate pins the hot-path promise: an allow, or a deny
// by a rule, costs no allocation.
func TestDecideDoesNotAllocate(t *testing.T) {
	p, err := compileApps([]AppRules{{App: "wiki", Rules: []Rule{
		{Name: "no-admin", Action: ActionDeny, Groups: []string{"idp:contractors"}, Paths: []string{"/admin"}},
		{Name: "bob", Users: []string{"bob@example.com"}, Methods: []string{"GET", "PROPFIND"}},
		{Name: "eng", Groups: []string{"idp:eng"}, Methods: []string{"GET", "POST"}, Paths: []string{"/docs", "=/"}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	groups := []string{"a", "b", "c", "eng", "contractors"}
	tests := []struct {
		name string
		req  Request
		rule string
	}{
		{"allow by group", Request{App: "wiki", Subject: Subject{User: "u1", Groups: groups[:4]}, Method: "POST", Path: "/docs/x"}, "eng"},
		{"allow by email with upper case", Request{App: "wiki", Subject: Subject{User: "u2", Email: "Bob@Example.COM"}, Method: "get", Path: "/x"}, "bob"},
		{"allow with an extension method", Request{App: "wiki", Subject: Subject{User: "u2", Email: "bob@example.com"}, Method: "propfind", Path: "/x"}, "bob"},
		{"deny by rule", Request{App: "wiki", Subject: Subject{User: "u1", Groups: groups}, Method: "GET", Path: "/admin"}, "no-admin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d Decision
			allocs := testing.AllocsPerRun(100, func() { d = p.Decide(tt.req) })
			if d.Rule != tt.rule {
				t.Fatalf("decided by %q (%s), want %q", d.Rule, d.Reason, tt.rule)
			}
			if allocs != 0 {
				t.Errorf("%v allocations per Decide, want 0", allocs)
			}
		})
	}
}

// TestDecideConcurrent decides from many goroutines at once; run with -race
// it shows that a Policy is read-only after Compile.
func TestDecideConcurrent(t *testing.T) {
	rnd := rand.New(rand.NewPCG(7, 7))
	apps := randomPolicy(rnd, 4, 100)
	p, err := compileApps(apps)
	if err != nil {
		t.Fatal(err)
	}
	reqs := make([]Request, 500)
	want := make([]Decision, len(reqs))
	for i := range reqs {
		reqs[i] = randomRequest(rnd, len(apps))
		want[i] = p.Decide(reqs[i])
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for k := range 20 * len(reqs) {
				i := (k + g*31) % len(reqs)
				if got := p.Decide(reqs[i]); got != want[i] {
					t.Errorf("goroutine %d: %+v: got %+v, want %+v", g, reqs[i], got, want[i])
					return
				}
			}
		})
	}
	wg.Wait()
}
