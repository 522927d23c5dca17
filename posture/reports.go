package posture

// The report book: the latest accepted report of every device, in memory
// for the per-request check and in the store for restarts, plus a short
// history and the EDR vendors' check-ins.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/ztna-dev/ztna/internal/bus"
	"github.com/ztna-dev/ztna/internal/store"
)

// Store buckets owned by the report book.
const (
	bucketReportLatest  = "posture_latest"  // device ID → latestRecord
	bucketReportHistory = "posture_history" // device ID ":" counter (20 digits) → latestRecord
	bucketEDRCheckIn    = "edr_checkin"     // device ID ":" EDR name → check-in time (RFC 3339)
)

// Report book defaults.
const (
	// DefaultHistory is how long accepted reports are kept for the
	// history (admins, the console); the latest is kept for LatestTTL.
	DefaultHistory = time.Hour
	// LatestTTL is how long the latest report (and its counter, which stops
	// replays) outlives its device's silence. A report older than this is
	// useless to every profile, and a device silent for that long starts
	// over with a new nonce; its counter still only goes up.
	LatestTTL = 30 * 24 * time.Hour
)

// latestRecord is the stored form of an accepted report: the exact signed
// bytes, so the store holds evidence that can be verified again, and when
// the edge accepted them.
type latestRecord struct {
	Wire       string    `json:"wire"`
	ReceivedAt time.Time `json:"received_at"`
}

// Reports accepts posture reports and answers "what is this device's
// posture evidence now" from memory. It is safe for concurrent use.
type Reports struct {
	st       store.Store
	nonces   *NonceBook
	verifier ReportVerifier
	logger   *slog.Logger
	history  time.Duration

	// submitMu serialises the counter check-and-set of Submit; the
	// signature is verified before taking it.
	submitMu sync.Mutex

	mu       sync.RWMutex
	evidence map[string]*Evidence // device ID → the latest, never modified once stored

	onUpdateMu sync.RWMutex
	onUpdate   []func(deviceID string, ev *Evidence)

	announce bus.Publisher // tells the other replicas
}

// Announce sets how this book tells the edge's other replicas about a
// report it accepted (bus.Report), after the store has it; they Refresh.
// Call it before use.
func (b *Reports) Announce(publish bus.Publisher) { b.announce = publish }

// Refresh applies another replica's acceptance of a report from device
// id: the stored latest report replaces this book's if its counter is
// higher, and the update hooks run. (The other replica verified it; the
// store is trusted as it is at Load.)
func (b *Reports) Refresh(ctx context.Context, id string) error {
	if checkDeviceID(id) != nil {
		return nil
	}
	v, err := b.st.Get(ctx, bucketReportLatest, id)
	if errors.Is(err, store.ErrNotFound) {
		return b.loadCheckIns(ctx, id+":")
	}
	if err != nil {
		return fmt.Errorf("posture: refresh report of %s: %w", id, err)
	}
	ev, err := decodeLatest(v)
	if err != nil || ev.Report.DeviceID != id {
		b.logger.Warn("stored posture report unreadable or of another device; ignored", "device", id, "err", err)
		return b.loadCheckIns(ctx, id+":")
	}
	b.submitMu.Lock()
	if ev.Report.Counter > b.counter(id) {
		nv := b.swap(id, func(old *Evidence) *Evidence {
			if old != nil {
				ev.CheckIns = old.CheckIns
			}
			return ev
		})
		b.notify(id, nv)
	}
	b.submitMu.Unlock()
	return b.loadCheckIns(ctx, id+":")
}

// ReportsConfig configures a Reports. Zero values select the defaults.
type ReportsConfig struct {
	// Nonces issues and checks report nonces. With several replicas it
	// must be keyed with LoadNonceKey, so each accepts the others' nonces.
	// nil: a NewNonceBook with a random key (one process only).
	Nonces       *NonceBook
	MaxReportAge time.Duration // see ReportVerifier.MaxReportAge
	History      time.Duration // 0: DefaultHistory
	Logger       *slog.Logger
}

