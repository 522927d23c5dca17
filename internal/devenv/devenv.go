// Package devenv builds the whole ztna system on one machine: the embedded
// development IdP with demo users, the edge with demo apps and rules, and the
// demo "whoami" app that shows the identity it received. `ztna dev` runs it
// for people; the integration tests run the same thing on 127.0.0.1:0, so
// what the tests exercise is what a developer sees.
//
// It is for development only: the IdP serves plain HTTP on loopback and
// knows its users' passwords. Nothing here may be used by `ztna serve`.
package devenv

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"go.yaml.in/yaml/v3"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/authn/devidp"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/internal/bus"
	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/bolt"
	redisstore "github.com/ztna-dev/ztna/internal/store/redis"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/posture/agent"
	"github.com/ztna-dev/ztna/proxy"
	"github.com/ztna-dev/ztna/proxy/edge"
	"github.com/ztna-dev/ztna/proxy/identity"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// Options configure the dev system. Zero values are the `ztna dev` defaults.
type Options struct {
	// DataDir keeps the dev CA, the edge certificate, the signing keys and
	// the session store between runs. Required.
	DataDir string
	// Listen is the edge's HTTPS (and HTTP/3) address. "" → 127.0.0.1:8443.
	Listen string
	// RedirectListen is the plain-HTTP redirect address. "" → off.
	RedirectListen string
	// ProxyProtocol lets a load balancer in front send PROXY headers
	// (tests of the inbound path). Zero → off.
	ProxyProtocol edge.InboundProxy
	// AdminListen serves /healthz, /readyz, /metrics. "" → 127.0.0.1:9090;
	// "off" disables it.
	AdminListen string
	// IdPListen is the dev IdP's address. "" → 127.0.0.1:5556.
	IdPListen string
	// Domain is the parent of every dev host name. "" → "localhost"
	// (browsers resolve *.localhost to the loopback address).
	Domain string
	// Logger is the process log; nil discards.
	Logger *slog.Logger
	// Audit receives audit events as JSON lines; nil → Logger's output is
	// not used, events are discarded.
	Audit io.Writer
	// DrainDelay and GraceTimeout of the edge. 0 → none (dev stops at
	// once) and 5s.
	DrainDelay   time.Duration
	GraceTimeout time.Duration
	// MaxConnectionDuration is the edge's listen.max_connection_duration:
	// a client connection older than this is told to go away (HTTP/2
	// GOAWAY, a tunnel "bye") so the client reconnects. 0 → off, as in
	// `ztna dev`; tests of the client's reconnect set it.
	MaxConnectionDuration time.Duration
	// Registry for metrics; nil → a fresh registry.
	Registry *prometheus.Registry
	// Redis, if set, keeps the shared state in Redis instead of bolt and
	// joins the replicas' bus there, as `ztna serve` with store.backend
	// redis does. Two envs with the same Redis and the same DataDir (so
	// the same CAs and signing keys) are two replicas of one edge.
	Redis *redisstore.Config
	// Configure, if set, adjusts the demo config before the edge is built
	// from it (tests: settings read only at start, such as session
	// lifetimes).
	Configure func(*proxy.Config)
	// PolicySource is the config's policy.source: "" or "files" (the
	// demo policy from the config, read-only in the console) or "store"
	// (seeded from it, edited in the console; `ztna dev` sets it).
	PolicySource string
	// LocalDevice enrolls this machine for the first demo user (alice) and
	// runs the agent in-process, reporting this machine's real posture
	// (`ztna dev` sets it). Its state is kept in DataDir/agent.
	LocalDevice bool
}

