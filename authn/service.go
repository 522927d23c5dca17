package authn

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/internal/ratelimit"
	"github.com/ztna-dev/ztna/internal/store"
)

// Paths the edge reserves on every host it serves. Requests under /.ztna/
// never reach an app.
const (
	ReservedPrefix     = "/.ztna/"
	PathLogin          = "/.ztna/login"
	PathCallback       = "/.ztna/callback"
	PathHandoff        = "/.ztna/handoff"
	PathLogout         = "/.ztna/logout"
	PathSignedOut      = "/.ztna/signed-out"
	PathBackchannel    = "/.ztna/backchannel-logout"
	PathDevice         = "/.ztna/device"    // device approval page: an auth-host page a login returns to (PathCLIDevice is the other)
	bindCookie         = "__Host-ztna_bind" // binds a login's state to the browser on the auth host
	handoffBindCookie  = "__Host-ztna_hb"   // binds a handoff code to the browser on an app host
	loginStateTTL      = 10 * time.Minute
	handoffTTL         = time.Minute
	maxFormBytes       = 64 << 10
	refreshRetryAfter  = 30 * time.Second
	refreshCallTimeout = 15 * time.Second
)

// Pages renders the sign-out pages (implemented by package web).
type Pages interface {
	// SignOut renders the confirmation form. redirectOrigins are where the
	// form's response redirects on its way (the IdP's logout, the edge's
	// signed-out page): the page's form-action policy must allow them or
	// browsers block the redirect.
	SignOut(w http.ResponseWriter, action, csrfToken, user string, redirectOrigins ...string)
	SignedOut(w http.ResponseWriter)
	// CLIDeviceGrant renders the device authorization page of the CLI
	// login (device_grant.go): the code entry form (userCode ""), or the
	// request to approve; approving redirects through redirectOrigins.
	CLIDeviceGrant(w http.ResponseWriter, user, csrfToken, userCode, client, host string, requested time.Time, redirectOrigins ...string)
	// Message renders a short page with a title and a message.
	Message(w http.ResponseWriter, status int, title, message string)
}

// ServiceOptions wire a Service.
type ServiceOptions struct {
	// AuthOrigin is the edge's auth host as https://host[:port]; the OIDC
	// callback is AuthOrigin + PathCallback.
	AuthOrigin string
	// IsAppHost reports whether host[:port] is an app the edge serves; only
	// those are valid return addresses and handoff targets.
	IsAppHost func(hostport string) bool
	Pages     Pages
	Logger    *slog.Logger
	// DeviceGrantLimit bounds how often one client address may start a
	// CLI device grant (an unauthenticated request, RFC 8628); nil → only
	// the bound on outstanding grants applies. It outlives reloads.
	DeviceGrantLimit *ratelimit.PerClient
	// Directory records every user who signs in and applies the
	// attributes admins set on them; nil → identities are the IdP's alone.
	Directory *Directory
	// Now is the clock (tests); nil → time.Now.
	Now func() time.Time
}

// Service is the browser-facing side of authn: login, callback, handoff,
// logout, back-channel logout, and per-request session lookup.
type Service struct {
	rp       *RelyingParty
	sessions *Sessions
	st       store.Store
	opts     ServiceOptions
	logger   *slog.Logger

	ctx    context.Context // cancelled by Close: owns background refreshes
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.Mutex
	refreshing map[string]time.Time // session key → when the last attempt started
}

// NewService returns the login service for one relying-party configuration.
func NewService(rp *RelyingParty, sessions *Sessions, st store.Store, opts ServiceOptions) *Service {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{rp: rp, sessions: sessions, st: st, opts: opts, logger: opts.Logger,
		ctx: ctx, cancel: cancel, refreshing: map[string]time.Time{}}
}

// Close stops background refreshes and waits for them.
func (s *Service) Close() {
	s.cancel()
	s.wg.Wait()
}

// Sessions returns the session keeper.
func (s *Service) Sessions() *Sessions { return s.sessions }

// Authenticate returns the session named by r's cookie, or ErrNoSession.
// It starts a background token refresh when one is due; the request goes
// on with the current session meanwhile.
func (s *Service) Authenticate(r *http.Request) (*Session, error) {
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return nil, ErrNoSession
	}
	sess, err := s.sessions.Get(r.Context(), c.Value)
	if err != nil {
		return nil, err
	}
	if !sess.RefreshAt.IsZero() && s.opts.Now().After(sess.RefreshAt) {
		s.refreshAsync(sess)
	}
	return sess, nil
}