// NewReports returns an empty report book over st. Call Load to read the
// stored latest reports.
func NewReports(st store.Store, c ReportsConfig) *Reports {
	if c.Nonces == nil {
		c.Nonces = NewNonceBook(NonceBookConfig{})
	}
	if c.History <= 0 {
		c.History = DefaultHistory
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return &Reports{
		st: st, nonces: c.Nonces, logger: c.Logger, history: c.History,
		verifier: ReportVerifier{Nonces: c.Nonces, MaxReportAge: c.MaxReportAge},
		evidence: make(map[string]*Evidence),
	}
}

// Nonces returns the nonce book reports are checked against.
func (b *Reports) Nonces() *NonceBook { return b.nonces }

// OnUpdate registers fn to be called with a device's new evidence after a
// report is accepted or a vendor check-in recorded, so the edge can
// re-evaluate the device's live connections. fn must not block.
func (b *Reports) OnUpdate(fn func(deviceID string, ev *Evidence)) {
	b.onUpdateMu.Lock()
	b.onUpdate = append(b.onUpdate, fn)
	b.onUpdateMu.Unlock()
}

func (b *Reports) notify(id string, ev *Evidence) {
	b.onUpdateMu.RLock()
	fns := b.onUpdate
	b.onUpdateMu.RUnlock()
	for _, fn := range fns {
		fn(id, ev)
	}
}

// Load reads the latest stored report of every device into memory. Run it
// once at start-up, before serving.
func (b *Reports) Load(ctx context.Context) error {
	loaded := make(map[string]*Evidence)
	err := b.st.List(ctx, bucketReportLatest, "", func(id string, v []byte) bool {
		ev, err := decodeLatest(v)
		if err != nil {
			b.logger.Warn("stored posture report unreadable; ignored", "device", id, "err", err)
			return true
		}
		if ev.Report.DeviceID != id {
			b.logger.Warn("stored posture report names another device; ignored", "device", id)
			return true
		}
		loaded[id] = ev
		return true
	})
	if err != nil {
		return fmt.Errorf("posture: load reports: %w", err)
	}
	b.mu.Lock()
	for id, ev := range loaded {
		if cur := b.evidence[id]; cur == nil || cur.Report == nil || cur.Report.Counter < ev.Report.Counter {
			if cur != nil {
				ev.CheckIns = cur.CheckIns
			}
			b.evidence[id] = ev
		}
	}
	b.mu.Unlock()
	return b.loadCheckIns(ctx, "")
}

func decodeLatest(v []byte) (*Evidence, error) {
	var rec latestRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, err
	}
	sr, err := ParseReport([]byte(rec.Wire))
	if err != nil {
		return nil, err
	}
	return &Evidence{Report: &sr.Report, ReceivedAt: rec.ReceivedAt}, nil
}

// Evidence returns what the edge knows about the device's posture, from
// memory: nil when it has neither a report nor a check-in. The value must
// not be modified.
func (b *Reports) Evidence(deviceID string) *Evidence {
	b.mu.RLock()
	ev := b.evidence[deviceID]
	b.mu.RUnlock()
	return ev
}

// IssueNonce returns a new nonce for the device's next report.
func (b *Reports) IssueNonce(deviceID string) string { return b.nonces.Issue(deviceID) }

// Submit checks the wire-form report sent by dev (the device the request
// authenticated as, by its certificate) and, if it is acceptable, makes it
// the device's latest at now. The error wraps one of ErrMalformedReport,
// ErrSignature, ErrWrongDevice, ErrReplay, ErrStaleNonce or ErrClock, or is
// a store failure (nothing was accepted).
func (b *Reports) Submit(ctx context.Context, dev *Device, wire []byte, now time.Time) (*Evidence, error) {
	if dev == nil || dev.Revoked {
		return nil, ErrDeviceRevoked
	}
	sr, err := ParseReport(wire)
	if err != nil {
		return nil, err
	}
	key, err := dev.Key()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	// Verified against the current counter, then checked again under the
	// lock: of two reports verified at once only a higher counter wins.
	if err := b.verifier.Verify(sr, dev.ID, key, b.counter(dev.ID), now); err != nil {
		return nil, err
	}
	b.submitMu.Lock()
	defer b.submitMu.Unlock()
	if last := b.counter(dev.ID); sr.Report.Counter <= last {
		return nil, fmt.Errorf("%w: counter %d, last accepted %d", ErrReplay, sr.Report.Counter, last)
	}
	rec, err := json.Marshal(latestRecord{Wire: string(wire), ReceivedAt: now})
	if err != nil {
		return nil, err
	}
	// Stored before it is used, so a restart never forgets a counter the
	// edge acted on.
	if err := b.st.Put(ctx, bucketReportLatest, dev.ID, rec, LatestTTL); err != nil {
		return nil, fmt.Errorf("posture: store report: %w", err)
	}
	histKey := dev.ID + ":" + fmt.Sprintf("%020d", sr.Report.Counter)
	if err := b.st.Put(ctx, bucketReportHistory, histKey, rec, b.history); err != nil {
		b.logger.Warn("posture report history not stored", "device", dev.ID, "err", err)
	}
	r := sr.Report
	ev := b.swap(dev.ID, func(old *Evidence) *Evidence {
		nv := &Evidence{Report: &r, ReceivedAt: now}
		if old != nil {
			nv.CheckIns = old.CheckIns
		}
		return nv
	})
	b.notify(dev.ID, ev)
	b.announce.Tell(bus.Report, dev.ID)
	return ev, nil
}

// counter returns the last accepted counter of the device (0: none).
func (b *Reports) counter(id string) uint64 {
	if ev := b.Evidence(id); ev != nil && ev.Report != nil {
		return ev.Report.Counter
	}
	return 0
}

