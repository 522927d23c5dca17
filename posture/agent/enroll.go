package agent

// Enrollment, the agent's side of the device authorization grant (RFC 8628)
// that posture.Devices runs on the edge: send the device's public key and a
// proof of possession to {server}/.ztna/device/enroll, show the user the
// code and the URL to approve it at, poll {server}/.ztna/device/token until
// the user decides, and keep the certificate the edge issues.
//
// The private key is made on the device and never leaves it. Enrollment
// only needs a crypto.Signer with an ECDSA P-256 public key, so a TPM or
// Secure Enclave key can replace the key file without touching the protocol.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ztna-dev/ztna/internal/files"
	"github.com/ztna-dev/ztna/posture"
)

// Files in the agent's state directory.
const (
	KeyFile    = "device-key.pem"  // PKCS#8 ECDSA P-256, mode 0600; never sent anywhere
	CertFile   = "device-cert.pem" // the device's client certificate
	CAFile     = "device-ca.pem"   // the device CA that issued it
	DeviceFile = "device.json"     // {"device_id","server","enrolled_at"}
)

// Enrollment endpoints on the edge's auth host.
const (
	enrollPath = "/.ztna/device/enroll"
	tokenPath  = "/.ztna/device/token"
)

const (
	// callTimeout bounds each HTTP exchange with the edge.
	callTimeout = 10 * time.Second
	// maxResponseBytes bounds every response body read from the edge.
	maxResponseBytes = 64 << 10
	// maxStateFileBytes bounds every file read from the state directory.
	maxStateFileBytes = 64 << 10
	// defaultInterval is RFC 8628's polling interval when the edge names
	// none; minInterval and maxInterval keep a confused edge from making
	// the agent hammer it or fall asleep.
	defaultInterval = 5
	minInterval     = 1
	maxInterval     = 60
	// slowDownStep is what a slow_down answer adds to the interval (the
	// edge's protocol; RFC 8628 itself says 5 seconds).
	slowDownStep = 2
	// maxExpiresIn bounds how long the agent believes an enrollment can
	// wait, whatever the edge says.
	maxExpiresIn = 60 * 60
	// maxTransientFailures is how many network errors or 5xx answers in a
	// row the polling loop rides out before it gives up.
	maxTransientFailures = 3
	maxEnrollmentIDLen   = 256
	maxUserCodeLen       = 32
	maxURILen            = 2048
	maxDeviceIDLen       = 64
	maxMessageLen        = 300
)

var (
	// ErrDenied: the user (or an admin) refused the enrollment.
	ErrDenied = errors.New("enrollment denied")
	// ErrExpired: nobody approved the enrollment in time; start again.
	ErrExpired = errors.New("enrollment expired before it was approved")
	// ErrNotEnrolled: the state directory holds no enrolled device.
	ErrNotEnrolled = errors.New("this device is not enrolled")
)

// EnrollClient enrolls this device with an edge.
type EnrollClient struct {
	// Server is the edge's auth origin, https://AUTH_HOST[:PORT] (see
	// ParseServer).
	Server string
	// HTTPClient talks to the edge; nil means a client with the system's
	// roots. Redirects are never followed, whatever it is set to: an
	// enrollment must not be moved to another host.
	HTTPClient *http.Client
	// Out receives what the user must do (the code and the URL); nil
	// means os.Stdout.
	Out io.Writer

	// second is how long one second of the protocol's intervals lasts;
	// zero means time.Second. Tests shorten it.
	second time.Duration
}

// ParseServer checks that raw is an https origin (scheme, host, optional
// port; no path, query, fragment or user info) and returns it without a
// trailing slash.
func ParseServer(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("server %q is not a URL", raw)
	}
	switch {
	case u.Scheme != "https":
		return "", fmt.Errorf("server %q must start with https://", raw)
	case u.Host == "" || u.Hostname() == "":
		return "", fmt.Errorf("server %q has no host", raw)
	case u.User != nil:
		return "", fmt.Errorf("server %q must not carry user info", raw)
	case u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", fmt.Errorf("server %q must be an origin like https://auth.example.com, without a path", raw)
	}
	return u.Scheme + "://" + u.Host, nil
}

// deviceState is device.json.
type deviceState struct {
	DeviceID   string    `json:"device_id"`
	Server     string    `json:"server"`
	EnrolledAt time.Time `json:"enrolled_at"`
}

