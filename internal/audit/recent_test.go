package audit

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

var t0 = time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)

// filterEvents get Seq 1…7 in order when added to an empty ring.
var filterEvents = []Event{
	{Time: t0, Kind: "request", User: "u-alice", Email: "alice@Example.com", Device: "dev-1", App: "wiki",
		Decision: "allow", Rule: "employees", Reason: `allowed by rule "employees"`, Path: "/docs"},
	{Time: t0.Add(1 * time.Minute), Kind: "request", User: "u-bob", Email: "bob@example.com", Device: "dev-2", App: "wiki",
		Decision: "deny", Reason: "disk encryption is off", Path: "/admin"},
	{Time: t0.Add(2 * time.Minute), Kind: "stream", User: "u-alice", Email: "alice@Example.com", Device: "dev-1", App: "ssh",
		Decision: "allow", Rule: "engineers", Reason: `allowed by rule "engineers"`},
	{Time: t0.Add(3 * time.Minute), Kind: "admin", User: "u-carol", Email: "carol@example.com",
		Decision: "allow", Reason: "session revoked", Path: "/api/sessions"},
	{Time: t0.Add(4 * time.Minute), Kind: "signal", Device: "dev-2", Source: "falco",
		Decision: "deny", Reason: "quarantined by Falco: Terminal shell in container"},
	{Time: t0.Add(5 * time.Minute), Kind: "request", User: "u-umit", Email: "ÜMIT@example.com", Device: "dev-3", App: "grafana",
		Decision: "deny", Rule: "deny-contractors", Reason: "explicit deny", Path: "/temp/\u212a"}, // U+212A KELVIN SIGN folds to k
	{Time: t0.Add(6 * time.Minute), Kind: "console", User: "u-alice", Email: "alice@Example.com", Device: "dev-1",
		Decision: "allow", Reason: "group saved", Path: "/console/groups"},
}

func seqs(es []Entry) []uint64 {
	out := make([]uint64, 0, len(es))
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}

func TestRecentFindFilters(t *testing.T) {
	r := NewRecent(100)
	for _, e := range filterEvents {
		r.Add(e)
	}
	tests := []struct {
		name string
		q    Query
		want []uint64
	}{
		{"zero query matches all, newest first", Query{}, []uint64{7, 6, 5, 4, 3, 2, 1}},
		{"user by exact ID", Query{User: "u-alice"}, []uint64{7, 3, 1}},
		{"user ID is not a substring match", Query{User: "u-ali"}, nil},
		{"user by email substring, any case", Query{User: "ALICE@"}, []uint64{7, 3, 1}},
		{"user by email domain", Query{User: "example.com"}, []uint64{7, 6, 4, 3, 2, 1}},
		{"user by non-ASCII email, folded", Query{User: "ümit"}, []uint64{6}},
		{"device exact", Query{Device: "dev-2"}, []uint64{5, 2}},
		{"device is not a substring match", Query{Device: "dev"}, nil},
		{"app exact", Query{App: "wiki"}, []uint64{2, 1}},
		{"app is case-sensitive", Query{App: "Wiki"}, nil},
		{"kind", Query{Kind: "stream"}, []uint64{3}},
		{"decision", Query{Decision: "deny"}, []uint64{6, 5, 2}},
		{"decision is exact", Query{Decision: "DENY"}, nil},
		{"text in reason, any case", Query{Text: "ENCRYPTION"}, []uint64{2}},
		{"text in rule", Query{Text: "engineers"}, []uint64{3}},
		{"text in path", Query{Text: "/api/"}, []uint64{4}},
		{"text folds Unicode", Query{Text: "/TEMP/k"}, []uint64{6}},
		{"text not in other fields", Query{Text: "falco"}, []uint64{5}}, // in reason, not because of Source
		{"text nowhere", Query{Text: "nothing like this"}, nil},
		{"since is inclusive", Query{Since: t0.Add(2 * time.Minute)}, []uint64{7, 6, 5, 4, 3}},
		{"until is exclusive", Query{Until: t0.Add(2 * time.Minute)}, []uint64{2, 1}},
		{"since and until", Query{Since: t0.Add(time.Minute), Until: t0.Add(4 * time.Minute)}, []uint64{4, 3, 2}},
		{"since after until", Query{Since: t0.Add(4 * time.Minute), Until: t0}, nil},
		{"user, decision and app", Query{User: "u-alice", Decision: "allow", App: "wiki"}, []uint64{1}},
		{"kind, decision and text", Query{Kind: "request", Decision: "deny", Text: "disk"}, []uint64{2}},
		{"device and since", Query{Device: "dev-1", Since: t0.Add(time.Minute)}, []uint64{7, 3}},
		{"email user and text", Query{User: "example.COM", Text: "explicit"}, []uint64{6}},
		{"fields that never meet", Query{App: "wiki", Kind: "stream"}, nil},
		{"before restricts to older", Query{User: "u-alice", Before: 7}, []uint64{3, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, more := r.Find(tt.q)
			if !slices.Equal(seqs(got), tt.want) {
				t.Errorf("Find(%+v) = seqs %v, want %v", tt.q, seqs(got), tt.want)
			}
			if more {
				t.Errorf("more = true with everything returned")
			}
			for _, e := range got {
				if e.Event != filterEvents[e.Seq-1] {
					t.Errorf("seq %d carries %+v, want %+v", e.Seq, e.Event, filterEvents[e.Seq-1])
				}
			}
		})
	}
}

