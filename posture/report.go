package posture

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"
)

// Report is the device state the agent collects and signs. Every field is
// the agent's claim; the edge trusts a report only after [ParseReport] and
// [ReportVerifier.Verify] have accepted it, and even then only as far as the
// device key is trusted.
//
// The pointer bools are nil when the agent could not determine the state; a
// profile that requires the property treats nil as failing.
type Report struct {
	DeviceID       string     `json:"device_id"`
	Counter        uint64     `json:"counter"`      // strictly increasing per device, from 1
	Nonce          string     `json:"nonce"`        // the latest nonce the edge issued to this device
	CollectedAt    time.Time  `json:"collected_at"` // agent clock
	OS             OSInfo     `json:"os"`
	DiskEncrypted  *bool      `json:"disk_encrypted,omitempty"`
	FirewallActive *bool      `json:"firewall_active,omitempty"`
	ScreenLock     *bool      `json:"screen_lock,omitempty"`
	EDR            []EDRState `json:"edr,omitempty"`
}

// OSInfo describes the operating system. Kernel is the version a profile's
// min_kernel is compared with: the kernel release on Linux (uname -r), the
// Darwin version on macOS, the build version on Windows.
type OSInfo struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Kernel  string `json:"kernel"`
	Arch    string `json:"arch"`
}

// EDRState is what the agent found about one EDR/AV product. Names are
// unique within a report.
type EDRState struct {
	Name      string `json:"name"`       // the product's name as profiles refer to it, e.g. "falcon-sensor"
	Running   bool   `json:"running"`    // a process of the product is running
	PID       int    `json:"pid"`        // that process; 0 when not running
	ExePath   string `json:"exe_path"`   // the running process's executable, as the OS reports it
	ExeSHA256 string `json:"exe_sha256"` // SHA-256 of that executable's contents, lower-case hex; "" if unknown
	// ManagerAddr is the product's management server (host:port) the agent
	// probes over TLS; ManagerLastReached is the agent-clock time of the
	// last successful probe (zero: never), ManagerError the latest failure.
	ManagerAddr        string    `json:"manager_addr,omitempty"`
	ManagerLastReached time.Time `json:"manager_last_reached,omitzero"`
	ManagerError       string    `json:"manager_error,omitempty"`
}

// Limits on a report, enforced by both [SignReport] and [ParseReport] so an
// agent never sends what the edge will refuse.
const (
	// MaxReportBytes bounds the wire form of a report.
	MaxReportBytes = 64 << 10
	// MaxDeviceIDLen bounds Report.DeviceID (printable ASCII, no spaces).
	MaxDeviceIDLen = 128
	// MaxNonceLen bounds Report.Nonce (printable ASCII, no spaces).
	MaxNonceLen = 128
	// MaxEDREntries bounds Report.EDR.
	MaxEDREntries = 16
	// MaxStringLen bounds every other string, in bytes.
	MaxStringLen = 512
	// maxPID is the largest process ID of any supported OS (Windows uses
	// 32-bit unsigned IDs).
	maxPID = 1<<32 - 1
)

// reportSigContext is prepended to the payload before hashing, so a
// signature the device key makes for anything else (a TLS handshake, an
// enrollment proof, a future report version) can never verify as a report.
const reportSigContext = "ztna posture report v1\x00"

// reportSigLen is the signature size: r || s, 32 bytes each, big-endian.
const reportSigLen = 64

// reportB64 is the encoding of both parts of the wire form. Strict rejects
// non-zero padding bits, so every byte string has exactly one encoding.
var reportB64 = base64.RawURLEncoding.Strict()

// p256 order and half order: signatures are kept in low-S form (s <= n/2);
// the signer normalises and the verifier rejects the high-S twin, so a
// report has exactly one accepted signature.
var (
	reportP256Order     = elliptic.P256().Params().N
	reportP256HalfOrder = new(big.Int).Rsh(reportP256Order, 1)
)

