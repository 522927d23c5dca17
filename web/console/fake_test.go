package console

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/posture"
)

// fakeBackend is a small in-memory Backend for the console's unit tests:
// it serves fixed data and records every change it is asked to make. The
// real backend (proxy/console.go) is tested end to end elsewhere.
type fakeBackend struct {
	mu sync.Mutex

	ps          PolicyState
	users       []*authn.DirectoryUser
	sessions    []Session
	devices     []*posture.Device
	evidence    map[string]*posture.Evidence
	history     map[string][]posture.HistoryEntry
	quarantines []posture.QuarantineEntry
	live        []LiveConn
	replica     string
	replicas    []Replica
	recent      *audit.Recent

	// What the console did.
	calls   []string      // one line per change, e.g. "quarantine u-admin device d-1 reason|fix"
	queries []audit.Query // every Audit query
	commits []groups.File
	exports []groups.Change
}

var _ Backend = (*fakeBackend)(nil)

func (f *fakeBackend) record(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

// Calls returns the changes recorded so far.
func (f *fakeBackend) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeBackend) Queries() []audit.Query {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.queries)
}

// Policy.

func (f *fakeBackend) Policy() PolicyState { return f.ps }

func (f *fakeBackend) Compile(src *groups.Source) (*groups.Policy, error) {
	return groups.Compile(src, groups.Options{Profiles: profileNames(f.ps)})
}

func (f *fakeBackend) ExportDiff(c groups.Change) (string, error) {
	f.mu.Lock()
	f.exports = append(f.exports, c)
	f.mu.Unlock()
	return "--- a/policy.yaml\n+++ b/policy.yaml\n@@ rules of " + c.App + " @@\n", nil
}

func (f *fakeBackend) Commit(ctx context.Context, actor Actor, parent int, file groups.File, message string, revertOf int) (*groups.Version, error) {
	f.mu.Lock()
	f.commits = append(f.commits, file)
	f.mu.Unlock()
	f.record("commit %s parent=%d %s", actor.User, parent, message)
	return &groups.Version{N: parent + 1, Author: actor.Email, Message: message, Policy: file}, nil
}

func (f *fakeBackend) Versions(ctx context.Context) ([]*groups.Version, error) { return nil, nil }

func (f *fakeBackend) Version(ctx context.Context, n int) (*groups.Version, error) {
	return nil, httperr.New(http.StatusNotFound, "not_found", "No such version.")
}

func (f *fakeBackend) Replicas(ctx context.Context) ([]Replica, error) { return f.replicas, nil }

// Directory.

func (f *fakeBackend) Users(ctx context.Context) ([]*authn.DirectoryUser, error) { return f.users, nil }

func (f *fakeBackend) User(ctx context.Context, sub string) (*authn.DirectoryUser, error) {
	for _, u := range f.users {
		if u.IdP.Subject == sub {
			return u, nil
		}
	}
	return nil, httperr.New(http.StatusNotFound, "unknown_user", "No such user.")
}

func (f *fakeBackend) SetAttributes(ctx context.Context, actor Actor, sub string, o map[string]string) (int, error) {
	f.record("set-attributes %s %s %v", actor.User, sub, o)
	return 0, nil
}

func (f *fakeBackend) Sessions(ctx context.Context, sub string) ([]Session, error) {
	var out []Session
	for _, s := range f.sessions {
		if sub == "" || s.User == sub {
			out = append(out, s)
		}
	}
	return out, nil
}

func (f *fakeBackend) RevokeSession(ctx context.Context, actor Actor, ref string) error {
	f.record("revoke-session %s %s", actor.User, ref)
	return nil
}

func (f *fakeBackend) SignOut(ctx context.Context, actor Actor, sub string) (int, error) {
	f.record("sign-out %s %s", actor.User, sub)
	return 0, nil
}

// Devices.

func (f *fakeBackend) Devices(ctx context.Context, user string) ([]*posture.Device, error) {
	var out []*posture.Device
	for _, d := range f.devices {
		if user == "" || d.UserID == user {
			out = append(out, d)
		}
	}
	return out, nil
}

func (f *fakeBackend) Device(ctx context.Context, id string) (*posture.Device, error) {
	for _, d := range f.devices {
		if d.ID == id {
			return d, nil
		}
	}
	return nil, posture.ErrNoDevice
}

func (f *fakeBackend) Evidence(id string) *posture.Evidence { return f.evidence[id] }

func (f *fakeBackend) History(ctx context.Context, id string, limit int) ([]posture.HistoryEntry, error) {
	h := f.history[id]
	return h[:min(limit, len(h))], nil
}

