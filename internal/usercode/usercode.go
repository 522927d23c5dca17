// Package usercode is the short code a person reads on one screen and
// types on another: device enrollment (posture) and the CLI's device
// authorization grant (authn). A code is eight letters from an alphabet
// without vowels (no words) or look-alikes (RFC 8628 §6.1), shown as
// XXXX-XXXX, and typed back in any case, with or without the dash.
//
// What it must never be: a secret on its own. 20^8 ≈ 2.6·10^10 codes are
// guessable at an unbounded rate, so every caller bounds attempts and
// lifetimes.
package usercode

import (
	"crypto/rand"
	"strings"
)

const (
	// Alphabet is the letters codes are drawn from.
	Alphabet = "BCDFGHJKLMNPQRSTVWXZ"
	// Len is the length of a bare code.
	Len = 8
	// maxInput bounds what Normalize reads: a code with dashes and spaces.
	maxInput = 2 * Len
)

// New draws Len letters uniformly from Alphabet (rejection sampling: 256
// is not a multiple of 20). It returns the bare code.
func New() string {
	const limit = 256 - 256%len(Alphabet)
	out := make([]byte, 0, Len)
	var buf [16]byte
	for len(out) < Len {
		_, _ = rand.Read(buf[:]) // never fails: crypto/rand panics rather than return an error
		for _, c := range buf {
			if int(c) < limit && len(out) < Len {
				out = append(out, Alphabet[int(c)%len(Alphabet)])
			}
		}
	}
	return string(out)
}

// Normalize accepts what people type — any case, with or without the dash
// or spaces, at most 16 bytes — and returns the bare code.
func Normalize(s string) (string, bool) {
	if len(s) > maxInput {
		return "", false
	}
	var b [Len]byte
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '-' || c == ' ':
			continue
		case c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		}
		if strings.IndexByte(Alphabet, c) < 0 || n == Len {
			return "", false
		}
		b[n] = c
		n++
	}
	if n != Len {
		return "", false
	}
	return string(b[:]), true
}

// Format shows a bare code as XXXX-XXXX.
func Format(c string) string { return c[:Len/2] + "-" + c[Len/2:] }