// Env is a running dev system.
type Env struct {
	IdP        *devidp.Provider
	Edge       *proxy.Edge
	Server     *edge.Server
	Users      []devidp.User
	AuthOrigin string // https://auth.localhost:PORT
	EdgeAddr   string // the bound 127.0.0.1:PORT of the edge
	CAFile     string // the dev CA that signed the edge certificate
	EchoAddr   string // the TCP echo app (PROXY v2 only; reached through the tunnel)
	DeviceCA   *posture.DeviceCA
	// SignalsToken and AdminToken are the bearer tokens of the signal and
	// admin APIs (kept in the data dir).
	SignalsToken, AdminToken string
	// AgentDir is the local device's agent state (Options.LocalDevice), and
	// LocalDeviceID its device ID; "" without one.
	AgentDir, LocalDeviceID string
	// ConfigYAML is the edge's config as a `ztna serve` file, for people to
	// read and adapt (the client secret travels in ZTNA_OIDC_CLIENT_SECRET).
	ConfigYAML string

	cfg     *proxy.Config
	st      store.Store
	audit   *audit.Log
	closers []func(context.Context) error // run in reverse after the edge stopped
	// shutdownEdge drains and stops the listeners; closeIdle drops the
	// env's own idle connections to the edge first.
	shutdownEdge func(context.Context) error
	closeIdle    func()
	once         sync.Once
}

// AppURL is the browser URL of the named demo app.
func (e *Env) AppURL(app string) string {
	for _, a := range e.cfg.Apps {
		if a.Name == app {
			return "https://" + a.Host + portSuffix(e.cfg.PublicPort)
		}
	}
	return ""
}

// Config returns the edge's current config (tests may modify a copy and
// Apply it).
func (e *Env) Config() *proxy.Config { return e.cfg }

