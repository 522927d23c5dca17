package identity

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// Addresses the edge puts in test headers: the real client and the edge
// address it reached. Neither is the loopback peer of the test connection,
// so a test can tell the header's address from the socket's.
var (
	testClient   = &net.TCPAddr{IP: net.ParseIP("203.0.113.7").To4(), Port: 51234}
	testEdgeAddr = &net.TCPAddr{IP: net.ParseIP("198.51.100.1").To4(), Port: 443}
	testClient6  = &net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 51234}
	testEdge6    = &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 443}
)

const (
	testAuthority = "wiki.corp.example"
	testUniqueID  = "s-0123456789abcdef"
)

// listenerEnv is an app listening on 127.0.0.1 behind NewListener, with the
// edge's keys to sign what the tests send.
type listenerEnv struct {
	ks     *KeySet
	signer *Signer
	ln     net.Listener
	logs   *syncWriter
}

func newListenerEnv(t *testing.T, cfg ListenerConfig, vcfg VerifierConfig) *listenerEnv {
	t.Helper()
	ks := NewKeySet(fixedKey(t, "1"))
	if vcfg.JWKSURL == "" && vcfg.Keys == nil {
		vcfg.Keys = ks.JWKS()
	}
	if vcfg.MaxTokenBytes == 0 {
		vcfg.MaxTokenBytes = MaxTLVTokenBytes
	}
	if cfg.Verifier == nil {
		cfg.Verifier = newTestVerifier(t, vcfg, newClock(testNow))
	}
	logs := new(syncWriter)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := NewListener(inner, cfg)
	if err != nil {
		inner.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return &listenerEnv{ks: ks, signer: testSigner(ks), ln: ln, logs: logs}
}

// token signs validClaims edited by edit.
func (e *listenerEnv) token(t testing.TB, edit func(*Claims)) string {
	t.Helper()
	c := validClaims()
	if edit != nil {
		edit(&c)
	}
	return mustSign(t, e.signer, c)
}

// dial connects to the app from the loopback address local ("" for any).
func (e *listenerEnv) dial(t testing.TB, local string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", e.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// accept returns the next connection, failing the test if none comes in
// time (Accept itself never waits for a client's bytes).
func (e *listenerEnv) accept(t testing.TB) *Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := e.ln.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Accept: %v", r.err)
		}
		c, ok := r.c.(*Conn)
		if !ok {
			t.Fatalf("Accept returned %T, want *Conn", r.c)
		}
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(5 * time.Second):
		e.ln.Close() // ends the goroutine
		t.Fatal("Accept did not return within 5s")
		return nil
	}
}

// proxyHeader returns a PROXY v2 header from src to dst carrying tlvs.
func proxyHeader(t testing.TB, src, dst *net.TCPAddr, tlvs []proxyproto.TLV) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(2, src, dst)
	if err := h.SetTLVs(tlvs); err != nil {
		t.Fatal(err)
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// identityHeader is the header the edge sends for token.
func identityHeader(t testing.TB, token string) []byte {
	t.Helper()
	return proxyHeader(t, testClient, testEdgeAddr, []proxyproto.TLV{
		{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte(testAuthority)},
		{Type: proxyproto.PP2_TYPE_UNIQUE_ID, Value: []byte(testUniqueID)},
		{Type: TLVTypeIdentity, Value: []byte(token)},
	})
}

// mustWrite writes b with a bounded wait.
func mustWrite(t testing.TB, c net.Conn, b []byte) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// readN reads exactly n bytes with a bounded wait.
func readN(t testing.TB, c net.Conn, n int) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v (got %q)", n, err, b)
	}
	c.SetReadDeadline(time.Time{})
	return string(b)
}

// waitClosed checks that the peer closed c: a read ends with EOF or a reset,
// not a timeout, and yields no data.
func waitClosed(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 64))
	if n != 0 || err == nil {
		t.Fatalf("client read %d bytes, err %v; want the server to have closed without writing", n, err)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("connection still open after 5s; want it closed")
	}
}

