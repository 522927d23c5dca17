// Package identity defines the signed identity assertion that the ztna edge
// attaches to every request and connection it forwards, and is the package
// apps import to verify it.
//
// # The assertion
//
// The edge signs an assertion (a compact JWS, ES256, "typ":"JWT") for each
// (session, app) pair with a [Signer] from its [KeySet]; aud is the app's
// name. The format lives only here, so the signer and every verifier agree
// by construction.
//
// # Keys
//
// The edge publishes the public half of its keys as a JWKS document
// ([KeySet.JWKS]) at https://AUTH_HOST/.well-known/ztna/jwks.json, where
// AUTH_HOST is the edge's auth host. An app builds one [Verifier] for its own
// name (the audience) with that URL as [VerifierConfig.JWKSURL]; it fetches
// the keys on first use, again when a token names an unknown key ID (at most
// every 30 s) and at least hourly, so key rotation needs nothing from apps.
// Old keys stay published until tokens signed with them have expired.
//
// # HTTP apps: the header
//
// For HTTP the edge sends the assertion in the [HeaderName] header
// (X-Ztna-Assertion). The app wraps its handler with [Verifier.Middleware];
// handlers read the verified [Claims] with [FromContext].
//
// The edge also sends X-Forwarded-User, -Email and -Groups for simple apps.
// Those headers are only as trustworthy as the network path between the edge
// and the app: anything that can reach the app directly can set them. An app
// that can verify the assertion must never trust X-Forwarded-User alone;
// it should take the identity from [FromContext] instead.
//
// # TCP apps: PROXY protocol v2
//
// For apps configured for it, the edge starts every upstream connection
// (before TLS, when the app uses TLS) with a PROXY protocol v2 header:
//
//   - the addresses: the real client as source, the edge address the client
//     reached as destination (TCP over IPv4 or IPv6, command PROXY);
//   - PP2_TYPE_AUTHORITY (0x02): the host the client asked for;
//   - PP2_TYPE_UNIQUE_ID (0x05, at most 128 bytes): the edge's reference for
//     the session, the one its audit log records;
//   - [TLVTypeIdentity] (0xE0, the first type reserved for applications): the
//     same compact JWS as the header form, at most [MaxTLVTokenBytes] long so
//     the whole header stays within 4096 bytes (groups that do not fit are
//     dropped, see [Signer.SignFitting] and Claims.GroupsTruncated).
//
// AUTHORITY and UNIQUE_ID are printable ASCII. The edge builds the TLVs with
// [IdentityTLVs]; [ParseIdentityTLVs] reads them. The app wraps its listener
// with [NewListener]: Accept returns a [*Conn] at once, and the header is
// read and verified on the connection's first use, within a timeout. Only
// verified connections ever deliver a byte; the others are closed and the
// reason logged. [Conn.Identity] gives the claims, [Conn.RemoteAddr] the
// client, [Conn.UniqueID] the session reference. An HTTP server on such a
// listener (also under TLS: tls.NewListener around it) sets
// http.Server.ConnContext to [ConnContext], and handlers call
// [ConnIdentity]. One connection carries one identity, so the edge never
// reuses a connection for another user.
//
// The identity TLV is verified exactly like the header: same algorithm,
// issuer, audience, expiry and key checks. The signature covers the claims
// only, not the addresses, AUTHORITY or UNIQUE_ID; and a token copied from
// one connection is accepted on another until it expires, which is inherent
// in a bearer assertion. The token's short lifetime bounds such replay, and
// [ListenerConfig.TrustedPeers] restricts who may send PROXY headers at all,
// which is what makes the unsigned values trustworthy. The identity is
// checked when the connection starts; the edge bounds how long connections
// live and closes those whose access is revoked.
//
// # What this package never does
//
//   - It never accepts an algorithm other than ES256: not "none", not HS256
//     (so a public key can never be used as an HMAC secret), not another
//     curve. The algorithm is checked against a fixed allow-list before any
//     key is looked up.
//   - It never fetches keys from a location named inside a token (jku, x5u)
//     and never uses keys embedded in a token (jwk, x5c); tokens carrying
//     those header parameters are rejected. Keys come only from the JWKS URL
//     or the static JWKS document the app configured.
//   - It never reads unbounded input: tokens over [VerifierConfig.MaxTokenBytes]
//     are rejected before parsing, PROXY headers over 4096 bytes and headers
//     not complete within [ListenerConfig.HeaderTimeout] are rejected, JWKS
//     responses are limited to 1 MiB and to the request context and client
//     timeout, and refetches for unknown key IDs are rate-limited so forged
//     key IDs cannot turn apps into a flood against the edge.
//   - It never treats a PROXY header as optional, never accepts version 1
//     (which cannot carry the identity), and never lets a connection deliver
//     data or receive the app's first byte before its header is verified.
//   - It never blocks Accept on a client and never starts a goroutine per
//     connection.
//   - It never puts a token in an error message or log line.
package identity
