package tunnel

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"
)

func connect(t *testing.T, c *Client) *Conn {
	t.Helper()
	conn, err := c.Connect(testCtx(t))
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func TestConnectWelcome(t *testing.T) {
	e := newTestEdge(t, map[string]string{"echo": echoServer(t)})
	conn := connect(t, e.client(t, goodToken))
	w := conn.Welcome()
	if w.Type != FrameWelcome || w.User != "alice" || w.Device != "dev-1" {
		t.Fatalf("welcome = %+v", w)
	}
	if apps := conn.Apps(); len(apps) != 1 || apps[0] != (App{Name: "echo", Kind: "tcp"}) {
		t.Fatalf("apps = %+v", apps)
	}
	e.mu.Lock()
	hello := e.hellos[0]
	e.mu.Unlock()
	if hello.Type != FrameHello || hello.Version != Version || hello.Token != goodToken || hello.Client != "ztna/test" {
		t.Fatalf("hello = %+v", hello)
	}
	select {
	case <-conn.Done():
		t.Fatalf("connection ended: %v", conn.Err())
	default:
	}
	if conn.Err() != nil {
		t.Fatalf("Err on live conn = %v", conn.Err())
	}
	if rtt, err := conn.Ping(testCtx(t)); err != nil || rtt <= 0 {
		t.Fatalf("Ping: %v, %v", rtt, err)
	}
}

func TestConnectNeedsALPNAndClientCert(t *testing.T) {
	e := newTestEdge(t, nil)
	c := e.client(t, goodToken)
	c.TLSConfig.Certificates = nil
	if _, err := c.Connect(testCtx(t)); err == nil {
		t.Fatal("Connect without a device certificate succeeded")
	}
	if e.helloCount() != 0 {
		t.Fatal("edge got a hello without a client certificate")
	}
}

func TestDialEcho(t *testing.T) {
	e := newTestEdge(t, map[string]string{"echo": echoServer(t)})
	conn := connect(t, e.client(t, goodToken))
	nc, err := conn.Dial(testCtx(t), "echo")
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(testBound))
	msg := bytes.Repeat([]byte("ztna "), 100_000) // larger than any window
	go func() { _, _ = nc.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(nc, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo differs")
	}
}

// halfCloseUpstream accepts one TCP connection and hands it to the test.
func halfCloseUpstream(t *testing.T) (string, <-chan *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *net.TCPConn, 1)
	done := make(chan struct{})
	t.Cleanup(func() { _ = ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_ = c.SetDeadline(time.Now().Add(testBound))
		ch <- c.(*net.TCPConn)
	}()
	return ln.Addr().String(), ch
}

func TestHalfClose(t *testing.T) {
	t.Run("client closes first", func(t *testing.T) {
		addr, upCh := halfCloseUpstream(t)
		e := newTestEdge(t, map[string]string{"app": addr})
		conn := connect(t, e.client(t, goodToken))
		nc, err := conn.Dial(testCtx(t), "app")
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(testBound))
		up := <-upCh
		defer up.Close()
		if _, err := nc.Write([]byte("request")); err != nil {
			t.Fatal(err)
		}
		if err := nc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(up) // must end with EOF, not hang
		if err != nil || string(got) != "request" {
			t.Fatalf("upstream read %q, %v", got, err)
		}
		if _, err := up.Write([]byte("response after FIN")); err != nil {
			t.Fatal(err)
		}
		_ = up.CloseWrite()
		got, err = io.ReadAll(nc)
		if err != nil || string(got) != "response after FIN" {
			t.Fatalf("client read %q, %v", got, err)
		}
	})
	t.Run("upstream closes first", func(t *testing.T) {
		addr, upCh := halfCloseUpstream(t)
		e := newTestEdge(t, map[string]string{"app": addr})
		conn := connect(t, e.client(t, goodToken))
		nc, err := conn.Dial(testCtx(t), "app")
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(testBound))
		up := <-upCh
		defer up.Close()
		if _, err := up.Write([]byte("banner")); err != nil {
			t.Fatal(err)
		}
		_ = up.CloseWrite()
		got, err := io.ReadAll(nc)
		if err != nil || string(got) != "banner" {
			t.Fatalf("client read %q, %v", got, err)
		}
		if _, err := nc.Write([]byte("still talking")); err != nil {
			t.Fatalf("write after upstream EOF: %v", err)
		}
		_ = nc.(interface{ CloseWrite() error }).CloseWrite()
		got, err = io.ReadAll(up)
		if err != nil || string(got) != "still talking" {
			t.Fatalf("upstream read %q, %v", got, err)
		}
	})
}

