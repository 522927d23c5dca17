package posture

// External detection signals: what an EDR, Falco (through Falcosidekick) or
// any other sensor says about a device or user. The bodies arrive over the
// network from senders the edge authenticates but does not otherwise
// trust, so both parsers bound everything before and while decoding and
// hand back only printable, bounded strings: the reason ends up on the
// user's deny page, in audit events and in chat notifications.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Severity orders signal priorities like Falco's (syslog) priorities,
// lowest first, so a threshold is a comparison: s >= SeverityCritical.
type Severity int

// Severities, lowest first. The zero value is SeverityDebug.
const (
	SeverityDebug Severity = iota
	SeverityInformational
	SeverityNotice
	SeverityWarning
	SeverityError
	SeverityCritical
	SeverityAlert
	SeverityEmergency
)

var severityNames = [...]string{"Debug", "Informational", "Notice", "Warning", "Error", "Critical", "Alert", "Emergency"}

// maxSeverityText bounds the input ParseSeverity looks at, so a long
// attacker-chosen string is refused before it is copied or lowered.
const maxSeverityText = 16

// ParseSeverity reads a severity name, ignoring case and surrounding
// spaces. It accepts Falco's priority names (Emergency, Alert, Critical,
// Error, Warning, Notice, Informational, Debug), the syslog abbreviations
// (emerg, crit, err, warn, info) and the four-level scale EDR vendors use:
// low = Notice, medium = Warning, high = Error, critical = Critical. High
// maps to Error rather than Critical so that a Falco-style threshold of
// "critical" is not crossed by a vendor's second-highest level.
func ParseSeverity(s string) (Severity, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, errors.New("posture: severity is empty")
	}
	if len(t) <= maxSeverityText {
		switch strings.ToLower(t) {
		case "emergency", "emerg":
			return SeverityEmergency, nil
		case "alert":
			return SeverityAlert, nil
		case "critical", "crit":
			return SeverityCritical, nil
		case "error", "err", "high":
			return SeverityError, nil
		case "warning", "warn", "medium":
			return SeverityWarning, nil
		case "notice", "low":
			return SeverityNotice, nil
		case "informational", "info":
			return SeverityInformational, nil
		case "debug":
			return SeverityDebug, nil
		}
	}
	return 0, fmt.Errorf("posture: unknown severity %q (want one of debug, informational, notice, warning, error, critical, alert, emergency, or low, medium, high)", truncateForError(t))
}

func (s Severity) valid() bool { return s >= SeverityDebug && s <= SeverityEmergency }

// String returns the Falco name, e.g. "Critical".
func (s Severity) String() string {
	if !s.valid() {
		return fmt.Sprintf("Severity(%d)", int(s))
	}
	return severityNames[s]
}

// MarshalText writes the Falco name, so configs, JSON records and logs
// show "Critical" rather than a number.
func (s Severity) MarshalText() ([]byte, error) {
	if !s.valid() {
		return nil, fmt.Errorf("posture: invalid severity %d", int(s))
	}
	return []byte(severityNames[s]), nil
}

