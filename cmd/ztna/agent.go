package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/posture/agent"
)

const agentUsage = `Usage: ztna agent COMMAND [flags]

The endpoint agent: it enrolls this device with the edge, which then knows it
by a client certificate issued to a key that never leaves the device, and
reports the device's posture (OS, disk encryption, firewall, screen lock, EDR),
signed with that key, on a schedule.

Commands:
  enroll --server https://AUTH_HOST   enroll this device (you confirm a code in the browser)
  run                                 report this device's posture on a schedule and keep its certificate renewed
  status                              show this device's enrollment, its latest report and the edge's verdicts

Run 'ztna agent COMMAND -h' for the flags of a command.
`

// maxCAFileBytes bounds --ca-file.
const maxCAFileBytes = 1 << 20

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, agentUsage)
		return errUsage
	}
	switch args[0] {
	case "enroll":
		return runAgentEnroll(ctx, args[1:], stdout, stderr)
	case "run":
		return runAgentRun(ctx, args[1:], stdout, stderr)
	case "status":
		return runAgentStatus(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, agentUsage)
		return flag.ErrHelp
	default:
		fmt.Fprintf(stderr, "ztna agent: unknown command %q\n\n%s", args[0], agentUsage)
		return errUsage
	}
}

// defaultStateDir is os.UserConfigDir()/ztna/agent.
func defaultStateDir() string {
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "ztna", "agent")
	}
	return ".ztna-agent"
}

func runAgentEnroll(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent enroll", flag.ContinueOnError)
	server := fs.String("server", "", "the edge's auth origin, https://AUTH_HOST[:PORT] (required)")
	stateDir := fs.String("state-dir", defaultStateDir(), "where the device key, certificate and enrollment are kept (mode 0700)")
	hostname, _ := os.Hostname()
	name := fs.String("name", hostname, "the device's name, shown on the approval page and to admins")
	caFile := fs.String("ca-file", "", "PEM file with an extra root CA for the edge's TLS certificate (e.g. the ztna dev CA)")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up when the enrollment is not approved within this time")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: ztna agent enroll --server https://AUTH_HOST[:PORT] [flags]\n\nEnrolls this device: makes its key (once; the key never leaves the device),\nprints a code and a URL, and waits until you confirm the code in a browser\nwhere you are signed in. The edge then issues the device's certificate.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *server == "" {
		fmt.Fprintln(stderr, "ztna agent enroll: --server is required (the edge's auth origin, e.g. https://auth.example.com)")
		return errUsage
	}
	origin, err := agent.ParseServer(*server)
	if err != nil {
		fmt.Fprintf(stderr, "ztna agent enroll: --server: %v\n", err)
		return errUsage
	}
	if *timeout <= 0 {
		fmt.Fprintln(stderr, "ztna agent enroll: --timeout must be positive")
		return errUsage
	}
	if *stateDir == "" {
		fmt.Fprintln(stderr, "ztna agent enroll: --state-dir must not be empty")
		return errUsage
	}
	hc, err := edgeHTTPClient(*caFile)
	if err != nil {
		return err
	}
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	c := &agent.EnrollClient{Server: origin, HTTPClient: hc, Out: stdout}
	id, err := c.Enroll(ctx, *stateDir, *name)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("enroll: not approved within %s (--timeout)", *timeout)
	case errors.Is(err, context.Canceled):
		return errors.New("enroll: interrupted")
	case err != nil:
		return fmt.Errorf("enroll: %w", err)
	}
	fmt.Fprintf(stdout, "This device is enrolled as %s. Its certificate is in %s.\nRun 'ztna agent status' to see it and how to use it in a browser.\n", id, *stateDir)
	return nil
}

// edrFlag collects the repeatable --edr NAME=PROC[,PROC…][@HOST:PORT]; the
// values are checked after parsing, so a mistake is one line, not the usage.
type edrFlag []string

func (f *edrFlag) String() string     { return strings.Join(*f, " ") }
func (f *edrFlag) Set(v string) error { *f = append(*f, v); return nil }

// parseEDR reads one --edr value: the product's name as profiles refer to
// it, the process names it runs under, and optionally its management
// server, whose TLS the agent probes.
func parseEDR(v string) (agent.EDRConfig, error) {
	const want = "want NAME=PROC[,PROC…][@HOST:PORT], e.g. falcon=falcon-sensor@ts01-b.cloudsink.net:443"
	name, rest, ok := strings.Cut(v, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" || rest == "" {
		return agent.EDRConfig{}, fmt.Errorf("--edr %q: %s", v, want)
	}
	procs, addr, hasAddr := strings.Cut(rest, "@")
	e := agent.EDRConfig{Name: name}
	for _, p := range strings.Split(procs, ",") {
		if p = strings.TrimSpace(p); p == "" {
			return agent.EDRConfig{}, fmt.Errorf("--edr %q: empty process name; %s", v, want)
		}
		e.ProcessNames = append(e.ProcessNames, p)
	}
	if hasAddr {
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" || port == "" {
			return agent.EDRConfig{}, fmt.Errorf("--edr %q: management server %q is not HOST:PORT", v, addr)
		}
		e.ManagerAddr = addr
	}
	return e, nil
}

func runAgentRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent run", flag.ContinueOnError)
	stateDir := fs.String("state-dir", defaultStateDir(), "the agent's state directory (made by 'ztna agent enroll')")
	caFile := fs.String("ca-file", "", "PEM file with an extra root CA for the edge's TLS certificate (e.g. the ztna dev CA)")
	interval := fs.Duration("interval", 0, "time between reports; 0 means the edge's suggestion, else "+agent.DefaultInterval.String())
	once := fs.Bool("once", false, "send one report, print the edge's verdicts and exit: 0 if the edge accepted it, 1 if not")
	var edrs edrFlag
	fs.Var(&edrs, "edr", "an EDR/AV product to report, NAME=PROC[,PROC…][@HOST:PORT]: its name as the edge's profiles\nname it, the process names it runs under, and its management server, probed over TLS (repeatable)")
	edrCAFile := fs.String("edr-ca-file", "", "PEM file with extra root CAs for the EDR management servers' TLS certificates")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: ztna agent run [flags]

Reports this device's posture to the edge it is enrolled with: on a schedule it
collects the OS and kernel version, disk encryption, firewall and screen lock
state and each --edr product (running process, executable hash, last contact
with its management server), signs them with the device key and sends them
over TLS with the device certificate. It renews the certificate, with the
device key, when a third of its lifetime is left. It runs until interrupted
(SIGINT, SIGTERM); with --once it sends one report and prints the verdicts.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	usageErr := func(format string, a ...any) error {
		fmt.Fprintf(stderr, "ztna agent run: "+format+"\n", a...)
		return errUsage
	}
	if *stateDir == "" {
		return usageErr("--state-dir must not be empty")
	}
	if *interval < 0 || (*interval > 0 && *interval < time.Second) {
		return usageErr("--interval must be at least 1s (or 0 for the edge's suggestion)")
	}
	cfg := agent.Config{}
	for _, v := range edrs {
		e, err := parseEDR(v)
		if err != nil {
			return usageErr("%v", err)
		}
		cfg.EDR = append(cfg.EDR, e)
	}
	if err := cfg.Validate(); err != nil {
		return usageErr("--edr: %v", err)
	}
	if *edrCAFile != "" {
		pool, err := rootsWith("--edr-ca-file", *edrCAFile)
		if err != nil {
			return err
		}
		for i := range cfg.EDR {
			cfg.EDR[i].ManagerRootCAs = pool
		}
	}
	hc, err := edgeHTTPClient(*caFile)
	if err != nil {
		return err
	}
	defer hc.CloseIdleConnections()

	// --once prints its result; the running agent logs to stderr.
	level := slog.LevelInfo
	if *once {
		level = slog.LevelError
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.Logger = logger
	r := &agent.Runner{
		StateDir:  *stateDir,
		Collector: agent.New(cfg),
		Transport: hc.Transport.(*http.Transport),
		Interval:  *interval,
		Logger:    logger,
	}
	if !*once {
		if err := r.Run(ctx); err != nil {
			return fmt.Errorf("run: %w", err)
		}
		return nil
	}
	res, err := r.ReportOnce(ctx)
	if errors.Is(err, context.Canceled) {
		return errors.New("run: interrupted")
	}
	printResult(stdout, res)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	return nil
}

// printResult prints what one report attempt got from the edge.
func printResult(w io.Writer, res agent.Result) {
	var b strings.Builder
	if res.Renewed {
		fmt.Fprintf(&b, "The device certificate was renewed.\n")
	}
	if res.RenewErr != nil && res.Err != res.RenewErr {
		fmt.Fprintf(&b, "Renewing the device certificate failed (the report used the current one): %v\n", res.RenewErr)
	}
	if res.Accepted {
		fmt.Fprintf(&b, "The edge accepted this device's posture report at %s.\n", res.At.Local().Format(time.RFC3339))
		printVerdicts(&b, res.Profiles, res.Quarantined, res.Quarantine)
	}
	fmt.Fprint(w, b.String())
}

