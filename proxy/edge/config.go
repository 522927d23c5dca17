package edge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Config is the `listen:` section of the edge configuration. Every zero value
// is safe and means the documented default.
type Config struct {
	// Address is the TCP address for HTTPS (HTTP/1.1 and HTTP/2). HTTP/3 binds
	// UDP on the same host and the TCP port actually bound. "" → ":443".
	Address string `yaml:"address"`

	// HTTPRedirectAddress is a plain-HTTP address that only answers GET/HEAD
	// with a 308 redirect to HTTPS. "" → off.
	HTTPRedirectAddress string `yaml:"http_redirect_address"`

	// AdminAddress serves /healthz, /readyz and /metrics over plain HTTP.
	// "" → "127.0.0.1:9090" (loopback, so metrics are not public by default);
	// "off" disables it.
	AdminAddress string `yaml:"admin_address"`

	// HTTP3 enables HTTP/3 on UDP and the Alt-Svc advertisement. nil → true.
	HTTP3 *bool `yaml:"http3"`

	// ReadHeaderTimeout bounds reading request headers (slowloris). 0 → 10s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`

	// ReadTimeout bounds reading a whole request including its body. 0 → no
	// limit on bodies: uploads, streaming request bodies and long-lived
	// WebSocket-style exchanges must not be cut at a fixed time; headers stay
	// bounded by ReadHeaderTimeout and idle connections by IdleTimeout. There
	// is deliberately no write timeout either, for the same reason (streamed
	// downloads, server-sent events).
	ReadTimeout time.Duration `yaml:"read_timeout"`

	// IdleTimeout closes keep-alive connections (and HTTP/3 connections at the
	// HTTP layer) with no request in flight. 0 → 2m.
	IdleTimeout time.Duration `yaml:"idle_timeout"`

	// MaxHeaderBytes bounds request header size. 0 → 64 KiB.
	MaxHeaderBytes int `yaml:"max_header_bytes"`

	// DrainDelay is the time between reporting not-ready (/readyz → 503) and
	// closing the listeners, so load balancers stop sending new connections
	// first. 0 → 5s.
	DrainDelay time.Duration `yaml:"drain_delay"`

	// GraceTimeout is the time in-flight requests (including WebSockets and
	// streams) get after the listeners close; then they are cut off. 0 → 30s.
	GraceTimeout time.Duration `yaml:"grace_timeout"`

	// MaxConnectionDuration makes clients reconnect (possibly to another
	// replica) once a connection is older than this: the next response on it
	// carries Connection: close (HTTP/1.1 closes, HTTP/2 sends GOAWAY) and idle
	// connections are closed. In-flight requests are never cut. 0 → off.
	MaxConnectionDuration time.Duration `yaml:"max_connection_duration"`

	// ProxyProtocol accepts PROXY protocol headers from load balancers in
	// front of the edge, on the HTTPS and redirect listeners. Zero → off.
	ProxyProtocol InboundProxy `yaml:"proxy_protocol"`
}

// InboundProxy configures PROXY protocol (v1 or v2) on the TCP listeners, so
// the edge sees the real client address behind a load balancer: r.RemoteAddr
// in handlers, audit events, X-Forwarded-For and outbound PROXY headers all
// carry the header's source address.
//
// A header is honoured only from TrustedCIDRs; from anyone else it is an
// error and the connection is closed, because otherwise any client could
// claim any address. v1 headers are at most 107 bytes (spec); v2 headers may
// carry at most 4096 bytes after their fixed 16 (go-proxyproto's default
// MaxV2HeaderSize, which the edge leaves alone); larger ones are rejected.
// Only TCP source addresses (TCP4/TCP6) are accepted; LOCAL (v2) and UNKNOWN
// (v1) headers, which load balancers use for their own health checks, keep
// the socket's addresses.
//
// HTTP/3 runs on UDP, where PROXY protocol does not apply: the HTTP/3
// listener sees the load balancer's address unless the load balancer
// forwards UDP transparently (direct server return, IP preserved). Turn
// http3 off behind a load balancer that does not.
type InboundProxy struct {
	// TrustedCIDRs are the load balancers allowed to send a PROXY header (v1
	// or v2) on the HTTPS listener and the redirect listener: CIDR prefixes
	// ("10.0.0.0/8", "2001:db8::/32") or bare IPs (meaning /32 or /128).
	// Empty → PROXY protocol is off: the edge does not look for headers at
	// all.
	TrustedCIDRs []string `yaml:"trusted_cidrs"`

	// HeaderTimeout bounds reading the header, from the moment the
	// connection is accepted. 0 → 5s.
	HeaderTimeout time.Duration `yaml:"header_timeout"`

	// Require makes a header mandatory from trusted peers: connections
	// without one are closed. false → optional (trusted peers may also
	// connect directly). Needs TrustedCIDRs.
	Require bool `yaml:"require"`
}

// enabled reports whether the edge looks for PROXY headers at all.
func (p InboundProxy) enabled() bool { return len(p.TrustedCIDRs) > 0 }

