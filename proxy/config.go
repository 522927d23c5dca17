package proxy

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/config"
	"github.com/ztna-dev/ztna/internal/files"
	redisstore "github.com/ztna-dev/ztna/internal/store/redis"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/proxy/edge"
)

// Config is the edge's configuration file. Every zero value is documented
// and safe; `ztna serve` refuses a config that fails Validate.
type Config struct {
	// Listen is where the edge serves (HTTPS + HTTP/3, redirect, admin).
	Listen edge.Config `yaml:"listen"`
	// AuthHost is the host name of the edge's own login host, e.g.
	// auth.corp.example. Required. The OIDC redirect URI registered at the
	// IdP is https://AUTH_HOST[:PUBLIC_PORT]/.ztna/callback.
	AuthHost string `yaml:"auth_host"`
	// PublicPort is the HTTPS port browsers use to reach the edge (it
	// differs from the listen port behind a load balancer). 0 → the port of
	// listen.address, or 443.
	PublicPort int `yaml:"public_port"`
	// DataDir holds generated keys and the embedded store. "" → /var/lib/ztna.
	DataDir string `yaml:"data_dir"`
	// TLS is the edge's server certificate. Required for `serve`.
	TLS TLSConfig `yaml:"tls"`
	// OIDC is the company IdP.
	OIDC authn.Config `yaml:"oidc"`
	// Signing controls the keys that sign identity assertions to apps.
	Signing SigningConfig `yaml:"signing"`
	// Apps are the internal apps the edge serves. Default deny: an app
	// without rules is reachable by nobody.
	Apps []AppConfig `yaml:"apps"`
	// Groups are dynamic groups that apps' rules name (see README, "Policy
	// language"). More groups and rules can come from policy.dir.
	Groups []groups.Group `yaml:"groups"`
	// Policy configures where else policy comes from.
	Policy PolicyConfig `yaml:"policy"`
	// Log configures the process log and the audit log.
	Log LogConfig `yaml:"log"`
	// Pool bounds the per-identity upstream pools of proxy_protocol apps.
	Pool PoolConfig `yaml:"pool"`
	// Devices is device trust.
	Devices DevicesConfig `yaml:"devices"`
	// Posture is what devices must satisfy: named profiles that apps
	// require with posture_profile.
	Posture PostureConfig `yaml:"posture"`
	// Signals is the detection-signal API (Falcosidekick, EDRs) and the
	// quarantine it drives.
	Signals SignalsConfig `yaml:"signals"`
	// Admin is the admin API (release and quarantine devices).
	Admin AdminConfig `yaml:"admin"`
	// Tunnel bounds the client tunnel endpoint.
	Tunnel TunnelConfig `yaml:"tunnel"`
	// Store says where shared state lives: bolt for one replica, Redis for
	// several. Read at start.
	Store StoreConfig `yaml:"store"`
	// Console configures the admin console, which an app with
	// `builtin: console` serves.
	Console ConsoleConfig `yaml:"console"`

	// sourceHash is the SHA-256 of the file the config was loaded from
	// and of the policy dir's files (nil for configs built in code): the
	// baseline of the file watcher.
	sourceHash []byte
	// doc is the parsed file, so that policy errors name its lines.
	doc *config.Doc
	// policy is the policy compiled when the config was validated from
	// policySrc (the config file's groups and rules and policy.dir's), and
	// policyHash the hash of policy.dir's files. policyOpt is what every
	// policy is checked against (apps, profiles, GeoIP), also the store's.
	policy     *groups.Policy
	policySrc  *groups.Source
	policyOpt  groups.Options
	policyHash []byte
}

// ConsoleConfig configures the admin console (see README, "Admin
// console"). Who may use it is the console app's rules: GET for viewing,
// POST for changes.
type ConsoleConfig struct {
	// OwnerGroups name the groups whose members own the console: only an
	// owner may make a change that alters who can use the console (the
	// console app's rules, the groups they name, a user's attributes that
	// move them in or out), and nobody, owner or not, may make a change
	// that widens their own access to it. Empty → nobody can make such a
	// change from the console: it is made in the config file.
	OwnerGroups []string `yaml:"owner_groups"`
}

