package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
)

// devWithAliceSignedIn starts the dev system with this machine enrolled as
// alice's device (as `ztna dev` does) and stores a session of hers in a
// new state directory, as `ztna tunnel login` would (the login itself is
// tested in integration/tunnel_login_test.go). The system stops when the
// test ends.
func devWithAliceSignedIn(t *testing.T, ctx context.Context) (*devenv.Env, string) {
	t.Helper()
	env, err := devenv.Start(ctx, devenv.Options{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", AdminListen: "off", IdPListen: "127.0.0.1:0",
		LocalDevice: true, Logger: slog.New(slog.DiscardHandler), GraceTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer ccancel()
		if err := env.Close(cctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	alice := env.Users[0]
	sess, err := env.Edge.Sessions().Create(ctx, authn.Identity{Subject: alice.Subject, Email: alice.Email,
		Groups: alice.Groups, Attributes: alice.Attributes}, authn.Tokens{})
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	if err := authn.SaveCLISession(stateDir, &tunnelSession{Edge: env.AuthOrigin, Token: sess.ID, User: alice.Subject,
		Email: alice.Email, ExpiresAt: sess.ExpiresAt}); err != nil {
		t.Fatal(err)
	}
	return env, stateDir
}

// TestTunnelForwardAndStatus runs `ztna tunnel status` and `ztna tunnel
// forward echo` against the dev system, with this machine enrolled as
// alice's device (as `ztna dev` does) and a stored session (the login
// itself is tested in integration/tunnel_login_test.go): the forwarded
// local port reaches the echo app, which greets alice.
func TestTunnelForwardAndStatus(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	env, stateDir := devWithAliceSignedIn(t, ctx)
	common := []string{"--state-dir", stateDir, "--agent-dir", env.AgentDir, "--ca-file", env.CAFile}

	var out, errOut strings.Builder
	if code := runTunnel(ctx, append([]string{"status"}, common...), &out, &errOut); code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut.String())
	}
	if s := out.String(); !strings.Contains(s, "over QUIC as alice@example.com (u-alice) from device "+env.LocalDeviceID) ||
		!strings.Contains(s, "  echo (tcp)\n") || !strings.Contains(s, "round trip to the edge: ") {
		t.Errorf("status output:\n%s", s)
	}
	out.Reset()
	if code := runTunnel(ctx, append([]string{"status", "--transport", "h2"}, common...), &out, &errOut); code != 0 {
		t.Fatalf("status over HTTP/2: exit %d: %s", code, errOut.String())
	}
	if s := out.String(); !strings.Contains(s, "over HTTP/2 over TLS") || !strings.Contains(s, "  echo (tcp)\n") {
		t.Errorf("status over HTTP/2:\n%s", s)
	}
	errOut.Reset()
	if code := runTunnel(ctx, append([]string{"status", "--transport", "carrier-pigeon"}, common...), io.Discard, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "want auto, quic or h2") {
		t.Errorf("bad --transport: exit %d, %q", code, errOut.String())
	}

	fctx, fcancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		code := runTunnel(fctx, append(append([]string{"forward"}, common...), "echo", "127.0.0.1:0"), pw, io.Discard)
		pw.Close()
		done <- code
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	m := regexp.MustCompile(`^echo on (127\.0\.0\.1:\d+)\n$`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("forward printed %q", line)
	}
	c, err := net.DialTimeout("tcp", m[1], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if greeting, err := br.ReadString('\n'); err != nil || !strings.Contains(greeting, "hello alice@example.com (u-alice)") {
		t.Fatalf("greeting %q, %v", greeting, err)
	}
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if echo, err := br.ReadString('\n'); err != nil || echo != "ping\n" {
		t.Fatalf("echo %q, %v", echo, err)
	}
	c.Close()
	fcancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("forward exited %d after interrupt", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("forward did not stop after interrupt")
	}

	// Without a stored session: one clear line.
	errOut.Reset()
	if code := runTunnel(ctx, []string{"status", "--state-dir", t.TempDir(), "--agent-dir", env.AgentDir}, io.Discard, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "ztna tunnel login") {
		t.Errorf("status without a session: exit %d, %q", code, errOut.String())
	}
}
