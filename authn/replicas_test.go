package authn

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/ztna-dev/ztna/internal/bus"
)

// announced records what a keeper told the other replicas.
type announced struct {
	mu     sync.Mutex
	events []bus.Event
}

func (a *announced) publish(kind, key string) {
	a.mu.Lock()
	a.events = append(a.events, bus.Event{Kind: kind, Key: key})
	a.mu.Unlock()
}

func (a *announced) has(kind, key string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Contains(a.events, bus.Event{Kind: kind, Key: key})
}

// TestSessionsAcrossReplicas: two keepers over one store, as two replicas
// over Redis. What one revokes or updates it announces; the other applies
// it from the store (its cached copy goes, its hooks run), checks the store
// rather than trusting the event, and after a gap resyncs.
func TestSessionsAcrossReplicas(t *testing.T) {
	ctx := t.Context()
	st := newMemoryStore(t)
	a, _ := newTestSessions(t, st, SessionsConfig{})
	b, _ := newTestSessions(t, st, SessionsConfig{})
	var told announced
	a.Announce(told.publish)
	var bRevoked revocations
	b.OnRevoke(bRevoked.record)
	var bUpdated []string
	b.OnUpdate(func(s *Session) { bUpdated = append(bUpdated, s.Identity.Attributes["department"]) })

	s, err := a.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, s.ID); err != nil { // cached on b
		t.Fatal(err)
	}

	// An event about a session the store still holds changes nothing.
	b.Forget(ctx, s.Key)
	if len(bRevoked.list()) != 0 {
		t.Fatal("b ended a live session on an event the store contradicts")
	}
	b.Forget(ctx, "not-a-key")
	b.Reread(ctx, "../../etc")
	if _, err := b.Get(ctx, s.ID); err != nil { // Forget dropped b's copy: read again
		t.Fatal(err)
	}

	// Updated on a: b rereads it and re-decides with the new attributes.
	upd := *s
	upd.Identity.Attributes = map[string]string{"department": "Security Policy"}
	if err := a.Update(ctx, &upd); err != nil {
		t.Fatal(err)
	}
	if !told.has(bus.SessionUpdated, s.Key) {
		t.Fatalf("a did not announce the update: %+v", told.events)
	}
	b.Reread(ctx, s.Key)
	if len(bUpdated) != 1 || bUpdated[0] != "Security Policy" {
		t.Fatalf("b's update hooks saw %v", bUpdated)
	}
	if got, err := b.Get(ctx, s.ID); err != nil || got.Identity.Attributes["department"] != "Security Policy" {
		t.Fatalf("b serves %+v, %v after the reread", got, err)
	}

	// Revoked on a: b's cached copy goes and its hooks close live
	// connections.
	if err := a.Revoke(ctx, s.Key); err != nil {
		t.Fatal(err)
	}
	if !told.has(bus.SessionRevoked, s.Key) {
		t.Fatalf("a did not announce the revocation: %+v", told.events)
	}
	b.Forget(ctx, s.Key)
	if !bRevoked.has(s.Key) {
		t.Fatal("b did not end the revoked session")
	}
	if _, err := b.Get(ctx, s.ID); !errors.Is(err, ErrNoSession) {
		t.Fatalf("b still serves the revoked session: %v", err)
	}

	// A missed event: after a resync b ends the live sessions the store
	// no longer holds, keeps the others, and rereads everything.
	gone, err := a.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := a.Create(ctx, testIdentity, testTokens)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []*Session{gone, kept} {
		if _, err := b.Get(ctx, x.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Revoke(ctx, gone.Key); err != nil { // b never hears of it
		t.Fatal(err)
	}
	b.Resync(ctx, []string{gone.Key, kept.Key})
	if !bRevoked.has(gone.Key) || bRevoked.has(kept.Key) {
		t.Fatalf("after the resync b ended %v", bRevoked.list())
	}
	if b.cached(kept.Key) != nil {
		t.Error("the resync kept a cached copy")
	}
	if _, err := b.Get(ctx, kept.ID); err != nil {
		t.Errorf("b lost a live session in the resync: %v", err)
	}
}

// TestRefreshOnceAcrossReplicas: two replicas due to refresh the same
// session at the same moment (the IdP rotates refresh tokens, so a second
// refresh with a used token is refused): exactly one refreshes, the
// session survives with the rotated token, and nobody ends it.
func TestRefreshOnceAcrossReplicas(t *testing.T) {
	e := newSvcEnv(t)
	ctx := t.Context()
	alice := e.signIn(t, "alice", "https://app.example/")
	sessionsB := NewSessions(e.st, SessionsConfig{}, nil)
	t.Cleanup(sessionsB.Wait)
	svcB := NewService(e.rp, sessionsB, e.st, ServiceOptions{AuthOrigin: testAuthOrigin, IsAppHost: testIsAppHost, Pages: e.pages, Now: e.clock.Now})
	t.Cleanup(svcB.Close)
	var bRevoked revocations
	sessionsB.OnRevoke(bRevoked.record)

	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		svc := e.svc
		if i%2 == 1 {
			svc = svcB
		}
		cp := *alice.session
		wg.Go(func() { errs <- svc.refreshSession(ctx, &cp) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("refresh: %v", err)
		}
	}
	s, err := e.sessions.load(ctx, alice.session.Key)
	if err != nil {
		t.Fatalf("the session did not survive the concurrent refreshes: %v", err)
	}
	if s.RefreshToken == alice.session.RefreshToken {
		t.Error("nobody refreshed")
	}
	if len(e.rev.list()) != 0 || len(bRevoked.list()) != 0 {
		t.Errorf("sessions ended: %v %v", e.rev.list(), bRevoked.list())
	}
}
