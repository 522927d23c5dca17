package posture

import (
	"container/list"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"
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
	// ErrStaleNonce: the nonce was not issued to this device, has been
	// forgotten, or is older than the nonce TTL.
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
	// DefaultNonceDevices bounds the devices a NonceBook remembers.
	DefaultNonceDevices = 100_000
	// NoncesPerDevice is how many of its latest nonces a device may use.
	// More than one, so a report crossing the issue of the next nonce in
	// flight is not refused.
	NoncesPerDevice = 4
)

// ReportVerifier decides whether a parsed report may be accepted as the
// latest report of the device a request authenticated as. It holds no
// per-device state besides the nonces: the caller passes the device's
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
// the counter is greater than lastCounter; the nonce is one this edge issued
// to the device within the nonce TTL; collected_at is not more than
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

// NonceBook issues per-device nonces and remembers the latest
// [NoncesPerDevice] of each device with their issue time. It is in memory
// and bounded: past MaxDevices, the device whose latest nonce is oldest is
// forgotten (its agent gets ErrStaleNonce once and fetches a new nonce). It
// is safe for concurrent use.
type NonceBook struct {
	ttl        time.Duration
	maxDevices int
	now        func() time.Time

	mu      sync.Mutex
	devices map[string]*list.Element // value: *deviceNonces
	order   list.List                // least recently issued first
}

type deviceNonces struct {
	deviceID string
	nonces   [NoncesPerDevice]string
	issued   [NoncesPerDevice]time.Time
	next     int // slot the next nonce overwrites
}

// NonceBookConfig configures a NonceBook. Zero values select the defaults.
type NonceBookConfig struct {
	TTL        time.Duration    // 0 means DefaultNonceTTL
	MaxDevices int              // 0 means DefaultNonceDevices
	Now        func() time.Time // issue times; nil means time.Now
}

// NewNonceBook returns an empty NonceBook.
func NewNonceBook(c NonceBookConfig) *NonceBook {
	b := &NonceBook{ttl: c.TTL, maxDevices: c.MaxDevices, now: c.Now, devices: map[string]*list.Element{}}
	if b.ttl <= 0 {
		b.ttl = DefaultNonceTTL
	}
	if b.maxDevices <= 0 {
		b.maxDevices = DefaultNonceDevices
	}
	if b.now == nil {
		b.now = time.Now
	}
	return b
}

// TTL returns how long an issued nonce stays valid.
func (b *NonceBook) TTL() time.Duration { return b.ttl }

// Issue returns a new random nonce (128 bits, base32) for deviceID and
// remembers it, replacing the device's oldest one when it already has
// NoncesPerDevice.
func (b *NonceBook) Issue(deviceID string) string {
	nonce := rand.Text()
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	el, ok := b.devices[deviceID]
	if !ok {
		for len(b.devices) >= b.maxDevices {
			oldest := b.order.Front()
			delete(b.devices, oldest.Value.(*deviceNonces).deviceID)
			b.order.Remove(oldest)
		}
		el = b.order.PushBack(&deviceNonces{deviceID: deviceID})
		b.devices[deviceID] = el
	} else {
		b.order.MoveToBack(el)
	}
	d := el.Value.(*deviceNonces)
	d.nonces[d.next] = nonce
	d.issued[d.next] = now
	d.next = (d.next + 1) % NoncesPerDevice
	return nonce
}

// Valid reports whether nonce is one of the latest nonces issued to
// deviceID and was issued no longer than the TTL before now. A nonce stays
// valid for several reports: replay is stopped by the counter, the nonce
// proves the report was made after the edge issued it, for this device.
func (b *NonceBook) Valid(deviceID, nonce string, now time.Time) bool {
	if nonce == "" {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	el, ok := b.devices[deviceID]
	if !ok {
		return false
	}
	d := el.Value.(*deviceNonces)
	valid := false
	for i := range d.nonces {
		// Every slot is compared, so the time taken does not say which
		// slot matched or how much of a guess was right.
		same := subtle.ConstantTimeCompare([]byte(d.nonces[i]), []byte(nonce)) == 1
		if same && d.nonces[i] != "" && now.Sub(d.issued[i]) <= b.ttl {
			valid = true
		}
	}
	return valid
}

// Forget drops every nonce of deviceID, e.g. when the device is revoked.
func (b *NonceBook) Forget(deviceID string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if el, ok := b.devices[deviceID]; ok {
		delete(b.devices, deviceID)
		b.order.Remove(el)
	}
}

// Len returns how many devices have nonces remembered.
func (b *NonceBook) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.devices)
}
