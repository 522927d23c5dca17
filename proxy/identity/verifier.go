package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

const (
	// maxJWKSBytes bounds a JWKS response body.
	maxJWKSBytes = 1 << 20
	// refetchInterval is the least time between two JWKS fetches once keys
	// have been loaded: a token with an unknown kid costs the edge at most
	// one request per interval per app, however many such tokens arrive.
	refetchInterval = 30 * time.Second
	// initialRetryInterval applies while no key set has ever been loaded, so
	// an app started while the edge is briefly unreachable recovers quickly
	// without hammering it.
	initialRetryInterval = time.Second
	// keysMaxAge is how long fetched keys are used before a refresh is
	// attempted, so a key the edge withdraws stops being accepted within
	// this time even if no token with a new kid ever arrives.
	keysMaxAge = time.Hour
	// defaultFetchTimeout is the HTTP client timeout when none is given.
	defaultFetchTimeout = 10 * time.Second
)

// VerifierConfig configures a Verifier. Issuer and Audience are required,
// and exactly one of JWKSURL and Keys.
type VerifierConfig struct {
	// Issuer is the expected iss: the edge's issuer URL.
	Issuer string
	// Audience is this app's name, the expected aud.
	Audience string
	// JWKSURL is where the edge publishes its keys, e.g.
	// https://auth.corp.example/.well-known/ztna/jwks.json. It must be https,
	// or http to a loopback host (127.0.0.0/8, ::1, localhost).
	JWKSURL string
	// Keys is a static JWKS document, used instead of JWKSURL (tests,
	// air-gapped apps). It is never refreshed.
	Keys []byte
	// HTTPClient fetches the JWKS. Nil means a client with a 10 s timeout
	// that does not follow redirects.
	HTTPClient *http.Client
	// Leeway is the tolerated clock skew for exp, nbf and iat. Zero means
	// DefaultLeeway (30 s).
	Leeway time.Duration
	// MaxTokenBytes is the longest token accepted; longer input is rejected
	// before any parsing. Zero means DefaultMaxTokenBytes (8192).
	MaxTokenBytes int
	// Logger receives one line per rejected request in Middleware (the
	// reason, never the token) and JWKS refresh failures. Nil discards.
	Logger *slog.Logger
}

// Verifier checks assertions for one app (audience). It is safe for
// concurrent use and starts no goroutines.
type Verifier struct {
	issuer   string
	audience string
	jwksURL  string
	client   *http.Client
	leeway   time.Duration
	maxBytes int
	log      *slog.Logger
	now      func() time.Time // replaced in tests

	keys atomic.Pointer[keyCache]
	// fetchSlot is a one-token semaphore: whoever holds it may fetch the
	// JWKS, so concurrent requests with the same unknown kid cause one
	// fetch. Unlike a mutex, waiting for it honours the request context.
	fetchSlot   chan struct{}
	lastAttempt time.Time // guarded by fetchSlot
}

type keyCache struct {
	keys    map[string]*ecdsa.PublicKey
	fetched time.Time // zero: never loaded (or static keys)
}