// Defaults for the zero values of Config.
const (
	DefaultAddress            = ":443"
	DefaultAdminAddress       = "127.0.0.1:9090"
	DefaultReadHeaderTimeout  = 10 * time.Second
	DefaultIdleTimeout        = 2 * time.Minute
	DefaultMaxHeaderBytes     = 64 << 10
	DefaultDrainDelay         = 5 * time.Second
	DefaultGraceTimeout       = 30 * time.Second
	DefaultProxyHeaderTimeout = 5 * time.Second

	// AdminOff as AdminAddress disables the admin listener.
	AdminOff = "off"
)

// Validate checks the configuration without binding anything. Errors name
// the YAML field ("listen.address: ...") so the config loader can point at it.
func (c Config) Validate() error {
	var errs []error
	field := func(name string, err error) {
		errs = append(errs, fmt.Errorf("listen.%s: %w", name, err))
	}
	if c.Address != "" {
		if err := checkHostPort(c.Address); err != nil {
			field("address", err)
		}
	}
	if c.HTTPRedirectAddress != "" {
		if err := checkHostPort(c.HTTPRedirectAddress); err != nil {
			field("http_redirect_address", err)
		} else if sameFixedAddress(c.HTTPRedirectAddress, c.withDefaults().Address) {
			field("http_redirect_address", errors.New("must differ from listen.address"))
		}
	}
	if c.AdminAddress != "" && c.AdminAddress != AdminOff {
		if err := checkHostPort(c.AdminAddress); err != nil {
			field("admin_address", fmt.Errorf("%w (or %q to disable)", err, AdminOff))
		} else if sameFixedAddress(c.AdminAddress, c.withDefaults().Address) {
			field("admin_address", errors.New("must differ from listen.address"))
		}
	}
	durations := []struct {
		name string
		d    time.Duration
	}{
		{"read_header_timeout", c.ReadHeaderTimeout},
		{"read_timeout", c.ReadTimeout},
		{"idle_timeout", c.IdleTimeout},
		{"drain_delay", c.DrainDelay},
		{"grace_timeout", c.GraceTimeout},
		{"max_connection_duration", c.MaxConnectionDuration},
	}
	for _, d := range durations {
		if d.d < 0 {
			field(d.name, fmt.Errorf("must not be negative, got %s", d.d))
		}
	}
	if c.MaxHeaderBytes < 0 {
		field("max_header_bytes", fmt.Errorf("must not be negative, got %d", c.MaxHeaderBytes))
	}
	pp := c.ProxyProtocol
	for i, s := range pp.TrustedCIDRs {
		if _, err := parseTrustedCIDR(s); err != nil {
			field(fmt.Sprintf("proxy_protocol.trusted_cidrs[%d]", i), err)
		}
	}
	if pp.HeaderTimeout < 0 {
		field("proxy_protocol.header_timeout", fmt.Errorf("must not be negative, got %s", pp.HeaderTimeout))
	}
	if pp.Require && !pp.enabled() {
		// Probably a list lost in editing; the operator expects every
		// connection to carry a header, but none would be looked for.
		field("proxy_protocol.require", errors.New("needs listen.proxy_protocol.trusted_cidrs (PROXY protocol is off without them)"))
	}
	return errors.Join(errs...)
}

// withDefaults returns c with every zero value replaced by its default.
func (c Config) withDefaults() Config {
	if c.Address == "" {
		c.Address = DefaultAddress
	}
	if c.AdminAddress == "" {
		c.AdminAddress = DefaultAdminAddress
	}
	if c.HTTP3 == nil {
		on := true
		c.HTTP3 = &on
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.DrainDelay == 0 {
		c.DrainDelay = DefaultDrainDelay
	}
	if c.GraceTimeout == 0 {
		c.GraceTimeout = DefaultGraceTimeout
	}
	if c.ProxyProtocol.HeaderTimeout == 0 {
		c.ProxyProtocol.HeaderTimeout = DefaultProxyHeaderTimeout
	}
	return c
}

// checkHostPort accepts "host:port" with an empty host, an IP literal or a
// name, and a numeric port 0-65535. Service names are refused so that
// validation never needs a lookup.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port, got %q: %w", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q in %q is not a number from 0 to 65535", port, addr)
	}
	if len(host) > 253 {
		return fmt.Errorf("host in %q is too long", addr)
	}
	return nil
}

// sameFixedAddress reports whether two valid addresses name the same host and
// the same non-zero port, which can never both be bound.
func sameFixedAddress(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa == "0" {
		return false
	}
	na, _ := strconv.Atoi(pa)
	nb, _ := strconv.Atoi(pb)
	return na == nb && (ha == hb || ha == "" || hb == "")
}

// parseTrustedCIDR parses one trusted_cidrs entry: a CIDR prefix or a bare IP
// (a single address). Host bits are cleared ("10.1.2.3/8" is 10.0.0.0/8) and
// an IPv4-mapped IPv6 prefix becomes the IPv4 prefix it denotes, since peers
// are matched by their unmapped address. Zones are refused: a prefix must
// mean the same on every interface.
func parseTrustedCIDR(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("want a CIDR prefix or an IP address: %w", err)
		}
		p = p.Masked()
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("want a CIDR prefix or an IP address: %w", err)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q: IPv6 zones are not allowed", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil
}