// SignedReport is a report decoded from the wire by [ParseReport] together
// with the bytes its signature covers. Its Report must not be used for any
// decision before [ReportVerifier.Verify] accepts it.
type SignedReport struct {
	Report  Report
	payload []byte // the exact JSON bytes that were signed
	sig     []byte // r || s
}

// SignReport validates r against the report limits, encodes it and signs it
// with key, which must be an ECDSA P-256 key (an *ecdsa.PrivateKey or a
// hardware-backed crypto.Signer).
//
// The wire form is
//
//	base64url(payload) "." base64url(r || s)
//
// without padding, where payload is the JSON encoding of r (as
// encoding/json writes it; the parser accepts any strict JSON) and r || s is
// the ECDSA P-256 signature over SHA-256("ztna posture report v1" 0x00 ||
// payload), each half 32 bytes big-endian, s in low form (s <= n/2).
func SignReport(key crypto.Signer, r Report) ([]byte, error) {
	if key == nil {
		return nil, errors.New("posture: sign report: no key")
	}
	pub, ok := key.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("posture: sign report: key is not ECDSA P-256")
	}
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("posture: sign report: %w", err)
	}
	payload, err := json.Marshal(&r)
	if err != nil {
		return nil, fmt.Errorf("posture: sign report: %w", err)
	}
	size := reportB64.EncodedLen(len(payload)) + 1 + reportB64.EncodedLen(reportSigLen)
	if size > MaxReportBytes {
		return nil, fmt.Errorf("posture: sign report: %d bytes encoded, limit %d", size, MaxReportBytes)
	}
	digest := reportDigest(payload)
	// rand.Reader, not nil: a hardware signer may need real randomness.
	der, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("posture: sign report: %w", err)
	}
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 ||
		rs.R.Sign() <= 0 || rs.S.Sign() <= 0 || rs.R.Cmp(reportP256Order) >= 0 || rs.S.Cmp(reportP256Order) >= 0 {
		return nil, errors.New("posture: sign report: signer returned a malformed signature")
	}
	if rs.S.Cmp(reportP256HalfOrder) > 0 {
		rs.S.Sub(reportP256Order, rs.S)
	}
	var sig [reportSigLen]byte
	rs.R.FillBytes(sig[:32])
	rs.S.FillBytes(sig[32:])

	out := make([]byte, 0, size)
	out = reportB64.AppendEncode(out, payload)
	out = append(out, '.')
	out = reportB64.AppendEncode(out, sig[:])
	return out, nil
}

// reportDigest is the hash the signature covers.
func reportDigest(payload []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(reportSigContext))
	h.Write(payload)
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// ParseReport decodes the wire form made by [SignReport] without trusting
// it: the size is bounded before anything is decoded, the JSON must be
// strict (one object, exactly the known field names with their exact case,
// no key twice, valid UTF-8, nothing after it), and every field must be
// within the report limits. It does not check the signature: that needs the
// device's key, which [ReportVerifier.Verify] is given. Errors wrap
// [ErrMalformedReport].
func ParseReport(b []byte) (*SignedReport, error) {
	if len(b) > MaxReportBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformedReport, len(b), MaxReportBytes)
	}
	payloadB64, sigB64, ok := bytes.Cut(b, []byte{'.'})
	if !ok || !isBase64URL(payloadB64) || !isBase64URL(sigB64) {
		return nil, fmt.Errorf("%w: want two base64url parts separated by a dot", ErrMalformedReport)
	}
	if reportB64.EncodedLen(reportSigLen) != len(sigB64) {
		return nil, fmt.Errorf("%w: signature part is %d characters, want %d", ErrMalformedReport, len(sigB64), reportB64.EncodedLen(reportSigLen))
	}
	sig, err := reportB64.AppendDecode(nil, sigB64)
	if err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrMalformedReport, err)
	}
	payload, err := reportB64.AppendDecode(nil, payloadB64)
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %w", ErrMalformedReport, err)
	}
	sr := &SignedReport{payload: payload, sig: sig}
	if err := decodeReportJSON(payload, &sr.Report); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedReport, err)
	}
	if err := sr.Report.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedReport, err)
	}
	return sr, nil
}

