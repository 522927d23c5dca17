package tunnel

// The HTTP/2 fallback: where UDP is blocked, the same protocol runs over
// HTTP/2 CONNECT streams on one TLS connection to the edge's HTTPS port.
// Every stream — the control stream first, then one per TCP connection —
// is a CONNECT request to H2Authority that the edge answers 200 at once;
// after that the request and response bodies carry exactly the bytes a
// QUIC stream would. The edge ties data streams to the control stream that
// authenticated their TLS connection, and the device certificate is the
// connection's.
//
// Differences from QUIC, all because of what net/http can express: a
// stream reset carries no code (the edge sends the reason in a "closed"
// frame, as it does over QUIC); the app closing its side ends the stream
// in both directions (a server handler cannot half-close), while the
// client half-closing is forwarded to the app as over QUIC; and a client
// that stops reading (Close) resets the stream, so data it wrote just
// before may be lost, as with a TCP socket closed with unread data.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// HTTP/2 mapping of the protocol.
const (
	// H2Authority is the CONNECT target of every fallback stream; its port
	// is the protocol version.
	H2Authority = "ztna-tunnel:1"
	// H2StreamHeader names the stream: H2Control, or the data stream's ID
	// (a decimal number the client assigns, 1 and up, unique per
	// connection), which "closed" frames refer to.
	H2StreamHeader = "Ztna-Tunnel-Stream"
	H2Control      = "control"
)

// maxH2StreamID bounds client-assigned IDs (they travel in JSON numbers).
const maxH2StreamID = 1 << 53

var errStreamClosed = errors.New("tunnel: stream closed")

// h2Transport is the client side: one HTTP/2 connection to the edge.
type h2Transport struct {
	cc            *http.ClientConn
	ctx           context.Context
	cancel        context.CancelCauseFunc
	local, remote net.Addr
	next          atomic.Int64 // next stream ID; 0 is the control stream
}

// dialH2 opens the TLS connection (TLS 1.3, ALPN h2, through an HTTPS
// proxy if the environment names one) and starts HTTP/2 on it.
func dialH2(ctx context.Context, addr string, tlsConf *tls.Config) (*h2Transport, error) {
	tlsConf = tlsConf.Clone()
	tlsConf.NextProtos = []string{"h2"}
	if tlsConf.MinVersion < tls.VersionTLS13 {
		tlsConf.MinVersion = tls.VersionTLS13 // the device certificate is never sent in clear
	}
	t := &h2Transport{}
	var mu sync.Mutex
	dialer := &net.Dialer{Timeout: connectTimeout, KeepAlive: 15 * time.Second}
	tr := &http.Transport{
		Proxy:           http.ProxyFromEnvironment,
		TLSClientConfig: tlsConf,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, a)
			if err == nil {
				mu.Lock()
				t.local, t.remote = c.LocalAddr(), c.RemoteAddr()
				mu.Unlock()
			}
			return c, err
		},
		TLSHandshakeTimeout: connectTimeout,
		// HTTP/2 pings find a dead connection like QUIC keep-alives do.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 15 * time.Second, PingTimeout: 15 * time.Second,
			MaxReceiveBufferPerStream: 1 << 20, MaxReceiveBufferPerConnection: 8 << 20},
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	cc, err := tr.NewClientConn(ctx, "https", addr)
	if err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	t.cc = cc
	t.ctx, t.cancel = context.WithCancelCause(context.Background())
	cc.SetStateHook(func(cc *http.ClientConn) {
		if err := cc.Err(); err != nil {
			t.cancel(fmt.Errorf("tunnel: HTTP/2 connection: %w", err))
		}
	})
	if t.local == nil { // dialled through a proxy that hid the socket
		t.local, t.remote = &net.TCPAddr{}, &net.TCPAddr{}
	}
	return t, nil
}

func (t *h2Transport) openStream(ctx context.Context) (Stream, error) {
	id := t.next.Add(1) - 1
	label := H2Control
	if id > 0 {
		label = strconv.FormatInt(id, 10)
	}
	pr, pw := io.Pipe()
	sctx, cancel := context.WithCancel(t.ctx)
	req := (&http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Host: H2Authority},
		Host:   H2Authority,
		Header: http.Header{H2StreamHeader: {label}},
		Body:   pr,
	}).WithContext(sctx)
	stop := context.AfterFunc(ctx, cancel) // ctx bounds the request, not the stream
	resp, err := t.cc.RoundTrip(req)
	if !stop() && err == nil {
		_ = resp.Body.Close()
		err = ctx.Err()
	}
	if err != nil {
		cancel()
		_ = pw.CloseWithError(err)
		if cause := context.Cause(t.ctx); cause != nil {
			return nil, cause
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, MaxReplyMessage))
		_ = resp.Body.Close()
		cancel()
		_ = pw.Close()
		return nil, fmt.Errorf("tunnel: the edge refused the HTTP/2 stream: %s: %s", resp.Status, truncateUTF8(string(msg), 200))
	}
	return &h2ClientStream{t: t, id: id, body: resp.Body, pw: pw, cancel: cancel}, nil
}

