package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

func TestRoundTrip(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"))
	srv := newJWKSServer(t, ks.JWKS())
	signer := testSigner(ks)

	for _, tc := range []struct {
		name string
		cfg  VerifierConfig
	}{
		{"jwks url", VerifierConfig{JWKSURL: srv.url()}},
		{"static keys", VerifierConfig{Keys: ks.JWKS()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newTestVerifier(t, tc.cfg, newClock(testNow))
			want := validClaims()
			want.Device = "dev-1"
			want.Posture = "ok"
			tok := mustSign(t, signer, want)
			got, err := v.Verify(context.Background(), tok)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want.Issuer = testIssuer // filled by Sign
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("claims:\n got %+v\nwant %+v", *got, want)
			}
		})
	}
}

func TestSignFillsDefaults(t *testing.T) {
	signer := testSigner(NewKeySet(fixedKey(t, "1")))
	v := newTestVerifier(t, VerifierConfig{Keys: NewKeySet(fixedKey(t, "1")).JWKS()}, newClock(testNow))
	c := Claims{Subject: "u-bob", Audience: testAudience, Expiry: testNow.Add(time.Minute).Unix()}
	tok1, tok2 := mustSign(t, signer, c), mustSign(t, signer, c)
	if tok1 == tok2 {
		t.Error("two signatures of the same claims without ID are identical; want distinct jti")
	}
	got, err := v.Verify(context.Background(), tok1)
	if err != nil {
		t.Fatal(err)
	}
	if got.Issuer != testIssuer || got.IssuedAt != testNow.Unix() || got.NotBefore != testNow.Unix() || len(got.ID) < 22 {
		t.Errorf("defaults not filled: %+v", got)
	}
	// An explicit issuer is kept, so the edge can sign for itself only by
	// configuration, and tests can build wrong-issuer tokens.
	c.Issuer = "https://other.example"
	got2, err := v.Verify(context.Background(), mustSign(t, signer, c))
	if !errors.Is(err, ErrIssuer) {
		t.Errorf("explicit issuer: got %+v, %v; want ErrIssuer", got2, err)
	}
}

func TestSignRejects(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"))
	manyGroups := make([]string, 500)
	for i := range manyGroups {
		manyGroups[i] = fmt.Sprintf("group-with-a-long-name-%04d", i)
	}
	for _, tc := range []struct {
		name   string
		issuer string
		edit   func(*Claims)
		want   error
	}{
		{"no issuer anywhere", "", func(c *Claims) {}, ErrMissingClaim},
		{"no subject", testIssuer, func(c *Claims) { c.Subject = "" }, ErrMissingClaim},
		{"no audience", testIssuer, func(c *Claims) { c.Audience = "" }, ErrMissingClaim},
		{"no expiry", testIssuer, func(c *Claims) { c.Expiry = 0 }, ErrMissingClaim},
		{"too large", testIssuer, func(c *Claims) { c.Groups = manyGroups }, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validClaims()
			tc.edit(&c)
			tok, err := ks.Signer(tc.issuer).Sign(c)
			if !errors.Is(err, tc.want) || tok != "" {
				t.Errorf("Sign = %q, %v; want error %v", tok, err, tc.want)
			}
		})
	}
}

// TestSignLowS checks that every signature is in low-S form, which the
// verifier requires; without normalisation about half would fail.
func TestSignLowS(t *testing.T) {
	signer := testSigner(NewKeySet(fixedKey(t, "1")))
	for i := range 64 {
		c := validClaims()
		c.ID = fmt.Sprint("jti-", i)
		tok := mustSign(t, signer, c)
		sig, err := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
		if err != nil || len(sig) != 64 {
			t.Fatalf("signature: %d bytes, %v", len(sig), err)
		}
		if new(big.Int).SetBytes(sig[32:]).Cmp(p256HalfOrder) > 0 {
			t.Fatalf("token %d has high S", i)
		}
	}
}

