package posture

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/store"
)

// rptClock is a settable clock for NonceBook issue times.
type rptClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *rptClock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *rptClock) set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }

func TestVerify(t *testing.T) {
	key, other := rptKey(t), rptKey(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	clock := &rptClock{t: rptT0.Add(-30 * time.Second)}
	book := NewNonceBook(NonceBookConfig{TTL: 5 * time.Minute, Now: clock.now})
	nonce := book.Issue("dev-1")
	otherDevNonce := book.Issue("dev-2")
	v := &ReportVerifier{Nonces: book}

	report := func(edit func(r *Report)) Report {
		r := rptReport()
		r.Nonce = nonce
		if edit != nil {
			edit(&r)
		}
		return r
	}
	type input struct {
		wire   []byte
		device string
		key    *ecdsa.PublicKey
		last   uint64
		now    time.Time
	}
	ok := func(edit func(*input)) input {
		in := input{wire: rptSign(t, key, report(nil)), device: "dev-1", key: &key.PublicKey, last: 6, now: rptT0}
		if edit != nil {
			edit(&in)
		}
		return in
	}
	signed := func(k *ecdsa.PrivateKey, edit func(r *Report)) func(*input) {
		return func(in *input) { in.wire = rptSign(t, k, report(edit)) }
	}

	for _, tc := range []struct {
		name string
		in   input
		want error // nil: accepted
	}{
		{"valid", ok(nil), nil},
		{"first report", ok(func(in *input) { in.last = 0 }), nil},
		{"signed by another key", ok(signed(other, nil)), ErrSignature},
		{"tampered payload", ok(func(in *input) { in.wire = rptTamper(t, in.wire, `"counter":7`, `"counter":9`) }), ErrSignature},
		{"tampered verdict input", ok(func(in *input) { in.wire = rptTamper(t, in.wire, `"running":true`, `"running":false`) }), ErrSignature},
		{"high-S twin", ok(func(in *input) { in.wire = rptHighS(t, in.wire) }), ErrSignature},
		{"no device key", ok(func(in *input) { in.key = nil }), ErrSignature},
		{"P-384 device key", ok(func(in *input) { in.key = &p384.PublicKey }), ErrSignature},
		{"replayed (same counter)", ok(func(in *input) { in.last = 7 }), ErrReplay},
		{"lower counter", ok(func(in *input) { in.last = 100 }), ErrReplay},
		{"report for another device", ok(signed(key, func(r *Report) { r.DeviceID = "dev-2" })), ErrWrongDevice},
		{"moved to another device", ok(func(in *input) { in.device = "dev-2"; in.key = &other.PublicKey }), ErrWrongDevice},
		{"unknown nonce", ok(signed(key, func(r *Report) { r.Nonce = "MADEUP" })), ErrStaleNonce},
		{"nonce of another device", ok(signed(key, func(r *Report) { r.Nonce = otherDevNonce })), ErrStaleNonce},
		{"expired nonce", ok(func(in *input) { in.now = rptT0.Add(5 * time.Minute) }), ErrStaleNonce},
		{"nonce just within TTL", ok(func(in *input) {
			in.now = rptT0.Add(4*time.Minute + 30*time.Second)
			in.last = 0
			in.wire = rptSign(t, key, report(func(r *Report) { r.CollectedAt = in.now }))
		}), nil},
		{"collected 59s in the future", ok(signed(key, func(r *Report) { r.CollectedAt = rptT0.Add(59 * time.Second) })), nil},
		{"collected 61s in the future", ok(signed(key, func(r *Report) { r.CollectedAt = rptT0.Add(61 * time.Second) })), ErrClock},
		{"collected 2m ago", ok(signed(key, func(r *Report) { r.CollectedAt = rptT0.Add(-2 * time.Minute) })), nil},
		{"collected 2m1s ago", ok(signed(key, func(r *Report) { r.CollectedAt = rptT0.Add(-2*time.Minute - time.Second) })), ErrClock},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sr, err := ParseReport(tc.in.wire)
			if err != nil {
				t.Fatalf("ParseReport: %v", err)
			}
			err = v.Verify(sr, tc.in.device, tc.in.key, tc.in.last, tc.in.now)
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			for _, sentinel := range []error{ErrMalformedReport, ErrSignature, ErrWrongDevice, ErrReplay, ErrStaleNonce, ErrClock} {
				if sentinel != tc.want && errors.Is(err, sentinel) {
					t.Errorf("error %v also wraps %v", err, sentinel)
				}
			}
		})
	}
}

