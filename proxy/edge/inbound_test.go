package edge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// proxyConfig is fastConfig with PROXY protocol on and HTTP/3 off (UDP has
// nothing to do with it, and binding it costs time).
func proxyConfig(trusted []string, require bool, headerTimeout time.Duration) Config {
	off := false
	cfg := fastConfig()
	cfg.HTTP3 = &off
	cfg.ProxyProtocol = InboundProxy{TrustedCIDRs: trusted, Require: require, HeaderTimeout: headerTimeout}
	return cfg
}

// remoteEcho answers with r.RemoteAddr and counts the requests it served.
type remoteEcho struct{ served atomic.Int32 }

func (h *remoteEcho) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.served.Add(1)
	_, _ = io.WriteString(w, r.RemoteAddr)
}

func tcpAddrOf(s string) *net.TCPAddr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

// ppHeader is a PROXY header (version 1 or 2) from src to 192.0.2.1:443 (or
// [2001:db8::1]:443 for an IPv6 src).
func ppHeader(version byte, src string) *proxyproto.Header {
	s := tcpAddrOf(src)
	d := tcpAddrOf("192.0.2.1:443")
	tp := proxyproto.TCPv4
	if s.IP.To4() == nil {
		d, tp = tcpAddrOf("[2001:db8::1]:443"), proxyproto.TCPv6
	}
	return &proxyproto.Header{Version: version, Command: proxyproto.PROXY, TransportProtocol: tp, SourceAddr: s, DestinationAddr: d}
}

func headerBytes(t testing.TB, h *proxyproto.Header) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := h.WriteTo(&b); err != nil {
		t.Fatalf("write header: %v", err)
	}
	return b.Bytes()
}

// prefixClient is an HTTPS client (h1 or h2, no keep-alive) whose
// connections start with whatever send writes, before TLS. local receives
// the address each connection was dialled from.
func (e *testEnv) prefixClient(h2 bool, send func(io.Writer) error, local *atomic.Value) *http.Client {
	c := e.tcpClient(h2)
	tr := c.Transport.(*http.Transport)
	tr.DisableKeepAlives = true
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if local != nil {
			local.Store(conn.LocalAddr().String())
		}
		if send != nil {
			if err := send(conn); err != nil {
				conn.Close()
				return nil, err
			}
		}
		return conn, nil
	}
	c.Timeout = 5 * time.Second
	return c
}

// sendHeader writes h with go-proxyproto's own writer.
func sendHeader(h *proxyproto.Header) func(io.Writer) error {
	return func(w io.Writer) error { _, err := h.WriteTo(w); return err }
}

func sendBytes(b []byte) func(io.Writer) error {
	return func(w io.Writer) error { _, err := w.Write(b); return err }
}

func rejected(e *testEnv, reason string) float64 {
	return metricValue(e.t, e.s.metrics.proxyRejected.WithLabelValues(reason))
}