// NewVerifier checks cfg and returns a Verifier. With JWKSURL, keys are
// fetched on first use, not here, so an app can start before the edge.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	switch {
	case cfg.Issuer == "":
		return nil, errors.New("identity: verifier: Issuer is required")
	case cfg.Audience == "":
		return nil, errors.New("identity: verifier: Audience is required")
	case cfg.JWKSURL == "" && len(cfg.Keys) == 0:
		return nil, errors.New("identity: verifier: set JWKSURL or Keys")
	case cfg.JWKSURL != "" && len(cfg.Keys) != 0:
		return nil, errors.New("identity: verifier: set JWKSURL or Keys, not both")
	case cfg.Leeway < 0:
		return nil, errors.New("identity: verifier: negative Leeway")
	case cfg.MaxTokenBytes < 0:
		return nil, errors.New("identity: verifier: negative MaxTokenBytes")
	}
	v := &Verifier{
		issuer:    cfg.Issuer,
		audience:  cfg.Audience,
		jwksURL:   cfg.JWKSURL,
		client:    cfg.HTTPClient,
		leeway:    cfg.Leeway,
		maxBytes:  cfg.MaxTokenBytes,
		log:       cfg.Logger,
		now:       time.Now,
		fetchSlot: make(chan struct{}, 1),
	}
	if v.leeway == 0 {
		v.leeway = DefaultLeeway
	}
	if v.maxBytes == 0 {
		v.maxBytes = DefaultMaxTokenBytes
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.client == nil {
		v.client = &http.Client{
			Timeout: defaultFetchTimeout,
			// A redirect could take the fetch to another host or from
			// https to http; the edge serves its JWKS directly.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if cfg.JWKSURL != "" {
		if err := checkJWKSURL(cfg.JWKSURL); err != nil {
			return nil, fmt.Errorf("identity: verifier: JWKSURL: %w", err)
		}
		v.keys.Store(&keyCache{})
	} else {
		keys, err := parseJWKS(cfg.Keys)
		if err != nil {
			return nil, fmt.Errorf("identity: verifier: Keys: %w", err)
		}
		v.keys.Store(&keyCache{keys: keys})
	}
	return v, nil
}

// checkJWKSURL insists on TLS unless the keys come from this host: keys
// fetched in clear text from the network could be replaced in transit.
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Host == "" {
		return errors.New("no host")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		h := u.Hostname()
		if h == "localhost" || strings.HasSuffix(h, ".localhost") {
			return nil
		}
		if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
			return nil
		}
		return errors.New("http is allowed only for loopback hosts; use https")
	default:
		return fmt.Errorf("scheme %q not supported", u.Scheme)
	}
}

// tokenHeader is the JOSE header. Members this package never sets are
// decoded only to reject tokens that carry them.
type tokenHeader struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Typ  string          `json:"typ"`
	Crit json.RawMessage `json:"crit"`
	Jku  json.RawMessage `json:"jku"`
	Jwk  json.RawMessage `json:"jwk"`
	X5u  json.RawMessage `json:"x5u"`
	X5c  json.RawMessage `json:"x5c"`
}

// Verify checks token and returns its claims. The error wraps one of the
// package's Err* values. It fetches the JWKS (bounded by ctx) only when the
// token's kid is unknown or the cached keys are over an hour old.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	if len(token) > v.maxBytes {
		return nil, fmt.Errorf("%w: %d bytes (limit %d)", ErrTooLarge, len(token), v.maxBytes)
	}
	if token == "" {
		return nil, fmt.Errorf("%w: empty", ErrMalformed)
	}
	// Only the base64url alphabet and dots: base64 decoders skip CR/LF,
	// which would let a token be altered without changing what it decodes to.
	for i := 0; i < len(token); i++ {
		if !isTokenByte(token[i]) {
			return nil, fmt.Errorf("%w: invalid character at offset %d", ErrMalformed, i)
		}
	}
	hdrB64, rest, ok := strings.Cut(token, ".")
	if !ok {
		return nil, fmt.Errorf("%w: not a compact JWS", ErrMalformed)
	}
	payloadB64, sigB64, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(sigB64, ".") {
		return nil, fmt.Errorf("%w: not a compact JWS (want 3 parts)", ErrMalformed)
	}
	b64 := base64.RawURLEncoding.Strict()
	hdrJSON, err := b64.DecodeString(hdrB64)
	if err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	var hdr tokenHeader
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	// The allow-list: exactly ES256, compared before anything else in the
	// header is trusted.
	if hdr.Alg != "ES256" {
		return nil, fmt.Errorf("%w: %q", ErrAlgorithm, truncate(hdr.Alg))
	}
	switch {
	case hdr.Typ != "JWT":
		return nil, fmt.Errorf("%w: typ %q, want JWT", ErrMalformed, truncate(hdr.Typ))
	case hdr.Kid == "":
		return nil, fmt.Errorf("%w: no kid", ErrMalformed)
	case hdr.Crit != nil:
		return nil, fmt.Errorf("%w: crit header not supported", ErrMalformed)
	case hdr.Jku != nil || hdr.Jwk != nil || hdr.X5u != nil || hdr.X5c != nil:
		return nil, fmt.Errorf("%w: keys named in the token are never used", ErrMalformed)
	}
	sig, err := b64.DecodeString(sigB64)
	if err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrMalformed, err)
	}
	if len(sig) != sigLen {
		return nil, fmt.Errorf("%w: signature is %d bytes, want %d", ErrSignature, len(sig), sigLen)
	}
	pub, err := v.key(ctx, hdr.Kid)
	if err != nil {
		return nil, err
	}
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	if s.Cmp(p256HalfOrder) > 0 {
		return nil, fmt.Errorf("%w: high-S signature", ErrSignature)
	}
	digest := sha256.Sum256([]byte(token[:len(hdrB64)+1+len(payloadB64)]))
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return nil, fmt.Errorf("%w: kid %q", ErrSignature, hdr.Kid)
	}

	payload, err := b64.DecodeString(payloadB64)
	if err != nil {
		return nil, fmt.Errorf("%w: claims: %w", ErrMalformed, err)
	}
	c := new(Claims)
	if err := json.Unmarshal(payload, c); err != nil {
		return nil, fmt.Errorf("%w: claims: %w", ErrMalformed, err)
	}
	if err := v.checkClaims(c); err != nil {
		return nil, err
	}
	return c, nil
}

