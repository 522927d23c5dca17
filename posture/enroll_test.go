package posture

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/memory"
)

var (
	userCodeRE = regexp.MustCompile(`^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$`)
	deviceIDRE = regexp.MustCompile(`^dev-[0-9a-f]{16}$`)
)

func startEnrollment(t *testing.T, d *Devices, key *ecdsa.PrivateKey) *PendingEnrollment {
	t.Helper()
	proof, err := SignEnrollProof(key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := d.StartEnrollment(context.Background(), &key.PublicKey, "alice-laptop", "linux", proof)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEnrollFlow(t *testing.T) {
	ca := newTestDeviceCA(t)
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		d, clk := newTestDevices(t, st, ca)
		key := newDeviceKey(t)
		start := clk.Now()
		p := startEnrollment(t, d, key)

		fp, err := KeyFingerprint(&key.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case !userCodeRE.MatchString(p.UserCode):
			t.Errorf("user code %q", p.UserCode)
		case !validEnrollmentID(p.EnrollmentID):
			t.Errorf("enrollment ID %q", p.EnrollmentID)
		case !p.ExpiresAt.Equal(start.Add(10 * time.Minute)):
			t.Errorf("ExpiresAt %v, want start+10m", p.ExpiresAt)
		case p.Fingerprint != fp || p.Name != "alice-laptop" || p.Platform != "linux":
			t.Errorf("pending %+v", p)
		}
		// Neither secret appears in the store in the clear.
		for _, b := range []string{bucketEnrollments, bucketEnrollCodes} {
			st.List(ctx, b, "", func(k string, v []byte) bool {
				code := strings.ReplaceAll(p.UserCode, "-", "")
				if strings.Contains(k, p.EnrollmentID) || strings.Contains(k, code) || strings.Contains(string(v), p.EnrollmentID) || strings.Contains(string(v), code) {
					t.Errorf("bucket %s holds a secret in the clear", b)
				}
				return true
			})
		}

		// The approval page finds it however the user types the code.
		code := p.UserCode
		for _, typed := range []string{code, strings.ToLower(code), strings.ReplaceAll(code, "-", ""), strings.ToLower(strings.ReplaceAll(code, "-", "")), " " + code[:2] + " " + code[2:] + " "} {
			got, err := d.PendingByUserCode(ctx, typed)
			if err != nil {
				t.Fatalf("PendingByUserCode(%q): %v", typed, err)
			}
			if got.EnrollmentID != "" || got.UserCode != code || got.Fingerprint != fp || got.Name != "alice-laptop" || !slices.Equal(got.PublicKey, p.PublicKey) {
				t.Errorf("PendingByUserCode(%q) = %+v", typed, got)
			}
		}

		now := start
		if _, _, err := d.Poll(ctx, p.EnrollmentID, now); !errors.Is(err, ErrPending) {
			t.Fatalf("first poll: err = %v, want ErrPending", err)
		}
		if _, _, err := d.Poll(ctx, p.EnrollmentID, now.Add(PollInterval-time.Millisecond)); !errors.Is(err, ErrSlowDown) {
			t.Fatalf("fast poll: err = %v, want ErrSlowDown", err)
		}
		now = now.Add(PollInterval)
		if _, _, err := d.Poll(ctx, p.EnrollmentID, now); !errors.Is(err, ErrPending) {
			t.Fatalf("paced poll: err = %v, want ErrPending", err)
		}

		if err := d.Approve(ctx, strings.ToLower(strings.ReplaceAll(code, "-", "")), "alice"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.PendingByUserCode(ctx, code); !errors.Is(err, ErrBadUserCode) {
			t.Errorf("approved code still pending: err = %v", err)
		}

		now = now.Add(5 * time.Second)
		dev, der, err := d.Poll(ctx, p.EnrollmentID, now)
		if err != nil {
			t.Fatal(err)
		}
		cert := parseCert(t, der)
		if !deviceIDRE.MatchString(dev.ID) || dev.UserID != "alice" || dev.Name != "alice-laptop" || dev.Platform != "linux" ||
			!slices.Equal(dev.PublicKey, p.PublicKey) || !dev.EnrolledAt.Equal(now) || dev.Revoked {
			t.Errorf("device %+v", dev)
		}
		if dev.CertSerial != cert.SerialNumber.Text(16) || !dev.CertNotAfter.Equal(cert.NotAfter) || !cert.NotAfter.Equal(now.Add(DefaultCertTTL)) {
			t.Errorf("device cert fields %s %v vs certificate %s %v", dev.CertSerial, dev.CertNotAfter, cert.SerialNumber.Text(16), cert.NotAfter)
		}
		if !cert.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
			t.Error("certificate is not for the device key")
		}
		if id, user, err := ca.DeviceFromCert([]*x509.Certificate{cert}, now); err != nil || id != dev.ID || user != "alice" {
			t.Errorf("DeviceFromCert = %q, %q, %v", id, user, err)
		}
		if got, err := d.Check(ctx, []*x509.Certificate{cert}, now); err != nil || got.ID != dev.ID {
			t.Errorf("Check = %v, %v", got, err)
		}
		if got, err := d.Get(ctx, dev.ID); err != nil || got.CertSerial != dev.CertSerial {
			t.Errorf("Get = %+v, %v", got, err)
		}

		// The certificate is handed out once.
		now = now.Add(5 * time.Second)
		if _, _, err := d.Poll(ctx, p.EnrollmentID, now); !errors.Is(err, ErrNoEnrollment) {
			t.Errorf("poll after collection: err = %v, want ErrNoEnrollment", err)
		}
		if devs, err := d.List(ctx, ""); err != nil || len(devs) != 1 {
			t.Errorf("List = %v, %v; want the one device", devs, err)
		}
		// Nothing of the enrollment is left behind.
		for _, b := range []string{bucketEnrollments, bucketEnrollCodes, bucketEnrollPolls} {
			st.List(ctx, b, "", func(k string, v []byte) bool {
				t.Errorf("bucket %s still holds %s", b, k)
				return true
			})
		}
	})
}