// logBuffer keeps log output for assertions and copies it to t.Log.
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b.Write(p)
	l.mu.Unlock()
	return testWriter{l.t}.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLogBuffer(t *testing.T) (*logBuffer, *slog.Logger) {
	lb := &logBuffer{t: t}
	return lb, slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func TestInboundProxyTrustedPeer(t *testing.T) {
	h := &remoteEcho{}
	e := startEnv(t, proxyConfig([]string{"127.0.0.1/32"}, false, 0), h, Options{}, nil)

	v2 := ppHeader(2, "203.0.113.7:4242")
	if err := v2.SetTLVs([]proxyproto.TLV{{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte("app.example.com")}}); err != nil {
		t.Fatal(err)
	}
	local := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	const raw = "" // want the socket's own peer address
	tests := []struct {
		name string
		h2   bool
		send func(io.Writer) error
		want string
	}{
		{"v2 h1", false, sendHeader(v2), "203.0.113.7:4242"},
		{"v2 h2", true, sendHeader(v2), "203.0.113.7:4242"},
		{"v1", false, sendHeader(ppHeader(1, "198.51.100.9:5555")), "198.51.100.9:5555"},
		{"v2 IPv6", false, sendHeader(ppHeader(2, "[2001:db8::7]:4242")), "[2001:db8::7]:4242"},
		{"v1 IPv6", true, sendHeader(ppHeader(1, "[2001:db8::8]:1")), "[2001:db8::8]:1"},
		{"v2 LOCAL keeps the socket address", false, sendHeader(local), raw},
		{"v1 UNKNOWN keeps the socket address", false, sendBytes([]byte("PROXY UNKNOWN\r\n")), raw},
		{"no header (optional)", false, nil, raw},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var dialled atomic.Value
			resp, body := get(t, e.prefixClient(tt.h2, tt.send, &dialled), e.httpsURL("/"), nil)
			want := tt.want
			if want == raw {
				want = dialled.Load().(string)
			}
			if resp.StatusCode != 200 || body != want {
				t.Fatalf("got %d %q, want r.RemoteAddr %q", resp.StatusCode, body, want)
			}
		})
	}
	for _, r := range []string{rejectUntrusted, rejectBad, rejectTimeout, rejectMissing} {
		if got := rejected(e, r); got != 0 {
			t.Errorf("rejected{%s} = %v, want 0", r, got)
		}
	}
}

