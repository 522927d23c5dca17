package authn

// The device authorization grant (RFC 8628 shape) for `ztna tunnel login
// --device`: a CLI with no browser at hand gets an edge session through a
// browser anywhere else. The edge is the authorization server here, not the
// IdP, because the bearer the CLI needs is an edge session:
//
//   - POST PathCLIDevice (the CLI): a grant with a secret device code (only
//     its hash is stored) and a short user code for people.
//   - GET PathCLIDevice (the browser, signed in here): the code, who asked
//     and when, and Approve/Deny buttons that POST to PathCLIDeviceDecide
//     with the CSRF token of the browser's session.
//   - Approve runs an OIDC login for the CLI (as the loopback login does):
//     the session it creates is the CLI's own, with its own IdP tokens, so it
//     refreshes, follows attribute changes and is revoked on its own. It
//     must be the approver's identity; the callback seals the new session ID
//     to a public key derived from the device code (HPKE), so the store never
//     holds a usable bearer.
//   - POST PathCLIToken with DeviceCodeGrantType (the CLI, polling):
//     authorization_pending, slow_down, access_denied, expired_token or,
//     once, the session.
//
// Everything is bounded: form sizes, field lengths, outstanding grants, and
// wrong user codes per user (a few, then a lockout). Codes and tokens are
// never logged.

import (
	"context"
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/usercode"
)

// Paths of the device grant on the auth host.
const (
	PathCLIDevice       = "/.ztna/cli/device"        // POST: start a grant (CLI); GET: the approval page (browser)
	PathCLIDeviceDecide = "/.ztna/cli/device/decide" // POST: approve or deny (browser, CSRF token)
)

// DeviceCodeGrantType is the grant_type of a device-code poll at
// PathCLIToken (RFC 8628 §3.4).
const DeviceCodeGrantType = "urn:ietf:params:oauth:grant-type:device_code"

const (
	// DeviceGrantTTL is how long a grant waits for approval and redemption.
	DeviceGrantTTL = 10 * time.Minute
	// DeviceGrantInterval is the polling interval a grant starts with; each
	// slow_down adds deviceGrantSlowDown (RFC 8628 §3.5).
	DeviceGrantInterval = 5 * time.Second
	deviceGrantSlowDown = 5 * time.Second
	maxDeviceInterval   = time.Minute
	// A grant's record outlives its TTL a little, so a late poll learns
	// expired_token rather than invalid_grant.
	deviceGrantGrace = time.Minute
	// maxDeviceGrants bounds the outstanding grants (approved or not, not
	// yet redeemed or expired); beyond it starts are refused with 503.
	maxDeviceGrants = 1000
	// A user who enters this many unknown codes within codeFailureWindow
	// may enter none until the window ends: 20^8 codes make guessing
	// hopeless, and the lockout keeps it so.
	maxCodeFailures   = 5
	codeFailureWindow = 15 * time.Minute

	maxDeviceForm      = 4 << 10
	maxGrantClientLen  = 64
	maxGrantHostLen    = 253
	grantCodeAttempts  = 5
	deviceCodeSealInfo = "ztna cli device grant v1\x00"

	bucketCLIGrant     = "cli_grant"      // hash of the device code → deviceGrant
	bucketCLIGrantCode = "cli_grant_code" // hash of the user code → grant key
	bucketCLIGrantPoll = "cli_grant_poll" // grant key → grantPoll
	bucketCLIGrantFail = "cli_grant_fail" // hash of a user's subject → codeFailures
)

// Grant states.
const (
	grantPending  = "pending"
	grantApproved = "approved"
	grantDenied   = "denied"
)

// deviceGrant is the stored state of one grant, under the hash of its
// device code.
type deviceGrant struct {
	PublicKey []byte    `json:"pk"` // HPKE X25519 key derived from the device code
	Client    string    `json:"client"`
	Host      string    `json:"host,omitempty"`
	Created   time.Time `json:"t"`
	Expires   time.Time `json:"exp"` // checked against the service clock
	State     string    `json:"state"`
	Sealed    []byte    `json:"sid,omitempty"` // the CLI's session ID, sealed to PublicKey
	Subject   string    `json:"sub,omitempty"`
}

// grantPoll paces one grant's polls.
type grantPoll struct {
	Last     time.Time     `json:"last"`
	Interval time.Duration `json:"interval"`
}

// codeFailures counts a user's unknown codes in the current window.
type codeFailures struct {
	N     int       `json:"n"`
	Until time.Time `json:"until"`
}

