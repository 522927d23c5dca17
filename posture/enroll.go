package posture

// Enrollment, in the shape of the OAuth device authorization grant (RFC
// 8628): the agent starts an enrollment with its public key and a proof that
// it holds the private key, shows the user code, and polls with the secret
// enrollment ID; the user, logged in through the browser, approves the code,
// which binds the device to that user; the next poll creates the device and
// hands out its first certificate, once. Renewal needs only the device key.
//
// The enrollment ID is a bearer secret: the store keys the record by its
// SHA-256, and it is never logged. The user code is short by design (people
// type it), so it only works while the enrollment is pending, only once, and
// only for a logged-in user.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/usercode"
)

// Store buckets owned by enrollment.
const (
	bucketEnrollments = "enrollments"     // by hash of the enrollment ID
	bucketEnrollCodes = "enroll_codes"    // by hash of the normalised user code → enrollment store key
	bucketEnrollPolls = "enroll_polls"    // by enrollment store key → last poll time
	bucketRenewProofs = "device_renewals" // by device ID and signed minute: one renewal per proof
)

const (
	enrollProofPrefix  = "ztna-enroll:"
	renewProofPrefix   = "ztna-renew:"
	enrollmentIDLen    = 43 // 32 random bytes, unpadded base64url
	maxDeviceNameLen   = 64
	maxPlatformLen     = 32
	maxProofLen        = 128 // an ASN.1 ECDSA P-256 signature is at most 72 bytes
	userCodeAttempts   = 5
	deviceIDAttempts   = 3
	enrollStateWaiting = "pending"
	enrollStateOK      = "approved"
	enrollStateDenied  = "denied"
)

const (
	// EnrollmentTTL is how long a started enrollment waits for approval.
	EnrollmentTTL = 10 * time.Minute
	// PollInterval is the shortest time between two polls of one
	// enrollment; a faster poll gets ErrSlowDown.
	PollInterval = 2 * time.Second
	// enrollGrace keeps an enrollment record past its expiry, so a late
	// poll hears ErrExpired rather than ErrNoEnrollment.
	enrollGrace = 10 * time.Minute
	// renewSkewMinutes is how many minutes a renewal proof's minute may be
	// off the edge's clock, either way.
	renewSkewMinutes = 1
	// Enrollment starts are rate-limited per edge process: a start costs a
	// signature check and two store writes, and needs no login.
	enrollRate  = 5  // per second
	enrollBurst = 50 // at once
)

var (
	// ErrPending: the user has not approved or denied yet (RFC 8628
	// authorization_pending). Poll again after PollInterval.
	ErrPending = errors.New("posture: enrollment awaiting approval")
	// ErrSlowDown: polled again sooner than PollInterval (RFC 8628 slow_down).
	ErrSlowDown = errors.New("posture: enrollment polled too often")
	// ErrDenied: the user denied the enrollment (RFC 8628 access_denied).
	ErrDenied = errors.New("posture: enrollment denied")
	// ErrExpired: the enrollment was not approved (or collected) in time
	// (RFC 8628 expired_token). Start again.
	ErrExpired = errors.New("posture: enrollment expired")
	// ErrNoEnrollment: no such enrollment, or its result was already
	// collected. It wraps store.ErrNotFound.
	ErrNoEnrollment = fmt.Errorf("posture: no such enrollment: %w", store.ErrNotFound)
	// ErrBadUserCode: the user code is malformed, unknown, already used or
	// expired. It wraps store.ErrNotFound.
	ErrBadUserCode = fmt.Errorf("posture: unknown or expired code: %w", store.ErrNotFound)
	// ErrBadProof: the proof is not a signature by the device key over the
	// expected message.
	ErrBadProof = errors.New("posture: proof of device key possession does not verify")
	// ErrProofUsed: a renewal proof for this device and minute was already
	// used; sign a new one in the next minute.
	ErrProofUsed = errors.New("posture: renewal proof already used")
	// ErrRateLimited: too many enrollments started recently; retry later.
	ErrRateLimited = errors.New("posture: too many enrollments started; try again shortly")
	// ErrInvalidEnrollment wraps every malformed StartEnrollment argument.
	ErrInvalidEnrollment = errors.New("posture: invalid enrollment request")
)

