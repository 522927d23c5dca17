package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/devenv"
	redisstore "github.com/ztna-dev/ztna/internal/store/redis"
	"github.com/ztna-dev/ztna/internal/store/redistest"
)

// TestStorePolicyOnReplicas: with policy.source store, the config's policy
// seeds version 1; a version committed on replica A (what the console's
// save does) is served by replica B within a second, moving a signed-in
// user's access without a new login; a commit from a stale version is
// refused and changes nothing; a revert restores the old access; and a
// config reload does not bring the files' policy back.
func TestStorePolicyOnReplicas(t *testing.T) {
	srv := redistest.Start(t)
	var id [4]byte
	_, _ = rand.Read(id[:])
	rc := &redisstore.Config{Addrs: []string{srv.Addr()}, KeyPrefix: "ztna:" + hex.EncodeToString(id[:]) + ":"}
	dir := t.TempDir()
	replica := func(o *devenv.Options) { o.DataDir, o.Redis, o.PolicySource = dir, rc, "store" }
	a := newEnvWith(t, replica)
	b := newEnvWith(t, replica)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	v1, err := a.Edge.PolicyVersions().Head(ctx)
	if err != nil || v1.N != 1 || v1.Author != "config" {
		t.Fatalf("seeded version: %v %+v", err, v1)
	}
	bob := loginAs(t, a, "whoami", "bob", bobPassword)
	cookie := sessionCookie(t, a, bob, "whoami")
	secure := func(env *devenv.Env) int { return appGet(t, env, "secure", "/", cookie).StatusCode }
	if s := secure(b); s != http.StatusForbidden {
		t.Fatalf("bob on secure via B before the change: %d, want 403", s)
	}

	// Finance joins group A (security-tech), committed on A.
	f := v1.Policy
	f.Groups = append([]groups.Group(nil), f.Groups...)
	for i := range f.Groups {
		if f.Groups[i].Name == "security-tech" {
			f.Groups[i].When = `user.department in ["Security Tech", "Finance"]`
		}
	}
	v2, err := a.Edge.CommitPolicy(ctx, 1, f, "admin@example.com", "finance joins security-tech", 0)
	if err != nil || v2.N != 2 {
		t.Fatalf("commit: %v %+v", err, v2)
	}
	start := time.Now()
	waitFor(t, 5*time.Second, "B to serve version 2", func() bool { return secure(b) == http.StatusOK })
	t.Logf("version 2 served by B %s after the commit on A", time.Since(start).Round(time.Millisecond))
	if s := secure(a); s != http.StatusOK {
		t.Fatalf("bob on secure via A after the change: %d", s)
	}
	if pa, pb := a.Edge.State(), b.Edge.State(); pa == nil || pb == nil {
		t.Fatal("no state")
	}

	// A stale commit (from version 1 again) changes nothing anywhere.
	if _, err := b.Edge.CommitPolicy(ctx, 1, v1.Policy, "other@example.com", "stale", 0); !errors.Is(err, groups.ErrPolicyConflict) {
		t.Fatalf("stale commit: %v, want ErrPolicyConflict", err)
	}
	// An invalid policy is refused before it is saved.
	bad := f
	bad.Groups = append([]groups.Group{{Name: "broken", When: "user.department =="}}, f.Groups...)
	if _, err := a.Edge.CommitPolicy(ctx, 2, bad, "admin@example.com", "broken", 0); err == nil {
		t.Fatal("a policy that does not compile was committed")
	}
	if head, _ := a.Edge.PolicyVersions().Head(ctx); head.N != 2 {
		t.Fatalf("head after refused commits: %d, want 2", head.N)
	}
	if s := secure(b); s != http.StatusOK {
		t.Fatalf("refused commits changed access: %d", s)
	}

	// Revert (from B this time): version 3 restores version 1 everywhere.
	if _, err := b.Edge.CommitPolicy(ctx, 2, v1.Policy, "admin@example.com", "Revert to version 1", 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "A to serve the revert", func() bool { return secure(a) == http.StatusForbidden })

	// A config reload keeps the store's policy: the files only seed it.
	cfg := currentConfig(a)
	for i := range cfg.Groups {
		if cfg.Groups[i].Name == "security-tech" {
			cfg.Groups[i].When = `user.department != ""`
		}
	}
	if err := a.Edge.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if s := secure(a); s != http.StatusForbidden {
		t.Fatalf("a config reload replaced the store's policy: bob gets %d", s)
	}

	// An attribute set on A (the console's role change) moves bob's
	// access on B too, without a new login.
	if _, n, err := a.Edge.Directory().SetOverrides(ctx, "u-bob", map[string]string{"department": "Security Tech"}, "admin@example.com"); err != nil || n != 1 {
		t.Fatalf("set bob's department on A: %v (%d sessions)", err, n)
	}
	start = time.Now()
	waitFor(t, 5*time.Second, "B to see bob's new department", func() bool { return secure(b) == http.StatusOK })
	t.Logf("attribute change on A effective on B after %s", time.Since(start).Round(time.Millisecond))
}
