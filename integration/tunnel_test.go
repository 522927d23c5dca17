package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// tunnelClient is a tunnel client of env for the session cookie and the
// device certificate given (no certificate: none presented).
func tunnelClient(t *testing.T, env *devenv.Env, cookie string, cert *tls.Certificate) *tunnel.Client {
	t.Helper()
	return tunnelClientVia(t, env, cookie, cert, viaQUIC)
}

// How a test's tunnel client reaches the edge.
const (
	viaQUIC       = "quic"
	viaUDPBlocked = "udp-blocked" // QUIC to a closed UDP port, so the client falls back to HTTP/2
)

// tunnelClientVia is tunnelClient over the given path: viaUDPBlocked points
// QUIC at a UDP port nobody listens on (the edge's TCP port stays
// reachable), as a network that drops UDP would.
func tunnelClientVia(t *testing.T, env *devenv.Env, cookie string, cert *tls.Certificate, via string) *tunnel.Client {
	t.Helper()
	c := tunnelClientTo(t, env, cookie, cert)
	if via == viaUDPBlocked {
		c.HTTPSAddr, c.Addr = env.EdgeAddr, closedUDPAddr(t)
		c.QUICTimeout = 300 * time.Millisecond
	}
	return c
}

// echoStream connects c, opens a stream to the echo app and reads its
// greeting; both close when the test ends. The stream's deadline is 20 s.
func echoStream(t *testing.T, ctx context.Context, c *tunnel.Client) (*tunnel.Conn, net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := c.Connect(ctx)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	s, err := conn.Dial(ctx, "echo")
	if err != nil {
		t.Fatalf("dial echo: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	_ = s.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(s)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatalf("echo greeting: %v", err)
	}
	return conn, s, br
}

// closedUDPAddr is a loopback UDP address with no listener.
func closedUDPAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func tunnelClientTo(t *testing.T, env *devenv.Env, cookie string, cert *tls.Certificate) *tunnel.Client {
	t.Helper()
	tc := &tls.Config{RootCAs: devCAPool(t, env), ServerName: strings.TrimPrefix(env.AuthOrigin, "https://")}
	if i := strings.LastIndexByte(tc.ServerName, ':'); i >= 0 {
		tc.ServerName = tc.ServerName[:i]
	}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &tunnel.Client{Addr: env.EdgeAddr, TLSConfig: tc,
		Token: func(context.Context) (string, error) { return cookie, nil }}
}

// TestTunnelReachesTCPApp: alice, from her enrolled device, connects over
// real QUIC, sees only the TCP apps she may use, and talks to the echo app,
// which greets her with the identity the edge signed; half-close works end
// to end; carol sees no app and is refused per stream; every stream is
// audited with its bytes.
func TestTunnelReachesTCPApp(t *testing.T) {
	for _, via := range []string{viaQUIC, viaUDPBlocked} {
		t.Run(via, func(t *testing.T) { testTunnelReachesTCPApp(t, via) })
	}
}

func testTunnelReachesTCPApp(t *testing.T, via string) {
	env := newEnv(t)
	tunnelClient := func(t *testing.T, env *devenv.Env, cookie string, cert *tls.Certificate) *tunnel.Client {
		return tunnelClientVia(t, env, cookie, cert, via)
	}
	wantTransport := map[string]string{viaQUIC: tunnel.TransportQUIC, viaUDPBlocked: tunnel.TransportH2}[via]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	aliceCookie := sessionCookie(t, env, alice, "whoami")
	devID, cert := enrollDevice(t, env, "u-alice")

	// No device certificate: refused at hello.
	if _, err := tunnelClient(t, env, aliceCookie, nil).Connect(ctx); err == nil {
		t.Fatal("a tunnel without a device certificate was accepted")
	} else if ae := new(tunnel.AuthError); !errors.As(err, &ae) || ae.Code != "device_required" {
		t.Fatalf("no device: %v, want device_required", err)
	}
	// A forged bearer: refused.
	if _, err := tunnelClient(t, env, "not-a-session", &cert).Connect(ctx); err == nil {
		t.Fatal("a forged bearer was accepted")
	}

	conn, err := tunnelClient(t, env, aliceCookie, &cert).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if w := conn.Welcome(); w.User != "u-alice" || w.Device != devID || w.Policy == "" {
		t.Errorf("welcome %+v", w)
	}
	if got := conn.Transport(); got != wantTransport {
		t.Errorf("transport %s, want %s", got, wantTransport)
	}
	if apps := conn.Apps(); len(apps) != 1 || apps[0].Name != "echo" {
		t.Errorf("alice's apps %+v, want only the TCP app echo", apps)
	}

	c, err := conn.Dial(ctx, "echo")
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	greeting, err := br.ReadString('\n')
	if err != nil || !strings.Contains(greeting, "alice@example.com") || !strings.Contains(greeting, `app "echo"`) {
		t.Fatalf("greeting %q, %v", greeting, err)
	}
	fmt.Fprintf(c, "over the tunnel\n")
	if line, err := br.ReadString('\n'); err != nil || line != "over the tunnel\n" {
		t.Fatalf("echo %q, %v", line, err)
	}
	// Half-close: the app sees EOF, finishes, and the client reads EOF.
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after half-close: %q, %v", rest, err)
	}
	c.Close()

	// Apps that do not exist, and HTTP apps, are unknown through the tunnel.
	for _, app := range []string{"nope", "whoami"} {
		_, err := conn.Dial(ctx, app)
		var de *tunnel.DialError
		if !errors.As(err, &de) || de.Status != tunnel.StatusUnknownApp {
			t.Errorf("dial %s: %v, want unknown app", app, err)
		}
	}

	// carol (a contractor) is not in engineering: echo is invisible to her.
	carol := loginFlow(t, env, "whoami", "/", "carol", carolPassword) // whoami itself denies her
	_, carolCert := enrollDevice(t, env, "u-carol")
	cconn, err := tunnelClient(t, env, sessionCookie(t, env, carol.Client, "whoami"), &carolCert).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cconn.Close()
	if apps := cconn.Apps(); len(apps) != 0 {
		t.Errorf("carol's apps %+v, want none", apps)
	}
	_, err = cconn.Dial(ctx, "echo")
	var de *tunnel.DialError
	if !errors.As(err, &de) || de.Status != tunnel.StatusUnknownApp {
		t.Errorf("carol dials echo: %v, want unknown app", err)
	}

	// Audit: alice's stream opened and closed with bytes; carol's refused.
	waitFor(t, 5*time.Second, "stream audit events", func() bool {
		var opened, closed, refused bool
		for _, line := range auditLines(t, env) {
			switch {
			case strings.Contains(line, `"kind":"stream"`) && strings.Contains(line, `"user":"u-alice"`) && strings.Contains(line, `"decision":"allow"`):
				opened = true
			case strings.Contains(line, `"kind":"stream_close"`) && strings.Contains(line, `"bytes_up":16`) && strings.Contains(line, `"duration_ns"`):
				closed = true
			case strings.Contains(line, `"kind":"stream"`) && strings.Contains(line, `"user":"u-carol"`) && strings.Contains(line, `"decision":"deny"`):
				refused = true
			}
		}
		return opened && closed && refused
	})
}

