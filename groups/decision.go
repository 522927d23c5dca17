// Package groups decides whether a request may reach an app. It holds the
// policy — attribute-based dynamic groups and per-app rules — compiles it
// into an immutable Policy, and produces a Decision that carries its
// reason: deny pages, audit events, the console and `ztna policy explain`
// all print the same Reason.
//
// Group membership is evaluated with Casbin: every group condition becomes
// one matcher of a generated Casbin model (see casbin.go). Casbin is never
// asked to scan the whole policy per request: conditions are indexed by the
// attribute values they require, only candidate groups are evaluated, and a
// subject's membership is cached by the content of its attributes for the
// lifetime of one Policy, so a policy reload invalidates it by construction.
//
// The package never performs I/O on the decision path and never imports the
// proxy. Anything it cannot decide is a deny.
package groups

import (
	"net/netip"
	"time"
)

// Subject is the caller of a request as the authorizer sees it.
type Subject struct {
	User       string            // stable user ID (OIDC subject)
	Email      string            // may be empty
	Groups     []string          // IdP group claims ("idp:NAME" in rules and conditions)
	Attributes map[string]string // user attributes (department, title, …) from IdP claims
}

// Device is the enrolled device a request comes from. A nil *Device means
// the client presented no device certificate.
type Device struct {
	ID       string
	Platform string   // linux, macos, windows … from the device's latest report; "" if unknown
	Profiles []string // posture profiles the device meets now
}

// Request is one thing to decide: a subject doing Method on Path of App.
// Path must already be the canonical path the edge will forward.
type Request struct {
	App     string
	Subject Subject
	Device  *Device // nil: no device certificate
	Method  string
	Path    string
	Source  netip.Addr // the client's address; invalid if unknown
	Time    time.Time  // when the request arrived; zero means now
}

// Decision is the outcome of authorization. A zero Decision is a deny.
type Decision struct {
	Allow  bool   `json:"allow"`
	Rule   string `json:"rule,omitempty"` // the rule that decided, "" for the default deny
	Reason string `json:"reason"`         // human-readable, safe to show to the user
}

// Authorizer decides requests. Implementations are immutable snapshots: a
// policy reload builds a new one, so a decision never sees half a policy.
type Authorizer interface {
	Decide(Request) Decision
}
