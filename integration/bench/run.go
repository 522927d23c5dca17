package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ztna-dev/ztna/authn"
)

// target is one thing wrk loads.
type target struct {
	label    string
	url      string
	headers  map[string]string
	identity bool // every request must reach the upstream with an assertion
	script   string
}

// measurement is one measured wrk run against one target.
type measurement struct {
	wrkResult
	serverCPU           time.Duration
	upTotal, upAsserted int64
}

func (m measurement) cpuPerReq() float64 {
	return float64(m.serverCPU.Microseconds()) / float64(m.Requests)
}

func run(ctx context.Context, o options) error {
	if runtime.GOOS != "linux" {
		return errors.New("needs Linux (taskset, /proc)")
	}
	if err := pickCPUs(&o); err != nil {
		return err
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return errors.New("taskset is not installed (Debian package util-linux)")
	}
	wrk, err := ensureWrk(ctx)
	if err != nil {
		return err
	}
	ticks := clockTicks()

	tmp, err := os.MkdirTemp("", "ztna-bench-client-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	progress("starting the server child on CPU %d (upstream, bare proxy, ztna edge, dev IdP; GOMAXPROCS=1)", o.serverCPU)
	ch, err := startChild(ctx, o.serverCPU)
	if err != nil {
		return err
	}
	defer func() {
		if err := ch.stop(); err != nil {
			progress("stopping the server child: %v", err)
		}
	}()
	info := ch.info

	targets := []*target{
		{label: "upstream direct (HTTP)", url: info.Direct},
		{label: "bare `httputil.ReverseProxy` (TLS)", url: info.Bare},
		{label: "ztna full pipeline (TLS)", url: info.Edge, identity: true, headers: map[string]string{
			"Host": info.EdgeHost, "Cookie": authn.SessionCookie + "=" + info.Cookie,
		}},
	}
	for i, t := range targets {
		if t.script, err = writeScript(tmp, "target"+strconv.Itoa(i), t.headers); err != nil {
			return err
		}
	}
	counter := &http.Client{Timeout: 10 * time.Second}

	results := make([][]measurement, o.rounds) // [round][target]
	for r := range o.rounds {
		for _, t := range targets {
			if o.warmup > 0 {
				// A starved machine may complete nothing in a short
				// warm-up; errors still count, and the measured run
				// checks the rest.
				if _, err := runWrk(ctx, wrk, t.script, t.url, o.clientCPU, o.connections, o.warmup); err != nil && !errors.Is(err, errNoRequests) {
					return fmt.Errorf("warm-up %s: %w", t.label, err)
				}
			}
			m, err := measure(ctx, ch, counter, wrk, t, o, ticks)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, t.label, err)
			}
			results[r] = append(results[r], m)
			progress("round %d/%d  %-36s %8.0f req/s  p50 %s  p99 %s  server CPU %5.1f µs/req (%3.0f%% busy)  wrk CPU %3.0f%%",
				r+1, o.rounds, strings.ReplaceAll(t.label, "`", ""), m.rps(), fmtUs(m.P50Us), fmtUs(m.P99Us), m.cpuPerReq(),
				100*m.serverCPU.Seconds()/(m.DurationUs/1e6), 100*m.clientCPU.Seconds()/(m.DurationUs/1e6))
		}
	}

	var profileNote string
	if o.cpuProfile != "" {
		if profileNote, err = profileRun(ctx, ch, wrk, targets[2], o); err != nil {
			return err
		}
	}

	check, err := verifyEdge(ctx, ch, info, counter)
	if err != nil {
		return fmt.Errorf("verify the edge after the runs: %w", err)
	}

	ratio := report(os.Stdout, o, wrk, targets, results, check)
	if profileNote != "" {
		fmt.Println(profileNote)
	}
	if o.strict && ratio < o.target {
		return &targetMissed{ratio: ratio, goal: o.target}
	}
	return nil
}