// printVerdicts prints the edge's verdicts in the status layout.
func printVerdicts(b *strings.Builder, profiles []agent.ProfileVerdict, quarantined bool, q *agent.QuarantineInfo) {
	line := func(label, format string, a ...any) {
		fmt.Fprintf(b, "%-14s"+format+"\n", append([]any{label}, a...)...)
	}
	if len(profiles) == 0 {
		line("Profiles", "none reported by the edge")
	}
	for i, p := range profiles {
		label := ""
		if i == 0 {
			label = "Profiles"
		}
		if p.OK {
			line(label, "%s: OK", p.Name)
			continue
		}
		line(label, "%s: failing", p.Name)
		for _, f := range p.Failures {
			line("", "  %s: %s", f.Check, f.Reason)
			if f.Fix != "" {
				line("", "    fix: %s", f.Fix)
			}
		}
	}
	switch {
	case quarantined && q != nil:
		src := ""
		if q.Source != "" {
			src = " (source: " + q.Source + ")"
		}
		line("Quarantine", "QUARANTINED: %s%s", q.Reason, src)
		if q.Fix != "" {
			line("", "  fix: %s", q.Fix)
		}
	case quarantined:
		line("Quarantine", "QUARANTINED")
	default:
		line("Quarantine", "no")
	}
}

// edgeHTTPClient trusts the system's roots plus, if given, the CA in caFile.
func edgeHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialer.DialContext(ctx, network, loopbackForLocalhost(addr))
	}
	if caFile != "" {
		pool, err := rootsWith("--ca-file", caFile)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: tr}, nil
}

// rootsWith returns the system's roots plus the PEM certificates in file,
// which flag names in errors.
func rootsWith(flag, file string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCAFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, file, err)
	}
	if len(data) > maxCAFileBytes {
		return nil, fmt.Errorf("%s %s: larger than %d bytes", flag, file, maxCAFileBytes)
	}
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s %s: no PEM certificate in it", flag, file)
	}
	return pool, nil
}

