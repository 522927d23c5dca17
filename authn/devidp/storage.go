package devidp

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

const (
	authRequestTTL = 10 * time.Minute
	codeTTL        = time.Minute
	// codeReplayMemory is how long a redeemed code is remembered, so a replay
	// within it revokes the tokens it produced (RFC 6749 §4.1.2).
	codeReplayMemory = authRequestTTL
	// maxPendingAuthRequests bounds memory against a flood of /authorize.
	maxPendingAuthRequests = 10000
	// maxParamLen bounds state and nonce, which are echoed into tokens.
	maxParamLen = 2048
	sweepEvery  = 10 * time.Second
)

// storage implements op.Storage in memory. Every field below mu is guarded
// by it. Values handed to zitadel/oidc are copies, because the library reads
// them without our lock while the login form may be changing the original.
type storage struct {
	now func() time.Time
	ttl ttls

	mu            sync.Mutex
	usersByName   map[string]*User
	usersBySub    map[string]*User
	clients       map[string]*opClient
	keys          []*signingKey // last one signs
	authRequests  map[string]*authRequest
	codes         map[string]*codeEntry
	accessTokens  map[string]*accessToken
	refreshTokens map[string]*refreshToken
	sessions      map[string]*session
	lastSweep     time.Time
}

func newStorage(users map[string]*User, clients map[string]*opClient, key *signingKey, ttl ttls) *storage {
	bySub := make(map[string]*User, len(users))
	for _, u := range users {
		bySub[u.Subject] = u
	}
	return &storage{
		usersBySub:    bySub,
		now:           time.Now,
		ttl:           ttl,
		usersByName:   users,
		clients:       clients,
		keys:          []*signingKey{key},
		authRequests:  make(map[string]*authRequest),
		codes:         make(map[string]*codeEntry),
		accessTokens:  make(map[string]*accessToken),
		refreshTokens: make(map[string]*refreshToken),
		sessions:      make(map[string]*session),
	}
}

var (
	_ op.Storage                        = (*storage)(nil)
	_ op.CanSetUserinfoFromRequest      = (*storage)(nil)
	_ op.CanTerminateSessionFromRequest = (*storage)(nil)
)

// authRequest is one /authorize request, completed by the login form.
type authRequest struct {
	id           string
	created      time.Time
	clientID     string
	redirectURI  string
	state        string
	nonce        string
	scopes       []string
	responseType oidc.ResponseType
	responseMode oidc.ResponseMode
	challenge    string // S256 code_challenge

	// Set by a successful login.
	done     bool
	subject  string
	authTime time.Time
	sid      string
	// codeIssued is set by SaveAuthCode: one code per authorization.
	codeIssued bool
}

var _ op.AuthRequest = (*authRequest)(nil)

func (a *authRequest) GetID() string                      { return a.id }
func (a *authRequest) GetACR() string                     { return "" }
func (a *authRequest) GetAudience() []string              { return []string{a.clientID} }
func (a *authRequest) GetAuthTime() time.Time             { return a.authTime }
func (a *authRequest) GetClientID() string                { return a.clientID }
func (a *authRequest) GetNonce() string                   { return a.nonce }
func (a *authRequest) GetRedirectURI() string             { return a.redirectURI }
func (a *authRequest) GetResponseType() oidc.ResponseType { return a.responseType }
func (a *authRequest) GetResponseMode() oidc.ResponseMode { return a.responseMode }
func (a *authRequest) GetScopes() []string                { return slices.Clone(a.scopes) }
func (a *authRequest) GetState() string                   { return a.state }
func (a *authRequest) GetSubject() string                 { return a.subject }
func (a *authRequest) Done() bool                         { return a.done }
func (a *authRequest) sessionID() string                  { return a.sid }
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge {
	return &oidc.CodeChallenge{Challenge: a.challenge, Method: oidc.CodeChallengeMethodS256}
}