// UnmarshalText accepts what ParseSeverity accepts (so a YAML config can
// say `min_severity: critical`).
func (s *Severity) UnmarshalText(b []byte) error {
	v, err := ParseSeverity(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Signal kinds.
const (
	// SignalDetection: something bad was detected on the device or for the
	// user; the edge may quarantine the subject.
	SignalDetection = "detection"
	// SignalEDRCheckIn: the EDR vendor says the device's EDR checked in with
	// its management server (evidence for a profile's EDR contact).
	SignalEDRCheckIn = "edr_checkin"
)

// SourceFalco is Signal.Source for signals parsed by ParseFalco.
const SourceFalco = "falco"

// defaultSignalSource is Signal.Source for generic signals that do not name
// their sender.
const defaultSignalSource = "webhook"

// Signal is a normalised external signal. Every string is bounded,
// trimmed, valid UTF-8 and printable (unicode.IsPrint: no control, format
// or line-separator characters), so it can be shown and logged as is.
type Signal struct {
	Kind     string // SignalDetection or SignalEDRCheckIn
	Source   string // SourceFalco for Falcosidekick, else the sender's name, e.g. "crowdstrike"
	Severity Severity
	DeviceID string // the device (ztna device ID) if the sender knows it
	Hostname string // else the host name, which the edge maps to a device by its enrolled name
	UserID   string // optional: the user (OIDC subject or email), for a user-level signal
	Rule     string // detection rule name (Falco rule)
	Reason   string // what was detected, for the user and admins (Falco: the output line)
	Fix      string // how to fix it, optional
	EDR      string // for edr_checkin: the EDR name as profiles refer to it (e.g. falcon-sensor)
	// Time is when the sender saw it, by the sender's clock (zero if
	// absent); the edge records its own receive time separately.
	Time time.Time
	Tags []string // at most MaxSignalTags, each at most maxSignalTagLen bytes
}

// ErrMalformedSignal is what every parse error of ParseFalco and
// ParseSignal is (errors.Is). errors.Unwrap of such an error returns the
// detail without this prefix (e.g. "priority: required"), for a message to
// the sender.
var ErrMalformedSignal = errors.New("posture: malformed signal")

// signalError is a parse error: ErrMalformedSignal with a detail.
type signalError struct{ detail error }

func (e *signalError) Error() string        { return ErrMalformedSignal.Error() + ": " + e.detail.Error() }
func (e *signalError) Is(target error) bool { return target == ErrMalformedSignal }
func (e *signalError) Unwrap() error        { return e.detail }

func malformedSignal(detail error) error { return &signalError{detail: detail} }

// Limits on a signal body and its fields. Strings other than those below
// are limited to MaxStringLen bytes after trimming.
const (
	// MaxSignalBytes bounds a signal body.
	MaxSignalBytes = 64 << 10
	// MaxSignalTags bounds Signal.Tags.
	MaxSignalTags = 64
	// maxSignalTagLen bounds one tag, in bytes.
	maxSignalTagLen = 128
	// maxSignalSourceLen bounds Signal.Source (letters, digits, '-', '_', '.').
	maxSignalSourceLen = 64
	// maxSignalHostnameLen bounds Signal.Hostname (a DNS name's limit; an
	// enrolled device name is shorter, so a longer one could never match).
	maxSignalHostnameLen = 255
	// maxFalcoOutputFields bounds the entries of Falco's output_fields.
	maxFalcoOutputFields = 256
	// maxSignalDepth bounds JSON nesting in a Falco body (fields ParseFalco
	// ignores may hold objects and arrays).
	maxSignalDepth = 16
)

// Falcosidekick customfields ParseFalco reads from output_fields. Set them
// in the Falcosidekick instance that runs on (or for) the device, e.g.
// CUSTOMFIELDS="ztna.device:dev-0123456789abcdef".
const (
	FalcoDeviceField = "ztna.device"
	FalcoUserField   = "ztna.user"
)

// ParseFalco parses a Falcosidekick webhook body (its "webhook" output):
//
//	{"uuid":"…","output":"16:31:56.746609046: Critical Shell spawned … (user=root …)",
//	 "priority":"Critical","rule":"Terminal shell in container",
//	 "time":"2019-05-17T15:31:56.746609046Z","source":"syscall",
//	 "output_fields":{"evt.time":1558107116746609046,"proc.cmdline":"bash","ztna.device":"dev-…"},
//	 "tags":["shell","mitre_execution"],"hostname":"alice-laptop"}
//
// The device is output_fields["ztna.device"] (a Falcosidekick customfield,
// see FalcoDeviceField), else the host name in "hostname"; the user is
// output_fields["ztna.user"] if present. The signal is a detection with
// Source "falco" and Reason the output line without Falco's time and
// priority prefix.
//
// Unknown fields are ignored, since the payload evolves, but the body must
// be one JSON object of at most MaxSignalBytes nested at most 16 deep,
// output_fields may hold at most 256 entries, and a field ParseFalco reads
// may not appear twice (two parsers must not read different signals from
// one body). priority (a valid severity) and rule are required, and one of
// ztna.device and hostname. The output line is cleaned rather than refused:
// characters that are not printable become spaces and it is cut to
// MaxStringLen bytes at a character boundary. Every other string ParseFalco
// keeps is refused when, trimmed, it is longer than its limit or holds a
// character that is not printable. Errors are ErrMalformedSignal.
func ParseFalco(body []byte) (Signal, error) {
	if len(body) > MaxSignalBytes {
		return Signal{}, malformedSignal(fmt.Errorf("%d bytes, limit %d", len(body), MaxSignalBytes))
	}
	var raw falcoFields
	if err := raw.decode(body); err != nil {
		return Signal{}, malformedSignal(err)
	}
	sig, err := raw.signal()
	if err != nil {
		return Signal{}, malformedSignal(err)
	}
	return sig, nil
}

// falcoFields holds what ParseFalco reads from a Falcosidekick body, as
// sent.
type falcoFields struct {
	priority, rule, output, hostname, time string
	device, user                           string
	tags                                   []string
}

func (f *falcoFields) decode(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber() // numbers are skipped; never convert them
	if err := expectDelim(dec, '{', "body"); err != nil {
		return err
	}
	seen := make(map[string]bool, 8)
	for dec.More() {
		key, err := readKey(dec)
		if err != nil {
			return err
		}
		var dst *string
		switch key {
		case "priority":
			dst = &f.priority
		case "rule":
			dst = &f.rule
		case "output":
			dst = &f.output
		case "hostname":
			dst = &f.hostname
		case "time":
			dst = &f.time
		case "tags", "output_fields":
		default:
			if err := skipJSONValue(dec, 1); err != nil {
				return err
			}
			continue
		}
		if seen[key] {
			return fmt.Errorf("field %q appears twice", key)
		}
		seen[key] = true
		switch key {
		case "tags":
			f.tags, err = readStringArray(dec, "tags", true)
		case "output_fields":
			err = f.decodeOutputFields(dec)
		default:
			*dst, err = readString(dec, key, true)
		}
		if err != nil {
			return err
		}
	}
	return expectEnd(dec, "body")
}

func (f *falcoFields) decodeOutputFields(dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("output_fields: %w", err)
	}
	if tok == nil {
		return nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("output_fields: want an object")
	}
	var haveDevice, haveUser bool
	for n := 0; dec.More(); n++ {
		if n == maxFalcoOutputFields {
			return fmt.Errorf("output_fields: more than %d entries", maxFalcoOutputFields)
		}
		key, err := readKey(dec)
		if err != nil {
			return err
		}
		var dst *string
		var have *bool
		switch key {
		case FalcoDeviceField:
			dst, have = &f.device, &haveDevice
		case FalcoUserField:
			dst, have = &f.user, &haveUser
		default:
			if err := skipJSONValue(dec, 2); err != nil {
				return err
			}
			continue
		}
		if *have {
			return fmt.Errorf("output_fields: %q appears twice", key)
		}
		*have = true
		if *dst, err = readString(dec, "output_fields."+key, true); err != nil {
			return err
		}
	}
	return expectDelim(dec, '}', "output_fields")
}

func (f *falcoFields) signal() (Signal, error) {
	s := Signal{Kind: SignalDetection, Source: SourceFalco}
	prio := strings.TrimSpace(f.priority)
	if prio == "" {
		return Signal{}, errors.New("priority: required")
	}
	sev, err := ParseSeverity(prio)
	if err != nil {
		return Signal{}, fmt.Errorf("priority: %w", err)
	}
	s.Severity = sev
	if s.Rule, err = signalText("rule", f.rule, MaxStringLen); err != nil {
		return Signal{}, err
	}
	if s.Rule == "" {
		return Signal{}, errors.New("rule: required")
	}
	if s.DeviceID, err = signalDeviceID("output_fields."+FalcoDeviceField, f.device); err != nil {
		return Signal{}, err
	}
	if s.Hostname, err = signalText("hostname", f.hostname, maxSignalHostnameLen); err != nil {
		return Signal{}, err
	}
	if s.DeviceID == "" && s.Hostname == "" {
		return Signal{}, fmt.Errorf("no device: want output_fields.%s or hostname", FalcoDeviceField)
	}
	if s.UserID, err = signalUserID("output_fields."+FalcoUserField, f.user); err != nil {
		return Signal{}, err
	}
	if s.Time, err = signalTime(f.time); err != nil {
		return Signal{}, err
	}
	if s.Tags, err = signalTags(f.tags); err != nil {
		return Signal{}, err
	}
	s.Reason = falcoReason(f.output, sev)
	if s.Reason == "" {
		s.Reason = "Falco rule matched: " + s.Rule
		if len(s.Reason) > MaxStringLen {
			s.Reason = truncateUTF8(s.Reason, MaxStringLen)
		}
	}
	return s, nil
}

// falcoReason turns Falco's output line into a reason: printable, without
// the leading "15:31:56.746609046: Critical " (time and priority, which the
// signal carries separately), and at most MaxStringLen bytes.
func falcoReason(output string, sev Severity) string {
	s := strings.TrimSpace(cleanSignalText(output))
	if i := strings.Index(s, ": "); i > 0 && i <= 40 && isFalcoTimestamp(s[:i]) {
		rest := s[i+2:]
		if word, after, ok := strings.Cut(rest, " "); ok {
			if ws, err := ParseSeverity(word); err == nil && ws == sev {
				rest = after
			}
		}
		if rest = strings.TrimSpace(rest); rest != "" {
			s = rest
		}
	}
	return strings.TrimSpace(truncateUTF8(s, MaxStringLen))
}

// isFalcoTimestamp reports whether s looks like the time Falco puts before
// its output line, in either of its formats ("15:31:56.746609046" or
// "2019-05-17T15:31:56.746609046+0000").
func isFalcoTimestamp(s string) bool {
	digits := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits++
		case strings.IndexByte(":.-+TZ", c) >= 0:
		default:
			return false
		}
	}
	return digits >= 6
}

