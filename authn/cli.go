package authn

// Native-app login (RFC 8252): how the `ztna tunnel` CLI gets a bearer
// token through the user's browser. Both ends of the protocol live here so
// its wire format is written once:
//
//   - the edge side, on the auth host: GET PathCLILogin validates the CLI's
//     loopback redirect URI, PKCE challenge and state, then runs the normal
//     OIDC login; the OIDC callback creates a normal server-side session and
//     redirects the browser to the loopback URI with a one-time code (the
//     browser never sees the session ID, and no session cookie is set);
//     POST PathCLIToken trades the code and the PKCE verifier for the
//     session ID.
//   - the client side (CLILogin): the loopback listener, the browser, the
//     code exchange, and the session file the CLI keeps.
//
// Where no browser can be opened, the CLI uses the device authorization
// grant instead (edge side in device_grant.go, client side CLIDeviceLogin
// here), which answers at the same token endpoint. POST PathCLILogout ends
// the CLI's session at the edge, by its bearer alone (RevokeCLISession).
//
// The loopback login keeps the browser binding every login has (the bind
// cookie checked at the callback). PKCE and the CLI's state already keep a
// code from being injected into this CLI (RFC 8252 §8.9); the binding in
// addition keeps an authorization URL started elsewhere — by another user's
// CLI on a shared machine, whose loopback port is theirs — from being
// completed in this user's browser, which would create this user's session
// and send its code to that port.

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/ztna-dev/ztna/internal/httperr"
	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/usercode"
)

// Paths of the native-app login on the auth host.
const (
	PathCLILogin  = "/.ztna/cli/login"
	PathCLIToken  = "/.ztna/cli/token"  // the code exchange and device-code polls
	PathCLILogout = "/.ztna/cli/logout" // POST with Authorization: Bearer SESSION_ID
)

const (
	bucketCLICode    = "cli_code"
	cliCodeTTL       = time.Minute
	maxCLITokenForm  = 4 << 10
	maxCLIRedirect   = 64 // "http://[::1]:65535/callback" is 27
	cliCallbackPath  = "/callback"
	maxCLIStateLen   = 256
	minPKCELen       = 43
	maxPKCELen       = 128
	maxCLITokenReply = 64 << 10
	// CLILoginTimeout bounds how long the CLI waits for the browser.
	CLILoginTimeout = 5 * time.Minute
)

// cliRequest is what a CLI login carries through the OIDC login, in the
// login state.
type cliRequest struct {
	RedirectURI string `json:"ru"`
	Challenge   string `json:"cc"`
	State       string `json:"st"`
}

// cliCodeRecord is what a one-time CLI code redeems. As with the browser
// handoff, the session ID is sealed under the code, which is stored only as
// a hash: the store never holds a usable bearer.
type cliCodeRecord struct {
	SealedID    []byte    `json:"sid"`
	Challenge   string    `json:"cc"`
	RedirectURI string    `json:"ru"`
	Expires     time.Time `json:"exp"` // also the store TTL; checked against the service clock
}

