// Package redistest starts real redis-server processes for tests: on a free
// loopback port, in a temporary directory, optionally with an ACL user,
// TLS, an append-only file (so Restart keeps the data) or as Redis Cluster
// nodes. The processes are killed in t.Cleanup, and by the kernel if the
// test binary dies first (Linux).
//
// It never mocks Redis and never skips because redis-server is missing: a
// test that needs Redis fails with how to install it (`make test` does).
// Only the TLS option may skip, when the installed redis-server was built
// without TLS, and never when CI=true.
//
// It is for tests only and must never be imported by production code.
package redistest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Bounds for the waits. A server that is not answering within startLimit
// of being started is broken, not slow.
const (
	startLimit   = 15 * time.Second
	stopLimit    = 10 * time.Second
	pollEvery    = 10 * time.Millisecond
	bindAttempts = 5
)

// Option configures Start.
type Option func(*options)

type options struct {
	user, password string
	userRules      string
	appendOnly     bool
	tls            bool
	tlsClientAuth  bool
	cluster        bool
	sentinelOf     string // the master's address: run as its Sentinel
	// masterUser and masterPassword: the Sentinel's credentials for its
	// master (the master's WithUser).
	masterUser, masterPassword string
}

// WithUser disables the default user and creates an ACL user with password
// (printable, no spaces or quotes). rules are Redis ACL rules for the user;
// none means every key, channel and command ("~* &* +@all").
func WithUser(name, password string, rules ...string) Option {
	return func(o *options) {
		o.user, o.password = name, password
		o.userRules = strings.Join(rules, " ")
	}
}

// WithAppendOnly keeps the data in an append-only file synced on every
// write, so that Restart (even after Stop's kill -9) finds it again.
func WithAppendOnly() Option { return func(o *options) { o.appendOnly = true } }

// WithTLS serves only TLS, with a certificate for 127.0.0.1 and localhost
// signed by a test CA (see TLS). Clients need no certificate.
func WithTLS() Option { return func(o *options) { o.tls = true } }

// WithTLSClientAuth is WithTLS with client certificates required.
func WithTLSClientAuth() Option {
	return func(o *options) { o.tls, o.tlsClientAuth = true, true }
}

// withCluster makes the server a Redis Cluster node (StartCluster).
func withCluster() Option { return func(o *options) { o.cluster = true } }

// Server is one redis-server child process. Its methods that can fail
// (Stop, Restart, Client, PasswordFile) report through the t of the test
// that started it, so call them from that test's goroutine.
type Server struct {
	t       testing.TB
	bin     string
	dir     string
	opts    options
	port    int
	busPort int // cluster bus; 0 when not a cluster node
	tls     TLSFiles

	mu   sync.Mutex
	proc *process // nil while stopped
}

type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd.Wait returned
}

// TLSFiles are the PEM files of a TLS server: the CA that signed its
// certificate, and a client certificate and key it accepts.
type TLSFiles struct {
	CAFile   string
	CertFile string
	KeyFile  string
}

