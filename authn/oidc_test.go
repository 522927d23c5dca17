package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"

	"github.com/ztna-dev/ztna/authn/devidp"
)

const (
	testClientID     = "ztna-edge"
	testClientSecret = "edge-secret"
	testAuthOrigin   = "https://auth.example"
	testRedirectURL  = testAuthOrigin + PathCallback
)

var testScopes = []string{"openid", "profile", "email", "groups", "offline_access"}

// idpEnv is a running dev IdP on 127.0.0.1 and the edge's relying party for
// it.
type idpEnv struct {
	idp    *devidp.Provider
	srv    *httptest.Server
	client *http.Client // the relying party's client to the IdP
	rp     *RelyingParty
	cfg    Config
}

// newIDPEnv starts the IdP with the demo users and one client (the edge).
// mutate may change the IdP config, e.g. to add a back-channel logout URI.
func newIDPEnv(t *testing.T, mutate func(*devidp.Config)) *idpEnv {
	t.Helper()
	e := &idpEnv{srv: httptest.NewUnstartedServer(nil)}
	issuer := "http://" + e.srv.Listener.Addr().String()
	dc := devidp.Config{
		Issuer: issuer,
		Users:  devidp.DemoUsers(),
		Clients: []devidp.Client{{
			ID: testClientID, Secret: testClientSecret,
			RedirectURIs:           []string{testRedirectURL},
			PostLogoutRedirectURIs: []string{testAuthOrigin + PathSignedOut},
		}},
	}
	if mutate != nil {
		mutate(&dc)
	}
	idp, err := devidp.New(dc)
	if err != nil {
		e.srv.Listener.Close()
		t.Fatalf("devidp.New: %v", err)
	}
	e.idp = idp
	e.srv.Config.Handler = idp.Handler()
	e.srv.Start()
	t.Cleanup(e.srv.Close)
	t.Cleanup(func() { _ = idp.Close() })

	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	e.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	e.cfg = Config{Issuer: issuer, ClientID: testClientID, ClientSecret: testClientSecret, Scopes: testScopes}
	e.rp, err = NewRelyingParty(t.Context(), e.cfg, testRedirectURL, e.client)
	if err != nil {
		t.Fatalf("NewRelyingParty: %v", err)
	}
	return e
}

// newBrowser is a user agent with a cookie jar that never follows
// redirects, so each hop can be checked.
func newBrowser(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Jar:           jar,
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// browse sends req and returns the status and the resolved Location.
func browse(t *testing.T, c *http.Client, req *http.Request) (int, *url.URL, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var loc *url.URL
	if l := resp.Header.Get("Location"); l != "" {
		if loc, err = req.URL.Parse(l); err != nil {
			t.Fatalf("bad Location %q: %v", l, err)
		}
	}
	return resp.StatusCode, loc, string(body)
}

// idpLogin plays the browser at the IdP: it follows authURL to the login
// form, signs in as user and returns the authorization response the IdP
// sends to the edge's callback (which it does not follow).
func (e *idpEnv) idpLogin(t *testing.T, authURL, user string) url.Values {
	t.Helper()
	b := newBrowser(t)
	req, _ := http.NewRequest(http.MethodGet, authURL, nil)
	status, loc, body := browse(t, b, req)
	if status != http.StatusFound || loc == nil || loc.Path != "/login" {
		t.Fatalf("authorize: got %d %v, want 302 to the login form; body %q", status, loc, body)
	}
	form := url.Values{
		"authRequestID": {loc.Query().Get("authRequestID")},
		"username":      {user},
		"password":      {user + "-password"},
	}
	req, _ = http.NewRequest(http.MethodPost, e.srv.URL+"/login", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	status, loc, body = browse(t, b, req)
	if status != http.StatusSeeOther || loc == nil {
		t.Fatalf("login form: got %d %v, want 303; body %q", status, loc, body)
	}
	req, _ = http.NewRequest(http.MethodGet, loc.String(), nil)
	status, loc, body = browse(t, b, req)
	if status != http.StatusFound || loc == nil {
		t.Fatalf("IdP callback: got %d %v, want 302; body %q", status, loc, body)
	}
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != testRedirectURL {
		t.Fatalf("IdP redirected to %q, want %q", got, testRedirectURL)
	}
	return loc.Query()
}

// login runs a whole code flow through the relying party as user.
func (e *idpEnv) login(t *testing.T, user string) (Identity, Tokens, error) {
	t.Helper()
	state, nonce, verifier := randomToken(), randomToken(), oauth2.GenerateVerifier()
	q := e.idpLogin(t, e.rp.AuthCodeURL(state, nonce, verifier), user)
	if q.Get("state") != state || q.Get("code") == "" {
		t.Fatalf("authorization response %v, want code and state %q", q, state)
	}
	return e.rp.Exchange(t.Context(), q.Get("code"), verifier, nonce)
}

// verifyRaw feeds a raw ID token through the same verification the code
// exchange uses, as if the IdP's token endpoint had returned it.
func (e *idpEnv) verifyRaw(ctx context.Context, raw, nonce string) (Identity, Tokens, error) {
	tok := (&oauth2.Token{TokenType: "Bearer"}).WithExtra(map[string]any{"id_token": raw})
	return e.rp.identity(ctx, tok, nonce, "")
}

func (e *idpEnv) sign(t *testing.T, claims map[string]any) string {
	t.Helper()
	raw, err := e.idp.SignJWT(claims)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// jwks fetches the IdP's published keys.
func (e *idpEnv) jwks(t *testing.T) jose.JSONWebKeySet {
	t.Helper()
	var disc struct {
		JWKS string `json:"jwks_uri"`
	}
	getJSON(t, e.client, e.srv.URL+"/.well-known/openid-configuration", &disc)
	var set jose.JSONWebKeySet
	getJSON(t, e.client, disc.JWKS, &set)
	return set
}

func getJSON(t *testing.T, c *http.Client, u string, v any) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
}

func tokenKID(t *testing.T, raw string) string {
	t.Helper()
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header.KeyID
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func b64JSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b64(b)
}

func wantErrContaining(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not contain %q", err, want)
	}
}

func TestAuthCodeURL(t *testing.T) {
	e := newIDPEnv(t, nil)
	verifier := oauth2.GenerateVerifier()
	u, err := url.Parse(e.rp.AuthCodeURL("the-state", "the-nonce", verifier))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	sum := sha256.Sum256([]byte(verifier))
	want := map[string]string{
		"client_id": testClientID, "redirect_uri": testRedirectURL, "response_type": "code",
		"state": "the-state", "nonce": "the-nonce",
		"code_challenge": b64(sum[:]), "code_challenge_method": "S256",
	}
	for k, v := range want {
		if q.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, q.Get(k), v)
		}
	}
	if q.Has("code_verifier") || strings.Contains(u.String(), verifier) {
		t.Error("the PKCE verifier leaks into the authorization URL")
	}
	if !slices.Contains(strings.Fields(q.Get("scope")), "openid") {
		t.Errorf("scope = %q, want openid", q.Get("scope"))
	}
}