// CLIToken is the answer of PathCLIToken: the bearer for the tunnel (an
// edge session ID) and who it belongs to.
type CLIToken struct {
	Token     string    `json:"token"`
	User      string    `json:"user"`
	Email     string    `json:"email,omitempty"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ValidateLoopbackRedirect accepts exactly a loopback redirect URI of a
// native app (RFC 8252 §7.3): http://127.0.0.1:PORT/callback,
// http://[::1]:PORT/callback or http://localhost:PORT/callback, with an
// explicit port and nothing else — no user info, query or fragment, no
// alternative spellings. Anything else could send the code off the machine.
func ValidateLoopbackRedirect(raw string) (string, error) {
	if len(raw) > maxCLIRedirect {
		return "", errors.New("redirect_uri too long")
	}
	rest, ok := strings.CutPrefix(raw, "http://")
	if !ok {
		return "", errors.New("redirect_uri must start with http://")
	}
	hostport, ok := strings.CutSuffix(rest, cliCallbackPath)
	if !ok {
		return "", errors.New("redirect_uri path must be " + cliCallbackPath + " with no query or fragment")
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", fmt.Errorf("redirect_uri needs host:port: %w", err)
	}
	switch {
	case host == "127.0.0.1" || host == "localhost":
		if hostport != host+":"+port {
			return "", errors.New("redirect_uri host is not canonical")
		}
	case host == "::1":
		if hostport != "[::1]:"+port {
			return "", errors.New("redirect_uri host is not canonical")
		}
	default:
		return "", fmt.Errorf("redirect_uri host %q is not loopback", host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return "", fmt.Errorf("redirect_uri port %q is not a port number", port)
	}
	return raw, nil
}

// validPKCE reports whether s is 43–128 characters of the base64url
// alphabet (a S256 challenge) or, with unreserved, of RFC 7636's verifier
// alphabet, which adds '.' and '~'.
func validPKCE(s string, unreserved bool) bool {
	if len(s) < minPKCELen || len(s) > maxPKCELen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' ||
			unreserved && (c == '.' || c == '~')) {
			return false
		}
	}
	return true
}

// validCLIState reports whether s is 1–256 printable ASCII characters.
func validCLIState(s string) bool {
	if len(s) == 0 || len(s) > maxCLIStateLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// pkceS256 is base64url(sha256(verifier)).
func pkceS256(verifier string) string {
	h := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// cliLogin starts a native-app login. Bad input is a 400 page: the
// redirect URI is not trusted until it is validated, so it is never
// redirected to.
func (s *Service) cliLogin(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "Use GET to start a sign-in.")
	}
	const retry = "Run 'ztna tunnel login' again."
	bad := func(msg string, cause error) error {
		e := httperr.BadRequest(msg, cause)
		e.Hint = retry
		return e
	}
	q := r.URL.Query()
	redirectURI, err := ValidateLoopbackRedirect(q.Get("redirect_uri"))
	if err != nil {
		return bad("This sign-in link does not return to a program on this computer.", err)
	}
	if q.Get("code_challenge_method") != "S256" {
		return bad("This sign-in link is not valid.", errors.New("code_challenge_method is not S256"))
	}
	challenge := q.Get("code_challenge")
	if !validPKCE(challenge, false) {
		return bad("This sign-in link is not valid.", errors.New("malformed code_challenge"))
	}
	cliState := q.Get("state")
	if !validCLIState(cliState) {
		return bad("This sign-in link is not valid.", errors.New("malformed state"))
	}
	// Always through the IdP, even when this browser is signed in here: the
	// CLI gets a session of its own, with its own IdP tokens.
	return s.startOIDC(w, r, loginState{CLI: &cliRequest{RedirectURI: redirectURI, Challenge: challenge, State: cliState}})
}

// startOIDC binds a login to this browser, stores its state (one-time,
// short-lived, under the state's hash) and sends the browser to the IdP.
func (s *Service) startOIDC(w http.ResponseWriter, r *http.Request, ls loginState) error {
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
	ls.Verifier, ls.Nonce, ls.BindHash, ls.Created = verifier, nonce, hashKey(bind), s.opts.Now()
	b, _ := json.Marshal(ls)
	if err := s.st.Put(r.Context(), bucketLoginState, hashKey(state), b, loginStateTTL); err != nil {
		return fmt.Errorf("store login state: %w", err)
	}
	http.Redirect(w, r, s.rp.AuthCodeURL(state, nonce, verifier), http.StatusFound)
	return nil
}

// finishCLILogin ends a native-app login at the OIDC callback: it leaves a
// one-time code for sess, bound to the CLI's challenge and redirect URI,
// and sends the browser to the CLI's loopback listener with it.
func (s *Service) finishCLILogin(w http.ResponseWriter, r *http.Request, sess *Session, cl *cliRequest) error {
	// Validated at the start; checked again because the record came from
	// the store.
	redirectURI, err := ValidateLoopbackRedirect(cl.RedirectURI)
	if err != nil {
		return fmt.Errorf("stored CLI redirect: %w", err)
	}
	code := randomToken()
	sealed, err := sealWithCode(code, sess.ID)
	if err != nil {
		return fmt.Errorf("seal CLI code: %w", err)
	}
	rec, _ := json.Marshal(cliCodeRecord{SealedID: sealed, Challenge: cl.Challenge, RedirectURI: redirectURI, Expires: s.opts.Now().Add(cliCodeTTL)})
	if err := s.st.Put(r.Context(), bucketCLICode, hashKey(code), rec, cliCodeTTL); err != nil {
		return fmt.Errorf("store CLI code: %w", err)
	}
	s.logger.Info("cli login", "user", sess.Identity.Subject, "session", sess.Ref())
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, redirectURI+"?code="+url.QueryEscape(code)+"&state="+url.QueryEscape(cl.State), http.StatusSeeOther)
	return nil
}

// cliToken redeems a one-time CLI code. Every refusal is the same
// invalid_grant, so a caller learns nothing about which check failed; the
// code is consumed whatever the outcome.
func (s *Service) cliToken(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "The token endpoint takes POST.")
	}
	w.Header().Set("Cache-Control", "no-store")
	refuse := func(why string) error {
		s.logger.Info("cli token refused", "reason", why)
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant"})
		return nil
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxCLITokenForm)
	if err := r.ParseForm(); err != nil {
		return refuse("unreadable form")
	}
	switch r.PostForm.Get("grant_type") {
	case "", "authorization_code":
	case DeviceCodeGrantType:
		return s.deviceToken(w, r)
	default:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type"})
		return nil
	}
	code := r.PostForm.Get("code")
	if len(code) != sessionIDLen {
		return refuse("malformed code")
	}
	b, err := s.st.Take(r.Context(), bucketCLICode, hashKey(code))
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return refuse("unknown, used or expired code")
		}
		return fmt.Errorf("take CLI code: %w", err)
	}
	var rec cliCodeRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("decode CLI code: %w", err)
	}
	if !s.opts.Now().Before(rec.Expires) {
		return refuse("expired code")
	}
	if !secureEqual(r.PostForm.Get("redirect_uri"), rec.RedirectURI) {
		return refuse("redirect_uri mismatch")
	}
	verifier := r.PostForm.Get("code_verifier")
	if !validPKCE(verifier, true) || !secureEqual(pkceS256(verifier), rec.Challenge) {
		return refuse("code_verifier mismatch")
	}
	sessionID, err := openWithCode(code, rec.SealedID)
	if err != nil {
		return fmt.Errorf("open CLI code: %w", err)
	}
	sess, err := s.sessions.Get(r.Context(), sessionID)
	if err != nil {
		if errors.Is(err, ErrNoSession) {
			return refuse("session ended")
		}
		return fmt.Errorf("load CLI session: %w", err)
	}
	writeJSON(w, http.StatusOK, CLIToken{Token: sess.ID, User: sess.Identity.Subject, Email: sess.Identity.Email, ExpiresAt: sess.ExpiresAt.UTC()})
	return nil
}

// cliLogout ends the session whose ID the bearer carries, with its live
// connections (the revoke hooks). Only the Authorization header counts —
// never a cookie — so a page elsewhere cannot make a browser do it. A
// session already gone is not an error: the answer is 204 either way.
func (s *Service) cliLogout(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "Sign out with POST.")
	}
	w.Header().Set("Cache-Control", "no-store")
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if _, valid := ParseSessionID(token); !ok || !valid {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ztna", error="invalid_token"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token"})
		return nil
	}
	sess, err := s.sessions.Get(r.Context(), token)
	switch {
	case errors.Is(err, ErrNoSession):
		w.WriteHeader(http.StatusNoContent)
		return nil
	case err != nil:
		return fmt.Errorf("cli logout: %w", err)
	}
	if err := s.sessions.Revoke(r.Context(), sess.Key); err != nil {
		return fmt.Errorf("cli logout: %w", err)
	}
	s.logger.Info("cli logout", "user", sess.Identity.Subject, "session", sess.Ref())
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// CLILogin is the client side of a native-app login: what `ztna tunnel
// login` runs.
type CLILogin struct {
	// Edge is the auth origin, https://AUTH_HOST[:PORT].
	Edge string
	// HTTPClient posts the code exchange; nil → http.DefaultClient. It
	// must trust the edge's certificate.
	HTTPClient *http.Client
	// OpenBrowser shows the login URL to the user (opens a browser, or
	// prints it). An error aborts the login.
	OpenBrowser func(loginURL string) error
	// Timeout bounds the wait for the browser; 0 → CLILoginTimeout.
	Timeout time.Duration
}

// Run performs the login: a loopback listener on 127.0.0.1:0, PKCE S256
// and a random state, the browser, the callback, and the code exchange.
func (c *CLILogin) Run(ctx context.Context) (*CLIToken, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = CLILoginTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen on loopback: %w", err)
	}
	redirectURI := "http://" + ln.Addr().String() + cliCallbackPath
	verifier, state := oauth2.GenerateVerifier(), randomToken()
	got := make(chan callbackResult, 1)
	var once sync.Once
	srv := &http.Server{
		Handler:           &cliCallback{state: state, deliver: func(r callbackResult) { once.Do(func() { got <- r }) }},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = srv.Serve(ln)
	}()
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx) // lets the "close this tab" page finish
		wg.Wait()
	}()

	loginURL := c.Edge + PathCLILogin + "?" + url.Values{
		"redirect_uri":          {redirectURI},
		"state":                 {state},
		"code_challenge":        {oauth2.S256ChallengeFromVerifier(verifier)},
		"code_challenge_method": {"S256"},
	}.Encode()
	if c.OpenBrowser != nil {
		if err := c.OpenBrowser(loginURL); err != nil {
			return nil, err
		}
	}
	var res callbackResult
	select {
	case res = <-got:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the browser: %w", ctx.Err())
	}
	if res.err != nil {
		return nil, res.err
	}
	return c.exchange(ctx, res.code, verifier, redirectURI)
}

