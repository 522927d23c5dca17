package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/proxy"
)

// The server child's side of the tunnel benchmark: the TCP sink/source that
// the tunnel, the bare relay and plain TCP all reach, the bare quic-go
// stream relay, and the commands the harness sends about them. The edge
// itself is the devenv edge the child already runs; the tunnel clients are
// in the harness process (tunnel.go), so the child's CPU time and memory
// are the edge side only.

// The tunnel apps declared on the edge for the benchmark.
const (
	// sinkApp is the byte sink/source, without a PROXY header (the bare
	// relay and plain TCP reach the same port, and they send none).
	sinkApp = "bench-sink"
	// tcpPlainApp is dial.go's plain one-byte echo, reached through the
	// tunnel; tcpApp is the same behind PROXY v2 with a verified identity.
	tcpPlainApp = "bench-tcp-plain"
	// idleApp is a TCP app in the harness process that holds streams open
	// (the idle-stream memory measurement); its address comes from the
	// harness with -tunnel-idle-app.
	idleApp = "bench-idle"
)

// relayALPN is the bare relay's TLS application protocol.
const relayALPN = "ztna-bench-relay"

// The sink's request: one op byte and a big-endian uint64 byte count.
const (
	sinkUpload   = 'U' // the client sends n bytes and closes its side; the sink answers with the count it read (8 bytes)
	sinkDownload = 'D' // the sink sends n bytes and closes
	sinkReqLen   = 9
	// sinkMaxBytes bounds one transfer (the harness allows at most 16 GiB).
	sinkMaxBytes = 16 << 30
)

// transferTimeout bounds one transfer of n bytes: 30 s plus n at 8 MiB/s,
// far below anything loopback does, so only a stuck transfer hits it.
func transferTimeout(n int64) time.Duration {
	return 30*time.Second + time.Duration(n/(8<<20))*time.Second
}

// copyBufSize is the read/write size of the sink and the harness's clients.
const copyBufSize = 64 << 10

// pattern is what the sink and the clients send: not zeros, so nothing on
// the way could make it cheaper than real data.
var pattern = func() []byte {
	b := make([]byte, copyBufSize)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}()

// sinkServer is the TCP app every data path ends at.
type sinkServer struct {
	*appServer
	conns atomic.Int64 // transfers served
	in    atomic.Int64 // bytes read from clients (uploads)
	out   atomic.Int64 // bytes written to clients (downloads)
}

func startSink() (*sinkServer, error) {
	s := &sinkServer{}
	var err error
	s.appServer, err = listenApp(s.handle)
	return s, err
}

func (s *sinkServer) handle(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var req [sinkReqLen]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return
	}
	n := int64(binary.BigEndian.Uint64(req[1:]))
	if n < 0 || n > sinkMaxBytes {
		return
	}
	s.conns.Add(1)
	_ = c.SetDeadline(time.Now().Add(transferTimeout(n)))
	buf := make([]byte, copyBufSize)
	switch req[0] {
	case sinkUpload:
		// Everything up to the client's FIN counts, so a client that sent
		// more or less than it announced is caught by the count it gets.
		var got int64
		for {
			m, err := c.Read(buf)
			got += int64(m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return
			}
		}
		s.in.Add(got)
		var reply [8]byte
		binary.BigEndian.PutUint64(reply[:], uint64(got))
		_, _ = c.Write(reply[:])
	case sinkDownload:
		for left := n; left > 0; {
			m, err := c.Write(pattern[:min(left, int64(len(pattern)))])
			left -= int64(m)
			s.out.Add(int64(m))
			if err != nil {
				return
			}
		}
		// Half-close, then wait for the client's FIN, so the close is
		// never a reset that could cut the tail of the data.
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<20))
	}
}

// bareRelay is the baseline the tunnel is compared with: a quic-go server
// with the edge's certificate and QUIC settings (TLS 1.3, no 0-RTT, 257
// streams) and no authentication, no protocol, no authorization: each
// stream is relayed to the sink with io.Copy both ways, half-close kept:
// the least a relay of this shape can do.
type bareRelay struct {
	udp      *net.UDPConn
	ln       *quic.Listener
	sinkAddr string
	dialer   *net.Dialer
	rcvBuf   int // the UDP socket's buffers after quic-go raised them
	sndBuf   int

	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[*quic.Conn]struct{}
}

func startRelay(cert tls.Certificate, sinkAddr string) (*bareRelay, error) {
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{relayALPN}}
	ln, err := quic.Listen(udp, tlsConf, &quic.Config{Allow0RTT: false, MaxIncomingStreams: 256 + 1})
	if err != nil {
		_ = udp.Close()
		return nil, err
	}
	r := &bareRelay{udp: udp, ln: ln, sinkAddr: sinkAddr, conns: map[*quic.Conn]struct{}{},
		// The settings of the edge's upstream dialer (see dial.go).
		dialer: &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}}
	r.rcvBuf, r.sndBuf = udpBuffers(udp)
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

// udpBuffers reads SO_RCVBUF and SO_SNDBUF (Linux reports twice the usable
// size); 0 when unknown.
func udpBuffers(c *net.UDPConn) (rcv, snd int) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0
	}
	_ = raw.Control(func(fd uintptr) {
		rcv, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		snd, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
	})
	return rcv, snd
}

func (r *bareRelay) addr() string { return r.udp.LocalAddr().String() }

func (r *bareRelay) serve() {
	defer r.wg.Done()
	for {
		qc, err := r.ln.Accept(context.Background())
		if err != nil {
			return // closed
		}
		r.mu.Lock()
		r.conns[qc] = struct{}{}
		r.mu.Unlock()
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.serveConn(qc)
			r.mu.Lock()
			delete(r.conns, qc)
			r.mu.Unlock()
		}()
	}
}

