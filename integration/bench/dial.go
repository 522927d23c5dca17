package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/proxy"
	"github.com/ztna-dev/ztna/proxy/identity"
)

// The new-connection measurement runs inside the server child, so the
// dialers' CPU lands on the child's CPU with the edge and the apps: what a
// tunnel opening TCP streams costs the edge host, with and without the
// PROXY v2 identity (header built and written by the edge, read and its
// ES256 signature verified by the app).

// dialRoundTripTimeout bounds each connection: dial, echo and close.
const dialRoundTripTimeout = 5 * time.Second

// tunnelClient stands for the tunnel client's address in the PROXY header.
var tunnelClient = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}

// dialResult is the reply to dial-rate.
type dialResult struct {
	Mode       string  `json:"mode"`
	Conns      int64   `json:"conns"`       // connections completed in the measured window
	Seconds    float64 `json:"seconds"`     // the measured window
	CPUSeconds float64 `json:"cpu_seconds"` // the child's user+system time in it
	Accepts    int64   `json:"accepts"`     // connections the echo app accepted in it
	Verified   int64   `json:"verified"`    // of those, with the bench user's verified identity
}

func (r dialResult) rate() float64       { return float64(r.Conns) / r.Seconds }
func (r dialResult) cpuPerConn() float64 { return r.CPUSeconds * 1e6 / float64(r.Conns) }

// echoServer answers one byte with the same byte, then closes: the app
// closes first, so TIME_WAIT stays on its side and the dialers never run
// out of ephemeral ports.
type echoServer struct {
	*appServer
	app      string // the audience it expects, for PROXY v2
	accepts  atomic.Int64
	verified atomic.Int64
}

func newEchoServer(ln net.Listener, app string) *echoServer {
	s := &echoServer{app: app}
	s.appServer = serveApp(ln, s.handle)
	return s
}

func (s *echoServer) handle(c net.Conn) {
	s.accepts.Add(1)
	_ = c.SetDeadline(time.Now().Add(dialRoundTripTimeout))
	if pc, ok := c.(*identity.Conn); ok {
		claims, err := pc.Identity()
		if err != nil {
			return
		}
		if claims.Subject == benchSubject && claims.Audience == s.app {
			s.verified.Add(1)
		}
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return
	}
	_, _ = c.Write(b[:])
}

// dialBench holds both echo apps and what Edge.DialTCP needs.
type dialBench struct {
	plain, pp *echoServer
	ppAddr    string
	dialer    *net.Dialer

	// Set once after login, before the first command.
	edge  *proxy.Edge
	sess  *authn.Session
	local *net.TCPAddr
}

func startDialBench(v *identity.Verifier, logger *slog.Logger) (*dialBench, error) {
	plainLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ppRaw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		plainLn.Close()
		return nil, err
	}
	ppLn, err := identity.NewListener(ppRaw, identity.ListenerConfig{Verifier: v, Logger: logger, TrustedPeers: loopback})
	if err != nil {
		plainLn.Close()
		ppRaw.Close()
		return nil, err
	}
	d := &dialBench{
		plain:  newEchoServer(plainLn, ""),
		pp:     newEchoServer(ppLn, tcpApp),
		ppAddr: ppRaw.Addr().String(),
		// The settings of the edge's own upstream dialer.
		dialer: &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second},
	}
	return d, nil
}

func (d *dialBench) close() {
	d.plain.close()
	d.pp.close()
}

// command runs "MODE WARMUP DURATION WORKERS".
func (d *dialBench) command(arg string) (dialResult, error) {
	f := strings.Fields(arg)
	if len(f) != 4 {
		return dialResult{}, errors.New("usage: dial-rate plain|pp WARMUP DURATION WORKERS")
	}
	warmup, err1 := time.ParseDuration(f[1])
	dur, err2 := time.ParseDuration(f[2])
	workers, err3 := strconv.Atoi(f[3])
	if err := errors.Join(err1, err2, err3); err != nil {
		return dialResult{}, err
	}
	if warmup < 0 || dur <= 0 || dur > time.Minute || workers < 1 || workers > 64 {
		return dialResult{}, errors.New("dial-rate: out of range")
	}
	if d.edge == nil {
		return dialResult{}, errors.New("dial-rate: no session yet")
	}
	var srv *echoServer
	var dial func(context.Context) (net.Conn, error)
	switch f[0] {
	case "plain":
		srv = d.plain
		addr := d.plain.ln.Addr().String()
		dial = func(ctx context.Context) (net.Conn, error) { return d.dialer.DialContext(ctx, "tcp", addr) }
	case "pp":
		srv = d.pp
		dial = func(ctx context.Context) (net.Conn, error) {
			return d.edge.DialTCP(ctx, tcpApp, d.sess, "", tunnelClient, d.local)
		}
	default:
		return dialResult{}, fmt.Errorf("dial-rate: unknown mode %q", f[0])
	}
	once := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), dialRoundTripTimeout)
		defer cancel()
		c, err := dial(ctx)
		if err != nil {
			return err
		}
		return echoOnce(c)
	}
	if warmup > 0 {
		if _, err := dialLoop(warmup, workers, once); err != nil {
			return dialResult{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	a0, v0 := srv.accepts.Load(), srv.verified.Load()
	cpu0, err := selfCPU()
	if err != nil {
		return dialResult{}, err
	}
	t0 := time.Now()
	n, err := dialLoop(dur, workers, once)
	elapsed := time.Since(t0)
	cpu1, cerr := selfCPU()
	if err = errors.Join(err, cerr); err != nil {
		return dialResult{}, err
	}
	return dialResult{Mode: f[0], Conns: n, Seconds: elapsed.Seconds(), CPUSeconds: (cpu1 - cpu0).Seconds(),
		Accepts: srv.accepts.Load() - a0, Verified: srv.verified.Load() - v0}, nil
}

// echoOnce sends a byte, reads it back, waits for the app to close, and
// closes. It always closes c.
func echoOnce(c net.Conn) error {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(dialRoundTripTimeout))
	b := [1]byte{'x'}
	if _, err := c.Write(b[:]); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if b[0] != 'x' {
		return fmt.Errorf("echo: got %q", b[0])
	}
	if n, err := c.Read(b[:]); n != 0 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("echo: want the app to close, got %d bytes, %v", n, err)
	}
	return nil
}

// dialLoop runs once on workers goroutines until d has passed (a round trip
// under way then finishes), and returns how many completed; the first error
// stops all.
func dialLoop(d time.Duration, workers int, once func() error) (int64, error) {
	deadline := time.Now().Add(d)
	var n atomic.Int64
	var failed atomic.Bool
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for !failed.Load() && time.Now().Before(deadline) {
				if err := once(); err != nil {
					errOnce.Do(func() { firstErr = err })
					failed.Store(true)
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return n.Load(), firstErr
}

// selfCPU is this process's user+system time, all threads.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
