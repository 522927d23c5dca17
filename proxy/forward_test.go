package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/proxy/identity"
	"github.com/ztna-dev/ztna/web"
)

func TestStripClientIdentityHeaders(t *testing.T) {
	removed := []string{
		"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port",
		"X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups", "X-Forwarded-Anything",
		"x-forwarded-user", // canonicalised by Header.Add, as net/http does for requests
		"X-Real-Ip", "X-Real-IP", "X-Client-Ip", "True-Client-Ip", "Cf-Connecting-Ip", "X-Cluster-Client-Ip", "Client-Ip",
		"X-Remote-User", "X-Remote-Addr", "X-Original-Forwarded-For", "X-ProxyUser-Ip",
		"X-Ztna-Assertion", "X-Ztna-Whatever", "X-ZTNA-Device",
		"X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Access-Token",
		"X-Original-Url", "X-Rewrite-Url",
	}
	kept := []string{
		"Accept", "Authorization", "User-Agent", "Content-Type", "Referer", "Origin", "X-Requested-With",
		"X-Forwarded", "X-Forwardedfor", "X-Ztna", "X-Request-Id", "X-Csrf-Token", "Via",
	}
	h := http.Header{}
	for _, k := range removed {
		h.Add(k, "spoofed")
	}
	for _, k := range kept {
		h.Add(k, "ok")
	}
	StripClientIdentity(h)
	for _, k := range removed {
		if v := h.Values(k); len(v) > 0 {
			t.Errorf("%s: kept %q", k, v)
		}
	}
	for _, k := range kept {
		if got := h.Get(k); got != "ok" {
			t.Errorf("%s: got %q, want it kept", k, got)
		}
	}
	if len(h) != len(kept) {
		t.Errorf("left %d headers, want %d: %v", len(h), len(kept), h)
	}
}

// Some app stacks (CGI, WSGI, PHP, Rack) map "-" and "_" in header names to
// the same variable, so X_Forwarded_User would reach them as the user.
func TestStripClientIdentityUnderscoreVariants(t *testing.T) {
	h := http.Header{}
	for _, k := range []string{"X_Forwarded_User", "X-Forwarded_Email", "X_Ztna_Assertion", "X_Real_Ip", "X_Auth_Request_User"} {
		h.Add(k, "spoofed")
	}
	StripClientIdentity(h)
	if len(h) != 0 {
		t.Errorf("underscore variants kept: %v (proxy/forward.go isIdentityHeader: compare with '_' read as '-')", h)
	}
}

// StripClientIdentity is exported: a caller may build a Header by hand,
// with keys net/http would have canonicalised.
func TestStripClientIdentityRawKeys(t *testing.T) {
	h := http.Header{"x-real-ip": {"1.2.3.4"}, "forwarded": {"for=1.2.3.4"}, "x-forwarded-user": {"admin"}, "x-ztna-assertion": {"x"}}
	StripClientIdentity(h)
	if len(h) != 0 {
		t.Errorf("non-canonical keys kept: %v (proxy/forward.go isIdentityHeader: the fixed names are compared case-sensitively; use strings.EqualFold or textproto.CanonicalMIMEHeaderKey)", h)
	}
}