func (r *bareRelay) serveConn(qc *quic.Conn) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		s, err := qc.AcceptStream(context.Background())
		if err != nil {
			return
		}
		wg.Go(func() { r.relay(s) })
	}
}

func (r *bareRelay) relay(s *quic.Stream) {
	ctx, cancel := context.WithTimeout(context.Background(), r.dialer.Timeout)
	up, err := r.dialer.DialContext(ctx, "tcp", r.sinkAddr)
	cancel()
	if err != nil {
		s.CancelRead(1)
		s.CancelWrite(1)
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(up, s)
		_ = up.(*net.TCPConn).CloseWrite()
		done <- struct{}{}
	}()
	go func() {
		if _, err := io.Copy(s, up); err != nil {
			s.CancelWrite(1)
		} else {
			_ = s.Close()
		}
		done <- struct{}{}
	}()
	<-done
	<-done
}

func (r *bareRelay) close() {
	_ = r.ln.Close()
	r.mu.Lock()
	for qc := range r.conns {
		_ = qc.CloseWithError(0, "bench over")
	}
	r.mu.Unlock()
	r.wg.Wait()
	_ = r.udp.Close()
}

// tunnelSide is what the child runs for the tunnel benchmark.
type tunnelSide struct {
	sink  *sinkServer
	relay *bareRelay // set once the edge's certificate is loaded
	dials *dialBench // the echo apps (tcpApp, tcpPlainApp)
	edge  *proxy.Edge
}

// apps are the benchmark's tunnel apps, open to the bench group by rules.
func (t *tunnelSide) apps(rules []groups.Rule, idleAddr string) []proxy.AppConfig {
	out := []proxy.AppConfig{
		{Name: sinkApp, TCP: t.sink.addr()},
		{Name: tcpPlainApp, TCP: t.dials.plain.ln.Addr().String()},
	}
	if idleAddr != "" {
		out = append(out, proxy.AppConfig{Name: idleApp, TCP: idleAddr})
	}
	for i := range out {
		out[i].Rules = rules
	}
	return out
}

func (t *tunnelSide) close() {
	if t.relay != nil {
		t.relay.close()
	}
	t.sink.close()
}

// memResult is the reply to tunnel-mem: what the process holds after GC.
type memResult struct {
	Bytes      uint64 `json:"bytes"` // HeapInuse + StackInuse
	Goroutines int    `json:"goroutines"`
}

func memNow() memResult {
	// Twice: the first cycle's finalizers and sweeps can free more.
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memResult{Bytes: ms.HeapInuse + ms.StackInuse, Goroutines: runtime.NumGoroutine()}
}

// tunnelCounts is the reply to tunnel-counts.
type tunnelCounts struct {
	SinkConns    int64 `json:"sink_conns"`
	SinkIn       int64 `json:"sink_in"`
	SinkOut      int64 `json:"sink_out"`
	PlainAccepts int64 `json:"plain_accepts"` // tcpPlainApp's echo
	PPAccepts    int64 `json:"pp_accepts"`    // tcpApp's echo
	PPVerified   int64 `json:"pp_verified"`   // of those, with the bench user's verified identity
}

// command answers the tunnel benchmark's commands:
//
//	tunnel-enroll PUB PROOF  enroll a device for the bench user; PUB is the
//	                         base64 PKIX public key, PROOF the enrollment
//	                         proof; replies "ID CERT" (base64 DER)
//	tunnel-mem               memResult after GC
//	tunnel-counts            tunnelCounts
func (t *tunnelSide) command(cmd, arg string) (string, error) {
	switch cmd {
	case "tunnel-enroll":
		f := strings.Fields(arg)
		if len(f) != 2 {
			return "", errors.New("usage: tunnel-enroll PUB PROOF")
		}
		der, err1 := base64.StdEncoding.DecodeString(f[0])
		proof, err2 := base64.StdEncoding.DecodeString(f[1])
		if err := errors.Join(err1, err2); err != nil {
			return "", err
		}
		k, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			return "", err
		}
		pub, ok := k.(*ecdsa.PublicKey)
		if !ok {
			return "", errors.New("tunnel-enroll: not an ECDSA key")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		dev, cert, err := t.edge.Devices().EnrollFor(ctx, benchSubject, pub, "bench client", runtime.GOOS, proof, time.Now())
		if err != nil {
			return "", fmt.Errorf("enroll: %w", err)
		}
		return dev.ID + " " + base64.StdEncoding.EncodeToString(cert), nil
	case "tunnel-mem":
		b, err := json.Marshal(memNow())
		return string(b), err
	case "tunnel-counts":
		b, err := json.Marshal(tunnelCounts{
			SinkConns: t.sink.conns.Load(), SinkIn: t.sink.in.Load(), SinkOut: t.sink.out.Load(),
			PlainAccepts: t.dials.plain.accepts.Load(), PPAccepts: t.dials.pp.accepts.Load(), PPVerified: t.dials.pp.verified.Load(),
		})
		return string(b), err
	}
	return "", fmt.Errorf("unknown command %q", cmd)
}

// checkIdleAddr accepts only a loopback host:port for -tunnel-idle-app.
func checkIdleAddr(addr string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" || port == "0" {
		return fmt.Errorf("-tunnel-idle-app %q: want 127.0.0.1:PORT", addr)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-tunnel-idle-app %q: only loopback", addr)
	}
	return nil
}
