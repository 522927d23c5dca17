package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// TunnelALPN is the ALPN of the client tunnel on the edge's QUIC port.
const TunnelALPN = "ztna-tunnel/1"

// TunnelHandler serves one QUIC connection that negotiated ALPN TunnelALPN. It owns the connection
// and returns when it is done; ctx is cancelled when the edge stops or the connection must go away.
//
// The connection has completed its TLS handshake (client certificate
// included) when the handler is called. context.Cause(ctx) tells why ctx
// ended: ErrDraining, ErrMaxConnectionDuration, or the connection's own close
// error. After an edge-initiated cancellation the handler has a short grace
// (drain: grace_timeout; max_connection_duration: a few seconds) to say
// goodbye; then the edge closes the connection with application error 0x103
// (going away). Whatever the handler leaves open when it returns is closed by
// the edge.
type TunnelHandler func(ctx context.Context, conn *quic.Conn)

// Why the edge cancels a tunnel connection's context (context.Cause). The
// messages are safe to show to the user (e.g. in the tunnel's "bye" frame).
var (
	ErrDraining              = errors.New("server draining")
	ErrMaxConnectionDuration = errors.New("max connection duration")
)

// Application error codes of the tunnel protocol that the edge itself uses
// (the protocol spec lists them all; proxy/edge must not import the tunnel
// package, so the two it needs are repeated here).
const (
	tunnelCodeNoError   quic.ApplicationErrorCode = 0x000
	tunnelCodeProtocol  quic.ApplicationErrorCode = 0x101 // also used for a handler panic: the edge broke the protocol
	tunnelCodeGoingAway quic.ApplicationErrorCode = 0x103
)

const (
	// defaultTunnelLimit bounds concurrent tunnel connections (including
	// those still in their handshake): each costs a goroutine or two and the
	// handler's state. Beyond it a connection is closed with "going away" so
	// the client retries, possibly on another replica.
	defaultTunnelLimit = 10000

	// defaultTunnelGoAwayGrace is how long a tunnel handler has, after its
	// context was cancelled for max_connection_duration, before the edge
	// closes the connection: enough to flush a goodbye frame, short enough
	// that maintenance is not held up.
	defaultTunnelGoAwayGrace = 2 * time.Second

	// tunnelMaxStreams is QUIC's MaxIncomingStreams when the tunnel is on:
	// the protocol's 256 data streams per connection plus its control
	// stream. It is one setting for the whole QUIC listener (the ALPN is not
	// known when it is sent), so HTTP/3 connections may then also run up to
	// this many requests at once instead of quic-go's default 100.
	tunnelMaxStreams = 256 + 1
)

// Reason label values for ztna_edge_tunnel_connections_closed_total.
const (
	tunnelClosedDrain       = "drain"
	tunnelClosedMaxDuration = "max_duration"
	tunnelClosedLimit       = "limit"
	tunnelClosedPanic       = "panic"
)

// quicTLSConfig is the TLS configuration of the shared QUIC listener: the
// caller's (certificates, client-certificate request) with TLS 1.3 and the
// given ALPNs, also for configurations returned by GetConfigForClient.
func quicTLSConfig(base *tls.Config, protos []string) *tls.Config {
	configure := func(c *tls.Config) *tls.Config {
		// As http3 does: initialise the session ticket keys before cloning,
		// so the clone shares them with the original (golang/go#60506).
		_, _ = c.DecryptTicket(nil, tls.ConnectionState{})
		c = c.Clone()
		c.MinVersion = tls.VersionTLS13
		c.NextProtos = protos
		return c
	}
	conf := configure(base.Clone()) // the caller's config stays untouched
	if gfc := conf.GetConfigForClient; gfc != nil {
		conf.GetConfigForClient = func(ch *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := gfc(ch)
			if c == nil || err != nil {
				return c, err
			}
			return configure(c), nil
		}
	}
	return conf
}

// quicConnQueue hands the HTTP/3 connections the edge's own QUIC listener
// accepted to http3.Server.ServeListener. ServeListener (rather than one
// ServeQUICConn call per connection) counts each connection synchronously in
// its accept loop, which keeps http3's graceful shutdown accounting exact.
type quicConnQueue struct {
	addr   net.Addr
	conns  chan *quic.Conn
	closed chan struct{}
	once   sync.Once
}