// ParseSignal parses the generic JSON signal:
//
//	{"kind":"detection","source":"crowdstrike","severity":"critical",
//	 "device_id":"dev-…","hostname":"alice-laptop","user":"…","rule":"…",
//	 "reason":"…","fix":"…","edr":"falcon-sensor","time":"2025-01-02T15:04:05Z",
//	 "tags":["…"]}
//
// It is strict: one JSON object of at most MaxSignalBytes of valid UTF-8,
// only these field names with their exact case, each at most once, every
// value a string except tags (an array of strings), no null, nothing after
// the object.
//
// kind defaults to detection. A detection needs severity, reason and one of
// device_id, hostname and user (user alone: a user-level signal). An
// edr_checkin needs edr and one of device_id and hostname; its severity
// defaults to informational. source defaults to "webhook" and may hold
// letters, digits, '-', '_' and '.'; time, if present, is RFC 3339.
// Reason and fix are free text: characters that are not printable (line
// breaks, tabs) become spaces. Every string is trimmed and must then fit
// its limit (MaxStringLen bytes unless documented otherwise on Signal), and
// identifiers must be printable. Errors are ErrMalformedSignal.
func ParseSignal(body []byte) (Signal, error) {
	if len(body) > MaxSignalBytes {
		return Signal{}, malformedSignal(fmt.Errorf("%d bytes, limit %d", len(body), MaxSignalBytes))
	}
	if !utf8.Valid(body) {
		return Signal{}, malformedSignal(errors.New("body is not valid UTF-8"))
	}
	var raw genericFields
	if err := raw.decode(body); err != nil {
		return Signal{}, malformedSignal(err)
	}
	sig, err := raw.signal()
	if err != nil {
		return Signal{}, malformedSignal(err)
	}
	return sig, nil
}

