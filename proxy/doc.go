// Package proxy is the ztna edge: its configuration, the immutable runtime
// state compiled from it, and the request pipeline
//
//	identify → device → posture → authorize → forward
//
// built by one constructor (NewHandler) and readable top to bottom there.
// Listeners and their lifecycle live in proxy/edge; what apps import to
// verify the identity the edge attaches lives in proxy/identity.
//
// The pipeline fails closed: an error in any step is a deny, never an allow.
// Identity is never taken from the client: inbound identity and forwarding
// headers are stripped before the edge sets its own.
package proxy