// grantApproval is what an approval carries through the OIDC login, in the
// login state.
type grantApproval struct {
	CodeKey  string `json:"ck"`  // store key of the user code
	Approver string `json:"sub"` // who clicked Approve: the login must be theirs
}

// DeviceGrantStart is the answer of POST PathCLIDevice.
type DeviceGrantStart struct {
	DeviceCode              string `json:"device_code"` // secret: the CLI's proof at PathCLIToken
	UserCode                string `json:"user_code"`   // XXXX-XXXX
	VerificationURI         string `json:"verification_uri"`
	VerificationURIComplete string `json:"verification_uri_complete"`
	ExpiresIn               int    `json:"expires_in"` // seconds
	Interval                int    `json:"interval"`   // seconds
}

// serveDeviceGrant answers PathCLIDevice and PathCLIDeviceDecide.
func (s *Service) serveDeviceGrant(w http.ResponseWriter, r *http.Request) error {
	switch {
	case r.URL.Path == PathCLIDevice && r.Method == http.MethodPost:
		return s.startDeviceGrant(w, r)
	case r.URL.Path == PathCLIDevice && r.Method == http.MethodGet:
		return s.deviceGrantPage(w, r)
	case r.URL.Path == PathCLIDeviceDecide && r.Method == http.MethodPost:
		return s.decideDeviceGrant(w, r)
	}
	return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "Method not allowed here.")
}

// startDeviceGrant answers the CLI's POST PathCLIDevice.
func (s *Service) startDeviceGrant(w http.ResponseWriter, r *http.Request) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxDeviceForm)
	if err := r.ParseForm(); err != nil {
		return httperr.BadRequest("The request could not be read.", err)
	}
	client, host := r.PostForm.Get("client"), strings.TrimSpace(r.PostForm.Get("host"))
	if !validGrantClient(client) {
		return httperr.BadRequest("client must be ztna-cli/VERSION (printable ASCII, at most 64 bytes).", errors.New("malformed client"))
	}
	if !validGrantLabel(host, maxGrantHostLen) {
		return httperr.BadRequest("host must be printable text of at most 253 bytes.", errors.New("malformed host"))
	}
	if lim := s.opts.DeviceGrantLimit; lim != nil && !lim.Allow(r.RemoteAddr, s.opts.Now()) {
		s.logger.Warn("cli device grant refused: client over its rate", "client_addr", r.RemoteAddr)
		w.Header().Set("Retry-After", "60")
		return &httperr.Error{Status: http.StatusTooManyRequests, Code: "slow_down",
			Message: "Too many sign-ins were started from your address; try again in a minute."}
	}
	ctx := r.Context()
	n := 0
	if err := s.st.List(ctx, bucketCLIGrant, "", func(string, []byte) bool { n++; return n < maxDeviceGrants }); err != nil {
		return fmt.Errorf("count device grants: %w", err)
	}
	if n >= maxDeviceGrants {
		s.logger.Warn("cli device grant refused: too many outstanding", "limit", maxDeviceGrants)
		w.Header().Set("Retry-After", "60")
		return &httperr.Error{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable",
			Message: "Too many sign-ins are waiting for approval; try again in a minute."}
	}

	deviceCode := randomToken()
	priv, err := grantKeyPair(deviceCode)
	if err != nil {
		return fmt.Errorf("device grant key: %w", err)
	}
	key := hashKey(deviceCode)
	now := s.opts.Now()
	rec := deviceGrant{PublicKey: priv.PublicKey().Bytes(), Client: client, Host: host,
		Created: now, Expires: now.Add(DeviceGrantTTL), State: grantPending}
	b, _ := json.Marshal(rec)
	// The record first: a user code must never point at nothing.
	if err := s.st.Put(ctx, bucketCLIGrant, key, b, DeviceGrantTTL+deviceGrantGrace); err != nil {
		return fmt.Errorf("store device grant: %w", err)
	}
	userCode := ""
	for range grantCodeAttempts {
		c := usercode.New()
		ok, err := s.st.PutIfAbsent(ctx, bucketCLIGrantCode, hashKey(c), []byte(key), DeviceGrantTTL)
		if err != nil {
			_ = s.st.Delete(ctx, bucketCLIGrant, key)
			return fmt.Errorf("store device grant code: %w", err)
		}
		if ok {
			userCode = usercode.Format(c)
			break
		}
	}
	if userCode == "" {
		_ = s.st.Delete(ctx, bucketCLIGrant, key)
		return errors.New("no free device grant user code")
	}
	s.logger.Info("cli device grant started", "grant", key[:16], "client", client, "host", host)
	page := s.opts.AuthOrigin + PathCLIDevice
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, DeviceGrantStart{
		DeviceCode:              deviceCode,
		UserCode:                userCode,
		VerificationURI:         page,
		VerificationURIComplete: page + "?user_code=" + url.QueryEscape(userCode),
		ExpiresIn:               int(DeviceGrantTTL / time.Second),
		Interval:                int(DeviceGrantInterval / time.Second),
	})
	return nil
}

