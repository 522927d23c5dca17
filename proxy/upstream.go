package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/proxy/identity"
)

// Upstream connections that carry a PROXY v2 header carry one identity:
// the header is written once, before the first byte of the connection, so
// a connection must never serve another identity. Such apps get a pool of
// connections per identity (identityPools) instead of one shared transport.

// upstreamHello is what the edge tells an app on a PROXY v2 connection.
type upstreamHello struct {
	client    net.Addr // the real client (the TCP peer, or what a trusted load balancer said)
	local     net.Addr // the edge address the client reached
	authority string   // the host the client asked for
	uniqueID  string   // the session reference, as in the audit log
	token     string   // the signed identity, aud = the app
}

// proxyHeader builds the PROXY v2 header for h. The TLV layout is defined
// once, in proxy/identity, which apps use to read it.
func proxyHeader(h upstreamHello) (*proxyproto.Header, error) {
	src, ok1 := h.client.(*net.TCPAddr)
	dst, ok2 := h.local.(*net.TCPAddr)
	if !ok1 || !ok2 || src == nil || dst == nil {
		return nil, fmt.Errorf("proxy header: need TCP addresses, have %v and %v", h.client, h.local)
	}
	tlvs, err := identity.IdentityTLVs(h.token, h.authority, h.uniqueID)
	if err != nil {
		return nil, fmt.Errorf("proxy header: %w", err)
	}
	hdr := proxyproto.HeaderProxyFromAddrs(2, src, dst)
	hdr.Command = proxyproto.PROXY
	if err := hdr.SetTLVs(tlvs); err != nil {
		return nil, fmt.Errorf("proxy header: %w", err)
	}
	return hdr, nil
}

// upstreamDialer dials apps with the edge's connect timeout.
var upstreamDialer = &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}

// dialWithHeader connects to addr and writes hdr before anything else (and
// so before TLS, when the upstream uses it).
func dialWithHeader(ctx context.Context, addr string, hdr *proxyproto.Header) (net.Conn, error) {
	c, err := upstreamDialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetWriteDeadline(deadline)
	if _, err := hdr.WriteTo(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("write proxy header to %s: %w", addr, err)
	}
	_ = c.SetWriteDeadline(time.Time{})
	return c, nil
}

// DialTCP connects to the raw TCP app named app for sess, sending the PROXY
// v2 identity header when the app asks for it; device is the tunnel
// client's device ("" for none). The caller (the tunnel) has
// already authorized the stream with the full pipeline; client and local
// are the tunnel client's address and the edge address it reached.
func (e *Edge) DialTCP(ctx context.Context, appName string, sess *authn.Session, device string, client, local net.Addr) (net.Conn, error) {
	st := e.state.Load()
	a := st.apps[appName]
	if a == nil || a.TCP == "" {
		return nil, fmt.Errorf("no TCP app %q", appName)
	}
	if a.ProxyProtocol == "" {
		return upstreamDialer.DialContext(ctx, "tcp", a.TCP)
	}
	id, err := e.assertions.get(e.signer, sess, a.Name, device, a.PostureProfile, st.Config.assertionTTL())
	if err != nil {
		return nil, err
	}
	hdr, err := proxyHeader(upstreamHello{client: client, local: local, authority: a.Name, uniqueID: sess.Ref(), token: id.token[0]})
	if err != nil {
		return nil, err
	}
	e.pools.metrics.dials.WithLabelValues(a.Name).Inc()
	return dialWithHeader(ctx, a.TCP, hdr)
}

// poolKey names the connections that may be shared: same app (as compiled:
// a reload starts new pools), same session, same client address, same
// signed identity. A new assertion (refresh, attribute change, key
// rotation) starts new connections; the old ones are no longer used and
// close when idle.
type poolKey struct {
	app                    *app
	session, client, token string
}

type identityPool struct {
	tr       *http.Transport
	lastUsed atomic.Int64 // unix nanos
}

