package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ztna-dev/ztna/posture/agent"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

const tunnelUsage = `Usage: ztna tunnel COMMAND [flags]

Reaches TCP apps (SSH, databases, RDP, internal HTTP) through the edge over
QUIC (HTTP/2 over TLS where UDP is blocked), from this enrolled device, without a VPN: only the apps the policy opens
to you are reachable, every connection is authorized like a browser request,
and a trust change (signed out, device quarantined, posture failing, a role
change) cuts it.

Commands:
  login                  sign in through your browser (--device: on another device); the session is kept in --state-dir
  logout                 sign out: end the session at the edge, then forget it here
  status                 connect once: who you are, this device, the apps you may reach, or why not
  forward APP [LOCAL]    listen on LOCAL (default 127.0.0.1:0) and carry each connection to APP
  up                     keep the tunnel up with local listeners (--forward, --socks, --http-connect)

The device certificate comes from the agent (ztna agent enroll; --agent-dir).
Run 'ztna tunnel COMMAND -h' for the flags of a command.
`

// runTunnel runs `ztna tunnel …` and returns the exit status.
func runTunnel(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, tunnelUsage)
		return 2
	}
	var err error
	switch args[0] {
	case "login":
		return runTunnelLogin(args[1:], stdout, stderr)
	case "logout":
		return runTunnelLogout(args[1:], stdout, stderr)
	case "status":
		err = runTunnelStatus(ctx, args[1:], stdout, stderr)
	case "forward":
		err = runTunnelUp(ctx, "forward", args[1:], stdout, stderr)
	case "up":
		err = runTunnelUp(ctx, "up", args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, tunnelUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "ztna tunnel: unknown command %q\n\n%s", args[0], tunnelUsage)
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "ztna tunnel %s: %v\n", args[0], err)
	return 1
}

// tunnelOpts are the flags every connecting command shares.
type tunnelOpts struct {
	stateDir, agentDir, caFile, transport string
}

func (tf *tunnelOpts) register(fs *flag.FlagSet) {
	def, _ := defaultTunnelStateDir()
	fs.StringVar(&tf.stateDir, "state-dir", def, "where 'ztna tunnel login' keeps the session")
	fs.StringVar(&tf.agentDir, "agent-dir", defaultStateDir(), "the agent's state directory: this device's certificate")
	fs.StringVar(&tf.caFile, "ca-file", "", "PEM file with an extra root CA for the edge's certificate (e.g. the ztna dev CA)")
	fs.StringVar(&tf.transport, "transport", "auto", "auto (QUIC, or HTTP/2 over TLS when UDP is blocked), quic or h2")
}

