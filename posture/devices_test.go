package posture

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/bolt"
	"github.com/ztna-dev/ztna/internal/store/memory"
)

// deviceTestStores are the real stores the registry runs on.
var deviceTestStores = []struct {
	name string
	open func(t *testing.T) store.Store
}{
	{"memory", func(t *testing.T) store.Store {
		st := memory.New(memory.Options{})
		t.Cleanup(func() { st.Close() })
		return st
	}},
	{"bolt", func(t *testing.T) store.Store {
		st, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), bolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}},
}

// forEachDeviceStore runs fn once per store implementation. The leak check
// is registered first so it runs after the stores' cleanups.
func forEachDeviceStore(t *testing.T, fn func(t *testing.T, st store.Store)) {
	for _, s := range deviceTestStores {
		t.Run(s.name, func(t *testing.T) {
			opt := goleak.IgnoreCurrent()
			t.Cleanup(func() { goleak.VerifyNone(t, opt) })
			fn(t, s.open(t))
		})
	}
}

// testClock is a settable clock for the registry's own notion of now.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

func newTestDevices(t *testing.T, st store.Store, ca *DeviceCA) (*Devices, *testClock) {
	t.Helper()
	clk := &testClock{t: time.Now().Truncate(time.Second)} // certificates hold whole seconds
	d := NewDevices(st, ca, nil)
	d.now = clk.Now
	return d, clk
}

// revocations records OnRevoke calls.
type revocations struct {
	mu  sync.Mutex
	ids []string
}

func (r *revocations) record(id string) {
	r.mu.Lock()
	r.ids = append(r.ids, id)
	r.mu.Unlock()
}

func (r *revocations) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids)
}