// decodeReportJSON decodes payload into r strictly. encoding/json alone
// matches keys case-insensitively and lets a repeated key override an
// earlier one, so two parsers could read different reports from the same
// signed bytes; a structural pass rejects both before decoding.
func decodeReportJSON(payload []byte, r *Report) error {
	if !utf8.Valid(payload) {
		return errors.New("payload is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if err := scanJSON(dec, &reportShape, ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the report object")
	}
	// The structural pass guarantees only known, exactly spelled, unique
	// keys with the right nesting; Unmarshal checks the value types.
	if err := json.Unmarshal(payload, r); err != nil {
		return err
	}
	return nil
}

// jsonShape is the structure the scanner expects at one place in the
// document: an object with the given fields, an array of elem, or (neither)
// a scalar whose type json.Unmarshal checks.
type jsonShape struct {
	fields map[string]*jsonShape
	elem   *jsonShape
}

var (
	jsonScalar  = jsonShape{}
	osShape     = jsonShape{fields: fieldsOf(OSInfo{})}
	edrShape    = jsonShape{fields: fieldsOf(EDRState{})}
	edrList     = jsonShape{elem: &edrShape}
	reportShape = func() jsonShape {
		s := jsonShape{fields: fieldsOf(Report{})}
		s.fields["os"] = &osShape
		s.fields["edr"] = &edrList
		return s
	}()
)

// fieldsOf lists the JSON names of a struct's fields as scalars; callers
// replace the entries of nested structures. Deriving them from the tags
// keeps the scanner and the types from drifting apart.
func fieldsOf(v any) map[string]*jsonShape {
	t := reflect.TypeOf(v)
	fields := make(map[string]*jsonShape, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		fields[name] = &jsonScalar
	}
	return fields
}

