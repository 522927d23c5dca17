package posture

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// rptT0 is the fixed "now" of the report tests.
var rptT0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

const rptHash = "3b3b1f1e8a2e3c9d4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f80910"

func rptKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rptBool(b bool) *bool { return &b }

// rptReport is a complete, valid report of device dev-1 collected at rptT0.
func rptReport() Report {
	return Report{
		DeviceID:       "dev-1",
		Counter:        7,
		Nonce:          "NONCE1",
		CollectedAt:    rptT0,
		OS:             OSInfo{Name: "ubuntu", Version: "24.04", Kernel: "6.8.0-45-generic", Arch: "amd64"},
		DiskEncrypted:  rptBool(true),
		FirewallActive: rptBool(true),
		ScreenLock:     rptBool(true),
		EDR: []EDRState{{
			Name: "falcon-sensor", Running: true, PID: 812, ExePath: "/opt/CrowdStrike/falcon-sensor",
			ExeSHA256: rptHash, ManagerAddr: "ts01-b.cloudsink.net:443", ManagerLastReached: rptT0.Add(-time.Minute),
		}},
	}
}

func rptSign(t testing.TB, key crypto.Signer, r Report) []byte {
	t.Helper()
	b, err := SignReport(key, r)
	if err != nil {
		t.Fatalf("SignReport: %v", err)
	}
	return b
}

// rptSignRaw builds the wire form of an arbitrary payload with a real
// signature, so a parser test fails for the payload and not the signature.
func rptSignRaw(t testing.TB, key *ecdsa.PrivateKey, payload []byte) []byte {
	t.Helper()
	d := reportDigest(payload)
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	if s.Cmp(reportP256HalfOrder) > 0 {
		s.Sub(reportP256Order, s)
	}
	var sig [64]byte
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return []byte(reportB64.EncodeToString(payload) + "." + reportB64.EncodeToString(sig[:]))
}

