package integration

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
	redisstore "github.com/ztna-dev/ztna/internal/store/redis"
	"github.com/ztna-dev/ztna/internal/store/redistest"
)

const (
	// fanoutRounds is how many revocations BenchmarkRevocationFanout times,
	// whatever b.N is (run it with -benchtime 1x).
	fanoutRounds = 1000
	// fanoutLimit is how long a revoked session's WebSocket may stay open
	// on the other replica before the benchmark fails: far above the 1 s
	// target, so a slow machine reports a bad p99 and a missing fan-out
	// (the WebSocket is never closed) fails.
	fanoutLimit = 5 * time.Second
	// fanoutRoundWait bounds one round's dial, echo and revocation.
	fanoutRoundWait = 15 * time.Second
)

// BenchmarkRevocationFanout: two replicas of one edge share a real
// redis-server. fanoutRounds times: a session for alice is created on
// replica A, a WebSocket to whoami's echo is opened through A with it (and
// one message echoed, so it is live end to end), the session is revoked on
// replica B, and the time from the Revoke call to the WebSocket read on A
// failing is recorded. Reports p50, p99 and max in ms (target p99 ≤ 1 s);
// fails if any WebSocket was not closed within fanoutLimit.
func BenchmarkRevocationFanout(b *testing.B) {
	a, bb := benchReplicaPair(b)
	var alice authn.Identity
	for _, u := range a.Users {
		if u.Username == "alice" {
			alice = authn.Identity{Subject: u.Subject, Email: u.Email, Name: u.Name, Groups: u.Groups, Attributes: u.Attributes}
		}
	}
	if alice.Subject == "" {
		b.Fatal("no demo user alice")
	}
	dialer := benchWSDialer(b, a)
	wsURL := "wss://" + strings.TrimPrefix(a.AppURL("whoami"), "https://") + "/ws"

	took := make([]time.Duration, 0, fanoutRounds)
	b.ResetTimer()
	for i := range fanoutRounds {
		d, err := revokeAcrossReplicas(a, bb, dialer, wsURL, alice)
		if err != nil {
			b.Fatalf("revocation %d of %d: %v", i+1, fanoutRounds, err)
		}
		took = append(took, d)
	}
	b.StopTimer()

	slices.Sort(took)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	var sum time.Duration
	for _, d := range took {
		sum += d
	}
	b.ReportMetric(0, "ns/op") // the whole run is one op; the latencies are what counts
	b.ReportMetric(float64(len(took)), "revocations")
	b.ReportMetric(ms(percentile(took, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(took, 99)), "p99-ms")
	b.ReportMetric(ms(took[len(took)-1]), "max-ms")
	b.ReportMetric(ms(sum/time.Duration(len(took))), "mean-ms")
}

// revokeAcrossReplicas runs one round of BenchmarkRevocationFanout and
// returns how long after the revocation on b the WebSocket on a closed.
func revokeAcrossReplicas(a, b *devenv.Env, dialer *websocket.Dialer, wsURL string, id authn.Identity) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), fanoutRoundWait)
	defer cancel()
	s, err := a.Edge.Sessions().Create(ctx, id, authn.Tokens{})
	if err != nil {
		return 0, fmt.Errorf("create session on A: %w", err)
	}
	h := http.Header{}
	h.Set("Cookie", authn.SessionCookie+"="+s.ID)
	conn, resp, err := dialer.DialContext(ctx, wsURL, h)
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return 0, fmt.Errorf("WebSocket to A: %w (status %d)", err, status)
	}
	defer conn.Close()

	// One echo: the connection is through the edge to the app and back.
	_ = conn.SetWriteDeadline(time.Now().Add(fanoutLimit))
	_ = conn.SetReadDeadline(time.Now().Add(fanoutLimit))
	if err := conn.WriteMessage(websocket.TextMessage, []byte("ping")); err != nil {
		return 0, fmt.Errorf("WebSocket write: %w", err)
	}
	if _, msg, err := conn.ReadMessage(); err != nil {
		return 0, fmt.Errorf("WebSocket read: %w", err)
	} else if want := id.Subject + ": ping"; string(msg) != want {
		return 0, fmt.Errorf("echo = %q, want %q", msg, want)
	}

	start := time.Now()
	if err := b.Edge.Sessions().Revoke(ctx, s.Key); err != nil {
		return 0, fmt.Errorf("revoke on B: %w", err)
	}
	_ = conn.SetReadDeadline(start.Add(fanoutLimit))
	for {
		_, _, err = conn.ReadMessage()
		if err != nil {
			break
		}
	}
	took := time.Since(start)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return 0, fmt.Errorf("the WebSocket on A was still open %v after the revocation on B", fanoutLimit)
	}
	return took, nil
}

// percentile is the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100 // ceil(n·p/100)
	return sorted[max(i, 1)-1]
}

// benchReplicaPair is replicaPair for a benchmark: two dev systems with the
// same data dir sharing a real redis-server, stopped when b ends. Their
// process log (info and up) is printed only if b fails.
func benchReplicaPair(b *testing.B) (a, bb *devenv.Env) {
	b.Helper()
	srv := redistest.Start(b)
	var id [4]byte
	_, _ = rand.Read(id[:])
	rc := &redisstore.Config{Addrs: []string{srv.Addr()}, KeyPrefix: "ztna:" + hex.EncodeToString(id[:]) + ":"}
	dir := b.TempDir()
	return startBenchReplica(b, dir, rc), startBenchReplica(b, dir, rc)
}

func startBenchReplica(b *testing.B, dir string, rc *redisstore.Config) *devenv.Env {
	b.Helper()
	logs := &syncBuffer{}
	b.Cleanup(func() {
		if b.Failed() {
			s := logs.String()
			if len(s) > 64<<10 {
				s = "…" + s[len(s)-64<<10:]
			}
			b.Logf("process log:\n%s", s)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env, err := devenv.Start(ctx, devenv.Options{
		DataDir:      dir,
		Listen:       "127.0.0.1:0",
		AdminListen:  "127.0.0.1:0",
		IdPListen:    "127.0.0.1:0",
		Logger:       slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		GraceTimeout: 2 * time.Second,
		Redis:        rc,
	})
	if err != nil {
		b.Fatalf("start replica: %v", err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := env.Close(ctx); err != nil {
			b.Errorf("close replica: %v", err)
		}
	})
	return env
}

// benchWSDialer dials env's edge for every host name and trusts its dev CA.
func benchWSDialer(b *testing.B, env *devenv.Env) *websocket.Dialer {
	b.Helper()
	pem, err := os.ReadFile(env.CAFile)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		b.Fatal("dev CA: no certificate")
	}
	nd := &net.Dialer{Timeout: 5 * time.Second}
	return &websocket.Dialer{
		TLSClientConfig:  &tls.Config{RootCAs: pool},
		HandshakeTimeout: 5 * time.Second,
		NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return nd.DialContext(ctx, network, env.EdgeAddr)
		},
	}
}