// PendingEnrollment is an enrollment waiting for the user's approval.
type PendingEnrollment struct {
	// EnrollmentID is the agent's secret for polling. Only StartEnrollment
	// returns it; it is never stored or logged.
	EnrollmentID string `json:"-"`
	// UserCode is what the user types or confirms, as XXXX-XXXX.
	UserCode    string    `json:"user_code"`
	ExpiresAt   time.Time `json:"expires_at"`
	CreatedAt   time.Time `json:"created_at"`
	Name        string    `json:"name"`
	Platform    string    `json:"platform"`
	PublicKey   []byte    `json:"public_key"`  // PKIX DER
	Fingerprint string    `json:"fingerprint"` // hex SHA-256 of PublicKey, for the user to compare with the agent's
}

// enrollRecord is the stored state of one enrollment.
type enrollRecord struct {
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Name      string    `json:"name"`
	Platform  string    `json:"platform"`
	PublicKey []byte    `json:"public_key"`
	State     string    `json:"state"`
	UserID    string    `json:"user_id,omitempty"`
	DecidedAt time.Time `json:"decided_at,omitzero"`
}

// KeyFingerprint is the hex SHA-256 of pub's PKIX encoding: what the agent
// and the approval page show so the user can tell the device is theirs.
func KeyFingerprint(pub *ecdsa.PublicKey) (string, error) {
	der, err := marshalDeviceKey(pub)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:]), nil
}

// EnrollProofMessage is what the device key signs to start an enrollment:
// "ztna-enroll:" + KeyFingerprint(pub).
func EnrollProofMessage(pub *ecdsa.PublicKey) ([]byte, error) {
	fp, err := KeyFingerprint(pub)
	if err != nil {
		return nil, err
	}
	return []byte(enrollProofPrefix + fp), nil
}

// RenewProofMessage is what the device key signs to renew its certificate
// at now: "ztna-renew:" + deviceID + ":" + the Unix minute.
func RenewProofMessage(deviceID string, now time.Time) []byte {
	return renewMessage(deviceID, unixMinute(now))
}

func renewMessage(deviceID string, minute int64) []byte {
	return []byte(renewProofPrefix + deviceID + ":" + strconv.FormatInt(minute, 10))
}

func unixMinute(t time.Time) int64 {
	s := t.Unix()
	if s < 0 {
		return (s - 59) / 60
	}
	return s / 60
}

// SignEnrollProof signs EnrollProofMessage with the device key (ASN.1 ECDSA
// over SHA-256), for the agent.
func SignEnrollProof(priv *ecdsa.PrivateKey) ([]byte, error) {
	msg, err := EnrollProofMessage(&priv.PublicKey)
	if err != nil {
		return nil, err
	}
	return signProof(priv, msg)
}

// SignRenewProof signs RenewProofMessage with the device key, for the agent.
func SignRenewProof(priv *ecdsa.PrivateKey, deviceID string, now time.Time) ([]byte, error) {
	return signProof(priv, RenewProofMessage(deviceID, now))
}

func signProof(priv *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	sig, err := ecdsa.SignASN1(rand.Reader, priv, h[:])
	if err != nil {
		return nil, fmt.Errorf("posture: sign proof: %w", err)
	}
	return sig, nil
}

func verifyProof(pub *ecdsa.PublicKey, msg, proof []byte) bool {
	if len(proof) == 0 || len(proof) > maxProofLen {
		return false
	}
	h := sha256.Sum256(msg)
	return ecdsa.VerifyASN1(pub, h[:], proof)
}

// marshalDeviceKey encodes pub as PKIX DER after checking it is a valid
// P-256 point (the round trip through the parser rejects off-curve points).
func marshalDeviceKey(pub *ecdsa.PublicKey) ([]byte, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return nil, errors.New("posture: device key must be ECDSA P-256")
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("posture: device key: %w", err)
	}
	if _, err := parseDeviceKey(der); err != nil {
		return nil, err
	}
	return der, nil
}

