package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/bus"
	"github.com/ztna-dev/ztna/internal/store"
)

// Where the serving policy comes from. In files mode (policy.source
// "files", the default) it is the config file's groups and rules and
// policy.dir's, compiled when the config is loaded. In store mode it is
// the newest version in the store (groups.Versions): the files seed
// version 1 when the store has none, and after that the console's
// commits are the policy, applied here and, through the bus, on every
// replica.

// storedPolicy compiles the store's newest policy version against cfg,
// first saving cfg's own policy as version 1 if the store has none.
func (e *Edge) storedPolicy(ctx context.Context, cfg *Config) (*groups.Policy, *groups.Version, error) {
	head, err := e.storedHead(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	p, err := compileVersion(head, cfg)
	return p, head, err
}

// storedHead is the store's newest policy version, seeded from cfg's
// files if the store has none.
func (e *Edge) storedHead(ctx context.Context, cfg *Config) (*groups.Version, error) {
	head, err := e.versions.Head(ctx)
	if errors.Is(err, store.ErrNotFound) {
		f := sourceFile(cfg.policySrc)
		head, err = e.versions.Commit(ctx, 0, f, "config", "Initial policy from the config files", 0)
		if errors.Is(err, groups.ErrPolicyConflict) {
			head, err = e.versions.Head(ctx) // another replica seeded it first
		}
	}
	if err != nil {
		return nil, fmt.Errorf("policy from the store: %w", err)
	}
	return head, nil
}

func compileVersion(v *groups.Version, cfg *Config) (*groups.Policy, error) {
	p, err := groups.Compile(v.Source(), cfg.policyOpt)
	if err != nil {
		return nil, fmt.Errorf("policy version %d in the store does not compile with this config: %w", v.N, err)
	}
	return p, nil
}

// sourceFile is a policy source as one policy file.
func sourceFile(src *groups.Source) groups.File {
	var f groups.File
	if src != nil {
		f.Groups = append(f.Groups, src.Groups...)
		f.Apps = append(f.Apps, src.Apps...)
	}
	return f
}

// CompilePolicy compiles a candidate policy against the serving config's
// apps, profiles and GeoIP database, without applying it.
func (e *Edge) CompilePolicy(src *groups.Source) (*groups.Policy, error) {
	return groups.Compile(src, e.state.Load().Config.policyOpt)
}

// CommitPolicy saves f as the store version after parent and serves it
// here; the other replicas follow on the bus. It fails without changing
// anything when f does not compile, when the policy is not store-managed,
// or when another version was saved since parent (groups.ErrPolicyConflict).
func (e *Edge) CommitPolicy(ctx context.Context, parent int, f groups.File, author, message string, revertOf int) (*groups.Version, error) {
	st := e.state.Load()
	if !st.Config.PolicyFromStore() {
		return nil, errors.New("the policy comes from files (policy.source files): change the files")
	}
	var src groups.Source
	src.AddFile(nil, &f)
	if _, err := e.CompilePolicy(&src); err != nil {
		return nil, err
	}
	v, err := e.versions.Commit(ctx, parent, f, author, message, revertOf)
	if err != nil {
		return nil, err
	}
	if err := e.SyncStoredPolicy(ctx); err != nil {
		return v, fmt.Errorf("version %d saved but not applied here: %w", v.N, err)
	}
	return v, nil
}

// PolicyVersions is the store-managed policy history.
func (e *Edge) PolicyVersions() *groups.Versions { return e.versions }

// SyncStoredPolicy serves the store's newest policy version if it is not
// the one serving (store mode; a no-op in files mode).
func (e *Edge) SyncStoredPolicy(ctx context.Context) error {
	cur := e.state.Load()
	cfg := cur.Config
	if !cfg.PolicyFromStore() {
		return nil
	}
	head, err := e.storedHead(ctx, cfg)
	if err != nil || head.N <= cur.policyN {
		return err // serving it already (most events: the one this replica sent)
	}
	p, err := compileVersion(head, cfg)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.state.Load()
	if old.Config != cfg {
		return nil // a config reload read the store itself meanwhile
	}
	if head.N <= old.policyN {
		return nil
	}
	st := *old
	st.policy, st.policySrc, st.policyN = p, head.Source(), head.N
	e.version++
	st.Version = e.version
	e.state.Store(&st)
	e.metrics.configVersion.Set(float64(st.Version))
	e.policyChanged(ctx, old, &st)
	e.live.reevaluate(st.policy, "policy changed")
	// The old state shares everything but the policy with the new one:
	// nothing of it is closed.
	return nil
}

// policyChanged is what follows a swap that may have changed the policy:
// metrics, and the replicas told. The caller decides live connections
// again.
func (e *Edge) policyChanged(ctx context.Context, old, st *State) {
	if old != nil && old.policy.Version() == st.policy.Version() {
		return
	}
	e.metrics.policyInfo.Reset()
	e.metrics.policyInfo.WithLabelValues(st.policy.Version()).Set(1)
	e.policySince.Store(time.Now())
	e.opts.Bus.Publish(bus.Policy, st.policy.Version())
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	e.recordPolicy(rctx)
	cancel()
}