func TestListenerGoodConnection(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"))
	jwks := newJWKSServer(t, ks.JWKS())
	for _, tc := range []struct {
		name     string
		vcfg     VerifierConfig
		src, dst *net.TCPAddr
	}{
		{"static keys, IPv4", VerifierConfig{Keys: ks.JWKS()}, testClient, testEdgeAddr},
		{"JWKS URL, IPv6", VerifierConfig{JWKSURL: jwks.url()}, testClient6, testEdge6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newListenerEnv(t, ListenerConfig{}, tc.vcfg)
			tok := env.token(t, nil)
			client := env.dial(t, "")
			hdr := proxyHeader(t, tc.src, tc.dst, []proxyproto.TLV{
				{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte(testAuthority)},
				{Type: proxyproto.PP2_TYPE_UNIQUE_ID, Value: []byte(testUniqueID)},
				{Type: TLVTypeIdentity, Value: []byte(tok)},
			})
			// The header and the first data in one write: the data after
			// the header must not be lost in the header's read buffer.
			mustWrite(t, client, append(hdr, "ping"...))

			c := env.accept(t)
			if c.ClientAddr() != nil || c.Authority() != "" || c.UniqueID() != "" {
				t.Error("header values exposed before verification")
			}
			claims, err := c.Identity()
			if err != nil {
				t.Fatalf("Identity: %v", err)
			}
			if claims.Subject != "u-alice" || claims.Audience != testAudience || claims.Email != "alice@corp.example" {
				t.Errorf("claims %+v", claims)
			}
			if again, _ := c.Identity(); again != claims {
				t.Error("Identity is not cached")
			}
			if got := c.ClientAddr().String(); got != tc.src.String() {
				t.Errorf("ClientAddr %s, want %s", got, tc.src)
			}
			if got := c.RemoteAddr().String(); got != tc.src.String() {
				t.Errorf("RemoteAddr %s, want %s", got, tc.src)
			}
			if got := c.LocalAddr().String(); got != env.ln.Addr().String() {
				t.Errorf("LocalAddr %s, want the socket's %s", got, env.ln.Addr())
			}
			if c.Authority() != testAuthority || c.UniqueID() != testUniqueID {
				t.Errorf("Authority %q UniqueID %q", c.Authority(), c.UniqueID())
			}

			if got := readN(t, c, 4); got != "ping" {
				t.Errorf("server read %q, want ping", got)
			}
			mustWrite(t, c, []byte("pong"))
			if got := readN(t, client, 4); got != "pong" {
				t.Errorf("client read %q, want pong", got)
			}
			mustWrite(t, client, bytes.Repeat([]byte("x"), 100_000))
			if got := readN(t, c, 100_000); got != strings.Repeat("x", 100_000) {
				t.Error("bulk data after the header corrupted")
			}
			if strings.Contains(env.logs.String(), "rejected") {
				t.Errorf("good connection logged a rejection:\n%s", env.logs)
			}
		})
	}
}

