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
	// Every request must reach the upstream on a connection whose PROXY v2
	// header carried the bench user's verified identity, over pooled
	// connections.
	proxyIdentity bool
	script        string
}

// The targets, in the order they are loaded and reported.
const (
	tDirect = iota
	tBare
	tZtna
	tZtnaPP
)

// measurement is one measured wrk run against one target.
type measurement struct {
	wrkResult
	serverCPU           time.Duration
	upTotal, upAsserted int64
	upProxyIdentity     int64 // requests on a connection with a verified PROXY v2 identity
	proxyAccepts        int64 // connections the PROXY v2 port accepted
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
	var wrk string
	if o.httpBench {
		var err error
		if wrk, err = ensureWrk(ctx); err != nil {
			return err
		}
	}
	ticks := clockTicks()

	tmp, err := os.MkdirTemp("", "ztna-bench-client-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	load0 := loadAverage()
	// The tunnel benchmark's idle app runs here, so the child's memory is
	// the edge's alone; the child's edge declares it.
	var idle *idleServer
	var childArgs []string
	if o.tunnel {
		if idle, err = startIdleApp(); err != nil {
			return err
		}
		defer idle.close()
		childArgs = []string{"-tunnel-idle-app", idle.addr()}
	}
	progress("starting the server child on CPU %d (upstream, bare proxy, ztna edge, dev IdP; GOMAXPROCS=1)", o.serverCPU)
	ch, err := startChild(ctx, o.serverCPU, childArgs...)
	if err != nil {
		return err
	}
	defer func() {
		if err := ch.stop(); err != nil {
			progress("stopping the server child: %v", err)
		}
	}()

	var misses []string
	if o.httpBench {
		ratio, err := runHTTP(ctx, o, ch, wrk, tmp, ticks, load0)
		if err != nil {
			return err
		}
		if ratio < o.target {
			misses = append(misses, fmt.Sprintf("ztna is %.2f of the bare proxy, the goal is ≥ %.2f", ratio, o.target))
		}
	}
	if o.tunnel {
		res, err := runTunnel(ctx, ch, o, idle, ticks)
		if err != nil {
			return fmt.Errorf("tunnel benchmark: %w", err)
		}
		misses = append(misses, reportTunnel(os.Stdout, o, res)...)
	}
	if o.strict && len(misses) > 0 {
		return &targetMissed{misses: misses}
	}
	return nil
}

// runHTTP measures the HTTP targets and the new-connection rates, prints
// their report and returns the median ratio of ztna to the bare proxy.
func runHTTP(ctx context.Context, o options, ch *child, wrk, tmp string, ticks, load0 float64) (float64, error) {
	info := ch.info
	var err error

	targets := []*target{
		{label: "upstream direct (HTTP)", url: info.Direct},
		{label: "bare `httputil.ReverseProxy` (TLS)", url: info.Bare},
		{label: "ztna full pipeline (TLS)", url: info.Edge, identity: true, headers: map[string]string{
			"Host": info.EdgeHost, "Cookie": authn.SessionCookie + "=" + info.Cookie,
		}},
		{label: "ztna + PROXY v2 identity (pooled per identity)", url: info.Edge, identity: true, proxyIdentity: true,
			headers: map[string]string{
				"Host": info.PPHost, "Cookie": authn.SessionCookie + "=" + info.Cookie,
			}},
	}
	for i, t := range targets {
		if t.script, err = writeScript(tmp, "target"+strconv.Itoa(i), t.headers); err != nil {
			return 0, err
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
					return 0, fmt.Errorf("warm-up %s: %w", t.label, err)
				}
			}
			m, err := measure(ctx, ch, counter, wrk, t, o, ticks)
			if err != nil {
				return 0, fmt.Errorf("round %d, %s: %w", r+1, t.label, err)
			}
			results[r] = append(results[r], m)
			progress("round %d/%d  %-46s %8.0f req/s  p50 %s  p99 %s  server CPU %5.1f µs/req (%3.0f%% busy)  wrk CPU %3.0f%%",
				r+1, o.rounds, strings.ReplaceAll(t.label, "`", ""), m.rps(), fmtUs(m.P50Us), fmtUs(m.P99Us), m.cpuPerReq(),
				100*m.serverCPU.Seconds()/(m.DurationUs/1e6), 100*m.clientCPU.Seconds()/(m.DurationUs/1e6))
		}
	}

	var dials []dialResult
	if o.dialDuration > 0 {
		if dials, err = measureDials(ctx, ch, o); err != nil {
			return 0, err
		}
	}

	var profileNote string
	if o.cpuProfile != "" {
		if profileNote, err = profileRun(ctx, ch, wrk, targets[tZtna], o); err != nil {
			return 0, err
		}
	}

	check, err := verifyEdge(ctx, ch, info, counter)
	if err != nil {
		return 0, fmt.Errorf("verify the edge after the runs: %w", err)
	}

	ratio := report(os.Stdout, o, wrk, targets, results, dials, check, [2]float64{load0, loadAverage()})
	if profileNote != "" {
		fmt.Println(profileNote)
	}
	return ratio, nil
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
		upTotal: after.Total - before.Total, upAsserted: after.Assertion - before.Assertion,
		upProxyIdentity: after.ProxyIdentity - before.ProxyIdentity, proxyAccepts: after.ProxyAccepts - before.ProxyAccepts}

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
	case t.proxyIdentity && m.upProxyIdentity != m.upTotal:
		return m, fmt.Errorf("only %d of %d upstream requests arrived on a connection with a verified PROXY v2 identity of %s",
			m.upProxyIdentity, m.upTotal, benchSubject)
	case !t.proxyIdentity && m.upProxyIdentity != 0:
		return m, fmt.Errorf("%d upstream requests arrived on the PROXY v2 port on a target without it", m.upProxyIdentity)
	// Pooled: one upstream connection per wrk connection (the edge pools
	// per session and client address), not one per request.
	case t.proxyIdentity && m.proxyAccepts > int64(o.connections)+maxExtraConns:
		return m, fmt.Errorf("the PROXY v2 app accepted %d connections for %d requests over %d wrk connections: not pooled",
			m.proxyAccepts, m.upTotal, o.connections)
	}
	return m, nil
}