// StartEnrollment begins enrolling the device whose key is pub. proof is the
// device key's signature over EnrollProofMessage(pub) (see SignEnrollProof).
// name (the host name) and platform (linux, darwin, windows) are shown on
// the approval page. The result carries the secret EnrollmentID for Poll and
// the UserCode for the user; both stop working after EnrollmentTTL.
func (d *Devices) StartEnrollment(ctx context.Context, pub *ecdsa.PublicKey, name, platform string, proof []byte) (*PendingEnrollment, error) {
	der, err := marshalDeviceKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidEnrollment, err)
	}
	if name, err = cleanLabel("name", name, maxDeviceNameLen, true); err != nil {
		return nil, err
	}
	if platform, err = cleanLabel("platform", platform, maxPlatformLen, false); err != nil {
		return nil, err
	}
	fp := sha256.Sum256(der)
	fingerprint := hex.EncodeToString(fp[:])
	if !verifyProof(pub, []byte(enrollProofPrefix+fingerprint), proof) {
		return nil, ErrBadProof
	}
	now := d.now()
	if !d.limiter.allow(now) {
		return nil, ErrRateLimited
	}

	id := newEnrollmentID()
	key := secretStoreKey(id)
	rec := enrollRecord{
		CreatedAt: now,
		ExpiresAt: now.Add(EnrollmentTTL),
		Name:      name,
		Platform:  platform,
		PublicKey: der,
		State:     enrollStateWaiting,
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("posture: encode enrollment: %w", err)
	}
	// The record first: a code must never point at nothing.
	if err := d.st.Put(ctx, bucketEnrollments, key, b, EnrollmentTTL+enrollGrace); err != nil {
		return nil, fmt.Errorf("posture: store enrollment: %w", err)
	}
	var code string
	for range userCodeAttempts {
		c := usercode.New()
		ok, err := d.st.PutIfAbsent(ctx, bucketEnrollCodes, secretStoreKey(c), []byte(key), EnrollmentTTL)
		if err != nil {
			_ = d.st.Delete(ctx, bucketEnrollments, key)
			return nil, fmt.Errorf("posture: store enrollment code: %w", err)
		}
		if ok {
			code = c
			break
		}
	}
	if code == "" {
		_ = d.st.Delete(ctx, bucketEnrollments, key)
		return nil, errors.New("posture: no free enrollment code; try again")
	}
	d.logger.Info("device enrollment started", "fingerprint", fingerprint, "name", name, "platform", platform)
	return &PendingEnrollment{
		EnrollmentID: id,
		UserCode:     usercode.Format(code),
		ExpiresAt:    rec.ExpiresAt,
		CreatedAt:    rec.CreatedAt,
		Name:         name,
		Platform:     platform,
		PublicKey:    der,
		Fingerprint:  fingerprint,
	}, nil
}

// EnrollFor enrolls the device whose key is pub straight to userID, with no
// user code to confirm: for enrollments approved by other means (`ztna dev`
// enrolling its own machine, tests). It runs StartEnrollment, Approve and
// Poll, so the device is recorded exactly as a device-flow enrollment.
func (d *Devices) EnrollFor(ctx context.Context, userID string, pub *ecdsa.PublicKey, name, platform string, proof []byte, now time.Time) (*Device, []byte, error) {
	p, err := d.StartEnrollment(ctx, pub, name, platform, proof)
	if err != nil {
		return nil, nil, err
	}
	if err := d.Approve(ctx, p.UserCode, userID); err != nil {
		return nil, nil, err
	}
	return d.Poll(ctx, p.EnrollmentID, now)
}

