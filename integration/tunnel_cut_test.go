package integration

// tunnel_cut_test.go: continuous authorization of client tunnel streams and
// the client's reconnect, end to end on loopback over both ways a client
// reaches the edge: QUIC, and the HTTP/2 CONNECT fallback it picks by
// itself when UDP is blocked. A live stream with data flowing is cut, with
// the reason the client shows, when the session ends, when the device's
// posture report goes stale, and when a policy reload or a group or
// attribute change at the IdP removes access; a tunnel.Session comes back
// by itself, on the same transport, when the edge restarts on the same
// port and when the edge ends its connection at max_connection_duration,
// and a local forward listener stays open across both. Every test here
// checks that nothing it started outlives its dev system.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/posture"
	"github.com/ztna-dev/ztna/proxy"
	"github.com/ztna-dev/ztna/proxy/edge"
	"github.com/ztna-dev/ztna/proxy/tunnel"
)

// maxStreamCut is how long a live tunnel stream may outlive the trust
// change that ends it (PRODUCT.md: within 1 s).
const maxStreamCut = time.Second

// Reasons the edge gives a client for a cut (proxy/edge.go, proxy/posture.go).
const (
	reasonSessionEnded  = "session ended"
	reasonPolicyChanged = "policy changed"
	reasonNoLongerAllow = "access no longer allowed: "
	reasonPostureFailed = "device posture no longer met"
)

// leakCheckedEnv is newEnvWith with a goroutine-leak check that runs after
// the dev system and everything the test started are closed: its cleanup is
// registered first, so it runs last. Goroutines that were running before
// the test (other tests' leftovers on their way out) are ignored.
func leakCheckedEnv(t *testing.T, tune func(*devenv.Options)) *devenv.Env {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	return newEnvWith(t, tune)
}

// cutTestContext bounds a whole test.
func cutTestContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// echoPump keeps lines flowing through a tunnel stream to the echo app: it
// writes a line, reads its echo, and goes on every few milliseconds until
// the stream fails, and then records the error and when it came.
type echoPump struct {
	c        net.Conn
	greeting int   // bytes of the app's greeting
	sent     int64 // bytes written (after done)
	received int64 // bytes read, greeting included (after done)
	rounds   atomic.Int64
	done     chan struct{}
	err      error     // after done
	at       time.Time // after done
}

// pumpEcho opens a stream to echo with dial, reads the app's greeting,
// checks that it names alice, and starts the pump. The stream is closed,
// and the pump stopped, when the test ends.
func pumpEcho(t *testing.T, ctx context.Context, dial tunnel.DialApp) *echoPump {
	t.Helper()
	c, err := dial(ctx, "echo")
	if err != nil {
		t.Fatalf("dial echo: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second)) // bounds the pump
	br := bufio.NewReader(c)
	greeting, err := br.ReadString('\n')
	if err != nil || !strings.Contains(greeting, "alice@example.com") || !strings.Contains(greeting, `app "echo"`) {
		c.Close()
		t.Fatalf("echo greeting %q, %v", greeting, err)
	}
	p := &echoPump{c: c, greeting: len(greeting), received: int64(len(greeting)), done: make(chan struct{})}
	go p.run(br)
	t.Cleanup(func() {
		c.Close()
		<-p.done
	})
	return p
}

func (p *echoPump) run(br *bufio.Reader) {
	defer close(p.done)
	pace := time.NewTicker(5 * time.Millisecond)
	defer pace.Stop()
	for i := 0; ; i++ {
		line := fmt.Sprintf("line %d\n", i)
		n, err := io.WriteString(p.c, line)
		p.sent += int64(n)
		if err == nil {
			var got string
			got, err = br.ReadString('\n')
			p.received += int64(len(got))
			if err == nil && got != line {
				err = fmt.Errorf("echo %q, want %q", got, line)
			}
		}
		if err != nil {
			p.err, p.at = err, time.Now()
			return
		}
		p.rounds.Add(1)
		<-pace.C
	}
}

// flowing waits until n more lines have made the round trip.
func (p *echoPump) flowing(t *testing.T, n int64) {
	t.Helper()
	want := p.rounds.Load() + n
	waitFor(t, 5*time.Second, fmt.Sprintf("%d echo round trips", n), func() bool {
		select {
		case <-p.done:
			t.Fatalf("the stream failed while data was flowing: %v", p.err)
		default:
		}
		return p.rounds.Load() >= want
	})
}

// alive checks that the pump still runs.
func (p *echoPump) alive(t *testing.T, what string) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("%s: the stream was cut: %v", what, p.err)
	default:
	}
}

