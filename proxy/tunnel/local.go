package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

const (
	// handshakeTimeout bounds a local client's SOCKS5 or CONNECT handshake,
	// including the wait for the tunnel's reply.
	handshakeTimeout = 10 * time.Second
	// maxHTTPHeader bounds a CONNECT request head.
	maxHTTPHeader = 16 << 10
)

// DialApp opens a connection to a named app through the tunnel
// (Session.Dial, Conn.Dial).
type DialApp func(ctx context.Context, app string) (net.Conn, error)

// Forward accepts local TCP connections on ln and joins each to a new
// connection from dial, copying both ways and preserving half-close. It closes
// ln when ctx is done, and returns when ctx is done or ln is closed, after
// closing every connection it started and waiting for its goroutines.
func Forward(ctx context.Context, ln net.Listener, dial func(context.Context) (net.Conn, error), logger *slog.Logger) error {
	logger = discardLogger(logger)
	return serve(ctx, ln, logger, func(ctx context.Context, c net.Conn) {
		dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
		up, err := dial(dctx)
		cancel()
		if err != nil {
			logger.Warn("tunnel forward: dial failed", "client", c.RemoteAddr(), "err", err)
			return
		}
		pipe(ctx, c, up, logger)
	})
}

// ServeSOCKS5 is a SOCKS5 server (RFC 1928) on ln that reaches apps by name:
// no authentication, CONNECT only, and the destination must be a domain name,
// which is taken as the app name (the port is ignored). IP addresses are
// refused with "address type not supported", so nothing but declared apps can
// be reached. Lifecycle as in Forward.
func ServeSOCKS5(ctx context.Context, ln net.Listener, dial DialApp, logger *slog.Logger) error {
	logger = discardLogger(logger)
	return serve(ctx, ln, logger, func(ctx context.Context, c net.Conn) {
		up, err := socks5Handshake(ctx, c, dial)
		if err != nil {
			logger.Info("tunnel socks5: request refused", "client", c.RemoteAddr(), "err", err)
			return
		}
		pipe(ctx, c, up, logger)
	})
}

// SOCKS5 reply codes (RFC 1928 section 6).
const (
	socksSucceeded          = 0x00
	socksGeneralFailure     = 0x01
	socksNotAllowed         = 0x02
	socksHostUnreachable    = 0x04
	socksConnectionRefused  = 0x05
	socksCommandUnsupported = 0x07
	socksAddressUnsupported = 0x08
)

func socks5Handshake(ctx context.Context, c net.Conn, dial DialApp) (net.Conn, error) {
	deadline := time.Now().Add(handshakeTimeout)
	_ = c.SetDeadline(deadline)
	var buf [256]byte
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return nil, fmt.Errorf("read greeting: %w", err)
	}
	if buf[0] != 5 {
		return nil, fmt.Errorf("not SOCKS5 (version %d)", buf[0])
	}
	methods := buf[1]
	if _, err := io.ReadFull(c, buf[:methods]); err != nil {
		return nil, fmt.Errorf("read methods: %w", err)
	}
	if bytes.IndexByte(buf[:methods], 0x00) < 0 {
		_, _ = c.Write([]byte{5, 0xFF})
		return nil, errors.New("client does not offer no-auth")
	}
	if _, err := c.Write([]byte{5, 0x00}); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(c, buf[:4]); err != nil {
		return nil, fmt.Errorf("read request: %w", err)
	}
	if buf[0] != 5 {
		return nil, fmt.Errorf("bad request version %d", buf[0])
	}
	reply := func(code byte) {
		_, _ = c.Write([]byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0})
	}
	cmd, atyp := buf[1], buf[3]
	if cmd != 0x01 {
		reply(socksCommandUnsupported)
		return nil, fmt.Errorf("command %d not supported", cmd)
	}
	if atyp != 0x03 {
		reply(socksAddressUnsupported)
		return nil, fmt.Errorf("address type %d not supported: only app names", atyp)
	}
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return nil, fmt.Errorf("read name length: %w", err)
	}
	n := int(buf[0])
	if _, err := io.ReadFull(c, buf[:n+2]); err != nil {
		return nil, fmt.Errorf("read name: %w", err)
	}
	app := strings.ToLower(string(buf[:n]))
	if !ValidAppName(app) {
		reply(socksHostUnreachable)
		return nil, fmt.Errorf("invalid app name %q", app)
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	up, err := dial(dctx, app)
	cancel()
	if err != nil {
		reply(socksCode(err))
		return nil, err
	}
	reply(socksSucceeded)
	_ = c.SetDeadline(time.Time{})
	return up, nil
}

func socksCode(err error) byte {
	var de *DialError
	if !errors.As(err, &de) {
		return socksGeneralFailure
	}
	switch de.Status {
	case StatusDenied:
		return socksNotAllowed
	case StatusUnknownApp, StatusBadHeader:
		return socksHostUnreachable
	case StatusUnavailable:
		return socksConnectionRefused
	default:
		return socksGeneralFailure
	}
}

