package authn

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/ztna-dev/ztna/internal/store"
)

func TestDirectorySeenOverridesAndSessions(t *testing.T) {
	ctx := context.Background()
	st := newMemoryStore(t)
	sessions, _ := newTestSessions(t, st, SessionsConfig{})
	var mu sync.Mutex
	var updated []Identity
	sessions.OnUpdate(func(s *Session) { mu.Lock(); updated = append(updated, s.Identity); mu.Unlock() })
	d := NewDirectory(st, sessions)

	bob := Identity{Subject: "u-bob", Email: "bob@example.com", Attributes: map[string]string{"department": "Finance", "title": "Accountant"}}
	if err := d.Provision(ctx, bob); err != nil {
		t.Fatal(err)
	}
	u, err := d.Get(ctx, "u-bob")
	if err != nil || !u.LastSeen.IsZero() {
		t.Fatalf("provisioned: %v %+v", err, u)
	}
	eff, _, err := d.Seen(ctx, bob)
	if err != nil || eff.Attributes["department"] != "Finance" {
		t.Fatalf("Seen: %v %+v", err, eff)
	}
	sess, err := sessions.Create(ctx, eff, Tokens{})
	if err != nil {
		t.Fatal(err)
	}

	// The seed's role change, made by an admin: the session follows.
	u, n, err := d.SetOverrides(ctx, "u-bob", map[string]string{"department": "Security Tech", "title": ""}, "admin@example.com")
	if err != nil || n != 1 {
		t.Fatalf("SetOverrides: %v, %d sessions", err, n)
	}
	if u.OverriddenBy != "admin@example.com" || u.OverriddenAt.IsZero() {
		t.Fatalf("who changed it is not recorded: %+v", u)
	}
	got, err := sessions.Get(ctx, sess.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Identity.Attributes["department"] != "Security Tech" {
		t.Fatalf("session attributes %v, want the override", got.Identity.Attributes)
	}
	if _, ok := got.Identity.Attributes["title"]; ok {
		t.Fatalf("an empty override must hide the IdP's attribute: %v", got.Identity.Attributes)
	}
	mu.Lock()
	if len(updated) != 1 || updated[0].Attributes["department"] != "Security Tech" {
		t.Fatalf("update hooks saw %+v", updated)
	}
	mu.Unlock()

	// A refresh brings the IdP's attributes again: the override still wins.
	eff, _, err = d.Seen(ctx, bob)
	if err != nil || eff.Attributes["department"] != "Security Tech" || bob.Attributes["department"] != "Finance" {
		t.Fatalf("after refresh: %v %+v (input %+v)", err, eff, bob)
	}
	// Provision never overwrites a recorded user.
	if err := d.Provision(ctx, Identity{Subject: "u-bob", Email: "evil@example.com"}); err != nil {
		t.Fatal(err)
	}
	if u, _ := d.Get(ctx, "u-bob"); u.IdP.Email != "bob@example.com" || len(u.Overrides) != 2 {
		t.Fatalf("Provision overwrote: %+v", u)
	}
	// Cleared: the IdP's attributes again.
	if _, _, err := d.SetOverrides(ctx, "u-bob", nil, "admin@example.com"); err != nil {
		t.Fatal(err)
	}
	if got, _ := sessions.Get(ctx, sess.ID); got.Identity.Attributes["department"] != "Finance" {
		t.Fatalf("cleared overrides: %v", got.Identity.Attributes)
	}
	list, err := d.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("List: %v %d", err, len(list))
	}
}

func TestDirectoryRefusesBadOverrides(t *testing.T) {
	ctx := context.Background()
	st := newMemoryStore(t)
	sessions, _ := newTestSessions(t, st, SessionsConfig{})
	d := NewDirectory(st, sessions)
	if _, _, err := d.Seen(ctx, Identity{Subject: "u-a", Attributes: map[string]string{"department": "IT"}}); err != nil {
		t.Fatal(err)
	}
	many := map[string]string{}
	for i := 0; i < maxOverrides+1; i++ {
		many["a"+strings.Repeat("x", i%10)+string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	for name, o := range map[string]map[string]string{
		"upper-case name": {"Department": "x"},
		"dotted name":     {"user.department": "x"},
		"empty name":      {"": "x"},
		"long value":      {"department": strings.Repeat("x", maxAttrValue+1)},
		"control char":    {"department": "a\nb"},
		"invalid utf-8":   {"department": "\xff"},
		"too many":        many,
	} {
		if _, _, err := d.SetOverrides(ctx, "u-a", o, "admin"); !errors.Is(err, ErrInvalidAttribute) {
			t.Errorf("%s: %v, want ErrInvalidAttribute", name, err)
		}
	}
	if u, _ := d.Get(ctx, "u-a"); len(u.Overrides) != 0 {
		t.Fatalf("a refused change was stored: %+v", u.Overrides)
	}
	if _, _, err := d.SetOverrides(ctx, "u-nobody", map[string]string{"a": "b"}, "admin"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown user: %v", err)
	}
	// Untrusted but printable text is stored as is: escaping is the pages' job.
	if _, _, err := d.SetOverrides(ctx, "u-a", map[string]string{"department": "<script>alert(1)</script>"}, "admin"); err != nil {
		t.Fatal(err)
	}
}

// An admin's change that lands between a sign-in's Seen and the session
// being stored is not lost: SetOverrides cannot see the session yet, so
// Settle, after the session is stored, rewrites it.
func TestDirectorySettleClosesTheSignInRace(t *testing.T) {
	ctx := context.Background()
	st := newMemoryStore(t)
	sessions, _ := newTestSessions(t, st, SessionsConfig{})
	d := NewDirectory(st, sessions)
	bob := Identity{Subject: "u-bob", Email: "bob@example.com", Attributes: map[string]string{"department": "Finance"}}
	if _, _, err := d.Seen(ctx, bob); err != nil {
		t.Fatal(err)
	}

	eff, stamp, err := d.Seen(ctx, bob) // a sign-in reads no overrides…
	if err != nil {
		t.Fatal(err)
	}
	// …an admin moves bob out of Finance; no session to rewrite yet…
	if _, n, err := d.SetOverrides(ctx, "u-bob", map[string]string{"department": "External"}, "admin"); err != nil || n != 0 {
		t.Fatalf("SetOverrides: %v, %d sessions", err, n)
	}
	// …and the sign-in stores its session with what it read.
	sess, err := sessions.Create(ctx, eff, Tokens{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Settle(ctx, sess, bob, stamp); err != nil {
		t.Fatal(err)
	}
	got, err := sessions.Get(ctx, sess.ID)
	if err != nil || got.Identity.Attributes["department"] != "External" {
		t.Fatalf("session after Settle: %v %v, want the admin's department", err, got.Identity.Attributes)
	}
	// Nothing changed since: Settle leaves the session alone.
	_, stamp, _ = d.Seen(ctx, bob)
	before := got.Identity
	if err := d.Settle(ctx, got, Identity{Subject: "u-bob", Attributes: map[string]string{"department": "ignored"}}, stamp); err != nil {
		t.Fatal(err)
	}
	if got.Identity.Attributes["department"] != before.Attributes["department"] {
		t.Fatal("Settle rewrote a session whose overrides had not changed")
	}
	// A sign-in never undoes the admin's change.
	if u, _ := d.Get(ctx, "u-bob"); u.Overrides["department"] != "External" || u.OverriddenBy != "admin" {
		t.Fatalf("overrides after sign-ins: %+v", u)
	}
}