func TestDialErrors(t *testing.T) {
	e := newTestEdge(t, map[string]string{"down": closedPort(t)})
	conn := connect(t, e.client(t, goodToken))
	tests := []struct {
		app     string
		status  Status
		message string
	}{
		{"denied", StatusDenied, denyReason},
		{"nope", StatusUnknownApp, "no such app: nope"},
		{"down", StatusUnavailable, "app unavailable"},
		{"badheader", StatusBadHeader, "the edge rejected the stream header"},
		{"Not.An.App", StatusBadHeader, "invalid app name"},
	}
	for _, tt := range tests {
		t.Run(tt.app, func(t *testing.T) {
			nc, err := conn.Dial(testCtx(t), tt.app)
			var de *DialError
			if !errors.As(err, &de) {
				if nc != nil {
					nc.Close()
				}
				t.Fatalf("Dial = %v, want *DialError", err)
			}
			if de.App != tt.app || de.Status != tt.status || de.Message != tt.message {
				t.Fatalf("DialError = %+v, want status %v message %q", de, tt.status, tt.message)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Fatalf("error text %q lacks the message", err)
			}
		})
	}
	// The connection survives refused streams.
	if _, err := conn.Dial(testCtx(t), "denied"); err == nil {
		t.Fatal("second denied dial succeeded")
	}
	select {
	case <-conn.Done():
		t.Fatalf("connection ended after refused streams: %v", conn.Err())
	default:
	}
}

func TestDialCancelledContext(t *testing.T) {
	e := newTestEdge(t, map[string]string{"echo": echoServer(t)})
	conn := connect(t, e.client(t, goodToken))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if nc, err := conn.Dial(ctx, "echo"); err == nil {
		nc.Close()
		t.Fatal("Dial with a cancelled context succeeded")
	}
}

func TestStreamCutShowsReason(t *testing.T) {
	e := newTestEdge(t, map[string]string{"echo": echoServer(t)})
	conn := connect(t, e.client(t, goodToken))
	nc, err := conn.Dial(testCtx(t), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(testBound))
	es := e.nextStream(t)
	es.cut("device quarantined: EDR not running")
	_, err = io.ReadAll(nc)
	var ce *CutError
	if !errors.As(err, &ce) {
		t.Fatalf("read after cut = %v, want *CutError", err)
	}
	if ce.App != "echo" || ce.Reason != "device quarantined: EDR not running" {
		t.Fatalf("CutError = %+v", ce)
	}
	if !strings.Contains(err.Error(), "EDR not running") {
		t.Fatalf("error text %q lacks the reason", err)
	}
	var se *quic.StreamError
	if !errors.As(err, &se) || se.ErrorCode != StreamCut {
		t.Fatalf("CutError does not unwrap to the stream error: %v", err)
	}
	// Later calls keep the reason (the frame is consumed only once).
	if _, err := nc.Write([]byte("x")); !strings.Contains(fmt.Sprint(err), "EDR not running") {
		t.Fatalf("write after cut = %v", err)
	}
}