// TestInteropGoJOSE checks the format against an independent JOSE
// implementation: go-jose parses and verifies our tokens with our JWKS, and
// computes the same RFC 7638 thumbprint we use as kid.
func TestInteropGoJOSE(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"), fixedKey(t, "2"))
	tok := mustSign(t, testSigner(ks), validClaims())

	var set jose.JSONWebKeySet
	if err := json.Unmarshal(ks.JWKS(), &set); err != nil {
		t.Fatalf("go-jose cannot read our JWKS: %v", err)
	}
	if len(set.Keys) != 2 {
		t.Fatalf("go-jose sees %d keys, want 2", len(set.Keys))
	}
	for _, k := range set.Keys {
		if !k.IsPublic() || k.Algorithm != "ES256" || k.Use != "sig" {
			t.Errorf("key %s: public=%v alg=%q use=%q", k.KeyID, k.IsPublic(), k.Algorithm, k.Use)
		}
		tp, err := k.Thumbprint(crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if got := base64.RawURLEncoding.EncodeToString(tp); got != k.KeyID {
			t.Errorf("kid %q is not the RFC 7638 thumbprint %q", k.KeyID, got)
		}
	}

	jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("go-jose parse: %v", err)
	}
	h := jws.Signatures[0].Header
	if h.KeyID != ks.Signer("").KeyID() || h.ExtraHeaders["typ"] != "JWT" {
		t.Errorf("header: kid %q typ %v", h.KeyID, h.ExtraHeaders["typ"])
	}
	keys := set.Key(h.KeyID)
	if len(keys) != 1 {
		t.Fatalf("kid %q not in JWKS", h.KeyID)
	}
	payload, err := jws.Verify(keys[0])
	if err != nil {
		t.Fatalf("go-jose verify: %v", err)
	}
	var c Claims
	if err := json.Unmarshal(payload, &c); err != nil || c.Subject != "u-alice" {
		t.Errorf("payload %s: %v", payload, err)
	}
}