// pickCPUs chooses the client and server CPUs among those allowed.
func pickCPUs(o *options) error {
	cpus, err := allowedCPUs()
	if err != nil {
		return err
	}
	if len(cpus) < 2 {
		return fmt.Errorf("needs at least 2 CPUs to keep the load generator off the server's CPU; this process may use %v", cpus)
	}
	if o.clientCPU < 0 {
		o.clientCPU = cpus[0]
	}
	if o.serverCPU < 0 {
		o.serverCPU = cpus[1]
	}
	switch {
	case !slices.Contains(cpus, o.clientCPU) || !slices.Contains(cpus, o.serverCPU):
		return fmt.Errorf("-client-cpu %d / -server-cpu %d: allowed CPUs are %v", o.clientCPU, o.serverCPU, cpus)
	case o.clientCPU == o.serverCPU:
		return errors.New("-client-cpu and -server-cpu must differ")
	}
	return nil
}

// measure runs wrk once against t and takes the server child's CPU time and
// the upstream's counters around it.
func measure(ctx context.Context, ch *child, counter *http.Client, wrk string, t *target, o options, ticks float64) (measurement, error) {
	before, err := fetchCounts(ctx, counter, ch.info.Direct)
	if err != nil {
		return measurement{}, err
	}
	cpu0, err := processCPU(ch.info.PID, ticks)
	if err != nil {
		return measurement{}, fmt.Errorf("server CPU time: %w", err)
	}
	res, err := runWrk(ctx, wrk, t.script, t.url, o.clientCPU, o.connections, o.duration)
	if err != nil {
		return measurement{}, err
	}
	cpu1, err := processCPU(ch.info.PID, ticks)
	if err != nil {
		return measurement{}, fmt.Errorf("server CPU time: %w", err)
	}
	after, err := fetchCounts(ctx, counter, ch.info.Direct)
	if err != nil {
		return measurement{}, err
	}
	m := measurement{wrkResult: res, serverCPU: cpu1 - cpu0,
		upTotal: after.Total - before.Total, upAsserted: after.Assertion - before.Assertion}

	// Every response wrk counted must have come from the upstream (and not,
	// say, from an edge error page); a few more may have arrived that wrk
	// abandoned at the end of its run or the warm-up.
	slack := int64(3 * o.connections)
	if m.upTotal < m.Requests || m.upTotal > m.Requests+slack {
		return m, fmt.Errorf("the upstream received %d requests while wrk completed %d: the target did not forward every request",
			m.upTotal, m.Requests)
	}
	switch {
	case t.identity && m.upAsserted != m.upTotal:
		return m, fmt.Errorf("only %d of %d upstream requests carried the identity assertion", m.upAsserted, m.upTotal)
	case !t.identity && m.upAsserted != 0:
		return m, fmt.Errorf("%d upstream requests carried an identity assertion on a target without identity", m.upAsserted)
	}
	return m, nil
}

func fetchCounts(ctx context.Context, c *http.Client, direct string) (counts, error) {
	var n counts
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(direct, "/")+countPath, nil)
	if err != nil {
		return n, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return n, fmt.Errorf("read the upstream's counters: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("read the upstream's counters: %s", resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&n); err != nil {
		return n, fmt.Errorf("read the upstream's counters: %w", err)
	}
	return n, nil
}

// profileRun loads the ztna target once more with the child's CPU profile
// on. It is not part of the table: profiling costs a little CPU.
func profileRun(ctx context.Context, ch *child, wrk string, t *target, o options) (string, error) {
	path, err := filepath.Abs(o.cpuProfile)
	if err != nil {
		return "", err
	}
	if strings.ContainsAny(path, "\n\r") {
		return "", errors.New("-cpuprofile: path has a line break")
	}
	progress("profiling the ztna target for %s", o.duration)
	if _, err := ch.command(ctx, "profile-start "+path); err != nil {
		return "", err
	}
	res, err := runWrk(ctx, wrk, t.script, t.url, o.clientCPU, o.connections, o.duration)
	if _, stopErr := ch.command(ctx, "profile-stop"); stopErr != nil && err == nil {
		err = stopErr
	}
	if err != nil {
		return "", fmt.Errorf("profile run: %w", err)
	}
	return fmt.Sprintf("\nCPU profile of the server child during a separate %s ztna run (%.0f req/s, not in the table): %s\n"+
		"inspect with: go tool pprof -top -cum %s", o.duration, res.rps(), path, path), nil
}

