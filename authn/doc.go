// Package authn identifies who is making a request. It is the OIDC relying
// party (authorization code flow with PKCE S256, one-time state bound to the
// browser, nonce, strict ID-token checks) and the keeper of server-side
// sessions: the browser holds only an opaque random ID in a __Host- cookie;
// the record, with the user's attributes and tokens, stays in the store so
// sessions can be listed, refreshed and revoked.
//
// The edge's auth host runs the login; each app host receives the session
// through a one-time handoff code bound to that browser. Native apps (the
// `ztna tunnel` CLI) log in through the browser too, by RFC 8252's loopback
// redirect with PKCE (cli.go, which also holds the CLI's side of it), or,
// on a machine without a browser, by a device authorization grant the edge
// serves (device_grant.go, RFC 8628's shape: a short code approved in any
// browser): either way they get a session of their own as a bearer, which
// the browser never sees, and end it with a bearer-authenticated logout.
// authn never decides access (that is package groups) and never trusts
// identity that arrives from the client: a request is anonymous unless its
// session cookie (or, for the CLI, its bearer) names a live session.
package authn