// genericFields holds the generic signal's fields as sent.
type genericFields struct {
	kind, source, severity, deviceID, hostname, user string
	rule, reason, fix, edr, time                     string
	tags                                             []string
}

func (g *genericFields) field(key string) *string {
	switch key {
	case "kind":
		return &g.kind
	case "source":
		return &g.source
	case "severity":
		return &g.severity
	case "device_id":
		return &g.deviceID
	case "hostname":
		return &g.hostname
	case "user":
		return &g.user
	case "rule":
		return &g.rule
	case "reason":
		return &g.reason
	case "fix":
		return &g.fix
	case "edr":
		return &g.edr
	case "time":
		return &g.time
	}
	return nil
}

func (g *genericFields) decode(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := expectDelim(dec, '{', "signal"); err != nil {
		return err
	}
	seen := make(map[string]bool, 12)
	for dec.More() {
		key, err := readKey(dec)
		if err != nil {
			return err
		}
		dst := g.field(key)
		if dst == nil && key != "tags" {
			return fmt.Errorf("unknown field %q", truncateForError(key))
		}
		if seen[key] {
			return fmt.Errorf("field %q appears twice", key)
		}
		seen[key] = true
		if dst == nil {
			g.tags, err = readStringArray(dec, "tags", false)
		} else {
			*dst, err = readString(dec, key, false)
		}
		if err != nil {
			return err
		}
	}
	return expectEnd(dec, "signal")
}