func TestControlEvents(t *testing.T) {
	e := newTestEdge(t, map[string]string{"echo": echoServer(t)})
	c := e.client(t, goodToken)
	events := make(chan Frame, 8)
	c.OnEvent = func(f Frame) { events <- f }
	conn := connect(t, c)
	ec := e.nextConn(t)
	newApps := []App{{Name: "echo", Kind: "tcp"}, {Name: "ssh", Kind: "tcp"}}
	if err := ec.send(Frame{Type: FrameApps, Apps: newApps}); err != nil {
		t.Fatal(err)
	}
	_ = ec.send(Frame{Type: "future-frame"}) // ignored, not fatal
	if err := ec.send(Frame{Type: FrameBye, Reason: "drain"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{FrameApps, FrameBye} {
		select {
		case f := <-events:
			if f.Type != want {
				t.Fatalf("event %q, want %q", f.Type, want)
			}
		case <-time.After(testBound):
			t.Fatalf("no %s event", want)
		}
	}
	if got := conn.Apps(); len(got) != 2 || got[1].Name != "ssh" {
		t.Fatalf("Apps after update = %+v", got)
	}
	_ = ec.qc.CloseWithError(CodeGoingAway, "drain")
	select {
	case <-conn.Done():
	case <-time.After(testBound):
		t.Fatal("conn not done after the edge closed it")
	}
	// The client hung up when it read "bye"; Err says what the edge said.
	if err := conn.Err(); err == nil || !strings.Contains(err.Error(), "the edge ended the connection: drain") {
		t.Fatalf("Err = %v", err)
	}
}

func TestAuthFailure(t *testing.T) {
	e := newTestEdge(t, nil)
	_, err := e.client(t, "wrong").Connect(testCtx(t))
	var ae *AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("Connect with a bad token = %v, want *AuthError", err)
	}
	if ae.Code != ErrorUnauthenticated && ae.Code != "" {
		t.Fatalf("AuthError code %q", ae.Code)
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Fatalf("error text leaks the token: %v", err)
	}
}

func TestSessionStopsOnAuthFailure(t *testing.T) {
	e := newTestEdge(t, nil)
	s := &Session{Client: e.client(t, "wrong"), MinBackoff: time.Millisecond}
	errc := make(chan error, 1)
	go func() { errc <- s.Run(context.Background()) }()
	select {
	case err := <-errc:
		var ae *AuthError
		if !errors.As(err, &ae) {
			t.Fatalf("Run = %v, want *AuthError", err)
		}
	case <-time.After(testBound):
		t.Fatal("Run kept retrying an authentication failure")
	}
	if n := e.helloCount(); n != 1 {
		t.Fatalf("edge saw %d hellos, want 1", n)
	}
	if _, err := s.Dial(testCtx(t), "echo"); !errors.As(err, new(*AuthError)) {
		t.Fatalf("Dial after auth failure = %v", err)
	}
	_ = s.Close()
}

func startSession(t *testing.T, s *Session) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- s.Run(context.Background()) }()
	t.Cleanup(func() {
		_ = s.Close()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run after Close = %v", err)
			}
		case <-time.After(testBound):
			t.Error("Run did not return after Close")
		}
	})
}

func echoThrough(t *testing.T, dial func(context.Context) (net.Conn, error), msg string) {
	t.Helper()
	nc, err := dial(testCtx(t))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(testBound))
	if _, err := io.WriteString(nc, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(nc, got); err != nil || string(got) != msg {
		t.Fatalf("echo %q, %v", got, err)
	}
}

func TestSessionReconnects(t *testing.T) {
	e := newTestEdge(t, map[string]string{"echo": echoServer(t)})
	s := &Session{Client: e.client(t, goodToken)}
	dialEcho := func(ctx context.Context) (net.Conn, error) { return s.Dial(ctx, "echo") }

	// Dial waits for the first connection.
	early := make(chan error, 1)
	go func() {
		nc, err := s.Dial(testCtx(t), "echo")
		if err == nil {
			nc.Close()
		}
		early <- err
	}()
	startSession(t, s)
	if err := <-early; err != nil {
		t.Fatalf("Dial before connect: %v", err)
	}
	echoThrough(t, dialEcho, "first")
	first := e.nextConn(t)

	t.Run("going away", func(t *testing.T) {
		_ = first.send(Frame{Type: FrameBye, Reason: "drain"})
		_ = first.qc.CloseWithError(CodeGoingAway, "drain")
		second := e.nextConn(t)
		if second == first {
			t.Fatal("same connection")
		}
		echoThrough(t, dialEcho, "after drain")
	})

	t.Run("edge restart on the same port", func(t *testing.T) {
		addr := e.addr
		e.stop() // a crash: the client notices by idle timeout, then retries fail and back off
		waitFor(t, "session to notice the dead edge", func() bool { return s.Conn() == nil })
		e.start(addr)
		echoThrough(t, dialEcho, "after restart")
	})
}

