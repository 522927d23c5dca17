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
	if err := s.complete(&c); err != nil {
		return "", err
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("identity: sign: %w", err)
	}
	return s.signPayload(payload, DefaultMaxTokenBytes)
}

// SignFitting signs c like Sign, but keeps the token within maxBytes (and
// within DefaultMaxTokenBytes) by dropping groups from the end of c.Groups,
// keeping the order given, and setting GroupsTruncated. The edge uses it for
// carriers with a hard size limit, such as the PROXY v2 identity TLV
// (MaxTLVTokenBytes); the caller orders the groups by importance. If the
// token does not fit even without groups, SignFitting returns an error
// wrapping ErrTooLarge: it never returns a token longer than maxBytes.
func (s *Signer) SignFitting(c Claims, maxBytes int) (string, error) {
	if maxBytes <= 0 {
		return "", fmt.Errorf("identity: sign: %w: limit %d bytes", ErrTooLarge, maxBytes)
	}
	limit := min(maxBytes, DefaultMaxTokenBytes)
	// Defaults are filled once so every attempt below differs only in the
	// groups, and the size of each attempt is that of the token returned.
	if err := s.complete(&c); err != nil {
		return "", err
	}
	all, truncated := c.Groups, c.GroupsTruncated
	payloadWith := func(k int) ([]byte, error) {
		c.Groups = all[:k:k]
		c.GroupsTruncated = truncated || k < len(all)
		p, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("identity: sign: %w", err)
		}
		return p, nil
	}
	payload, err := payloadWith(len(all))
	if err != nil {
		return "", err
	}
	if s.tokenSize(len(payload)) <= limit {
		return s.signPayload(payload, limit)
	}
	if payload, err = payloadWith(0); err != nil {
		return "", err
	}
	if size := s.tokenSize(len(payload)); size > limit {
		return "", fmt.Errorf("identity: sign: %w: %d bytes without any groups (limit %d)", ErrTooLarge, size, limit)
	}
	// The size grows with the number of groups kept, so a binary search finds
	// the most that fit. The token's size is known from the payload alone
	// (the header and the signature have fixed sizes), so only the JSON
	// encoding is repeated; the one signature is made at the end.
	lo, hi := 0, len(all) // lo groups fit, hi do not
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		p, err := payloadWith(mid)
		if err != nil {
			return "", err
		}
		if s.tokenSize(len(p)) <= limit {
			lo, payload = mid, p
		} else {
			hi = mid
		}
	}
	return s.signPayload(payload, limit)
}

// complete fills in the defaults Sign documents and checks the claims every
// verifier requires.
func (s *Signer) complete(c *Claims) error {
	if c.Issuer == "" {
		c.Issuer = s.issuer
	}
	switch {
	case c.Issuer == "":
		return fmt.Errorf("identity: sign: %w: iss", ErrMissingClaim)
	case c.Subject == "":
		return fmt.Errorf("identity: sign: %w: sub", ErrMissingClaim)
	case c.Audience == "":
		return fmt.Errorf("identity: sign: %w: aud", ErrMissingClaim)
	case c.Expiry == 0:
		return fmt.Errorf("identity: sign: %w: exp", ErrMissingClaim)
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
	return nil
}

// tokenSize is the length of the token whose JSON claims are payloadLen
// bytes long.
func (s *Signer) tokenSize(payloadLen int) int {
	enc := base64.RawURLEncoding
	return len(s.prefix) + enc.EncodedLen(payloadLen) + 1 + enc.EncodedLen(sigLen)
}

// signPayload returns the compact JWS of the JSON claims payload, refusing
// to produce a token longer than limit.
func (s *Signer) signPayload(payload []byte, limit int) (string, error) {
	enc := base64.RawURLEncoding
	size := s.tokenSize(len(payload))
	if size > limit {
		return "", fmt.Errorf("identity: sign: %w: %d bytes (limit %d); too many groups?", ErrTooLarge, size, limit)
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
