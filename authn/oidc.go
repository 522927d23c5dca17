package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// Config is how the edge talks to the company IdP. Zero values are safe
// defaults; Issuer and ClientID are required.
type Config struct {
	// Issuer is the IdP's issuer URL; discovery is fetched from it.
	Issuer string `yaml:"issuer"`
	// ClientID registered at the IdP for this edge.
	ClientID string `yaml:"client_id"`
	// ClientSecretFile holds the client secret; secrets never go in the
	// config file itself. Alternatively ClientSecretEnv names an
	// environment variable. Neither → a public client (PKCE only).
	ClientSecretFile string `yaml:"client_secret_file"`
	ClientSecretEnv  string `yaml:"client_secret_env"`
	// ClientSecret is for configs built in code (`ztna dev`); it cannot be
	// set from YAML.
	ClientSecret string `yaml:"-"`
	// Scopes to request. Empty → openid, profile, email, offline_access
	// (offline_access gives the refresh token that keeps attributes fresh).
	Scopes []string `yaml:"scopes"`
	// SigningAlgs the ID token may be signed with. Empty → RS256, ES256,
	// PS256. "none" and HMAC algorithms are never accepted.
	SigningAlgs []string `yaml:"signing_algs"`
	// Claims maps IdP claims to ztna's user attributes.
	Claims ClaimsConfig `yaml:"claims"`
	// MaxTokenAge rejects ID tokens issued longer ago than this. 0 → 10m.
	MaxTokenAge time.Duration `yaml:"max_token_age"`
	// RefreshInterval is how often the IdP tokens (and with them the
	// user's attributes) are refreshed when the IdP gives no expiry.
	// 0 → 5m.
	RefreshInterval time.Duration `yaml:"refresh_interval"`
	// Sessions are the session lifetimes.
	Sessions SessionsConfig `yaml:"sessions"`
}

// ClaimsConfig names the claims that carry user attributes.
type ClaimsConfig struct {
	Email  string `yaml:"email"`  // "" → "email"
	Name   string `yaml:"name"`   // "" → "name"
	Groups string `yaml:"groups"` // "" → "groups"
	// Attributes maps a ztna attribute name to a claim name, e.g.
	// department: department, title: job_title. Empty → department and
	// title from claims of the same name.
	Attributes map[string]string `yaml:"attributes"`
}

// maxClaimValue bounds every claim string and maxGroups the group list:
// claims end up in headers and assertions sent to apps.
const (
	maxClaimValue = 256
	maxGroups     = 200
	maxIDToken    = 64 << 10
)

var forbiddenAlgs = []string{"none", "HS256", "HS384", "HS512"}

