package posture

// The device CA: the edge's own small certificate authority that signs the
// short-lived client certificates enrolled devices present on every TLS
// connection. It is separate from the edge's assertion signing keys (a leak
// of one must not forge the other) and never signs anything but device
// leaves: its certificate has MaxPathLenZero.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ztna-dev/ztna/internal/files"
)

// Device certificate layout. The URI SANs carry the identities; CN repeats
// the device ID for people reading certificates (and for Chromium's
// auto-select filters, which match on subject fields).
const (
	deviceCACommonName = "ztna device CA"
	deviceOrganization = "ztna devices"
	uriScheme          = "ztna"
	uriHostDevice      = "device"
	uriHostUser        = "user"

	// DefaultCertTTL is the lifetime of a device certificate when Issue is
	// given none: short, because the agent renews it and a lost device must
	// stop working soon even if nobody revokes it.
	DefaultCertTTL = 24 * time.Hour
	caLifetime     = 10 * 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so a device whose clock is a little
	// behind the edge's can use a certificate the moment it gets it.
	clockSkew = time.Minute

	maxPEMFileBytes = 64 << 10
	maxIDLen        = 64
	maxUserIDLen    = 255
	// maxVerifiedLeaves bounds the cache of leaves whose signature
	// DeviceFromCert has checked; only CA-signed leaves get in.
	maxVerifiedLeaves = 10_000
)

var (
	// ErrNoDeviceCert means the connection carries no client certificate.
	ErrNoDeviceCert = errors.New("posture: no device certificate")
	// ErrBadDeviceCert is wrapped by every reason a presented certificate
	// does not identify a device (wrong CA, expired, wrong usage, malformed).
	ErrBadDeviceCert = errors.New("posture: invalid device certificate")
)

// DeviceCA issues device client certificates. It is safe for concurrent use.
type DeviceCA struct {
	cert    *x509.Certificate
	signer  crypto.Signer
	pool    *x509.CertPool
	certPEM []byte

	mu       sync.RWMutex
	verified map[string]verifiedLeaf // by the leaf's DER
}

// verifiedLeaf is what DeviceFromCert learned from a leaf whose signature it
// has checked once; the time window is still checked on every call.
type verifiedLeaf struct {
	deviceID, userID    string
	notBefore, notAfter time.Time
}

// LoadOrCreateDeviceCA loads the device CA from certFile and keyFile (PEM:
// a CERTIFICATE, and a PKCS#8 "PRIVATE KEY" or SEC 1 "EC PRIVATE KEY"). When
// neither exists it generates an ECDSA P-256 CA (CN "ztna device CA", ten
// years, no intermediates below it) and writes both, the key with mode 0600;
// when only the key exists (a crash between the two writes) it makes the
// certificate for that key. A key file readable by group or others is
// refused: every device identity would already be forgeable. Two processes
// creating the same files at once end up with one CA, not a mismatched pair.
func LoadOrCreateDeviceCA(certFile, keyFile string) (*DeviceCA, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("posture: device CA: certificate and key file names are required")
	}
	for range 3 { // a lost creation race re-reads what the winner wrote
		ca, retry, err := loadOrCreateOnce(certFile, keyFile, time.Now())
		if err != nil {
			return nil, fmt.Errorf("posture: device CA (%s, %s): %w", certFile, keyFile, err)
		}
		if !retry {
			return ca, nil
		}
	}
	return nil, fmt.Errorf("posture: device CA (%s, %s): files keep changing while being created", certFile, keyFile)
}

func loadOrCreateOnce(certFile, keyFile string, now time.Time) (ca *DeviceCA, retry bool, err error) {
	signer, err := readKeyFile(keyFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, err := os.Stat(certFile); err == nil {
			return nil, false, errors.New("the certificate exists but its key does not; refusing to make a key that cannot match it")
		}
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, false, fmt.Errorf("generate key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, false, fmt.Errorf("encode key: %w", err)
		}
		created, err := writeNewFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		if err != nil {
			return nil, false, fmt.Errorf("write key: %w", err)
		}
		if !created {
			return nil, true, nil
		}
		signer = priv
	case err != nil:
		return nil, false, fmt.Errorf("key: %w", err)
	}

	cert, err := readCertFile(certFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		der, err := createCACert(signer, now)
		if err != nil {
			return nil, false, err
		}
		created, err := writeNewFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		if err != nil {
			return nil, false, fmt.Errorf("write certificate: %w", err)
		}
		if !created {
			return nil, true, nil
		}
		if cert, err = x509.ParseCertificate(der); err != nil {
			return nil, false, err
		}
	case err != nil:
		return nil, false, fmt.Errorf("certificate: %w", err)
	}
	ca, err = newDeviceCA(cert, signer, now)
	return ca, false, err
}

