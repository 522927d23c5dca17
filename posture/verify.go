package posture

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/ztna-dev/ztna/internal/store"
)

// Errors of report parsing and verification. Each rejection wraps exactly
// one of them, so the edge can count and explain rejections by kind; the
// wrapped message adds the detail for the log.
var (
	// ErrMalformedReport: the bytes are not a well-formed report within the
	// limits (size, syntax, field lengths).
	ErrMalformedReport = errors.New("posture: malformed report")
	// ErrSignature: the signature is not the device key's low-S signature
	// over the payload, or there is no usable device key.
	ErrSignature = errors.New("posture: report signature invalid")
	// ErrWrongDevice: the report names a device other than the one the
	// request authenticated as.
	ErrWrongDevice = errors.New("posture: report is for another device")
	// ErrReplay: the counter is not above the last accepted one.
	ErrReplay = errors.New("posture: report replayed (counter not increasing)")
	// ErrStaleNonce: the nonce was not issued to this device by this edge
	// (with its nonce key), or is older than the nonce TTL.
	ErrStaleNonce = errors.New("posture: report nonce unknown or expired")
	// ErrClock: collected_at is too far in the future or too old.
	ErrClock = errors.New("posture: report time out of range")
)

// Defaults for [ReportVerifier] and [NonceBook].
const (
	// DefaultMaxReportAge bounds how long before its arrival a report may
	// have been collected (agent clock).
	DefaultMaxReportAge = 2 * time.Minute
	// MaxReportFuture is how far ahead of the edge's clock collected_at may
	// be, to allow for clock skew.
	MaxReportFuture = time.Minute
	// DefaultNonceTTL is how long an issued nonce stays valid. The agent
	// uses the nonce it received with its previous report, so this must
	// exceed the reporting interval comfortably.
	DefaultNonceTTL = 5 * time.Minute
)

// ReportVerifier decides whether a parsed report may be accepted as the
// latest report of the device a request authenticated as. It holds no
// per-device state (nor does its NonceBook): the caller passes the device's
// registered key and the last counter it accepted, and after a successful
// Verify records the new counter with a compare-and-set (only if still
// greater than the stored one), so two reports verified concurrently cannot
// both be accepted with the same or a lower counter.
type ReportVerifier struct {
	// Nonces issued the nonces reports must carry. Required.
	Nonces *NonceBook
	// MaxReportAge: a report collected longer ago than this (by its own
	// collected_at) is refused. 0 means DefaultMaxReportAge.
	MaxReportAge time.Duration
}

// Verify checks sr for the device deviceID (from its client certificate),
// whose registered public key is key and whose last accepted counter is
// lastCounter (0 if none), at time now. In order: the report names that
// device; the signature is key's low-S ES256 signature over the payload;
// the counter is greater than lastCounter; the nonce is one this edge (any
// replica) issued to the device within the nonce TTL; collected_at is not more than
// MaxReportFuture ahead of now nor older than MaxReportAge. The error wraps
// one of the package's Err values.
func (v *ReportVerifier) Verify(sr *SignedReport, deviceID string, key *ecdsa.PublicKey, lastCounter uint64, now time.Time) error {
	if sr == nil {
		return fmt.Errorf("%w: no report", ErrMalformedReport)
	}
	r := &sr.Report
	// Before the signature, so a report moved from another device is
	// reported as what it is rather than as a bad signature.
	if r.DeviceID != deviceID {
		return fmt.Errorf("%w: report names device %q, request authenticated as %q", ErrWrongDevice, r.DeviceID, deviceID)
	}
	if err := verifyReportSig(sr, key); err != nil {
		return err
	}
	if r.Counter <= lastCounter {
		return fmt.Errorf("%w: counter %d, last accepted %d", ErrReplay, r.Counter, lastCounter)
	}
	if v.Nonces == nil || !v.Nonces.Valid(deviceID, r.Nonce, now) {
		return fmt.Errorf("%w: fetch a new nonce and report again", ErrStaleNonce)
	}
	maxAge := v.MaxReportAge
	if maxAge <= 0 {
		maxAge = DefaultMaxReportAge
	}
	if ahead := r.CollectedAt.Sub(now); ahead > MaxReportFuture {
		return fmt.Errorf("%w: collected_at is %s ahead of the edge's clock (allowed %s); check the device clock", ErrClock, ahead.Round(time.Second), MaxReportFuture)
	}
	if age := now.Sub(r.CollectedAt); age > maxAge {
		return fmt.Errorf("%w: collected %s ago (allowed %s); check the device clock", ErrClock, age.Round(time.Second), maxAge)
	}
	return nil
}