func pathEvent(i int) Event {
	return Event{Time: t0.Add(time.Duration(i) * time.Second), Kind: "request", Decision: "allow", Path: fmt.Sprintf("/%d", i)}
}

func TestRecentWrapAround(t *testing.T) {
	r := NewRecent(5)
	for i := 1; i <= 12; i++ {
		r.Add(pathEvent(i))
	}
	if got := r.Len(); got != 5 {
		t.Fatalf("Len = %d, want 5", got)
	}
	got, more := r.Find(Query{})
	if want := []uint64{12, 11, 10, 9, 8}; !slices.Equal(seqs(got), want) || more {
		t.Fatalf("Find = %v, more %v; want %v, false", seqs(got), more, want)
	}
	for _, e := range got {
		if want := fmt.Sprintf("/%d", e.Seq); e.Path != want {
			t.Errorf("seq %d has path %q, want %q", e.Seq, e.Path, want)
		}
	}
	// The dropped events are gone, also when asked for by cursor.
	if got, more := r.Find(Query{Before: 8}); len(got) != 0 || more {
		t.Errorf("Find(Before 8) = %v, more %v; want nothing", seqs(got), more)
	}
	if got, _ := r.Find(Query{Text: "/3"}); len(got) != 0 {
		t.Errorf("event 3 should have been dropped, found %v", seqs(got))
	}
	// Seq continues across the wrap.
	r.Add(pathEvent(13))
	got, more = r.Find(Query{Limit: 1})
	if len(got) != 1 || got[0].Seq != 13 || got[0].Path != "/13" || !more {
		t.Errorf("after one more Add: Find(Limit 1) = %+v, more %v; want seq 13 /13, more", got, more)
	}
	if r.Len() != 5 {
		t.Errorf("Len = %d after wrap, want 5", r.Len())
	}
}

func TestRecentLen(t *testing.T) {
	tests := []struct{ size, adds, want int }{
		{5, 0, 0}, {5, 3, 3}, {5, 5, 5}, {5, 6, 5}, {0, 3, 3}, {-1, 0, 0},
	}
	for _, tt := range tests {
		r := NewRecent(tt.size)
		for i := range tt.adds {
			r.Add(pathEvent(i))
		}
		if got := r.Len(); got != tt.want {
			t.Errorf("NewRecent(%d) after %d adds: Len = %d, want %d", tt.size, tt.adds, got, tt.want)
		}
	}
	if got := len(NewRecent(0).buf); got != DefaultRecent {
		t.Errorf("NewRecent(0) holds %d, want %d", got, DefaultRecent)
	}
	if got := len(NewRecent(-7).buf); got != DefaultRecent {
		t.Errorf("NewRecent(-7) holds %d, want %d", got, DefaultRecent)
	}
}

