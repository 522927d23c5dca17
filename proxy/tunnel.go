package proxy

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/proxy/edge"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// Bounds of the tunnel endpoint.
const (
	tunnelHelloWait  = 10 * time.Second // the control stream and its hello
	tunnelHeaderWait = 5 * time.Second  // a data stream's header
	tunnelDialWait   = 10 * time.Second // the app's TCP connection
)

// tunnelLink is one client tunnel connection as the endpoint sees it:
// QUIC (quicLink) or the HTTP/2 fallback (h2Link, tunnel_h2.go).
type tunnelLink interface {
	// acceptStream returns the next stream; the first is the control stream.
	acceptStream(ctx context.Context) (tunnel.Stream, error)
	// close ends the connection; code travels only over QUIC.
	close(code quic.ApplicationErrorCode, reason string)
	// done is closed when the connection is gone.
	done() <-chan struct{}
	remoteAddr() net.Addr
	localAddr() net.Addr
	peerCertificates() []*x509.Certificate
}

// quicLink is a tunnel connection over QUIC.
type quicLink struct{ conn *quic.Conn }

func (l quicLink) acceptStream(ctx context.Context) (tunnel.Stream, error) {
	s, err := l.conn.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return tunnel.QUICStream(s), nil
}

func (l quicLink) close(code quic.ApplicationErrorCode, reason string) {
	_ = l.conn.CloseWithError(code, reason)
}
func (l quicLink) done() <-chan struct{} { return l.conn.Context().Done() }
func (l quicLink) remoteAddr() net.Addr  { return l.conn.RemoteAddr() }
func (l quicLink) localAddr() net.Addr   { return l.conn.LocalAddr() }
func (l quicLink) peerCertificates() []*x509.Certificate {
	return l.conn.ConnectionState().TLS.PeerCertificates
}

// tunnelConn is one client tunnel connection after its hello: who, from
// which device, and the control stream the edge reports to.
type tunnelConn struct {
	link      tunnelLink
	sessionID string
	sessKey   string
	subject   groups.Subject
	device    string
	client    net.Addr

	h2 bool // the HTTP/2 fallback: stream resets carry no code

	ctrlMu sync.Mutex // serialises control frames
	ctrl   tunnel.Stream
}

// send writes a control frame; errors only mean the client went away.
func (tc *tunnelConn) send(f tunnel.Frame) {
	tc.ctrlMu.Lock()
	defer tc.ctrlMu.Unlock()
	_ = tc.ctrl.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = tunnel.WriteFrame(tc.ctrl, f)
}

// ServeTunnel serves one client tunnel connection (ALPN tunnel.ALPN). The
// first stream is the control stream: its hello carries the user's bearer
// (an edge session ID) and the TLS client certificate names the device;
// every later stream is one TCP connection to an app, authorized like a
// browser request — session, device, posture, policy — and registered as
// a live exchange, so revocation, quarantine, a posture failure, a group
// change or a reload cuts it.
func (e *Edge) ServeTunnel(ctx context.Context, conn *quic.Conn) {
	e.serveTunnelLink(ctx, quicLink{conn})
}

// serveTunnelLink is the endpoint for both transports.
func (e *Edge) serveTunnelLink(ctx context.Context, conn tunnelLink) {
	tc, ok := e.tunnelHello(ctx, conn)
	if !ok {
		return
	}
	// The connection itself is a live exchange of the session and the
	// device: revoking either, or quarantining the device, closes it.
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	live := &liveEntry{sessKey: tc.sessKey, device: tc.device, req: groups.Request{Subject: tc.subject}, cancel: cancel}
	e.live.register(live)
	defer e.live.unregister(live)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		s, err := conn.acceptStream(cctx)
		if err != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.serveTunnelStream(cctx, tc, s)
		}()
	}
	if cctx.Err() == nil {
		return // the client closed the connection
	}
	// The edge ends the connection: say why before closing it (the edge
	// listener closes it a moment later anyway on drain and at the
	// maximum connection duration).
	reason, code, byeCode := "the edge is going away", tunnel.CodeGoingAway, tunnel.ByeGoingAway
	var c *cut
	switch cause := context.Cause(cctx); {
	case errors.As(cause, &c):
		reason, code, byeCode = c.reason, tunnel.CodeSessionRevoked, tunnel.ByeSessionRevoked
	case errors.Is(cause, edge.ErrDraining), errors.Is(cause, edge.ErrMaxConnectionDuration):
		reason = cause.Error()
	}
	tc.send(tunnel.Frame{Type: tunnel.FrameBye, Code: byeCode, Reason: reason})
	conn.close(code, reason)
}