func TestVerifyOldNonceRefused(t *testing.T) {
	key := rptKey(t)
	clock := &rptClock{t: rptT0.Add(-6 * time.Minute)}
	book := NewNonceBook(NonceBookConfig{TTL: 5 * time.Minute, Now: clock.now})
	r := rptReport()
	r.Nonce = book.Issue("dev-1")
	sr, err := ParseReport(rptSign(t, key, r))
	if err != nil {
		t.Fatal(err)
	}
	v := &ReportVerifier{Nonces: book}
	if err := v.Verify(sr, "dev-1", &key.PublicKey, 0, rptT0); !errors.Is(err, ErrStaleNonce) {
		t.Fatalf("6-minute-old nonce: %v, want ErrStaleNonce", err)
	}
	clock.set(rptT0.Add(-time.Minute))
	r.Nonce = book.Issue("dev-1")
	sr, err = ParseReport(rptSign(t, key, r))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(sr, "dev-1", &key.PublicKey, 0, rptT0); err != nil {
		t.Fatalf("fresh nonce refused: %v", err)
	}
	if err := (&ReportVerifier{}).Verify(sr, "dev-1", &key.PublicKey, 0, rptT0); !errors.Is(err, ErrStaleNonce) {
		t.Fatalf("verifier without a nonce book: %v, want ErrStaleNonce", err)
	}
	if err := v.Verify(nil, "dev-1", &key.PublicKey, 0, rptT0); !errors.Is(err, ErrMalformedReport) {
		t.Fatalf("nil report: %v", err)
	}
}

// rptTamper replaces old with new in the payload of wire and keeps the
// signature.
func rptTamper(t *testing.T, wire []byte, old, new string) []byte {
	t.Helper()
	p, s, _ := strings.Cut(string(wire), ".")
	payload, err := reportB64.DecodeString(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(payload), old) {
		t.Fatalf("payload %s lacks %s", payload, old)
	}
	return []byte(reportB64.EncodeToString([]byte(strings.Replace(string(payload), old, new, 1))) + "." + s)
}

// rptHighS returns wire with its signature replaced by the equally valid
// (r, n-s) twin.
func rptHighS(t *testing.T, wire []byte) []byte {
	t.Helper()
	p, s, _ := strings.Cut(string(wire), ".")
	sig, err := reportB64.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	sv := new(big.Int).SetBytes(sig[32:])
	sv.Sub(reportP256Order, sv)
	sv.FillBytes(sig[32:])
	return []byte(p + "." + reportB64.EncodeToString(sig))
}

func TestHighSTwinIsOtherwiseValid(t *testing.T) {
	// The high-S test above must fail for the S check alone: the twin is a
	// mathematically valid ECDSA signature.
	key := rptKey(t)
	sr, err := ParseReport(rptHighS(t, rptSign(t, key, rptReport())))
	if err != nil {
		t.Fatal(err)
	}
	d := reportDigest(sr.payload)
	if !ecdsa.Verify(&key.PublicKey, d[:], new(big.Int).SetBytes(sr.sig[:32]), new(big.Int).SetBytes(sr.sig[32:])) {
		t.Fatal("the high-S twin does not verify as plain ECDSA")
	}
	if err := verifyReportSig(sr, &key.PublicKey); !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "high-S") {
		t.Fatalf("high-S twin: %v", err)
	}
}

// nonceKey returns a fixed nonce key whose bytes all equal b.
func nonceKey(b byte) []byte { return bytes.Repeat([]byte{b}, NonceKeySize) }

// reNonce decodes nonce, lets edit change the raw bytes and encodes it
// again: a nonce tampered with below the encoding.
func reNonce(t testing.TB, nonce string, edit func(raw []byte)) string {
	t.Helper()
	raw, err := nonceEncoding.DecodeString(nonce)
	if err != nil || len(raw) != nonceRawLen {
		t.Fatalf("decode %q: %d bytes, %v", nonce, len(raw), err)
	}
	edit(raw)
	return nonceEncoding.EncodeToString(raw)
}

