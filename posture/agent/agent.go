package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/ztna-dev/ztna/posture"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"time"
)

// DefaultTimeout bounds each command and each network probe when
// Config.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// Facts is one collection of the device's posture. A nil pointer means the
// fact could not be determined on this device (unknown), which is different
// from false.
type Facts struct {
	OS             OS         `json:"os"`
	DiskEncrypted  *bool      `json:"disk_encrypted"`
	FirewallActive *bool      `json:"firewall_active"`
	ScreenLock     *bool      `json:"screen_lock"`
	EDR            []EDRState `json:"edr"`
}

// OS and EDRState are the report's own types: what the agent collects is
// exactly what it signs and the edge checks.
type (
	OS       = posture.OSInfo
	EDRState = posture.EDRState
)

// Report turns facts into the report the agent signs (posture.SignReport).
func (f Facts) Report(deviceID string, counter uint64, nonce string, collectedAt time.Time) posture.Report {
	return posture.Report{
		DeviceID: deviceID, Counter: counter, Nonce: nonce, CollectedAt: collectedAt,
		OS: f.OS, DiskEncrypted: f.DiskEncrypted, FirewallActive: f.FirewallActive, ScreenLock: f.ScreenLock, EDR: f.EDR,
	}
}

// EDRConfig names one EDR/AV product to look for.
type EDRConfig struct {
	// Name is the product's name as reported (and matched by the edge's
	// allow-list), e.g. "crowdstrike".
	Name string
	// ProcessNames are the process names the product runs under, e.g.
	// ["falcon-sensor"]. A process matches by its command name or by the base
	// name of its executable.
	ProcessNames []string
	// ManagerAddr is the management server's host:port, dialled over TLS;
	// "" means not checked.
	ManagerAddr string
	// ManagerServerName is the name verified in the server's certificate;
	// "" means the host part of ManagerAddr.
	ManagerServerName string
	// ManagerRootCAs verifies the server's certificate; nil means the
	// system's roots.
	ManagerRootCAs *x509.CertPool
}

// Config configures a Collector. The zero value collects OS, disk, firewall
// and screen-lock facts of the running system with no EDR checks.
type Config struct {
	EDR []EDRConfig
	// Root is the filesystem root under which /proc, /sys and /etc are read;
	// "" means "/". Tests point it at a fake tree.
	Root string
	// Timeout bounds each command and each network probe; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// Logger receives debug detail about facts that stayed unknown; nil
	// discards.
	Logger *slog.Logger
}

// Validate reports configuration mistakes that would make an EDR check
// meaningless.
func (c Config) Validate() error {
	seen := make(map[string]bool, len(c.EDR))
	for i, e := range c.EDR {
		if e.Name == "" {
			return fmt.Errorf("edr[%d]: name is empty", i)
		}
		if seen[e.Name] {
			return fmt.Errorf("edr[%d]: duplicate name %q", i, e.Name)
		}
		seen[e.Name] = true
		if len(e.ProcessNames) == 0 {
			return fmt.Errorf("edr %q: no process names", e.Name)
		}
		for _, p := range e.ProcessNames {
			if p == "" {
				return fmt.Errorf("edr %q: empty process name", e.Name)
			}
		}
		if e.ManagerAddr != "" {
			if _, _, err := net.SplitHostPort(e.ManagerAddr); err != nil {
				return fmt.Errorf("edr %q: manager address %q: %w", e.Name, e.ManagerAddr, err)
			}
		}
	}
	if c.Timeout < 0 {
		return errors.New("timeout is negative")
	}
	return nil
}

// Collector gathers Facts. It is safe for concurrent use; it remembers, in
// memory, when each EDR management server was last reached.
type Collector struct {
	cfg     Config
	root    string
	timeout time.Duration
	log     *slog.Logger

	// binPaths overrides where a named command is found (tests point it at
	// scripts); a present key with "" means the command is not installed.
	binPaths map[string]string

	mu          sync.Mutex
	lastReached map[string]time.Time // key: managerKey(EDRConfig)
}

// New returns a Collector for cfg. Call cfg.Validate first to reject
// mistakes early; New itself does not fail.
func New(cfg Config) *Collector {
	root := cfg.Root
	if root == "" {
		root = "/"
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Collector{
		cfg:         cfg,
		root:        root,
		timeout:     timeout,
		log:         log,
		lastReached: make(map[string]time.Time),
	}
}

// Collect gathers every fact. It always returns usable Facts: a fact that
// could not be determined is left unknown, and the returned error (if any)
// joins the reasons, each prefixed with the collector's name, for the caller
// to log. Facts that are simply not detectable on this device (no firewall
// tool installed, no desktop session) are unknown without an error. Collect
// returns early, with what it has, when ctx ends.
func (c *Collector) Collect(ctx context.Context) (Facts, error) {
	var (
		f    Facts
		errs []error
	)
	fail := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}

	var err error
	f.OS, err = c.osInfo(ctx)
	f.OS.Arch = runtime.GOARCH
	fail("os", err)
	if ctx.Err() == nil {
		f.DiskEncrypted, err = c.diskEncrypted(ctx)
		fail("disk encryption", err)
	}
	if ctx.Err() == nil {
		f.FirewallActive, err = c.firewallActive(ctx)
		fail("firewall", err)
	}
	if ctx.Err() == nil {
		f.ScreenLock, err = c.screenLock(ctx)
		fail("screen lock", err)
	}
	f.EDR, err = c.collectEDR(ctx)
	fail("edr", err)
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	return f, errors.Join(errs...)
}

// unknownf logs why a fact stays unknown without it being an error.
func (c *Collector) unknownf(fact, reason string, args ...any) {
	c.log.Debug("posture fact unknown", append([]any{"fact", fact, "reason", reason}, args...)...)
}

func boolPtr(b bool) *bool { return &b }