// cut waits up to timeout for the stream to fail and returns why and
// when. The pump's own error (from a Read or a Write) and a Read after it
// must both be the *tunnel.CutError, and its Reason must satisfy
// wantReason; anything else fails the test but still returns the error, so
// the caller's other checks report too.
func (p *echoPump) cut(t *testing.T, timeout time.Duration, wantReason func(string) bool) (error, time.Time) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("the stream was still open %v later (%d round trips)", timeout, p.rounds.Load())
	}
	var ce *tunnel.CutError
	if !errors.As(p.err, &ce) {
		t.Errorf("the stream ended with %T %q, want a *tunnel.CutError", p.err, p.err)
		return p.err, p.at
	}
	if !wantReason(ce.Reason) {
		t.Errorf("cut reason %q (%v)", ce.Reason, ce)
	}
	_, err := p.c.Read(make([]byte, 16))
	var again *tunnel.CutError
	if !errors.As(err, &again) || again.Reason != ce.Reason {
		t.Errorf("a Read after the cut: %T %v, want the same *tunnel.CutError", err, err)
	}
	return ce, p.at
}

// streamAudit is the JSON form of a stream or stream_close audit event.
type streamAudit struct {
	Time      time.Time     `json:"time"`
	Kind      string        `json:"kind"`
	User      string        `json:"user"`
	Device    string        `json:"device"`
	App       string        `json:"app"`
	Decision  string        `json:"decision"`
	Rule      string        `json:"rule"`
	Reason    string        `json:"reason"`
	Posture   string        `json:"posture"`
	BytesUp   int64         `json:"bytes_up"`
	BytesDown int64         `json:"bytes_down"`
	Duration  time.Duration `json:"duration_ns"`
}

// waitStreamAudit waits for a stream audit event that match accepts; on a
// timeout it shows the stream events it saw.
func waitStreamAudit(t *testing.T, env *devenv.Env, what string, match func(streamAudit) bool) streamAudit {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var seen []string
		for _, line := range auditLines(t, env) {
			var ev streamAudit
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("audit line is not JSON: %v: %q", err, line)
			}
			if !strings.HasPrefix(ev.Kind, "stream") {
				continue
			}
			if match(ev) {
				return ev
			}
			seen = append(seen, line)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for an audit event: %s; stream events:\n%s", what, strings.Join(seen, "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// expectCloseAudit checks the stream_close event of p's stream: alice, the
// echo app, a reason that wantReason accepts, and bytes that match what went
// through.
func expectCloseAudit(t *testing.T, env *devenv.Env, p *echoPump, wantReason func(string) bool) {
	t.Helper()
	// Lines in flight when the cut came may have reached the app (up) or
	// left it (down) without the client seeing their echo. Other echo
	// streams cut at the same moment (a forwarded connection) moved fewer
	// bytes: the pump's event is the one with at least what it saw echoed
	// (if none has, the wait fails and lists every stream event).
	echoed := p.received - int64(p.greeting)
	ev := waitStreamAudit(t, env, "echo's stream_close with the cut's reason", func(ev streamAudit) bool {
		return ev.Kind == "stream_close" && ev.User == "u-alice" && ev.App == "echo" && wantReason(ev.Reason) && ev.BytesUp >= echoed
	})
	if ev.BytesUp < echoed || ev.BytesUp > p.sent {
		t.Errorf("stream_close bytes_up %d, want between the %d bytes echoed back and the %d sent", ev.BytesUp, echoed, p.sent)
	}
	if ev.BytesDown < p.received || ev.BytesDown > int64(p.greeting)+ev.BytesUp {
		t.Errorf("stream_close bytes_down %d, want between the %d bytes received and greeting + bytes_up (%d)", ev.BytesDown, p.received, int64(p.greeting)+ev.BytesUp)
	}
	if ev.Decision != "close" || ev.Duration <= 0 {
		t.Errorf("stream_close %+v", ev)
	}
	t.Logf("stream_close: reason %q, bytes up %d down %d, duration %v", ev.Reason, ev.BytesUp, ev.BytesDown, ev.Duration.Round(time.Millisecond))
}

// runSession runs s until the test ends and returns where Run's result
// goes.
func runSession(t *testing.T, ctx context.Context, s *tunnel.Session) <-chan error {
	t.Helper()
	ran := make(chan error, 1)
	rctx, cancel := context.WithCancel(ctx)
	go func() { ran <- s.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		_ = s.Close()
	})
	return ran
}

// sessionConn waits for the session's connection other than old (nil: any).
func sessionConn(t *testing.T, s *tunnel.Session, old *tunnel.Conn, timeout time.Duration) *tunnel.Conn {
	t.Helper()
	var c *tunnel.Conn
	waitFor(t, timeout, "the tunnel session's connection", func() bool {
		c = s.Conn()
		return c != nil && c != old
	})
	return c
}

// tunnelPath is one way a test's client reaches the edge (tunnelClientVia)
// and the transport its connections must report.
type tunnelPath struct {
	via       string // viaQUIC or viaUDPBlocked
	transport string // tunnel.TransportQUIC or tunnel.TransportH2
}