// edgeCheck is what verifyEdge found.
type edgeCheck struct {
	identity    identityReport
	anonStatus  int
	auditEvents int
	forwarded   int64 // requests the edge forwarded with an assertion, all runs
}

// verifyEdge makes sure the figures came from the real pipeline: a request
// with the benchmark's cookie reaches the app with an assertion the app can
// verify, the same request without it is refused, and the audit log holds
// an event for every forwarded request.
func verifyEdge(ctx context.Context, ch *child, info serverInfo, counter *http.Client) (edgeCheck, error) {
	var chk edgeCheck
	pem, err := os.ReadFile(info.CAFile)
	if err != nil {
		return chk, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return chk, errors.New("dev CA: no certificate")
	}
	edgeAddr := strings.TrimSuffix(strings.TrimPrefix(info.Edge, "https://"), "/")
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		// The dev certificate names localhost, not bench.localhost.
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, edgeAddr)
		},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path string, withCookie bool) (*http.Response, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+info.EdgeHost+path, nil)
		if err != nil {
			return nil, nil, err
		}
		if withCookie {
			req.AddCookie(&http.Cookie{Name: authn.SessionCookie, Value: info.Cookie})
		}
		return do(c, req)
	}

	resp, body, err := get(identityPath, true)
	if err != nil {
		return chk, err
	}
	if resp.StatusCode != http.StatusOK {
		return chk, fmt.Errorf("GET %s with the session: %s", identityPath, resp.Status)
	}
	if err := json.Unmarshal(body, &chk.identity); err != nil {
		return chk, fmt.Errorf("GET %s: %w", identityPath, err)
	}
	if id := chk.identity; !id.Verified || id.Subject == "" || id.Audience != benchApp || id.User != id.Subject {
		return chk, fmt.Errorf("the upstream did not get a verifiable identity: %+v", id)
	}
	resp, _, err = get("/", false)
	if err != nil {
		return chk, err
	}
	if chk.anonStatus = resp.StatusCode; chk.anonStatus != http.StatusUnauthorized {
		return chk, fmt.Errorf("GET / without a session: want 401, got %s", resp.Status)
	}

	n, err := fetchCounts(ctx, counter, info.Direct)
	if err != nil {
		return chk, err
	}
	chk.forwarded = n.Assertion
	// The audit writer flushes every 200ms: wait until the count is at
	// least what was forwarded, or stops growing.
	deadline := time.Now().Add(5 * time.Second)
	prev := -1
	for {
		reply, err := ch.command(ctx, "audit-lines")
		if err != nil {
			return chk, err
		}
		if chk.auditEvents, err = strconv.Atoi(reply); err != nil {
			return chk, fmt.Errorf("audit-lines: %q", reply)
		}
		if int64(chk.auditEvents) >= chk.forwarded || chk.auditEvents == prev || time.Now().After(deadline) {
			break
		}
		prev = chk.auditEvents
		select {
		case <-time.After(300 * time.Millisecond):
		case <-ctx.Done():
			return chk, ctx.Err()
		}
	}
	return chk, nil
}