func TestExchange(t *testing.T) {
	e := newIDPEnv(t, nil)
	id, toks, err := e.login(t, "alice")
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	want := Identity{
		Subject: "u-alice", Email: "alice@example.com", Name: "Alice Kim",
		Groups:     []string{"engineering", "security"},
		Attributes: map[string]string{"department": "Security Tech", "title": "Security Engineer"},
	}
	if !reflect.DeepEqual(id, want) {
		t.Errorf("identity = %+v\nwant %+v", id, want)
	}
	if toks.IDToken == "" || toks.RefreshToken == "" || toks.IdPSession == "" || toks.Expiry.IsZero() {
		t.Errorf("tokens incomplete: id_token %v, refresh %v, sid %q, expiry %v",
			toks.IDToken != "", toks.RefreshToken != "", toks.IdPSession, toks.Expiry)
	}
	if at := toks.refreshAt(); at.IsZero() || at.After(toks.Expiry) {
		t.Errorf("refreshAt = %v, want before the access token expiry %v", at, toks.Expiry)
	}
}

func TestExchangeRejects(t *testing.T) {
	e := newIDPEnv(t, nil)
	ctx := t.Context()
	start := func() (code, verifier, nonce string) {
		state, nonce, verifier := randomToken(), randomToken(), oauth2.GenerateVerifier()
		q := e.idpLogin(t, e.rp.AuthCodeURL(state, nonce, verifier), "alice")
		return q.Get("code"), verifier, nonce
	}
	t.Run("wrong PKCE verifier", func(t *testing.T) {
		code, _, nonce := start()
		_, _, err := e.rp.Exchange(ctx, code, oauth2.GenerateVerifier(), nonce)
		wantErrContaining(t, err, "invalid_grant")
	})
	t.Run("no PKCE verifier", func(t *testing.T) {
		code, _, nonce := start()
		_, _, err := e.rp.Exchange(ctx, code, "", nonce)
		wantErrContaining(t, err, "code exchange")
	})
	t.Run("nonce of another login", func(t *testing.T) {
		code, verifier, _ := start()
		_, _, err := e.rp.Exchange(ctx, code, verifier, randomToken())
		wantErrContaining(t, err, "nonce")
	})
	t.Run("code replay", func(t *testing.T) {
		code, verifier, nonce := start()
		if _, _, err := e.rp.Exchange(ctx, code, verifier, nonce); err != nil {
			t.Fatalf("first exchange: %v", err)
		}
		_, _, err := e.rp.Exchange(ctx, code, verifier, nonce)
		wantErrContaining(t, err, "invalid_grant")
	})
	t.Run("made-up code", func(t *testing.T) {
		_, _, err := e.rp.Exchange(ctx, "made-up", oauth2.GenerateVerifier(), "n")
		wantErrContaining(t, err, "code exchange")
	})
}