func (a *authRequest) GetAMR() []string {
	if a.done {
		return []string{"pwd"}
	}
	return nil
}

func (a *authRequest) snapshot() *authRequest {
	c := *a
	c.scopes = slices.Clone(a.scopes)
	return &c
}

type codeEntry struct {
	authRequestID string
	validUntil    time.Time
	forgetAt      time.Time
	redeemed      bool
}

type accessToken struct {
	id            string
	clientID      string
	subject       string
	sid           string
	authRequestID string // the grant it descends from, for code-replay revocation
	refreshToken  string // the refresh token it was issued with, if any
	scopes        []string
	expires       time.Time
}

type refreshToken struct {
	token         string // the opaque value, also its ID
	clientID      string
	subject       string
	sid           string
	authRequestID string
	scopes        []string
	authTime      time.Time
	amr           []string
	expires       time.Time
	accessTokenID string
}

// session is one IdP login; its id is the sid claim.
type session struct {
	sid      string
	subject  string
	clientID string
	authTime time.Time
	expires  time.Time
}

// refreshRequest is what a refresh token stands for, handed to zitadel/oidc.
type refreshRequest struct {
	token    string
	clientID string
	subject  string
	sid      string
	scopes   []string
	authTime time.Time
	amr      []string
}

var _ op.RefreshTokenRequest = (*refreshRequest)(nil)

func (r *refreshRequest) GetAMR() []string            { return slices.Clone(r.amr) }
func (r *refreshRequest) GetAudience() []string       { return []string{r.clientID} }
func (r *refreshRequest) GetAuthTime() time.Time      { return r.authTime }
func (r *refreshRequest) GetClientID() string         { return r.clientID }
func (r *refreshRequest) GetScopes() []string         { return slices.Clone(r.scopes) }
func (r *refreshRequest) GetSubject() string          { return r.subject }
func (r *refreshRequest) SetCurrentScopes(s []string) { r.scopes = slices.Clone(s) }
func (r *refreshRequest) sessionID() string           { return r.sid }

// sessionIDer is implemented by the token requests that belong to a login.
type sessionIDer interface{ sessionID() string }

// ---- login (called by the login form, not by zitadel/oidc) ----

var errBadCredentials = errors.New("invalid username or password")

// dummyPassword keeps the comparison time for unknown users close to that
// of known ones.
var dummyPassword = []byte(rand.Text())

// login checks the credentials and, on success, completes the auth request
// with a new IdP session.
func (s *storage) login(authRequestID, username, password string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	ar, ok := s.authRequests[authRequestID]
	if !ok || now.After(ar.created.Add(authRequestTTL)) {
		return errUnknownAuthRequest
	}
	if ar.done {
		return errAuthRequestDone
	}
	u, known := s.usersByName[username]
	want := dummyPassword
	if known {
		want = []byte(u.Password)
	}
	if subtle.ConstantTimeCompare([]byte(password), want) != 1 || !known {
		return errBadCredentials
	}
	sess := &session{
		sid:      rand.Text(),
		subject:  u.Subject,
		clientID: ar.clientID,
		authTime: now,
		expires:  now.Add(s.ttl.refresh),
	}
	s.sessions[sess.sid] = sess
	ar.done = true
	ar.subject = u.Subject
	ar.authTime = now
	ar.sid = sess.sid
	return nil
}

var (
	errUnknownAuthRequest = errors.New("login request unknown or expired")
	errAuthRequestDone    = errors.New("login request already completed")
)

// pendingAuthRequest returns the client of a pending auth request, for the
// login page.
func (s *storage) pendingAuthRequest(id string) (clientID string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ar, ok := s.authRequests[id]
	if !ok || s.now().After(ar.created.Add(authRequestTTL)) {
		return "", errUnknownAuthRequest
	}
	if ar.done {
		return "", errAuthRequestDone
	}
	return ar.clientID, nil
}

// ---- op.AuthStorage ----