// tunnelPaths: QUIC, and UDP blocked so the client falls back to HTTP/2.
var tunnelPaths = []tunnelPath{
	{viaQUIC, tunnel.TransportQUIC},
	{viaUDPBlocked, tunnel.TransportH2},
}

// forEachPath runs test once per tunnelPath, as subtests "quic" and
// "udp-blocked".
func forEachPath(t *testing.T, test func(t *testing.T, p tunnelPath)) {
	t.Helper()
	for _, p := range tunnelPaths {
		t.Run(p.via, func(t *testing.T) { test(t, p) })
	}
}

// client is a tunnel client of env over this path.
func (p tunnelPath) client(t *testing.T, env *devenv.Env, cookie string, cert *tls.Certificate) *tunnel.Client {
	t.Helper()
	return tunnelClientVia(t, env, cookie, cert, p.via)
}

// connect connects a client over this path and checks that the connection
// runs on the path's transport; it is closed when the test ends.
func (p tunnelPath) connect(t *testing.T, ctx context.Context, env *devenv.Env, cookie string, cert *tls.Certificate) *tunnel.Conn {
	t.Helper()
	conn, err := p.client(t, env, cookie, cert).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	p.expectTransport(t, conn, "the connection")
	return conn
}

// expectTransport checks that conn runs on this path's transport.
func (p tunnelPath) expectTransport(t *testing.T, conn *tunnel.Conn, what string) {
	t.Helper()
	if got := conn.Transport(); got != p.transport {
		t.Fatalf("%s runs over %q, want %q (%s)", what, got, p.transport, p.via)
	}
}

// frameLog records the control frames a client reports to OnEvent (apps,
// closed, bye), for what the client could show its user.
type frameLog struct {
	mu     sync.Mutex
	frames []tunnel.Frame
}

// record is a tunnel.Client.OnEvent; it does not block.
func (l *frameLog) record(f tunnel.Frame) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.frames = append(l.frames, f)
}

// byes returns the bye frames received so far.
func (l *frameLog) byes() []tunnel.Frame {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []tunnel.Frame
	for _, f := range l.frames {
		if f.Type == tunnel.FrameBye {
			out = append(out, f)
		}
	}
	return out
}

// expectBye checks the bye frames a client received: over HTTP/2 the bye
// is how the edge says why it ends a connection, so one must have come,
// with code and reason; over QUIC the close code carries it and the bye
// may be lost with the connection close, but one that came must say the
// same.
func expectBye(t *testing.T, p tunnelPath, frames *frameLog, code, reason string) {
	t.Helper()
	byes := frames.byes()
	if len(byes) == 0 && p.transport == tunnel.TransportH2 {
		t.Errorf("no bye frame over HTTP/2, want one with code %q and reason %q", code, reason)
	}
	for _, b := range byes {
		if b.Code != code || b.Reason != reason {
			t.Errorf("bye frame %+v, want code %q and reason %q", b, code, reason)
		}
	}
}

// localForward is a tunnel.Forward listener for the echo app through a
// Session, as `ztna tunnel forward echo` runs it.
type localForward struct {
	ln   net.Listener
	done chan error // Forward's result
}

// startForward serves a local forward listener for echo through sess until
// the test ends.
func startForward(t *testing.T, ctx context.Context, sess *tunnel.Session) *localForward {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fctx, stop := context.WithCancel(ctx)
	f := &localForward{ln: ln, done: make(chan error, 1)}
	go func() {
		f.done <- tunnel.Forward(fctx, ln, func(ctx context.Context) (net.Conn, error) { return sess.Dial(ctx, "echo") }, nil)
	}()
	t.Cleanup(func() {
		stop()
		<-f.done
	})
	return f
}

// dial opens a local connection to the listener; it is closed when the
// test ends.
func (f *localForward) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", f.ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatalf("the local forward listener: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// open checks that Forward still serves (it returns only when its
// listener is gone).
func (f *localForward) open(t *testing.T, what string) {
	t.Helper()
	select {
	case err := <-f.done:
		t.Fatalf("%s: the forward listener stopped: %v", what, err)
	default:
	}
}

// echoRoundTrip reads the echo app's greeting for alice on c, then sends
// what and reads its echo.
func echoRoundTrip(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if g, err := br.ReadString('\n'); err != nil || !strings.Contains(g, "alice@example.com") {
		t.Fatalf("%s: greeting %q, %v", what, g, err)
	}
	fmt.Fprintf(c, "%s\n", what)
	if l, err := br.ReadString('\n'); err != nil || l != what+"\n" {
		t.Fatalf("%s: echo %q, %v", what, l, err)
	}
}