// RefreshIfDue starts a background token refresh of the session with store
// key key when one is due. The edge calls it for sessions that hold live
// connections but send no requests (a WebSocket), so that their attributes
// still follow the IdP. It does no I/O: a session not in memory is skipped.
func (s *Service) RefreshIfDue(key string) {
	sess := s.sessions.cached(key)
	if sess != nil && !sess.RefreshAt.IsZero() && s.opts.Now().After(sess.RefreshAt) {
		s.refreshAsync(sess)
	}
}

// LoginURL is where a client without a session can log in to come back to
// the URL of r.
func (s *Service) LoginURL(r *http.Request) string {
	return s.opts.AuthOrigin + PathLogin + "?rd=" + url.QueryEscape("https://"+r.Host+r.URL.RequestURI())
}

// Unauthenticated answers a request without a session: browser navigations
// are sent to log in; everything else gets a 401 with the login URL and is
// never redirected.
func (s *Service) Unauthenticated(w http.ResponseWriter, r *http.Request, wantsHTML bool) error {
	e := httperr.New(http.StatusUnauthorized, "unauthenticated", "You need to sign in to use this app.")
	e.Title = "Sign in required"
	e.Hint = "Open the login URL in a browser, then retry."
	e.LoginURL = s.LoginURL(r)
	if !wantsHTML || r.Header.Get("Upgrade") != "" || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		return e
	}
	// Reuse the browser's binding if it has one, so several tabs signing in
	// at once all complete.
	hb := ""
	if c, err := r.Cookie(handoffBindCookie); err == nil {
		if _, ok := ParseSessionID(c.Value); ok {
			hb = c.Value
		}
	}
	if hb == "" {
		hb = randomToken()
	}
	setCookie(w, handoffBindCookie, hb, loginStateTTL)
	http.Redirect(w, r, e.LoginURL+"&hb="+hashKey(hb), http.StatusFound)
	return nil
}

// ServeReserved handles the /.ztna/ paths of a request for host, which is
// the auth host or an app host. It returns a user-facing error or nil.
func (s *Service) ServeReserved(w http.ResponseWriter, r *http.Request, authHost bool) error {
	switch {
	case authHost && r.URL.Path == PathLogin:
		return s.login(w, r)
	case authHost && r.URL.Path == PathCallback:
		return s.callback(w, r)
	case authHost && r.URL.Path == PathBackchannel:
		return s.backchannel(w, r)
	case authHost && r.URL.Path == PathCLILogin:
		return s.cliLogin(w, r)
	case authHost && r.URL.Path == PathCLIToken:
		return s.cliToken(w, r)
	case authHost && (r.URL.Path == PathCLIDevice || r.URL.Path == PathCLIDeviceDecide):
		return s.serveDeviceGrant(w, r)
	case authHost && r.URL.Path == PathCLILogout:
		return s.cliLogout(w, r)
	case authHost && r.URL.Path == PathSignedOut:
		s.opts.Pages.SignedOut(w)
		return nil
	case !authHost && r.URL.Path == PathHandoff:
		return s.handoff(w, r)
	case r.URL.Path == PathLogout:
		return s.logout(w, r)
	}
	return httperr.New(http.StatusNotFound, "not_found", "There is nothing at this address.")
}

// loginState is what a login remembers between redirect and callback.
type loginState struct {
	Verifier   string    `json:"v"`
	Nonce      string    `json:"n"`
	ReturnURL  string    `json:"rd"`
	BindHash   string    `json:"b"`  // hash of the auth-host bind cookie
	HandoffFor string    `json:"hb"` // hash of the app-host bind cookie
	Created    time.Time `json:"t"`
	// CLI is set for a native-app login (cli.go): it ends at the CLI's
	// loopback listener, not in this browser.
	CLI *cliRequest `json:"cli,omitempty"`
	// Grant is set for the approval of a device grant (device_grant.go):
	// the session is the CLI's, bound to the grant.
	Grant *grantApproval `json:"grant,omitempty"`
}

// handoffRecord carries a session from the auth host to one app host. The
// session ID is sealed with a key derived from the one-time code, which is
// itself stored only as a hash: the store never holds a usable cookie.
type handoffRecord struct {
	SealedID []byte `json:"sid"`
	Host     string `json:"host"`
	Path     string `json:"path"`
	BindHash string `json:"hb"`
}

