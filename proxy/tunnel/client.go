package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// StreamNoError cancels a stream without blaming anyone (a local Close).
const StreamNoError quic.StreamErrorCode = 0

const (
	// connectTimeout bounds dial + hello + welcome when ctx has no deadline.
	connectTimeout = 15 * time.Second
	// replyTimeout bounds the wait for a data stream's reply when ctx has no
	// deadline; the edge dials the app before it answers.
	replyTimeout = 30 * time.Second
	// cutReasonWait is how long a reset data stream waits for the matching
	// "closed" frame: it travels on another stream, so it may arrive a little
	// after the reset.
	cutReasonWait = 250 * time.Millisecond
	// maxCutReasons bounds the memory kept for "closed" frames nobody asked for.
	maxCutReasons = 1024
	// defaultQUICTimeout is how long Connect waits for QUIC before it tries
	// the HTTP/2 fallback (a blocked UDP port usually just goes silent).
	defaultQUICTimeout = 3 * time.Second
	// preferH2For is how long, after QUIC failed and HTTP/2 worked, the
	// client dials HTTP/2 first: reconnects do not wait for QUIC again each
	// time, and QUIC is tried again after it.
	preferH2For = 5 * time.Minute
)

func discardLogger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// Client connects to one edge. Its fields are read by Connect and must not be
// changed while a Connect or a Session using it runs.
type Client struct {
	Addr string // edge host:port (UDP for QUIC)
	// HTTPSAddr is the edge's HTTPS host:port (TCP) for the HTTP/2
	// fallback; "" means Addr.
	HTTPSAddr string
	// Transport is TransportAuto (""): QUIC, and HTTP/2 CONNECT over TLS
	// when QUIC does not connect within QUICTimeout; or TransportQUIC or
	// TransportH2 only.
	Transport string
	// QUICTimeout bounds the QUIC attempt in TransportAuto; zero means 3 s.
	QUICTimeout time.Duration
	TLSConfig   *tls.Config // RootCAs, ServerName, Certificates (the device cert); NextProtos is set by the client
	// Token returns the bearer (the edge session ID). It is called once per Connect.
	Token  func(ctx context.Context) (string, error)
	Logger *slog.Logger
	// OnEvent receives apps, closed and bye frames, for `status` and the UI.
	// It runs on the connection's control reader: it must not block. May be nil.
	OnEvent func(Frame)
	// Version is sent as "ztna/<Version>" in the hello frame; "" means "dev".
	Version string
	// QUICConfig overrides the QUIC settings (tests use short idle timeouts).
	// Nil means keep-alives every 15 s and a 60 s idle timeout.
	QUICConfig *quic.Config

	mu      sync.Mutex
	h2Until time.Time // dial HTTP/2 first until then (TransportAuto)
}

// AuthError is the edge refusing the connection: an "error" control frame, or
// the connection closed with CodeAuthFailed. Retrying does not help until the
// user logs in again or fixes the device, so Session stops on it.
type AuthError struct {
	Code    string // unauthenticated, device_required, quarantined, unsupported_version, or "" if unknown
	Message string // safe to show the user
}

func (e *AuthError) Error() string {
	code := e.Code
	if code == "" {
		code = "auth failed"
	}
	if e.Message == "" {
		return "tunnel: edge refused the connection: " + code
	}
	return "tunnel: edge refused the connection: " + code + ": " + e.Message
}

// DialError is a data stream the edge answered with a status other than OK.
type DialError struct {
	App     string
	Status  Status
	Message string // the edge's reason, safe to show the user
}

func (e *DialError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("tunnel: %s: %s", e.App, e.Status)
	}
	return fmt.Sprintf("tunnel: %s: %s: %s", e.App, e.Status, e.Message)
}

// CutError is a data stream the edge cut (reset with StreamCut), carrying the
// reason from the matching "closed" control frame when it arrived.
type CutError struct {
	App    string
	Reason string // "" when no "closed" frame arrived in time
	Err    error  // the *quic.StreamError
}