// report prints the Markdown the README uses and returns the median ratio
// of ztna to the bare proxy.
func report(w io.Writer, o options, wrk string, targets []*target, results [][]measurement, chk edgeCheck) float64 {
	const direct, bare, ztna = 0, 1, 2
	col := func(f func(r []measurement) float64) float64 {
		var v []float64
		for _, r := range results {
			v = append(v, f(r))
		}
		return median(v)
	}
	fmt.Fprintf(w, "\nMachine: %s.\n", machine(wrk))
	fmt.Fprintf(w, "Load: wrk -t1 -c%d, HTTP/1.1 keep-alive, %s per run after a %s warm-up, %d round(s), median shown; "+
		"wrk on CPU %d, server child (upstream + proxies, GOMAXPROCS=1) on CPU %d.\n\n",
		o.connections, o.duration, o.warmup, o.rounds, o.clientCPU, o.serverCPU)
	fmt.Fprintln(w, "| target | req/s | vs direct | vs bare proxy | p50 | p99 | server CPU µs/req |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
	for ti, t := range targets {
		rps := col(func(r []measurement) float64 { return r[ti].rps() })
		vsDirect := col(func(r []measurement) float64 { return r[ti].rps() / r[direct].rps() })
		vsBare := "—"
		if ti != direct {
			vsBare = fmt.Sprintf("%.2f", col(func(r []measurement) float64 { return r[ti].rps() / r[bare].rps() }))
		}
		label := t.label
		if ti == ztna {
			label += "¹"
		}
		fmt.Fprintf(w, "| %s | %s | %.2f | %s | %s | %s | %.1f |\n", label, thousands(rps), vsDirect, vsBare,
			fmtUs(col(func(r []measurement) float64 { return r[ti].P50Us })),
			fmtUs(col(func(r []measurement) float64 { return r[ti].P99Us })),
			col(func(r []measurement) float64 { return r[ti].cpuPerReq() }))
	}

	var asserted, total int64
	for _, r := range results {
		asserted += r[ztna].upAsserted
		total += r[ztna].upTotal
	}
	fmt.Fprintf(w, "\n¹ Every request carries a logged-in session (bolt store), is authorized by a group rule, audited to a file "+
		"and forwarded with identity headers and a signed X-Ztna-Assertion: %d of %d upstream requests in the ztna runs "+
		"carried the assertion (%.1f %%). After the runs the app verified the assertion of a request through the edge "+
		"(sub %s, aud %s), the same request without the session got %d, and the audit log held %d events for %d requests the edge forwarded.\n",
		asserted, total, 100*float64(asserted)/float64(max(total, 1)), chk.identity.Subject, chk.identity.Audience,
		chk.anonStatus, chk.auditEvents, chk.forwarded)
	if int64(chk.auditEvents) < chk.forwarded {
		fmt.Fprintf(w, "\nWARNING: the audit log has fewer events (%d) than requests forwarded (%d): the audit queue dropped events under load.\n",
			chk.auditEvents, chk.forwarded)
	}

	fmt.Fprintln(w, "\nPer round (req/s direct / bare / ztna → ztna ÷ bare):")
	for i, r := range results {
		fmt.Fprintf(w, "- round %d: %s / %s / %s → %.2f\n", i+1, thousands(r[direct].rps()), thousands(r[bare].rps()),
			thousands(r[ztna].rps()), r[ztna].rps()/r[bare].rps())
	}
	proxyCost := func(ti int) float64 {
		return col(func(r []measurement) float64 { return r[ti].cpuPerReq() - r[direct].cpuPerReq() })
	}
	fmt.Fprintf(w, "\nServer CPU includes the upstream's share; minus the direct run's, the proxies cost about %.1f µs (bare) "+
		"and %.1f µs (ztna) per request.\n", proxyCost(bare), proxyCost(ztna))
	for ti, t := range targets {
		if busy := col(func(r []measurement) float64 { return r[ti].serverCPU.Seconds() / (r[ti].DurationUs / 1e6) }); busy < 0.9 {
			fmt.Fprintf(w, "Note: the server child used only %.0f %% of its CPU on %s: other processes competed for it, or the load was too light; "+
				"req/s there understate what the target can do (CPU µs/req still holds).\n", 100*busy, strings.ReplaceAll(t.label, "`", ""))
		}
		busy := col(func(r []measurement) float64 { return r[ti].clientCPU.Seconds() / (r[ti].DurationUs / 1e6) })
		if busy > 0.9 {
			fmt.Fprintf(w, "Note: wrk used %.0f %% of its CPU on %s: that figure may be limited by the load generator.\n",
				100*busy, strings.ReplaceAll(t.label, "`", ""))
		}
	}

	ratio := col(func(r []measurement) float64 { return r[ztna].rps() / r[bare].rps() })
	verdict := "MET"
	if ratio < o.target {
		verdict = "NOT MET"
	}
	fmt.Fprintf(w, "\nGoal (ztna ≥ %.2f × bare proxy in the same run): %s — ztna is %.2f of the bare proxy.\n", o.target, verdict, ratio)
	// When other processes share the server's CPU, req/s depend on how much
	// of it the child got; CPU time per request does not.
	cpuRatio := col(func(r []measurement) float64 { return r[bare].cpuPerReq() / r[ztna].cpuPerReq() })
	fmt.Fprintf(w, "By server CPU per request, which other load on the machine does not change: ztna has %.2f of the bare proxy's capacity.\n", cpuRatio)
	return ratio
}

func fmtUs(us float64) string {
	if us >= 1000 {
		return fmt.Sprintf("%.2f ms", us/1000)
	}
	return fmt.Sprintf("%.0f µs", us)
}

func thousands(f float64) string {
	s := strconv.FormatInt(int64(f+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// child is the server process.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	exited chan struct{}
	info   serverInfo
}

// startChild re-executes this binary as the server, pinned to cpu, and
// waits for it to report its addresses.
func startChild(ctx context.Context, cpu int) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("taskset", "-c", strconv.Itoa(cpu), self, "-serve")
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.Stderr = os.Stderr
	// If the harness dies, so does the child.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the server child: %w", err)
	}
	ch := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 16), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			ch.lines <- sc.Text()
		}
		close(ch.lines)
		// Wait only after stdout is read to the end (os/exec's rule).
		_ = cmd.Wait()
		close(ch.exited)
	}()

	line, err := ch.next(ctx, time.Minute)
	if err == nil {
		err = json.Unmarshal([]byte(line), &ch.info)
	}
	if err == nil && (ch.info.PID == 0 || ch.info.Cookie == "" || ch.info.EdgeHost == "") {
		err = errors.New("incomplete server info")
	}
	if err != nil {
		_ = ch.stop()
		return nil, fmt.Errorf("server child: %w", err)
	}
	return ch, nil
}