// tunnelHello reads the client's hello and answers welcome, or an error
// frame and closes the connection.
func (e *Edge) tunnelHello(ctx context.Context, conn tunnelLink) (*tunnelConn, bool) {
	hctx, cancel := context.WithTimeout(ctx, tunnelHelloWait)
	defer cancel()
	ctrl, err := conn.acceptStream(hctx)
	if err != nil {
		conn.close(tunnel.CodeProtocol, "no control stream")
		return nil, false
	}
	_ = ctrl.SetReadDeadline(time.Now().Add(tunnelHelloWait))
	hello, err := tunnel.ReadFrame(ctrl)
	if err != nil || hello.Type != tunnel.FrameHello {
		conn.close(tunnel.CodeProtocol, "expected a hello frame")
		return nil, false
	}
	_ = ctrl.SetReadDeadline(time.Time{})
	_, h2 := conn.(*h2Link)
	tc := &tunnelConn{link: conn, ctrl: ctrl, client: conn.remoteAddr(), h2: h2}
	refuse := func(code, msg string) (*tunnelConn, bool) {
		tc.send(tunnel.Frame{Type: tunnel.FrameError, Code: code, Message: msg})
		// Closing the connection drops unsent stream data: finish the
		// control stream and give the client a moment to read the frame
		// and hang up itself.
		_ = ctrl.CloseWrite()
		select {
		case <-conn.done():
		case <-time.After(time.Second):
		}
		conn.close(tunnel.CodeAuthFailed, code)
		e.logger.Info("tunnel refused", "client", conn.remoteAddr().String(), "code", code)
		return nil, false
	}
	if hello.Version != tunnel.Version {
		return refuse("unsupported_version", "This edge speaks tunnel protocol version 1; update ztna.")
	}
	st := e.state.Load()
	sess, err := st.auth.Sessions().Get(hctx, hello.Token)
	if err != nil {
		if !errors.Is(err, authn.ErrNoSession) {
			e.logger.Error("tunnel: session lookup failed", "err", err)
		}
		return refuse("unauthenticated", "Sign in again: ztna tunnel login.")
	}
	dev, refused := e.deviceOf(hctx, conn.peerCertificates(), sess)
	switch {
	case refused != nil:
		return refuse("device_refused", refused.Message)
	case dev == "":
		return refuse("device_required", "The tunnel needs this device's certificate: enroll it with `ztna agent enroll`.")
	}
	if q := e.quarantineRefusal(sess.Identity.Subject, sess.Identity.Email, dev); q != nil {
		return refuse("quarantined", q.Message+" "+q.Checks[0].Reason)
	}
	tc.sessionID, tc.sessKey, tc.subject, tc.device = hello.Token, sess.Key, subjectOf(&sess.Identity), dev
	tc.send(tunnel.Frame{Type: tunnel.FrameWelcome, User: sess.Identity.Subject, Email: sess.Identity.Email, Device: dev,
		Apps: e.tunnelApps(st, sess, dev), Policy: st.policy.Version()})
	e.logger.Info("tunnel connected", "user", sess.Identity.Subject, "device", dev, "client", conn.remoteAddr().String())
	return tc, true
}

// tunnelApps lists the TCP apps the user may reach from this device: the
// outbound allow-list. Every other app is invisible through the tunnel.
func (e *Edge) tunnelApps(st *State, sess *authn.Session, dev string) []tunnel.App {
	visible := st.policy.Apps(subjectOf(&sess.Identity), e.deviceAttrs(st, dev, time.Now()))
	var out []tunnel.App
	for _, name := range visible {
		if a := st.apps[name]; a != nil && a.TCP != "" {
			out = append(out, tunnel.App{Name: name, Kind: "tcp"})
		}
	}
	return out
}

