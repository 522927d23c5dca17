package devidp

import (
	"cmp"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// User is a login account of the development IdP.
type User struct {
	Username, Password string            // login form credentials
	Subject            string            // stable sub claim
	Email, Name        string            // email and name claims
	Groups             []string          // "groups" claim
	Attributes         map[string]string // extra string claims, e.g. "department", "title"
}

// Client is a registered relying party. It is confidential: it authenticates
// at the token endpoint with client_secret_basic or client_secret_post.
type Client struct {
	ID, Secret             string
	RedirectURIs           []string
	PostLogoutRedirectURIs []string
	BackChannelLogoutURI   string // "" = none
}

// Config configures New. Zero TTLs take the defaults; a nil Logger discards.
type Config struct {
	// Issuer is the base URL the provider is reached at, e.g.
	// "http://127.0.0.1:5556". http is allowed only for loopback hosts;
	// the issuer must not have a path, query or fragment.
	Issuer          string
	Users           []User
	Clients         []Client
	AccessTokenTTL  time.Duration // 0 → 5m
	IDTokenTTL      time.Duration // 0 → 5m
	RefreshTokenTTL time.Duration // 0 → 24h
	Logger          *slog.Logger  // nil → discard

	// BackChannelClient posts back-channel logout tokens. nil → a built-in
	// client (no proxy, no keep-alives, redirects not followed). Set it when
	// a receiver needs special trust or dialing, e.g. the edge's dev TLS
	// certificate. Every post is bounded by a 5s timeout either way.
	BackChannelClient *http.Client
}

const (
	defaultAccessTokenTTL  = 5 * time.Minute
	defaultIDTokenTTL      = 5 * time.Minute
	defaultRefreshTokenTTL = 24 * time.Hour

	// ScopeGroups asks for the "groups" claim.
	ScopeGroups = "groups"

	loginPath     = "/login"
	loggedOutPath = "/logged-out"

	// maxBodyBytes bounds every request body, the login form included.
	maxBodyBytes = 64 << 10
)

// reservedClaims are claim names the provider sets itself; attributes must
// not shadow them, or a test could silently forge sub or aud.
var reservedClaims = map[string]bool{
	"iss": true, "sub": true, "aud": true, "exp": true, "nbf": true, "iat": true,
	"jti": true, "nonce": true, "azp": true, "sid": true, "auth_time": true,
	"acr": true, "amr": true, "at_hash": true, "c_hash": true, "client_id": true,
	"scope": true, "scopes": true, "events": true, "act": true, "cnf": true,
	"email": true, "email_verified": true, "name": true, "groups": true,
	"preferred_username": true, "given_name": true, "family_name": true,
	"middle_name": true, "nickname": true, "profile": true, "picture": true,
	"website": true, "gender": true, "birthdate": true, "zoneinfo": true,
	"locale": true, "updated_at": true, "phone_number": true,
	"phone_number_verified": true, "address": true, "typ": true, "username": true,
	"active": true, "token_type": true,
}

// Provider is a running development OIDC provider. It is safe for
// concurrent use.
type Provider struct {
	issuer  string
	log     *slog.Logger
	st      *storage
	op      *op.Provider
	handler http.Handler

	// logoutClient posts back-channel logout tokens; ownLogoutClient says
	// whether Close may release its connections.
	logoutClient    *http.Client
	ownLogoutClient bool
}

// New validates cfg, generates an in-memory RSA signing key and returns a
// provider ready to serve cfg.Issuer through Handler.
func New(cfg Config) (*Provider, error) {
	issuer, err := validateIssuer(cfg.Issuer)
	if err != nil {
		return nil, err
	}
	if cfg.AccessTokenTTL < 0 || cfg.IDTokenTTL < 0 || cfg.RefreshTokenTTL < 0 {
		return nil, errors.New("devidp: token TTLs must not be negative")
	}
	ttl := ttls{
		access:  cmp.Or(cfg.AccessTokenTTL, defaultAccessTokenTTL),
		id:      cmp.Or(cfg.IDTokenTTL, defaultIDTokenTTL),
		refresh: cmp.Or(cfg.RefreshTokenTTL, defaultRefreshTokenTTL),
	}
	users, err := compileUsers(cfg.Users)
	if err != nil {
		return nil, err
	}
	clients, err := compileClients(cfg.Clients, ttl.id)
	if err != nil {
		return nil, err
	}
	key, err := newSigningKey()
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	st := newStorage(users, clients, key, ttl)

	var cryptoKey [32]byte
	if _, err := rand.Read(cryptoKey[:]); err != nil {
		return nil, fmt.Errorf("devidp: crypto key: %w", err)
	}
	opCfg := &op.Config{
		CryptoKey:                         cryptoKey,
		DefaultLogoutRedirectURI:          loggedOutPath,
		CodeMethodS256:                    true,
		AuthMethodPost:                    true,
		GrantTypeRefreshToken:             true,
		SupportedScopes:                   []string{oidc.ScopeOpenID, oidc.ScopeProfile, oidc.ScopeEmail, ScopeGroups, oidc.ScopeOfflineAccess},
		SupportedClaims:                   append(slices.Clone(op.DefaultSupportedClaims), "groups", "sid"),
		BackChannelLogoutSupported:        true,
		BackChannelLogoutSessionSupported: true,
	}
	var opts []op.Option
	if strings.HasPrefix(issuer, "http://") {
		opts = append(opts, op.WithAllowInsecure())
	}
	provider, err := op.NewProvider(opCfg, st, op.StaticIssuer(issuer), opts...)
	if err != nil {
		return nil, fmt.Errorf("devidp: oidc provider: %w", err)
	}

	p := &Provider{
		issuer:       issuer,
		log:          logger,
		st:           st,
		op:           provider,
		logoutClient: cfg.BackChannelClient,
	}
	if p.logoutClient == nil {
		p.ownLogoutClient = true
		p.logoutClient = &http.Client{
			// Keep-alives are off so no connection (and no transport
			// goroutine) outlives a logout; no proxy for loopback receivers.
			Transport: &http.Transport{
				DisableKeepAlives:     true,
				ResponseHeaderTimeout: logoutPostTimeout,
				TLSHandshakeTimeout:   logoutPostTimeout,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Timeout:       logoutPostTimeout,
		}
	}
	p.handler = p.routes()
	return p, nil
}

// Handler serves everything: discovery, /authorize, the login form, token,
// userinfo, keys, end_session, revoke and introspection.
func (p *Provider) Handler() http.Handler { return p.handler }

// Issuer is the issuer URL as it appears in tokens and discovery.
func (p *Provider) Issuer() string { return p.issuer }

// Close releases idle connections of the built-in back-channel logout
// client (a Config.BackChannelClient is the caller's to close). The provider
// starts no goroutines of its own; Close is safe to call more than once.
func (p *Provider) Close() error {
	if p.ownLogoutClient {
		p.logoutClient.CloseIdleConnections()
	}
	return nil
}

// SetAttribute changes a user's attribute claim for tokens, refreshes and
// userinfo from now on. An empty value removes the claim.
func (p *Provider) SetAttribute(username, key, value string) error {
	if err := validateAttributeKey(key); err != nil {
		return err
	}
	p.st.mu.Lock()
	defer p.st.mu.Unlock()
	u, ok := p.st.usersByName[username]
	if !ok {
		return fmt.Errorf("devidp: unknown user %q", username)
	}
	if value == "" {
		delete(u.Attributes, key)
	} else {
		u.Attributes[key] = value
	}
	return nil
}

// SetGroups replaces a user's "groups" claim for tokens, refreshes and
// userinfo from now on.
func (p *Provider) SetGroups(username string, groups []string) error {
	p.st.mu.Lock()
	defer p.st.mu.Unlock()
	u, ok := p.st.usersByName[username]
	if !ok {
		return fmt.Errorf("devidp: unknown user %q", username)
	}
	u.Groups = slices.Clone(groups)
	return nil
}

func (p *Provider) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(loginPath, p.handleLogin)
	mux.HandleFunc(loggedOutPath, handleLoggedOut)
	mux.Handle("/", p.op)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		}
		mux.ServeHTTP(w, r)
	})
}

