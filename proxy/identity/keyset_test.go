package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func kids(ks *KeySet) []string {
	var out []string
	for _, k := range ks.keys {
		out = append(out, k.kid)
	}
	return out
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestLoadOrCreateKeySetLifecycle(t *testing.T) {
	const rotate = 24 * time.Hour
	dir := filepath.Join(t.TempDir(), "data") // does not exist yet
	path := filepath.Join(dir, "signing-keys.json")
	t0 := testNow

	// Create.
	ks1, err := LoadOrCreateKeySet(path, rotate, t0)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if len(ks1.keys) != 1 {
		t.Fatalf("created %d keys, want 1", len(ks1.keys))
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Errorf("file mode %#o, want 0600", m)
	}
	created, _ := os.ReadFile(path)
	if bytes.Contains(ks1.JWKS(), []byte(`"d"`)) {
		t.Error("JWKS contains private key material")
	}

	// Reload before rotation: same keys, file untouched.
	ks2, err := LoadOrCreateKeySet(path, rotate, t0.Add(rotate-time.Second))
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !slices.Equal(kids(ks2), kids(ks1)) || !bytes.Equal(ks2.JWKS(), ks1.JWKS()) {
		t.Errorf("reload changed keys: %v -> %v", kids(ks1), kids(ks2))
	}
	if now, _ := os.ReadFile(path); !bytes.Equal(now, created) {
		t.Error("reload without rotation rewrote the file")
	}
	// A token signed before the restart verifies with the reloaded keys.
	tok := mustSign(t, testSigner(ks1), validClaims())
	v := newTestVerifier(t, VerifierConfig{Keys: ks2.JWKS()}, newClock(testNow))
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Errorf("token from before reload: %v", err)
	}

	// Rotate: a new current key, the old one still published.
	ks3, err := LoadOrCreateKeySet(path, rotate, t0.Add(rotate))
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	if len(ks3.keys) != 2 || ks3.keys[1].kid != ks1.keys[0].kid || ks3.keys[0].kid == ks1.keys[0].kid {
		t.Fatalf("after rotation kids = %v, want [new %s]", kids(ks3), ks1.keys[0].kid)
	}
	if ks3.Signer("").KeyID() != ks3.keys[0].kid {
		t.Error("signer does not use the new key")
	}
	v = newTestVerifier(t, VerifierConfig{Keys: ks3.JWKS()}, newClock(testNow))
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Errorf("token signed with the previous key after rotation: %v", err)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Errorf("file mode after rotation %#o, want 0600", m)
	}

	// Reload the rotated file: same two keys, same order.
	ks4, err := LoadOrCreateKeySet(path, rotate, t0.Add(rotate+time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(kids(ks4), kids(ks3)) {
		t.Errorf("reload after rotation: %v, want %v", kids(ks4), kids(ks3))
	}

	// 2*rotate after the first key: its age is over 2*rotate, so it is
	// dropped; the second key is due for rotation too.
	ks5, err := LoadOrCreateKeySet(path, rotate, t0.Add(2*rotate+time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(ks5.keys) != 2 || ks5.keys[1].kid != ks3.keys[0].kid || slices.Contains(kids(ks5), ks1.keys[0].kid) {
		t.Errorf("after 2*rotate kids = %v; want [new %s], without %s", kids(ks5), ks3.keys[0].kid, ks1.keys[0].kid)
	}

	// Long downtime: everything but a fresh key is dropped.
	ks6, err := LoadOrCreateKeySet(path, rotate, t0.Add(100*rotate))
	if err != nil {
		t.Fatal(err)
	}
	if len(ks6.keys) != 1 || slices.Contains(kids(ks5), ks6.keys[0].kid) {
		t.Errorf("after long downtime kids = %v, want one new key", kids(ks6))
	}

	// The atomic write leaves no temporary files behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only the key file", names)
	}
}

func TestLoadOrCreateKeySetDefaultRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	ks1, err := LoadOrCreateKeySet(path, 0, testNow)
	if err != nil {
		t.Fatal(err)
	}
	ks2, err := LoadOrCreateKeySet(path, 0, testNow.Add(DefaultRotateAfter-time.Minute))
	if err != nil || len(ks2.keys) != 1 || ks2.keys[0].kid != ks1.keys[0].kid {
		t.Fatalf("before 30 days: %v, %v", kids(ks2), err)
	}
	ks3, err := LoadOrCreateKeySet(path, 0, testNow.Add(DefaultRotateAfter))
	if err != nil || len(ks3.keys) != 2 {
		t.Fatalf("at 30 days: %v, %v", kids(ks3), err)
	}
}

func TestLoadOrCreateKeySetRejects(t *testing.T) {
	key := fixedKey(t, "1")
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	kid, _ := thumbprint(&key.PublicKey)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.MarshalPKCS8PrivateKey(p384)
	entry := func(kid string, der []byte) keyFileEntry {
		return keyFileEntry{Kid: kid, Created: testNow, PKCS8: der}
	}
	file := func(version int, entries ...keyFileEntry) []byte {
		b, _ := json.Marshal(keyFile{Version: version, Keys: entries})
		return b
	}

	for _, tc := range []struct {
		name    string
		content []byte
		mode    os.FileMode
		want    string
	}{
		{"valid file is accepted", file(1, entry(kid, der)), 0o600, ""},
		{"group-readable", file(1, entry(kid, der)), 0o640, "mode"},
		{"world-readable", file(1, entry(kid, der)), 0o644, "mode"},
		{"not JSON", []byte("-----BEGIN EC PRIVATE KEY-----"), 0o600, "parse"},
		{"empty file", nil, 0o600, "parse"},
		{"unknown version", file(2, entry(kid, der)), 0o600, "version"},
		{"no keys", file(1), 0o600, "no keys"},
		{"kid does not match key", file(1, entry("someone-elses-kid", der)), 0o600, "thumbprint"},
		{"bad PKCS8", file(1, entry(kid, []byte("junk"))), 0o600, "key 0"},
		{"RSA key", file(1, entry(kid, rsaDER)), 0o600, "P-256"},
		{"P-384 key", file(1, entry(kid, p384DER)), 0o600, "P-256"},
		{"duplicate key", file(1, entry(kid, der), entry(kid, der)), 0o600, "duplicate"},
		{"missing created", file(1, keyFileEntry{Kid: kid, PKCS8: der}), 0o600, "created"},
		{"oversized", append(file(1, entry(kid, der)), bytes.Repeat([]byte(" "), maxKeyFileBytes)...), 0o600, "larger"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys.json")
			if err := os.WriteFile(path, tc.content, tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil { // WriteFile honours umask
				t.Fatal(err)
			}
			ks, err := LoadOrCreateKeySet(path, time.Hour, testNow)
			if tc.want == "" {
				if err != nil || ks.keys[0].kid != kid {
					t.Fatalf("got %v, %v; want the file's key", ks, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, %v; want an error mentioning %q", ks, err, tc.want)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error does not name the file: %v", err)
			}
			// A rejected file is left as it was, never replaced by new keys.
			if now, _ := os.ReadFile(path); !bytes.Equal(now, tc.content) {
				t.Error("rejected file was modified")
			}
		})
	}

	t.Run("negative rotateAfter", func(t *testing.T) {
		if _, err := LoadOrCreateKeySet(filepath.Join(t.TempDir(), "k.json"), -time.Hour, testNow); err == nil {
			t.Error("accepted a negative rotateAfter")
		}
	})
	t.Run("path is a directory", func(t *testing.T) {
		if _, err := LoadOrCreateKeySet(t.TempDir(), time.Hour, testNow); err == nil {
			t.Error("accepted a directory")
		}
	})
}
