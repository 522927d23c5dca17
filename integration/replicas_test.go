package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
	redisstore "github.com/ztna-dev/ztna/internal/store/redis"
	"github.com/ztna-dev/ztna/internal/store/redistest"
	"github.com/ztna-dev/ztna/proxy"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// replicaPair starts two replicas of one edge — two dev systems with the
// same data dir (so the same CAs and signing keys) sharing a real
// redis-server for their state and their bus — and returns them with the
// server.
func replicaPair(t *testing.T, opts ...redistest.Option) (a, b *devenv.Env, srv *redistest.Server) {
	t.Helper()
	srv = redistest.Start(t, opts...)
	var id [4]byte
	_, _ = rand.Read(id[:])
	rc := &redisstore.Config{Addrs: []string{srv.Addr()}, KeyPrefix: "ztna:" + hex.EncodeToString(id[:]) + ":"}
	dir := t.TempDir()
	replica := func(o *devenv.Options) { o.DataDir, o.Redis = dir, rc }
	a = newEnvWith(t, replica)
	b = newEnvWith(t, replica)
	return a, b, srv
}

// appGet is a GET of app's path on env with the session cookie, as an
// API client.
func appGet(t *testing.T, env *devenv.Env, app, path, cookie string) *response {
	t.Helper()
	return do(t, newClient(t, env), withCookie(t, http.MethodGet, env.AppURL(app)+path, cookie, asAPI))
}

// TestReplicasShareSessionsAndRevocations: alice signs in through replica
// A and her session works on replica B; revoking it on B closes her live
// WebSocket and streaming response on A within a second (Redis pub/sub,
// then A rereads the store); a device quarantined by a signal to A is
// refused by B at once and its live tunnel stream on B is cut.
func TestReplicasShareSessionsAndRevocations(t *testing.T) {
	a, b, _ := replicaPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	alice := loginAs(t, a, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, a, alice, "whoami")
	if r := appGet(t, b, "whoami", "/?format=json", cookie); r.StatusCode != http.StatusOK ||
		decodeReport(t, r.Body).User != "u-alice" {
		t.Fatalf("alice's session on replica B: %d %.200s", r.StatusCode, r.Body)
	}

	// A live WebSocket and a live streaming response on A, the session
	// revoked on B.
	ws, _, err := wsDial(t, a, "whoami", "/ws", cookie)
	if err != nil {
		t.Fatal(err)
	}
	req := withCookie(t, http.MethodGet, a.AppURL("whoami")+"/stream", cookie, asFetch)
	req.Header.Set("Accept", "text/event-stream")
	stream, err := newClient(t, a).Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	lines := bufio.NewScanner(stream.Body)
	if stream.StatusCode != http.StatusOK || !lines.Scan() || !strings.HasPrefix(lines.Text(), "data: tick") {
		t.Fatalf("stream on A: %d %q", stream.StatusCode, lines.Text())
	}
	streamEnded := make(chan time.Time, 1)
	go func() {
		for lines.Scan() {
		}
		streamEnded <- time.Now()
	}()
	key, ok := authn.ParseSessionID(cookie)
	if !ok {
		t.Fatal("bad cookie")
	}
	start := time.Now()
	if err := b.Edge.Sessions().Revoke(ctx, key); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, _, err = ws.ReadMessage(); err != nil {
			break
		}
	}
	took := time.Since(start)
	if took > time.Second {
		t.Errorf("the WebSocket on A closed %v after the revocation on B, want ≤ 1 s (%v)", took, err)
	}
	t.Logf("revoked on B → WebSocket on A closed after %v", took)
	select {
	case at := <-streamEnded:
		if d := at.Sub(start); d > time.Second {
			t.Errorf("the stream on A ended %v after the revocation on B, want ≤ 1 s", d)
		} else {
			t.Logf("revoked on B → stream on A ended after %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Error("the streaming response on A outlived the revocation on B")
	}
	if r := appGet(t, a, "whoami", "/?format=json", cookie); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("the revoked session on A: %d, want 401", r.StatusCode)
	}

	// A device quarantined on A: B refuses it and cuts its live stream.
	bob := loginAs(t, b, "whoami", "alice", alicePassword)
	cookie2 := sessionCookie(t, b, bob, "whoami")
	devID, cert := enrollDevice(t, a, "u-alice") // enrolled on A, used on B
	_, _, br := echoStream(t, ctx, tunnelClient(t, b, cookie2, &cert))
	start = time.Now()
	expectSignal(t, postSignal(t, a, proxy.PathSignals, "Bearer "+a.SignalsToken, map[string]string{
		"source": "crowdstrike", "severity": "critical", "device_id": devID, "rule": "Ransomware.FileEncryption",
		"reason": "test: EDR alert on A"}), "quarantined", devID)
	_, err = br.ReadString('\n')
	took = time.Since(start)
	var ce *tunnel.CutError
	if !errors.As(err, &ce) || !strings.Contains(ce.Reason, "quarantined") {
		t.Errorf("the stream on B ended with %v, want a cut for the quarantine on A", err)
	}
	if took > time.Second {
		t.Errorf("the stream on B was cut %v after the quarantine on A, want ≤ 1 s", took)
	}
	t.Logf("quarantined on A → stream on B cut after %v", took)
	if _, err := tunnelClient(t, b, cookie2, &cert).Connect(ctx); err == nil {
		t.Error("B accepted a tunnel from the device quarantined on A")
	} else if ae := new(tunnel.AuthError); !errors.As(err, &ae) || ae.Code != "quarantined" {
		t.Errorf("B refused the quarantined device with %v, want quarantined", err)
	}
}

