package proxy

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/web/console"
)

// The admin console is an app of kind `builtin: console`: the pipeline
// identifies, checks the device and posture, and authorizes every console
// request by the console app's rules like any app's, and then, instead of
// forwarding, hands it to web/console with the admin's identity and role.
// consoleBackend is how the console reaches the edge.

// serveConsole is the forward step of the console app.
func (e *Edge) serveConsole(w http.ResponseWriter, r *http.Request, st *State, a *app, sess *authn.Session, req groups.Request) {
	act := console.Actor{
		User: sess.Identity.Subject, Email: sess.Identity.Email, Name: sess.Identity.Name,
		Session: sess.Ref(), CSRF: authn.CSRFToken(sess), Subject: req.Subject,
		Role: console.RoleOf(st.policy, a.Name, st.Config.Console.OwnerGroups, req),
	}
	e.console.ServeHTTP(w, r.WithContext(console.WithActor(r.Context(), act)))
}

type consoleBackend struct{ e *Edge }

var _ console.Backend = consoleBackend{}

func by(a console.Actor) actor { return actor{via: "console", user: a.User, email: a.Email} }

// Policy.

func (b consoleBackend) Policy() console.PolicyState {
	st := b.e.state.Load()
	ps := console.PolicyState{Compiled: st.policy, Source: st.policySrc, Store: st.Config.PolicyFromStore(), N: st.policyN,
		Profiles: st.profiles, OwnerGroups: st.Config.Console.OwnerGroups}
	if !ps.Store {
		if f := st.Config.doc.File(); f != "" {
			ps.Files = append(ps.Files, f)
		}
		if st.Config.Policy.Dir != "" {
			ps.Files = append(ps.Files, st.Config.Policy.Dir)
		}
	}
	for _, ac := range st.Config.Apps {
		a := console.App{Name: ac.Name, TCP: ac.TCP != "", Builtin: ac.Builtin, PostureProfile: ac.PostureProfile}
		if ac.TCP == "" {
			a.Host = st.Config.hostPort(ac.Host)
			if ac.PathPrefix != "/" && ac.PathPrefix != "" {
				a.Host += ac.PathPrefix
			}
		}
		if ac.Builtin == BuiltinConsole {
			ps.ConsoleApp = ac.Name
		}
		ps.Apps = append(ps.Apps, a)
	}
	return ps
}

func (b consoleBackend) Compile(src *groups.Source) (*groups.Policy, error) {
	return b.e.CompilePolicy(src)
}

func (b consoleBackend) ExportDiff(c groups.Change) (string, error) {
	st := b.e.state.Load()
	if st.Config.PolicyFromStore() {
		return "", errors.New("the policy lives in the store: save the change instead")
	}
	base := ""
	if f := st.Config.doc.File(); f != "" {
		base = filepath.Dir(f)
	}
	return st.policySrc.ExportDiff(c, base)
}

func (b consoleBackend) Commit(ctx context.Context, a console.Actor, parent int, f groups.File, message string, revertOf int) (*groups.Version, error) {
	v, err := b.e.CommitPolicy(ctx, parent, f, a.Email, message, revertOf)
	if v != nil {
		b.e.auditAdmin(by(a), "policy-commit", "", "", "version "+strconv.Itoa(v.N)+": "+message)
	}
	return v, err
}

func (b consoleBackend) Versions(ctx context.Context) ([]*groups.Version, error) {
	return b.e.versions.List(ctx)
}

func (b consoleBackend) Version(ctx context.Context, n int) (*groups.Version, error) {
	v, err := b.e.versions.Get(ctx, n)
	if errors.Is(err, store.ErrNotFound) {
		return nil, httperr.New(http.StatusNotFound, "unknown_version", "No such policy version.")
	}
	return v, err
}