func (t *h2Transport) close(quic.ApplicationErrorCode, string) {
	t.cancel(net.ErrClosed)
	_ = t.cc.Close()
}
func (t *h2Transport) context() context.Context { return t.ctx }
func (t *h2Transport) localAddr() net.Addr      { return t.local }
func (t *h2Transport) remoteAddr() net.Addr     { return t.remote }
func (t *h2Transport) name() string             { return TransportH2 }

// h2ClientStream is the client side of one CONNECT stream.
type h2ClientStream struct {
	t      *h2Transport
	id     int64
	body   io.ReadCloser
	pw     *io.PipeWriter
	cancel context.CancelFunc

	mu       sync.Mutex
	reset    bool // Reset was called
	expired  bool // a deadline fired (and reset the stream)
	rTimer   *time.Timer
	wTimer   *time.Timer
	closeErr error
}

func (s *h2ClientStream) mapErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	s.mu.Lock()
	reset, expired := s.reset, s.expired
	s.mu.Unlock()
	switch {
	case expired:
		return os.ErrDeadlineExceeded
	case reset:
		return net.ErrClosed
	}
	if cause := context.Cause(s.t.ctx); cause != nil {
		return cause // the connection died
	}
	return &ResetError{StreamID: s.id, Code: StreamCut, Err: err}
}

func (s *h2ClientStream) Read(p []byte) (int, error) {
	n, err := s.body.Read(p)
	return n, s.mapErr(err)
}

func (s *h2ClientStream) Write(p []byte) (int, error) {
	n, err := s.pw.Write(p)
	return n, s.mapErr(err)
}

func (s *h2ClientStream) CloseWrite() error { return s.pw.Close() }

// CloseRead stops reading: closing the response body before its end
// resets the stream (what is still to come is not wanted).
func (s *h2ClientStream) CloseRead() {
	s.mu.Lock()
	s.reset = true // a Read from now on is ours to have ended
	s.mu.Unlock()
	_ = s.body.Close()
}

func (s *h2ClientStream) Reset(quic.StreamErrorCode) {
	s.mu.Lock()
	s.reset = true
	s.mu.Unlock()
	s.abort()
}

func (s *h2ClientStream) abort() {
	s.cancel() // RST_STREAM(CANCEL)
	_ = s.pw.CloseWithError(errStreamClosed)
	_ = s.body.Close()
}

func (s *h2ClientStream) ID() int64 { return s.id }

func (s *h2ClientStream) SetDeadline(t time.Time) error {
	_ = s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

func (s *h2ClientStream) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rTimer = s.setTimerLocked(s.rTimer, t)
	return nil
}

func (s *h2ClientStream) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wTimer = s.setTimerLocked(s.wTimer, t)
	return nil
}

// setTimerLocked replaces a deadline timer; expiry ends the stream.
func (s *h2ClientStream) setTimerLocked(old *time.Timer, t time.Time) *time.Timer {
	if old != nil {
		old.Stop()
	}
	if t.IsZero() {
		return nil
	}
	return time.AfterFunc(time.Until(t), func() {
		s.mu.Lock()
		s.expired = true
		s.mu.Unlock()
		s.abort()
	})
}

// H2Stream is the edge's side of one fallback stream: a CONNECT request the
// handler has accepted. The handler must not return before Done is closed
// (by CloseWrite or Reset): net/http ends the stream when it returns.
type H2Stream struct {
	id      int64
	control bool
	body    io.ReadCloser
	w       http.ResponseWriter
	rc      *http.ResponseController

	writeMu  sync.Mutex // serialises writes; held to finish the stream
	stateMu  sync.Mutex
	finished bool // Done is closed; the handler may have returned
	aborting bool
	done     chan struct{}
}