func TestListenerRejects(t *testing.T) {
	other := NewKeySet(fixedKey(t, "other"))
	kid := NewKeySet(fixedKey(t, "1")).keys[0].kid
	otherKey := fixedKey(t, "other")

	manyGroups := func(n int) []string {
		g := make([]string, n)
		for i := range g {
			g[i] = fmt.Sprintf("group-%04d-%s", i, strings.Repeat("g", 40))
		}
		return g
	}

	for _, tc := range []struct {
		name string
		// send returns what the client sends; env signs tokens.
		send    func(t *testing.T, env *listenerEnv) []byte
		closeWr bool // half-close after sending (the peer gives up)
		want    error
		wantLog string
	}{
		{
			name:    "no header",
			send:    func(*testing.T, *listenerEnv) []byte { return []byte("GET / HTTP/1.1\r\nHost: wiki\r\n\r\n") },
			want:    ErrProxyHeader,
			wantLog: "signature not present",
		},
		{
			name: "version 1 header",
			send: func(*testing.T, *listenerEnv) []byte {
				return []byte("PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\nhello")
			},
			want:    ErrProxyHeader,
			wantLog: "version 1",
		},
		{
			name: "v2 without TLVs",
			send: func(t *testing.T, env *listenerEnv) []byte {
				return proxyHeader(t, testClient, testEdgeAddr, nil)
			},
			want:    ErrProxyHeader,
			wantLog: "no identity TLV",
		},
		{
			name: "v2 with only AUTHORITY and UNIQUE_ID",
			send: func(t *testing.T, env *listenerEnv) []byte {
				return proxyHeader(t, testClient, testEdgeAddr, []proxyproto.TLV{
					{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte(testAuthority)},
					{Type: proxyproto.PP2_TYPE_UNIQUE_ID, Value: []byte(testUniqueID)},
				})
			},
			want:    ErrProxyHeader,
			wantLog: "no identity TLV",
		},
		{
			name: "identity TLV with garbage",
			send: func(t *testing.T, env *listenerEnv) []byte {
				return identityHeader(t, "\x00\xff garbage \r\n{}")
			},
			want:    ErrMalformed,
			wantLog: "invalid character",
		},
		{
			name: "identity TLV not a JWS",
			send: func(t *testing.T, env *listenerEnv) []byte {
				return identityHeader(t, "eyJhbGciOiJub25lIn0.e30.")
			},
			want:    ErrAlgorithm,
			wantLog: "algorithm not allowed",
		},
		{
			name: "token signed by another key with the edge's kid",
			send: func(t *testing.T, env *listenerEnv) []byte {
				c := validClaims()
				c.Issuer = testIssuer
				return identityHeader(t, signRaw(t, otherKey, es256Header(kid), c))
			},
			want:    ErrSignature,
			wantLog: "bad signature",
		},
		{
			name: "token from another key set",
			send: func(t *testing.T, env *listenerEnv) []byte {
				return identityHeader(t, mustSign(t, testSigner(other), validClaims()))
			},
			want:    ErrUnknownKey,
			wantLog: "unknown signing key",
		},
		{
			name: "expired token",
			send: func(t *testing.T, env *listenerEnv) []byte {
				return identityHeader(t, env.token(t, func(c *Claims) {
					c.IssuedAt = testNow.Add(-2 * time.Hour).Unix()
					c.NotBefore = c.IssuedAt
					c.Expiry = testNow.Add(-time.Hour).Unix()
				}))
			},
			want:    ErrExpired,
			wantLog: "token expired",
		},
		{
			name: "token for another app",
			send: func(t *testing.T, env *listenerEnv) []byte {
				return identityHeader(t, env.token(t, func(c *Claims) { c.Audience = "payroll" }))
			},
			want:    ErrAudience,
			wantLog: "wrong audience",
		},
		{
			name: "two identity TLVs",
			send: func(t *testing.T, env *listenerEnv) []byte {
				tok := env.token(t, nil)
				return proxyHeader(t, testClient, testEdgeAddr, []proxyproto.TLV{
					{Type: TLVTypeIdentity, Value: []byte(tok)},
					{Type: TLVTypeIdentity, Value: []byte(tok)},
				})
			},
			want:    ErrProxyHeader,
			wantLog: "more than one identity TLV",
		},
		{
			name: "unique ID over 128 bytes",
			send: func(t *testing.T, env *listenerEnv) []byte {
				return proxyHeader(t, testClient, testEdgeAddr, []proxyproto.TLV{
					{Type: proxyproto.PP2_TYPE_UNIQUE_ID, Value: bytes.Repeat([]byte("u"), 129)},
					{Type: TLVTypeIdentity, Value: []byte(env.token(t, nil))},
				})
			},
			want:    ErrProxyHeader,
			wantLog: "unique ID of 129 bytes",
		},
		{
			name: "LOCAL command",
			send: func(t *testing.T, env *listenerEnv) []byte {
				h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
				if err := h.SetTLVs([]proxyproto.TLV{{Type: TLVTypeIdentity, Value: []byte(env.token(t, nil))}}); err != nil {
					t.Fatal(err)
				}
				b, err := h.Format()
				if err != nil {
					t.Fatal(err)
				}
				return b
			},
			want:    ErrProxyHeader,
			wantLog: "LOCAL",
		},
		{
			name: "UDP transport",
			send: func(t *testing.T, env *listenerEnv) []byte {
				h := proxyproto.HeaderProxyFromAddrs(2,
					&net.UDPAddr{IP: testClient.IP, Port: 53}, &net.UDPAddr{IP: testEdgeAddr.IP, Port: 53})
				if err := h.SetTLVs([]proxyproto.TLV{{Type: TLVTypeIdentity, Value: []byte(env.token(t, nil))}}); err != nil {
					t.Fatal(err)
				}
				b, err := h.Format()
				if err != nil {
					t.Fatal(err)
				}
				return b
			},
			want:    ErrProxyHeader,
			wantLog: "not TCP",
		},
		{
			// A validly signed token that fits in the 4096-byte header but
			// is larger than the verifier accepts: rejected before parsing.
			name: "oversized token near 4096 bytes",
			send: func(t *testing.T, env *listenerEnv) []byte {
				var tok string
				for n := 1; len(tok) <= MaxTLVTokenBytes; n++ {
					tok = env.token(t, func(c *Claims) { c.Groups = manyGroups(n) })
				}
				hdr := identityHeader(t, tok)
				if len(tok) <= MaxTLVTokenBytes || len(hdr) > 4096 {
					t.Fatalf("token %d bytes, header %d bytes: not the case under test", len(tok), len(hdr))
				}
				return hdr
			},
			want:    ErrTooLarge,
			wantLog: "token too large",
		},
		{
			name: "header over 4096 bytes",
			send: func(t *testing.T, env *listenerEnv) []byte {
				return identityHeader(t, strings.Repeat("A", 4096))
			},
			closeWr: true,
			want:    ErrProxyHeader,
			wantLog: "invalid length",
		},
		{
			name: "truncated header",
			send: func(t *testing.T, env *listenerEnv) []byte {
				hdr := identityHeader(t, env.token(t, nil))
				return hdr[:len(hdr)/2]
			},
			closeWr: true,
			want:    ErrProxyHeader,
			wantLog: "rejected",
		},
		{
			name:    "connection closed at once",
			send:    func(*testing.T, *listenerEnv) []byte { return nil },
			closeWr: true,
			want:    ErrProxyHeader,
			wantLog: "signature not present",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newListenerEnv(t, ListenerConfig{HeaderTimeout: 5 * time.Second}, VerifierConfig{})
			client := env.dial(t, "")
			data := tc.send(t, env)
			if len(data) > 0 {
				mustWrite(t, client, data)
			}
			if tc.closeWr {
				client.(*net.TCPConn).CloseWrite()
			}
			c := env.accept(t)
			n, err := c.Read(make([]byte, 64))
			if n != 0 || !errors.Is(err, tc.want) {
				t.Fatalf("Read = %d, %v; want an error wrapping %v", n, err, tc.want)
			}
			if claims, err2 := c.Identity(); claims != nil || err2 == nil || err2.Error() != err.Error() {
				t.Errorf("Identity after a rejection = %v, %v; want nil and the same error", claims, err2)
			}
			if _, err := c.Write([]byte("hello")); err == nil {
				t.Error("Write on a rejected connection succeeded")
			}
			if c.ClientAddr() != nil || c.Authority() != "" || c.UniqueID() != "" {
				t.Error("a rejected connection exposes header values")
			}
			if got := c.RemoteAddr().String(); got != client.LocalAddr().String() {
				t.Errorf("RemoteAddr of a rejected connection %s, want the socket peer %s", got, client.LocalAddr())
			}
			waitClosed(t, client)
			logs := env.logs.String()
			if !strings.Contains(logs, "connection rejected") || !strings.Contains(logs, tc.wantLog) {
				t.Errorf("log does not give the reason %q:\n%s", tc.wantLog, logs)
			}
			if tok := tokenIn(data); tok != "" && strings.Contains(logs, tok[max(0, len(tok)-40):]) {
				t.Errorf("log contains the token:\n%s", logs)
			}
		})
	}
}

