// Command bench measures what the edge costs per request: HTTP/1.1
// keep-alive requests with small responses, each carrying a logged-in
// session, through the full ztna pipeline (route → identify → authorize →
// audit → forward with a signed identity), compared in the same run with a
// bare httputil.ReverseProxy, with the upstream alone, and with the same
// pipeline to an app behind PROXY v2 (the signed identity in the header of
// each pooled upstream connection, verified by the app's
// identity.NewListener). It also measures how many new connections per
// second a tunnel could open to a TCP app, plain and through Edge.DialTCP
// with the PROXY v2 identity. `make bench` runs it and the README reports
// its tables.
//
// How: the harness re-executes itself as a server child pinned to one CPU
// (taskset, GOMAXPROCS=1) that runs the upstream, the bare proxy and the
// real edge (devenv: dev IdP, bolt sessions, audit to a file) in one
// process, and logs in once as a demo user through the real OIDC flow. wrk,
// pinned to another CPU, loads each target in turn; the harness reads the
// child's CPU time from /proc before and after each run and asks the
// upstream how many requests arrived, how many carried X-Ztna-Assertion and
// how many came on a connection with a verified PROXY v2 identity. The
// new-connection rates are measured inside the child (the harness sends it
// a command), so the dialers' CPU is counted on the child's CPU.
// The targets are reached by URL only, so a faster forwarding core inside
// the edge is measured by the same command without changing this harness.
//
// Then the client tunnel (tunnel.go): 1 GiB through one stream each way
// through the real tunnel client and the child's edge, through a bare
// quic-go stream relay in the child, and over plain TCP, all to the same
// TCP sink in the child, which counts the bytes; streams opened per second
// on one tunnel connection; and the edge's memory per connected client and
// per idle stream, read in the child. For these the harness itself runs
// the clients, pinned to the other CPU.
//
// It must never: bind anything but 127.0.0.1, print the session cookie (it
// reaches wrk through a 0600 script file, not the command line), leave a
// child or wrk process behind, or report figures from a run in which a
// target answered with errors or the edge forwarded requests without an
// identity.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags of the harness.
type options struct {
	duration    time.Duration
	warmup      time.Duration
	connections int
	rounds      int
	serverCPU   int
	clientCPU   int
	cpuProfile  string
	target      float64
	strict      bool

	dialDuration time.Duration
	dialWarmup   time.Duration
	dialWorkers  int

	httpBench     bool
	tunnel        bool
	tunnelMiB     int
	tunnelRounds  int
	tunnelClients int
	tunnelStreams int
	tunnelTarget  float64
}