type ttls struct {
	access, id, refresh time.Duration
}

func validateIssuer(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("devidp: issuer %q: %w", raw, err)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return "", fmt.Errorf("devidp: issuer %q must be scheme://host[:port] with no path, query or fragment", raw)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopbackHost(u.Hostname()) {
			return "", fmt.Errorf("devidp: issuer %q: http is allowed only on loopback hosts", raw)
		}
	default:
		return "", fmt.Errorf("devidp: issuer %q: scheme must be http or https", raw)
	}
	return u.Scheme + "://" + u.Host, nil
}

func isLoopbackHost(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func validateAttributeKey(key string) error {
	if key == "" {
		return errors.New("devidp: empty attribute key")
	}
	if reservedClaims[key] {
		return fmt.Errorf("devidp: attribute key %q is a reserved claim name", key)
	}
	return nil
}

// compileUsers copies the users (so later SetAttribute calls never touch the
// caller's maps) and checks that logins and subjects are unique.
func compileUsers(in []User) (map[string]*User, error) {
	byName := make(map[string]*User, len(in))
	subjects := make(map[string]bool, len(in))
	for i, u := range in {
		switch {
		case u.Username == "":
			return nil, fmt.Errorf("devidp: user %d: empty username", i)
		case u.Password == "":
			return nil, fmt.Errorf("devidp: user %q: empty password", u.Username)
		case u.Subject == "":
			return nil, fmt.Errorf("devidp: user %q: empty subject", u.Username)
		case strings.Contains(u.Subject, ":"):
			// zitadel/oidc encodes opaque access tokens as "tokenID:subject".
			return nil, fmt.Errorf("devidp: user %q: subject must not contain ':'", u.Username)
		case byName[u.Username] != nil:
			return nil, fmt.Errorf("devidp: duplicate username %q", u.Username)
		case subjects[u.Subject]:
			return nil, fmt.Errorf("devidp: duplicate subject %q", u.Subject)
		}
		attrs := make(map[string]string, len(u.Attributes))
		for k, v := range u.Attributes {
			if err := validateAttributeKey(k); err != nil {
				return nil, fmt.Errorf("devidp: user %q: %w", u.Username, err)
			}
			attrs[k] = v
		}
		c := u
		c.Groups = slices.Clone(u.Groups)
		c.Attributes = attrs
		byName[u.Username] = &c
		subjects[u.Subject] = true
	}
	return byName, nil
}

func compileClients(in []Client, idTokenTTL time.Duration) (map[string]*opClient, error) {
	out := make(map[string]*opClient, len(in))
	for i, c := range in {
		switch {
		case c.ID == "":
			return nil, fmt.Errorf("devidp: client %d: empty id", i)
		case c.Secret == "":
			return nil, fmt.Errorf("devidp: client %q: empty secret", c.ID)
		case len(c.RedirectURIs) == 0:
			return nil, fmt.Errorf("devidp: client %q: no redirect URIs", c.ID)
		case out[c.ID] != nil:
			return nil, fmt.Errorf("devidp: duplicate client id %q", c.ID)
		}
		for _, list := range [][]string{c.RedirectURIs, c.PostLogoutRedirectURIs} {
			for _, u := range list {
				if err := validateAbsoluteURL(u); err != nil {
					return nil, fmt.Errorf("devidp: client %q: %w", c.ID, err)
				}
			}
		}
		if c.BackChannelLogoutURI != "" {
			if err := validateAbsoluteURL(c.BackChannelLogoutURI); err != nil {
				return nil, fmt.Errorf("devidp: client %q: back-channel logout: %w", c.ID, err)
			}
		}
		out[c.ID] = &opClient{
			id:                   c.ID,
			secret:               c.Secret,
			redirectURIs:         slices.Clone(c.RedirectURIs),
			postLogoutURIs:       slices.Clone(c.PostLogoutRedirectURIs),
			backChannelLogoutURI: c.BackChannelLogoutURI,
			idTokenLifetime:      idTokenTTL,
		}
	}
	return out, nil
}

func validateAbsoluteURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("URL %q: %w", raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Fragment != "" {
		return fmt.Errorf("URL %q must be an absolute http(s) URL without fragment", raw)
	}
	return nil
}