// swap replaces the device's evidence with next(old) and returns it.
func (b *Reports) swap(id string, next func(old *Evidence) *Evidence) *Evidence {
	b.mu.Lock()
	defer b.mu.Unlock()
	ev := next(b.evidence[id])
	b.evidence[id] = ev
	return ev
}

// CheckIn records that the EDR vendor reported the device's EDR edr in
// contact with its management server at the edge's time at (an
// edr_checkin signal). A check-in older than the one recorded is ignored;
// one in the future is recorded as now.
func (b *Reports) CheckIn(ctx context.Context, deviceID, edr string, at, now time.Time) error {
	if at.IsZero() || at.After(now) {
		at = now
	}
	// Stored first, so every replica (and a restart) knows it; then told.
	if err := b.st.Put(ctx, bucketEDRCheckIn, deviceID+":"+edr, []byte(at.UTC().Format(time.RFC3339Nano)), LatestTTL); err != nil {
		return fmt.Errorf("posture: store EDR check-in: %w", err)
	}
	b.recordCheckIn(deviceID, edr, at)
	b.announce.Tell(bus.Report, deviceID)
	return nil
}

// recordCheckIn keeps a check-in in memory (unless a later one is there)
// and runs the update hooks.
func (b *Reports) recordCheckIn(deviceID, edr string, at time.Time) {
	ev := b.swap(deviceID, func(old *Evidence) *Evidence {
		nv := &Evidence{}
		if old != nil {
			*nv = *old
			if prev, ok := old.CheckIns[edr]; ok && !prev.Before(at) {
				return old
			}
		}
		nv.CheckIns = maps.Clone(nv.CheckIns)
		if nv.CheckIns == nil {
			nv.CheckIns = make(map[string]time.Time, 1)
		}
		nv.CheckIns[edr] = at
		return nv
	})
	b.notify(deviceID, ev)
}

// loadCheckIns reads the stored check-ins of the devices whose IDs start
// with prefix ("" for all) into memory; newer ones than memory holds run
// the update hooks.
func (b *Reports) loadCheckIns(ctx context.Context, prefix string) error {
	err := b.st.List(ctx, bucketEDRCheckIn, prefix, func(key string, v []byte) bool {
		id, edr, ok := strings.Cut(key, ":")
		at, err := time.Parse(time.RFC3339Nano, string(v))
		if !ok || err != nil || checkDeviceID(id) != nil {
			return true
		}
		if ev := b.Evidence(id); ev != nil && !ev.CheckIns[edr].Before(at) {
			return true
		}
		b.recordCheckIn(id, edr, at)
		return true
	})
	if err != nil {
		return fmt.Errorf("posture: load EDR check-ins: %w", err)
	}
	return nil
}

// Forget drops the device's evidence, e.g. when it is revoked. Its stored
// latest report stays, so its counter is never reused. Nonces keep no
// per-device state to drop: a revoked device is refused before its nonce is
// looked at.
func (b *Reports) Forget(deviceID string) {
	b.mu.Lock()
	delete(b.evidence, deviceID)
	b.mu.Unlock()
}

// HistoryEntry is one accepted report of a device's history.
type HistoryEntry struct {
	Report     Report
	ReceivedAt time.Time
}

// History returns up to limit of the device's accepted reports from the
// last History period, newest first.
func (b *Reports) History(ctx context.Context, deviceID string, limit int) ([]HistoryEntry, error) {
	if checkDeviceID(deviceID) != nil {
		return nil, ErrNoDevice
	}
	var all []HistoryEntry
	var bad error
	err := b.st.List(ctx, bucketReportHistory, deviceID+":", func(_ string, v []byte) bool {
		ev, err := decodeLatest(v)
		if err != nil {
			bad = err
			return true
		}
		all = append(all, HistoryEntry{Report: *ev.Report, ReceivedAt: ev.ReceivedAt})
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("posture: report history: %w", err)
	}
	if bad != nil {
		b.logger.Warn("unreadable posture history entry skipped", "device", deviceID, "err", bad)
	}
	// Keys sort by counter; newest first.
	out := make([]HistoryEntry, 0, min(limit, len(all)))
	for i := len(all) - 1; i >= 0 && len(out) < limit; i-- {
		out = append(out, all[i])
	}
	return out, nil
}

// ReportErrorCode names a Submit error for the agent: the "error" of the
// edge's JSON answer. Unknown errors are "".
func ReportErrorCode(err error) string {
	for _, c := range []struct {
		err  error
		code string
	}{
		{ErrMalformedReport, "malformed_report"},
		{ErrSignature, "bad_signature"},
		{ErrWrongDevice, "wrong_device"},
		{ErrReplay, "replay"},
		{ErrStaleNonce, "stale_nonce"},
		{ErrClock, "clock"},
		{ErrDeviceRevoked, "device_refused"},
	} {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return ""
}