func (g *genericFields) signal() (Signal, error) {
	var s Signal
	var err error
	switch kind := strings.TrimSpace(g.kind); kind {
	case "", SignalDetection:
		s.Kind = SignalDetection
	case SignalEDRCheckIn:
		s.Kind = SignalEDRCheckIn
	default:
		return Signal{}, fmt.Errorf("kind: %q is not %s or %s", truncateForError(kind), SignalDetection, SignalEDRCheckIn)
	}
	if s.Source, err = signalSource(g.source); err != nil {
		return Signal{}, err
	}
	switch sev := strings.TrimSpace(g.severity); {
	case sev != "":
		if s.Severity, err = ParseSeverity(sev); err != nil {
			return Signal{}, fmt.Errorf("severity: %w", err)
		}
	case s.Kind == SignalDetection:
		return Signal{}, errors.New("severity: required for a detection")
	default:
		s.Severity = SeverityInformational
	}
	if s.DeviceID, err = signalDeviceID("device_id", g.deviceID); err != nil {
		return Signal{}, err
	}
	if s.Hostname, err = signalText("hostname", g.hostname, maxSignalHostnameLen); err != nil {
		return Signal{}, err
	}
	if s.UserID, err = signalUserID("user", g.user); err != nil {
		return Signal{}, err
	}
	if s.Rule, err = signalText("rule", g.rule, MaxStringLen); err != nil {
		return Signal{}, err
	}
	if s.Reason, err = signalFreeText("reason", g.reason); err != nil {
		return Signal{}, err
	}
	if s.Fix, err = signalFreeText("fix", g.fix); err != nil {
		return Signal{}, err
	}
	if s.EDR, err = signalText("edr", g.edr, MaxStringLen); err != nil {
		return Signal{}, err
	}
	if s.Time, err = signalTime(g.time); err != nil {
		return Signal{}, err
	}
	if s.Tags, err = signalTags(g.tags); err != nil {
		return Signal{}, err
	}
	switch s.Kind {
	case SignalDetection:
		if s.Reason == "" {
			return Signal{}, errors.New("reason: required for a detection")
		}
		if s.DeviceID == "" && s.Hostname == "" && s.UserID == "" {
			return Signal{}, errors.New("no subject: a detection needs device_id, hostname or user")
		}
	case SignalEDRCheckIn:
		if s.EDR == "" {
			return Signal{}, errors.New("edr: required for an edr_checkin")
		}
		if s.DeviceID == "" && s.Hostname == "" {
			return Signal{}, errors.New("no device: an edr_checkin needs device_id or hostname")
		}
	}
	return s, nil
}

// JSON token helpers shared by both parsers. They read with a
// json.Decoder, which checks the syntax as it goes and never builds more
// than one token at a time.

func expectDelim(dec *json.Decoder, want json.Delim, where string) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		if want == '{' {
			return fmt.Errorf("%s: want an object", where)
		}
		return fmt.Errorf("%s: want %v", where, want)
	}
	return nil
}

// expectEnd reads the closing brace of the top-level object and checks
// nothing follows it.
func expectEnd(dec *json.Decoder, where string) error {
	if err := expectDelim(dec, '}', where); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%s: data after the object", where)
	}
	return nil
}

func readKey(dec *json.Decoder) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", err
	}
	key, ok := tok.(string) // the decoder only returns string keys in objects
	if !ok {
		return "", errors.New("want an object key")
	}
	return key, nil
}