// deviceGrantPage is the browser's GET PathCLIDevice: sign in first, then
// the code entry form or the grant to approve.
func (s *Service) deviceGrantPage(w http.ResponseWriter, r *http.Request) error {
	input := r.URL.Query().Get("user_code")
	sess, err := s.Authenticate(r)
	if err != nil {
		if !errors.Is(err, ErrNoSession) {
			return err
		}
		rd := s.opts.AuthOrigin + PathCLIDevice
		if c, ok := usercode.Normalize(input); ok {
			rd += "?user_code=" + usercode.Format(c)
		}
		http.Redirect(w, r, s.opts.AuthOrigin+PathLogin+"?rd="+url.QueryEscape(rd), http.StatusFound)
		return nil
	}
	if input == "" {
		s.renderGrant(w, sess, "", nil)
		return nil
	}
	rec, _, err := s.grantByUserCode(r.Context(), sess, input)
	if err != nil {
		return err
	}
	c, _ := usercode.Normalize(input)
	s.renderGrant(w, sess, usercode.Format(c), rec)
	return nil
}

// decideDeviceGrant is the browser's POST PathCLIDeviceDecide.
func (s *Service) decideDeviceGrant(w http.ResponseWriter, r *http.Request) error {
	sess, err := s.Authenticate(r)
	if err != nil {
		if !errors.Is(err, ErrNoSession) {
			return err
		}
		he := httperr.New(http.StatusUnauthorized, "unauthenticated", "Sign in to approve a sign-in of the ztna CLI.")
		he.LoginURL = s.opts.AuthOrigin + PathLogin + "?rd=" + url.QueryEscape(s.opts.AuthOrigin+PathCLIDevice)
		return he
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxDeviceForm)
	if err := r.ParseForm(); err != nil {
		return httperr.BadRequest("The form could not be read.", err)
	}
	if !secureEqual(r.PostForm.Get("csrf"), CSRFToken(sess)) {
		return httperr.New(http.StatusForbidden, "csrf", "This request did not come from the ztna sign-in approval page.")
	}
	decision := r.PostForm.Get("decision")
	if decision != "approve" && decision != "deny" {
		return httperr.BadRequest("Choose Approve or Deny.", errors.New("missing decision"))
	}
	ctx := r.Context()
	_, codeKey, err := s.grantByUserCode(ctx, sess, r.PostForm.Get("user_code"))
	if err != nil {
		return err
	}
	if decision == "approve" {
		// The CLI gets a session of its own, with its own IdP tokens (see
		// the file comment); the OIDC callback finishes in
		// finishDeviceGrant.
		return s.startOIDC(w, r, loginState{Grant: &grantApproval{CodeKey: codeKey, Approver: sess.Identity.Subject}})
	}
	key, rec, err := s.takeGrant(ctx, codeKey)
	if err != nil {
		return err
	}
	rec.State = grantDenied
	if err := s.putGrant(ctx, key, rec); err != nil {
		return err
	}
	s.logger.Info("cli device grant denied", "grant", key[:16], "user", sess.Identity.Subject, "session", sess.Ref())
	s.renderMessage(w, http.StatusOK, "Sign-in refused", "The ztna CLI that asked was refused; nothing was signed in.")
	return nil
}

// finishDeviceGrant ends an approval at the OIDC callback: sess is the
// CLI's new session. It binds sess to the grant or, if anything is off,
// ends it.
func (s *Service) finishDeviceGrant(w http.ResponseWriter, r *http.Request, sess *Session, ga *grantApproval) error {
	ctx := r.Context()
	if err := s.bindGrant(ctx, sess, ga); err != nil {
		if rerr := s.sessions.Revoke(ctx, sess.Key); rerr != nil {
			s.logger.Error("revoke the session of a failed device grant approval", "session", sess.Ref(), "err", rerr)
		}
		return err
	}
	who := sess.Identity.Email
	if who == "" {
		who = sess.Identity.Subject
	}
	s.renderMessage(w, http.StatusOK, "Signed in", "The ztna command line is now signed in as "+who+". You can close this tab.")
	return nil
}

