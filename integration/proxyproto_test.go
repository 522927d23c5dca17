package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
)

// Every dev app sits behind PROXY v2 with a signed identity TLV: whoami
// reports the identity it verified on the connection as well as the one in
// the assertion header. They must be the same user, every time.
func TestProxyV2IdentityReachesTheApp(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", "alice-password")
	rep := whoamiAs(t, alice, env, "whoami", "/")
	if rep.ProxyIdentity == nil {
		t.Fatalf("whoami saw no PROXY v2 identity: %+v", rep)
	}
	pi := rep.ProxyIdentity
	if pi.Subject != "u-alice" || pi.Email != "alice@example.com" || pi.Audience != "whoami" {
		t.Errorf("PROXY identity %+v, want alice for whoami", pi)
	}
	if !strings.HasPrefix(rep.ProxyClient, "127.0.0.1:") {
		t.Errorf("PROXY client address %q, want the real client 127.0.0.1:*", rep.ProxyClient)
	}
	if len(rep.ProxyUniqueID) != 16 || rep.ProxyUniqueID != pi.SessionID {
		t.Errorf("PROXY unique id %q should be the session reference %q (as in the audit log)", rep.ProxyUniqueID, pi.SessionID)
	}
	if !rep.Verified || rep.Claims.Subject != pi.Subject {
		t.Errorf("header assertion %+v and PROXY identity %+v disagree", rep.Claims, pi)
	}
}

// Two users' requests interleaved through one edge to a PROXY v2 app: each
// request arrives on a connection whose identity is its own user's.
func TestProxyV2ConnectionsNeverCrossIdentities(t *testing.T) {
	env := newEnv(t)
	users := []struct{ name, password, sub string }{
		{"alice", "alice-password", "u-alice"},
		{"bob", "bob-password", "u-bob"},
		{"admin", "admin-password", "u-admin"},
	}
	type client struct {
		sub    string
		cookie string
	}
	var clients []client
	for _, u := range users {
		c := loginAs(t, env, "whoami", u.name, u.password)
		clients = append(clients, client{u.sub, sessionCookie(t, env, c, "whoami")})
	}
	hc := newClient(t, env)
	hc.Transport.(*http.Transport).MaxIdleConnsPerHost = 16

	const perUser = 60
	var wg sync.WaitGroup
	errs := make(chan error, len(clients)*perUser)
	for _, c := range clients {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range perUser / 4 {
					if err := checkOwnIdentity(hc, env.AppURL("whoami")+"/?format=json", c.cookie, c.sub); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func checkOwnIdentity(hc *http.Client, url, cookie, sub string) error {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	req.AddCookie(&http.Cookie{Name: authn.SessionCookie, Value: cookie})
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %d", sub, resp.StatusCode)
	}
	var rep devenv.WhoamiReport
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&rep); err != nil {
		return err
	}
	switch {
	case rep.ProxyIdentity == nil:
		return fmt.Errorf("%s: request arrived without a PROXY identity", sub)
	case rep.ProxyIdentity.Subject != sub:
		return fmt.Errorf("%s's request arrived on %s's connection", sub, rep.ProxyIdentity.Subject)
	case rep.User != sub || !rep.Verified || rep.Claims.Subject != sub:
		return fmt.Errorf("%s: header identity %q / %+v", sub, rep.User, rep.Claims)
	}
	return nil
}

// A raw TCP app with proxy_protocol v2: the edge dials it with the user's
// identity, and the app (the dev echo server, using the verifier package)
// greets the right user. Users reach TCP apps through the tunnel; here the
// test calls the edge's dialer the tunnel will use.
func TestProxyV2TCPAppGetsTheIdentity(t *testing.T) {
	env := newEnv(t)
	for _, u := range []struct{ name, password, email string }{
		{"alice", "alice-password", "alice@example.com"},
		{"admin", "admin-password", "admin@example.com"},
	} {
		c := loginAs(t, env, "whoami", u.name, u.password)
		cookie := sessionCookie(t, env, c, "whoami")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		sess, err := env.Edge.Sessions().Get(ctx, cookie)
		if err != nil {
			t.Fatal(err)
		}
		client := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 50000}
		local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8443}
		conn, err := env.Edge.DialTCP(ctx, "echo", sess, "", client, local)
		if err != nil {
			t.Fatalf("dial echo: %v", err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(conn)
		greeting, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: read greeting: %v", u.name, err)
		}
		if !strings.Contains(greeting, u.email) || !strings.Contains(greeting, `app "echo"`) || !strings.Contains(greeting, "192.0.2.10:50000") {
			t.Errorf("%s: greeting %q should name %s, the app and the client address", u.name, greeting, u.email)
		}
		fmt.Fprintf(conn, "ping %s\n", u.name)
		echo, err := br.ReadString('\n')
		if err != nil || echo != "ping "+u.name+"\n" {
			t.Errorf("%s: echo %q, %v", u.name, echo, err)
		}
		conn.Close()
		cancel()
	}

	// Without the edge's header, the app refuses the connection.
	raw, err := net.DialTimeout("tcp", env.EchoAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	fmt.Fprintf(raw, "hello, I am alice\n")
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(raw); err == nil && len(b) > 0 {
		t.Errorf("echo answered a connection without a PROXY identity: %q", b)
	}
}
