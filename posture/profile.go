package posture

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Profile is a named set of posture requirements from the config; apps
// refer to it by name. Zero values require nothing beyond a fresh report.
type Profile struct {
	Name string `yaml:"name"`
	// MaxAge: the device's latest report must have arrived less than this
	// long ago. 0 means DefaultMaxAge.
	MaxAge                time.Duration `yaml:"max_age"`
	RequireDiskEncryption bool          `yaml:"require_disk_encryption"`
	RequireFirewall       bool          `yaml:"require_firewall"`
	RequireScreenLock     bool          `yaml:"require_screen_lock"`
	// MinKernel is a dotted version such as "5.15"; the report's kernel is
	// compared by its leading dotted numbers ("6.8.0-45-generic" is 6.8.0),
	// missing parts counting as 0. "" means no requirement.
	MinKernel string          `yaml:"min_kernel"`
	EDR       *EDRRequirement `yaml:"edr"`
}

// EDRRequirement requires one EDR product to be running the approved
// binary and in contact with its management server.
type EDRRequirement struct {
	// Name selects the report's EDR entry, e.g. "falcon-sensor".
	Name string `yaml:"name"`
	// AllowedSHA256 lists the SHA-256 (hex) of the approved executables; at
	// least one. A file that merely exists, or another binary renamed to the
	// EDR's name, does not match.
	AllowedSHA256 []string `yaml:"allowed_sha256"`
	// ManagerWindow: the EDR must have reached its management server within
	// this long. 0 means DefaultManagerWindow.
	ManagerWindow time.Duration `yaml:"manager_window"`
	// ContactFrom says whose word counts for that contact: "agent" (the
	// agent's TLS probe of the manager, in its signed report), "vendor" (the
	// EDR vendor's own check-in, arriving as an edr_checkin signal) or
	// "either" (the default: the later of the two).
	ContactFrom string `yaml:"contact_from"`
}

// Contact sources of EDRRequirement.ContactFrom.
const (
	ContactEither = "either"
	ContactAgent  = "agent"
	ContactVendor = "vendor"
)

// Profile defaults.
const (
	DefaultMaxAge        = 90 * time.Second
	DefaultManagerWindow = 10 * time.Minute
	// maxKernelParts bounds the dotted parts compared.
	maxKernelParts = 4
	// maxKernelPart caps one part, so parsing never overflows.
	maxKernelPart = 1 << 30
)

// ProfileError is a validation error in the input to CompileProfiles. Path
// locates the field relative to the profile list, e.g.
// "profiles[1].edr.allowed_sha256[0]", so a config loader can prefix its own
// location and point at the YAML node.
type ProfileError struct {
	Index int    // index into the profiles given
	Name  string // the profile's name when valid, for the message
	Field string // "name", "max_age", "edr.allowed_sha256[0]"…
	Msg   string
}

// Path returns "profiles[Index].Field".
func (e *ProfileError) Path() string { return fmt.Sprintf("profiles[%d].%s", e.Index, e.Field) }

func (e *ProfileError) Error() string {
	if e.Name != "" {
		return fmt.Sprintf("%s: profile %q: %s", e.Path(), e.Name, e.Msg)
	}
	return e.Path() + ": " + e.Msg
}

var profileNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
var dottedVersionRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)*$`)

// CompiledProfile is a validated Profile, ready for Evaluate. It is
// immutable and safe for concurrent use.
type CompiledProfile struct {
	name          string
	maxAge        time.Duration
	disk          bool
	firewall      bool
	screenLock    bool
	minKernel     []uint32 // nil: no requirement
	minKernelText string
	edr           *compiledEDR
}

type compiledEDR struct {
	name    string
	allowed map[string]struct{} // lower-case hex
	window  time.Duration
	agent   bool // the agent's probe counts as contact
	vendor  bool // the vendor's check-in counts as contact
}

// Name returns the profile's name.
func (p *CompiledProfile) Name() string { return p.name }

// MaxAge returns how long a report keeps a device compliant under this
// profile.
func (p *CompiledProfile) MaxAge() time.Duration { return p.maxAge }

// CompileProfiles validates ps and compiles them by name. It returns the
// first problem as a *ProfileError and retains nothing from its argument.
func CompileProfiles(ps []Profile) (map[string]*CompiledProfile, error) {
	out := make(map[string]*CompiledProfile, len(ps))
	first := make(map[string]int, len(ps))
	for i := range ps {
		p := &ps[i]
		fail := func(field, msg string) error {
			name := ""
			if profileNameRE.MatchString(p.Name) {
				name = p.Name
			}
			return &ProfileError{Index: i, Name: name, Field: field, Msg: msg}
		}
		if !profileNameRE.MatchString(p.Name) {
			return nil, fail("name", "required: up to 63 lower-case letters, digits, '-' and '_'")
		}
		if prev, dup := first[p.Name]; dup {
			return nil, fail("name", fmt.Sprintf("duplicate profile name (also profiles[%d])", prev))
		}
		first[p.Name] = i
		cp := &CompiledProfile{
			name:       p.Name,
			maxAge:     p.MaxAge,
			disk:       p.RequireDiskEncryption,
			firewall:   p.RequireFirewall,
			screenLock: p.RequireScreenLock,
		}
		if p.MaxAge < 0 {
			return nil, fail("max_age", "must not be negative")
		}
		if cp.maxAge == 0 {
			cp.maxAge = DefaultMaxAge
		}
		if p.MinKernel != "" {
			if !dottedVersionRE.MatchString(p.MinKernel) {
				return nil, fail("min_kernel", fmt.Sprintf("%q is not a dotted version such as 5.15", p.MinKernel))
			}
			parts := strings.Split(p.MinKernel, ".")
			if len(parts) > maxKernelParts {
				return nil, fail("min_kernel", fmt.Sprintf("at most %d parts", maxKernelParts))
			}
			for _, s := range parts {
				n, err := strconv.ParseUint(s, 10, 32)
				if err != nil || n > maxKernelPart {
					return nil, fail("min_kernel", fmt.Sprintf("part %q is too large", s))
				}
				cp.minKernel = append(cp.minKernel, uint32(n))
			}
			cp.minKernelText = p.MinKernel
		}
		if e := p.EDR; e != nil {
			if e.Name == "" {
				return nil, fail("edr.name", "required: the EDR's name as the agent reports it, e.g. falcon-sensor")
			}
			if err := checkText("edr.name", e.Name); err != nil {
				return nil, fail("edr.name", "must be printable text of at most 512 bytes")
			}
			if len(e.AllowedSHA256) == 0 {
				return nil, fail("edr.allowed_sha256", "at least one SHA-256 of an approved EDR executable is required")
			}
			if e.ManagerWindow < 0 {
				return nil, fail("edr.manager_window", "must not be negative")
			}
			ce := &compiledEDR{name: e.Name, window: e.ManagerWindow, allowed: make(map[string]struct{}, len(e.AllowedSHA256))}
			if ce.window == 0 {
				ce.window = DefaultManagerWindow
			}
			switch e.ContactFrom {
			case "", ContactEither:
				ce.agent, ce.vendor = true, true
			case ContactAgent:
				ce.agent = true
			case ContactVendor:
				ce.vendor = true
			default:
				return nil, fail("edr.contact_from", fmt.Sprintf("%q is not one of agent, vendor, either", e.ContactFrom))
			}
			for j, h := range e.AllowedSHA256 {
				lh := strings.ToLower(h)
				if !isLowerHex(lh, 64) {
					return nil, fail(fmt.Sprintf("edr.allowed_sha256[%d]", j), "must be 64 hex digits (sha256sum of the executable)")
				}
				ce.allowed[lh] = struct{}{}
			}
			cp.edr = ce
		}
		out[p.Name] = cp
	}
	return out, nil
}

// Verdict is the outcome of evaluating a device's posture against a
// profile. Failures lists every check that failed, in a fixed order, each
// with what was found and how to fix it; they are meant for the user.
type Verdict struct {
	OK       bool
	Failures []Failure
	// Expires is when an OK verdict stops holding if no new report
	// arrives: the report ages past max_age or the EDR's last contact with
	// its management server leaves the window. The edge re-evaluates live
	// connections at this time. Zero for a failing verdict.
	Expires time.Time
}

// Failure is one failed check.
type Failure struct {
	Check  string // stable identifier, one of the Check constants
	Reason string // what was detected, for the user
	Fix    string // what the user can do about it
}

// Check identifiers of Failure.Check.
const (
	CheckReport         = "report"          // no report, or the latest is older than max_age
	CheckDiskEncryption = "disk_encryption" // disk encryption off or unknown
	CheckFirewall       = "firewall"        // host firewall off or unknown
	CheckScreenLock     = "screen_lock"     // screen lock off or unknown
	CheckKernel         = "kernel"          // kernel older than min_kernel or unknown
	CheckEDRRunning     = "edr_running"     // the EDR is not installed or not running
	CheckEDRBinary      = "edr_binary"      // the running EDR executable is not an approved build
	CheckEDRManager     = "edr_manager"     // the EDR has not reached its management server recently
)

// Evidence is what the edge knows about a device's posture: its latest
// accepted report and the EDR vendors' own check-ins. A value is never
// modified once published; the edge replaces it.
type Evidence struct {
	Report     *Report   // the latest accepted report; nil: none yet
	ReceivedAt time.Time // when the edge accepted Report (edge clock)
	// CheckIns holds, per EDR name, when the vendor last said the device's
	// EDR checked in with its management server (edge clock, from
	// edr_checkin signals).
	CheckIns map[string]time.Time
}

// Evaluate decides the device's posture from ev at time now. It does no
// I/O and, when the device passes, does not allocate.
//
// A report older than max_age fails on that alone: its other contents no
// longer describe the device. The EDR's management-server contact reported
// by the agent is aged on the agent's clock (collected_at minus
// manager_last_reached) plus the time since the report arrived, so a skewed
// device clock neither helps nor hurts; a vendor check-in is aged on the
// edge's clock.
func (p *CompiledProfile) Evaluate(ev *Evidence, now time.Time) Verdict {
	var latest *Report
	var receivedAt time.Time
	if ev != nil {
		latest, receivedAt = ev.Report, ev.ReceivedAt
	}
	if latest == nil || receivedAt.IsZero() {
		return fail1(Failure{
			Check:  CheckReport,
			Reason: "no posture report has been received from this device; is ztna agent running?",
			Fix:    "start the agent (ztna agent run) and keep it running; access returns with its first report",
		})
	}
	age := now.Sub(receivedAt)
	if age > p.maxAge {
		return fail1(Failure{
			Check:  CheckReport,
			Reason: fmt.Sprintf("no posture report for %ds (limit %ds); is ztna agent running?", int64(age/time.Second), int64(p.maxAge/time.Second)),
			Fix:    "start the agent (ztna agent run) and keep it running; access returns with its next report",
		})
	}
	expires := receivedAt.Add(p.maxAge)
	var fs []Failure
	if p.disk {
		fs = checkBool(fs, latest.DiskEncrypted, CheckDiskEncryption,
			"disk encryption is off on this device", "could not determine whether disk encryption is on",
			"turn on disk encryption (FileVault, BitLocker or LUKS); access returns with the next report")
	}
	if p.firewall {
		fs = checkBool(fs, latest.FirewallActive, CheckFirewall,
			"the firewall is off on this device", "could not determine whether the firewall is on",
			"turn on the system firewall; access returns with the next report")
	}
	if p.screenLock {
		fs = checkBool(fs, latest.ScreenLock, CheckScreenLock,
			"automatic screen lock is off on this device", "could not determine whether the screen locks automatically",
			"turn on the automatic screen lock with a password; access returns with the next report")
	}
	if p.minKernel != nil {
		switch cmp, ok := compareKernel(latest.OS.Kernel, p.minKernel); {
		case !ok:
			fs = append(fs, Failure{Check: CheckKernel,
				Reason: fmt.Sprintf("could not determine the kernel version (reported %q); at least %s is required", latest.OS.Kernel, p.minKernelText),
				Fix:    "install the operating system updates, or ask IT if this persists"})
		case cmp < 0:
			fs = append(fs, Failure{Check: CheckKernel,
				Reason: fmt.Sprintf("kernel %s is older than the required %s", latest.OS.Kernel, p.minKernelText),
				Fix:    "install the operating system updates and restart"})
		}
	}
	if e := p.edr; e != nil {
		fs, expires = e.evaluate(fs, expires, latest, receivedAt, ev.CheckIns[e.name], now)
	}
	if fs != nil {
		return Verdict{Failures: fs}
	}
	return Verdict{OK: true, Expires: expires}
}

func fail1(f Failure) Verdict { return Verdict{Failures: []Failure{f}} }

// checkBool appends a failure unless v is known true.
func checkBool(fs []Failure, v *bool, check, off, unknown, fix string) []Failure {
	switch {
	case v == nil:
		return append(fs, Failure{Check: check, Reason: unknown, Fix: fix})
	case !*v:
		return append(fs, Failure{Check: check, Reason: off, Fix: fix})
	}
	return fs
}

// evaluate checks the three things that defeat the usual ways around an
// EDR check: the process runs (not just a file on disk), its executable is
// an approved build (not a renamed dummy), and it has recently reached its
// management server (not firewalled off from it).
func (e *compiledEDR) evaluate(fs []Failure, expires time.Time, r *Report, receivedAt, checkIn, now time.Time) ([]Failure, time.Time) {
	var st *EDRState
	for i := range r.EDR {
		if r.EDR[i].Name == e.name {
			st = &r.EDR[i]
			break
		}
	}
	switch {
	case st == nil:
		return append(fs, Failure{Check: CheckEDRRunning,
			Reason: fmt.Sprintf("EDR %s was not found on this device", e.name),
			Fix:    fmt.Sprintf("install %s from the company software catalogue, or ask IT", e.name)}), expires
	case !st.Running || st.PID <= 0:
		return append(fs, Failure{Check: CheckEDRRunning,
			Reason: fmt.Sprintf("EDR %s is installed but not running", e.name),
			Fix:    fmt.Sprintf("start %s (or restart the device); if it keeps stopping, ask IT", e.name)}), expires
	}
	if _, ok := e.allowed[st.ExeSHA256]; !ok {
		reason := fmt.Sprintf("EDR %s is running from %s, whose SHA-256 %s is not an approved build", e.name, st.ExePath, st.ExeSHA256)
		if st.ExeSHA256 == "" {
			reason = fmt.Sprintf("EDR %s is running, but the SHA-256 of its executable %s could not be determined", e.name, st.ExePath)
		}
		fs = append(fs, Failure{Check: CheckEDRBinary, Reason: reason,
			Fix: fmt.Sprintf("reinstall %s from the company software catalogue, or ask IT which version is approved", e.name)})
	}
	// Contact is checked first; the message parts are built only for a
	// failure, so a passing device costs no allocation.
	// Written without adding durations: Sub saturates for absurd times, and
	// a sum could wrap around to a passing value.
	var until time.Time // when the freshest accepted contact leaves the window
	if e.agent && !st.ManagerLastReached.IsZero() {
		sinceContact := max(r.CollectedAt.Sub(st.ManagerLastReached), 0)
		sinceReport := max(now.Sub(receivedAt), 0)
		if sinceContact <= e.window && sinceReport <= e.window-sinceContact {
			until = receivedAt.Add(e.window - sinceContact)
		}
	}
	if e.vendor && !checkIn.IsZero() && !checkIn.After(now) && now.Sub(checkIn) <= e.window {
		if u := checkIn.Add(e.window); u.After(until) {
			until = u
		}
	}
	if !until.IsZero() {
		if until.Before(expires) {
			expires = until
		}
		return fs, expires
	}
	server := "its management server"
	if st.ManagerAddr != "" {
		server = "its management server " + st.ManagerAddr
	}
	lastError := ""
	if st.ManagerError != "" {
		lastError = " (last error: " + st.ManagerError + ")"
	}
	const managerFix = "allow the EDR to reach its management server: check the firewall, proxy and network settings on this device"
	if !e.agent {
		reason := fmt.Sprintf("EDR %s has not checked in with its vendor's management server within %s", e.name, e.window)
		if !checkIn.IsZero() {
			reason = fmt.Sprintf("EDR %s last checked in with its vendor's management server at %s (limit %s)", e.name, checkIn.UTC().Format(time.RFC3339), e.window)
		}
		return append(fs, Failure{Check: CheckEDRManager, Reason: reason, Fix: managerFix}), expires
	}
	if st.ManagerLastReached.IsZero() {
		return append(fs, Failure{Check: CheckEDRManager,
			Reason: fmt.Sprintf("EDR %s has never reached %s%s", e.name, server, lastError),
			Fix:    managerFix}), expires
	}
	return append(fs, Failure{Check: CheckEDRManager,
		Reason: fmt.Sprintf("EDR %s has not reached %s since %s (limit %s)%s",
			e.name, server, st.ManagerLastReached.UTC().Format(time.RFC3339), e.window, lastError),
		Fix: managerFix}), expires
}

// compareKernel compares the leading dotted numbers of kernel with floor
// (missing parts are 0). ok is false when kernel does not start with a
// number.
func compareKernel(kernel string, floor []uint32) (cmp int, ok bool) {
	var parts [maxKernelParts]uint32
	n, i := 0, 0
	for n < maxKernelParts && i < len(kernel) && '0' <= kernel[i] && kernel[i] <= '9' {
		var v uint64
		for ; i < len(kernel) && '0' <= kernel[i] && kernel[i] <= '9'; i++ {
			v = min(v*10+uint64(kernel[i]-'0'), maxKernelPart+1)
		}
		parts[n] = uint32(v)
		n++
		if i+1 < len(kernel) && kernel[i] == '.' {
			i++
			continue
		}
		break
	}
	if n == 0 {
		return 0, false
	}
	for j := range maxKernelParts {
		var want uint32
		if j < len(floor) {
			want = floor[j]
		}
		switch {
		case parts[j] < want:
			return -1, true
		case parts[j] > want:
			return 1, true
		}
	}
	return 0, true
}
