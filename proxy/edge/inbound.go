package edge

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"
)

// Inbound PROXY protocol: a load balancer in front of the edge tells it the
// real client address in a header before the first byte of the connection.
//
// The listener stack (HTTPS; the redirect listener has no tracking or TLS):
//
//	TCP listener → watchListener → proxyproto.Listener → inboundListener → trackedListener → TLS → net/http
//
// go-proxyproto chooses a policy per peer at Accept (trusted: USE or REQUIRE;
// anyone else: REJECT), parses the header and validates it. Nothing is read
// in Accept: the header is read on the connection's first Read, Write or
// RemoteAddr call, all of which net/http makes in the connection's own
// goroutine, so a slow peer never holds up Accept for the others.
//
// inboundConn adds what go-proxyproto leaves to the caller: it forces that
// read through a single check, turns any failure into a closed connection,
// a metric and one log line, and closes a gap in the optional (USE) mode. In
// that mode go-proxyproto treats a header that times out or ends early
// inside its signature (and a v2 header that times out in its body) as "no
// header" and hands the bytes it consumed on as payload. Harmless for the
// address (the socket's is used), but a half-sent header from the load
// balancer is a fault that should fail at once, visibly, within
// header_timeout, and not as a confusing TLS error seconds later. watchConn,
// under go-proxyproto, records the first bytes and whether a read timed out
// so inboundConn can tell those cases apart.

// inboundPolicy is the compiled listen.proxy_protocol; nil when off.
type inboundPolicy struct {
	trusted []netip.Prefix
	require bool
	timeout time.Duration
	m       *metrics
	log     *slog.Logger
}

// newInboundPolicy compiles a validated configuration (defaults applied).
func newInboundPolicy(c InboundProxy, m *metrics, log *slog.Logger) (*inboundPolicy, error) {
	if !c.enabled() {
		return nil, nil
	}
	p := &inboundPolicy{require: c.Require, timeout: c.HeaderTimeout, m: m, log: loggerOrDiscard(log)}
	if p.timeout <= 0 {
		p.timeout = DefaultProxyHeaderTimeout
	}
	for _, s := range c.TrustedCIDRs {
		pfx, err := parseTrustedCIDR(s)
		if err != nil {
			return nil, err
		}
		p.trusted = append(p.trusted, pfx)
	}
	return p, nil
}

// trusts reports whether a peer may send a PROXY header.
func (p *inboundPolicy) trusts(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	ip = ip.Unmap() // an IPv4 peer on a dual-stack socket
	for _, pfx := range p.trusted {
		if pfx.Contains(ip) {
			return true
		}
	}
	return false
}

// connPolicy is proxyproto.Listener.ConnPolicy. It never returns an error:
// go-proxyproto's Accept would return one that does not wrap
// ErrInvalidUpstream, which stops net/http's serve loop; an unclassifiable
// peer is simply untrusted.
func (p *inboundPolicy) connPolicy(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
	switch {
	case !p.trusts(o.Upstream):
		return proxyproto.REJECT, nil
	case p.require:
		return proxyproto.REQUIRE, nil
	default:
		return proxyproto.USE, nil
	}
}

// Errors of validateInboundHeader; fixed texts, safe to log.
var (
	errHeaderNotTCP     = errors.New("PROXY header does not carry a TCP (TCP4/TCP6) connection")
	errHeaderNoAddress  = errors.New("PROXY header has no usable source address")
	errHeaderIncomplete = errors.New("PROXY header incomplete")
	errHeaderTimeout    = errors.New("no complete PROXY header within listen.proxy_protocol.header_timeout")
	errHeaderMissing    = errors.New("no PROXY header from a trusted peer (listen.proxy_protocol.require is on)")
)

// validateInboundHeader is proxyproto.Listener.ValidateHeader. A PROXY
// command must describe a TCP connection with real addresses: anything else
// (UDP, UNIX sockets) has no meaning for an HTTPS client and would reach
// handlers as an r.RemoteAddr they cannot parse. LOCAL (and v1 UNKNOWN) keep
// the socket's own addresses, as the spec says.
func validateInboundHeader(h *proxyproto.Header) error {
	if h.Command.IsLocal() {
		return nil
	}
	if h.TransportProtocol != proxyproto.TCPv4 && h.TransportProtocol != proxyproto.TCPv6 {
		return errHeaderNotTCP
	}
	src, dst, ok := h.TCPAddrs()
	if !ok || src == nil || dst == nil {
		return errHeaderNoAddress
	}
	if a, ok := netip.AddrFromSlice(src.IP); !ok || !a.IsValid() {
		return errHeaderNoAddress
	}
	return nil
}

