package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/ztna-dev/ztna/groups"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// liveCtx is one registered exchange and the context its cancel ends.
type liveCtx struct {
	e   *liveEntry
	ctx context.Context
}

func newLive(sessKey string, req groups.Request) liveCtx {
	ctx, cancel := context.WithCancelCause(context.Background())
	return liveCtx{e: &liveEntry{sessKey: sessKey, req: req, cancel: cancel}, ctx: ctx}
}

func (l liveCtx) cancelled() (bool, string) {
	if l.ctx.Err() == nil {
		return false, ""
	}
	return true, context.Cause(l.ctx).Error()
}

func newTestRegistry() *liveRegistry { return newLiveRegistry(slog.New(slog.DiscardHandler)) }

func TestLiveRegisterUnregister(t *testing.T) {
	l := newTestRegistry()
	a1, a2, b := newLive("a", groups.Request{}), newLive("a", groups.Request{}), newLive("b", groups.Request{})
	for i, e := range []liveCtx{a1, a2, b} {
		l.register(e.e)
		if n := l.count(); n != i+1 {
			t.Fatalf("count after %d registrations = %d", i+1, n)
		}
	}
	l.register(a1.e) // twice is once
	if n := l.count(); n != 3 {
		t.Fatalf("count after re-registering = %d, want 3", n)
	}
	l.unregister(a1.e)
	l.unregister(a1.e) // twice is harmless
	if n := l.count(); n != 2 {
		t.Fatalf("count after unregister = %d, want 2", n)
	}
	l.unregister(a2.e)
	l.unregister(b.e)
	if n := l.count(); n != 0 {
		t.Fatalf("count = %d, want 0", n)
	}
	if len(l.bySess) != 0 {
		t.Errorf("empty sessions kept: %v", l.bySess)
	}
	for _, e := range []liveCtx{a1, a2, b} {
		if c, why := e.cancelled(); c {
			t.Errorf("unregister cancelled an entry: %s", why)
		}
	}
}

func TestLiveRevokeSession(t *testing.T) {
	l := newTestRegistry()
	a1, a2, b := newLive("a", groups.Request{}), newLive("a", groups.Request{}), newLive("b", groups.Request{})
	for _, e := range []liveCtx{a1, a2, b} {
		l.register(e.e)
	}
	l.revokeSession("a", "session ended")
	for _, e := range []liveCtx{a1, a2} {
		if c, why := e.cancelled(); !c || why != "session ended" {
			t.Errorf("session a entry: cancelled=%v cause=%q, want \"session ended\"", c, why)
		}
	}
	if c, why := b.cancelled(); c {
		t.Errorf("session b cancelled: %s", why)
	}
	if n := l.count(); n != 1 {
		t.Errorf("count = %d, want 1", n)
	}
	// forward unregisters every entry when its request ends, revoked or not.
	l.unregister(a1.e)
	l.unregister(a2.e)
	if n := l.count(); n != 1 {
		t.Errorf("count after unregistering revoked entries = %d, want 1", n)
	}
	l.revokeSession("nobody", "x") // unknown key: nothing happens
	if c, _ := b.cancelled(); c || l.count() != 1 {
		t.Error("revoking an unknown session touched another")
	}
}

