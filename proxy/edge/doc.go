// Package edge owns the edge's network listeners and their lifecycle: HTTPS
// (HTTP/1.1 and HTTP/2 over TLS 1.2+), HTTP/3 (QUIC) on the same port number
// over UDP, an optional plain-HTTP listener that only redirects to HTTPS, and
// an admin listener (/healthz, /readyz, /metrics). It runs the graceful drain
// (not ready → drain delay → close listeners → grace for in-flight requests →
// force close) and enforces max_connection_duration so maintenance can move
// clients to another replica.
//
// With Options.Tunnel it also serves the client tunnel (ALPN TunnelALPN) on
// the same UDP socket as HTTP/3: it runs the QUIC listener itself, hands h3
// connections to the HTTP/3 server and each tunnel connection, once its
// handshake is complete, to the handler in its own goroutine with a context
// that drain and max_connection_duration cancel before the edge closes the
// connection with 0x103 (going away). A handler panic closes only that
// connection.
//
// Behind a load balancer it accepts PROXY protocol headers (v1 and v2) on the
// HTTPS and redirect listeners from listen.proxy_protocol.trusted_cidrs only,
// so the connection's RemoteAddr — and with it r.RemoteAddr, audit events,
// X-Forwarded-For and outbound PROXY headers — is the real client. A header
// from any other peer, or a malformed, oversized or late one from a trusted
// peer, closes the connection (ztna_edge_proxy_protocol_rejected_total). The
// header is read in the connection's own goroutine, bounded by header_timeout,
// never in Accept. HTTP/3 (UDP) is outside PROXY protocol: it sees the load
// balancer's address unless that forwards UDP transparently.
//
// It serves whatever http.Handler and TunnelHandler it is given. It must
// never speak the tunnel protocol beyond its ALPN and close codes, never
// know about authentication, sessions, apps or policy, never inspect or log
// request contents beyond what a listener needs (Host for the redirect), never
// reflect a client-supplied Host anywhere except a validated redirect
// Location, and never take a client address from a peer it does not trust.
package edge
