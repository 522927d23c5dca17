package edge

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// connInfo is what the edge knows about one client connection (TCP or QUIC).
type connInfo struct {
	t     *connTracker
	start time.Time

	// TCP only; guarded by connTracker.mu.
	tlsConn *tls.Conn      // what net/http serves; closing it sends close_notify
	state   http.ConnState // last state reported by net/http
	proto   string         // "" until the first request phase (handshake done)

	// QUIC only.
	quicConn   *quic.Conn
	active     atomic.Int32 // requests in flight on this connection
	lastIdleNs atomic.Int64 // when active last dropped to zero (UnixNano)

	// expired is set once the connection has been told or made to close
	// because of max_connection_duration, so it is counted once.
	expired atomic.Bool
}

type connInfoKey struct{}

func connInfoFrom(ctx context.Context) *connInfo {
	ci, _ := ctx.Value(connInfoKey{}).(*connInfo)
	return ci
}

// connTracker knows every open client connection of the HTTPS and HTTP/3
// listeners. TCP connections are tracked from Accept to Close at the socket
// level, so hijacked (WebSocket) connections that net/http forgets about are
// still known, counted and force-closed at the end of the grace period.
type connTracker struct {
	m *metrics

	// longLived ends with cause ErrDraining when the edge starts draining;
	// maxAge is max_connection_duration. Both serve LongLived.
	longLived       context.Context
	cancelLongLived context.CancelCauseFunc
	maxAge          time.Duration

	mu   sync.Mutex
	tcp  map[*trackedConn]struct{}
	quic map[*quic.Conn]*connInfo
}

func newConnTracker(m *metrics, maxAge time.Duration) *connTracker {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &connTracker{
		m:               m,
		longLived:       ctx,
		cancelLongLived: cancel,
		maxAge:          maxAge,
		tcp:             make(map[*trackedConn]struct{}),
		quic:            make(map[*quic.Conn]*connInfo),
	}
}

// trackedListener wraps the HTTPS TCP listener.
type trackedListener struct {
	net.Listener
	t *connTracker
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, t: l.t, info: &connInfo{t: l.t, start: time.Now(), state: http.StateNew}}
	l.t.mu.Lock()
	l.t.tcp[tc] = struct{}{}
	l.t.mu.Unlock()
	return tc, nil
}

// trackedConn is a raw TCP connection that removes itself from the tracker
// when closed, by net/http or, after a hijack, by the handler.
type trackedConn struct {
	net.Conn
	t         *connTracker
	info      *connInfo
	closeOnce sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.t.mu.Lock()
		delete(c.t.tcp, c)
		proto := c.info.proto
		c.t.mu.Unlock()
		if proto != "" {
			c.t.m.open.WithLabelValues(proto).Dec()
		}
	})
	return err
}

// trackedOf returns the trackedConn under a connection net/http reports.
func trackedOf(c net.Conn) *trackedConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	t, _ := c.(*trackedConn)
	return t
}

// connContext is http.Server.ConnContext: it puts the connection's info into
// every request context on it.
func (t *connTracker) connContext(ctx context.Context, c net.Conn) context.Context {
	tc := trackedOf(c)
	if tc == nil {
		return ctx
	}
	if tlsConn, ok := c.(*tls.Conn); ok {
		t.mu.Lock()
		tc.info.tlsConn = tlsConn
		t.mu.Unlock()
	}
	return context.WithValue(ctx, connInfoKey{}, tc.info)
}

// connState is http.Server.ConnState. The protocol is fixed at the first
// Active/Idle report, when the TLS handshake is complete.
func (t *connTracker) connState(c net.Conn, state http.ConnState) {
	tc := trackedOf(c)
	if tc == nil {
		return
	}
	proto := ""
	if state == http.StateActive || state == http.StateIdle {
		proto = protoH1
		if tlsConn, ok := c.(*tls.Conn); ok && tlsConn.ConnectionState().NegotiatedProtocol == "h2" {
			proto = protoH2
		}
	}
	var counted string
	t.mu.Lock()
	if _, open := t.tcp[tc]; open {
		tc.info.state = state
		if tc.info.proto == "" && proto != "" {
			tc.info.proto = proto
			counted = proto
		}
	}
	t.mu.Unlock()
	if counted != "" {
		t.m.open.WithLabelValues(counted).Inc()
	}
}