func TestVerifyAcceptsWithinLeeway(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"))
	signer := testSigner(ks)
	leeway := 30 * time.Second
	for _, tc := range []struct {
		name string
		edit func(*Claims)
	}{
		{"exp exactly leeway ago", func(c *Claims) { c.Expiry = testNow.Add(-leeway).Unix() }},
		{"nbf exactly leeway ahead", func(c *Claims) { c.NotBefore = testNow.Add(leeway).Unix() }},
		{"iat exactly leeway ahead", func(c *Claims) { c.IssuedAt = testNow.Add(leeway).Unix() }},
		{"nbf and iat in the distant past", func(c *Claims) { c.NotBefore, c.IssuedAt = -1<<62, -1<<62 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newTestVerifier(t, VerifierConfig{Keys: ks.JWKS()}, newClock(testNow))
			c := validClaims()
			tc.edit(&c)
			tok := mustSign(t, signer, c)
			if _, err := v.Verify(context.Background(), tok); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
	// Claims added by a later edge version are ignored, and nbf and iat
	// are optional.
	v := newTestVerifier(t, VerifierConfig{Keys: ks.JWKS()}, newClock(testNow))
	tok := signRaw(t, fixedKey(t, "1"), es256Header(ks.keys[0].kid), map[string]any{
		"iss": testIssuer, "sub": "u", "aud": testAudience, "exp": testNow.Unix(), "future_claim": []int{1, 2},
	})
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Errorf("extra claim, no nbf/iat: %v", err)
	}
}

func TestVerifyRejects(t *testing.T) {
	key := fixedKey(t, "1")
	ks := NewKeySet(key)
	kid := ks.keys[0].kid
	signer := testSigner(ks)
	other := fixedKey(t, "other")
	otherKS := NewKeySet(other)
	otherKid := otherKS.keys[0].kid
	srv := newJWKSServer(t, ks.JWKS())
	attacker := newJWKSServer(t, otherKS.JWKS())

	claims := validClaims()
	claims.Issuer = testIssuer
	valid := mustSign(t, signer, claims)
	parts := strings.Split(valid, ".")
	signWith := func(edit func(*Claims)) string {
		c := validClaims()
		edit(&c)
		return mustSign(t, signer, c)
	}

	pub, err := key.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	pkix, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix})
	var jwksDoc, otherDoc struct{ Keys []json.RawMessage }
	json.Unmarshal(ks.JWKS(), &jwksDoc)
	json.Unmarshal(otherKS.JWKS(), &otherDoc)

	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	highS := append([]byte(nil), sig...)
	s := new(big.Int).SetBytes(sig[32:])
	new(big.Int).Sub(p256Order, s).FillBytes(highS[32:])

	tamperedPayload := func() string {
		c := claims
		c.Subject = "u-admin"
		return parts[0] + "." + b64(jsonBytes(t, c)) + "." + parts[2]
	}()
	tamperedHeader := b64([]byte(`{"alg":"ES256","kid":"`+kid+`","typ":"JWT","x":1}`)) + "." + parts[1] + "." + parts[2]

	for _, tc := range []struct {
		name  string
		token string
		want  error
	}{
		// Shape.
		{"empty", "", ErrMalformed},
		{"oversized", strings.Repeat("a", DefaultMaxTokenBytes+1), ErrTooLarge},
		{"oversized valid-looking", valid + strings.Repeat("A", DefaultMaxTokenBytes), ErrTooLarge},
		{"one part", parts[0], ErrMalformed},
		{"two parts", parts[0] + "." + parts[1], ErrMalformed},
		{"extra dot at end", valid + ".", ErrMalformed},
		{"extra part", valid + ".AAAA", ErrMalformed},
		{"double dot", parts[0] + ".." + parts[1] + "." + parts[2], ErrMalformed},
		{"truncated by one", valid[:len(valid)-1], ErrMalformed},
		{"truncated to half", valid[:len(valid)/2], ErrMalformed},
		{"non-base64 header", "!!!." + parts[1] + "." + parts[2], ErrMalformed},
		{"padded base64", parts[0] + "=." + parts[1] + "." + parts[2], ErrMalformed},
		{"non-canonical base64 header", "e31." + parts[1] + "." + parts[2], ErrMalformed},
		{"newline in signature", parts[0] + "." + parts[1] + "." + parts[2][:10] + "\n" + parts[2][10:], ErrMalformed},
		{"space before token", " " + valid, ErrMalformed},
		{"JSON serialization", `{"payload":"` + parts[1] + `","protected":"` + parts[0] + `","signature":"` + parts[2] + `"}`, ErrMalformed},
		{"header not JSON", b64([]byte("not json")) + "." + parts[1] + "." + parts[2], ErrMalformed},
		{"header JSON array", b64([]byte(`["ES256"]`)) + "." + parts[1] + "." + parts[2], ErrMalformed},

		// Algorithm allow-list.
		{"alg none", b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + ".", ErrAlgorithm},
		{"alg none with kid", b64([]byte(`{"alg":"none","kid":"`+kid+`","typ":"JWT"}`)) + "." + parts[1] + ".", ErrAlgorithm},
		{"alg None", b64([]byte(`{"alg":"None","kid":"`+kid+`","typ":"JWT"}`)) + "." + parts[1] + "." + parts[2], ErrAlgorithm},
		{"alg missing", b64([]byte(`{"kid":"`+kid+`","typ":"JWT"}`)) + "." + parts[1] + "." + parts[2], ErrAlgorithm},
		{"alg es256 lower case", signRaw(t, key, map[string]any{"alg": "es256", "kid": kid, "typ": "JWT"}, claims), ErrAlgorithm},
		{"alg ES384", signRaw(t, key, map[string]any{"alg": "ES384", "kid": kid, "typ": "JWT"}, claims), ErrAlgorithm},
		{"alg RS256", signRaw(t, key, map[string]any{"alg": "RS256", "kid": kid, "typ": "JWT"}, claims), ErrAlgorithm},
		{"HS256 keyed with JWKS document", hs256(t, map[string]any{"alg": "HS256", "kid": kid, "typ": "JWT"}, claims, ks.JWKS()), ErrAlgorithm},
		{"HS256 keyed with JWK", hs256(t, map[string]any{"alg": "HS256", "kid": kid, "typ": "JWT"}, claims, jwksDoc.Keys[0]), ErrAlgorithm},
		{"HS256 keyed with point bytes", hs256(t, map[string]any{"alg": "HS256", "kid": kid, "typ": "JWT"}, claims, pub), ErrAlgorithm},
		{"HS256 keyed with PEM", hs256(t, map[string]any{"alg": "HS256", "kid": kid, "typ": "JWT"}, claims, pemKey), ErrAlgorithm},
		{"HS256 keyed with PKIX DER", hs256(t, map[string]any{"alg": "HS256", "kid": kid, "typ": "JWT"}, claims, pkix), ErrAlgorithm},

		// Other header rules.
		{"typ missing", signRaw(t, key, map[string]any{"alg": "ES256", "kid": kid}, claims), ErrMalformed},
		{"typ at+jwt", signRaw(t, key, map[string]any{"alg": "ES256", "kid": kid, "typ": "at+jwt"}, claims), ErrMalformed},
		{"kid missing", signRaw(t, key, map[string]any{"alg": "ES256", "typ": "JWT"}, claims), ErrMalformed},
		{"crit", signRaw(t, key, map[string]any{"alg": "ES256", "kid": kid, "typ": "JWT", "crit": []string{"exp"}}, claims), ErrMalformed},
		{"jku to attacker keys", signRaw(t, other, map[string]any{"alg": "ES256", "kid": otherKid, "typ": "JWT", "jku": attacker.url()}, claims), ErrMalformed},
		{"embedded jwk", signRaw(t, other, map[string]any{"alg": "ES256", "kid": otherKid, "typ": "JWT", "jwk": otherDoc.Keys[0]}, claims), ErrMalformed},
		{"x5u", signRaw(t, other, map[string]any{"alg": "ES256", "kid": otherKid, "typ": "JWT", "x5u": attacker.url()}, claims), ErrMalformed},

		// Keys and signatures.
		{"unknown kid", signRaw(t, other, es256Header(otherKid), claims), ErrUnknownKey},
		{"signature from another key", signRaw(t, other, es256Header(kid), claims), ErrSignature},
		{"tampered payload", tamperedPayload, ErrSignature},
		{"tampered header", tamperedHeader, ErrSignature},
		{"high-S twin of a valid signature", parts[0] + "." + parts[1] + "." + b64(highS), ErrSignature},
		{"zero signature", parts[0] + "." + parts[1] + "." + b64(make([]byte, 64)), ErrSignature},
		{"short signature", parts[0] + "." + parts[1] + "." + b64(sig[:63]), ErrSignature},
		{"DER signature", parts[0] + "." + parts[1] + "." + b64(append([]byte{0x30, 0x44, 0x02, 0x20}, sig...)), ErrSignature},
		{"empty signature", parts[0] + "." + parts[1] + ".", ErrSignature},

		// Claims, all with valid signatures.
		{"wrong issuer", signWith(func(c *Claims) { c.Issuer = "https://evil.example" }), ErrIssuer},
		{"issuer with trailing slash", signWith(func(c *Claims) { c.Issuer = testIssuer + "/" }), ErrIssuer},
		{"wrong audience", signWith(func(c *Claims) { c.Audience = "payroll" }), ErrAudience},
		{"audience differs in case", signWith(func(c *Claims) { c.Audience = "Wiki" }), ErrAudience},
		{"audience as array", signRaw(t, key, es256Header(kid), map[string]any{"iss": testIssuer, "sub": "u", "aud": []string{testAudience}, "exp": claims.Expiry}), ErrMalformed},
		{"expired", signWith(func(c *Claims) { c.Expiry = testNow.Add(-31 * time.Second).Unix() }), ErrExpired},
		{"exp missing", signRaw(t, key, es256Header(kid), map[string]any{"iss": testIssuer, "sub": "u", "aud": testAudience}), ErrExpired},
		{"exp far past", signWith(func(c *Claims) { c.Expiry = -1 << 62 }), ErrExpired},
		{"not yet valid", signWith(func(c *Claims) { c.NotBefore = testNow.Add(31 * time.Second).Unix() }), ErrNotYetValid},
		{"nbf far future", signWith(func(c *Claims) { c.NotBefore = 1<<63 - 1 }), ErrNotYetValid},
		{"issued in the future", signWith(func(c *Claims) { c.IssuedAt = testNow.Add(31 * time.Second).Unix() }), ErrNotYetValid},
		{"missing sub", signRaw(t, key, es256Header(kid), map[string]any{"iss": testIssuer, "aud": testAudience, "exp": claims.Expiry}), ErrMissingClaim},
		{"claims not JSON", signRaw(t, key, es256Header(kid), []byte("garbage{")), ErrMalformed},
		{"claims JSON null", signRaw(t, key, es256Header(kid), []byte("null")), ErrIssuer},
		{"claims JSON string", signRaw(t, key, es256Header(kid), []byte(`"sub"`)), ErrMalformed},
		{"exp as string", signRaw(t, key, es256Header(kid), []byte(`{"iss":"`+testIssuer+`","sub":"u","aud":"wiki","exp":"9999999999"}`)), ErrMalformed},
		{"exp as float", signRaw(t, key, es256Header(kid), []byte(`{"iss":"`+testIssuer+`","sub":"u","aud":"wiki","exp":1.9e9}`)), ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newTestVerifier(t, VerifierConfig{JWKSURL: srv.url()}, newClock(testNow))
			got, err := v.Verify(context.Background(), tc.token)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %+v, %v; want %v", got, err, tc.want)
			}
			if got != nil {
				t.Errorf("claims returned with an error: %+v", got)
			}
			if strings.Contains(err.Error(), parts[2]) || (len(tc.token) > 40 && strings.Contains(err.Error(), tc.token)) {
				t.Errorf("error message contains the token: %v", err)
			}
		})
	}
	if n := attacker.hits.Load(); n != 0 {
		t.Errorf("verifier fetched keys from a URL named in a token (%d hits)", n)
	}
	// The valid token itself passes, so the rejections above are about
	// what each case changed.
	v := newTestVerifier(t, VerifierConfig{JWKSURL: srv.url()}, newClock(testNow))
	if _, err := v.Verify(context.Background(), valid); err != nil {
		t.Fatalf("valid token: %v", err)
	}
}