// bindGrant decides the grant under ga for sess: approved, with sess's ID
// sealed to the grant's public key.
func (s *Service) bindGrant(ctx context.Context, sess *Session, ga *grantApproval) error {
	if sess.Identity.Subject != ga.Approver {
		he := httperr.New(http.StatusForbidden, "wrong_user", "You signed in as another user than the one who approved.")
		he.Hint = "Approve again and sign in with the same account."
		he.Cause = fmt.Errorf("approved by %q, signed in as %q", ga.Approver, sess.Identity.Subject)
		return he
	}
	key, rec, err := s.takeGrant(ctx, ga.CodeKey)
	if err != nil {
		return err
	}
	pk, err := hpkeSuite.kem.NewPublicKey(rec.PublicKey)
	if err != nil {
		return fmt.Errorf("device grant key: %w", err)
	}
	sealed, err := hpke.Seal(pk, hpkeSuite.kdf, hpkeSuite.aead, []byte(deviceCodeSealInfo+key), []byte(sess.ID))
	if err != nil {
		return fmt.Errorf("seal device grant: %w", err)
	}
	rec.State, rec.Sealed, rec.Subject = grantApproved, sealed, sess.Identity.Subject
	if err := s.putGrant(ctx, key, rec); err != nil {
		return err
	}
	s.logger.Info("cli device grant approved", "grant", key[:16], "user", sess.Identity.Subject, "session", sess.Ref())
	return nil
}

// deviceToken answers a device-code poll at PathCLIToken (form already
// parsed). Errors are RFC 8628's; anything malformed, unknown or already
// redeemed is invalid_grant.
func (s *Service) deviceToken(w http.ResponseWriter, r *http.Request) error {
	answer := func(code string) error {
		if code == "invalid_grant" {
			s.logger.Info("cli device token refused")
		}
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": code})
		return nil
	}
	deviceCode := r.PostForm.Get("device_code")
	if _, ok := ParseSessionID(deviceCode); !ok { // the same shape: 32 random bytes, base64url
		return answer("invalid_grant")
	}
	ctx, key, now := r.Context(), hashKey(deviceCode), s.opts.Now()
	rec, err := s.loadGrant(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return answer("invalid_grant")
	}
	if err != nil {
		return err
	}

	// Pacing has a record of its own: a poll never rewrites the grant, so
	// it cannot race a decision.
	poll := grantPoll{Interval: DeviceGrantInterval}
	if b, err := s.st.Get(ctx, bucketCLIGrantPoll, key); err == nil {
		_ = json.Unmarshal(b, &poll)
	} else if !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("read device grant poll: %w", err)
	}
	slow := !poll.Last.IsZero() && now.Sub(poll.Last) < poll.Interval
	if slow {
		poll.Interval = min(poll.Interval+deviceGrantSlowDown, maxDeviceInterval)
	}
	poll.Last = now
	pb, _ := json.Marshal(poll)
	if err := s.st.Put(ctx, bucketCLIGrantPoll, key, pb, DeviceGrantTTL+deviceGrantGrace); err != nil {
		return fmt.Errorf("store device grant poll: %w", err)
	}
	switch {
	case slow:
		return answer("slow_down")
	case rec.State == grantDenied:
		return answer("access_denied")
	case !now.Before(rec.Expires) && rec.State == grantApproved:
		// Approved but collected too late: end the session nobody holds.
		if sess, err := s.redeemGrant(ctx, key, deviceCode); err == nil {
			if err := s.sessions.Revoke(ctx, sess.Key); err != nil {
				return fmt.Errorf("revoke the session of an expired device grant: %w", err)
			}
		} else if !errors.Is(err, ErrNoSession) && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return answer("expired_token")
	case !now.Before(rec.Expires):
		return answer("expired_token")
	case rec.State == grantPending:
		return answer("authorization_pending")
	case rec.State != grantApproved:
		return fmt.Errorf("device grant in unknown state %q", rec.State)
	}

	sess, err := s.redeemGrant(ctx, key, deviceCode)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return answer("invalid_grant") // a concurrent poll took it
	case errors.Is(err, ErrNoSession):
		return answer("invalid_grant") // ended since the approval
	case err != nil:
		return err
	}
	s.logger.Info("cli device grant redeemed", "grant", key[:16], "user", sess.Identity.Subject, "session", sess.Ref())
	writeJSON(w, http.StatusOK, CLIToken{Token: sess.ID, User: sess.Identity.Subject, Email: sess.Identity.Email, ExpiresAt: sess.ExpiresAt.UTC()})
	return nil
}

