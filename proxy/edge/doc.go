// Package edge owns the edge's network listeners and their lifecycle: HTTPS
// (HTTP/1.1 and HTTP/2 over TLS 1.2+), HTTP/3 (QUIC) on the same port number
// over UDP, an optional plain-HTTP listener that only redirects to HTTPS, and
// an admin listener (/healthz, /readyz, /metrics). It runs the graceful drain
// (not ready → drain delay → close listeners → grace for in-flight requests →
// force close) and enforces max_connection_duration so maintenance can move
// clients to another replica.
//
// It serves whatever http.Handler it is given. It must never know about
// authentication, sessions, apps or policy, never inspect or log request
// contents beyond what a listener needs (Host for the redirect), and never
// reflect a client-supplied Host anywhere except a validated redirect Location.
package edge