func TestMaxTokenBytes(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"))
	tok := mustSign(t, testSigner(ks), validClaims())
	for _, tc := range []struct {
		max  int
		want error
	}{
		{len(tok), nil},
		{len(tok) - 1, ErrTooLarge},
	} {
		v := newTestVerifier(t, VerifierConfig{Keys: ks.JWKS(), MaxTokenBytes: tc.max}, newClock(testNow))
		if _, err := v.Verify(context.Background(), tok); !errors.Is(err, tc.want) {
			t.Errorf("MaxTokenBytes %d (token %d): got %v, want %v", tc.max, len(tok), err, tc.want)
		}
	}
}

func TestLeewayConfig(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"))
	c := validClaims()
	c.Expiry = testNow.Add(-2 * time.Minute).Unix()
	tok := mustSign(t, testSigner(ks), c)
	for _, tc := range []struct {
		leeway time.Duration
		want   error
	}{
		{0, ErrExpired}, // default 30 s
		{119 * time.Second, ErrExpired},
		{2 * time.Minute, nil},
	} {
		v := newTestVerifier(t, VerifierConfig{Keys: ks.JWKS(), Leeway: tc.leeway}, newClock(testNow))
		if _, err := v.Verify(context.Background(), tok); !errors.Is(err, tc.want) {
			t.Errorf("leeway %v: got %v, want %v", tc.leeway, err, tc.want)
		}
	}
}