// redeemGrant takes the approved grant under key (one-time: of two
// concurrent redemptions exactly one gets it; the other gets
// store.ErrNotFound) and returns the session sealed in it, or ErrNoSession
// if that has ended.
func (s *Service) redeemGrant(ctx context.Context, key, deviceCode string) (*Session, error) {
	b, err := s.st.Take(ctx, bucketCLIGrant, key)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("take device grant: %w", err)
	}
	_ = s.st.Delete(ctx, bucketCLIGrantPoll, key)
	var rec deviceGrant
	if err := json.Unmarshal(b, &rec); err != nil || rec.State != grantApproved {
		return nil, errors.New("device grant changed while redeemed")
	}
	priv, err := grantKeyPair(deviceCode)
	if err != nil {
		return nil, fmt.Errorf("device grant key: %w", err)
	}
	sid, err := hpke.Open(priv, hpkeSuite.kdf, hpkeSuite.aead, []byte(deviceCodeSealInfo+key), rec.Sealed)
	if err != nil {
		return nil, fmt.Errorf("open device grant: %w", err)
	}
	sess, err := s.sessions.Get(ctx, string(sid))
	if err != nil && !errors.Is(err, ErrNoSession) {
		return nil, fmt.Errorf("load device grant session: %w", err)
	}
	return sess, err
}

// grantByUserCode finds the pending grant a user code names, for the
// signed-in user sess. Unknown codes count against the user; a user with
// too many is refused (429) until the window ends, even with a right code.
func (s *Service) grantByUserCode(ctx context.Context, sess *Session, input string) (*deviceGrant, string, error) {
	failKey := hashKey("ztna-grant-fail\x00" + sess.Identity.Subject)
	var f codeFailures
	if b, err := s.st.Get(ctx, bucketCLIGrantFail, failKey); err == nil {
		_ = json.Unmarshal(b, &f)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, "", fmt.Errorf("read code failures: %w", err)
	}
	now := s.opts.Now()
	if !now.Before(f.Until) {
		f = codeFailures{Until: now.Add(codeFailureWindow)}
	}
	if f.N >= maxCodeFailures {
		he := httperr.New(http.StatusTooManyRequests, "too_many_codes", "Too many wrong codes were entered. Try again later.")
		he.Hint = "Wait " + strconv.Itoa(int(f.Until.Sub(now).Minutes())+1) + " minutes, then enter the code your terminal shows."
		return nil, "", he
	}
	rec, codeKey, err := s.lookupGrant(ctx, input)
	if err == nil {
		return rec, codeKey, nil
	}
	var he *httperr.Error
	if !errors.As(err, &he) {
		return nil, "", err
	}
	// Get and Put, not an atomic count: concurrent guesses may each be
	// counted once less, which a window of maxCodeFailures tolerates.
	f.N++
	b, _ := json.Marshal(f)
	if err := s.st.Put(ctx, bucketCLIGrantFail, failKey, b, max(f.Until.Sub(now), time.Second)); err != nil {
		return nil, "", fmt.Errorf("store code failures: %w", err)
	}
	if f.N >= maxCodeFailures {
		s.logger.Warn("cli device grant: user locked out after wrong codes", "user", sess.Identity.Subject, "session", sess.Ref(), "failures", f.N)
	} else {
		s.logger.Info("cli device grant: wrong code", "user", sess.Identity.Subject, "session", sess.Ref(), "failures", f.N)
	}
	return nil, "", he
}

// lookupGrant returns the pending, unexpired grant under the user code
// input and the code's store key; any other outcome is a 400.
func (s *Service) lookupGrant(ctx context.Context, input string) (*deviceGrant, string, error) {
	c, ok := usercode.Normalize(input)
	if !ok {
		return nil, "", badGrantCode(errors.New("malformed user code"))
	}
	codeKey := hashKey(c)
	key, err := s.st.Get(ctx, bucketCLIGrantCode, codeKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", badGrantCode(errors.New("unknown user code"))
	}
	if err != nil {
		return nil, "", fmt.Errorf("look up device grant code: %w", err)
	}
	rec, err := s.loadGrant(ctx, string(key))
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", badGrantCode(errors.New("user code without a grant"))
	}
	if err != nil {
		return nil, "", err
	}
	if rec.State != grantPending || !s.opts.Now().Before(rec.Expires) {
		return nil, "", badGrantCode(errors.New("grant decided or expired"))
	}
	return rec, codeKey, nil
}

