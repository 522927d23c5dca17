package devenv

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ztna-dev/ztna/proxy/identity"
)

// Limits of the echo demo: it is a demo, not a relay for arbitrary data.
const (
	echoIdle     = 5 * time.Minute
	echoMaxLine  = 64 << 10
	echoMaxConns = 256
)

// startEcho serves the TCP echo demo app on a loopback port behind PROXY
// v2: it greets each connection with the identity the edge signed for it,
// then echoes lines back.
func startEcho(v *identity.Verifier, logger *slog.Logger) (addr string, stop func(context.Context) error, err error) {
	pln, err := listenBehindEdge(v, logger)
	if err != nil {
		return "", nil, err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := pln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if len(conns) >= echoMaxConns {
				mu.Unlock()
				c.Close()
				continue
			}
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { mu.Lock(); delete(conns, c); mu.Unlock() }()
				serveEcho(c, logger)
			}()
		}
	}()
	stop = func(context.Context) error {
		err := pln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
		return err
	}
	return pln.Addr().String(), stop, nil
}

func serveEcho(c net.Conn, logger *slog.Logger) {
	defer c.Close()
	pc, ok := c.(*identity.Conn)
	if !ok {
		return
	}
	claims, err := pc.Identity()
	if err != nil {
		logger.Info("echo: connection refused", "err", err)
		return
	}
	_ = c.SetDeadline(time.Now().Add(echoIdle))
	if _, err := fmt.Fprintf(c, "hello %s (%s), groups %v, verified by the edge for app %q, from %s\n",
		claims.Email, claims.Subject, claims.Groups, claims.Audience, pc.ClientAddr()); err != nil {
		return
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), echoMaxLine)
	for sc.Scan() {
		_ = c.SetDeadline(time.Now().Add(echoIdle))
		if _, err := fmt.Fprintf(c, "%s\n", sc.Bytes()); err != nil {
			return
		}
	}
}

// listenBehindEdge listens on a loopback port for connections from the edge
// only: each must start with a PROXY v2 header whose identity v verifies.
func listenBehindEdge(v *identity.Verifier, logger *slog.Logger) (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	pln, err := identity.NewListener(ln, identity.ListenerConfig{Verifier: v, Logger: logger,
		TrustedPeers: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if err != nil {
		ln.Close()
		return nil, err
	}
	return pln, nil
}