func TestNonceBook(t *testing.T) {
	const ttl = time.Minute
	clock := &rptClock{t: rptT0}
	b := NewNonceBook(NonceBookConfig{Key: nonceKey(1), TTL: ttl, Now: clock.now})
	n := b.Issue("dev-a")
	// Other books: the same key (another replica, its clock 3 s ahead), and
	// another key (another edge, or a replica that made its own key).
	replica := NewNonceBook(NonceBookConfig{Key: nonceKey(1), TTL: ttl, Now: func() time.Time { return rptT0.Add(3 * time.Second) }})
	stranger := NewNonceBook(NonceBookConfig{Key: nonceKey(2), TTL: ttl, Now: clock.now})
	fromReplica, fromStranger := replica.Issue("dev-a"), stranger.Issue("dev-a")
	longID := strings.Repeat("d", maxIDLen+1)

	for _, tc := range []struct {
		name   string
		device string
		nonce  string
		now    time.Time
		want   bool
	}{
		{"issued now", "dev-a", n, rptT0, true},
		{"another device", "dev-b", n, rptT0, false},
		{"device ID a prefix", "dev-", n, rptT0, false},
		{"no device", "", n, rptT0, false},
		{"oversized device ID", longID, NewNonceBook(NonceBookConfig{Key: nonceKey(1), Now: clock.now}).Issue(longID), rptT0, false},
		{"exactly at the TTL", "dev-a", n, rptT0.Add(ttl), true},
		{"past the TTL", "dev-a", n, rptT0.Add(ttl + time.Nanosecond), false},
		{"an hour later", "dev-a", n, rptT0.Add(time.Hour), false},
		{"issued 5 s in the future", "dev-a", n, rptT0.Add(-MaxNonceFuture), true},
		{"issued more than 5 s in the future", "dev-a", n, rptT0.Add(-MaxNonceFuture - time.Nanosecond), false},
		{"issued a day in the future", "dev-a", n, rptT0.Add(-24 * time.Hour), false},
		{"from a replica with the same key", "dev-a", fromReplica, rptT0, true},
		{"from a replica, for another device", "dev-b", fromReplica, rptT0, false},
		{"from another key", "dev-a", fromStranger, rptT0, false},
		{"empty", "dev-a", "", rptT0, false},
		{"lower case", "dev-a", strings.ToLower(n), rptT0, false},
		{"truncated by one", "dev-a", n[:NonceLen-1], rptT0, false},
		{"half", "dev-a", n[:NonceLen/2], rptT0, false},
		{"one character more", "dev-a", n + "A", rptT0, false},
		{"padded", "dev-a", n + "======", rptT0, false},
		{"oversized", "dev-a", strings.Repeat(n, 1000), rptT0, false},
		{"line break inside", "dev-a", n[:20] + "\n" + n[21:], rptT0, false},
		{"line break instead of the last", "dev-a", n[:NonceLen-1] + "\n", rptT0, false},
		{"garbage of the right length", "dev-a", strings.Repeat("!", NonceLen), rptT0, false},
		{"all A", "dev-a", strings.Repeat("A", NonceLen), rptT0, false},
		{"old-style random nonce", "dev-a", rand.Text(), rptT0, false},
		{"MAC bit flipped", "dev-a", reNonce(t, n, func(raw []byte) { raw[nonceRawLen-1] ^= 1 }), rptT0, false},
		{"issue time moved a second", "dev-a", reNonce(t, n, func(raw []byte) { raw[8]++ }), rptT0, false},
		{"issue time moved a TTL later", "dev-a", reNonce(t, n, func(raw []byte) {
			binary.BigEndian.PutUint64(raw[1:9], uint64(rptT0.Add(ttl).Unix()))
		}), rptT0.Add(ttl + time.Second), false},
		{"another version", "dev-a", reNonce(t, n, func(raw []byte) { raw[0] = 2 }), rptT0, false},
		{"no version", "dev-a", reNonce(t, n, func(raw []byte) { raw[0] = 0 }), rptT0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := b.Valid(tc.device, tc.nonce, tc.now); got != tc.want {
				t.Errorf("Valid(%q, %.60q, %s) = %v, want %v", tc.device, tc.nonce, tc.now.Format(time.TimeOnly), got, tc.want)
			}
		})
	}

	t.Run("shape", func(t *testing.T) {
		if len(n) != NonceLen || NonceLen != 40 || strings.Trim(n, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") != "" {
			t.Errorf("nonce %q: want %d characters of the base32 alphabet", n, NonceLen)
		}
		if n != b.Issue("dev-a") {
			t.Error("two nonces for one device within a second differ; they carry only the device and the second")
		}
		clock.set(rptT0.Add(time.Second))
		defer clock.set(rptT0)
		if n2 := b.Issue("dev-a"); n2 == n || !b.Valid("dev-a", n2, rptT0.Add(time.Second)) {
			t.Errorf("a second later: %q (was %q)", n2, n)
		}
	})

	t.Run("both ways between replicas", func(t *testing.T) {
		if !replica.Valid("dev-a", n, rptT0) || replica.Valid("dev-a", fromStranger, rptT0) {
			t.Error("the replica does not accept exactly what the first book issued")
		}
		if stranger.Valid("dev-a", n, rptT0) || stranger.Valid("dev-a", fromReplica, rptT0) {
			t.Error("a book with another key accepts the first book's nonces")
		}
	})

	t.Run("key is copied", func(t *testing.T) {
		key := nonceKey(3)
		kb := NewNonceBook(NonceBookConfig{Key: key, Now: clock.now})
		kn := kb.Issue("dev-a")
		key[0] ^= 0xff
		if !kb.Valid("dev-a", kn, rptT0) {
			t.Error("changing the caller's key slice changed the book")
		}
	})

	t.Run("defaults", func(t *testing.T) {
		d1, d2 := NewNonceBook(NonceBookConfig{}), NewNonceBook(NonceBookConfig{})
		if d1.TTL() != DefaultNonceTTL {
			t.Errorf("TTL %s, want %s", d1.TTL(), DefaultNonceTTL)
		}
		dn := d1.Issue("x")
		if !d1.Valid("x", dn, time.Now()) {
			t.Error("fresh nonce with the real clock invalid")
		}
		if d2.Valid("x", dn, time.Now()) {
			t.Error("two books without a key share one: their random keys must differ")
		}
	})

	t.Run("bad key size panics", func(t *testing.T) {
		for _, size := range []int{1, NonceKeySize - 1, NonceKeySize + 1} {
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("a %d-byte key was accepted", size)
					}
				}()
				NewNonceBook(NonceBookConfig{Key: make([]byte, size)})
			}()
		}
	})
}