func TestInboundProxyRequire(t *testing.T) {
	h := &remoteEcho{}
	e := startEnv(t, proxyConfig([]string{"127.0.0.1"}, true, 0), h, Options{}, nil)

	_, body := get(t, e.prefixClient(false, sendHeader(ppHeader(2, "203.0.113.7:4242")), nil), e.httpsURL("/"), nil)
	if body != "203.0.113.7:4242" {
		t.Fatalf("with a header: r.RemoteAddr %q, want 203.0.113.7:4242", body)
	}
	served := h.served.Load()
	if _, err := e.prefixClient(false, nil, nil).Get(e.httpsURL("/")); err == nil {
		t.Fatal("a trusted peer without a header was served with require: true")
	}
	eventually(t, 2*time.Second, "missing_header counted", func() bool { return rejected(e, rejectMissing) == 1 })
	if h.served.Load() != served {
		t.Error("the handler ran for the connection without a header")
	}
	// Connect and close without a byte (a load balancer's TCP health check):
	// closed, but neither counted nor logged as a rejection.
	c, err := net.Dial("tcp", e.s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, body := get(t, e.prefixClient(false, sendHeader(ppHeader(1, "198.51.100.1:1")), nil), e.httpsURL("/"), nil); body != "198.51.100.1:1" {
		t.Fatalf("after the health check: %q", body)
	}
	if got := rejected(e, rejectMissing); got != 1 {
		t.Errorf("missing_header = %v after an empty connection, want still 1", got)
	}
}

func TestInboundProxyUntrustedPeer(t *testing.T) {
	logs, logger := newLogBuffer(t)
	h := &remoteEcho{}
	e := startEnv(t, proxyConfig([]string{"10.0.0.0/8"}, false, 0), h, Options{Logger: logger}, nil)

	for i, send := range []func(io.Writer) error{
		sendHeader(ppHeader(2, "203.0.113.7:4242")),
		sendHeader(ppHeader(1, "203.0.113.7:4242")),
	} {
		var dialled atomic.Value
		if resp, err := e.prefixClient(false, send, &dialled).Get(e.httpsURL("/")); err == nil {
			resp.Body.Close()
			t.Fatalf("header %d from an untrusted peer: served, want the connection closed", i)
		}
		eventually(t, 2*time.Second, "untrusted_header counted", func() bool { return rejected(e, rejectUntrusted) == float64(i+1) })
		out := logs.String()
		if !strings.Contains(out, "level=INFO") || !strings.Contains(out, "reason=untrusted_header") ||
			!strings.Contains(out, "peer="+dialled.Load().(string)) {
			t.Errorf("want an info line with the peer address and the reason, got:\n%s", out)
		}
	}
	if h.served.Load() != 0 {
		t.Errorf("handler ran %d times for rejected connections", h.served.Load())
	}
	if out := logs.String(); strings.Contains(out, "203.0.113.7") || strings.Contains(out, "covers TCP only") {
		t.Errorf("log shows the header's payload or a misplaced HTTP/3 warning:\n%s", out)
	}

	// Plain TLS from the same untrusted peer works as before.
	var dialled atomic.Value
	if _, body := get(t, e.prefixClient(true, nil, &dialled), e.httpsURL("/"), nil); body != dialled.Load().(string) {
		t.Errorf("untrusted peer without a header: r.RemoteAddr %q, want %q", body, dialled.Load())
	}
}

// TestInboundProxyOff: without trusted_cidrs the edge does not look for
// headers: a header reaches TLS as garbage and fails there, uncounted.
func TestInboundProxyOff(t *testing.T) {
	h := &remoteEcho{}
	e := startEnv(t, proxyConfig(nil, false, 0), h, Options{}, nil)
	if _, err := e.prefixClient(false, sendHeader(ppHeader(2, "203.0.113.7:4242")), nil).Get(e.httpsURL("/")); err == nil {
		t.Fatal("a PROXY header was accepted with proxy_protocol off")
	}
	var dialled atomic.Value
	if _, body := get(t, e.prefixClient(false, nil, &dialled), e.httpsURL("/"), nil); body != dialled.Load().(string) {
		t.Errorf("r.RemoteAddr %q, want %q", body, dialled.Load())
	}
	if got := rejected(e, rejectUntrusted) + rejected(e, rejectBad); got != 0 {
		t.Errorf("rejections counted with proxy_protocol off: %v", got)
	}
}

// v2Raw builds a v2 header by hand: signature, version/command, family,
// length, body.
func v2Raw(cmd, fam byte, length uint16, body []byte) []byte {
	b := append([]byte{}, proxyproto.SIGV2...)
	b = append(b, cmd, fam)
	b = binary.BigEndian.AppendUint16(b, length)
	return append(b, body...)
}

// expectClosed reads from c until the server closes it and returns how long
// that took from start. Any byte received, or no close within limit, fails.
func expectClosed(t *testing.T, c net.Conn, start time.Time, limit time.Duration) time.Duration {
	t.Helper()
	_ = c.SetReadDeadline(start.Add(limit))
	n, err := c.Read(make([]byte, 64))
	elapsed := time.Since(start)
	if n > 0 {
		t.Fatalf("received %d bytes, want the connection closed with nothing served", n)
	}
	if isTimeout(err) {
		t.Fatalf("connection still open after %s", elapsed)
	}
	return elapsed
}

func TestInboundProxyBadHeaders(t *testing.T) {
	const headerTimeout = 300 * time.Millisecond
	const margin = time.Second
	good := ppHeader(2, "203.0.113.7:4242")
	udp := ppHeader(2, "203.0.113.7:4242")
	udp.TransportProtocol = proxyproto.UDPv4
	udp.SourceAddr, udp.DestinationAddr = &net.UDPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 1}, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 2}

	for _, require := range []bool{false, true} {
		t.Run(map[bool]string{false: "optional", true: "required"}[require], func(t *testing.T) {
			h := &remoteEcho{}
			e := startEnv(t, proxyConfig([]string{"127.0.0.1/32"}, require, headerTimeout), h, Options{}, nil)
			v2 := headerBytes(t, good)
			tests := []struct {
				name     string
				data     []byte
				holdOpen bool // else the client half-closes after sending
				reason   string
			}{
				{"truncated v2, then EOF", v2[:20], false, rejectBad},
				{"truncated v2 signature, then EOF", v2[:7], false, rejectBad},
				{"truncated v2, held open", v2[:20], true, rejectTimeout},
				{"truncated v2 signature, held open", v2[:7], true, rejectTimeout},
				{"truncated v1, held open", []byte("PROXY TCP4 203.0.113.7 "), true, rejectBad},
				{"v1 signature only, then EOF", []byte("PROX"), false, rejectBad},
				{"garbage after v2 signature", v2Raw(0xff, 0xff, 12, make([]byte, 12)), true, rejectBad},
				{"v2 unknown family", v2Raw(0x21, 0x13, 12, make([]byte, 12)), true, rejectBad},
				{"garbage v1", []byte("PROXY TCP4 203.0.113.x 192.0.2.1 1 2\r\n"), true, rejectBad},
				{"v1 too long", []byte("PROXY TCP4 " + strings.Repeat("1", 120) + "\r\n"), true, rejectBad},
				{"oversized v2 (length 5000, all sent)", v2Raw(0x21, 0x11, 5000, make([]byte, 5000)), true, rejectBad},
				{"v2 length shorter than its addresses", v2Raw(0x21, 0x11, 4, make([]byte, 4)), true, rejectBad},
				{"v2 UDP", headerBytes(t, udp), true, rejectBad},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					before := rejected(e, tt.reason)
					start := time.Now()
					c, err := net.Dial("tcp", e.s.Addr().String())
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					if _, err := c.Write(tt.data); err != nil {
						t.Fatal(err)
					}
					if !tt.holdOpen {
						_ = c.(*net.TCPConn).CloseWrite()
					}
					elapsed := expectClosed(t, c, start, headerTimeout+margin)
					if tt.reason == rejectTimeout && elapsed < headerTimeout {
						t.Errorf("closed after %s, before header_timeout %s", elapsed, headerTimeout)
					}
					eventually(t, 2*time.Second, tt.reason+" counted", func() bool { return rejected(e, tt.reason) == before+1 })
				})
			}
			if n := h.served.Load(); n != 0 {
				t.Errorf("handler ran %d times", n)
			}
			// The listener still serves.
			if _, body := get(t, e.prefixClient(false, sendHeader(good), nil), e.httpsURL("/"), nil); body != "203.0.113.7:4242" {
				t.Errorf("after the bad headers: %q", body)
			}
		})
	}
}