func (c *CLILogin) exchange(ctx context.Context, code, verifier, redirectURI string) (*CLIToken, error) {
	form := url.Values{"code": {code}, "code_verifier": {verifier}, "redirect_uri": {redirectURI}}
	status, body, err := postCLIForm(ctx, c.HTTPClient, c.Edge+PathCLIToken, form)
	if err != nil {
		return nil, fmt.Errorf("token request: %w", err)
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("the edge refused the sign-in code: %s", oauthError(status, body))
	}
	return parseCLIToken(body)
}

// postCLIForm posts form to u and returns the status and the (bounded)
// body, within 30 seconds.
func postCLIForm(ctx context.Context, hc *http.Client, u string, form url.Values) (int, []byte, error) {
	return postCLI(ctx, hc, u, form, "")
}

// postCLI posts form (nil: no body) to u, with bearer as the
// Authorization if set, and returns the status and the (bounded) body,
// within 30 seconds.
func postCLI(ctx context.Context, hc *http.Client, u string, form url.Values, bearer string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var reqBody io.Reader
	if form != nil {
		reqBody = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, reqBody)
	if err != nil {
		return 0, nil, err
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	req.Header.Set("Accept", "application/json")
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxCLITokenReply+1))
	if err != nil {
		return 0, nil, fmt.Errorf("read the answer: %w", err)
	}
	if len(body) > maxCLITokenReply {
		return 0, nil, errors.New("the answer is too large")
	}
	return resp.StatusCode, body, nil
}

