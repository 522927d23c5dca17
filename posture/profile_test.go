package posture

import (
	"cmp"
	"errors"
	"strings"
	"testing"
	"time"
)

const rptHash2 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

func rptCompile(t testing.TB, ps ...Profile) map[string]*CompiledProfile {
	t.Helper()
	m, err := CompileProfiles(ps)
	if err != nil {
		t.Fatalf("CompileProfiles: %v", err)
	}
	return m
}

// rptStrict is a profile with every check on.
func rptStrict() Profile {
	return Profile{
		Name:                  "strict",
		MaxAge:                90 * time.Second,
		RequireDiskEncryption: true,
		RequireFirewall:       true,
		RequireScreenLock:     true,
		MinKernel:             "5.15",
		EDR: &EDRRequirement{
			Name:          "falcon-sensor",
			AllowedSHA256: []string{rptHash, strings.ToUpper(rptHash2)},
			ManagerWindow: 10 * time.Minute,
		},
	}
}

func TestCompileProfilesErrors(t *testing.T) {
	edr := func(edit func(e *EDRRequirement)) Profile {
		p := rptStrict()
		e := *p.EDR
		edit(&e)
		p.EDR = &e
		return p
	}
	with := func(edit func(p *Profile)) Profile { p := rptStrict(); edit(&p); return p }
	for _, tc := range []struct {
		name     string
		profiles []Profile
		path     string // ProfileError.Path()
		msg      string // substring of the message
	}{
		{"no name", []Profile{{}}, "profiles[0].name", "required"},
		{"upper-case name", []Profile{{Name: "Strict"}}, "profiles[0].name", "lower-case"},
		{"name with space", []Profile{{Name: "a b"}}, "profiles[0].name", "lower-case"},
		{"name too long", []Profile{{Name: strings.Repeat("a", 64)}}, "profiles[0].name", "63"},
		{"duplicate name", []Profile{{Name: "baseline"}, {Name: "strict"}, {Name: "baseline"}}, "profiles[2].name", "also profiles[0]"},
		{"negative max_age", []Profile{{Name: "a"}, with(func(p *Profile) { p.MaxAge = -time.Second })}, "profiles[1].max_age", "negative"},
		{"min_kernel letters", []Profile{with(func(p *Profile) { p.MinKernel = "5.x" })}, "profiles[0].min_kernel", "dotted version"},
		{"min_kernel trailing dot", []Profile{with(func(p *Profile) { p.MinKernel = "5." })}, "profiles[0].min_kernel", "dotted version"},
		{"min_kernel suffix", []Profile{with(func(p *Profile) { p.MinKernel = "5.15-rc1" })}, "profiles[0].min_kernel", "dotted version"},
		{"min_kernel too many parts", []Profile{with(func(p *Profile) { p.MinKernel = "1.2.3.4.5" })}, "profiles[0].min_kernel", "at most 4"},
		{"min_kernel huge", []Profile{with(func(p *Profile) { p.MinKernel = "99999999999" })}, "profiles[0].min_kernel", "too large"},
		{"edr without name", []Profile{edr(func(e *EDRRequirement) { e.Name = "" })}, "profiles[0].edr.name", "required"},
		{"edr name control char", []Profile{edr(func(e *EDRRequirement) { e.Name = "a\nb" })}, "profiles[0].edr.name", "printable"},
		{"edr without hashes", []Profile{edr(func(e *EDRRequirement) { e.AllowedSHA256 = nil })}, "profiles[0].edr.allowed_sha256", "at least one"},
		{"edr short hash", []Profile{edr(func(e *EDRRequirement) { e.AllowedSHA256 = []string{rptHash, rptHash[1:]} })}, "profiles[0].edr.allowed_sha256[1]", "64 hex digits"},
		{"edr non-hex hash", []Profile{edr(func(e *EDRRequirement) { e.AllowedSHA256 = []string{strings.Repeat("z", 64)} })}, "profiles[0].edr.allowed_sha256[0]", "64 hex digits"},
		{"edr hash with spaces", []Profile{edr(func(e *EDRRequirement) { e.AllowedSHA256 = []string{" " + rptHash} })}, "profiles[0].edr.allowed_sha256[0]", "64 hex digits"},
		{"edr negative window", []Profile{edr(func(e *EDRRequirement) { e.ManagerWindow = -time.Minute })}, "profiles[0].edr.manager_window", "negative"},
		{"edr unknown contact source", []Profile{edr(func(e *EDRRequirement) { e.ContactFrom = "device" })}, "profiles[0].edr.contact_from", "agent, vendor, either"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := CompileProfiles(tc.profiles)
			if err == nil {
				t.Fatalf("compiled: %v", m)
			}
			var pe *ProfileError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ProfileError", err)
			}
			if pe.Path() != tc.path || !strings.Contains(pe.Msg, tc.msg) {
				t.Errorf("error at %s: %q, want at %s containing %q", pe.Path(), pe.Msg, tc.path, tc.msg)
			}
			if !strings.HasPrefix(err.Error(), tc.path+": ") {
				t.Errorf("Error() = %q does not start with the path", err)
			}
		})
	}
}