// tokenIn returns the longest run of token characters in b, to check that
// logs do not contain it.
func tokenIn(b []byte) string {
	best, start := "", -1
	for i := 0; i <= len(b); i++ {
		if i < len(b) && isTokenByte(b[i]) {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 && i-start > len(best) && i-start > 60 {
			best = string(b[start:i])
		}
		start = -1
	}
	return best
}

// dripFeed writes b to c one byte every interval until b is written, a
// write fails, or stop is closed. It returns when done.
func dripFeed(c net.Conn, b []byte, interval time.Duration, stop <-chan struct{}) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := range b {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(b[i : i+1]); err != nil {
			return
		}
	}
}

func TestListenerHeaderTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, tc := range []struct {
		name string
		drip bool
	}{
		{"silent client", false},
		{"header drip-fed a byte per 100ms", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newListenerEnv(t, ListenerConfig{HeaderTimeout: timeout}, VerifierConfig{})
			client := env.dial(t, "")
			stop := make(chan struct{})
			var wg sync.WaitGroup
			defer wg.Wait()
			defer close(stop)
			if tc.drip {
				hdr := identityHeader(t, env.token(t, nil))
				wg.Go(func() { dripFeed(client, hdr, 100*time.Millisecond, stop) })
			}
			c := env.accept(t)
			start := time.Now()
			_, err := c.Read(make([]byte, 64))
			elapsed := time.Since(start)
			if !errors.Is(err, ErrProxyHeader) || !strings.Contains(err.Error(), "not received in time") {
				t.Fatalf("Read error %v; want a header timeout", err)
			}
			if elapsed < timeout-50*time.Millisecond || elapsed > timeout+700*time.Millisecond {
				t.Errorf("rejected after %v; want about %v", elapsed, timeout)
			}
			waitClosed(t, client)
			if !strings.Contains(env.logs.String(), "not received in time") {
				t.Errorf("timeout not logged:\n%s", env.logs)
			}
		})
	}
}