// next waits for the child's next stdout line.
func (c *child) next(ctx context.Context, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case line, ok := <-c.lines:
		if !ok {
			return "", errors.New("exited (see its messages above)")
		}
		return line, nil
	case <-t.C:
		return "", fmt.Errorf("no answer within %s", timeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// command sends one command line and returns the text after "ok".
func (c *child) command(ctx context.Context, line string) (string, error) {
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		return "", fmt.Errorf("server child: %w", err)
	}
	reply, err := c.next(ctx, 30*time.Second)
	if err != nil {
		return "", fmt.Errorf("server child, %s: %w", strings.Fields(line)[0], err)
	}
	if rest, ok := strings.CutPrefix(reply, "ok"); ok {
		return strings.TrimSpace(rest), nil
	}
	return "", fmt.Errorf("server child, %s: %s", strings.Fields(line)[0], reply)
}

// stop closes the child's stdin (its signal to shut down) and kills it if
// it has not exited within a bound.
func (c *child) stop() error {
	_ = c.stdin.Close()
	go func() {
		for range c.lines { // unblock the reader so it can reach Wait
		}
	}()
	select {
	case <-c.exited:
		return nil
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		select {
		case <-c.exited:
		case <-time.After(5 * time.Second):
		}
		return errors.New("did not exit within 15s of its stdin closing; killed")
	}
}