func (e *CutError) Error() string {
	if e.Reason == "" {
		return "tunnel: " + e.App + ": connection cut by the edge"
	}
	return "tunnel: " + e.App + ": connection cut by the edge: " + e.Reason
}

func (e *CutError) Unwrap() error { return e.Err }

func (c *Client) quicConfig() *quic.Config {
	var conf *quic.Config
	if c.QUICConfig != nil {
		conf = c.QUICConfig.Clone()
	} else {
		conf = &quic.Config{KeepAlivePeriod: 15 * time.Second, MaxIdleTimeout: 60 * time.Second}
	}
	// The edge never opens streams towards the client.
	conf.MaxIncomingStreams = -1
	conf.MaxIncomingUniStreams = -1
	conf.EnableDatagrams = false
	return conf
}

// Connect dials the edge, opens the control stream, sends hello and waits for
// welcome. An "error" frame (or a close with CodeAuthFailed) is an *AuthError.
func (c *Client) Connect(ctx context.Context) (*Conn, error) {
	if c.TLSConfig == nil || c.Token == nil || c.Addr == "" {
		return nil, errors.New("tunnel: Client needs Addr, TLSConfig and Token")
	}
	logger := discardLogger(c.Logger)
	token, err := c.Token(ctx)
	if err != nil {
		return nil, fmt.Errorf("tunnel: get token: %w", err)
	}
	tlsConf := c.TLSConfig.Clone()
	if tlsConf.MinVersion < tls.VersionTLS13 {
		tlsConf.MinVersion = tls.VersionTLS13
	}
	hctx, cancel := ctx, context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		hctx, cancel = context.WithTimeout(ctx, connectTimeout)
	}
	defer cancel()

	t, err := c.dial(hctx, tlsConf, logger)
	if err != nil {
		return nil, err
	}
	welcome, ctrl, err := c.handshake(hctx, t, token)
	if err != nil {
		var ae *AuthError
		if !errors.As(err, &ae) && errors.Is(err, ErrBadFrame) {
			t.close(CodeProtocol, "bad control frame")
		} else {
			t.close(CodeNoError, "")
		}
		return nil, err
	}
	conn := &Conn{
		client:  c,
		logger:  logger,
		t:       t,
		ctrl:    ctrl,
		welcome: welcome,
		apps:    welcome.Apps,
		cuts:    make(map[int64]string),
		cutSig:  make(chan struct{}),
		pong:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	logger.Info("tunnel connected", "edge", c.Addr, "transport", t.name(), "user", welcome.User, "device", welcome.Device, "apps", len(welcome.Apps))
	go conn.readLoop()
	return conn, nil
}

