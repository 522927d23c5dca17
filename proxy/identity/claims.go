package identity

import (
	"errors"
	"time"
)

// HeaderName is the HTTP header in which the edge sends the signed assertion.
// The edge strips any client-supplied value before setting its own.
const HeaderName = "X-Ztna-Assertion"

// Defaults for the zero values of the configuration fields.
const (
	// DefaultRotateAfter is the signing key lifetime used when
	// LoadOrCreateKeySet is given rotateAfter == 0.
	DefaultRotateAfter = 30 * 24 * time.Hour
	// DefaultLeeway is the clock skew tolerated by a Verifier.
	DefaultLeeway = 30 * time.Second
	// DefaultMaxTokenBytes is the largest token a Verifier accepts by default;
	// Sign refuses to produce larger tokens so every default verifier can
	// read what the edge signs.
	DefaultMaxTokenBytes = 8192
)

// Claims is the identity the edge asserts to an app.
type Claims struct {
	Issuer          string   `json:"iss"` // the edge's issuer URL, e.g. https://auth.corp.example
	Subject         string   `json:"sub"` // user ID
	Audience        string   `json:"aud"` // the app name
	Email           string   `json:"email,omitempty"`
	Name            string   `json:"name,omitempty"`
	Groups          []string `json:"groups,omitempty"`
	GroupsTruncated bool     `json:"groups_truncated,omitempty"` // Groups is only a prefix of the user's groups: the rest did not fit (see SignFitting)
	Device          string   `json:"device,omitempty"`           // device ID; empty when the client presented no device certificate
	Posture         string   `json:"posture,omitempty"`          // the posture profile the device satisfied; empty when the app requires none
	SessionID       string   `json:"sid,omitempty"`              // a non-secret session reference (hash), for audit correlation
	IssuedAt        int64    `json:"iat"`
	NotBefore       int64    `json:"nbf"`
	Expiry          int64    `json:"exp"`
	ID              string   `json:"jti"`
}

// Errors returned (wrapped) by Verify and Sign. Test for them with errors.Is;
// the wrapping message adds detail but never the token itself.
var (
	// ErrTooLarge: the token is longer than the configured maximum.
	ErrTooLarge = errors.New("identity: token too large")
	// ErrMalformed: not a compact JWS with a JSON header and JSON claims, or a
	// header this package does not accept (wrong typ, embedded keys, crit).
	ErrMalformed = errors.New("identity: malformed token")
	// ErrAlgorithm: the header names an algorithm other than ES256.
	ErrAlgorithm = errors.New("identity: algorithm not allowed")
	// ErrUnknownKey: no key with the token's kid, even after a refetch.
	ErrUnknownKey = errors.New("identity: unknown signing key")
	// ErrKeyFetch: the JWKS could not be fetched or parsed. Returned together
	// with ErrUnknownKey when a refetch for an unknown kid failed.
	ErrKeyFetch = errors.New("identity: fetch signing keys")
	// ErrSignature: the signature does not verify.
	ErrSignature = errors.New("identity: bad signature")
	// ErrIssuer: iss is not the configured issuer.
	ErrIssuer = errors.New("identity: wrong issuer")
	// ErrAudience: aud is not this app.
	ErrAudience = errors.New("identity: wrong audience")
	// ErrExpired: exp (plus leeway) is in the past.
	ErrExpired = errors.New("identity: token expired")
	// ErrNotYetValid: nbf or iat (minus leeway) is in the future.
	ErrNotYetValid = errors.New("identity: token not yet valid")
	// ErrMissingClaim: a required claim (sub) is empty.
	ErrMissingClaim = errors.New("identity: missing claim")
)
