// Package storetest is the conformance suite every store.Store must pass
// (bbolt, memory and Redis), so callers can rely on one set of
// semantics whatever runs behind the interface.
//
// It uses real time with short TTLs and waits on conditions with deadlines;
// it never sleeps to synchronise. It must never depend on an
// implementation's internals: only the store.Store interface.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/store"
)

// Run runs the suite. open must return a new, empty store for each call and
// should close it in t.Cleanup; the suite closes some stores itself, so
// Close must be idempotent (which the suite also checks).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"GetPutDelete", testGetPutDelete},
		{"Overwrite", testOverwrite},
		{"EmptyValue", testEmptyValue},
		{"ValuesAreCopied", testValuesAreCopied},
		{"Expiry", testExpiry},
		{"NoExpiry", testNoExpiry},
		{"PutIfAbsent", testPutIfAbsent},
		{"PutIfAbsentAfterExpiry", testPutIfAbsentAfterExpiry},
		{"PutIfAbsentConcurrent", testPutIfAbsentConcurrent},
		{"Take", testTake},
		{"TakeConcurrent", testTakeConcurrent},
		{"List", testList},
		{"ListEarlyStop", testListEarlyStop},
		{"ListSkipsExpired", testListSkipsExpired},
		{"ListMany", testListMany},
		{"ListCallbackUsesStore", testListCallbackUsesStore},
		{"BucketIsolation", testBucketIsolation},
		{"Validation", testValidation},
		{"ContextDone", testContextDone},
		{"ListContextCancelledMidway", testListContextCancelledMidway},
		{"Concurrent", testConcurrent},
		{"Close", testClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, open(t))
		})
	}
}

// Bounds for waits. Expired entries must read as missing "promptly": well
// within expiryGrace after their TTL, whatever the sweep interval.
const (
	shortTTL    = 100 * time.Millisecond
	expiryGrace = 2 * time.Second
	pollEvery   = 5 * time.Millisecond
	waitLimit   = 20 * time.Second
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}

func mustPut(t *testing.T, s store.Store, bucket, key, value string, ttl time.Duration) {
	t.Helper()
	if err := s.Put(ctxT(t), bucket, key, []byte(value), ttl); err != nil {
		t.Fatalf("Put(%q, %q): %v", bucket, key, err)
	}
}

func wantValue(t *testing.T, s store.Store, bucket, key, want string) {
	t.Helper()
	got, err := s.Get(ctxT(t), bucket, key)
	if err != nil {
		t.Fatalf("Get(%q, %q): %v, want %q", bucket, key, err, want)
	}
	if string(got) != want {
		t.Fatalf("Get(%q, %q) = %q, want %q", bucket, key, got, want)
	}
}

func wantMissing(t *testing.T, s store.Store, bucket, key string) {
	t.Helper()
	got, err := s.Get(ctxT(t), bucket, key)
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(%q, %q) = %q, %v; want ErrNotFound", bucket, key, got, err)
	}
}

// putExpiring puts key with ttl and waits until Get reports it missing. It
// fails if the store reports it missing (or a wrong value) before ttl has
// passed, or still returns it expiryGrace after.
func putExpiring(t *testing.T, s store.Store, bucket, key, value string, ttl time.Duration) {
	t.Helper()
	start := time.Now()
	mustPut(t, s, bucket, key, value, ttl)
	deadline := start.Add(ttl + expiryGrace)
	for {
		got, err := s.Get(ctxT(t), bucket, key)
		elapsed := time.Since(start)
		switch {
		case errors.Is(err, store.ErrNotFound):
			if elapsed < ttl {
				t.Fatalf("%q reported missing after %v, before its ttl %v", key, elapsed, ttl)
			}
			return
		case err != nil:
			t.Fatalf("Get(%q, %q) while waiting for expiry: %v", bucket, key, err)
		case string(got) != value:
			t.Fatalf("Get(%q, %q) = %q before expiry, want %q", bucket, key, got, value)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q still readable %v after put with ttl %v", key, elapsed, ttl)
		}
		time.Sleep(pollEvery)
	}
}

func listAll(t *testing.T, s store.Store, bucket, prefix string) []string {
	t.Helper()
	var got []string
	err := s.List(ctxT(t), bucket, prefix, func(k string, v []byte) bool {
		got = append(got, k+"="+string(v))
		return true
	})
	if err != nil {
		t.Fatalf("List(%q, %q): %v", bucket, prefix, err)
	}
	return got
}