// StoreConfig selects the shared state's backend.
type StoreConfig struct {
	// Backend is "bolt" (the default: DATA_DIR/ztna.db, a single replica)
	// or "redis" (replicas share it, and tell each other about trust
	// changes on its pub/sub: see README, "Running several replicas").
	Backend string `yaml:"backend"`
	// Redis is where the redis backend connects.
	Redis redisstore.Config `yaml:"redis"`
}

// Policy sources and builtin apps.
const (
	PolicyFiles    = "files"
	PolicyStore    = "store"
	BuiltinConsole = "console"
)

// Store backends.
const (
	StoreBolt  = "bolt"
	StoreRedis = "redis"
)

// PolicyConfig says where policy comes from besides this file.
type PolicyConfig struct {
	// Dir is a GitOps policy directory: every *.yaml file below it (not
	// *_test.yaml, not hidden) holds groups and app rules, joined with
	// those of this file. It is watched with the config and hot-reloaded;
	// an invalid change is rejected whole and the previous policy keeps
	// serving. "" → policy only from this file.
	Dir string `yaml:"dir"`
	// Source is "files" (the default: GitOps — the config file and Dir
	// are the policy, and the console shows it read-only and exports
	// proposed changes as diffs of those files) or "store" (the policy
	// lives in the store as numbered versions the console edits, with
	// author and message, diffable and revertible; the files' groups and
	// rules only seed the first version).
	Source string `yaml:"source"`
	// GeoIPFile is a MaxMind-format country database (GeoLite2-Country or
	// GeoIP2-Country .mmdb) for rules with countries. "" → rules may not
	// use countries. Read with the policy.
	GeoIPFile string `yaml:"geoip_file"`
}

// DevicesConfig configures device trust.
type DevicesConfig struct {
	// CACertFile and CAKeyFile hold the device CA, which issues the
	// devices' client certificates (it is separate from the assertion
	// signing keys). "" → DATA_DIR/device-ca.pem and device-ca-key.pem,
	// created on first start. The key file must be mode 0600.
	CACertFile string `yaml:"ca_cert_file"`
	CAKeyFile  string `yaml:"ca_key_file"`
	// CertTTL is the lifetime of a device certificate; the agent renews it
	// when a third of it is left. 0 → 24h. Read at start.
	CertTTL time.Duration `yaml:"cert_ttl"`
	// AdminApproval makes a newly enrolled device wait until an admin
	// approves it in the console: it may report its posture meanwhile,
	// but reaches no app. false → the user's approval of the enrollment
	// code is enough. Read at start.
	AdminApproval bool `yaml:"admin_approval"`
}

// PostureConfig configures posture checks.
type PostureConfig struct {
	// Profiles are named sets of requirements (see README, "Posture
	// profiles"); an app names the one it needs in posture_profile.
	Profiles []posture.Profile `yaml:"profiles"`
	// ReportInterval is how often agents are asked to report. It must be
	// well below every profile's max_age. 0 → 30s.
	ReportInterval time.Duration `yaml:"report_interval"`
	// History is how long accepted reports are kept for admins. 0 → 1h.
	// Read at start.
	History time.Duration `yaml:"history"`
}

// SignalsConfig configures the signal API and quarantine.
type SignalsConfig struct {
	// TokenFile holds the bearer token that senders (Falcosidekick, an EDR
	// integration) present to POST /api/signals and /api/signals/falco: at
	// least 32 characters. "" → the signal API is off.
	TokenFile string `yaml:"token_file"`
	// MinSeverity is the lowest detection severity that quarantines the
	// device (Falco priorities: emergency, alert, critical, error,
	// warning, notice, informational, debug). "" → critical.
	MinSeverity string `yaml:"min_severity"`
	// QuarantineUser also quarantines the device's user: every request of
	// theirs is refused, from any device, until released.
	QuarantineUser bool `yaml:"quarantine_user"`
	// ReleaseProfile releases a quarantined device automatically when a
	// report collected after the quarantine passes this profile. "" →
	// only an admin releases (POST /api/devices/ID/release).
	ReleaseProfile string `yaml:"release_profile"`
	// WebhookURLFile holds a Slack-compatible incoming-webhook URL that is
	// told about quarantines and releases (the URL is a secret, so it
	// comes from a file). "" → no notifications. Read at start.
	WebhookURLFile string `yaml:"webhook_url_file"`
}