// Nonces are checked from many goroutines at once, on two books with one
// key, as two replicas do.
func TestNonceBookConcurrent(t *testing.T) {
	const workers, rounds = 8, 500
	key := nonceKey(7)
	books := [2]*NonceBook{NewNonceBook(NonceBookConfig{Key: key}), NewNonceBook(NonceBookConfig{Key: key})}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				dev := fmt.Sprint("dev-", (w*rounds+i)%40)
				n := books[i%2].Issue(dev)
				if !books[(i+1)%2].Valid(dev, n, time.Now()) {
					errs <- fmt.Errorf("%s: the other book refused %q", dev, n)
					return
				}
				if books[0].Valid(dev+"x", n, time.Now()) {
					errs <- fmt.Errorf("%s: nonce valid for another device", dev)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// LoadNonceKey: replicas racing to create the key end up with one key, the
// key survives (it is stored without expiry), and a damaged stored key or
// an unusable store is an error rather than a new key.
func TestLoadNonceKey(t *testing.T) {
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		const callers = 8
		keys := make([][]byte, callers)
		errs := make([]error, callers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				<-start
				keys[i], errs[i] = LoadNonceKey(ctx, st)
			})
		}
		close(start)
		wg.Wait()
		for i := range callers {
			if errs[i] != nil {
				t.Fatalf("caller %d: %v", i, errs[i])
			}
			if len(keys[i]) != NonceKeySize || !bytes.Equal(keys[i], keys[0]) {
				t.Fatalf("caller %d got another key (%d bytes) than caller 0", i, len(keys[i]))
			}
		}
		if bytes.Equal(keys[0], make([]byte, NonceKeySize)) {
			t.Fatal("the key is all zeros")
		}
		again, err := LoadNonceKey(ctx, st)
		if err != nil || !bytes.Equal(again, keys[0]) {
			t.Fatalf("a later load (a restart): %v, same key %v", err, bytes.Equal(again, keys[0]))
		}
		a := NewNonceBook(NonceBookConfig{Key: keys[0]})
		b := NewNonceBook(NonceBookConfig{Key: keys[callers-1]})
		if !b.Valid("dev-1", a.Issue("dev-1"), time.Now()) {
			t.Fatal("books keyed by two loads refuse each other's nonces")
		}

		if err := st.Put(ctx, bucketNonceKey, nonceKeyEntry, []byte("short"), 0); err != nil {
			t.Fatal(err)
		}
		if k, err := LoadNonceKey(ctx, st); err == nil || !strings.Contains(err.Error(), "5 bytes") {
			t.Fatalf("a damaged stored key: %x, %v; want an error", k, err)
		}
		done, cancelDone := context.WithCancel(ctx)
		cancelDone()
		if k, err := LoadNonceKey(done, st); err == nil {
			t.Fatalf("with a cancelled context: %x, want an error", k)
		}
	})
}

