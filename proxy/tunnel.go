package proxy

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/proxy/edge"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// Bounds of the tunnel endpoint.
const (
	tunnelHelloWait  = 10 * time.Second // the control stream and its hello
	tunnelHeaderWait = 5 * time.Second  // a data stream's header
	tunnelDialWait   = 10 * time.Second // the app's TCP connection
	tunnelByeWait    = time.Second      // for the client to hang up after "bye" or an error frame
)

// TunnelConfig bounds the client tunnel endpoint. Streams per connection
// are bounded by the transport: 256 on QUIC, 250 on the HTTP/2 fallback
// (net/http's limit of concurrent streams).
type TunnelConfig struct {
	// MaxStreamsPerUser bounds one user's open streams over all their
	// tunnel connections to this edge. 0 → 1024.
	MaxStreamsPerUser int `yaml:"max_streams_per_user"`
	// StreamIdleTimeout closes a stream on which no byte moved either way
	// for this long. 0 → 30m.
	StreamIdleTimeout time.Duration `yaml:"stream_idle_timeout"`
}

func (c TunnelConfig) withDefaults() TunnelConfig {
	if c.MaxStreamsPerUser <= 0 {
		c.MaxStreamsPerUser = 1024
	}
	if c.StreamIdleTimeout <= 0 {
		c.StreamIdleTimeout = 30 * time.Minute
	}
	return c
}

// userStreams counts each user's open tunnel streams.
type userStreams struct {
	mu sync.Mutex
	n  map[string]int
}

// acquire counts a stream for user unless they already have limit open.
func (u *userStreams) acquire(user string, limit int) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n[user] >= limit {
		return false
	}
	if u.n == nil {
		u.n = make(map[string]int)
	}
	u.n[user]++
	return true
}

func (u *userStreams) release(user string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n[user] <= 1 {
		delete(u.n, user)
		return
	}
	u.n[user]--
}

// errStreamIdle ends a stream that moved no byte for the idle timeout.
var errStreamIdle = errors.New("idle timeout: no data moved")

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

	// The app list the client was last sent, kept current by pushApps.
	pushMu      sync.Mutex
	pushPending atomic.Bool
	apps        []tunnel.App
	mu          sync.Mutex // guards subjectNow
	subjectNow  groups.Subject
}

// send writes a control frame; errors only mean the client went away.
func (tc *tunnelConn) send(f tunnel.Frame) {
	tc.ctrlMu.Lock()
	defer tc.ctrlMu.Unlock()
	_ = tc.ctrl.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = tunnel.WriteFrame(tc.ctrl, f)
}

// poke schedules pushApps after the session's attributes or the policy
// changed. It runs under the live registry's lock, so it only starts a
// goroutine (at most one waiting at a time).
func (tc *tunnelConn) poke(e *Edge, ctx context.Context, subj groups.Subject) {
	tc.mu.Lock()
	tc.subjectNow = subj
	tc.mu.Unlock()
	if tc.pushPending.Swap(true) {
		return
	}
	go tc.pushApps(e, ctx)
}

// pushApps sends an "apps" frame if the apps the user may reach changed.
func (tc *tunnelConn) pushApps(e *Edge, ctx context.Context) {
	tc.pushMu.Lock()
	defer tc.pushMu.Unlock()
	tc.pushPending.Store(false) // a change from now on schedules another push
	if ctx.Err() != nil {
		return
	}
	tc.mu.Lock()
	subj := tc.subjectNow
	tc.mu.Unlock()
	apps := e.tunnelApps(e.state.Load(), subj, tc.device)
	if slices.Equal(apps, tc.apps) {
		return
	}
	tc.apps = apps
	if apps == nil {
		apps = []tunnel.App{} // "no apps", not "field absent"
	}
	tc.send(tunnel.Frame{Type: tunnel.FrameApps, Apps: apps})
}

