package edge

import (
	"bytes"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; nil means valid
	}{
		{"zero value", Config{}, nil},
		{"explicit", Config{Address: "0.0.0.0:8443", HTTPRedirectAddress: ":8080", AdminAddress: "[::1]:9090",
			MaxConnectionDuration: time.Hour}, nil},
		{"admin off", Config{AdminAddress: "off"}, nil},
		{"address without port", Config{Address: "localhost"}, []string{"listen.address:"}},
		{"service name port", Config{Address: ":https"}, []string{"listen.address:", "not a number"}},
		{"port too big", Config{HTTPRedirectAddress: ":70000"}, []string{"listen.http_redirect_address:"}},
		{"admin garbage", Config{AdminAddress: "disabled"}, []string{"listen.admin_address:", `"off"`}},
		{"redirect on https port", Config{Address: ":8443", HTTPRedirectAddress: "127.0.0.1:8443"}, []string{"listen.http_redirect_address: must differ"}},
		{"admin on default https port", Config{AdminAddress: "127.0.0.1:443"}, []string{"listen.admin_address: must differ"}},
		{"negative durations", Config{DrainDelay: -1, GraceTimeout: -time.Second, MaxConnectionDuration: -1},
			[]string{"listen.drain_delay:", "listen.grace_timeout:", "listen.max_connection_duration:"}},
		{"negative header bytes", Config{MaxHeaderBytes: -1}, []string{"listen.max_header_bytes:"}},
		{"proxy protocol", Config{ProxyProtocol: InboundProxy{
			TrustedCIDRs:  []string{"10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "::1", "::ffff:10.0.0.0/104", "10.1.2.3/8"},
			HeaderTimeout: time.Second, Require: true}}, nil},
		{"proxy protocol bad cidr is named by index", Config{ProxyProtocol: InboundProxy{
			TrustedCIDRs: []string{"10.0.0.0/8", "10.0.0.0/33", "not-an-ip", "", "fe80::1%eth0", " 10.0.0.1"}}},
			[]string{"listen.proxy_protocol.trusted_cidrs[1]:", "listen.proxy_protocol.trusted_cidrs[2]:",
				"listen.proxy_protocol.trusted_cidrs[3]:", "listen.proxy_protocol.trusted_cidrs[4]: \"fe80::1%eth0\": IPv6 zones",
				"listen.proxy_protocol.trusted_cidrs[5]:"}},
		{"proxy protocol negative timeout", Config{ProxyProtocol: InboundProxy{TrustedCIDRs: []string{"10.0.0.1"}, HeaderTimeout: -time.Second}},
			[]string{"listen.proxy_protocol.header_timeout: must not be negative"}},
		{"proxy protocol require without trusted peers", Config{ProxyProtocol: InboundProxy{Require: true}},
			[]string{"listen.proxy_protocol.require: needs listen.proxy_protocol.trusted_cidrs"}},
		{"proxy protocol timeout alone is harmless", Config{ProxyProtocol: InboundProxy{HeaderTimeout: time.Second}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want error containing %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	d := Config{}.withDefaults()
	if d.Address != ":443" || d.AdminAddress != "127.0.0.1:9090" || d.HTTP3 == nil || !*d.HTTP3 ||
		d.ReadHeaderTimeout != 10*time.Second || d.ReadTimeout != 0 || d.IdleTimeout != 2*time.Minute ||
		d.MaxHeaderBytes != 64<<10 || d.DrainDelay != 5*time.Second || d.GraceTimeout != 30*time.Second ||
		d.MaxConnectionDuration != 0 || d.HTTPRedirectAddress != "" ||
		d.ProxyProtocol.HeaderTimeout != 5*time.Second || d.ProxyProtocol.enabled() || d.ProxyProtocol.Require {
		t.Fatalf("defaults: %+v", d)
	}
	off := false
	if d := (Config{HTTP3: &off}).withDefaults(); *d.HTTP3 {
		t.Error("http3: false became true")
	}
}

func TestParseTrustedCIDR(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.1.2.3/8", "10.0.0.0/8"}, // host bits cleared
		{"192.0.2.1", "192.0.2.1/32"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"2001:db8::/32", "2001:db8::/32"},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8"}, // peers are matched unmapped
		{"::ffff:192.0.2.1", "192.0.2.1/32"},
		{"0.0.0.0/0", "0.0.0.0/0"},
	}
	for _, tt := range tests {
		got, err := parseTrustedCIDR(tt.in)
		if err != nil || got.String() != tt.want {
			t.Errorf("parseTrustedCIDR(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	p, err := newInboundPolicy(InboundProxy{TrustedCIDRs: []string{"10.0.0.0/8", "::ffff:192.0.2.0/120", "2001:db8::/32"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	peers := []struct {
		addr    net.Addr
		trusted bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("10.9.8.7"), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.9.8.7"), Port: 1}, true}, // IPv4 peer on a dual-stack socket
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.200"), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::5"), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("11.0.0.1"), Port: 1}, false},
		{&net.TCPAddr{IP: net.ParseIP("2001:db9::5"), Port: 1}, false},
		{&net.TCPAddr{}, false},
		{&net.UnixAddr{Name: "/x", Net: "unix"}, false},
	}
	for _, pt := range peers {
		if got := p.trusts(pt.addr); got != pt.trusted {
			t.Errorf("trusts(%v) = %v, want %v", pt.addr, got, pt.trusted)
		}
	}
	if p.timeout != DefaultProxyHeaderTimeout {
		t.Errorf("header timeout %s, want the default %s", p.timeout, DefaultProxyHeaderTimeout)
	}
}

func TestRedirectHost(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"example.com", "example.com", true},
		{"Example.COM.", "example.com", true},
		{"a-b.example:8080", "a-b.example", true},
		{"127.0.0.1:80", "127.0.0.1", true},
		{"[2001:db8::1]", "[2001:db8::1]", true},
		{"[2001:DB8::1]:80", "[2001:db8::1]", true},
		{"", "", false},
		{"example.com:", "", false},
		{"example.com:99999", "", false},
		{"user@example.com", "", false},
		{"example.com/path", "", false},
		{"exa mple.com", "", false},
		{"example.com\\x", "", false},
		{"-x.example", "", false},
		{"x-.example", "", false},
		{strings.Repeat("a", 64) + ".example", "", false},
		{"[127.0.0.1]", "", false},
		{"[::1", "", false},
		{"::1", "", false},
		{"%65xample.com", "", false},
	}
	for _, tt := range tests {
		got, ok := redirectHost(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("redirectHost(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// FuzzRedirectHost: whatever a client sends as Host, an accepted value
// yields a Location whose authority is exactly that host, with no userinfo
// and nothing smuggled into the path.
func FuzzRedirectHost(f *testing.F) {
	for _, s := range []string{"example.com", "a.b:1", "[::1]:2", "x@y", "a/b", "[::1%eth0]", "..", "a..b", "é.example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		host, ok := redirectHost(in)
		if !ok {
			return
		}
		u, err := url.Parse("https://" + host + "/p")
		if err != nil {
			t.Fatalf("redirectHost(%q) = %q: Location does not parse: %v", in, host, err)
		}
		if u.User != nil || u.Path != "/p" || u.Host != host || u.Port() != "" {
			t.Fatalf("redirectHost(%q) = %q: parsed as host %q user %v path %q", in, host, u.Host, u.User, u.Path)
		}
		if strings.ContainsAny(host, "@/\\?#% \t\r\n") {
			t.Fatalf("redirectHost(%q) = %q contains a forbidden character", in, host)
		}
	})
}

func TestUDPBufferWarning(t *testing.T) {
	t.Setenv(quicBufferEnv, "")
	os.Unsetenv(quicBufferEnv) // t.Setenv restores the original afterwards
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	var once sync.Once

	warnUDPBuffers(16<<20, 16<<20, quicBufferSize, &once, logger)
	if buf.Len() != 0 {
		t.Fatalf("logged with enough buffer: %s", buf.String())
	}
	warnUDPBuffers(425984, 16<<20, quicBufferSize, &once, logger)
	warnUDPBuffers(425984, 425984, quicBufferSize, &once, logger)
	out := buf.String()
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "level=INFO") ||
		!strings.Contains(out, "sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000") {
		t.Fatalf("want one info line with the sysctl fix, got:\n%s", out)
	}
	if v, _ := os.LookupEnv(quicBufferEnv); v != "true" {
		t.Errorf("%s = %q, want quic-go's duplicate warning turned off", quicBufferEnv, v)
	}

	// The real probe works on this platform's sockets.
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if rcv, snd, ok := raiseUDPBuffers(c, quicBufferSize); ok && (rcv <= 0 || snd <= 0) {
		t.Errorf("raiseUDPBuffers = %d, %d, ok; want positive sizes", rcv, snd)
	}
}