// AdminConfig configures the admin API.
type AdminConfig struct {
	// TokenFile holds the bearer token of the admin API (list, quarantine
	// and release devices): at least 32 characters. "" → the admin API is
	// off.
	TokenFile string `yaml:"token_file"`
}

// DeviceCAFiles returns the device CA's certificate and key paths.
func (c *Config) DeviceCAFiles() (certFile, keyFile string) {
	certFile, keyFile = c.Devices.CACertFile, c.Devices.CAKeyFile
	if certFile == "" {
		certFile = filepath.Join(c.dataDir(), "device-ca.pem")
	}
	if keyFile == "" {
		keyFile = filepath.Join(c.dataDir(), "device-ca-key.pem")
	}
	return certFile, keyFile
}

// TLSConfig names PEM files.
type TLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// SigningConfig is the edge's assertion signing.
type SigningConfig struct {
	// KeyFile is the ES256 key set (JSON, created if missing).
	// "" → DATA_DIR/signing-keys.json.
	KeyFile string `yaml:"key_file"`
	// RotateAfter adds a new signing key when the newest is older than
	// this; older keys stay published until they expire. 0 → 720h.
	RotateAfter time.Duration `yaml:"rotate_after"`
	// AssertionTTL is the lifetime of an assertion sent to an app. The edge
	// reuses one per (session, app) until shortly before it expires.
	// 0 → 5m.
	AssertionTTL time.Duration `yaml:"assertion_ttl"`
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info, warn or error. "" → info.
	Level string `yaml:"level"`
	// Format is json or text. "" → json (text in `ztna dev`).
	Format string `yaml:"format"`
	// AuditFile receives one JSON line per access decision. "" → the
	// process log's output (stderr).
	AuditFile string `yaml:"audit_file"`
}

// AppConfig is one internal app.
type AppConfig struct {
	// Name identifies the app in rules, audit events and assertions (the
	// assertion's audience). Required, unique: [a-z0-9][a-z0-9-]*.
	Name string `yaml:"name"`
	// Host is the name users reach the app at, e.g. wiki.corp.example.
	// Required.
	Host string `yaml:"host"`
	// PathPrefix routes only this prefix of Host to the app. "" → "/".
	// When several apps share a host, the longest prefix wins.
	PathPrefix string `yaml:"path_prefix"`
	// Upstream is an HTTP app's address: http://host:port,
	// https://host:port, or h2c://host:port (HTTP/2 without TLS).
	Upstream string `yaml:"upstream"`
	// TCP is a raw TCP app's address, host:port, reached through the
	// client tunnel. An app has either Upstream or TCP.
	TCP string `yaml:"tcp"`
	// ProxyProtocol "v2" starts every upstream connection with a PROXY v2
	// header: the real client address, the requested host, the session
	// reference and the signed identity (see README). Such connections are
	// pooled per identity, never shared. "" → off.
	ProxyProtocol string `yaml:"proxy_protocol"`
	// UpstreamClientCertFile and UpstreamClientKeyFile are the edge's
	// client certificate for an https upstream that wants mTLS.
	UpstreamClientCertFile string `yaml:"upstream_client_cert_file"`
	UpstreamClientKeyFile  string `yaml:"upstream_client_key_file"`
	// PreserveHost sends the client's Host header upstream instead of the
	// upstream's own. false → the upstream's host.
	PreserveHost bool `yaml:"preserve_host"`
	// UpstreamCAFile verifies an https upstream against this CA instead of
	// the system roots.
	UpstreamCAFile string `yaml:"upstream_ca_file"`
	// Rules decide who may use the app. Empty → nobody.
	Rules []groups.Rule `yaml:"rules"`
	// Builtin serves one of the edge's own apps at Host instead of an
	// upstream: "console" is the admin console. Its rules decide who may
	// use it like any app's. "" → an upstream app.
	Builtin string `yaml:"builtin"`
	// PostureProfile names the posture profile (posture.profiles) every
	// request to the app must satisfy, which also means it must come from
	// an enrolled device. "" → no posture requirement (a quarantined
	// device or user is refused everywhere regardless).
	PostureProfile string `yaml:"posture_profile"`
}