// ServeHTTPConnect is an HTTP proxy on ln that only does CONNECT: "CONNECT
// app:port HTTP/1.1" (the port is ignored) is answered with 200 and then
// carries raw bytes; any other method gets 405. Refusals carry the edge's
// reason in a text/plain body. Lifecycle as in Forward.
func ServeHTTPConnect(ctx context.Context, ln net.Listener, dial DialApp, logger *slog.Logger) error {
	logger = discardLogger(logger)
	return serve(ctx, ln, logger, func(ctx context.Context, c net.Conn) {
		local, up, err := httpConnectHandshake(ctx, c, dial)
		if err != nil {
			logger.Info("tunnel http connect: request refused", "client", c.RemoteAddr(), "err", err)
			return
		}
		pipe(ctx, local, up, logger)
	})
}

var errHeaderTooLarge = errors.New("request header too large")

// headerLimit stops bufio from reading more than n bytes while the request
// head is parsed; the limit is lifted once the tunnel is established.
type headerLimit struct {
	r io.Reader
	n int64
}

func (l *headerLimit) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

func httpConnectHandshake(ctx context.Context, c net.Conn, dial DialApp) (net.Conn, net.Conn, error) {
	deadline := time.Now().Add(handshakeTimeout)
	_ = c.SetDeadline(deadline)
	limit := &headerLimit{r: c, n: maxHTTPHeader}
	br := bufio.NewReader(limit)
	req, err := http.ReadRequest(br)
	if err != nil {
		if errors.Is(err, errHeaderTooLarge) {
			writeHTTPError(c, http.StatusRequestHeaderFieldsTooLarge, "request header too large", "")
		} else {
			writeHTTPError(c, http.StatusBadRequest, "malformed request", "")
		}
		return nil, nil, fmt.Errorf("read request: %w", err)
	}
	if req.Method != http.MethodConnect {
		writeHTTPError(c, http.StatusMethodNotAllowed, "only CONNECT is supported", "Allow: CONNECT\r\n")
		return nil, nil, fmt.Errorf("method %s not allowed", req.Method)
	}
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	app := strings.ToLower(host)
	if !ValidAppName(app) {
		writeHTTPError(c, http.StatusBadRequest, "not an app name: "+app, "")
		return nil, nil, fmt.Errorf("invalid app name %q", app)
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	up, err := dial(dctx, app)
	cancel()
	if err != nil {
		status, msg := httpStatus(err)
		writeHTTPError(c, status, msg, "")
		return nil, nil, err
	}
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection Established\r\n\r\n"); err != nil {
		_ = up.Close()
		return nil, nil, err
	}
	limit.n = math.MaxInt64
	_ = c.SetDeadline(time.Time{})
	// Bytes the client sent after the request head are in br already.
	return &bufferedConn{Conn: c, r: br}, up, nil
}

func httpStatus(err error) (int, string) {
	var de *DialError
	if !errors.As(err, &de) {
		return http.StatusBadGateway, err.Error()
	}
	msg := de.Message
	if msg == "" {
		msg = de.Status.String()
	}
	switch de.Status {
	case StatusDenied:
		return http.StatusForbidden, msg
	case StatusUnknownApp:
		return http.StatusNotFound, msg
	case StatusBadHeader:
		return http.StatusBadRequest, msg
	case StatusLimit:
		return http.StatusTooManyRequests, msg
	default:
		return http.StatusBadGateway, msg
	}
}

// writeHTTPError answers and then drains briefly before the caller closes c:
// closing with unread input sends a RST, which can destroy the answer before
// the client reads it (net/http does the same).
func writeHTTPError(c net.Conn, status int, msg, extraHeaders string) {
	body := msg + "\n"
	_, err := fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s",
		status, http.StatusText(status), len(body), extraHeaders, body)
	if err != nil {
		return
	}
	if cw, ok := c.(closeWriter); ok && cw.CloseWrite() == nil {
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 256<<10))
	}
}

type closeWriter interface{ CloseWrite() error }

// bufferedConn reads through the bufio.Reader that parsed the request head.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// serve accepts on ln and runs handle for each connection with a context that
// ends when ctx is done or accepting fails; each connection is closed when its
// handler returns or that context ends.
func serve(ctx context.Context, ln net.Listener, logger *slog.Logger, handle func(context.Context, net.Conn)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopLn := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stopLn()
	var wg sync.WaitGroup
	for {
		c, err := ln.Accept()
		if err != nil {
			cancel()
			wg.Wait()
			if errors.Is(err, net.ErrClosed) {
				return nil // closed by us (ctx done) or by the caller
			}
			logger.Warn("tunnel local listener stopped", "addr", ln.Addr(), "err", err)
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			stop := context.AfterFunc(ctx, func() { _ = c.Close() })
			defer stop()
			defer c.Close()
			handle(ctx, c)
		}()
	}
}

// pipe copies between a local connection and a tunnel connection until both
// directions are done. EOF on one side becomes CloseWrite on the other (so
// half-close survives the tunnel); an error on either side closes both.
func pipe(ctx context.Context, local, remote net.Conn, logger *slog.Logger) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			_ = local.Close()
			_ = remote.Close()
		})
	}
	stop := context.AfterFunc(ctx, closeBoth)
	defer stop()
	copyHalf := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				logger.Info("tunnel connection ended", "err", err)
			}
			closeBoth()
			return
		}
		if cw, ok := dst.(closeWriter); ok && cw.CloseWrite() == nil {
			return
		}
		closeBoth()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(remote, local)
	}()
	copyHalf(local, remote)
	<-done
	closeBoth()
}