func (s *storage) CreateAuthRequest(_ context.Context, req *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	if slices.Contains(req.Prompt, oidc.PromptNone) {
		// There is no single sign-on: a user is never logged in already.
		return nil, oidc.ErrLoginRequired()
	}
	if req.CodeChallengeMethod != oidc.CodeChallengeMethodS256 || !validS256Challenge(req.CodeChallenge) {
		return nil, oidc.ErrInvalidRequest().WithDescription("PKCE is required: send a code_challenge with code_challenge_method=S256")
	}
	if len(req.State) > maxParamLen || len(req.Nonce) > maxParamLen {
		return nil, oidc.ErrInvalidRequest().WithDescription("state or nonce too long")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.sweepLocked(now)
	if len(s.authRequests) >= maxPendingAuthRequests {
		return nil, oidc.ErrServerError().WithDescription("too many pending login requests")
	}
	ar := &authRequest{
		id:           rand.Text(),
		created:      now,
		clientID:     req.ClientID,
		redirectURI:  req.RedirectURI,
		state:        req.State,
		nonce:        req.Nonce,
		scopes:       slices.Clone([]string(req.Scopes)),
		responseType: req.ResponseType,
		responseMode: req.ResponseMode,
		challenge:    req.CodeChallenge,
	}
	s.authRequests[ar.id] = ar
	return ar.snapshot(), nil
}

// validS256Challenge reports whether c is BASE64URL(SHA-256(verifier)) in
// form: 43 characters of the unpadded base64url alphabet (RFC 7636 §4.2).
func validS256Challenge(c string) bool {
	if len(c) != 43 {
		return false
	}
	for i := 0; i < len(c); i++ {
		ch := c[i]
		if !(ch >= 'A' && ch <= 'Z' || ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
			return false
		}
	}
	return true
}

func (s *storage) AuthRequestByID(_ context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ar, ok := s.authRequests[id]
	if !ok || s.now().After(ar.created.Add(authRequestTTL)) {
		return nil, errUnknownAuthRequest
	}
	return ar.snapshot(), nil
}

// AuthRequestByCode redeems a code: it works once, within codeTTL. A second
// use revokes every token the first one produced.
func (s *storage) AuthRequestByCode(_ context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e, ok := s.codes[code]
	if !ok {
		return nil, errors.New("unknown code")
	}
	if e.redeemed {
		s.revokeAuthRequestTokensLocked(e.authRequestID)
		return nil, errors.New("code already redeemed")
	}
	e.redeemed = true
	if now.After(e.validUntil) {
		return nil, errors.New("code expired")
	}
	ar, ok := s.authRequests[e.authRequestID]
	if !ok || !ar.done {
		return nil, errors.New("code's login request is gone")
	}
	return ar.snapshot(), nil
}

func (s *storage) SaveAuthCode(_ context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ar, ok := s.authRequests[id]
	if !ok {
		return errUnknownAuthRequest
	}
	if ar.codeIssued {
		return oidc.ErrInvalidRequest().WithDescription("this login request already produced a code; start again")
	}
	ar.codeIssued = true
	now := s.now()
	s.codes[code] = &codeEntry{authRequestID: id, validUntil: now.Add(codeTTL), forgetAt: now.Add(codeReplayMemory)}
	return nil
}

func (s *storage) DeleteAuthRequest(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.authRequests, id)
	return nil
}