// Start brings the system up. On error everything started is stopped.
func Start(ctx context.Context, o Options) (env *Env, err error) {
	if o.DataDir == "" {
		return nil, errors.New("devenv: DataDir is required")
	}
	o = withDefaults(o)
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	env = &Env{Users: devidp.DemoUsers()}
	defer func() {
		if err != nil {
			_ = env.Close(context.Background())
		}
	}()

	// The IdP's address is needed for the edge config, and the edge's port
	// for the IdP's redirect URIs: bind both sockets before serving either.
	idpLn, err := net.Listen("tcp", o.IdPListen)
	if err != nil {
		return nil, fmt.Errorf("dev IdP listen %s: %w", o.IdPListen, err)
	}
	env.closers = append(env.closers, func(context.Context) error {
		if err := idpLn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	})
	issuer := "http://" + idpLn.Addr().String()

	authHost := "auth." + o.Domain
	hosts := []string{authHost, "localhost", "127.0.0.1", "::1"}
	for _, app := range webApps {
		hosts = append(hosts, app+"."+o.Domain)
	}
	hosts = append(hosts, "console."+o.Domain)
	certFile, keyFile, caFile, err := ensureCerts(o.DataDir, hosts)
	if err != nil {
		return nil, err
	}
	env.CAFile = caFile

	deviceCA, err := posture.LoadOrCreateDeviceCA(filepath.Join(o.DataDir, "device-ca.pem"), filepath.Join(o.DataDir, "device-ca-key.pem"))
	if err != nil {
		return nil, err
	}
	env.DeviceCA = deviceCA
	late := &lateEdge{}
	srv, err := edge.New(edge.Config{
		Address: o.Listen, HTTPRedirectAddress: o.RedirectListen, AdminAddress: o.AdminListen, ProxyProtocol: o.ProxyProtocol,
		DrainDelay: o.DrainDelay, GraceTimeout: o.GraceTimeout,
		MaxConnectionDuration: o.MaxConnectionDuration,
	}, edge.Options{
		Handler: late,
		TLSConfig: &tls.Config{GetCertificate: late.GetCertificate,
			ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: deviceCA.Pool()},
		Metrics:    o.Registry,
		Registerer: o.Registry,
		Logger:     o.Logger,
		Ready:      func() bool { return late.e.Load() != nil },
		Tunnel:     late.ServeTunnel,
	})
	if err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil {
		return nil, err
	}
	env.Server = srv
	// The edge stops first, in Close (not a closer): it drains while the
	// store, the audit log and the apps are still there.
	env.shutdownEdge = srv.Shutdown
	port := srv.Addr().(*net.TCPAddr).Port
	env.EdgeAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	env.AuthOrigin = "https://" + authHost + portSuffix(port)

	// Everything that talks to the edge by name (the IdP's back-channel
	// logout, whoami's JWKS fetch) resolves dev hosts to the edge and trusts
	// the dev CA.
	edgeClient, err := env.Client()
	if err != nil {
		return nil, err
	}
	// Before the edge's shutdown: an idle HTTP/2 connection would
	// otherwise hold the drain for its GOAWAY grace.
	env.closeIdle = edgeClient.CloseIdleConnections
	idp, err := devidp.New(devidp.Config{
		Issuer: issuer,
		Users:  env.Users,
		Clients: []devidp.Client{{
			ID: "ztna-edge", Secret: devClientSecret,
			RedirectURIs:           []string{env.AuthOrigin + authn.PathCallback},
			PostLogoutRedirectURIs: []string{env.AuthOrigin + authn.PathSignedOut},
			BackChannelLogoutURI:   env.AuthOrigin + authn.PathBackchannel,
		}},
		BackChannelClient: edgeClient,
		Logger:            o.Logger,
	})
	if err != nil {
		return nil, err
	}
	env.IdP = idp
	idpSrv := &http.Server{Handler: idp.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug)}
	go func() { _ = idpSrv.Serve(idpLn) }()
	env.closers = append(env.closers, func(ctx context.Context) error {
		err := idpSrv.Shutdown(ctx)
		return errors.Join(err, idp.Close())
	})

	// The demo apps, each behind PROXY v2: they accept only connections
	// that start with the edge's header and a signed identity for them.
	verifier := func(app string) (*identity.Verifier, error) {
		return identity.NewVerifier(identity.VerifierConfig{
			Issuer: env.AuthOrigin, Audience: app, JWKSURL: env.AuthOrigin + proxy.JWKSPath, HTTPClient: edgeClient,
		})
	}
	apps := map[string]string{}
	for _, name := range webApps {
		v, err := verifier(name)
		if err != nil {
			return nil, err
		}
		addr, closeApp, err := startWhoami(name, v, o.Logger)
		if err != nil {
			return nil, err
		}
		env.closers = append(env.closers, closeApp)
		apps[name] = addr
	}
	ev, err := verifier("echo")
	if err != nil {
		return nil, err
	}
	echoAddr, closeEcho, err := startEcho(ev, o.Logger)
	if err != nil {
		return nil, err
	}
	env.closers = append(env.closers, closeEcho)
	env.EchoAddr = echoAddr
	cfg := demoConfig(o, authHost, port, issuer, apps, echoAddr, certFile, keyFile)
	if o.Configure != nil {
		o.Configure(cfg)
	}
	if cfg.Signals.TokenFile, env.SignalsToken, err = ensureToken(o.DataDir, "signals-token"); err != nil {
		return nil, err
	}
	if cfg.Admin.TokenFile, env.AdminToken, err = ensureToken(o.DataDir, "admin-token"); err != nil {
		return nil, err
	}
	env.cfg = cfg

	var st store.Store
	var replicas bus.Bus = bus.Local{}
	startReplicas := func(bus.Handler) {}
	if o.Redis != nil {
		cfg.Store = proxy.StoreConfig{Backend: proxy.StoreRedis, Redis: *o.Redis}
		rs, err := redisstore.Open(ctx, *o.Redis, o.Logger)
		if err != nil {
			return nil, err
		}
		rb := bus.NewRedis(rs.Client(), rs.Prefix()+"events", o.Logger)
		st, replicas = rs, rb
		startReplicas = func(h bus.Handler) { rb.Start(context.Background(), h) }
		env.closers = append(env.closers, func(context.Context) error { return errors.Join(rb.Close(), rs.Close()) })
	} else {
		bs, err := bolt.Open(filepath.Join(o.DataDir, "ztna.db"), bolt.Options{Logger: o.Logger})
		if err != nil {
			return nil, err
		}
		st = bs
		env.closers = append(env.closers, func(context.Context) error { return bs.Close() })
	}
	env.st = st
	keys, err := identity.LoadOrCreateKeySet(filepath.Join(o.DataDir, "signing-keys.json"), 0, time.Now())
	if err != nil {
		return nil, err
	}
	env.audit = audit.New(o.Audit, 0, o.Logger)
	env.closers = append(env.closers, env.audit.Close)
	px, err := proxy.New(ctx, cfg, proxy.Options{
		Store: st, Keys: keys, Audit: env.audit, Logger: o.Logger, Registry: o.Registry,
		IdPClient: &http.Client{Timeout: 10 * time.Second}, DeviceCA: deviceCA, Bus: replicas,
	})
	if err != nil {
		return nil, err
	}
	env.Edge = px
	// The demo users are in the directory before they sign in, so the
	// console's group previews list them from the start.
	for _, u := range env.Users {
		id := authn.Identity{Subject: u.Subject, Email: u.Email, Name: u.Name, Groups: u.Groups, Attributes: u.Attributes}
		if err := px.Directory().Provision(ctx, id); err != nil {
			return nil, fmt.Errorf("provision demo user %s: %w", u.Username, err)
		}
	}
	if env.ConfigYAML, err = configYAML(cfg); err != nil {
		return nil, err
	}
	late.e.Store(px)
	startReplicas(px.ReplicaEvents())
	if o.LocalDevice {
		if err := env.startLocalAgent(ctx, o.Logger); err != nil {
			return nil, fmt.Errorf("local device: %w", err)
		}
	}
	return env, nil
}