// start runs n goroutines that all begin at once, and waits for them.
func start(n int, fn func(i int)) {
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-gate
			fn(i)
		})
	}
	close(gate)
	wg.Wait()
}

func testGetPutDelete(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	wantMissing(t, s, "b", "k") // bucket does not exist yet
	mustPut(t, s, "b", "k", "v1", 0)
	wantValue(t, s, "b", "k", "v1")
	wantMissing(t, s, "b", "other")
	if err := s.Delete(ctx, "b", "k"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantMissing(t, s, "b", "k")
	if err := s.Delete(ctx, "b", "k"); err != nil {
		t.Fatalf("Delete of a missing key: %v", err)
	}
	if err := s.Delete(ctx, "never-used", "k"); err != nil {
		t.Fatalf("Delete in a missing bucket: %v", err)
	}
	if _, err := s.Take(ctx, "never-used", "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Take in a missing bucket: %v, want ErrNotFound", err)
	}
}

func testOverwrite(t *testing.T, s store.Store) {
	mustPut(t, s, "b", "k", "v1", 0)
	mustPut(t, s, "b", "k", "a longer second value", 0)
	wantValue(t, s, "b", "k", "a longer second value")
	mustPut(t, s, "b", "k", "v3", 0)
	wantValue(t, s, "b", "k", "v3")

	// Overwriting replaces the ttl too: a key first put with a short ttl,
	// then with none, outlives a witness put with the same short ttl.
	mustPut(t, s, "b", "k", "short", shortTTL)
	mustPut(t, s, "b", "k", "forever", 0)
	putExpiring(t, s, "b", "witness", "w", shortTTL)
	wantValue(t, s, "b", "k", "forever")

	// And the other way round.
	mustPut(t, s, "b", "k2", "forever", 0)
	putExpiring(t, s, "b", "k2", "short", shortTTL)
}

func testEmptyValue(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	for _, v := range [][]byte{nil, {}} {
		if err := s.Put(ctx, "b", "k", v, 0); err != nil {
			t.Fatalf("Put(%#v): %v", v, err)
		}
		got, err := s.Get(ctx, "b", "k")
		if err != nil || len(got) != 0 {
			t.Fatalf("Get after Put(%#v) = %q, %v; want empty value, nil", v, got, err)
		}
	}
}

func testValuesAreCopied(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	in := []byte("original")
	if err := s.Put(ctx, "b", "k", in, 0); err != nil {
		t.Fatal(err)
	}
	copy(in, "MUTATED!")
	wantValue(t, s, "b", "k", "original")

	out, err := s.Get(ctx, "b", "k")
	if err != nil {
		t.Fatal(err)
	}
	copy(out, "MUTATED!")
	wantValue(t, s, "b", "k", "original")

	err = s.List(ctx, "b", "", func(_ string, v []byte) bool {
		copy(v, "MUTATED!")
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	wantValue(t, s, "b", "k", "original")
}

func testExpiry(t *testing.T, s store.Store) {
	for _, ttl := range []time.Duration{50 * time.Millisecond, 200 * time.Millisecond} {
		t.Run(ttl.String(), func(t *testing.T) {
			putExpiring(t, s, "b", "k"+ttl.String(), "v", ttl)
		})
	}
}

func testNoExpiry(t *testing.T, s store.Store) {
	mustPut(t, s, "b", "forever", "v", 0)
	mustPut(t, s, "b", "long", "v", time.Hour)
	putExpiring(t, s, "b", "witness", "w", shortTTL)
	wantValue(t, s, "b", "forever", "v")
	wantValue(t, s, "b", "long", "v")
}

func testPutIfAbsent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	steps := []struct {
		value  string
		stored bool
		want   string
	}{
		{"first", true, "first"},
		{"second", false, "first"},
		{"third", false, "first"},
	}
	for _, st := range steps {
		ok, err := s.PutIfAbsent(ctx, "b", "k", []byte(st.value), 0)
		if err != nil || ok != st.stored {
			t.Fatalf("PutIfAbsent(%q) = %v, %v; want %v, nil", st.value, ok, err, st.stored)
		}
		wantValue(t, s, "b", "k", st.want)
	}
	if err := s.Delete(ctx, "b", "k"); err != nil {
		t.Fatal(err)
	}
	ok, err := s.PutIfAbsent(ctx, "b", "k", []byte("after delete"), 0)
	if err != nil || !ok {
		t.Fatalf("PutIfAbsent after Delete = %v, %v; want true, nil", ok, err)
	}
	wantValue(t, s, "b", "k", "after delete")
}

func testPutIfAbsentAfterExpiry(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	putExpiring(t, s, "b", "k", "old", shortTTL)
	ok, err := s.PutIfAbsent(ctx, "b", "k", []byte("new"), 0)
	if err != nil || !ok {
		t.Fatalf("PutIfAbsent over an expired entry = %v, %v; want true, nil", ok, err)
	}
	// The new entry has the new (zero) ttl, not the old one.
	putExpiring(t, s, "b", "witness", "w", shortTTL)
	wantValue(t, s, "b", "k", "new")

	// And a live entry put by PutIfAbsent with a ttl expires with it.
	begin := time.Now()
	ok, err = s.PutIfAbsent(ctx, "b", "marker", []byte("m"), shortTTL)
	if err != nil || !ok {
		t.Fatalf("PutIfAbsent(marker) = %v, %v", ok, err)
	}
	ok, err = s.PutIfAbsent(ctx, "b", "marker", []byte("again"), shortTTL)
	if err != nil || (ok && time.Since(begin) < shortTTL) {
		t.Fatalf("second PutIfAbsent(marker) before ttl = %v, %v; want false, nil", ok, err)
	}
}

func testPutIfAbsentConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	const n = 50
	var mu sync.Mutex
	var winners []int
	var errs []error
	start(n, func(i int) {
		ok, err := s.PutIfAbsent(ctx, "jti", "token-1", []byte(fmt.Sprint(i)), time.Minute)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			winners = append(winners, i)
		}
	})
	if len(errs) > 0 {
		t.Fatalf("PutIfAbsent errors: %v", errs)
	}
	if len(winners) != 1 {
		t.Fatalf("%d of %d concurrent PutIfAbsent calls stored the value, want exactly 1", len(winners), n)
	}
	wantValue(t, s, "jti", "token-1", fmt.Sprint(winners[0]))
}