// FuzzNonceValid: Valid never panics, and accepts only the exact string
// Issue produces for that device at the nonce's issue time, within the
// time window.
func FuzzNonceValid(f *testing.F) {
	key := nonceKey(9)
	book := NewNonceBook(NonceBookConfig{Key: key, Now: func() time.Time { return rptT0 }})
	n := book.Issue("dev-1")
	for _, s := range []string{
		n, strings.ToLower(n), n[:NonceLen-1], n + "A", n[:20] + "\n" + n[21:], n[:NonceLen-1] + "\n",
		reNonce(f, n, func(raw []byte) { raw[8]++ }), reNonce(f, n, func(raw []byte) { raw[0] = 2 }),
		strings.Repeat("A", NonceLen), strings.Repeat("7", NonceLen), "", "MADEUP", rand.Text(),
	} {
		f.Add("dev-1", s, int32(0))
		f.Add("dev-2", s, int32(-5))
	}
	f.Add("dev-1", n, int32(300))
	f.Add("dev-1", n, int32(301))
	f.Add("dev-1", n, int32(-6))
	f.Fuzz(func(t *testing.T, device, nonce string, offset int32) {
		now := rptT0.Add(time.Duration(offset) * time.Second)
		if !book.Valid(device, nonce, now) {
			return
		}
		raw, err := nonceEncoding.DecodeString(nonce)
		if err != nil || len(raw) != nonceRawLen {
			t.Fatalf("accepted %q, which does not decode to a nonce (%d bytes, %v)", nonce, len(raw), err)
		}
		issued := time.Unix(int64(binary.BigEndian.Uint64(raw[1:9])), 0)
		again := NewNonceBook(NonceBookConfig{Key: key, Now: func() time.Time { return issued }}).Issue(device)
		if again != nonce {
			t.Fatalf("accepted %q for %q; Issue at %s gives %q", nonce, device, issued, again)
		}
		if d := now.Sub(issued); d > book.TTL() || d < -MaxNonceFuture {
			t.Fatalf("accepted a nonce issued %s before now", d)
		}
	})
}

// BenchmarkParseVerify is the edge's cost of accepting one report (once per
// device per reporting interval, not per request).
func BenchmarkParseVerify(b *testing.B) {
	key := rptKey(b)
	book := NewNonceBook(NonceBookConfig{Now: func() time.Time { return rptT0 }})
	r := rptReport()
	r.Nonce = book.Issue("dev-1")
	wire := rptSign(b, key, r)
	v := &ReportVerifier{Nonces: book}
	b.ReportAllocs()
	for b.Loop() {
		sr, err := ParseReport(wire)
		if err != nil {
			b.Fatal(err)
		}
		if err := v.Verify(sr, "dev-1", &key.PublicKey, 6, rptT0); err != nil {
			b.Fatal(err)
		}
	}
}
