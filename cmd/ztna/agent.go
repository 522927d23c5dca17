package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
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
by a client certificate issued to a key that never leaves the device.

Commands:
  enroll --server https://AUTH_HOST   enroll this device (you confirm a code in the browser)
  status                              show this device's enrollment and how browsers use it

Coming next: run (signed posture reports on a schedule).

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

// edgeHTTPClient trusts the system's roots plus, if given, the CA in caFile.
func edgeHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialer.DialContext(ctx, network, loopbackForLocalhost(addr))
	}
	if caFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		f, err := os.Open(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		defer f.Close()
		data, err := io.ReadAll(io.LimitReader(f, maxCAFileBytes+1))
		if err != nil {
			return nil, fmt.Errorf("--ca-file %s: %w", caFile, err)
		}
		if len(data) > maxCAFileBytes {
			return nil, fmt.Errorf("--ca-file %s: larger than %d bytes", caFile, maxCAFileBytes)
		}
		if !pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate in it", caFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: tr}, nil
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
		fmt.Fprint(fs.Output(), "Usage: ztna agent status [flags]\n\nShows this device's enrollment: device ID, edge, certificate expiry, and how\nto make browsers present the device certificate.\n\nFlags:\n")
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
	if st.Expired {
		fmt.Fprintf(&b, "Expires       %s: expired; the edge no longer accepts it (enroll again)\n", st.NotAfter.Local().Format(time.RFC3339))
	} else {
		fmt.Fprintf(&b, "Expires       %s: valid for %s\n", st.NotAfter.Local().Format(time.RFC3339), st.NotAfter.Sub(now).Round(time.Minute))
	}
	fmt.Fprintf(&b, "Files         %s\n              %s\n              %s\n", st.CertFile, st.KeyFile, st.CAFile)
	fmt.Fprint(&b, browserHelp(st))
	fmt.Fprint(w, b.String())
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