// Every forged or damaged ID token is refused by the verification the code
// exchange runs, each with an error that says why.
func TestIDTokenVerification(t *testing.T) {
	e := newIDPEnv(t, nil)
	ctx := t.Context()
	const nonce = "login-nonce"
	claims := func(mutate func(map[string]any)) map[string]any {
		now := time.Now()
		c := map[string]any{
			"iss": e.idp.Issuer(), "aud": testClientID, "sub": "u-alice",
			"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "nonce": nonce,
			"email": "alice@example.com", "name": "Alice Kim", "sid": "idp-sid",
			"groups": []string{"engineering"}, "department": "Security Tech",
		}
		if mutate != nil {
			mutate(c)
		}
		return c
	}
	signed := func(mutate func(map[string]any)) string { return e.sign(t, claims(mutate)) }

	// Positive control: the forging harness makes tokens the verifier
	// accepts, so each rejection below is about the one thing changed.
	id, toks, err := e.verifyRaw(ctx, signed(nil), nonce)
	if err != nil {
		t.Fatalf("well-formed token rejected: %v", err)
	}
	if id.Subject != "u-alice" || id.Email != "alice@example.com" || !slices.Equal(id.Groups, []string{"engineering"}) ||
		id.Attributes["department"] != "Security Tech" || toks.IdPSession != "idp-sid" {
		t.Fatalf("identity = %+v, tokens = %+v", id, toks)
	}
	for name, mutate := range map[string]func(map[string]any){
		"aud list with azp": func(c map[string]any) { c["aud"] = []string{testClientID, "other"}; c["azp"] = testClientID },
		"azp equal to aud":  func(c map[string]any) { c["azp"] = testClientID },
		"iat 9 minutes ago": func(c map[string]any) { c["iat"] = time.Now().Add(-9 * time.Minute).Unix() },
		"iat 30s ahead":     func(c map[string]any) { c["iat"] = time.Now().Add(30 * time.Second).Unix() },
	} {
		if _, _, err := e.verifyRaw(ctx, signed(mutate), nonce); err != nil {
			t.Errorf("%s: rejected: %v", name, err)
		}
	}

	good := signed(nil)
	parts := strings.Split(good, ".")
	header := func(h map[string]any) string { return b64JSON(t, h) }
	kid := tokenKID(t, good)

	// HS256 keyed with the IdP's public RSA key: the classic key confusion.
	var pubDER []byte
	for _, k := range e.jwks(t).Keys {
		if k.KeyID == kid {
			var err error
			if pubDER, err = x509.MarshalPKIXPublicKey(k.Key); err != nil {
				t.Fatal(err)
			}
		}
	}
	if pubDER == nil {
		t.Fatalf("kid %q not in the JWKS", kid)
	}
	hsSigner, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: pubDER},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	hsJWS, err := hsSigner.Sign([]byte(b64decode(t, parts[1])))
	if err != nil {
		t.Fatal(err)
	}
	hs256, _ := hsJWS.CompactSerialize()

	// ES256 (an allowed algorithm) with the attacker's own key, once under
	// the IdP's kid and once with the key embedded in the header.
	attacker, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	esSign := func(opts *jose.SignerOptions) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: attacker}, opts)
		if err != nil {
			t.Fatal(err)
		}
		jws, err := s.Sign([]byte(b64decode(t, parts[1])))
		if err != nil {
			t.Fatal(err)
		}
		out, _ := jws.CompactSerialize()
		return out
	}
	esUnderIdPKid := esSign((&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	esEmbedded := esSign((&jose.SignerOptions{EmbedJWK: true}).WithType("JWT"))

	admin := claims(func(c map[string]any) { c["sub"] = "u-admin" })
	tests := []struct {
		name, raw, want string
	}{
		{"wrong iss", signed(func(c map[string]any) { c["iss"] = "https://evil.example" }), "different provider"},
		{"iss with trailing slash", signed(func(c map[string]any) { c["iss"] = e.idp.Issuer() + "/" }), "different provider"},
		{"no iss", signed(func(c map[string]any) { delete(c, "iss") }), "different provider"},
		{"wrong aud", signed(func(c map[string]any) { c["aud"] = "other-client" }), "audience"},
		{"no aud", signed(func(c map[string]any) { delete(c, "aud") }), "audience"},
		{"aud list without azp", signed(func(c map[string]any) { c["aud"] = []string{testClientID, "other"} }), "azp"},
		{"wrong azp", signed(func(c map[string]any) { c["azp"] = "other-client" }), "azp"},
		{"aud list, azp of the other", signed(func(c map[string]any) { c["aud"] = []string{testClientID, "other"}; c["azp"] = "other" }), "azp"},
		{"expired", signed(func(c map[string]any) {
			c["iat"] = time.Now().Add(-3 * time.Minute).Unix()
			c["exp"] = time.Now().Add(-time.Minute).Unix()
		}), "expired"},
		{"no exp", signed(func(c map[string]any) { delete(c, "exp") }), "expired"},
		{"iat in the future", signed(func(c map[string]any) {
			c["iat"] = time.Now().Add(5 * time.Minute).Unix()
			c["exp"] = time.Now().Add(10 * time.Minute).Unix()
		}), "future"},
		{"iat beyond MaxTokenAge", signed(func(c map[string]any) { c["iat"] = time.Now().Add(-11 * time.Minute).Unix() }), "older than"},
		{"no iat", signed(func(c map[string]any) { delete(c, "iat") }), "older than"},
		{"nbf in the future", signed(func(c map[string]any) { c["nbf"] = time.Now().Add(time.Hour).Unix() }), "nbf"},
		{"no sub", signed(func(c map[string]any) { delete(c, "sub") }), "subject"},
		{"empty sub", signed(func(c map[string]any) { c["sub"] = "" }), "subject"},
		{"oversized sub", signed(func(c map[string]any) { c["sub"] = strings.Repeat("s", maxClaimValue+1) }), "subject"},
		{"wrong nonce", signed(func(c map[string]any) { c["nonce"] = "another-login" }), "nonce"},
		{"no nonce", signed(func(c map[string]any) { delete(c, "nonce") }), "nonce"},
		{"nonce prefix", signed(func(c map[string]any) { c["nonce"] = nonce[:5] }), "nonce"},
		{"groups not a list", signed(func(c map[string]any) { c["groups"] = "engineering" }), "not a list"},
		{"alg none", header(map[string]any{"alg": "none", "typ": "JWT"}) + "." + parts[1] + ".", "id token"},
		{"alg none with kid", header(map[string]any{"alg": "none", "kid": kid}) + "." + parts[1] + ".", "id token"},
		{"unsigned two parts", parts[0] + "." + parts[1], "malformed"},
		{"signature stripped", parts[0] + "." + parts[1] + ".", "id token"},
		{"HS256 keyed with the public key", hs256, "id token"},
		{"ES256 with attacker key under the IdP kid", esUnderIdPKid, "signature"},
		{"ES256 with embedded attacker JWK", esEmbedded, "signature"},
		{"tampered payload", parts[0] + "." + b64JSON(t, admin) + "." + parts[2], "signature"},
		{"tampered header", header(map[string]any{"alg": "RS256", "kid": kid, "typ": "at+jwt"}) + "." + parts[1] + "." + parts[2], "signature"},
		{"signature of another token", parts[0] + "." + parts[1] + "." + strings.Split(signed(func(c map[string]any) { c["sub"] = "u-bob" }), ".")[2], "signature"},
		{"garbage", "not-a-jwt", "malformed"},
		{"three garbage parts", "a.b.c", "malformed"},
		{"JSON instead of JWS", `{"sub":"u-admin"}`, "malformed"},
		{"oversized garbage", strings.Repeat("A", 1<<20) + "." + parts[1] + "." + parts[2], "id token"},
		{"oversized but validly signed", signed(func(c map[string]any) { c["padding"] = strings.Repeat("x", 256<<10) }), "id token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, _, err := e.verifyRaw(ctx, tt.raw, nonce)
			if err == nil {
				t.Fatalf("accepted, identity %+v", id)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
			if !reflect.DeepEqual(id, Identity{}) {
				t.Errorf("rejected, but identity %+v returned", id)
			}
		})
	}

	t.Run("no id_token in the response", func(t *testing.T) {
		_, _, err := e.rp.identity(ctx, &oauth2.Token{AccessToken: "x"}, nonce, "")
		wantErrContaining(t, err, "no id_token")
	})
	t.Run("id_token not a string", func(t *testing.T) {
		tok := (&oauth2.Token{}).WithExtra(map[string]any{"id_token": 42})
		_, _, err := e.rp.identity(ctx, tok, nonce, "")
		wantErrContaining(t, err, "no id_token")
	})
}

func b64decode(t *testing.T, s string) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A login after the IdP rotated its signing key verifies with the new kid:
// the relying party refetches the JWKS for an unknown key ID.
func TestSigningKeyRotation(t *testing.T) {
	e := newIDPEnv(t, nil)
	_, before, err := e.login(t, "alice")
	if err != nil {
		t.Fatal(err)
	}
	oldKID := tokenKID(t, before.IDToken)
	if err := e.idp.RotateSigningKey(); err != nil {
		t.Fatal(err)
	}
	id, after, err := e.login(t, "alice")
	if err != nil {
		t.Fatalf("login after key rotation: %v", err)
	}
	if newKID := tokenKID(t, after.IDToken); newKID == oldKID {
		t.Fatalf("kid %q unchanged after rotation: the test no longer exercises rotation", newKID)
	}
	if id.Subject != "u-alice" {
		t.Errorf("subject = %q", id.Subject)
	}
}

func TestRefresh(t *testing.T) {
	e := newIDPEnv(t, nil)
	ctx := t.Context()
	_, toks, err := e.login(t, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.idp.SetAttribute("alice", "department", "Security Policy"); err != nil {
		t.Fatal(err)
	}
	if err := e.idp.SetGroups("alice", []string{"policy"}); err != nil {
		t.Fatal(err)
	}
	id, toks2, err := e.rp.Refresh(ctx, toks.RefreshToken, "u-alice")
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if id.Attributes["department"] != "Security Policy" || !slices.Equal(id.Groups, []string{"policy"}) || id.Subject != "u-alice" {
		t.Errorf("refreshed identity = %+v, want the new department and groups", id)
	}
	if toks2.RefreshToken == "" || toks2.RefreshToken == toks.RefreshToken {
		t.Error("refresh token not rotated")
	}
	if toks2.IdPSession != toks.IdPSession {
		t.Errorf("sid changed on refresh: %q → %q", toks.IdPSession, toks2.IdPSession)
	}

	t.Run("subject mismatch", func(t *testing.T) {
		_, _, err := e.rp.Refresh(ctx, toks2.RefreshToken, "u-bob")
		wantErrContaining(t, err, "subject")
	})
	t.Run("rotated-out token", func(t *testing.T) {
		_, _, err := e.rp.Refresh(ctx, toks.RefreshToken, "u-alice")
		if !IsInvalidGrant(err) {
			t.Fatalf("got %v, want invalid_grant", err)
		}
	})
	t.Run("garbage token", func(t *testing.T) {
		_, _, err := e.rp.Refresh(ctx, "garbage", "u-alice")
		if !IsInvalidGrant(err) {
			t.Fatalf("got %v, want invalid_grant", err)
		}
	})
	if IsInvalidGrant(errors.New("invalid_grant")) {
		t.Error("IsInvalidGrant matched a plain error by its text")
	}
}

func TestRefreshSubjectMismatchInIDToken(t *testing.T) {
	e := newIDPEnv(t, nil)
	// On refresh the iat age is not checked but the subject is.
	old := e.sign(t, map[string]any{
		"iss": e.idp.Issuer(), "aud": testClientID, "sub": "u-bob",
		"iat": time.Now().Add(-time.Hour).Unix(), "exp": time.Now().Add(time.Minute).Unix(),
	})
	tok := (&oauth2.Token{}).WithExtra(map[string]any{"id_token": old})
	if _, _, err := e.rp.identity(t.Context(), tok, "", "u-bob"); err != nil {
		t.Fatalf("refresh-time token of the right subject: %v", err)
	}
	_, _, err := e.rp.identity(t.Context(), tok, "", "u-alice")
	wantErrContaining(t, err, "subject changed")
}

func TestClaimsIdentity(t *testing.T) {
	long := strings.Repeat("x", maxClaimValue+1)
	manyGroups := func(n int) []any {
		g := make([]any, n)
		for i := range g {
			g[i] = "g" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		}
		return g
	}
	tests := []struct {
		name    string
		cfg     ClaimsConfig
		subject string
		claims  map[string]any
		want    Identity
		wantErr string
	}{
		{
			name: "defaults", subject: "u-1",
			claims: map[string]any{
				"email": "a@example.com", "name": "A B", "groups": []any{"x", "y"},
				"department": "D", "title": "T", "job": "ignored",
			},
			want: Identity{Subject: "u-1", Email: "a@example.com", Name: "A B", Groups: []string{"x", "y"},
				Attributes: map[string]string{"department": "D", "title": "T"}},
		},
		{
			name: "nothing but sub", subject: "u-1", claims: map[string]any{},
			want: Identity{Subject: "u-1", Attributes: map[string]string{}},
		},
		{
			name: "null claims count as missing", subject: "u-1",
			claims: map[string]any{"email": nil, "groups": nil, "department": nil},
			want:   Identity{Subject: "u-1", Attributes: map[string]string{}},
		},
		{
			name: "custom mapping", subject: "u-1",
			cfg: ClaimsConfig{Email: "mail", Name: "display_name", Groups: "roles",
				Attributes: map[string]string{"dept": "department_name", "cost_center": "cc"}},
			claims: map[string]any{
				"mail": "m@example.com", "email": "ignored@example.com", "display_name": "M",
				"roles": []any{"r1"}, "groups": "ignored, not even a list",
				"department_name": "Ops", "cc": "42", "department": "ignored",
			},
			want: Identity{Subject: "u-1", Email: "m@example.com", Name: "M", Groups: []string{"r1"},
				Attributes: map[string]string{"dept": "Ops", "cost_center": "42"}},
		},
		{name: "exactly 200 groups", subject: "u-1", claims: map[string]any{"groups": manyGroups(maxGroups)},
			want: Identity{Subject: "u-1", Attributes: map[string]string{}}},
		{name: "value at the size limit", subject: "u-1", claims: map[string]any{"name": long[1:]},
			want: Identity{Subject: "u-1", Name: long[1:], Attributes: map[string]string{}}},
		{name: "empty subject", subject: "", claims: map[string]any{}, wantErr: "subject"},
		{name: "oversized subject", subject: long, claims: map[string]any{}, wantErr: "subject"},
		{name: "oversized email", subject: "u-1", claims: map[string]any{"email": long}, wantErr: "email"},
		{name: "oversized attribute", subject: "u-1", claims: map[string]any{"title": long}, wantErr: "title"},
		{name: "email not a string", subject: "u-1", claims: map[string]any{"email": 42.0}, wantErr: "not a string"},
		{name: "attribute is an object", subject: "u-1", claims: map[string]any{"department": map[string]any{"x": "y"}}, wantErr: "not a string"},
		{name: "newline in name", subject: "u-1", claims: map[string]any{"name": "A\r\nX-Forwarded-User: admin"}, wantErr: "control"},
		{name: "tab in email", subject: "u-1", claims: map[string]any{"email": "a\t@example.com"}, wantErr: "control"},
		{name: "NUL in attribute", subject: "u-1", claims: map[string]any{"department": "D\x00"}, wantErr: "control"},
		{name: "DEL in attribute", subject: "u-1", claims: map[string]any{"title": "T\x7f"}, wantErr: "control"},
		{name: "groups not a list", subject: "u-1", claims: map[string]any{"groups": "admins"}, wantErr: "not a list"},
		{name: "groups an object", subject: "u-1", claims: map[string]any{"groups": map[string]any{"a": true}}, wantErr: "not a list"},
		{name: "group not a string", subject: "u-1", claims: map[string]any{"groups": []any{"a", 1.0}}, wantErr: "plain strings"},
		{name: "empty group", subject: "u-1", claims: map[string]any{"groups": []any{""}}, wantErr: "plain strings"},
		{name: "group with comma", subject: "u-1", claims: map[string]any{"groups": []any{"eng,ztna-admins"}}, wantErr: "plain strings"},
		{name: "group with newline", subject: "u-1", claims: map[string]any{"groups": []any{"eng\nztna-admins"}}, wantErr: "plain strings"},
		{name: "group with NUL", subject: "u-1", claims: map[string]any{"groups": []any{"eng\x00"}}, wantErr: "plain strings"},
		{name: "group with escape", subject: "u-1", claims: map[string]any{"groups": []any{"eng\x1b[31m"}}, wantErr: "plain strings"},
		{name: "group with tab", subject: "u-1", claims: map[string]any{"groups": []any{"eng\tadmins"}}, wantErr: "plain strings"},
		{name: "oversized group", subject: "u-1", claims: map[string]any{"groups": []any{long}}, wantErr: "plain strings"},
		{name: "201 groups", subject: "u-1", claims: map[string]any{"groups": manyGroups(maxGroups + 1)}, wantErr: "more than"},
		{name: "custom groups claim not a list", subject: "u-1", cfg: ClaimsConfig{Groups: "roles"},
			claims: map[string]any{"roles": "admin"}, wantErr: "roles"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.identity(tt.subject, tt.claims)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("accepted: %+v", got)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %q does not contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.name == "exactly 200 groups" {
				if len(got.Groups) != maxGroups {
					t.Fatalf("%d groups, want %d", len(got.Groups), maxGroups)
				}
				got.Groups = nil
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("identity = %#v\nwant %#v", got, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Issuer: "https://idp.example", ClientID: "edge"}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string // "" = valid
	}{
		{"minimal https", func(*Config) {}, ""},
		{"https with path", func(c *Config) { c.Issuer = "https://idp.example/realms/corp" }, ""},
		{"http on 127.0.0.1", func(c *Config) { c.Issuer = "http://127.0.0.1:5556" }, ""},
		{"http on 127.0.0.2", func(c *Config) { c.Issuer = "http://127.0.0.2:5556" }, ""},
		{"http on localhost", func(c *Config) { c.Issuer = "http://localhost:5556" }, ""},
		{"http on ::1", func(c *Config) { c.Issuer = "http://[::1]:5556" }, ""},
		{"allowed algs", func(c *Config) { c.SigningAlgs = []string{"RS256", "ES256"} }, ""},
		{"secret file", func(c *Config) { c.ClientSecretFile = "/run/secrets/oidc" }, ""},
		{"secret env", func(c *Config) { c.ClientSecretEnv = "OIDC_SECRET" }, ""},
		{"missing issuer", func(c *Config) { c.Issuer = "" }, "oidc.issuer: required"},
		{"http non-loopback issuer", func(c *Config) { c.Issuer = "http://idp.example" }, "oidc.issuer: must be an https URL"},
		{"http on a 127. lookalike host", func(c *Config) { c.Issuer = "http://127.0.0.1.evil.example" }, "oidc.issuer: must be an https URL"},
		{"http on a 127. name", func(c *Config) { c.Issuer = "http://127.attacker.example" }, "oidc.issuer: must be an https URL"},
		{"http on localhost lookalike", func(c *Config) { c.Issuer = "http://localhost.evil.example" }, "oidc.issuer: must be an https URL"},
		{"no host", func(c *Config) { c.Issuer = "https://" }, "oidc.issuer"},
		{"relative issuer", func(c *Config) { c.Issuer = "idp.example" }, "oidc.issuer"},
		{"ftp issuer", func(c *Config) { c.Issuer = "ftp://idp.example" }, "oidc.issuer"},
		{"unparsable issuer", func(c *Config) { c.Issuer = "https://idp.example:port" }, "oidc.issuer"},
		{"missing client id", func(c *Config) { c.ClientID = "" }, "oidc.client_id: required"},
		{"alg none", func(c *Config) { c.SigningAlgs = []string{"RS256", "none"} }, "oidc.signing_algs[1]"},
		{"alg HS256", func(c *Config) { c.SigningAlgs = []string{"HS256"} }, "oidc.signing_algs[0]"},
		{"alg HS384", func(c *Config) { c.SigningAlgs = []string{"HS384"} }, "oidc.signing_algs[0]"},
		{"alg HS512", func(c *Config) { c.SigningAlgs = []string{"HS512"} }, "oidc.signing_algs[0]"},
		{"both secret sources", func(c *Config) { c.ClientSecretFile = "/s"; c.ClientSecretEnv = "S" }, "oidc.client_secret_env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mutate(&c)
			err := c.Validate("oidc.")
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate accepted %+v", c)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not name %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewRelyingPartyErrors(t *testing.T) {
	e := newIDPEnv(t, nil)
	ctx := t.Context()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(testClientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("secret file is read and trimmed", func(t *testing.T) {
		cfg := e.cfg
		cfg.ClientSecret, cfg.ClientSecretFile = "", secretFile
		rp, err := NewRelyingParty(ctx, cfg, testRedirectURL, e.client)
		if err != nil {
			t.Fatal(err)
		}
		if rp.oauth.ClientSecret != testClientSecret {
			t.Fatalf("secret = %q", rp.oauth.ClientSecret)
		}
	})
	t.Run("secret from env", func(t *testing.T) {
		t.Setenv("ZTNA_TEST_OIDC_SECRET", testClientSecret)
		cfg := e.cfg
		cfg.ClientSecret, cfg.ClientSecretEnv = "", "ZTNA_TEST_OIDC_SECRET"
		rp, err := NewRelyingParty(ctx, cfg, testRedirectURL, e.client)
		if err != nil || rp.oauth.ClientSecret != testClientSecret {
			t.Fatalf("rp %v, err %v", rp, err)
		}
	})
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"missing secret file", func(c *Config) { c.ClientSecret = ""; c.ClientSecretFile = filepath.Join(dir, "nope") }, "client secret"},
		{"unset secret env", func(c *Config) { c.ClientSecret = ""; c.ClientSecretEnv = "ZTNA_TEST_UNSET_VARIABLE" }, "ZTNA_TEST_UNSET_VARIABLE"},
		{"issuer mismatch", func(c *Config) { c.Issuer = strings.Replace(c.Issuer, "127.0.0.1", "localhost", 1) }, "discovery"},
		{"no IdP there", func(c *Config) { c.Issuer = "http://127.0.0.1:1" }, "discovery"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := e.cfg
			tt.mutate(&cfg)
			_, err := NewRelyingParty(ctx, cfg, testRedirectURL, e.client)
			wantErrContaining(t, err, tt.wantErr)
		})
	}
	t.Run("openid scope always requested", func(t *testing.T) {
		cfg := e.cfg
		cfg.Scopes = []string{"email"}
		rp, err := NewRelyingParty(ctx, cfg, testRedirectURL, e.client)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(rp.oauth.Scopes, "openid") {
			t.Fatalf("scopes = %v", rp.oauth.Scopes)
		}
	})
}

func TestEndSessionURL(t *testing.T) {
	e := newIDPEnv(t, nil)
	raw := e.rp.EndSessionURL("the.id.token", testAuthOrigin+PathSignedOut)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(raw, e.srv.URL+"/") {
		t.Errorf("end-session URL %q is not at the IdP", raw)
	}
	q := u.Query()
	if q.Get("id_token_hint") != "the.id.token" || q.Get("client_id") != testClientID ||
		q.Get("post_logout_redirect_uri") != testAuthOrigin+PathSignedOut {
		t.Errorf("end-session query = %v", q)
	}
	if got := e.rp.EndSessionURL("", ""); strings.Contains(got, "id_token_hint") || strings.Contains(got, "post_logout") {
		t.Errorf("empty hint and redirect still sent: %q", got)
	}
	noEnd := *e.rp
	noEnd.endSession = ""
	if got := noEnd.EndSessionURL("x", "y"); got != "" {
		t.Errorf("IdP without end_session_endpoint: got %q, want \"\"", got)
	}
}

func TestVerifyLogoutToken(t *testing.T) {
	e := newIDPEnv(t, nil)
	ctx := t.Context()
	claims := func(mutate func(map[string]any)) map[string]any {
		now := time.Now()
		c := map[string]any{
			"iss": e.idp.Issuer(), "aud": testClientID,
			"iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(),
			"jti": randomToken(), "sub": "u-alice", "sid": "idp-sid-1",
			"events": map[string]any{backchannelEvent: map[string]any{}},
		}
		if mutate != nil {
			mutate(c)
		}
		return c
	}
	signed := func(mutate func(map[string]any)) string { return e.sign(t, claims(mutate)) }

	c := claims(nil)
	lt, err := e.rp.VerifyLogoutToken(ctx, e.sign(t, c))
	if err != nil {
		t.Fatalf("valid logout token: %v", err)
	}
	if lt.Subject != "u-alice" || lt.SessionID != "idp-sid-1" || lt.JTI != c["jti"] {
		t.Errorf("logout token = %+v", lt)
	}
	if lt.ReplayWindow < 10*time.Minute {
		t.Errorf("replay window %v is shorter than MaxTokenAge", lt.ReplayWindow)
	}
	for name, mutate := range map[string]func(map[string]any){
		"sid only":           func(c map[string]any) { delete(c, "sub") },
		"sub only":           func(c map[string]any) { delete(c, "sid") },
		"aud list":           func(c map[string]any) { c["aud"] = []string{"other", testClientID} },
		"long-lived":         func(c map[string]any) { c["exp"] = time.Now().Add(time.Hour).Unix() },
		"extra event member": func(c map[string]any) { c["events"].(map[string]any)["urn:other"] = map[string]any{} },
	} {
		lt, err := e.rp.VerifyLogoutToken(ctx, signed(mutate))
		if err != nil {
			t.Errorf("%s: rejected: %v", name, err)
			continue
		}
		if name == "long-lived" && lt.ReplayWindow < time.Hour {
			t.Errorf("long-lived: replay window %v shorter than the token's life", lt.ReplayWindow)
		}
	}

	_, login, err := e.login(t, "alice")
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(signed(nil), ".")
	tests := []struct {
		name, raw, want string
	}{
		{"missing event", signed(func(c map[string]any) { delete(c, "events") }), "event"},
		{"other event", signed(func(c map[string]any) { c["events"] = map[string]any{"urn:other": map[string]any{}} }), "event"},
		{"events not an object", signed(func(c map[string]any) { c["events"] = []string{backchannelEvent} }), "claims"},
		{"has nonce", signed(func(c map[string]any) { c["nonce"] = "n" }), "nonce"},
		{"has empty nonce", signed(func(c map[string]any) { c["nonce"] = "" }), "nonce"},
		{"no sub and no sid", signed(func(c map[string]any) { delete(c, "sub"); delete(c, "sid") }), "neither sub nor sid"},
		{"no jti", signed(func(c map[string]any) { delete(c, "jti") }), "jti"},
		{"oversized jti", signed(func(c map[string]any) { c["jti"] = strings.Repeat("j", 257) }), "jti"},
		{"wrong aud", signed(func(c map[string]any) { c["aud"] = "other-client" }), "audience"},
		{"wrong iss", signed(func(c map[string]any) { c["iss"] = "https://evil.example" }), "different provider"},
		{"expired", signed(func(c map[string]any) {
			c["iat"] = time.Now().Add(-3 * time.Minute).Unix()
			c["exp"] = time.Now().Add(-time.Minute).Unix()
		}), "expired"},
		{"iat too old", signed(func(c map[string]any) { c["iat"] = time.Now().Add(-11 * time.Minute).Unix() }), "iat"},
		{"iat in the future", signed(func(c map[string]any) { c["iat"] = time.Now().Add(5 * time.Minute).Unix() }), "iat"},
		{"no iat", signed(func(c map[string]any) { delete(c, "iat") }), "iat"},
		{"oversized", signed(func(c map[string]any) { c["padding"] = strings.Repeat("x", maxLogoutToken) }), "oversized"},
		{"empty", "", "missing"},
		{"garbage", "garbage", "logout token"},
		{"alg none", b64JSON(t, map[string]any{"alg": "none"}) + "." + parts[1] + ".", "logout token"},
		{"tampered", parts[0] + "." + b64JSON(t, claims(func(c map[string]any) { c["sub"] = "u-admin" })) + "." + parts[2], "signature"},
		{"an ID token is not a logout token", login.IDToken, "event"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lt, err := e.rp.VerifyLogoutToken(ctx, tt.raw)
			if err == nil {
				t.Fatalf("accepted: %+v", lt)
			}
			if lt != nil {
				t.Errorf("rejected, but returned %+v", lt)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}

	// And the other way round: a logout token is no ID token.
	t.Run("a logout token is not an ID token", func(t *testing.T) {
		_, _, err := e.verifyRaw(ctx, signed(nil), "login-nonce")
		wantErrContaining(t, err, "nonce")
	})
}
