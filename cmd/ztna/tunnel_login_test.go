package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
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
)

// fakeCLIEdge plays the edge's side of the native-app login: it remembers
// the challenge of the login link and checks the verifier of the exchange.
type fakeCLIEdge struct {
	srv    *httptest.Server
	caFile string
	refuse bool // answer every exchange with invalid_grant

	mu                          sync.Mutex
	challenge, redirectURI, bad string
}

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
	case authn.PathCLIToken:
		_ = r.ParseForm()
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
	if code := runTunnelLogout([]string{"--state-dir", dir}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "Signed out") {
		t.Fatalf("logout: exit %d, %q", code, stdout.String())
	}
	if _, err := loadTunnelSession(dir); err == nil || !strings.Contains(err.Error(), "run 'ztna tunnel login'") {
		t.Errorf("after logout: %v, want a hint to run ztna tunnel login", err)
	}
	stdout.Reset()
	if code := runTunnelLogout([]string{"--state-dir", dir}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "Not signed in") {
		t.Errorf("second logout: exit %d, %q", code, stdout.String())
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
