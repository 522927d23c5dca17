package identity

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"
)

// DefaultHeaderTimeout is ListenerConfig.HeaderTimeout when it is zero.
const DefaultHeaderTimeout = 5 * time.Second

// headerBufferSize is the read buffer for the PROXY header. go-proxyproto
// needs a v1 line (at most 107 bytes) to fit; a v2 header larger than this
// is read through it. Bytes the buffer holds past the header are returned
// by the first Reads.
const headerBufferSize = 256

// ListenerConfig configures NewListener.
type ListenerConfig struct {
	// Verifier checks the token in the identity TLV: signature (ES256, kid
	// from the JWKS), issuer, audience (this app), expiry; its MaxTokenBytes
	// applies before parsing (MaxTLVTokenBytes is all the edge ever sends).
	// Required.
	Verifier *Verifier
	// HeaderTimeout bounds reading and verifying the PROXY header, counted
	// from the first Read, Write, Identity or RemoteAddr on the connection
	// (normally right after Accept). Zero means DefaultHeaderTimeout (5 s).
	HeaderTimeout time.Duration
	// Logger receives one line for every rejected connection, with the
	// reason and never the token. Nil discards.
	Logger *slog.Logger
	// TrustedPeers, if not empty, are the networks allowed to send PROXY
	// headers: the edge's addresses. Connections from anywhere else are
	// closed in Accept, before any byte is read. Empty means any peer: the
	// signed TLV alone proves the identity, but the client address, AUTHORITY
	// and UNIQUE_ID are not signed and are then only as good as the network.
	TrustedPeers []netip.Prefix
}

// NewListener wraps inner, an app's TCP listener, so that every connection
// must start with a PROXY protocol v2 header from the ztna edge carrying a
// valid identity TLV (the REQUIRE policy of go-proxyproto; a header is never
// optional). Accept returns a *Conn at once and never waits for a client's
// bytes: the header is read and verified on the connection's first Read,
// Write, Identity or RemoteAddr, within ListenerConfig.HeaderTimeout. A
// connection whose header is missing, version 1, LOCAL, truncated, larger
// than 4096 bytes, not in time, or whose identity TLV is missing, malformed,
// not signed by the edge, expired or for another app, is closed, its reason
// is logged, and its Read and Write return an error (ErrProxyHeader or a
// token error, wrapped). No goroutine is started.
//
// Closing the listener closes inner. For TLS, wrap the result:
// tls.NewListener(identityListener, config); the edge sends the PROXY header
// before the TLS handshake.
func NewListener(inner net.Listener, cfg ListenerConfig) (net.Listener, error) {
	switch {
	case inner == nil:
		return nil, errors.New("identity: listener: inner listener is nil")
	case cfg.Verifier == nil:
		return nil, errors.New("identity: listener: Verifier is required")
	case cfg.HeaderTimeout < 0:
		return nil, errors.New("identity: listener: negative HeaderTimeout")
	}
	for i, p := range cfg.TrustedPeers {
		if !p.IsValid() {
			return nil, fmt.Errorf("identity: listener: TrustedPeers[%d] is not a valid prefix", i)
		}
	}
	l := &listener{
		inner:    inner,
		verifier: cfg.Verifier,
		timeout:  cfg.HeaderTimeout,
		log:      cfg.Logger,
		trusted:  slices.Clone(cfg.TrustedPeers),
	}
	if l.timeout == 0 {
		l.timeout = DefaultHeaderTimeout
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	return l, nil
}

type listener struct {
	inner    net.Listener
	verifier *Verifier
	timeout  time.Duration
	log      *slog.Logger
	trusted  []netip.Prefix
}

// Accept returns the next connection from a trusted peer as a *Conn. It
// reads nothing, so a slow or silent client never holds up the next one.
func (l *listener) Accept() (net.Conn, error) {
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			return nil, err
		}
		if !l.trustedPeer(raw.RemoteAddr()) {
			l.log.Warn("identity: connection rejected: peer is not in TrustedPeers", "peer", raw.RemoteAddr().String())
			raw.Close()
			continue
		}
		return &Conn{raw: raw, l: l}, nil
	}
}

