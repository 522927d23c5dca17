package proxy

import (
	"log/slog"
	"sync"
	"time"

	"github.com/ztna-dev/ztna/groups"
)

// cut is why the edge ended a live exchange. If the client has not been
// sent anything yet, it is also the answer the client gets.
type cut struct {
	reason   string
	decision *groups.Decision // the denial, when a new decision ended it
	// goingAway: the edge is shutting down, not withdrawing trust — a
	// tunnel client should reconnect (to this edge or another replica).
	goingAway bool
}

func (c *cut) Error() string { return c.reason }

// liveEntry is one long-lived exchange: a WebSocket, a streamed response,
// a tunnel stream — or a tunnel connection itself (req.App == ""), which
// only a session or device revocation or a quarantine ends.
type liveEntry struct {
	since   time.Time // set by register
	sessKey string
	device  string // "" when the client presented no device certificate
	req     groups.Request
	cancel  func(error)
	// changed, if set, is called (under the registry's lock: it must not
	// block) when the entry was decided again and kept because the
	// session's attributes or the policy changed — a tunnel connection
	// then sends the client its new app list.
	changed func(*liveEntry)
}

// liveRegistry tracks long-lived exchanges by session so that a trust
// change — the session revoked, the policy reloaded — closes those no longer
// allowed at once, instead of letting them run until the client leaves.
// Short requests are checked on entry and never registered.
type liveRegistry struct {
	logger *slog.Logger
	mu     sync.Mutex
	bySess map[string]map[*liveEntry]struct{}
}

func newLiveRegistry(logger *slog.Logger) *liveRegistry {
	return &liveRegistry{logger: logger, bySess: map[string]map[*liveEntry]struct{}{}}
}

func (l *liveRegistry) register(e *liveEntry) {
	e.since = time.Now()
	l.mu.Lock()
	m := l.bySess[e.sessKey]
	if m == nil {
		m = map[*liveEntry]struct{}{}
		l.bySess[e.sessKey] = m
	}
	m[e] = struct{}{}
	l.mu.Unlock()
}

func (l *liveRegistry) unregister(e *liveEntry) {
	l.mu.Lock()
	if m := l.bySess[e.sessKey]; m != nil {
		delete(m, e)
		if len(m) == 0 {
			delete(l.bySess, e.sessKey)
		}
	}
	l.mu.Unlock()
}

// count returns the number of live exchanges.
func (l *liveRegistry) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.bySess {
		n += len(m)
	}
	return n
}

// sessions returns the keys of the sessions that hold live exchanges.
func (l *liveRegistry) sessions() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	keys := make([]string, 0, len(l.bySess))
	for k := range l.bySess {
		keys = append(keys, k)
	}
	return keys
}

// revokeSession closes every live exchange of a session.
func (l *liveRegistry) revokeSession(key, reason string) {
	l.mu.Lock()
	m := l.bySess[key]
	delete(l.bySess, key)
	l.mu.Unlock()
	for e := range m {
		e.cancel(&cut{reason: reason})
	}
	if len(m) > 0 {
		l.logger.Info("closed live connections", "reason", reason, "count", len(m))
	}
}

// revokeDevice closes every live exchange that came from a device.
func (l *liveRegistry) revokeDevice(id, reason string) {
	l.closeWhere(func(e *liveEntry) bool { return e.device == id }, reason)
}

// reevaluate asks the new policy about every live exchange, at the
// current time, and closes those it no longer allows.
func (l *liveRegistry) reevaluate(p groups.Authorizer, reason string) {
	now := time.Now()
	l.closeEach(func(e *liveEntry) *cut {
		if e.req.App == "" {
			if e.changed != nil {
				e.changed(e)
			}
			return nil
		}
		req := e.req
		req.Time = now
		if d := p.Decide(req); !d.Allow {
			return &cut{reason: reason, decision: &d}
		}
		return nil
	})
}

// notify calls changed on the live exchanges matching match that have it
// (tunnel connections, whose app list may have changed).
func (l *liveRegistry) notify(match func(*liveEntry) bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.bySess {
		for e := range m {
			if e.changed != nil && match(e) {
				e.changed(e)
			}
		}
	}
}

// closeWhere closes every live exchange for which match is true.
func (l *liveRegistry) closeWhere(match func(*liveEntry) bool, reason string) {
	l.closeEach(func(e *liveEntry) *cut {
		if match(e) {
			return &cut{reason: reason}
		}
		return nil
	})
}

// closeEach closes every live exchange for which verdict says why.
// verdict runs under the registry's lock and may update the entry's
// request (a session's new identity).
func (l *liveRegistry) closeEach(verdict func(*liveEntry) *cut) {
	l.closeIn(nil, verdict)
}

// closeSession is closeEach over the exchanges of one session.
func (l *liveRegistry) closeSession(key string, verdict func(*liveEntry) *cut) {
	l.closeIn(&key, verdict)
}

func (l *liveRegistry) closeIn(only *string, verdict func(*liveEntry) *cut) {
	type closing struct {
		e      *liveEntry
		reason *cut
	}
	var closed []closing
	l.mu.Lock()
	for key, m := range l.bySess {
		if only != nil && key != *only {
			continue
		}
		for e := range m {
			if reason := verdict(e); reason != nil {
				delete(m, e)
				closed = append(closed, closing{e, reason})
			}
		}
		if len(m) == 0 {
			delete(l.bySess, key)
		}
	}
	l.mu.Unlock()
	for _, c := range closed {
		c.e.cancel(c.reason)
		l.logger.Info("closed live connection", "reason", c.reason.reason, "app", c.e.req.App, "user", c.e.req.Subject.User)
	}
}

// closeAll closes every live exchange because the edge is shutting down.
func (l *liveRegistry) closeAll(reason string) {
	l.mu.Lock()
	all := l.bySess
	l.bySess = map[string]map[*liveEntry]struct{}{}
	l.mu.Unlock()
	for _, m := range all {
		for e := range m {
			e.cancel(&cut{reason: reason, goingAway: true})
		}
	}
}

// each calls fn for every live exchange, under the registry's lock (fn
// must not block), until fn returns false.
func (l *liveRegistry) each(fn func(*liveEntry) bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.bySess {
		for e := range m {
			if !fn(e) {
				return
			}
		}
	}
}