// serveTunnelStream serves one data stream: header, decision, dial, then
// bytes both ways until either side is done or the edge cuts it.
func (e *Edge) serveTunnelStream(ctx context.Context, tc *tunnelConn, s tunnel.Stream) {
	start := time.Now()
	_ = s.SetReadDeadline(start.Add(tunnelHeaderWait))
	h, err := tunnel.ReadHeader(s)
	if err != nil {
		s.Reset(tunnel.StreamBadHeader)
		return
	}
	_ = s.SetReadDeadline(time.Time{})
	ev := audit.Event{Time: start, Kind: "stream", App: h.App, Device: tc.device, Source: tc.client.String(), Method: "CONNECT"}
	reply := func(st tunnel.Status, msg string) {
		_ = s.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_ = tunnel.WriteReply(s, tunnel.Reply{Status: st, Message: msg})
		_ = s.SetWriteDeadline(time.Time{})
	}
	deny := func(status tunnel.Status, d groups.Decision) {
		ev.Decision, ev.Rule, ev.Reason, ev.Latency = "deny", d.Rule, d.Reason, time.Since(start)
		e.opts.Audit.Record(ev)
		reply(status, d.Reason)
		_ = s.CloseWrite()
		s.CloseRead()
	}

	st := e.state.Load()
	ev.Policy = st.policy.Version()
	sess, err := st.auth.Sessions().Get(ctx, tc.sessionID)
	if err != nil {
		deny(tunnel.StatusDenied, groups.Decision{Reason: "your session ended: sign in again"})
		return
	}
	ev.User, ev.Email, ev.Session = sess.Identity.Subject, sess.Identity.Email, sess.Ref()
	a := st.apps[h.App]
	if a == nil || a.TCP == "" {
		deny(tunnel.StatusUnknownApp, groups.Decision{Reason: "no app " + h.App + " is reachable through the tunnel"})
		return
	}
	if refused := e.posture(a, sess.Identity.Subject, sess.Identity.Email, tc.device, start); refused != nil {
		ev.Posture, _ = refusalVerdict(refused)
		deny(tunnel.StatusDenied, groups.Decision{Reason: refused.Message})
		return
	}
	ev.Posture = a.PostureProfile
	req := groups.Request{App: a.Name, Subject: subjectOf(&sess.Identity), Device: e.deviceAttrs(st, tc.device, start),
		Method: "CONNECT", Path: "/", Time: start}
	if ap, err := netip.ParseAddrPort(tc.client.String()); err == nil {
		req.Source = ap.Addr().Unmap()
	}
	d := st.policy.Decide(req)
	if !d.Allow {
		status := tunnel.StatusDenied
		if d.Rule == "" && !slices.Contains(st.policy.Apps(req.Subject, req.Device), a.Name) {
			// Apps no rule could open to this user are invisible: the
			// same answer as for an app that does not exist.
			status = tunnel.StatusUnknownApp
			d.Reason = "no app " + h.App + " is reachable through the tunnel"
		}
		deny(status, d)
		return
	}

	// Registered before the dial, so a cut during the dial stops it too.
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	live := &liveEntry{sessKey: tc.sessKey, device: tc.device, req: req, cancel: cancel}
	e.live.register(live)
	defer e.live.unregister(live)

	dctx, dcancel := context.WithTimeout(sctx, tunnelDialWait)
	up, err := e.DialTCP(dctx, a.Name, sess, tc.device, tcpAddr(tc.client.String()), tcpAddr(tc.link.localAddr().String()))
	dcancel()
	if err != nil {
		e.logger.Info("tunnel: app unavailable", "app", a.Name, "err", err)
		deny(tunnel.StatusUnavailable, groups.Decision{Rule: d.Rule, Reason: "the app did not accept the connection"})
		return
	}
	defer up.Close()
	ev.Decision, ev.Rule, ev.Reason, ev.Latency = "allow", d.Rule, d.Reason, time.Since(start)
	e.opts.Audit.Record(ev)
	reply(tunnel.StatusOK, "")

	// Bytes both ways, half-close preserved. A cut resets the stream with
	// the reason on the control stream.
	var upBytes, downBytes atomic.Int64
	done := make(chan struct{}, 2)
	go func() {
		n, _ := io.Copy(up, s)
		upBytes.Store(n)
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		n, err := io.Copy(s, up)
		downBytes.Store(n)
		switch {
		case err == nil:
			_ = s.CloseWrite()
		case sctx.Err() != nil:
			// Cut: the main loop reports it and resets the stream.
		default:
			if tc.h2 { // an HTTP/2 reset carries no code
				tc.send(tunnel.Frame{Type: tunnel.FrameClosed, Stream: s.ID(), Reason: "the app reset the connection"})
			}
			s.Reset(tunnel.StreamUpstreamReset)
		}
		done <- struct{}{}
	}()
	reason := ""
	for pending := 2; pending > 0; {
		select {
		case <-done:
			pending--
		case <-sctx.Done():
			reason = "the edge closed the connection"
			var c *cut
			if errors.As(context.Cause(sctx), &c) {
				reason = c.reason
			}
			tc.send(tunnel.Frame{Type: tunnel.FrameClosed, Stream: s.ID(), Reason: reason})
			s.Reset(tunnel.StreamCut)
			_ = up.Close()
			for ; pending > 0; pending-- {
				<-done
			}
		}
	}
	e.opts.Audit.Record(audit.Event{Time: time.Now(), Kind: "stream_close", User: ev.User, Email: ev.Email, Session: ev.Session,
		Device: tc.device, App: a.Name, Source: ev.Source, Decision: "close", Reason: reason, Policy: ev.Policy,
		BytesUp: upBytes.Load(), BytesDown: downBytes.Load(), Duration: time.Since(start)})
}
