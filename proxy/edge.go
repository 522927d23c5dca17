package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/internal/bus"
	"github.com/ztna-dev/ztna/internal/ratelimit"
	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/proxy/edge"
	"github.com/ztna-dev/ztna/proxy/identity"
	"github.com/ztna-dev/ztna/web"
	"github.com/ztna-dev/ztna/web/console"
)

// Options are the edge's long-lived dependencies: they outlive reloads.
type Options struct {
	Store store.Store
	Keys  *identity.KeySet
	// Audit receives one event per decision; the edge also keeps the
	// recent ones in memory for the console's audit page (Log.Keep).
	Audit    *audit.Log
	Logger   *slog.Logger
	Registry prometheus.Registerer // nil → metrics are not registered
	// IdPClient is used for every call to the IdP (nil → 10s timeout).
	IdPClient *http.Client
	// DeviceCA issues and verifies device client certificates; the TLS
	// listener must ask for certificates from it (ClientAuth
	// VerifyClientCertIfGiven, ClientCAs DeviceCA.Pool()). nil → no device
	// step: requests carry no device.
	DeviceCA *posture.DeviceCA
	// Bus tells the other replicas about trust changes made here (see
	// replicas.go); deliver theirs to ReplicaEvents. nil → a single
	// replica.
	Bus bus.Bus
}

// Edge is the request pipeline with its current State. It is an
// http.Handler; proxy/edge serves it.
type Edge struct {
	opts        Options
	logger      *slog.Logger
	sessions    *authn.Sessions
	pages       *web.Pages
	assets      http.Handler
	signer      *identity.Signer
	jwks        []byte
	assertions  *assertionCache
	live        *liveRegistry
	metrics     *metrics
	pools       *identityPools
	devices     *posture.Devices // nil without a device CA
	reports     *posture.Reports
	quarantine  *posture.Quarantine
	notifier    *posture.Notifier // nil without signals.webhook_url_file
	h2          h2Links           // tunnel connections over the HTTP/2 fallback
	tunnelUsers userStreams       // open tunnel streams per user

	stop     context.CancelFunc // stops the pool janitor and the posture watcher
	janitorW sync.WaitGroup

	policySince atomic.Value     // time.Time: when the serving policy version was applied
	versions    *groups.Versions // the store-managed policy (policy.source store)
	directory   *authn.Directory // the users seen, with console-set attributes
	recent      *audit.Recent    // this replica's recent audit events, for the console
	console     http.Handler     // the admin console (apps with builtin: console)
	// grantLimit bounds CLI device grants started per client address.
	grantLimit *ratelimit.PerClient

	mu      sync.Mutex // serialises Apply
	state   atomic.Pointer[State]
	version uint64
}

// CLI device grants one client address may start: a burst of 30 (an
// office behind one NAT signing in at nine), then one every 2 s.
const (
	cliGrantBurst = 30
	cliGrantEvery = 2 * time.Second
)