// PendingByUserCode returns the enrollment waiting under the user code
// (case-insensitive, dash optional) for the approval page. It has no
// EnrollmentID.
func (d *Devices) PendingByUserCode(ctx context.Context, code string) (*PendingEnrollment, error) {
	c, ok := usercode.Normalize(code)
	if !ok {
		return nil, ErrBadUserCode
	}
	key, err := d.st.Get(ctx, bucketEnrollCodes, secretStoreKey(c))
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrBadUserCode
	}
	if err != nil {
		return nil, fmt.Errorf("posture: look up enrollment code: %w", err)
	}
	rec, err := d.loadEnrollment(ctx, string(key))
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrBadUserCode
	}
	if err != nil {
		return nil, err
	}
	if rec.State != enrollStateWaiting || !d.now().Before(rec.ExpiresAt) {
		return nil, ErrBadUserCode
	}
	fp := sha256.Sum256(rec.PublicKey)
	return &PendingEnrollment{
		UserCode:    usercode.Format(c),
		ExpiresAt:   rec.ExpiresAt,
		CreatedAt:   rec.CreatedAt,
		Name:        rec.Name,
		Platform:    rec.Platform,
		PublicKey:   rec.PublicKey,
		Fingerprint: hex.EncodeToString(fp[:]),
	}, nil
}

// Approve binds the enrollment waiting under userCode to userID, the user
// logged in on the approval page. A code decides once: a second Approve or
// Deny, like a wrong or expired code, fails with ErrBadUserCode.
func (d *Devices) Approve(ctx context.Context, userCode, userID string) error {
	if err := checkUserID(userID); err != nil {
		return err
	}
	return d.decide(ctx, userCode, enrollStateOK, userID)
}

// Deny refuses the enrollment waiting under userCode; the agent's next poll
// gets ErrDenied.
func (d *Devices) Deny(ctx context.Context, userCode string) error {
	return d.decide(ctx, userCode, enrollStateDenied, "")
}

func (d *Devices) decide(ctx context.Context, userCode, state, userID string) error {
	c, ok := usercode.Normalize(userCode)
	if !ok {
		return ErrBadUserCode
	}
	// Taking the code makes the decision one-time: of two concurrent
	// approvals (or an approval and a denial) exactly one proceeds.
	kb, err := d.st.Take(ctx, bucketEnrollCodes, secretStoreKey(c))
	if errors.Is(err, store.ErrNotFound) {
		return ErrBadUserCode
	}
	if err != nil {
		return fmt.Errorf("posture: take enrollment code: %w", err)
	}
	key := string(kb)
	rec, err := d.loadEnrollment(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return ErrBadUserCode
	}
	if err != nil {
		return err
	}
	now := d.now()
	if rec.State != enrollStateWaiting {
		return ErrBadUserCode
	}
	if !now.Before(rec.ExpiresAt) {
		return ErrExpired
	}
	rec.State, rec.UserID, rec.DecidedAt = state, userID, now
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("posture: encode enrollment: %w", err)
	}
	// Only decide writes the record after it is created (Poll only takes
	// it), so this write cannot undo anything.
	if err := d.st.Put(ctx, bucketEnrollments, key, b, rec.ExpiresAt.Add(enrollGrace).Sub(now)); err != nil {
		return fmt.Errorf("posture: store enrollment decision: %w", err)
	}
	fp := sha256.Sum256(rec.PublicKey)
	d.logger.Info("device enrollment "+state, "user", userID, "fingerprint", hex.EncodeToString(fp[:]), "name", rec.Name)
	return nil
}

