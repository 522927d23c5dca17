package groups

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// reloadSources are two versions of one policy, as a GitOps change makes
// them: the seed's reorganisation (seed 000) moves who is in groups A, B
// and C, and the new version adds a deny rule and narrows an app by path.
// Every group is an attribute condition or built on one, so deciding
// exercises the Casbin evaluation and the membership cache.
func reloadSources() [2]*Source {
	before := &Source{
		Groups: []Group{
			{Name: "security-tech", When: `user.department == "Security Tech"`},
			{Name: "security-policy", When: `user.department == "Security Policy"`},
			{Name: "security-engineers", When: `user.title in ["Security Engineer", "Senior Security Engineer"]`},
			{Name: "security", Include: []string{"security-tech", "security-policy"}},
			{Name: "staff", When: `user.department != "" and user.department != "External"`},
			{Name: "seoul-engineering", When: `"engineering" in user.groups and user.location == "Seoul"`},
		},
		Apps: []AppRules{
			{App: "secure", Rules: []Rule{{Name: "group-a", Groups: []string{"security-tech"}}}},
			{App: "grc", Rules: []Rule{{Name: "group-b", Groups: []string{"security-policy"}}}},
			{App: "soc", Rules: []Rule{{Name: "group-c", Groups: []string{"security-engineers"}}}},
			{App: "wiki", Rules: []Rule{
				{Name: "staff-read", Groups: []string{"staff"}, Methods: []string{"GET", "HEAD"}},
				{Name: "security-write", Groups: []string{"security"}},
			}},
			{App: "builds", Rules: []Rule{{Name: "seoul", Groups: []string{"seoul-engineering"}}}},
		},
	}
	after := &Source{
		Groups: []Group{
			{Name: "security-tech", When: `user.department == "Security Tech" and user.title != "Intern"`},
			{Name: "security-policy", When: `user.department in ["Security Policy", "Compliance"]`},
			{Name: "security-engineers", When: `user.title == "Security Engineer"`},
			{Name: "security", Include: []string{"security-tech", "security-policy"}},
			{Name: "staff", When: `user.department != "" and user.department != "External"`},
			{Name: "seoul-engineering", When: `"engineering" in user.groups and user.location in ["Seoul", "Busan"]`},
			{Name: "externals", When: `user.department == "External" or "contractors" in user.groups`},
		},
		Apps: []AppRules{
			{App: "secure", Rules: []Rule{{Name: "group-a", Groups: []string{"security-tech"}}}},
			{App: "grc", Rules: []Rule{
				{Name: "group-b", Groups: []string{"security-policy"}},
				{Name: "engineers-read", Groups: []string{"security-engineers"}, Methods: []string{"GET"}},
			}},
			{App: "soc", Rules: []Rule{{Name: "group-c", Groups: []string{"security-engineers"}}}},
			{App: "wiki", Rules: []Rule{
				{Name: "no-externals", Action: ActionDeny, Groups: []string{"externals"}},
				{Name: "staff-read", Groups: []string{"staff"}, Methods: []string{"GET", "HEAD"}},
				{Name: "security-write", Groups: []string{"security"}, Paths: []string{"/security"}},
			}},
			{App: "builds", Rules: []Rule{{Name: "seoul", Groups: []string{"seoul-engineering"}}}},
		},
	}
	return [2]*Source{before, after}
}

// reloadRequests is every combination of a few subjects' attributes with
// the apps, methods and paths of reloadSources: a few thousand requests
// with a few hundred distinct attribute sets.
func reloadRequests() []Request {
	departments := []string{"Security Tech", "Security Policy", "Compliance", "Finance", "External", ""}
	titles := []string{"Security Engineer", "Senior Security Engineer", "Policy Manager", "Intern", ""}
	idpGroups := [][]string{nil, {"engineering"}, {"contractors"}, {"engineering", "contractors"}}
	locations := []string{"Seoul", "Busan"}
	targets := []struct{ app, method, path string }{
		{"secure", "GET", "/"}, {"grc", "GET", "/"}, {"grc", "POST", "/reports"}, {"soc", "GET", "/alerts"},
		{"wiki", "GET", "/"}, {"wiki", "POST", "/security/page"}, {"wiki", "DELETE", "/other"},
		{"builds", "GET", "/"}, {"nosuchapp", "GET", "/"},
	}
	var reqs []Request
	n := 0
	for _, dep := range departments {
		for _, title := range titles {
			for _, gs := range idpGroups {
				for _, loc := range locations {
					n++
					s := Subject{
						User: fmt.Sprintf("u-%03d", n), Email: fmt.Sprintf("user%03d@example.com", n), Groups: gs,
						Attributes: map[string]string{"department": dep, "title": title, "location": loc},
					}
					for _, tg := range targets {
						reqs = append(reqs, Request{App: tg.app, Subject: s, Method: tg.method, Path: tg.path})
					}
				}
			}
		}
	}
	return reqs
}