// TestTunnelStreamCutOnTrustChange: a live tunnel stream is closed within a
// second, with a reason the client sees, when the device is quarantined;
// and the connection itself ends when the session is revoked.
func TestTunnelStreamCutOnTrustChange(t *testing.T) {
	for _, via := range []string{viaQUIC, viaUDPBlocked} {
		t.Run(via, func(t *testing.T) { testTunnelStreamCutOnTrustChange(t, via) })
	}
}

func testTunnelStreamCutOnTrustChange(t *testing.T, via string) {
	env := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	devID, cert := enrollDevice(t, env, "u-alice")
	conn, err := tunnelClientVia(t, env, cookie, &cert, via).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, err := conn.Dial(ctx, "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	qctx, qcancel := context.WithTimeout(ctx, 10*time.Second)
	defer qcancel()
	if _, err := env.Edge.Quarantine().Isolate(qctx, posture.QuarantineEntry{Kind: posture.QuarantineDevice, ID: devID,
		Reason: "test: EDR alert", Source: "test", Severity: posture.SeverityCritical, At: start}); err != nil {
		t.Fatal(err)
	}
	_, err = br.ReadString('\n')
	took := time.Since(start)
	if err == nil {
		t.Fatal("the stream survived the quarantine")
	}
	if took > time.Second {
		t.Errorf("stream closed %v after the quarantine, want ≤ 1 s", took)
	}
	t.Logf("stream closed %v after the quarantine: %v", took, err)
	if ce := new(tunnel.CutError); !errors.As(err, &ce) || !strings.Contains(ce.Reason, "quarantine") {
		t.Errorf("the client got %v, want a cut with the quarantine as its reason", err)
	}
	select {
	case <-conn.Done():
	case <-time.After(2 * time.Second):
		t.Error("the tunnel connection of a quarantined device stayed open")
	}
}
