package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// p256Order and p256HalfOrder are used to keep signatures in low-S form: the
// signer always emits s <= n/2 and the verifier rejects s > n/2, so each
// (header, claims) pair has exactly one accepted encoding and a token cannot
// be altered into a different string that still verifies.
var (
	p256Order     = elliptic.P256().Params().N
	p256HalfOrder = new(big.Int).Rsh(p256Order, 1)
)

// sigLen is the ES256 JWS signature size: R || S, 32 bytes each (RFC 7518 §3.4).
const sigLen = 64

// Signer signs assertions with the current key of a KeySet. It is safe for
// concurrent use. Signing costs tens of microseconds, so the edge signs once
// per (session, app) and caches the token; it does not sign per request.
type Signer struct {
	issuer string
	key    *ecdsa.PrivateKey
	kid    string
	prefix string // base64url(header) + "."; the header is fixed per key
	now    func() time.Time
}

// KeyID returns the kid of the key this signer uses. A cache of signed
// assertions can include it in its key so a rotation invalidates the cache.
func (s *Signer) KeyID() string { return s.kid }

// Sign returns the compact JWS of c, with header
// {"alg":"ES256","kid":...,"typ":"JWT"}.
//
// It fills in Issuer (the signer's issuer), IssuedAt (now), NotBefore
// (IssuedAt) and ID (128 random bits) when they are empty; it signs other
// fields as given, so the caller decides the lifetime. It refuses claims no
// verifier would accept: no Issuer, Subject or Audience, no Expiry, or a token
// longer than DefaultMaxTokenBytes.
func (s *Signer) Sign(c Claims) (string, error) {
	if c.Issuer == "" {
		c.Issuer = s.issuer
	}
	switch {
	case c.Issuer == "":
		return "", fmt.Errorf("identity: sign: %w: iss", ErrMissingClaim)
	case c.Subject == "":
		return "", fmt.Errorf("identity: sign: %w: sub", ErrMissingClaim)
	case c.Audience == "":
		return "", fmt.Errorf("identity: sign: %w: aud", ErrMissingClaim)
	case c.Expiry == 0:
		return "", fmt.Errorf("identity: sign: %w: exp", ErrMissingClaim)
	}
	if c.IssuedAt == 0 {
		c.IssuedAt = s.now().Unix()
	}
	if c.NotBefore == 0 {
		c.NotBefore = c.IssuedAt
	}
	if c.ID == "" {
		var id [16]byte
		rand.Read(id[:])
		c.ID = base64.RawURLEncoding.EncodeToString(id[:])
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("identity: sign: %w", err)
	}
	enc := base64.RawURLEncoding
	size := len(s.prefix) + enc.EncodedLen(len(payload)) + 1 + enc.EncodedLen(sigLen)
	if size > DefaultMaxTokenBytes {
		return "", fmt.Errorf("identity: sign: %w: %d bytes (limit %d); too many groups?", ErrTooLarge, size, DefaultMaxTokenBytes)
	}
	buf := make([]byte, 0, size)
	buf = append(buf, s.prefix...)
	buf = enc.AppendEncode(buf, payload)
	digest := sha256.Sum256(buf)
	// A nil random source selects RFC 6979 deterministic nonces: signing
	// does not depend on the quality of the random source, and the same
	// claims give the same token (which keeps tests and fuzz seeds stable).
	der, err := s.key.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("identity: sign: %w", err)
	}
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 {
		return "", fmt.Errorf("identity: sign: internal error: bad signature encoding")
	}
	r, sv := rs.R, rs.S
	if sv.Cmp(p256HalfOrder) > 0 {
		sv.Sub(p256Order, sv)
	}
	var sig [sigLen]byte
	r.FillBytes(sig[:32])
	sv.FillBytes(sig[32:])
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, sig[:])
	if len(buf) != size {
		return "", errors.New("identity: sign: internal error: size mismatch")
	}
	return string(buf), nil
}