func (s *Service) login(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "Use GET to start a login.")
	}
	q := r.URL.Query()
	rd, err := ValidateReturnURL(q.Get("rd"), s.isReturnHost)
	if err != nil {
		return httperr.BadRequest("The address to return to after sign-in is not an app served here.", err)
	}
	if s.onAuthHost(rd) {
		if u, _ := url.Parse(rd); u == nil || (u.Path != PathDevice && u.Path != PathCLIDevice) {
			return httperr.BadRequest("The address to return to after sign-in is not an app served here.", errors.New("auth host return address is not the device page"))
		}
	}
	// Returning to an app host needs the browser binding of the handoff;
	// returning to the auth host itself (the device approval page) does not:
	// the session cookie is set there directly.
	hb := q.Get("hb")
	if !s.onAuthHost(rd) && !isHexHash(hb) {
		return httperr.BadRequest("This sign-in link is incomplete. Open the app again to sign in.", errors.New("missing or malformed hb"))
	}
	// Already signed in on the auth host: skip the IdP.
	if sess, err := s.Authenticate(r); err == nil {
		return s.returnTo(w, r, sess.ID, rd, hb)
	}
	bind := ""
	if c, err := r.Cookie(bindCookie); err == nil {
		if _, ok := ParseSessionID(c.Value); ok {
			bind = c.Value
		}
	}
	if bind == "" {
		bind = randomToken()
	}
	setCookie(w, bindCookie, bind, loginStateTTL)
	state, nonce, verifier := randomToken(), randomToken(), oauth2.GenerateVerifier()
	ls := loginState{Verifier: verifier, Nonce: nonce, ReturnURL: rd, BindHash: hashKey(bind), HandoffFor: hb, Created: s.opts.Now()}
	b, _ := json.Marshal(ls)
	if err := s.st.Put(r.Context(), bucketLoginState, hashKey(state), b, loginStateTTL); err != nil {
		return fmt.Errorf("store login state: %w", err)
	}
	http.Redirect(w, r, s.rp.AuthCodeURL(state, nonce, verifier), http.StatusFound)
	return nil
}

func (s *Service) callback(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "The sign-in callback takes GET.")
	}
	q := r.URL.Query()
	state := q.Get("state")
	if len(state) == 0 || len(state) > 512 {
		return httperr.BadRequest("This sign-in response is not valid. Open the app again to sign in.", errors.New("missing state"))
	}
	// One-time: the state is consumed whatever happens next, so a replayed
	// callback finds nothing.
	b, err := s.st.Take(r.Context(), bucketLoginState, hashKey(state))
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return httperr.BadRequest("This sign-in has expired or was already used. Open the app again to sign in.", errors.New("unknown state"))
		}
		return fmt.Errorf("take login state: %w", err)
	}
	var ls loginState
	if err := json.Unmarshal(b, &ls); err != nil {
		return fmt.Errorf("decode login state: %w", err)
	}
	bc, err := r.Cookie(bindCookie)
	if err != nil || !secureEqual(hashKey(bc.Value), ls.BindHash) {
		return httperr.BadRequest("This sign-in was started in another browser. Open the app again to sign in.", errors.New("state not bound to this browser"))
	}
	if e := q.Get("error"); e != "" {
		he := httperr.New(http.StatusForbidden, "login_refused", "The identity provider did not sign you in.")
		he.Hint = "Try again; if it keeps failing, ask IT to check your account."
		he.Cause = fmt.Errorf("idp error %q: %.200s", e, q.Get("error_description"))
		return he
	}
	code := q.Get("code")
	if code == "" || len(code) > 2048 {
		return httperr.BadRequest("This sign-in response has no code.", errors.New("missing code"))
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	id, toks, err := s.rp.Exchange(ctx, code, ls.Verifier, ls.Nonce)
	if err != nil {
		he := httperr.New(http.StatusUnauthorized, "login_failed", "Your sign-in could not be verified.")
		he.Hint = "Open the app again to sign in."
		he.Cause = err
		return he
	}
	// Fail closed: an override may be what takes access away.
	eff, stamp, err := s.opts.Directory.Seen(ctx, id)
	if err != nil {
		return fmt.Errorf("record user in directory: %w", err)
	}
	sess, err := s.sessions.Create(r.Context(), eff, toks)
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	if err := s.opts.Directory.Settle(ctx, sess, id, stamp); err != nil {
		if rerr := s.sessions.Revoke(ctx, sess.Key); rerr != nil {
			s.logger.Error("revoke session whose attributes could not be settled", "session", sess.Ref(), "err", rerr)
		}
		return fmt.Errorf("settle the new session's attributes: %w", err)
	}
	s.logger.Info("login", "user", id.Subject, "email", id.Email, "session", sess.Ref())
	if ls.CLI != nil {
		return s.finishCLILogin(w, r, sess, ls.CLI) // no cookie: the session is the CLI's
	}
	if ls.Grant != nil {
		return s.finishDeviceGrant(w, r, sess, ls.Grant) // no cookie either
	}
	setCookie(w, SessionCookie, sess.ID, sess.ExpiresAt.Sub(s.opts.Now()))
	return s.returnTo(w, r, sess.ID, ls.ReturnURL, ls.HandoffFor)
}