// dial connects to the edge over the configured transport; in
// TransportAuto it tries QUIC for QUICTimeout, then HTTP/2 (or HTTP/2 first
// for a while after QUIC last failed, then QUIC).
func (c *Client) dial(ctx context.Context, tlsConf *tls.Config, logger *slog.Logger) (transport, error) {
	viaQUIC := func(ctx context.Context) (transport, error) {
		conf := tlsConf.Clone()
		conf.NextProtos = []string{ALPN}
		qt, err := dialQUIC(ctx, c.Addr, conf, c.quicConfig())
		if err != nil {
			return nil, fmt.Errorf("tunnel: dial %s over QUIC: %w", c.Addr, err)
		}
		return qt, nil
	}
	httpsAddr := c.HTTPSAddr
	if httpsAddr == "" {
		httpsAddr = c.Addr
	}
	viaHTTP2 := func(ctx context.Context) (transport, error) {
		t, err := dialH2(ctx, httpsAddr, tlsConf)
		if err != nil {
			return nil, fmt.Errorf("tunnel: dial %s over HTTP/2: %w", httpsAddr, err)
		}
		return t, nil
	}
	switch c.Transport {
	case TransportQUIC:
		return viaQUIC(ctx)
	case TransportH2:
		return viaHTTP2(ctx)
	case TransportAuto:
	default:
		return nil, fmt.Errorf("tunnel: unknown transport %q (want quic or h2)", c.Transport)
	}
	c.mu.Lock()
	h2First := time.Now().Before(c.h2Until)
	c.mu.Unlock()
	if h2First {
		if t, err := viaHTTP2(ctx); err == nil || ctx.Err() != nil {
			return t, err
		}
	}
	timeout := c.QUICTimeout
	if timeout <= 0 {
		timeout = defaultQUICTimeout
	}
	qctx, cancel := context.WithTimeout(ctx, timeout)
	t, qerr := viaQUIC(qctx)
	cancel()
	if qerr == nil || ctx.Err() != nil {
		if qerr == nil {
			c.mu.Lock()
			c.h2Until = time.Time{}
			c.mu.Unlock()
		}
		return t, qerr
	}
	if h2First {
		return nil, qerr
	}
	logger.Info("tunnel: QUIC did not connect; trying HTTP/2 over TLS", "err", qerr)
	t, herr := viaHTTP2(ctx)
	if herr != nil {
		return nil, fmt.Errorf("%w (and %w)", herr, qerr)
	}
	// QUIC may have failed only because the edge was not up yet (it just
	// restarted, and HTTP/2 found it up): one more short try before
	// settling for HTTP/2 and preferring it for a while.
	rctx, rcancel := context.WithTimeout(ctx, min(timeout, time.Second))
	qt, err := viaQUIC(rctx)
	rcancel()
	if err == nil {
		t.close(CodeNoError, "")
		return qt, nil
	}
	c.mu.Lock()
	c.h2Until = time.Now().Add(preferH2For)
	c.mu.Unlock()
	return t, nil
}

func (c *Client) handshake(ctx context.Context, t transport, token string) (Frame, Stream, error) {
	ctrl, err := t.openStream(ctx)
	if err != nil {
		return Frame{}, nil, c.connErr(t, fmt.Errorf("tunnel: open control stream: %w", err))
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = ctrl.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = ctrl.SetDeadline(time.Unix(1, 0)) })
	version := c.Version
	if version == "" {
		version = "dev"
	}
	hello := Frame{Type: FrameHello, Version: Version, Token: token, Client: "ztna/" + version}
	if err := WriteFrame(ctrl, hello); err != nil {
		stop()
		return Frame{}, nil, c.connErr(t, fmt.Errorf("tunnel: send hello: %w", err))
	}
	f, err := ReadFrame(ctrl)
	if !stop() {
		if err == nil {
			err = ctx.Err()
		}
		return Frame{}, nil, c.connErr(t, fmt.Errorf("tunnel: wait for welcome: %w", err))
	}
	if err != nil {
		return Frame{}, nil, c.connErr(t, fmt.Errorf("tunnel: wait for welcome: %w", err))
	}
	_ = ctrl.SetDeadline(time.Time{})
	switch f.Type {
	case FrameWelcome:
		return f, ctrl, nil
	case FrameError:
		return Frame{}, nil, &AuthError{Code: f.Code, Message: f.Message}
	default:
		return Frame{}, nil, fmt.Errorf("%w: expected welcome, got %q", ErrBadFrame, f.Type)
	}
}

// connErr turns a failure during the handshake into an *AuthError when the
// edge closed the connection with CodeAuthFailed (its error frame may have
// been lost with the close).
func (c *Client) connErr(t transport, err error) error {
	var ae *quic.ApplicationError
	if errors.As(err, &ae) || errors.As(context.Cause(t.context()), &ae) {
		if ae.Remote && ae.ErrorCode == CodeAuthFailed {
			return &AuthError{Message: ae.ErrorMessage}
		}
	}
	return err
}