var (
	appNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	hostRE    = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
)

// LoadConfig reads, defaults and validates the config file at path. Errors
// name the file, line and field.
func LoadConfig(path string) (*Config, error) {
	data, err := readConfigFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(path, data)
	if err != nil {
		return nil, err
	}
	c.sourceHash = sourcesHash(data, c.policyHash, c.filesHash())
	return c, nil
}

// filesHash hashes the files the config names that a reload rereads — the
// TLS certificate and key, the signal and admin tokens — so that replacing
// one (a renewed certificate, a rotated token: a Kubernetes Secret update)
// reloads like a config change does. An unreadable file hashes as a
// marker; the reload then reports it.
func (c *Config) filesHash() []byte {
	h := sha256.New()
	for _, p := range []string{c.TLS.CertFile, c.TLS.KeyFile, c.Signals.TokenFile, c.Admin.TokenFile} {
		if p == "" {
			continue
		}
		b, _, err := files.ReadRegular(p, config.MaxFileSize)
		if err != nil {
			b = []byte("unreadable")
		}
		fmt.Fprintf(h, "%d:%s:%d:", len(p), p, len(b))
		h.Write(b)
	}
	return h.Sum(nil)
}

// readConfigFile reads at most config.MaxFileSize+1 bytes (Parse reports
// the oversize).
func readConfigFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, config.MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return data, nil
}