// rptPayload is rptReport as a JSON object with edit applied.
func rptPayload(t testing.TB, edit func(m map[string]any)) []byte {
	t.Helper()
	b, err := json.Marshal(rptReport())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func rptEDR(m map[string]any) map[string]any { return m["edr"].([]any)[0].(map[string]any) }

func TestSignParseRoundTrip(t *testing.T) {
	key := rptKey(t)
	for name, r := range map[string]Report{
		"full": rptReport(),
		"minimal": {
			DeviceID: "d", Counter: 1, Nonce: "n", CollectedAt: rptT0,
		},
		"unknowns and unicode": func() Report {
			r := rptReport()
			r.DiskEncrypted, r.ScreenLock = nil, rptBool(false)
			r.OS.Name = "Ubuntu «noble» <b>&"
			r.EDR[0].ManagerLastReached = time.Time{}
			r.EDR[0].ManagerError = "dial tcp: lookup ts01-b.cloudsink.net: no such host"
			r.EDR = append(r.EDR, EDRState{Name: "clamav"})
			return r
		}(),
		"max counter": func() Report { r := rptReport(); r.Counter = 1<<64 - 1; return r }(),
	} {
		t.Run(name, func(t *testing.T) {
			wire := rptSign(t, key, r)
			sr, err := ParseReport(wire)
			if err != nil {
				t.Fatalf("ParseReport: %v", err)
			}
			if !reflect.DeepEqual(sr.Report, r) {
				t.Errorf("round trip changed the report:\n got %+v\nwant %+v", sr.Report, r)
			}
			if err := verifyReportSig(sr, &key.PublicKey); err != nil {
				t.Errorf("signature: %v", err)
			}
			if bytes.Count(wire, []byte(".")) != 1 {
				t.Errorf("wire form %q is not two parts", wire)
			}
		})
	}
}

func TestParseReportRejects(t *testing.T) {
	key := rptKey(t)
	valid := rptSign(t, key, rptReport())
	payloadB64, sigB64, _ := strings.Cut(string(valid), ".")
	raw := func(payload string) []byte { return rptSignRaw(t, key, []byte(payload)) }
	edit := func(f func(m map[string]any)) []byte { return rptSignRaw(t, key, rptPayload(t, f)) }
	long := strings.Repeat("a", MaxStringLen+1)

	for _, tc := range []struct {
		name string
		in   []byte
		want string // substring of the error
	}{
		{"empty", nil, "two base64url parts"},
		{"garbage", []byte("\x00\xff garbage"), "two base64url parts"},
		{"oversized", append(bytes.Repeat([]byte("A"), MaxReportBytes), '.'), "limit"},
		{"three parts", []byte(payloadB64 + "." + sigB64 + "." + sigB64), "two base64url parts"},
		{"no signature", []byte(payloadB64 + "."), "signature part"},
		{"short signature", []byte(payloadB64 + "." + sigB64[:40]), "signature part"},
		{"padded signature", []byte(payloadB64 + "." + sigB64 + "=="), "two base64url parts"},
		{"line break in signature", []byte(payloadB64 + "." + sigB64[:40] + "\n" + sigB64[40:]), "two base64url parts"},
		{"line break in payload", []byte(payloadB64[:10] + "\r\n" + payloadB64[10:] + "." + sigB64), "two base64url parts"},
		{"signature not base64", []byte(payloadB64 + "." + strings.Repeat("*", len(sigB64))), "two base64url parts"},
		{"signature non-canonical", []byte(payloadB64 + "." + sigB64[:len(sigB64)-1] + "B"), "signature"},
		{"payload not base64", []byte("!!!!." + sigB64), "two base64url parts"},
		{"payload padded", []byte(payloadB64 + "=." + sigB64), "two base64url parts"},
		{"payload std base64", []byte(strings.NewReplacer("-", "+", "_", "/").Replace(payloadB64) + "+/." + sigB64), "two base64url parts"},
		{"payload non-canonical", []byte("e31." + sigB64), "payload"},
		{"payload not JSON", raw("hello"), "invalid character"},
		{"payload empty", raw(""), "EOF"},
		{"payload array", raw(`[1,2]`), "want an object"},
		{"payload string", raw(`"x"`), "want an object"},
		{"trailing data", raw(`{"device_id":"d","counter":1,"nonce":"n","collected_at":"2025-06-01T12:00:00Z","os":{}} {}`), "data after"},
		{"invalid UTF-8", raw("{\"device_id\":\"d\xff\"}"), "UTF-8"},
		{"unknown field", edit(func(m map[string]any) { m["admin"] = true }), `unknown field "admin"`},
		{"unknown nested field", edit(func(m map[string]any) { rptEDR(m)["trusted"] = true }), `edr[0]: unknown field "trusted"`},
		{"unknown os field", edit(func(m map[string]any) { m["os"].(map[string]any)["x"] = 1 }), `os: unknown field "x"`},
		{"key in other case", edit(func(m map[string]any) { m["Device_ID"] = m["device_id"]; delete(m, "device_id") }), `unknown field "Device_ID"`},
		{"duplicate key", raw(`{"device_id":"a","device_id":"b","counter":1}`), `"device_id" appears twice`},
		{"duplicate escaped key", raw(`{"counter":1,"count\u0065r":2}`), `"counter" appears twice`},
		{"os not object", edit(func(m map[string]any) { m["os"] = "linux" }), "os: want an object"},
		{"edr not array", edit(func(m map[string]any) { m["edr"] = map[string]any{} }), "edr: want an array"},
		{"edr entry not object", edit(func(m map[string]any) { m["edr"] = []any{"x"} }), "edr[0]: want an object"},
		{"scalar is object", edit(func(m map[string]any) { m["nonce"] = map[string]any{} }), "nonce: want a scalar"},
		{"wrong scalar type", edit(func(m map[string]any) { m["counter"] = "7" }), "cannot unmarshal"},
		{"counter negative", edit(func(m map[string]any) { m["counter"] = -1 }), "cannot unmarshal"},
		{"counter float", edit(func(m map[string]any) { m["counter"] = 1.5 }), "cannot unmarshal"},
		{"counter overflow", raw(`{"counter":18446744073709551616}`), "cannot unmarshal"},
		{"counter zero", edit(func(m map[string]any) { m["counter"] = 0 }), "counter: must be at least 1"},
		{"no device id", edit(func(m map[string]any) { delete(m, "device_id") }), "device_id: required"},
		{"device id null", edit(func(m map[string]any) { m["device_id"] = nil }), "device_id: required"},
		{"device id long", edit(func(m map[string]any) { m["device_id"] = strings.Repeat("d", MaxDeviceIDLen+1) }), "device_id: 129 bytes"},
		{"device id space", edit(func(m map[string]any) { m["device_id"] = "dev 1" }), "device_id: must be printable"},
		{"device id unicode", edit(func(m map[string]any) { m["device_id"] = "dév" }), "device_id: must be printable"},
		{"no nonce", edit(func(m map[string]any) { delete(m, "nonce") }), "nonce: required"},
		{"nonce long", edit(func(m map[string]any) { m["nonce"] = strings.Repeat("n", MaxNonceLen+1) }), "nonce: 129 bytes"},
		{"no collected_at", edit(func(m map[string]any) { delete(m, "collected_at") }), "collected_at: required"},
		{"collected_at not RFC 3339", edit(func(m map[string]any) { m["collected_at"] = "yesterday" }), "parsing time"},
		{"os string long", edit(func(m map[string]any) { m["os"].(map[string]any)["kernel"] = long }), "os.kernel: 513 bytes"},
		{"os control char", edit(func(m map[string]any) { m["os"].(map[string]any)["name"] = "ubuntu\n" }), "os.name: contains control"},
		{"disk not bool", edit(func(m map[string]any) { m["disk_encrypted"] = "yes" }), "cannot unmarshal"},
		{"too many EDR entries", edit(func(m map[string]any) {
			var l []any
			for i := range MaxEDREntries + 1 {
				l = append(l, map[string]any{"name": fmt.Sprint("edr", i)})
			}
			m["edr"] = l
		}), "edr: 17 entries, limit 16"},
		{"EDR without name", edit(func(m map[string]any) { delete(rptEDR(m), "name") }), "edr[0].name: required"},
		{"EDR names repeat", edit(func(m map[string]any) {
			m["edr"] = append(m["edr"].([]any), map[string]any{"name": "falcon-sensor"})
		}), `edr[1].name: "falcon-sensor" also in edr[0]`},
		{"EDR path long", edit(func(m map[string]any) { rptEDR(m)["exe_path"] = long }), "edr[0].exe_path: 513 bytes"},
		{"EDR error control char", edit(func(m map[string]any) { rptEDR(m)["manager_error"] = "a\x1bb" }), "edr[0].manager_error: contains control"},
		{"EDR C1 control char", edit(func(m map[string]any) { rptEDR(m)["manager_addr"] = "a\u0085b" }), "edr[0].manager_addr: contains control"},
		{"sha256 short", edit(func(m map[string]any) { rptEDR(m)["exe_sha256"] = rptHash[:63] }), "edr[0].exe_sha256: want 64"},
		{"sha256 long", edit(func(m map[string]any) { rptEDR(m)["exe_sha256"] = rptHash + "0" }), "edr[0].exe_sha256: want 64"},
		{"sha256 upper case", edit(func(m map[string]any) { rptEDR(m)["exe_sha256"] = strings.ToUpper(rptHash) }), "edr[0].exe_sha256: want 64"},
		{"sha256 not hex", edit(func(m map[string]any) { rptEDR(m)["exe_sha256"] = strings.Repeat("g", 64) }), "edr[0].exe_sha256: want 64"},
		{"pid negative", edit(func(m map[string]any) { rptEDR(m)["pid"] = -1 }), "edr[0].pid: out of range"},
		{"pid huge", edit(func(m map[string]any) { rptEDR(m)["pid"] = 1 << 40 }), "edr[0].pid: out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sr, err := ParseReport(tc.in)
			if err == nil {
				t.Fatalf("accepted: %+v", sr.Report)
			}
			if !errors.Is(err, ErrMalformedReport) {
				t.Errorf("error %v does not wrap ErrMalformedReport", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestParseReportAcceptsStrictJSONVariants(t *testing.T) {
	key := rptKey(t)
	// Whitespace, key order, escapes and null for unknown values are all
	// plain JSON and must not be refused: other agents may encode
	// differently.
	for _, payload := range []string{
		`{ "nonce" : "n", "counter" : 1, "device_id" : "d", "collected_at" : "2025-06-01T12:00:00+09:00", "os": {} }`,
		`{"device_id":"d","counter":1,"nonce":"n","collected_at":"2025-06-01T12:00:00Z","os":null,"edr":null,"disk_encrypted":null}`,
		`{"device_id":"\u0064","counter":1,"nonce":"n","collected_at":"2025-06-01T12:00:00.5Z","edr":[{"name":"x","running":false}]}`,
	} {
		if _, err := ParseReport(rptSignRaw(t, key, []byte(payload))); err != nil {
			t.Errorf("%s: %v", payload, err)
		}
	}
}

func TestSignReportRejects(t *testing.T) {
	key := rptKey(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	big := rptReport()
	big.EDR = nil
	for i := range MaxEDREntries {
		// '<' is escaped as \u003c, so these strings take six times their
		// length on the wire.
		s := strings.Repeat("<", MaxStringLen)
		big.EDR = append(big.EDR, EDRState{Name: fmt.Sprint(i, s)[:MaxStringLen], ExePath: s, ManagerAddr: s, ManagerError: s})
	}
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		r    Report
		want string
	}{
		{"nil key", nil, rptReport(), "no key"},
		{"P-384 key", p384, rptReport(), "not ECDSA P-256"},
		{"Ed25519 key", ed, rptReport(), "not ECDSA P-256"},
		{"invalid report", key, func() Report { r := rptReport(); r.Nonce = ""; return r }(), "nonce: required"},
		{"too large", key, big, "limit 65536"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := SignReport(tc.key, tc.r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("SignReport error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestSignReportLowS(t *testing.T) {
	key := rptKey(t)
	// ECDSA picks s at random, so about half the signatures need
	// normalising; 64 tries all being low by chance is 2^-64.
	for range 64 {
		sr, err := ParseReport(rptSign(t, key, rptReport()))
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyReportSig(sr, &key.PublicKey); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCleanText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"plain text", "plain text"},
		{"two\nlines\tand\x00nul", "two lines and nul"},
		{"bad \xff utf8", "bad \uFFFD utf8"},
		{"c1 \u0085 next line", "c1   next line"},
		{strings.Repeat("a", 600), strings.Repeat("a", MaxStringLen)},
		{strings.Repeat("a", 511) + "é", strings.Repeat("a", 511)}, // never splits a character
	} {
		got := CleanText(tc.in)
		if got != tc.want {
			t.Errorf("CleanText(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if err := checkText("x", got); err != nil {
			t.Errorf("CleanText(%q) = %q, which reports refuse: %v", tc.in, got, err)
		}
	}
}

// FuzzParseReport feeds arbitrary bytes to ParseReport, both as they are
// and as the payload of a wire form (so the mutator works on JSON directly
// rather than on its base64). It must never panic; what it accepts must be
// within the report limits, and re-encoding an accepted report must be
// stable: encoding, parsing and encoding again gives the same bytes.
func FuzzParseReport(f *testing.F) {
	key := rptKey(f)
	f.Add(rptSign(f, key, rptReport()))
	minimal := rptReport()
	minimal.OS, minimal.EDR, minimal.DiskEncrypted = OSInfo{}, nil, nil
	f.Add(rptSign(f, key, minimal))
	full, err := json.Marshal(rptReport())
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range []string{
		string(full),
		`{"device_id":"d","counter":1,"nonce":"n","collected_at":"2025-06-01T12:00:00+09:00","os":{"kernel":"6.1"}}`,
		`{"device_id":"d","counter":1,"nonce":"n","collected_at":"2025-06-01T12:00:00Z","edr":[{"name":"x","running":true,"pid":1,"exe_sha256":"` + rptHash + `","manager_last_reached":"2025-06-01T11:00:00.123Z"}]}`,
		`{"device_id":"d","device_id":"d"}`,
		`{"Device_id":"d"}`,
		`{"edr":[[]]}`,
		`[[[[[[[[[[[[`,
		`{"os":{"name":"\ud800"}}`,
	} {
		f.Add([]byte(p))
		f.Add(rptSignRaw(f, key, []byte(p)))
	}
	// The base64 decoder skips line breaks: a signature of 63 bytes once
	// passed as 86 characters.
	f.Add([]byte("eyJkZXZpY2VfaWQiOiJ0IiwiY291bnRlciI6Mywibm9uY2UiOiJ0IiwiY29sbGVjdGVkX2F0IjoiMzA0NC0wNC0xM1QxMzo0Mzo0MC0xOTo0MCIsIm9zIjp7Imtlcm5lbCI6Ij00XyJ9fQ.000000000000000000000000000000000\n\n000000000000000000000000000000000000000000000000000"))
	f.Add([]byte("."))
	f.Add([]byte("e30." + strings.Repeat("A", 86)))

	var zeroSig [reportSigLen]byte
	f.Fuzz(func(t *testing.T, b []byte) {
		rptFuzzOne(t, b)
		if reportB64.EncodedLen(len(b)) <= MaxReportBytes-100 {
			rptFuzzOne(t, []byte(reportB64.EncodeToString(b)+"."+reportB64.EncodeToString(zeroSig[:])))
		}
	})
}

func rptFuzzOne(t *testing.T, b []byte) {
	sr, err := ParseReport(b)
	if err != nil {
		if sr != nil {
			t.Fatal("error with a report")
		}
		if !errors.Is(err, ErrMalformedReport) {
			t.Fatalf("error %v does not wrap ErrMalformedReport", err)
		}
		return
	}
	r := &sr.Report
	if len(b) > MaxReportBytes || len(sr.sig) != reportSigLen {
		t.Fatalf("accepted %d bytes with a %d-byte signature", len(b), len(sr.sig))
	}
	if err := rptCheckLimits(r); err != nil {
		t.Fatalf("accepted a report outside the limits: %v", err)
	}
	enc1, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("accepted report does not encode: %v", err)
	}
	sr2, err := ParseReport([]byte(reportB64.EncodeToString(enc1) + "." + reportB64.EncodeToString(sr.sig)))
	if err != nil {
		t.Fatalf("re-encoded report refused: %v\n%s", err, enc1)
	}
	enc2, err := json.Marshal(&sr2.Report)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc1, enc2) {
		t.Fatalf("re-encoding is not stable:\n%s\n%s", enc1, enc2)
	}
}

// rptCheckLimits restates the documented limits independently of
// Report.validate.
func rptCheckLimits(r *Report) error {
	printable := func(s string, max int) bool {
		if s == "" || len(s) > max {
			return false
		}
		for _, c := range []byte(s) {
			if c < 0x21 || c > 0x7e {
				return false
			}
		}
		return true
	}
	text := func(s string) bool {
		if len(s) > MaxStringLen || strings.ContainsFunc(s, func(c rune) bool { return c < 0x20 || c == 0x7f || c >= 0x80 && c < 0xa0 }) {
			return false
		}
		return true
	}
	switch {
	case !printable(r.DeviceID, MaxDeviceIDLen):
		return errors.New("device_id")
	case !printable(r.Nonce, MaxNonceLen):
		return errors.New("nonce")
	case r.Counter == 0:
		return errors.New("counter")
	case r.CollectedAt.IsZero():
		return errors.New("collected_at")
	case !text(r.OS.Name) || !text(r.OS.Version) || !text(r.OS.Kernel) || !text(r.OS.Arch):
		return errors.New("os")
	case len(r.EDR) > MaxEDREntries:
		return errors.New("edr")
	}
	names := map[string]bool{}
	for _, e := range r.EDR {
		if e.Name == "" || names[e.Name] || !text(e.Name) || !text(e.ExePath) || !text(e.ManagerAddr) || !text(e.ManagerError) {
			return fmt.Errorf("edr %q", e.Name)
		}
		names[e.Name] = true
		if e.ExeSHA256 != "" && (len(e.ExeSHA256) != 64 || strings.Trim(e.ExeSHA256, "0123456789abcdef") != "") {
			return fmt.Errorf("edr %q sha256", e.Name)
		}
		if e.PID < 0 || e.PID > 1<<32-1 {
			return fmt.Errorf("edr %q pid", e.Name)
		}
	}
	return nil
}