// Conn is one live tunnel connection to the edge. Data streams are opened
// with Dial; the control stream is read in the background.
type Conn struct {
	client  *Client
	logger  *slog.Logger
	t       transport
	ctrl    Stream
	welcome Frame

	ctrlMu sync.Mutex // serialises control stream writes
	pingMu sync.Mutex // one Ping at a time
	pong   chan struct{}

	mu      sync.Mutex
	apps    []App
	cuts    map[int64]string // "closed" frames by stream
	cutSig  chan struct{}    // closed and replaced when cuts changes
	bye     string
	byeCode string
	paths   []*quic.Transport // sockets of migrated paths, closed with the connection
	err     error
	done    chan struct{}
}

// Welcome returns the edge's welcome frame.
func (c *Conn) Welcome() Frame { return c.welcome }

// Transport says how the connection reaches the edge: TransportQUIC or
// TransportH2.
func (c *Conn) Transport() string { return c.t.name() }

// Apps returns the latest app list (updated by "apps" frames).
func (c *Conn) Apps() []App {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]App(nil), c.apps...)
}

// Done is closed when the connection has ended; Err then says why.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is live.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection and waits for its reader to stop.
func (c *Conn) Close() error {
	c.t.close(CodeNoError, "client closed")
	<-c.done
	return nil
}

// Ping sends a ping frame and waits (bounded by ctx) for the edge's pong:
// the round trip through the edge's tunnel endpoint, for `status`.
func (c *Conn) Ping(ctx context.Context) (time.Duration, error) {
	c.pingMu.Lock()
	defer c.pingMu.Unlock()
	select {
	case <-c.pong: // a late pong of an abandoned ping
	default:
	}
	start := time.Now()
	c.ctrlMu.Lock()
	err := WriteFrame(c.ctrl, Frame{Type: FramePing})
	c.ctrlMu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("tunnel: ping: %w", err)
	}
	select {
	case <-c.pong:
		return time.Since(start), nil
	case <-c.done:
		return 0, c.Err()
	case <-ctx.Done():
		return 0, fmt.Errorf("tunnel: ping: %w", ctx.Err())
	}
}

func (c *Conn) readLoop() {
	var readErr error
	for {
		f, err := ReadFrame(c.ctrl)
		if err != nil {
			readErr = err
			break
		}
		switch f.Type {
		case FrameApps:
			c.mu.Lock()
			c.apps = f.Apps
			c.mu.Unlock()
			c.logger.Info("tunnel app list changed", "apps", len(f.Apps))
		case FrameClosed:
			c.mu.Lock()
			if len(c.cuts) >= maxCutReasons {
				clear(c.cuts)
			}
			if _, seen := c.cuts[f.Stream]; !seen { // the first reason is the cause
				c.cuts[f.Stream] = f.Reason
			}
			close(c.cutSig)
			c.cutSig = make(chan struct{})
			c.mu.Unlock()
			c.logger.Info("tunnel stream cut by the edge", "stream", f.Stream, "reason", f.Reason)
		case FrameBye:
			c.mu.Lock()
			c.bye, c.byeCode = f.Reason, f.Code
			c.mu.Unlock()
			c.logger.Info("tunnel edge says bye", "reason", f.Reason)
		case FramePong:
			select {
			case c.pong <- struct{}{}:
			default:
			}
			continue
		default:
			// Unknown frame types are ignored so the edge can add new ones.
			c.logger.Debug("tunnel ignored control frame", "frame", f)
			continue
		}
		if c.client.OnEvent != nil {
			c.client.OnEvent(f)
		}
		if f.Type == FrameBye {
			// Everything the edge had to say came before "bye" on this
			// stream: hang up, so the edge need not close the connection
			// while frames are still on their way.
			c.t.close(CodeNoError, "bye")
		}
	}
	c.mu.Lock()
	bye := c.bye != ""
	c.mu.Unlock()
	select {
	case <-c.t.context().Done():
	default:
		if bye && errors.Is(readErr, io.EOF) {
			// The edge said goodbye and ended the control stream (over
			// HTTP/2 that is how the edge closes a connection).
			c.t.close(CodeNoError, "")
			break
		}
		// The connection is alive but its control stream is not: the edge
		// broke the protocol (or sent garbage), so the connection is useless.
		c.logger.Warn("tunnel control stream failed", "err", readErr)
		c.t.close(CodeProtocol, "control stream failed")
	}
	cause := context.Cause(c.t.context())
	c.mu.Lock()
	switch {
	case c.bye != "":
		c.err = fmt.Errorf("tunnel: the edge ended the connection: %s", c.bye)
	default:
		c.err = fmt.Errorf("tunnel: connection closed: %w", cause)
	}
	c.mu.Unlock()
	c.mu.Lock()
	paths := c.paths
	c.paths = nil
	c.mu.Unlock()
	for _, tr := range paths {
		_ = tr.Close()
	}
	close(c.done)
}