// enrollDevice runs a whole enrollment for userID and returns the device,
// its key and its certificate.
func enrollDevice(t *testing.T, d *Devices, clk *testClock, userID string) (*Device, *ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	ctx := context.Background()
	key := newDeviceKey(t)
	proof, err := SignEnrollProof(key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := d.StartEnrollment(ctx, &key.PublicKey, "laptop", "linux", proof)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Approve(ctx, p.UserCode, userID); err != nil {
		t.Fatal(err)
	}
	dev, der, err := d.Poll(ctx, p.EnrollmentID, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	return dev, key, parseCert(t, der)
}

func TestCheckDevice(t *testing.T) {
	ca := newTestDeviceCA(t)
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		d, clk := newTestDevices(t, st, ca)
		var revoked revocations
		d.OnRevoke(revoked.record)
		dev, key, cert := enrollDevice(t, d, clk, "alice")
		now := clk.Now()

		got, err := d.Check(ctx, []*x509.Certificate{cert}, now)
		if err != nil || got.ID != dev.ID || got.UserID != "alice" {
			t.Fatalf("Check = %+v, %v; want device %s of alice", got, err, dev.ID)
		}

		if _, err := d.Check(ctx, nil, now); !errors.Is(err, ErrNoDeviceCert) {
			t.Errorf("no certificate: err = %v", err)
		}
		// A certificate the CA signed for a device the registry does not know.
		der, err := ca.Issue("dev-ffffffffffffffff", "alice", &key.PublicKey, 0, now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.Check(ctx, []*x509.Certificate{parseCert(t, der)}, now); !errors.Is(err, ErrNoDevice) {
			t.Errorf("unregistered device: err = %v, want ErrNoDevice", err)
		}
		// A certificate for the device naming another user: the registry
		// is made to hold its serial, so only the user binding differs.
		der, err = ca.Issue(dev.ID, "mallory", &key.PublicKey, 0, now)
		if err != nil {
			t.Fatal(err)
		}
		forged := parseCert(t, der)
		rec, err := d.Get(ctx, dev.ID)
		if err != nil {
			t.Fatal(err)
		}
		rec.CertSerial = forged.SerialNumber.Text(16)
		if err := d.save(ctx, rec); err != nil {
			t.Fatal(err)
		}
		clk.Advance(deviceCacheTTL + time.Second)
		if _, err := d.Check(ctx, []*x509.Certificate{forged}, now); !errors.Is(err, ErrBadDeviceCert) {
			t.Errorf("user mismatch: err = %v, want ErrBadDeviceCert", err)
		}
		if _, err := d.Check(ctx, []*x509.Certificate{cert}, now); !errors.Is(err, ErrCertReplaced) {
			t.Errorf("serial no longer current: err = %v, want ErrCertReplaced", err)
		}
		rec.CertSerial = cert.SerialNumber.Text(16)
		if err := d.save(ctx, rec); err != nil {
			t.Fatal(err)
		}
		clk.Advance(deviceCacheTTL + time.Second)
		if _, err := d.Check(ctx, []*x509.Certificate{cert}, now); err != nil {
			t.Fatalf("restored serial: %v", err)
		}

		// Revocation: the still-valid certificate is refused at once, the
		// callback fires, and the record says why.
		if err := d.Revoke(ctx, dev.ID, "lost on a train\n"); err != nil {
			t.Fatal(err)
		}
		if got := revoked.get(); !slices.Equal(got, []string{dev.ID}) {
			t.Errorf("OnRevoke calls %v, want [%s]", got, dev.ID)
		}
		if _, err := d.Check(ctx, []*x509.Certificate{cert}, now); !errors.Is(err, ErrDeviceRevoked) {
			t.Errorf("revoked device: err = %v, want ErrDeviceRevoked", err)
		}
		rec, err = d.Get(ctx, dev.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !rec.Revoked || rec.RevokedReason != "lost on a train" || rec.RevokedAt.IsZero() {
			t.Errorf("revoked record %+v", rec)
		}
		firstAt := rec.RevokedAt
		clk.Advance(time.Minute)
		if err := d.Revoke(ctx, dev.ID, "second reason"); err != nil {
			t.Fatal(err)
		}
		if rec, _ = d.Get(ctx, dev.ID); rec.RevokedReason != "lost on a train" || !rec.RevokedAt.Equal(firstAt) {
			t.Errorf("second revocation changed the record: %+v", rec)
		}
		if err := d.Revoke(ctx, "dev-0000000000000000", "x"); !errors.Is(err, ErrNoDevice) {
			t.Errorf("revoke unknown: err = %v", err)
		}
		if err := d.Revoke(ctx, "../etc", "x"); !errors.Is(err, ErrNoDevice) {
			t.Errorf("revoke malformed ID: err = %v", err)
		}
	})
}

// TestCheckDeviceAcrossReplicas runs two registries over one store, as two
// edge replicas do: a revocation or renewal through one is seen by the other
// once its cache entry ages out.
func TestCheckDeviceAcrossReplicas(t *testing.T) {
	ca := newTestDeviceCA(t)
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		d1, clk1 := newTestDevices(t, st, ca)
		d2, clk2 := newTestDevices(t, st, ca)
		var seen2 revocations
		d2.OnRevoke(seen2.record)
		dev, key, cert := enrollDevice(t, d1, clk1, "alice")
		now := clk1.Now()
		if _, err := d2.Check(ctx, []*x509.Certificate{cert}, now); err != nil {
			t.Fatal(err)
		}

		// Renewal through replica 1.
		proof, err := SignRenewProof(key, dev.ID, now)
		if err != nil {
			t.Fatal(err)
		}
		der, err := d1.Renew(ctx, dev.ID, proof, now)
		if err != nil {
			t.Fatal(err)
		}
		renewed := parseCert(t, der)
		if _, err := d1.Check(ctx, []*x509.Certificate{renewed}, now); err != nil {
			t.Fatalf("replica 1, new certificate: %v", err)
		}
		if _, err := d1.Check(ctx, []*x509.Certificate{cert}, now); !errors.Is(err, ErrCertReplaced) {
			t.Fatalf("replica 1, old certificate: err = %v", err)
		}
		// Replica 2 re-reads on a serial mismatch, at most once per
		// deviceReloadAfter.
		clk2.Advance(deviceReloadAfter + time.Millisecond)
		if _, err := d2.Check(ctx, []*x509.Certificate{renewed}, now); err != nil {
			t.Fatalf("replica 2, new certificate: %v", err)
		}
		if _, err := d2.Check(ctx, []*x509.Certificate{cert}, now); !errors.Is(err, ErrCertReplaced) {
			t.Fatalf("replica 2, old certificate: err = %v", err)
		}

		// Revocation through replica 1: replica 2 trusts its cache for at
		// most deviceCacheTTL, then refuses and tells its own listeners.
		if err := d1.Revoke(ctx, dev.ID, "stolen"); err != nil {
			t.Fatal(err)
		}
		if _, err := d2.Check(ctx, []*x509.Certificate{renewed}, now); err != nil {
			t.Fatalf("replica 2 within the cache lifetime: %v", err)
		}
		clk2.Advance(deviceCacheTTL + time.Second)
		if _, err := d2.Check(ctx, []*x509.Certificate{renewed}, now); !errors.Is(err, ErrDeviceRevoked) {
			t.Fatalf("replica 2 after the cache lifetime: err = %v, want ErrDeviceRevoked", err)
		}
		if got := seen2.get(); !slices.Equal(got, []string{dev.ID}) {
			t.Errorf("replica 2 OnRevoke calls %v, want [%s]", got, dev.ID)
		}
	})
}