func (s *storage) CreateAccessToken(_ context.Context, req op.TokenRequest) (string, time.Time, error) {
	ar, ok := req.(*authRequest)
	if !ok {
		return "", time.Time{}, oidc.ErrUnsupportedGrantType()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	at := s.newAccessTokenLocked(ar.clientID, ar.subject, ar.sid, ar.id, ar.scopes)
	return at.id, at.expires, nil
}

func (s *storage) CreateAccessAndRefreshTokens(_ context.Context, req op.TokenRequest, currentRefreshToken string) (string, string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	switch r := req.(type) {
	case *authRequest:
		at := s.newAccessTokenLocked(r.clientID, r.subject, r.sid, r.id, r.scopes)
		rt := &refreshToken{
			token:         rand.Text(),
			clientID:      r.clientID,
			subject:       r.subject,
			sid:           r.sid,
			authRequestID: r.id,
			scopes:        slices.Clone(r.scopes),
			authTime:      r.authTime,
			amr:           r.GetAMR(),
			expires:       now.Add(s.ttl.refresh),
			accessTokenID: at.id,
		}
		at.refreshToken = rt.token
		s.refreshTokens[rt.token] = rt
		return at.id, rt.token, at.expires, nil
	case *refreshRequest:
		// Rotation: the presented refresh token dies, a new one replaces it.
		old, ok := s.refreshTokens[currentRefreshToken]
		if !ok || now.After(old.expires) || old.clientID != r.clientID {
			return "", "", time.Time{}, oidc.ErrInvalidGrant().WithDescription("refresh token invalid or expired")
		}
		sess, ok := s.sessions[old.sid]
		if !ok || now.After(sess.expires) {
			return "", "", time.Time{}, oidc.ErrInvalidGrant().WithDescription("the login session has ended")
		}
		delete(s.refreshTokens, old.token)
		delete(s.accessTokens, old.accessTokenID)
		at := s.newAccessTokenLocked(old.clientID, old.subject, old.sid, old.authRequestID, r.scopes)
		// The new refresh token keeps the grant's full scope even when this
		// request narrowed it (RFC 6749 §6); only the access token narrows.
		rt := *old
		rt.token = rand.Text()
		rt.expires = now.Add(s.ttl.refresh)
		rt.accessTokenID = at.id
		at.refreshToken = rt.token
		s.refreshTokens[rt.token] = &rt
		sess.expires = rt.expires
		return at.id, rt.token, at.expires, nil
	default:
		return "", "", time.Time{}, oidc.ErrUnsupportedGrantType()
	}
}

func (s *storage) newAccessTokenLocked(clientID, subject, sid, authRequestID string, scopes []string) *accessToken {
	at := &accessToken{
		id:            rand.Text(),
		clientID:      clientID,
		subject:       subject,
		sid:           sid,
		authRequestID: authRequestID,
		scopes:        slices.Clone(scopes),
		expires:       s.now().Add(s.ttl.access),
	}
	s.accessTokens[at.id] = at
	return at
}

func (s *storage) TokenRequestByRefreshToken(_ context.Context, token string) (op.RefreshTokenRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt, ok := s.refreshTokens[token]
	if !ok || s.now().After(rt.expires) {
		return nil, errors.New("refresh token invalid or expired")
	}
	return &refreshRequest{
		token:    rt.token,
		clientID: rt.clientID,
		subject:  rt.subject,
		sid:      rt.sid,
		scopes:   slices.Clone(rt.scopes),
		authTime: rt.authTime,
		amr:      slices.Clone(rt.amr),
	}, nil
}

// TerminateSession ends every session of the user at the client. The
// end_session endpoint uses TerminateSessionFromRequest instead; this is
// here because op.Storage requires it.
func (s *storage) TerminateSession(_ context.Context, userID, clientID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sess := range s.sessions {
		if sess.subject == userID && sess.clientID == clientID {
			s.endSessionLocked(sess.sid)
		}
	}
	return nil
}

// TerminateSessionFromRequest implements RP-initiated logout: it ends the
// session named by the id_token_hint's sid (or, without one, all of the
// user's sessions at the client) and revokes their tokens.
func (s *storage) TerminateSessionFromRequest(ctx context.Context, req *op.EndSessionRequest) (string, error) {
	sid := ""
	if req.IDTokenHintClaims != nil {
		sid, _ = req.IDTokenHintClaims.Claims["sid"].(string)
	}
	if sid == "" {
		if req.UserID != "" && req.ClientID != "" {
			_ = s.TerminateSession(ctx, req.UserID, req.ClientID)
		}
		return req.RedirectURI, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess, ok := s.sessions[sid]; ok && sess.subject == req.UserID {
		s.endSessionLocked(sid)
	}
	return req.RedirectURI, nil
}

// endSessionLocked removes a session and every token issued under it.
func (s *storage) endSessionLocked(sid string) {
	delete(s.sessions, sid)
	for id, at := range s.accessTokens {
		if at.sid == sid {
			delete(s.accessTokens, id)
		}
	}
	for id, rt := range s.refreshTokens {
		if rt.sid == sid {
			delete(s.refreshTokens, id)
		}
	}
}

func (s *storage) revokeAuthRequestTokensLocked(authRequestID string) {
	for id, rt := range s.refreshTokens {
		if rt.authRequestID == authRequestID {
			delete(s.refreshTokens, id)
		}
	}
	for id, at := range s.accessTokens {
		if at.authRequestID == authRequestID {
			if at.refreshToken != "" {
				delete(s.refreshTokens, at.refreshToken)
			}
			delete(s.accessTokens, id)
		}
	}
}

func (s *storage) RevokeToken(_ context.Context, tokenOrID, _, clientID string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if at, ok := s.accessTokens[tokenOrID]; ok {
		if at.clientID != clientID {
			return oidc.ErrInvalidClient().WithDescription("token was not issued to this client")
		}
		delete(s.accessTokens, tokenOrID)
		return nil
	}
	if rt, ok := s.refreshTokens[tokenOrID]; ok {
		if rt.clientID != clientID {
			return oidc.ErrInvalidClient().WithDescription("token was not issued to this client")
		}
		delete(s.refreshTokens, tokenOrID)
		delete(s.accessTokens, rt.accessTokenID)
	}
	// Unknown tokens count as revoked (RFC 7009 §2.2).
	return nil
}

func (s *storage) GetRefreshTokenInfo(_ context.Context, clientID, token string) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt, ok := s.refreshTokens[token]
	if !ok || rt.clientID != clientID {
		return "", "", op.ErrInvalidRefreshToken
	}
	return rt.subject, rt.token, nil
}

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) {
	return s.currentKey(), nil
}

