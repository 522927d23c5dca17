package proxy

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"

	"github.com/quic-go/quic-go"

	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/proxy/edge"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// The tunnel's HTTP/2 fallback (proxy/tunnel/h2.go has the mapping): one
// TLS connection carries a control CONNECT stream and one CONNECT stream
// per TCP connection. The control stream's handler runs the same endpoint
// as a QUIC connection (serveTunnelLink); each data stream's handler hands
// its stream to that endpoint and waits until the stream is finished.

// h2Links finds the tunnel of a TLS connection for its data streams.
type h2Links struct {
	mu    sync.Mutex
	links map[any]*h2Link // by edge.ConnOf
}

// h2Link is one tunnel connection over HTTP/2.
type h2Link struct {
	ctrl    *tunnel.H2Stream
	streams chan tunnel.Stream
	ctx     context.Context // the control stream's; ends the link
	cancel  context.CancelCauseFunc
	remote  net.Addr
	local   net.Addr
	certs   []*x509.Certificate

	mu       sync.Mutex
	accepted bool // the control stream was handed out
}

func (l *h2Link) acceptStream(ctx context.Context) (tunnel.Stream, error) {
	l.mu.Lock()
	first := !l.accepted
	l.accepted = true
	l.mu.Unlock()
	if first {
		return l.ctrl, nil
	}
	select {
	case s := <-l.streams:
		return s, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-l.ctx.Done():
		return nil, context.Cause(l.ctx)
	}
}

func (l *h2Link) close(_ quic.ApplicationErrorCode, reason string) {
	l.cancel(errors.New(reason))
}
func (l *h2Link) done() <-chan struct{}                 { return l.ctx.Done() }
func (l *h2Link) remoteAddr() net.Addr                  { return l.remote }
func (l *h2Link) localAddr() net.Addr                   { return l.local }
func (l *h2Link) peerCertificates() []*x509.Certificate { return l.certs }

// serveTunnelH2 serves one CONNECT request: the control stream of an
// HTTP/2 tunnel connection, or one of its data streams.
func (e *Edge) serveTunnelH2(w http.ResponseWriter, r *http.Request) {
	key := edge.ConnOf(r)
	if key == nil || r.TLS == nil || r.ProtoMajor != 2 || r.Host != tunnel.H2Authority {
		e.fail(w, r, httperr.New(http.StatusBadRequest, "bad_request",
			"CONNECT is only for the ztna tunnel, over HTTP/2 to "+tunnel.H2Authority+"; this proxy reaches nothing else."))
		return
	}
	if r.Header.Get(tunnel.H2StreamHeader) != tunnel.H2Control {
		e.serveTunnelH2Data(w, r, key)
		return
	}
	ctx, cancel := edge.LongLived(r)
	defer cancel()
	lctx, lcancel := context.WithCancelCause(ctx)
	defer lcancel(nil)
	link := &h2Link{streams: make(chan tunnel.Stream), ctx: lctx, cancel: lcancel,
		remote: addrOf(r.RemoteAddr), local: localAddrOf(r), certs: r.TLS.PeerCertificates}
	e.h2.mu.Lock()
	if e.h2.links == nil {
		e.h2.links = make(map[any]*h2Link)
	}
	_, taken := e.h2.links[key]
	if !taken {
		e.h2.links[key] = link
	}
	e.h2.mu.Unlock()
	if taken {
		e.fail(w, r, httperr.New(http.StatusConflict, "bad_request", "This connection already carries a tunnel."))
		return
	}
	defer func() {
		e.h2.mu.Lock()
		delete(e.h2.links, key)
		e.h2.mu.Unlock()
	}()
	s, err := tunnel.AcceptH2(w, r)
	if err != nil {
		e.fail(w, r, httperr.BadRequest("This is not a ztna tunnel stream.", err))
		return
	}
	link.ctrl = s
	e.serveTunnelLink(lctx, link)
	s.Reset(tunnel.StreamNoError) // a no-op if the endpoint finished it
}

// serveTunnelH2Data hands a data stream to its connection's tunnel.
func (e *Edge) serveTunnelH2Data(w http.ResponseWriter, r *http.Request, key any) {
	e.h2.mu.Lock()
	link := e.h2.links[key]
	e.h2.mu.Unlock()
	if link == nil {
		e.fail(w, r, httperr.New(http.StatusForbidden, "unauthenticated", "Open the tunnel's control stream first."))
		return
	}
	s, err := tunnel.AcceptH2(w, r)
	if err != nil || s.Control() {
		e.fail(w, r, httperr.BadRequest("This is not a ztna tunnel stream.", err))
		return
	}
	select {
	case link.streams <- s:
		select {
		case <-s.Done():
		case <-r.Context().Done():
			s.Reset(tunnel.StreamNoError)
		}
	case <-link.ctx.Done():
		s.Reset(tunnel.StreamNoError)
	case <-r.Context().Done():
		s.Reset(tunnel.StreamNoError)
	}
}

// addrOf parses a request's RemoteAddr ("ip:port").
func addrOf(s string) net.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return net.TCPAddrFromAddrPort(ap)
	}
	return &net.TCPAddr{}
}

// localAddrOf is the edge's address the request arrived on.
func localAddrOf(r *http.Request) net.Addr {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		return a
	}
	return &net.TCPAddr{}
}