func (f *fakeBackend) Quarantines() []posture.QuarantineEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.quarantines)
}

func (f *fakeBackend) Quarantine(ctx context.Context, actor Actor, kind, id, reason, fix string) error {
	f.record("quarantine %s %s %s %s|%s", actor.User, kind, id, reason, fix)
	f.mu.Lock()
	f.quarantines = append(f.quarantines, posture.QuarantineEntry{Kind: kind, ID: id, Reason: reason, Fix: fix, Source: "admin", At: time.Now()})
	f.mu.Unlock()
	return nil
}

func (f *fakeBackend) Release(ctx context.Context, actor Actor, kind, id string) error {
	f.record("release %s %s %s", actor.User, kind, id)
	return nil
}

func (f *fakeBackend) RevokeDevice(ctx context.Context, actor Actor, id, reason string) error {
	f.record("revoke-device %s %s %s", actor.User, id, reason)
	return nil
}

func (f *fakeBackend) ApproveDevice(ctx context.Context, actor Actor, id string) error {
	f.record("approve-device %s %s", actor.User, id)
	return nil
}

// Live and audit.

func (f *fakeBackend) Live() []LiveConn { return f.live }

func (f *fakeBackend) Replica() string { return f.replica }

func (f *fakeBackend) Audit(q audit.Query) ([]audit.Entry, bool) {
	f.mu.Lock()
	f.queries = append(f.queries, q)
	f.mu.Unlock()
	return f.recent.Find(q)
}

func (f *fakeBackend) Record(ev audit.Event) { f.recent.Add(ev) }

// The test world: a fixed policy, directory, devices and events.

const (
	xss        = `<script>alert(1)</script>`
	xssEscaped = `&lt;script&gt;alert(1)&lt;/script&gt;`
)

// testNow is the handler's clock in the tests: a Monday, 10:00 in Seoul.
var testNow = time.Date(2026, 3, 2, 1, 0, 0, 0, time.UTC)