func TestDeviceGetAndList(t *testing.T) {
	ca := newTestDeviceCA(t)
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		d, clk := newTestDevices(t, st, ca)
		a1, _, _ := enrollDevice(t, d, clk, "alice")
		clk.Advance(time.Second)
		a2, _, _ := enrollDevice(t, d, clk, "alice")
		b1, _, _ := enrollDevice(t, d, clk, "bob")
		if err := d.Revoke(ctx, a2.ID, "old laptop"); err != nil {
			t.Fatal(err)
		}

		got, err := d.Get(ctx, a1.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.UserID != "alice" || got.Name != "laptop" || got.Platform != "linux" || !slices.Equal(got.PublicKey, a1.PublicKey) ||
			got.CertSerial != a1.CertSerial || !got.CertNotAfter.Equal(a1.CertNotAfter) || !got.EnrolledAt.Equal(a1.EnrolledAt) || got.Revoked {
			t.Errorf("Get = %+v, want %+v", got, a1)
		}
		if _, err := d.Get(ctx, "dev-0000000000000000"); !errors.Is(err, ErrNoDevice) || !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get unknown: err = %v, want ErrNoDevice wrapping store.ErrNotFound", err)
		}
		if _, err := d.Get(ctx, ""); !errors.Is(err, ErrNoDevice) {
			t.Errorf("Get empty ID: err = %v", err)
		}

		ids := func(devs []*Device) []string {
			var out []string
			for _, dv := range devs {
				out = append(out, dv.ID)
			}
			slices.Sort(out)
			return out
		}
		sorted := func(s ...string) []string { slices.Sort(s); return s }
		all, err := d.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ids(all), sorted(a1.ID, a2.ID, b1.ID); !slices.Equal(got, want) {
			t.Errorf("List all = %v, want %v", got, want)
		}
		alice, err := d.List(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ids(alice), sorted(a1.ID, a2.ID); !slices.Equal(got, want) {
			t.Errorf("List alice = %v, want %v", got, want)
		}
		for _, dv := range alice {
			if (dv.ID == a2.ID) != dv.Revoked {
				t.Errorf("List: %s revoked = %v", dv.ID, dv.Revoked)
			}
		}
		if none, err := d.List(ctx, "carol"); err != nil || len(none) != 0 {
			t.Errorf("List carol = %v, %v", none, err)
		}
	})
}