func TestRecentPaging(t *testing.T) {
	r := NewRecent(100)
	for i := 1; i <= 25; i++ {
		e := pathEvent(i)
		if i%2 == 0 {
			e.Decision = "deny"
		}
		r.Add(e)
	}
	rng := func(from, to uint64) []uint64 { // from down to to, inclusive
		var s []uint64
		for i := from; i >= to; i-- {
			s = append(s, i)
		}
		return s
	}
	tests := []struct {
		name     string
		q        Query
		want     []uint64
		wantMore bool
	}{
		{"first page", Query{Limit: 10}, rng(25, 16), true},
		{"second page", Query{Limit: 10, Before: 16}, rng(15, 6), true},
		{"last page", Query{Limit: 10, Before: 6}, rng(5, 1), false},
		{"page exactly fits the rest", Query{Limit: 5, Before: 6}, rng(5, 1), false},
		{"before beyond newest is newest", Query{Limit: 3, Before: 1000}, rng(25, 23), true},
		{"before 1 is nothing", Query{Before: 1}, nil, false},
		{"filtered first page", Query{Decision: "deny", Limit: 4}, []uint64{24, 22, 20, 18}, true},
		{"filtered, no older match", Query{Decision: "deny", Limit: 4, Before: 8}, []uint64{6, 4, 2}, false},
		{"filtered, last match fills page", Query{Decision: "deny", Limit: 3, Before: 8}, []uint64{6, 4, 2}, false},
		{"filtered, one older match", Query{Decision: "deny", Limit: 2, Before: 8}, []uint64{6, 4}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, more := r.Find(tt.q)
			if !slices.Equal(seqs(got), tt.want) || more != tt.wantMore {
				t.Errorf("Find(%+v) = %v, more %v; want %v, more %v", tt.q, seqs(got), more, tt.want, tt.wantMore)
			}
		})
	}

	// Walking pages with the last Seq as cursor visits every match once.
	var walked []uint64
	q := Query{Decision: "allow", Limit: 4}
	for pages := 0; ; pages++ {
		if pages > 25 {
			t.Fatal("paging does not terminate")
		}
		got, more := r.Find(q)
		walked = append(walked, seqs(got)...)
		if !more {
			break
		}
		q.Before = got[len(got)-1].Seq
	}
	if want := []uint64{25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1}; !slices.Equal(walked, want) {
		t.Errorf("walked %v, want %v", walked, want)
	}
}

func TestRecentLimit(t *testing.T) {
	r := NewRecent(3000)
	for i := range 2000 {
		r.Add(pathEvent(i))
	}
	tests := []struct {
		limit, want int
		more        bool
	}{
		{0, DefaultFindLimit, true},
		{-5, DefaultFindLimit, true},
		{1, 1, true},
		{250, 250, true},
		{MaxFindLimit, MaxFindLimit, true},
		{MaxFindLimit + 1, MaxFindLimit, true},
		{1 << 30, MaxFindLimit, true},
	}
	for _, tt := range tests {
		got, more := r.Find(Query{Limit: tt.limit})
		if len(got) != tt.want || more != tt.more {
			t.Errorf("Limit %d: %d entries, more %v; want %d, more %v", tt.limit, len(got), more, tt.want, tt.more)
		}
		if len(got) > 0 && got[0].Seq != 2000 {
			t.Errorf("Limit %d: first seq %d, want the newest, 2000", tt.limit, got[0].Seq)
		}
	}
	// A ring smaller than the limit returns what it has, no more.
	small := NewRecent(3)
	for i := range 10 {
		small.Add(pathEvent(i))
	}
	if got, more := small.Find(Query{Limit: MaxFindLimit}); len(got) != 3 || more {
		t.Errorf("3-event ring: %d entries, more %v; want 3, false", len(got), more)
	}
}

func TestRecentNil(t *testing.T) {
	var r *Recent
	r.Add(pathEvent(1)) // must not panic
	if got, more := r.Find(Query{}); got != nil || more {
		t.Errorf("nil Recent Find = %v, %v; want nil, false", got, more)
	}
	if r.Len() != 0 {
		t.Errorf("nil Recent Len = %d", r.Len())
	}
}

func TestRecentAddDoesNotAllocate(t *testing.T) {
	r := NewRecent(16)
	e := filterEvents[0]
	if n := testing.AllocsPerRun(1000, func() { r.Add(e) }); n != 0 {
		t.Errorf("Add allocates %.1f times per call, want 0", n)
	}
}