func TestEnrollStartRefusals(t *testing.T) {
	ca := newTestDeviceCA(t)
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		d, _ := newTestDevices(t, st, ca)
		key, other := newDeviceKey(t), newDeviceKey(t)
		p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		good, _ := SignEnrollProof(key)
		byOther, _ := SignEnrollProof(other) // a valid proof, for another key
		msg, _ := EnrollProofMessage(&key.PublicKey)
		overOther, _ := signProof(key, append(msg, 'x'))
		tests := []struct {
			name          string
			pub           *ecdsa.PublicKey
			devName, plat string
			proof         []byte
			want          error
		}{
			{"signature by another key", &key.PublicKey, "laptop", "linux", byOther, ErrBadProof},
			{"signature over another message", &key.PublicKey, "laptop", "linux", overOther, ErrBadProof},
			{"no proof", &key.PublicKey, "laptop", "linux", nil, ErrBadProof},
			{"oversized proof", &key.PublicKey, "laptop", "linux", append(slices.Clone(good), make([]byte, 200)...), ErrBadProof},
			{"nil key", nil, "laptop", "linux", good, ErrInvalidEnrollment},
			{"P-384 key", &p384.PublicKey, "laptop", "linux", good, ErrInvalidEnrollment},
			{"empty name", &key.PublicKey, "  ", "linux", good, ErrInvalidEnrollment},
			{"name with control character", &key.PublicKey, "lap\x1btop", "linux", good, ErrInvalidEnrollment},
			{"long name", &key.PublicKey, strings.Repeat("n", 65), "linux", good, ErrInvalidEnrollment},
			{"invalid UTF-8 platform", &key.PublicKey, "laptop", "\xff", good, ErrInvalidEnrollment},
			{"long platform", &key.PublicKey, "laptop", strings.Repeat("p", 33), good, ErrInvalidEnrollment},
		}
		for _, tt := range tests {
			p, err := d.StartEnrollment(context.Background(), tt.pub, tt.devName, tt.plat, tt.proof)
			if !errors.Is(err, tt.want) {
				t.Errorf("%s: StartEnrollment = %+v, %v; want %v", tt.name, p, err, tt.want)
			}
		}
		var n int
		st.List(context.Background(), bucketEnrollments, "", func(string, []byte) bool { n++; return true })
		if n != 0 {
			t.Errorf("refused starts left %d enrollment records", n)
		}
		if _, err := d.StartEnrollment(context.Background(), &key.PublicKey, "laptop", "linux", good); err != nil {
			t.Errorf("the good request after the refusals: %v", err)
		}
	})
}

func TestEnrollRateLimit(t *testing.T) {
	ca := newTestDeviceCA(t)
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		d, clk := newTestDevices(t, st, ca)
		d.limiter = newTokenBucket(1, 2)
		key := newDeviceKey(t)
		proof, _ := SignEnrollProof(key)
		start := func() error {
			_, err := d.StartEnrollment(context.Background(), &key.PublicKey, "laptop", "linux", proof)
			return err
		}
		for i := range 2 {
			if err := start(); err != nil {
				t.Fatalf("start %d within the burst: %v", i, err)
			}
		}
		if err := start(); !errors.Is(err, ErrRateLimited) {
			t.Fatalf("start beyond the burst: err = %v, want ErrRateLimited", err)
		}
		clk.Advance(time.Second)
		if err := start(); err != nil {
			t.Fatalf("start after refill: %v", err)
		}
	})
}

