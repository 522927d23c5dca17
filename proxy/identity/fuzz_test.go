package identity

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// FuzzVerify feeds arbitrary strings to Verify. It must never panic, and it
// must never accept a token the signer did not produce. The seed tokens are
// identical in every fuzz worker (fixed key, fixed claims, deterministic
// signatures), so "produced" means the same set everywhere.
func FuzzVerify(f *testing.F) {
	key := fixedKey(f, "1")
	ks := NewKeySet(key)
	kid := ks.keys[0].kid
	signer := testSigner(ks)
	other := fixedKey(f, "other")
	otherKid, _ := thumbprint(&other.PublicKey)

	produced := make(map[string]bool)
	for _, edit := range []func(*Claims){
		func(c *Claims) {},
		func(c *Claims) { c.Groups = nil; c.Email = ""; c.Name = "" },
		func(c *Claims) { c.Name = "Ålice \"the\" <admin> \u2028"; c.Device = "dev-1"; c.Posture = "ok" },
		func(c *Claims) { c.Groups = strings.Split(strings.Repeat("g,", 100), ",") },
	} {
		c := validClaims()
		edit(&c)
		tok := mustSign(f, signer, c)
		produced[tok] = true
		f.Add(tok)
	}

	claims := validClaims()
	claims.Issuer = testIssuer
	valid := mustSign(f, signer, claims)
	parts := strings.Split(valid, ".")
	for _, s := range []string{
		"",
		".",
		"..",
		"a.b.c",
		parts[0] + "." + parts[1],
		valid + ".",
		valid[:len(valid)-2],
		parts[0] + "." + parts[1] + ".",
		b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + ".",
		hs256(f, map[string]any{"alg": "HS256", "kid": kid, "typ": "JWT"}, claims, ks.JWKS()),
		signRaw(f, other, es256Header(kid), claims),
		signRaw(f, other, es256Header(otherKid), claims),
		signRaw(f, key, map[string]any{"alg": "ES256", "kid": kid, "typ": "JWT", "jku": "https://evil.example/jwks"}, claims),
		signRaw(f, key, es256Header(kid), []byte(`{"iss":"`+testIssuer+`","aud":"wiki","exp":99999999999}`)),
		signRaw(f, key, es256Header(kid), []byte(`{]`)),
		mustSign(f, signer, func() Claims { c := validClaims(); c.Expiry = testNow.Add(-time.Hour).Unix(); return c }()),
		mustSign(f, signer, func() Claims { c := validClaims(); c.Audience = "payroll"; return c }()),
	} {
		f.Add(s)
	}

	sentinels := []error{ErrTooLarge, ErrMalformed, ErrAlgorithm, ErrUnknownKey, ErrSignature,
		ErrIssuer, ErrAudience, ErrExpired, ErrNotYetValid, ErrMissingClaim}
	v := newTestVerifier(f, VerifierConfig{Keys: ks.JWKS()}, newClock(testNow))
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(context.Background(), token)
		if err == nil {
			if !produced[token] {
				t.Fatalf("accepted a token the signer never produced: %q", token)
			}
			if c == nil || c.Subject == "" || c.Audience != testAudience {
				t.Fatalf("accepted with bad claims %+v", c)
			}
			return
		}
		if c != nil {
			t.Fatalf("claims returned with error %v", err)
		}
		for _, s := range sentinels {
			if errors.Is(err, s) {
				return
			}
		}
		t.Fatalf("error %v wraps none of the package's sentinel errors", err)
	})
}

// bytesConn is a connection whose peer sent data and closed. Unlike
// net.Pipe it needs no writer goroutine, so a fuzz input always runs the
// same way (the engine needs that to minimise inputs); deadlines are tested
// with real sockets elsewhere.
type bytesConn struct {
	r      *bytes.Reader
	closed atomic.Bool
}

func (c *bytesConn) Read(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	return c.r.Read(b)
}

func (c *bytesConn) Write(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	return len(b), nil
}

func (c *bytesConn) Close() error {
	if c.closed.Swap(true) {
		return net.ErrClosed
	}
	return nil
}

func (c *bytesConn) LocalAddr() net.Addr { return testEdgeAddr }
func (c *bytesConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }

// connListener hands the fuzz target's connections to NewListener.
type connListener struct{ conns chan net.Conn }

func (l connListener) Accept() (net.Conn, error) {
	c, ok := <-l.conns
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l connListener) Close() error   { return nil }
func (l connListener) Addr() net.Addr { return testEdgeAddr }