func testTake(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	mustPut(t, s, "codes", "c1", "session-a", time.Minute)
	got, err := s.Take(ctx, "codes", "c1")
	if err != nil || string(got) != "session-a" {
		t.Fatalf("Take = %q, %v; want \"session-a\", nil", got, err)
	}
	if got, err := s.Take(ctx, "codes", "c1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second Take = %q, %v; want ErrNotFound", got, err)
	}
	wantMissing(t, s, "codes", "c1")
	if _, err := s.Take(ctx, "codes", "never-put"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Take of a missing key: %v, want ErrNotFound", err)
	}

	putExpiring(t, s, "codes", "c2", "late", shortTTL)
	if got, err := s.Take(ctx, "codes", "c2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Take of an expired key = %q, %v; want ErrNotFound", got, err)
	}
}

func testTakeConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	const n = 50
	for round := range 5 {
		key := fmt.Sprintf("code-%d", round)
		mustPut(t, s, "codes", key, "the-value", time.Minute)
		var mu sync.Mutex
		var got []string
		var errs []error
		start(n, func(int) {
			v, err := s.Take(ctx, "codes", key)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				got = append(got, string(v))
			case !errors.Is(err, store.ErrNotFound):
				errs = append(errs, err)
			}
		})
		if len(errs) > 0 {
			t.Fatalf("round %d: Take errors other than ErrNotFound: %v", round, errs)
		}
		if len(got) != 1 || got[0] != "the-value" {
			t.Fatalf("round %d: %d of %d concurrent Takes got a value (%.40q); want exactly one \"the-value\"", round, len(got), n, got)
		}
		wantMissing(t, s, "codes", key)
	}
}

func testList(t *testing.T, s store.Store) {
	for _, k := range []string{"a/2", "b/1", "a/10", "a", "a/1", "ab", "a/\xff"} {
		mustPut(t, s, "b", k, "v"+k, 0)
	}
	mustPut(t, s, "other", "a/3", "x", 0)
	tests := []struct {
		prefix string
		want   []string
	}{
		{"a/", []string{"a/1=va/1", "a/10=va/10", "a/2=va/2", "a/\xff=va/\xff"}},
		{"a", []string{"a=va", "a/1=va/1", "a/10=va/10", "a/2=va/2", "a/\xff=va/\xff", "ab=vab"}},
		{"", []string{"a=va", "a/1=va/1", "a/10=va/10", "a/2=va/2", "a/\xff=va/\xff", "ab=vab", "b/1=vb/1"}},
		{"a/1", []string{"a/1=va/1", "a/10=va/10"}},
		{"b/1", []string{"b/1=vb/1"}},
		{"c", nil},
		{"a/1/", nil},
	}
	for _, tc := range tests {
		if got := listAll(t, s, "b", tc.prefix); !slices.Equal(got, tc.want) {
			t.Errorf("List(prefix %q) = %q, want %q", tc.prefix, got, tc.want)
		}
	}
	if got := listAll(t, s, "never-used", ""); got != nil {
		t.Errorf("List of a missing bucket = %q, want nothing", got)
	}
}

