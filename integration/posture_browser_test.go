package integration

// posture_browser_test.go: headless Chromium presenting an enrolled
// device's certificate from its NSS database (the recipe of
// /work/shared/notes/chromium-client-cert.md: a private HOME whose NSS
// database holds the device identity, and an AUTO_SELECT_CERTIFICATE rule
// seeded in the profile's Preferences so no selector dialog waits for a
// click). The user signs in, gets an app whose posture profile the device
// passes, and the fix page of one it fails.

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/proxy"
)

// devicePKCS12 writes the device's certificate and key (with the device CA)
// as an unencrypted PKCS#12 file in dir, the way `ztna agent status` tells
// users to make one for their browser.
func devicePKCS12(t *testing.T, env *devenv.Env, d *reportingDevice, dir string) string {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(d.key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile, certFile, caFile, p12 := filepath.Join(dir, "device-key.pem"), filepath.Join(dir, "device-cert.pem"), filepath.Join(dir, "device-ca.pem"), filepath.Join(dir, "device.p12")
	for file, data := range map[string][]byte{
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d.cert.Certificate[0]}),
		caFile:   env.DeviceCA.CertPEM(),
	} {
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	runTool(t, "openssl", "pkcs12", "-export", "-inkey", keyFile, "-in", certFile, "-certfile", caFile, "-name", "device", "-out", p12, "-passout", "pass:")
	return p12
}

// runTool runs an installed command, bounded, failing the test on error.
func runTool(t *testing.T, name string, args ...string) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		msg := name + " not installed: run make test, which installs it"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, path, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// newDeviceBrowser is newBrowser for a browser on an enrolled device: its
// NSS database trusts the dev CA and holds the device identity from p12,
// and its profile auto-selects a certificate from the device CA on every
// dev host of the edge (without that rule headless Chromium waits forever
// on the certificate selector).
func newDeviceBrowser(t *testing.T, env *devenv.Env, p12 string) *browser {
	t.Helper()
	return startBrowser(t, env, func(home, udd string) {
		runTool(t, "pk12util", "-i", p12, "-d", "sql:"+filepath.Join(home, ".pki", "nssdb"), "-W", "")
		_, port, err := net.SplitHostPort(env.EdgeAddr)
		if err != nil {
			t.Fatal(err)
		}
		rule := map[string]any{"setting": map[string]any{"filters": []any{
			map[string]any{"ISSUER": map[string]string{"CN": env.DeviceCA.Certificate().Subject.CommonName}}}}}
		exceptions := map[string]any{}
		for _, host := range []string{"auth", "whoami", "secure", "strict"} {
			exceptions["https://"+host+".localhost:"+port+",*"] = rule
		}
		prefs, err := json.Marshal(map[string]any{"profile": map[string]any{"content_settings": map[string]any{
			"exceptions": map[string]any{"auto_select_certificate": exceptions}}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(udd, "Default", "Preferences"), prefs, 0o600); err != nil {
			t.Fatal(err)
		}
	})
}

// A browser on an enrolled device: signed in as alice, it reaches an app
// whose posture profile the device passes (whoami names the device and the
// profile), and gets the fix page, listing every failed check with its fix,
// from an app whose profile the device fails.
func TestPostureBrowserDeviceCertificate(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	applyConfig(t, env, func(cfg *proxy.Config) {
		cfg.Posture.Profiles = append(cfg.Posture.Profiles, posture.Profile{Name: "browser-ok", RequireFirewall: true, MaxAge: 5 * time.Minute})
		setAppProfile(t, cfg, "strict", "browser-ok")
		setAppProfile(t, cfg, "secure", "strict") // the demo profile: disk, firewall, demo-edr
	})
	d := enrollReporter(t, env, "u-alice", "alice-laptop")
	// Firewall on, disk encryption off, no EDR.
	r := d.report(d.nonce(t, env))
	off := false
	r.DiskEncrypted = &off
	d.accept(t, env, sign(t, d.key, r))

	b := newDeviceBrowser(t, env, devicePKCS12(t, env, d, t.TempDir()))
	tab := b.newTab(t)

	browserDo(t, tab, "open strict", chromedp.Navigate(env.AppURL("strict")+"/"))
	browserExpectLoginForm(t, tab, env)
	if resp := browserSubmitLogin(t, tab, "alice", alicePassword); resp.Status != 200 {
		t.Fatalf("strict after login: status %d: %s", resp.Status, browserWhere(tab))
	}
	browserExpectWhoami(t, tab, env, "strict", "alice@example.com")
	if got := browserText(t, tab, "device"); !strings.Contains(got, d.id) || !strings.Contains(got, "browser-ok") {
		t.Errorf("strict: #device = %q, want the device %s meeting browser-ok", got, d.id)
	}
	browserScreenshot(t, tab, "posture-ok")

	resp := browserDo(t, tab, "open secure", chromedp.Navigate(env.AppURL("secure")+"/"))
	if resp.Status != 403 {
		t.Fatalf("secure: status %d, want 403: %s", resp.Status, browserWhere(tab))
	}
	if got := browserText(t, tab, "code"); got != "posture_failed" {
		t.Errorf("#code = %q, want posture_failed", got)
	}
	type check struct{ Check, Reason, Fix string }
	checks := browserRun(t, tab, "read the checks", chromedp.Evaluate[[]check](`Array.from(document.querySelectorAll("#checks li.check")).map(li => ({
		Check: li.dataset.check,
		Reason: li.querySelector(".reason").innerText,
		Fix: li.querySelector(".fix").innerText}))`))
	var names []string
	for _, c := range checks {
		names = append(names, c.Check)
		if c.Reason == "" || !strings.HasPrefix(c.Fix, "How to fix:") || len(c.Fix) < len("How to fix: ")+10 {
			t.Errorf("check %q: reason %q fix %q", c.Check, c.Reason, c.Fix)
		}
	}
	if want := []string{posture.CheckDiskEncryption, posture.CheckEDRRunning}; !slices.Equal(names, want) {
		t.Errorf("listed checks %v, want %v", names, want)
	}
	if browserHas(t, tab, "user") {
		t.Error("the fix page leaked the app's page (#user present)")
	}
	browserScreenshot(t, tab, "posture-fix")
}