// readString reads a string value; null reads as "" when nullOK.
func readString(dec *json.Decoder, field string, nullOK bool) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	switch v := tok.(type) {
	case string:
		return v, nil
	case nil:
		if nullOK {
			return "", nil
		}
	}
	// An object or array is not consumed: the error ends the parse.
	return "", fmt.Errorf("%s: want a string", field)
}

// readStringArray reads an array of strings, at most MaxSignalTags of
// them; null reads as nil when nullOK.
func readStringArray(dec *json.Decoder, field string, nullOK bool) ([]string, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	if tok == nil && nullOK {
		return nil, nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, fmt.Errorf("%s: want an array of strings", field)
	}
	var out []string
	for dec.More() {
		if len(out) == MaxSignalTags {
			return nil, fmt.Errorf("%s: more than %d entries", field, MaxSignalTags)
		}
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		v, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("%s[%d]: want a string", field, len(out))
		}
		out = append(out, v)
	}
	return out, expectDelim(dec, ']', field)
}

// skipJSONValue reads and discards one value whose container is nested
// depth deep, refusing nesting beyond maxSignalDepth.
func skipJSONValue(dec *json.Decoder, depth int) error {
	level := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			if d == '{' || d == '[' {
				level++
				if depth+level > maxSignalDepth {
					return fmt.Errorf("nested more than %d deep", maxSignalDepth)
				}
			} else {
				level--
			}
		}
		if level == 0 {
			return nil
		}
	}
}

// Field checks. Each trims its input and returns the value to keep.

// signalText accepts at most max bytes of printable text ("" allowed).
func signalText(field, s string, max int) (string, error) {
	s = strings.TrimSpace(s)
	if len(s) > max {
		return "", fmt.Errorf("%s: %d bytes, limit %d", field, len(s), max)
	}
	if !utf8.ValidString(s) {
		return "", fmt.Errorf("%s: not valid UTF-8", field)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return "", fmt.Errorf("%s: holds a character that is not printable (%U)", field, r)
		}
	}
	return s, nil
}

// signalFreeText cleans free text (characters that are not printable
// become spaces) and then refuses it if longer than MaxStringLen.
func signalFreeText(field, s string) (string, error) {
	s = strings.TrimSpace(cleanSignalText(s))
	if len(s) > MaxStringLen {
		return "", fmt.Errorf("%s: %d bytes, limit %d", field, len(s), MaxStringLen)
	}
	return s, nil
}

func signalDeviceID(field, s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", nil
	}
	if err := checkDeviceID(s); err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	return s, nil
}

func signalUserID(field, s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", nil
	}
	if err := checkUserID(s); err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	return s, nil
}

func signalSource(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return defaultSignalSource, nil
	}
	if !isSourceName(s) {
		return "", fmt.Errorf("source: want 1-%d letters, digits, '-', '_' or '.'", maxSignalSourceLen)
	}
	return s, nil
}

// isSourceName reports whether s is a sender name: 1..maxSignalSourceLen
// ASCII letters, digits, '-', '_' and '.'.
func isSourceName(s string) bool {
	if s == "" || len(s) > maxSignalSourceLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func signalTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if len(s) > 64 {
		return time.Time{}, errors.New("time: not an RFC 3339 time")
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, errors.New("time: not an RFC 3339 time")
	}
	return t, nil
}

// signalTags checks tags (count is bounded by the reader); empty tags are
// dropped.
func signalTags(tags []string) ([]string, error) {
	var out []string
	for i, t := range tags {
		t, err := signalText(fmt.Sprintf("tags[%d]", i), t, maxSignalTagLen)
		if err != nil {
			return nil, err
		}
		if t != "" {
			out = append(out, t)
		}
	}
	return out, nil
}

// cleanSignalText makes s valid, printable UTF-8: invalid bytes become
// U+FFFD and every character that is not printable (control, format, line
// and paragraph separators) a space. It does not bound the length.
func cleanSignalText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return ' '
		}
		return r
	}, s)
}

// truncateUTF8 cuts s to at most max bytes at a character boundary.
func truncateUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}
