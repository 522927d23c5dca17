package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/posture/agent"
)

// tunnelSession is what `ztna tunnel login` stored.
type tunnelSession = authn.CLISession

// loadTunnelSession reads the session `ztna tunnel login` stored in
// stateDir. Missing or expired, the error says to run `ztna tunnel login`.
func loadTunnelSession(stateDir string) (*tunnelSession, error) {
	return authn.LoadCLISession(stateDir, time.Now())
}

// defaultTunnelStateDir is os.UserConfigDir()/ztna/tunnel.
func defaultTunnelStateDir() (string, error) {
	d, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no user config directory (set --state-dir): %w", err)
	}
	return filepath.Join(d, "ztna", "tunnel"), nil
}

// openBrowser opens url in the user's browser; tests replace it.
var openBrowser = func(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.CommandContext(ctx, "open", url)
	case "windows":
		cmd = exec.CommandContext(ctx, "rundll32", "url.dll,FileProtocolHandler", url)
	default:
		cmd = exec.CommandContext(ctx, "xdg-open", url)
	}
	return cmd.Run()
}

func runTunnelLogin(args []string, stdout, stderr io.Writer) int {
	defDir, dirErr := defaultTunnelStateDir()
	fs := flag.NewFlagSet("tunnel login", flag.ContinueOnError)
	edge := fs.String("edge", "", "the edge's auth origin, https://AUTH_HOST[:PORT] (required)")
	caFile := fs.String("ca-file", "", "PEM file with an extra root CA for the edge's TLS certificate (e.g. the ztna dev CA)")
	stateDir := fs.String("state-dir", defDir, "where the signed-in session is kept (session.json, mode 0600)")
	noBrowser := fs.Bool("no-browser", false, "print the sign-in URL instead of opening a browser")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: ztna tunnel login --edge https://AUTH_HOST[:PORT] [flags]

Signs you in for the tunnel through your browser: it opens the edge's sign-in
page, where you sign in at your identity provider; the browser then hands a
one-time code back to this command on a 127.0.0.1 port, which trades it (with a
PKCE verifier only this command knows) for a session of your own. The session
is stored in the state directory, readable only by you. It waits at most 5
minutes.

Flags:
`)
		fs.PrintDefaults()
	}
	if code := tunnelFlags(fs, args, stderr); code >= 0 {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "ztna tunnel login: "+format+"\n", a...)
		return 1
	}
	if *edge == "" {
		fmt.Fprintln(stderr, "ztna tunnel login: --edge is required (the edge's auth origin, e.g. https://auth.example.com)")
		return 2
	}
	origin, err := agent.ParseServer(*edge)
	if err != nil {
		fmt.Fprintf(stderr, "ztna tunnel login: --edge: %v\n", err)
		return 2
	}
	if *stateDir == "" {
		if dirErr != nil {
			return fail("%v", dirErr)
		}
		fmt.Fprintln(stderr, "ztna tunnel login: --state-dir must not be empty")
		return 2
	}
	hc, err := edgeHTTPClient(*caFile)
	if err != nil {
		return fail("%v", err)
	}
	defer hc.CloseIdleConnections()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	login := &authn.CLILogin{Edge: origin, HTTPClient: hc, OpenBrowser: func(u string) error {
		if !*noBrowser {
			if err := openBrowser(ctx, u); err == nil {
				fmt.Fprintf(stdout, "Your browser has been opened to sign in. If it did not open, visit:\n\n  %s\n\n", u)
				return nil
			}
		}
		fmt.Fprintf(stdout, "Open this URL in a browser on this computer to sign in:\n\n  %s\n\n", u)
		return nil
	}}
	tok, err := login.Run(ctx)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fail("nobody signed in within %s; run it again", authn.CLILoginTimeout)
	case errors.Is(err, context.Canceled):
		return fail("interrupted")
	case err != nil:
		return fail("%v", err)
	}
	sess := &tunnelSession{Edge: origin, Token: tok.Token, User: tok.User, Email: tok.Email, ExpiresAt: tok.ExpiresAt}
	if err := authn.SaveCLISession(*stateDir, sess); err != nil {
		return fail("%v", err)
	}
	who := tok.User
	if tok.Email != "" {
		who = tok.Email + " (" + tok.User + ")"
	}
	fmt.Fprintf(stdout, "Signed in to %s as %s until %s.\nSession stored in %s.\n", origin, who,
		tok.ExpiresAt.Local().Format(time.RFC3339), filepath.Join(*stateDir, authn.CLISessionFile))
	return 0
}

func runTunnelLogout(args []string, stdout, stderr io.Writer) int {
	defDir, dirErr := defaultTunnelStateDir()
	fs := flag.NewFlagSet("tunnel logout", flag.ContinueOnError)
	stateDir := fs.String("state-dir", defDir, "the state directory 'ztna tunnel login' used")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: ztna tunnel logout [flags]

Forgets the session 'ztna tunnel login' stored on this computer. The session is
not yet ended at the edge: it stays valid there until it expires or an admin
revokes it.

Flags:
`)
		fs.PrintDefaults()
	}
	if code := tunnelFlags(fs, args, stderr); code >= 0 {
		return code
	}
	if *stateDir == "" {
		if dirErr != nil {
			fmt.Fprintf(stderr, "ztna tunnel logout: %v\n", dirErr)
			return 1
		}
		fmt.Fprintln(stderr, "ztna tunnel logout: --state-dir must not be empty")
		return 2
	}
	path := filepath.Join(*stateDir, authn.CLISessionFile)
	switch err := os.Remove(path); {
	case errors.Is(err, os.ErrNotExist):
		fmt.Fprintln(stdout, "Not signed in.")
	case err != nil:
		fmt.Fprintf(stderr, "ztna tunnel logout: %v\n", err)
		return 1
	default:
		fmt.Fprintf(stdout, "Signed out on this computer: removed %s.\n(The session stays valid at the edge until it expires or an admin revokes it.)\n", path)
	}
	return 0
}

// tunnelFlags parses args: -1 to go on, else the exit code (0 for -h).
func tunnelFlags(fs *flag.FlagSet, args []string, stderr io.Writer) int {
	switch err := parseFlags(fs, args, stderr); {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		return 2
	}
	return -1
}