// Start starts a redis-server and waits until it answers PING. It fails t
// if redis-server is not installed or does not come up within seconds. With
// WithTLS on a redis-server built without TLS it skips t, saying so, or
// fails it when CI=true.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{t: t, bin: lookPath(t, "redis-server"), dir: t.TempDir()}
	for _, o := range opts {
		o(&s.opts)
	}
	if s.opts.user != "" && !plainWord(s.opts.user+s.opts.password) {
		t.Fatalf("redistest: user name and password must be printable without spaces or quotes")
	}
	if s.opts.tls {
		s.tls = writeTestPKI(t, s.dir)
	}
	t.Cleanup(s.cleanup)

	var lastErr error
	for range bindAttempts {
		s.port = freePort(t)
		if s.opts.cluster {
			for s.busPort = freePort(t); s.busPort == s.port; s.busPort = freePort(t) {
			}
		}
		err := s.start()
		if err == nil {
			return s
		}
		lastErr = err
		if !errors.Is(err, errAddrInUse) {
			break
		}
	}
	if s.opts.tls && errors.Is(lastErr, errNoTLS) {
		msg := "redistest: the installed redis-server was built without TLS support; TLS cases need one built with TLS (BUILD_TLS=yes; Debian's redis-server is)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Fatalf("redistest: %v", lastErr)
	return nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// TLS returns the server's TLS files (zero without WithTLS).
func (s *Server) TLS() TLSFiles { return s.tls }

// PasswordFile writes the server's password (the ACL user's, or a
// Sentinel's requirepass) to a mode 0600 file, as a password_file setting
// expects, and returns its path ("" without one).
func (s *Server) PasswordFile() string {
	if s.opts.password == "" {
		return ""
	}
	path := filepath.Join(s.dir, "password")
	if err := os.WriteFile(path, []byte(s.opts.password+"\n"), 0o600); err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
	return path
}

// Client returns a go-redis client for the server (with the ACL user and
// TLS client certificate when configured), closed at the end of the test.
// Tests use it to look behind the code under test.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(s.clientOptions())
	s.t.Cleanup(func() { c.Close() })
	return c
}

func (s *Server) clientOptions() *redis.Options {
	o := &redis.Options{
		Addr:                     s.Addr(),
		Username:                 s.opts.user,
		Password:                 s.opts.password,
		DialTimeout:              time.Second,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if s.opts.tls {
		o.TLSConfig = s.tls.clientConfig(s.t)
	}
	return o
}

// Stop kills the server with SIGKILL, as a crash or an outage would, and
// waits until it has exited. Restart starts it again on the same port.
func (s *Server) Stop() {
	s.t.Helper()
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p == nil {
		return
	}
	if err := p.kill(); err != nil {
		s.t.Fatalf("redistest: stop: %v", err)
	}
}

// Restart stops the server if it runs and starts it again on the same port
// and directory; with WithAppendOnly it has the same data.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("redistest: restart on port %d: %v", s.port, err)
	}
}

func (s *Server) cleanup() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p != nil {
		if err := p.kill(); err != nil {
			s.t.Errorf("redistest: %v", err)
		}
	}
	if s.t.Failed() {
		s.t.Logf("redistest: redis-server log (%s):\n%s", s.Addr(), s.logTail())
	}
}

func (p *process) kill() error {
	// An error here means it has exited already; waiting tells.
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
		return nil
	case <-time.After(stopLimit):
		return fmt.Errorf("redis-server pid %d still running %v after SIGKILL", p.cmd.Process.Pid, stopLimit)
	}
}

var (
	errAddrInUse = errors.New("address already in use")
	errNoTLS     = errors.New("redis-server has no TLS support")
)

