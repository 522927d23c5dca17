package devidp

import (
	"net/url"
	"slices"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// opClient is a registered relying party as zitadel/oidc sees it: a
// confidential web client allowed only the code flow and refresh tokens.
type opClient struct {
	id                   string
	secret               string
	redirectURIs         []string
	postLogoutURIs       []string
	backChannelLogoutURI string
	idTokenLifetime      time.Duration
}

var _ op.Client = (*opClient)(nil)

func (c *opClient) GetID() string                    { return c.id }
func (c *opClient) RedirectURIs() []string           { return slices.Clone(c.redirectURIs) }
func (c *opClient) PostLogoutRedirectURIs() []string { return slices.Clone(c.postLogoutURIs) }

// ApplicationType web makes the client confidential, which is also what lets
// zitadel/oidc accept http:// (loopback) redirect URIs for the code flow.
func (c *opClient) ApplicationType() op.ApplicationType { return op.ApplicationTypeWeb }

// AuthMethod basic still accepts client_secret_post: zitadel/oidc checks the
// secret from either place and only refuses post when the client is
// registered as post-only and the provider disables it.
func (c *opClient) AuthMethod() oidc.AuthMethod { return oidc.AuthMethodBasic }

func (c *opClient) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}

func (c *opClient) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken}
}

func (c *opClient) LoginURL(authRequestID string) string {
	return loginPath + "?" + url.Values{"authRequestID": {authRequestID}}.Encode()
}

func (c *opClient) AccessTokenType() op.AccessTokenType { return op.AccessTokenTypeBearer }
func (c *opClient) IDTokenLifetime() time.Duration      { return c.idTokenLifetime }
func (c *opClient) DevMode() bool                       { return false }
func (c *opClient) ClockSkew() time.Duration            { return 0 }

func (c *opClient) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(scopes []string) []string { return scopes }
}

func (c *opClient) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(scopes []string) []string { return scopes }
}

// IsScopeAllowed admits the custom "groups" scope; zitadel/oidc silently
// drops every non-standard scope this does not allow.
func (c *opClient) IsScopeAllowed(scope string) bool { return scope == ScopeGroups }

// IDTokenUserinfoClaimsAssertion puts the userinfo claims (email, name,
// attributes) into the ID token too; otherwise zitadel/oidc leaves them out
// whenever an access token is issued.
func (c *opClient) IDTokenUserinfoClaimsAssertion() bool { return true }