// readControl answers the client's control frames (ping → pong) until the
// control stream ends; other frames are ignored, as the protocol says.
func (tc *tunnelConn) readControl() {
	for {
		f, err := tunnel.ReadFrame(tc.ctrl)
		if err != nil {
			return
		}
		if f.Type == tunnel.FramePing {
			tc.send(tunnel.Frame{Type: tunnel.FramePong})
		}
	}
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
	live := &liveEntry{sessKey: tc.sessKey, device: tc.device, req: groups.Request{Subject: tc.subject}, cancel: cancel,
		changed: func(le *liveEntry) { tc.poke(e, cctx, le.req.Subject) }}
	e.live.register(live)
	defer e.live.unregister(live)
	var control, streams sync.WaitGroup
	defer control.Wait()
	control.Go(func() { tc.readControl() })
	defer tc.ctrl.CloseRead() // before control.Wait: ends readControl
	defer streams.Wait()
	for {
		s, err := conn.acceptStream(cctx)
		if err != nil {
			break
		}
		streams.Go(func() { e.serveTunnelStream(cctx, tc, s) })
	}
	if cctx.Err() == nil {
		// The client closed the connection (or its control stream): its
		// streams end with it.
		cancel(nil)
		return
	}
	// The edge ends the connection. Every stream reports its cut first
	// ("closed" frames, resets), then "bye" says why the connection ends
	// (the edge listener closes it anyway on drain and at the maximum
	// connection duration).
	streams.Wait()
	reason, code, byeCode := "the edge is going away", tunnel.CodeGoingAway, tunnel.ByeGoingAway
	var c *cut
	switch cause := context.Cause(cctx); {
	case errors.As(cause, &c) && c.goingAway:
		reason = c.reason
	case errors.As(cause, &c):
		reason, code, byeCode = c.reason, tunnel.CodeSessionRevoked, tunnel.ByeSessionRevoked
	case errors.Is(cause, edge.ErrDraining), errors.Is(cause, edge.ErrMaxConnectionDuration):
		reason = cause.Error()
	}
	tc.hangUp(tunnel.Frame{Type: tunnel.FrameBye, Code: byeCode, Reason: reason}, code, reason)
}

// hangUp sends the last control frame (bye, or an error), finishes the
// control stream and gives the client a moment to read it and hang up
// itself — closing the connection at once would discard what is unsent —
// then closes the connection.
func (tc *tunnelConn) hangUp(last tunnel.Frame, code quic.ApplicationErrorCode, reason string) {
	tc.send(last)
	_ = tc.ctrl.CloseWrite()
	select {
	case <-tc.link.done():
	case <-time.After(tunnelByeWait):
	}
	tc.link.close(code, reason)
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
		tc.hangUp(tunnel.Frame{Type: tunnel.FrameError, Code: code, Message: msg}, tunnel.CodeAuthFailed, code)
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
		return refuse("quarantined", refusalText(q))
	}
	tc.sessionID, tc.sessKey, tc.subject, tc.device = hello.Token, sess.Key, subjectOf(&sess.Identity), dev
	tc.subjectNow, tc.apps = tc.subject, e.tunnelApps(st, tc.subject, dev)
	tc.send(tunnel.Frame{Type: tunnel.FrameWelcome, User: sess.Identity.Subject, Email: sess.Identity.Email, Device: dev,
		Apps: tc.apps, Policy: st.policy.Version()})
	e.logger.Info("tunnel connected", "user", sess.Identity.Subject, "device", dev, "client", conn.remoteAddr().String())
	return tc, true
}

// tunnelApps lists the TCP apps the user may reach from this device: the
// outbound allow-list, each with why it refuses this device now, if it
// does. Every other app is invisible through the tunnel.
func (e *Edge) tunnelApps(st *State, subj groups.Subject, dev string) []tunnel.App {
	now := time.Now()
	visible := st.policy.Apps(subj, e.deviceAttrs(st, dev, now))
	var out []tunnel.App
	for _, name := range visible {
		if a := st.apps[name]; a != nil && a.TCP != "" {
			ta := tunnel.App{Name: name, Kind: "tcp"}
			if refused := e.posture(a, subj.User, subj.Email, dev, now); refused != nil {
				ta.Unavailable = refusalText(refused)
			}
			out = append(out, ta)
		}
	}
	return out
}