// isReturnHost reports whether a login may return to hostport: an app host
// or the auth host itself.
func (s *Service) isReturnHost(hostport string) bool {
	return hostport == s.authHost() || s.opts.IsAppHost(hostport)
}

func (s *Service) authHost() string { return strings.TrimPrefix(s.opts.AuthOrigin, "https://") }

// onAuthHost reports whether a validated return URL is on the auth host.
func (s *Service) onAuthHost(returnURL string) bool {
	return strings.HasPrefix(returnURL, s.opts.AuthOrigin+"/")
}

// returnTo finishes a login: straight back to a page of the auth host
// (whose session cookie is already set), or through the one-time handoff to
// an app host.
func (s *Service) returnTo(w http.ResponseWriter, r *http.Request, sessionID, returnURL, hb string) error {
	if s.onAuthHost(returnURL) {
		http.Redirect(w, r, returnURL, http.StatusFound)
		return nil
	}
	return s.redirectHandoff(w, r, sessionID, returnURL, hb)
}

// redirectHandoff sends the browser to the app host with a one-time code
// that sets the session cookie there.
func (s *Service) redirectHandoff(w http.ResponseWriter, r *http.Request, sessionID, returnURL, hb string) error {
	u, err := url.Parse(returnURL)
	if err != nil {
		return fmt.Errorf("parse validated return URL: %w", err)
	}
	code := randomToken()
	sealed, err := sealWithCode(code, sessionID)
	if err != nil {
		return fmt.Errorf("seal handoff: %w", err)
	}
	rec, _ := json.Marshal(handoffRecord{SealedID: sealed, Host: u.Host, Path: u.RequestURI(), BindHash: hb})
	if err := s.st.Put(r.Context(), bucketHandoff, hashKey(code), rec, handoffTTL); err != nil {
		return fmt.Errorf("store handoff: %w", err)
	}
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, "https://"+u.Host+PathHandoff+"?code="+url.QueryEscape(code), http.StatusFound)
	return nil
}

func (s *Service) handoff(w http.ResponseWriter, r *http.Request) error {
	code := r.URL.Query().Get("code")
	if len(code) != sessionIDLen {
		return httperr.BadRequest("This sign-in link is not valid. Open the app again to sign in.", errors.New("malformed handoff code"))
	}
	b, err := s.st.Take(r.Context(), bucketHandoff, hashKey(code))
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return httperr.BadRequest("This sign-in link has expired or was already used. Open the app again to sign in.", errors.New("unknown handoff code"))
		}
		return fmt.Errorf("take handoff: %w", err)
	}
	var rec handoffRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("decode handoff: %w", err)
	}
	if !strings.EqualFold(rec.Host, r.Host) {
		return httperr.BadRequest("This sign-in link is for another app.", fmt.Errorf("handoff for %q used on %q", rec.Host, r.Host))
	}
	hc, err := r.Cookie(handoffBindCookie)
	if err != nil || !secureEqual(hashKey(hc.Value), rec.BindHash) {
		return httperr.BadRequest("This sign-in link was opened in another browser. Open the app again to sign in.", errors.New("handoff not bound to this browser"))
	}
	path, err := ValidateLocalPath(rec.Path)
	if err != nil {
		path = "/"
	}
	sessionID, err := openWithCode(code, rec.SealedID)
	if err != nil {
		return fmt.Errorf("open handoff: %w", err)
	}
	sess, err := s.sessions.Get(r.Context(), sessionID)
	if err != nil {
		return httperr.BadRequest("Your session ended before sign-in finished. Open the app again to sign in.", err)
	}
	setCookie(w, SessionCookie, sess.ID, sess.ExpiresAt.Sub(s.opts.Now()))
	// The binding cookie stays until it expires: other tabs of this
	// browser may still be completing their own handoffs.
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, path, http.StatusFound)
	return nil
}