// TestKeyRotationRefetch: the edge rotates (new current key, old key still
// published); a verifier that cached the old JWKS sees the new kid, refetches
// once and accepts both old and new tokens.
func TestKeyRotationRefetch(t *testing.T) {
	k1, k2 := fixedKey(t, "1"), fixedKey(t, "2")
	before := NewKeySet(k1)
	after := NewKeySet(k2, k1)
	srv := newJWKSServer(t, before.JWKS())
	clock := newClock(testNow)
	v := newTestVerifier(t, VerifierConfig{JWKSURL: srv.url()}, clock)
	ctx := context.Background()
	c := validClaims()
	c.Expiry = testNow.Add(24 * time.Hour).Unix() // only key handling decides

	oldTok := mustSign(t, testSigner(before), c)
	if _, err := v.Verify(ctx, oldTok); err != nil {
		t.Fatalf("before rotation: %v", err)
	}
	if _, err := v.Verify(ctx, oldTok); err != nil {
		t.Fatalf("before rotation, cached: %v", err)
	}
	if n := srv.hits.Load(); n != 1 {
		t.Fatalf("JWKS hits before rotation = %d, want 1 (fetch once, then cache)", n)
	}

	clock.Advance(time.Hour / 2)
	srv.set(http.StatusOK, after.JWKS())
	newTok := mustSign(t, testSigner(after), c)
	if testSigner(after).KeyID() == testSigner(before).KeyID() {
		t.Fatal("rotation did not change the current kid")
	}
	for i, tok := range []string{newTok, oldTok, newTok} {
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatalf("after rotation, token %d: %v", i, err)
		}
	}
	if n := srv.hits.Load(); n != 2 {
		t.Errorf("JWKS hits after rotation = %d, want 2 (one refetch for the new kid)", n)
	}
}