// start writes the config, starts the process and waits until it answers.
func (s *Server) start() error {
	conf := filepath.Join(s.dir, "redis.conf")
	if err := os.WriteFile(conf, s.config(), 0o600); err != nil {
		return err
	}
	logPath := filepath.Join(s.dir, "redis.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	logStart, _ := logf.Seek(0, 2)

	args := []string{conf}
	if s.opts.sentinelOf != "" {
		args = append(args, "--sentinel")
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()

	if err := s.waitReady(p); err != nil {
		_ = p.kill()
		log := s.logSince(logStart)
		switch {
		case strings.Contains(log, "Address already in use"):
			return fmt.Errorf("port %d: %w", s.port, errAddrInUse)
		case s.opts.tls && strings.Contains(log, "Bad directive") && strings.Contains(log, "tls"):
			return errNoTLS
		}
		return fmt.Errorf("redis-server on %s: %w; its log:\n%s", s.Addr(), err, log)
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return nil
}

// waitReady polls PING until it succeeds, the process exits, or startLimit.
func (s *Server) waitReady(p *process) error {
	ctx, cancel := context.WithTimeout(context.Background(), startLimit)
	defer cancel()
	o := s.clientOptions()
	o.MaxRetries = -1
	o.DialTimeout = 250 * time.Millisecond
	o.ReadTimeout = 250 * time.Millisecond
	c := redis.NewClient(o)
	defer c.Close()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var err error
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("redis-server exited during startup (%v)", p.cmd.ProcessState)
		default:
		}
		pingCtx, cancelPing := context.WithTimeout(ctx, time.Second)
		err = c.Ping(pingCtx).Err()
		cancelPing()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("redis-server exited during startup (%v)", p.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("no answer to PING within %v: %w", startLimit, err)
		case <-tick.C:
		}
	}
}

// config is the server's redis.conf.
func (s *Server) config() []byte {
	var b bytes.Buffer
	line := func(args ...string) {
		for i, a := range args {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(a)
		}
		b.WriteByte('\n')
	}
	line("bind", "127.0.0.1")
	if m := s.opts.sentinelOf; m != "" {
		host, port, _ := net.SplitHostPort(m)
		line("port", strconv.Itoa(s.port))
		line("dir", quote(s.dir))
		line("daemonize", "no")
		line("logfile", `""`)
		line("sentinel", "monitor", SentinelMaster, host, port, "1")
		line("sentinel", "down-after-milliseconds", SentinelMaster, "5000")
		if s.opts.masterUser != "" {
			line("sentinel", "auth-user", SentinelMaster, s.opts.masterUser)
			line("sentinel", "auth-pass", SentinelMaster, s.opts.masterPassword)
		}
		if s.opts.password != "" {
			line("requirepass", s.opts.password)
		}
		return b.Bytes()
	}
	if s.opts.tls {
		line("port", "0")
		line("tls-port", strconv.Itoa(s.port))
		line("tls-cert-file", quote(filepath.Join(s.dir, "server.pem")))
		line("tls-key-file", quote(filepath.Join(s.dir, "server-key.pem")))
		line("tls-ca-cert-file", quote(s.tls.CAFile))
		line("tls-auth-clients", map[bool]string{true: "yes", false: "no"}[s.opts.tlsClientAuth])
	} else {
		line("port", strconv.Itoa(s.port))
	}
	line("dir", quote(s.dir))
	line("daemonize", "no")
	line("logfile", `""`)
	line("save", `""`)
	if s.opts.appendOnly {
		line("appendonly", "yes")
		line("appendfsync", "always")
	} else {
		line("appendonly", "no")
	}
	if s.opts.user != "" {
		rules := s.opts.userRules
		if rules == "" {
			rules = "~* &* +@all"
		}
		line("user", "default", "off")
		line("user", s.opts.user, "on", ">"+s.opts.password, rules)
	}
	if s.opts.cluster {
		line("cluster-enabled", "yes")
		line("cluster-config-file", quote(filepath.Join(s.dir, "nodes.conf")))
		line("cluster-node-timeout", "5000")
		line("cluster-port", strconv.Itoa(s.busPort))
	}
	return b.Bytes()
}

// quote makes s one argument of a redis.conf line.
func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func plainWord(s string) bool {
	for _, r := range s {
		if r <= ' ' || r >= 0x7f || r == '"' || r == '\'' || r == '\\' {
			return false
		}
	}
	return true
}

func (s *Server) logSince(off int64) string {
	data, err := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	if err != nil || off > int64(len(data)) {
		return ""
	}
	return string(data[off:])
}

func (s *Server) logTail() string {
	log := s.logSince(0)
	if len(log) > 4000 {
		log = "…" + log[len(log)-4000:]
	}
	return log
}

// freePort returns a loopback TCP port that was free a moment ago. Redis
// cannot listen on port 0 (it means "no TCP"), so Start picks one this way
// and retries when another process took it meanwhile.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func lookPath(t testing.TB, name string) string {
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("redistest: %s not found in PATH: install redis-server (make test does; apt-get install redis-server)", name)
	}
	return path
}

func (f TLSFiles) clientConfig(t testing.TB) *tls.Config {
	pool, cert := loadClientPKI(t, f)
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}