// verifyReportSig checks the signature of sr against key.
func verifyReportSig(sr *SignedReport, key *ecdsa.PublicKey) error {
	if key == nil || key.Curve != elliptic.P256() {
		return fmt.Errorf("%w: device has no P-256 key", ErrSignature)
	}
	if len(sr.sig) != reportSigLen {
		return fmt.Errorf("%w: signature is %d bytes", ErrSignature, len(sr.sig))
	}
	r := new(big.Int).SetBytes(sr.sig[:32])
	s := new(big.Int).SetBytes(sr.sig[32:])
	if s.Cmp(reportP256HalfOrder) > 0 {
		return fmt.Errorf("%w: high-S signature", ErrSignature)
	}
	digest := reportDigest(sr.payload)
	if !ecdsa.Verify(key, digest[:], r, s) {
		return fmt.Errorf("%w: not signed by the device key", ErrSignature)
	}
	return nil
}

// Nonce layout. A nonce is
//
//	base32(version (1 byte, 1) || issued-at (Unix seconds, 8 bytes big-endian) || mac)
//
// (RFC 4648 alphabet, no padding: exactly NonceLen characters), where mac
// is the first 16 bytes of HMAC-SHA256(key, "ztna-nonce:v1" || device ID
// || issued-at). The device ID is the only variable-length input and is
// followed by a fixed-length field, so no two (device, time) pairs share a
// MAC input.
const (
	nonceVersion = 1
	nonceMACLen  = 16
	nonceRawLen  = 1 + 8 + nonceMACLen
	nonceContext = "ztna-nonce:v1"

	// NonceLen is the length of every nonce a NonceBook issues. Anything
	// else is refused before it is decoded.
	NonceLen = (nonceRawLen*8 + 4) / 5
	// NonceKeySize is the size of the key that authenticates nonces.
	NonceKeySize = 32
	// MaxNonceFuture is how far ahead of the verifying replica's clock a
	// nonce's issue time may be: another replica's clock may run ahead.
	MaxNonceFuture = 5 * time.Second
)

// nonceEncoding encodes nonces: 25 bytes are exactly 40 characters, so
// every nonce has one spelling (no padding, no unused bits).
var nonceEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Store bucket of the nonce key: one entry, without expiry.
const (
	bucketNonceKey = "posture_nonce_key"
	nonceKeyEntry  = "v1"
)

// LoadNonceKey returns the key every replica of the edge authenticates
// report nonces with, creating it in st on first use: NonceKeySize random
// bytes stored without expiry with PutIfAbsent, then read back, so that
// replicas racing to create it all end up with the one that was stored. A
// stored key of the wrong size is an error (fail closed), not replaced.
//
// Whoever can read the store can mint nonces; that lets them claim a report
// is fresh, not sign one — reports are still signed by the device key and
// counted. To rotate the key, delete it from the store and restart every
// replica (agents holding an old nonce fetch a new one once).
func LoadNonceKey(ctx context.Context, st store.Store) ([]byte, error) {
	fresh := make([]byte, NonceKeySize)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("posture: nonce key: %w", err)
	}
	stored, err := st.PutIfAbsent(ctx, bucketNonceKey, nonceKeyEntry, fresh, 0)
	if err != nil {
		return nil, fmt.Errorf("posture: store nonce key: %w", err)
	}
	if stored {
		return fresh, nil
	}
	key, err := st.Get(ctx, bucketNonceKey, nonceKeyEntry)
	if err != nil {
		// Absent right after PutIfAbsent said it was present: deleted in
		// between. Reporting it beats guessing which key the others use.
		return nil, fmt.Errorf("posture: read nonce key: %w", err)
	}
	if len(key) != NonceKeySize {
		return nil, fmt.Errorf("posture: the stored nonce key (bucket %s) is %d bytes, want %d; delete it to create a new one", bucketNonceKey, len(key), NonceKeySize)
	}
	return key, nil
}