func (l *listener) trustedPeer(a net.Addr) bool {
	if len(l.trusted) == 0 {
		return true
	}
	var ip netip.Addr
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return false
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	for _, p := range l.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (l *listener) Close() error   { return l.inner.Close() }
func (l *listener) Addr() net.Addr { return l.inner.Addr() }

// Conn is a connection accepted by a NewListener listener. Reads return the
// bytes after the PROXY header, once the header has been verified.
// RemoteAddr is the client address from the header; LocalAddr is the
// socket's.
//
// The identity is the one the edge signed when the connection was made. It is
// checked once, so a long-lived connection keeps it after the token expires;
// the edge bounds connection lifetimes and closes connections whose access
// is revoked.
type Conn struct {
	raw net.Conn
	l   *listener

	handshakeOnce sync.Once
	// Set inside handshakeOnce and read-only afterwards.
	err       error
	claims    *Claims
	client    net.Addr
	authority string
	uniqueID  string
	verified  atomic.Bool // the fields above hold a verified header (for accessors that must not wait)

	rmu sync.Mutex
	br  *bufio.Reader // bytes read past the header; nil once drained

	dmu            sync.Mutex
	readDeadline   time.Time // as the caller set it
	headerDeadline time.Time // not zero while the header is being read

	closing   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// Identity reads and verifies the PROXY header if that has not happened yet
// (within HeaderTimeout) and returns the verified claims. The result is
// computed once; treat the claims as read-only. On error the connection has
// been closed.
func (c *Conn) Identity() (*Claims, error) {
	if err := c.handshake(); err != nil {
		return nil, err
	}
	return c.claims, nil
}

// ClientAddr returns the client's address from a verified header, or nil if
// the header has not been verified (yet). It never waits.
func (c *Conn) ClientAddr() net.Addr {
	if !c.verified.Load() {
		return nil
	}
	return c.client
}

// Authority returns the PP2_TYPE_AUTHORITY value of a verified header: the
// host name the client asked the edge for. Empty if the edge sent none or
// the header has not been verified (yet). It never waits.
func (c *Conn) Authority() string {
	if !c.verified.Load() {
		return ""
	}
	return c.authority
}

// UniqueID returns the PP2_TYPE_UNIQUE_ID value of a verified header: the
// edge's reference for this connection's session, as written in its audit
// log. Empty if the edge sent none or the header has not been verified
// (yet). It never waits.
func (c *Conn) UniqueID() string {
	if !c.verified.Load() {
		return ""
	}
	return c.uniqueID
}

// Read reads data sent after the PROXY header, verifying the header first.
func (c *Conn) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	c.rmu.Lock()
	if c.br != nil {
		if c.br.Buffered() > 0 {
			// Only buffered bytes: bufio reads the connection only when
			// its buffer is empty.
			n, err := c.br.Read(b)
			if c.br.Buffered() == 0 {
				c.br = nil
			}
			c.rmu.Unlock()
			return n, err
		}
		c.br = nil
	}
	c.rmu.Unlock()
	return c.raw.Read(b)
}

// Write verifies the PROXY header first, so an app that speaks first (SSH,
// SMTP) never sends a byte to an unverified peer.
func (c *Conn) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.raw.Write(b)
}

// Close closes the connection. It may be called more than once, and
// interrupts a header read in progress.
func (c *Conn) Close() error {
	c.closing.Store(true)
	c.closeOnce.Do(func() { c.closeErr = c.raw.Close() })
	return c.closeErr
}

// RemoteAddr returns the client's address from the PROXY header, reading and
// verifying the header first if needed (bounded by HeaderTimeout, so do not
// call it from an accept loop). If the header is rejected it returns the
// peer's socket address (the connection is closed by then).
func (c *Conn) RemoteAddr() net.Addr {
	if c.handshake() != nil {
		return c.raw.RemoteAddr()
	}
	return c.client
}

// LocalAddr returns the local socket address. It never waits.
func (c *Conn) LocalAddr() net.Addr { return c.raw.LocalAddr() }

// SetDeadline sets the read and write deadlines, as net.Conn documents.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.raw.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline. While the PROXY header is being
// read, the earlier of t and the header deadline applies, so a caller cannot
// lift the header timeout.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.readDeadline = t
	return c.raw.SetReadDeadline(c.effectiveReadDeadline())
}

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// effectiveReadDeadline is the earlier of the caller's and the header's
// deadlines, zero meaning none. The caller holds dmu.
func (c *Conn) effectiveReadDeadline() time.Time {
	d := c.readDeadline
	if h := c.headerDeadline; !h.IsZero() && (d.IsZero() || h.Before(d)) {
		d = h
	}
	return d
}

func (c *Conn) setHeaderDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.headerDeadline = t
	return c.raw.SetReadDeadline(c.effectiveReadDeadline())
}