// maxExtraConns is how many more upstream connections than wrk's the PROXY
// v2 app may accept in one run and still count as pooled.
const maxExtraConns = 8

// measureDials asks the server child for the new-connection rates: a plain
// dial, then Edge.DialTCP with the PROXY v2 identity.
func measureDials(ctx context.Context, ch *child, o options) ([]dialResult, error) {
	var out []dialResult
	for _, mode := range []string{"plain", "pp"} {
		reply, err := ch.command(ctx, fmt.Sprintf("dial-rate %s %s %s %d", mode, o.dialWarmup, o.dialDuration, o.dialWorkers))
		if err != nil {
			return nil, err
		}
		var r dialResult
		if err := json.Unmarshal([]byte(reply), &r); err != nil {
			return nil, fmt.Errorf("dial-rate %s: %q: %w", mode, reply, err)
		}
		switch {
		case r.Conns == 0 || r.Seconds <= 0:
			return nil, fmt.Errorf("dial-rate %s: no connection completed", mode)
		case r.Accepts != r.Conns:
			return nil, fmt.Errorf("dial-rate %s: the echo app accepted %d connections, the dialers completed %d", mode, r.Accepts, r.Conns)
		case mode == "pp" && r.Verified != r.Conns:
			return nil, fmt.Errorf("dial-rate pp: only %d of %d connections carried a verified identity of %s for %s",
				r.Verified, r.Conns, benchSubject, tcpApp)
		}
		progress("new connections %-5s %8.0f conn/s  server CPU %5.1f µs/conn (%3.0f%% busy)", mode, r.rate(), r.cpuPerConn(),
			100*r.CPUSeconds/r.Seconds)
		out = append(out, r)
	}
	return out, nil
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
	ppIdentity  identityReport // the same through the PROXY v2 app
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
	get := func(host, path string, withCookie bool) (*http.Response, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+path, nil)
		if err != nil {
			return nil, nil, err
		}
		if withCookie {
			req.AddCookie(&http.Cookie{Name: authn.SessionCookie, Value: info.Cookie})
		}
		return do(c, req)
	}

	for _, c := range []struct {
		host, app string
		rep       *identityReport
	}{{info.EdgeHost, benchApp, &chk.identity}, {info.PPHost, ppApp, &chk.ppIdentity}} {
		resp, body, err := get(c.host, identityPath, true)
		if err != nil {
			return chk, err
		}
		if resp.StatusCode != http.StatusOK {
			return chk, fmt.Errorf("GET %s%s with the session: %s", c.host, identityPath, resp.Status)
		}
		if err := json.Unmarshal(body, c.rep); err != nil {
			return chk, fmt.Errorf("GET %s%s: %w", c.host, identityPath, err)
		}
		if id := *c.rep; !id.Verified || id.Subject != benchSubject || id.Audience != c.app || id.User != id.Subject {
			return chk, fmt.Errorf("the upstream did not get a verifiable identity through %s: %+v", c.app, id)
		}
	}
	if id := chk.ppIdentity; id.ProxySubject != benchSubject || id.ProxyAudience != ppApp {
		return chk, fmt.Errorf("the PROXY v2 app did not get a verified identity in the header: %+v", id)
	}
	if id := chk.identity; id.ProxySubject != "" {
		return chk, fmt.Errorf("the plain upstream port reported a PROXY v2 identity: %+v", id)
	}
	resp, _, err := get(info.EdgeHost, "/", false)
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
func report(w io.Writer, o options, wrk string, targets []*target, results [][]measurement, dials []dialResult,
	chk edgeCheck, load [2]float64) float64 {
	const direct, bare, ztna, pp = tDirect, tBare, tZtna, tZtnaPP
	col := func(f func(r []measurement) float64) float64 {
		var v []float64
		for _, r := range results {
			v = append(v, f(r))
		}
		return median(v)
	}
	fmt.Fprintf(w, "\nMachine: %s.\n", machine(wrk))
	fmt.Fprintf(w, "Other load: 1-minute load average %.2f before the runs and %.2f at the end, on %d CPUs (the benchmark itself "+
		"keeps about 2 busy). Where other processes compete for the two CPUs, req/s understate the targets (see the notes on "+
		"how busy the server child was); CPU µs per request and per connection are less affected, though contention "+
		"raises them too: compare figures from the same run.\n", load[0], load[1], runtime.NumCPU())
	fmt.Fprintf(w, "Load: wrk -t1 -c%d, HTTP/1.1 keep-alive, %s per run after a %s warm-up, %d round(s) of the %d targets, median shown; "+
		"wrk on CPU %d, server child (upstream + proxies, GOMAXPROCS=1) on CPU %d.\n\n",
		o.connections, o.duration, o.warmup, o.rounds, len(targets), o.clientCPU, o.serverCPU)
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
		switch ti {
		case ztna:
			label += "¹"
		case pp:
			label += "²"
		}
		fmt.Fprintf(w, "| %s | %s | %.2f | %s | %s | %s | %.1f |\n", label, thousands(rps), vsDirect, vsBare,
			fmtUs(col(func(r []measurement) float64 { return r[ti].P50Us })),
			fmtUs(col(func(r []measurement) float64 { return r[ti].P99Us })),
			col(func(r []measurement) float64 { return r[ti].cpuPerReq() }))
	}

	var asserted, total, ppVerified, ppTotal, ppAccepts, ppAcceptsMax int64
	for _, r := range results {
		asserted += r[ztna].upAsserted
		total += r[ztna].upTotal
		ppVerified += r[pp].upProxyIdentity
		ppTotal += r[pp].upTotal
		ppAcceptsMax = max(ppAcceptsMax, r[pp].proxyAccepts)
	}
	ppAccepts = int64(col(func(r []measurement) float64 { return float64(r[pp].proxyAccepts) }))
	fmt.Fprintf(w, "\n¹ Every request carries a logged-in session (bolt store), is authorized by a group rule, audited to a file "+
		"and forwarded with identity headers and a signed X-Ztna-Assertion: %d of %d upstream requests in the ztna runs "+
		"carried the assertion (%.1f %%). After the runs the app verified the assertion of a request through the edge "+
		"(sub %s, aud %s), the same request without the session got %d, and the audit log held %d events for %d requests the edge forwarded.\n",
		asserted, total, 100*float64(asserted)/float64(max(total, 1)), chk.identity.Subject, chk.identity.Audience,
		chk.anonStatus, chk.auditEvents, chk.forwarded)
	fmt.Fprintf(w, "\n² The same pipeline, session and upstream handler, to an app with proxy_protocol v2 (%s): each upstream connection "+
		"starts with a PROXY v2 header carrying the signed identity, which the app's identity.NewListener verifies once per "+
		"connection; the edge pools upstream connections per identity. %d of %d upstream requests arrived on a connection with a "+
		"verified identity of %s for %s (%.1f %%), on %d new upstream connections per measured run (median; at most %d) for "+
		"wrk's %d. After the runs a request through the edge showed the app the header's identity (sub %s, aud %s) and a valid assertion.\n",
		ppApp, ppVerified, ppTotal, benchSubject, ppApp, 100*float64(ppVerified)/float64(max(ppTotal, 1)), ppAccepts, ppAcceptsMax,
		o.connections, chk.ppIdentity.ProxySubject, chk.ppIdentity.ProxyAudience)
	if int64(chk.auditEvents) < chk.forwarded {
		fmt.Fprintf(w, "\nWARNING: the audit log has fewer events (%d) than requests forwarded (%d): the audit queue dropped events under load.\n",
			chk.auditEvents, chk.forwarded)
	}

	fmt.Fprintln(w, "\nPer round (req/s direct / bare / ztna / ztna+PPv2 → ztna ÷ bare, ztna+PPv2 ÷ ztna):")
	for i, r := range results {
		fmt.Fprintf(w, "- round %d: %s / %s / %s / %s → %.2f, %.2f\n", i+1, thousands(r[direct].rps()), thousands(r[bare].rps()),
			thousands(r[ztna].rps()), thousands(r[pp].rps()), r[ztna].rps()/r[bare].rps(), r[pp].rps()/r[ztna].rps())
	}
	proxyCost := func(ti int) float64 {
		return col(func(r []measurement) float64 { return r[ti].cpuPerReq() - r[direct].cpuPerReq() })
	}
	fmt.Fprintf(w, "\nServer CPU includes the upstream's share; minus the direct run's, the proxies cost about %.1f µs (bare), "+
		"%.1f µs (ztna) and %.1f µs (ztna+PPv2) per request.\n", proxyCost(bare), proxyCost(ztna), proxyCost(pp))
	ppCost := col(func(r []measurement) float64 { return r[pp].cpuPerReq() - r[ztna].cpuPerReq() })
	ppRatio := col(func(r []measurement) float64 { return r[pp].rps() / r[ztna].rps() })
	ppCPURatio := col(func(r []measurement) float64 { return r[ztna].cpuPerReq() / r[pp].cpuPerReq() })
	fmt.Fprintf(w, "PROXY v2 identity costs %.1f µs/request (CPU) and the ratio ztna+PPv2 ÷ ztna = %.2f (by CPU per request: %.2f).\n",
		ppCost, ppRatio, ppCPURatio)
	for ti, t := range targets {
		if busy := col(func(r []measurement) float64 { return r[ti].serverCPU.Seconds() / (r[ti].DurationUs / 1e6) }); busy < 0.9 {
			fmt.Fprintf(w, "Note: the server child used only %.0f %% of its CPU on %s: other processes competed for it, or the load was too light; "+
				"req/s there understate what the target can do (CPU µs/req is less affected).\n", 100*busy, strings.ReplaceAll(t.label, "`", ""))
		}
		busy := col(func(r []measurement) float64 { return r[ti].clientCPU.Seconds() / (r[ti].DurationUs / 1e6) })
		if busy > 0.9 {
			fmt.Fprintf(w, "Note: wrk used %.0f %% of its CPU on %s: that figure may be limited by the load generator.\n",
				100*busy, strings.ReplaceAll(t.label, "`", ""))
		}
	}

	if len(dials) == 2 {
		reportDials(w, o, dials[0], dials[1])
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
	fmt.Fprintf(w, "By server CPU per request, which other load on the machine changes less than req/s: ztna has %.2f of the bare proxy's capacity.\n", cpuRatio)
	return ratio
}

