package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// The tunnel benchmark, harness side. The clients run here — the real
// tunnel client (tunnel.Client → Connect → Conn.Dial), a bare quic-go
// client of the child's bare relay, and plain TCP — with this process
// pinned to the client CPU and GOMAXPROCS=1; the edge, the bare relay and
// the TCP sink run in the server child on the other CPU. So the child's
// CPU time and memory are the edge side only, and the tunnel and the bare
// relay are compared on the same machine, CPU and sink in the same run.

// Bounds of the tunnel benchmark.
const (
	// streamsPerConn is how many idle streams one tunnel connection carries
	// in the memory measurement: the protocol allows 256 data streams.
	streamsPerConn = 250
	// idleStreamGoal is the target for the edge's memory per idle stream.
	idleStreamGoal = 64 << 10
	// tunnelWarmBytes is the warm-up transfer on each path and direction.
	tunnelWarmBytes = 64 << 20
	// memSettle bounds the wait for the edge to let go of the closed
	// connections and streams after the memory measurement.
	memSettle = 10 * time.Second
)

// The data paths, in the order they are measured and reported.
const (
	pathTunnel = iota
	pathBare
	pathTCP
	numPaths
)

var pathLabels = [numPaths]string{
	"ztna tunnel: `tunnel.Client` → edge (authorized stream) → sink",
	"bare quic-go stream relay → sink",
	"plain TCP → sink",
}

// duplex is what a data path hands the transfer: a byte stream with
// half-close.
type duplex interface {
	io.ReadWriter
	CloseWrite() error
	Close() error
	SetDeadline(time.Time) error
}

// quicDuplex is a bare quic-go stream as a duplex.
type quicDuplex struct{ *quic.Stream }

func (q quicDuplex) CloseWrite() error { return q.Stream.Close() }

func (q quicDuplex) Close() error {
	q.Stream.CancelRead(0)
	return q.Stream.Close()
}

// transfer is one measured transfer through one path.
type transfer struct {
	path      int
	up        bool // client → app
	bytes     int64
	elapsed   time.Duration
	serverCPU time.Duration // the child's (edge or relay, and the sink)
	clientCPU time.Duration // this process's
}

func (t transfer) mibps() float64 { return float64(t.bytes) / (1 << 20) / t.elapsed.Seconds() }

// cpuPerGiB is CPU seconds per GiB moved.
func cpuPerGiB(cpu time.Duration, bytes int64) float64 {
	return cpu.Seconds() / (float64(bytes) / (1 << 30))
}

// streamRate is one streams-per-second run through the tunnel.
type streamRate struct {
	app       string
	pp        bool
	n         int64
	seconds   float64
	serverCPU float64 // seconds
	accepts   int64   // connections the app accepted in the window
	verified  int64   // of those, with the bench user's verified identity
}

func (s streamRate) rate() float64 { return float64(s.n) / s.seconds }

// memFigures is the edge-side memory measurement.
type memFigures struct {
	base, clients, streams, after memResult
	nClients, nStreams, conns     int
	settled                       bool
}

func (m memFigures) perClient() float64 {
	return (float64(m.clients.Bytes) - float64(m.base.Bytes)) / float64(m.nClients)
}

func (m memFigures) perStream() float64 {
	return (float64(m.streams.Bytes) - float64(m.clients.Bytes)) / float64(m.nStreams)
}

// tunnelResult is everything the tunnel benchmark measured.
type tunnelResult struct {
	rounds   [][]transfer // [round], in measuring order
	streams  []streamRate
	mem      *memFigures
	udpNote  string
	udpWarn  bool
	deviceID string
	load     [2]float64
}