func (v *Verifier) checkClaims(c *Claims) error {
	if c.Issuer != v.issuer {
		return fmt.Errorf("%w: %q, want %q", ErrIssuer, truncate(c.Issuer), v.issuer)
	}
	if c.Audience != v.audience {
		return fmt.Errorf("%w: %q, want %q", ErrAudience, truncate(c.Audience), v.audience)
	}
	// Whole seconds, compared without adding to attacker-chosen values so
	// extreme numbers cannot overflow.
	now := v.now().Unix()
	leeway := int64((v.leeway + time.Second - 1) / time.Second)
	if c.Expiry < now-leeway {
		return fmt.Errorf("%w: exp %d, now %d", ErrExpired, c.Expiry, now)
	}
	if c.NotBefore > now+leeway {
		return fmt.Errorf("%w: nbf %d, now %d", ErrNotYetValid, c.NotBefore, now)
	}
	if c.IssuedAt > now+leeway {
		return fmt.Errorf("%w: iat %d is in the future, now %d", ErrNotYetValid, c.IssuedAt, now)
	}
	if c.Subject == "" {
		return fmt.Errorf("%w: sub", ErrMissingClaim)
	}
	return nil
}

// key returns the public key for kid, refetching the JWKS (rate-limited)
// when kid is unknown or the cached keys are old.
func (v *Verifier) key(ctx context.Context, kid string) (*ecdsa.PublicKey, error) {
	kc := v.keys.Load()
	pub, ok := kc.keys[kid]
	if ok {
		if v.jwksURL != "" && v.now().Sub(kc.fetched) > keysMaxAge {
			pub, ok = v.refreshStale(ctx, kid, pub)
			if !ok {
				return nil, fmt.Errorf("%w: kid %q was withdrawn", ErrUnknownKey, truncate(kid))
			}
		}
		return pub, nil
	}
	if v.jwksURL == "" {
		return nil, fmt.Errorf("%w: kid %q", ErrUnknownKey, truncate(kid))
	}

	select {
	case v.fetchSlot <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: kid %q: %w: %w", ErrUnknownKey, truncate(kid), ErrKeyFetch, ctx.Err())
	}
	defer func() { <-v.fetchSlot }()

	// Another request may have fetched while this one waited.
	kc = v.keys.Load()
	if pub, ok := kc.keys[kid]; ok {
		return pub, nil
	}
	now := v.now()
	interval := refetchInterval
	if kc.fetched.IsZero() {
		interval = initialRetryInterval
	}
	if !v.lastAttempt.IsZero() && now.Sub(v.lastAttempt) < interval {
		return nil, fmt.Errorf("%w: kid %q (JWKS refetch rate-limited)", ErrUnknownKey, truncate(kid))
	}
	v.lastAttempt = now
	if err := v.refresh(ctx); err != nil {
		return nil, fmt.Errorf("%w: kid %q: %w", ErrUnknownKey, truncate(kid), err)
	}
	if pub, ok := v.keys.Load().keys[kid]; ok {
		return pub, nil
	}
	return nil, fmt.Errorf("%w: kid %q", ErrUnknownKey, truncate(kid))
}