// Concurrent writers and readers: under -race this checks the locking; the
// assertions check that Find sees a consistent ring (Seq strictly
// decreasing, each entry whole, each writer's events in its own order).
func TestRecentConcurrentAddFind(t *testing.T) {
	const writers, perWriter, size = 4, 5000, 1000
	r := NewRecent(size)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	writersDone := make(chan struct{})
	var ww sync.WaitGroup
	for w := range writers {
		ww.Add(1)
		go func() {
			defer ww.Done()
			for i := range perWriter {
				r.Add(Event{Kind: "request", User: fmt.Sprintf("w%d", w), Path: fmt.Sprintf("/w%d/%d", w, i),
					Reason: fmt.Sprintf("%d/%d", w, i), Decision: "allow"})
			}
		}()
	}
	go func() { ww.Wait(); close(writersDone) }()

	errs := make(chan error, 4)
	for reader := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for finds := 0; ; finds++ {
				q := Query{Limit: MaxFindLimit}
				if reader == 1 {
					q = Query{User: "w2", Limit: 50}
				}
				got, _ := r.Find(q)
				if err := checkConsistent(got, q.Limit); err != nil {
					errs <- err
					return
				}
				if len(got) > 1 { // page backwards from the middle too
					older, _ := r.Find(Query{Before: got[len(got)/2].Seq, Limit: 10, User: q.User})
					if err := checkConsistent(older, 10); err != nil {
						errs <- err
						return
					}
				}
				select {
				case <-writersDone:
					if finds > 0 {
						return
					}
				case <-ctx.Done():
					errs <- fmt.Errorf("readers still running at deadline: %w", ctx.Err())
					return
				default:
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if r.Len() != size {
		t.Errorf("Len = %d, want %d", r.Len(), size)
	}
	got, _ := r.Find(Query{Limit: 1})
	if len(got) != 1 || got[0].Seq != writers*perWriter {
		t.Errorf("newest = %v, want seq %d", seqs(got), writers*perWriter)
	}
}

func checkConsistent(es []Entry, limit int) error {
	if len(es) > limit {
		return fmt.Errorf("%d entries, limit %d", len(es), limit)
	}
	lastByWriter := map[string]int{}
	for i, e := range es {
		if i > 0 && e.Seq >= es[i-1].Seq {
			return fmt.Errorf("seq %d after %d: not strictly decreasing", e.Seq, es[i-1].Seq)
		}
		var w, n int
		if _, err := fmt.Sscanf(e.Reason, "%d/%d", &w, &n); err != nil {
			return fmt.Errorf("seq %d: reason %q: %v", e.Seq, e.Reason, err)
		}
		if e.Path != fmt.Sprintf("/w%d/%d", w, n) || e.User != fmt.Sprintf("w%d", w) {
			return fmt.Errorf("seq %d: torn entry %+v", e.Seq, e.Event)
		}
		if prev, ok := lastByWriter[e.User]; ok && n >= prev {
			return fmt.Errorf("seq %d: writer %s event %d listed after its event %d", e.Seq, e.User, n, prev)
		}
		lastByWriter[e.User] = n
	}
	return nil
}

func TestLogRecordFeedsRecent(t *testing.T) {
	tests := []struct {
		name    string
		keep    bool // call Keep with a ring
		keepNil bool // call Keep(nil)
	}{
		{name: "with a ring", keep: true},
		{name: "never kept"},
		{name: "kept nil", keepNil: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf syncBuffer
			l := New(&buf, time.Hour, nil)
			var r *Recent
			if tt.keep {
				r = NewRecent(10)
				l.Keep(r)
			}
			if tt.keepNil {
				l.Keep(nil)
			}
			for _, e := range filterEvents[:3] {
				l.Record(e)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := l.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(buf.String(), "\n"); n != 3 {
				t.Errorf("sink got %d lines, want 3", n)
			}
			if !tt.keep {
				return
			}
			got, more := r.Find(Query{})
			if !slices.Equal(seqs(got), []uint64{3, 2, 1}) || more {
				t.Fatalf("ring = %v, more %v; want [3 2 1]", seqs(got), more)
			}
			for _, e := range got {
				if e.Event != filterEvents[e.Seq-1] {
					t.Errorf("seq %d: %+v, want %+v", e.Seq, e.Event, filterEvents[e.Seq-1])
				}
			}
			// An event the sink drops (after Close) still reaches the ring.
			l.Record(filterEvents[3])
			if l.Dropped() != 1 || r.Len() != 4 {
				t.Errorf("after Close: dropped %d, ring %d; want 1, 4", l.Dropped(), r.Len())
			}
		})
	}
}

func TestContainsFold(t *testing.T) {
	tests := []struct {
		s, sub string
		want   bool
	}{
		{"", "", true},
		{"abc", "", true},
		{"", "a", false},
		{"Hello World", "o w", true},
		{"Hello World", "WORLD", true},
		{"Hello World", "worlds", false},
		{"abc", "abcd", false},
		{"aaab", "aab", true},
		{"/temp/\u212a", "/TEMP/K", true}, // Kelvin sign ≡ k
		{"/temp/k", "\u212a", true},
		{"ÜMIT@example.com", "ümit@", true},
		{"straße", "STRASSE", false}, // simple folding only, as strings.EqualFold
		{"ΣΊΣΥΦΟΣ", "σίσυφος", true},
		{"ΣΊΣΥΦΟΣ", "ς", true}, // final sigma folds with Σ
		{"日本語のパス", "のパ", true},
		{"日本語", "本日", false},
		{"bad \xff byte", "BYTE", true},
	}
	for _, tt := range tests {
		if got := containsFold(tt.s, tt.sub); got != tt.want {
			t.Errorf("containsFold(%q, %q) = %v, want %v", tt.s, tt.sub, got, tt.want)
		}
	}
}

// FuzzContainsFold checks containsFold against a brute-force reference:
// some run of whole runes of s is strings.EqualFold to substr.
func FuzzContainsFold(f *testing.F) {
	for _, seed := range [][2]string{{"Hello World", "o w"}, {"/temp/\u212a", "K"}, {"ΣΊΣΥΦΟΣ", "ς"}, {"aaab", "aab"}, {"", ""}} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, s, sub string) {
		if !utf8.ValidString(s) || !utf8.ValidString(sub) || len(s) > 200 || len(sub) > 20 {
			return // the reference below is defined on valid UTF-8; keep it quick
		}
		want := sub == ""
		for i := range s { // rune starts
			for j := i; j <= len(s) && !want; j++ {
				if utf8.ValidString(s[i:j]) && strings.EqualFold(s[i:j], sub) {
					want = true
				}
			}
		}
		if got := containsFold(s, sub); got != want {
			t.Errorf("containsFold(%q, %q) = %v, reference %v", s, sub, got, want)
		}
	})
}