func testSource() *groups.Source {
	return &groups.Source{
		Groups: []groups.Group{
			{Name: "security", When: `user.department == "Security Tech"`},
			{Name: "sales", When: `user.department == "Sales"`},
			{Name: "console-admins", Members: []string{"u-admin"}},
		},
		Apps: []groups.AppRules{
			{App: "wiki", Rules: []groups.Rule{
				{Name: "no-delete", Action: groups.ActionDeny, Methods: []string{"DELETE"}},
				{Name: "security-staff", Groups: []string{"security"}},
				{Name: "sales-office-hours", Groups: []string{"sales"},
					Time: []groups.TimeWindow{{Days: []string{"mon-fri"}, From: "09:00", To: "18:00", Zone: "Asia/Seoul"}}},
			}},
			{App: "db", Rules: []groups.Rule{{Name: "security-managed", Groups: []string{"security"}, Posture: "managed"}}},
			{App: "console", Rules: []groups.Rule{{Name: "admins", Groups: []string{"console-admins"}}}},
			{App: xss, Rules: []groups.Rule{{Name: "everyone"}}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// newFake builds the test world: store mode, three users (one an admin,
// one with an attribute that is markup), a device failing its posture
// profile, one quarantine, live exchanges, sessions and audit events.
func newFake(t *testing.T) *fakeBackend {
	t.Helper()
	profiles, err := posture.CompileProfiles([]posture.Profile{{Name: "managed", RequireDiskEncryption: true, RequireFirewall: true}})
	if err != nil {
		t.Fatal(err)
	}
	src := testSource()
	f := &fakeBackend{ps: PolicyState{Source: src, Store: true, N: 3, Profiles: profiles, ConsoleApp: "console",
		Apps: []App{
			{Name: "wiki", Host: "wiki.corp.example"},
			{Name: "db", TCP: true, PostureProfile: "managed"},
			{Name: "console", Host: "console.corp.example", Builtin: "console"},
			{Name: xss, Host: "x.corp.example"},
		}},
		replica: "replica-a", evidence: map[string]*posture.Evidence{}, history: map[string][]posture.HistoryEntry{},
		recent: audit.NewRecent(100),
	}
	f.ps.Compiled, err = f.Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := func(sub, email, name string, attrs map[string]string) *authn.DirectoryUser {
		return &authn.DirectoryUser{IdP: authn.Identity{Subject: sub, Email: email, Name: name, Attributes: attrs}, FirstSeen: testNow, LastSeen: testNow}
	}
	f.users = []*authn.DirectoryUser{
		dir("u-admin", "admin@example.com", "Ada Admin", map[string]string{"department": "IT"}),
		dir("u-alice", "alice@example.com", "Alice", map[string]string{"department": "Security Tech"}),
		dir("u-bob", "bob@example.com", "Bob", map[string]string{"department": "Sales", "title": xss}),
	}
	f.sessions = []Session{
		{Ref: "ref-alice", User: "u-alice", Email: "alice@example.com", CreatedAt: testNow.Add(-time.Hour), LastSeen: testNow, ExpiresAt: testNow.Add(time.Hour)},
		{Ref: "ref-admin", User: "u-admin", Email: "admin@example.com", CreatedAt: testNow.Add(-time.Hour), LastSeen: testNow, ExpiresAt: testNow.Add(time.Hour)},
	}
	f.devices = []*posture.Device{
		{ID: "d-old", UserID: "u-alice", Name: "old laptop", Platform: "linux", EnrolledAt: testNow.Add(-90 * 24 * time.Hour), Revoked: true, RevokedReason: "lost"},
		{ID: "d-alice", UserID: "u-alice", Name: "alice-mbp", Platform: "macos", EnrolledAt: testNow.Add(-24 * time.Hour)},
		{ID: "d-bob", UserID: "u-bob", Name: "bob-laptop", Platform: "windows", EnrolledAt: testNow.Add(-24 * time.Hour)},
	}
	failing := posture.Report{DeviceID: "d-alice", Counter: 7, CollectedAt: testNow.Add(-10 * time.Second),
		OS: posture.OSInfo{Name: "macos", Version: "14.5", Kernel: "23.5.0", Arch: "arm64"}, DiskEncrypted: ptr(false), FirewallActive: ptr(true),
		EDR: []posture.EDRState{{Name: "falcon-sensor", Running: true, PID: 42, ExePath: "/opt/falcon", ExeSHA256: "ab12"}}}
	passing := failing
	passing.Counter, passing.DiskEncrypted = 6, ptr(true)
	f.evidence["d-alice"] = &posture.Evidence{Report: &failing, ReceivedAt: testNow.Add(-5 * time.Second),
		CheckIns: map[string]time.Time{"falcon-sensor": testNow.Add(-time.Minute)}}
	f.history["d-alice"] = []posture.HistoryEntry{{Report: failing, ReceivedAt: testNow.Add(-5 * time.Second)}, {Report: passing, ReceivedAt: testNow.Add(-65 * time.Second)}}
	good := posture.Report{DeviceID: "d-bob", Counter: 3, OS: posture.OSInfo{Name: "windows", Version: "11"}, DiskEncrypted: ptr(true), FirewallActive: ptr(true)}
	f.evidence["d-bob"] = &posture.Evidence{Report: &good, ReceivedAt: testNow.Add(-5 * time.Second)}
	f.quarantines = []posture.QuarantineEntry{{Kind: posture.QuarantineDevice, ID: "d-bob", Reason: "falco: shell in container", Fix: "call the security team", Source: "falco", At: testNow}}
	f.live = []LiveConn{
		{Kind: "http", Session: "ref-alice", User: "u-alice", Email: "alice@example.com", Device: "d-alice", App: "wiki", Method: "GET", Path: "/events", Source: "192.0.2.1", Since: testNow},
		{Kind: "tunnel", Session: "ref-alice", User: "u-alice", Email: "alice@example.com", Device: "d-alice", Source: "192.0.2.1", Since: testNow},
		{Kind: "stream", Session: "ref-alice", User: "u-alice", Email: "alice@example.com", Device: "d-alice", App: "db", Method: "CONNECT", Path: "/", Since: testNow},
	}
	f.replicas = []Replica{{ID: "replica-a", Version: f.ps.Compiled.Version(), Since: testNow, Seen: testNow}}
	for i, ev := range []audit.Event{
		{Kind: "request", User: "u-alice", Email: "alice@example.com", App: "wiki", Method: "GET", Path: "/", Decision: "allow", Rule: "security-staff", Reason: "allowed"},
		{Kind: "request", User: "u-bob", Email: "bob@example.com", App: "wiki", Method: "DELETE", Path: "/page", Decision: "deny", Rule: "no-delete", Reason: "deletes are refused"},
		{Kind: "request", User: "u-bob", Email: "bob@example.com", App: "db", Method: "CONNECT", Path: "/", Decision: "deny", Reason: "posture: disk"},
	} {
		ev.Time = testNow.Add(time.Duration(i) * time.Second)
		f.recent.Add(ev)
	}
	return f
}

// containsAll reports the first of want missing from body.
func missing(body string, want ...string) string {
	for _, w := range want {
		if !strings.Contains(body, w) {
			return w
		}
	}
	return ""
}
