package integration

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// TestTunnelStreamHeaderGarbage sends the edge's tunnel endpoint, over a
// real QUIC connection that completed its hello, data streams that start
// with malformed headers — truncated, oversized, wrong magic, version or
// kind, bad names — and 300 random byte strings (fixed seed, so a failure
// reproduces). Each stream gets a bad-header reset, or a well-formed reply
// when the bytes happen to be a valid header; never an OK for an app the
// user may not reach. The edge stays up: the same connection still reaches
// echo afterwards. (FuzzReadHeader fuzzes the parser itself.)
func TestTunnelStreamHeaderGarbage(t *testing.T) {
	env := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	_, cert := enrollDevice(t, env, "u-alice")

	tc := tunnelClient(t, env, cookie, &cert).TLSConfig.Clone()
	tc.NextProtos = []string{tunnel.ALPN}
	qc, err := quic.DialAddr(ctx, env.EdgeAddr, tc, &quic.Config{MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer qc.CloseWithError(0, "")
	ctrl, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tunnel.WriteFrame(ctrl, tunnel.Frame{Type: tunnel.FrameHello, Version: tunnel.Version, Token: cookie}); err != nil {
		t.Fatal(err)
	}
	if f, err := tunnel.ReadFrame(ctrl); err != nil || f.Type != tunnel.FrameWelcome {
		t.Fatalf("hello: %+v, %v", f, err)
	}

	hdr := func(magic string, version, kind, n byte, name string) []byte {
		return append([]byte{magic[0], magic[1], version, kind, n}, name...)
	}
	cases := map[string][]byte{
		"empty then FIN":      {},
		"truncated fixed":     {'Z', 'T', 1},
		"truncated name":      hdr("ZT", 1, 1, 10, "echo"),
		"wrong magic":         hdr("HT", 1, 1, 4, "echo"),
		"HTTP request":        []byte("GET / HTTP/1.1\r\nHost: echo\r\n\r\n"),
		"future version":      hdr("ZT", 2, 1, 4, "echo"),
		"unknown kind":        hdr("ZT", 1, 2, 4, "echo"),
		"zero-length name":    hdr("ZT", 1, 1, 0, ""),
		"oversized name":      hdr("ZT", 1, 1, 200, strings.Repeat("a", 200)),
		"upper-case name":     hdr("ZT", 1, 1, 4, "ECHO"),
		"path in name":        hdr("ZT", 1, 1, 7, "../echo"),
		"address in name":     hdr("ZT", 1, 1, 14, "127.0.0.1:8080"),
		"NUL in name":         hdr("ZT", 1, 1, 5, "echo\x00"),
		"length field max":    hdr("ZT", 1, 1, 255, ""),
		"frame on data":       binary.BigEndian.AppendUint32(nil, 17),
		"another user's app":  hdr("ZT", 1, 1, 6, "whoami"),
		"unknown app":         hdr("ZT", 1, 1, 7, "payroll"),
		"valid then garbage":  append(hdr("ZT", 1, 1, 4, "nope"), 0xff, 0xfe),
		"megabyte of garbage": []byte(strings.Repeat("\xff", 1<<20)),
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range 300 {
		b := make([]byte, rng.IntN(80))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if len(b) >= 2 && i%3 == 0 { // some get past the magic
			b[0], b[1] = 'Z', 'T'
			if len(b) >= 4 {
				b[2], b[3] = 1, 1
			}
		}
		cases["random "+string(rune('a'+i%26))+strings.Repeat("'", i/26)] = b
	}
	for name, in := range cases {
		status, err := sendRaw(ctx, qc, in)
		switch {
		case err != nil:
			t.Errorf("%s: %v", name, err)
		case status == nil: // reset with StreamBadHeader
		case *status == tunnel.StatusOK:
			t.Errorf("%s: the edge answered OK to %q", name, in)
		}
	}
	if ctx.Err() != nil {
		t.Fatal("ran out of time")
	}

	// The connection and the edge are fine.
	s, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tunnel.WriteHeader(s, tunnel.Header{App: "echo"}); err != nil {
		t.Fatal(err)
	}
	if r, err := tunnel.ReadReply(s); err != nil || r.Status != tunnel.StatusOK {
		t.Fatalf("echo after the garbage: %+v, %v", r, err)
	}
	s.CancelRead(0)
	s.Close()
}

// sendRaw writes in on a new stream, finishes it, and returns the edge's
// reply status, or nil when the edge reset the stream as a bad header.
func sendRaw(ctx context.Context, qc *quic.Conn, in []byte) (*tunnel.Status, error) {
	s, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	defer s.CancelRead(0)
	_ = s.SetDeadline(time.Now().Add(10 * time.Second)) // the edge gives a header 5 s
	go func() {
		_, _ = s.Write(in)
		_ = s.Close()
	}()
	r, err := tunnel.ReadReply(s)
	var se *quic.StreamError
	switch {
	case errors.As(err, &se) && se.Remote && se.ErrorCode == tunnel.StreamBadHeader:
		return nil, nil
	case err != nil:
		return nil, err
	}
	// A well-formed header of something the user may not reach: the
	// reply, then the end of the stream.
	if _, err := io.Copy(io.Discard, s); err != nil && r.Status == tunnel.StatusOK {
		return nil, err
	}
	return &r.Status, nil
}

// TestTunnelH2RefusesStrayConnect: over HTTP/2 the edge takes CONNECT only
// as the tunnel's fallback — the right target, a stream label, and data
// streams only after the connection's control stream — and refuses other
// CONNECTs with a client error, changing nothing.
func TestTunnelH2RefusesStrayConnect(t *testing.T) {
	env := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: devCAPool(t, env),
		ServerName: tunnelClient(t, env, "", nil).TLSConfig.ServerName}}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	defer tr.CloseIdleConnections()
	cc, err := tr.NewClientConn(ctx, "https", env.EdgeAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	connect := func(authority, label string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+authority, strings.NewReader(""))
		req.Host = authority
		if label != "" {
			req.Header.Set(tunnel.H2StreamHeader, label)
		}
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatalf("CONNECT %s (%s): %v", authority, label, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		authority, label string
		want             int
	}{
		{"echo:22", "control", http.StatusBadRequest},    // a target that is not the tunnel
		{"127.0.0.1:22", "1", http.StatusBadRequest},     // not an open proxy
		{tunnel.H2Authority, "", http.StatusForbidden},   // no label: a data stream without control
		{tunnel.H2Authority, "1", http.StatusForbidden},  // no control stream yet
		{tunnel.H2Authority, "-1", http.StatusForbidden}, // no control stream: refused before the label
		{tunnel.H2Authority, "x" + strings.Repeat("9", 40), http.StatusForbidden},
	} {
		if got := connect(c.authority, c.label); got != c.want {
			t.Errorf("CONNECT %s %s=%q: %d, want %d", c.authority, tunnel.H2StreamHeader, c.label, got, c.want)
		}
	}
}
