package proxy

import (
	"errors"
	"log/slog"
	"sync"

	"github.com/ztna-dev/ztna/groups"
)

// liveEntry is one long-lived exchange: a WebSocket or a streamed response.
type liveEntry struct {
	sessKey string
	device  string // "" when the client presented no device certificate
	req     groups.Request
	cancel  func(error)
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

// revokeSession closes every live exchange of a session.
func (l *liveRegistry) revokeSession(key, reason string) {
	l.mu.Lock()
	m := l.bySess[key]
	delete(l.bySess, key)
	l.mu.Unlock()
	for e := range m {
		e.cancel(errors.New(reason))
	}
	if len(m) > 0 {
		l.logger.Info("closed live connections", "reason", reason, "count", len(m))
	}
}

// revokeDevice closes every live exchange that came from a device.
func (l *liveRegistry) revokeDevice(id, reason string) {
	l.closeWhere(func(e *liveEntry) bool { return e.device == id }, reason)
}

// reevaluate asks the new policy about every live exchange and closes those
// it no longer allows.
func (l *liveRegistry) reevaluate(p groups.Authorizer, reason string) {
	l.closeWhere(func(e *liveEntry) bool { return !p.Decide(e.req).Allow }, reason)
}

// closeWhere closes every live exchange for which match is true.
func (l *liveRegistry) closeWhere(match func(*liveEntry) bool, reason string) {
	var closed []*liveEntry
	l.mu.Lock()
	for key, m := range l.bySess {
		for e := range m {
			if match(e) {
				delete(m, e)
				closed = append(closed, e)
			}
		}
		if len(m) == 0 {
			delete(l.bySess, key)
		}
	}
	l.mu.Unlock()
	for _, e := range closed {
		e.cancel(errors.New(reason))
	}
	if len(closed) > 0 {
		l.logger.Info("closed live connections", "reason", reason, "count", len(closed))
	}
}

func (l *liveRegistry) closeAll(reason string) {
	l.mu.Lock()
	all := l.bySess
	l.bySess = map[string]map[*liveEntry]struct{}{}
	l.mu.Unlock()
	for _, m := range all {
		for e := range m {
			e.cancel(errors.New(reason))
		}
	}
}