func TestSessionCloseWakesDial(t *testing.T) {
	e := newTestEdge(t, nil)
	s := &Session{Client: e.client(t, goodToken)}
	s.Client.Addr = closedPortUDP(t) // never connects
	errc := make(chan error, 1)
	go func() { errc <- s.Run(context.Background()) }()
	dialErr := make(chan error, 1)
	go func() {
		_, err := s.Dial(context.Background(), "echo")
		dialErr <- err
	}()
	_ = s.Close()
	for _, ch := range []chan error{errc, dialErr} {
		select {
		case err := <-ch:
			if ch == dialErr && !errors.Is(err, ErrSessionClosed) {
				t.Fatalf("Dial after Close = %v", err)
			}
			if ch == errc && err != nil {
				t.Fatalf("Run after Close = %v", err)
			}
		case <-time.After(testBound):
			t.Fatal("Close did not wake Run/Dial")
		}
	}
}

func closedPortUDP(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	_ = pc.Close()
	return addr
}

func TestJitterBounds(t *testing.T) {
	for range 1000 {
		d := jitter(time.Second)
		if d < 800*time.Millisecond || d > 1200*time.Millisecond {
			t.Fatalf("jitter(1s) = %v", d)
		}
	}
}
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	goodToken  = "good-session-id"
	testBound  = 10 * time.Second // every wait in these tests is bounded by this
	denyReason = "not in group sre"
)

// selfSigned returns a certificate for 127.0.0.1 and its pool.
func selfSigned(t *testing.T, cn string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// testEdge is the server side of the protocol, written with the wire API,
// in front of real TCP upstreams.
type testEdge struct {
	t       *testing.T
	tlsConf *tls.Config
	addr    string
	apps    map[string]string // app -> upstream TCP address; "" means unavailable

	mu      sync.Mutex
	ln      *quic.Listener
	tr      *quic.Transport
	udp     *net.UDPConn
	hellos  []Frame
	conns   chan *edgeConn
	streams chan *edgeStream
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc
}

type edgeConn struct {
	qc     *quic.Conn
	ctrl   *quic.Stream
	ctrlMu sync.Mutex
}

func (c *edgeConn) send(f Frame) error {
	c.ctrlMu.Lock()
	defer c.ctrlMu.Unlock()
	return WriteFrame(c.ctrl, f)
}

type edgeStream struct {
	conn *edgeConn
	str  *quic.Stream
	app  string
}

// cut does what the edge does on revocation: "closed" frame, then reset.
func (s *edgeStream) cut(reason string) {
	_ = s.conn.send(Frame{Type: FrameClosed, Stream: int64(s.str.StreamID()), Reason: reason})
	s.str.CancelRead(StreamCut)
	s.str.CancelWrite(StreamCut)
}

var edgeQUICConfig = &quic.Config{MaxIdleTimeout: 2 * time.Second, HandshakeIdleTimeout: 2 * time.Second}

func newTestEdge(t *testing.T, apps map[string]string) *testEdge {
	t.Helper()
	cert, _ := selfSigned(t, "edge")
	e := &testEdge{
		t: t,
		tlsConf: &tls.Config{
			Certificates: []tls.Certificate{cert},
			NextProtos:   []string{ALPN},
			ClientAuth:   tls.RequireAnyClientCert,
			MinVersion:   tls.VersionTLS13,
		},
		apps:    apps,
		conns:   make(chan *edgeConn, 16),
		streams: make(chan *edgeStream, 64),
	}
	e.start("127.0.0.1:0")
	t.Cleanup(e.stop)
	return e
}

func (e *testEdge) start(addr string) {
	e.t.Helper()
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		e.t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", udpAddr)
	if err != nil {
		e.t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	ln, err := tr.Listen(e.tlsConf, edgeQUICConfig)
	if err != nil {
		e.t.Fatal(err)
	}
	e.mu.Lock()
	e.udp, e.tr, e.ln = udp, tr, ln
	e.addr = ln.Addr().String()
	e.ctx, e.cancel = context.WithCancel(context.Background())
	ctx := e.ctx
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			qc, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				e.handleConn(ctx, qc)
			}()
		}
	}()
}