// Poll is the agent's question "is my enrollment done?" at now. It returns
// ErrPending until the user decides, ErrSlowDown when asked again within
// PollInterval, ErrDenied, ErrExpired, or ErrNoEnrollment. After approval the
// first poll creates the device, issues its certificate (DER) and returns
// both; the enrollment is consumed, so the certificate is handed out once.
func (d *Devices) Poll(ctx context.Context, enrollmentID string, now time.Time) (*Device, []byte, error) {
	if !validEnrollmentID(enrollmentID) {
		return nil, nil, ErrNoEnrollment
	}
	key := secretStoreKey(enrollmentID)
	rec, err := d.loadEnrollment(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, ErrNoEnrollment
	}
	if err != nil {
		return nil, nil, err
	}
	// Pacing uses its own record: Poll never rewrites the enrollment, so it
	// cannot race an approval. Two concurrent polls may both pass; that is
	// harmless, the result is still taken once.
	if b, err := d.st.Get(ctx, bucketEnrollPolls, key); err == nil && len(b) == 8 {
		last := time.Unix(0, int64(binary.BigEndian.Uint64(b)))
		if now.Sub(last) < PollInterval {
			return nil, nil, ErrSlowDown
		}
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, nil, fmt.Errorf("posture: read enrollment poll time: %w", err)
	}
	var stamp [8]byte
	binary.BigEndian.PutUint64(stamp[:], uint64(now.UnixNano()))
	if err := d.st.Put(ctx, bucketEnrollPolls, key, stamp[:], EnrollmentTTL+enrollGrace); err != nil {
		return nil, nil, fmt.Errorf("posture: store enrollment poll time: %w", err)
	}

	switch {
	case rec.State == enrollStateDenied:
		return nil, nil, ErrDenied
	case !now.Before(rec.ExpiresAt):
		return nil, nil, ErrExpired
	case rec.State == enrollStateWaiting:
		return nil, nil, ErrPending
	case rec.State != enrollStateOK:
		return nil, nil, fmt.Errorf("posture: enrollment in unknown state %q", rec.State)
	}

	b, err := d.st.Take(ctx, bucketEnrollments, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, ErrNoEnrollment // collected by a concurrent poll
	}
	if err != nil {
		return nil, nil, fmt.Errorf("posture: take enrollment: %w", err)
	}
	var taken enrollRecord
	if err := json.Unmarshal(b, &taken); err != nil || taken.State != enrollStateOK {
		return nil, nil, fmt.Errorf("posture: enrollment changed while collected")
	}
	dev, der, err := d.createDevice(ctx, &taken, now)
	if err != nil {
		// Put it back so the agent's next poll can try again.
		if ttl := taken.ExpiresAt.Add(enrollGrace).Sub(d.now()); ttl > 0 {
			if perr := d.st.Put(ctx, bucketEnrollments, key, b, ttl); perr != nil {
				d.logger.Warn("approved enrollment lost after a failed device creation", "err", perr)
			}
		}
		return nil, nil, err
	}
	_ = d.st.Delete(ctx, bucketEnrollPolls, key)
	d.logger.Info("device enrolled", "device", dev.ID, "user", dev.UserID, "name", dev.Name, "fingerprint", dev.Fingerprint())
	return dev, der, nil
}

func (d *Devices) createDevice(ctx context.Context, rec *enrollRecord, now time.Time) (*Device, []byte, error) {
	pub, err := parseDeviceKey(rec.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	for range deviceIDAttempts {
		id := newDeviceID()
		der, cert, err := d.issue(id, rec.UserID, pub, now)
		if err != nil {
			return nil, nil, err
		}
		dev := &Device{
			ID:           id,
			UserID:       rec.UserID,
			Name:         rec.Name,
			Platform:     rec.Platform,
			PublicKey:    rec.PublicKey,
			EnrolledAt:   now,
			CertNotAfter: cert.NotAfter,
			CertSerial:   cert.SerialNumber.Text(16),

			PendingApproval: d.adminApproval,
		}
		b, err := json.Marshal(dev)
		if err != nil {
			return nil, nil, fmt.Errorf("posture: encode device: %w", err)
		}
		ok, err := d.st.PutIfAbsent(ctx, bucketDevices, id, b, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("posture: store device: %w", err)
		}
		if ok {
			return dev, der, nil
		}
	}
	return nil, nil, errors.New("posture: no free device ID")
}

func (d *Devices) issue(id, userID string, pub *ecdsa.PublicKey, now time.Time) ([]byte, *x509.Certificate, error) {
	der, err := d.ca.Issue(id, userID, pub, d.certTTL, now)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("posture: parse issued certificate: %w", err)
	}
	return der, cert, nil
}