func testListEarlyStop(t *testing.T, s store.Store) {
	for i := range 10 {
		mustPut(t, s, "b", fmt.Sprintf("k%02d", i), "v", 0)
	}
	for _, stopAfter := range []int{1, 3, 10} {
		var got []string
		err := s.List(ctxT(t), "b", "k", func(k string, _ []byte) bool {
			got = append(got, k)
			return len(got) < stopAfter
		})
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(got) != stopAfter {
			t.Errorf("fn returning false after %d calls was called %d times (%q)", stopAfter, len(got), got)
		}
		if len(got) > 0 && got[0] != "k00" {
			t.Errorf("first key = %q, want k00", got[0])
		}
	}
}

func testListSkipsExpired(t *testing.T, s store.Store) {
	mustPut(t, s, "b", "p/live1", "1", 0)
	mustPut(t, s, "b", "p/live2", "2", time.Hour)
	mustPut(t, s, "b", "p/dead1", "x", shortTTL)
	putExpiring(t, s, "b", "p/dead2", "x", shortTTL)
	wantMissing(t, s, "b", "p/dead1")
	want := []string{"p/live1=1", "p/live2=2"}
	if got := listAll(t, s, "b", "p/"); !slices.Equal(got, want) {
		t.Fatalf("List = %q, want %q", got, want)
	}
}