func createCACert(signer crypto.Signer, now time.Time) ([]byte, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: deviceCACommonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("create certificate: %w", err)
	}
	return der, nil
}

func newDeviceCA(cert *x509.Certificate, signer crypto.Signer, now time.Time) (*DeviceCA, error) {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, errors.New("the certificate is not a CA certificate")
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("the certificate's key usage does not allow signing certificates")
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("the key does not belong to the certificate")
	}
	if now.After(cert.NotAfter) {
		return nil, fmt.Errorf("the CA certificate expired at %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &DeviceCA{
		cert:     cert,
		signer:   signer,
		pool:     pool,
		certPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		verified: make(map[string]verifiedLeaf),
	}, nil
}

func readBounded(path string) ([]byte, fs.FileInfo, error) {
	return files.ReadRegular(path, maxPEMFileBytes)
}

func readKeyFile(path string) (crypto.Signer, error) {
	data, fi, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("mode %#o gives others access to the device CA key; want 0600 (chmod 600 %s)", fi.Mode().Perm(), path)
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("no PRIVATE KEY or EC PRIVATE KEY PEM block")
		}
		var k any
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", b.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%T cannot sign", k)
		}
		return s, nil
	}
}

func readCertFile(path string) (*x509.Certificate, error) {
	data, _, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("no CERTIFICATE PEM block")
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		return c, nil
	}
}

// writeNewFile writes data to path with mode 0600 unless path already
// exists, and reports whether it did. The content goes to a temporary file
// first and is linked into place, so a crash never leaves a truncated file
// and a concurrent creator is never overwritten.
func writeNewFile(path string, data []byte) (created bool, err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // mode 0600
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, err
	}
	if d, err := os.Open(dir); err == nil { // make the link durable
		d.Sync()
		d.Close()
	}
	return true, nil
}

// Certificate returns the CA certificate (for agents and browsers that need
// to know which CA the edge asks for). Callers must not modify it.
func (ca *DeviceCA) Certificate() *x509.Certificate { return ca.cert }