// startLocalAgent enrolls this machine to the first demo user, straight
// through the registry (there is nobody to approve a code), unless it is
// enrolled already, and runs the agent in-process until Close.
func (e *Env) startLocalAgent(ctx context.Context, logger *slog.Logger) error {
	dir := filepath.Join(e.cfg.DataDir, "agent")
	if st, err := agent.ReadStatus(dir); err == nil && st.DeviceID != "" {
		if _, err := e.Edge.Devices().Get(ctx, st.DeviceID); err == nil {
			e.AgentDir, e.LocalDeviceID = dir, st.DeviceID
		}
	}
	if e.LocalDeviceID == "" {
		key, err := agent.LoadOrCreateKey(dir)
		if err != nil {
			return err
		}
		proof, err := posture.SignEnrollProof(key)
		if err != nil {
			return err
		}
		host, _ := os.Hostname()
		dev, der, err := e.Edge.Devices().EnrollFor(ctx, e.Users[0].Subject, &key.PublicKey, cmp.Or(host, "this machine"), runtime.GOOS, proof, time.Now())
		if err != nil {
			return err
		}
		if err := agent.SaveEnrollment(dir, e.AuthOrigin, dev.ID, der, e.DeviceCA.CertPEM(), time.Now()); err != nil {
			return err
		}
		e.AgentDir, e.LocalDeviceID = dir, dev.ID
	}
	client, err := e.Client()
	if err != nil {
		return err
	}
	runner := &agent.Runner{
		StateDir:  dir,
		Collector: agent.New(agent.Config{EDR: []agent.EDRConfig{{Name: DemoEDR, ProcessNames: []string{DemoEDR}}}, Logger: logger}),
		Transport: client.Transport.(*http.Transport),
		Logger:    logger,
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = runner.Run(rctx)
	}()
	e.closers = append(e.closers, func(context.Context) error { cancel(); <-done; return nil })
	return nil
}

// Close stops everything, the edge first (it drains: tunnel clients are
// told to go away and reconnect, not that their session ended), then the
// apps, the IdP and the store.
func (e *Env) Close(ctx context.Context) error {
	var err error
	e.once.Do(func() {
		if e.closeIdle != nil {
			e.closeIdle()
		}
		if e.shutdownEdge != nil {
			err = e.shutdownEdge(ctx)
		}
		if e.Edge != nil {
			e.Edge.Close()
		}
		for i := len(e.closers) - 1; i >= 0; i-- {
			err = errors.Join(err, e.closers[i](ctx))
		}
	})
	return err
}

// Client returns an HTTP client that reaches every dev host name at the edge
// and trusts the dev CA. It follows no redirects and keeps no cookies; add a
// jar as needed.
func (e *Env) Client() (*http.Client, error) {
	pem, err := os.ReadFile(e.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("dev CA: no certificate")
	}
	edgeAddr := e.EdgeAddr
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err == nil && (host == "localhost" || hasSuffix(host, ".localhost")) {
				addr = edgeAddr
			}
			return dialer.DialContext(ctx, network, addr)
		},
		ForceAttemptHTTP2: true,
	}
	return &http.Client{Transport: tr, Timeout: 15 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, nil
}

