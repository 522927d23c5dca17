package edge

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testCert is a self-signed certificate for 127.0.0.1 and localhost.
type testCert struct {
	cert tls.Certificate
	pool *x509.CertPool
}

var (
	certOnce sync.Once
	certVal  testCert
)

func newTestCert(t *testing.T) testCert {
	t.Helper()
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "edge test"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
			DNSNames:              []string{"localhost"},
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		certVal.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
		certVal.pool = x509.NewCertPool()
		certVal.pool.AddCert(leaf)
	})
	return certVal
}

// testEnv is a started Server with its registry and clients.
type testEnv struct {
	t   *testing.T
	s   *Server
	reg *prometheus.Registry
	tc  testCert
}

// fastConfig is a loopback config whose drain does not slow tests down.
func fastConfig() Config {
	return Config{
		Address:      "127.0.0.1:0",
		AdminAddress: "127.0.0.1:0",
		DrainDelay:   10 * time.Millisecond,
		GraceTimeout: 2 * time.Second,
	}
}

func startEnv(t *testing.T, cfg Config, h http.Handler, opts Options, tweak func(*Server)) *testEnv {
	t.Helper()
	tc := newTestCert(t)
	reg := prometheus.NewRegistry()
	opts.Handler = h
	if opts.TLSConfig == nil {
		opts.TLSConfig = &tls.Config{}
	}
	opts.TLSConfig.Certificates = []tls.Certificate{tc.cert}
	opts.Registerer = reg
	opts.Metrics = reg
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	s, err := New(cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if tweak != nil {
		tweak(s)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return &testEnv{t: t, s: s, reg: reg, tc: tc}
}

// testWriter sends log lines to t.Log, and drops them once the test is over
// (late lines from closing goroutines would panic otherwise).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	defer func() { _ = recover() }()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func (e *testEnv) httpsURL(path string) string { return "https://" + e.s.Addr().String() + path }
func (e *testEnv) h3URL(path string) string    { return "https://" + e.s.UDPAddr().String() + path }
func (e *testEnv) adminURL(path string) string { return "http://" + e.s.AdminAddr().String() + path }

// tcpClient is an HTTPS client speaking only h1 or only h2.
func (e *testEnv) tcpClient(h2 bool) *http.Client {
	var p http.Protocols
	if h2 {
		p.SetHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.tc.pool},
		Protocols:       &p,
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func (e *testEnv) h3Client() *http.Client {
	tr := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: e.tc.pool}}
	e.t.Cleanup(func() { _ = tr.Close() })
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// connWatch counts a client's dials and reports when the client itself
// closes a connection, so a test can wait until the client has noticed a
// server-side close instead of racing it.
type connWatch struct {
	dials  atomic.Int32
	closed chan struct{}
}

func newConnWatch() *connWatch { return &connWatch{closed: make(chan struct{}, 16)} }

type watchedConn struct {
	net.Conn
	once sync.Once
	w    *connWatch
}

func (c *watchedConn) Close() error {
	c.once.Do(func() { c.w.closed <- struct{}{} })
	return c.Conn.Close()
}

// watchedClient is like tcpClient (proto h1, h2) or h3Client (h3), with w
// watching its connections.
func (e *testEnv) watchedClient(proto string, w *connWatch) *http.Client {
	if proto == protoH3 {
		tr := &http3.Transport{
			TLSClientConfig: &tls.Config{RootCAs: e.tc.pool},
			Dial: func(ctx context.Context, addr string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
				w.dials.Add(1)
				c, err := quic.DialAddrEarly(ctx, addr, tlsCfg, cfg)
				if err == nil {
					context.AfterFunc(c.Context(), func() { w.closed <- struct{}{} })
				}
				return c, err
			},
		}
		e.t.Cleanup(func() { _ = tr.Close() })
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	c := e.tcpClient(proto == protoH2)
	tr := c.Transport.(*http.Transport)
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		w.dials.Add(1)
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &watchedConn{Conn: conn, w: w}, nil
	}
	return c
}

// dialCounter counts new connections a client opens (TCP or QUIC).
type dialCounter struct{ n atomic.Int32 }

func (d *dialCounter) ctx(ctx context.Context) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		ConnectStart: func(string, string) { d.n.Add(1) },
	})
}

// get does a GET and returns the response with its body read.
func get(t *testing.T, c *http.Client, url string, dc *dialCounter) (*http.Response, string) {
	t.Helper()
	ctx := context.Background()
	if dc != nil {
		ctx = dc.ctx(ctx)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp, string(body)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func gauge(e *testEnv, proto string) float64 {
	return metricValue(e.t, e.s.metrics.open.WithLabelValues(proto))
}

func maxClosed(e *testEnv, proto string) float64 {
	return metricValue(e.t, e.s.metrics.maxClosed.WithLabelValues(proto))
}

func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		t.Fatal(err)
	}
	if out.Gauge != nil {
		return out.Gauge.GetValue()
	}
	return out.Counter.GetValue()
}

// okHandler answers with the protocol it was reached over.
var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_, _ = io.WriteString(w, r.Proto)
})
