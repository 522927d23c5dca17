package posture

// The device registry: which devices are enrolled, whose they are, which
// certificate each currently holds, and which are revoked. Records live in
// the shared store (bucket "devices", keyed by device ID); a short-lived
// memory cache in front makes the per-request Check a map read.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ztna-dev/ztna/internal/bus"
	"github.com/ztna-dev/ztna/internal/store"
)

// Store buckets owned by the device registry.
const (
	bucketDevices = "devices"
	// bucketDeviceRevocations holds a tombstone per revoked device. It never
	// expires and is consulted on every load, so a write racing with a
	// revocation (a renewal on another replica) cannot un-revoke a device.
	bucketDeviceRevocations = "device_revocations"
)

const (
	// deviceCacheTTL bounds how long a cached device is trusted without
	// re-reading the store: a revocation made on another replica is seen
	// within this time even before a revocation bus says so.
	deviceCacheTTL = 10 * time.Second
	// deviceReloadAfter is how old a cache entry must be before a serial
	// mismatch re-reads the store (the device may have renewed through
	// another replica). It stops a stale certificate from costing a store
	// read on every request.
	deviceReloadAfter = time.Second
	maxCachedDevices  = 100_000
	maxRevokeReason   = 256
)

var (
	// ErrNoDevice means no device with that ID is registered. It wraps
	// store.ErrNotFound.
	ErrNoDevice = fmt.Errorf("posture: no such device: %w", store.ErrNotFound)
	// ErrDeviceRevoked means the device was revoked: its certificates are
	// refused even before they expire, and it cannot renew.
	ErrDeviceRevoked = errors.New("posture: device revoked")
	// ErrCertReplaced means the certificate was valid once but the device
	// has renewed since; only its newest certificate identifies it.
	ErrCertReplaced = errors.New("posture: device certificate replaced by a newer one")
)

// Device is a registered device.
type Device struct {
	ID           string    `json:"id"`
	UserID       string    `json:"user_id"` // the user who approved the enrollment
	Name         string    `json:"name"`
	Platform     string    `json:"platform"`
	PublicKey    []byte    `json:"public_key"` // PKIX DER of the device key (ECDSA P-256)
	EnrolledAt   time.Time `json:"enrolled_at"`
	CertNotAfter time.Time `json:"cert_not_after"`
	CertSerial   string    `json:"cert_serial"` // lowercase hex of the current certificate's serial
	// PendingApproval: devices.admin_approval is on and no admin has
	// approved the device yet. It may report its posture (so the admin
	// sees it before deciding) but reaches no app.
	PendingApproval bool      `json:"pending_approval,omitempty"`
	ApprovedBy      string    `json:"approved_by,omitempty"`
	ApprovedAt      time.Time `json:"approved_at,omitzero"`
	Revoked         bool      `json:"revoked,omitempty"`
	RevokedAt       time.Time `json:"revoked_at,omitzero"`
	RevokedReason   string    `json:"revoked_reason,omitempty"`
}

// Key returns the device's public key.
func (d *Device) Key() (*ecdsa.PublicKey, error) { return parseDeviceKey(d.PublicKey) }

// Fingerprint is the hex SHA-256 of the device's PKIX public key, the value
// the approval page and the agent both show.
func (d *Device) Fingerprint() string {
	h := sha256.Sum256(d.PublicKey)
	return hex.EncodeToString(h[:])
}

// LogValue keeps log lines short and free of key material.
func (d *Device) LogValue() slog.Value {
	return slog.GroupValue(slog.String("id", d.ID), slog.String("user", d.UserID), slog.Bool("revoked", d.Revoked))
}