// stop is a crash: the transport drops every connection without telling the
// clients (no CONNECTION_CLOSE), so they notice only by idle timeout.
func (e *testEdge) stop() {
	e.mu.Lock()
	udp, tr, cancel := e.udp, e.tr, e.cancel
	e.mu.Unlock()
	_ = tr.Close()
	_ = udp.Close()
	cancel()
	e.wg.Wait()
}

func (e *testEdge) handleConn(ctx context.Context, qc *quic.Conn) {
	defer func() { _ = qc.CloseWithError(CodeGoingAway, "edge stopped") }()
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ctrl, err := qc.AcceptStream(hctx)
	cancel()
	if err != nil {
		return
	}
	_ = ctrl.SetReadDeadline(time.Now().Add(10 * time.Second))
	hello, err := ReadFrame(ctrl)
	if err != nil {
		_ = qc.CloseWithError(CodeProtocol, "bad hello")
		return
	}
	_ = ctrl.SetReadDeadline(time.Time{})
	e.mu.Lock()
	e.hellos = append(e.hellos, hello)
	e.mu.Unlock()
	ec := &edgeConn{qc: qc, ctrl: ctrl}
	if hello.Token != goodToken {
		_ = ec.send(Frame{Type: FrameError, Code: ErrorUnauthenticated, Message: "log in again"})
		// Let the error frame go out before the close.
		_ = ctrl.Close()
		select {
		case <-ctrl.Context().Done():
		case <-time.After(time.Second):
		}
		_ = qc.CloseWithError(CodeAuthFailed, ErrorUnauthenticated)
		return
	}
	var apps []App
	for name := range e.apps {
		apps = append(apps, App{Name: name, Kind: "tcp"})
	}
	if err := ec.send(Frame{Type: FrameWelcome, User: "alice", Email: "alice@example.com", Device: "dev-1", Apps: apps, Policy: "v1"}); err != nil {
		return
	}
	e.conns <- ec
	stop := context.AfterFunc(ctx, func() { _ = qc.CloseWithError(CodeGoingAway, "edge stopped") })
	defer stop()
	var wg sync.WaitGroup
	defer func() {
		_ = qc.CloseWithError(CodeGoingAway, "edge stopped")
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			f, err := ReadFrame(ctrl)
			if err != nil {
				return
			}
			if f.Type == FramePing {
				_ = ec.send(Frame{Type: FramePong})
			}
		}
	}()
	for {
		str, err := qc.AcceptStream(ctx)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.handleStream(ec, str)
		}()
	}
}

func (e *testEdge) handleStream(ec *edgeConn, str *quic.Stream) {
	_ = str.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, err := ReadHeader(str)
	if err != nil {
		str.CancelRead(StreamBadHeader)
		str.CancelWrite(StreamBadHeader)
		return
	}
	_ = str.SetReadDeadline(time.Time{})
	reply := func(s Status, msg string) { _ = WriteReply(str, Reply{Status: s, Message: msg}) }
	if h.App == "denied" {
		reply(StatusDenied, denyReason)
		_ = str.Close()
		return
	}
	if h.App == "badheader" {
		str.CancelRead(StreamBadHeader)
		str.CancelWrite(StreamBadHeader)
		return
	}
	upstream, ok := e.apps[h.App]
	if !ok {
		reply(StatusUnknownApp, "no such app: "+h.App)
		_ = str.Close()
		return
	}
	up, err := net.DialTimeout("tcp", upstream, time.Second)
	if upstream == "" || err != nil {
		reply(StatusUnavailable, "app unavailable")
		_ = str.Close()
		return
	}
	defer up.Close()
	reply(StatusOK, "")
	e.streams <- &edgeStream{conn: ec, str: str, app: h.App}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := io.Copy(up, str); err != nil {
			_ = up.Close()
			return
		}
		_ = up.(*net.TCPConn).CloseWrite()
	}()
	if _, err := io.Copy(str, up); err != nil {
		str.CancelWrite(StreamUpstreamReset)
		str.CancelRead(StreamUpstreamReset)
	} else {
		_ = str.Close()
	}
	<-done
}

