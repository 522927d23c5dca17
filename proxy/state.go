package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/files"
	"github.com/ztna-dev/ztna/posture"
)

// State is one compiled, immutable version of the configuration: routes,
// policy, upstream transports, the login service and the certificate. A
// request loads it once and uses that version throughout; a reload builds a
// new one beside the old and swaps it in whole.
type State struct {
	Version uint64
	Config  *Config

	authHost string            // host[:port] as browsers write it
	hosts    map[string][]*app // HTTP apps by host[:port], longest prefix first
	apps     map[string]*app   // every app by name
	policy   *groups.Policy
	// policySrc is the serving policy as written, and policyN its store
	// version (0 in files mode).
	policySrc *groups.Source
	policyN   int
	auth      *authn.Service
	cert      *tls.Certificate

	profiles       map[string]*posture.CompiledProfile
	profileNames   []string                 // sorted
	releaseProfile *posture.CompiledProfile // nil: only admins release
	minSeverity    posture.Severity         // detections at or above quarantine
	signalsToken   []byte                   // nil: signal API off
	adminToken     []byte                   // nil: admin API off
}

// app is one compiled app.
type app struct {
	AppConfig
	hostPort  string
	upstream  *url.URL
	h2c       bool
	tlsConfig *tls.Config            // https upstreams: roots and client certificate
	transport *http.Transport        // nil for proxy_protocol apps (pooled per identity)
	proxy     *httputil.ReverseProxy // nil for TCP apps
	// profile is the posture profile every request must satisfy; nil: none.
	profile *posture.CompiledProfile
	// allowed and denied count decisions; resolved once here rather than
	// by label lookup on every request.
	allowed, denied prometheus.Counter
}

// route returns the app serving host (as sent by the client) and path.
func (s *State) route(host, path string) *app {
	for _, a := range s.hosts[strings.ToLower(host)] {
		if a.PathPrefix == "/" || path == a.PathPrefix || strings.HasPrefix(path, strings.TrimSuffix(a.PathPrefix, "/")+"/") {
			return a
		}
	}
	return nil
}

// isAppHost reports whether hostport is an app host as browsers write it.
func (s *State) isAppHost(hostport string) bool {
	return len(s.hosts[strings.ToLower(hostport)]) > 0
}

