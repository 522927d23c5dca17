package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/proxy/identity"
)

// Identity headers the edge sets for apps. Apps that can should verify
// identity.HeaderName instead of trusting these plain ones.
const (
	HeaderUser   = "X-Forwarded-User"
	HeaderEmail  = "X-Forwarded-Email"
	HeaderGroups = "X-Forwarded-Groups"
)

// forwardKey carries the per-request *forwarding from the pipeline to
// Rewrite and the ErrorHandler.
type forwardKey struct{}

// forwarding is one forwarded exchange's state shared with the reverse
// proxy's callbacks.
type forwarding struct {
	id       *assertion
	answered bool // the ErrorHandler wrote the response
	complete bool // the app's response body was read to its end
}

// trackedBody notes when the app's response body has been read to its end,
// so that a cut arriving after a complete response is not turned into a
// reset of it.
type trackedBody struct {
	io.ReadCloser
	fw *forwarding
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.fw.complete = true
	}
	return n, err
}

// forward sends r to the app with the edge's identity attached. Long-lived
// exchanges (WebSockets, streamed responses) are registered so a trust
// change can cut them off.
func (e *Edge) forward(w http.ResponseWriter, r *http.Request, st *State, a *app, sess *authn.Session, device string, req groups.Request) {
	id, err := e.assertions.get(e.signer, sess, a.Name, device, a.PostureProfile, st.Config.assertionTTL())
	if err != nil {
		e.fail(w, r, &httperr.Error{Status: http.StatusInternalServerError, Code: "identity_unavailable",
			Title: "Something went wrong", Message: "The access proxy could not sign your identity for this app.", Cause: err})
		return
	}
	// Every forwarded exchange is registered for as long as it runs, so a
	// revocation also stops a request still waiting for the app, a long
	// download, a stream or a WebSocket.
	ctx, cancel := context.WithCancelCause(r.Context())
	live := &liveEntry{sessKey: sess.Key, device: device, req: req, cancel: cancel}
	e.live.register(live)
	defer func() {
		e.live.unregister(live)
		cancel(nil)
	}()
	fw := &forwarding{id: id}
	ctx = context.WithValue(ctx, forwardKey{}, fw)
	if a.ProxyProtocol != "" {
		ctx = context.WithValue(ctx, helloKey{}, e.hello(r, sess, id))
	}
	a.proxy.ServeHTTP(w, r.WithContext(ctx))
	if !fw.answered && !fw.complete && ctx.Err() != nil && r.Context().Err() == nil {
		// The edge cut this exchange (revocation, policy change) in the
		// middle of the response. Abort it so the client sees a reset,
		// not a clean end of a truncated body: ReverseProxy does this
		// itself only when the server sets http.ServerContextKey, which
		// HTTP/3 does not.
		panic(http.ErrAbortHandler)
	}
}

// hello is what a PROXY v2 header tells the app about r.
func (e *Edge) hello(r *http.Request, sess *authn.Session, id *assertion) *upstreamHello {
	h := &upstreamHello{authority: hostOnly(r.Host), uniqueID: sess.Ref(), token: id.token[0]}
	client := tcpAddr(r.RemoteAddr)
	if client == nil {
		client = &net.TCPAddr{IP: net.IPv4zero}
	}
	h.client = client
	// The edge address the client reached; HTTP/3 requests do not carry
	// one, so the header then names the unspecified address.
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		h.local = tcpAddr(la.String())
	}
	if h.local == nil || h.local.(*net.TCPAddr) == nil {
		h.local = &net.TCPAddr{IP: net.IPv4zero}
	}
	return h
}

// bufferPool recycles the 32 KiB copy buffers of every reverse proxy.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(v []byte) { b.p.Put(&v) }

var copyBuffers = &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

// CopyBuffers is the buffer pool of the edge's reverse proxies (exported for
// the benchmark's bare proxy).
func CopyBuffers() httputil.BufferPool { return copyBuffers }