// oauthError is the "error" of an OAuth-style JSON error body, or the
// HTTP status when there is none.
func oauthError(status int, body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	// RFC 6749's error codes are short printable ASCII: anything else (a
	// terminal escape, say) is not shown.
	if e.Error == "" || len(e.Error) > 64 || strings.IndexFunc(e.Error, func(r rune) bool { return r < 0x20 || r > 0x7e }) >= 0 {
		return "HTTP " + strconv.Itoa(status)
	}
	return e.Error
}

func parseCLIToken(body []byte) (*CLIToken, error) {
	var tok CLIToken
	if err := json.Unmarshal(body, &tok); err != nil {
		return nil, fmt.Errorf("token response: %w", err)
	}
	if _, ok := ParseSessionID(tok.Token); !ok || tok.User == "" {
		return nil, errors.New("token response without a valid token or user")
	}
	return &tok, nil
}

// Errors of CLIDeviceLogin.Run.
var (
	// ErrDeviceGrantDenied: the user pressed Deny in the browser.
	ErrDeviceGrantDenied = errors.New("the sign-in was denied in the browser")
	// ErrDeviceGrantExpired: nobody approved the code in time.
	ErrDeviceGrantExpired = errors.New("the code expired before it was approved; run the command again")
)

// DeviceGrantPrompt is what the user must do to approve a device grant.
type DeviceGrantPrompt struct {
	VerificationURI         string // where to go, in a browser on any device
	VerificationURIComplete string // the same with the code filled in
	UserCode                string // the code to confirm, XXXX-XXXX
	ExpiresIn               time.Duration
}

