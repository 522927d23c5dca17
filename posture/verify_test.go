package posture

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"
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

func TestNonceBook(t *testing.T) {
	clock := &rptClock{t: rptT0}
	b := NewNonceBook(NonceBookConfig{TTL: time.Minute, MaxDevices: 3, Now: clock.now})

	t.Run("latest four per device", func(t *testing.T) {
		var ns []string
		for range NoncesPerDevice + 2 {
			ns = append(ns, b.Issue("a"))
		}
		for i, n := range ns {
			if want := i >= 2; b.Valid("a", n, rptT0) != want {
				t.Errorf("nonce %d of %d: valid %v, want %v", i+1, len(ns), !want, want)
			}
		}
		if b.Valid("b", ns[len(ns)-1], rptT0) {
			t.Error("nonce valid for another device")
		}
		if b.Valid("a", "", rptT0) || b.Valid("a", strings.ToLower(ns[5]), rptT0) {
			t.Error("empty or altered nonce valid")
		}
		seen := map[string]bool{}
		for _, n := range ns {
			if seen[n] || len(n) < 22 {
				t.Errorf("nonce %q repeated or short", n)
			}
			seen[n] = true
		}
	})

	t.Run("TTL", func(t *testing.T) {
		n := b.Issue("ttl")
		if !b.Valid("ttl", n, rptT0.Add(time.Minute)) {
			t.Error("nonce invalid at exactly the TTL")
		}
		if b.Valid("ttl", n, rptT0.Add(time.Minute+time.Nanosecond)) {
			t.Error("nonce valid after the TTL")
		}
	})

	t.Run("bounded, least recently issued evicted", func(t *testing.T) {
		b := NewNonceBook(NonceBookConfig{MaxDevices: 3, Now: clock.now})
		n1, n2, n3 := b.Issue("d1"), b.Issue("d2"), b.Issue("d3")
		n1 = b.Issue("d1") // d1 is now the most recent; d2 the oldest
		n4 := b.Issue("d4")
		if b.Len() != 3 {
			t.Fatalf("Len = %d, want 3", b.Len())
		}
		for _, c := range []struct {
			dev, n string
			want   bool
		}{{"d1", n1, true}, {"d2", n2, false}, {"d3", n3, true}, {"d4", n4, true}} {
			if got := b.Valid(c.dev, c.n, rptT0); got != c.want {
				t.Errorf("%s: valid %v, want %v", c.dev, got, c.want)
			}
		}
		b.Forget("d3")
		if b.Valid("d3", n3, rptT0) || b.Len() != 2 {
			t.Errorf("after Forget: valid %v, Len %d", b.Valid("d3", n3, rptT0), b.Len())
		}
		b.Forget("never")
	})

	t.Run("defaults", func(t *testing.T) {
		b := NewNonceBook(NonceBookConfig{})
		if b.TTL() != DefaultNonceTTL || b.maxDevices != DefaultNonceDevices {
			t.Errorf("defaults: TTL %s, max %d", b.TTL(), b.maxDevices)
		}
		if n := b.Issue("x"); !b.Valid("x", n, time.Now()) {
			t.Error("fresh nonce with the real clock invalid")
		}
	})
}

func TestNonceBookConcurrent(t *testing.T) {
	const workers, rounds, maxDevices = 8, 500, 16
	b := NewNonceBook(NonceBookConfig{MaxDevices: maxDevices})
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				dev := fmt.Sprint("dev-", (w*rounds+i)%40)
				n := b.Issue(dev)
				b.Valid(dev, n, time.Now())
				if i%50 == 0 {
					b.Forget(dev)
				}
				if l := b.Len(); l > maxDevices {
					errs <- fmt.Errorf("Len %d exceeds %d", l, maxDevices)
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
	// The bookkeeping must still agree after the churn.
	if len(b.devices) != b.order.Len() {
		t.Fatalf("map has %d devices, list %d", len(b.devices), b.order.Len())
	}
	n := b.Issue("final")
	if !b.Valid("final", n, time.Now()) {
		t.Fatal("nonce issued after the churn is invalid")
	}
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