// ErrNoMigration is Migrate on a connection that cannot migrate: the
// HTTP/2 fallback (TCP), or a QUIC connection whose edge disabled it.
var ErrNoMigration = errors.New("tunnel: this connection cannot migrate")

// Migrate moves a QUIC connection to a new local UDP socket — QUIC
// connection migration (RFC 9000 §9) — after validating the new path, so
// that after a network change the connection and its streams carry on
// instead of reconnecting. On failure the connection stays on its old path.
func (c *Conn) Migrate(ctx context.Context) error {
	qt, ok := c.t.(quicTransport)
	if !ok {
		return ErrNoMigration
	}
	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		return fmt.Errorf("tunnel: migrate: %w", err)
	}
	tr := &quic.Transport{Conn: udp, ConnectionIDLength: clientConnIDLen}
	fail := func(err error) error {
		_ = tr.Close()
		return fmt.Errorf("tunnel: migrate: %w", err)
	}
	path, err := qt.qc.AddPath(tr)
	if err != nil {
		return fail(errors.Join(ErrNoMigration, err))
	}
	if err := path.Probe(ctx); err != nil {
		_ = path.Close()
		return fail(err)
	}
	if err := path.Switch(); err != nil {
		_ = path.Close()
		return fail(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.done:
		_ = tr.Close()
		return c.err
	default:
	}
	c.paths = append(c.paths, tr)
	c.logger.Info("tunnel connection migrated", "local", udp.LocalAddr().String())
	return nil
}

// authEnded is an *AuthError when the edge ended the connection because
// the session is over (revoked, or authentication refused): retrying does
// not help. Over QUIC the close code says so, over HTTP/2 the "bye" frame.
func (c *Conn) authEnded() *AuthError {
	var appErr *quic.ApplicationError
	if errors.As(c.Err(), &appErr) && appErr.Remote &&
		(appErr.ErrorCode == CodeAuthFailed || appErr.ErrorCode == CodeSessionRevoked) {
		return &AuthError{Message: appErr.ErrorMessage}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byeCode == ByeSessionRevoked {
		return &AuthError{Code: ErrorUnauthenticated, Message: c.bye}
	}
	return nil
}

// cutReason waits up to cutReasonWait for the "closed" frame of stream id.
func (c *Conn) cutReason(id int64) string {
	timer := time.NewTimer(cutReasonWait)
	defer timer.Stop()
	for {
		c.mu.Lock()
		reason, ok := c.cuts[id]
		if ok {
			delete(c.cuts, id)
		}
		sig := c.cutSig
		c.mu.Unlock()
		if ok {
			return reason
		}
		select {
		case <-sig:
		case <-timer.C:
			return ""
		case <-c.done:
			// The reader has stopped: a last look at what it recorded.
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.cuts[id]
		}
	}
}

// Dial opens a data stream to app. A reply other than OK is a *DialError.
// The returned net.Conn has CloseWrite, and its deadlines are the stream's.
func (c *Conn) Dial(ctx context.Context, app string) (net.Conn, error) {
	if !ValidAppName(app) {
		return nil, &DialError{App: app, Status: StatusBadHeader, Message: "invalid app name"}
	}
	select {
	case <-c.done:
		return nil, c.Err()
	default:
	}
	str, err := c.t.openStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("tunnel: open stream for %s: %w", app, err)
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(replyTimeout)
	}
	_ = str.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = str.SetDeadline(time.Unix(1, 0)) })
	reply, err := c.request(str, app)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		str.Reset(StreamNoError)
		if code, _, ok := peerReset(err); ok && code == StreamBadHeader {
			return nil, &DialError{App: app, Status: StatusBadHeader, Message: "the edge rejected the stream header"}
		}
		return nil, fmt.Errorf("tunnel: dial %s: %w", app, c.mapStreamErr(app, str.ID(), err))
	}
	if reply.Status != StatusOK {
		str.CloseRead()
		_ = str.CloseWrite()
		return nil, &DialError{App: app, Status: reply.Status, Message: reply.Message}
	}
	_ = str.SetDeadline(time.Time{})
	return &streamConn{str: str, conn: c, app: app}, nil
}