func BenchmarkRecentAdd(b *testing.B) {
	r := NewRecent(0)
	e := Event{Time: time.Now(), Kind: "request", User: "u-alice", Email: "alice@example.com", Session: "0123456789abcdef",
		App: "wiki", Method: "GET", Host: "wiki.example:8443", Path: "/a/b", Source: "127.0.0.1:5555",
		Decision: "allow", Rule: "employees", Reason: `allowed by rule "employees"`, Latency: 12345}
	b.ReportAllocs()
	for b.Loop() {
		r.Add(e)
	}
}

// BenchmarkRecentFindFullScan is the worst case for a console query: a full
// default-size ring, a text filter that matches nothing, so every event is
// copied out and compared.
func BenchmarkRecentFindFullScan(b *testing.B) {
	r := NewRecent(0)
	for i := range DefaultRecent {
		r.Add(Event{Kind: "request", User: fmt.Sprintf("u-%d", i%50), Email: fmt.Sprintf("user%d@example.com", i%50),
			App: "wiki", Path: fmt.Sprintf("/pages/%d/edit", i), Decision: "allow", Rule: "employees",
			Reason: `allowed by rule "employees"`})
	}
	b.ReportAllocs()
	for b.Loop() {
		if got, _ := r.Find(Query{Text: "no such thing"}); len(got) != 0 {
			b.Fatal("matched")
		}
	}
}
