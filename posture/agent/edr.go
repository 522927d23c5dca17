package agent

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// maxExeSize bounds how much of an executable is hashed; EDR sensors are
// tens of MiB, so anything larger is refused rather than read forever.
const maxExeSize = 512 << 20

// process is one entry of the platform's process list. Exe is "" when the
// platform could not tell (permissions, or only names are listed).
type process struct {
	PID  int
	Name string
	Exe  string
	// start distinguishes a process from a later one reusing its PID where
	// the platform exposes it (Linux: start time in clock ticks).
	start uint64
}

// collectEDR reports every configured EDR in configuration order.
func (c *Collector) collectEDR(ctx context.Context) ([]EDRState, error) {
	states := make([]EDRState, 0, len(c.cfg.EDR))
	if len(c.cfg.EDR) == 0 {
		return states, nil
	}
	var errs []error
	procs, err := c.listProcesses(ctx)
	if err != nil {
		// Unknown is reported as not running: the edge fails closed.
		errs = append(errs, fmt.Errorf("list processes: %w", err))
	}
	for _, e := range c.cfg.EDR {
		st := EDRState{Name: e.Name, ManagerAddr: e.ManagerAddr}
		if p, ok := pickProcess(procs, e.ProcessNames); ok && ctx.Err() == nil {
			st.Running = true
			st.PID = p.PID
			st.ExePath = p.Exe
			path, sum, err := c.exeHash(ctx, p)
			if path != "" {
				st.ExePath = path
			}
			st.ExeSHA256 = sum
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: hash executable of pid %d: %w", e.Name, p.PID, err))
			}
		}
		if e.ManagerAddr != "" {
			c.probeManager(ctx, e, &st)
		}
		states = append(states, st)
	}
	return states, errors.Join(errs...)
}

// pickProcess returns the matching process with the lowest PID, so repeated
// collections report the same (usually the longest-lived) instance.
func pickProcess(procs []process, names []string) (process, bool) {
	var (
		best  process
		found bool
	)
	for _, p := range procs {
		if found && p.PID >= best.PID {
			continue
		}
		for _, n := range names {
			if n != "" && matchProcess(p, n) {
				best, found = p, true
				break
			}
		}
	}
	return best, found
}

// hashExecutable returns the hex SHA-256 of r, refusing more than
// maxExeSize bytes and stopping when ctx ends.
func hashExecutable(ctx context.Context, r io.Reader) (string, error) {
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(ctxReader{ctx, r}, maxExeSize+1))
	if err != nil {
		return "", err
	}
	if n > maxExeSize {
		return "", fmt.Errorf("executable larger than %d MiB", maxExeSize>>20)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ctxReader stops a long read when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// probeManager dials the EDR's management server and records the outcome in
// st, remembering the last success across collections so a blocked server
// shows as an ageing ManagerLastReached plus a ManagerError.
func (c *Collector) probeManager(ctx context.Context, e EDRConfig, st *EDRState) {
	err := c.dialManager(ctx, e)
	key := e.Name + "\x00" + e.ManagerAddr
	c.mu.Lock()
	if err == nil {
		c.lastReached[key] = time.Now().UTC().Round(0)
	}
	st.ManagerLastReached = c.lastReached[key]
	c.mu.Unlock()
	if err != nil {
		st.ManagerError = managerErrorReason(err)
		c.log.Debug("edr manager unreachable", "edr", e.Name, "addr", e.ManagerAddr, "err", err)
	}
}

// dialManager completes a verified TLS handshake with the management server
// and hangs up; reaching the TCP port alone is not enough, since a local
// interceptor could accept the connection.
func (c *Collector) dialManager(ctx context.Context, e EDRConfig) error {
	host, _, err := net.SplitHostPort(e.ManagerAddr)
	if err != nil {
		return err
	}
	serverName := e.ManagerServerName
	if serverName == "" {
		serverName = host
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{
		ServerName: serverName,
		RootCAs:    e.ManagerRootCAs,
		MinVersion: tls.VersionTLS12,
	}}
	conn, err := d.DialContext(ctx, "tcp", e.ManagerAddr)
	if err != nil {
		return err
	}
	_ = conn.Close()
	return nil
}

// managerErrorReason turns a dial error into a short, stable reason for the
// report (the full error goes to the debug log).
func managerErrorReason(err error) string {
	var (
		netErr  net.Error
		dnsErr  *net.DNSError
		certErr *tls.CertificateVerificationError
		unkAuth x509.UnknownAuthorityError
		hostErr x509.HostnameError
		invErr  x509.CertificateInvalidError
		alert   tls.AlertError
	)
	switch {
	case errors.As(err, &dnsErr):
		return "dns lookup failed"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection reset during handshake"
	case errors.As(err, &unkAuth):
		return "certificate signed by unknown authority"
	case errors.As(err, &hostErr):
		return "certificate not valid for server name"
	case errors.As(err, &invErr):
		return "certificate invalid"
	case errors.As(err, &certErr):
		return "certificate verification failed"
	case errors.As(err, &alert):
		return "tls handshake failed"
	}
	return firstLine(err.Error())
}