// runTunnel measures the client tunnel against the server child ch.
func runTunnel(ctx context.Context, ch *child, o options, idle *idleServer, ticks float64) (*tunnelResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	res := &tunnelResult{load: [2]float64{loadAverage(), -1}}
	res.udpNote, res.udpWarn = udpBufferNote(ch.info.RelayBuffers)
	if res.udpWarn {
		progress("tunnel: WARNING: %s", res.udpNote)
	}

	restore, err := pinSelf(o.clientCPU)
	if err != nil {
		return nil, err
	}
	defer restore()
	progress("tunnel: this harness (the clients) now runs on CPU %d with GOMAXPROCS=1; the edge, the bare relay and the sink on CPU %d",
		o.clientCPU, o.serverCPU)

	tlsConf, err := benchTLS(ch.info.CAFile)
	if err != nil {
		return nil, err
	}
	devTLS := tlsConf.Clone()
	if res.deviceID, err = enrollBenchDevice(ctx, ch, devTLS); err != nil {
		return nil, err
	}
	// QUIC only: the figures are QUIC's, never the HTTP/2 fallback's.
	client := &tunnel.Client{Addr: ch.info.EdgeUDP, Transport: tunnel.TransportQUIC, TLSConfig: devTLS, Version: "bench",
		Token: func(context.Context) (string, error) { return ch.info.Cookie, nil }}
	conn, err := connectTunnel(ctx, client)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if w := conn.Welcome(); w.User != benchSubject || w.Device != res.deviceID {
		return nil, fmt.Errorf("tunnel welcome for user %q device %q, want %q %q", w.User, w.Device, benchSubject, res.deviceID)
	}
	var apps []string
	for _, a := range conn.Apps() {
		apps = append(apps, a.Name)
	}
	for _, want := range []string{sinkApp, tcpApp, tcpPlainApp, idleApp} {
		if !slices.Contains(apps, want) {
			return nil, fmt.Errorf("the tunnel lists apps %v, without %s", apps, want)
		}
	}

	relayTLS := tlsConf.Clone()
	relayTLS.NextProtos = []string{relayALPN}
	dctx, dcancel := context.WithTimeout(ctx, 15*time.Second)
	// The tunnel client's QUIC settings (proxy/tunnel: Client.quicConfig).
	relay, err := quic.DialAddr(dctx, ch.info.Relay, relayTLS, &quic.Config{KeepAlivePeriod: 15 * time.Second,
		MaxIdleTimeout: 60 * time.Second, MaxIncomingStreams: -1, MaxIncomingUniStreams: -1})
	dcancel()
	if err != nil {
		return nil, fmt.Errorf("dial the bare relay: %w", err)
	}
	defer func() { _ = relay.CloseWithError(0, "") }()

	open := [numPaths]func(context.Context) (duplex, error){
		pathTunnel: func(ctx context.Context) (duplex, error) {
			c, err := conn.Dial(ctx, sinkApp)
			if err != nil {
				return nil, err
			}
			// Belt and braces with Transport: the figures must be QUIC's.
			if c.LocalAddr().Network() != "udp" {
				c.Close()
				return nil, fmt.Errorf("the tunnel stream is not on QUIC (local address %s %s)", c.LocalAddr().Network(), c.LocalAddr())
			}
			d, ok := c.(duplex)
			if !ok {
				c.Close()
				return nil, errors.New("the tunnel's net.Conn has no CloseWrite")
			}
			return d, nil
		},
		pathBare: func(ctx context.Context) (duplex, error) {
			s, err := relay.OpenStreamSync(ctx)
			if err != nil {
				return nil, err
			}
			return quicDuplex{s}, nil
		},
		pathTCP: func(ctx context.Context) (duplex, error) {
			c, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", ch.info.Sink)
			if err != nil {
				return nil, err
			}
			return c.(*net.TCPConn), nil
		},
	}

	n := int64(o.tunnelMiB) << 20
	progress("tunnel: warm-up, %d MiB each way on each path", min(n, tunnelWarmBytes)>>20)
	for _, up := range []bool{true, false} {
		for p := range numPaths {
			if _, err := measureTransfer(ctx, ch, open[p], p, up, min(n, tunnelWarmBytes), ticks); err != nil {
				return nil, fmt.Errorf("warm-up, %s: %w", pathName(p), err)
			}
		}
	}
	for r := range o.tunnelRounds {
		var round []transfer
		// Tunnel and bare relay swap places every round, so a drift in
		// what else the machine does favours neither.
		order := []int{pathTunnel, pathBare, pathTCP}
		if r%2 == 1 {
			order = []int{pathBare, pathTunnel, pathTCP}
		}
		for _, up := range []bool{true, false} {
			for _, p := range order {
				t, err := measureTransfer(ctx, ch, open[p], p, up, n, ticks)
				if err != nil {
					return nil, fmt.Errorf("round %d, %s %s: %w", r+1, pathName(p), direction(up), err)
				}
				progress("tunnel round %d/%d  %-8s %-24s %7.0f MiB/s  server CPU %4.2f s/GiB (%3.0f%% busy)  client CPU %4.2f s/GiB (%3.0f%% busy)",
					r+1, o.tunnelRounds, direction(up), pathName(p), t.mibps(),
					cpuPerGiB(t.serverCPU, t.bytes), 100*t.serverCPU.Seconds()/t.elapsed.Seconds(),
					cpuPerGiB(t.clientCPU, t.bytes), 100*t.clientCPU.Seconds()/t.elapsed.Seconds())
				round = append(round, t)
			}
		}
		res.rounds = append(res.rounds, round)
	}

	if o.dialDuration > 0 {
		for _, app := range []string{tcpApp, tcpPlainApp} {
			s, err := measureStreams(ctx, ch, conn, app, o, ticks)
			if err != nil {
				return nil, fmt.Errorf("streams per second to %s: %w", app, err)
			}
			progress("tunnel streams %-16s %7.0f streams/s  server CPU %5.1f µs/stream (%3.0f%% busy)",
				app, s.rate(), s.serverCPU*1e6/float64(s.n), 100*s.serverCPU/s.seconds)
			res.streams = append(res.streams, s)
		}
	}

	if o.tunnelClients > 0 {
		m, err := measureMemory(ctx, ch, client, idle, o)
		if err != nil {
			return nil, fmt.Errorf("memory: %w", err)
		}
		res.mem = m
	}
	res.load[1] = loadAverage()
	return res, nil
}

