// Package groups decides whether a request may reach an app. It holds the
// per-app rules (and, later, attribute-based dynamic groups evaluated with
// Casbin) and produces a Decision that carries its reason: deny pages, audit
// events, the console and `ztna policy explain` all print the same Reason.
//
// The package never performs I/O on the decision path and never imports the
// proxy. Anything it cannot decide is a deny.
package groups

// Subject is the caller of a request as the authorizer sees it.
type Subject struct {
	User   string   // stable user ID (OIDC subject)
	Email  string   // may be empty
	Groups []string // IdP group claims
}

// Request is one thing to decide: a subject doing Method on Path of App.
// Path must already be the canonical path the edge will forward.
type Request struct {
	App     string
	Subject Subject
	Method  string
	Path    string
}

// Decision is the outcome of authorization. A zero Decision is a deny.
type Decision struct {
	Allow  bool
	Rule   string // the rule that decided, "" for the default deny
	Reason string // human-readable, safe to show to the user
}

// Authorizer decides requests. Implementations are immutable snapshots: a
// policy reload builds a new one, so a decision never sees half a policy.
type Authorizer interface {
	Decide(Request) Decision
}
