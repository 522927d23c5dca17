package posture

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

func TestParseSeverity(t *testing.T) {
	cases := []struct {
		in   string
		want Severity
		ok   bool
	}{
		{"Emergency", SeverityEmergency, true},
		{"emerg", SeverityEmergency, true},
		{"ALERT", SeverityAlert, true},
		{"Critical", SeverityCritical, true},
		{"crit", SeverityCritical, true},
		{"critical", SeverityCritical, true},
		{"Error", SeverityError, true},
		{"err", SeverityError, true},
		{"High", SeverityError, true},
		{"Warning", SeverityWarning, true},
		{"warn", SeverityWarning, true},
		{"medium", SeverityWarning, true},
		{"Notice", SeverityNotice, true},
		{"low", SeverityNotice, true},
		{"Informational", SeverityInformational, true},
		{"info", SeverityInformational, true},
		{"debug", SeverityDebug, true},
		{"  critical\t", SeverityCritical, true},
		{"", 0, false},
		{"   ", 0, false},
		{"severe", 0, false},
		{"critical!", 0, false},
		{"informationalinformational", 0, false},
		{strings.Repeat("a", 1000), 0, false},
	}
	for _, c := range cases {
		got, err := ParseSeverity(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("ParseSeverity(%q) = %v, %v; want %v, ok=%v", c.in, got, err, c.want, c.ok)
		}
		if err != nil && len(err.Error()) > 400 {
			t.Errorf("ParseSeverity(%q): error is %d bytes; attacker text must be cut", c.in[:10], len(err.Error()))
		}
	}
}

func TestSeverityText(t *testing.T) {
	for s := SeverityDebug; s <= SeverityEmergency; s++ {
		b, err := s.MarshalText()
		if err != nil {
			t.Fatalf("%d: MarshalText: %v", s, err)
		}
		if string(b) != s.String() {
			t.Errorf("MarshalText %q, String %q", b, s.String())
		}
		var back Severity
		if err := back.UnmarshalText(b); err != nil || back != s {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", b, back, err, s)
		}
	}
	if SeverityCritical.String() != "Critical" || SeverityInformational.String() != "Informational" {
		t.Errorf("names: %s %s", SeverityCritical, SeverityInformational)
	}
	if _, err := Severity(8).MarshalText(); err == nil {
		t.Error("MarshalText accepted Severity(8)")
	}
	if _, err := Severity(-1).MarshalText(); err == nil {
		t.Error("MarshalText accepted Severity(-1)")
	}
	if got := Severity(42).String(); got != "Severity(42)" {
		t.Errorf("String of invalid = %q", got)
	}
	s := SeverityWarning
	if err := s.UnmarshalText([]byte("nope")); err == nil || s != SeverityWarning {
		t.Errorf("UnmarshalText(nope) = %v, left %v", err, s)
	}
}

func TestSeverityYAMLAndJSON(t *testing.T) {
	type cfg struct {
		MinSeverity Severity `yaml:"min_severity" json:"min_severity"`
	}
	var c cfg
	if err := yaml.Unmarshal([]byte("min_severity: critical\n"), &c); err != nil {
		t.Fatal(err)
	}
	if c.MinSeverity != SeverityCritical {
		t.Errorf("yaml: got %v", c.MinSeverity)
	}
	if err := yaml.Unmarshal([]byte("min_severity: high\n"), &c); err != nil || c.MinSeverity != SeverityError {
		t.Errorf("yaml high: %v, %v", c.MinSeverity, err)
	}
	if err := yaml.Unmarshal([]byte("min_severity: whatever\n"), &c); err == nil {
		t.Error("yaml accepted an unknown severity")
	}
	out, err := yaml.Marshal(cfg{MinSeverity: SeverityAlert})
	if err != nil || string(out) != "min_severity: Alert\n" {
		t.Errorf("yaml.Marshal = %q, %v", out, err)
	}
	j, err := json.Marshal(cfg{MinSeverity: SeverityNotice})
	if err != nil || string(j) != `{"min_severity":"Notice"}` {
		t.Errorf("json.Marshal = %s, %v", j, err)
	}
	var back cfg
	if err := json.Unmarshal(j, &back); err != nil || back.MinSeverity != SeverityNotice {
		t.Errorf("json round trip: %v, %v", back, err)
	}
}