// scanJSON reads one value with dec and checks it against shape. path names
// the place for error messages.
func scanJSON(dec *json.Decoder, shape *jsonShape, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%s: %w", pathOrTop(path), err)
	}
	delim, isDelim := tok.(json.Delim)
	switch {
	case shape.fields != nil:
		if tok == nil {
			return nil // null: json.Unmarshal leaves the zero value
		}
		if !isDelim || delim != '{' {
			return fmt.Errorf("%s: want an object", pathOrTop(path))
		}
		seen := make(map[string]bool, len(shape.fields))
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return fmt.Errorf("%s: %w", pathOrTop(path), err)
			}
			key := kt.(string) // the decoder only returns string keys in objects
			sub, known := shape.fields[key]
			if !known {
				return fmt.Errorf("%s: unknown field %q", pathOrTop(path), truncateForError(key))
			}
			if seen[key] {
				return fmt.Errorf("%s: field %q appears twice", pathOrTop(path), key)
			}
			seen[key] = true
			if err := scanJSON(dec, sub, joinPath(path, key)); err != nil {
				return err
			}
		}
		_, err := dec.Token() // '}'
		return err
	case shape.elem != nil:
		if tok == nil {
			return nil
		}
		if !isDelim || delim != '[' {
			return fmt.Errorf("%s: want an array", pathOrTop(path))
		}
		for i := 0; dec.More(); i++ {
			if err := scanJSON(dec, shape.elem, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		_, err := dec.Token() // ']'
		return err
	default:
		if isDelim {
			return fmt.Errorf("%s: want a scalar, not %v", pathOrTop(path), delim)
		}
		return nil
	}
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func pathOrTop(path string) string {
	if path == "" {
		return "report"
	}
	return path
}

// truncateForError keeps attacker-chosen text in an error short.
func truncateForError(s string) string {
	const max = 40
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// validate checks the report limits. The messages name the JSON field.
func (r *Report) validate() error {
	if err := checkToken("device_id", r.DeviceID, MaxDeviceIDLen); err != nil {
		return err
	}
	if r.Counter == 0 {
		return errors.New("counter: must be at least 1")
	}
	if err := checkToken("nonce", r.Nonce, MaxNonceLen); err != nil {
		return err
	}
	if r.CollectedAt.IsZero() {
		return errors.New("collected_at: required")
	}
	for _, f := range [...]struct{ name, v string }{
		{"os.name", r.OS.Name}, {"os.version", r.OS.Version}, {"os.kernel", r.OS.Kernel}, {"os.arch", r.OS.Arch},
	} {
		if err := checkText(f.name, f.v); err != nil {
			return err
		}
	}
	if len(r.EDR) > MaxEDREntries {
		return fmt.Errorf("edr: %d entries, limit %d", len(r.EDR), MaxEDREntries)
	}
	for i := range r.EDR {
		e := &r.EDR[i]
		at := func(f string) string { return fmt.Sprintf("edr[%d].%s", i, f) }
		if e.Name == "" {
			return fmt.Errorf("%s: required", at("name"))
		}
		for j := range i {
			if r.EDR[j].Name == e.Name {
				return fmt.Errorf("%s: %q also in edr[%d]", at("name"), truncateForError(e.Name), j)
			}
		}
		for _, f := range [...]struct{ name, v string }{
			{"name", e.Name}, {"exe_path", e.ExePath}, {"manager_addr", e.ManagerAddr}, {"manager_error", e.ManagerError},
		} {
			if err := checkText(at(f.name), f.v); err != nil {
				return err
			}
		}
		if e.PID < 0 || e.PID > maxPID {
			return fmt.Errorf("%s: out of range", at("pid"))
		}
		if e.ExeSHA256 != "" && !isLowerHex(e.ExeSHA256, sha256.Size*2) {
			return fmt.Errorf("%s: want %d lower-case hex digits", at("exe_sha256"), sha256.Size*2)
		}
	}
	return nil
}

// checkToken accepts 1..max bytes of printable ASCII without spaces: the
// form of identifiers the edge itself generates.
func checkToken(field, s string, max int) error {
	if s == "" {
		return fmt.Errorf("%s: required", field)
	}
	if len(s) > max {
		return fmt.Errorf("%s: %d bytes, limit %d", field, len(s), max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return fmt.Errorf("%s: must be printable ASCII without spaces", field)
		}
	}
	return nil
}

// checkText accepts at most MaxStringLen bytes of UTF-8 without control
// characters: these strings end up in deny pages and audit events.
func checkText(field, s string) error {
	if len(s) > MaxStringLen {
		return fmt.Errorf("%s: %d bytes, limit %d", field, len(s), MaxStringLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s: not valid UTF-8", field)
	}
	for _, c := range s {
		if c < ' ' || c == 0x7f || (c >= 0x80 && c < 0xa0) {
			return fmt.Errorf("%s: contains control characters", field)
		}
	}
	return nil
}

// CleanText returns s in the form a report's free-text fields accept
// (exe_path, manager_error, OS strings): control characters become spaces,
// invalid UTF-8 becomes U+FFFD, and the result is cut to MaxStringLen bytes
// at a character boundary. The agent uses it on what the OS and error
// messages give it, so an odd string never stops a report.
func CleanText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(c rune) rune {
		if c < ' ' || c == 0x7f || (c >= 0x80 && c < 0xa0) {
			return ' '
		}
		return c
	}, s)
	if len(s) <= MaxStringLen {
		return s
	}
	cut := MaxStringLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// isBase64URL reports whether b holds only the base64url alphabet. The
// decoder alone would skip line breaks, letting one report have many
// encodings.
func isBase64URL(b []byte) bool {
	for _, c := range b {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