// TestInboundProxyDripFeed: headers arriving a byte at a time are cut off at
// header_timeout, and meanwhile Accept goes on: a good client is served
// before any of the slow connections is closed.
func TestInboundProxyDripFeed(t *testing.T) {
	const headerTimeout = 300 * time.Millisecond
	h := &remoteEcho{}
	e := startEnv(t, proxyConfig([]string{"127.0.0.1/32"}, false, headerTimeout), h, Options{}, nil)
	good := ppHeader(2, "203.0.113.7:4242")
	slow := [][]byte{headerBytes(t, good), headerBytes(t, good), headerBytes(t, ppHeader(1, "203.0.113.8:1"))}

	type dripResult struct {
		closedAt time.Time
		elapsed  time.Duration
		err      error
	}
	results := make(chan dripResult, len(slow))
	firstByte := make(chan struct{}, len(slow))
	var wg sync.WaitGroup
	for _, hdr := range slow {
		start := time.Now() // the server's header_timeout starts after this
		c, err := net.Dial("tcp", e.s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		wg.Go(func() { // writer: one byte per 100ms until stopped
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for i := range hdr {
				if _, err := c.Write(hdr[i : i+1]); err != nil {
					return
				}
				if i == 0 {
					firstByte <- struct{}{}
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		})
		wg.Go(func() { // reader: waits for the server to close
			defer c.Close()
			defer close(stop)
			_ = c.SetReadDeadline(start.Add(headerTimeout + 2*time.Second))
			n, err := c.Read(make([]byte, 16))
			if n > 0 {
				err = errors.New("server sent data")
			} else if isTimeout(err) {
				err = errors.New("still open")
			} else {
				err = nil
			}
			results <- dripResult{closedAt: time.Now(), elapsed: time.Since(start), err: err}
		})
	}
	defer wg.Wait()
	for range slow {
		<-firstByte
	}

	_, body := get(t, e.prefixClient(false, sendHeader(good), nil), e.httpsURL("/"), nil)
	goodDone := time.Now()
	if body != "203.0.113.7:4242" {
		t.Errorf("good client: %q", body)
	}
	for range slow {
		r := <-results
		if r.err != nil {
			t.Fatalf("drip-fed connection: %v", r.err)
		}
		if r.elapsed < headerTimeout || r.elapsed > headerTimeout+time.Second {
			t.Errorf("drip-fed connection closed after %s, want header_timeout %s (+ margin)", r.elapsed, headerTimeout)
		}
		if !goodDone.Before(r.closedAt) {
			t.Errorf("good client served %s after a drip-fed connection was closed: Accept was blocked", goodDone.Sub(r.closedAt))
		}
	}
	eventually(t, 2*time.Second, "timeouts counted", func() bool { return rejected(e, rejectTimeout) == float64(len(slow)) })
	if n := h.served.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1 (the good client)", n)
	}
}

// rawExchange sends prefix and then req on a plain TCP connection and reads
// one response.
func rawExchange(addr string, prefix []byte, req string) (*http.Response, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(append(append([]byte{}, prefix...), req...)); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	return resp, nil
}

func TestInboundProxyRedirectListener(t *testing.T) {
	const req = "GET /x HTTP/1.1\r\nHost: app.example.com\r\n\r\n"
	v1 := headerBytes(t, ppHeader(1, "203.0.113.7:4242"))
	v2 := headerBytes(t, ppHeader(2, "203.0.113.7:4242"))
	tests := []struct {
		name    string
		trusted []string
		require bool
		prefix  []byte
		served  bool
		reason  string
	}{
		{"trusted v1", []string{"127.0.0.1"}, true, v1, true, ""},
		{"trusted v2", []string{"127.0.0.1"}, true, v2, true, ""},
		{"trusted, required, none", []string{"127.0.0.1"}, true, nil, false, rejectMissing},
		{"trusted, optional, none", []string{"127.0.0.1"}, false, nil, true, ""},
		{"trusted, bad header", []string{"127.0.0.1"}, false, v2Raw(0x21, 0x11, 5000, nil), false, rejectBad},
		{"untrusted with header", []string{"10.0.0.0/8"}, false, v1, false, rejectUntrusted},
		{"untrusted without header", []string{"10.0.0.0/8"}, false, nil, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := proxyConfig(tt.trusted, tt.require, 300*time.Millisecond)
			cfg.HTTPRedirectAddress = "127.0.0.1:0"
			e := startEnv(t, cfg, okHandler, Options{}, nil)
			resp, err := rawExchange(e.s.RedirectAddr().String(), tt.prefix, req)
			if tt.served {
				if err != nil || resp.StatusCode != http.StatusPermanentRedirect {
					t.Fatalf("got %v %v, want 308", resp, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %d, want the connection closed", resp.StatusCode)
			}
			eventually(t, 2*time.Second, tt.reason+" counted", func() bool { return rejected(e, tt.reason) == 1 })
		})
	}
}

// TestInboundProxyConnTracking: connections behind a PROXY header are
// tracked, counted and closed by max_connection_duration like any other.
func TestInboundProxyConnTracking(t *testing.T) {
	cfg := proxyConfig([]string{"127.0.0.1"}, true, 0)
	cfg.MaxConnectionDuration = testMaxAge
	e := startEnv(t, cfg, &remoteEcho{}, Options{}, nil)
	c := e.prefixClient(false, sendHeader(ppHeader(2, "203.0.113.7:4242")), nil)
	c.Transport.(*http.Transport).DisableKeepAlives = false

	if _, body := get(t, c, e.httpsURL("/"), nil); body != "203.0.113.7:4242" {
		t.Fatalf("r.RemoteAddr %q", body)
	}
	if got := gauge(e, protoH1); got != 1 {
		t.Fatalf("open h1 connections = %v, want 1", got)
	}
	eventually(t, 3*time.Second, "janitor closes the idle connection", func() bool { return gauge(e, protoH1) == 0 })
	if got := maxClosed(e, protoH1); got != 1 {
		t.Errorf("max_duration_closed_total{h1} = %v, want 1", got)
	}
	if _, body := get(t, c, e.httpsURL("/"), nil); body != "203.0.113.7:4242" {
		t.Fatalf("after reconnecting: r.RemoteAddr %q", body)
	}
}

func TestInboundProxyStartWarnings(t *testing.T) {
	logs, logger := newLogBuffer(t)
	cfg := fastConfig() // HTTP/3 on
	cfg.ProxyProtocol.TrustedCIDRs = []string{"0.0.0.0/0"}
	e := startEnv(t, cfg, okHandler, Options{Logger: logger}, nil)
	out := logs.String()
	for _, want := range []string{"covers TCP only", "trusts every address", "proxy_protocol=true"} {
		if !strings.Contains(out, want) {
			t.Errorf("start log lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "level=WARN") != 2 {
		t.Errorf("want 2 warnings:\n%s", out)
	}
	// HTTP/3 works, and its clients appear with the address UDP shows.
	if resp, body := get(t, e.h3Client(), e.h3URL("/"), nil); resp.StatusCode != 200 || body != "HTTP/3.0" {
		t.Errorf("HTTP/3 with proxy_protocol on: %d %q", resp.StatusCode, body)
	}
}

// fuzzReport is what the server side of FuzzInboundProxyHeader saw on one
// connection.
type fuzzReport struct {
	raw, remote string // the socket peer; what RemoteAddr said
	header      bool   // a PROXY header was accepted
	data        []byte // payload read to EOF
	err         error  // the first error reading the payload
}

// fuzzServer accepts connections through the inbound PROXY stack and
// reports what each one looked like to a consumer of the connection.
func fuzzServer(f *testing.F, require bool) (addr string, reports <-chan fuzzReport) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	m, err := newMetrics(nil)
	if err != nil {
		f.Fatal(err)
	}
	p, err := newInboundPolicy(InboundProxy{TrustedCIDRs: []string{"127.0.0.1"}, Require: require, HeaderTimeout: 2 * time.Second}, m, nil)
	if err != nil {
		f.Fatal(err)
	}
	il := p.listener(ln, "fuzz")
	out := make(chan fuzzReport, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := il.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				ic := c.(*inboundConn)
				// Reset rather than linger in TIME_WAIT: a fuzz run opens
				// tens of thousands of connections.
				_ = ic.w.Conn.(*net.TCPConn).SetLinger(0)
				r := fuzzReport{raw: ic.w.RemoteAddr().String(), remote: c.RemoteAddr().String()}
				r.header = ic.pc.ProxyHeader() != nil
				r.data, r.err = io.ReadAll(io.LimitReader(c, 1<<20))
				out <- r
			})
		}
	})
	f.Cleanup(func() {
		il.Close()
		wg.Wait()
	})
	return ln.Addr().String(), out
}