func (c *Conn) request(str Stream, app string) (Reply, error) {
	if err := WriteHeader(str, Header{App: app}); err != nil {
		return Reply{}, err
	}
	return ReadReply(str)
}

// mapStreamErr explains why stream id failed: the edge's stream error
// codes, and a cut — of the stream, or of the whole connection — as a
// *CutError with the edge's reason when it sent one.
func (c *Conn) mapStreamErr(app string, id int64, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if code, _, ok := peerReset(err); ok {
		switch code {
		case StreamCut:
			return &CutError{App: app, Reason: c.cutReason(id), Err: err}
		case StreamUpstreamReset:
			return fmt.Errorf("tunnel: %s: connection reset by the app: %w", app, err)
		case StreamIdle:
			reason := c.cutReason(id)
			if reason == "" {
				reason = "closed as idle"
			}
			return &CutError{App: app, Reason: reason, Err: err}
		}
		return err
	}
	var appErr *quic.ApplicationError
	remoteClose := errors.As(err, &appErr) && appErr.Remote // quic-go fails streams before the connection's context
	if !remoteClose && c.t.context().Err() == nil {
		return err // a local error (a deadline, a Close)
	}
	// The connection ended under the stream: the edge's "closed" frame for
	// the stream, its "bye", or its QUIC close message says why.
	reason := c.cutReason(id)
	if reason == "" {
		c.mu.Lock()
		reason = c.bye
		c.mu.Unlock()
	}
	if reason == "" && remoteClose {
		switch appErr.ErrorCode {
		case CodeSessionRevoked, CodeGoingAway, CodeAuthFailed:
			reason = appErr.ErrorMessage
		}
	}
	if reason != "" {
		return &CutError{App: app, Reason: reason, Err: err}
	}
	return err
}

// streamConn is a data stream as a net.Conn.
type streamConn struct {
	str  Stream
	conn *Conn
	app  string

	mu  sync.Mutex
	cut *CutError // remembered so every later Read/Write reports the same reason
}

func (s *streamConn) mapErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cut != nil {
		return s.cut
	}
	err = s.conn.mapStreamErr(s.app, s.str.ID(), err)
	var ce *CutError
	if errors.As(err, &ce) {
		s.cut = ce
	}
	return err
}

func (s *streamConn) Read(p []byte) (int, error) {
	n, err := s.str.Read(p)
	return n, s.mapErr(err)
}

func (s *streamConn) Write(p []byte) (int, error) {
	n, err := s.str.Write(p)
	return n, s.mapErr(err)
}

// CloseWrite sends FIN: the edge half-closes the app connection.
func (s *streamConn) CloseWrite() error { return s.str.CloseWrite() }

// Close ends both directions: FIN after any buffered data, and stop reading.
func (s *streamConn) Close() error {
	s.str.CloseRead()
	return s.str.CloseWrite()
}