// TestListenerHeaderTimeoutKeepsCallerDeadline checks the header deadline
// neither extends an earlier deadline the app set nor outlives the header.
func TestListenerHeaderTimeoutKeepsCallerDeadline(t *testing.T) {
	env := newListenerEnv(t, ListenerConfig{HeaderTimeout: 5 * time.Second}, VerifierConfig{})
	t.Run("earlier caller deadline applies to the header", func(t *testing.T) {
		env.dial(t, "")
		c := env.accept(t)
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		start := time.Now()
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, ErrProxyHeader) {
			t.Fatalf("Read error %v; want a header timeout", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %v; the caller's 200ms deadline was ignored", d)
		}
	})
	t.Run("header deadline does not outlive the header", func(t *testing.T) {
		short := newListenerEnv(t, ListenerConfig{HeaderTimeout: 200 * time.Millisecond}, VerifierConfig{})
		client := short.dial(t, "")
		mustWrite(t, client, identityHeader(t, short.token(t, nil)))
		c := short.accept(t)
		if _, err := c.Identity(); err != nil {
			t.Fatal(err)
		}
		// Data that arrives well after the header timeout is still read.
		time.AfterFunc(500*time.Millisecond, func() { client.Write([]byte("late")) })
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if got := readN(t, c, 4); got != "late" {
			t.Errorf("read %q", got)
		}
	})
}