// serveTunnelStream serves one data stream: header, decision, dial, then
// bytes both ways until either side is done or the edge cuts it.
func (e *Edge) serveTunnelStream(ctx context.Context, tc *tunnelConn, s tunnel.Stream) {
	start := time.Now()
	_ = s.SetReadDeadline(start.Add(tunnelHeaderWait))
	stopHeader := context.AfterFunc(ctx, func() { s.Reset(tunnel.StreamCut) }) // the connection is ending
	h, err := tunnel.ReadHeader(s)
	if !stopHeader() {
		return
	}
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
	// Apps no rule could open to this user from this device are invisible:
	// the same answer as for an app that does not exist, before anything
	// (a posture refusal) could tell that it does.
	a := st.apps[h.App]
	req := groups.Request{Subject: subjectOf(&sess.Identity), Device: e.deviceAttrs(st, tc.device, start),
		Method: "CONNECT", Path: "/", Time: start}
	if a == nil || a.TCP == "" || !slices.Contains(st.policy.Apps(req.Subject, req.Device), a.Name) {
		deny(tunnel.StatusUnknownApp, groups.Decision{Reason: "no app " + h.App + " is reachable through the tunnel"})
		return
	}
	req.App = a.Name
	if refused := e.posture(a, sess.Identity.Subject, sess.Identity.Email, tc.device, start); refused != nil {
		ev.Posture, _ = refusalVerdict(refused)
		deny(tunnel.StatusDenied, groups.Decision{Reason: refusalText(refused)})
		return
	}
	ev.Posture = a.PostureProfile
	if ap, err := netip.ParseAddrPort(tc.client.String()); err == nil {
		req.Source = ap.Addr().Unmap()
	}
	d := st.policy.Decide(req)
	if !d.Allow {
		deny(tunnel.StatusDenied, d)
		return
	}

	limits := st.Config.Tunnel.withDefaults()
	if !e.tunnelUsers.acquire(sess.Identity.Subject, limits.MaxStreamsPerUser) {
		deny(tunnel.StatusLimit, groups.Decision{Rule: d.Rule, Reason: fmt.Sprintf(
			"you have %d tunnel connections open, the most one user may have: close some and retry", limits.MaxStreamsPerUser)})
		return
	}
	defer e.tunnelUsers.release(sess.Identity.Subject)

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
	// the reason on the control stream; so does the idle timeout.
	var upBytes, downBytes, active atomic.Int64
	active.Store(time.Now().UnixNano())
	idle := limits.StreamIdleTimeout
	var idleTimer *time.Timer
	idleTimer = time.AfterFunc(math.MaxInt64, func() {
		if rest := idle - time.Since(time.Unix(0, active.Load())); rest > 0 {
			idleTimer.Reset(rest)
			return
		}
		cancel(errStreamIdle)
	})
	idleTimer.Reset(idle)
	defer idleTimer.Stop()
	done := make(chan struct{}, 2)
	go func() {
		n, _ := relay(up, s, &active)
		upBytes.Store(n)
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		n, err := relay(s, up, &active)
		downBytes.Store(n)
		switch {
		case sctx.Err() != nil:
			// Cut: the main loop reports it and resets the stream (the
			// app may have answered the cut with its FIN: not a clean end).
		case err == nil:
			_ = s.CloseWrite()
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
			code := tunnel.StreamCut
			reason = "the edge closed the connection"
			var c *cut
			switch cause := context.Cause(sctx); {
			case errors.As(cause, &c):
				reason = c.reason
			case errors.Is(cause, errStreamIdle):
				reason, code = fmt.Sprintf("no data moved for %v: closed as idle", idle), tunnel.StreamIdle
			case errors.Is(cause, edge.ErrDraining), errors.Is(cause, edge.ErrMaxConnectionDuration):
				reason = "the edge ended the connection: " + cause.Error() + "; reconnect"
			}
			tc.send(tunnel.Frame{Type: tunnel.FrameClosed, Stream: s.ID(), Reason: reason})
			s.Reset(code)
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

// relay copies src to dst like io.Copy and records in active when bytes
// last moved. A direction waiting for data holds a 2 KiB buffer; one that
// fills it borrows a 32 KiB buffer from the edge's pool until reads come
// back small again — so an idle stream costs little and a bulk transfer
// copies in large chunks.
func relay(dst io.Writer, src io.Reader, active *atomic.Int64) (int64, error) {
	small := make([]byte, 2<<10)
	buf := small
	var big []byte
	defer func() {
		if big != nil {
			copyBuffers.Put(big)
		}
	}()
	var n int64
	for {
		nr, er := src.Read(buf)
		if nr > 0 {
			active.Store(time.Now().UnixNano())
			nw, ew := dst.Write(buf[:nr])
			n += int64(nw)
			if ew != nil {
				return n, ew
			}
			if nw != nr {
				return n, io.ErrShortWrite
			}
		}
		if er == io.EOF {
			return n, nil
		}
		if er != nil {
			return n, er
		}
		switch {
		case big == nil && nr == len(small):
			big = copyBuffers.Get()
			buf = big
		case big != nil && nr < len(small):
			copyBuffers.Put(big)
			big, buf = nil, small
		}
	}
}

// refusalText is a posture or quarantine refusal as one line for the
// tunnel client: the message, then each failing check and its fix.
func refusalText(he *httperr.Error) string {
	var b strings.Builder
	b.WriteString(he.Message)
	for _, c := range he.Checks {
		b.WriteString(" " + c.Reason)
		if c.Fix != "" {
			b.WriteString(" Fix: " + c.Fix)
		}
	}
	return b.String()
}
