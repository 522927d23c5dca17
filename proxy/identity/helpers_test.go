package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testIssuer   = "https://auth.corp.example"
	testAudience = "wiki"
)

// testNow is the fixed "now" of most tests; tokens are built around it.
var testNow = time.Unix(1_800_000_000, 0)

// fixedKey returns a P-256 key derived from seed, the same in every process
// (fuzz workers rebuild their seed tokens and must get the same ones).
func fixedKey(t testing.TB, seed string) *ecdsa.PrivateKey {
	t.Helper()
	d := sha256.Sum256([]byte("ztna identity test key " + seed))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testClock is a settable clock shared by a verifier and its test.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock(t time.Time) *testClock { return &testClock{now: t} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// jwksServer is a real HTTP JWKS endpoint on 127.0.0.1 that counts hits.
type jwksServer struct {
	*httptest.Server
	hits atomic.Int64

	mu     sync.Mutex
	doc    []byte
	status int
}

func newJWKSServer(t testing.TB, doc []byte) *jwksServer {
	t.Helper()
	s := &jwksServer{doc: doc, status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		doc, status := s.doc, s.status
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write(doc)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(status int, doc []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.doc = status, doc
}

func (s *jwksServer) url() string { return s.URL + "/.well-known/ztna/jwks.json" }

// newTestVerifier builds a verifier for testIssuer/testAudience on clock.
func newTestVerifier(t testing.TB, cfg VerifierConfig, clock *testClock) *Verifier {
	t.Helper()
	if cfg.Issuer == "" {
		cfg.Issuer = testIssuer
	}
	if cfg.Audience == "" {
		cfg.Audience = testAudience
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v.now = clock.Now
	return v
}

// testSigner returns a signer whose clock is fixed at testNow.
func testSigner(ks *KeySet) *Signer {
	s := ks.Signer(testIssuer)
	s.now = func() time.Time { return testNow }
	return s
}

func validClaims() Claims {
	return Claims{
		Subject:   "u-alice",
		Audience:  testAudience,
		Email:     "alice@corp.example",
		Name:      "Alice Example",
		Groups:    []string{"engineering", "security"},
		SessionID: "s-hash-1",
		IssuedAt:  testNow.Add(-10 * time.Second).Unix(),
		NotBefore: testNow.Add(-10 * time.Second).Unix(),
		Expiry:    testNow.Add(5 * time.Minute).Unix(),
		ID:        "jti-1",
	}
}

func mustSign(t testing.TB, s *Signer, c Claims) string {
	t.Helper()
	tok, err := s.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func jsonBytes(t testing.TB, v any) []byte {
	t.Helper()
	if b, ok := v.([]byte); ok {
		return b
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// signRaw signs arbitrary header and claims (JSON values or raw []byte)
// with key, ES256 low-S, bypassing the Signer's checks: it forges tokens a
// correct signer would never produce, to see that the verifier refuses them
// even with a valid signature.
func signRaw(t testing.TB, key *ecdsa.PrivateKey, header, claims any) string {
	t.Helper()
	input := b64(jsonBytes(t, header)) + "." + b64(jsonBytes(t, claims))
	return input + "." + b64(rawSig(t, key, input))
}

func rawSig(t testing.TB, key *ecdsa.PrivateKey, input string) []byte {
	t.Helper()
	digest := sha256.Sum256([]byte(input))
	der, err := key.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &rs); err != nil {
		t.Fatal(err)
	}
	if rs.S.Cmp(p256HalfOrder) > 0 {
		rs.S.Sub(p256Order, rs.S)
	}
	sig := make([]byte, 64)
	rs.R.FillBytes(sig[:32])
	rs.S.FillBytes(sig[32:])
	return sig
}

func hs256(t testing.TB, header, claims any, secret []byte) string {
	t.Helper()
	input := b64(jsonBytes(t, header)) + "." + b64(jsonBytes(t, claims))
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(input))
	return input + "." + b64(m.Sum(nil))
}

func es256Header(kid string) map[string]any {
	return map[string]any{"alg": "ES256", "kid": kid, "typ": "JWT"}
}
