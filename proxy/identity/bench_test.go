package identity

import (
	"context"
	"testing"
)

func BenchmarkSign(b *testing.B) {
	signer := testSigner(NewKeySet(fixedKey(b, "1")))
	c := validClaims()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := signer.Sign(c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	ks := NewKeySet(fixedKey(b, "1"))
	tok := mustSign(b, testSigner(ks), validClaims())
	v := newTestVerifier(b, VerifierConfig{Keys: ks.JWKS()}, newClock(testNow))
	ctx := context.Background()
	b.SetBytes(int64(len(tok)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}
