package posture

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// newTestDeviceCA creates a device CA in a fresh temporary directory.
func newTestDeviceCA(t testing.TB) *DeviceCA {
	t.Helper()
	dir := t.TempDir()
	ca, err := LoadOrCreateDeviceCA(filepath.Join(dir, "device-ca.pem"), filepath.Join(dir, "device-ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newDeviceKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func parseCert(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDeviceCACreateAndReload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "ca") // created on demand
	certFile, keyFile := filepath.Join(dir, "device-ca.pem"), filepath.Join(dir, "device-ca.key")
	before := time.Now()
	ca, err := LoadOrCreateDeviceCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("data dir holds %d entries, want just the two files (no temporaries left)", len(entries))
	}

	c := ca.Certificate()
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	switch {
	case !ok || pub.Curve != elliptic.P256():
		t.Errorf("CA key is %T, want ECDSA P-256", c.PublicKey)
	case c.Subject.CommonName != "ztna device CA":
		t.Errorf("CN %q", c.Subject.CommonName)
	case !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero:
		t.Errorf("basic constraints: IsCA=%v MaxPathLen=%d zero=%v", c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	case c.KeyUsage&x509.KeyUsageCertSign == 0:
		t.Errorf("key usage %v lacks CertSign", c.KeyUsage)
	case c.NotAfter.Before(before.AddDate(9, 11, 0)) || c.NotAfter.After(before.AddDate(10, 0, 1)):
		t.Errorf("NotAfter %v, want about ten years from now", c.NotAfter)
	}
	if got, _ := pem.Decode(ca.CertPEM()); got == nil || !slices.Equal(got.Bytes, c.Raw) {
		t.Error("CertPEM does not hold the CA certificate")
	}

	// Reloading yields the same CA: a certificate issued before the
	// restart is accepted after it.
	key := newDeviceKey(t)
	now := time.Now()
	der, err := ca.Issue("dev-0123456789abcdef", "alice", &key.PublicKey, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadOrCreateDeviceCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again.Certificate().Raw, c.Raw) {
		t.Fatal("reload produced a different CA certificate")
	}
	if id, user, err := again.DeviceFromCert([]*x509.Certificate{parseCert(t, der)}, now); err != nil || id != "dev-0123456789abcdef" || user != "alice" {
		t.Fatalf("reloaded CA: DeviceFromCert = %q, %q, %v", id, user, err)
	}

	// A crash between writing the key and the certificate leaves only the
	// key: the certificate is made again for the same key.
	if err := os.Remove(certFile); err != nil {
		t.Fatal(err)
	}
	remade, err := LoadOrCreateDeviceCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !remade.Certificate().PublicKey.(*ecdsa.PublicKey).Equal(pub) {
		t.Error("remade certificate is for another key")
	}

	// A certificate without its key is never "repaired" with a new key.
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateDeviceCA(certFile, keyFile); err == nil {
		t.Fatal("loaded a CA whose key file is missing")
	}
	if _, err := os.Stat(keyFile); !errors.Is(err, os.ErrNotExist) {
		t.Error("a key was created for an existing certificate")
	}
}

func TestDeviceCAKeyFilePermissions(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("file modes do not express access on Windows")
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	if _, err := LoadOrCreateDeviceCA(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660, 0o700} {
		if err := os.Chmod(keyFile, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadOrCreateDeviceCA(certFile, keyFile)
		if mode&0o077 != 0 {
			if err == nil || !strings.Contains(err.Error(), "0600") {
				t.Errorf("mode %#o: err = %v, want a refusal naming 0600", mode, err)
			}
		} else if err != nil {
			t.Errorf("mode %#o: %v", mode, err)
		}
	}
	if err := os.Chmod(keyFile, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateDeviceCA(certFile, keyFile); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

// writeTestCAFiles writes an operator-made CA (SEC 1 key, as openssl and
// devenv write them) built from tmpl.
func writeTestCAFiles(t *testing.T, tmpl *x509.Certificate, certKey, fileKey *ecdsa.PrivateKey) (certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &certKey.PublicKey, certKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(fileKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestDeviceCAFromOperatorFiles(t *testing.T) {
	now := time.Now()
	caTmpl := func(mod func(*x509.Certificate)) *x509.Certificate {
		c := &x509.Certificate{
			SerialNumber:          big.NewInt(7),
			Subject:               pkix.Name{CommonName: "Corp Device CA"},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.Add(time.Hour * 24 * 365),
			KeyUsage:              x509.KeyUsageCertSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		if mod != nil {
			mod(c)
		}
		return c
	}
	k1, k2 := newDeviceKey(t), newDeviceKey(t)
	tests := []struct {
		name    string
		tmpl    *x509.Certificate
		fileKey *ecdsa.PrivateKey
		wantErr string
	}{
		{"valid", caTmpl(nil), k1, ""},
		{"key of another certificate", caTmpl(nil), k2, "does not belong"},
		{"not a CA", caTmpl(func(c *x509.Certificate) { c.IsCA = false }), k1, "not a CA"},
		{"no cert signing", caTmpl(func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature }), k1, "key usage"},
		{"expired", caTmpl(func(c *x509.Certificate) { c.NotBefore, c.NotAfter = now.Add(-48*time.Hour), now.Add(-time.Hour) }), k1, "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certFile, keyFile := writeTestCAFiles(t, tt.tmpl, k1, tt.fileKey)
			ca, err := LoadOrCreateDeviceCA(certFile, keyFile)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				dk := newDeviceKey(t)
				der, err := ca.Issue("dev-1", "alice", &dk.PublicKey, 0, now)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := ca.DeviceFromCert([]*x509.Certificate{parseCert(t, der)}, now); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}

	t.Run("garbage files", func(t *testing.T) {
		dir := t.TempDir()
		certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
		os.WriteFile(keyFile, []byte("not a key"), 0o600)
		os.WriteFile(certFile, []byte("not a cert"), 0o600)
		if _, err := LoadOrCreateDeviceCA(certFile, keyFile); err == nil {
			t.Fatal("loaded garbage")
		}
		if b, _ := os.ReadFile(keyFile); string(b) != "not a key" {
			t.Fatal("garbage key file was overwritten")
		}
	})
}

func TestDeviceCAIssue(t *testing.T) {
	ca := newTestDeviceCA(t)
	key := newDeviceKey(t)
	now := time.Now().Truncate(time.Second)
	users := []string{"alice", "alice@example.com", "https://idp.example/users/42", "a/b c?d#e%f", "Zoë", "00u1ab2cd3EFGH4ij5k6"}
	serials := map[string]bool{}
	for _, user := range users {
		der, err := ca.Issue("dev-0123456789abcdef", user, &key.PublicKey, 0, now)
		if err != nil {
			t.Fatalf("user %q: %v", user, err)
		}
		c := parseCert(t, der)
		if c.Subject.CommonName != "dev-0123456789abcdef" || !slices.Equal(c.Subject.Organization, []string{"ztna devices"}) {
			t.Errorf("subject %v", c.Subject)
		}
		if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || len(c.UnknownExtKeyUsage) != 0 {
			t.Errorf("EKU %v %v, want clientAuth only", c.ExtKeyUsage, c.UnknownExtKeyUsage)
		}
		if c.IsCA {
			t.Error("leaf is a CA")
		}
		if !c.NotBefore.Equal(now.Add(-time.Minute)) || !c.NotAfter.Equal(now.Add(24*time.Hour)) {
			t.Errorf("validity %v – %v, want now-1m – now+24h", c.NotBefore, c.NotAfter)
		}
		if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() < 100 || serials[c.SerialNumber.String()] {
			t.Errorf("serial %v is not a fresh random 128-bit number", c.SerialNumber)
		}
		serials[c.SerialNumber.String()] = true
		if len(c.URIs) != 2 || c.URIs[0].String() != "ztna://device/dev-0123456789abcdef" || !strings.HasPrefix(c.URIs[1].String(), "ztna://user/") {
			t.Errorf("URI SANs %v", c.URIs)
		}
		if !c.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
			t.Error("certificate is for another key")
		}
		// What the TLS stack does with ClientAuth = VerifyClientCertIfGiven.
		if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("chain verification: %v", err)
		}
		id, gotUser, err := ca.DeviceFromCert([]*x509.Certificate{c, ca.Certificate()}, now)
		if err != nil || id != "dev-0123456789abcdef" || gotUser != user {
			t.Errorf("DeviceFromCert = %q, %q, %v; want the device and %q", id, gotUser, err, user)
		}
	}

	// An explicit ttl; and the verification cache does not skip the
	// validity check on a repeat.
	der, err := ca.Issue("dev-1", "bob", &key.PublicKey, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	c := parseCert(t, der)
	if !c.NotAfter.Equal(now.Add(time.Hour)) {
		t.Errorf("NotAfter %v, want now+1h", c.NotAfter)
	}
	for range 2 {
		if _, _, err := ca.DeviceFromCert([]*x509.Certificate{c}, now); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ca.DeviceFromCert([]*x509.Certificate{c}, now.Add(2*time.Hour)); !errors.Is(err, ErrBadDeviceCert) {
			t.Fatalf("expired certificate from the cache: err = %v", err)
		}
	}

	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	bad := []struct {
		name, device, user string
		pub                *ecdsa.PublicKey
	}{
		{"empty device", "", "alice", &key.PublicKey},
		{"device with slash", "dev/1", "alice", &key.PublicKey},
		{"long device", strings.Repeat("d", 65), "alice", &key.PublicKey},
		{"empty user", "dev-1", "", &key.PublicKey},
		{"user with newline", "dev-1", "al\nice", &key.PublicKey},
		{"long user", "dev-1", strings.Repeat("u", 256), &key.PublicKey},
		{"nil key", "dev-1", "alice", nil},
		{"P-384 key", "dev-1", "alice", &p384.PublicKey},
	}
	for _, b := range bad {
		if _, err := ca.Issue(b.device, b.user, b.pub, 0, now); err == nil {
			t.Errorf("%s: issued", b.name)
		}
	}
}

// signLeaf signs tmpl with the CA's key (tests only), so each rejection
// case differs from a good certificate in one way.
func signLeaf(t *testing.T, ca *DeviceCA, tmpl *x509.Certificate, pub *ecdsa.PublicKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.signer)
	if err != nil {
		t.Fatal(err)
	}
	return parseCert(t, der)
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestDeviceFromCertRejects(t *testing.T) {
	ca := newTestDeviceCA(t)
	other := newTestDeviceCA(t) // another install: same CA name, another key
	key := newDeviceKey(t)
	now := time.Now()

	good := func(mod func(*x509.Certificate)) *x509.Certificate {
		c := &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()),
			Subject:      pkix.Name{CommonName: "dev-1", Organization: []string{"ztna devices"}},
			NotBefore:    now.Add(-time.Minute),
			NotAfter:     now.Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			URIs:         []*url.URL{mustURL(t, "ztna://device/dev-1"), mustURL(t, "ztna://user/alice")},
		}
		if mod != nil {
			mod(c)
		}
		return c
	}
	// The baseline must pass, or every rejection below proves nothing.
	if _, _, err := ca.DeviceFromCert([]*x509.Certificate{signLeaf(t, ca, good(nil), &key.PublicKey)}, now); err != nil {
		t.Fatalf("baseline certificate refused: %v", err)
	}

	otherDER, err := other.Issue("dev-1", "alice", &key.PublicKey, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	tampered := signLeaf(t, ca, good(nil), &key.PublicKey).Raw
	tampered = slices.Clone(tampered)
	tampered[len(tampered)-3] ^= 0x55 // inside the signature

	tests := []struct {
		name  string
		certs func() []*x509.Certificate
		want  error
	}{
		{"no certificate", func() []*x509.Certificate { return nil }, ErrNoDeviceCert},
		{"nil certificate", func() []*x509.Certificate { return []*x509.Certificate{nil} }, ErrNoDeviceCert},
		{"another CA with the same name", func() []*x509.Certificate {
			return []*x509.Certificate{parseCert(t, otherDER), other.Certificate()}
		}, ErrBadDeviceCert},
		{"tampered signature", func() []*x509.Certificate { return []*x509.Certificate{parseCert(t, tampered)} }, ErrBadDeviceCert},
		{"the CA certificate itself", func() []*x509.Certificate { return []*x509.Certificate{ca.Certificate()} }, ErrBadDeviceCert},
		{"expired", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.NotBefore, c.NotAfter = now.Add(-2*time.Hour), now.Add(-time.Second) }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"not yet valid", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.NotBefore = now.Add(time.Minute) }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"EKU serverAuth only", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"no EKU", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.ExtKeyUsage = nil }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"no URI SANs", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.URIs = nil }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"no user URI", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.URIs = c.URIs[:1] }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"no device URI", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.URIs = c.URIs[1:] }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"two device URIs", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.URIs = append(c.URIs, mustURL(t, "ztna://device/dev-2")) }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"two user URIs", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.URIs = append(c.URIs, mustURL(t, "ztna://user/mallory")) }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"unknown identity kind", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.URIs = append(c.URIs, mustURL(t, "ztna://group/admins")) }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"non-canonical escaping", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.URIs[1] = mustURL(t, "ztna://user/%61lice") }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"query in URI", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.URIs[0] = mustURL(t, "ztna://device/dev-1?x=1") }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"empty device ID", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.URIs[0] = mustURL(t, "ztna://device/") }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"CN does not match", func() []*x509.Certificate {
			return []*x509.Certificate{signLeaf(t, ca, good(func(c *x509.Certificate) { c.Subject.CommonName = "dev-2" }), &key.PublicKey)}
		}, ErrBadDeviceCert},
		{"garbage", func() []*x509.Certificate {
			return []*x509.Certificate{{Raw: []byte("garbage"), RawIssuer: ca.Certificate().RawSubject}}
		}, ErrBadDeviceCert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs := tt.certs()
			for i := range 2 { // the second call exercises the cache path
				id, user, err := ca.DeviceFromCert(certs, now)
				if !errors.Is(err, tt.want) {
					t.Fatalf("call %d: DeviceFromCert = %q, %q, %v; want %v", i, id, user, err, tt.want)
				}
			}
		})
	}
}

func FuzzDeviceFromCert(f *testing.F) {
	ca := newTestDeviceCA(f)
	key := newDeviceKey(f)
	now := time.Now()
	der, err := ca.Issue("dev-1", "alice", &key.PublicKey, 0, now)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(der)
	f.Add(ca.Certificate().Raw)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return
		}
		id, user, err := ca.DeviceFromCert([]*x509.Certificate{c}, now)
		if err != nil {
			return
		}
		// Anything accepted must be a certificate the CA signed.
		if c.CheckSignatureFrom(ca.Certificate()) != nil || id == "" || user == "" {
			t.Fatalf("accepted %q, %q from a certificate the CA did not sign", id, user)
		}
	})
}