func pathName(p int) string { return [numPaths]string{"tunnel", "bare relay", "TCP"}[p] }

func direction(up bool) string {
	if up {
		return "upload"
	}
	return "download"
}

// measureTransfer moves n bytes through a new stream of one path and times
// it, from the first byte written to the sink's count (upload) or the last
// byte read (download); opening the stream is not in the time.
func measureTransfer(ctx context.Context, ch *child, open func(context.Context) (duplex, error), p int, up bool, n int64, ticks float64) (transfer, error) {
	t := transfer{path: p, up: up, bytes: n}
	timeout := transferTimeout(n)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := open(ctx)
	if err != nil {
		return t, fmt.Errorf("open: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	s0, err := processCPU(ch.info.PID, ticks)
	if err != nil {
		return t, err
	}
	c0, err := selfCPU()
	if err != nil {
		return t, err
	}
	start := time.Now()
	if up {
		err = upload(c, n)
	} else {
		err = download(c, n)
	}
	t.elapsed = time.Since(start)
	if err != nil {
		return t, err
	}
	s1, err1 := processCPU(ch.info.PID, ticks)
	c1, err2 := selfCPU()
	if err := errors.Join(err1, err2); err != nil {
		return t, err
	}
	t.serverCPU, t.clientCPU = s1-s0, c1-c0
	return t, nil
}

func sinkRequest(c io.Writer, op byte, n int64) error {
	var req [sinkReqLen]byte
	req[0] = op
	binary.BigEndian.PutUint64(req[1:], uint64(n))
	_, err := c.Write(req[:])
	return err
}

// upload sends n bytes and half-closes; the sink must answer with n.
func upload(c duplex, n int64) error {
	if err := sinkRequest(c, sinkUpload, n); err != nil {
		return err
	}
	for left := n; left > 0; {
		m, err := c.Write(pattern[:min(left, int64(len(pattern)))])
		left -= int64(m)
		if err != nil {
			return fmt.Errorf("write with %d bytes left: %w", left, err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	var reply [8]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		return fmt.Errorf("read the sink's count: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(reply[:])); got != n {
		return fmt.Errorf("integrity: the sink counted %d bytes, %d were sent", got, n)
	}
	if m, err := c.Read(reply[:1]); m != 0 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("after the sink's count: want EOF, got %d bytes, %v", m, err)
	}
	return nil
}

// download asks for n bytes and counts what arrives up to the sink's FIN.
func download(c duplex, n int64) error {
	if err := sinkRequest(c, sinkDownload, n); err != nil {
		return err
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	buf := make([]byte, copyBufSize)
	var got int64
	for {
		m, err := c.Read(buf)
		got += int64(m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read after %d of %d bytes: %w", got, n, err)
		}
		if got > n {
			return fmt.Errorf("integrity: more than the %d bytes asked for arrived", n)
		}
	}
	if got != n {
		return fmt.Errorf("integrity: %d bytes arrived, the sink was asked for %d", got, n)
	}
	return nil
}

// measureStreams opens streams to app on conn as fast as o.dialWorkers
// workers can, each a 1-byte echo the app closes, and checks that the app
// accepted exactly as many (with the bench user's identity behind PROXY v2).
func measureStreams(ctx context.Context, ch *child, conn *tunnel.Conn, app string, o options, ticks float64) (streamRate, error) {
	r := streamRate{app: app, pp: app == tcpApp}
	once := func() error {
		sctx, cancel := context.WithTimeout(ctx, dialRoundTripTimeout)
		defer cancel()
		c, err := conn.Dial(sctx, app)
		if err != nil {
			return err
		}
		return echoOnce(c)
	}
	if o.dialWarmup > 0 {
		if _, err := dialLoop(o.dialWarmup, o.dialWorkers, once); err != nil {
			return r, fmt.Errorf("warm-up: %w", err)
		}
	}
	before, err := fetchTunnelCounts(ctx, ch)
	if err != nil {
		return r, err
	}
	cpu0, err := processCPU(ch.info.PID, ticks)
	if err != nil {
		return r, err
	}
	start := time.Now()
	r.n, err = dialLoop(o.dialDuration, o.dialWorkers, once)
	r.seconds = time.Since(start).Seconds()
	if err != nil {
		return r, err
	}
	cpu1, err := processCPU(ch.info.PID, ticks)
	if err != nil {
		return r, err
	}
	r.serverCPU = (cpu1 - cpu0).Seconds()
	after, err := fetchTunnelCounts(ctx, ch)
	if err != nil {
		return r, err
	}
	if r.pp {
		r.accepts, r.verified = after.PPAccepts-before.PPAccepts, after.PPVerified-before.PPVerified
	} else {
		r.accepts = after.PlainAccepts - before.PlainAccepts
	}
	switch {
	case r.n == 0:
		return r, errors.New("no stream completed")
	case r.accepts != r.n:
		return r, fmt.Errorf("the app accepted %d connections, %d streams completed", r.accepts, r.n)
	case r.pp && r.verified != r.n:
		return r, fmt.Errorf("only %d of %d connections carried a verified identity of %s for %s", r.verified, r.n, benchSubject, app)
	}
	return r, nil
}

func fetchTunnelCounts(ctx context.Context, ch *child) (tunnelCounts, error) {
	var c tunnelCounts
	reply, err := ch.command(ctx, "tunnel-counts")
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal([]byte(reply), &c); err != nil {
		return c, fmt.Errorf("tunnel-counts %q: %w", reply, err)
	}
	return c, nil
}

func childMem(ctx context.Context, ch *child) (memResult, error) {
	var m memResult
	reply, err := ch.command(ctx, "tunnel-mem")
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal([]byte(reply), &m); err != nil {
		return m, fmt.Errorf("tunnel-mem %q: %w", reply, err)
	}
	return m, nil
}

// measureMemory connects o.tunnelClients tunnel connections (hello and
// welcome done, no stream), then opens o.tunnelStreams streams on the first
// of them to the idle app in this process, and reads the child's memory
// after GC before, between and after.
func measureMemory(ctx context.Context, ch *child, client *tunnel.Client, idle *idleServer, o options) (*memFigures, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	m := &memFigures{nClients: o.tunnelClients, nStreams: o.tunnelStreams,
		conns: (o.tunnelStreams + streamsPerConn - 1) / streamsPerConn}
	progress("tunnel memory: %d connections, then %d idle streams on %d of them", m.nClients, m.nStreams, m.conns)
	var err error
	if m.base, err = childMem(ctx, ch); err != nil {
		return nil, err
	}

	conns := make([]*tunnel.Conn, m.nClients)
	defer func() {
		var wg sync.WaitGroup
		for _, c := range conns {
			if c != nil {
				wg.Go(func() { _ = c.Close() })
			}
		}
		wg.Wait()
	}()
	if err := parallel(ctx, m.nClients, 8, func(ctx context.Context, i int) error {
		c, err := connectTunnel(ctx, client)
		conns[i] = c
		return err
	}); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if m.clients, err = childMem(ctx, ch); err != nil {
		return nil, err
	}

	streams := make([]net.Conn, m.nStreams)
	defer func() {
		for _, s := range streams {
			if s != nil {
				_ = s.Close()
			}
		}
	}()
	ready0 := idle.ready.Load()
	if err := parallel(ctx, m.nStreams, 8, func(ctx context.Context, i int) error {
		c, err := conns[i/streamsPerConn].Dial(ctx, idleApp)
		if err != nil {
			return err
		}
		streams[i] = c
		// One byte each way, so the edge's copies in both directions
		// have run (and hold whatever they hold while idle).
		_ = c.SetDeadline(time.Now().Add(dialRoundTripTimeout))
		b := [1]byte{'x'}
		if _, err := c.Write(b[:]); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'y' {
			return fmt.Errorf("idle app round trip: %q, %v", b[0], err)
		}
		return c.SetDeadline(time.Time{})
	}); err != nil {
		return nil, fmt.Errorf("open idle streams: %w", err)
	}
	if got := idle.ready.Load() - ready0; got != int64(m.nStreams) {
		return nil, fmt.Errorf("the idle app holds %d connections, %d streams were opened", got, m.nStreams)
	}
	if m.streams, err = childMem(ctx, ch); err != nil {
		return nil, err
	}
	progress("tunnel memory: %.1f KiB per connected client, %.1f KiB per idle stream on the edge", m.perClient()/1024, m.perStream()/1024)

	// Close everything and wait (bounded) for the edge to let go of it.
	for i, s := range streams {
		_ = s.Close()
		streams[i] = nil
	}
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() { _ = c.Close() })
		conns[i] = nil
	}
	wg.Wait()
	deadline := time.Now().Add(memSettle)
	for {
		if m.after, err = childMem(ctx, ch); err != nil {
			return nil, err
		}
		// A few goroutines come and go with the edge's own timers.
		if m.after.Goroutines <= m.base.Goroutines+4 {
			m.settled = true
			break
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return m, nil
}

// parallel runs f for 0..n-1 on workers goroutines; the first error
// cancels the rest and is returned.
func parallel(ctx context.Context, n, workers int, f func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(ctx, i); err != nil {
					cancel(fmt.Errorf("#%d: %w", i, err))
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

func connectTunnel(ctx context.Context, client *tunnel.Client) (*tunnel.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := client.Connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("tunnel connect: %w", err)
	}
	if t := conn.Transport(); t != tunnel.TransportQUIC {
		_ = conn.Close()
		return nil, fmt.Errorf("tunnel connected over %q, not QUIC", t)
	}
	return conn, nil
}

// benchTLS trusts the dev CA that signed the edge (and relay) certificate.
func benchTLS(caFile string) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("dev CA: no certificate")
	}
	return &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13}, nil
}

// enrollBenchDevice makes a device key here, has the child enroll it for
// the bench user (the private key never leaves this process), and adds the
// device certificate to conf.
func enrollBenchDevice(ctx context.Context, ch *child, conf *tls.Config) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	proof, err := posture.SignEnrollProof(key)
	if err != nil {
		return "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", err
	}
	reply, err := ch.command(ctx, "tunnel-enroll "+base64.StdEncoding.EncodeToString(pub)+" "+base64.StdEncoding.EncodeToString(proof))
	if err != nil {
		return "", err
	}
	id, certB64, ok := strings.Cut(reply, " ")
	der, err := base64.StdEncoding.DecodeString(certB64)
	if !ok || err != nil || id == "" {
		return "", fmt.Errorf("tunnel-enroll: unexpected reply (%v)", err)
	}
	conf.Certificates = []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}
	return id, nil
}

// pinSelf moves every thread of this process to cpu and sets GOMAXPROCS=1,
// like the server child; restore undoes both.
func pinSelf(cpu int) (restore func(), err error) {
	cpus, err := allowedCPUs()
	if err != nil {
		return nil, err
	}
	list := make([]string, len(cpus))
	for i, c := range cpus {
		list[i] = strconv.Itoa(c)
	}
	taskset := func(cpus string) error {
		out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(os.Getpid())).CombinedOutput()
		if err != nil {
			return fmt.Errorf("taskset -a -p -c %s: %w: %s", cpus, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := taskset(strconv.Itoa(cpu)); err != nil {
		return nil, err
	}
	prev := runtime.GOMAXPROCS(1)
	return func() {
		runtime.GOMAXPROCS(prev)
		if err := taskset(strings.Join(list, ",")); err != nil {
			progress("restore the CPU affinity: %v", err)
		}
	}, nil
}

// udpBufferNote says what UDP socket buffers QUIC got. quic-go asks for
// 7 MiB on every socket and, as root, forces it past net.core.rmem_max /
// wmem_max; the harness itself changes no sysctl.
func udpBufferNote(relay [2]int) (string, bool) {
	const want = 7 << 20
	read := func(p string) int {
		b, err := os.ReadFile(p)
		if err != nil {
			return -1
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return -1
		}
		return n
	}
	rmem, wmem := read("/proc/sys/net/core/rmem_max"), read("/proc/sys/net/core/wmem_max")
	// Linux reports twice the usable size; quic-go compares that value too.
	got := fmt.Sprintf("the bare relay's socket got SO_RCVBUF %d / SO_SNDBUF %d bytes (as Linux reports them: twice the usable size)", relay[0], relay[1])
	if relay[0] >= want && relay[1] >= want {
		how := "net.core.rmem_max/wmem_max allow it"
		if os.Geteuid() == 0 && (rmem < want || wmem < want) {
			how = fmt.Sprintf("running as root, quic-go forces them (SO_RCVBUFFORCE/SO_SNDBUFFORCE) past net.core.rmem_max %d / wmem_max %d", rmem, wmem)
		}
		return fmt.Sprintf("UDP buffers: quic-go asks for 7 MiB per socket; %s; %s. The harness changes no sysctl.", how, got), false
	}
	return fmt.Sprintf("UDP buffers are smaller than the 7 MiB quic-go asks for (net.core.rmem_max %d, wmem_max %d; %s): QUIC figures may be understated. "+
		"Fix (as root): sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000 (https://github.com/quic-go/quic-go/wiki/UDP-Buffer-Sizes); "+
		"the harness does not change it.", rmem, wmem, got), true
}

// idleServer is a TCP app in this process for the idle-stream measurement:
// it answers one byte with 'y', then holds the connection until the other
// side closes it (bounded), so the edge's memory is measured without the
// app's.
type idleServer struct {
	*appServer
	accepted atomic.Int64
	ready    atomic.Int64 // connections that completed the 1-byte round trip
}

// idleHold bounds how long the idle app keeps a connection.
const idleHold = 5 * time.Minute

func startIdleApp() (*idleServer, error) {
	a := &idleServer{}
	var err error
	a.appServer, err = listenApp(a.handle)
	return a, err
}

func (a *idleServer) handle(c net.Conn) {
	a.accepted.Add(1)
	_ = c.SetDeadline(time.Now().Add(idleHold))
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return
	}
	a.ready.Add(1)
	if _, err := c.Write([]byte{'y'}); err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<20))
}