func TestStripClientIdentityCookies(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string // nil: no Cookie header left
	}{
		{"no edge cookies", []string{"a=1; b=2"}, []string{"a=1; b=2"}},
		{"session only", []string{"__Host-ztna_session=secret"}, nil},
		{"all edge cookies", []string{"__Host-ztna_session=s; __Host-ztna_bind=b; __Host-ztna_hb=1"}, nil},
		{"middle", []string{"a=1; __Host-ztna_session=secret; b=2"}, []string{"a=1; b=2"}},
		{"first and last", []string{"__Host-ztna_bind=x; a=1; b=2; __Host-ztna_hb=1"}, []string{"a=1; b=2"}},
		{"no spaces", []string{"a=1;__Host-ztna_session=secret;b=2"}, []string{"a=1; b=2"}},
		{"several lines", []string{"__Host-ztna_session=secret", "a=1; __Host-ztna_bind=y", "b=2"}, []string{"a=1", "b=2"}},
		{"several lines, all edge", []string{"__Host-ztna_session=secret", "__Host-ztna_hb=1"}, nil},
		{"lookalikes kept", []string{"my_ztna_pref=1; __Host-ztna_session=s; x=ztna_y; __Host-ztna_sessionx=2; ztna_session=3"},
			[]string{"my_ztna_pref=1; x=ztna_y; __Host-ztna_sessionx=2; ztna_session=3"}},
		{"lookalikes only", []string{"my_ztna_pref=1; x=ztna_y"}, []string{"my_ztna_pref=1; x=ztna_y"}},
		{"order kept", []string{"z=1; __Host-ztna_session=s; y=2; a=3"}, []string{"z=1; y=2; a=3"}},
		{"value with equals", []string{"a=b=c; __Host-ztna_session=s"}, []string{"a=b=c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{"Cookie": append([]string(nil), tt.in...), "Accept": {"*/*"}}
			StripClientIdentity(h)
			got, ok := h["Cookie"]
			if tt.want == nil {
				if ok {
					t.Errorf("Cookie = %q, want the header removed", got)
				}
			} else if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Cookie = %q, want %q", got, tt.want)
			}
			if h.Get("Accept") != "*/*" {
				t.Errorf("Accept lost")
			}
			for _, v := range got {
				if strings.Contains(v, "secret") {
					t.Errorf("session secret forwarded: %q", v)
				}
			}
		})
	}
}

const testIssuer = "https://auth.example.com"

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newSession(t testing.TB, id authn.Identity) *authn.Session {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return &authn.Session{ID: authn.NewSessionID(), Key: hex.EncodeToString(b), Identity: id}
}

func verifyAssertion(t *testing.T, ks *identity.KeySet, aud, token string) *identity.Claims {
	t.Helper()
	v, err := identity.NewVerifier(identity.VerifierConfig{Issuer: testIssuer, Audience: aud, Keys: ks.JWKS()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), token)
	if err != nil {
		t.Fatalf("assertion does not verify: %v", err)
	}
	return c
}

var alice = authn.Identity{Subject: "alice-id", Email: "alice@example.com", Name: "Alice", Groups: []string{"eng", "ops"}}

