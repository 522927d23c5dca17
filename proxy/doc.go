// Package proxy is the ztna edge: its configuration, the immutable runtime
// state compiled from it, and the request pipeline
//
//	identify → device → posture → authorize → forward
//
// written once, in Edge.ServeHTTP, and readable top to bottom there. The
// edge's own endpoints live beside it: login and logout (authn), device
// enrollment and the agent's report endpoints (devices.go), and the signal
// and admin APIs (api.go). Live exchanges are registered so that trust
// changes — a revoked session or device, a quarantine, a failing or stale
// posture report, a policy reload — close them (live.go, posture.go).
// Listeners and their lifecycle live in proxy/edge; what apps import to
// verify the identity the edge attaches lives in proxy/identity.
//
// The pipeline fails closed: an error in any step is a deny, never an allow.
// Identity is never taken from the client: inbound identity and forwarding
// headers are stripped before the edge sets its own.
package proxy
