package bus

import (
	"errors"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	long := strings.Repeat("k", MaxKey+1)
	tests := []struct {
		in   string
		want Event
		ok   bool
	}{
		{`{"k":"session_revoked","id":"abc","o":"r1"}`, Event{Kind: SessionRevoked, Key: "abc", Origin: "r1"}, true},
		{`{"k":"quarantine","o":"r1"}`, Event{Kind: Quarantine, Origin: "r1"}, true},
		{`{"k":"policy","id":"v1","o":"r2","extra":1}`, Event{Kind: Policy, Key: "v1", Origin: "r2"}, true},
		{`{"k":"drop_tables","id":"x","o":"r1"}`, Event{}, false}, // unknown kind
		{`{"k":"report","id":"d1"}`, Event{}, false},              // no origin
		{`{"k":"report","id":"` + long + `","o":"r1"}`, Event{}, false},
		{`{"k":"report","id":"d1","o":"` + long + `"}`, Event{}, false},
		{`not json`, Event{}, false},
		{``, Event{}, false},
		{`{"k":1}`, Event{}, false},
	}
	for _, tt := range tests {
		got, err := decode([]byte(tt.in))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("decode(%.40q) = %+v, %v; want %+v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, errBadEvent) {
			t.Errorf("decode(%.40q): %v does not wrap errBadEvent", tt.in, err)
		}
	}
}

// FuzzDecode: whatever arrives on the channel, decode either refuses it
// with errBadEvent or returns an event of a known kind within bounds.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"k":"session_revoked","id":"abc","o":"r1"}`))
	f.Add([]byte(`{"k":"quarantine","o":"r1"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decode(b)
		if err != nil {
			if !errors.Is(err, errBadEvent) {
				t.Fatalf("error does not wrap errBadEvent: %v", err)
			}
			return
		}
		switch e.Kind {
		case SessionRevoked, SessionUpdated, DeviceRevoked, Quarantine, Report, Policy:
		default:
			t.Fatalf("accepted kind %q", e.Kind)
		}
		if e.Origin == "" || len(e.Origin) > MaxKey || len(e.Key) > MaxKey {
			t.Fatalf("accepted out-of-bounds event %+v", e)
		}
	})
}