func TestCompileProfilesDefaults(t *testing.T) {
	m := rptCompile(t,
		Profile{Name: "baseline"},
		Profile{Name: "edr-only", EDR: &EDRRequirement{Name: "x", AllowedSHA256: []string{strings.ToUpper(rptHash)}}},
	)
	if len(m) != 2 {
		t.Fatalf("compiled %d profiles", len(m))
	}
	if b := m["baseline"]; b.Name() != "baseline" || b.MaxAge() != DefaultMaxAge || b.edr != nil || b.minKernel != nil {
		t.Errorf("baseline compiled as %+v", b)
	}
	e := m["edr-only"].edr
	if e.window != DefaultManagerWindow {
		t.Errorf("manager window %s, want %s", e.window, DefaultManagerWindow)
	}
	if _, ok := e.allowed[rptHash]; !ok {
		t.Errorf("upper-case allow-list entry not normalised: %v", e.allowed)
	}
	if m, err := CompileProfiles(nil); err != nil || len(m) != 0 {
		t.Errorf("no profiles: %v, %v", m, err)
	}
}

// TestEvaluate is the table of posture decisions: each case is a report and
// its age, and the exact failures (check and user-facing reason) it must
// produce under the strict profile or the one named.
func TestEvaluate(t *testing.T) {
	profiles := rptCompile(t, rptStrict(),
		Profile{Name: "baseline"},
		Profile{Name: "disk", RequireDiskEncryption: true, MaxAge: 30 * time.Second},
		Profile{Name: "kernel", MinKernel: "6.8.1"},
		Profile{Name: "vendor", EDR: &EDRRequirement{Name: "falcon-sensor", AllowedSHA256: []string{rptHash}, ContactFrom: ContactVendor}},
		Profile{Name: "agent", EDR: &EDRRequirement{Name: "falcon-sensor", AllowedSHA256: []string{rptHash}, ContactFrom: ContactAgent}},
	)
	now := rptT0.Add(20 * time.Second)
	type want struct{ check, reason string }
	edr := func(edit func(e *EDRState)) func(r *Report) { return func(r *Report) { edit(&r.EDR[0]) } }

	for _, tc := range []struct {
		name     string
		profile  string        // "" means strict
		edit     func(*Report) // applied to rptReport()
		noReport bool
		received time.Duration // before now; 0 means 20s
		checkIn  time.Duration // vendor check-in of falcon-sensor this long before now; 0: none
		want     []want        // nil: OK
	}{
		{name: "compliant", want: nil},
		{name: "baseline accepts any fresh report", profile: "baseline", edit: func(r *Report) { r.EDR, r.DiskEncrypted = nil, nil; r.OS.Kernel = "" }},

		// Bypass 1: a fake file. An agent that finds only a file reports
		// the product not running; a dummy binary renamed to the EDR's name
		// runs, but its hash is not on the allow-list.
		{name: "dummy file: EDR not running", edit: edr(func(e *EDRState) { e.Running, e.PID, e.ExePath, e.ExeSHA256 = false, 0, "", "" }),
			want: []want{{CheckEDRRunning, "EDR falcon-sensor is installed but not running"}}},
		{name: "running flag without a process", edit: edr(func(e *EDRState) { e.PID = 0 }),
			want: []want{{CheckEDRRunning, "EDR falcon-sensor is installed but not running"}}},
		{name: "renamed dummy process: hash not allowed", edit: edr(func(e *EDRState) { e.ExeSHA256 = strings.Repeat("ab", 32) }),
			want: []want{{CheckEDRBinary, "EDR falcon-sensor is running from /opt/CrowdStrike/falcon-sensor, whose SHA-256 abababababababababababababababababababababababababababababababab is not an approved build"}}},
		{name: "hash unknown", edit: edr(func(e *EDRState) { e.ExeSHA256 = "" }),
			want: []want{{CheckEDRBinary, "EDR falcon-sensor is running, but the SHA-256 of its executable /opt/CrowdStrike/falcon-sensor could not be determined"}}},
		{name: "second approved build", edit: edr(func(e *EDRState) { e.ExeSHA256 = rptHash2 })},
		{name: "EDR missing", edit: func(r *Report) { r.EDR = []EDRState{{Name: "clamav", Running: true, PID: 9}} },
			want: []want{{CheckEDRRunning, "EDR falcon-sensor was not found on this device"}}},
		{name: "EDR name case matters", edit: edr(func(e *EDRState) { e.Name = "Falcon-Sensor" }),
			want: []want{{CheckEDRRunning, "EDR falcon-sensor was not found on this device"}}},

		// Bypass 2: kill after authentication. The agent stops reporting,
		// or reports the EDR stopped.
		{name: "killed after login: report older than max_age", received: 91 * time.Second,
			want: []want{{CheckReport, "no posture report for 91s (limit 90s); is ztna agent running?"}}},
		{name: "report exactly max_age old", received: 90 * time.Second},
		{name: "stale report hides other failures", received: 5 * time.Minute, edit: func(r *Report) { r.FirewallActive = rptBool(false) },
			want: []want{{CheckReport, "no posture report for 300s (limit 90s); is ztna agent running?"}}},
		{name: "profile's own max_age", profile: "disk", received: 31 * time.Second,
			want: []want{{CheckReport, "no posture report for 31s (limit 30s); is ztna agent running?"}}},
		{name: "no report at all", noReport: true,
			want: []want{{CheckReport, "no posture report has been received from this device; is ztna agent running?"}}},
		{name: "EDR reported stopped", edit: edr(func(e *EDRState) { e.Running = false }),
			want: []want{{CheckEDRRunning, "EDR falcon-sensor is installed but not running"}}},

		// Bypass 3: the management server blocked by a local firewall.
		{name: "manager unreachable for 11 minutes", edit: edr(func(e *EDRState) {
			e.ManagerLastReached = rptT0.Add(-11 * time.Minute)
			e.ManagerError = "dial tcp 10.0.0.1:443: i/o timeout"
		}), want: []want{{CheckEDRManager, "EDR falcon-sensor has not reached its management server ts01-b.cloudsink.net:443 since 2025-06-01T11:49:00Z (limit 10m0s) (last error: dial tcp 10.0.0.1:443: i/o timeout)"}}},
		{name: "manager never reached", edit: edr(func(e *EDRState) {
			e.ManagerLastReached = time.Time{}
			e.ManagerError = "connection refused"
		}), want: []want{{CheckEDRManager, "EDR falcon-sensor has never reached its management server ts01-b.cloudsink.net:443 (last error: connection refused)"}}},
		{name: "manager never reached, no address", edit: edr(func(e *EDRState) { e.ManagerLastReached, e.ManagerAddr = time.Time{}, "" }),
			want: []want{{CheckEDRManager, "EDR falcon-sensor has never reached its management server"}}},
		{name: "manager window counts time since the report arrived", received: 60 * time.Second, edit: edr(func(e *EDRState) { e.ManagerLastReached = rptT0.Add(-9*time.Minute - 30*time.Second) }),
			want: []want{{CheckEDRManager, "EDR falcon-sensor has not reached its management server ts01-b.cloudsink.net:443 since 2025-06-01T11:50:30Z (limit 10m0s)"}}},
		{name: "manager window uses the agent's clock", edit: func(r *Report) {
			// The device clock is an hour behind: contact 5 minutes before
			// collection is recent, whatever the edge's clock says.
			r.CollectedAt = rptT0.Add(-time.Hour)
			r.EDR[0].ManagerLastReached = rptT0.Add(-time.Hour - 5*time.Minute)
		}},
		{name: "manager reached in year 1", edit: edr(func(e *EDRState) { e.ManagerLastReached = time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC) }),
			want: []want{{CheckEDRManager, "EDR falcon-sensor has not reached its management server ts01-b.cloudsink.net:443 since 0001-01-01T00:00:01Z (limit 10m0s)"}}},
		// The vendor's own check-in (an edr_checkin signal) as contact.
		{name: "blocked agent probe, recent vendor check-in", checkIn: 2 * time.Minute, edit: edr(func(e *EDRState) { e.ManagerLastReached = time.Time{} })},
		{name: "blocked agent probe, old vendor check-in", checkIn: 11 * time.Minute, edit: edr(func(e *EDRState) { e.ManagerLastReached = time.Time{}; e.ManagerError = "" }),
			want: []want{{CheckEDRManager, "EDR falcon-sensor has never reached its management server ts01-b.cloudsink.net:443"}}},
		{name: "vendor-only profile ignores the agent's probe", profile: "vendor",
			want: []want{{CheckEDRManager, "EDR falcon-sensor has not checked in with its vendor's management server within 10m0s"}}},
		{name: "vendor-only profile, stale check-in", profile: "vendor", checkIn: 10*time.Minute + time.Second,
			want: []want{{CheckEDRManager, "EDR falcon-sensor last checked in with its vendor's management server at 2025-06-01T11:50:19Z (limit 10m0s)"}}},
		{name: "vendor-only profile, fresh check-in", profile: "vendor", checkIn: time.Minute},
		{name: "agent-only profile ignores the vendor", profile: "agent", checkIn: time.Minute, edit: edr(func(e *EDRState) { e.ManagerLastReached = time.Time{}; e.ManagerAddr = "" }),
			want: []want{{CheckEDRManager, "EDR falcon-sensor has never reached its management server"}}},
		{name: "vendor check-in from the future does not count", profile: "vendor", checkIn: -time.Hour,
			want: []want{{CheckEDRManager, "EDR falcon-sensor last checked in with its vendor's management server at 2025-06-01T13:00:20Z (limit 10m0s)"}}},
		{name: "manager reached after collection started", edit: edr(func(e *EDRState) { e.ManagerLastReached = rptT0.Add(time.Second) })},
		{name: "renamed dummy and blocked manager", edit: edr(func(e *EDRState) {
			e.ExeSHA256 = rptHash2[:62] + "00"
			e.ManagerLastReached = rptT0.Add(-time.Hour)
		}), want: []want{
			{CheckEDRBinary, "EDR falcon-sensor is running from /opt/CrowdStrike/falcon-sensor, whose SHA-256 00112233445566778899aabbccddeeff00112233445566778899aabbccddee00 is not an approved build"},
			{CheckEDRManager, "EDR falcon-sensor has not reached its management server ts01-b.cloudsink.net:443 since 2025-06-01T11:00:00Z (limit 10m0s)"},
		}},

		// Device settings: nil (unknown) fails like false, with its own reason.
		{name: "disk encryption off", edit: func(r *Report) { r.DiskEncrypted = rptBool(false) },
			want: []want{{CheckDiskEncryption, "disk encryption is off on this device"}}},
		{name: "disk encryption unknown", edit: func(r *Report) { r.DiskEncrypted = nil },
			want: []want{{CheckDiskEncryption, "could not determine whether disk encryption is on"}}},
		{name: "disk encryption unknown, not required", profile: "kernel", edit: func(r *Report) { r.DiskEncrypted = nil; r.OS.Kernel = "6.8.1" }},
		{name: "firewall off", edit: func(r *Report) { r.FirewallActive = rptBool(false) },
			want: []want{{CheckFirewall, "the firewall is off on this device"}}},
		{name: "firewall unknown", edit: func(r *Report) { r.FirewallActive = nil },
			want: []want{{CheckFirewall, "could not determine whether the firewall is on"}}},
		{name: "screen lock off", edit: func(r *Report) { r.ScreenLock = rptBool(false) },
			want: []want{{CheckScreenLock, "automatic screen lock is off on this device"}}},
		{name: "screen lock unknown", edit: func(r *Report) { r.ScreenLock = nil },
			want: []want{{CheckScreenLock, "could not determine whether the screen locks automatically"}}},
		{name: "all settings off, in a fixed order", edit: func(r *Report) {
			r.DiskEncrypted, r.FirewallActive, r.ScreenLock = rptBool(false), nil, rptBool(false)
		}, want: []want{
			{CheckDiskEncryption, "disk encryption is off on this device"},
			{CheckFirewall, "could not determine whether the firewall is on"},
			{CheckScreenLock, "automatic screen lock is off on this device"},
		}},

		// Kernel: dotted numeric prefix, missing parts are 0.
		{name: "kernel newer", profile: "kernel", edit: func(r *Report) { r.OS.Kernel = "6.9.0-1-generic" }},
		{name: "kernel equal", profile: "kernel", edit: func(r *Report) { r.OS.Kernel = "6.8.1" }},
		{name: "kernel equal with zero part", profile: "kernel", edit: func(r *Report) { r.OS.Kernel = "6.8.1.0-rc2" }},
		{name: "kernel older by patch", profile: "kernel", edit: func(r *Report) { r.OS.Kernel = "6.8.0-45-generic" },
			want: []want{{CheckKernel, "kernel 6.8.0-45-generic is older than the required 6.8.1"}}},
		{name: "kernel 6.10 is newer than 6.8", profile: "kernel", edit: func(r *Report) { r.OS.Kernel = "6.10" }},
		{name: "kernel older major", edit: func(r *Report) { r.OS.Kernel = "4.19.0" },
			want: []want{{CheckKernel, "kernel 4.19.0 is older than the required 5.15"}}},
		{name: "kernel missing", edit: func(r *Report) { r.OS.Kernel = "" },
			want: []want{{CheckKernel, `could not determine the kernel version (reported ""); at least 5.15 is required`}}},
		{name: "kernel not numeric", edit: func(r *Report) { r.OS.Kernel = "v6.8" },
			want: []want{{CheckKernel, `could not determine the kernel version (reported "v6.8"); at least 5.15 is required`}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := profiles[cmp.Or(tc.profile, "strict")]
			r := rptReport()
			if tc.edit != nil {
				tc.edit(&r)
			}
			latest, received := &r, now.Add(-cmp.Or(tc.received, 20*time.Second))
			if tc.noReport {
				latest, received = nil, time.Time{}
			}
			ev := &Evidence{Report: latest, ReceivedAt: received}
			if tc.checkIn != 0 {
				ev.CheckIns = map[string]time.Time{"falcon-sensor": now.Add(-tc.checkIn)}
			}
			v := p.Evaluate(ev, now)
			if v.OK != (tc.want == nil) {
				t.Errorf("OK = %v, failures %+v", v.OK, v.Failures)
			}
			if len(v.Failures) != len(tc.want) {
				t.Fatalf("got %d failures, want %d: %+v", len(v.Failures), len(tc.want), v.Failures)
			}
			for i, f := range v.Failures {
				if f.Check != tc.want[i].check || f.Reason != tc.want[i].reason {
					t.Errorf("failure %d:\n got %s: %s\nwant %s: %s", i, f.Check, f.Reason, tc.want[i].check, tc.want[i].reason)
				}
				if f.Fix == "" {
					t.Errorf("failure %d (%s) says nothing about how to fix it", i, f.Check)
				}
			}
			if v.OK == v.Expires.IsZero() {
				t.Errorf("OK %v with Expires %v", v.OK, v.Expires)
			}
		})
	}
}

