package audit

import (
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

const (
	// DefaultRecent is how many events NewRecent keeps when asked for n <= 0.
	DefaultRecent = 10000
	// DefaultFindLimit is how many entries Find returns when Query.Limit <= 0.
	DefaultFindLimit = 100
	// MaxFindLimit caps Query.Limit, so one console page is bounded.
	MaxFindLimit = 1000

	// findChunk is how many ring slots Find copies out per hold of the
	// mutex. Matching runs outside the lock, so Add (on the request path,
	// through Log.Record) waits at most for one chunk's copy, whatever the
	// query costs.
	findChunk = 256
)

// Recent keeps the last N audit events in memory for the console (a ring;
// oldest dropped). It is this replica's recent history, for searching from
// the admin console; the authoritative record stays the JSON-lines sink.
//
// It holds the same Event values the sink writes, so it never holds more
// than the sink does: no cookie values, no tokens, only session references.
//
// The ring is allocated once, in NewRecent (about n × the size of an Event
// header; the strings are shared with the caller), so Add never allocates.
// A nil *Recent is valid: Add does nothing, Find finds nothing, Len is 0.
type Recent struct {
	mu   sync.Mutex
	buf  []Entry // slot of Seq s is buf[s%len(buf)]
	last uint64  // Seq of the newest entry; 0 before the first Add
}

// Entry is one event in a Recent ring with its sequence number. Seq starts
// at 1 and increases by one per Add, so it is a stable cursor for paging
// (Query.Before) even while new events arrive and old ones are dropped.
type Entry struct {
	Seq uint64 `json:"seq"`
	Event
}

// NewRecent returns a ring that keeps the last n events (n <= 0 → 10,000).
func NewRecent(n int) *Recent {
	if n <= 0 {
		n = DefaultRecent
	}
	return &Recent{buf: make([]Entry, n)}
}

// Add records e as the newest event, dropping the oldest when the ring is
// full. It never blocks for longer than a concurrent Find's copy of one
// chunk of slots, and never allocates.
func (r *Recent) Add(e Event) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.last++
	r.buf[r.last%uint64(len(r.buf))] = Entry{Seq: r.last, Event: e}
	r.mu.Unlock()
}

// Len reports how many events the ring holds (at most its size).
func (r *Recent) Len() int {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return int(min(r.last, uint64(len(r.buf))))
}

// Query filters the events Find returns. Zero fields match everything; the
// set fields must all match.
type Query struct {
	User     string // exact user ID, or a case-insensitive substring of the email
	Device   string // exact device ID
	App      string // exact app name
	Kind     string // exact: "request", "stream", "stream_close", "admin", "signal"
	Decision string // exact ("allow", "deny", …)
	Text     string // case-insensitive substring of reason or rule or path
	// Since and Until bound the event's Time: Since <= Time < Until.
	Since, Until time.Time
	Limit        int    // ≤ 0 → 100; capped at 1,000
	Before       uint64 // page backwards: only events with Seq < Before (0 → newest)
}

// Find returns matching entries, newest first, at most Limit, and whether
// older matches exist (ask for them with Before set to the last entry's Seq).
//
// It scans at most the ring, newest to oldest, from the newest event at the
// time of the call (events added while it runs are not included; the next
// query sees them). It copies the ring a chunk at a time, so concurrent Adds
// are never held up by the matching.
func (r *Recent) Find(q Query) (entries []Entry, more bool) {
	if r == nil {
		return nil, false
	}
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultFindLimit
	}
	limit = min(limit, MaxFindLimit)

	r.mu.Lock()
	cur := r.last // the next Seq to look at; 0 means none left
	size := uint64(len(r.buf))
	r.mu.Unlock()
	if q.Before != 0 && q.Before-1 < cur {
		cur = q.Before - 1
	}

	chunk := make([]Entry, min(size, findChunk))
	for cur > 0 {
		// Copy out the slots for Seq cur, cur-1, …, stopping at the
		// oldest Seq the ring still holds now (later Adds may have
		// overwritten what was there when Find began).
		r.mu.Lock()
		oldest := uint64(1)
		if r.last > size {
			oldest = r.last - size + 1
		}
		n := 0
		for n < len(chunk) && cur >= oldest {
			chunk[n] = r.buf[cur%size]
			n++
			cur--
		}
		if cur < oldest {
			cur = 0 // nothing older is left in the ring
		}
		r.mu.Unlock()

		for i := range chunk[:n] {
			if !q.matches(&chunk[i].Event) {
				continue
			}
			if len(entries) == limit {
				return entries, true
			}
			entries = append(entries, chunk[i])
		}
	}
	return entries, false
}

// matches reports whether e passes every set field of q.
func (q *Query) matches(e *Event) bool {
	switch {
	case q.Device != "" && e.Device != q.Device,
		q.App != "" && e.App != q.App,
		q.Kind != "" && e.Kind != q.Kind,
		q.Decision != "" && e.Decision != q.Decision,
		!q.Since.IsZero() && e.Time.Before(q.Since),
		!q.Until.IsZero() && !e.Time.Before(q.Until):
		return false
	}
	if q.User != "" && e.User != q.User && !containsFold(e.Email, q.User) {
		return false
	}
	if q.Text != "" && !containsFold(e.Reason, q.Text) && !containsFold(e.Rule, q.Text) && !containsFold(e.Path, q.Text) {
		return false
	}
	return true
}

// containsFold reports whether substr is within s under Unicode simple case
// folding (the equivalence strings.EqualFold uses), without allocating.
// Its cost is bounded by len(s) × len(substr) whatever substr is: a long
// substr fails as soon as s runs out.
func containsFold(s, substr string) bool {
	if substr == "" {
		return true
	}
	// An ASCII byte of s can only fold-match an ASCII first byte of substr
	// when their lower cases are equal: a cheap test that skips most starts.
	first := substr[0]
	firstASCII, firstLower := first < utf8.RuneSelf, lowerASCII(first)
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if (!firstASCII || lowerASCII(c) == firstLower) && hasPrefixFold(s[i:], substr) {
				return true
			}
			i++
			continue
		}
		if hasPrefixFold(s[i:], substr) {
			return true
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
	}
	return false
}

// hasPrefixFold reports whether s begins with prefix under simple case
// folding, rune by rune.
func hasPrefixFold(s, prefix string) bool {
	for prefix != "" {
		if s == "" {
			return false
		}
		if a, b := s[0], prefix[0]; a < utf8.RuneSelf && b < utf8.RuneSelf {
			if a != b && lowerASCII(a) != lowerASCII(b) {
				return false
			}
			s, prefix = s[1:], prefix[1:]
			continue
		}
		sr, sn := utf8.DecodeRuneInString(s)
		pr, pn := utf8.DecodeRuneInString(prefix)
		if !equalFoldRune(sr, pr) {
			return false
		}
		s, prefix = s[sn:], prefix[pn:]
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// equalFoldRune is strings.EqualFold for one rune each.
func equalFoldRune(a, b rune) bool {
	if a == b {
		return true
	}
	if b < a {
		a, b = b, a
	}
	if b < utf8.RuneSelf {
		return 'A' <= a && a <= 'Z' && b == a+'a'-'A'
	}
	// SimpleFold cycles through the runes equivalent to a, in increasing
	// order with wrap-around.
	f := unicode.SimpleFold(a)
	for f != a && f < b {
		f = unicode.SimpleFold(f)
	}
	return f == b
}
