package usercode

import (
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		c := New()
		if len(c) != Len || strings.Trim(c, Alphabet) != "" {
			t.Fatalf("code %q", c)
		}
		seen[c] = true
	}
	if len(seen) < 199 {
		t.Errorf("only %d distinct codes of 200", len(seen))
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"BCDF-GHJK", "BCDFGHJK", true},
		{"bcdf-ghjk", "BCDFGHJK", true},
		{" bcdf ghjk ", "BCDFGHJK", true},
		{"BCDFGHJK", "BCDFGHJK", true},
		{"BCDF-GHJ", "", false},
		{"BCDF-GHJKL", "", false},
		{"BCDF-GHJA", "", false}, // a vowel
		{"BCDF-GHJ1", "", false},
		{"BCDF_GHJK", "", false},
		{"", "", false},
		{"BCDF---------GHJK", "", false}, // longer than anyone types
		{"BCDF-GHJ\u212A", "", false},    // the Kelvin sign is not K
	}
	for _, tt := range tests {
		got, ok := Normalize(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Normalize(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// FuzzNormalize: whatever Normalize accepts is a code of the alphabet, and
// its formatted form, in either case, normalises back to it.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"BCDF-GHJK", "bcdfghjk", " B C D F G H J K ", "BCDF-GHJA", "\u212A", "--------", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, ok := Normalize(s)
		if !ok {
			return
		}
		if len(c) != Len || strings.Trim(c, Alphabet) != "" {
			t.Fatalf("Normalize(%q) = %q", s, c)
		}
		for _, again := range []string{Format(c), strings.ToLower(Format(c)), strings.ToLower(s)} {
			if c2, ok := Normalize(again); !ok || c2 != c {
				t.Fatalf("Normalize(%q) = %q, %v; want %q", again, c2, ok, c)
			}
		}
	})
}