// CSRFToken is the anti-forgery token for state-changing forms of sess: it
// is derived from the secret session ID, so only a page that holds the
// session can know it, and it reveals nothing about the ID.
func CSRFToken(sess *Session) string {
	h := sha256.Sum256([]byte("ztna-csrf\x00" + sess.ID))
	return hex.EncodeToString(h[:16])
}

func (s *Service) logout(w http.ResponseWriter, r *http.Request) error {
	sess, err := s.Authenticate(r)
	switch r.Method {
	case http.MethodGet:
		if err != nil {
			clearCookie(w, SessionCookie)
			s.opts.Pages.SignedOut(w)
			return nil
		}
		s.opts.Pages.SignOut(w, PathLogout, CSRFToken(sess), sess.Identity.Email, s.rp.EndSessionOrigin(), s.opts.AuthOrigin)
		return nil
	case http.MethodPost:
	default:
		return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "Use the sign-out button.")
	}
	if err != nil {
		clearCookie(w, SessionCookie)
		s.opts.Pages.SignedOut(w)
		return nil
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		return httperr.BadRequest("The sign-out form could not be read.", err)
	}
	if !secureEqual(r.PostForm.Get("csrf"), CSRFToken(sess)) {
		return httperr.New(http.StatusForbidden, "csrf", "This sign-out request did not come from a ztna page.")
	}
	if err := s.sessions.Revoke(r.Context(), sess.Key); err != nil {
		return fmt.Errorf("logout: %w", err)
	}
	s.logger.Info("logout", "user", sess.Identity.Subject, "session", sess.Ref())
	clearCookie(w, SessionCookie)
	if u := s.rp.EndSessionURL(sess.IDToken, s.opts.AuthOrigin+PathSignedOut); u != "" {
		http.Redirect(w, r, u, http.StatusSeeOther)
		return nil
	}
	s.opts.Pages.SignedOut(w)
	return nil
}

func (s *Service) backchannel(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "Back-channel logout takes POST.")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		return httperr.BadRequest("invalid_request", err)
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	lt, err := s.rp.VerifyLogoutToken(ctx, r.PostForm.Get("logout_token"))
	if err != nil {
		return httperr.BadRequest("invalid logout_token", err)
	}
	fresh, err := s.st.PutIfAbsent(ctx, bucketLogoutJTI, lt.JTI, []byte{1}, lt.ReplayWindow)
	if err != nil {
		return fmt.Errorf("record logout jti: %w", err)
	}
	if !fresh {
		return httperr.BadRequest("invalid logout_token", errors.New("replayed logout token"))
	}
	n, err := s.sessions.RevokeMatching(ctx, func(sess *Session) bool {
		if lt.SessionID != "" {
			return sess.IdPSession == lt.SessionID
		}
		return sess.Identity.Subject == lt.Subject
	})
	if err != nil {
		return err
	}
	s.logger.Info("back-channel logout", "user", lt.Subject, "sessions_revoked", n)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	return nil
}

// refreshAsync refreshes sess's IdP tokens in the background, one refresh
// at a time per session.
func (s *Service) refreshAsync(sess *Session) {
	now := s.opts.Now()
	s.mu.Lock()
	if last, ok := s.refreshing[sess.Key]; ok && now.Sub(last) < refreshRetryAfter {
		s.mu.Unlock()
		return
	}
	s.refreshing[sess.Key] = now
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.refresh(sess)
	}()
}

func (s *Service) refresh(sess *Session) {
	ctx, cancel := context.WithTimeout(s.ctx, refreshCallTimeout)
	defer cancel()
	if err := s.refreshSession(ctx, sess); err != nil && !errors.Is(err, ErrNoSession) {
		s.logger.Warn("token refresh failed; will retry", "session", sess.Ref(), "err", err)
		return
	}
	s.doneRefreshing(sess.Key)
}

