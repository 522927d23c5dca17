package edge

import (
	"errors"
	"fmt"
	"net"
	"strconv"
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
}

// Defaults for the zero values of Config.
const (
	DefaultAddress           = ":443"
	DefaultAdminAddress      = "127.0.0.1:9090"
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultDrainDelay        = 5 * time.Second
	DefaultGraceTimeout      = 30 * time.Second

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