var _ http3.QUICListener = (*quicConnQueue)(nil)

func newQUICConnQueue(addr net.Addr) *quicConnQueue {
	return &quicConnQueue{addr: addr, conns: make(chan *quic.Conn), closed: make(chan struct{})}
}

func (q *quicConnQueue) Accept(ctx context.Context) (*quic.Conn, error) {
	select {
	case c := <-q.conns:
		return c, nil
	case <-q.closed:
		return nil, quic.ErrServerClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (q *quicConnQueue) Addr() net.Addr { return q.addr }

func (q *quicConnQueue) Close() error {
	q.once.Do(func() { close(q.closed) })
	return nil
}

// deliver passes c to http3; false once the queue is closed.
func (q *quicConnQueue) deliver(c *quic.Conn) bool {
	select {
	case q.conns <- c:
		return true
	case <-q.closed:
		return false
	}
}

// tunnelConn is one tunnel connection the edge tracks from Accept until its
// handler has returned.
type tunnelConn struct {
	conn     *quic.Conn
	ctx      context.Context
	cancel   context.CancelCauseFunc
	start    time.Time
	goneAway atomic.Bool // the edge cancelled ctx (drain or max duration)
}

// goAway cancels the handler's context with cause, once; it reports whether
// this call did it.
func (tc *tunnelConn) goAway(cause error) bool {
	if !tc.goneAway.CompareAndSwap(false, true) {
		return false
	}
	tc.cancel(cause)
	return true
}

// tunnelTracker knows every tunnel connection, so drain can cancel and then
// close them, and counts the goroutines serving them.
type tunnelTracker struct {
	m       *metrics
	limit   chan struct{} // a slot per connection being served
	running inflightCounter

	mu      sync.Mutex
	conns   map[*tunnelConn]struct{}
	stopped bool // draining: contexts cancelled, new connections refused
}

func newTunnelTracker(m *metrics, limit int) *tunnelTracker {
	return &tunnelTracker{m: m, limit: make(chan struct{}, limit), conns: make(map[*tunnelConn]struct{})}
}

// add tracks qc; nil if the edge is draining.
func (t *tunnelTracker) add(qc *quic.Conn) *tunnelConn {
	ctx, cancel := context.WithCancelCause(context.Background())
	tc := &tunnelConn{conn: qc, ctx: ctx, cancel: cancel, start: time.Now()}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		cancel(ErrDraining)
		return nil
	}
	t.conns[tc] = struct{}{}
	t.m.tunnelOpen.Inc()
	return tc
}

func (t *tunnelTracker) remove(tc *tunnelConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.conns[tc]; !ok {
		return
	}
	delete(t.conns, tc)
	t.m.tunnelOpen.Dec()
}

// goAwayAll refuses new tunnel connections and cancels every handler's
// context with ErrDraining.
func (t *tunnelTracker) goAwayAll() int {
	t.mu.Lock()
	t.stopped = true
	conns := make([]*tunnelConn, 0, len(t.conns))
	for tc := range t.conns {
		conns = append(conns, tc)
	}
	t.mu.Unlock()
	n := 0
	for _, tc := range conns {
		if tc.goAway(ErrDraining) {
			t.m.tunnelClosed.WithLabelValues(tunnelClosedDrain).Inc()
			n++
		}
	}
	return n
}

// closeAll closes every remaining tunnel connection with "going away"; used
// when the grace period is over.
func (t *tunnelTracker) closeAll() int {
	t.mu.Lock()
	conns := make([]*tunnelConn, 0, len(t.conns))
	for tc := range t.conns {
		conns = append(conns, tc)
	}
	t.mu.Unlock()
	for _, tc := range conns {
		_ = tc.conn.CloseWithError(tunnelCodeGoingAway, ErrDraining.Error())
	}
	return len(conns)
}

// acceptQUIC is the accept loop of the shared QUIC listener (only when a
// tunnel handler is configured): it dispatches each connection by ALPN and
// never blocks on one.
//
// The listener returns connections only once their handshake is complete
// (quic.Listen, not ListenEarly): the tunnel handler must see a verified
// client certificate, and before the handshake is confirmed QUIC cannot
// carry an application close code (a refusal would reach the client as a
// bare APPLICATION_ERROR instead of 0x103). quic-go bounds handshakes in
// flight (HandshakeIdleTimeout, address validation) and refuses connections
// when its accept queue is full, which this loop keeps short.
func (s *Server) acceptQUIC() error {
	for {
		qc, err := s.quicLn.Accept(context.Background())
		if err != nil {
			if errors.Is(err, quic.ErrServerClosed) {
				return http.ErrServerClosed
			}
			return err
		}
		switch qc.ConnectionState().TLS.NegotiatedProtocol {
		case TunnelALPN:
			s.startTunnel(qc)
		case http3.NextProtoH3:
			if s.h3 == nil || !s.h3Queue.deliver(qc) {
				_ = qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), ErrDraining.Error())
			}
		default:
			// TLS only negotiates an ALPN the listener offers; this is a
			// guard against a future offer without a dispatch.
			_ = qc.CloseWithError(tunnelCodeProtocol, "no application protocol")
		}
	}
}

