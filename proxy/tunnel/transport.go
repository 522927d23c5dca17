package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// Stream is one bidirectional stream of a tunnel connection: a QUIC stream,
// or an HTTP/2 CONNECT stream on the fallback (h2.go). The control stream
// and every data stream are Streams, so the edge endpoint and the client
// speak the protocol once for both transports.
type Stream interface {
	io.Reader
	io.Writer
	// CloseWrite ends the sending direction after the data already
	// written: QUIC FIN, HTTP/2 END_STREAM.
	CloseWrite() error
	// CloseRead stops reading: the peer's further data is discarded (over
	// QUIC the peer learns at once; over HTTP/2 when the stream ends).
	CloseRead()
	// Reset aborts both directions. Over QUIC the peer sees code (a
	// StreamError); over HTTP/2 it sees a stream reset without the code,
	// so the edge always sends the reason in a "closed" frame too.
	Reset(code quic.StreamErrorCode)
	// ID names the stream in "closed" frames.
	ID() int64
	// Deadlines bound blocked reads and writes. Over QUIC an expired
	// deadline fails the call and the stream stays usable; over HTTP/2 it
	// ends the stream (net/http has no other way to unblock a handler).
	// Both sides use deadlines only as bounds whose expiry is a failure.
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// QUICStream adapts a quic-go stream.
func QUICStream(s *quic.Stream) Stream { return quicStream{s} }

type quicStream struct{ *quic.Stream }

func (s quicStream) CloseWrite() error { return s.Stream.Close() }
func (s quicStream) ID() int64         { return int64(s.Stream.StreamID()) }
func (s quicStream) CloseRead()        { s.Stream.CancelRead(StreamNoError) }
func (s quicStream) Reset(code quic.StreamErrorCode) {
	// Writing side first: cancelling the read side can end the relay that
	// feeds the app, and the app's answering FIN must not get out first.
	s.Stream.CancelWrite(code)
	s.Stream.CancelRead(code)
}

// ResetError is how a Stream reports that the peer reset it. Over QUIC the
// code is the peer's; over HTTP/2 it is StreamCut (the code does not
// travel: the "closed" frame says why).
type ResetError struct {
	StreamID int64
	Code     quic.StreamErrorCode
	Err      error // the transport's error
}

func (e *ResetError) Error() string { return "tunnel: stream reset by the peer: " + e.Err.Error() }
func (e *ResetError) Unwrap() error { return e.Err }

// peerReset reports the code of a reset by the peer, if err is one.
func peerReset(err error) (quic.StreamErrorCode, int64, bool) {
	var re *ResetError
	if errors.As(err, &re) {
		return re.Code, re.StreamID, true
	}
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote {
		return se.ErrorCode, int64(se.StreamID), true
	}
	return 0, 0, false
}

// transport is one client connection to the edge: QUIC, or the HTTP/2
// fallback.
type transport interface {
	// openStream opens a stream; the first one is the control stream.
	openStream(ctx context.Context) (Stream, error)
	// close ends the connection (code only travels over QUIC).
	close(code quic.ApplicationErrorCode, msg string)
	// context ends when the connection is gone; its cause says why.
	context() context.Context
	localAddr() net.Addr
	remoteAddr() net.Addr
	// name is "quic" or "h2", for status and logs.
	name() string
}

// quicTransport is a QUIC connection to the edge on its own UDP socket.
type quicTransport struct {
	qc *quic.Conn
	tr *quic.Transport
}

// clientConnIDLen is the length of the client's connection IDs. quic-go's
// DialAddr uses none, and then packets reaching a new socket after a
// migration cannot be told apart; with IDs they can.
const clientConnIDLen = 8

// dialQUIC connects from a new UDP socket that is closed with the
// connection.
func dialQUIC(ctx context.Context, addr string, tlsConf *tls.Config, conf *quic.Config) (quicTransport, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return quicTransport{}, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return quicTransport{}, err
	}
	if len(ips) == 0 {
		return quicTransport{}, fmt.Errorf("no address for %s", host)
	}
	raddr, err := net.ResolveUDPAddr("udp", net.JoinHostPort(ips[0].Unmap().String(), port))
	if err != nil {
		return quicTransport{}, err
	}
	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		return quicTransport{}, err
	}
	tr := &quic.Transport{Conn: udp, ConnectionIDLength: clientConnIDLen}
	qc, err := tr.Dial(ctx, raddr, tlsConf, conf)
	if err != nil {
		_ = tr.Close()
		return quicTransport{}, err
	}
	// The socket goes when the connection does, whoever ends it.
	context.AfterFunc(qc.Context(), func() { _ = tr.Close() })
	return quicTransport{qc: qc, tr: tr}, nil
}

func (t quicTransport) openStream(ctx context.Context) (Stream, error) {
	s, err := t.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return quicStream{s}, nil
}

func (t quicTransport) close(code quic.ApplicationErrorCode, msg string) {
	_ = t.qc.CloseWithError(code, msg)
}
func (t quicTransport) context() context.Context { return t.qc.Context() }
func (t quicTransport) localAddr() net.Addr      { return t.qc.LocalAddr() }
func (t quicTransport) remoteAddr() net.Addr     { return t.qc.RemoteAddr() }
func (t quicTransport) name() string             { return TransportQUIC }

// Transport names (Client.Transport, Conn.Transport).
const (
	TransportAuto = ""     // QUIC, falling back to HTTP/2 when QUIC cannot connect
	TransportQUIC = "quic" // QUIC only
	TransportH2   = "h2"   // HTTP/2 CONNECT over TLS only
)
