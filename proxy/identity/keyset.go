package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"
)

// maxKeyFileBytes bounds the key file read; a real file holds a handful of
// keys and is a few KiB.
const maxKeyFileBytes = 1 << 20

// keyFileVersion is written into the key file so a future format change can
// be detected instead of misread.
const keyFileVersion = 1

// KeySet is the edge's set of ES256 signing keys: the current key, which
// signs, and older keys that are still published so that assertions signed
// before a rotation keep verifying until they expire. A KeySet is immutable
// and safe for concurrent use; build one with LoadOrCreateKeySet or
// NewKeySet (the zero value has no keys and is not usable).
type KeySet struct {
	keys []signingKey // newest (current) first
	jwks []byte
}

type signingKey struct {
	kid     string
	created time.Time
	priv    *ecdsa.PrivateKey
}

// NewKeySet returns an in-memory key set (for tests and embedding); the first
// key is current. It panics if no key is given or a key is not on P-256,
// which are programming errors.
func NewKeySet(keys ...*ecdsa.PrivateKey) *KeySet {
	if len(keys) == 0 {
		panic("identity: NewKeySet needs at least one key")
	}
	sk := make([]signingKey, 0, len(keys))
	for _, k := range keys {
		kid, err := thumbprint(&k.PublicKey)
		if err != nil {
			panic("identity: NewKeySet: " + err.Error())
		}
		sk = append(sk, signingKey{kid: kid, priv: k})
	}
	return newKeySet(sk)
}

func newKeySet(keys []signingKey) *KeySet {
	ks := &KeySet{keys: keys}
	ks.jwks = ks.buildJWKS()
	return ks
}

// Signer returns a signer that signs with the current key and fills in
// issuer as iss when the claims leave it empty.
func (k *KeySet) Signer(issuer string) *Signer {
	cur := k.keys[0]
	hdr, _ := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{"ES256", cur.kid, "JWT"})
	prefix := base64.RawURLEncoding.EncodeToString(hdr) + "."
	return &Signer{issuer: issuer, key: cur.priv, kid: cur.kid, prefix: prefix, now: time.Now}
}

// JWKS returns the public keys as a JWKS document, {"keys":[...]}, each key
// with kid, "alg":"ES256" and "use":"sig". It never contains private key
// material. The returned slice is the caller's to keep.
func (k *KeySet) JWKS() []byte {
	return bytes.Clone(k.jwks)
}

func (k *KeySet) buildJWKS() []byte {
	doc := jwksDoc{Keys: make([]jwk, 0, len(k.keys))}
	for _, sk := range k.keys {
		x, y, err := publicXY(&sk.priv.PublicKey)
		if err != nil {
			// Keys were validated when the set was built.
			panic("identity: " + err.Error())
		}
		doc.Keys = append(doc.Keys, jwk{
			Kty: "EC", Crv: "P-256",
			X:   base64.RawURLEncoding.EncodeToString(x),
			Y:   base64.RawURLEncoding.EncodeToString(y),
			Kid: sk.kid, Alg: "ES256", Use: "sig",
		})
	}
	b, err := json.Marshal(doc)
	if err != nil {
		panic("identity: " + err.Error())
	}
	return b
}

type jwksDoc struct {
	Keys []jwk `json:"keys"`
}

type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid,omitempty"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
}

// publicXY returns the 32-byte big-endian affine coordinates of a P-256 key.
func publicXY(pub *ecdsa.PublicKey) (x, y []byte, err error) {
	if pub.Curve != elliptic.P256() {
		return nil, nil, errors.New("key is not on P-256")
	}
	b, err := pub.Bytes() // 0x04 || X || Y
	if err != nil {
		return nil, nil, err
	}
	return b[1:33], b[33:65], nil
}