// compile turns a validated config into a State. It performs the I/O a
// config needs (OIDC discovery, reading certificates) so that a bad config
// fails here, before anything is swapped.
func (e *Edge) compile(ctx context.Context, cfg *Config, version uint64) (*State, error) {
	st := &State{Version: version, Config: cfg, hosts: map[string][]*app{}, apps: map[string]*app{}}
	st.authHost = cfg.hostPort(cfg.AuthHost)
	if cfg.policy == nil {
		return nil, errors.New("policy not compiled: the config was not validated")
	}
	st.policy, st.policySrc = cfg.policy, cfg.policySrc
	if cfg.PolicyFromStore() {
		p, v, err := e.storedPolicy(ctx, cfg)
		if err != nil {
			return nil, err
		}
		st.policy, st.policySrc, st.policyN = p, v.Source(), v.N
	}
	var err error
	if st.profiles, err = posture.CompileProfiles(cfg.Posture.Profiles); err != nil {
		return nil, fmt.Errorf("posture profiles: %w", err)
	}
	for name := range st.profiles {
		st.profileNames = append(st.profileNames, name)
	}
	sort.Strings(st.profileNames)
	st.releaseProfile = st.profiles[cfg.Signals.ReleaseProfile]
	if st.minSeverity, err = cfg.minSeverity(); err != nil {
		return nil, fmt.Errorf("signals.min_severity: %w", err)
	}
	if st.signalsToken, err = readToken(cfg.Signals.TokenFile); err != nil {
		return nil, fmt.Errorf("signals.token_file: %w", err)
	}
	if st.adminToken, err = readToken(cfg.Admin.TokenFile); err != nil {
		return nil, fmt.Errorf("admin.token_file: %w", err)
	}
	if cfg.TLS.CertFile != "" {
		c, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		st.cert = &c
	}
	for _, ac := range cfg.Apps {
		a, err := e.compileApp(ac, cfg)
		if err != nil {
			return nil, fmt.Errorf("app %q: %w", ac.Name, err)
		}
		a.profile = st.profiles[ac.PostureProfile]
		st.apps[a.Name] = a
		if a.TCP == "" {
			st.hosts[a.hostPort] = append(st.hosts[a.hostPort], a)
		}
	}
	for _, list := range st.hosts {
		sort.Slice(list, func(i, j int) bool { return len(list[i].PathPrefix) > len(list[j].PathPrefix) })
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rp, err := authn.NewRelyingParty(dctx, cfg.OIDC, cfg.AuthOrigin()+authn.PathCallback, e.opts.IdPClient)
	if err != nil {
		return nil, err
	}
	st.auth = authn.NewService(rp, e.sessions, e.opts.Store, authn.ServiceOptions{
		AuthOrigin: cfg.AuthOrigin(),
		IsAppHost:  st.isAppHost,
		Pages:      e.pages,
		Logger:     e.logger,
		Directory:  e.directory,

		DeviceGrantLimit: e.grantLimit,
	})
	return st, nil
}

func (e *Edge) compileApp(ac AppConfig, cfg *Config) (*app, error) {
	a := &app{AppConfig: ac,
		allowed: e.metrics.requests.WithLabelValues(ac.Name, "allow"),
		denied:  e.metrics.requests.WithLabelValues(ac.Name, "deny")}
	if ac.TCP != "" {
		return a, nil
	}
	if ac.Builtin != "" {
		a.hostPort = cfg.hostPort(ac.Host)
		return a, nil
	}
	u, err := url.Parse(ac.Upstream)
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	if u.Scheme == "h2c" {
		a.h2c = true
		u = &url.URL{Scheme: "http", Host: u.Host}
	}
	a.hostPort, a.upstream = cfg.hostPort(ac.Host), u
	if u.Scheme == "https" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if ac.UpstreamCAFile != "" {
			pem, err := os.ReadFile(ac.UpstreamCAFile)
			if err != nil {
				return nil, fmt.Errorf("upstream_ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("upstream_ca_file %s: no PEM certificates", ac.UpstreamCAFile)
			}
			tc.RootCAs = pool
		}
		if ac.UpstreamClientCertFile != "" {
			c, err := tls.LoadX509KeyPair(ac.UpstreamClientCertFile, ac.UpstreamClientKeyFile)
			if err != nil {
				return nil, fmt.Errorf("upstream client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{c}
		}
		a.tlsConfig = tc
	}
	a.proxy = e.newReverseProxy(a)
	if ac.ProxyProtocol != "" {
		// One pool per identity: a connection that began with one
		// identity's PROXY header never carries another's request.
		a.proxy.Transport = &identityRoundTripper{app: a, pools: e.pools}
	} else {
		a.transport = a.newTransport()
		a.proxy.Transport = a.transport
	}
	return a, nil
}

// newTransport is the app's upstream transport: the tuned pool with the
// app's TLS settings, or HTTP/2 without TLS for h2c upstreams.
func (a *app) newTransport() *http.Transport {
	tr := NewUpstreamTransport()
	tr.TLSClientConfig = a.tlsConfig.Clone()
	if a.h2c {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	return tr
}

// NewUpstreamTransport is the tuned keep-alive pool used for every app: the
// defaults (2 idle conns per host) would open a new connection for most
// requests under load. Exported so the benchmark's bare reverse proxy uses
// exactly the same one.
func NewUpstreamTransport() *http.Transport {
	return &http.Transport{
		Proxy: nil, // never send app traffic through an environment proxy
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    256,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  60 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		WriteBufferSize:        32 << 10,
		ReadBufferSize:         32 << 10,
	}
}

// close releases what the state owns once no request uses it any more.
func (s *State) close() {
	for _, a := range s.apps {
		if a.transport != nil {
			a.transport.CloseIdleConnections()
		}
	}
	if s.auth != nil {
		s.auth.Close()
	}
}

// minTokenLen is the shortest bearer token accepted for an API.
const minTokenLen = 32

// readToken reads a bearer token from path ("" → nil: the API is off). The
// file holds one line; surrounding white space is ignored.
func readToken(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, _, err := files.ReadRegular(path, 4096)
	if err != nil {
		return nil, err
	}
	tok := bytes.TrimSpace(b)
	if len(tok) < minTokenLen || bytes.ContainsAny(tok, " \t\r\n") {
		return nil, fmt.Errorf("%s: the token must be one line of at least %d characters", path, minTokenLen)
	}
	return tok, nil
}