// A policy reload swaps an atomic.Pointer[Policy] while requests are being
// decided. Every decision must be exactly the one the version it loaded
// makes on its own: compiled policies share nothing, so concurrent
// decisions — filling each version's membership cache from cold at the
// same time — and swaps cannot mix versions or corrupt a cache. Run with
// -race.
func TestReloadUnderLoad(t *testing.T) {
	defer goleak.VerifyNone(t)
	srcs := reloadSources()
	reqs := reloadRequests()

	// The expected decisions come from instances used by nothing else.
	var want [2][]Decision
	var versions [2]string
	for v, src := range srcs {
		p, err := Compile(src, Options{})
		if err != nil {
			t.Fatalf("compile version %d: %v", v, err)
		}
		versions[v] = p.Version()
		want[v] = make([]Decision, len(reqs))
		for i, r := range reqs {
			want[v][i] = p.Decide(r)
		}
	}
	if versions[0] == versions[1] {
		t.Fatalf("both versions have version %s", versions[0])
	}
	// The swap must be visible: the versions disagree on many requests, in
	// both directions, and the seed's move is among them.
	var gained, lost int
	for i := range reqs {
		switch a, b := want[0][i], want[1][i]; {
		case !a.Allow && b.Allow:
			gained++
		case a.Allow && !b.Allow:
			lost++
		}
	}
	t.Logf("%d requests, %d distinct subjects; the new version allows %d and denies %d that the old one did not", len(reqs), len(reqs)/9, gained, lost)
	if gained < 50 || lost < 50 {
		t.Fatalf("the two versions barely differ (%d gained, %d lost): the test could not see a mixed-up swap", gained, lost)
	}
	intern := Request{App: "secure", Method: "GET", Path: "/", Subject: Subject{User: "u-kim",
		Attributes: map[string]string{"department": "Security Tech", "title": "Intern"}}}
	for v, wantAllow := range []bool{true, false} {
		p, _ := Compile(srcs[v], Options{})
		if d := p.Decide(intern); d.Allow != wantAllow {
			t.Fatalf("version %d: a Security Tech intern on secure: %+v, want allow=%v", v, d, wantAllow)
		}
	}

	// Several compiled instances of each version, so that instances are
	// swapped in with a cold membership cache, then again with a warm one.
	const instances = 4
	var pool []*Policy
	for k := 0; k < instances; k++ {
		for v := range srcs {
			p, err := Compile(srcs[v], Options{})
			if err != nil {
				t.Fatal(err)
			}
			pool = append(pool, p)
		}
	}
	versionOf := map[string]int{versions[0]: 0, versions[1]: 1}

	var cur atomic.Pointer[Policy]
	cur.Store(pool[0])
	stop := make(chan struct{})
	var (
		mu       sync.Mutex
		failures []string
		failed   int
		seen     [2]atomic.Int64
	)
	fail := func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		if failed++; len(failures) < 10 {
			failures = append(failures, msg)
		}
	}
	const deciders = 8
	var wg sync.WaitGroup
	for g := 0; g < deciders; g++ {
		wg.Go(func() {
			var local [2]int64
			defer func() { seen[0].Add(local[0]); seen[1].Add(local[1]) }()
			// Each decider walks the requests in its own order, so that
			// they miss the cache on different subjects at the same time.
			step := 2*g + 1
			for n, i := 0, g; ; n, i = n+1, (i+step)%len(reqs) {
				if n%64 == 0 {
					select {
					case <-stop:
						return
					default:
					}
				}
				p := cur.Load()
				v, ok := versionOf[p.Version()]
				if !ok {
					fail(fmt.Sprintf("loaded a policy of unknown version %q", p.Version()))
					return
				}
				if got := p.Decide(reqs[i]); got != want[v][i] {
					fail(fmt.Sprintf("version %d, %s %s %s as %s %v: got %+v, want %+v",
						v, reqs[i].Method, reqs[i].App, reqs[i].Path, reqs[i].Subject.User, reqs[i].Subject.Attributes, got, want[v][i]))
				}
				local[v]++
			}
		})
	}
	// The swapper: one reload after another for about a second.
	swaps := 0
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); swaps++ {
		cur.Store(pool[(swaps+1)%len(pool)])
		runtime.Gosched()
	}
	close(stop)
	wg.Wait()

	t.Logf("%d swaps; %d decisions under the old version, %d under the new", swaps, seen[0].Load(), seen[1].Load())
	for _, f := range failures {
		t.Error(f)
	}
	if failed > len(failures) {
		t.Errorf("… and %d more wrong decisions", failed-len(failures))
	}
	if swaps < 2*len(pool) || seen[0].Load() == 0 || seen[1].Load() == 0 {
		t.Errorf("the load did not span the swaps (%d swaps, %d/%d decisions per version)", swaps, seen[0].Load(), seen[1].Load())
	}
}
