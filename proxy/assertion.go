package proxy

import (
	"strings"
	"sync"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/proxy/identity"
)

// assertion is a signed identity for one (session, app), with the header
// values derived from it, ready to be attached to every request.
type assertion struct {
	sess    *authn.Session // the session version it was made from
	kid     string
	refresh time.Time // reissue after this
	token   []string
	user    []string
	email   []string
	groups  []string
}

type assertionKey struct{ session, app, device, posture string }

// maxAssertions bounds the cache; past it, an arbitrary entry is evicted
// (a miss costs one signature).
const maxAssertions = 200_000

// assertionCache signs once per (session, app) and reuses the result until
// shortly before it expires: an ES256 signature per request would cost more
// CPU than the rest of the proxy.
type assertionCache struct {
	mu sync.RWMutex
	m  map[assertionKey]*assertion
}

func newAssertionCache() *assertionCache {
	return &assertionCache{m: make(map[assertionKey]*assertion)}
}

// get returns a current assertion for sess and app from device (""
// without one), which satisfied the posture profile named posture ("": the
// app requires none), signing a new one when
// there is none, the session changed (refresh, attribute change), the
// signing key rotated, or it is within a fifth of its lifetime of expiring.
func (c *assertionCache) get(s *identity.Signer, sess *authn.Session, app, device, posture string, ttl time.Duration) (*assertion, error) {
	k := assertionKey{sess.Key, app, device, posture}
	now := time.Now()
	c.mu.RLock()
	a := c.m[k]
	c.mu.RUnlock()
	if a != nil && a.sess == sess && a.kid == s.KeyID() && now.Before(a.refresh) {
		return a, nil
	}
	id := sess.Identity
	// One token serves the assertion header and the PROXY v2 identity TLV,
	// so it is kept within the TLV's size; past it, groups are dropped by
	// the documented rule (SignFitting) rather than sending a header the
	// app would reject.
	tok, err := s.SignFitting(identity.Claims{
		Subject: id.Subject, Audience: app, Email: id.Email, Name: id.Name, Groups: id.Groups, Device: device, Posture: posture,
		SessionID: sess.Ref(), IssuedAt: now.Unix(), NotBefore: now.Unix(), Expiry: now.Add(ttl).Unix(),
	}, identity.MaxTLVTokenBytes)
	if err != nil {
		return nil, err
	}
	a = &assertion{sess: sess, kid: s.KeyID(), refresh: now.Add(ttl - ttl/5), token: []string{tok}, user: []string{id.Subject}}
	if id.Email != "" {
		a.email = []string{id.Email}
	}
	if len(id.Groups) > 0 {
		a.groups = []string{strings.Join(id.Groups, ",")}
	}
	c.mu.Lock()
	if len(c.m) >= maxAssertions {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[k] = a
	c.mu.Unlock()
	return a, nil
}

// dropSession forgets every assertion of a revoked session.
func (c *assertionCache) dropSession(key string) {
	c.dropWhere(func(k assertionKey) bool { return k.session == key })
}

// dropDevice forgets every assertion naming a revoked device.
func (c *assertionCache) dropDevice(id string) {
	c.dropWhere(func(k assertionKey) bool { return k.device == id })
}

func (c *assertionCache) dropWhere(match func(assertionKey) bool) {
	c.mu.Lock()
	for k := range c.m {
		if match(k) {
			delete(c.m, k)
		}
	}
	c.mu.Unlock()
}