func (s *storage) currentKey() *signingKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys[len(s.keys)-1]
}

func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

// KeySet publishes the current key and every retired key that may still
// have signed a token in use.
func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneKeysLocked(s.now())
	keys := make([]op.Key, 0, len(s.keys))
	for i := len(s.keys) - 1; i >= 0; i-- { // newest first
		keys = append(keys, publicKey{s.keys[i]})
	}
	return keys, nil
}

// pruneKeysLocked drops retired keys once nothing they signed can still be
// valid. Refresh TTL is included because an expired ID token is still
// accepted as id_token_hint at logout, as long as its signature verifies.
func (s *storage) pruneKeysLocked(now time.Time) {
	grace := max(s.ttl.access, s.ttl.id, s.ttl.refresh, logoutTokenTTL)
	s.keys = slices.DeleteFunc(s.keys, func(k *signingKey) bool {
		return !k.retired.IsZero() && now.After(k.retired.Add(grace))
	})
}

// ---- op.OPStorage ----

func (s *storage) GetClientByClientID(_ context.Context, clientID string) (op.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[clientID]
	if !ok {
		return nil, fmt.Errorf("unknown client %q", clientID)
	}
	return c, nil // immutable after New
}

func (s *storage) AuthorizeClientIDSecret(_ context.Context, clientID, secret string) error {
	s.mu.Lock()
	c, ok := s.clients[clientID]
	s.mu.Unlock()
	want := dummyPassword
	if ok {
		want = []byte(c.secret)
	}
	if subtle.ConstantTimeCompare([]byte(secret), want) != 1 || !ok {
		return errors.New("invalid client credentials")
	}
	return nil
}