func TestCompareKernel(t *testing.T) {
	for _, tc := range []struct {
		kernel string
		min    []uint32
		cmp    int
		ok     bool
	}{
		{"5.15.0", []uint32{5, 15}, 0, true},
		{"5.15", []uint32{5, 15, 0, 0}, 0, true},
		{"5.15.1", []uint32{5, 15}, 1, true},
		{"5.4.0", []uint32{5, 15}, -1, true},
		{"6", []uint32{5, 15}, 1, true},
		{"5", []uint32{5, 15}, -1, true},
		{"5.", []uint32{5}, 0, true},
		{"5.15-rc1", []uint32{5, 15}, 0, true},
		{"10.0.22631.4317", []uint32{10, 0, 22000}, 1, true},
		{"1.2.3.4.5", []uint32{1, 2, 3, 4}, 0, true}, // parts after the fourth are ignored
		{"99999999999999999999.1", []uint32{1 << 30}, 1, true},
		{"", []uint32{1}, 0, false},
		{"v5", []uint32{1}, 0, false},
		{".5", []uint32{1}, 0, false},
	} {
		cmp, ok := compareKernel(tc.kernel, tc.min)
		if cmp != tc.cmp || ok != tc.ok {
			t.Errorf("compareKernel(%q, %v) = %d, %v; want %d, %v", tc.kernel, tc.min, cmp, ok, tc.cmp, tc.ok)
		}
	}
}