// testListMany lists more entries than one page of any sensible
// implementation, with expired entries scattered among them.
func testListMany(t *testing.T, s store.Store) {
	const n = 1500
	var want []string
	for i := range n {
		k := fmt.Sprintf("s/%05d", i)
		if i%7 == 3 {
			mustPut(t, s, "b", k, "gone", shortTTL)
			continue
		}
		mustPut(t, s, "b", k, fmt.Sprint(i), 0)
		want = append(want, k+"="+fmt.Sprint(i))
	}
	mustPut(t, s, "b", "t/after", "x", 0)
	putExpiring(t, s, "b", "witness", "w", shortTTL)
	if got := listAll(t, s, "b", "s/"); !slices.Equal(got, want) {
		t.Fatalf("List returned %d entries, want %d; first difference at %d", len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// testListCallbackUsesStore deletes and writes from inside fn, which an
// implementation that holds a lock or transaction during fn deadlocks on.
func testListCallbackUsesStore(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	const n = 600
	for i := range n {
		mustPut(t, s, "sessions", fmt.Sprintf("u1/%04d", i), strings.Repeat("x", 100), 0)
	}
	blob := bytes.Repeat([]byte("b"), store.MaxValueSize)
	// A deadline of its own: the puts above may have used much of the
	// first on a busy machine (each write of a file-backed store syncs).
	ctx = ctxT(t)
	done := make(chan error, 1)
	seen := 0
	go func() {
		done <- s.List(ctx, "sessions", "u1/", func(k string, _ []byte) bool {
			seen++
			if err := s.Delete(ctx, "sessions", k); err != nil {
				t.Errorf("Delete inside List: %v", err)
				return false
			}
			if err := s.Put(ctx, "revoked", k, []byte("1"), 0); err != nil {
				t.Errorf("Put inside List: %v", err)
				return false
			}
			// Large values make a file-backed store grow while fn runs.
			if seen <= 4 {
				if err := s.Put(ctx, "blobs", k, blob, 0); err != nil {
					t.Errorf("Put of %d bytes inside List: %v", len(blob), err)
					return false
				}
			}
			return true
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("List: %v", err)
		}
	case <-time.After(waitLimit):
		msg := fmt.Sprintf("List whose callback writes to the store did not return within %v: "+
			"the store holds a lock or transaction while calling fn", waitLimit)
		// Also straight to stderr: the deadlocked store will hang in Close
		// during cleanup, so t's output may only appear at the test timeout.
		fmt.Fprintln(os.Stderr, "storetest:", t.Name()+":", msg)
		t.Fatal(msg)
	}
	if seen != n {
		t.Errorf("callback saw %d entries, want %d", seen, n)
	}
	if got := listAll(t, s, "sessions", ""); len(got) != 0 {
		t.Errorf("%d sessions left after deleting all inside List", len(got))
	}
	if got := listAll(t, s, "revoked", ""); len(got) != n {
		t.Errorf("%d revoked entries, want %d", len(got), n)
	}
}

func testBucketIsolation(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	mustPut(t, s, "b1", "k", "one", 0)
	mustPut(t, s, "b2", "k", "two", 0)
	// Names that collide if an implementation joins bucket and key with
	// a separator, or matches buckets by prefix.
	mustPut(t, s, "a", "b:c", "a|b:c", 0)
	mustPut(t, s, "a:b", "c", "a:b|c", 0)
	mustPut(t, s, "b1x", "k", "b1x", 0)
	wantValue(t, s, "b1", "k", "one")
	wantValue(t, s, "b2", "k", "two")
	wantValue(t, s, "a", "b:c", "a|b:c")
	wantValue(t, s, "a:b", "c", "a:b|c")
	wantMissing(t, s, "a", "c")
	wantMissing(t, s, "a:b", "b:c")

	if err := s.Delete(ctx, "b1", "k"); err != nil {
		t.Fatal(err)
	}
	wantMissing(t, s, "b1", "k")
	wantValue(t, s, "b2", "k", "two")
	wantValue(t, s, "b1x", "k", "b1x")

	if got, want := listAll(t, s, "a", ""), []string{"b:c=a|b:c"}; !slices.Equal(got, want) {
		t.Errorf("List(a) = %q, want %q", got, want)
	}
	if got, want := listAll(t, s, "a:b", ""), []string{"c=a:b|c"}; !slices.Equal(got, want) {
		t.Errorf("List(a:b) = %q, want %q", got, want)
	}
	if _, err := s.Take(ctx, "b2", "k"); err != nil {
		t.Fatal(err)
	}
	wantValue(t, s, "b1x", "k", "b1x")
	ok, err := s.PutIfAbsent(ctx, "b3", "k", []byte("three"), 0)
	if err != nil || !ok {
		t.Fatalf("PutIfAbsent in a fresh bucket = %v, %v; want true", ok, err)
	}
}

func testValidation(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	maxKey := strings.Repeat("k", store.MaxKeySize)
	longKey := maxKey + "k"
	maxValue := bytes.Repeat([]byte("v"), store.MaxValueSize)
	bigValue := append(bytes.Clone(maxValue), 'v')

	type op struct {
		name string
		call func(bucket, key string, value []byte, ttl time.Duration) error
	}
	ops := []op{
		{"Get", func(b, k string, _ []byte, _ time.Duration) error { _, err := s.Get(ctx, b, k); return err }},
		{"Put", func(b, k string, v []byte, ttl time.Duration) error { return s.Put(ctx, b, k, v, ttl) }},
		{"PutIfAbsent", func(b, k string, v []byte, ttl time.Duration) error {
			_, err := s.PutIfAbsent(ctx, b, k, v, ttl)
			return err
		}},
		{"Take", func(b, k string, _ []byte, _ time.Duration) error { _, err := s.Take(ctx, b, k); return err }},
		{"Delete", func(b, k string, _ []byte, _ time.Duration) error { return s.Delete(ctx, b, k) }},
	}
	writes := map[string]bool{"Put": true, "PutIfAbsent": true}

	tests := []struct {
		name       string
		bucket     string
		key        string
		value      []byte
		ttl        time.Duration
		writesOnly bool // only Put and PutIfAbsent look at value and ttl
	}{
		{name: "empty bucket", bucket: "", key: "k"},
		{name: "empty key", bucket: "b", key: ""},
		{name: "key over limit", bucket: "b", key: longKey},
		{name: "bucket over limit", bucket: longKey, key: "k"},
		{name: "value over limit", bucket: "b", key: "k", value: bigValue, writesOnly: true},
		{name: "negative ttl", bucket: "b", key: "k", ttl: -time.Second, writesOnly: true},
	}
	for _, tc := range tests {
		for _, o := range ops {
			if tc.writesOnly && !writes[o.name] {
				continue
			}
			err := o.call(tc.bucket, tc.key, tc.value, tc.ttl)
			if !errors.Is(err, store.ErrInvalid) {
				t.Errorf("%s with %s: %v, want an error wrapping store.ErrInvalid", o.name, tc.name, err)
			}
		}
	}
	for _, bucket := range []string{"", longKey} {
		if err := s.List(ctx, bucket, "", func(string, []byte) bool { return true }); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("List with bucket of %d bytes: %v, want ErrInvalid", len(bucket), err)
		}
	}
	// Nothing invalid was stored.
	wantMissing(t, s, "b", "k")

	// The limits themselves are allowed.
	if err := s.Put(ctx, maxKey, maxKey, maxValue, 0); err != nil {
		t.Fatalf("Put at the size limits: %v", err)
	}
	got, err := s.Get(ctx, maxKey, maxKey)
	if err != nil || !bytes.Equal(got, maxValue) {
		t.Fatalf("Get at the size limits: %d bytes, %v", len(got), err)
	}
}

func testContextDone(t *testing.T, s store.Store) {
	mustPut(t, s, "b", "k", "v", 0)
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	expired, cancel2 := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel2()

	for _, c := range []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"cancelled", cancelled, context.Canceled},
		{"deadline exceeded", expired, context.DeadlineExceeded},
	} {
		ctx := c.ctx
		calls := map[string]func() error{
			"Get": func() error { _, err := s.Get(ctx, "b", "k"); return err },
			"Put": func() error { return s.Put(ctx, "b", "new", []byte("x"), 0) },
			"PutIfAbsent": func() error {
				_, err := s.PutIfAbsent(ctx, "b", "new2", []byte("x"), 0)
				return err
			},
			"Take":   func() error { _, err := s.Take(ctx, "b", "k"); return err },
			"Delete": func() error { return s.Delete(ctx, "b", "k") },
			"List": func() error {
				return s.List(ctx, "b", "", func(string, []byte) bool {
					t.Errorf("List with %s context called fn", c.name)
					return true
				})
			},
		}
		for name, call := range calls {
			if err := call(); !errors.Is(err, c.want) {
				t.Errorf("%s with %s context: %v, want %v", name, c.name, err, c.want)
			}
		}
	}
	// None of them had an effect.
	wantValue(t, s, "b", "k", "v")
	wantMissing(t, s, "b", "new")
	wantMissing(t, s, "b", "new2")
}

func testListContextCancelledMidway(t *testing.T, s store.Store) {
	for i := range 5 {
		mustPut(t, s, "b", fmt.Sprint(i), "v", 0)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	calls := 0
	err := s.List(ctx, "b", "", func(string, []byte) bool {
		calls++
		cancel()
		return true
	})
	if !errors.Is(err, context.Canceled) || calls != 1 {
		t.Fatalf("List cancelled in the first callback: %d calls, err %v; want 1 call, context.Canceled", calls, err)
	}
}

// testConcurrent mixes every operation on overlapping keys; it checks for
// unexpected errors, and -race checks the rest.
func testConcurrent(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	const workers, ops = 8, 150
	errs := make(chan error, workers)
	start(workers, func(w int) {
		for i := range ops {
			key := fmt.Sprintf("k%d", i%10)
			val := []byte(fmt.Sprintf("w%d-%d", w, i))
			var err error
			switch i % 7 {
			case 0:
				err = s.Put(ctx, "c", key, val, 0)
			case 1:
				err = s.Put(ctx, "c", key, val, time.Millisecond)
			case 2:
				_, err = s.Get(ctx, "c", key)
			case 3:
				_, err = s.PutIfAbsent(ctx, "c", key, val, time.Minute)
			case 4:
				_, err = s.Take(ctx, "c", key)
			case 5:
				err = s.Delete(ctx, "c", key)
			case 6:
				err = s.List(ctx, "c", "k", func(string, []byte) bool { return true })
			}
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				errs <- fmt.Errorf("worker %d op %d: %w", w, i, err)
				return
			}
		}
	})
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testClose(t *testing.T, s store.Store) {
	mustPut(t, s, "b", "k", "v", 0)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ctx := ctxT(t)
	checks := map[string]error{}
	_, checks["Get"] = s.Get(ctx, "b", "k")
	checks["Put"] = s.Put(ctx, "b", "k", []byte("v"), 0)
	_, checks["PutIfAbsent"] = s.PutIfAbsent(ctx, "b", "k2", []byte("v"), 0)
	_, checks["Take"] = s.Take(ctx, "b", "k")
	checks["Delete"] = s.Delete(ctx, "b", "k")
	checks["List"] = s.List(ctx, "b", "", func(string, []byte) bool { return true })
	for name, err := range checks {
		if !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close: %v, want store.ErrClosed", name, err)
		}
	}
}
