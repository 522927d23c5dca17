package integration

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ztna-dev/ztna/internal/devenv"
)

// maxCutOff is how long a live connection may outlive the trust it was
// allowed under (PRODUCT.md: "closes those no longer allowed within 1 s").
const maxCutOff = time.Second

// openEcho opens a WebSocket to whoami's echo as the holder of cookie and
// checks one round trip: the upstream verified the user it prefixes.
func openEcho(t *testing.T, env *devenv.Env, cookie, wantSubject string) *websocket.Conn {
	t.Helper()
	conn, resp, err := wsDial(t, env, "whoami", "/ws", cookie)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("WebSocket dial: %v (status %d)", err, status)
	}
	echo(t, conn, "hello", wantSubject)
	return conn
}

// echo sends msg and expects the upstream's "SUBJECT: msg" back.
func echo(t *testing.T, conn *websocket.Conn, msg, wantSubject string) {
	t.Helper()
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := conn.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatalf("WebSocket write: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, got, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("WebSocket read: %v", err)
	}
	if want := wantSubject + ": " + msg; string(got) != want {
		t.Fatalf("echo = %q, want %q", got, want)
	}
	_ = conn.SetReadDeadline(time.Time{})
}

// closedAt reads conn until it fails and reports when (the zero time if it
// is still open after 5s, which fails any cut-off check).
func closedAt(conn *websocket.Conn) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
					ch <- time.Time{}
					return
				}
				ch <- time.Now()
				return
			}
		}
	}()
	return ch
}

// expectCutOff waits for the close reported by ch and checks it came
// within maxCutOff of start.
func expectCutOff(t *testing.T, what string, start time.Time, ch <-chan time.Time) time.Duration {
	t.Helper()
	var at time.Time
	select {
	case at = <-ch:
	case <-time.After(10 * time.Second):
	}
	if at.IsZero() {
		t.Fatalf("%s: the live connection was not closed", what)
	}
	d := at.Sub(start)
	t.Logf("%s: closed %v after the trust change", what, d.Round(time.Millisecond))
	if d > maxCutOff {
		t.Errorf("%s: closed after %v, want within %v", what, d, maxCutOff)
	}
	return d
}

func TestWebSocketEcho(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	conn := openEcho(t, env, sessionCookie(t, env, alice, "whoami"), "u-alice")
	for _, m := range []string{"second", strings.Repeat("x", 10000)} {
		echo(t, conn, m, "u-alice")
	}
	// A binary frame too.
	if err := conn.WriteMessage(websocket.BinaryMessage, []byte{0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	mt, b, err := conn.ReadMessage()
	if err != nil || mt != websocket.BinaryMessage || string(b) != "u-alice: \x00\x01\x02" {
		t.Fatalf("binary echo: type %d %q %v", mt, b, err)
	}
	// The deny rules hold for upgrades too: carol is refused before the app.
	carol := loginFlow(t, env, "whoami", "/", "carol", carolPassword)
	_, resp, err := wsDial(t, env, "whoami", "/ws", sessionCookie(t, env, carol.Client, "whoami"))
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("carol's WebSocket: err %v resp %v, want 403", err, resp)
	}
}

// Ending a session closes its live WebSockets at once, and only its own.
func TestWebSocketClosedOnRevocation(t *testing.T) {
	env := newEnv(t)
	bob := loginAs(t, env, "whoami", "bob", bobPassword)
	bobConn := openEcho(t, env, sessionCookie(t, env, bob, "whoami"), "u-bob")

	for _, tc := range []struct {
		name   string
		revoke func(t *testing.T, c *http.Client, cookie string)
	}{
		{"sign-out", func(t *testing.T, c *http.Client, _ string) { logoutVia(t, env, c, "whoami") }},
		{"Sessions.Revoke", func(t *testing.T, _ *http.Client, cookie string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := env.Edge.Sessions().Revoke(ctx, sessionKey(cookie)); err != nil {
				t.Fatal(err)
			}
		}},
		{"back-channel logout", func(t *testing.T, _ *http.Client, _ string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := env.IdP.BackChannelLogout(ctx, "alice"); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice := loginAs(t, env, "whoami", "alice", alicePassword)
			cookie := sessionCookie(t, env, alice, "whoami")
			conn := openEcho(t, env, cookie, "u-alice")
			closed := closedAt(conn)
			start := time.Now()
			tc.revoke(t, alice, cookie)
			expectCutOff(t, tc.name, start, closed)

			_, resp, err := wsDial(t, env, "whoami", "/ws", cookie)
			if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("new WebSocket with the ended session: err %v resp %v, want 401", err, resp)
			}
			echo(t, bobConn, "still here", "u-bob")
		})
	}
}