// Renew issues the device a new certificate at now, with a new serial that
// from then on is the only one Check accepts. proof is the device key's
// signature over RenewProofMessage(deviceID, t) for a t within a minute of
// now (see SignRenewProof); each proof renews once. Revoked devices cannot
// renew.
func (d *Devices) Renew(ctx context.Context, deviceID string, proof []byte, now time.Time) ([]byte, error) {
	if checkDeviceID(deviceID) != nil {
		return nil, ErrNoDevice
	}
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	dev, err := d.load(ctx, deviceID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrNoDevice
	}
	if err != nil {
		return nil, err
	}
	if dev.Revoked {
		return nil, ErrDeviceRevoked
	}
	pub, err := parseDeviceKey(dev.PublicKey)
	if err != nil {
		return nil, err
	}
	m := unixMinute(now)
	signed, found := int64(0), false
	for delta := int64(0); delta <= renewSkewMinutes && !found; delta++ {
		for _, cand := range []int64{m - delta, m + delta} {
			if verifyProof(pub, renewMessage(deviceID, cand), proof) {
				signed, found = cand, true
				break
			}
		}
	}
	if !found {
		return nil, ErrBadProof
	}
	// A proof seen by anyone else (a log, a proxy) must not let them rotate
	// the device's certificate away from it.
	fresh, err := d.st.PutIfAbsent(ctx, bucketRenewProofs, deviceID+":"+strconv.FormatInt(signed, 10), []byte{1}, 2*(renewSkewMinutes+1)*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("posture: record renewal: %w", err)
	}
	if !fresh {
		return nil, ErrProofUsed
	}
	der, cert, err := d.issue(deviceID, dev.UserID, pub, now)
	if err != nil {
		return nil, err
	}
	dev.CertSerial, dev.CertNotAfter = cert.SerialNumber.Text(16), cert.NotAfter
	if err := d.save(ctx, dev); err != nil {
		return nil, err
	}
	// A revocation through another replica may have landed between load and
	// save; its tombstone wins, and the certificate just made is refused.
	after, err := d.load(ctx, deviceID)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.epoch++
	d.cacheLocked(newCachedDevice(after, d.now()))
	d.mu.Unlock()
	if after.Revoked {
		_ = d.save(ctx, after)
		return nil, ErrDeviceRevoked
	}
	d.logger.Info("device certificate renewed", "device", deviceID, "user", dev.UserID, "not_after", cert.NotAfter)
	return der, nil
}

func (d *Devices) loadEnrollment(ctx context.Context, key string) (*enrollRecord, error) {
	b, err := d.st.Get(ctx, bucketEnrollments, key)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("posture: load enrollment: %w", err)
	}
	var rec enrollRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("posture: decode enrollment: %w", err)
	}
	return &rec, nil
}

// secretStoreKey is the store key for a secret (enrollment ID, user code):
// a copy of the store does not yield usable secrets.
func secretStoreKey(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

func newEnrollmentID() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand panics rather than return an error)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func validEnrollmentID(s string) bool {
	if len(s) != enrollmentIDLen {
		return false
	}
	_, err := base64.RawURLEncoding.Strict().DecodeString(s)
	return err == nil
}

func newDeviceID() string {
	var b [8]byte
	rand.Read(b[:])
	return "dev-" + hex.EncodeToString(b[:])
}

// cleanLabel checks a device-supplied label shown to people: printable
// UTF-8, trimmed, bounded.
func cleanLabel(field, s string, max int, required bool) (string, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "" && required:
		return "", fmt.Errorf("%w: %s is required", ErrInvalidEnrollment, field)
	case len(s) > max:
		return "", fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalidEnrollment, field, max)
	case !utf8.ValidString(s):
		return "", fmt.Errorf("%w: %s is not UTF-8", ErrInvalidEnrollment, field)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return "", fmt.Errorf("%w: %s holds a non-printable character", ErrInvalidEnrollment, field)
		}
	}
	return s, nil
}

// tokenBucket is a small rate limiter (golang.org/x/time is not a
// dependency).
type tokenBucket struct {
	mu          sync.Mutex
	rate, burst float64
	tokens      float64
	last        time.Time
}

func newTokenBucket(rate, burst float64) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst}
}

func (b *tokenBucket) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