// refreshStale refreshes old keys if no other fetch is under way and the
// rate limit allows. On a failed fetch the old keys stay in use: an
// unreachable edge must not lock users out of every app.
func (v *Verifier) refreshStale(ctx context.Context, kid string, pub *ecdsa.PublicKey) (*ecdsa.PublicKey, bool) {
	select {
	case v.fetchSlot <- struct{}{}:
	default:
		return pub, true // someone else is fetching
	}
	defer func() { <-v.fetchSlot }()
	now := v.now()
	if now.Sub(v.keys.Load().fetched) <= keysMaxAge || now.Sub(v.lastAttempt) < refetchInterval {
		return pub, true
	}
	v.lastAttempt = now
	if err := v.refresh(ctx); err != nil {
		v.log.Warn("identity: refresh signing keys failed; using cached keys", "url", v.jwksURL, "err", err)
		return pub, true
	}
	pub, ok := v.keys.Load().keys[kid]
	return pub, ok
}

// refresh fetches the JWKS and replaces the cached keys. The caller holds
// fetchSlot.
func (v *Verifier) refresh(ctx context.Context) error {
	keys, err := v.fetch(ctx)
	if err != nil {
		return err
	}
	v.keys.Store(&keyCache{keys: keys, fetched: v.now()})
	return nil
}

func (v *Verifier) fetch(ctx context.Context) (map[string]*ecdsa.PublicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.jwksURL, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyFetch, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyFetch, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: %s: status %s", ErrKeyFetch, v.jwksURL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrKeyFetch, v.jwksURL, err)
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("%w: %s: body larger than %d bytes", ErrKeyFetch, v.jwksURL, maxJWKSBytes)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrKeyFetch, v.jwksURL, err)
	}
	return keys, nil
}

// parseJWKS returns the ES256 keys of a JWKS document by kid. Keys of other
// types, curves, algorithms or uses are skipped, so the edge may publish
// other keys later; a malformed P-256 key or a duplicate kid fails the whole
// document, since that is a broken or tampered source.
func parseJWKS(doc []byte) (map[string]*ecdsa.PublicKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		return nil, fmt.Errorf("parse JWKS: %w", err)
	}
	b64 := base64.RawURLEncoding.Strict()
	keys := make(map[string]*ecdsa.PublicKey, len(set.Keys))
	for i, k := range set.Keys {
		if k.Kty != "EC" || k.Crv != "P-256" || (k.Alg != "" && k.Alg != "ES256") || (k.Use != "" && k.Use != "sig") {
			continue
		}
		if k.Kid == "" {
			return nil, fmt.Errorf("JWKS key %d: no kid", i)
		}
		x, errX := b64.DecodeString(k.X)
		y, errY := b64.DecodeString(k.Y)
		if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
			return nil, fmt.Errorf("JWKS key %q: bad coordinates", k.Kid)
		}
		point := make([]byte, 0, 65)
		point = append(point, 4)
		point = append(point, x...)
		point = append(point, y...)
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
		if err != nil {
			return nil, fmt.Errorf("JWKS key %q: %w", k.Kid, err)
		}
		if _, dup := keys[k.Kid]; dup {
			return nil, fmt.Errorf("JWKS: duplicate kid %q", k.Kid)
		}
		keys[k.Kid] = pub
	}
	if len(keys) == 0 {
		return nil, errors.New("JWKS has no ES256 keys")
	}
	return keys, nil
}

func isTokenByte(b byte) bool {
	return 'A' <= b && b <= 'Z' || 'a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '-' || b == '_' || b == '.'
}

// truncate keeps attacker-chosen strings in error messages short.
func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