// Revoking alice's session (by an admin, or by her signing out) cuts her
// live tunnel stream within a second, with the reason her client shows;
// her tunnel connection ends as revoked (QUIC: the close code; HTTP/2: the
// bye frame), the session stops instead of reconnecting, and the audit log
// closes the stream with the reason and the bytes that went through.
func TestTunnelCutOnSessionRevoked(t *testing.T) {
	tests := []struct {
		name   string
		revoke func(t *testing.T, env *devenv.Env, alice *http.Client, cookie string)
	}{
		{"admin revokes the session", func(t *testing.T, env *devenv.Env, _ *http.Client, cookie string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := env.Edge.Sessions().Revoke(ctx, sessionKey(cookie)); err != nil {
				t.Fatal(err)
			}
		}},
		{"alice signs out", func(t *testing.T, env *devenv.Env, alice *http.Client, _ string) {
			logoutVia(t, env, alice, "whoami")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachPath(t, func(t *testing.T, p tunnelPath) {
				env := leakCheckedEnv(t, nil)
				ctx := cutTestContext(t)
				alice := loginAs(t, env, "whoami", "alice", alicePassword)
				cookie := sessionCookie(t, env, alice, "whoami")
				_, cert := enrollDevice(t, env, "u-alice")
				client := p.client(t, env, cookie, &cert)
				frames := &frameLog{}
				client.OnEvent = frames.record
				sess := &tunnel.Session{Client: client, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
				ran := runSession(t, ctx, sess)

				pump := pumpEcho(t, ctx, sess.Dial)
				conn := sess.Conn()
				p.expectTransport(t, conn, "the session's connection")
				pump.flowing(t, 5)

				start := time.Now()
				tt.revoke(t, env, alice, cookie)
				isSessionEnded := func(r string) bool { return r == reasonSessionEnded }
				ce, at := pump.cut(t, 5*time.Second, isSessionEnded)
				took := at.Sub(start)
				t.Logf("%s: stream cut %v after the revocation began: %v", p.via, took.Round(time.Microsecond), ce)
				if took > maxStreamCut {
					t.Errorf("the stream was cut %v after the revocation, want < %v", took, maxStreamCut)
				}

				// The connection ends too, as revoked: no reconnect.
				select {
				case <-conn.Done():
				case <-time.After(2 * time.Second):
					t.Fatal("the tunnel connection of a revoked session stayed open")
				}
				if err := conn.Err(); err == nil || !strings.Contains(err.Error(), reasonSessionEnded) {
					t.Errorf("connection ended with %v, want the edge saying %q", err, reasonSessionEnded)
				}
				expectBye(t, p, frames, tunnel.ByeSessionRevoked, reasonSessionEnded)
				select {
				case err := <-ran:
					var authErr *tunnel.AuthError
					if !errors.As(err, &authErr) {
						t.Errorf("Session.Run returned %T %v, want a *tunnel.AuthError", err, err)
					}
					if _, err := sess.Dial(ctx, "echo"); !errors.As(err, &authErr) {
						t.Errorf("Session.Dial after the revocation: %v, want the *tunnel.AuthError", err)
					}
				case <-time.After(2 * time.Second):
					t.Error("Session.Run went on after the session was revoked")
				}
				expectCloseAudit(t, env, pump, isSessionEnded)
			})
		})
	}
}

// A stream to an app with a posture profile lives as long as the device's
// latest report is younger than the profile's max_age: once the device
// stops reporting, the stream is cut within max_age + 1 s of its last
// report, with a posture reason. Posture is decided per stream, so the
// tunnel connection stays up: a new stream is refused with a posture
// reason until the next report, which restores access.
func TestTunnelCutOnStalePosture(t *testing.T) {
	forEachPath(t, testTunnelCutOnStalePosture)
}

func testTunnelCutOnStalePosture(t *testing.T, p tunnelPath) {
	const maxAge = 2 * time.Second
	env := leakCheckedEnv(t, nil)
	ctx := cutTestContext(t)
	profile := posture.Profile{Name: "tunnel-fresh", MaxAge: maxAge}
	applyConfig(t, env, func(cfg *proxy.Config) {
		cfg.Posture.ReportInterval = testReportInterval
		cfg.Posture.Profiles = append(cfg.Posture.Profiles, profile)
		setAppProfile(t, cfg, "echo", profile.Name)
	})
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	dev := enrollReporter(t, env, "u-alice", "alice-tunnel")
	conn := p.connect(t, ctx, env, sessionCookie(t, env, alice, "whoami"), &dev.cert)

	// A stream is refused, with the posture reason, without a fresh report.
	expectPostureRefusal := func(what string) {
		t.Helper()
		_, err := conn.Dial(ctx, "echo")
		var de *tunnel.DialError
		if !errors.As(err, &de) || de.Status != tunnel.StatusDenied || !strings.Contains(de.Message, `"`+profile.Name+`" device profile`) {
			t.Fatalf("%s: dial echo: %v, want a denial naming the %s device profile", what, err, profile.Name)
		}
		t.Logf("%s: %v", what, err)
	}
	// No report yet.
	expectPostureRefusal("before any report")

	// The device reports; a stream opens and data flows.
	nonce := dev.nonce(t, env)
	nonce = dev.accept(t, env, sign(t, dev.key, dev.report(nonce))).NextNonce
	pump := pumpEcho(t, ctx, conn.Dial)
	pump.flowing(t, 3)

	// One more report, then the device goes quiet.
	sentAt := time.Now()
	dev.accept(t, env, sign(t, dev.key, dev.report(nonce)))
	acceptedAt := time.Now()

	isPosture := func(r string) bool { return r == reasonPostureFailed }
	ce, at := pump.cut(t, time.Until(acceptedAt.Add(maxAge+maxStreamCut)), isPosture)
	t.Logf("%s: stream cut %v after the last report (max_age %v): %v", p.via, at.Sub(acceptedAt).Round(time.Millisecond), maxAge, ce)
	if at.Before(sentAt.Add(maxAge)) {
		t.Errorf("the stream was cut %v after the last report, before it was max_age (%v) old", at.Sub(sentAt), maxAge)
	}

	// The connection stays up; new streams are refused for posture.
	select {
	case <-conn.Done():
		t.Fatalf("stale posture ended the tunnel connection: %v", conn.Err())
	default:
	}
	expectPostureRefusal("after the report went stale")
	waitStreamAudit(t, env, "echo refused for a stale report", func(ev streamAudit) bool {
		return ev.Kind == "stream" && ev.Time.After(at) && ev.App == "echo" && ev.Device == dev.id && ev.Decision == "deny" && ev.Posture == "fail:"+posture.CheckReport
	})
	expectCloseAudit(t, env, pump, isPosture)

	// The next report restores access on the same connection.
	dev.accept(t, env, sign(t, dev.key, dev.report(dev.nonce(t, env))))
	again := pumpEcho(t, ctx, conn.Dial)
	again.flowing(t, 1)
}

// A policy reload (a new config file) that drops alice's rule, or a group
// or attribute change at the IdP taken in by a refresh, cuts her live
// tunnel stream within a second with the reason; the tunnel connection
// stays up and a new stream to the app is refused.
func TestTunnelCutOnAccessRemoved(t *testing.T) {
	tests := []struct {
		name string
		// setup runs before the stream opens; remove takes the access away.
		setup      func(t *testing.T, env *devenv.Env)
		remove     func(t *testing.T, env *devenv.Env)
		wantReason func(string) bool
	}{
		{
			name: "policy reload drops the rule",
			remove: func(t *testing.T, env *devenv.Env) {
				path := filepath.Join(t.TempDir(), "ztna.yaml")
				cfg := currentConfig(env)
				setEchoRule(t, cfg, "finance-only", "finance")
				writeFile(t, path, configYAML(t, cfg, nil))
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if !env.Edge.Reload(ctx, path) {
					t.Fatalf("the reload was rejected:\n%s", processLog(t, env))
				}
			},
			wantReason: func(r string) bool { return r == reasonPolicyChanged },
		},
		{
			name: "IdP group change and refresh",
			remove: func(t *testing.T, env *devenv.Env) {
				if err := env.IdP.SetGroups("alice", []string{"security"}); err != nil {
					t.Fatal(err)
				}
				refreshAlice(t, env)
			},
			wantReason: func(r string) bool {
				return strings.HasPrefix(r, reasonNoLongerAllow) && strings.Contains(r, `app "echo"`)
			},
		},
		{
			name: "IdP job change and refresh",
			setup: func(t *testing.T, env *devenv.Env) {
				applyConfig(t, env, func(cfg *proxy.Config) { setEchoRule(t, cfg, "security-tech-only", "security-tech") })
			},
			remove: func(t *testing.T, env *devenv.Env) {
				moveAliceToSecurityPolicy(t, env)
				refreshAlice(t, env)
			},
			wantReason: func(r string) bool {
				return strings.HasPrefix(r, reasonNoLongerAllow) && strings.Contains(r, `app "echo"`)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(secretEnv, "dev-edge-secret") // the reload's config file takes the secret from it
			forEachPath(t, func(t *testing.T, p tunnelPath) {
				env := leakCheckedEnv(t, nil)
				ctx := cutTestContext(t)
				if tt.setup != nil {
					tt.setup(t, env)
				}
				alice := loginAs(t, env, "whoami", "alice", alicePassword)
				_, cert := enrollDevice(t, env, "u-alice")
				conn := p.connect(t, ctx, env, sessionCookie(t, env, alice, "whoami"), &cert)
				pump := pumpEcho(t, ctx, conn.Dial)
				pump.flowing(t, 5)

				start := time.Now()
				tt.remove(t, env)
				ce, at := pump.cut(t, 5*time.Second, tt.wantReason)
				took := at.Sub(start)
				t.Logf("%s: stream cut %v after the change began: %v", p.via, took.Round(time.Microsecond), ce)
				if took > maxStreamCut {
					t.Errorf("the stream was cut %v after the change, want ≤ %v", took, maxStreamCut)
				}

				select {
				case <-conn.Done():
					t.Fatalf("losing one app ended the tunnel connection: %v", conn.Err())
				default:
				}
				_, err := conn.Dial(ctx, "echo")
				var de *tunnel.DialError
				if !errors.As(err, &de) || (de.Status != tunnel.StatusDenied && de.Status != tunnel.StatusUnknownApp) {
					t.Errorf("dial echo after the change: %v, want a refusal", err)
				}
				expectCloseAudit(t, env, pump, tt.wantReason)
			})
		})
	}
}

// setEchoRule replaces the echo app's rules in cfg with one allow rule for
// the group named.
func setEchoRule(t *testing.T, cfg *proxy.Config, rule, group string) {
	t.Helper()
	for i := range cfg.Apps {
		if a := &cfg.Apps[i]; a.Name == "echo" {
			if len(a.Rules) != 1 {
				t.Fatalf("echo's demo rules changed: %+v", a.Rules)
			}
			a.Rules[0].Name, a.Rules[0].Groups = rule, []string{group}
			return
		}
	}
	t.Fatal("no echo app in the config")
}

// refreshAlice has an admin refresh alice's sessions from the IdP now.
func refreshAlice(t *testing.T, env *devenv.Env) {
	t.Helper()
	out := decodeObject(t, adminCall(t, env, http.MethodPost, "/api/users/u-alice/refresh", ""), http.StatusOK)
	if n, _ := out["refreshed"].(float64); n < 1 {
		t.Fatalf("refresh answer %v, want at least one session refreshed", out)
	}
}

// The edge restarts — stopped, then started again on the same port with
// the same state directory — and a tunnel.Session reconnects by itself with
// its small backoff, on the transport it used before: over QUIC, or over
// HTTP/2 where UDP is blocked (the client remembers that QUIC failed and
// does not wait for it again). The local forward listener stays open
// throughout: a connection made to it while the edge is down is carried
// once the edge is back, and new ones work as before. Stopping is a
// restart for clients however the edge is stopped: drained first, as
// `ztna serve` does on SIGTERM (edge.Server.Run returns, then
// proxy.Edge.Close), or all at once by devenv.Env.Close, as `ztna dev`
// does.
func TestTunnelReconnectAfterEdgeRestart(t *testing.T) {
	tests := []struct {
		name string
		stop func(ctx context.Context, env *devenv.Env) error
	}{
		{"drained then closed, as ztna serve stops", func(ctx context.Context, env *devenv.Env) error {
			return errors.Join(env.Server.Shutdown(ctx), env.Close(ctx))
		}},
		{"devenv Close, as ztna dev stops", func(ctx context.Context, env *devenv.Env) error {
			return env.Close(ctx)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachPath(t, func(t *testing.T, p tunnelPath) { testReconnectAfterRestart(t, p, tt.stop) })
		})
	}
}

// fallbackLog is what the client logs when QUIC fails and it tries HTTP/2
// (proxy/tunnel/client.go, Client.dial).
const fallbackLog = "QUIC did not connect; trying HTTP/2"

func testReconnectAfterRestart(t *testing.T, p tunnelPath, stop func(context.Context, *devenv.Env) error) {
	dataDir := t.TempDir()
	env := leakCheckedEnv(t, func(o *devenv.Options) { o.DataDir = dataDir })
	ctx := cutTestContext(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	_, cert := enrollDevice(t, env, "u-alice")
	port := env.Server.UDPAddr().(*net.UDPAddr).Port
	edgeAddr := env.EdgeAddr

	client := p.client(t, env, cookie, &cert)
	clientLog := &syncBuffer{}
	client.Logger = slog.New(slog.NewTextHandler(clientLog, nil))
	// Short QUIC timeouts, so an attempt against the stopped edge gives up
	// within the test's seconds (quic-go ignores ICMP port unreachable).
	client.QUICConfig = &quic.Config{HandshakeIdleTimeout: 500 * time.Millisecond, MaxIdleTimeout: 2 * time.Second, KeepAlivePeriod: 500 * time.Millisecond}
	sess := &tunnel.Session{Client: client, MinBackoff: 50 * time.Millisecond, MaxBackoff: 250 * time.Millisecond}
	ran := runSession(t, ctx, sess)
	first := sessionConn(t, sess, nil, 10*time.Second)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tunnel client log:\n%s", clientLog)
		}
	})
	p.expectTransport(t, first, "the first connection")

	fwd := startForward(t, ctx, sess)
	echoRoundTrip(t, fwd.dial(t), "before the restart")

	// Stop the edge (and the whole dev system around it). Alice's browser
	// hangs up first, so its idle HTTP/2 connection does not hold the drain.
	alice.CloseIdleConnections()
	stopped := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := stop(sctx, env)
	cancel()
	if err != nil {
		t.Fatalf("stop the edge: %v", err)
	}
	select {
	case <-first.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the tunnel connection outlived the edge")
	}
	t.Logf("%s: edge stopped in %v; the connection ended with: %v", p.via, time.Since(stopped).Round(time.Millisecond), first.Err())
	// While the edge is down: the local listener still accepts, and the
	// session keeps trying (a stopping edge is no authentication failure).
	waiting := fwd.dial(t)
	waitFor(t, 5*time.Second, "a failed reconnect attempt against the stopped edge", func() bool {
		select {
		case err := <-ran:
			t.Fatalf("Session.Run gave up when the edge stopped: %v", err)
		default:
		}
		return strings.Contains(clientLog.String(), "tunnel connect failed")
	})

	// Start it again on the same port with the same state.
	waitFor(t, 5*time.Second, fmt.Sprintf("port %d to be free for the restart", port), func() bool { return portFree(port) })
	restarted := time.Now()
	env2 := newEnvWith(t, func(o *devenv.Options) {
		o.DataDir = dataDir
		o.Listen = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	})
	if got := env2.Server.UDPAddr().(*net.UDPAddr).Port; got != port || env2.EdgeAddr != edgeAddr {
		t.Fatalf("the restarted edge serves %s (UDP port %d), want %s", env2.EdgeAddr, got, edgeAddr)
	}
	up := time.Now()
	second := sessionConn(t, sess, first, 10*time.Second)
	t.Logf("%s: edge down for %v (the restart took %v); the session reconnected %v after the new edge was up",
		p.via, up.Sub(stopped).Round(time.Millisecond), up.Sub(restarted).Round(time.Millisecond), time.Since(up).Round(time.Millisecond))
	if w := second.Welcome(); w.User != "u-alice" {
		t.Errorf("welcome after the restart: %+v", w)
	}
	// UDP works on the QUIC path, so the client must not have settled for
	// HTTP/2 because an attempt overlapped the restart.
	if got := second.Transport(); got != p.transport {
		t.Errorf("the connection after the restart runs over %q, want %q (%s); the client fell back to HTTP/2 %d times",
			got, p.transport, p.via, strings.Count(clientLog.String(), fallbackLog))
	}
	if p.transport == tunnel.TransportH2 {
		// One fallback, at the first connect: the reconnects went to
		// HTTP/2 first instead of waiting for QUIC each time.
		if n := strings.Count(clientLog.String(), fallbackLog); n != 1 {
			t.Errorf("the client fell back from QUIC to HTTP/2 %d times, want once (at the first connect)", n)
		}
	}

	// The connection made while the edge was down is carried now; new
	// ones work; the forward listener never closed.
	echoRoundTrip(t, waiting, "made while the edge was down")
	echoRoundTrip(t, fwd.dial(t), "after the restart")
	fwd.open(t, "after the restart")
	select {
	case err := <-ran:
		t.Fatalf("Session.Run stopped: %v", err)
	default:
	}
	waitStreamAudit(t, env2, "a stream through the restarted edge", func(ev streamAudit) bool {
		return ev.Kind == "stream" && ev.User == "u-alice" && ev.App == "echo" && ev.Decision == "allow"
	})
}

