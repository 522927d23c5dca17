package proxy

import (
	"context"
	"errors"
	"io"
	"net"
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

// tunnelConn is one client tunnel connection after its hello: who, from
// which device, and the control stream the edge reports to.
type tunnelConn struct {
	conn      *quic.Conn
	sessionID string
	sessKey   string
	subject   groups.Subject
	device    string
	client    net.Addr

	ctrlMu sync.Mutex // serialises control frames
	ctrl   *quic.Stream
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
		s, err := conn.AcceptStream(cctx)
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
	reason, code := "the edge is going away", tunnel.CodeGoingAway
	var c *cut
	switch cause := context.Cause(cctx); {
	case errors.As(cause, &c):
		reason, code = c.reason, tunnel.CodeSessionRevoked
	case errors.Is(cause, edge.ErrDraining), errors.Is(cause, edge.ErrMaxConnectionDuration):
		reason = cause.Error()
	}
	tc.send(tunnel.Frame{Type: "bye", Reason: reason})
	_ = conn.CloseWithError(code, reason)
}

// tunnelHello reads the client's hello and answers welcome, or an error
// frame and closes the connection.
func (e *Edge) tunnelHello(ctx context.Context, conn *quic.Conn) (*tunnelConn, bool) {
	hctx, cancel := context.WithTimeout(ctx, tunnelHelloWait)
	defer cancel()
	ctrl, err := conn.AcceptStream(hctx)
	if err != nil {
		_ = conn.CloseWithError(tunnel.CodeProtocol, "no control stream")
		return nil, false
	}
	_ = ctrl.SetReadDeadline(time.Now().Add(tunnelHelloWait))
	hello, err := tunnel.ReadFrame(ctrl)
	if err != nil || hello.Type != "hello" {
		_ = conn.CloseWithError(tunnel.CodeProtocol, "expected a hello frame")
		return nil, false
	}
	_ = ctrl.SetReadDeadline(time.Time{})
	tc := &tunnelConn{conn: conn, ctrl: ctrl, client: conn.RemoteAddr()}
	refuse := func(code, msg string) (*tunnelConn, bool) {
		tc.send(tunnel.Frame{Type: "error", Code: code, Message: msg})
		// Closing the connection drops unsent stream data: finish the
		// control stream and give the client a moment to read the frame
		// and hang up itself.
		_ = ctrl.Close()
		select {
		case <-conn.Context().Done():
		case <-time.After(time.Second):
		}
		_ = conn.CloseWithError(tunnel.CodeAuthFailed, code)
		e.logger.Info("tunnel refused", "client", conn.RemoteAddr().String(), "code", code)
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
	dev, refused := e.deviceOf(hctx, conn.ConnectionState().TLS.PeerCertificates, sess)
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
	tc.send(tunnel.Frame{Type: "welcome", User: sess.Identity.Subject, Email: sess.Identity.Email, Device: dev,
		Apps: e.tunnelApps(st, sess, dev), Policy: st.policy.Version()})
	e.logger.Info("tunnel connected", "user", sess.Identity.Subject, "device", dev, "client", conn.RemoteAddr().String())
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
func (e *Edge) serveTunnelStream(ctx context.Context, tc *tunnelConn, s *quic.Stream) {
	start := time.Now()
	_ = s.SetReadDeadline(start.Add(tunnelHeaderWait))
	h, err := tunnel.ReadHeader(s)
	if err != nil {
		s.CancelRead(tunnel.StreamBadHeader)
		s.CancelWrite(tunnel.StreamBadHeader)
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
		_ = s.Close()
		s.CancelRead(0)
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
	if ua, ok := tc.client.(*net.UDPAddr); ok {
		req.Source = ua.AddrPort().Addr().Unmap()
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
	up, err := e.DialTCP(dctx, a.Name, sess, tc.device, tcpAddr(tc.client.String()), tcpAddr(tc.conn.LocalAddr().String()))
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
		if err != nil {
			s.CancelWrite(tunnel.StreamUpstreamReset)
		} else {
			_ = s.Close()
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
			tc.send(tunnel.Frame{Type: "closed", Stream: int64(s.StreamID()), Reason: reason})
			s.CancelRead(tunnel.StreamCut)
			s.CancelWrite(tunnel.StreamCut)
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