// TestUnknownKidRateLimited: a flood of tokens with unknown kids costs the
// edge at most one JWKS fetch per 30 s.
func TestUnknownKidRateLimited(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"))
	srv := newJWKSServer(t, ks.JWKS())
	clock := newClock(testNow)
	v := newTestVerifier(t, VerifierConfig{JWKSURL: srv.url()}, clock)
	ctx := context.Background()
	if _, err := v.Verify(ctx, mustSign(t, testSigner(ks), validClaims())); err != nil {
		t.Fatal(err)
	}
	forged := func(i int) string {
		return signRaw(t, fixedKey(t, fmt.Sprint("forger-", i)), es256Header(fmt.Sprintf("kid-%d", i)), validClaims())
	}

	steps := []struct {
		advance  time.Duration
		tokens   int
		wantHits int64
	}{
		{0, 1, 1},                 // fetched at start; a refetch now is rate-limited
		{30 * time.Second, 1, 2},  // 30 s later: one refetch
		{0, 20, 2},                // a burst right after: none
		{29 * time.Second, 20, 2}, // still inside the window
		{time.Second, 5, 3},       // window over: one more
		{10 * time.Minute, 50, 4}, // long pause, big burst: one
		{30 * time.Second, 0, 4},  // no unknown kid, no fetch
	}
	n := 0
	for i, st := range steps {
		clock.Advance(st.advance)
		for range st.tokens {
			n++
			_, err := v.Verify(ctx, forged(n))
			if !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("step %d: got %v, want ErrUnknownKey", i, err)
			}
		}
		if got := srv.hits.Load(); got != st.wantHits {
			t.Fatalf("step %d: JWKS hits = %d, want %d", i, got, st.wantHits)
		}
	}
}

// TestConcurrentUnknownKid: many requests with the same new kid at once
// cause one fetch, and all succeed.
func TestConcurrentUnknownKid(t *testing.T) {
	k1, k2 := fixedKey(t, "1"), fixedKey(t, "2")
	srv := newJWKSServer(t, NewKeySet(k2, k1).JWKS())
	v := newTestVerifier(t, VerifierConfig{JWKSURL: srv.url()}, newClock(testNow))
	tok := mustSign(t, testSigner(NewKeySet(k2)), validClaims())

	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			_, err := v.Verify(context.Background(), tok)
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Verify: %v", err)
		}
	}
	if got := srv.hits.Load(); got != 1 {
		t.Errorf("JWKS hits = %d, want 1", got)
	}
}