func (e *Edge) newReverseProxy(a *app) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			id := pr.In.Context().Value(forwardKey{}).(*forwarding).id
			// Identity never comes from the client: drop every copy first,
			// then set the edge's own.
			StripClientIdentity(pr.Out.Header)
			pr.SetURL(a.upstream)
			if a.PreserveHost {
				pr.Out.Host = pr.In.Host
			}
			pr.SetXForwarded()
			h := pr.Out.Header
			h[HeaderUser] = id.user
			if id.email != nil {
				h[HeaderEmail] = id.email
			}
			if id.groups != nil {
				h[HeaderGroups] = id.groups
			}
			h[identity.HeaderName] = id.token
		},
		BufferPool: copyBuffers,
		ModifyResponse: func(res *http.Response) error {
			// An upgraded connection's body is the app's connection itself,
			// which ReverseProxy needs as is.
			if res.StatusCode != http.StatusSwitchingProtocols {
				fw := res.Request.Context().Value(forwardKey{}).(*forwarding)
				res.Body = &trackedBody{ReadCloser: res.Body, fw: fw}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// Called before anything was sent to the client. The cause
			// of the request's context says whether the edge cut the
			// exchange (Go's transport reports that cause, not
			// context.Canceled), and then the client gets a clean answer
			// saying why instead of a reset.
			var c *cut
			if errors.As(context.Cause(r.Context()), &c) {
				e.logger.Info("connection closed by the edge", "app", a.Name, "reason", c.reason)
				r.Context().Value(forwardKey{}).(*forwarding).answered = true
				if c.decision != nil {
					e.fail(w, r, denied(*c.decision))
				} else {
					e.fail(w, r, &httperr.Error{Status: http.StatusForbidden, Code: "access_revoked", Title: "Access ended",
						Message: "Access was ended while this request was on its way: " + c.reason + "."})
				}
				return
			}
			if r.Context().Err() != nil {
				return // the client went away
			}
			e.fail(w, r, &httperr.Error{Status: http.StatusBadGateway, Code: "app_unavailable", Title: "App unavailable",
				Message: "The app did not answer the access proxy.", Hint: "Try again in a moment; if it persists, the app's owners need to know.", Cause: err})
		},
		ErrorLog: slog.NewLogLogger(e.logger.Handler(), slog.LevelWarn),
	}
}

// Cookies the edge owns; apps never see them.
var edgeCookies = []string{authn.SessionCookie, "__Host-ztna_bind", "__Host-ztna_hb"}

// StripClientIdentity removes from h every header through which a client
// could claim an identity or a network origin to an app, and the edge's own
// cookies. It runs before the edge sets its headers, and after net/http has
// removed the hop-by-hop headers named in Connection, so naming an identity
// header in Connection cannot remove the edge's copy.
func StripClientIdentity(h http.Header) {
	for k := range h {
		if isIdentityHeader(k) {
			delete(h, k)
		}
	}
	if cs := h["Cookie"]; len(cs) > 0 {
		stripEdgeCookies(h, cs)
	}
}

// identityHeaders are stripped by exact name, identityPrefixes by prefix.
// Both match case-insensitively and with "_" read as "-", since CGI, WSGI,
// PHP and Rack turn X_Forwarded_User into the same variable as
// X-Forwarded-User.
var (
	identityHeaders = []string{"Forwarded", "X-Real-Ip", "X-Client-Ip", "True-Client-Ip", "Cf-Connecting-Ip",
		"X-Remote-User", "X-Remote-Addr", "X-Original-Url", "X-Rewrite-Url", "X-Original-Forwarded-For",
		"X-Cluster-Client-Ip", "Client-Ip", "X-Proxyuser-Ip"}
	identityPrefixes = []string{"X-Forwarded-", "X-Ztna-", "X-Auth-Request-"}
)

func isIdentityHeader(k string) bool {
	for _, p := range identityPrefixes {
		if len(k) >= len(p) && headerNameEqual(k[:len(p)], p) {
			return true
		}
	}
	for _, h := range identityHeaders {
		if headerNameEqual(k, h) {
			return true
		}
	}
	return false
}

// headerNameEqual compares header names ignoring ASCII case and treating
// "_" as "-", without allocating (it runs for every header of every request).
func headerNameEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == y {
			continue
		}
		if x == '_' {
			x = '-'
		}
		if y == '_' {
			y = '-'
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func stripEdgeCookies(h http.Header, values []string) {
	found := false
	for _, v := range values {
		if strings.Contains(v, "ztna_") {
			found = true
			break
		}
	}
	if !found {
		return
	}
	var kept []string
	for _, v := range values {
		var parts []string
		for _, c := range strings.Split(v, ";") {
			name, _, _ := strings.Cut(strings.TrimSpace(c), "=")
			isEdge := false
			for _, ec := range edgeCookies {
				if name == ec {
					isEdge = true
				}
			}
			if !isEdge && strings.TrimSpace(c) != "" {
				parts = append(parts, strings.TrimSpace(c))
			}
		}
		if len(parts) > 0 {
			kept = append(kept, strings.Join(parts, "; "))
		}
	}
	if len(kept) == 0 {
		delete(h, "Cookie")
		return
	}
	h["Cookie"] = kept
}