type enrollRequest struct {
	PublicKey string `json:"public_key"`
	Name      string `json:"name"`
	Platform  string `json:"platform"`
	Proof     string `json:"proof"`
}

type enrollResponse struct {
	EnrollmentID            string `json:"enrollment_id"`
	UserCode                string `json:"user_code"`
	VerificationURI         string `json:"verification_uri"`
	VerificationURIComplete string `json:"verification_uri_complete"`
	ExpiresIn               int    `json:"expires_in"`
	Interval                int    `json:"interval"`
}

type tokenRequest struct {
	EnrollmentID string `json:"enrollment_id"`
}

type tokenResponse struct {
	DeviceID    string `json:"device_id"`
	Certificate string `json:"certificate"`
	CA          string `json:"ca"`
}

type errorResponse struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// Enroll enrolls this device: it loads (or makes, once) the device key in
// stateDir, starts an enrollment named name (the host name when empty),
// prints the code and URL the user must confirm, and polls until the user
// approves, then writes the certificate, the CA and device.json to stateDir
// and returns the device ID. It fails with ErrDenied, ErrExpired, or the
// context's error; every HTTP exchange is bounded by its own timeout too. A
// device already enrolled keeps its key and gets a new device ID and
// certificate.
func (c *EnrollClient) Enroll(ctx context.Context, stateDir, name string) (string, error) {
	if _, err := ParseServer(c.Server); err != nil {
		return "", err
	}
	key, err := LoadOrCreateKey(stateDir)
	if err != nil {
		return "", err
	}
	return c.enroll(ctx, key, stateDir, name)
}

// enroll runs the protocol with any device key that can sign.
func (c *EnrollClient) enroll(ctx context.Context, key crypto.Signer, stateDir, name string) (string, error) {
	server, err := ParseServer(c.Server)
	if err != nil {
		return "", err
	}
	pub, ok := key.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return "", errors.New("the device key must be ECDSA P-256")
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encode device key: %w", err)
	}
	fingerprint, err := posture.KeyFingerprint(pub)
	if err != nil {
		return "", err
	}
	proof, err := signEnrollProof(key, pub)
	if err != nil {
		return "", err
	}
	if name == "" {
		if name, err = os.Hostname(); err != nil || name == "" {
			name = "unnamed " + runtime.GOOS + " device"
		}
	}
	out := c.Out
	if out == nil {
		out = os.Stdout
	}
	hc, done := c.httpClient()
	defer done()

	var started enrollResponse
	if err := c.call(ctx, hc, server+enrollPath, enrollRequest{
		PublicKey: base64.StdEncoding.EncodeToString(der),
		Name:      deviceName(name),
		Platform:  runtime.GOOS,
		Proof:     base64.StdEncoding.EncodeToString(proof),
	}, &started); err != nil {
		return "", fmt.Errorf("start enrollment at %s: %w", server, err)
	}
	if err := started.validate(); err != nil {
		return "", fmt.Errorf("start enrollment at %s: %w", server, err)
	}
	link := started.VerificationURIComplete
	if link == "" {
		link = started.VerificationURI
	}
	fmt.Fprintf(out, "To enroll this device, open %s in a browser where you are signed in, and confirm the code %s.\n", link, started.UserCode)
	fmt.Fprintf(out, "The page shows the device key's fingerprint; it must start with %s.\n", fingerprint[:16])
	fmt.Fprintf(out, "Waiting for approval (up to %s)…\n", time.Duration(started.ExpiresIn)*time.Second)

	tok, err := c.poll(ctx, hc, server, &started)
	if err != nil {
		return "", err
	}
	certDER, caPEM, err := checkIssued(tok, pub)
	if err != nil {
		return "", fmt.Errorf("the certificate from %s: %w", server, err)
	}
	if err := saveEnrollment(stateDir, certDER, caPEM, deviceState{DeviceID: tok.DeviceID, Server: server, EnrolledAt: time.Now().UTC()}); err != nil {
		return "", fmt.Errorf("enrolled as %s, but saving the certificate failed (enroll again): %w", tok.DeviceID, err)
	}
	return tok.DeviceID, nil
}