// listener wraps ln (the HTTPS or redirect listener, named for the logs).
func (p *inboundPolicy) listener(ln net.Listener, name string) net.Listener {
	return &inboundListener{
		pp: &proxyproto.Listener{
			Listener:          &watchListener{ln},
			ConnPolicy:        p.connPolicy,
			ValidateHeader:    validateInboundHeader,
			ReadHeaderTimeout: p.timeout,
		},
		p:    p,
		name: name,
	}
}

type inboundListener struct {
	pp   *proxyproto.Listener
	p    *inboundPolicy
	name string
}

func (l *inboundListener) Accept() (net.Conn, error) {
	c, err := l.pp.Accept()
	if err != nil {
		return nil, err
	}
	pc, ok := c.(*proxyproto.Conn)
	if !ok {
		return c, nil // SKIP, which connPolicy never returns
	}
	w, ok := pc.Raw().(*watchConn)
	if !ok {
		w = &watchConn{Conn: pc.Raw()} // not reached: pp.Listener is a watchListener
	}
	return &inboundConn{Conn: pc, pc: pc, w: w, l: l}, nil
}

func (l *inboundListener) Close() error   { return l.pp.Close() }
func (l *inboundListener) Addr() net.Addr { return l.pp.Addr() }

// inboundConn is one accepted connection. Every method that needs the header
// (Read, Write, RemoteAddr, LocalAddr) first runs checkHeader.
type inboundConn struct {
	net.Conn // pc, for deadlines and Close
	pc       *proxyproto.Conn
	w        *watchConn
	l        *inboundListener

	once sync.Once
	err  error // set by checkHeader; sticky
}

func (c *inboundConn) Read(b []byte) (int, error) {
	if err := c.checkHeader(); err != nil {
		return 0, err
	}
	return c.pc.Read(b)
}

func (c *inboundConn) Write(b []byte) (int, error) {
	if err := c.checkHeader(); err != nil {
		return 0, err
	}
	return c.pc.Write(b)
}

// RemoteAddr is the header's source address if a PROXY header was accepted,
// else the socket peer's.
func (c *inboundConn) RemoteAddr() net.Addr {
	_ = c.checkHeader()
	return c.pc.RemoteAddr()
}

// LocalAddr is the header's destination (the address the client reached on
// the load balancer) if a PROXY header was accepted, else the socket's own.
func (c *inboundConn) LocalAddr() net.Addr {
	_ = c.checkHeader()
	return c.pc.LocalAddr()
}

// CloseWrite keeps net/http's graceful close (FIN, then linger) working on
// the plain redirect listener, as on a bare *net.TCPConn.
func (c *inboundConn) CloseWrite() error {
	if cw, ok := c.w.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("edge: CloseWrite not supported")
}

// checkHeader reads and judges the PROXY header once. On failure the
// connection is closed and every later call returns the same error, so
// nothing from it is ever served and nothing is written to it.
func (c *inboundConn) checkHeader() error {
	c.once.Do(func() {
		// A zero-length Read runs go-proxyproto's header detection (once,
		// bounded by ReadHeaderTimeout) and consumes no payload.
		_, err := c.pc.Read(nil)
		c.w.done.Store(true)
		reason, cause := c.judge(err)
		if cause == nil {
			return
		}
		c.err = cause
		if reason != "" {
			c.l.p.m.proxyRejected.WithLabelValues(reason).Inc()
			// The peer is the socket's (never a header's) address; the
			// cause is a fixed text, never bytes the peer sent.
			c.l.p.log.Info("edge: PROXY protocol: connection rejected", "listener", c.l.name,
				"peer", c.w.RemoteAddr().String(), "reason", reason, "cause", cause.Error())
		}
		_ = c.pc.Close()
	})
	return c.err
}