// deviceRevocation is the tombstone of a revoked device.
type deviceRevocation struct {
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

type cachedDevice struct {
	dev      *Device
	serial   *big.Int // dev.CertSerial parsed, so Check compares without allocating
	loadedAt time.Time
}

// Devices is the device registry and the enrollment state machine, over a
// store.Store. It is safe for concurrent use.
type Devices struct {
	st      store.Store
	ca      *DeviceCA
	logger  *slog.Logger
	now     func() time.Time
	certTTL time.Duration
	limiter *tokenBucket
	// adminApproval: new devices wait for an admin (SetAdminApproval).
	adminApproval bool

	mu    sync.RWMutex
	cache map[string]*cachedDevice
	// epoch counts registry writes (revocations, renewals) on this
	// replica. A lookup that loaded a device before such a write finished
	// must not cache what it read.
	epoch uint64

	// writeMu serialises read-modify-write of device records on this
	// replica (renew vs revoke); across replicas the tombstone decides.
	writeMu sync.Mutex

	onRevokeMu sync.RWMutex
	onRevoke   []func(deviceID string)

	announce bus.Publisher // tells the other replicas
}

// Announce sets how this registry tells the edge's other replicas about a
// device it revoked (bus.DeviceRevoked), after the store has the
// tombstone. Call it before use.
func (d *Devices) Announce(publish bus.Publisher) { d.announce = publish }

// Forget applies another replica's revocation of device id: the cached
// copy is dropped and, unless the store shows the device live, the revoke
// hooks run (its live connections close here too). A store that cannot be
// read counts as "revoked": the other replica said so.
func (d *Devices) Forget(ctx context.Context, id string) {
	if checkDeviceID(id) != nil {
		return
	}
	d.mu.Lock()
	d.epoch++
	delete(d.cache, id)
	d.mu.Unlock()
	if dev, err := d.load(ctx, id); err == nil && !dev.Revoked {
		return
	}
	d.notify(id)
}

// Resync drops every cached device (events from other replicas may have
// been missed): the next check reads the store.
func (d *Devices) Resync() {
	d.mu.Lock()
	d.epoch++
	clear(d.cache)
	d.mu.Unlock()
}

// NewDevices returns the registry over st, issuing certificates with ca.
// A nil logger discards.
func NewDevices(st store.Store, ca *DeviceCA, logger *slog.Logger) *Devices {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Devices{
		st:      st,
		ca:      ca,
		logger:  logger,
		now:     time.Now,
		certTTL: DefaultCertTTL,
		limiter: newTokenBucket(enrollRate, enrollBurst),
		cache:   make(map[string]*cachedDevice),
	}
}

// SetCertTTL sets the lifetime of the certificates issued from now on
// (DefaultCertTTL until set). Call it before serving.
func (d *Devices) SetCertTTL(ttl time.Duration) { d.certTTL = ttl }

// OnRevoke registers fn to be called with the ID of every device revoked
// through this registry (or seen revoked by Check after another replica
// revoked it), so the edge can close the device's live connections. fn must
// not block.
func (d *Devices) OnRevoke(fn func(deviceID string)) {
	d.onRevokeMu.Lock()
	d.onRevoke = append(d.onRevoke, fn)
	d.onRevokeMu.Unlock()
}

func (d *Devices) notify(id string) {
	d.onRevokeMu.RLock()
	fns := d.onRevoke
	d.onRevokeMu.RUnlock()
	for _, fn := range fns {
		fn(id)
	}
}

// Get returns the device with the given ID, read from the store.
func (d *Devices) Get(ctx context.Context, id string) (*Device, error) {
	if checkDeviceID(id) != nil {
		return nil, ErrNoDevice
	}
	dev, err := d.load(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrNoDevice
	}
	return dev, err
}

// List returns the devices of userID, or every device when userID is "",
// in device ID order. It scans the store: for the console and the agent's
// status, not for requests.
func (d *Devices) List(ctx context.Context, userID string) ([]*Device, error) {
	revoked := make(map[string]deviceRevocation)
	err := d.st.List(ctx, bucketDeviceRevocations, "", func(id string, v []byte) bool {
		var r deviceRevocation
		if json.Unmarshal(v, &r) == nil {
			revoked[id] = r
		} else {
			revoked[id] = deviceRevocation{}
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("posture: list device revocations: %w", err)
	}
	var out []*Device
	err = d.st.List(ctx, bucketDevices, "", func(id string, v []byte) bool {
		var dev Device
		if err := json.Unmarshal(v, &dev); err != nil || dev.ID != id {
			d.logger.Warn("skipping unreadable device record", "device", id, "err", err)
			return true
		}
		if r, ok := revoked[id]; ok {
			applyRevocation(&dev, r)
		}
		if userID == "" || dev.UserID == userID {
			out = append(out, &dev)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("posture: list devices: %w", err)
	}
	return out, nil
}

// SetAdminApproval makes devices enrolled from now on wait for an admin's
// approval (ApproveDevice) before they reach apps. Call it before use.
func (d *Devices) SetAdminApproval(on bool) { d.adminApproval = on }

// ErrNotPending means a device approval found nothing to approve.
var ErrNotPending = errors.New("posture: device is not waiting for approval")

// ApproveDevice lets a device that waits for an admin's approval reach
// apps. On other replicas the approval applies within the device cache's
// lifetime (10 s): approving only ever lets more in, so waiting is safe.
func (d *Devices) ApproveDevice(ctx context.Context, id, by string) (*Device, error) {
	if checkDeviceID(id) != nil {
		return nil, ErrNoDevice
	}
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	dev, err := d.load(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrNoDevice
	}
	if err != nil {
		return nil, err
	}
	if dev.Revoked || !dev.PendingApproval {
		return nil, ErrNotPending
	}
	dev.PendingApproval, dev.ApprovedBy, dev.ApprovedAt = false, by, d.now()
	if err := d.save(ctx, dev); err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.epoch++
	delete(d.cache, id)
	d.mu.Unlock()
	d.logger.Info("device approved", "device", id, "user", dev.UserID, "by", by)
	return dev, nil
}

// Revoke revokes the device with the given ID: from now on Check refuses
// its certificates (on other replicas within the cache lifetime) and Renew
// refuses it. Revoking a revoked device keeps the first reason and time.
// OnRevoke callbacks run before Revoke returns.
func (d *Devices) Revoke(ctx context.Context, id, reason string) error {
	if checkDeviceID(id) != nil {
		return ErrNoDevice
	}
	reason = cleanReason(reason)
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	dev, err := d.load(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return ErrNoDevice
	}
	if err != nil {
		return err
	}
	now := d.now()
	if !dev.Revoked {
		tomb, err := json.Marshal(deviceRevocation{At: now, Reason: reason})
		if err != nil {
			return fmt.Errorf("posture: encode revocation: %w", err)
		}
		if _, err := d.st.PutIfAbsent(ctx, bucketDeviceRevocations, id, tomb, 0); err != nil {
			return fmt.Errorf("posture: revoke device %s: %w", id, err)
		}
		applyRevocation(dev, deviceRevocation{At: now, Reason: reason})
		// The record is only a copy of the tombstone for listing; load
		// applies the tombstone whatever the record says.
		if err := d.save(ctx, dev); err != nil {
			d.logger.Warn("revoked device record not updated; the tombstone still applies", "device", id, "err", err)
		}
		d.logger.Info("device revoked", "device", id, "user", dev.UserID, "reason", reason)
	}
	d.mu.Lock()
	d.epoch++
	delete(d.cache, id)
	d.mu.Unlock()
	d.notify(id)
	d.announce.Tell(bus.DeviceRevoked, id)
	return nil
}

// Check identifies the device presenting certs (as TLS hands them over) at
// now: the certificate must pass DeviceFromCert, and the registry must know
// the device, not have it revoked, hold this certificate's serial as the
// device's current one and bind it to the same user. It is called on every
// request and tunnel connection; repeated calls for the same device and
// certificate do no I/O. The returned Device is shared: callers must not
// modify it.
func (d *Devices) Check(ctx context.Context, certs []*x509.Certificate, now time.Time) (*Device, error) {
	deviceID, userID, err := d.ca.DeviceFromCert(certs, now)
	if err != nil {
		return nil, err
	}
	serial := certs[0].SerialNumber
	c, err := d.lookup(ctx, deviceID, 0)
	if err != nil {
		return nil, err
	}
	if !c.dev.Revoked && (c.serial == nil || serial == nil || c.serial.Cmp(serial) != 0) {
		// The device may have renewed through another replica since we
		// cached it; re-read, but at most once per deviceReloadAfter.
		if c, err = d.lookup(ctx, deviceID, deviceReloadAfter); err != nil {
			return nil, err
		}
	}
	switch {
	case c.dev.Revoked:
		return nil, ErrDeviceRevoked
	case c.serial == nil || serial == nil || c.serial.Cmp(serial) != 0:
		return nil, ErrCertReplaced
	case c.dev.UserID != userID:
		return nil, fmt.Errorf("%w: bound to another user than the device", ErrBadDeviceCert)
	}
	return c.dev, nil
}

// lookup returns the cached device, re-reading the store when the entry is
// older than maxAge (0: deviceCacheTTL).
func (d *Devices) lookup(ctx context.Context, id string, maxAge time.Duration) (*cachedDevice, error) {
	if maxAge <= 0 {
		maxAge = deviceCacheTTL
	}
	now := d.now()
	d.mu.RLock()
	c := d.cache[id]
	epoch := d.epoch
	d.mu.RUnlock()
	if c != nil && now.Sub(c.loadedAt) <= maxAge && !now.Before(c.loadedAt) {
		return c, nil
	}
	dev, err := d.load(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		d.mu.Lock()
		delete(d.cache, id)
		d.mu.Unlock()
		return nil, ErrNoDevice
	}
	if err != nil {
		return nil, err // fail closed: a store error never falls back to a stale entry
	}
	fresh := newCachedDevice(dev, now)
	d.mu.Lock()
	if d.epoch == epoch {
		d.cacheLocked(fresh)
	}
	d.mu.Unlock()
	if c != nil && !c.dev.Revoked && dev.Revoked {
		// Revoked elsewhere: let this replica's live connections go too.
		d.notify(id)
	}
	return fresh, nil
}

func newCachedDevice(dev *Device, now time.Time) *cachedDevice {
	c := &cachedDevice{dev: dev, loadedAt: now}
	if s, ok := new(big.Int).SetString(dev.CertSerial, 16); ok {
		c.serial = s
	}
	return c
}

func (d *Devices) cacheLocked(c *cachedDevice) {
	if _, ok := d.cache[c.dev.ID]; !ok && len(d.cache) >= maxCachedDevices {
		for k := range d.cache { // evict one at random: a miss only costs a store read
			delete(d.cache, k)
			break
		}
	}
	d.cache[c.dev.ID] = c
}

// load reads a device record and applies its revocation tombstone.
func (d *Devices) load(ctx context.Context, id string) (*Device, error) {
	b, err := d.st.Get(ctx, bucketDevices, id)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("posture: load device %s: %w", id, err)
	}
	var dev Device
	if err := json.Unmarshal(b, &dev); err != nil {
		return nil, fmt.Errorf("posture: decode device %s: %w", id, err)
	}
	if dev.ID != id {
		return nil, fmt.Errorf("posture: device record %s names device %q", id, dev.ID)
	}
	tb, err := d.st.Get(ctx, bucketDeviceRevocations, id)
	switch {
	case err == nil:
		var r deviceRevocation
		_ = json.Unmarshal(tb, &r) // an unreadable tombstone still revokes
		applyRevocation(&dev, r)
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("posture: load device %s revocation: %w", id, err)
	}
	return &dev, nil
}

func applyRevocation(dev *Device, r deviceRevocation) {
	dev.Revoked = true
	if !r.At.IsZero() {
		dev.RevokedAt = r.At
		dev.RevokedReason = r.Reason
	}
}

func (d *Devices) save(ctx context.Context, dev *Device) error {
	b, err := json.Marshal(dev)
	if err != nil {
		return fmt.Errorf("posture: encode device: %w", err)
	}
	if err := d.st.Put(ctx, bucketDevices, dev.ID, b, 0); err != nil {
		return fmt.Errorf("posture: store device %s: %w", dev.ID, err)
	}
	return nil
}

func parseDeviceKey(der []byte) (*ecdsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("posture: device key: %w", err)
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("posture: device key is not ECDSA P-256")
	}
	return pub, nil
}

// cleanReason keeps an admin's revocation reason printable and bounded: it
// ends up in logs and on pages.
func cleanReason(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > maxRevokeReason {
		cut := maxRevokeReason
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}