// signEnrollProof is posture.SignEnrollProof for any crypto.Signer: an
// ECDSA signer's Sign returns the ASN.1 signature over the SHA-256 digest.
func signEnrollProof(key crypto.Signer, pub *ecdsa.PublicKey) ([]byte, error) {
	msg, err := posture.EnrollProofMessage(pub)
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(msg)
	sig, err := key.Sign(rand.Reader, h[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign enrollment proof: %w", err)
	}
	return sig, nil
}

// httpClient returns the client to use and a function that releases what
// Enroll made for itself.
func (c *EnrollClient) httpClient() (*http.Client, func()) {
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	if c.HTTPClient != nil {
		hc := *c.HTTPClient
		hc.CheckRedirect = noRedirect
		return &hc, func() {}
	}
	hc := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone(), CheckRedirect: noRedirect}
	return hc, hc.CloseIdleConnections
}

func (c *EnrollClient) unit() time.Duration {
	if c.second > 0 {
		return c.second
	}
	return time.Second
}

// poll asks for the result at the edge's interval until it is decided.
func (c *EnrollClient) poll(ctx context.Context, hc *http.Client, server string, started *enrollResponse) (*tokenResponse, error) {
	interval := started.Interval
	deadline := time.Now().Add(time.Duration(started.ExpiresIn) * c.unit())
	timer := time.NewTimer(time.Duration(interval) * c.unit())
	defer timer.Stop()
	transient := 0
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for approval: %w", ctx.Err())
		case <-timer.C:
		}
		var tok tokenResponse
		err := c.call(ctx, hc, server+tokenPath, tokenRequest{EnrollmentID: started.EnrollmentID}, &tok)
		var ee *edgeError
		switch {
		case err == nil:
			return &tok, nil
		case ctx.Err() != nil:
			return nil, fmt.Errorf("waiting for approval: %w", ctx.Err())
		case errors.As(err, &ee) && ee.status == http.StatusBadRequest:
			transient = 0
			switch ee.code {
			case "authorization_pending":
			case "slow_down":
				interval = min(interval+slowDownStep, maxInterval)
			case "access_denied":
				return nil, ErrDenied
			case "expired_token":
				return nil, ErrExpired
			default:
				return nil, fmt.Errorf("waiting for approval at %s: %w", server, err)
			}
		case isTransient(err):
			if transient++; transient > maxTransientFailures {
				return nil, fmt.Errorf("waiting for approval at %s: %w", server, err)
			}
		default:
			return nil, fmt.Errorf("waiting for approval at %s: %w", server, err)
		}
		if !time.Now().Before(deadline) {
			return nil, ErrExpired
		}
		timer.Reset(time.Duration(interval) * c.unit())
	}
}

// edgeError is an answer from the edge other than 200.
type edgeError struct {
	status  int
	code    string // the "error" member of a JSON error body, if any
	message string
}

func (e *edgeError) Error() string {
	switch {
	case e.code != "" && e.message != "":
		return fmt.Sprintf("the edge answered %d %s: %s", e.status, e.code, e.message)
	case e.code != "":
		return fmt.Sprintf("the edge answered %d %s", e.status, e.code)
	default:
		return fmt.Sprintf("the edge answered %d %s", e.status, http.StatusText(e.status))
	}
}

// transportError is a failure to exchange a request with the edge at all.
type transportError struct{ err error }

func (e *transportError) Error() string { return e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

// isTransient reports whether a poll may simply be tried again: the edge
// was unreachable or had a temporary problem.
func isTransient(err error) bool {
	var te *transportError
	if errors.As(err, &te) {
		return true
	}
	var ee *edgeError
	return errors.As(err, &ee) && (ee.status >= 500 || ee.status == http.StatusTooManyRequests)
}

// call POSTs req as JSON to u and decodes a 200 answer into resp; any other
// answer is an *edgeError. The exchange is bounded by callTimeout and the
// answer by maxResponseBytes.
func (c *EnrollClient) call(ctx context.Context, hc *http.Client, u string, req, resp any) error {
	return postJSON(ctx, hc, u, req, resp)
}

// postJSON is call for any client of the edge.
func postJSON(ctx context.Context, hc *http.Client, u string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	return post(ctx, hc, u, "application/json", body, resp)
}

// post POSTs body as contentType to u and decodes a 200 JSON answer into
// resp; any other answer is an *edgeError. The exchange is bounded by
// callTimeout and the answer by maxResponseBytes.
func post(ctx context.Context, hc *http.Client, u, contentType string, body []byte, resp any) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", contentType)
	hreq.Header.Set("Accept", "application/json")
	hresp, err := hc.Do(hreq)
	if err != nil {
		return &transportError{err}
	}
	defer hresp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(hresp.Body, maxResponseBytes+1))
	if err != nil {
		return &transportError{fmt.Errorf("read answer: %w", err)}
	}
	if len(data) > maxResponseBytes {
		return fmt.Errorf("the edge's answer is larger than %d bytes", maxResponseBytes)
	}
	if hresp.StatusCode != http.StatusOK {
		ee := &edgeError{status: hresp.StatusCode}
		var er errorResponse
		if json.Unmarshal(data, &er) == nil && isToken(er.Error, 64) {
			ee.code = er.Error
			ee.message = cleanMessage(er.Message)
		}
		return ee
	}
	if err := json.Unmarshal(data, resp); err != nil {
		return fmt.Errorf("the edge's answer is not the expected JSON: %w", err)
	}
	return nil
}