// NonceBook issues report nonces and checks them. It keeps no per-device
// state: a nonce carries its issue time and a MAC over the device ID and
// that time, so any NonceBook with the same key — every replica of the
// edge, through [LoadNonceKey] — accepts the nonces of every other, and a
// restart forgets nothing. A nonce is valid for the device it was issued to
// from its issue time (up to MaxNonceFuture early, for clock skew between
// replicas) until TTL after it, for any number of reports: replay is
// stopped by the report counter, the nonce proves the report was made after
// the edge issued a nonce for this device. It is safe for concurrent use.
type NonceBook struct {
	key []byte
	ttl time.Duration
	now func() time.Time
}

// NonceBookConfig configures a NonceBook. Zero values select the defaults.
type NonceBookConfig struct {
	// Key authenticates the nonces: NonceKeySize bytes, the same on every
	// replica (see LoadNonceKey). nil means a random key, so nonces verify
	// in this process only: for one edge without a shared store, and
	// tests. A key of another size panics (a programming error).
	Key []byte
	TTL time.Duration    // 0 means DefaultNonceTTL
	Now func() time.Time // issue times; nil means time.Now
}

// NewNonceBook returns a NonceBook configured by c.
func NewNonceBook(c NonceBookConfig) *NonceBook {
	b := &NonceBook{ttl: c.TTL, now: c.Now}
	switch len(c.Key) {
	case 0:
		b.key = make([]byte, NonceKeySize)
		if _, err := rand.Read(b.key); err != nil {
			panic("posture: nonce key: " + err.Error())
		}
	case NonceKeySize:
		b.key = bytes.Clone(c.Key)
	default:
		panic(fmt.Sprintf("posture: nonce key is %d bytes, want %d", len(c.Key), NonceKeySize))
	}
	if b.ttl <= 0 {
		b.ttl = DefaultNonceTTL
	}
	if b.now == nil {
		b.now = time.Now
	}
	return b
}

// TTL returns how long an issued nonce stays valid.
func (b *NonceBook) TTL() time.Duration { return b.ttl }

// Issue returns a new nonce for deviceID, issued now (whole seconds).
func (b *NonceBook) Issue(deviceID string) string {
	var raw [nonceRawLen]byte
	raw[0] = nonceVersion
	binary.BigEndian.PutUint64(raw[1:9], uint64(b.now().Unix()))
	b.mac(raw[9:], deviceID, raw[1:9])
	return nonceEncoding.EncodeToString(raw[:])
}

// Valid reports whether nonce was issued by a NonceBook with this key to
// deviceID, no longer than the TTL before now and no more than
// MaxNonceFuture after it. The MAC is compared in constant time.
func (b *NonceBook) Valid(deviceID, nonce string, now time.Time) bool {
	if len(nonce) != NonceLen || deviceID == "" || len(deviceID) > maxIDLen {
		return false
	}
	var raw [nonceRawLen]byte
	// The decoder skips line breaks, so a shorter result is possible:
	// only a full decode is a nonce.
	if n, err := nonceEncoding.Decode(raw[:], []byte(nonce)); err != nil || n != nonceRawLen || raw[0] != nonceVersion {
		return false
	}
	var want [nonceMACLen]byte
	b.mac(want[:], deviceID, raw[1:9])
	if !hmac.Equal(want[:], raw[9:]) {
		return false
	}
	issued := time.Unix(int64(binary.BigEndian.Uint64(raw[1:9])), 0)
	return issued.Sub(now) <= MaxNonceFuture && now.Sub(issued) <= b.ttl
}

// mac writes the truncated MAC of deviceID and issued (8 bytes) to dst.
func (b *NonceBook) mac(dst []byte, deviceID string, issued []byte) {
	m := hmac.New(sha256.New, b.key)
	m.Write([]byte(nonceContext))
	m.Write([]byte(deviceID))
	m.Write(issued)
	copy(dst, m.Sum(nil))
}