func (s *streamConn) LocalAddr() net.Addr                { return s.conn.t.localAddr() }
func (s *streamConn) RemoteAddr() net.Addr               { return s.conn.t.remoteAddr() }
func (s *streamConn) SetDeadline(t time.Time) error      { return s.str.SetDeadline(t) }
func (s *streamConn) SetReadDeadline(t time.Time) error  { return s.str.SetReadDeadline(t) }
func (s *streamConn) SetWriteDeadline(t time.Time) error { return s.str.SetWriteDeadline(t) }

// ErrSessionClosed is returned by Session.Dial and Run after Close.
var ErrSessionClosed = errors.New("tunnel: session closed")

// Session keeps one Conn alive: it reconnects with exponential backoff
// (200 ms doubling to 30 s, ±20 % jitter) whenever the connection ends, and
// stops for good on an authentication failure. Call Run once; Dial waits for
// a connection.
type Session struct {
	Client *Client
	// MinBackoff and MaxBackoff bound the wait between attempts; zero means
	// 200 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// NetworkPoll is how often the machine's addresses are checked; when
	// they change (a new Wi-Fi, a VPN, a cable), a QUIC connection migrates
	// to a new socket (Conn.Migrate), or reconnects if it cannot. Zero
	// means 5 s; negative turns the check off.
	NetworkPoll time.Duration

	// addrs lists the machine's addresses (tests replace it).
	addrs func() ([]net.Addr, error)

	once    sync.Once
	mu      sync.Mutex
	conn    *Conn
	changed chan struct{} // closed and replaced whenever conn or err changes
	err     error         // terminal: set when the session stops for good
	started bool
	cancel  context.CancelFunc
	stopped chan struct{} // closed when Run returns
}

// healthyAfter is how long a connection must have lived for the backoff to
// start again from MinBackoff, so an edge that accepts and drops at once
// cannot make the client spin.
const healthyAfter = time.Second

func (s *Session) setup() {
	s.once.Do(func() {
		s.changed = make(chan struct{})
		s.stopped = make(chan struct{})
	})
}

// publish sets the current connection and terminal error and wakes waiters.
// Callers hold s.mu.
func (s *Session) publishLocked(conn *Conn, err error) {
	s.conn = conn
	if err != nil && s.err == nil {
		s.err = err
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Session) publish(conn *Conn, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.publishLocked(conn, err)
}

// Conn returns the current connection, or nil while (re)connecting.
func (s *Session) Conn() *Conn {
	s.setup()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn
}

// Run connects and reconnects until ctx is done, Close is called, or the edge
// refuses authentication (returned as an *AuthError). It returns nil after Close.
func (s *Session) Run(ctx context.Context) error {
	s.setup()
	s.mu.Lock()
	if s.started || s.err != nil {
		err := s.err
		s.mu.Unlock()
		switch {
		case errors.Is(err, ErrSessionClosed):
			return nil
		case err == nil:
			return errors.New("tunnel: Session.Run called twice")
		}
		return err
	}
	s.started = true
	ctx, s.cancel = context.WithCancel(ctx)
	s.mu.Unlock()
	defer close(s.stopped)
	err := s.run(ctx)
	if err == nil {
		err = ErrSessionClosed
	}
	s.publish(nil, err)
	if errors.Is(err, ErrSessionClosed) {
		return nil
	}
	return err
}

func (s *Session) run(ctx context.Context) error {
	logger := discardLogger(s.Client.Logger)
	minB, maxB := s.MinBackoff, s.MaxBackoff
	if minB <= 0 {
		minB = 200 * time.Millisecond
	}
	if maxB < minB {
		maxB = max(30*time.Second, minB)
	}
	backoff := minB
	for {
		conn, err := s.Client.Connect(ctx)
		if ctx.Err() != nil {
			if conn != nil {
				_ = conn.Close()
			}
			return s.stopCause(ctx)
		}
		if err != nil {
			var ae *AuthError
			if errors.As(err, &ae) {
				logger.Warn("tunnel authentication failed; not retrying", "code", ae.Code, "message", ae.Message)
				return err
			}
			logger.Warn("tunnel connect failed", "err", err, "retry_in", backoff)
		} else {
			start := time.Now()
			s.publish(conn, nil)
			stopWatch := s.watchNetwork(conn, logger)
			select {
			case <-conn.Done():
			case <-ctx.Done():
				stopWatch()
				_ = conn.Close()
				return s.stopCause(ctx)
			}
			stopWatch()
			s.publish(nil, nil)
			cerr := conn.Err()
			if ae := conn.authEnded(); ae != nil {
				logger.Warn("tunnel session ended by the edge; not retrying", "err", cerr)
				return ae
			}
			if time.Since(start) >= healthyAfter {
				backoff = minB
			}
			logger.Info("tunnel connection ended; reconnecting", "err", cerr, "retry_in", backoff)
		}
		wait := jitter(backoff)
		backoff = min(2*backoff, maxB)
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return s.stopCause(ctx)
		}
	}
}