func TestEvaluatePassDoesNotAllocate(t *testing.T) {
	p := rptCompile(t, rptStrict())["strict"]
	r := rptReport()
	received, now := rptT0, rptT0.Add(10*time.Second)
	ev := &Evidence{Report: &r, ReceivedAt: received}
	if v := p.Evaluate(ev, now); !v.OK {
		t.Fatalf("not OK: %+v", v.Failures)
	}
	if n := testing.AllocsPerRun(100, func() { p.Evaluate(ev, now) }); n != 0 {
		t.Fatalf("Evaluate allocates %v times on a pass", n)
	}
}

func BenchmarkEvaluate(b *testing.B) {
	p := rptCompile(b, rptStrict())["strict"]
	r := rptReport()
	received, now := rptT0, rptT0.Add(10*time.Second)
	b.Run("pass", func(b *testing.B) {
		ev := &Evidence{Report: &r, ReceivedAt: received}
		b.ReportAllocs()
		for b.Loop() {
			if !p.Evaluate(ev, now).OK {
				b.Fatal("not OK")
			}
		}
	})
	b.Run("fail_edr_hash", func(b *testing.B) {
		r := rptReport()
		r.EDR[0].ExeSHA256 = rptHash2[:62] + "00"
		ev := &Evidence{Report: &r, ReceivedAt: received}
		b.ReportAllocs()
		for b.Loop() {
			if p.Evaluate(ev, now).OK {
				b.Fatal("OK")
			}
		}
	})
}