func hasSuffix(s, suffix string) bool {
	return len(s) > len(suffix) && s[len(s)-len(suffix):] == suffix
}

func withDefaults(o Options) Options {
	if o.Listen == "" {
		o.Listen = "127.0.0.1:8443"
	}
	if o.AdminListen == "" {
		o.AdminListen = "127.0.0.1:9090"
	}
	if o.IdPListen == "" {
		o.IdPListen = "127.0.0.1:5556"
	}
	if o.Domain == "" {
		o.Domain = "localhost"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.DrainDelay == 0 {
		// Nobody load-balances onto a dev machine: stop at once (the edge
		// reads 0 as "default", so ask for the smallest delay instead).
		o.DrainDelay = time.Nanosecond
	}
	if o.GraceTimeout == 0 {
		o.GraceTimeout = 5 * time.Second
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	return o
}

func portSuffix(p int) string {
	if p == 443 || p == 0 {
		return ""
	}
	return ":" + strconv.Itoa(p)
}

// demoConfig is the edge config of the dev system: three apps on whoami
// upstreams with rules that let some demo users in and keep others out,
// one of them ("strict") only from a device that passes the strict posture
// profile, and the TCP echo app.
func demoConfig(o Options, authHost string, port int, issuer string, upstreams map[string]string, echoAddr, certFile, keyFile string) *proxy.Config {
	return &proxy.Config{
		Listen: edge.Config{Address: o.Listen, HTTPRedirectAddress: o.RedirectListen, AdminAddress: o.AdminListen,
			ProxyProtocol: o.ProxyProtocol},
		AuthHost:   authHost,
		PublicPort: port,
		DataDir:    o.DataDir,
		Devices: proxy.DevicesConfig{CACertFile: filepath.Join(o.DataDir, "device-ca.pem"),
			CAKeyFile: filepath.Join(o.DataDir, "device-ca-key.pem")},
		TLS: proxy.TLSConfig{CertFile: certFile, KeyFile: keyFile},
		Posture: proxy.PostureConfig{Profiles: []posture.Profile{
			{Name: "baseline"},
			{Name: "strict", RequireDiskEncryption: true, RequireFirewall: true, EDR: &posture.EDRRequirement{
				Name: DemoEDR, AllowedSHA256: []string{demoEDRHash}}},
		}},
		Signals: proxy.SignalsConfig{MinSeverity: "warning"},
		OIDC: authn.Config{
			Issuer: issuer, ClientID: "ztna-edge", ClientSecret: devClientSecret,
			Scopes: []string{"openid", "profile", "email", "groups", "offline_access"},
		},
		Groups: []groups.Group{
			{Name: "engineering", Description: "Engineers, as the IdP groups them", Include: []string{"idp:engineering"}},
			{Name: "finance", Description: "The finance department", When: `user.department == "Finance"`},
			{Name: "security-tech", Description: "Group A (seed 000): the Security Tech department", When: `user.department == "Security Tech"`},
			{Name: "security-policy", Description: "Group B (seed 000): the Security Policy department", When: `user.department == "Security Policy"`},
			{Name: "security-engineers", Description: "Group C (seed 000): security engineers", When: `user.title == "Security Engineer"`},
			{Name: "security", Description: "Everyone in security", Include: []string{"security-tech", "security-policy"}},
			{Name: "employees", Description: "Staff: everyone with a department who is not external",
				When: `user.department != "" and user.department != "External"`},
			{Name: "ztna-admins", Description: "Console admins, as the IdP groups them", Include: []string{"idp:ztna-admins"}},
			{Name: "ztna-owners", Description: "Console owners: may change who can use the console", Members: []string{"admin@example.com"}},
		},
		Console: proxy.ConsoleConfig{OwnerGroups: []string{"ztna-owners"}},
		Policy:  proxy.PolicyConfig{Source: o.PolicySource},
		Apps: []proxy.AppConfig{
			{
				Name: "whoami", Host: "whoami." + o.Domain, Upstream: "http://" + upstreams["whoami"], ProxyProtocol: "v2",
				Rules: []groups.Rule{
					{Name: "finance-read-only", Action: "deny", Groups: []string{"finance"}, Methods: []string{"POST", "PUT", "PATCH", "DELETE"}},
					{Name: "employees", Groups: []string{"engineering", "finance"}},
				},
			},
			{
				Name: "secure", Host: "secure." + o.Domain, Upstream: "http://" + upstreams["secure"], ProxyProtocol: "v2",
				Rules: []groups.Rule{{Name: "security-team", Groups: []string{"security-tech"}}},
			},
			{
				Name: "soc", Host: "soc." + o.Domain, Upstream: "http://" + upstreams["soc"], ProxyProtocol: "v2",
				Rules: []groups.Rule{{Name: "security-engineers", Groups: []string{"security-engineers"}}},
			},
			{
				Name: "grc", Host: "grc." + o.Domain, Upstream: "http://" + upstreams["grc"], ProxyProtocol: "v2",
				Rules: []groups.Rule{{Name: "security-policy", Groups: []string{"security-policy"}}},
			},
			{
				Name: "strict", Host: "strict." + o.Domain, Upstream: "http://" + upstreams["strict"], ProxyProtocol: "v2",
				PostureProfile: "strict",
				Rules:          []groups.Rule{{Name: "employees", Groups: []string{"engineering", "finance", "security"}}},
			},
			{
				Name: "console", Host: "console." + o.Domain, Builtin: proxy.BuiltinConsole,
				Rules: []groups.Rule{{Name: "admins", Groups: []string{"ztna-admins"}}},
			},
			{
				Name: "echo", TCP: echoAddr, ProxyProtocol: "v2",
				Rules: []groups.Rule{{Name: "engineering", Groups: []string{"engineering"}}},
			},
		},
	}
}

// webApps are the demo HTTP apps, each a whoami page: secure, soc and grc
// are the seed's groups A, C and B (Security Tech, security engineers,
// Security Policy), so a role change visibly moves access between them.
var webApps = []string{"whoami", "secure", "soc", "grc", "strict"}

// DemoEDR is the EDR the strict profile asks for. No such product runs on
// a dev machine, so the strict app shows what a failing device sees.
const DemoEDR = "demo-edr"

// demoEDRHash is the only approved build of DemoEDR: the SHA-256 of the
// empty file, so nothing real can ever match by accident.
const demoEDRHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// ensureToken returns the path and contents of the API bearer token kept
// in dir/name, creating a random one (mode 0600) on first use.
func ensureToken(dir, name string) (path, token string, err error) {
	path = filepath.Join(dir, name)
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return path, strings.TrimSpace(string(b)), nil
	}
	token = rand.Text() + rand.Text()
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, token, nil
}

// devClientSecret is the dev IdP's secret for the edge: not a secret, since
// the dev IdP lives in the same process and only on loopback.
const devClientSecret = "dev-edge-secret"

// lateEdge lets the listeners start (and report their port, which the
// config needs) before the edge exists; until then it answers 503.
type lateEdge struct{ e atomic.Pointer[proxy.Edge] }

func (l *lateEdge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if e := l.e.Load(); e != nil {
		e.ServeHTTP(w, r)
		return
	}
	http.Error(w, "starting", http.StatusServiceUnavailable)
}

func (l *lateEdge) ServeTunnel(ctx context.Context, conn *quic.Conn) {
	if e := l.e.Load(); e != nil {
		e.ServeTunnel(ctx, conn)
		return
	}
	_ = conn.CloseWithError(tunnel.CodeGoingAway, "starting")
}

func (l *lateEdge) GetCertificate(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if e := l.e.Load(); e != nil {
		return e.GetCertificate(h)
	}
	return nil, errors.New("edge starting")
}

// configYAML renders cfg as a config file; the in-code client secret
// becomes an environment variable reference, as secrets never go in files.
func configYAML(cfg *proxy.Config) (string, error) {
	c := *cfg
	c.OIDC.ClientSecretEnv = "ZTNA_OIDC_CLIENT_SECRET"
	b, err := yaml.Marshal(&c)
	if err != nil {
		return "", fmt.Errorf("render dev config: %w", err)
	}
	return "# The edge config of `ztna dev`, as a `ztna serve` file.\n" + string(b), nil
}