// client builds the tunnel client: the stored session's edge and bearer,
// this device's certificate.
func (tf *tunnelOpts) client(logger *slog.Logger) (*tunnel.Client, error) {
	sess, err := loadTunnelSession(tf.stateDir)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(sess.Edge)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" {
		return nil, fmt.Errorf("%s: the stored edge %q is not an https URL; run 'ztna tunnel login' again", tf.stateDir, sess.Edge)
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	// *.localhost is this machine (RFC 6761), whatever the resolver says.
	addr := loopbackForLocalhost(net.JoinHostPort(u.Hostname(), port))
	cert, _, err := agent.DeviceCertificate(tf.agentDir)
	if err != nil {
		return nil, fmt.Errorf("device certificate: %w", err)
	}
	roots, err := rootsWith("--ca-file", tf.caFile)
	if err != nil {
		return nil, err
	}
	transport := tf.transport
	switch transport {
	case "auto", "":
		transport = tunnel.TransportAuto
	case tunnel.TransportQUIC, tunnel.TransportH2:
	default:
		return nil, fmt.Errorf("--transport %q: want auto, quic or h2", tf.transport)
	}
	token := sess.Token
	return &tunnel.Client{
		Addr:      addr,
		Transport: transport,
		TLSConfig: &tls.Config{RootCAs: roots, ServerName: u.Hostname(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		Token:     func(context.Context) (string, error) { return token, nil },
		Logger:    logger,
		Version:   version,
	}, nil
}

func runTunnelStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tunnel status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var tf tunnelOpts
	tf.register(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: ztna tunnel status [flags]

Connects once with the stored session and this device's certificate and prints
who you are, the device, the policy version and the apps you may reach — or why
the edge refused the tunnel (signed out, device not enrolled or quarantined).

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	c, err := tf.client(nil)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := c.Connect(cctx)
	if err != nil {
		return fmt.Errorf("not connected: %w", err)
	}
	defer conn.Close()
	w := conn.Welcome()
	via := "QUIC"
	if conn.Transport() == tunnel.TransportH2 {
		via = "HTTP/2 over TLS (QUIC did not connect: is UDP blocked?)"
	}
	fmt.Fprintf(stdout, "connected to %s over %s as %s (%s) from device %s; policy %s\n", c.Addr, via, w.Email, w.User, w.Device, w.Policy)
	if rtt, err := conn.Ping(cctx); err == nil {
		fmt.Fprintf(stdout, "round trip to the edge: %v\n", rtt.Round(10*time.Microsecond))
	}
	apps := conn.Apps()
	if len(apps) == 0 {
		fmt.Fprintln(stdout, "no app is open to you through the tunnel")
		return nil
	}
	fmt.Fprintln(stdout, "apps:")
	for _, a := range apps {
		if a.Unavailable != "" {
			fmt.Fprintf(stdout, "  %s (%s): unavailable from this device: %s\n", a.Name, a.Kind, a.Unavailable)
			continue
		}
		fmt.Fprintf(stdout, "  %s (%s)\n", a.Name, a.Kind)
	}
	return nil
}

// listSpec is a repeatable --forward APP=ADDR flag.
type listSpec []string

func (l *listSpec) String() string     { return strings.Join(*l, ",") }
func (l *listSpec) Set(v string) error { *l = append(*l, v); return nil }

// runTunnelUp keeps a tunnel session up and serves its local listeners
// until ctx is done. "forward APP [LOCAL]" is "up --forward APP=LOCAL".
func runTunnelUp(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tunnel "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var tf tunnelOpts
	tf.register(fs)
	var forwards listSpec
	socks, httpConnect := "", ""
	fs.Usage = func() {
		if name == "forward" {
			fmt.Fprint(fs.Output(), `Usage: ztna tunnel forward [flags] APP [LOCAL_ADDR]

Listens on LOCAL_ADDR (default 127.0.0.1:0; the address is printed) and carries
every connection to APP through the tunnel, until interrupted. The tunnel
reconnects by itself; a connection the edge closes says why.

Flags:
`)
		} else {
			fmt.Fprint(fs.Output(), `Usage: ztna tunnel up [flags]

Keeps the tunnel up, with local listeners: --forward APP=ADDR (repeatable),
--socks ADDR (SOCKS5, apps by name) and --http-connect ADDR (HTTP CONNECT, apps
by name). Only declared apps are reachable; IP addresses are refused.

Flags:
`)
		}
		fs.PrintDefaults()
	}
	if name == "up" {
		fs.Var(&forwards, "forward", "APP=LOCAL_ADDR: listen on LOCAL_ADDR and carry each connection to APP (repeatable)")
		fs.StringVar(&socks, "socks", "", "serve SOCKS5 on this address (e.g. 127.0.0.1:1080): tools reach apps by name")
		fs.StringVar(&httpConnect, "http-connect", "", "serve HTTP CONNECT on this address: tools reach apps by name")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if name == "forward" {
		rest := fs.Args()
		if len(rest) < 1 || len(rest) > 2 {
			fmt.Fprintln(stderr, "usage: ztna tunnel forward [flags] APP [LOCAL_ADDR]")
			return errUsage
		}
		local := "127.0.0.1:0"
		if len(rest) == 2 {
			local = rest[1]
		}
		forwards = append(forwards, rest[0]+"="+local)
	} else if fs.NArg() > 0 || (len(forwards) == 0 && socks == "" && httpConnect == "") {
		fmt.Fprintln(stderr, "ztna tunnel up: give at least one of --forward APP=ADDR, --socks ADDR, --http-connect ADDR")
		return errUsage
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c, err := tf.client(logger)
	if err != nil {
		return err
	}
	c.OnEvent = func(f tunnel.Frame) {
		switch f.Type {
		case tunnel.FrameClosed:
			fmt.Fprintf(stderr, "ztna tunnel: a connection was closed by the edge: %s\n", f.Reason)
		case tunnel.FrameBye:
			fmt.Fprintf(stderr, "ztna tunnel: the edge closed the tunnel: %s (reconnecting)\n", f.Reason)
		}
	}

	// Listeners first, so that a bad address fails before anything runs.
	type listener struct {
		ln    net.Listener
		serve func(context.Context, net.Listener) error
		what  string
	}
	var lns []listener
	closeAll := func() {
		for _, l := range lns {
			l.ln.Close()
		}
	}
	sess := &tunnel.Session{Client: c}
	for _, f := range forwards {
		app, addr, ok := strings.Cut(f, "=")
		if !ok || !tunnel.ValidAppName(app) || addr == "" {
			closeAll()
			fmt.Fprintf(stderr, "ztna tunnel: --forward %q: want APP=HOST:PORT\n", f)
			return errUsage
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen for %s: %w", app, err)
		}
		lns = append(lns, listener{ln: ln, what: app, serve: func(ctx context.Context, ln net.Listener) error {
			return tunnel.Forward(ctx, ln, func(ctx context.Context) (net.Conn, error) { return sess.Dial(ctx, app) }, logger)
		}})
	}
	for _, l := range []struct{ addr, what string }{{socks, "SOCKS5"}, {httpConnect, "HTTP CONNECT"}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen for %s: %w", l.what, err)
		}
		serve := tunnel.ServeSOCKS5
		if l.what == "HTTP CONNECT" {
			serve = tunnel.ServeHTTPConnect
		}
		lns = append(lns, listener{ln: ln, what: l.what, serve: func(ctx context.Context, ln net.Listener) error {
			return serve(ctx, ln, sess.Dial, logger)
		}})
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var runErr error
	runDone := make(chan struct{})
	wg.Go(func() {
		runErr = sess.Run(ctx)
		close(runDone)
	})
	for _, l := range lns {
		fmt.Fprintf(stdout, "%s on %s\n", l.what, l.ln.Addr())
		wg.Go(func() {
			if err := l.serve(ctx, l.ln); err != nil {
				logger.Warn("local listener stopped", "what", l.what, "err", err)
			}
		})
	}
	// Until interrupted, or until the session gives up for good (signed
	// out, device refused).
	select {
	case <-ctx.Done():
	case <-runDone:
	}
	cancel()
	sess.Close()
	closeAll()
	wg.Wait()
	if runErr != nil && !errors.Is(runErr, context.Canceled) && !errors.Is(runErr, tunnel.ErrSessionClosed) {
		return runErr
	}
	return nil
}