// reportDials prints the new-connection table.
func reportDials(w io.Writer, o options, plain, pp dialResult) {
	fmt.Fprintf(w, "\nNew connections to a TCP app: %d dialers inside the server child (CPU %d, GOMAXPROCS=1, so the CPU figures "+
		"include the dialer, the edge's work and the app's), %s after a %s warm-up each; every connection is connect, "+
		"1-byte echo, close (the app closes first).\n\n", o.dialWorkers, o.serverCPU, o.dialDuration, o.dialWarmup)
	fmt.Fprintln(w, "| dial | conn/s | CPU µs/conn | verified identity |")
	fmt.Fprintln(w, "|---|---:|---:|---:|")
	fmt.Fprintf(w, "| plain TCP dial (net.Dialer) | %s | %.1f | — |\n", thousands(plain.rate()), plain.cpuPerConn())
	fmt.Fprintf(w, "| `Edge.DialTCP`, tcp app with proxy_protocol v2 behind identity.NewListener | %s | %.1f | %d of %d (%s, aud %s) |\n",
		thousands(pp.rate()), pp.cpuPerConn(), pp.Verified, pp.Conns, benchSubject, tcpApp)
	fmt.Fprintf(w, "\nPROXY v2 identity costs %.1f µs CPU per new connection (header built and written by the edge, read and its "+
		"ES256 signature verified by the app); Edge.DialTCP+PPv2 ÷ plain dial = %.2f in connections/s (by CPU per connection: %.2f).\n",
		pp.cpuPerConn()-plain.cpuPerConn(), pp.rate()/plain.rate(), plain.cpuPerConn()/pp.cpuPerConn())
	for _, r := range []dialResult{plain, pp} {
		if busy := r.CPUSeconds / r.Seconds; busy < 0.9 {
			fmt.Fprintf(w, "Note: the server child used only %.0f %% of its CPU during the %s dials: other processes competed for it; "+
				"conn/s there understate it (CPU µs/conn is less affected).\n", 100*busy, r.Mode)
		}
	}
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

// startChild re-executes this binary as the server, pinned to cpu, with
// the extra flags args, and waits for it to report its addresses.
func startChild(ctx context.Context, cpu int, args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("taskset", append([]string{"-c", strconv.Itoa(cpu), self, "-serve"}, args...)...)
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
	if err == nil && (ch.info.PID == 0 || ch.info.Cookie == "" || ch.info.EdgeHost == "" || ch.info.PPHost == "") {
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
