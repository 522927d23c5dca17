package main

import (
	"errors"
	"net"
	"sync"
	"time"
)

// appServer is the accept loop of the benchmark's TCP apps (the dial
// benchmark's echo apps, the tunnel's sink, the idle app): each connection
// is handled in its own goroutine and closed when handle returns; close
// stops accepting, closes the connections still open and waits for their
// handlers.
type appServer struct {
	ln     net.Listener
	handle func(net.Conn)

	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
}

// serveApp starts serving ln with handle.
func serveApp(ln net.Listener, handle func(net.Conn)) *appServer {
	a := &appServer{ln: ln, handle: handle, open: map[net.Conn]struct{}{}}
	a.wg.Add(1)
	go a.serve()
	return a
}

// listenApp listens on a loopback port and serves it with handle.
func listenApp(handle func(net.Conn)) (*appServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return serveApp(ln, handle), nil
}

func (a *appServer) addr() string { return a.ln.Addr().String() }

func (a *appServer) serve() {
	defer a.wg.Done()
	for {
		c, err := a.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			time.Sleep(5 * time.Millisecond) // out of descriptors and the like: back off a little
			continue
		}
		a.mu.Lock()
		a.open[c] = struct{}{}
		a.mu.Unlock()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer func() {
				a.mu.Lock()
				delete(a.open, c)
				a.mu.Unlock()
				_ = c.Close()
			}()
			a.handle(c)
		}()
	}
}

func (a *appServer) close() {
	_ = a.ln.Close()
	a.mu.Lock()
	for c := range a.open {
		_ = c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
}