// AcceptH2 validates a fallback CONNECT request and answers 200. It
// returns an error (and writes nothing) for a request that is not one: the
// caller answers it as a bad request.
func AcceptH2(w http.ResponseWriter, r *http.Request) (*H2Stream, error) {
	switch {
	case r.Method != http.MethodConnect:
		return nil, errors.New("not a CONNECT request")
	case r.ProtoMajor != 2:
		return nil, errors.New("the tunnel fallback needs HTTP/2")
	case r.Host != H2Authority:
		return nil, fmt.Errorf("CONNECT target %q: the edge only accepts %s", truncateUTF8(r.Host, 64), H2Authority)
	}
	s := &H2Stream{body: r.Body, w: w, rc: http.NewResponseController(w), done: make(chan struct{})}
	label := r.Header.Get(H2StreamHeader)
	if label == H2Control {
		s.control = true
	} else {
		id, err := strconv.ParseInt(label, 10, 64)
		if err != nil || id < 1 || id > maxH2StreamID {
			return nil, fmt.Errorf("bad %s header", H2StreamHeader)
		}
		s.id = id
	}
	// The edge's read and write timeouts are for requests; a stream lives
	// as long as the tunnel allows it.
	_ = s.rc.SetReadDeadline(time.Time{})
	_ = s.rc.SetWriteDeadline(time.Time{})
	w.WriteHeader(http.StatusOK)
	if err := s.rc.Flush(); err != nil {
		return nil, err
	}
	return s, nil
}

// Control reports whether this is the control stream.
func (s *H2Stream) Control() bool { return s.control }

// Done is closed when the stream is finished and the handler may return.
func (s *H2Stream) Done() <-chan struct{} { return s.done }

func (s *H2Stream) ID() int64 { return s.id }

func (s *H2Stream) Read(p []byte) (int, error) {
	n, err := s.body.Read(p)
	if err != nil && err != io.EOF {
		s.stateMu.Lock()
		ours := s.finished || s.aborting
		s.stateMu.Unlock()
		if ours {
			return n, net.ErrClosed
		}
		return n, &ResetError{StreamID: s.id, Code: StreamNoError, Err: err}
	}
	return n, err
}

func (s *H2Stream) Write(p []byte) (int, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.stateMu.Lock()
	closed := s.finished || s.aborting
	s.stateMu.Unlock()
	if closed {
		return 0, net.ErrClosed
	}
	n, err := s.w.Write(p)
	if err == nil {
		err = s.rc.Flush()
	}
	if err != nil {
		return n, &ResetError{StreamID: s.id, Code: StreamNoError, Err: err}
	}
	return n, nil
}

// CloseWrite finishes the stream: the handler returns and net/http sends
// END_STREAM (and, if the client is still sending, RST_STREAM(NO_ERROR)).
func (s *H2Stream) CloseWrite() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.finish()
	return nil
}

// CloseRead makes a blocked or later Read fail (an expired read deadline
// is the one way net/http offers); finishing the stream also stops reading.
func (s *H2Stream) CloseRead() {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if !s.finished {
		_ = s.rc.SetReadDeadline(time.Unix(1, 0))
	}
}

// Reset aborts the stream: an expired write deadline makes net/http reset
// it (INTERNAL_ERROR) and unblocks a blocked Write or Read.
func (s *H2Stream) Reset(quic.StreamErrorCode) {
	s.stateMu.Lock()
	if s.finished {
		s.stateMu.Unlock()
		return
	}
	if s.aborting { // another Reset is under way: return when it is done
		s.stateMu.Unlock()
		<-s.done
		return
	}
	s.aborting = true
	past := time.Unix(1, 0)
	_ = s.rc.SetWriteDeadline(past)
	_ = s.rc.SetReadDeadline(past)
	s.stateMu.Unlock()
	s.writeMu.Lock() // wait for a Write in progress to give up
	defer s.writeMu.Unlock()
	s.finish()
}

func (s *H2Stream) finish() {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if !s.finished {
		s.finished = true
		close(s.done)
	}
}

func (s *H2Stream) SetDeadline(t time.Time) error {
	_ = s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

func (s *H2Stream) SetReadDeadline(t time.Time) error { return s.setDeadline(s.rc.SetReadDeadline, t) }
func (s *H2Stream) SetWriteDeadline(t time.Time) error {
	return s.setDeadline(s.rc.SetWriteDeadline, t)
}

func (s *H2Stream) setDeadline(set func(time.Time) error, t time.Time) error {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if s.finished {
		return net.ErrClosed
	}
	return set(t)
}
