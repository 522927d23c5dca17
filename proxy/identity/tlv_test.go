package identity

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

func TestParseIdentityTLVs(t *testing.T) {
	tok := "aaa.bbb.ccc"
	tlv := func(typ proxyproto.PP2Type, v string) proxyproto.TLV {
		return proxyproto.TLV{Type: typ, Value: []byte(v)}
	}
	auth, uid, id := proxyproto.PP2_TYPE_AUTHORITY, proxyproto.PP2_TYPE_UNIQUE_ID, proxyproto.PP2Type(TLVTypeIdentity)
	for _, tc := range []struct {
		name                       string
		tlvs                       []proxyproto.TLV
		wantTok, wantAuth, wantUID string
		wantErr                    string // empty: no error
	}{
		{name: "all three", tlvs: []proxyproto.TLV{tlv(auth, "wiki.corp.example"), tlv(uid, "s-1"), tlv(id, tok)},
			wantTok: tok, wantAuth: "wiki.corp.example", wantUID: "s-1"},
		{name: "identity only", tlvs: []proxyproto.TLV{tlv(id, tok)}, wantTok: tok},
		{name: "any order, other types ignored",
			tlvs:    []proxyproto.TLV{tlv(proxyproto.PP2_TYPE_NOOP, ""), tlv(id, tok), tlv(0xE1, "x"), tlv(proxyproto.PP2_TYPE_ALPN, "h2"), tlv(uid, "s-1")},
			wantTok: tok, wantUID: "s-1"},
		{name: "empty authority and unique ID are absent", tlvs: []proxyproto.TLV{tlv(auth, ""), tlv(uid, ""), tlv(id, tok)}, wantTok: tok},
		{name: "longest authority and unique ID",
			tlvs:    []proxyproto.TLV{tlv(auth, strings.Repeat("a", 255)), tlv(uid, strings.Repeat("u", 128)), tlv(id, tok)},
			wantTok: tok, wantAuth: strings.Repeat("a", 255), wantUID: strings.Repeat("u", 128)},
		{name: "none", tlvs: nil, wantErr: "no identity TLV"},
		{name: "empty identity", tlvs: []proxyproto.TLV{tlv(id, "")}, wantErr: "empty identity TLV"},
		{name: "two identities", tlvs: []proxyproto.TLV{tlv(id, tok), tlv(id, tok)}, wantErr: "more than one identity"},
		{name: "two authorities", tlvs: []proxyproto.TLV{tlv(auth, "a"), tlv(auth, "b"), tlv(id, tok)}, wantErr: "more than one AUTHORITY"},
		{name: "two unique IDs", tlvs: []proxyproto.TLV{tlv(uid, "a"), tlv(uid, "a"), tlv(id, tok)}, wantErr: "more than one UNIQUE_ID"},
		{name: "authority too long", tlvs: []proxyproto.TLV{tlv(auth, strings.Repeat("a", 256)), tlv(id, tok)}, wantErr: "authority of 256 bytes"},
		{name: "unique ID too long", tlvs: []proxyproto.TLV{tlv(uid, strings.Repeat("u", 129)), tlv(id, tok)}, wantErr: "unique ID of 129 bytes"},
		{name: "control character in authority", tlvs: []proxyproto.TLV{tlv(auth, "wiki\r\nX-Admin: 1"), tlv(id, tok)}, wantErr: "not printable"},
		{name: "space in unique ID", tlvs: []proxyproto.TLV{tlv(uid, "s 1"), tlv(id, tok)}, wantErr: "not printable"},
		{name: "UTF-8 in authority", tlvs: []proxyproto.TLV{tlv(auth, "wiki.bücher.example"), tlv(id, tok)}, wantErr: "not printable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotTok, gotAuth, gotUID, err := ParseIdentityTLVs(tc.tlvs)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrProxyHeader) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v; want ErrProxyHeader with %q", err, tc.wantErr)
				}
				if gotTok != "" || gotAuth != "" || gotUID != "" {
					t.Errorf("values returned with an error: %q %q %q", gotTok, gotAuth, gotUID)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if gotTok != tc.wantTok || gotAuth != tc.wantAuth || gotUID != tc.wantUID {
				t.Errorf("got %q %q %q, want %q %q %q", gotTok, gotAuth, gotUID, tc.wantTok, tc.wantAuth, tc.wantUID)
			}
		})
	}
}

