package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// fakeCLIEdge plays the edge's side of the native-app login: it remembers
// the challenge of the login link and checks the verifier of the exchange.
type fakeCLIEdge struct {
	srv    *httptest.Server
	caFile string
	refuse bool // answer every exchange with invalid_grant

	mu                          sync.Mutex
	challenge, redirectURI, bad string
	deviceStarts                []url.Values // the device grant starts' forms
	revoked                     []string     // bearers POSTed to the logout
}

const fakeDeviceCode = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA" // shape of a session ID

const fakeToken = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" // shape of a session ID

func newFakeCLIEdge(t *testing.T) *fakeCLIEdge {
	t.Helper()
	f := &fakeCLIEdge{}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	f.caFile = filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	if err := os.WriteFile(f.caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeCLIEdge) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.URL.Path {
	case authn.PathCLILogin:
		q := r.URL.Query()
		if q.Get("code_challenge_method") != "S256" {
			f.bad = "method " + q.Get("code_challenge_method")
		}
		f.challenge, f.redirectURI = q.Get("code_challenge"), q.Get("redirect_uri")
		w.WriteHeader(http.StatusOK)
	case authn.PathCLIDevice:
		_ = r.ParseForm()
		f.deviceStarts = append(f.deviceStarts, r.PostForm)
		page := f.srv.URL + authn.PathCLIDevice
		_ = json.NewEncoder(w).Encode(authn.DeviceGrantStart{DeviceCode: fakeDeviceCode, UserCode: "BCDF-GHJK",
			VerificationURI: page, VerificationURIComplete: page + "?user_code=BCDF-GHJK", ExpiresIn: 600, Interval: 5})
	case authn.PathCLILogout:
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || r.Method != http.MethodPost {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		f.revoked = append(f.revoked, token)
		w.WriteHeader(http.StatusNoContent)
	case authn.PathCLIToken:
		_ = r.ParseForm()
		if r.PostForm.Get("grant_type") == authn.DeviceCodeGrantType {
			if f.refuse || r.PostForm.Get("device_code") != fakeDeviceCode {
				w.WriteHeader(http.StatusBadRequest)
				_, _ = w.Write([]byte(`{"error":"access_denied"}`))
				return
			}
			_ = json.NewEncoder(w).Encode(authn.CLIToken{Token: fakeToken, User: "u-alice", Email: "alice@example.com", ExpiresAt: time.Now().Add(time.Hour).UTC().Truncate(time.Second)})
			return
		}
		h := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
		if f.refuse || r.PostForm.Get("code") != fakeToken || base64.RawURLEncoding.EncodeToString(h[:]) != f.challenge || r.PostForm.Get("redirect_uri") != f.redirectURI {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_grant"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(authn.CLIToken{Token: fakeToken, User: "u-alice", Email: "alice@example.com", ExpiresAt: time.Now().Add(time.Hour).UTC().Truncate(time.Second)})
	default:
		http.NotFound(w, r)
	}
}

// useBrowser replaces the browser with one that opens the login link on the
// fake edge and then comes back to the loopback listener with a code.
func (f *fakeCLIEdge) useBrowser(t *testing.T) {
	t.Helper()
	prev := openBrowser
	t.Cleanup(func() { openBrowser = prev })
	openBrowser = func(ctx context.Context, loginURL string) error {
		resp, err := f.srv.Client().Get(loginURL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		u, _ := url.Parse(loginURL)
		q := u.Query()
		resp, err = http.Get(q.Get("redirect_uri") + "?code=" + fakeToken + "&state=" + url.QueryEscape(q.Get("state")))
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
}

func TestTunnelLoginLogout(t *testing.T) {
	f := newFakeCLIEdge(t)
	f.useBrowser(t)
	dir := filepath.Join(t.TempDir(), "tunnel")
	var stdout, stderr bytes.Buffer
	if code := runTunnelLogin([]string{"--edge", f.srv.URL, "--ca-file", f.caFile, "--state-dir", dir}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d; stderr %s", code, stderr.String())
	}
	if f.bad != "" {
		t.Fatal(f.bad)
	}
	if !strings.Contains(stdout.String(), "Signed in to "+f.srv.URL+" as alice@example.com (u-alice)") {
		t.Errorf("stdout %q", stdout.String())
	}
	if strings.Contains(stdout.String()+stderr.String(), fakeToken) {
		t.Error("the token was printed")
	}
	if runtime.GOOS != "windows" {
		fi, err := os.Stat(filepath.Join(dir, "session.json"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("session.json: %v, %v; want mode 0600", fi, err)
		}
	}
	sess, err := loadTunnelSession(dir)
	if err != nil {
		t.Fatal(err)
	}
	if sess.Edge != f.srv.URL || sess.Token != fakeToken || sess.User != "u-alice" || sess.Email != "alice@example.com" {
		t.Errorf("stored %+v", sess)
	}

	stdout.Reset()
	if code := runTunnelLogout([]string{"--state-dir", dir, "--ca-file", f.caFile}, &stdout, &stderr); code != 0 ||
		!strings.Contains(stdout.String(), "Signed out: the session was ended at the edge") {
		t.Fatalf("logout: exit %d, %q, %q", code, stdout.String(), stderr.String())
	}
	f.mu.Lock()
	if len(f.revoked) != 1 || f.revoked[0] != fakeToken {
		t.Errorf("the edge saw logouts %q, want one with the session's bearer", f.revoked)
	}
	f.mu.Unlock()
	if _, err := loadTunnelSession(dir); err == nil || !strings.Contains(err.Error(), "run 'ztna tunnel login'") {
		t.Errorf("after logout: %v, want a hint to run ztna tunnel login", err)
	}
	stdout.Reset()
	if code := runTunnelLogout([]string{"--state-dir", dir}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "Not signed in") {
		t.Errorf("second logout: exit %d, %q", code, stdout.String())
	}
}

// TestTunnelLoginDevice: --device prints the address and the code on
// stderr, polls, and stores the session like the browser login.
func TestTunnelLoginDevice(t *testing.T) {
	f := newFakeCLIEdge(t)
	prev := openBrowser
	t.Cleanup(func() { openBrowser = prev })
	openBrowser = func(context.Context, string) error {
		t.Error("--device opened a browser")
		return nil
	}
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := runTunnelLogin([]string{"--edge", f.srv.URL, "--ca-file", f.caFile, "--state-dir", dir, "--device"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d; stderr %s", code, stderr.String())
	}
	for _, want := range []string{f.srv.URL + authn.PathCLIDevice + "\n", "BCDF-GHJK", "?user_code=BCDF-GHJK", "Approve only if it is the same code"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if strings.Contains(stdout.String()+stderr.String(), fakeDeviceCode) || strings.Contains(stdout.String()+stderr.String(), fakeToken) {
		t.Error("a secret was printed")
	}
	if !strings.Contains(stdout.String(), "Signed in to "+f.srv.URL+" as alice@example.com (u-alice)") {
		t.Errorf("stdout %q", stdout.String())
	}
	f.mu.Lock()
	if len(f.deviceStarts) != 1 || !strings.HasPrefix(f.deviceStarts[0].Get("client"), "ztna-cli/") {
		t.Errorf("device starts %v", f.deviceStarts)
	}
	f.mu.Unlock()
	if sess, err := loadTunnelSession(dir); err != nil || sess.Token != fakeToken || sess.Edge != f.srv.URL {
		t.Errorf("stored %+v, %v", sess, err)
	}

	// Denied in the browser: exit 1, nothing stored.
	f.mu.Lock()
	f.refuse = true
	f.mu.Unlock()
	dir = t.TempDir()
	stdout.Reset()
	stderr.Reset()
	if code := runTunnelLogin([]string{"--edge", f.srv.URL, "--ca-file", f.caFile, "--state-dir", dir, "--device"}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "denied") {
		t.Fatalf("denied: exit %d, %q", code, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "session.json")); !os.IsNotExist(err) {
		t.Errorf("a denied login stored a session: %v", err)
	}
}

// TestTunnelLoginFallsBackToDevice: when no browser can be opened, the
// login says so and continues with the device grant.
func TestTunnelLoginFallsBackToDevice(t *testing.T) {
	f := newFakeCLIEdge(t)
	prev := openBrowser
	t.Cleanup(func() { openBrowser = prev })
	openBrowser = func(context.Context, string) error { return errNoDisplay }
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := runTunnelLogin([]string{"--edge", f.srv.URL, "--ca-file", f.caFile, "--state-dir", dir}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d; stderr %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "Could not open a browser here (no graphical display") || !strings.Contains(stderr.String(), "BCDF-GHJK") {
		t.Errorf("stderr %q", stderr.String())
	}
	if sess, err := loadTunnelSession(dir); err != nil || sess.Token != fakeToken {
		t.Errorf("stored %+v, %v", sess, err)
	}
}

// TestTunnelLogoutEdgeUnreachable: the file goes anyway, and the command
// says clearly, with a failing status, that the edge still has the session.
func TestTunnelLogoutEdgeUnreachable(t *testing.T) {
	f := newFakeCLIEdge(t)
	dir := t.TempDir()
	if err := authn.SaveCLISession(dir, &tunnelSession{Edge: f.srv.URL, Token: fakeToken, User: "u-alice", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	f.srv.Close()
	var stdout, stderr bytes.Buffer
	if code := runTunnelLogout([]string{"--state-dir", dir, "--ca-file", f.caFile}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1; stderr %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "could NOT be ended at the edge") || !strings.Contains(stderr.String(), "stays valid there") {
		t.Errorf("stderr %q", stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, authn.CLISessionFile)); !os.IsNotExist(err) {
		t.Errorf("session.json still there: %v", err)
	}

	// An expired session needs no edge: removed, status 0.
	if err := authn.SaveCLISession(dir, &tunnelSession{Edge: f.srv.URL, Token: fakeToken, User: "u-alice", ExpiresAt: time.Now().Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if code := runTunnelLogout([]string{"--state-dir", dir}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "Signed out") {
		t.Errorf("expired session: exit %d, %q", code, stdout.String())
	}
	// A damaged file is removed too, with a failing status.
	if err := os.WriteFile(filepath.Join(dir, authn.CLISessionFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	if code := runTunnelLogout([]string{"--state-dir", dir}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "could NOT be ended") {
		t.Errorf("damaged file: exit %d, %q", code, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, authn.CLISessionFile)); !os.IsNotExist(err) {
		t.Errorf("damaged session.json still there: %v", err)
	}
}

func TestTunnelLoginRefused(t *testing.T) {
	f := newFakeCLIEdge(t)
	f.refuse = true
	f.useBrowser(t)
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := runTunnelLogin([]string{"--edge", f.srv.URL, "--ca-file", f.caFile, "--state-dir", dir}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "invalid_grant") {
		t.Errorf("stderr %q", stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "session.json")); !os.IsNotExist(err) {
		t.Errorf("a refused login stored a session: %v", err)
	}
}

func TestTunnelLoginUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "--edge is required"},
		{[]string{"--edge", "http://auth.example"}, 2, "https://"},
		{[]string{"--edge", "https://auth.example/path"}, 2, "without a path"},
		{[]string{"--edge", "https://auth.example", "extra"}, 2, "unexpected argument"},
		{[]string{"--edge", "https://auth.example", "--state-dir", ""}, 2, "--state-dir"},
		{[]string{"--edge", "https://auth.example", "--device", "--no-browser"}, 2, "exclude each other"},
		{[]string{"--nope"}, 2, "flag provided but not defined"},
		{[]string{"-h"}, 0, "Usage: ztna tunnel login"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := runTunnelLogin(tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("login %q: exit %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), tt.code, tt.want)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := runTunnelLogout([]string{"extra"}, &stdout, &stderr); code != 2 {
		t.Errorf("logout with an argument: exit %d", code)
	}
}

// TestTunnelLogoutRevokesAtTheEdge runs `ztna tunnel logout` against the
// dev system: the edge ends the session — its live tunnel is cut, and the
// same bearer is refused afterwards — and session.json is gone.
func TestTunnelLogoutRevokesAtTheEdge(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	env, stateDir := devWithAliceSignedIn(t, ctx)
	stored, err := authn.LoadCLISession(stateDir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	connect := func(dir string) (*tunnel.Conn, error) {
		tf := &tunnelOpts{stateDir: dir, agentDir: env.AgentDir, caFile: env.CAFile}
		c, err := tf.client(nil)
		if err != nil {
			t.Fatal(err)
		}
		return c.Connect(ctx)
	}
	conn, err := connect(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if w := conn.Welcome(); w.User != stored.User {
		t.Fatalf("welcome %+v", w)
	}

	var stdout, stderr bytes.Buffer
	if code := runTunnelLogout([]string{"--state-dir", stateDir, "--ca-file", env.CAFile}, &stdout, &stderr); code != 0 {
		t.Fatalf("logout: exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "ended at the edge") {
		t.Errorf("stdout %q", stdout.String())
	}
	if _, err := os.Stat(filepath.Join(stateDir, authn.CLISessionFile)); !os.IsNotExist(err) {
		t.Errorf("session.json after logout: %v", err)
	}
	select {
	case <-conn.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the live tunnel survived the logout")
	}
	if _, err := env.Edge.Sessions().Get(ctx, stored.Token); !errors.Is(err, authn.ErrNoSession) {
		t.Errorf("the session after logout: %v", err)
	}
	// The same bearer, stored again, is refused by the edge.
	again := t.TempDir()
	if err := authn.SaveCLISession(again, stored); err != nil {
		t.Fatal(err)
	}
	_, err = connect(again)
	if ae := new(tunnel.AuthError); !errors.As(err, &ae) || ae.Code != "unauthenticated" {
		t.Fatalf("connect with the revoked token: %v, want an unauthenticated AuthError", err)
	}
}
