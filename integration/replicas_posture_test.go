package integration

// replicas_posture_test.go: posture reports behind a load balancer that
// sends each request to another replica. A nonce is verified by its MAC
// with the nonce key every replica loads from the shared store, so any
// replica accepts a nonce any other issued — to the device it was issued
// to, and to no other.

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/proxy"
)

// via points the device's client at env, as a load balancer would send its
// next request there.
func (d *reportingDevice) via(t *testing.T, env *devenv.Env) *reportingDevice {
	t.Helper()
	d.c = withDeviceCert(t, env, d.cert)
	return d
}

// TestReplicasPostureNonces: a device enrolled through replica A takes a
// nonce from A and reports to B, which accepts it; the report fans out, so
// A's posture step passes for the strict app at once. B's next nonce is
// good on A, the same report again on A is a replay, and a nonce B issued
// to another device is refused on A.
func TestReplicasPostureNonces(t *testing.T) {
	a, b, _ := replicaPair(t)
	for _, env := range []*devenv.Env{a, b} {
		applyConfig(t, env, func(cfg *proxy.Config) { setAppProfile(t, cfg, "strict", "baseline") })
	}
	alice := loginAs(t, a, "whoami", "alice", alicePassword)
	dev := enrollReporter(t, a, "u-alice", "alice-laptop")
	other := enrollReporter(t, a, "u-alice", "alice-desktop")
	strictA := a.AppURL("strict") + "/?format=json"
	onA := onDevice(t, a, alice, dev.cert, "strict")
	if e := decodePostureError(t, get(t, onA, strictA, asAPI), http.StatusForbidden, "posture_failed"); !slices.Equal(e.checkNames(), []string{posture.CheckReport}) {
		t.Fatalf("before any report, strict on A: checks %v, want [report]", e.checkNames())
	}

	// A nonce from A, the report to B.
	nonce := dev.via(t, a).nonce(t, a)
	wire := sign(t, dev.key, dev.report(nonce))
	ans := dev.via(t, b).accept(t, b, wire)
	baselineOK := false
	for _, p := range ans.Profiles {
		if p.Name == "baseline" {
			baselineOK = p.OK
		}
	}
	if !baselineOK {
		t.Errorf("B's answer: profiles %+v, want baseline passing", ans.Profiles)
	}

	// B's report is A's evidence: strict on A lets the device in.
	r := waitAllowed(t, onA, strictA, 5*time.Second)
	if rep := decodeReport(t, r.Body); rep.Claims == nil || rep.Claims.Device != dev.id || rep.Claims.Posture != "baseline" {
		t.Errorf("strict on A after the report to B: claims %+v", rep.Claims)
	}

	// The same bytes on A: a replay, although A never saw them.
	r, err := sendReport(t, a, dev.via(t, a).c, wire)
	if err != nil {
		t.Fatal(err)
	}
	expectJSONError(t, r, http.StatusConflict, "replay")

	// The next nonce B handed out, on A.
	dev.via(t, a).accept(t, a, sign(t, dev.key, dev.report(ans.NextNonce)))

	// A nonce B issued to another device, and one of the right shape that
	// no replica issued: refused on A.
	for name, n := range map[string]string{
		"another device's nonce from B": other.via(t, b).nonce(t, b),
		"a made-up nonce":               strings.Repeat("A", posture.NonceLen),
	} {
		t.Run(name, func(t *testing.T) {
			r, err := sendReport(t, a, dev.via(t, a).c, sign(t, dev.key, dev.report(n)))
			if err != nil {
				t.Fatal(err)
			}
			expectJSONError(t, r, http.StatusConflict, "stale_nonce")
		})
	}
}