// Validate checks cfg; errors name the YAML field under prefix.
func (c Config) Validate(prefix string) error {
	if c.Issuer == "" {
		return fmt.Errorf("%sissuer: required", prefix)
	}
	u, err := url.Parse(c.Issuer)
	if err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname()))) {
		return fmt.Errorf("%sissuer: must be an https URL (http only on loopback)", prefix)
	}
	if c.ClientID == "" {
		return fmt.Errorf("%sclient_id: required", prefix)
	}
	for i, a := range c.SigningAlgs {
		if slices.Contains(forbiddenAlgs, a) {
			return fmt.Errorf("%ssigning_algs[%d]: %q is not allowed", prefix, i, a)
		}
	}
	if c.ClientSecretFile != "" && c.ClientSecretEnv != "" {
		return fmt.Errorf("%sclient_secret_env: set client_secret_file or client_secret_env, not both", prefix)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Tokens are what a login or refresh returned, kept on the session.
type Tokens struct {
	IDToken      string
	RefreshToken string
	Expiry       time.Time // of the access token; zero if unknown
	IdPSession   string    // sid claim
	refreshEvery time.Duration
}

func (t Tokens) refreshAt() time.Time {
	if t.RefreshToken == "" {
		return time.Time{}
	}
	at := time.Now().Add(t.refreshEvery)
	if !t.Expiry.IsZero() && t.Expiry.Add(-time.Minute).Before(at) {
		at = t.Expiry.Add(-time.Minute)
	}
	return at
}

// RelyingParty is the edge as an OIDC client of one IdP.
type RelyingParty struct {
	cfg         Config
	provider    *oidc.Provider
	verifier    *oidc.IDTokenVerifier
	oauth       oauth2.Config
	client      *http.Client
	endSession  string
	hasUserinfo bool
}

// NewRelyingParty runs discovery against cfg.Issuer. redirectURL is the
// edge's callback on its auth host. client is used for every call to the
// IdP (nil → 10s timeout client).
func NewRelyingParty(ctx context.Context, cfg Config, redirectURL string, client *http.Client) (*RelyingParty, error) {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	secret, err := cfg.clientSecret()
	if err != nil {
		return nil, err
	}
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = []string{oidc.ScopeOpenID, "profile", "email", oidc.ScopeOfflineAccess}
	}
	if !slices.Contains(cfg.Scopes, oidc.ScopeOpenID) {
		cfg.Scopes = append([]string{oidc.ScopeOpenID}, cfg.Scopes...)
	}
	if len(cfg.SigningAlgs) == 0 {
		cfg.SigningAlgs = []string{oidc.RS256, oidc.ES256, oidc.PS256}
	}
	if cfg.MaxTokenAge <= 0 {
		cfg.MaxTokenAge = 10 * time.Minute
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 5 * time.Minute
	}
	ctx = oidc.ClientContext(ctx, client)
	p, err := oidc.NewProvider(ctx, cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("oidc discovery at %s: %w", cfg.Issuer, err)
	}
	var extra struct {
		EndSession string `json:"end_session_endpoint"`
		Userinfo   string `json:"userinfo_endpoint"`
	}
	if err := p.Claims(&extra); err != nil {
		return nil, fmt.Errorf("oidc discovery at %s: %w", cfg.Issuer, err)
	}
	rp := &RelyingParty{
		cfg:      cfg,
		provider: p,
		// go-oidc's remote key set refetches the JWKS when it meets an
		// unknown key ID, which is how IdP key rotation is followed.
		verifier: p.Verifier(&oidc.Config{ClientID: cfg.ClientID, SupportedSigningAlgs: cfg.SigningAlgs}),
		oauth: oauth2.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: secret,
			Endpoint:     p.Endpoint(),
			RedirectURL:  redirectURL,
			Scopes:       cfg.Scopes,
		},
		client:      client,
		endSession:  extra.EndSession,
		hasUserinfo: extra.Userinfo != "",
	}
	return rp, nil
}

func (c Config) clientSecret() (string, error) {
	switch {
	case c.ClientSecret != "":
		return c.ClientSecret, nil
	case c.ClientSecretFile != "":
		b, err := os.ReadFile(c.ClientSecretFile)
		if err != nil {
			return "", fmt.Errorf("read client secret: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	case c.ClientSecretEnv != "":
		v, ok := os.LookupEnv(c.ClientSecretEnv)
		if !ok || v == "" {
			return "", fmt.Errorf("client secret: environment variable %s is not set", c.ClientSecretEnv)
		}
		return v, nil
	}
	return "", nil
}

// AuthCodeURL is where the browser goes to log in.
func (rp *RelyingParty) AuthCodeURL(state, nonce, verifier string) string {
	return rp.oauth.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier))
}