func TestIdentityTLVs(t *testing.T) {
	tok := strings.Repeat("a", 100) + "." + strings.Repeat("b", 100) + ".c"
	t.Run("round trip through a header", func(t *testing.T) {
		for _, tc := range []struct{ auth, uid string }{{"wiki.corp.example", "s-1"}, {"", ""}, {"db", ""}} {
			tlvs, err := IdentityTLVs(tok, tc.auth, tc.uid)
			if err != nil {
				t.Fatal(err)
			}
			h := proxyproto.HeaderProxyFromAddrs(2, testClient, testEdgeAddr)
			if err := h.SetTLVs(tlvs); err != nil {
				t.Fatal(err)
			}
			back, err := h.TLVs()
			if err != nil {
				t.Fatal(err)
			}
			gotTok, gotAuth, gotUID, err := ParseIdentityTLVs(back)
			if err != nil || gotTok != tok || gotAuth != tc.auth || gotUID != tc.uid {
				t.Errorf("ParseIdentityTLVs(IdentityTLVs(%q, %q)) = %q %q %q %v", tc.auth, tc.uid, gotTok, gotAuth, gotUID, err)
			}
		}
	})
	for _, tc := range []struct {
		name, tok, auth, uid string
		want                 error
	}{
		{"no token", "", "a", "u", ErrProxyHeader},
		{"token too long", strings.Repeat("a", MaxTLVTokenBytes+1), "", "", ErrTooLarge},
		{"token with a space", "a.b c.d", "", "", ErrProxyHeader},
		{"authority too long", tok, strings.Repeat("a", 256), "", ErrProxyHeader},
		{"unique ID too long", tok, "", strings.Repeat("u", 129), ErrProxyHeader},
		{"unique ID with newline", tok, "", "s\n1", ErrProxyHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tlvs, err := IdentityTLVs(tc.tok, tc.auth, tc.uid); !errors.Is(err, tc.want) || tlvs != nil {
				t.Errorf("IdentityTLVs = %v, %v; want %v", tlvs, err, tc.want)
			}
		})
	}
	if _, err := IdentityTLVs(strings.Repeat("a", MaxTLVTokenBytes), "", ""); err != nil {
		t.Errorf("token of exactly MaxTLVTokenBytes: %v", err)
	}
}

// TestMaxTLVTokenBytesFits checks the documented budget against the
// library: the largest header the edge can build (IPv6, longest AUTHORITY and
// UNIQUE_ID, largest token) is at most 4096 bytes and go-proxyproto reads it
// with its default limit.
func TestMaxTLVTokenBytesFits(t *testing.T) {
	tlvs, err := IdentityTLVs(strings.Repeat("a", MaxTLVTokenBytes), strings.Repeat("h", maxAuthorityBytes), strings.Repeat("u", maxUniqueIDBytes))
	if err != nil {
		t.Fatal(err)
	}
	hdr := proxyHeader(t, testClient6, testEdge6, tlvs)
	if len(hdr) > 4096 {
		t.Fatalf("largest header is %d bytes, over 4096", len(hdr))
	}
	t.Logf("largest header: %d bytes", len(hdr))
	h, err := proxyproto.Read(bufioReader(hdr))
	if err != nil {
		t.Fatalf("go-proxyproto rejects the largest header: %v", err)
	}
	back, _ := h.TLVs()
	if tok, _, _, err := ParseIdentityTLVs(back); err != nil || len(tok) != MaxTLVTokenBytes {
		t.Errorf("token of %d bytes, %v", len(tok), err)
	}
}