// handshake reads and verifies the PROXY header once. A rejected connection
// is closed and the reason logged.
func (c *Conn) handshake() error {
	c.handshakeOnce.Do(func() {
		err := c.readHeader()
		if err == nil {
			c.verified.Store(true)
			return
		}
		peer := c.raw.RemoteAddr().String()
		c.err = fmt.Errorf("identity: connection from %s rejected: %w", peer, err)
		if c.closing.Load() {
			// The app closed it while the header was being read; that is
			// not the peer's fault.
			c.l.log.Debug("identity: connection closed before its PROXY header was verified", "peer", peer)
		} else {
			c.l.log.Warn("identity: connection rejected", "peer", peer, "reason", err)
		}
		c.Close()
	})
	return c.err
}

// readHeader reads the PROXY header, checks it and verifies its identity
// TLV, all before the header deadline, and fills in the Conn's fields.
func (c *Conn) readHeader() error {
	deadline := time.Now().Add(c.l.timeout)
	if err := c.setHeaderDeadline(deadline); err != nil {
		return fmt.Errorf("%w: %w", ErrProxyHeader, err)
	}
	br := bufio.NewReaderSize(c.raw, headerBufferSize)
	// go-proxyproto bounds the header: a v1 line to 107 bytes, a v2 header
	// to 16 + MaxV2HeaderSize (4096) bytes. The deadline bounds the time, so
	// a header fed a byte at a time fails like a missing one.
	h, err := proxyproto.Read(br)
	// Restoring the caller's deadline can fail only on a closed connection,
	// which the next Read reports.
	_ = c.setHeaderDeadline(time.Time{})
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w: not received in time (header timeout %v)", ErrProxyHeader, c.l.timeout)
	case err != nil:
		return fmt.Errorf("%w: %w", ErrProxyHeader, err)
	case h.Version != 2:
		return fmt.Errorf("%w: version %d; the identity needs version 2", ErrProxyHeader, h.Version)
	case h.Command != proxyproto.PROXY:
		return fmt.Errorf("%w: LOCAL command, which carries no client", ErrProxyHeader)
	case h.TransportProtocol != proxyproto.TCPv4 && h.TransportProtocol != proxyproto.TCPv6:
		return fmt.Errorf("%w: transport %#02x is not TCP", ErrProxyHeader, byte(h.TransportProtocol))
	}
	client, ok := h.SourceAddr.(*net.TCPAddr)
	if !ok {
		return fmt.Errorf("%w: no TCP source address", ErrProxyHeader)
	}
	tlvs, err := h.TLVs()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrProxyHeader, err)
	}
	token, authority, uniqueID, err := ParseIdentityTLVs(tlvs)
	if err != nil {
		return err
	}
	// Verifying may fetch the JWKS once in a while; it shares the deadline.
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	claims, err := c.l.verifier.Verify(ctx, token)
	if err != nil {
		return err
	}
	c.rmu.Lock()
	c.br = br
	c.rmu.Unlock()
	c.claims, c.client, c.authority, c.uniqueID = claims, client, authority, uniqueID
	return nil
}

type connKey struct{}

// ConnContext records the connection in ctx, for ConnIdentity. Use it as
// http.Server.ConnContext for a server whose listener is (or wraps, as
// tls.NewListener does) a NewListener listener. It never waits: the
// connection is verified before its first request is read.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	// Unwrap *tls.Conn and anything else that exposes its inner connection
	// the same way.
	for range 8 {
		switch cc := c.(type) {
		case *Conn:
			return context.WithValue(ctx, connKey{}, cc)
		case interface{ NetConn() net.Conn }:
			c = cc.NetConn()
		default:
			return ctx
		}
	}
	return ctx
}

// ConnIdentity returns the verified identity of the connection a request
// arrived on, when the server's ConnContext is ConnContext. Every request on
// a keep-alive connection gets that connection's identity.
func ConnIdentity(ctx context.Context) (*Claims, bool) {
	c, ok := ConnFromContext(ctx)
	if !ok {
		return nil, false
	}
	claims, err := c.Identity()
	return claims, err == nil
}

// ConnFromContext returns the connection ConnContext recorded, for its
// UniqueID (to correlate with the edge's audit log) and Authority.
func ConnFromContext(ctx context.Context) (*Conn, bool) {
	c, ok := ctx.Value(connKey{}).(*Conn)
	return c, ok && c != nil
}