// ParseConfig is LoadConfig for bytes; name is used in errors.
func ParseConfig(name string, data []byte) (*Config, error) {
	var c Config
	doc, err := config.Parse(name, data, &c)
	if err != nil {
		return nil, err
	}
	c.doc = doc
	if err := c.validate(doc); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks a config built in code (`ztna dev`, tests), including
// its policy.
func (c *Config) Validate() error { return c.validate(nil) }

// fieldError is a validation failure at a YAML path.
type fieldError struct {
	path string
	msg  string
}

func (c *Config) validate(doc *config.Doc) error {
	if fe := c.check(); fe != nil {
		if doc != nil {
			return doc.Errorf(fe.path, "%s", fe.msg)
		}
		return fmt.Errorf("%s: %s", fe.path, fe.msg)
	}
	p, err := c.compilePolicy()
	if err != nil {
		return &PolicyError{err}
	}
	c.policy = p
	return nil
}

func (c *Config) check() *fieldError {
	if err := c.Listen.Validate(); err != nil {
		// edge reports "listen.FIELD: msg" lines; point at the first.
		first, _, _ := strings.Cut(err.Error(), "\n")
		field, msg, ok := strings.Cut(first, ": ")
		if !ok {
			field, msg = "listen", first
		}
		return &fieldError{field, msg}
	}
	c.AuthHost = strings.ToLower(c.AuthHost)
	if c.AuthHost == "" || !hostRE.MatchString(c.AuthHost) {
		return &fieldError{"auth_host", "required: the host name of the edge's login host"}
	}
	if c.PublicPort < 0 || c.PublicPort > 65535 {
		return &fieldError{"public_port", "must be a port number"}
	}
	if (c.Devices.CACertFile == "") != (c.Devices.CAKeyFile == "") {
		return &fieldError{"devices", "ca_cert_file and ca_key_file go together"}
	}
	if c.Devices.CertTTL < 0 || (c.Devices.CertTTL > 0 && c.Devices.CertTTL < 10*time.Minute) {
		return &fieldError{"devices.cert_ttl", "must be at least 10m (agents renew when a third is left)"}
	}
	profiles, err := posture.CompileProfiles(c.Posture.Profiles)
	if err != nil {
		var pe *posture.ProfileError
		if errors.As(err, &pe) {
			return &fieldError{"posture." + pe.Path(), pe.Msg}
		}
		return &fieldError{"posture.profiles", err.Error()}
	}
	if c.Posture.ReportInterval < 0 || c.Posture.History < 0 {
		return &fieldError{"posture", "durations must not be negative"}
	}
	for i, p := range c.Posture.Profiles {
		if c.reportInterval() >= profiles[p.Name].MaxAge() {
			return &fieldError{fmt.Sprintf("posture.profiles[%d].max_age", i), fmt.Sprintf("must be longer than posture.report_interval (%s), or every device fails between reports", c.reportInterval())}
		}
	}
	if _, err := c.minSeverity(); err != nil {
		return &fieldError{"signals.min_severity", strings.TrimPrefix(err.Error(), "posture: ")}
	}
	if rp := c.Signals.ReleaseProfile; rp != "" && profiles[rp] == nil {
		return &fieldError{"signals.release_profile", fmt.Sprintf("no posture profile named %q", rp)}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return &fieldError{"tls", "cert_file and key_file go together"}
	}
	if err := c.OIDC.Validate(""); err != nil {
		field, msg, _ := strings.Cut(err.Error(), ": ")
		return &fieldError{"oidc." + field, msg}
	}
	if c.Pool.MaxIdentities < 0 || c.Pool.MaxIdlePerIdentity < 0 || c.Pool.IdleTimeout < 0 {
		return &fieldError{"pool", "limits must not be negative"}
	}
	switch c.Store.Backend {
	case "", StoreBolt:
	case StoreRedis:
		if err := c.Store.Redis.Validate(); err != nil {
			// One "FIELD: message" line per problem: the first names the field.
			first, _, _ := strings.Cut(err.Error(), "\n")
			field, msg, ok := strings.Cut(first, ": ")
			if !ok {
				field, msg = "", first
			}
			return &fieldError{strings.TrimSuffix("store.redis."+field, "."), msg}
		}
	default:
		return &fieldError{"store.backend", fmt.Sprintf("%q: want bolt or redis", c.Store.Backend)}
	}
	if c.Tunnel.MaxStreamsPerUser < 0 {
		return &fieldError{"tunnel.max_streams_per_user", "must not be negative"}
	}
	if c.Tunnel.StreamIdleTimeout < 0 || (c.Tunnel.StreamIdleTimeout > 0 && c.Tunnel.StreamIdleTimeout < time.Second) {
		return &fieldError{"tunnel.stream_idle_timeout", "must be at least 1s (0 means 30m)"}
	}
	if c.Signing.RotateAfter < 0 || c.Signing.AssertionTTL < 0 {
		return &fieldError{"signing", "durations must not be negative"}
	}
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		return &fieldError{"log.level", "must be debug, info, warn or error"}
	}
	switch c.Log.Format {
	case "", "json", "text":
	default:
		return &fieldError{"log.format", "must be json or text"}
	}
	switch c.Policy.Source {
	case "", PolicyFiles, PolicyStore:
	default:
		return &fieldError{"policy.source", `must be "files" or "store"`}
	}
	names := map[string]bool{}
	routes := map[string]bool{}
	consoles := 0
	for i := range c.Apps {
		a := &c.Apps[i]
		at := func(f string) string { return fmt.Sprintf("apps[%d].%s", i, f) }
		if !appNameRE.MatchString(a.Name) {
			return &fieldError{at("name"), "required: lower-case letters, digits and dashes"}
		}
		if names[a.Name] {
			return &fieldError{at("name"), fmt.Sprintf("app %q is defined twice", a.Name)}
		}
		names[a.Name] = true
		if a.PostureProfile != "" && profiles[a.PostureProfile] == nil {
			return &fieldError{at("posture_profile"), fmt.Sprintf("no posture profile named %q in posture.profiles", a.PostureProfile)}
		}
		switch a.ProxyProtocol {
		case "", "v2":
		default:
			return &fieldError{at("proxy_protocol"), `must be "v2" or empty`}
		}
		if (a.UpstreamClientCertFile == "") != (a.UpstreamClientKeyFile == "") {
			return &fieldError{at("upstream_client_cert_file"), "upstream_client_cert_file and upstream_client_key_file go together"}
		}
		switch a.Builtin {
		case "":
		case BuiltinConsole:
			if a.Upstream != "" || a.TCP != "" || a.ProxyProtocol != "" || a.UpstreamCAFile != "" || a.UpstreamClientCertFile != "" || a.PreserveHost {
				return &fieldError{at("builtin"), "a builtin app has no upstream, tcp, proxy_protocol or upstream TLS settings"}
			}
			if consoles++; consoles > 1 {
				return &fieldError{at("builtin"), "only one app may serve the console"}
			}
		default:
			return &fieldError{at("builtin"), `must be "console" or empty`}
		}
		if a.TCP != "" {
			if a.Upstream != "" {
				return &fieldError{at("tcp"), "an app has either upstream (HTTP) or tcp, not both"}
			}
			if a.Host != "" || a.PathPrefix != "" {
				return &fieldError{at("host"), "tcp apps are reached through the tunnel by name, not by host"}
			}
			if _, port, err := net.SplitHostPort(a.TCP); err != nil || port == "" || port == "0" {
				return &fieldError{at("tcp"), "must be host:port"}
			}
			if a.UpstreamCAFile != "" || a.UpstreamClientCertFile != "" {
				return &fieldError{at("upstream_ca_file"), "tcp apps are relayed as bytes; the edge does not speak TLS to them"}
			}
			continue
		}
		a.Host = strings.ToLower(a.Host)
		if !hostRE.MatchString(a.Host) {
			return &fieldError{at("host"), "must be a host name like wiki.corp.example"}
		}
		if a.Host == c.AuthHost {
			return &fieldError{at("host"), "is the auth host; apps need their own host name"}
		}
		if a.PathPrefix == "" {
			a.PathPrefix = "/"
		}
		if !strings.HasPrefix(a.PathPrefix, "/") || strings.ContainsAny(a.PathPrefix, "%?#") || CanonicalPath(a.PathPrefix) != nil {
			return &fieldError{at("path_prefix"), "must be a canonical path starting with /"}
		}
		if routes[a.Host+a.PathPrefix] {
			return &fieldError{at("path_prefix"), fmt.Sprintf("another app already serves %s%s", a.Host, a.PathPrefix)}
		}
		routes[a.Host+a.PathPrefix] = true
		if a.Builtin != "" {
			continue
		}
		u, err := url.Parse(a.Upstream)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "h2c") || u.Host == "" || u.User != nil {
			return &fieldError{at("upstream"), "must be an http://, https:// or h2c:// URL with a host"}
		}
		if u.Path != "" && u.Path != "/" {
			return &fieldError{at("upstream"), "must not have a path: the request path is forwarded as is"}
		}
		if a.UpstreamCAFile != "" && u.Scheme != "https" {
			return &fieldError{at("upstream_ca_file"), "only applies to https upstreams"}
		}
		if a.UpstreamClientCertFile != "" && u.Scheme != "https" {
			return &fieldError{at("upstream_client_cert_file"), "only applies to https upstreams"}
		}
	}
	return nil
}