func TestSignFitting(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"))
	signer := testSigner(ks)
	v := newTestVerifier(t, VerifierConfig{Keys: ks.JWKS(), MaxTokenBytes: MaxTLVTokenBytes}, newClock(testNow))

	t.Run("many groups are truncated to fit", func(t *testing.T) {
		groups := make([]string, 300)
		for i := range groups {
			groups[i] = fmt.Sprintf("%03d-%s", i, strings.Repeat("g", 96)) // 100 bytes, order visible
		}
		c := validClaims()
		c.Groups = groups
		tok, err := signer.SignFitting(c, MaxTLVTokenBytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(tok) > MaxTLVTokenBytes {
			t.Fatalf("token of %d bytes, over %d", len(tok), MaxTLVTokenBytes)
		}
		got, err := v.Verify(context.Background(), tok)
		if err != nil {
			t.Fatal(err)
		}
		if !got.GroupsTruncated || len(got.Groups) == 0 || len(got.Groups) >= len(groups) {
			t.Fatalf("truncated %v, kept %d of %d groups", got.GroupsTruncated, len(got.Groups), len(groups))
		}
		if !slices.Equal(got.Groups, groups[:len(got.Groups)]) {
			t.Error("kept groups are not a prefix of the input")
		}
		// As many as fit: one more group would not.
		c.Groups = groups[:len(got.Groups)+1]
		c.GroupsTruncated = true
		if more, err := signer.Sign(c); err != nil || len(more) <= MaxTLVTokenBytes {
			t.Errorf("one more group gives %d bytes (%v); SignFitting kept too few", len(more), err)
		}
		if got.Subject != "u-alice" || got.Email != "alice@corp.example" || got.ID != "jti-1" {
			t.Errorf("other claims changed: %+v", got)
		}
	})

	t.Run("claims that fit are signed as Sign does", func(t *testing.T) {
		c := validClaims()
		want := mustSign(t, signer, c)
		got, err := signer.SignFitting(c, MaxTLVTokenBytes)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Error("SignFitting of claims that fit differs from Sign")
		}
		claims, err := v.Verify(context.Background(), got)
		if err != nil || claims.GroupsTruncated || len(claims.Groups) != 2 {
			t.Errorf("claims %+v, %v", claims, err)
		}
		// The limit is inclusive.
		if exact, err := signer.SignFitting(c, len(want)); err != nil || exact != want {
			t.Errorf("limit equal to the token's size: %v", err)
		}
	})

	t.Run("defaults are filled in", func(t *testing.T) {
		c := Claims{Subject: "u-bob", Audience: testAudience, Expiry: testNow.Add(time.Minute).Unix(), Groups: make([]string, 100)}
		for i := range c.Groups {
			c.Groups[i] = strings.Repeat("x", 50)
		}
		tok, err := signer.SignFitting(c, 1000)
		if err != nil {
			t.Fatal(err)
		}
		got, err := v.Verify(context.Background(), tok)
		if err != nil || len(tok) > 1000 || got.Issuer != testIssuer || got.ID == "" || got.IssuedAt != testNow.Unix() || !got.GroupsTruncated {
			t.Errorf("%d bytes: %+v, %v", len(tok), got, err)
		}
	})

	t.Run("impossible sizes", func(t *testing.T) {
		for _, limit := range []int{-1, 0, 100, 300} {
			c := validClaims()
			if tok, err := signer.SignFitting(c, limit); !errors.Is(err, ErrTooLarge) || tok != "" {
				t.Errorf("limit %d: %q, %v; want ErrTooLarge", limit, tok, err)
			}
		}
	})

	t.Run("missing claims", func(t *testing.T) {
		c := validClaims()
		c.Subject = ""
		if _, err := signer.SignFitting(c, MaxTLVTokenBytes); !errors.Is(err, ErrMissingClaim) {
			t.Errorf("err %v; want ErrMissingClaim", err)
		}
	})
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

var _ net.Conn = (*Conn)(nil)