// closeAllTCP closes every tracked TCP connection at the socket, including
// hijacked ones. Used only when the grace period is over.
func (t *connTracker) closeAllTCP() int {
	t.mu.Lock()
	conns := make([]*trackedConn, 0, len(t.tcp))
	for c := range t.tcp {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	return len(conns)
}

// quicConnContext is http3.Server.ConnContext. It tracks the QUIC connection
// and makes its request contexts end when base ends (http3 derives request
// contexts from the QUIC connection, not from a server base context).
func (t *connTracker) quicConnContext(base context.Context) func(context.Context, *quic.Conn) context.Context {
	return func(ctx context.Context, qc *quic.Conn) context.Context {
		ci := &connInfo{t: t, start: time.Now(), quicConn: qc}
		ci.lastIdleNs.Store(ci.start.UnixNano())
		t.mu.Lock()
		t.quic[qc] = ci
		t.mu.Unlock()
		t.m.open.WithLabelValues(protoH3).Inc()

		ctx, cancel := context.WithCancel(ctx)
		stopBase := context.AfterFunc(base, cancel)
		context.AfterFunc(qc.Context(), func() {
			stopBase()
			cancel()
			t.mu.Lock()
			delete(t.quic, qc)
			t.mu.Unlock()
			t.m.open.WithLabelValues(protoH3).Dec()
		})
		return context.WithValue(ctx, connInfoKey{}, ci)
	}
}

// closeExpired closes connections that have no request in flight and are
// older than maxAge (if maxAge > 0) or, for QUIC, any such connection while
// draining.
//
// TCP: state Idle (between keep-alive requests; HTTP/2 with no open streams),
// closed like net/http closes idle connections on shutdown. QUIC: no request
// in flight for at least quiet, so the last response had time to be
// acknowledged before CONNECTION_CLOSE (which discards unsent stream data);
// closed with H3_NO_ERROR, which http3 clients answer by dialling again.
func (t *connTracker) closeExpired(now time.Time, maxAge, quiet time.Duration, draining bool) {
	aged := func(ci *connInfo) bool { return maxAge > 0 && now.Sub(ci.start) >= maxAge }
	var tcpClose []*tls.Conn
	var tcpProtos []string
	var quicClose []*connInfo
	t.mu.Lock()
	for c := range t.tcp {
		ci := c.info
		if ci.state == http.StateIdle && ci.tlsConn != nil && aged(ci) {
			tcpClose = append(tcpClose, ci.tlsConn)
			if ci.expired.CompareAndSwap(false, true) {
				tcpProtos = append(tcpProtos, ci.proto)
			}
		}
	}
	for _, ci := range t.quic {
		if (draining || aged(ci)) && ci.active.Load() == 0 &&
			now.Sub(time.Unix(0, ci.lastIdleNs.Load())) >= quiet {
			quicClose = append(quicClose, ci)
		}
	}
	t.mu.Unlock()

	for _, p := range tcpProtos {
		t.m.maxClosed.WithLabelValues(p).Inc()
	}
	// tls.Conn.Close bounds its close_notify write to 5s.
	for _, c := range tcpClose {
		_ = c.Close()
	}
	for _, ci := range quicClose {
		reason := "server draining"
		if aged(ci) {
			reason = "max connection duration"
			if ci.expired.CompareAndSwap(false, true) {
				t.m.maxClosed.WithLabelValues(protoH3).Inc()
			}
		}
		_ = ci.quicConn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), reason)
	}
}