// EndSessionURL is the IdP's RP-initiated logout URL, or "" when the IdP
// does not offer one.
func (rp *RelyingParty) EndSessionURL(idTokenHint, postLogoutRedirect string) string {
	if rp.endSession == "" {
		return ""
	}
	u, err := url.Parse(rp.endSession)
	if err != nil {
		return ""
	}
	q := u.Query()
	if idTokenHint != "" {
		q.Set("id_token_hint", idTokenHint)
	}
	q.Set("client_id", rp.cfg.ClientID)
	if postLogoutRedirect != "" {
		q.Set("post_logout_redirect_uri", postLogoutRedirect)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// EndSessionOrigin is the scheme://host[:port] of the IdP's logout
// endpoint, or "" when it has none.
func (rp *RelyingParty) EndSessionOrigin() string {
	u, err := url.Parse(rp.endSession)
	if err != nil || rp.endSession == "" {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// Exchange redeems an authorization code and returns the verified identity.
func (rp *RelyingParty) Exchange(ctx context.Context, code, verifier, nonce string) (Identity, Tokens, error) {
	ctx = oidc.ClientContext(ctx, rp.client)
	tok, err := rp.oauth.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		return Identity{}, Tokens{}, fmt.Errorf("code exchange: %w", err)
	}
	return rp.identity(ctx, tok, nonce, "")
}

// Refresh uses the refresh token to get fresh tokens and attributes. The
// subject must not change.
func (rp *RelyingParty) Refresh(ctx context.Context, refreshToken, subject string) (Identity, Tokens, error) {
	ctx = oidc.ClientContext(ctx, rp.client)
	ts := rp.oauth.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken, Expiry: time.Unix(1, 0)})
	tok, err := ts.Token()
	if err != nil {
		return Identity{}, Tokens{}, fmt.Errorf("token refresh: %w", err)
	}
	id, t, err := rp.identity(ctx, tok, "", subject)
	if err != nil {
		return Identity{}, Tokens{}, err
	}
	if t.RefreshToken == "" {
		t.RefreshToken = refreshToken // the IdP kept the old one valid
	}
	return id, t, nil
}

// IsInvalidGrant reports whether err says the IdP no longer accepts the
// grant (refresh token revoked, user disabled): the session must end.
func IsInvalidGrant(err error) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && re.ErrorCode == "invalid_grant"
}

// identity verifies the ID token in tok and builds the user's identity from
// its claims and, when the IdP has one, the userinfo endpoint.
func (rp *RelyingParty) identity(ctx context.Context, tok *oauth2.Token, nonce, wantSubject string) (Identity, Tokens, error) {
	raw, ok := tok.Extra("id_token").(string)
	if !ok || raw == "" {
		if wantSubject == "" {
			return Identity{}, Tokens{}, errors.New("token response has no id_token")
		}
		// A refresh may omit the ID token; attributes then come from userinfo.
		return rp.fromUserinfo(ctx, tok, wantSubject)
	}
	if len(raw) > maxIDToken {
		return Identity{}, Tokens{}, fmt.Errorf("id token: oversized (%d bytes, limit %d)", len(raw), maxIDToken)
	}
	idt, err := rp.verifier.Verify(ctx, raw)
	if err != nil {
		return Identity{}, Tokens{}, fmt.Errorf("id token: %w", err)
	}
	var std struct {
		Nonce string   `json:"nonce"`
		AZP   string   `json:"azp"`
		SID   string   `json:"sid"`
		Aud   audience `json:"aud"`
	}
	if err := idt.Claims(&std); err != nil {
		return Identity{}, Tokens{}, fmt.Errorf("id token claims: %w", err)
	}
	if nonce != "" && !secureEqual(std.Nonce, nonce) {
		return Identity{}, Tokens{}, errors.New("id token: nonce does not match this login")
	}
	if (len(std.Aud) > 1 || std.AZP != "") && std.AZP != rp.cfg.ClientID {
		return Identity{}, Tokens{}, fmt.Errorf("id token: azp %q is not this client", std.AZP)
	}
	now := time.Now()
	if idt.IssuedAt.After(now.Add(time.Minute)) {
		return Identity{}, Tokens{}, errors.New("id token: issued in the future")
	}
	if wantSubject == "" && now.Sub(idt.IssuedAt) > rp.cfg.MaxTokenAge {
		return Identity{}, Tokens{}, fmt.Errorf("id token: issued %s ago, older than %s", now.Sub(idt.IssuedAt).Round(time.Second), rp.cfg.MaxTokenAge)
	}
	if wantSubject != "" && idt.Subject != wantSubject {
		return Identity{}, Tokens{}, errors.New("id token: subject changed on refresh")
	}
	claims := map[string]any{}
	if err := idt.Claims(&claims); err != nil {
		return Identity{}, Tokens{}, fmt.Errorf("id token claims: %w", err)
	}
	if rp.hasUserinfo && tok.AccessToken != "" {
		ui, err := rp.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok))
		if err != nil {
			return Identity{}, Tokens{}, fmt.Errorf("userinfo: %w", err)
		}
		if ui.Subject != idt.Subject {
			return Identity{}, Tokens{}, errors.New("userinfo: subject does not match the id token")
		}
		extra := map[string]any{}
		if err := ui.Claims(&extra); err == nil {
			for k, v := range extra {
				if _, ok := claims[k]; !ok {
					claims[k] = v
				}
			}
		}
	}
	id, err := rp.cfg.Claims.identity(idt.Subject, claims)
	if err != nil {
		return Identity{}, Tokens{}, err
	}
	return id, Tokens{IDToken: raw, RefreshToken: tok.RefreshToken, Expiry: tok.Expiry, IdPSession: std.SID, refreshEvery: rp.cfg.RefreshInterval}, nil
}