func TestListenerAcceptNotBlockedBySlowClient(t *testing.T) {
	env := newListenerEnv(t, ListenerConfig{HeaderTimeout: 10 * time.Second}, VerifierConfig{})
	type served struct {
		sub string
		err error
	}
	results := make(chan served, 4)
	var wg sync.WaitGroup
	defer wg.Wait()
	// The app: a plain accept loop that serves each connection on its own
	// goroutine, as most TCP servers do.
	wg.Go(func() {
		for {
			nc, err := env.ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				c := nc.(*Conn)
				claims, err := c.Identity()
				if err != nil {
					results <- served{err: err}
					return
				}
				buf := make([]byte, 4)
				if _, err := io.ReadFull(c, buf); err != nil {
					results <- served{err: err}
					return
				}
				c.Write([]byte("pong " + claims.Subject))
				results <- served{sub: claims.Subject}
			})
		}
	})
	defer env.ln.Close()

	slow := env.dial(t, "")
	stop := make(chan struct{})
	var dripWG sync.WaitGroup
	defer dripWG.Wait()
	defer close(stop)
	hdr := identityHeader(t, env.token(t, nil))
	dripWG.Go(func() { dripFeed(slow, hdr, 100*time.Millisecond, stop) })

	good := env.dial(t, "")
	mustWrite(t, good, append(identityHeader(t, env.token(t, nil)), "ping"...))
	if got := readN(t, good, 12); got != "pong u-alice" {
		t.Fatalf("good client got %q", got)
	}
	select {
	case r := <-results:
		if r.err != nil || r.sub != "u-alice" {
			t.Fatalf("served %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("good connection not reported")
	}
	select {
	case r := <-results:
		t.Fatalf("slow connection finished while its header was still arriving: %+v", r)
	default:
	}
	// Giving up on the slow client ends its handler with a rejection.
	slow.Close()
	select {
	case r := <-results:
		if !errors.Is(r.err, ErrProxyHeader) {
			t.Errorf("slow connection: %+v; want ErrProxyHeader", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("slow connection's handler did not end after the client closed")
	}
}

func TestListenerTrustedPeers(t *testing.T) {
	env := newListenerEnv(t, ListenerConfig{
		TrustedPeers: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32"), netip.MustParsePrefix("2001:db8::/32")},
	}, VerifierConfig{})
	hdr := identityHeader(t, env.token(t, nil))

	untrusted := env.dial(t, "127.0.0.1")
	mustWrite(t, untrusted, hdr)
	trusted := env.dial(t, "127.0.0.2")
	mustWrite(t, trusted, hdr)

	// Accept skips the untrusted connection and returns the trusted one.
	c := env.accept(t)
	if peer := c.raw.RemoteAddr().(*net.TCPAddr); !peer.IP.Equal(net.ParseIP("127.0.0.2")) {
		t.Fatalf("accepted the connection from %v", peer)
	}
	if _, err := c.Identity(); err != nil {
		t.Fatalf("trusted peer: %v", err)
	}
	waitClosed(t, untrusted)
	if logs := env.logs.String(); !strings.Contains(logs, "not in TrustedPeers") || !strings.Contains(logs, "127.0.0.1") {
		t.Errorf("untrusted peer not logged:\n%s", logs)
	}
}

func TestNewListenerConfig(t *testing.T) {
	v := newTestVerifier(t, VerifierConfig{Keys: NewKeySet(fixedKey(t, "1")).JWKS()}, newClock(testNow))
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	for _, tc := range []struct {
		name  string
		inner net.Listener
		cfg   ListenerConfig
		want  string
	}{
		{"no inner listener", nil, ListenerConfig{Verifier: v}, "inner listener is nil"},
		{"no verifier", inner, ListenerConfig{}, "Verifier is required"},
		{"negative timeout", inner, ListenerConfig{Verifier: v, HeaderTimeout: -time.Second}, "negative HeaderTimeout"},
		{"invalid prefix", inner, ListenerConfig{Verifier: v, TrustedPeers: []netip.Prefix{{}}}, "TrustedPeers[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := NewListener(tc.inner, tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || ln != nil {
				t.Errorf("NewListener = %v, %v; want error %q", ln, err, tc.want)
			}
		})
	}
	ln, err := NewListener(inner, ListenerConfig{Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	if l := ln.(*listener); l.timeout != DefaultHeaderTimeout || l.log == nil {
		t.Errorf("defaults not applied: timeout %v", l.timeout)
	}
	if ln.Addr() != inner.Addr() {
		t.Error("Addr is not the inner listener's")
	}
}

// TestListenerHTTP serves HTTP and HTTPS from NewListener: the handler sees
// the identity of the connection its request arrived on, for every request
// on a keep-alive connection.
func TestListenerHTTP(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := "http"
		if useTLS {
			name = "https, PROXY header before TLS"
		}
		t.Run(name, func(t *testing.T) {
			env := newListenerEnv(t, ListenerConfig{}, VerifierConfig{})
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				claims, ok := ConnIdentity(r.Context())
				c, ok2 := ConnFromContext(r.Context())
				if !ok || !ok2 {
					http.Error(w, "no connection identity", http.StatusInternalServerError)
					return
				}
				fmt.Fprintf(w, "%s %s %s %s tls=%t", claims.Subject, r.RemoteAddr, c.Authority(), c.UniqueID(), r.TLS != nil)
			}))
			srv.Listener.Close()
			srv.Listener = env.ln
			srv.Config.ConnContext = ConnContext
			var clientTLS *tls.Config
			if useTLS {
				srv.StartTLS()
				clientTLS = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
				clientTLS.ServerName = "127.0.0.1"
			} else {
				srv.Start()
			}
			defer srv.Close()

			// One client per user; each keeps one connection alive.
			for _, user := range []struct{ sub, uid string }{{"u-alice", "s-alice"}, {"u-bob", "s-bob"}} {
				tok := env.token(t, func(c *Claims) { c.Subject = user.sub })
				hdr := proxyHeader(t, testClient, testEdgeAddr, []proxyproto.TLV{
					{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte(testAuthority)},
					{Type: proxyproto.PP2_TYPE_UNIQUE_ID, Value: []byte(user.uid)},
					{Type: TLVTypeIdentity, Value: []byte(tok)},
				})
				var dials atomic.Int64
				dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
					dials.Add(1)
					var d net.Dialer
					c, err := d.DialContext(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					if _, err := c.Write(hdr); err != nil {
						c.Close()
						return nil, err
					}
					return c, nil
				}
				tr := &http.Transport{DialContext: dial, MaxConnsPerHost: 1}
				scheme := "http"
				if useTLS {
					scheme = "https"
					tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
						raw, err := dial(ctx, network, addr)
						if err != nil {
							return nil, err
						}
						tc := tls.Client(raw, clientTLS)
						if err := tc.HandshakeContext(ctx); err != nil {
							raw.Close()
							return nil, err
						}
						return tc, nil
					}
				}
				client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
				want := fmt.Sprintf("%s %s %s %s tls=%t", user.sub, testClient, testAuthority, user.uid, useTLS)
				for i := range 3 {
					resp, err := client.Get(scheme + "://" + env.ln.Addr().String() + "/")
					if err != nil {
						t.Fatalf("%s request %d: %v", user.sub, i, err)
					}
					body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
					resp.Body.Close()
					if resp.StatusCode != 200 || string(body) != want {
						t.Errorf("%s request %d: %d %q, want %q", user.sub, i, resp.StatusCode, body, want)
					}
				}
				if n := dials.Load(); n != 1 {
					t.Errorf("%s: %d connections for 3 requests; want 1 kept alive", user.sub, n)
				}
				tr.CloseIdleConnections()
			}
		})
	}
}

func TestConnContextWithoutIdentityConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ctx := ConnContext(context.Background(), a)
	if _, ok := ConnIdentity(ctx); ok {
		t.Error("ConnIdentity found an identity for a plain connection")
	}
	if _, ok := ConnIdentity(context.Background()); ok {
		t.Error("ConnIdentity found an identity in an empty context")
	}
}

// TestListenerServerSpeaksFirst checks that an app which writes first (like
// SSH) sends nothing before the header is verified, and works after.
func TestListenerServerSpeaksFirst(t *testing.T) {
	env := newListenerEnv(t, ListenerConfig{}, VerifierConfig{})
	t.Run("verified", func(t *testing.T) {
		client := env.dial(t, "")
		mustWrite(t, client, identityHeader(t, env.token(t, nil)))
		c := env.accept(t)
		mustWrite(t, c, []byte("SSH-2.0-app\r\n"))
		line, err := bufio.NewReader(client).ReadString('\n')
		if err != nil || line != "SSH-2.0-app\r\n" {
			t.Errorf("client read %q, %v", line, err)
		}
	})
	t.Run("rejected", func(t *testing.T) {
		client := env.dial(t, "")
		mustWrite(t, client, []byte("SSH-2.0-attacker\r\n"))
		c := env.accept(t)
		if _, err := c.Write([]byte("SSH-2.0-app\r\n")); !errors.Is(err, ErrProxyHeader) {
			t.Errorf("Write = %v; want ErrProxyHeader", err)
		}
		waitClosed(t, client)
	})
}

// TestListenerDataAfterHeader sends the header and data in one write, for
// header lengths one byte apart, so that every way the header's read buffer
// can end (inside the header, at its end, in the data) is covered: the app
// must read exactly the data, nothing of the header and nothing lost.
func TestListenerDataAfterHeader(t *testing.T) {
	env := newListenerEnv(t, ListenerConfig{}, VerifierConfig{})
	tok := env.token(t, func(c *Claims) { c.Email, c.Name, c.Groups, c.SessionID = "", "", nil, "" })
	data := []byte(strings.Repeat("0123456789", 40))
	var shortest, longest int
	for n := 1; n <= maxAuthorityBytes; n++ {
		hdr := proxyHeader(t, testClient, testEdgeAddr, []proxyproto.TLV{
			{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: bytes.Repeat([]byte("a"), n)},
			{Type: TLVTypeIdentity, Value: []byte(tok)},
		})
		if n == 1 {
			shortest = len(hdr)
		}
		longest = len(hdr)
		client := env.dial(t, "")
		mustWrite(t, client, append(hdr, data...))
		c := env.accept(t)
		if got := readN(t, c, len(data)); got != string(data) {
			t.Fatalf("header of %d bytes: app read %q", len(hdr), got)
		}
		c.Close()
		client.Close()
	}
	// The range must straddle the end of a second buffer fill, where the
	// buffer reads past the header.
	if shortest > 2*headerBufferSize || longest < 2*headerBufferSize {
		t.Errorf("headers of %d to %d bytes do not straddle %d", shortest, longest, 2*headerBufferSize)
	}
}