func (b consoleBackend) Replicas(ctx context.Context) ([]console.Replica, error) {
	recs, err := b.e.PolicyRecords(ctx)
	out := make([]console.Replica, len(recs))
	for i, r := range recs {
		out[i] = console.Replica{ID: r.Replica, Version: r.Version, Since: r.Since, Seen: r.Seen}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, err
}

// Directory.

func (b consoleBackend) Users(ctx context.Context) ([]*authn.DirectoryUser, error) {
	return b.e.directory.List(ctx)
}

func (b consoleBackend) User(ctx context.Context, sub string) (*authn.DirectoryUser, error) {
	u, err := b.e.directory.Get(ctx, sub)
	if errors.Is(err, store.ErrNotFound) {
		return nil, httperr.New(http.StatusNotFound, "unknown_user", "No such user: the edge has not seen them sign in.")
	}
	return u, err
}

func (b consoleBackend) SetAttributes(ctx context.Context, a console.Actor, sub string, o map[string]string) (int, error) {
	u, n, err := b.e.directory.SetOverrides(ctx, sub, o, a.Email)
	if errors.Is(err, authn.ErrInvalidAttribute) {
		return 0, httperr.BadRequest(err.Error()+".", err)
	}
	if u != nil {
		b.e.auditAdmin(by(a), "set-attributes", sub, "", attrsString(o))
	}
	return n, err
}

// attrsString is an attribute change as the audit event's reason.
func attrsString(o map[string]string) string {
	if len(o) == 0 {
		return "cleared"
	}
	parts := make([]string, 0, len(o))
	for _, k := range slices.Sorted(maps.Keys(o)) {
		parts = append(parts, k+"="+o[k])
	}
	return strings.Join(parts, ", ")
}

func (b consoleBackend) Sessions(ctx context.Context, sub string) ([]console.Session, error) {
	found, err := b.e.sessions.Matching(ctx, func(s *authn.Session) bool { return sub == "" || s.Identity.Subject == sub })
	if err != nil {
		return nil, err
	}
	out := make([]console.Session, 0, len(found))
	for _, s := range found {
		out = append(out, console.Session{Ref: s.Ref(), User: s.Identity.Subject, Email: s.Identity.Email, Name: s.Identity.Name,
			CreatedAt: s.CreatedAt, LastSeen: s.LastSeen, ExpiresAt: s.ExpiresAt})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LastSeen.After(out[j].LastSeen) })
	return out, nil
}

func (b consoleBackend) RevokeSession(ctx context.Context, a console.Actor, ref string) error {
	return b.e.revokeSession(ctx, by(a), ref)
}

func (b consoleBackend) SignOut(ctx context.Context, a console.Actor, sub string) (int, error) {
	return b.e.signOut(ctx, by(a), sub, "signed out from the console")
}

// Devices.

func (b consoleBackend) Devices(ctx context.Context, user string) ([]*posture.Device, error) {
	if b.e.devices == nil {
		return nil, nil
	}
	return b.e.devices.List(ctx, user)
}

func (b consoleBackend) Device(ctx context.Context, id string) (*posture.Device, error) {
	if err := b.e.knownDevice(ctx, id); err != nil {
		return nil, err
	}
	return b.e.devices.Get(ctx, id)
}

func (b consoleBackend) Evidence(id string) *posture.Evidence { return b.e.reports.Evidence(id) }

func (b consoleBackend) History(ctx context.Context, id string, limit int) ([]posture.HistoryEntry, error) {
	return b.e.reports.History(ctx, id, limit)
}

func (b consoleBackend) Quarantines() []posture.QuarantineEntry { return b.e.quarantine.List() }

func (b consoleBackend) Quarantine(ctx context.Context, a console.Actor, kind, id, reason, fix string) error {
	return b.e.isolate(ctx, by(a), kind, id, reason, fix)
}

func (b consoleBackend) Release(ctx context.Context, a console.Actor, kind, id string) error {
	_, err := b.e.release(ctx, by(a), kind, id, "released from the console")
	return err
}

func (b consoleBackend) RevokeDevice(ctx context.Context, a console.Actor, id, reason string) error {
	return b.e.revokeDevice(ctx, by(a), id, reason)
}

func (b consoleBackend) ApproveDevice(ctx context.Context, a console.Actor, id string) error {
	return b.e.approveDevice(ctx, by(a), id)
}

// Live.

func (b consoleBackend) Live() []console.LiveConn {
	var out []console.LiveConn
	b.e.live.each(func(le *liveEntry) bool {
		c := console.LiveConn{Kind: "http", Session: authn.RefOf(le.sessKey), User: le.req.Subject.User, Email: le.req.Subject.Email,
			Device: le.device, App: le.req.App, Method: le.req.Method, Path: le.req.Path, Since: le.since}
		if le.req.Source.IsValid() {
			c.Source = le.req.Source.String()
		}
		switch {
		case le.req.App == "":
			c.Kind = "tunnel"
		case le.req.Method == "CONNECT":
			c.Kind = "stream"
		}
		out = append(out, c)
		return len(out) < console.MaxLive
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Since.Before(out[j].Since) })
	return out
}

func (b consoleBackend) Replica() string { return b.e.opts.Bus.ID() }

// Audit.

func (b consoleBackend) Audit(q audit.Query) ([]audit.Entry, bool) { return b.e.recent.Find(q) }

func (b consoleBackend) Record(ev audit.Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	b.e.opts.Audit.Record(ev)
}