// CertPEM returns the CA certificate in PEM form.
func (ca *DeviceCA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

// Pool returns a pool holding only the device CA, for tls.Config.ClientCAs.
// With it the edge's CertificateRequest names the device CA, which is what
// makes browsers offer the device certificate.
func (ca *DeviceCA) Pool() *x509.CertPool { return ca.pool.Clone() }

// Issue signs a client certificate for the device key pub, bound to deviceID
// and userID: CN = deviceID, O = "ztna devices", URI SANs
// ztna://device/<deviceID> and ztna://user/<userID> (path-escaped), EKU
// clientAuth only, valid from now-1m for ttl (DefaultCertTTL if ttl <= 0,
// never beyond the CA's own expiry), with a random 128-bit serial. It returns
// the certificate in DER.
func (ca *DeviceCA) Issue(deviceID, userID string, pub *ecdsa.PublicKey, ttl time.Duration, now time.Time) ([]byte, error) {
	if err := checkDeviceID(deviceID); err != nil {
		return nil, err
	}
	if err := checkUserID(userID); err != nil {
		return nil, err
	}
	if pub == nil || pub.Curve != elliptic.P256() {
		return nil, errors.New("posture: issue: device key must be ECDSA P-256")
	}
	if ttl <= 0 {
		ttl = DefaultCertTTL
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("posture: issue: the device CA expired at %s", ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: deviceID, Organization: []string{deviceOrganization}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{identityURI(uriHostDevice, deviceID), identityURI(uriHostUser, userID)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.signer)
	if err != nil {
		return nil, fmt.Errorf("posture: issue device certificate: %w", err)
	}
	return der, nil
}

func identityURI(host, id string) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: host, Path: "/" + id, RawPath: "/" + url.PathEscape(id)}
}

// DeviceFromCert reads the device and user out of a client certificate chain
// as TLS hands it over (certs[0] is the leaf; the rest is ignored). The leaf
// must be signed by this CA, carry EKU clientAuth, be valid at now and name
// exactly one device and one user. It runs per request: the signature is
// checked once per distinct leaf and remembered, so a repeat costs a map
// lookup. It says nothing about the registry (revocation, current serial):
// that is Devices.Check.
func (ca *DeviceCA) DeviceFromCert(certs []*x509.Certificate, now time.Time) (deviceID, userID string, err error) {
	if len(certs) == 0 || certs[0] == nil {
		return "", "", ErrNoDeviceCert
	}
	leaf := certs[0]
	ca.mu.RLock()
	v, ok := ca.verified[string(leaf.Raw)]
	ca.mu.RUnlock()
	if !ok {
		if v, err = ca.verifyLeaf(leaf); err != nil {
			return "", "", err
		}
		ca.mu.Lock()
		if len(ca.verified) >= maxVerifiedLeaves {
			for k := range ca.verified { // evict one at random: a miss only costs a signature check
				delete(ca.verified, k)
				break
			}
		}
		ca.verified[string(leaf.Raw)] = v
		ca.mu.Unlock()
	}
	if now.Before(v.notBefore) {
		return "", "", fmt.Errorf("%w: not valid before %s", ErrBadDeviceCert, v.notBefore.UTC().Format(time.RFC3339))
	}
	if now.After(v.notAfter) {
		return "", "", fmt.Errorf("%w: expired at %s", ErrBadDeviceCert, v.notAfter.UTC().Format(time.RFC3339))
	}
	return v.deviceID, v.userID, nil
}

// verifyLeaf checks everything about leaf that does not depend on the time.
func (ca *DeviceCA) verifyLeaf(leaf *x509.Certificate) (verifiedLeaf, error) {
	bad := func(format string, args ...any) (verifiedLeaf, error) {
		return verifiedLeaf{}, fmt.Errorf("%w: "+format, append([]any{ErrBadDeviceCert}, args...)...)
	}
	if !bytes.Equal(leaf.RawIssuer, ca.cert.RawSubject) {
		return bad("not issued by the device CA")
	}
	if err := leaf.CheckSignatureFrom(ca.cert); err != nil {
		return bad("not signed by the device CA")
	}
	if leaf.IsCA {
		return bad("a CA certificate")
	}
	if len(leaf.UnhandledCriticalExtensions) > 0 {
		return bad("unhandled critical extension")
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return bad("no clientAuth extended key usage")
	}
	var deviceID, userID string
	for _, u := range leaf.URIs {
		if u.Scheme != uriScheme {
			continue
		}
		host, id, err := parseIdentityURI(u)
		if err != nil {
			return bad("%v", err)
		}
		var dst *string
		switch host {
		case uriHostDevice:
			dst = &deviceID
		case uriHostUser:
			dst = &userID
		default:
			return bad("unknown identity URI kind %q", host)
		}
		if *dst != "" {
			return bad("more than one %s URI", host)
		}
		*dst = id
	}
	if deviceID == "" || userID == "" {
		return bad("missing device or user URI")
	}
	if err := checkDeviceID(deviceID); err != nil {
		return bad("%v", err)
	}
	if err := checkUserID(userID); err != nil {
		return bad("%v", err)
	}
	if leaf.Subject.CommonName != deviceID {
		return bad("subject CN does not match the device URI")
	}
	return verifiedLeaf{deviceID: deviceID, userID: userID, notBefore: leaf.NotBefore, notAfter: leaf.NotAfter}, nil
}

// parseIdentityURI accepts only the canonical form Issue writes, so one
// identity has exactly one spelling.
func parseIdentityURI(u *url.URL) (host, id string, err error) {
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Port() != "" {
		return "", "", errors.New("malformed identity URI")
	}
	p := u.EscapedPath()
	if !strings.HasPrefix(p, "/") {
		return "", "", errors.New("malformed identity URI")
	}
	id, err = url.PathUnescape(p[1:])
	if err != nil || id == "" || url.PathEscape(id) != p[1:] {
		return "", "", errors.New("malformed identity URI")
	}
	return u.Host, id, nil
}

func randomSerial() (*big.Int, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	b[0] &= 0x7f // DER integers are signed; keep it positive in 16 bytes
	return new(big.Int).SetBytes(b[:]), nil
}

// checkDeviceID bounds device IDs to what fits a URI path segment and a
// store key unchanged.
func checkDeviceID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("posture: device ID must be 1-%d characters", maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return errors.New("posture: device ID may hold only letters, digits, '-', '_' and '.'")
		}
	}
	return nil
}

// checkUserID accepts what an IdP subject can be (RFC 7519 StringOrURI, at
// most 255 ASCII characters per OIDC Core): printable, no control characters.
func checkUserID(id string) error {
	if id == "" || len(id) > maxUserIDLen {
		return fmt.Errorf("posture: user ID must be 1-%d bytes", maxUserIDLen)
	}
	if !utf8.ValidString(id) {
		return errors.New("posture: user ID is not UTF-8")
	}
	for _, r := range id {
		if !unicode.IsPrint(r) {
			return errors.New("posture: user ID holds a non-printable character")
		}
	}
	return nil
}