// TestStaleKeysRefreshed: a key the edge withdraws stops verifying once the
// cached keys are over an hour old; a failed refresh keeps the old keys.
func TestStaleKeysRefreshed(t *testing.T) {
	k1, k2 := fixedKey(t, "1"), fixedKey(t, "2")
	srv := newJWKSServer(t, NewKeySet(k1).JWKS())
	clock := newClock(testNow)
	v := newTestVerifier(t, VerifierConfig{JWKSURL: srv.url()}, clock)
	ctx := context.Background()
	// Long-lived so only key handling decides.
	c := validClaims()
	c.Expiry = testNow.Add(24 * time.Hour).Unix()
	tok := mustSign(t, testSigner(NewKeySet(k1)), c)

	check := func(step string, want error, wantHits int64) {
		t.Helper()
		if _, err := v.Verify(ctx, tok); !errors.Is(err, want) {
			t.Fatalf("%s: got %v, want %v", step, err, want)
		}
		if got := srv.hits.Load(); got != wantHits {
			t.Fatalf("%s: JWKS hits = %d, want %d", step, got, wantHits)
		}
	}
	check("first use", nil, 1)
	srv.set(http.StatusInternalServerError, []byte(`{}`))
	clock.Advance(59 * time.Minute)
	check("fresh cache", nil, 1)
	clock.Advance(2 * time.Minute)
	check("stale, edge failing: old keys kept", nil, 2)
	check("stale, refresh rate-limited", nil, 2)
	srv.set(http.StatusOK, NewKeySet(k2).JWKS()) // k1 withdrawn
	clock.Advance(30 * time.Second)
	check("stale, edge withdrew the key", ErrUnknownKey, 3)
}

func TestJWKSFetchFailures(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"))
	tok := mustSign(t, testSigner(ks), validClaims())
	good := newJWKSServer(t, ks.JWKS())

	var x, y [32]byte
	x[31], y[31] = 1, 2 // not on the curve
	offCurve := fmt.Sprintf(`{"keys":[{"kty":"EC","crv":"P-256","kid":%q,"x":%q,"y":%q}]}`, ks.keys[0].kid, b64(x[:]), b64(y[:]))
	var dup jwksDoc
	json.Unmarshal(ks.JWKS(), &dup)
	dup.Keys = append(dup.Keys, dup.Keys[0])
	huge := append(append([]byte(`{"keys":[],"pad":"`), strings.Repeat("a", maxJWKSBytes)...), `"}`...)

	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"status 500", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }},
		{"status 404", http.NotFound},
		{"not JSON", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>")) }},
		{"no keys member", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{}`)) }},
		{"only RSA keys", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}`))
		}},
		{"ES256 key marked enc", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(strings.Replace(string(ks.JWKS()), `"use":"sig"`, `"use":"enc"`, 1)))
		}},
		{"point not on curve", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(offCurve)) }},
		{"duplicate kid", func(w http.ResponseWriter, r *http.Request) { w.Write(jsonBytes(t, dup)) }},
		{"body over 1 MiB", func(w http.ResponseWriter, r *http.Request) { w.Write(huge) }},
		{"redirect to a server with the right keys", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, good.url(), http.StatusFound)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			hitsBefore := good.hits.Load()
			v := newTestVerifier(t, VerifierConfig{JWKSURL: srv.URL + "/jwks.json"}, newClock(testNow))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := v.Verify(ctx, tok)
			if !errors.Is(err, ErrUnknownKey) || !errors.Is(err, ErrKeyFetch) {
				t.Fatalf("got %v, want ErrUnknownKey and ErrKeyFetch", err)
			}
			if good.hits.Load() != hitsBefore {
				t.Error("redirect was followed")
			}
		})
	}
}

func TestFetchHonoursContext(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"))
	tok := mustSign(t, testSigner(ks), validClaims())
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	v := newTestVerifier(t, VerifierConfig{JWKSURL: srv.URL}, newClock(testNow))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := v.Verify(ctx, tok)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrKeyFetch) {
		t.Fatalf("got %v, want a fetch error wrapping context.DeadlineExceeded", err)
	}
}