func main() {
	var o options
	serve := flag.Bool("serve", false, "internal: run as the server child (started by the harness itself)")
	idleAddr := flag.String("tunnel-idle-app", "", "internal: the harness's idle TCP app, declared on the child's edge")
	flag.DurationVar(&o.duration, "duration", 8*time.Second, "measured duration of each wrk run")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "warm-up before each measured run (not counted)")
	flag.IntVar(&o.connections, "connections", 32, "keep-alive connections wrk keeps open")
	flag.IntVar(&o.rounds, "rounds", 3, "how many times the four targets (direct, bare, ztna, ztna+PPv2) are measured; the table shows the median")
	flag.IntVar(&o.serverCPU, "server-cpu", -1, "CPU the server child (upstream + proxies) is pinned to; -1 → the second allowed CPU")
	flag.IntVar(&o.clientCPU, "client-cpu", -1, "CPU wrk is pinned to; -1 → the first allowed CPU")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "after the measured rounds, run the ztna target once more with the child's CPU profile written to this file")
	flag.Float64Var(&o.target, "target", 0.80, "the goal: ztna req/s ÷ bare-proxy req/s")
	flag.BoolVar(&o.strict, "require-target", false, "exit non-zero (3) when a goal (-target, -tunnel-target, idle-stream memory) is not met")
	flag.DurationVar(&o.dialDuration, "dial-duration", 3*time.Second, "measured duration of each new-connection run (plain, PROXY v2) and of each tunnel streams-per-second run; 0 skips them")
	flag.DurationVar(&o.dialWarmup, "dial-warmup", 500*time.Millisecond, "warm-up before each new-connection or tunnel-stream run")
	flag.IntVar(&o.dialWorkers, "dial-workers", 4, "concurrent dialers in the server child, and concurrent tunnel stream openers in the harness")
	flag.BoolVar(&o.httpBench, "http", true, "run the HTTP pipeline and new-connection measurements (needs wrk); false skips them")
	flag.BoolVar(&o.tunnel, "tunnel", true, "run the client tunnel measurements; false skips them")
	flag.IntVar(&o.tunnelMiB, "tunnel-mib", 1024, "MiB moved through one stream per transfer (each path, each direction)")
	flag.IntVar(&o.tunnelRounds, "tunnel-rounds", 3, "how many times the six transfers (tunnel, bare relay, TCP; up and down) are measured; the table shows the median")
	flag.IntVar(&o.tunnelClients, "tunnel-clients", 200, "tunnel connections opened for the edge's memory per connected client; 0 skips the memory measurement")
	flag.IntVar(&o.tunnelStreams, "tunnel-streams", 1000, fmt.Sprintf("idle streams (%d per connection) for the edge's memory per idle stream", streamsPerConn))
	flag.Float64Var(&o.tunnelTarget, "tunnel-target", 0.85, "the goal: tunnel MiB/s ÷ bare quic-go relay MiB/s, each direction")
	flag.Parse()

	if *serve {
		if err := serveChild(*idleAddr); err != nil {
			fmt.Fprintln(os.Stderr, "bench server:", err)
			os.Exit(1)
		}
		return
	}
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	defer stop()
	var miss *targetMissed
	switch {
	case err != nil && ctx.Err() != nil:
		fmt.Fprintln(os.Stderr, "bench: interrupted")
		os.Exit(130)
	case errors.As(err, &miss):
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(3)
	case err != nil:
		fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
		os.Exit(1)
	}
}

func (o *options) check() error {
	switch {
	case o.duration < time.Second || o.duration%time.Second != 0:
		return errors.New("-duration must be whole seconds, at least 1s (wrk counts in seconds)")
	case o.warmup < 0 || o.warmup%time.Second != 0:
		return errors.New("-warmup must be whole seconds (0 disables it)")
	case o.connections < 1 || o.connections > 10000:
		return errors.New("-connections must be 1–10000")
	case o.rounds < 1 || o.rounds > 20:
		return errors.New("-rounds must be 1–20")
	case o.target <= 0:
		return errors.New("-target must be positive")
	case o.dialDuration < 0 || o.dialDuration > 20*time.Second:
		return errors.New("-dial-duration must be 0–20s")
	case o.dialWarmup < 0 || o.dialWarmup > 5*time.Second:
		return errors.New("-dial-warmup must be 0–5s")
	case o.dialWorkers < 1 || o.dialWorkers > 64:
		return errors.New("-dial-workers must be 1–64")
	case !o.httpBench && !o.tunnel:
		return errors.New("-http=false and -tunnel=false leave nothing to measure")
	case o.tunnelMiB < 1 || o.tunnelMiB > 16<<10:
		return errors.New("-tunnel-mib must be 1–16384")
	case o.tunnelRounds < 1 || o.tunnelRounds > 20:
		return errors.New("-tunnel-rounds must be 1–20")
	case o.tunnelClients < 0 || o.tunnelClients > 5000:
		return errors.New("-tunnel-clients must be 0–5000")
	case o.tunnelStreams < 0 || (o.tunnelClients > 0 && o.tunnelStreams > streamsPerConn*o.tunnelClients):
		return fmt.Errorf("-tunnel-streams must be 0–%d × -tunnel-clients", streamsPerConn)
	case o.tunnelStreams > 1024:
		// All streams are the bench user's: the edge's tunnel.max_streams_per_user (default 1024) refuses more.
		return errors.New("-tunnel-streams must be at most 1024, the edge's default limit of open streams per user")
	case o.tunnelTarget <= 0:
		return errors.New("-tunnel-target must be positive")
	}
	return nil
}

// targetMissed is returned with -require-target when a goal is not met.
type targetMissed struct{ misses []string }

func (t *targetMissed) Error() string {
	return "goal not met: " + strings.Join(t.misses, "; ")
}