// CLIDeviceLogin is the client side of the device authorization grant: what
// `ztna tunnel login --device` runs where no browser can be opened here.
type CLIDeviceLogin struct {
	// Edge is the auth origin, https://AUTH_HOST[:PORT].
	Edge string
	// HTTPClient makes the requests; nil → http.DefaultClient. It must
	// trust the edge's certificate.
	HTTPClient *http.Client
	// Client names the program, "ztna-cli/VERSION", and Host this computer;
	// the approval page shows both.
	Client, Host string
	// Prompt shows the user where to approve and which code to confirm.
	// Polling starts when it returns.
	Prompt func(DeviceGrantPrompt)
}

// maxDevicePollFailures is how many polls in a row may fail in transit
// (network, 5xx) before Run gives up.
const maxDevicePollFailures = 5

// Run starts a grant, prompts, and polls at the edge's interval (longer
// after each slow_down) until the grant is approved, denied or expired, or
// ctx ends. The first poll is at once: the edge paces from it.
func (c *CLIDeviceLogin) Run(ctx context.Context) (*CLIToken, error) {
	form := url.Values{"client": {c.Client}}
	if c.Host != "" {
		form.Set("host", c.Host)
	}
	status, body, err := postCLIForm(ctx, c.HTTPClient, c.Edge+PathCLIDevice, form)
	if err != nil {
		return nil, fmt.Errorf("start the sign-in: %w", err)
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("the edge refused to start a sign-in: %s", oauthError(status, body))
	}
	var start DeviceGrantStart
	if err := json.Unmarshal(body, &start); err != nil {
		return nil, fmt.Errorf("start the sign-in: %w", err)
	}
	if _, ok := ParseSessionID(start.DeviceCode); !ok {
		return nil, errors.New("the edge answered without a valid device code")
	}
	if _, ok := usercode.Normalize(start.UserCode); !ok {
		return nil, errors.New("the edge answered without a valid user code")
	}
	// The user is sent there: it must be the edge itself.
	for _, u := range []string{start.VerificationURI, start.VerificationURIComplete} {
		if !strings.HasPrefix(u, c.Edge+"/") || len(u) > 512 || strings.ContainsAny(u, " \t\r\n") {
			return nil, fmt.Errorf("the edge sent a verification address off the edge: %.100q", u)
		}
	}
	expiresIn := time.Duration(start.ExpiresIn) * time.Second
	if expiresIn <= 0 || expiresIn > 30*time.Minute {
		expiresIn = DeviceGrantTTL
	}
	interval := time.Duration(start.Interval) * time.Second
	if interval <= 0 {
		interval = DeviceGrantInterval // RFC 8628 §3.2's default
	}
	interval = min(interval, maxDeviceInterval)
	ctx, cancel := context.WithTimeoutCause(ctx, expiresIn, ErrDeviceGrantExpired)
	defer cancel()
	if c.Prompt != nil {
		c.Prompt(DeviceGrantPrompt{VerificationURI: start.VerificationURI, VerificationURIComplete: start.VerificationURIComplete,
			UserCode: start.UserCode, ExpiresIn: expiresIn})
	}

	poll := url.Values{"grant_type": {DeviceCodeGrantType}, "device_code": {start.DeviceCode}}
	failures := 0
	for first := true; ; first = false {
		if !first {
			t := time.NewTimer(interval)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, context.Cause(ctx) // ErrDeviceGrantExpired, or why ctx ended
			case <-t.C:
			}
		}
		status, body, err := postCLIForm(ctx, c.HTTPClient, c.Edge+PathCLIToken, poll)
		if err == nil && status >= 500 {
			err = fmt.Errorf("HTTP %d", status)
		}
		if err != nil {
			if ctx.Err() != nil {
				continue // the wait above reports it
			}
			if failures++; failures >= maxDevicePollFailures {
				return nil, fmt.Errorf("polling the edge: %w", err)
			}
			continue
		}
		failures = 0
		if status == http.StatusOK {
			return parseCLIToken(body)
		}
		switch e := oauthError(status, body); e {
		case "authorization_pending":
		case "slow_down":
			interval = min(interval+deviceGrantSlowDown, maxDeviceInterval)
		case "access_denied":
			return nil, ErrDeviceGrantDenied
		case "expired_token":
			return nil, ErrDeviceGrantExpired
		default:
			return nil, fmt.Errorf("the edge refused the sign-in: %s", e)
		}
	}
}