func TestNewVerifierConfig(t *testing.T) {
	jwks := NewKeySet(fixedKey(t, "1")).JWKS()
	for _, tc := range []struct {
		name string
		cfg  VerifierConfig
		ok   bool
	}{
		{"static keys", VerifierConfig{Issuer: testIssuer, Audience: "a", Keys: jwks}, true},
		{"https url", VerifierConfig{Issuer: testIssuer, Audience: "a", JWKSURL: "https://auth.corp.example/.well-known/ztna/jwks.json"}, true},
		{"http loopback v4", VerifierConfig{Issuer: testIssuer, Audience: "a", JWKSURL: "http://127.0.0.1:8080/jwks.json"}, true},
		{"http loopback v6", VerifierConfig{Issuer: testIssuer, Audience: "a", JWKSURL: "http://[::1]:8080/jwks.json"}, true},
		{"http localhost", VerifierConfig{Issuer: testIssuer, Audience: "a", JWKSURL: "http://auth.localhost:8080/jwks.json"}, true},
		{"no issuer", VerifierConfig{Audience: "a", Keys: jwks}, false},
		{"no audience", VerifierConfig{Issuer: testIssuer, Keys: jwks}, false},
		{"no keys", VerifierConfig{Issuer: testIssuer, Audience: "a"}, false},
		{"both url and keys", VerifierConfig{Issuer: testIssuer, Audience: "a", Keys: jwks, JWKSURL: "https://x.example/j"}, false},
		{"http to the network", VerifierConfig{Issuer: testIssuer, Audience: "a", JWKSURL: "http://auth.corp.example/jwks.json"}, false},
		{"http to localhost lookalike", VerifierConfig{Issuer: testIssuer, Audience: "a", JWKSURL: "http://localhost.evil.example/jwks.json"}, false},
		{"file url", VerifierConfig{Issuer: testIssuer, Audience: "a", JWKSURL: "file:///etc/jwks.json"}, false},
		{"relative url", VerifierConfig{Issuer: testIssuer, Audience: "a", JWKSURL: "/jwks.json"}, false},
		{"bad static keys", VerifierConfig{Issuer: testIssuer, Audience: "a", Keys: []byte(`{"keys":[]}`)}, false},
		{"negative leeway", VerifierConfig{Issuer: testIssuer, Audience: "a", Keys: jwks, Leeway: -time.Second}, false},
		{"negative max bytes", VerifierConfig{Issuer: testIssuer, Audience: "a", Keys: jwks, MaxTokenBytes: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := NewVerifier(tc.cfg)
			if (err == nil) != tc.ok || (v != nil) != tc.ok {
				t.Errorf("NewVerifier = %v, %v; want ok=%v", v, err, tc.ok)
			}
		})
	}
}

func TestJWKSDocument(t *testing.T) {
	k1, k2 := fixedKey(t, "1"), fixedKey(t, "2")
	ks := NewKeySet(k1, k2)
	doc := ks.JWKS()
	var raw struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(doc, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw.Keys) != 2 {
		t.Fatalf("%d keys, want 2", len(raw.Keys))
	}
	for i, k := range raw.Keys {
		want := map[string]any{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": ks.keys[i].kid}
		for name, val := range want {
			if k[name] != val {
				t.Errorf("key %d: %s = %v, want %v", i, name, k[name], val)
			}
		}
		if _, ok := k["d"]; ok {
			t.Errorf("key %d: JWKS contains the private key", i)
		}
	}
	// The current key is listed first, and JWKS returns a copy.
	if raw.Keys[0]["kid"] != ks.Signer("").KeyID() {
		t.Error("current key is not first")
	}
	doc[0] = 'X'
	if ks.JWKS()[0] != '{' {
		t.Error("JWKS returned shared, mutable bytes")
	}
	// Parsing our own document gives back the same public keys.
	keys, err := parseJWKS(ks.JWKS())
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range []*ecdsa.PrivateKey{k1, k2} {
		if !keys[ks.keys[i].kid].Equal(&k.PublicKey) {
			t.Errorf("key %d does not round-trip", i)
		}
	}
}

func TestNewKeySetPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewKeySet() with no keys did not panic")
		}
	}()
	NewKeySet()
}