func TestEnrollDecisions(t *testing.T) {
	ca := newTestDeviceCA(t)
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		d, clk := newTestDevices(t, st, ca)

		t.Run("deny", func(t *testing.T) {
			p := startEnrollment(t, d, newDeviceKey(t))
			if err := d.Deny(ctx, p.UserCode); err != nil {
				t.Fatal(err)
			}
			now := clk.Now()
			if _, _, err := d.Poll(ctx, p.EnrollmentID, now); !errors.Is(err, ErrDenied) {
				t.Errorf("poll after deny: err = %v, want ErrDenied", err)
			}
			if err := d.Approve(ctx, p.UserCode, "alice"); !errors.Is(err, ErrBadUserCode) {
				t.Errorf("approve after deny: err = %v, want ErrBadUserCode", err)
			}
			if _, _, err := d.Poll(ctx, p.EnrollmentID, now.Add(PollInterval)); !errors.Is(err, ErrDenied) {
				t.Errorf("second poll after deny: err = %v, want ErrDenied", err)
			}
		})

		t.Run("approve twice", func(t *testing.T) {
			p := startEnrollment(t, d, newDeviceKey(t))
			if err := d.Approve(ctx, p.UserCode, "alice"); err != nil {
				t.Fatal(err)
			}
			if err := d.Approve(ctx, p.UserCode, "mallory"); !errors.Is(err, ErrBadUserCode) {
				t.Errorf("second approve: err = %v, want ErrBadUserCode", err)
			}
			if err := d.Deny(ctx, p.UserCode); !errors.Is(err, ErrBadUserCode) {
				t.Errorf("deny after approve: err = %v, want ErrBadUserCode", err)
			}
			dev, _, err := d.Poll(ctx, p.EnrollmentID, clk.Now())
			if err != nil || dev.UserID != "alice" {
				t.Errorf("poll = %+v, %v; want alice's device", dev, err)
			}
		})

		t.Run("bad codes", func(t *testing.T) {
			p := startEnrollment(t, d, newDeviceKey(t))
			wrong := []rune(strings.ReplaceAll(p.UserCode, "-", ""))
			if wrong[0] == 'B' {
				wrong[0] = 'C'
			} else {
				wrong[0] = 'B'
			}
			for _, code := range []string{"", "BCDF", "BCDF-GHJKL", "ABCD-EFGH", "BCDF_GHJK", string(wrong), strings.Repeat("B", 100)} {
				if err := d.Approve(ctx, code, "alice"); !errors.Is(err, ErrBadUserCode) {
					t.Errorf("Approve(%q): err = %v, want ErrBadUserCode", code, err)
				}
				if _, err := d.PendingByUserCode(ctx, code); !errors.Is(err, ErrBadUserCode) {
					t.Errorf("PendingByUserCode(%q): err = %v, want ErrBadUserCode", code, err)
				}
			}
			if err := d.Approve(ctx, p.UserCode, ""); err == nil {
				t.Error("approved for an empty user")
			}
			// None of that used up the real code.
			if err := d.Approve(ctx, p.UserCode, "alice"); err != nil {
				t.Errorf("the real code after wrong ones: %v", err)
			}
			for _, id := range []string{"", "short", strings.Repeat("A", 43) + "=", p.EnrollmentID[:42] + "!"} {
				if _, _, err := d.Poll(ctx, id, clk.Now()); !errors.Is(err, ErrNoEnrollment) {
					t.Errorf("Poll(%q): err = %v, want ErrNoEnrollment", id, err)
				}
			}
		})

		t.Run("expired", func(t *testing.T) {
			p := startEnrollment(t, d, newDeviceKey(t))
			late := p.ExpiresAt.Add(time.Second)
			if _, _, err := d.Poll(ctx, p.EnrollmentID, late); !errors.Is(err, ErrExpired) {
				t.Errorf("poll after expiry: err = %v, want ErrExpired", err)
			}
			clk.Advance(EnrollmentTTL + time.Second)
			if _, err := d.PendingByUserCode(ctx, p.UserCode); !errors.Is(err, ErrBadUserCode) {
				t.Errorf("pending after expiry: err = %v, want ErrBadUserCode", err)
			}
			if err := d.Approve(ctx, p.UserCode, "alice"); !errors.Is(err, ErrExpired) {
				t.Errorf("approve after expiry: err = %v, want ErrExpired", err)
			}
			if _, _, err := d.Poll(ctx, p.EnrollmentID, late.Add(PollInterval)); !errors.Is(err, ErrExpired) {
				t.Errorf("poll after a late approval attempt: err = %v, want ErrExpired", err)
			}
		})

		t.Run("approved but collected too late", func(t *testing.T) {
			p := startEnrollment(t, d, newDeviceKey(t))
			if err := d.Approve(ctx, p.UserCode, "alice"); err != nil {
				t.Fatal(err)
			}
			if _, _, err := d.Poll(ctx, p.EnrollmentID, p.ExpiresAt); !errors.Is(err, ErrExpired) {
				t.Errorf("poll at expiry: err = %v, want ErrExpired", err)
			}
		})
	})
}