// RevokeCLISession ends sess at its edge (POST PathCLILogout with the
// bearer). It returns nil only when the edge confirmed it (204).
func RevokeCLISession(ctx context.Context, hc *http.Client, sess *CLISession) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	status, _, err := postCLI(ctx, hc, sess.Edge+PathCLILogout, nil, sess.Token)
	if err != nil {
		return err
	}
	if status != http.StatusNoContent {
		return fmt.Errorf("the edge answered HTTP %d", status)
	}
	return nil
}

type callbackResult struct {
	code string
	err  error
}

// cliCallback is the loopback listener's handler. A request that does not
// carry this login's state is refused and does not end the wait: only the
// edge, through the user's browser, knows the state.
type cliCallback struct {
	state   string
	deliver func(callbackResult)
}

func (h *cliCallback) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'")
	w.Header().Set("Referrer-Policy", "no-referrer")
	if r.URL.Path != cliCallbackPath || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	if !secureEqual(q.Get("state"), h.state) {
		cliPage(w, http.StatusBadRequest, "This sign-in response is not for the running 'ztna tunnel login'.")
		return
	}
	if e := q.Get("error"); e != "" {
		cliPage(w, http.StatusOK, "Sign-in failed. You can close this tab and try again.")
		h.deliver(callbackResult{err: fmt.Errorf("sign-in failed: %.100s", e)})
		return
	}
	code := q.Get("code")
	if len(code) != sessionIDLen {
		cliPage(w, http.StatusBadRequest, "This sign-in response has no valid code.")
		h.deliver(callbackResult{err: errors.New("the sign-in response had no valid code")})
		return
	}
	cliPage(w, http.StatusOK, "You are signed in to ztna. You can close this tab.")
	h.deliver(callbackResult{code: code})
}

func cliPage(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "<!doctype html><meta charset=utf-8><title>ztna</title><p>%s</p>\n", html.EscapeString(msg))
}

// CLISession is what the CLI keeps after a login, in CLISessionFile.
type CLISession struct {
	Edge      string    `json:"edge"`
	Token     string    `json:"token"` // secret: the edge session ID
	User      string    `json:"user"`
	Email     string    `json:"email,omitempty"`
	ExpiresAt time.Time `json:"expires_at"`
}

// CLISessionFile is the session file's name in the CLI's state directory.
const CLISessionFile = "session.json"

const maxCLISessionFile = 64 << 10

// ErrNoCLISession means the state directory holds no session file.
var ErrNoCLISession = errors.New("not signed in: run 'ztna tunnel login'")

// SaveCLISession writes sess to dir/CLISessionFile, mode 0600 in a 0700
// directory, replacing any previous one atomically.
func SaveCLISession(dir string, sess *CLISession) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	b, err := json.MarshalIndent(sess, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".session-*.tmp") // created 0600
	if err != nil {
		return fmt.Errorf("write session: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename: nothing to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write session: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write session: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write session: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write session: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, CLISessionFile)); err != nil {
		return fmt.Errorf("write session: %w", err)
	}
	return nil
}

// LoadCLISession reads dir/CLISessionFile. A missing file is
// ErrNoCLISession; an expired session is an error that says to log in again.
func LoadCLISession(dir string, now time.Time) (*CLISession, error) {
	sess, err := ReadCLISession(dir)
	if err != nil {
		return nil, err
	}
	if sess.Expired(now) {
		return nil, fmt.Errorf("the session of %s expired at %s: run 'ztna tunnel login' again", sess.User, sess.ExpiresAt.Local().Format(time.RFC3339))
	}
	return sess, nil
}

// Expired reports whether the session had ended at now (the edge ended
// it then too).
func (s *CLISession) Expired(now time.Time) bool {
	return !s.ExpiresAt.IsZero() && !now.Before(s.ExpiresAt)
}

// ReadCLISession reads dir/CLISessionFile as LoadCLISession does, expired
// or not (to sign out).
func ReadCLISession(dir string) (*CLISession, error) {
	path := filepath.Join(dir, CLISessionFile)
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrNoCLISession
		}
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCLISessionFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > maxCLISessionFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxCLISessionFile)
	}
	var sess CLISession
	if err := json.Unmarshal(b, &sess); err != nil {
		return nil, fmt.Errorf("%s: %w; run 'ztna tunnel login' again", path, err)
	}
	if sess.Edge == "" || sess.Token == "" {
		return nil, fmt.Errorf("%s: no edge or token in it; run 'ztna tunnel login' again", path)
	}
	return &sess, nil
}