// watchNetwork migrates conn when the machine's addresses change, or
// closes it (so Run reconnects) when it cannot migrate. It returns a
// function that stops the watch and waits for it.
func (s *Session) watchNetwork(conn *Conn, logger *slog.Logger) (stop func()) {
	every := s.NetworkPoll
	if every == 0 {
		every = 5 * time.Second
	}
	if every < 0 {
		return func() {}
	}
	addrs := s.addrs
	if addrs == nil {
		addrs = net.InterfaceAddrs
	}
	snapshot := func() string {
		list, err := addrs()
		if err != nil {
			return ""
		}
		names := make([]string, len(list))
		for i, a := range list {
			names[i] = a.String()
		}
		slices.Sort(names)
		return strings.Join(names, ",")
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		last := snapshot()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-conn.Done():
				return
			case <-t.C:
			}
			now := snapshot()
			if now == last {
				continue
			}
			last = now
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err := conn.Migrate(ctx)
			cancel()
			switch {
			case err == nil:
			case errors.Is(err, ErrNoMigration) && conn.Transport() == TransportH2:
				// A TCP connection survives what it survives; if the
				// change broke it, HTTP/2 pings notice.
			default:
				logger.Info("tunnel: network changed and the connection could not move; reconnecting", "err", err)
				_ = conn.Close()
				return
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

func (s *Session) stopCause(ctx context.Context) error {
	s.mu.Lock()
	closed := errors.Is(s.err, ErrSessionClosed)
	s.mu.Unlock()
	if closed {
		return ErrSessionClosed
	}
	return ctx.Err()
}

// jitter spreads d by ±20 % so clients dropped together do not return together.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// Dial opens a data stream to app on the current connection, waiting (bounded
// by ctx) for one while the session reconnects. Edge refusals (*DialError) are
// returned at once.
func (s *Session) Dial(ctx context.Context, app string) (net.Conn, error) {
	s.setup()
	for {
		s.mu.Lock()
		conn, changed, serr := s.conn, s.changed, s.err
		s.mu.Unlock()
		if serr != nil {
			return nil, serr
		}
		if conn != nil {
			nc, err := conn.Dial(ctx, app)
			if err == nil {
				return nc, nil
			}
			select {
			case <-conn.Done():
				// The connection died under us: wait for the next one.
			default:
				return nil, err
			}
			if ctx.Err() != nil {
				return nil, err
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("tunnel: no connection to the edge: %w", ctx.Err())
		}
	}
}

// Close stops Run, closes the connection and wakes waiting Dials.
func (s *Session) Close() error {
	s.setup()
	s.mu.Lock()
	started := s.started
	if s.err == nil {
		s.publishLocked(s.conn, ErrSessionClosed)
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.mu.Unlock()
	if started {
		<-s.stopped
	}
	return nil
}