// New builds the edge and compiles its first State from cfg.
func New(ctx context.Context, cfg *Config, opts Options) (*Edge, error) {
	if opts.Store == nil || opts.Keys == nil || opts.Audit == nil {
		return nil, errors.New("proxy: Store, Keys and Audit are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Edge{
		opts:       opts,
		logger:     opts.Logger,
		sessions:   authn.NewSessions(opts.Store, cfg.OIDC.Sessions, opts.Logger),
		pages:      web.New(opts.Logger),
		signer:     opts.Keys.Signer(cfg.AuthOrigin()),
		jwks:       opts.Keys.JWKS(),
		assertions: newAssertionCache(),
		metrics:    newMetrics(opts.Registry),
		pools:      newIdentityPools(cfg.Pool, newPoolMetrics(opts.Registry)),
	}
	e.assets = e.pages.Assets()
	e.live = newLiveRegistry(e.logger)
	e.versions = groups.NewVersions(opts.Store)
	e.directory = authn.NewDirectory(opts.Store, e.sessions)
	e.recent = audit.NewRecent(0)
	opts.Audit.Keep(e.recent)
	e.console = console.New(consoleBackend{e}, e.logger)
	e.grantLimit = ratelimit.New(cliGrantEvery, cliGrantBurst, 10_000)
	if err := e.startPosture(ctx, cfg); err != nil {
		return nil, err
	}
	if opts.Bus == nil {
		opts.Bus = bus.Local{}
		e.opts.Bus = opts.Bus
	}
	e.announce(opts.Bus, opts.Registry)
	e.sessions.OnRevoke(func(key string) {
		e.assertions.dropSession(key)
		e.pools.dropSession(authn.RefOf(key))
		e.live.revokeSession(key, "session ended")
	})
	// A refresh that brings new attributes moves access at once: the
	// session's live exchanges are decided again with the new identity.
	e.sessions.OnUpdate(func(sess *authn.Session) {
		e.assertions.dropSession(sess.Key) // they carry the old identity
		st, now := e.state.Load(), time.Now()
		subj := subjectOf(&sess.Identity)
		e.live.closeSession(sess.Key, func(le *liveEntry) *cut {
			le.req.Subject = subj
			c := e.recheck(st, le, now)
			if c == nil && le.changed != nil {
				le.changed(le)
			}
			return c
		})
	})
	if err := e.Apply(ctx, cfg); err != nil {
		if e.notifier != nil {
			e.notifier.Close()
		}
		return nil, err
	}
	jctx, stop := context.WithCancel(context.Background())
	e.stop = stop
	e.janitorW.Add(2)
	go e.janitor(jctx)
	go e.postureWatcher(jctx)
	return e, nil
}

// janitor closes identity pools that have been idle for too long.
func (e *Edge) janitor(ctx context.Context) {
	defer e.janitorW.Done()
	t := time.NewTicker(max(e.pools.cfg.IdleTimeout/3, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			e.pools.sweep(now)
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			e.recordPolicy(rctx)
			cancel()
		}
	}
}

// Apply validates cfg (compiling its policy) and, only if that and
// compiling the rest fully succeed, makes it the current state. Live
// connections that the new policy no longer allows are closed. On error the
// old state keeps serving.
func (e *Edge) Apply(ctx context.Context, cfg *Config) error {
	if err := cfg.Validate(); err != nil {
		e.rejected(err)
		return fmt.Errorf("config rejected: %w", err)
	}
	return e.apply(ctx, cfg)
}

// rejected counts a config that was refused.
func (e *Edge) rejected(err error) {
	e.metrics.reloads.WithLabelValues("rejected").Inc()
	var pe *PolicyError
	if errors.As(err, &pe) {
		e.metrics.policyReloadErrors.Inc()
	}
}

// apply is Apply for a config already validated (by LoadConfig or
// Validate): its policy is compiled once, not again here.
func (e *Edge) apply(ctx context.Context, cfg *Config) (err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	defer func() {
		if err != nil {
			e.rejected(err)
		}
	}()
	if old := e.state.Load(); old != nil {
		if old.Config.AuthOrigin() != cfg.AuthOrigin() {
			return errors.New("config rejected: auth_host and public_port cannot change on reload: restart the edge")
		}
		if !sameListen(old.Config.Listen, cfg.Listen) {
			return errors.New("config rejected: listen settings cannot change on reload: restart the edge")
		}
		if !sameYAML(old.Config.Store, cfg.Store) {
			return errors.New("config rejected: store settings cannot change on reload: restart the edge")
		}
	}
	st, err := e.compile(ctx, cfg, e.version+1)
	if err != nil {
		return fmt.Errorf("config rejected: %w", err)
	}
	e.version++
	old := e.state.Swap(st)
	e.metrics.reloads.WithLabelValues("applied").Inc()
	e.metrics.configVersion.Set(float64(st.Version))
	e.policyChanged(ctx, old, st)
	if old != nil {
		e.live.reevaluate(st.policy, "policy changed")
		old.close()
	}
	return nil
}

// State returns the current state.
func (e *Edge) State() *State { return e.state.Load() }

// Devices returns the device registry, or nil without a device CA.
func (e *Edge) Devices() *posture.Devices { return e.devices }

// Reports returns the posture report book.
func (e *Edge) Reports() *posture.Reports { return e.reports }

// Quarantine returns the quarantine registry.
func (e *Edge) Quarantine() *posture.Quarantine { return e.quarantine }

// Directory returns the users the edge has seen, with the attributes
// admins set on them.
func (e *Edge) Directory() *authn.Directory { return e.directory }

// Sessions returns the session keeper (admin actions, tests).
func (e *Edge) Sessions() *authn.Sessions { return e.sessions }

// GetCertificate serves the certificate of the current state, so a reload
// can replace it without restarting listeners.
func (e *Edge) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := e.state.Load().cert; c != nil {
		return c, nil
	}
	return nil, errors.New("no server certificate configured")
}

// Close stops background work of the current state and waits for it.
func (e *Edge) Close() {
	if e.stop != nil {
		e.stop()
		e.janitorW.Wait()
	}
	e.live.closeAll("edge shutting down")
	if e.notifier != nil {
		e.notifier.Close()
	}
	e.pools.closeAll()
	if st := e.state.Load(); st != nil {
		st.close()
	}
	e.sessions.Wait()
}

// sameListen compares listener settings by what a config file would say,
// so an empty list and a missing one are the same.
func sameListen(a, b edge.Config) bool { return sameYAML(a, b) }

// sameYAML compares two values by what a config file would say.
func sameYAML(a, b any) bool {
	ya, erra := yaml.Marshal(a)
	yb, errb := yaml.Marshal(b)
	return erra == nil && errb == nil && bytes.Equal(ya, yb)
}