// compilePolicy compiles the policy of the config file and policy.dir,
// keeping its source and options. Errors name the file, line and field
// where the problem was written.
func (c *Config) compilePolicy() (*groups.Policy, error) {
	src, err := c.loadPolicySource()
	if err != nil {
		return nil, err
	}
	if c.policyOpt, err = c.policyOptions(); err != nil {
		return nil, err
	}
	p, err := groups.Compile(src, c.policyOpt)
	if err != nil {
		return nil, err
	}
	c.policySrc = src
	return p, nil
}

// loadPolicySource reads the groups and rules of the config file and
// policy.dir.
func (c *Config) loadPolicySource() (*groups.Source, error) {
	var src groups.Source
	rules := make([]groups.AppRules, len(c.Apps))
	for i, a := range c.Apps {
		rules[i] = groups.AppRules{App: a.Name, Rules: a.Rules}
	}
	src.AddConfig(c.doc, c.Groups, rules)
	if c.Policy.Dir != "" {
		// Hashed before reading, so that a change made while loading is
		// seen by the next poll rather than lost.
		c.policyHash = policyDirHash(c.Policy.Dir)
		if err := groups.LoadDir(c.Policy.Dir, &src); err != nil {
			return nil, err
		}
	}
	return &src, nil
}

// policyOptions is what every policy of this config is checked against.
func (c *Config) policyOptions() (groups.Options, error) {
	opt := groups.Options{Apps: make([]string, len(c.Apps)), Profiles: make([]string, len(c.Posture.Profiles))}
	for i, a := range c.Apps {
		opt.Apps[i] = a.Name
	}
	for i, p := range c.Posture.Profiles {
		opt.Profiles[i] = p.Name
	}
	if c.Policy.GeoIPFile != "" {
		geo, err := groups.OpenGeoIP(c.Policy.GeoIPFile)
		if err != nil {
			return opt, fmt.Errorf("policy.geoip_file: %w", err)
		}
		opt.GeoIP = geo
	}
	return opt, nil
}

