package console

import (
	"context"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/posture"
)

// Backend is everything the console reads from and does to the running
// edge. The proxy implements it (proxy/console.go); the console never
// reaches the edge any other way. Every method that changes something
// takes the acting admin, and the backend audits the change.
type Backend interface {
	PolicyBackend
	DirectoryBackend
	DeviceBackend
	LiveBackend
	// Audit returns this replica's recent audit events matching q.
	Audit(q audit.Query) ([]audit.Entry, bool)
	// Record adds one event to the audit log (the console's own changes).
	Record(audit.Event)
}

// PolicyBackend is the policy: the one serving now, candidates compiled
// beside it, and (store mode) its history.
type PolicyBackend interface {
	// Policy is the serving policy.
	Policy() PolicyState
	// Compile compiles a candidate policy against the serving config
	// (apps, profiles, GeoIP) without applying it.
	Compile(src *groups.Source) (*groups.Policy, error)
	// ExportDiff is the files-mode alternative to Commit: the unified diff
	// of the policy files that would make them say what c says.
	ExportDiff(c groups.Change) (string, error)
	// Commit saves f as the version after parent and applies it on every
	// replica (store mode only).
	Commit(ctx context.Context, actor Actor, parent int, f groups.File, message string, revertOf int) (*groups.Version, error)
	// Versions lists the history, newest first; Version reads one.
	Versions(ctx context.Context) ([]*groups.Version, error)
	Version(ctx context.Context, n int) (*groups.Version, error)
	// Replicas lists the policy version each replica serves.
	Replicas(ctx context.Context) ([]Replica, error)
}

// PolicyState is the serving policy and where it comes from.
type PolicyState struct {
	Compiled *groups.Policy
	// Source is the policy as written: groups and app rules, with where
	// each came from in files mode.
	Source *groups.Source
	// Store: the policy lives in the store and the console edits it; else
	// it comes from files and the console only exports diffs.
	Store bool
	// N is the store version serving (0 in files mode).
	N int
	// Files names the files the policy comes from (files mode).
	Files []string
	// Apps are the apps the config defines.
	Apps []App
	// Profiles are the posture profiles, by name.
	Profiles map[string]*posture.CompiledProfile
	// ConsoleApp is the app that serves the console; OwnerGroups are the
	// groups that own it (config console.owner_groups).
	ConsoleApp  string
	OwnerGroups []string
}

// App is one app the edge serves.
type App struct {
	Name           string
	Host           string // host[+prefix] for HTTP apps, "" for TCP
	TCP            bool
	Builtin        string
	PostureProfile string
}

// Replica is the policy version one replica serves.
type Replica struct {
	ID      string
	Version string
	Since   time.Time
	Seen    time.Time
}

// DirectoryBackend is the users the edge has seen and their sessions.
type DirectoryBackend interface {
	Users(ctx context.Context) ([]*authn.DirectoryUser, error)
	User(ctx context.Context, sub string) (*authn.DirectoryUser, error)
	// SetAttributes replaces the user's console-set attributes; their
	// sessions and live connections follow at once, on every replica. It
	// returns how many sessions changed.
	SetAttributes(ctx context.Context, actor Actor, sub string, overrides map[string]string) (int, error)
	// Sessions lists the sessions of user sub ("" → every user's).
	Sessions(ctx context.Context, sub string) ([]Session, error)
	// RevokeSession ends the session with reference ref everywhere.
	RevokeSession(ctx context.Context, actor Actor, ref string) error
	// SignOut ends every session of user sub.
	SignOut(ctx context.Context, actor Actor, sub string) (int, error)
}

// Session is a signed-in session, without its secrets.
type Session struct {
	Ref       string
	User      string
	Email     string
	Name      string
	CreatedAt time.Time
	LastSeen  time.Time
	ExpiresAt time.Time
}

// DeviceBackend is device trust: devices, posture and quarantine.
type DeviceBackend interface {
	Devices(ctx context.Context, user string) ([]*posture.Device, error)
	Device(ctx context.Context, id string) (*posture.Device, error)
	Evidence(id string) *posture.Evidence
	History(ctx context.Context, id string, limit int) ([]posture.HistoryEntry, error)
	Quarantines() []posture.QuarantineEntry
	// Quarantine isolates a device (or, with kind user, a user) now.
	Quarantine(ctx context.Context, actor Actor, kind, id, reason, fix string) error
	Release(ctx context.Context, actor Actor, kind, id string) error
	RevokeDevice(ctx context.Context, actor Actor, id, reason string) error
	// ApproveDevice lets a device enrolled under devices.admin_approval
	// reach apps (rejecting one is RevokeDevice).
	ApproveDevice(ctx context.Context, actor Actor, id string) error
}

// LiveBackend is what is connected now.
type LiveBackend interface {
	// Live lists this replica's live exchanges: forwarded requests,
	// WebSockets and streams, tunnel connections and tunnel streams.
	Live() []LiveConn
	// Replica names this replica.
	Replica() string
}

// LiveConn is one live exchange.
type LiveConn struct {
	Kind    string // "http" (a forwarded request, WebSocket or stream), "tunnel" (a client connection), "stream" (a tunnel stream)
	Session string // session reference
	User    string
	Email   string
	Device  string
	App     string
	Method  string
	Path    string
	Source  string
	Since   time.Time
}

// Actor is the admin using the console, as the edge authenticated them.
type Actor struct {
	User    string
	Email   string
	Name    string
	Session string // session reference
	// CSRF is the token every form of this session carries.
	CSRF string
	// Role is what the actor may do: RoleViewer, RoleAdmin or RoleOwner.
	Role Role
	// Subject and Device are how the policy sees the actor, for the
	// self-escalation check.
	Subject groups.Subject
}

// Role is an admin's level in the console.
type Role int

// Roles, each including the ones before it.
const (
	RoleViewer Role = iota + 1 // the console's rules allow GET
	RoleAdmin                  // the console's rules allow POST
	RoleOwner                  // an admin in console.owner_groups
)

func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleAdmin:
		return "admin"
	case RoleOwner:
		return "owner"
	}
	return "none"
}
