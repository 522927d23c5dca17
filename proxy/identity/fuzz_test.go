package identity

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// FuzzVerify feeds arbitrary strings to Verify. It must never panic, and it
// must never accept a token the signer did not produce. The seed tokens are
// identical in every fuzz worker (fixed key, fixed claims, deterministic
// signatures), so "produced" means the same set everywhere.
func FuzzVerify(f *testing.F) {
	key := fixedKey(f, "1")
	ks := NewKeySet(key)
	kid := ks.keys[0].kid
	signer := testSigner(ks)
	other := fixedKey(f, "other")
	otherKid, _ := thumbprint(&other.PublicKey)

	produced := make(map[string]bool)
	for _, edit := range []func(*Claims){
		func(c *Claims) {},
		func(c *Claims) { c.Groups = nil; c.Email = ""; c.Name = "" },
		func(c *Claims) { c.Name = "Ålice \"the\" <admin> \u2028"; c.Device = "dev-1"; c.Posture = "ok" },
		func(c *Claims) { c.Groups = strings.Split(strings.Repeat("g,", 100), ",") },
	} {
		c := validClaims()
		edit(&c)
		tok := mustSign(f, signer, c)
		produced[tok] = true
		f.Add(tok)
	}

	claims := validClaims()
	claims.Issuer = testIssuer
	valid := mustSign(f, signer, claims)
	parts := strings.Split(valid, ".")
	for _, s := range []string{
		"",
		".",
		"..",
		"a.b.c",
		parts[0] + "." + parts[1],
		valid + ".",
		valid[:len(valid)-2],
		parts[0] + "." + parts[1] + ".",
		b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + ".",
		hs256(f, map[string]any{"alg": "HS256", "kid": kid, "typ": "JWT"}, claims, ks.JWKS()),
		signRaw(f, other, es256Header(kid), claims),
		signRaw(f, other, es256Header(otherKid), claims),
		signRaw(f, key, map[string]any{"alg": "ES256", "kid": kid, "typ": "JWT", "jku": "https://evil.example/jwks"}, claims),
		signRaw(f, key, es256Header(kid), []byte(`{"iss":"`+testIssuer+`","aud":"wiki","exp":99999999999}`)),
		signRaw(f, key, es256Header(kid), []byte(`{]`)),
		mustSign(f, signer, func() Claims { c := validClaims(); c.Expiry = testNow.Add(-time.Hour).Unix(); return c }()),
		mustSign(f, signer, func() Claims { c := validClaims(); c.Audience = "payroll"; return c }()),
	} {
		f.Add(s)
	}

	sentinels := []error{ErrTooLarge, ErrMalformed, ErrAlgorithm, ErrUnknownKey, ErrSignature,
		ErrIssuer, ErrAudience, ErrExpired, ErrNotYetValid, ErrMissingClaim}
	v := newTestVerifier(f, VerifierConfig{Keys: ks.JWKS()}, newClock(testNow))
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(context.Background(), token)
		if err == nil {
			if !produced[token] {
				t.Fatalf("accepted a token the signer never produced: %q", token)
			}
			if c == nil || c.Subject == "" || c.Audience != testAudience {
				t.Fatalf("accepted with bad claims %+v", c)
			}
			return
		}
		if c != nil {
			t.Fatalf("claims returned with error %v", err)
		}
		for _, s := range sentinels {
			if errors.Is(err, s) {
				return
			}
		}
		t.Fatalf("error %v wraps none of the package's sentinel errors", err)
	})
}