// validate checks what the edge sent before any of it is printed or used.
func (r *enrollResponse) validate() error {
	if r.EnrollmentID == "" || len(r.EnrollmentID) > maxEnrollmentIDLen || !isPrintableASCII(r.EnrollmentID) {
		return errors.New("the edge's answer has no usable enrollment_id")
	}
	if r.UserCode == "" || len(r.UserCode) > maxUserCodeLen || !isPrintableASCII(r.UserCode) || strings.ContainsRune(r.UserCode, ' ') {
		return errors.New("the edge's answer has no usable user_code")
	}
	if r.VerificationURIComplete != "" {
		if err := checkBrowserURL(r.VerificationURIComplete); err != nil {
			return fmt.Errorf("verification_uri_complete: %w", err)
		}
	}
	if r.VerificationURI != "" {
		if err := checkBrowserURL(r.VerificationURI); err != nil {
			return fmt.Errorf("verification_uri: %w", err)
		}
	}
	if r.VerificationURIComplete == "" && r.VerificationURI == "" {
		return errors.New("the edge's answer has no verification_uri")
	}
	if r.ExpiresIn <= 0 {
		return errors.New("the edge's answer has no expires_in")
	}
	r.ExpiresIn = min(r.ExpiresIn, maxExpiresIn)
	if r.Interval <= 0 {
		r.Interval = defaultInterval
	}
	r.Interval = min(max(r.Interval, minInterval), maxInterval)
	return nil
}

// checkBrowserURL accepts only an https URL made of printable ASCII: it is
// printed to a terminal and opened by a person.
func checkBrowserURL(s string) error {
	if len(s) > maxURILen || !isPrintableASCII(s) || strings.ContainsRune(s, ' ') {
		return errors.New("not a printable URL")
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		return errors.New("not an https URL")
	}
	return nil
}

// checkIssued checks that the edge issued a client certificate for this
// device's key, signed by the CA it sent, naming the device it said, and
// returns the certificate (DER) and the CA (PEM, one certificate).
func checkIssued(tok *tokenResponse, pub *ecdsa.PublicKey) (certDER, caPEM []byte, err error) {
	if tok.DeviceID == "" || len(tok.DeviceID) > maxDeviceIDLen || !isPrintableASCII(tok.DeviceID) || strings.ContainsAny(tok.DeviceID, " /") {
		return nil, nil, errors.New("no usable device_id")
	}
	cert, err := parseOneCert([]byte(tok.Certificate))
	if err != nil {
		return nil, nil, fmt.Errorf("certificate: %w", err)
	}
	ca, err := parseOneCert([]byte(tok.CA))
	if err != nil {
		return nil, nil, fmt.Errorf("ca: %w", err)
	}
	if !ca.IsCA {
		return nil, nil, errors.New("the CA certificate is not a CA")
	}
	if !pub.Equal(cert.PublicKey) {
		return nil, nil, errors.New("it is not for this device's key")
	}
	if err := cert.CheckSignatureFrom(ca); err != nil {
		return nil, nil, fmt.Errorf("it is not signed by the CA sent with it: %w", err)
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return nil, nil, errors.New("it is not a client certificate")
	}
	if id, _ := certIdentity(cert); id != tok.DeviceID || cert.Subject.CommonName != tok.DeviceID {
		return nil, nil, fmt.Errorf("it does not name device %s", tok.DeviceID)
	}
	return cert.Raw, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), nil
}

// certIdentity reads the device and user IDs from the certificate's
// ztna://device/ID and ztna://user/ID URIs.
func certIdentity(cert *x509.Certificate) (deviceID, userID string) {
	for _, u := range cert.URIs {
		if u.Scheme != "ztna" || !strings.HasPrefix(u.EscapedPath(), "/") {
			continue
		}
		id, err := url.PathUnescape(u.EscapedPath()[1:])
		if err != nil {
			continue
		}
		switch u.Host {
		case "device":
			deviceID = id
		case "user":
			userID = id
		}
	}
	return deviceID, userID
}

