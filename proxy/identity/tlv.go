package identity

import (
	"errors"
	"fmt"

	"github.com/pires/go-proxyproto"
)

// TLVTypeIdentity is the PROXY protocol v2 TLV type that carries the signed
// identity: the same compact JWS as the HeaderName header, with aud = the
// app. It is the first type of the range the specification reserves for
// applications (PP2_TYPE_MIN_CUSTOM, 0xE0–0xEF).
const TLVTypeIdentity = 0xE0

// MaxTLVTokenBytes is the largest identity token the edge puts in the TLV.
// It keeps the largest header the edge sends within 4096 bytes, which is
// go-proxyproto's default receive limit (MaxV2HeaderSize; the library applies
// it to the part after the fixed 16 bytes, so this budget is conservative):
//
//	  16  fixed part: signature, version and command, family, length
//	  36  IPv6 source and destination addresses and ports (IPv4: 12)
//	 258  PP2_TYPE_AUTHORITY: 3 + at most 255 bytes
//	 131  PP2_TYPE_UNIQUE_ID: 3 + at most 128 bytes
//	   3  identity TLV type and length
//	3584  identity TLV value: at most MaxTLVTokenBytes
//	----
//	4028  leaving 68 bytes for TLVs a later edge may add (CRC32C is 7, ALPN
//	      "http/1.1" 11)
//
// A token that would be longer is signed with Signer.SignFitting, which drops
// groups (and says so in GroupsTruncated) rather than break the header.
const MaxTLVTokenBytes = 3584

// Limits the PROXY protocol v2 specification sets on the TLVs this package
// reads: AUTHORITY is a host name (from SNI or the request), UNIQUE_ID an
// opaque ID of at most 128 bytes.
const (
	maxAuthorityBytes = 255
	maxUniqueIDBytes  = 128
)

// ErrProxyHeader is returned (wrapped) for a connection that does not start
// with a usable PROXY v2 identity header: none at all, version 1, LOCAL,
// truncated, too large, not in time, or without a well-formed identity TLV.
// Problems with the token itself wrap the token errors (ErrSignature,
// ErrExpired, ErrAudience, ...) instead.
var ErrProxyHeader = errors.New("identity: bad PROXY header")

// IdentityTLVs returns the TLVs the edge puts in a PROXY v2 header, in the
// form ParseIdentityTLVs reads: AUTHORITY and UNIQUE_ID when not empty, then
// the identity token. It refuses values a listener would reject, so an edge
// bug shows up when the header is built and not as closed connections.
func IdentityTLVs(token, authority, uniqueID string) ([]proxyproto.TLV, error) {
	if err := checkTLVToken([]byte(token)); err != nil {
		return nil, err
	}
	if len(token) > MaxTLVTokenBytes {
		return nil, fmt.Errorf("%w: identity token of %d bytes (limit %d); sign it with SignFitting", ErrTooLarge, len(token), MaxTLVTokenBytes)
	}
	if err := checkTLVText("authority", []byte(authority), maxAuthorityBytes); err != nil {
		return nil, err
	}
	if err := checkTLVText("unique ID", []byte(uniqueID), maxUniqueIDBytes); err != nil {
		return nil, err
	}
	tlvs := make([]proxyproto.TLV, 0, 3)
	if authority != "" {
		tlvs = append(tlvs, proxyproto.TLV{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte(authority)})
	}
	if uniqueID != "" {
		tlvs = append(tlvs, proxyproto.TLV{Type: proxyproto.PP2_TYPE_UNIQUE_ID, Value: []byte(uniqueID)})
	}
	return append(tlvs, proxyproto.TLV{Type: TLVTypeIdentity, Value: []byte(token)}), nil
}

// ParseIdentityTLVs extracts the identity token, AUTHORITY and UNIQUE_ID from
// the TLVs of a PROXY v2 header. The token is required and must appear once;
// AUTHORITY and UNIQUE_ID are optional, at most once each, empty counts as
// absent, and must be printable ASCII within the specification's limits
// (255 and 128 bytes), so an app can log them as they are. Other TLV types
// are ignored. The token is returned unverified and unchecked: pass it to
// Verifier.Verify, which rejects an oversized one before parsing it.
// Errors wrap ErrProxyHeader and never contain the token.
func ParseIdentityTLVs(tlvs []proxyproto.TLV) (token, authority, uniqueID string, err error) {
	var haveToken, haveAuthority, haveUniqueID bool
	for _, t := range tlvs {
		switch t.Type {
		case TLVTypeIdentity:
			// Two identities in one header means something between the
			// edge and the app added one; which to believe is not ours to
			// guess.
			if haveToken {
				return "", "", "", fmt.Errorf("%w: more than one identity TLV", ErrProxyHeader)
			}
			haveToken = true
			if len(t.Value) == 0 {
				return "", "", "", fmt.Errorf("%w: empty identity TLV", ErrProxyHeader)
			}
			token = string(t.Value)
		case proxyproto.PP2_TYPE_AUTHORITY:
			if haveAuthority {
				return "", "", "", fmt.Errorf("%w: more than one AUTHORITY TLV", ErrProxyHeader)
			}
			haveAuthority = true
			if err := checkTLVText("authority", t.Value, maxAuthorityBytes); err != nil {
				return "", "", "", err
			}
			authority = string(t.Value)
		case proxyproto.PP2_TYPE_UNIQUE_ID:
			if haveUniqueID {
				return "", "", "", fmt.Errorf("%w: more than one UNIQUE_ID TLV", ErrProxyHeader)
			}
			haveUniqueID = true
			if err := checkTLVText("unique ID", t.Value, maxUniqueIDBytes); err != nil {
				return "", "", "", err
			}
			uniqueID = string(t.Value)
		}
	}
	if !haveToken {
		return "", "", "", fmt.Errorf("%w: no identity TLV (type %#02x)", ErrProxyHeader, TLVTypeIdentity)
	}
	return token, authority, uniqueID, nil
}

// checkTLVToken checks, for the edge, that a token is one a verifier can
// parse: not empty and only the compact JWS alphabet.
func checkTLVToken(v []byte) error {
	if len(v) == 0 {
		return fmt.Errorf("%w: empty identity TLV", ErrProxyHeader)
	}
	for i, b := range v {
		if !isTokenByte(b) {
			return fmt.Errorf("%w: identity TLV: invalid character at offset %d", ErrProxyHeader, i)
		}
	}
	return nil
}

func checkTLVText(what string, v []byte, max int) error {
	if len(v) > max {
		return fmt.Errorf("%w: %s of %d bytes (limit %d)", ErrProxyHeader, what, len(v), max)
	}
	for i, b := range v {
		if b < 0x21 || b > 0x7e {
			return fmt.Errorf("%w: %s: byte %#02x at offset %d is not printable ASCII", ErrProxyHeader, what, b, i)
		}
	}
	return nil
}
