// Package devidp is the embedded development OpenID Connect provider that
// `ztna dev` and the integration tests log in against.
//
// It is a real, standards-following OP built on github.com/zitadel/oidc/v3/pkg/op:
// discovery, the authorization code flow with PKCE (S256 only, plain and
// missing challenges are refused), nonce and state, a server-rendered login
// form, refresh tokens (offline_access), userinfo, revocation, introspection,
// RP-initiated logout and OIDC back-channel logout. Each successful login is a
// new IdP session whose id travels as the "sid" claim; there is no single
// sign-on cookie, so every authorization request shows the login form.
//
// Test hooks (SetAttribute, SetGroups, RotateSigningKey, BackChannelLogout,
// SignJWT) let tests change a user's claims, rotate keys, push logouts and
// forge validly signed tokens.
//
// What it must never be: a production identity provider. Users, passwords,
// sessions and the RSA signing keys live only in memory, passwords are
// compared in plain text (constant time) and plain-HTTP issuers are allowed,
// but only on loopback hosts. It never logs passwords, tokens, codes or
// session ids.
package devidp