// thumbprint is the RFC 7638 JWK thumbprint (SHA-256, base64url), used as
// kid so a key ID is derived from the key and cannot silently point at a
// different key.
func thumbprint(pub *ecdsa.PublicKey) (string, error) {
	x, y, err := publicXY(pub)
	if err != nil {
		return "", err
	}
	// RFC 7638: required members only, lexicographic order, no whitespace.
	var b bytes.Buffer
	b.WriteString(`{"crv":"P-256","kty":"EC","x":"`)
	b.WriteString(base64.RawURLEncoding.EncodeToString(x))
	b.WriteString(`","y":"`)
	b.WriteString(base64.RawURLEncoding.EncodeToString(y))
	b.WriteString(`"}`)
	sum := sha256.Sum256(b.Bytes())
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// keyFile is the on-disk form of a KeySet.
type keyFile struct {
	Version int            `json:"version"`
	Keys    []keyFileEntry `json:"keys"`
}

type keyFileEntry struct {
	Kid     string    `json:"kid"`
	Created time.Time `json:"created"`
	PKCS8   []byte    `json:"pkcs8"` // DER, base64 in JSON
}

// LoadOrCreateKeySet loads the edge's signing keys from path, a JSON file
// with mode 0600, creating it with one new key if it does not exist.
//
// If the newest key is at least rotateAfter old (0 means DefaultRotateAfter)
// a new key is added and becomes current; keys older than 2*rotateAfter are
// dropped (the current key never is). Older keys stay in the JWKS so tokens
// signed just before a rotation keep verifying. Any change is saved
// atomically (temporary file, fsync, rename). Rotation happens only when this
// is called, so the edge calls it at start and on reload.
//
// A file readable by group or others is refused rather than used: the keys
// would already be exposed. The file is written by one process; replicas that
// share keys must share the file, not each rotate their own.
func LoadOrCreateKeySet(path string, rotateAfter time.Duration, now time.Time) (*KeySet, error) {
	if rotateAfter < 0 {
		return nil, fmt.Errorf("identity: key set %s: negative rotateAfter %v", path, rotateAfter)
	}
	if rotateAfter == 0 {
		rotateAfter = DefaultRotateAfter
	}
	keys, err := readKeyFile(path)
	changed := false
	switch {
	case errors.Is(err, fs.ErrNotExist):
		changed = true
	case err != nil:
		return nil, fmt.Errorf("identity: key set %s: %w", path, err)
	}
	// Newest first; the newest is current.
	slices.SortStableFunc(keys, func(a, b signingKey) int { return b.created.Compare(a.created) })

	if len(keys) == 0 || now.Sub(keys[0].created) >= rotateAfter {
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("identity: key set %s: generate key: %w", path, err)
		}
		kid, err := thumbprint(&priv.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("identity: key set %s: %w", path, err)
		}
		keys = slices.Insert(keys, 0, signingKey{kid: kid, created: now.UTC().Truncate(time.Second), priv: priv})
		changed = true
	}
	kept := keys[:1]
	for _, k := range keys[1:] {
		if now.Sub(k.created) > 2*rotateAfter {
			changed = true
			continue
		}
		kept = append(kept, k)
	}
	keys = kept

	if changed {
		if err := writeKeyFile(path, keys); err != nil {
			return nil, fmt.Errorf("identity: key set %s: %w", path, err)
		}
	}
	return newKeySet(keys), nil
}

func readKeyFile(path string) ([]signingKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("mode %#o gives others access to private keys; want 0600 (chmod 600 %s)", fi.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyFileBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxKeyFileBytes)
	}
	var kf keyFile
	if err := json.Unmarshal(data, &kf); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if kf.Version != keyFileVersion {
		return nil, fmt.Errorf("unsupported version %d (want %d)", kf.Version, keyFileVersion)
	}
	if len(kf.Keys) == 0 {
		return nil, errors.New("no keys")
	}
	keys := make([]signingKey, 0, len(kf.Keys))
	seen := make(map[string]bool, len(kf.Keys))
	for i, e := range kf.Keys {
		k, err := x509.ParsePKCS8PrivateKey(e.PKCS8)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		priv, ok := k.(*ecdsa.PrivateKey)
		if !ok || priv.Curve != elliptic.P256() {
			return nil, fmt.Errorf("key %d: not an ECDSA P-256 key", i)
		}
		kid, err := thumbprint(&priv.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		if kid != e.Kid {
			return nil, fmt.Errorf("key %d: kid %q does not match the key's thumbprint %q", i, e.Kid, kid)
		}
		if seen[kid] {
			return nil, fmt.Errorf("key %d: duplicate kid %q", i, kid)
		}
		seen[kid] = true
		if e.Created.IsZero() {
			return nil, fmt.Errorf("key %d: missing created time", i)
		}
		keys = append(keys, signingKey{kid: kid, created: e.Created, priv: priv})
	}
	return keys, nil
}

// writeKeyFile replaces path atomically, so a crash leaves either the old
// or the new key set, never a truncated one.
func writeKeyFile(path string, keys []signingKey) (err error) {
	kf := keyFile{Version: keyFileVersion, Keys: make([]keyFileEntry, 0, len(keys))}
	for _, k := range keys {
		der, err := x509.MarshalPKCS8PrivateKey(k.priv)
		if err != nil {
			return err
		}
		kf.Keys = append(kf.Keys, keyFileEntry{Kid: k.kid, Created: k.created, PKCS8: der})
	}
	data, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')

	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// CreateTemp creates the file with mode 0600.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// Make the rename itself durable.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