// reportTunnel prints the tunnel tables and returns the goals not met.
func reportTunnel(w io.Writer, o options, res *tunnelResult) (misses []string) {
	fmt.Fprintf(w, "\n## Client tunnel\n\n")
	if !o.httpBench {
		fmt.Fprintf(w, "Machine: %s.\n", strings.Replace(machine(""), ", wrk,", ",", 1))
	}
	fmt.Fprintf(w, "Placement: the clients (`tunnel.Client`, a bare quic-go client, a TCP client) in the harness on CPU %d, the server child "+
		"(the devenv edge, the bare relay, the sink) on CPU %d, both GOMAXPROCS=1. The bare relay has the edge's certificate and QUIC "+
		"settings (TLS 1.3, no 0-RTT, 257 streams) and relays each stream to the sink with io.Copy both ways (32 KiB buffers), half-close "+
		"kept; the tunnel adds device mTLS, the hello, and per stream the header, session, posture and policy checks, the audit "+
		"events, the live-connection registry and the edge's own copy loop. %s 1-minute load average %.2f before the tunnel runs, %.2f after.\n",
		o.clientCPU, o.serverCPU, res.udpNote, res.load[0], res.load[1])

	// Medians over rounds.
	col := func(f func(r []transfer) float64) float64 {
		var v []float64
		for _, r := range res.rounds {
			v = append(v, f(r))
		}
		return median(v)
	}
	find := func(r []transfer, p int, up bool) transfer {
		for _, t := range r {
			if t.path == p && t.up == up {
				return t
			}
		}
		return transfer{}
	}
	rate := func(p int, up bool) float64 { return col(func(r []transfer) float64 { return find(r, p, up).mibps() }) }
	scpu := func(p int, up bool) float64 {
		return col(func(r []transfer) float64 { t := find(r, p, up); return cpuPerGiB(t.serverCPU, t.bytes) })
	}
	ccpu := func(p int, up bool) float64 {
		return col(func(r []transfer) float64 { t := find(r, p, up); return cpuPerGiB(t.clientCPU, t.bytes) })
	}
	ratio := func(a, b int, up bool) float64 {
		return col(func(r []transfer) float64 { return find(r, a, up).mibps() / find(r, b, up).mibps() })
	}
	cpuRatio := func(a, b int, up bool) float64 {
		return col(func(r []transfer) float64 {
			ta, tb := find(r, a, up), find(r, b, up)
			return cpuPerGiB(tb.serverCPU, tb.bytes) / cpuPerGiB(ta.serverCPU, ta.bytes)
		})
	}

	fmt.Fprintf(w, "\n%d MiB through one stream, each way, %d round(s), median; upload = client → app, download = app → client. "+
		"The sink (`%s`, a plain TCP app without a PROXY header) counts every byte of an upload and the client every byte of a download; "+
		"a count that differs fails the run.\n\n", o.tunnelMiB, o.tunnelRounds, sinkApp)
	fmt.Fprintln(w, "| path | upload MiB/s | download MiB/s | server CPU s/GiB up / down | client CPU s/GiB up / down |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|")
	for p := range numPaths {
		fmt.Fprintf(w, "| %s | %s | %s | %.2f / %.2f | %.2f / %.2f |\n", pathLabels[p], thousands(rate(p, true)), thousands(rate(p, false)),
			scpu(p, true), scpu(p, false), ccpu(p, true), ccpu(p, false))
	}
	fmt.Fprintf(w, "\nTunnel ÷ bare relay: upload %.2f, download %.2f (by server CPU per byte: %.2f, %.2f). "+
		"Tunnel ÷ plain TCP: upload %.2f, download %.2f.\n",
		ratio(pathTunnel, pathBare, true), ratio(pathTunnel, pathBare, false),
		cpuRatio(pathTunnel, pathBare, true), cpuRatio(pathTunnel, pathBare, false),
		ratio(pathTunnel, pathTCP, true), ratio(pathTunnel, pathTCP, false))
	fmt.Fprintln(w, "\nPer round (MiB/s tunnel / bare relay / TCP → tunnel ÷ bare):")
	for i, r := range res.rounds {
		line := func(up bool) string {
			return fmt.Sprintf("%s / %s / %s → %.2f", thousands(find(r, pathTunnel, up).mibps()), thousands(find(r, pathBare, up).mibps()),
				thousands(find(r, pathTCP, up).mibps()), find(r, pathTunnel, up).mibps()/find(r, pathBare, up).mibps())
		}
		fmt.Fprintf(w, "- round %d: upload %s; download %s\n", i+1, line(true), line(false))
	}
	for p := range numPaths {
		for _, up := range []bool{true, false} {
			sb := col(func(r []transfer) float64 { t := find(r, p, up); return t.serverCPU.Seconds() / t.elapsed.Seconds() })
			cb := col(func(r []transfer) float64 { t := find(r, p, up); return t.clientCPU.Seconds() / t.elapsed.Seconds() })
			if sb < 0.9 && cb < 0.9 {
				fmt.Fprintf(w, "Note: neither side was CPU-bound on %s %s (server %.0f %%, client %.0f %% busy): other processes competed "+
					"for the CPUs, or something else limited it; MiB/s there understate the path (CPU s/GiB is less affected).\n",
					pathName(p), direction(up), 100*sb, 100*cb)
			}
		}
	}

	if len(res.streams) > 0 {
		fmt.Fprintf(w, "\nStreams through one tunnel connection: %d workers in the harness, %s after a %s warm-up each; every stream is "+
			"`Conn.Dial` (header, session, posture and policy check, the edge dials the app, reply) + 1-byte echo + close (the app closes "+
			"first). Server CPU is the child's: the edge and the echo app.\n\n", o.dialWorkers, o.dialDuration, o.dialWarmup)
		fmt.Fprintln(w, "| tunnel stream to | streams/s | server CPU µs/stream | checked at the app |")
		fmt.Fprintln(w, "|---|---:|---:|---|")
		for _, s := range res.streams {
			label, check := "`"+s.app+"` (no PROXY header)", fmt.Sprintf("%d of %d accepted", s.accepts, s.n)
			if s.pp {
				label = "`" + s.app + "` (proxy_protocol v2, identity verified by the app)"
				check += fmt.Sprintf(", %d with a verified identity of %s", s.verified, benchSubject)
			}
			fmt.Fprintf(w, "| %s | %s | %.1f | %s |\n", label, thousands(s.rate()), s.serverCPU*1e6/float64(s.n), check)
		}
		for _, s := range res.streams {
			if busy := s.serverCPU / s.seconds; busy < 0.9 {
				fmt.Fprintf(w, "Note: the server child used only %.0f %% of its CPU during the streams to %s: the clients, or other "+
					"processes, limited it; streams/s there understate the edge (CPU µs/stream is less affected).\n", 100*busy, s.app)
			}
		}
	}

	if m := res.mem; m != nil {
		fmt.Fprintf(w, "\nMemory on the edge's process (the server child): HeapInuse + StackInuse after GC, the difference ÷ the count. "+
			"The idle streams go to a TCP app in the harness process (`%s`, no PROXY header), so the app's memory is not counted; "+
			"each stream made a 1-byte round trip first, so both of the edge's copy directions have run.\n\n", idleApp)
		fmt.Fprintln(w, "| on the edge | count | KiB each | goroutines each |")
		fmt.Fprintln(w, "|---|---:|---:|---:|")
		fmt.Fprintf(w, "| connected client (QUIC, TLS 1.3 with the device certificate, hello/welcome, no stream) | %s | %.1f | %.1f |\n",
			thousands(float64(m.nClients)), m.perClient()/1024, float64(m.clients.Goroutines-m.base.Goroutines)/float64(m.nClients))
		fmt.Fprintf(w, "| idle stream (%d per connection, on %d connection(s)) | %s | %.1f | %.1f |\n",
			min(streamsPerConn, m.nStreams), m.conns, thousands(float64(m.nStreams)), m.perStream()/1024,
			float64(m.streams.Goroutines-m.clients.Goroutines)/float64(m.nStreams))
		fmt.Fprintf(w, "\nBefore: %.1f MiB, %d goroutines; with the clients: %.1f MiB; with the streams: %.1f MiB, %d goroutines; "+
			"after closing all: %.1f MiB, %d goroutines.\n",
			mib(m.base.Bytes), m.base.Goroutines, mib(m.clients.Bytes), mib(m.streams.Bytes), m.streams.Goroutines,
			mib(m.after.Bytes), m.after.Goroutines)
		if !m.settled {
			fmt.Fprintf(w, "WARNING: %s after closing every connection the edge still had %d goroutines (%d before): "+
				"something holds closed tunnel connections or streams.\n", memSettle, m.after.Goroutines, m.base.Goroutines)
		}
	}

	verdict := func(ok bool) string {
		if ok {
			return "MET"
		}
		return "NOT MET"
	}
	up, down := ratio(pathTunnel, pathBare, true), ratio(pathTunnel, pathBare, false)
	ok := up >= o.tunnelTarget && down >= o.tunnelTarget
	fmt.Fprintf(w, "\nGoal (tunnel ≥ %.2f × the bare quic-go relay in the same run, each direction): %s — upload %.2f, download %.2f.\n",
		o.tunnelTarget, verdict(ok), up, down)
	if !ok {
		misses = append(misses, fmt.Sprintf("the tunnel is %.2f (upload) / %.2f (download) of the bare relay, the goal is ≥ %.2f", up, down, o.tunnelTarget))
	}
	if m := res.mem; m != nil && m.nStreams > 0 {
		ok := m.perStream() <= idleStreamGoal
		fmt.Fprintf(w, "Goal (≤ %d KiB per idle stream on the edge): %s — %.1f KiB.\n", idleStreamGoal>>10, verdict(ok), m.perStream()/1024)
		if !ok {
			misses = append(misses, fmt.Sprintf("an idle tunnel stream costs the edge %.1f KiB, the goal is ≤ %d KiB", m.perStream()/1024, idleStreamGoal>>10))
		}
	}
	return misses
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
