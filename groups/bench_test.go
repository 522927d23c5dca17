package groups

import (
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The authorization benchmarks behind the README's table. They measure
// the latency of single decisions themselves (time.Now around Decide,
// sorted, percentiles) over the generated world of benchgen_test.go, and
// report:
//
//	BenchmarkAuthorize/reload   ms (one Compile of the whole policy), MiB (heap the compiled policy holds)
//	BenchmarkAuthorize/cold     p50-ns, p99-ns: each user's first decision on a freshly compiled policy;
//	                            cache-MiB: the membership cache after all 10,000 users
//	BenchmarkAuthorize/warm     p50-ns, p99-ns: random requests once every user was seen
//	BenchmarkNaiveCasbin        p50-ns, p99-ns of the same policy in one naive Casbin model
//	                            (naive_test.go), cross-checked against Decide
//
// ns/op is the mean of one decision (of one Compile for reload); allow-%
// is the share of the measured requests that were allowed. Run on one core:
//
//	go test ./groups -run '^$' -bench 'BenchmarkAuthorize|BenchmarkNaive' -cpu 1 -benchtime 1x
//
// The targets (PRODUCT.md): warm p99 ≤ 20 µs, cold p99 ≤ 200 µs, reload ≤ 1 s.

const (
	benchWarmPool    = 50_000  // distinct warm requests, generated before timing
	benchWarmSamples = 200_000 // warm decisions timed per iteration
	benchNaiveSample = 300     // naive decisions timed (and cross-checked) per iteration
)

func BenchmarkAuthorize(b *testing.B) {
	w := sharedBenchWorld()
	b.Run("reload", func(b *testing.B) {
		benchCompile(b, w) // first use of the zone data, Casbin's and the parser's tables
		before := heapInUse()
		p := benchCompile(b, w)
		mib := float64(heapInUse()-before) / (1 << 20)
		runtime.KeepAlive(p)
		for b.Loop() {
			benchCompile(b, w)
		}
		b.ReportMetric(float64(b.Elapsed())/float64(b.N)/1e6, "ms")
		b.ReportMetric(mib, "MiB")
	})
	b.Run("cold", func(b *testing.B) {
		// Each user once, in random order, to a random app.
		rng := rand.New(rand.NewPCG(benchSeed, 1))
		reqs := make([]Request, benchUsers)
		for i, u := range rng.Perm(benchUsers) {
			reqs[i] = w.request(rng, u)
		}
		lat := make([]time.Duration, 0, len(reqs))
		var allows int
		var cacheMiB float64
		for b.Loop() {
			b.StopTimer()
			p := benchCompile(b, w)
			lat, allows = lat[:0], 0
			before := heapInUse()
			b.StartTimer()
			for i := range reqs {
				t0 := time.Now()
				d := p.Decide(reqs[i])
				lat = append(lat, time.Since(t0))
				if d.Allow {
					allows++
				}
			}
			b.StopTimer()
			cacheMiB = float64(heapInUse()-before) / (1 << 20)
			runtime.KeepAlive(p)
			b.StartTimer()
		}
		reportLatency(b, lat, allows)
		b.ReportMetric(cacheMiB, "cache-MiB")
	})
	b.Run("warm", func(b *testing.B) {
		p := benchCompile(b, w)
		rng := rand.New(rand.NewPCG(benchSeed, 2))
		for u := range benchUsers {
			p.Decide(w.request(rng, u))
		}
		reqs := make([]Request, benchWarmPool)
		for i := range reqs {
			reqs[i] = w.request(rng, rng.IntN(benchUsers))
		}
		lat := make([]time.Duration, 0, benchWarmSamples)
		var allows int
		for b.Loop() {
			lat, allows = lat[:0], 0
			for i := range benchWarmSamples {
				r := &reqs[i%len(reqs)]
				t0 := time.Now()
				d := p.Decide(*r)
				lat = append(lat, time.Since(t0))
				if d.Allow {
					allows++
				}
			}
		}
		reportLatency(b, lat, allows)
	})
}

// BenchmarkNaiveCasbin decides a sample of the same requests with the
// naive Casbin model and fails if any decision differs from Decide's.
func BenchmarkNaiveCasbin(b *testing.B) {
	w := sharedBenchWorld()
	p := benchCompile(b, w)
	nm, err := newNaiveModel(&w.src)
	if err != nil {
		b.Fatal(err)
	}
	reqs := naiveSample(w, rand.New(rand.NewPCG(benchSeed, 3)), benchNaiveSample)
	lat := make([]time.Duration, 0, len(reqs))
	var allows int
	var mismatches []string
	for b.Loop() {
		lat, allows, mismatches = lat[:0], 0, mismatches[:0]
		for i := range reqs {
			t0 := time.Now()
			ok, err := nm.allow(&reqs[i])
			lat = append(lat, time.Since(t0))
			if err != nil {
				b.Fatalf("naive Casbin: %v", err)
			}
			if ok {
				allows++
			}
			if d := p.Decide(reqs[i]); d.Allow != ok {
				mismatches = append(mismatches, describeMismatch(&reqs[i], d, ok))
			}
		}
	}
	if len(mismatches) > 0 {
		b.Fatalf("naive Casbin and Decide disagree on %d of %d requests:\n%s", len(mismatches), len(reqs), strings.Join(mismatches[:min(5, len(mismatches))], "\n"))
	}
	reportLatency(b, lat, allows)
	b.ReportMetric(float64(nm.rows), "rows")
}

// TestBenchPolicyShape keeps the benchmark honest: the world has the size
// the README claims, compiles, allows a sane share of requests (by specific
// rules too, not only the home page), denies by rule and by default, and the
// naive model agrees with Decide on a sample with both outcomes.
func TestBenchPolicyShape(t *testing.T) {
	w := sharedBenchWorld()
	rules, contextApps := 0, 0
	for _, ar := range w.src.Apps {
		rules += len(ar.Rules)
	}
	for _, a := range w.apps {
		if a.context {
			contextApps++
		}
	}
	kinds := map[string]int{}
	for _, g := range w.src.Groups {
		_, kind, ok := strings.Cut(g.Name, "-")
		if !ok || g.Name[0] != 'g' {
			kind = g.Name
		}
		kinds[kind]++
	}
	t.Logf("group kinds: %v; apps with time windows or networks: %d", kinds, contextApps)
	if len(w.src.Groups) != benchGroups || len(w.src.Apps) != benchApps || rules != benchApps*benchRulesPerApp || len(w.users) != benchUsers {
		t.Fatalf("world has %d groups, %d apps, %d rules, %d users; want %d, %d, %d, %d",
			len(w.src.Groups), len(w.src.Apps), rules, len(w.users), benchGroups, benchApps, benchApps*benchRulesPerApp, benchUsers)
	}
	for _, k := range []string{"dept", "titles", "site", "idp", "idp-dept", "or", "device", "nested", "people"} {
		if kinds[k] == 0 {
			t.Errorf("no group of kind %q", k)
		}
	}
	if contextApps == 0 || contextApps > benchApps/4 {
		t.Errorf("%d apps have time windows or networks; want a few", contextApps)
	}
	p := benchCompile(t, w)

	// 1,000 requests of 300 users: the share is the benchmark's, at a
	// fraction of the cold decisions (slow under -race).
	const n, users = 1000, 300
	rng := rand.New(rand.NewPCG(benchSeed, 4))
	sample := rng.Perm(benchUsers)[:users]
	var allow, specific, denyRule int
	for range n {
		d := p.Decide(w.request(rng, sample[rng.IntN(users)]))
		switch {
		case d.Allow:
			allow++
			if d.Rule != "staff-home" {
				specific++
			}
		case d.Rule != "":
			denyRule++
		}
	}
	t.Logf("of %d requests: %d allowed (%d by a section rule), %d denied by rule, %d by default", n, allow, specific, denyRule, n-allow-denyRule)
	if allow < n*30/100 || allow > n*80/100 {
		t.Errorf("%d of %d requests allowed; want 30–80 %%", allow, n)
	}
	if specific < allow/3 {
		t.Errorf("%d of %d allows by a section rule; want at least a third", specific, allow)
	}
	if denyRule == 0 || n-allow-denyRule < n/10 {
		t.Errorf("%d denied by rule, %d by default; want both", denyRule, n-allow-denyRule)
	}

	nm, err := newNaiveModel(&w.src)
	if err != nil {
		t.Fatal(err)
	}
	if nm.rows < benchApps*benchRulesPerApp {
		t.Errorf("naive model has %d rows; want at least one per rule", nm.rows)
	}
	reqs := naiveSample(w, rng, 40) // ~50 ms each under -race
	var naiveAllows int
	for i := range reqs {
		ok, err := nm.allow(&reqs[i])
		if err != nil {
			t.Fatalf("naive Casbin: %v", err)
		}
		if ok {
			naiveAllows++
		}
		if d := p.Decide(reqs[i]); d.Allow != ok {
			t.Errorf("disagree: %s", describeMismatch(&reqs[i], d, ok))
		}
	}
	if naiveAllows < len(reqs)/5 || naiveAllows > len(reqs)*4/5 {
		t.Errorf("naive sample: %d of %d allowed; want both outcomes well represented", naiveAllows, len(reqs))
	}
}

// naiveSample generates n requests to apps the naive model expresses
// fully (no time windows or networks).
func naiveSample(w *benchWorld, rng *rand.Rand, n int) []Request {
	reqs := make([]Request, 0, n)
	for len(reqs) < n {
		r := w.request(rng, rng.IntN(benchUsers))
		if !w.apps[appIndex(r.App)].context {
			reqs = append(reqs, r)
		}
	}
	return reqs
}

// appIndex is the index of a generated app ("app-017" → 17).
func appIndex(name string) int {
	i, err := strconv.Atoi(strings.TrimPrefix(name, "app-"))
	if err != nil {
		panic("not a generated app: " + name)
	}
	return i
}

func describeMismatch(r *Request, d Decision, naive bool) string {
	return r.Subject.User + " " + r.Method + " " + r.App + r.Path + ": Decide " + d.Reason + "; naive allow=" + strconv.FormatBool(naive)
}

// benchCompile compiles the world's policy.
func benchCompile(tb testing.TB, w *benchWorld) *Policy {
	tb.Helper()
	p, err := Compile(&w.src, Options{})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// reportLatency reports the percentiles and mean of lat (which it sorts)
// and the share of allows.
func reportLatency(b *testing.B, lat []time.Duration, allows int) {
	if len(lat) == 0 {
		b.Fatal("no decisions measured")
	}
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	slices.Sort(lat)
	b.ReportMetric(float64(percentile(lat, 0.50)), "p50-ns")
	b.ReportMetric(float64(percentile(lat, 0.99)), "p99-ns")
	b.ReportMetric(float64(sum)/float64(len(lat)), "ns/op")
	b.ReportMetric(100*float64(allows)/float64(len(lat)), "allow-%")
}

// percentile is the nearest-rank q-quantile of sorted.
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