// TestReplicasRedisOutage: while Redis is down nothing new is allowed —
// a session a replica has not read recently is refused with 503 (not
// "signed out": it may be valid), and signing in fails — while sessions a
// replica read within the last 30 s keep working from its cache; when
// Redis is back (with its append-only file), every session works again on
// both replicas: nothing was lost.
func TestReplicasRedisOutage(t *testing.T) {
	a, b, srv := replicaPair(t, redistest.WithAppendOnly())
	alice := loginAs(t, a, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, a, alice, "whoami")
	if r := appGet(t, a, "whoami", "/?format=json", cookie); r.StatusCode != http.StatusOK {
		t.Fatalf("before the outage: %d", r.StatusCode)
	}

	srv.Stop()
	if r := appGet(t, a, "whoami", "/?format=json", cookie); r.StatusCode != http.StatusOK {
		t.Errorf("a session A read just now, during the outage: %d, want 200 from A's cache", r.StatusCode)
	}
	r := appGet(t, b, "whoami", "/?format=json", cookie)
	if r.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a session B never read, during the outage: %d %.200s, want 503", r.StatusCode, r.Body)
	}
	// Signing in needs the store for its login state: refused, not begun.
	c := newClient(t, b)
	loc := expectRedirect(t, get(t, c, b.AppURL("whoami")+"/", asNavigation), http.StatusFound, hostOf(t, b.AuthOrigin), authn.PathLogin)
	if r := get(t, c, loc.String(), asNavigation); r.StatusCode < 500 {
		t.Errorf("signing in during the outage: %d (to %s), want a 5xx", r.StatusCode, r.Header.Get("Location"))
	}

	srv.Restart()
	waitFor(t, 10*time.Second, "the session to work on B again", func() bool {
		return appGet(t, b, "whoami", "/?format=json", cookie).StatusCode == http.StatusOK
	})
	if r := appGet(t, a, "whoami", "/?format=json", cookie); r.StatusCode != http.StatusOK {
		t.Errorf("after the outage on A: %d", r.StatusCode)
	}
}

// TestReplicasRecordTheirPolicy: each replica records the policy version
// it serves in the shared store; the admin API of either lists both, and a
// reload on one shows up as a different version until the other reloads.
func TestReplicasRecordTheirPolicy(t *testing.T) {
	a, b, _ := replicaPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// policy is what env's admin API says: its own version and every
	// replica's, by replica.
	policy := func(env *devenv.Env) (string, map[string]string) {
		t.Helper()
		req := newRequest(t, http.MethodGet, env.AuthOrigin+proxy.PathPolicy, nil, asAPI)
		req.Header.Set("Authorization", "Bearer "+env.AdminToken)
		r := do(t, newClient(t, env), req)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %.200s", proxy.PathPolicy, r.StatusCode, r.Body)
		}
		var out struct {
			Version  string               `json:"version"`
			Replicas []proxy.PolicyRecord `json:"replicas"`
		}
		if err := json.Unmarshal(r.Body, &out); err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, rec := range out.Replicas {
			m[rec.Replica] = rec.Version
		}
		return out.Version, m
	}
	va, got := policy(b)
	if len(got) != 2 {
		t.Fatalf("replicas recorded %v, want two", got)
	}
	for replica, v := range got {
		if v != va {
			t.Errorf("replica %s serves %s, want %s like B", replica, v, va)
		}
	}
	cfg := currentConfig(a)
	for i := range cfg.Apps {
		if cfg.Apps[i].Name == "echo" {
			cfg.Apps[i].Rules = nil
		}
	}
	if err := a.Edge.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	na, _ := policy(a)
	_, got = policy(b)
	if na == va {
		t.Fatal("the reload did not change A's policy version")
	}
	seen := map[string]bool{}
	for _, v := range got {
		seen[v] = true
	}
	if !seen[na] || !seen[va] {
		t.Errorf("after a reload on A only, the replicas serve %v; want one on %s and one on %s", got, na, va)
	}
}