// parseOneCert parses data holding exactly one PEM CERTIFICATE.
func parseOneCert(data []byte) (*x509.Certificate, error) {
	b, rest := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("more than one PEM block")
	}
	return x509.ParseCertificate(b.Bytes)
}

// saveEnrollment writes the certificate, the CA and, last, device.json
// (which marks the state as enrolled), each atomically with mode 0600.
func saveEnrollment(stateDir string, certDER, caPEM []byte, st deviceState) error {
	js, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
	}{
		{CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})},
		{CAFile, caPEM},
		{DeviceFile, append(js, '\n')},
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(stateDir, f.name), f.data); err != nil {
			return err
		}
	}
	return nil
}

// LoadOrCreateKey returns the device key kept in stateDir, making the
// directory (0700) and the key (ECDSA P-256, PKCS#8 PEM, 0600) the first
// time. It refuses a key file that group or others can read or write
// (whoever reads the key is the device) and a state directory they can
// write to. Two agents starting at once
// end up with the same key.
func LoadOrCreateKey(stateDir string) (*ecdsa.PrivateKey, error) {
	if err := ensureStateDir(stateDir); err != nil {
		return nil, err
	}
	path := filepath.Join(stateDir, KeyFile)
	for range 3 { // a lost creation race re-reads what the winner wrote
		key, err := loadKey(path)
		if !errors.Is(err, fs.ErrNotExist) {
			return key, err
		}
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate device key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, fmt.Errorf("encode device key: %w", err)
		}
		created, err := writeNewFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		if err != nil {
			return nil, fmt.Errorf("write device key %s: %w", path, err)
		}
		if created {
			return priv, nil
		}
	}
	return nil, fmt.Errorf("device key %s keeps changing while being created", path)
}

// ensureStateDir makes stateDir with mode 0700, or checks that only its
// owner can write to an existing one.
func ensureStateDir(stateDir string) error {
	if stateDir == "" {
		return errors.New("no state directory")
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	fi, err := os.Stat(stateDir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state directory %s is not a directory", stateDir)
	}
	// The key file protects itself (0600); a directory others can write to
	// would let them replace the files around it.
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("state directory %s has mode %#o: other users can change its files; want 0700 (chmod 700 %s)", stateDir, fi.Mode().Perm(), stateDir)
	}
	return nil
}