// TestEnrollExpiryInStore lets the store's own TTLs run out (fake time in a
// synctest bubble): after the grace period an expired enrollment is gone.
func TestEnrollExpiryInStore(t *testing.T) {
	ca := newTestDeviceCA(t)
	synctest.Test(t, func(t *testing.T) {
		st := memory.New(memory.Options{})
		defer st.Close()
		d := NewDevices(st, ca, nil)
		ctx := context.Background()
		p := startEnrollment(t, d, newDeviceKey(t))

		time.Sleep(EnrollmentTTL + time.Second)
		if _, err := d.PendingByUserCode(ctx, p.UserCode); !errors.Is(err, ErrBadUserCode) {
			t.Errorf("code after expiry: err = %v", err)
		}
		if err := d.Approve(ctx, p.UserCode, "alice"); !errors.Is(err, ErrBadUserCode) {
			t.Errorf("approve after expiry: err = %v, want ErrBadUserCode (code gone from the store)", err)
		}
		if _, _, err := d.Poll(ctx, p.EnrollmentID, time.Now()); !errors.Is(err, ErrExpired) {
			t.Errorf("poll within the grace period: err = %v, want ErrExpired", err)
		}
		time.Sleep(enrollGrace)
		if _, _, err := d.Poll(ctx, p.EnrollmentID, time.Now()); !errors.Is(err, ErrNoEnrollment) {
			t.Errorf("poll after the grace period: err = %v, want ErrNoEnrollment", err)
		}
	})
}

// TestEnrollConcurrentApprovePoll races approvals by two users against
// several pollers: exactly one approval wins, exactly one poll collects the
// device, and the device belongs to the winner.
func TestEnrollConcurrentApprovePoll(t *testing.T) {
	ca := newTestDeviceCA(t)
	forEachDeviceStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		d, clk := newTestDevices(t, st, ca)
		const rounds = 10
		for range rounds {
			p := startEnrollment(t, d, newDeviceKey(t))
			// Pollers step their clocks by PollInterval on every try, so
			// they start a day early: however long they spin before the
			// approval lands, they never reach ExpiresAt.
			base := clk.Now().Add(-24 * time.Hour)
			var (
				wg        sync.WaitGroup
				approvals atomic.Int32
				winner    atomic.Value
				tick      atomic.Int64
				mu        sync.Mutex
				collected []*Device
			)
			for _, user := range []string{"alice", "mallory"} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := d.Approve(ctx, p.UserCode, user); err == nil {
						approvals.Add(1)
						winner.Store(user)
					} else if !errors.Is(err, ErrBadUserCode) {
						t.Errorf("approve: %v", err)
					}
				}()
			}
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					deadline := time.Now().Add(10 * time.Second)
					for time.Now().Before(deadline) {
						now := base.Add(time.Duration(tick.Add(1)) * PollInterval)
						dev, _, err := d.Poll(ctx, p.EnrollmentID, now)
						switch {
						case err == nil:
							mu.Lock()
							collected = append(collected, dev)
							mu.Unlock()
							return
						case errors.Is(err, ErrNoEnrollment):
							return // another poller collected it
						case errors.Is(err, ErrPending), errors.Is(err, ErrSlowDown):
							continue
						default:
							t.Errorf("poll: %v", err)
							return
						}
					}
					t.Error("poll: no result before the deadline")
				}()
			}
			wg.Wait()
			if approvals.Load() != 1 {
				t.Fatalf("%d approvals succeeded, want 1", approvals.Load())
			}
			if len(collected) != 1 {
				t.Fatalf("%d polls collected the device, want 1", len(collected))
			}
			if collected[0].UserID != winner.Load().(string) {
				t.Errorf("device bound to %s, but %s's approval won", collected[0].UserID, winner.Load())
			}
		}
		devs, err := d.List(ctx, "")
		if err != nil || len(devs) != rounds {
			t.Errorf("List = %d devices, %v; want %d", len(devs), err, rounds)
		}
	})
}