// A streamed response (server-sent events) is cut when its session ends,
// on HTTP/2 and HTTP/3 alike.
func TestStreamClosedOnRevocation(t *testing.T) {
	env := newEnv(t)
	for _, proto := range []string{"h2", "h3"} {
		t.Run(proto, func(t *testing.T) {
			alice := loginAs(t, env, "whoami", "alice", alicePassword)
			cookie := sessionCookie(t, env, alice, "whoami")
			c := newClient(t, env)
			if proto == "h3" {
				c = h3Client(t, env)
			}
			req := withCookie(t, http.MethodGet, env.AppURL("whoami")+"/stream", cookie, asFetch)
			req.Header.Set("Accept", "text/event-stream")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := c.Do(req.WithContext(ctx))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				t.Fatalf("stream: status %d type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			if want := map[string]int{"h2": 2, "h3": 3}[proto]; resp.ProtoMajor != want {
				t.Fatalf("stream over %s", resp.Proto)
			}
			lines := bufio.NewScanner(resp.Body)
			for i := 0; i < 2; i++ { // two events: it streams
				if !lines.Scan() || !strings.HasPrefix(lines.Text(), "data: tick") {
					t.Fatalf("stream event %d: %q %v", i, lines.Text(), lines.Err())
				}
				lines.Scan() // the blank line after each event
			}
			ended := make(chan time.Time, 1)
			var readErr error
			go func() {
				for lines.Scan() {
				}
				readErr = lines.Err()
				ended <- time.Now()
			}()
			start := time.Now()
			rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer rcancel()
			if err := env.Edge.Sessions().Revoke(rctx, sessionKey(cookie)); err != nil {
				t.Fatal(err)
			}
			var at time.Time
			select {
			case at = <-ended:
			case <-time.After(5 * time.Second):
				t.Fatal("the stream went on after its session was revoked")
			}
			d := at.Sub(start)
			t.Logf("%s stream: ended %v after the revocation (%v)", proto, d.Round(time.Millisecond), readErr)
			// A cut stream must not look complete: a client reading to EOF
			// would take a truncated answer for the whole one.
			if readErr == nil {
				t.Errorf("%s stream: the cut-off stream ended cleanly (EOF); want a stream error", proto)
			}
			if d > maxCutOff {
				t.Errorf("%s stream: ended %v after the revocation, want within %v", proto, d, maxCutOff)
			}
		})
	}
}

// A policy change that takes a user's access away closes their live
// WebSockets; the users it still allows keep theirs.
func TestWebSocketClosedOnPolicyChange(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	bob := loginAs(t, env, "whoami", "bob", bobPassword)
	aliceConn := openEcho(t, env, sessionCookie(t, env, alice, "whoami"), "u-alice")
	bobConn := openEcho(t, env, sessionCookie(t, env, bob, "whoami"), "u-bob")
	closed := closedAt(aliceConn)

	cfg := currentConfig(env)
	whoamiRules(t, cfg)[1].Groups = []string{"finance"} // "employees": engineering no more
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := env.Edge.Apply(ctx, cfg); err != nil {
		t.Fatalf("apply: %v", err)
	}
	expectCutOff(t, "policy change", start, closed)

	echo(t, bobConn, "still allowed", "u-bob")
	_, resp, err := wsDial(t, env, "whoami", "/ws", sessionCookie(t, env, alice, "whoami"))
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("alice's new WebSocket after the change: err %v resp %v, want 403", err, resp)
	}
}