func (rp *RelyingParty) fromUserinfo(ctx context.Context, tok *oauth2.Token, subject string) (Identity, Tokens, error) {
	if !rp.hasUserinfo {
		return Identity{}, Tokens{}, errors.New("refresh returned no id_token and the IdP has no userinfo endpoint")
	}
	ui, err := rp.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	if err != nil {
		return Identity{}, Tokens{}, fmt.Errorf("userinfo: %w", err)
	}
	if ui.Subject != subject {
		return Identity{}, Tokens{}, errors.New("userinfo: subject changed on refresh")
	}
	claims := map[string]any{}
	if err := ui.Claims(&claims); err != nil {
		return Identity{}, Tokens{}, fmt.Errorf("userinfo claims: %w", err)
	}
	id, err := rp.cfg.Claims.identity(subject, claims)
	return id, Tokens{RefreshToken: tok.RefreshToken, Expiry: tok.Expiry, refreshEvery: rp.cfg.RefreshInterval}, err
}

// audience decodes the aud claim, which may be a string or a list.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*a = audience{s}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	*a = l
	return nil
}

// identity maps claims to an Identity, bounding every value.
func (c ClaimsConfig) identity(subject string, claims map[string]any) (Identity, error) {
	if subject == "" || len(subject) > maxClaimValue {
		return Identity{}, errors.New("id token: missing or oversized subject")
	}
	name := func(n, def string) string {
		if n == "" {
			return def
		}
		return n
	}
	str := func(claim string) (string, error) {
		v, ok := claims[claim]
		if !ok || v == nil {
			return "", nil
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("claim %q: not a string", claim)
		}
		if len(s) > maxClaimValue || hasUnsafeChars(strings.ReplaceAll(s, " ", "x")) {
			return "", fmt.Errorf("claim %q: oversized or has control characters", claim)
		}
		return s, nil
	}
	id := Identity{Subject: subject, Attributes: map[string]string{}}
	var err error
	if id.Email, err = str(name(c.Email, "email")); err != nil {
		return Identity{}, err
	}
	if id.Name, err = str(name(c.Name, "name")); err != nil {
		return Identity{}, err
	}
	gclaim := name(c.Groups, "groups")
	switch g := claims[gclaim].(type) {
	case nil:
	case []any:
		if len(g) > maxGroups {
			return Identity{}, fmt.Errorf("claim %q: more than %d groups", gclaim, maxGroups)
		}
		for _, v := range g {
			s, ok := v.(string)
			if !ok || s == "" || len(s) > maxClaimValue || strings.ContainsFunc(s, func(r rune) bool { return r == ',' || unicode.IsControl(r) }) {
				return Identity{}, fmt.Errorf("claim %q: groups must be plain strings", gclaim)
			}
			id.Groups = append(id.Groups, s)
		}
	default:
		return Identity{}, fmt.Errorf("claim %q: not a list", gclaim)
	}
	attrs := c.Attributes
	if len(attrs) == 0 {
		attrs = map[string]string{"department": "department", "title": "title"}
	}
	for attr, claim := range attrs {
		v, err := str(claim)
		if err != nil {
			return Identity{}, err
		}
		if v != "" {
			id.Attributes[attr] = v
		}
	}
	return id, nil
}