func TestLiveReevaluate(t *testing.T) {
	compile := func(apps ...groups.AppRules) *groups.Policy {
		t.Helper()
		p, err := groups.Compile(&groups.Source{Apps: apps}, groups.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	eng := groups.Subject{User: "alice", Groups: []string{"eng"}}
	ops := groups.Subject{User: "bob", Groups: []string{"ops"}}
	entries := map[string]liveCtx{
		"alice wiki /":       newLive("s1", groups.Request{App: "wiki", Subject: eng, Method: "GET", Path: "/"}),
		"alice wiki /admin":  newLive("s1", groups.Request{App: "wiki", Subject: eng, Method: "GET", Path: "/admin/x"}),
		"bob wiki /":         newLive("s2", groups.Request{App: "wiki", Subject: ops, Method: "GET", Path: "/"}),
		"bob docs /":         newLive("s2", groups.Request{App: "docs", Subject: ops, Method: "GET", Path: "/"}),
		"alice removed app":  newLive("s1", groups.Request{App: "old", Subject: eng, Method: "GET", Path: "/"}),
		"alice docs DELETE ": newLive("s3", groups.Request{App: "docs", Subject: eng, Method: "DELETE", Path: "/p"}),
	}
	l := newTestRegistry()
	for _, e := range entries {
		l.register(e.e)
	}
	p := compile(
		groups.AppRules{App: "wiki", Rules: []groups.Rule{
			{Name: "eng", Groups: []string{"idp:eng"}},
			{Name: "no-admin", Action: "deny", Paths: []string{"/admin"}},
		}},
		groups.AppRules{App: "docs", Rules: []groups.Rule{{Name: "read", Methods: []string{"GET"}}}},
	)
	l.reevaluate(p, "policy changed")
	wantClosed := map[string]bool{
		"alice wiki /admin":  true, // new deny rule
		"bob wiki /":         true, // not in eng
		"alice removed app":  true, // app gone: default deny
		"alice docs DELETE ": true, // method no longer allowed
	}
	for name, e := range entries {
		c, why := e.cancelled()
		if c != wantClosed[name] {
			t.Errorf("%s: cancelled=%v, want %v", name, c, wantClosed[name])
		}
		if c && why != "policy changed" {
			t.Errorf("%s: cause %q", name, why)
		}
	}
	if n := l.count(); n != 2 {
		t.Errorf("count = %d, want 2", n)
	}
	if _, ok := l.bySess["s3"]; ok {
		t.Error("session with no entries left kept in the registry")
	}

	// A policy that denies everything closes the rest.
	l.reevaluate(compile(), "policy changed again")
	for name, e := range entries {
		if c, _ := e.cancelled(); !c {
			t.Errorf("%s open under an empty policy", name)
		}
	}
	if c, why := entries["alice wiki /"].cancelled(); !c || why != "policy changed again" {
		t.Errorf("cause = %q", why)
	}
	if n := l.count(); n != 0 {
		t.Errorf("count = %d, want 0", n)
	}
}

func TestLiveCloseAll(t *testing.T) {
	l := newTestRegistry()
	var all []liveCtx
	for i := range 5 {
		e := newLive(fmt.Sprintf("s%d", i%2), groups.Request{})
		all = append(all, e)
		l.register(e.e)
	}
	l.closeAll("edge shutting down")
	for i, e := range all {
		if c, why := e.cancelled(); !c || why != "edge shutting down" {
			t.Errorf("entry %d: cancelled=%v cause=%q", i, c, why)
		}
	}
	if n := l.count(); n != 0 {
		t.Errorf("count = %d, want 0", n)
	}
	for _, e := range all {
		l.unregister(e.e) // the requests end after closeAll
	}
	late := newLive("s0", groups.Request{})
	l.register(late.e)
	if n := l.count(); n != 1 {
		t.Errorf("count after closeAll and a new registration = %d, want 1", n)
	}
}

// Registration, revocation and re-evaluation race with each other in the
// edge; run them together under -race.
func TestLiveConcurrent(t *testing.T) {
	l := newTestRegistry()
	p, err := groups.Compile(&groups.Source{Apps: []groups.AppRules{{App: "wiki", Rules: []groups.Rule{{Name: "all"}}}}}, groups.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const workers, rounds = 8, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				e := newLive(fmt.Sprintf("s%d", (w+i)%4), groups.Request{App: "wiki", Subject: groups.Subject{User: "u"}, Method: "GET", Path: "/"})
				l.register(e.e)
				if i%3 == 0 {
					_ = l.count()
				}
				l.unregister(e.e)
			}
		}()
	}
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(1)
	go func() {
		defer bg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			l.revokeSession(fmt.Sprintf("s%d", i%4), "revoked")
			l.reevaluate(p, "reloaded")
		}
	}()
	wg.Wait()
	close(stop)
	bg.Wait()
	if n := l.count(); n != 0 {
		t.Errorf("count = %d after every entry unregistered", n)
	}
	if len(l.bySess) != 0 {
		t.Errorf("sessions left: %d", len(l.bySess))
	}
}