func (e *testEdge) helloCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.hellos)
}

func (e *testEdge) nextConn(t *testing.T) *edgeConn {
	t.Helper()
	select {
	case c := <-e.conns:
		return c
	case <-time.After(testBound):
		t.Fatal("no connection reached the edge")
		return nil
	}
}

func (e *testEdge) nextStream(t *testing.T) *edgeStream {
	t.Helper()
	select {
	case s := <-e.streams:
		return s
	case <-time.After(testBound):
		t.Fatal("no data stream reached the edge")
		return nil
	}
}

// client returns a Client for the edge with a device certificate.
func (e *testEdge) client(t *testing.T, token string) *Client {
	t.Helper()
	device, _ := selfSigned(t, "device")
	roots := x509.NewCertPool()
	roots.AddCert(e.tlsConf.Certificates[0].Leaf)
	e.mu.Lock()
	addr := e.addr
	e.mu.Unlock()
	return &Client{
		Addr: addr,
		TLSConfig: &tls.Config{
			RootCAs:      roots,
			ServerName:   "127.0.0.1",
			Certificates: []tls.Certificate{device},
		},
		Token:      func(context.Context) (string, error) { return token, nil },
		Version:    "test",
		QUICConfig: &quic.Config{MaxIdleTimeout: 2 * time.Second, HandshakeIdleTimeout: time.Second, KeepAlivePeriod: 500 * time.Millisecond},
	}
}

// echoServer is a TCP upstream that echoes until EOF and then half-closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(testBound))
				if _, err := io.Copy(c, c); err == nil {
					_ = c.(*net.TCPConn).CloseWrite()
					_, _ = io.Copy(io.Discard, c)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// waitFor polls cond until it holds or testBound passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testBound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testBound)
	t.Cleanup(cancel)
	return ctx
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestSessionMigratesOnNetworkChange: when the machine's addresses change,
// the Session moves its QUIC connection to a new socket (connection
// migration) instead of reconnecting: the same connection, the same live
// stream, a new local port.
func TestSessionMigratesOnNetworkChange(t *testing.T) {
	e := newTestEdge(t, map[string]string{"echo": echoServer(t)})
	var mu sync.Mutex
	addrs := []net.Addr{&net.IPNet{IP: net.IPv4(192, 0, 2, 1), Mask: net.CIDRMask(24, 32)}}
	s := &Session{Client: e.client(t, goodToken), NetworkPoll: 20 * time.Millisecond,
		addrs: func() ([]net.Addr, error) {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(addrs), nil
		}}
	startSession(t, s)
	nc, err := s.Dial(testCtx(t), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(testBound))
	echoLine := func(line string) {
		t.Helper()
		if _, err := io.WriteString(nc, line); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(line))
		if _, err := io.ReadFull(nc, got); err != nil || string(got) != line {
			t.Fatalf("echo %q: %q, %v", line, got, err)
		}
	}
	echoLine("before\n")
	conn := s.Conn()
	before := conn.t.localAddr().String()

	mu.Lock()
	addrs = append(addrs, &net.IPNet{IP: net.IPv4(198, 51, 100, 7), Mask: net.CIDRMask(24, 32)}) // a new network
	mu.Unlock()
	waitFor(t, "the connection to migrate", func() bool {
		conn.mu.Lock()
		defer conn.mu.Unlock()
		return len(conn.paths) == 1
	})
	if s.Conn() != conn {
		t.Fatal("the session reconnected instead of migrating")
	}
	echoLine("after\n")
	if after := conn.paths[0].Conn.LocalAddr().String(); after == before {
		t.Errorf("still on %s after the migration", before)
	}
}
