package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"log/slog"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/store/memory"
	"github.com/ztna-dev/ztna/posture"
)

const testEDRHash = "3b3b1f1e8a2e3c9d4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f80910"

// postureFixture is an edge with just what the posture step reads: the
// report book, the quarantine and metrics, and a device with a fresh report
// that passes the "strict" profile.
type postureFixture struct {
	e             *Edge
	strict, open  *app
	device, user  string
	email         string
	key           *ecdsa.PrivateKey
	devRecord     *posture.Device
	reportCounter uint64
}

func newPostureFixture(t testing.TB) *postureFixture {
	t.Helper()
	st := memory.New(memory.Options{})
	t.Cleanup(func() { st.Close() })
	logger := slog.New(slog.DiscardHandler)
	e := &Edge{logger: logger, metrics: newMetrics(nil), live: newLiveRegistry(logger),
		reports: posture.NewReports(st, posture.ReportsConfig{}), quarantine: posture.NewQuarantine(st, logger)}
	profiles, err := posture.CompileProfiles([]posture.Profile{{Name: "strict", RequireDiskEncryption: true, RequireFirewall: true,
		EDR: &posture.EDRRequirement{Name: "falcon-sensor", AllowedSHA256: []string{testEDRHash}}}})
	if err != nil {
		t.Fatal(err)
	}
	f := &postureFixture{e: e, device: "dev-1", user: "u-alice", email: "alice@example.com",
		strict: &app{AppConfig: AppConfig{Name: "wiki", PostureProfile: "strict"}, profile: profiles["strict"]},
		open:   &app{AppConfig: AppConfig{Name: "docs"}}}
	f.key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f.submit(t, true)
	return f
}

// submit sends a report of the fixture's device with the EDR running or not.
func (f *postureFixture) submit(t testing.TB, edrRunning bool) {
	t.Helper()
	if f.devRecord == nil {
		der, err := x509.MarshalPKIXPublicKey(&f.key.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		f.devRecord = &posture.Device{ID: f.device, UserID: f.user, PublicKey: der}
	}
	yes := true
	now := time.Now()
	f.reportCounter++
	r := posture.Report{DeviceID: f.device, Counter: f.reportCounter, Nonce: f.e.reports.IssueNonce(f.device), CollectedAt: now,
		OS: posture.OSInfo{Name: "debian", Kernel: "6.1.0"}, DiskEncrypted: &yes, FirewallActive: &yes,
		EDR: []posture.EDRState{{Name: "falcon-sensor", Running: edrRunning, PID: 42, ExePath: "/opt/falcon", ExeSHA256: testEDRHash,
			ManagerLastReached: now}}}
	if !edrRunning {
		r.EDR[0].PID = 0
	}
	wire, err := posture.SignReport(f.key, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.e.reports.Submit(context.Background(), f.devRecord, wire, now); err != nil {
		t.Fatal(err)
	}
}

func TestPostureStep(t *testing.T) {
	f := newPostureFixture(t)
	e, now := f.e, time.Now()

	if he := e.posture(f.strict, f.user, f.email, f.device, now); he != nil {
		t.Fatalf("passing device refused: %v", he)
	}
	if he := e.posture(f.open, f.user, f.email, "", now); he != nil {
		t.Fatalf("app without a profile refused a browser without a device: %v", he)
	}
	if he := e.posture(f.strict, f.user, f.email, "", now); he == nil || he.Code != "device_required" || he.Status != 403 {
		t.Fatalf("no device on a posture app: %+v", he)
	}
	if he := e.posture(f.strict, f.user, f.email, f.device, now.Add(2*time.Minute)); he == nil || he.Code != "posture_failed" ||
		len(he.Checks) != 1 || he.Checks[0].Check != posture.CheckReport || he.Checks[0].Fix == "" {
		t.Fatalf("stale report: %+v", he)
	}
	verdict, _ := refusalVerdict(e.posture(f.strict, f.user, f.email, f.device, now.Add(2*time.Minute)))
	if verdict != "fail:report" {
		t.Errorf("audit verdict %q", verdict)
	}

	f.submit(t, false)
	he := e.posture(f.strict, f.user, f.email, f.device, time.Now())
	if he == nil || he.Code != "posture_failed" || he.Checks[0].Check != posture.CheckEDRRunning {
		t.Fatalf("EDR stopped: %+v", he)
	}

	// A quarantine applies to every app, with or without a profile, and
	// names what was detected.
	ctx := context.Background()
	if _, err := e.quarantine.Isolate(ctx, posture.QuarantineEntry{Kind: posture.QuarantineDevice, ID: f.device,
		Reason: "Terminal shell in container", Source: "falco", Severity: posture.SeverityCritical, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	he = e.posture(f.open, f.user, f.email, f.device, time.Now())
	if he == nil || he.Code != "quarantined" || he.Checks[0].Reason != "Terminal shell in container" || he.Checks[0].Fix == "" {
		t.Fatalf("quarantined device on an open app: %+v", he)
	}
	if he := e.posture(f.open, f.user, f.email, "", time.Now()); he != nil {
		t.Fatalf("a device quarantine blocked the user's device-less browser: %v", he)
	}
	if _, err := e.quarantine.Isolate(ctx, posture.QuarantineEntry{Kind: posture.QuarantineUser, ID: f.user,
		Reason: "credential theft", Source: "crowdstrike", Severity: posture.SeverityCritical, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if he := e.posture(f.open, f.user, f.email, "", time.Now()); he == nil || he.Code != "quarantined" {
		t.Fatalf("user quarantine not applied without a device: %+v", he)
	}
	if e.quarantine.Len() != 2 {
		t.Errorf("quarantine Len %d, want 2", e.quarantine.Len())
	}

	// Signals may name a user by email rather than by subject.
	if _, err := e.quarantine.Isolate(ctx, posture.QuarantineEntry{Kind: posture.QuarantineUser, ID: "bob@example.com",
		Reason: "phished", Source: "idp-risk", Severity: posture.SeverityCritical, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if he := e.posture(f.open, "u-bob", "bob@example.com", "", time.Now()); he == nil || he.Code != "quarantined" {
		t.Fatalf("user quarantined by email not applied: %+v", he)
	}
}

// BenchmarkPostureStep is the per-request cost of step 4 in the same run:
// an app without a profile (only the quarantine lookups) against one whose
// strict profile is evaluated from the device's latest report. Both are
// memory lookups and comparisons, without allocation.
func BenchmarkPostureStep(b *testing.B) {
	f := newPostureFixture(b)
	for _, bc := range []struct {
		name string
		a    *app
	}{{"without_posture", f.open}, {"with_posture", f.strict}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if he := f.e.posture(bc.a, f.user, f.email, f.device, time.Now()); he != nil {
					b.Fatal(he)
				}
			}
		})
	}
}