// takeGrant consumes the user code under codeKey (a grant is decided
// once) and returns its grant, which must still be pending and unexpired.
func (s *Service) takeGrant(ctx context.Context, codeKey string) (string, *deviceGrant, error) {
	kb, err := s.st.Take(ctx, bucketCLIGrantCode, codeKey)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil, badGrantCode(errors.New("user code already decided or expired"))
	}
	if err != nil {
		return "", nil, fmt.Errorf("take device grant code: %w", err)
	}
	key := string(kb)
	rec, err := s.loadGrant(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil, badGrantCode(errors.New("user code without a grant"))
	}
	if err != nil {
		return "", nil, err
	}
	if rec.State != grantPending || !s.opts.Now().Before(rec.Expires) {
		return "", nil, badGrantCode(errors.New("grant decided or expired"))
	}
	return key, rec, nil
}

func (s *Service) loadGrant(ctx context.Context, key string) (*deviceGrant, error) {
	b, err := s.st.Get(ctx, bucketCLIGrant, key)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("load device grant: %w", err)
	}
	var rec deviceGrant
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("decode device grant: %w", err)
	}
	return &rec, nil
}

// putGrant stores a decided grant. Only the holder of the taken user code
// writes a grant after it is created, so this cannot undo another decision.
func (s *Service) putGrant(ctx context.Context, key string, rec *deviceGrant) error {
	b, _ := json.Marshal(rec)
	ttl := rec.Expires.Add(deviceGrantGrace).Sub(s.opts.Now())
	if ttl <= 0 {
		return badGrantCode(errors.New("grant expired"))
	}
	if err := s.st.Put(ctx, bucketCLIGrant, key, b, ttl); err != nil {
		return fmt.Errorf("store device grant decision: %w", err)
	}
	return nil
}

func badGrantCode(cause error) error {
	he := httperr.BadRequest("This code is not valid, was already used or has expired.", cause)
	he.Hint = "Check the code your terminal shows, or run 'ztna tunnel login --device' again for a new one."
	return he
}

// renderGrant shows the code entry form (rec nil) or the grant to decide.
func (s *Service) renderGrant(w http.ResponseWriter, sess *Session, userCode string, rec *deviceGrant) {
	user := sess.Identity.Email
	if user == "" {
		user = sess.Identity.Subject
	}
	var client, host string
	var requested time.Time
	if rec != nil {
		client, host, requested = rec.Client, rec.Host, rec.Created
	}
	// Approve redirects to the IdP: the form-action policy must allow it.
	origins := []string{s.opts.AuthOrigin}
	if u, err := url.Parse(s.rp.oauth.Endpoint.AuthURL); err == nil && u.Host != "" {
		origins = append(origins, u.Scheme+"://"+u.Host)
	}
	s.opts.Pages.CLIDeviceGrant(w, user, CSRFToken(sess), userCode, client, host, requested, origins...)
}

func (s *Service) renderMessage(w http.ResponseWriter, status int, title, msg string) {
	s.opts.Pages.Message(w, status, title, msg)
}

// hpkeSuite seals a grant's session ID: DHKEM(X25519), HKDF-SHA256,
// AES-256-GCM (RFC 9180).
var hpkeSuite = struct {
	kem  hpke.KEM
	kdf  hpke.KDF
	aead hpke.AEAD
}{hpke.DHKEM(ecdh.X25519()), hpke.HKDFSHA256(), hpke.AES256GCM()}

// grantKeyPair derives the grant's HPKE key pair from its device code:
// the store keeps only the public key, and only the CLI can open what is
// sealed to it.
func grantKeyPair(deviceCode string) (hpke.PrivateKey, error) {
	return hpkeSuite.kem.DeriveKeyPair([]byte(deviceCodeSealInfo + deviceCode))
}

// validGrantClient accepts 1–64 printable ASCII bytes starting "ztna-cli/".
func validGrantClient(s string) bool {
	if len(s) > maxGrantClientLen || !strings.HasPrefix(s, "ztna-cli/") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// validGrantLabel accepts printable UTF-8 of at most max bytes (empty too).
func validGrantLabel(s string, max int) bool {
	if len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}