func TestRenewDevice(t *testing.T) {
	ca := newTestDeviceCA(t)
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		d, clk := newTestDevices(t, st, ca)
		dev, key, cert := enrollDevice(t, d, clk, "alice")
		now := clk.Now().Add(20 * time.Hour) // the agent renews well before expiry

		sign := func(k *ecdsa.PrivateKey, id string, at time.Time) []byte {
			p, err := SignRenewProof(k, id, at)
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		other := newDeviceKey(t)
		bad := []struct {
			name  string
			id    string
			proof []byte
			want  error
		}{
			{"another key", dev.ID, sign(other, dev.ID, now), ErrBadProof},
			{"another device's proof", dev.ID, sign(key, "dev-0000000000000000", now), ErrBadProof},
			{"enrollment proof", dev.ID, func() []byte { p, _ := SignEnrollProof(key); return p }(), ErrBadProof},
			{"stale proof", dev.ID, sign(key, dev.ID, now.Add(-3*time.Minute)), ErrBadProof},
			{"future proof", dev.ID, sign(key, dev.ID, now.Add(3*time.Minute)), ErrBadProof},
			{"empty proof", dev.ID, nil, ErrBadProof},
			{"oversized proof", dev.ID, make([]byte, 4096), ErrBadProof},
			{"unknown device", "dev-0000000000000000", sign(key, "dev-0000000000000000", now), ErrNoDevice},
			{"malformed device ID", "dev/../x", sign(key, "dev/../x", now), ErrNoDevice},
		}
		for _, b := range bad {
			if _, err := d.Renew(ctx, b.id, b.proof, now); !errors.Is(err, b.want) {
				t.Errorf("%s: err = %v, want %v", b.name, err, b.want)
			}
		}
		if _, err := d.Check(ctx, []*x509.Certificate{cert}, now); err != nil {
			t.Fatalf("refused renewals changed the device: %v", err)
		}

		// A proof signed a minute ago (clock skew) renews.
		proof := sign(key, dev.ID, now.Add(-time.Minute))
		der, err := d.Renew(ctx, dev.ID, proof, now)
		if err != nil {
			t.Fatal(err)
		}
		renewed := parseCert(t, der)
		if renewed.SerialNumber.Cmp(cert.SerialNumber) == 0 {
			t.Fatal("renewal kept the serial")
		}
		if !renewed.NotAfter.Equal(now.Add(DefaultCertTTL)) || !renewed.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
			t.Errorf("renewed certificate: NotAfter %v, key %v", renewed.NotAfter, renewed.PublicKey)
		}
		rec, err := d.Get(ctx, dev.ID)
		if err != nil {
			t.Fatal(err)
		}
		if rec.CertSerial != renewed.SerialNumber.Text(16) || !rec.CertNotAfter.Equal(renewed.NotAfter) {
			t.Errorf("record after renewal: serial %s, not after %v", rec.CertSerial, rec.CertNotAfter)
		}
		if _, err := d.Check(ctx, []*x509.Certificate{renewed}, now); err != nil {
			t.Errorf("new certificate: %v", err)
		}
		if _, err := d.Check(ctx, []*x509.Certificate{cert}, now); !errors.Is(err, ErrCertReplaced) {
			t.Errorf("old certificate after renewal: err = %v, want ErrCertReplaced", err)
		}
		// The same proof again (a replay) is refused.
		if _, err := d.Renew(ctx, dev.ID, proof, now); !errors.Is(err, ErrProofUsed) {
			t.Errorf("replayed proof: err = %v, want ErrProofUsed", err)
		}
		// Even after expiry the device key can renew; revocation stops it.
		later := renewed.NotAfter.Add(time.Hour)
		if _, err := d.Renew(ctx, dev.ID, sign(key, dev.ID, later), later); err != nil {
			t.Errorf("renewal after expiry: %v", err)
		}
		if err := d.Revoke(ctx, dev.ID, "lost"); err != nil {
			t.Fatal(err)
		}
		later = later.Add(time.Minute)
		if _, err := d.Renew(ctx, dev.ID, sign(key, dev.ID, later), later); !errors.Is(err, ErrDeviceRevoked) {
			t.Errorf("revoked device renewing: err = %v, want ErrDeviceRevoked", err)
		}
		before, err := d.Get(ctx, dev.ID)
		if err != nil {
			t.Fatal(err)
		}
		if before.CertSerial == rec.CertSerial {
			t.Fatal("test setup: the renewal after expiry did not change the serial")
		}
		later = later.Add(time.Minute)
		d.Renew(ctx, dev.ID, sign(key, dev.ID, later), later)
		if after, err := d.Get(ctx, dev.ID); err != nil || after.CertSerial != before.CertSerial {
			t.Errorf("a refused renewal of a revoked device changed its serial: %v → %v (%v)", before.CertSerial, after.CertSerial, err)
		}
	})
}

// hookStore runs a function once just before the next Put into a bucket,
// to place another replica's write at an exact point of an operation.
type hookStore struct {
	store.Store
	mu     sync.Mutex
	bucket string
	before func()
}

func (h *hookStore) beforeNextPut(bucket string, fn func()) {
	h.mu.Lock()
	h.bucket, h.before = bucket, fn
	h.mu.Unlock()
}

func (h *hookStore) Put(ctx context.Context, bucket, key string, value []byte, ttl time.Duration) error {
	h.mu.Lock()
	var fn func()
	if h.before != nil && bucket == h.bucket {
		fn, h.before = h.before, nil
	}
	h.mu.Unlock()
	if fn != nil {
		fn()
	}
	return h.Store.Put(ctx, bucket, key, value, ttl)
}

