package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// tlsAlertNoALPN is the QUIC transport error for the TLS alert
// no_application_protocol (0x100 + 120).
const tlsAlertNoALPN = quic.TransportErrorCode(0x100 + 120)

// dialQUIC opens a QUIC connection to the edge's UDP port offering alpns,
// closed when the test ends.
func (e *testEnv) dialQUIC(alpns []string, clientCert bool) (*quic.Conn, error) {
	e.t.Helper()
	tlsConf := &tls.Config{RootCAs: e.tc.pool, NextProtos: alpns}
	if clientCert {
		tlsConf.Certificates = []tls.Certificate{e.tc.cert}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := quic.DialAddr(ctx, e.s.UDPAddr().String(), tlsConf, &quic.Config{})
	if err != nil {
		return nil, err
	}
	e.t.Cleanup(func() { _ = c.CloseWithError(0, "") })
	return c, nil
}

func (e *testEnv) dialTunnel() *quic.Conn {
	e.t.Helper()
	c, err := e.dialQUIC([]string{TunnelALPN}, false)
	if err != nil {
		e.t.Fatalf("dial tunnel: %v", err)
	}
	return c
}

// echoOnce opens a stream, sends msg, half-closes and reads the echo.
func echoOnce(t *testing.T, c *quic.Conn, msg string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, err := c.OpenStreamSync(ctx)
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	_ = str.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(str, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = str.Close()
	b, err := io.ReadAll(io.LimitReader(str, 1<<16))
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	return string(b)
}

// tunnelSeen is what a test tunnel handler observed about its connection.
type tunnelSeen struct {
	alpn        string
	handshake   bool
	clientCerts int
}

// echoTunnel echoes the first stream, reports what it saw, then holds the
// connection until its context ends and reports the cause.
func echoTunnel(seen chan<- tunnelSeen, causes chan<- error) TunnelHandler {
	return func(ctx context.Context, conn *quic.Conn) {
		st := conn.ConnectionState().TLS
		seen <- tunnelSeen{alpn: st.NegotiatedProtocol, handshake: st.HandshakeComplete, clientCerts: len(st.PeerCertificates)}
		str, err := conn.AcceptStream(ctx)
		if err == nil {
			_, _ = io.Copy(str, io.LimitReader(str, 1<<16))
			_ = str.Close()
		}
		<-ctx.Done()
		causes <- context.Cause(ctx)
	}
}

// waitClosed waits until the client sees c closed and returns the
// application error the server closed it with.
func waitClosed(t *testing.T, c *quic.Conn, within time.Duration) *quic.ApplicationError {
	t.Helper()
	select {
	case <-c.Context().Done():
	case <-time.After(within):
		t.Fatalf("tunnel connection still open after %s", within)
	}
	cause := context.Cause(c.Context())
	var ae *quic.ApplicationError
	if !errors.As(cause, &ae) || !ae.Remote {
		t.Fatalf("connection ended with %v, want an application error from the edge", cause)
	}
	return ae
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func tunnelGauge(e *testEnv) float64 { return metricValue(e.t, e.s.metrics.tunnelOpen) }

func tunnelClosed(e *testEnv, reason string) float64 {
	return metricValue(e.t, e.s.metrics.tunnelClosed.WithLabelValues(reason))
}

// TestTunnelALPN: one UDP port, dispatch by ALPN. With a handler the tunnel
// and HTTP/3 both work; without one the tunnel ALPN is refused; with HTTP/3
// off the tunnel still works and h3 is refused. An unknown ALPN always fails
// the handshake.
func TestTunnelALPN(t *testing.T) {
	tests := []struct {
		name       string
		http3      bool
		tunnel     bool
		clientCert bool
	}{
		{"http3 and tunnel", true, true, false},
		{"http3 and tunnel, client certificate", true, true, true},
		{"http3 only", true, false, false},
		{"tunnel only", false, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fastConfig()
			cfg.HTTP3 = &tt.http3
			seen, causes := make(chan tunnelSeen, 4), make(chan error, 4)
			opts := Options{TLSConfig: &tls.Config{ClientAuth: tls.RequestClientCert}}
			if tt.tunnel {
				opts.Tunnel = echoTunnel(seen, causes)
			}
			e := startEnv(t, cfg, okHandler, opts, nil)

			c, err := e.dialQUIC([]string{TunnelALPN}, tt.clientCert)
			switch {
			case tt.tunnel && err != nil:
				t.Fatalf("dial tunnel: %v", err)
			case tt.tunnel:
				if got := echoOnce(t, c, "hello tunnel"); got != "hello tunnel" {
					t.Errorf("echo = %q", got)
				}
				s := recv(t, seen, "the handler to see the connection")
				wantCerts := 0
				if tt.clientCert {
					wantCerts = 1
				}
				if s.alpn != TunnelALPN || !s.handshake || s.clientCerts != wantCerts {
					t.Errorf("handler saw ALPN %q, handshake complete %v, %d client certificates; want %q, true, %d",
						s.alpn, s.handshake, s.clientCerts, TunnelALPN, wantCerts)
				}
				if got := tunnelGauge(e); got != 1 {
					t.Errorf("ztna_edge_tunnel_connections = %v, want 1", got)
				}
				_ = c.CloseWithError(0, "")
				if cause := recv(t, causes, "the handler's context to end when the client closed"); cause == nil {
					t.Error("handler context ended without a cause")
				}
				eventually(t, 3*time.Second, "tunnel gauge back to 0", func() bool { return tunnelGauge(e) == 0 })
			default:
				var te *quic.TransportError
				if !errors.As(err, &te) || te.ErrorCode != tlsAlertNoALPN {
					t.Fatalf("dial tunnel without a handler: %v, want TLS alert no_application_protocol", err)
				}
			}

			h3 := e.h3Client()
			resp, err := h3.Get("https://" + e.s.UDPAddr().String() + "/")
			if tt.http3 {
				if err != nil {
					t.Fatalf("HTTP/3 GET on the tunnel's port: %v", err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(body) != "HTTP/3.0" {
					t.Errorf("HTTP/3 GET: %d %q", resp.StatusCode, body)
				}
			} else {
				if err == nil {
					resp.Body.Close()
					t.Fatal("HTTP/3 GET succeeded with listen.http3 off")
				}
				resp, _ := get(t, e.tcpClient(true), e.httpsURL("/"), nil)
				if got := resp.Header.Get("Alt-Svc"); got != "" {
					t.Errorf("Alt-Svc = %q with HTTP/3 off", got)
				}
			}

			_, err = e.dialQUIC([]string{"ztna-tunnel/0", "h2"}, false)
			var te *quic.TransportError
			if !errors.As(err, &te) || te.ErrorCode != tlsAlertNoALPN {
				t.Errorf("dial with unknown ALPNs: %v, want TLS alert no_application_protocol", err)
			}
		})
	}
}

// TestTunnelDrain: Shutdown cancels tunnel contexts with ErrDraining after
// the drain delay; a handler that returns gets its connection closed with
// 0x103 at once, one that ignores its context at the end of the grace
// period.
func TestTunnelDrain(t *testing.T) {
	tests := []struct {
		name         string
		honourCtx    bool
		wantGraceful bool
	}{
		{"handler returns on cancel", true, true},
		{"handler ignores its context", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fastConfig()
			cfg.DrainDelay = 200 * time.Millisecond
			cfg.GraceTimeout = 500 * time.Millisecond
			started, causes := make(chan struct{}, 1), make(chan error, 1)
			h := func(ctx context.Context, conn *quic.Conn) {
				started <- struct{}{}
				if tt.honourCtx {
					<-ctx.Done()
					causes <- context.Cause(ctx)
					return
				}
				// Only the closed connection stops this.
				_, _ = conn.AcceptStream(context.Background())
				causes <- context.Cause(ctx)
			}
			e := startEnv(t, cfg, okHandler, Options{Tunnel: h}, nil)
			c := e.dialTunnel()
			recv(t, started, "the handler to start")

			began := time.Now()
			if err := e.s.Shutdown(context.Background()); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			elapsed := time.Since(began)
			ae := waitClosed(t, c, 2*time.Second)
			if ae.ErrorCode != tunnelCodeGoingAway || ae.ErrorMessage != ErrDraining.Error() {
				t.Errorf("closed with %#x %q, want 0x103 %q", uint64(ae.ErrorCode), ae.ErrorMessage, ErrDraining)
			}
			cause := recv(t, causes, "the handler to return")
			if tt.honourCtx && !errors.Is(cause, ErrDraining) {
				t.Errorf("handler's context cause = %v, want ErrDraining", cause)
			}
			lo, hi := cfg.DrainDelay, cfg.DrainDelay+cfg.GraceTimeout
			if !tt.wantGraceful {
				lo, hi = cfg.DrainDelay+cfg.GraceTimeout, cfg.DrainDelay+cfg.GraceTimeout+1500*time.Millisecond
			}
			if elapsed < lo || elapsed > hi {
				t.Errorf("Shutdown took %s, want between %s and %s", elapsed, lo, hi)
			}
			if got := tunnelClosed(e, tunnelClosedDrain); got != 1 {
				t.Errorf("tunnel_connections_closed_total{drain} = %v, want 1", got)
			}
			if got := tunnelGauge(e); got != 0 {
				t.Errorf("ztna_edge_tunnel_connections = %v after Shutdown, want 0", got)
			}
		})
	}
}

// TestTunnelMaxConnectionDuration: a tunnel connection older than
// max_connection_duration has its context cancelled and is closed with
// 0x103 "max connection duration" — at once when the handler returns, after
// the short grace when it does not.
func TestTunnelMaxConnectionDuration(t *testing.T) {
	const goAwayGrace = 300 * time.Millisecond
	tests := []struct {
		name      string
		honourCtx bool
	}{
		{"handler returns on cancel", true},
		{"handler ignores its context", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fastConfig()
			cfg.MaxConnectionDuration = testMaxAge
			causes := make(chan error, 1)
			h := func(ctx context.Context, conn *quic.Conn) {
				if tt.honourCtx {
					<-ctx.Done()
				} else {
					_, _ = conn.AcceptStream(context.Background())
				}
				causes <- context.Cause(ctx)
			}
			e := startEnv(t, cfg, okHandler, Options{Tunnel: h}, func(s *Server) { s.tunnelGoAwayGrace = goAwayGrace })
			began := time.Now()
			c := e.dialTunnel()
			ae := waitClosed(t, c, testMaxAge+goAwayGrace+3*time.Second)
			elapsed := time.Since(began)
			if ae.ErrorCode != tunnelCodeGoingAway || ae.ErrorMessage != ErrMaxConnectionDuration.Error() {
				t.Errorf("closed with %#x %q, want 0x103 %q", uint64(ae.ErrorCode), ae.ErrorMessage, ErrMaxConnectionDuration)
			}
			lo := testMaxAge
			if !tt.honourCtx {
				lo += goAwayGrace
			}
			if elapsed < lo {
				t.Errorf("closed after %s, want at least %s", elapsed, lo)
			}
			cause := recv(t, causes, "the handler to return")
			if tt.honourCtx && !errors.Is(cause, ErrMaxConnectionDuration) {
				t.Errorf("handler's context cause = %v, want ErrMaxConnectionDuration", cause)
			}
			if got := tunnelClosed(e, tunnelClosedMaxDuration); got != 1 {
				t.Errorf("tunnel_connections_closed_total{max_duration} = %v, want 1", got)
			}
			eventually(t, 3*time.Second, "tunnel gauge back to 0", func() bool { return tunnelGauge(e) == 0 })
		})
	}
}

// TestTunnelHandlerPanic: a panicking handler costs its own connection
// (closed with 0x101), not the edge.
func TestTunnelHandlerPanic(t *testing.T) {
	seen, causes := make(chan tunnelSeen, 4), make(chan error, 4)
	echo := echoTunnel(seen, causes)
	calls := make(chan struct{}, 1)
	calls <- struct{}{}
	h := func(ctx context.Context, conn *quic.Conn) {
		select {
		case <-calls:
			panic("tunnel handler bug")
		default:
			echo(ctx, conn)
		}
	}
	e := startEnv(t, fastConfig(), okHandler, Options{Tunnel: h}, nil)

	ae := waitClosed(t, e.dialTunnel(), 3*time.Second)
	if ae.ErrorCode != tunnelCodeProtocol {
		t.Errorf("connection of the panicking handler closed with %#x %q, want 0x101", uint64(ae.ErrorCode), ae.ErrorMessage)
	}
	if got := tunnelClosed(e, tunnelClosedPanic); got != 1 {
		t.Errorf("tunnel_connections_closed_total{panic} = %v, want 1", got)
	}
	if got := echoOnce(t, e.dialTunnel(), "still here"); got != "still here" {
		t.Errorf("echo after a panic = %q", got)
	}
	resp, body := get(t, e.h3Client(), e.h3URL("/"), nil)
	if resp.StatusCode != http.StatusOK || body != "HTTP/3.0" {
		t.Errorf("HTTP/3 after a tunnel panic: %d %q", resp.StatusCode, body)
	}
}

// TestTunnelLimit: beyond the connection limit a tunnel connection is
// closed with 0x103 so the client retries elsewhere; a freed slot is reused.
func TestTunnelLimit(t *testing.T) {
	seen, causes := make(chan tunnelSeen, 4), make(chan error, 4)
	e := startEnv(t, fastConfig(), okHandler, Options{Tunnel: echoTunnel(seen, causes)}, func(s *Server) {
		s.tunnels = newTunnelTracker(s.metrics, 1)
	})
	first := e.dialTunnel()
	recv(t, seen, "the first connection to reach the handler")

	ae := waitClosed(t, e.dialTunnel(), 3*time.Second)
	if ae.ErrorCode != tunnelCodeGoingAway {
		t.Errorf("connection over the limit closed with %#x %q, want 0x103", uint64(ae.ErrorCode), ae.ErrorMessage)
	}
	if got := tunnelClosed(e, tunnelClosedLimit); got != 1 {
		t.Errorf("tunnel_connections_closed_total{limit} = %v, want 1", got)
	}

	_ = first.CloseWithError(0, "")
	recv(t, causes, "the first handler to end")
	eventually(t, 3*time.Second, "the slot to be free", func() bool { return len(e.s.tunnels.limit) == 0 })
	if got := echoOnce(t, e.dialTunnel(), "next"); got != "next" {
		t.Errorf("echo on a freed slot = %q", got)
	}
}