func falcoSample(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/falcosidekick-webhook.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// falcoEdit decodes the sample, lets edit change it and re-encodes it.
func falcoEdit(t *testing.T, edit func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(falcoSample(t), &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func falcoOutputFields(m map[string]any) map[string]any { return m["output_fields"].(map[string]any) }

func TestParseFalcoSample(t *testing.T) {
	got, err := ParseFalco(falcoSample(t))
	if err != nil {
		t.Fatal(err)
	}
	want := Signal{
		Kind:     SignalDetection,
		Source:   SourceFalco,
		Severity: SeverityNotice,
		DeviceID: "dev-0123456789abcdef",
		Hostname: "alice-laptop",
		UserID:   "alice@example.com",
		Rule:     "Terminal shell in container",
		Reason:   "A shell was spawned in a container with an attached terminal (evt_type=execve user=root user_uid=0 user_loginuid=-1 process=bash proc_exepath=/usr/bin/bash parent=runc command=bash terminal=34816 exe_flags=EXE_WRITABLE container_id=5e5f6a4f1b2c container_image=docker.io/library/ubuntu container_image_tag=22.04 container_name=eager_bell k8s_ns=<NA> k8s_pod_name=<NA>)",
		Time:     time.Date(2024, 5, 17, 15, 31, 56, 746609046, time.UTC),
		Tags:     []string{"T1059", "container", "maturity_stable", "mitre_execution", "shell"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	checkSignalBounds(t, got)
}

func TestParseFalco(t *testing.T) {
	nested := func(depth int) any {
		var v any = "leaf"
		for range depth {
			v = []any{v}
		}
		return v
	}
	manyFields := func(n int) func(m map[string]any) {
		return func(m map[string]any) {
			of := map[string]any{"ztna.device": "dev-1"}
			for i := 1; i < n; i++ {
				of[fmt.Sprintf("f%d", i)] = i
			}
			m["output_fields"] = of
		}
	}
	longOutput := "15:31:56.746609046: Critical " + strings.Repeat("é", 2000)
	cases := []struct {
		name  string
		body  []byte
		check func(t *testing.T, s Signal) // nil: want an error
	}{
		{"hostname only", falcoEdit(t, func(m map[string]any) {
			delete(falcoOutputFields(m), "ztna.device")
			delete(falcoOutputFields(m), "ztna.user")
		}), func(t *testing.T, s Signal) {
			if s.DeviceID != "" || s.Hostname != "alice-laptop" || s.UserID != "" {
				t.Errorf("subject: %q %q %q", s.DeviceID, s.Hostname, s.UserID)
			}
		}},
		{"device only", falcoEdit(t, func(m map[string]any) { delete(m, "hostname") }), func(t *testing.T, s Signal) {
			if s.DeviceID != "dev-0123456789abcdef" || s.Hostname != "" {
				t.Errorf("subject: %q %q", s.DeviceID, s.Hostname)
			}
		}},
		{"empty device field falls back to hostname", falcoEdit(t, func(m map[string]any) { falcoOutputFields(m)["ztna.device"] = "  " }), func(t *testing.T, s Signal) {
			if s.DeviceID != "" || s.Hostname != "alice-laptop" {
				t.Errorf("subject: %q %q", s.DeviceID, s.Hostname)
			}
		}},
		{"no device nor hostname", falcoEdit(t, func(m map[string]any) {
			delete(m, "hostname")
			delete(falcoOutputFields(m), "ztna.device")
		}), nil},
		{"output_fields null", falcoEdit(t, func(m map[string]any) { m["output_fields"] = nil }), func(t *testing.T, s Signal) {
			if s.DeviceID != "" || s.Hostname != "alice-laptop" {
				t.Errorf("subject: %q %q", s.DeviceID, s.Hostname)
			}
		}},
		{"output_fields not an object", falcoEdit(t, func(m map[string]any) { m["output_fields"] = []any{1} }), nil},
		{"priority lower case", falcoEdit(t, func(m map[string]any) { m["priority"] = "critical" }), func(t *testing.T, s Signal) {
			if s.Severity != SeverityCritical {
				t.Errorf("severity %v", s.Severity)
			}
		}},
		{"priority missing", falcoEdit(t, func(m map[string]any) { delete(m, "priority") }), nil},
		{"priority unknown", falcoEdit(t, func(m map[string]any) { m["priority"] = "Bad" }), nil},
		{"priority not a string", falcoEdit(t, func(m map[string]any) { m["priority"] = 5 }), nil},
		{"rule missing", falcoEdit(t, func(m map[string]any) { delete(m, "rule") }), nil},
		{"rule with a line break", falcoEdit(t, func(m map[string]any) { m["rule"] = "a\nb" }), nil},
		{"rule too long", falcoEdit(t, func(m map[string]any) { m["rule"] = strings.Repeat("r", MaxStringLen+1) }), nil},
		{"rule trimmed to the limit", falcoEdit(t, func(m map[string]any) { m["rule"] = "  " + strings.Repeat("r", MaxStringLen) + "  " }), func(t *testing.T, s Signal) {
			if len(s.Rule) != MaxStringLen {
				t.Errorf("rule is %d bytes", len(s.Rule))
			}
		}},
		{"output control characters become spaces", falcoEdit(t, func(m map[string]any) {
			m["output"] = "15:31:56.746609046: Notice shell\nspawned\tby \u202eroot\x00"
		}), func(t *testing.T, s Signal) {
			if s.Reason != "shell spawned by  root" {
				t.Errorf("reason %q", s.Reason)
			}
		}},
		{"output truncated at a character boundary", falcoEdit(t, func(m map[string]any) { m["output"], m["priority"] = longOutput, "Critical" }), func(t *testing.T, s Signal) {
			if len(s.Reason) > MaxStringLen || len(s.Reason) < MaxStringLen-1 || !utf8.ValidString(s.Reason) || !strings.HasPrefix(s.Reason, "éé") {
				t.Errorf("reason is %d bytes: %.20q", len(s.Reason), s.Reason)
			}
		}},
		{"output with an ISO time prefix", falcoEdit(t, func(m map[string]any) {
			m["output"] = "2024-05-17T15:31:56.746609046+0000: Notice Something happened"
		}), func(t *testing.T, s Signal) {
			if s.Reason != "Something happened" {
				t.Errorf("reason %q", s.Reason)
			}
		}},
		{"output without a prefix", falcoEdit(t, func(m map[string]any) { m["output"] = "Note: Notice this" }), func(t *testing.T, s Signal) {
			if s.Reason != "Note: Notice this" {
				t.Errorf("reason %q", s.Reason)
			}
		}},
		{"output whose priority word differs keeps it", falcoEdit(t, func(m map[string]any) { m["output"] = "15:31:56.1: Critical x" }), func(t *testing.T, s Signal) {
			if s.Reason != "Critical x" {
				t.Errorf("reason %q", s.Reason)
			}
		}},
		{"output empty", falcoEdit(t, func(m map[string]any) { delete(m, "output") }), func(t *testing.T, s Signal) {
			if s.Reason != "Falco rule matched: Terminal shell in container" {
				t.Errorf("reason %q", s.Reason)
			}
		}},
		{"output only a prefix", falcoEdit(t, func(m map[string]any) { m["output"] = "15:31:56.746609046: Notice" }), func(t *testing.T, s Signal) {
			if s.Reason == "" {
				t.Error("empty reason")
			}
		}},
		{"unknown fields ignored", falcoEdit(t, func(m map[string]any) {
			m["future"] = map[string]any{"a": []any{1, 2, map[string]any{"b": nil}}}
			falcoOutputFields(m)["k8s.pod.labels"] = map[string]any{"app": "x"}
		}), func(t *testing.T, s Signal) {}},
		{"nesting at the limit", falcoEdit(t, func(m map[string]any) { m["future"] = nested(maxSignalDepth - 1) }), func(t *testing.T, s Signal) {}},
		{"nesting too deep", falcoEdit(t, func(m map[string]any) { m["future"] = nested(maxSignalDepth) }), nil},
		{"nesting too deep in output_fields", falcoEdit(t, func(m map[string]any) { falcoOutputFields(m)["x"] = nested(maxSignalDepth - 1) }), nil},
		{"output_fields at the limit", falcoEdit(t, manyFields(maxFalcoOutputFields)), func(t *testing.T, s Signal) {}},
		{"output_fields over the limit", falcoEdit(t, manyFields(maxFalcoOutputFields+1)), nil},
		{"device not a string", falcoEdit(t, func(m map[string]any) { falcoOutputFields(m)["ztna.device"] = 12 }), nil},
		{"device malformed", falcoEdit(t, func(m map[string]any) { falcoOutputFields(m)["ztna.device"] = "dev/../x" }), nil},
		{"user malformed", falcoEdit(t, func(m map[string]any) { falcoOutputFields(m)["ztna.user"] = "al\x01ice" }), nil},
		{"hostname too long", falcoEdit(t, func(m map[string]any) { m["hostname"] = strings.Repeat("h", maxSignalHostnameLen+1) }), nil},
		{"hostname not printable", falcoEdit(t, func(m map[string]any) { m["hostname"] = "alice\u2028laptop" }), nil},
		{"time absent", falcoEdit(t, func(m map[string]any) { delete(m, "time") }), func(t *testing.T, s Signal) {
			if !s.Time.IsZero() {
				t.Errorf("time %v", s.Time)
			}
		}},
		{"time malformed", falcoEdit(t, func(m map[string]any) { m["time"] = "yesterday" }), nil},
		{"tags at the limit", falcoEdit(t, func(m map[string]any) { m["tags"] = make([]any, MaxSignalTags); fillTags(m) }), func(t *testing.T, s Signal) {
			if len(s.Tags) != MaxSignalTags {
				t.Errorf("%d tags", len(s.Tags))
			}
		}},
		{"too many tags", falcoEdit(t, func(m map[string]any) { m["tags"] = make([]any, MaxSignalTags+1); fillTags(m) }), nil},
		{"tag not a string", falcoEdit(t, func(m map[string]any) { m["tags"] = []any{"a", 1} }), nil},
		{"tag too long", falcoEdit(t, func(m map[string]any) { m["tags"] = []any{strings.Repeat("t", maxSignalTagLen+1)} }), nil},
		{"tags null", falcoEdit(t, func(m map[string]any) { m["tags"] = nil }), func(t *testing.T, s Signal) {
			if s.Tags != nil {
				t.Errorf("tags %q", s.Tags)
			}
		}},
		{"invalid UTF-8 in output", []byte(strings.Replace(string(falcoSample(t)), "A shell", "A \xff shell", 1)), func(t *testing.T, s Signal) {
			if !strings.HasPrefix(s.Reason, "A \uFFFD shell") {
				t.Errorf("reason %.20q", s.Reason)
			}
		}},
		{"duplicate priority", []byte(`{"priority":"Debug","rule":"r","hostname":"h","priority":"Critical"}`), nil},
		{"duplicate device", []byte(`{"priority":"Debug","rule":"r","output_fields":{"ztna.device":"dev-a","ztna.device":"dev-b"}}`), nil},
		{"duplicate unknown field", []byte(`{"priority":"Debug","rule":"r","hostname":"h","uuid":"a","uuid":"b"}`), func(t *testing.T, s Signal) {}},
		{"trailing data", append(falcoSample(t), []byte(`{}`)...), nil},
		{"not an object", []byte(`["priority","Critical"]`), nil},
		{"empty", nil, nil},
		{"truncated", falcoSample(t)[:100], nil},
		{"too large", falcoEdit(t, func(m map[string]any) { m["padding"] = strings.Repeat("x", MaxSignalBytes) }), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := ParseFalco(c.body)
			if c.check == nil {
				if err == nil {
					t.Fatalf("accepted: %+v", s)
				}
				checkSignalError(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Kind != SignalDetection || s.Source != SourceFalco {
				t.Errorf("kind %q source %q", s.Kind, s.Source)
			}
			checkSignalBounds(t, s)
			c.check(t, s)
		})
	}
}

func fillTags(m map[string]any) {
	tags := m["tags"].([]any)
	for i := range tags {
		tags[i] = fmt.Sprintf("tag%d", i)
	}
}

func TestParseSignal(t *testing.T) {
	full := `{"kind":"detection","source":"crowdstrike","severity":"critical","device_id":"dev-0123456789abcdef",
		"hostname":"alice-laptop","user":"alice@example.com","rule":"Ransomware","reason":"Ransomware behaviour blocked",
		"fix":"Call the help desk","edr":"falcon-sensor","time":"2025-01-02T15:04:05.5+09:00","tags":["ransomware","T1486"]}`
	cases := []struct {
		name string
		body string
		want *Signal // nil: want an error
	}{
		{"full", full, &Signal{
			Kind: SignalDetection, Source: "crowdstrike", Severity: SeverityCritical,
			DeviceID: "dev-0123456789abcdef", Hostname: "alice-laptop", UserID: "alice@example.com",
			Rule: "Ransomware", Reason: "Ransomware behaviour blocked", Fix: "Call the help desk", EDR: "falcon-sensor",
			Time: time.Date(2025, 1, 2, 6, 4, 5, 500_000_000, time.UTC), Tags: []string{"ransomware", "T1486"},
		}},
		{"user-level detection, defaults", `{"severity":"high","user":"bob","reason":"Impossible travel"}`, &Signal{
			Kind: SignalDetection, Source: "webhook", Severity: SeverityError, UserID: "bob", Reason: "Impossible travel",
		}},
		{"edr check-in", `{"kind":"edr_checkin","source":"crowdstrike","edr":"falcon-sensor","hostname":"alice-laptop","time":"2025-01-02T15:04:05Z"}`, &Signal{
			Kind: SignalEDRCheckIn, Source: "crowdstrike", Severity: SeverityInformational, Hostname: "alice-laptop",
			EDR: "falcon-sensor", Time: time.Date(2025, 1, 2, 15, 4, 5, 0, time.UTC),
		}},
		{"check-in with a severity", `{"kind":"edr_checkin","severity":"notice","edr":"x","device_id":"dev-1"}`, &Signal{
			Kind: SignalEDRCheckIn, Source: "webhook", Severity: SeverityNotice, DeviceID: "dev-1", EDR: "x",
		}},
		{"values trimmed, free text cleaned", `{"severity":" warn ","device_id":" dev-1 ","reason":"line one\nline two\t!","fix":"\u2028restart\r\n"}`, &Signal{
			Kind: SignalDetection, Source: "webhook", Severity: SeverityWarning, DeviceID: "dev-1", Reason: "line one line two !", Fix: "restart",
		}},
		{"empty tags", `{"severity":"low","device_id":"d","reason":"r","tags":[]}`, &Signal{
			Kind: SignalDetection, Source: "webhook", Severity: SeverityNotice, DeviceID: "d", Reason: "r",
		}},
		{"detection without severity", `{"device_id":"d","reason":"r"}`, nil},
		{"detection without reason", `{"severity":"low","device_id":"d"}`, nil},
		{"detection with a blank reason", `{"severity":"low","device_id":"d","reason":" \n "}`, nil},
		{"detection without subject", `{"severity":"low","reason":"r"}`, nil},
		{"check-in without edr", `{"kind":"edr_checkin","device_id":"d"}`, nil},
		{"check-in for a user", `{"kind":"edr_checkin","edr":"x","user":"bob"}`, nil},
		{"unknown kind", `{"kind":"alert","severity":"low","device_id":"d","reason":"r"}`, nil},
		{"unknown severity", `{"severity":"urgent","device_id":"d","reason":"r"}`, nil},
		{"unknown field", `{"severity":"low","device_id":"d","reason":"r","extra":"x"}`, nil},
		{"field name in another case", `{"Severity":"low","device_id":"d","reason":"r"}`, nil},
		{"duplicate field", `{"severity":"low","device_id":"d","reason":"r","device_id":"e"}`, nil},
		{"duplicate tags", `{"severity":"low","device_id":"d","reason":"r","tags":[],"tags":["a"]}`, nil},
		{"null value", `{"severity":"low","device_id":"d","reason":"r","fix":null}`, nil},
		{"null tags", `{"severity":"low","device_id":"d","reason":"r","tags":null}`, nil},
		{"number value", `{"severity":3,"device_id":"d","reason":"r"}`, nil},
		{"object value", `{"severity":"low","device_id":{"id":"d"},"reason":"r"}`, nil},
		{"tags not an array", `{"severity":"low","device_id":"d","reason":"r","tags":"a"}`, nil},
		{"tag not a string", `{"severity":"low","device_id":"d","reason":"r","tags":[["a"]]}`, nil},
		{"tag with a control character", `{"severity":"low","device_id":"d","reason":"r","tags":["a\u0007"]}`, nil},
		{"too many tags", `{"severity":"low","device_id":"d","reason":"r","tags":[` + strings.Repeat(`"t",`, MaxSignalTags) + `"t"]}`, nil},
		{"trailing data", `{"severity":"low","device_id":"d","reason":"r"} {}`, nil},
		{"trailing garbage", `{"severity":"low","device_id":"d","reason":"r"}x`, nil},
		{"not an object", `"detection"`, nil},
		{"empty body", ``, nil},
		{"invalid UTF-8", "{\"severity\":\"low\",\"device_id\":\"d\",\"reason\":\"r\xff\"}", nil},
		{"reason too long", `{"severity":"low","device_id":"d","reason":"` + strings.Repeat("r", MaxStringLen+1) + `"}`, nil},
		{"rule with a line break", `{"severity":"low","device_id":"d","reason":"r","rule":"a\nb"}`, nil},
		{"device ID malformed", `{"severity":"low","device_id":"dev 1","reason":"r"}`, nil},
		{"device ID too long", `{"severity":"low","device_id":"` + strings.Repeat("d", 65) + `","reason":"r"}`, nil},
		{"user too long", `{"severity":"low","user":"` + strings.Repeat("u", 256) + `","reason":"r"}`, nil},
		{"source malformed", `{"source":"crowd strike","severity":"low","device_id":"d","reason":"r"}`, nil},
		{"source too long", `{"source":"` + strings.Repeat("s", maxSignalSourceLen+1) + `","severity":"low","device_id":"d","reason":"r"}`, nil},
		{"time malformed", `{"severity":"low","device_id":"d","reason":"r","time":"2025-01-02 15:04:05"}`, nil},
		{"too large", `{"severity":"low","device_id":"d","reason":"r","fix":"` + strings.Repeat(" ", MaxSignalBytes) + `"}`, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := ParseSignal([]byte(c.body))
			if c.want == nil {
				if err == nil {
					t.Fatalf("accepted: %+v", s)
				}
				checkSignalError(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !s.Time.Equal(c.want.Time) {
				t.Errorf("time %v, want %v", s.Time, c.want.Time)
			}
			s.Time, c.want.Time = time.Time{}, time.Time{}
			if !reflect.DeepEqual(s, *c.want) {
				t.Errorf("got  %+v\nwant %+v", s, *c.want)
			}
			checkSignalBounds(t, s)
		})
	}
}

// checkSignalError asserts the documented error shape: it is
// ErrMalformedSignal and unwraps to the bare detail.
func checkSignalError(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrMalformedSignal) {
		t.Fatalf("error is not ErrMalformedSignal: %v", err)
	}
	detail := errors.Unwrap(err)
	if detail == nil || detail.Error() == "" || err.Error() != ErrMalformedSignal.Error()+": "+detail.Error() {
		t.Fatalf("error %q does not unwrap to its detail (%v)", err, detail)
	}
}

// checkSignalBounds asserts what the Signal documentation promises of a
// parsed signal.
func checkSignalBounds(t *testing.T, s Signal) {
	t.Helper()
	if s.Kind != SignalDetection && s.Kind != SignalEDRCheckIn {
		t.Fatalf("kind %q", s.Kind)
	}
	if !s.Severity.valid() {
		t.Fatalf("severity %d", s.Severity)
	}
	if !isSourceName(s.Source) {
		t.Fatalf("source %q", s.Source)
	}
	text := func(field, v string, max int) {
		t.Helper()
		if len(v) > max {
			t.Fatalf("%s is %d bytes, limit %d", field, len(v), max)
		}
		if !utf8.ValidString(v) {
			t.Fatalf("%s is not UTF-8: %q", field, v)
		}
		if strings.TrimSpace(v) != v {
			t.Fatalf("%s is not trimmed: %q", field, v)
		}
		for _, r := range v {
			if !unicode.IsPrint(r) {
				t.Fatalf("%s holds %U: %q", field, r, v)
			}
		}
	}
	text("hostname", s.Hostname, maxSignalHostnameLen)
	text("user", s.UserID, maxUserIDLen)
	text("rule", s.Rule, MaxStringLen)
	text("reason", s.Reason, MaxStringLen)
	text("fix", s.Fix, MaxStringLen)
	text("edr", s.EDR, MaxStringLen)
	if s.DeviceID != "" && checkDeviceID(s.DeviceID) != nil {
		t.Fatalf("device ID %q", s.DeviceID)
	}
	if s.UserID != "" && checkUserID(s.UserID) != nil {
		t.Fatalf("user ID %q", s.UserID)
	}
	if len(s.Tags) > MaxSignalTags {
		t.Fatalf("%d tags", len(s.Tags))
	}
	for i, tag := range s.Tags {
		if tag == "" {
			t.Fatalf("tags[%d] empty", i)
		}
		text(fmt.Sprintf("tags[%d]", i), tag, maxSignalTagLen)
	}
	switch s.Kind {
	case SignalDetection:
		if s.Reason == "" || (s.DeviceID == "" && s.Hostname == "" && s.UserID == "") {
			t.Fatalf("detection without reason or subject: %+v", s)
		}
	case SignalEDRCheckIn:
		if s.EDR == "" || (s.DeviceID == "" && s.Hostname == "") {
			t.Fatalf("check-in without EDR or device: %+v", s)
		}
	}
}

// genericJSON encodes s as a generic signal body.
func genericJSON(t *testing.T, s Signal) []byte {
	t.Helper()
	m := map[string]any{"kind": s.Kind, "source": s.Source, "severity": s.Severity.String()}
	for k, v := range map[string]string{
		"device_id": s.DeviceID, "hostname": s.Hostname, "user": s.UserID, "rule": s.Rule,
		"reason": s.Reason, "fix": s.Fix, "edr": s.EDR,
	} {
		if v != "" {
			m[k] = v
		}
	}
	if !s.Time.IsZero() {
		m["time"] = s.Time.Format(time.RFC3339Nano)
	}
	if s.Tags != nil {
		m["tags"] = s.Tags
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func FuzzParseFalco(f *testing.F) {
	f.Add(falcoSample(f))
	f.Add([]byte(`{"priority":"Critical","rule":"r","hostname":"h","output":"00:00:00.000000000: Critical x\ny"}`))
	f.Add([]byte(`{"priority":"debug","rule":"r","output_fields":{"ztna.device":"dev-1","ztna.user":"u","a":[{"b":null}]},"tags":["a"]}`))
	f.Add([]byte(`{"priority":"Warning","rule":"r","hostname":"h","time":"2024-05-17T15:31:56Z","x":[[[[1]]]]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseFalco(b)
		if err != nil {
			checkSignalError(t, err)
			return
		}
		checkSignalBounds(t, s)
		if s.Kind != SignalDetection || s.Source != SourceFalco || s.Rule == "" || (s.DeviceID == "" && s.Hostname == "") {
			t.Fatalf("accepted an incomplete Falco signal: %+v", s)
		}
		again, err := ParseFalco(b)
		if err != nil || !reflect.DeepEqual(s, again) {
			t.Fatalf("not deterministic: %+v / %+v, %v", s, again, err)
		}
	})
}

func FuzzParseSignal(f *testing.F) {
	f.Add([]byte(`{"kind":"detection","source":"crowdstrike","severity":"critical","device_id":"dev-1","hostname":"h","user":"u","rule":"r","reason":"x\ny","fix":"f","edr":"e","time":"2025-01-02T15:04:05Z","tags":["a"]}`))
	f.Add([]byte(`{"kind":"edr_checkin","edr":"falcon-sensor","hostname":"alice-laptop"}`))
	f.Add([]byte(`{"severity":"high","user":"bob","reason":"r","tags":[]}`))
	f.Add([]byte(`{"severity":"low","device_id":"d","reason":"r","device_id":"e"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSignal(b)
		if err != nil {
			checkSignalError(t, err)
			return
		}
		checkSignalBounds(t, s)
		// What was accepted encodes back to a body that parses to the same
		// signal: cleaning and trimming are idempotent.
		again, err := ParseSignal(genericJSON(t, s))
		if err != nil {
			t.Fatalf("re-encoded signal refused: %v (%+v)", err, s)
		}
		if !again.Time.Equal(s.Time) {
			t.Fatalf("time %v became %v", s.Time, again.Time)
		}
		again.Time, s.Time = time.Time{}, time.Time{}
		if !reflect.DeepEqual(s, again) {
			t.Fatalf("round trip changed the signal:\n%+v\n%+v", s, again)
		}
	})
}

func TestSignalErrorDetail(t *testing.T) {
	cases := []struct {
		parse func([]byte) (Signal, error)
		body  string
		want  string
	}{
		{ParseSignal, `{"device_id":"d","reason":"r"}`, "severity: required for a detection"},
		{ParseSignal, `{"severity":"low","device_id":"d","reason":"r","x":1}`, `unknown field "x"`},
		{ParseSignal, "\xff", "body is not valid UTF-8"},
		{ParseFalco, `{"priority":"Critical","hostname":"h"}`, "rule: required"},
		{ParseFalco, strings.Repeat(" ", MaxSignalBytes+1), fmt.Sprintf("%d bytes, limit %d", MaxSignalBytes+1, MaxSignalBytes)},
	}
	for _, c := range cases {
		_, err := c.parse([]byte(c.body))
		if err == nil {
			t.Errorf("%.30q accepted", c.body)
			continue
		}
		checkSignalError(t, err)
		if got := errors.Unwrap(err).Error(); got != c.want {
			t.Errorf("%.30q: detail %q, want %q", c.body, got, c.want)
		}
	}
}