// FuzzInboundProxyHeader: arbitrary bytes open a connection from a trusted
// peer (header optional or required). Nothing panics; a consumer of the
// connection sees an address other than the socket's only if the bytes start
// with a valid PROXY header naming it; a connection is served either after a
// valid header (with exactly the bytes that follow it) or, when headers are
// optional, with exactly the bytes sent if they do not begin like a header.
func FuzzInboundProxyHeader(f *testing.F) {
	seed := func(b []byte) {
		f.Add(b, false)
		f.Add(b, true)
	}
	v1 := headerBytes(f, ppHeader(1, "203.0.113.7:4242"))
	v1six := headerBytes(f, ppHeader(1, "[2001:db8::7]:4242"))
	v2 := ppHeader(2, "203.0.113.7:4242")
	if err := v2.SetTLVs([]proxyproto.TLV{{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte("app.example.com")}, {Type: 0xE0, Value: []byte("x")}}); err != nil {
		f.Fatal(err)
	}
	v2b := headerBytes(f, v2)
	v2six := headerBytes(f, ppHeader(2, "[2001:db8::7]:4242"))
	local := headerBytes(f, &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC})
	for _, h := range [][]byte{v1, v1six, v2b, v2six, local, []byte("PROXY UNKNOWN\r\n")} {
		seed(h)
		seed(append(append([]byte{}, h...), "GET / HTTP/1.1\r\n\r\n"...))
		for _, cut := range []int{1, 5, 11, 12, 13, 15, 16, len(h) - 1} {
			if cut < len(h) {
				seed(h[:cut])
			}
		}
	}
	seed(nil)
	seed([]byte("\x16\x03\x01\x00\x05hello"))
	seed([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	seed([]byte("POST / HTTP/1.1\r\n\r\n"))
	seed([]byte("\r\n\r\nGET"))
	seed(v2Raw(0x21, 0x11, 5000, make([]byte, 5000)))
	seed(v2Raw(0x21, 0x13, 12, make([]byte, 12)))
	seed(v2Raw(0x21, 0x31, 216, make([]byte, 216)))
	seed(v2Raw(0x20, 0x11, 0, nil))

	optAddr, optReports := fuzzServer(f, false)
	reqAddr, reqReports := fuzzServer(f, true)

	f.Fuzz(func(t *testing.T, in []byte, require bool) {
		if len(in) > 16<<10 {
			in = in[:16<<10]
		}
		addr, reports := optAddr, optReports
		if require {
			addr, reports = reqAddr, reqReports
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.(*net.TCPConn).SetLinger(0)
		_, _ = c.Write(in) // may fail once the server has rejected the header
		_ = c.(*net.TCPConn).CloseWrite()
		var r fuzzReport
		for r.raw != c.LocalAddr().String() {
			select {
			case r = <-reports:
			case <-time.After(10 * time.Second):
				t.Fatal("no report from the server")
			}
		}

		// What go-proxyproto makes of the same bytes read at once.
		src := bytes.NewReader(in)
		br := bufio.NewReaderSize(src, 256)
		hdr, perr := proxyproto.Read(br)
		valid := perr == nil && hdr != nil && validateInboundHeader(hdr) == nil
		rest := in[len(in)-src.Len()-br.Buffered():] // what follows the header

		if r.remote != r.raw {
			if !valid || hdr.Command.IsLocal() || r.remote != hdr.SourceAddr.String() {
				t.Fatalf("forged address %q for %q (reference parse: %v, %v)", r.remote, in, hdr, perr)
			}
		}
		if r.err != nil {
			if len(r.data) > 0 {
				t.Fatalf("rejected connection delivered %q", r.data)
			}
			if !require && !looksLikeHeader(in[:min(len(in), watchPrefix)]) {
				t.Fatalf("optional mode rejected %q, which does not begin like a header: %v", in, r.err)
			}
			return
		}
		switch {
		case r.header:
			if !valid {
				t.Fatalf("served with header for %q, which does not parse (%v)", in, perr)
			}
			if !bytes.Equal(r.data, rest) {
				t.Fatalf("after the header: got %q, want %q", r.data, rest)
			}
			if hdr.Command.IsLocal() != (r.remote == r.raw) {
				t.Fatalf("LOCAL %v but RemoteAddr %q (socket %q)", hdr.Command.IsLocal(), r.remote, r.raw)
			}
		case require:
			t.Fatalf("served without a header in required mode: %q", in)
		default:
			if looksLikeHeader(in[:min(len(in), watchPrefix)]) {
				t.Fatalf("served %q as headerless, but it begins like a header", in)
			}
			if !bytes.Equal(r.data, in) || r.remote != r.raw {
				t.Fatalf("headerless: got %q from %q, want %q from %q", r.data, r.remote, in, r.raw)
			}
		}
	})
}