// FuzzListenerHeader feeds arbitrary bytes as the start of a connection to a
// NewListener listener. It must never panic, never yield an identity unless
// the bytes carry a token the test signer produced, and after a verified
// header the app must read exactly the bytes that follow it.
func FuzzListenerHeader(f *testing.F) {
	ks := NewKeySet(fixedKey(f, "1"))
	kid := ks.keys[0].kid
	signer := testSigner(ks)
	produced := make(map[string]string) // token → jti
	sign := func(edit func(*Claims)) string {
		c := validClaims()
		edit(&c)
		tok := mustSign(f, signer, c)
		produced[tok] = c.ID
		return tok
	}
	valid := sign(func(*Claims) {})
	bob := sign(func(c *Claims) { c.Subject, c.ID, c.Groups = "u-bob", "jti-bob", nil })
	expired := mustSign(f, signer, func() Claims { c := validClaims(); c.Expiry = testNow.Add(-time.Hour).Unix(); return c }())
	wrongAud := mustSign(f, signer, func() Claims { c := validClaims(); c.Audience = "payroll"; return c }())
	claims := validClaims()
	claims.Issuer = testIssuer
	forged := signRaw(f, fixedKey(f, "other"), es256Header(kid), claims)

	full := func(tok string) []proxyproto.TLV {
		return []proxyproto.TLV{
			{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte(testAuthority)},
			{Type: proxyproto.PP2_TYPE_UNIQUE_ID, Value: []byte(testUniqueID)},
			{Type: TLVTypeIdentity, Value: []byte(tok)},
		}
	}
	good := proxyHeader(f, testClient, testEdgeAddr, full(valid))
	for _, seed := range [][]byte{
		good,
		append(slices.Clone(good), "GET / HTTP/1.1\r\n\r\n"...),
		proxyHeader(f, testClient6, testEdge6, []proxyproto.TLV{{Type: TLVTypeIdentity, Value: []byte(bob)}}),
		proxyHeader(f, testClient, testEdgeAddr, full(expired)),
		proxyHeader(f, testClient, testEdgeAddr, full(wrongAud)),
		proxyHeader(f, testClient, testEdgeAddr, full(forged)),
		proxyHeader(f, testClient, testEdgeAddr, append(full(valid), proxyproto.TLV{Type: TLVTypeIdentity, Value: []byte(bob)})),
		proxyHeader(f, testClient, testEdgeAddr, nil),
		good[:len(good)/2],
		good[:16],
		[]byte("PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\n"),
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		{},
	} {
		f.Add(seed)
	}

	cl := connListener{conns: make(chan net.Conn, 1)}
	v := newTestVerifier(f, VerifierConfig{Keys: ks.JWKS()}, newClock(testNow))
	ln, err := NewListener(cl, ListenerConfig{Verifier: v, HeaderTimeout: 5 * time.Second})
	if err != nil {
		f.Fatal(err)
	}
	sentinels := []error{ErrProxyHeader, ErrTooLarge, ErrMalformed, ErrAlgorithm, ErrUnknownKey, ErrSignature,
		ErrIssuer, ErrAudience, ErrExpired, ErrNotYetValid, ErrMissingClaim}

	f.Fuzz(func(t *testing.T, data []byte) {
		raw := &bytesConn{r: bytes.NewReader(data)}
		cl.conns <- raw
		nc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c := nc.(*Conn)
		defer c.Close()

		got, err := c.Identity()
		if err != nil {
			if got != nil || c.ClientAddr() != nil {
				t.Fatalf("identity or address returned with error %v", err)
			}
			if n, rerr := c.Read(make([]byte, 8)); n != 0 || rerr == nil {
				t.Fatalf("Read after rejection = %d, %v", n, rerr)
			}
			if !raw.closed.Load() {
				t.Fatal("rejected connection left open")
			}
			for _, s := range sentinels {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error %v wraps none of the package's sentinel errors", err)
		}

		var jtis []string
		for tok, jti := range produced {
			if bytes.Contains(data, []byte(tok)) {
				jtis = append(jtis, jti)
			}
		}
		if !slices.Contains(jtis, got.ID) {
			t.Fatalf("identity %+v from bytes that carry no token the signer produced", got)
		}
		if c.ClientAddr() == nil || got.Audience != testAudience {
			t.Fatalf("verified without a client address or for audience %q", got.Audience)
		}
		// A verified header is v2: 16 fixed bytes and the length it gives.
		hdrLen := 16 + int(binary.BigEndian.Uint16(data[14:16]))
		rest, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading after the header: %v", err)
		}
		if !bytes.Equal(rest, data[hdrLen:]) {
			t.Fatalf("app read %d bytes after a %d-byte header; want the %d that followed it", len(rest), hdrLen, len(data)-hdrLen)
		}
	})
}
