package edge

import (
	"net/http"
	"sync"
	"time"
)

// wrapHTTPS is the edge's own middleware in front of Options.Handler on the
// HTTPS (h1/h2) listener: Alt-Svc, max_connection_duration and drain.
//
// A connection older than max_connection_duration, or any connection while
// draining, gets "Connection: close" on its response: net/http closes an
// HTTP/1.1 connection after that response, and turns it into a GOAWAY on
// HTTP/2 (h2_bundle.go: "respect Connection == close"), so clients reconnect
// without losing the request. The header is set before the handler runs, so
// the handler can still see and (deliberately) remove it.
func (s *Server) wrapHTTPS(next http.Handler) http.Handler {
	maxAge := s.cfg.MaxConnectionDuration
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inflight.add()
		defer s.inflight.done()

		draining := s.draining.Load()
		if s.altSvc != "" && !draining {
			w.Header().Set("Alt-Svc", s.altSvc)
		}
		closeConn := draining
		if ci := connInfoFrom(r.Context()); ci != nil && maxAge > 0 && time.Since(ci.start) >= maxAge {
			closeConn = true
			if ci.expired.CompareAndSwap(false, true) {
				s.metrics.maxClosed.WithLabelValues(protoOf(r)).Inc()
			}
		}
		// An HTTP/1.1 upgrade (WebSocket) leaves net/http through a hijack;
		// a Connection: close merged into its 101 response would only
		// confuse the client.
		if closeConn && !(r.ProtoMajor == 1 && r.Header.Get("Upgrade") != "") {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

// wrapH3 is the edge's own middleware in front of Options.Handler on HTTP/3.
// HTTP/3 forbids connection-specific header fields and http3.Server has no
// per-connection GOAWAY, so max_connection_duration is enforced by the
// janitor closing an expired connection once no request is in flight; this
// wrapper keeps the in-flight count the janitor reads.
func (s *Server) wrapH3(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inflight.add()
		defer s.inflight.done()
		if ci := connInfoFrom(r.Context()); ci != nil {
			ci.active.Add(1)
			defer func() {
				ci.lastIdleNs.Store(time.Now().UnixNano())
				ci.active.Add(-1)
			}()
		}
		next.ServeHTTP(w, r)
	})
}

func protoOf(r *http.Request) string {
	switch r.ProtoMajor {
	case 2:
		return protoH2
	case 3:
		return protoH3
	default:
		return protoH1
	}
}

// inflightCounter counts running handler invocations, so Shutdown can wait
// for hijacked (WebSocket) handlers that http.Server.Shutdown ignores.
type inflightCounter struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n drops to 0; replaced when n leaves 0
}

func (f *inflightCounter) add() {
	f.mu.Lock()
	if f.n == 0 {
		f.zero = make(chan struct{})
	}
	f.n++
	f.mu.Unlock()
}

func (f *inflightCounter) done() {
	f.mu.Lock()
	f.n--
	if f.n == 0 {
		close(f.zero)
	}
	f.mu.Unlock()
}

// idle returns a channel closed once no handler is running.
func (f *inflightCounter) idle() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	return f.zero
}

func (f *inflightCounter) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}