// startTunnel takes a slot and serves qc in its own goroutine.
func (s *Server) startTunnel(qc *quic.Conn) {
	select {
	case s.tunnels.limit <- struct{}{}:
	default:
		s.metrics.tunnelClosed.WithLabelValues(tunnelClosedLimit).Inc()
		s.log.Warn("edge: tunnel connection limit reached, refusing a connection", "limit", cap(s.tunnels.limit))
		_ = qc.CloseWithError(tunnelCodeGoingAway, "edge at tunnel connection limit")
		return
	}
	tc := s.tunnels.add(qc)
	if tc == nil {
		<-s.tunnels.limit
		_ = qc.CloseWithError(tunnelCodeGoingAway, ErrDraining.Error())
		return
	}
	s.tunnels.running.add()
	go func() {
		defer s.tunnels.running.done()
		defer func() { <-s.tunnels.limit }()
		defer s.tunnels.remove(tc)
		s.serveTunnel(tc)
	}()
}

// serveTunnel runs the handler, enforces max_connection_duration and
// closes the connection when the handler is done.
func (s *Server) serveTunnel(tc *tunnelConn) {
	qc := tc.conn
	// The handler also learns when the peer (or quic-go) closed the
	// connection, with the close error as the cause.
	stopConnWatch := context.AfterFunc(qc.Context(), func() { tc.cancel(context.Cause(qc.Context())) })
	defer stopConnWatch()
	defer tc.cancel(nil)

	done := make(chan struct{})
	var panicked bool
	go func() {
		defer close(done)
		panicked = s.callTunnel(tc.ctx, qc)
	}()

	var expire <-chan time.Time
	if maxAge := s.cfg.MaxConnectionDuration; maxAge > 0 {
		t := time.NewTimer(maxAge - time.Since(tc.start))
		defer t.Stop()
		expire = t.C
	}
	select {
	case <-done:
	case <-expire:
		if tc.goAway(ErrMaxConnectionDuration) {
			s.metrics.tunnelClosed.WithLabelValues(tunnelClosedMaxDuration).Inc()
		}
		grace := time.NewTimer(s.tunnelGoAwayGrace)
		select {
		case <-done:
		case <-grace.C:
			_ = qc.CloseWithError(tunnelCodeGoingAway, ErrMaxConnectionDuration.Error())
			// A handler that ignores both its context and its closed
			// connection keeps this goroutine; Shutdown reports it.
			<-done
		}
		grace.Stop()
	}

	// Close whatever the handler left open (a no-op if it closed it).
	switch cause := context.Cause(tc.ctx); {
	case panicked:
		_ = qc.CloseWithError(tunnelCodeProtocol, "edge internal error")
	case tc.goneAway.Load():
		_ = qc.CloseWithError(tunnelCodeGoingAway, cause.Error())
	default:
		_ = qc.CloseWithError(tunnelCodeNoError, "")
	}
}

// callTunnel runs the handler; a panic is logged and reported, never
// propagated, so one bad connection cannot take the edge down.
func (s *Server) callTunnel(ctx context.Context, qc *quic.Conn) (panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			panicked = true
			s.metrics.tunnelClosed.WithLabelValues(tunnelClosedPanic).Inc()
			s.log.Error("edge: tunnel handler panicked", "remote", qc.RemoteAddr().String(),
				"panic", v, "stack", string(debug.Stack()))
		}
	}()
	s.opts.Tunnel(ctx, qc)
	return false
}