// loadKey reads the device key file, refusing one that group or others can
// read or write.
func loadKey(path string) (*ecdsa.PrivateKey, error) {
	data, fi, err := readStateFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("device key %s: %w", path, err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("device key %s has mode %#o, open to other users; want 0600 (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("device key %s: no PEM PRIVATE KEY (PKCS#8)", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("device key %s: %w", path, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("device key %s: not an ECDSA P-256 key", path)
	}
	return key, nil
}

// readStateFile reads a regular file of at most maxStateFileBytes.
func readStateFile(path string) ([]byte, fs.FileInfo, error) {
	return files.ReadRegular(path, maxStateFileBytes)
}

// writeTemp writes data to a new 0600 file next to path, synced, and
// returns its name for the caller to move into place (and remove).
func writeTemp(path string, data []byte) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*") // mode 0600
	if err != nil {
		return "", err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

// writeFileAtomic replaces path with data (mode 0600): readers see the old
// file or the new one, never a part.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// writeNewFile creates path with data (mode 0600) unless it exists, and
// reports whether it did; a concurrent creator is never overwritten.
func writeNewFile(path string, data []byte) (bool, error) {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, err
	}
	syncDir(filepath.Dir(path))
	return true, nil
}

// syncDir makes a rename or link in dir durable; it is best effort (not
// every platform can sync a directory).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// Status is what the state directory says about this device's enrollment
// and, once `ztna agent run` has reported, about its posture.
type Status struct {
	DeviceID   string
	UserID     string // the user who approved the enrollment, from the certificate
	Server     string
	EnrolledAt time.Time
	Subject    string // the certificate's subject, e.g. "CN=dev-…,O=ztna devices"
	Issuer     string
	NotBefore  time.Time
	NotAfter   time.Time
	// Expired is whether NotAfter has passed: the edge no longer accepts
	// the certificate and the device must renew or enroll again.
	Expired bool
	// RenewalDue is whether less than a third of the certificate's
	// lifetime is left (or it has expired): the running agent renews it,
	// with the device key, before its next report.
	RenewalDue bool
	// KeyFile, CertFile and CAFile are the paths of the state files, for
	// importing the certificate into browsers.
	KeyFile, CertFile, CAFile string
	// LastReport is what the agent recorded after its latest report
	// attempt; nil when it has never reported (or the record is
	// unreadable, see LastReportErr).
	LastReport *LastReport
	// LastReportErr says why last-report.json could not be read; the rest
	// of the status is still valid.
	LastReportErr error
}

// ReadStatus reads the enrollment kept in stateDir. It fails with
// ErrNotEnrolled when there is none, and with a clear error when the files
// do not belong together.
func ReadStatus(stateDir string) (Status, error) {
	return readStatus(stateDir, time.Now())
}

func readStatus(stateDir string, now time.Time) (Status, error) {
	st := Status{
		KeyFile:  filepath.Join(stateDir, KeyFile),
		CertFile: filepath.Join(stateDir, CertFile),
		CAFile:   filepath.Join(stateDir, CAFile),
	}
	e, err := loadEnrolled(stateDir)
	if e != nil {
		st.DeviceID, st.Server, st.EnrolledAt = e.dev.DeviceID, e.dev.Server, e.dev.EnrolledAt
	}
	if err != nil {
		return st, err
	}
	cert := e.cert
	_, st.UserID = certIdentity(cert)
	st.Subject = cert.Subject.String()
	st.Issuer = cert.Issuer.String()
	st.NotBefore, st.NotAfter = cert.NotBefore, cert.NotAfter
	st.Expired = now.After(cert.NotAfter)
	st.RenewalDue = renewalDue(cert, now)
	st.LastReport, st.LastReportErr = readLastReport(stateDir)
	return st, nil
}

// enrolled is an enrollment read from the state directory, with its files
// checked to belong together.
type enrolled struct {
	dev  deviceState
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// loadEnrolled reads device.json, the certificate and the key from
// stateDir and checks that they belong together. It never creates
// anything: without device.json it fails with ErrNotEnrolled. On a later
// failure it still returns what device.json said (without cert and key).
func loadEnrolled(stateDir string) (*enrolled, error) {
	devFile := filepath.Join(stateDir, DeviceFile)
	data, _, err := readStateFile(devFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (no %s)", ErrNotEnrolled, devFile)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", devFile, err)
	}
	var e enrolled
	if err := json.Unmarshal(data, &e.dev); err != nil {
		return nil, fmt.Errorf("%s: %w", devFile, err)
	}
	if e.dev.DeviceID == "" {
		return nil, fmt.Errorf("%s: no device_id", devFile)
	}
	certFile, keyFile := filepath.Join(stateDir, CertFile), filepath.Join(stateDir, KeyFile)
	data, _, err = readStateFile(certFile)
	if err != nil {
		return &e, fmt.Errorf("device certificate: %w", err)
	}
	cert, err := parseOneCert(data)
	if err != nil {
		return &e, fmt.Errorf("device certificate %s: %w", certFile, err)
	}
	if id, _ := certIdentity(cert); id != e.dev.DeviceID {
		return &e, fmt.Errorf("device certificate %s is for device %q, but %s says %q; enroll again", certFile, id, devFile, e.dev.DeviceID)
	}
	key, err := loadKey(keyFile)
	if err != nil {
		return &e, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return &e, fmt.Errorf("device certificate %s is not for the key in %s; enroll again", certFile, keyFile)
	}
	e.cert, e.key = cert, key
	return &e, nil
}

// cleanMessage makes an edge's error message safe to print on one line.
func cleanMessage(s string) string {
	s = strings.TrimSpace(posture.CleanText(s))
	if len(s) > maxMessageLen {
		cut := maxMessageLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// isToken reports whether s is a short protocol word like
// authorization_pending.
func isToken(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r == '-' || r == '.' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')) {
			return false
		}
	}
	return true
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// maxDeviceName is the edge's limit on a device name (posture enrollment).
const maxDeviceName = 64

// deviceName keeps a name (by default the host name) within the edge's
// limit, cut at a character boundary, with control characters removed.
func deviceName(name string) string {
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, strings.TrimSpace(name))
	for len(name) > maxDeviceName {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	return name
}