// loopbackForLocalhost sends localhost and names under .localhost to the
// loopback address, as browsers do (RFC 6761); the system resolver often
// does not, and `ztna dev` serves https://auth.localhost:8443.
func loopbackForLocalhost(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

func runAgentStatus(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent status", flag.ContinueOnError)
	stateDir := fs.String("state-dir", defaultStateDir(), "the agent's state directory")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: ztna agent status [flags]\n\nShows this device's enrollment (device ID, edge, certificate expiry and\nrenewal), the agent's latest report with the edge's verdicts (each posture\nprofile OK or failing, with reasons and fixes; quarantine), and how to make\nbrowsers present the device certificate.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	st, err := agent.ReadStatus(*stateDir)
	if errors.Is(err, agent.ErrNotEnrolled) {
		return fmt.Errorf("status: %w; run 'ztna agent enroll --server https://AUTH_HOST' first", err)
	}
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	printStatus(stdout, st, time.Now())
	return nil
}

func printStatus(w io.Writer, st agent.Status, now time.Time) {
	var b strings.Builder
	fmt.Fprintf(&b, "Device        %s\n", st.DeviceID)
	if st.UserID != "" {
		fmt.Fprintf(&b, "User          %s\n", st.UserID)
	}
	fmt.Fprintf(&b, "Server        %s\n", st.Server)
	if !st.EnrolledAt.IsZero() {
		fmt.Fprintf(&b, "Enrolled      %s\n", st.EnrolledAt.Local().Format(time.RFC3339))
	}
	fmt.Fprintf(&b, "Certificate   %s\n", st.Subject)
	switch {
	case st.Expired:
		fmt.Fprintf(&b, "Expires       %s: expired; the edge no longer accepts it ('ztna agent run' renews it with the device key unless the device was revoked)\n", st.NotAfter.Local().Format(time.RFC3339))
	case st.RenewalDue:
		fmt.Fprintf(&b, "Expires       %s: valid for %s; renewal due ('ztna agent run' renews it before its next report)\n", st.NotAfter.Local().Format(time.RFC3339), st.NotAfter.Sub(now).Round(time.Minute))
	default:
		fmt.Fprintf(&b, "Expires       %s: valid for %s\n", st.NotAfter.Local().Format(time.RFC3339), st.NotAfter.Sub(now).Round(time.Minute))
	}
	printLastReport(&b, st)
	fmt.Fprintf(&b, "Files         %s\n              %s\n              %s\n", st.CertFile, st.KeyFile, st.CAFile)
	fmt.Fprint(&b, browserHelp(st))
	fmt.Fprint(w, b.String())
}

// printLastReport prints the agent's latest report attempt and the edge's
// verdicts on the latest accepted one.
func printLastReport(b *strings.Builder, st agent.Status) {
	lr := st.LastReport
	switch {
	case st.LastReportErr != nil:
		fmt.Fprintf(b, "Last report   unreadable: %v\n", st.LastReportErr)
		return
	case lr == nil:
		fmt.Fprintf(b, "Last report   none yet: run 'ztna agent run' to report this device's posture\n")
		return
	case lr.Accepted:
		fmt.Fprintf(b, "Last report   %s: accepted\n", lr.At.Local().Format(time.RFC3339))
	default:
		fmt.Fprintf(b, "Last report   %s: failed: %s\n", lr.At.Local().Format(time.RFC3339), lr.Error)
	}
	if lr.RenewError != "" {
		fmt.Fprintf(b, "Renewal       failed: %s\n", lr.RenewError)
	}
	if lr.AcceptedAt.IsZero() {
		fmt.Fprintf(b, "Verdicts      none yet: the edge has not accepted a report from this device\n")
		return
	}
	if !lr.Accepted {
		fmt.Fprintf(b, "Last accepted %s; the verdicts below are from then\n", lr.AcceptedAt.Local().Format(time.RFC3339))
	}
	printVerdicts(b, lr.Profiles, lr.Quarantined, lr.Quarantine)
}

// browserHelp says how to make browsers present the device certificate. It
// prints commands; it never runs them.
func browserHelp(st agent.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nBrowsers: the edge asks every TLS connection for a certificate from the ztna\n")
	fmt.Fprintf(&b, "device CA; a browser presents this one once it is imported. The certificate is\n")
	fmt.Fprintf(&b, "short-lived: import it again after it is renewed or re-enrolled.\n")
	if runtime.GOOS != "linux" {
		fmt.Fprintf(&b, "On %s, import %s with the key %s into the\nuser's certificate store (not automated yet).\n", runtime.GOOS, st.CertFile, st.KeyFile)
		return b.String()
	}
	p12 := filepath.Join(filepath.Dir(st.CertFile), "device.p12")
	nick := "ztna device " + st.DeviceID
	fmt.Fprintf(&b, "\nOn Linux, Chromium (and Chrome) read the NSS database in ~/.pki/nssdb:\n\n")
	fmt.Fprintf(&b, "  mkdir -p ~/.pki/nssdb\n")
	fmt.Fprintf(&b, "  certutil -d sql:$HOME/.pki/nssdb -N --empty-password    # only if the database does not exist yet\n")
	// The PKCS#12 file holds the key unencrypted while it exists: umask 077.
	fmt.Fprintf(&b, "  (umask 077 && openssl pkcs12 -export -in %s -inkey %s -name %s -passout pass: -out %s)\n",
		shellQuote(st.CertFile), shellQuote(st.KeyFile), shellQuote(nick), shellQuote(p12))
	fmt.Fprintf(&b, "  pk12util -d sql:$HOME/.pki/nssdb -i %s -W ''\n", shellQuote(p12))
	fmt.Fprintf(&b, "  rm %s\n", shellQuote(p12))
	fmt.Fprintf(&b, "  certutil -d sql:$HOME/.pki/nssdb -L    # lists %s\n", shellQuote(nick))
	fmt.Fprintf(&b, "\nFirefox keeps its own database in its profile: before the rm, run the pk12util\n")
	fmt.Fprintf(&b, "line again with -d sql:$HOME/.mozilla/firefox/PROFILE (or import device.p12 under\n")
	fmt.Fprintf(&b, "Settings, Privacy & Security, View Certificates, Your Certificates).\n")
	fmt.Fprintf(&b, "\nWithout an auto-select rule Chromium asks which certificate to present. A policy\n")
	fmt.Fprintf(&b, "file, e.g. /etc/chromium/policies/managed/ztna.json (Chrome: /etc/opt/chrome/policies/managed/),\n")
	fmt.Fprintf(&b, "selects it for the edge's hosts (adjust the pattern to cover your apps):\n\n")
	fmt.Fprintf(&b, "  {\"AutoSelectCertificateForUrls\": [\"{\\\"pattern\\\":\\\"%s\\\",\\\"filter\\\":{\\\"ISSUER\\\":{\\\"CN\\\":\\\"ztna device CA\\\"}}}\"]}\n", autoSelectPattern(st.Server))
	return b.String()
}

// autoSelectPattern is a Chromium content-settings pattern for the edge's
// hosts: every name under the auth host's parent domain (apps usually sit
// next to the auth host), on the edge's port.
func autoSelectPattern(server string) string {
	u, err := url.Parse(server)
	if err != nil || u.Hostname() == "" {
		return "https://[*.]example.com"
	}
	host := u.Hostname()
	switch {
	case strings.Contains(host, ":"): // IPv6 literal
		host = "[" + host + "]"
	case net.ParseIP(host) == nil:
		if i := strings.IndexByte(host, '.'); i > 0 && i < len(host)-1 {
			host = host[i+1:] // auth.example.com → example.com, auth.localhost → localhost
		}
		host = "[*.]" + host
	}
	if p := u.Port(); p != "" {
		host += ":" + p
	}
	return "https://" + host
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+:@%=,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