// SetUserinfoFromScopes is deprecated in zitadel/oidc in favour of
// SetUserinfoFromRequest and must stay empty.
func (s *storage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil
}

// SetUserinfoFromRequest fills the ID token's claims from the user's current
// record, so a refresh after SetAttribute carries the new value.
func (s *storage) SetUserinfoFromRequest(_ context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	sid := ""
	if r, ok := req.(sessionIDer); ok {
		sid = r.sessionID()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fillUserinfoLocked(info, req.GetSubject(), scopes, sid)
}

func (s *storage) SetUserinfoFromToken(_ context.Context, info *oidc.UserInfo, tokenID, subject, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.accessTokens[tokenID]
	if !ok || at.subject != subject || s.now().After(at.expires) {
		return errors.New("access token invalid or expired")
	}
	return s.fillUserinfoLocked(info, at.subject, at.scopes, at.sid)
}

func (s *storage) SetIntrospectionFromToken(_ context.Context, resp *oidc.IntrospectionResponse, tokenID, subject, clientID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.accessTokens[tokenID]
	if !ok || at.subject != subject || at.clientID != clientID || s.now().After(at.expires) {
		return errors.New("token inactive")
	}
	info := new(oidc.UserInfo)
	if err := s.fillUserinfoLocked(info, at.subject, at.scopes, at.sid); err != nil {
		return err
	}
	resp.SetUserInfo(info)
	resp.Scope = slices.Clone(at.scopes)
	resp.ClientID = at.clientID
	resp.Audience = []string{at.clientID}
	resp.Expiration = oidc.FromTime(at.expires)
	return nil
}

func (s *storage) fillUserinfoLocked(info *oidc.UserInfo, subject string, scopes []string, sid string) error {
	u, ok := s.usersBySub[subject]
	if !ok {
		return fmt.Errorf("unknown subject %q", subject)
	}
	info.Subject = u.Subject
	if slices.Contains(scopes, oidc.ScopeEmail) && u.Email != "" {
		info.Email = u.Email
		info.EmailVerified = true
	}
	if slices.Contains(scopes, oidc.ScopeProfile) {
		info.Name = u.Name
		info.PreferredUsername = u.Username
		for k, v := range u.Attributes {
			info.AppendClaims(k, v)
		}
	}
	if slices.Contains(scopes, ScopeGroups) {
		groups := slices.Clone(u.Groups)
		if groups == nil {
			groups = []string{}
		}
		info.AppendClaims("groups", groups)
	}
	if sid != "" {
		info.AppendClaims("sid", sid)
	}
	return nil
}

// GetPrivateClaimsFromScopes would add claims to JWT access tokens; ours are
// opaque.
func (s *storage) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

// GetKeyByIDAndClientID serves JWT client authentication and the JWT
// profile grant, neither of which the dev IdP supports.
func (s *storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errors.New("JWT client authentication is not supported")
}

func (s *storage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, errors.New("JWT profile grant is not supported")
}

func (s *storage) Health(context.Context) error { return nil }

// ---- housekeeping ----

// sweepLocked drops expired entries, at most every sweepEvery, so memory
// stays bounded without a background goroutine.
func (s *storage) sweepLocked(now time.Time) {
	if now.Sub(s.lastSweep) < sweepEvery {
		return
	}
	s.lastSweep = now
	for id, ar := range s.authRequests {
		if now.After(ar.created.Add(authRequestTTL)) {
			delete(s.authRequests, id)
		}
	}
	for c, e := range s.codes {
		if now.After(e.forgetAt) {
			delete(s.codes, c)
		}
	}
	for id, at := range s.accessTokens {
		if now.After(at.expires) {
			delete(s.accessTokens, id)
		}
	}
	for id, rt := range s.refreshTokens {
		if now.After(rt.expires) {
			delete(s.refreshTokens, id)
		}
	}
	for id, sess := range s.sessions {
		if now.After(sess.expires) {
			delete(s.sessions, id)
		}
	}
}