// portFree reports whether both the TCP and the UDP port on 127.0.0.1 can
// be bound now (it releases them at once).
func portFree(port int) bool {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	tl, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer tl.Close()
	ul, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	ul.Close()
	return true
}

// tunnelGoAwayGrace is how long the edge gives a tunnel connection, after
// max_connection_duration, before it closes the connection itself
// (proxy/edge: defaultTunnelGoAwayGrace).
const tunnelGoAwayGrace = 2 * time.Second

// The edge ends a tunnel connection at listen.max_connection_duration, as
// maintenance needs (seed 004: connections drain and clients reconnect,
// possibly elsewhere). The client is told why — a bye frame, a QUIC close
// with "going away" — and a tunnel.Session reconnects by itself on the
// same transport, with no authentication failure. A stream opened before
// the deadline is ended by then, with a reason that names the maximum
// connection duration, so the user knows it was not a trust decision; the
// local forward listener stays open, its connection opened before the
// deadline is closed, and new connections through it and Dial work on the
// new connection. The edge counts the connection it ended.
func TestTunnelReconnectMaxConnectionDuration(t *testing.T) {
	forEachPath(t, testReconnectMaxConnectionDuration)
}

func testReconnectMaxConnectionDuration(t *testing.T, p tunnelPath) {
	const maxDuration = 2 * time.Second
	reg := prometheus.NewRegistry()
	env := leakCheckedEnv(t, func(o *devenv.Options) {
		o.MaxConnectionDuration = maxDuration
		o.Registry = reg
	})
	ctx := cutTestContext(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	cookie := sessionCookie(t, env, alice, "whoami")
	alice.CloseIdleConnections() // the browser is done; the tunnel is what expires
	_, cert := enrollDevice(t, env, "u-alice")

	client := p.client(t, env, cookie, &cert)
	frames := &frameLog{}
	client.OnEvent = frames.record
	clientLog := &syncBuffer{}
	client.Logger = slog.New(slog.NewTextHandler(clientLog, nil))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tunnel client log:\n%s", clientLog)
		}
	})
	sess := &tunnel.Session{Client: client, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	dialStarted := time.Now() // the edge's connection starts after this
	ran := runSession(t, ctx, sess)
	first := sessionConn(t, sess, nil, 10*time.Second)
	connected := time.Now() // … and before this
	p.expectTransport(t, first, "the first connection")

	// Before the deadline: a stream with data flowing, and a connection
	// through the local forward listener.
	fwd := startForward(t, ctx, sess)
	held := fwd.dial(t)
	echoRoundTrip(t, held, "opened before the deadline")
	pump := pumpEcho(t, ctx, sess.Dial)
	pump.flowing(t, 3)

	// At the deadline the edge ends the stream, saying why.
	isMaxDuration := func(r string) bool { return strings.Contains(r, edge.ErrMaxConnectionDuration.Error()) }
	latest := connected.Add(maxDuration + tunnelGoAwayGrace + maxStreamCut)
	ce, at := pump.cut(t, time.Until(latest), isMaxDuration)
	t.Logf("%s: stream cut %v after the connection began (max_connection_duration %v): %v",
		p.via, at.Sub(connected).Round(time.Millisecond), maxDuration, ce)
	if at.Before(dialStarted.Add(maxDuration)) {
		t.Errorf("the stream was cut %v after the connection began, before max_connection_duration (%v)", at.Sub(dialStarted), maxDuration)
	}

	// The connection ends as "going away", not as an authentication
	// failure.
	select {
	case <-first.Done():
	case <-time.After(time.Until(latest)):
		t.Fatal("the tunnel connection outlived max_connection_duration and the edge's grace")
	}
	ended := time.Now()
	t.Logf("%s: the connection ended %v after it began: %v", p.via, ended.Sub(connected).Round(time.Millisecond), first.Err())
	if err := first.Err(); err == nil || !isMaxDuration(err.Error()) {
		t.Errorf("connection ended with %v, want the edge saying %q", err, edge.ErrMaxConnectionDuration)
	}
	expectBye(t, p, frames, tunnel.ByeGoingAway, edge.ErrMaxConnectionDuration.Error())

	// The session reconnects by itself, on the same transport.
	second := sessionConn(t, sess, first, 5*time.Second)
	t.Logf("%s: the session reconnected %v after the connection ended", p.via, time.Since(ended).Round(time.Millisecond))
	p.expectTransport(t, second, "the connection after max_connection_duration")
	if w := second.Welcome(); w.User != "u-alice" {
		t.Errorf("welcome after the reconnect: %+v", w)
	}
	select {
	case err := <-ran:
		t.Fatalf("Session.Run stopped at max_connection_duration: %v", err)
	default:
	}

	// The forwarded connection opened before the deadline was closed with
	// its stream; the listener is still open and carries new connections;
	// Dial works on the new connection.
	_ = held.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := held.Read(make([]byte, 64)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the forwarded connection opened before the deadline is still open: read %d bytes, %v", n, err)
	}
	echoRoundTrip(t, fwd.dial(t), "through the forward listener after the reconnect")
	fwd.open(t, "after the reconnect")
	c, err := sess.Dial(ctx, "echo")
	if err != nil {
		t.Fatalf("Session.Dial after the reconnect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	echoRoundTrip(t, c, "dialled after the reconnect")

	// The edge counted the connection it ended: a QUIC tunnel connection,
	// or an HTTP/2 one. (The HTTP/2 count also takes in any of alice's
	// browser connections still open at the deadline, so over QUIC it
	// proves nothing.)
	tunnelClosed := counterValue(t, reg, "ztna_edge_tunnel_connections_closed_total", "reason", "max_duration")
	h2Closed := counterValue(t, reg, "ztna_edge_connections_max_duration_closed_total", "proto", "h2")
	t.Logf("%s: ztna_edge_tunnel_connections_closed_total{reason=max_duration} %v, ztna_edge_connections_max_duration_closed_total{proto=h2} %v",
		p.via, tunnelClosed, h2Closed)
	switch p.transport {
	case tunnel.TransportQUIC:
		if tunnelClosed < 1 {
			t.Errorf("over QUIC: %v QUIC tunnel connections counted as closed at max_connection_duration, want ≥ 1", tunnelClosed)
		}
	case tunnel.TransportH2:
		if h2Closed < 1 || tunnelClosed != 0 {
			t.Errorf("over HTTP/2: %v HTTP/2 and %v QUIC tunnel connections counted as closed at max_connection_duration, want ≥ 1 and 0", h2Closed, tunnelClosed)
		}
	}

	// The audit log says why the stream ended.
	expectCloseAudit(t, env, pump, isMaxDuration)
}

// counterValue is the counter name{label="value"} in reg; 0 if it has no
// such series.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