// refreshSession refreshes sess's tokens and identity at the IdP now and
// stores the result. A refresh the IdP refuses ends the session
// (ErrNoSession).
//
// Exactly one replica refreshes a session at a time (a lock in the shared
// store): IdPs rotate refresh tokens, and a second refresh with the token
// the first one used up would be refused and end the session. The replica
// that loses the race leaves it to the winner, whose update reaches it on
// the bus; one that finds the stored session already refreshed uses that.
func (s *Service) refreshSession(ctx context.Context, sess *Session) error {
	won, err := s.st.PutIfAbsent(ctx, bucketRefreshLock, sess.Key, []byte{1}, refreshCallTimeout+5*time.Second)
	if err != nil {
		return fmt.Errorf("refresh lock: %w", err)
	}
	if !won {
		return nil
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = s.st.Delete(dctx, bucketRefreshLock, sess.Key)
	}()
	cur, err := s.sessions.load(ctx, sess.Key)
	if errors.Is(err, store.ErrNotFound) {
		return ErrNoSession
	}
	if err != nil {
		return err
	}
	if cur.RefreshToken != sess.RefreshToken {
		// Another replica refreshed it since this one read it.
		s.sessions.Reread(ctx, sess.Key)
		return nil
	}
	cur.ID = sess.ID
	sess = cur
	id, toks, err := s.rp.Refresh(ctx, sess.RefreshToken, sess.Identity.Subject)
	if err != nil {
		if IsInvalidGrant(err) {
			s.logger.Info("session ended: IdP refused the refresh", "session", sess.Ref(), "user", sess.Identity.Subject)
			if rerr := s.sessions.Revoke(ctx, sess.Key); rerr != nil {
				s.logger.Error("revoke session after refused refresh", "session", sess.Ref(), "err", rerr)
			}
			return ErrNoSession
		}
		return err
	}
	eff, stamp, err := s.opts.Directory.Seen(ctx, id)
	if err != nil {
		return fmt.Errorf("record user in directory: %w", err)
	}
	cp := *sess
	cp.Identity = eff
	cp.RefreshToken = toks.RefreshToken
	if toks.IDToken != "" {
		cp.IDToken = toks.IDToken
	}
	cp.RefreshAt = toks.refreshAt()
	if err := s.sessions.Update(ctx, &cp); err != nil {
		return fmt.Errorf("store refreshed session: %w", err)
	}
	if err := s.opts.Directory.Settle(ctx, &cp, id, stamp); err != nil {
		return fmt.Errorf("settle the refreshed session's attributes: %w", err)
	}
	return nil
}

// RefreshUser refreshes, now and one after another, every session of the
// user with OIDC subject sub, so that attribute changes at the IdP take
// effect at once (an admin action after a role change). It returns how
// many sessions were refreshed; sessions the IdP refused are ended.
func (s *Service) RefreshUser(ctx context.Context, sub string) (refreshed, ended int, err error) {
	found, err := s.sessions.Matching(ctx, func(x *Session) bool { return x.Identity.Subject == sub })
	if err != nil {
		return 0, 0, err
	}
	var errs []error
	for _, sess := range found {
		rctx, cancel := context.WithTimeout(ctx, refreshCallTimeout)
		err := s.refreshSession(rctx, sess)
		cancel()
		switch {
		case err == nil:
			refreshed++
		case errors.Is(err, ErrNoSession):
			ended++
		default:
			errs = append(errs, fmt.Errorf("session %s: %w", sess.Ref(), err))
		}
	}
	return refreshed, ended, errors.Join(errs...)
}

// doneRefreshing forgets a session's refresh attempt. A failed attempt is
// remembered, so retries wait refreshRetryAfter.
func (s *Service) doneRefreshing(key string) {
	s.mu.Lock()
	delete(s.refreshing, key)
	s.mu.Unlock()
}

func setCookie(w http.ResponseWriter, name, value string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: "/", MaxAge: int(maxAge.Seconds()),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
}

func clearCookie(w http.ResponseWriter, name string) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}

// SecureEqual compares secrets (CSRF tokens) in constant time.
func SecureEqual(a, b string) bool { return secureEqual(a, b) }

func secureEqual(a, b string) bool {
	return len(a) == len(b) && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func isHexHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// sealWithCode encrypts secret with AES-256-GCM under a key derived from a
// one-time code.
func sealWithCode(code, secret string) ([]byte, error) {
	aead, err := codeAEAD(code)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, []byte(secret), nil), nil
}

func openWithCode(code string, sealed []byte) (string, error) {
	aead, err := codeAEAD(code)
	if err != nil {
		return "", err
	}
	if len(sealed) < aead.NonceSize() {
		return "", errors.New("sealed value too short")
	}
	pt, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], nil)
	return string(pt), err
}

func codeAEAD(code string) (cipher.AEAD, error) {
	key := sha256.Sum256([]byte("ztna-handoff\x00" + code))
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
