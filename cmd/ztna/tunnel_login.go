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

// errNoDisplay: there is no graphical session to open a browser in.
var errNoDisplay = errors.New("no graphical display (DISPLAY and WAYLAND_DISPLAY are unset)")

// openBrowser opens url in the user's browser; tests replace it. It fails
// where no browser can appear (a Linux/BSD session without a display, such
// as SSH), rather than start a terminal browser over the command.
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
		if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
			return errNoDisplay
		}
		cmd = exec.CommandContext(ctx, "xdg-open", url)
	}
	return cmd.Run()
}

// browserFailed carries why the browser could not be opened out of
// CLILogin.Run, so the login can switch to the device grant.
type browserFailed struct{ err error }

func (e *browserFailed) Error() string { return "could not open a browser: " + e.err.Error() }

func runTunnelLogin(args []string, stdout, stderr io.Writer) int {
	defDir, dirErr := defaultTunnelStateDir()
	fs := flag.NewFlagSet("tunnel login", flag.ContinueOnError)
	edge := fs.String("edge", "", "the edge's auth origin, https://AUTH_HOST[:PORT] (required)")
	caFile := fs.String("ca-file", "", "PEM file with an extra root CA for the edge's TLS certificate (e.g. the ztna dev CA)")
	stateDir := fs.String("state-dir", defDir, "where the signed-in session is kept (session.json, mode 0600)")
	noBrowser := fs.Bool("no-browser", false, "print the sign-in URL instead of opening a browser (open it on this computer)")
	device := fs.Bool("device", false, "sign in with a code confirmed in a browser on any device (no browser needed here)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: ztna tunnel login --edge https://AUTH_HOST[:PORT] [flags]

Signs you in for the tunnel through your browser: it opens the edge's sign-in
page, where you sign in at your identity provider; the browser then hands a
one-time code back to this command on a 127.0.0.1 port, which trades it (with a
PKCE verifier only this command knows) for a session of your own. The session
is stored in the state directory, readable only by you. It waits at most 5
minutes.

With --device, or by itself when no browser can be opened here (an SSH
session, no display), it prints an address and a code instead: open the
address in a browser on any device, sign in, check that the page shows the
same code and approve. This command waits (at most 10 minutes) and then
stores the session the same way. Approve only codes you started yourself.

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
	if *device && *noBrowser {
		fmt.Fprintln(stderr, "ztna tunnel login: --device and --no-browser exclude each other")
		return 2
	}
	hc, err := edgeHTTPClient(*caFile)
	if err != nil {
		return fail("%v", err)
	}
	defer hc.CloseIdleConnections()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var tok *authn.CLIToken
	if !*device {
		login := &authn.CLILogin{Edge: origin, HTTPClient: hc, OpenBrowser: func(u string) error {
			if *noBrowser {
				fmt.Fprintf(stdout, "Open this URL in a browser on this computer to sign in:\n\n  %s\n\n", u)
				return nil
			}
			if err := openBrowser(ctx, u); err != nil {
				return &browserFailed{err}
			}
			fmt.Fprintf(stdout, "Your browser has been opened to sign in. If it did not open, visit:\n\n  %s\n\n", u)
			return nil
		}}
		tok, err = login.Run(ctx)
		if bf := (*browserFailed)(nil); errors.As(err, &bf) {
			fmt.Fprintf(stderr, "Could not open a browser here (%v): signing in with a code instead.\n\n", bf.err)
			*device = true
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return fail("nobody signed in within %s; run it again", authn.CLILoginTimeout)
		}
	}
	if *device {
		host, _ := os.Hostname()
		dl := &authn.CLIDeviceLogin{Edge: origin, HTTPClient: hc, Client: "ztna-cli/" + version, Host: host,
			Prompt: func(p authn.DeviceGrantPrompt) {
				fmt.Fprintf(stderr, "To sign in, open this address in a browser on any device:\n\n  %s\n\n"+
					"sign in, and check that the page shows the code\n\n  %s\n\n"+
					"(or open %s). Approve only if it is the same code.\nWaiting for approval (at most %s)...\n",
					p.VerificationURI, p.UserCode, p.VerificationURIComplete, p.ExpiresIn.Round(time.Minute))
			}}
		tok, err = dl.Run(ctx)
	}
	switch {
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
	caFile := fs.String("ca-file", "", "PEM file with an extra root CA for the edge's TLS certificate (e.g. the ztna dev CA)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: ztna tunnel logout [flags]

Signs out: ends the session 'ztna tunnel login' stored at the edge (which also
closes its tunnels), then removes it from this computer. If the edge cannot be
reached, the session file is removed anyway and the command says that the
session could not be ended at the edge and exits with status 1: it then stays
valid there until it expires or an admin revokes it.

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
	sess, readErr := authn.ReadCLISession(*stateDir)
	if errors.Is(readErr, authn.ErrNoCLISession) {
		fmt.Fprintln(stdout, "Not signed in.")
		return 0
	}
	var revokeErr error
	switch {
	case readErr != nil:
		revokeErr = readErr
	case sess.Expired(time.Now()):
		// Expired: the edge has ended it already.
	default:
		hc, err := edgeHTTPClient(*caFile)
		if err != nil {
			fmt.Fprintf(stderr, "ztna tunnel logout: %v\n", err)
			return 2
		}
		defer hc.CloseIdleConnections()
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		revokeErr = authn.RevokeCLISession(ctx, hc, sess)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "ztna tunnel logout: %v\n", err)
		return 1
	}
	if revokeErr != nil {
		fmt.Fprintf(stderr, "ztna tunnel logout: removed %s, but the session could NOT be ended at the edge: %v\n"+
			"It stays valid there until it expires or an admin revokes it.\n", path, revokeErr)
		return 1
	}
	fmt.Fprintf(stdout, "Signed out: the session was ended at the edge and %s removed.\n", path)
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