func TestAssertionCache(t *testing.T) {
	ks := identity.NewKeySet(newKey(t))
	signer := ks.Signer(testIssuer)
	c := newAssertionCache()
	sess := newSession(t, alice)
	const ttl = 5 * time.Minute

	a1, err := c.get(signer, sess, "wiki", "", "", ttl)
	if err != nil {
		t.Fatal(err)
	}
	claims := verifyAssertion(t, ks, "wiki", a1.token[0])
	if claims.Audience != "wiki" || claims.Subject != "alice-id" || claims.Email != "alice@example.com" ||
		!reflect.DeepEqual(claims.Groups, []string{"eng", "ops"}) || claims.SessionID != sess.Ref() || claims.Issuer != testIssuer {
		t.Errorf("claims = %+v", claims)
	}
	if claims.SessionID == sess.ID || claims.SessionID == sess.Key {
		t.Error("assertion carries the session secret or store key")
	}
	if got := claims.Expiry - claims.IssuedAt; got != int64(ttl/time.Second) {
		t.Errorf("lifetime = %ds, want %v", got, ttl)
	}
	if !reflect.DeepEqual(a1.user, []string{"alice-id"}) || !reflect.DeepEqual(a1.email, []string{"alice@example.com"}) ||
		!reflect.DeepEqual(a1.groups, []string{"eng,ops"}) {
		t.Errorf("headers user=%q email=%q groups=%q", a1.user, a1.email, a1.groups)
	}

	a2, err := c.get(signer, sess, "wiki", "", "", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if a2 != a1 {
		t.Error("same session and app within refresh: signed again")
	}

	other, err := c.get(signer, sess, "docs", "", "", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if other == a1 || verifyAssertion(t, ks, "docs", other.token[0]).Audience != "docs" {
		t.Error("another app got the wiki assertion")
	}

	// The device and the posture profile it met are part of the identity.
	fromDevice, err := c.get(signer, sess, "wiki", "dev-1", "strict", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if got := verifyAssertion(t, ks, "wiki", fromDevice.token[0]); fromDevice == a1 || got.Device != "dev-1" || got.Posture != "strict" {
		t.Errorf("device assertion: device %q posture %q (shared with the device-less one: %v)", got.Device, got.Posture, fromDevice == a1)
	}

	// A refresh replaces the session value: the cache must notice.
	refreshed := *sess
	refreshed.Identity.Groups = []string{"eng"}
	a3, err := c.get(signer, &refreshed, "wiki", "", "", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if a3 == a1 {
		t.Fatal("session changed: reused the old assertion")
	}
	if got := verifyAssertion(t, ks, "wiki", a3.token[0]).Groups; !reflect.DeepEqual(got, []string{"eng"}) {
		t.Errorf("groups after refresh = %q", got)
	}
	if a4, _ := c.get(signer, &refreshed, "wiki", "", "", ttl); a4 != a3 {
		t.Error("refreshed session: not cached")
	}

	// A key rotation makes a new signer with another kid.
	ks2 := identity.NewKeySet(newKey(t), newKey(t))
	signer2 := ks2.Signer(testIssuer)
	if signer2.KeyID() == signer.KeyID() {
		t.Fatal("test keys share a kid")
	}
	a5, err := c.get(signer2, &refreshed, "wiki", "", "", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if a5 == a3 || a5.kid != signer2.KeyID() {
		t.Fatal("key rotated: reused the old assertion")
	}
	verifyAssertion(t, ks2, "wiki", a5.token[0])

	// Close to expiry it signs again: with ttl 1ns the refresh time has
	// passed by the next call.
	b1, err := c.get(signer, sess, "short", "", "", time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	if b2, _ := c.get(signer, sess, "short", "", "", time.Nanosecond); b2 == b1 {
		t.Error("assertion past its refresh time reused")
	}

	bob := newSession(t, authn.Identity{Subject: "bob-id"})
	ab, err := c.get(signer, bob, "wiki", "", "", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if ab.email != nil || ab.groups != nil {
		t.Errorf("empty email/groups give headers %q %q", ab.email, ab.groups)
	}

	c.dropSession(sess.Key)
	c.mu.RLock()
	n := len(c.m)
	_, bobKept := c.m[assertionKey{bob.Key, "wiki", "", ""}]
	c.mu.RUnlock()
	if n != 1 || !bobKept {
		t.Errorf("after dropSession: %d entries (bob kept: %v), want only bob's", n, bobKept)
	}
	if a6, _ := c.get(signer2, &refreshed, "wiki", "", "", ttl); a6 == a5 {
		t.Error("dropped session: assertion still served")
	}
}

// testEdge is an Edge with just what forward needs: no OIDC discovery, no
// store.
func testEdge(t *testing.T) (*Edge, *identity.KeySet) {
	t.Helper()
	ks := identity.NewKeySet(newKey(t))
	logger := slog.New(slog.DiscardHandler)
	e := &Edge{
		logger:     logger,
		pages:      web.New(logger),
		signer:     ks.Signer(testIssuer),
		jwks:       ks.JWKS(),
		assertions: newAssertionCache(),
		live:       newLiveRegistry(logger),
		metrics:    newMetrics(nil),
		pools:      newIdentityPools(PoolConfig{}, newPoolMetrics(nil)),
	}
	t.Cleanup(e.pools.closeAll)
	return e, ks
}

// forwardTo serves forward to upstream for sess through a real HTTP server
// and returns its URL.
func forwardTo(t *testing.T, e *Edge, upstream string, ac AppConfig, sess *authn.Session) string {
	t.Helper()
	ac.Upstream = upstream
	cfg := &Config{}
	a, err := e.compileApp(ac, cfg)
	if err != nil {
		t.Fatal(err)
	}
	st := &State{Config: cfg}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := groups.Request{App: a.Name, Subject: groups.Subject{User: sess.Identity.Subject}, Method: r.Method, Path: r.URL.Path}
		e.forward(w, r, st, a, sess, "", req)
	}))
	t.Cleanup(func() {
		front.Close()
		if a.transport != nil {
			a.transport.CloseIdleConnections()
		}
	})
	return front.URL
}

func testClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// The app sees the edge's identity, never the client's.
func TestForwardReplacesIdentity(t *testing.T) {
	type seen struct {
		Host   string
		Header http.Header
	}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(seen{r.Host, r.Header})
	}))
	defer upstream.Close()
	upHost := strings.TrimPrefix(upstream.URL, "http://")

	for _, preserve := range []bool{false, true} {
		e, ks := testEdge(t)
		sess := newSession(t, alice)
		front := forwardTo(t, e, upstream.URL, AppConfig{Name: "wiki", PreserveHost: preserve}, sess)
		req, _ := http.NewRequest("GET", front+"/page?q=1", nil)
		req.Header.Set("X-Forwarded-User", "admin")
		req.Header.Set("X-Forwarded-Email", "admin@example.com")
		req.Header.Set("X-Forwarded-Groups", "admins")
		req.Header.Set("X-Forwarded-For", "10.9.9.9")
		req.Header.Set("X-Forwarded-Host", "evil.example.com")
		req.Header.Set("Forwarded", "for=10.9.9.9")
		req.Header.Set("X-Real-Ip", "10.9.9.9")
		req.Header.Set("X-Ztna-Assertion", "forged")
		req.Header.Set("Cookie", "theme=dark; __Host-ztna_session="+sess.ID+"; lang=en")
		// Hop-by-hop trick: naming the edge's headers in Connection must
		// not remove the edge's own copies.
		req.Header.Set("Connection", "X-Forwarded-User, X-Ztna-Assertion, X-Forwarded-For")
		resp, err := testClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got seen
		err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&got)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		h := got.Header
		if v := h.Values("X-Forwarded-User"); !reflect.DeepEqual(v, []string{"alice-id"}) {
			t.Errorf("X-Forwarded-User = %q", v)
		}
		if v := h.Values("X-Forwarded-Email"); !reflect.DeepEqual(v, []string{"alice@example.com"}) {
			t.Errorf("X-Forwarded-Email = %q", v)
		}
		if v := h.Values("X-Forwarded-Groups"); !reflect.DeepEqual(v, []string{"eng,ops"}) {
			t.Errorf("X-Forwarded-Groups = %q", v)
		}
		if v := h.Values("X-Forwarded-For"); !reflect.DeepEqual(v, []string{"127.0.0.1"}) {
			t.Errorf("X-Forwarded-For = %q, want only the client's address", v)
		}
		frontHost := strings.TrimPrefix(front, "http://")
		if v := h.Values("X-Forwarded-Host"); !reflect.DeepEqual(v, []string{frontHost}) {
			t.Errorf("X-Forwarded-Host = %q, want %q", v, frontHost)
		}
		if v := h.Get("X-Forwarded-Proto"); v != "http" {
			t.Errorf("X-Forwarded-Proto = %q", v)
		}
		for _, k := range []string{"Forwarded", "X-Real-Ip"} {
			if v := h.Values(k); len(v) > 0 {
				t.Errorf("%s forwarded: %q", k, v)
			}
		}
		if v := h.Values("Cookie"); !reflect.DeepEqual(v, []string{"theme=dark; lang=en"}) {
			t.Errorf("Cookie = %q", v)
		}
		tok := h.Values(identity.HeaderName)
		if len(tok) != 1 {
			t.Fatalf("%s = %q, want one token", identity.HeaderName, tok)
		}
		if c := verifyAssertion(t, ks, "wiki", tok[0]); c.Subject != "alice-id" || c.SessionID != sess.Ref() {
			t.Errorf("claims = %+v", c)
		}
		wantHost := upHost
		if preserve {
			wantHost = frontHost
		}
		if got.Host != wantHost {
			t.Errorf("preserve_host=%v: upstream saw Host %q, want %q", preserve, got.Host, wantHost)
		}
		if n := e.live.count(); n != 0 {
			t.Errorf("short request left %d live entries", n)
		}
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// A streamed response is registered while it lasts and cut when its
// session is revoked.
func TestForwardStreamCutOnRevoke(t *testing.T) {
	upstreamDone := make(chan error, 1)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: hello\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			upstreamDone <- context.Cause(r.Context())
		case <-time.After(10 * time.Second):
			upstreamDone <- errors.New("not cancelled")
		}
	}))
	defer upstream.Close()

	e, _ := testEdge(t)
	sess := newSession(t, alice)
	otherSess := newSession(t, alice)
	front := forwardTo(t, e, upstream.URL, AppConfig{Name: "wiki"}, sess)

	resp, err := testClient(t).Get(front + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || line != "data: hello\n" {
		t.Fatalf("first event: %q, %v", line, err)
	}
	if !waitFor(t, "registration", 5*time.Second, func() bool { return e.live.count() == 1 }) {
		t.Fatalf("stream not registered: %d live entries", e.live.count())
	}

	e.live.revokeSession(otherSess.Key, "other session ended")
	if n := e.live.count(); n != 1 {
		t.Fatalf("revoking another session closed this stream (%d live)", n)
	}

	start := time.Now()
	e.live.revokeSession(sess.Key, "session ended")
	readDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, br)
		readDone <- err
	}()
	select {
	case err := <-readDone:
		if err == nil {
			t.Log("stream ended cleanly after revocation")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream still open 5s after revocation")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("stream closed %v after revocation, want within 1s", d)
	}
	select {
	case err := <-upstreamDone:
		if err == nil || err.Error() == "not cancelled" {
			t.Errorf("upstream request: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("upstream request not cancelled")
	}
	if !waitFor(t, "unregister", 5*time.Second, func() bool { return e.live.count() == 0 }) {
		t.Errorf("%d live entries after the stream ended", e.live.count())
	}
}

// A session revoked while its request waits for the app's response headers
// must not leave the stream that follows running.
func TestForwardRevokeBeforeResponse(t *testing.T) {
	arrived := make(chan struct{})
	release := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: hello\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	defer upstream.Close()

	e, _ := testEdge(t)
	sess := newSession(t, alice)
	front := forwardTo(t, e, upstream.URL, AppConfig{Name: "wiki"}, sess)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", front+"/events", nil)
	respc := make(chan *http.Response, 1)
	errc := make(chan error, 1)
	go func() {
		resp, err := testClient(t).Do(req)
		if err != nil {
			errc <- err
			return
		}
		respc <- resp
	}()
	select {
	case <-arrived:
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(5 * time.Second):
		t.Fatal("request did not reach the upstream")
	}
	e.live.revokeSession(sess.Key, "session ended")
	close(release)

	var resp *http.Response
	select {
	case resp = <-respc:
	case err := <-errc:
		t.Logf("request failed after revocation, as it may: %v", err)
		return
	case <-time.After(5 * time.Second):
		t.Fatal("no response")
	}
	defer resp.Body.Close()
	readDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, resp.Body)
		readDone <- err
	}()
	select {
	case <-readDone:
	case <-time.After(2 * time.Second):
		cancel()
		<-readDone
		t.Error("a stream whose session was revoked before the app answered keeps running")
	}
}

// A WebSocket is registered and closed on revocation.
func TestForwardWebSocketCutOnRevoke(t *testing.T) {
	upgrader := websocket.Upgrader{}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	}))
	defer upstream.Close()

	e, _ := testEdge(t)
	sess := newSession(t, alice)
	front := forwardTo(t, e, upstream.URL, AppConfig{Name: "wiki"}, sess)

	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, resp, err := d.Dial("ws"+strings.TrimPrefix(front, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	defer conn.Close()
	if err := conn.WriteMessage(websocket.TextMessage, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, msg, err := conn.ReadMessage(); err != nil || string(msg) != "ping" {
		t.Fatalf("echo: %q, %v", msg, err)
	}
	if n := e.live.count(); n != 1 {
		t.Fatalf("WebSocket not registered: %d live entries", n)
	}
	e.live.revokeSession(sess.Key, "session ended")
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	if _, _, err := conn.ReadMessage(); err == nil {
		t.Fatal("WebSocket still open after revocation")
	} else if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
		t.Fatal("WebSocket still open 1s after revocation")
	}
	if !waitFor(t, "unregister", 5*time.Second, func() bool { return e.live.count() == 0 }) {
		t.Errorf("%d live entries after the WebSocket closed", e.live.count())
	}
}