// TestRenewRevokedMidway: another replica revokes the device after Renew
// has read the record but before it writes the new serial. The renewal must
// fail and leave the device revoked.
func TestRenewRevokedMidway(t *testing.T) {
	ca := newTestDeviceCA(t)
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		hs := &hookStore{Store: st}
		d1, clk := newTestDevices(t, hs, ca)
		d2, _ := newTestDevices(t, hs, ca)
		dev, key, _ := enrollDevice(t, d1, clk, "alice")
		now := clk.Now()
		proof, err := SignRenewProof(key, dev.ID, now)
		if err != nil {
			t.Fatal(err)
		}
		hs.beforeNextPut(bucketDevices, func() {
			if err := d2.Revoke(ctx, dev.ID, "midway"); err != nil {
				t.Error(err)
			}
		})
		der, err := d1.Renew(ctx, dev.ID, proof, now)
		if !errors.Is(err, ErrDeviceRevoked) || der != nil {
			t.Fatalf("Renew = %d bytes, %v; want ErrDeviceRevoked", len(der), err)
		}
		rec, err := d1.Get(ctx, dev.ID)
		if err != nil || !rec.Revoked || rec.RevokedReason != "midway" {
			t.Fatalf("after the race: %+v, %v", rec, err)
		}
		// The stored record itself is repaired, not only the view through
		// the tombstone.
		raw, err := st.Get(ctx, bucketDevices, dev.ID)
		if err != nil || !strings.Contains(string(raw), `"revoked":true`) {
			t.Errorf("stored record %s, %v; want it marked revoked", raw, err)
		}
	})
}

// TestRenewRevokeRace: a revocation racing renewals leaves the device
// revoked whatever the interleaving, and no certificate issued by a renewal
// that returned after Revoke passes Check.
func TestRenewRevokeRace(t *testing.T) {
	ca := newTestDeviceCA(t)
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		d1, clk := newTestDevices(t, st, ca)
		d2, _ := newTestDevices(t, st, ca) // another replica: no shared lock
		dev, key, _ := enrollDevice(t, d1, clk, "alice")
		base := clk.Now()
		var wg sync.WaitGroup
		certs := make(chan []byte, 16)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				at := base.Add(time.Duration(i) * 3 * time.Minute) // distinct minutes: no proof reuse
				proof, err := SignRenewProof(key, dev.ID, at)
				if err != nil {
					t.Error(err)
					return
				}
				if der, err := d2.Renew(ctx, dev.ID, proof, at); err == nil {
					certs <- der
				} else if !errors.Is(err, ErrDeviceRevoked) {
					t.Errorf("renew: %v", err)
				}
			}()
		}
		if err := d1.Revoke(ctx, dev.ID, "race"); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		close(certs)
		clk.Advance(deviceCacheTTL + time.Second)
		for der := range certs {
			c := parseCert(t, der)
			if _, err := d1.Check(ctx, []*x509.Certificate{c}, c.NotBefore.Add(2*time.Minute)); !errors.Is(err, ErrDeviceRevoked) {
				t.Errorf("certificate from a racing renewal: err = %v, want ErrDeviceRevoked", err)
			}
		}
		if rec, err := d1.Get(ctx, dev.ID); err != nil || !rec.Revoked {
			t.Errorf("after the race: %+v, %v", rec, err)
		}
		all, err := d1.List(ctx, "")
		if err != nil || len(all) != 1 || !all[0].Revoked {
			t.Errorf("List after the race: %v, %v", all, err)
		}
	})
}

// BenchmarkDeviceCheck is the per-request cost of identifying a device whose
// certificate and record are cached (the hot path).
func BenchmarkDeviceCheck(b *testing.B) {
	ca := newTestDeviceCA(b)
	st := memory.New(memory.Options{})
	defer st.Close()
	d := NewDevices(st, ca, nil)
	ctx := context.Background()
	key := newDeviceKey(b)
	now := time.Now()
	der, err := ca.Issue("dev-0123456789abcdef", "alice", &key.PublicKey, 0, now)
	if err != nil {
		b.Fatal(err)
	}
	cert := parseCert(b, der)
	pkix, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err := d.save(ctx, &Device{ID: "dev-0123456789abcdef", UserID: "alice", PublicKey: pkix, CertSerial: cert.SerialNumber.Text(16), CertNotAfter: cert.NotAfter}); err != nil {
		b.Fatal(err)
	}
	certs := []*x509.Certificate{cert}
	if _, err := d.Check(ctx, certs, now); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Check(ctx, certs, now); err != nil {
			b.Fatal(err)
		}
	}
}

// serverCert makes a self-signed certificate for 127.0.0.1, the edge's TLS
// identity in this test.
func serverCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key := newDeviceKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "edge"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(parseCert(t, der))
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// handshakeResult is what the server side saw on one connection.
type handshakeResult struct {
	handshakeErr error
	dev          *Device
	checkErr     error
}

