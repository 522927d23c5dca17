// Command ztna is the identity-aware zero-trust access proxy: one binary for
// the edge (`serve`), the whole system on one machine (`dev`), and, as they
// land, the endpoint agent, the client tunnel and the policy tools.
//
// This package only parses flags and wires packages together; behaviour
// lives in proxy, authn, groups, posture and web.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

const usage = `ztna — identity-aware zero-trust access proxy

Usage:
  ztna dev [flags]                             run the whole system on this machine (edge, dev IdP, demo apps)
  ztna serve --config FILE                     run the production edge
  ztna agent enroll|run|status                 enroll this device; report its posture on a schedule; show both
  ztna policy check|test|explain               validate a policy directory; run its tests (CI); explain one decision
  ztna tunnel login|logout|status|forward|up   reach TCP apps through the edge from this enrolled device
  ztna version                                 print the version

Run 'ztna COMMAND -h' for the flags of a command.
`

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "dev":
		err = runDev(ctx, args[1:], stdout, stderr)
	case "serve":
		err = runServe(ctx, args[1:], stderr)
	case "agent":
		err = runAgent(ctx, args[1:], stdout, stderr)
	case "policy":
		return runPolicy(args[1:], stdout, stderr)
	case "tunnel":
		return runTunnel(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "ztna", version)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "ztna: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if errors.Is(err, errUsage) {
			return 2
		}
		fmt.Fprintf(stderr, "ztna %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// errUsage means the flag package already printed what was wrong.
var errUsage = errors.New("usage")

// parseFlags parses args into fs, printing one clear line on a bad flag.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ztna %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}

// newLogger builds the process logger.
func newLogger(w io.Writer, format, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level)) // validated by config; "" → info
	opts := &slog.HandlerOptions{Level: lv}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