// PolicyFromStore reports whether the policy lives in the store.
func (c *Config) PolicyFromStore() bool { return c.Policy.Source == PolicyStore }

// PolicyError is a config rejected because of its policy.
type PolicyError struct{ Err error }

func (e *PolicyError) Error() string { return e.Err.Error() }
func (e *PolicyError) Unwrap() error { return e.Err }

// dataDir returns DataDir or its default.
func (c *Config) dataDir() string {
	if c.DataDir == "" {
		return "/var/lib/ztna"
	}
	return c.DataDir
}

// signingKeyFile returns the key set path.
func (c *Config) signingKeyFile() string {
	if c.Signing.KeyFile != "" {
		return c.Signing.KeyFile
	}
	return filepath.Join(c.dataDir(), "signing-keys.json")
}

func (c *Config) assertionTTL() time.Duration {
	if c.Signing.AssertionTTL > 0 {
		return c.Signing.AssertionTTL
	}
	return 5 * time.Minute
}

// reportInterval is the interval agents are asked to report at.
func (c *Config) reportInterval() time.Duration {
	if c.Posture.ReportInterval > 0 {
		return c.Posture.ReportInterval
	}
	return 30 * time.Second
}

// minSeverity is the lowest detection severity that quarantines.
func (c *Config) minSeverity() (posture.Severity, error) {
	if c.Signals.MinSeverity == "" {
		return posture.SeverityCritical, nil
	}
	return posture.ParseSeverity(c.Signals.MinSeverity)
}

// publicPort is the port browsers use.
func (c *Config) publicPort() int {
	if c.PublicPort != 0 {
		return c.PublicPort
	}
	addr := c.Listen.Address
	if addr == "" {
		return 443
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 443
	}
	n, err := strconv.Atoi(p)
	if err != nil || n == 0 {
		return 443
	}
	return n
}

// hostPort is how browsers write host on the public port.
func (c *Config) hostPort(host string) string {
	if p := c.publicPort(); p != 443 {
		return host + ":" + strconv.Itoa(p)
	}
	return host
}

// AuthOrigin is the edge's login origin, https://AUTH_HOST[:PORT].
func (c *Config) AuthOrigin() string { return "https://" + c.hostPort(c.AuthHost) }
