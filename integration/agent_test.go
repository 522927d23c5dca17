package integration

import (
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/posture/agent"
)

// `ztna agent enroll`'s client against the real edge: it prints a code, the
// user approves it in the browser, and the certificate it saves identifies
// the device.
func TestAgentEnrollsAgainstTheEdge(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", "alice-password")
	stateDir, id := enrollAgent(t, env, alice, "alice's laptop")
	st, err := agent.ReadStatus(stateDir)
	if err != nil || st.Expired {
		t.Fatalf("status after enrollment: %+v, %v", st, err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(stateDir, agent.CertFile), filepath.Join(stateDir, agent.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	r := getWithCookie(t, withDeviceCert(t, env, cert), env.AppURL("whoami")+"/?format=json", sessionCookie(t, env, alice, "whoami"))
	if r.StatusCode != http.StatusOK {
		t.Fatalf("whoami from the enrolled device: %d", r.StatusCode)
	}
	if rep := decodeReport(t, r.Body); rep.Claims == nil || rep.Claims.Device != id {
		t.Fatalf("device %q not identified: %+v", id, rep.Claims)
	}
}

// enrollAgent enrolls a new device named name for the user signed in with
// signedIn, the way `ztna agent enroll` does it (the device flow over HTTP,
// approved on the auth host), and returns the agent's state directory and
// the device ID.
func enrollAgent(t *testing.T, env *devenv.Env, signedIn *http.Client, name string) (stateDir, deviceID string) {
	t.Helper()
	stateDir = t.TempDir()
	out := &syncBuffer{}
	ec := &agent.EnrollClient{Server: env.AuthOrigin, HTTPClient: newClient(t, env), Out: out}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		id  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		id, err := ec.Enroll(ctx, stateDir, name)
		done <- result{id, err}
	}()
	finished := false
	defer func() { // on a failure below, stop the agent before leaving
		if !finished {
			cancel()
			<-done
		}
	}()
	codeRE := regexp.MustCompile(`(https://\S+\?code=\S+)`)
	var page string
	waitFor(t, 10*time.Second, "the agent to print the approval URL", func() bool {
		if m := codeRE.FindStringSubmatch(out.String()); m != nil {
			page = strings.TrimRight(m[1], ".,")
			return true
		}
		return false
	})
	r := get(t, signedIn, page, asNavigation)
	if r.StatusCode != http.StatusOK {
		t.Fatalf("approval page %s: %d %.300s", page, r.StatusCode, r.Body)
	}
	action, fields := formFields(t, r.Body)
	fields.Set("decision", "approve")
	req := newRequest(t, http.MethodPost, env.AuthOrigin+action, strings.NewReader(fields.Encode()), asNavigation)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if r := do(t, signedIn, req); r.StatusCode != http.StatusOK {
		t.Fatalf("approve: %d %.300s", r.StatusCode, r.Body)
	}
	var res result
	select {
	case res = <-done:
		finished = true
	case <-time.After(25 * time.Second):
		t.Fatalf("the agent did not finish enrolling; it printed:\n%s", out)
	}
	if res.err != nil {
		t.Fatalf("enroll: %v; it printed:\n%s", res.err, out)
	}
	return stateDir, res.id
}