// PoolConfig bounds the per-identity upstream pools.
type PoolConfig struct {
	// MaxIdentities bounds how many identities have a pool at once; past it
	// the least recently used pool is closed. 0 → 10000.
	MaxIdentities int `yaml:"max_identities"`
	// MaxIdlePerIdentity bounds idle connections per identity. 0 → 4.
	MaxIdlePerIdentity int `yaml:"max_idle_per_identity"`
	// IdleTimeout closes idle connections and unused pools. 0 → 90s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

func (c PoolConfig) withDefaults() PoolConfig {
	if c.MaxIdentities <= 0 {
		c.MaxIdentities = 10_000
	}
	if c.MaxIdlePerIdentity <= 0 {
		c.MaxIdlePerIdentity = 4
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 90 * time.Second
	}
	return c
}

// identityPools holds the per-identity transports of every PROXY v2 app.
type identityPools struct {
	cfg     PoolConfig
	metrics *poolMetrics
	mu      sync.Mutex
	m       map[poolKey]*identityPool
}

func newIdentityPools(cfg PoolConfig, m *poolMetrics) *identityPools {
	return &identityPools{cfg: cfg.withDefaults(), metrics: m, m: map[poolKey]*identityPool{}}
}

// transport returns the pool for k, creating it with newTransport.
func (p *identityPools) transport(k poolKey, newTransport func() *http.Transport) *http.Transport {
	now := time.Now().UnixNano()
	p.mu.Lock()
	defer p.mu.Unlock()
	if ip := p.m[k]; ip != nil {
		ip.lastUsed.Store(now)
		return ip.tr
	}
	if len(p.m) >= p.cfg.MaxIdentities {
		var oldestKey poolKey
		var oldest *identityPool
		for key, ip := range p.m {
			if oldest == nil || ip.lastUsed.Load() < oldest.lastUsed.Load() {
				oldestKey, oldest = key, ip
			}
		}
		oldest.tr.CloseIdleConnections()
		delete(p.m, oldestKey)
		p.metrics.evictions.Inc()
	}
	ip := &identityPool{tr: newTransport()}
	ip.lastUsed.Store(now)
	p.m[k] = ip
	p.metrics.pools.Set(float64(len(p.m)))
	return ip.tr
}

// sweep closes pools unused for the idle timeout.
func (p *identityPools) sweep(now time.Time) {
	cutoff := now.Add(-p.cfg.IdleTimeout).UnixNano()
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, ip := range p.m {
		if ip.lastUsed.Load() < cutoff {
			ip.tr.CloseIdleConnections()
			delete(p.m, k)
		}
	}
	p.metrics.pools.Set(float64(len(p.m)))
}

// dropSession closes the pools of a session that ended: its idle
// connections carry an identity nobody may use any more.
func (p *identityPools) dropSession(ref string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, ip := range p.m {
		if k.session == ref {
			ip.tr.CloseIdleConnections()
			delete(p.m, k)
		}
	}
	p.metrics.pools.Set(float64(len(p.m)))
}

// closeAll closes every pool (shutdown).
func (p *identityPools) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, ip := range p.m {
		ip.tr.CloseIdleConnections()
		delete(p.m, k)
	}
	p.metrics.pools.Set(0)
}

// identityRoundTripper sends each request of a PROXY v2 app over a
// connection of its own identity's pool.
type identityRoundTripper struct {
	app   *app
	pools *identityPools
}

// helloKey carries the upstreamHello of a request from forward to RoundTrip.
type helloKey struct{}

func (t *identityRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	h, ok := req.Context().Value(helloKey{}).(*upstreamHello)
	if !ok {
		return nil, errors.New("proxy protocol app: request without an identity")
	}
	hdr, err := proxyHeader(*h)
	if err != nil {
		return nil, err
	}
	k := poolKey{app: t.app, session: h.uniqueID, client: h.client.String(), token: h.token}
	tr := t.pools.transport(k, func() *http.Transport {
		tr := t.app.newTransport()
		tr.MaxIdleConnsPerHost = t.pools.cfg.MaxIdlePerIdentity
		tr.MaxIdleConns = t.pools.cfg.MaxIdlePerIdentity
		tr.IdleConnTimeout = t.pools.cfg.IdleTimeout
		dials := t.pools.metrics.dials.WithLabelValues(t.app.Name)
		tr.DialContext = func(ctx context.Context, _, addr string) (net.Conn, error) {
			dials.Inc()
			return dialWithHeader(ctx, addr, hdr)
		}
		return tr
	})
	return tr.RoundTrip(req)
}

// hostOnly strips the port from a Host header value.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

// tcpAddr parses an "ip:port" address (r.RemoteAddr) for the PROXY header;
// it never resolves names.
func tcpAddr(s string) *net.TCPAddr {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil
	}
	return net.TCPAddrFromAddrPort(ap)
}