// judge classifies the outcome of header detection: ("", nil) means serve
// the connection; otherwise cause is why it is closed and reason the metric
// label ("" when there is nothing to count: the peer went away, or the
// server closed the connection, before a header was even begun).
func (c *inboundConn) judge(readErr error) (reason string, cause error) {
	w := c.w
	started := looksLikeHeader(w.seen)             // the peer began a header
	headerish := started || isHeaderError(readErr) // ... or go-proxyproto judged one
	switch {
	case w.closed:
		return "", net.ErrClosed // closed by the server (shutdown) while reading the header
	case readErr == nil && (c.pc.ProxyHeader() != nil || !started):
		return "", nil // a header was accepted, or none was sent
	case c.pc.ProxyHeaderPolicy == proxyproto.REJECT && headerish:
		return rejectUntrusted, proxyproto.ErrSuperfluousProxyHeader
	case w.timedOut:
		return rejectTimeout, errHeaderTimeout
	case readErr == nil:
		// USE: go-proxyproto gave up on a header that ended early and would
		// pass its bytes on as payload (see the comment at the top).
		return rejectBad, errHeaderIncomplete
	case errors.Is(readErr, proxyproto.ErrNoProxyProtocol): // REQUIRE
		if started {
			return rejectBad, errHeaderIncomplete
		}
		if len(w.seen) == 0 {
			// Connected and closed without a byte: a load balancer's TCP
			// health check, not worth a log line each time.
			return "", readErr
		}
		return rejectMissing, errHeaderMissing
	case headerish:
		return rejectBad, safeCause(readErr)
	default:
		return "", readErr // the connection failed (reset) before any header
	}
}

// headerErrors are the errors header detection can report, all fixed texts.
// Some of go-proxyproto's are wrapped around parser errors that quote the
// peer's bytes (a v1 address or port), so only the sentinel is logged.
var headerErrors = []error{
	errHeaderNotTCP, errHeaderNoAddress,
	proxyproto.ErrCantReadVersion1Header, proxyproto.ErrVersion1HeaderTooLong, proxyproto.ErrLineMustEndWithCrlf,
	proxyproto.ErrCantReadProtocolVersionAndCommand, proxyproto.ErrCantReadAddressFamilyAndProtocol,
	proxyproto.ErrCantReadLength, proxyproto.ErrUnknownProxyProtocolVersion,
	proxyproto.ErrUnsupportedProtocolVersionAndCommand, proxyproto.ErrUnsupportedAddressFamilyAndProtocol,
	proxyproto.ErrInvalidLength, proxyproto.ErrInvalidAddress, proxyproto.ErrInvalidPortNumber,
}

func isHeaderError(err error) bool {
	return err != nil && (errors.Is(err, proxyproto.ErrSuperfluousProxyHeader) || safeCause(err) != errHeaderInvalid)
}

var errHeaderInvalid = errors.New("invalid PROXY header")

// safeCause returns the fixed-text error err stands for.
func safeCause(err error) error {
	for _, e := range headerErrors {
		if errors.Is(err, e) {
			return e
		}
	}
	return errHeaderInvalid
}

// looksLikeHeader reports whether the first bytes of a connection agree with
// a PROXY v1 or v2 signature as far as both go.
func looksLikeHeader(seen []byte) bool {
	if len(seen) == 0 {
		return false
	}
	for _, sig := range [][]byte{proxyproto.SIGV1, proxyproto.SIGV2} {
		if bytes.HasPrefix(sig, seen) || bytes.HasPrefix(seen, sig) {
			return true
		}
	}
	return false
}

// watchPrefix is how many first bytes watchConn keeps: more than the longest
// signature (12).
const watchPrefix = 16

type watchListener struct{ net.Listener }

func (l *watchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &watchConn{Conn: c}, nil
}

// watchConn is the raw connection under go-proxyproto. Until done is set
// (by checkHeader, in the goroutine that reads the header; nothing else
// reads before then) it records the first bytes read and how reading ended.
type watchConn struct {
	net.Conn
	done     atomic.Bool
	seen     []byte
	timedOut bool
	closed   bool
}

func (w *watchConn) Read(b []byte) (int, error) {
	n, err := w.Conn.Read(b)
	if !w.done.Load() {
		if k := min(n, watchPrefix-len(w.seen)); k > 0 {
			w.seen = append(w.seen, b[:k]...)
		}
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			w.timedOut = true
		}
		if errors.Is(err, net.ErrClosed) {
			w.closed = true
		}
	}
	return n, err
}
