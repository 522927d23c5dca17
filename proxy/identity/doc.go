// Package identity defines the signed identity assertion that the ztna edge
// attaches to every request it forwards, and is the package apps import to
// verify it.
//
// The edge signs an assertion (a compact JWS, ES256, "typ":"JWT") for each
// (session, app) pair with a [Signer] from its [KeySet], and sends it to the
// app in the [HeaderName] header. The edge publishes the public half of its
// keys as a JWKS document ([KeySet.JWKS]), served at
// https://<auth host>/.well-known/ztna/jwks.json. An app builds one
// [Verifier] for its own name (the audience) and wraps its handler with
// [Verifier.Middleware]; handlers read the verified [Claims] with
// [FromContext]. The format lives only here, so the signer and every
// verifier agree by construction. A token is a plain string that does not
// depend on HTTP, so the same assertion can travel in other carriers (the
// PROXY protocol v2 identity TLV) and be checked with [Verifier.Verify].
//
// The edge also sends X-Forwarded-User, -Email and -Groups for simple apps.
// Those headers are only as trustworthy as the network path between the edge
// and the app: anything that can reach the app directly can set them. An app
// that can verify the assertion must never trust X-Forwarded-User alone;
// it should take the identity from [FromContext] instead.
//
// What this package never does:
//   - It never accepts an algorithm other than ES256: not "none", not HS256
//     (so a public key can never be used as an HMAC secret), not another
//     curve. The algorithm is checked against a fixed allow-list before any
//     key is looked up.
//   - It never fetches keys from a location named inside a token (jku, x5u)
//     and never uses keys embedded in a token (jwk, x5c); tokens carrying
//     those header parameters are rejected. Keys come only from the JWKS URL
//     or the static JWKS document the app configured.
//   - It never reads unbounded input: tokens over [VerifierConfig.MaxTokenBytes]
//     are rejected before parsing, JWKS responses are limited to 1 MiB and to
//     the request context and client timeout, and refetches for unknown key IDs
//     are rate-limited so forged key IDs cannot turn apps into a flood against
//     the edge.
//   - It never puts a token in an error message or log line.
package identity
