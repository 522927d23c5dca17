// Package tunnel is the ztna client tunnel: the version 1 wire protocol
// (control frames, data-stream headers and replies, error codes) shared by the
// edge and the client, the client that carries TCP connections to declared
// apps over one connection to the edge — QUIC, or HTTP/2 CONNECT streams over
// TLS where UDP is blocked — and the local listeners that feed it (port
// forward, SOCKS5, HTTP CONNECT).
//
// The wire format is wire.go, its HTTP/2 mapping h2.go, and transport.go the
// Stream both transports provide. This package is the protocol's only
// implementation: the edge endpoint in package proxy uses the same functions
// (and the edge side of the HTTP/2 mapping, H2Stream), so the two sides
// cannot drift apart.
//
// What it must never do: log or print the bearer token (Frame redacts it);
// read an unbounded amount from the peer (every parser has a fixed bound);
// reach anything but a declared app by name (local listeners accept app names
// only, never IP addresses or arbitrary hosts); retry an authentication
// failure forever.
package tunnel