// TestDeviceTLSHandshake runs real TLS handshakes on loopback against a
// listener configured the way the edge is (optional client certificate,
// ClientCAs = the device CA) and identifies the device with Check.
func TestDeviceTLSHandshake(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })

	ca := newTestDeviceCA(t)
	st := memory.New(memory.Options{})
	t.Cleanup(func() { st.Close() })
	d, clk := newTestDevices(t, st, ca)
	dev, key, cert := enrollDevice(t, d, clk, "alice")
	revokedDev, revokedKey, revokedCert := enrollDevice(t, d, clk, "bob")
	if err := d.Revoke(context.Background(), revokedDev.ID, "test"); err != nil {
		t.Fatal(err)
	}

	srvCert, srvPool := serverCert(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srvCert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.Pool(),
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan handshakeResult, 1)
	serverDone := make(chan struct{})
	go func() {
		defer close(serverDone)
		for {
			c, err := ln.Accept()
			if err != nil {
				return // listener closed
			}
			tc := c.(*tls.Conn)
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			var r handshakeResult
			if r.handshakeErr = tc.Handshake(); r.handshakeErr == nil {
				r.dev, r.checkErr = d.Check(context.Background(), tc.ConnectionState().PeerCertificates, time.Now())
				tc.Write([]byte{1}) // lets the client see the handshake through
			}
			tc.Close()
			results <- r
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-serverDone
	})

	otherCA := newTestDeviceCA(t) // another install: same CA name, different key
	otherDER, err := otherCA.Issue(dev.ID, "alice", &key.PublicKey, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	chain := func(c *x509.Certificate, k *ecdsa.PrivateKey) tls.Certificate {
		return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
	}
	tests := []struct {
		name string
		// client is the client's certificate; nil sends none.
		client *tls.Certificate
		// wantHandshake is whether the server's handshake succeeds.
		wantHandshake bool
		wantDevice    string
		wantErr       error
	}{
		{"enrolled device", new(chain(cert, key)), true, dev.ID, nil},
		{"no certificate", nil, true, "", ErrNoDeviceCert},
		{"revoked device", new(chain(revokedCert, revokedKey)), true, "", ErrDeviceRevoked},
		{"certificate from another CA", &tls.Certificate{Certificate: [][]byte{otherDER}, PrivateKey: key}, false, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var acceptable [][]byte
			cfg := &tls.Config{
				RootCAs:    srvPool,
				ServerName: "127.0.0.1",
				GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
					acceptable = cri.AcceptableCAs
					if tt.client == nil {
						return &tls.Certificate{}, nil
					}
					return tt.client, nil // sent even if the CA list does not match
				},
			}
			dialer := &net.Dialer{Timeout: 5 * time.Second}
			conn, err := tls.DialWithDialer(dialer, "tcp", ln.Addr().String(), cfg)
			if err == nil {
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				var b [1]byte
				_, err = conn.Read(b[:]) // TLS 1.3: the server judges the client certificate after the client's handshake ends
				conn.Close()
			}
			var r handshakeResult
			select {
			case r = <-results:
			case <-time.After(10 * time.Second):
				t.Fatal("no server result")
			}

			// The server asks for certificates of the device CA, by name:
			// that is what makes browsers offer the device certificate.
			found := false
			for _, name := range acceptable {
				found = found || bytes.Equal(name, ca.Certificate().RawSubject)
			}
			if !found {
				t.Errorf("CertificateRequest names %d CAs, not the device CA", len(acceptable))
			}

			if !tt.wantHandshake {
				if r.handshakeErr == nil || err == nil {
					t.Fatalf("handshake accepted (server err %v, client err %v); Check said %v, %v", r.handshakeErr, err, r.dev, r.checkErr)
				}
				return
			}
			if r.handshakeErr != nil || err != nil {
				t.Fatalf("handshake failed: server %v, client %v", r.handshakeErr, err)
			}
			if tt.wantErr != nil {
				if !errors.Is(r.checkErr, tt.wantErr) || r.dev != nil {
					t.Fatalf("Check = %v, %v; want %v", r.dev, r.checkErr, tt.wantErr)
				}
				return
			}
			if r.checkErr != nil || r.dev == nil || r.dev.ID != tt.wantDevice || r.dev.UserID != "alice" {
				t.Fatalf("Check = %+v, %v; want device %s of alice", r.dev, r.checkErr, tt.wantDevice)
			}
		})
	}
}
