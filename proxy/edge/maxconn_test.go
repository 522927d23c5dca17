package edge

import (
	"net/http"
	"testing"
	"time"
)

const testMaxAge = 300 * time.Millisecond

// outlive waits until a connection opened before now is older than the
// maximum age. Waiting for time to pass is the behaviour under test here,
// not synchronisation.
func outlive() { time.Sleep(testMaxAge + 50*time.Millisecond) }

// TestMaxConnectionDurationOnRequest: a request on a connection older than
// the maximum gets Connection: close (h1) or causes GOAWAY (h2), and the
// client's next request opens a new connection. The janitor is off so only
// the request path is exercised.
func TestMaxConnectionDurationOnRequest(t *testing.T) {
	tests := []struct {
		name  string
		h2    bool
		proto string
	}{
		{"h1 Connection close", false, protoH1},
		{"h2 GOAWAY", true, protoH2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fastConfig()
			cfg.MaxConnectionDuration = testMaxAge
			e := startEnv(t, cfg, okHandler, Options{}, func(s *Server) { s.janitorEvery = -1 })
			c := e.tcpClient(tt.h2)
			var dials dialCounter

			resp, _ := get(t, c, e.httpsURL("/"), &dials)
			if resp.Close || resp.Header.Get("Connection") != "" {
				t.Fatalf("young connection told to close: Close=%v Connection=%q", resp.Close, resp.Header.Get("Connection"))
			}
			outlive()
			resp, body := get(t, c, e.httpsURL("/"), &dials)
			if resp.StatusCode != 200 {
				t.Fatalf("request on old connection: %d %q", resp.StatusCode, body)
			}
			if !tt.h2 && !resp.Close {
				t.Errorf("h1 response on old connection lacks Connection: close")
			}
			if tt.h2 && resp.Header.Get("Connection") != "" {
				t.Errorf("h2 response carries a Connection header: %q", resp.Header.Get("Connection"))
			}
			if d := dials.n.Load(); d != 1 {
				t.Fatalf("%d dials before the old connection was given up, want 1", d)
			}
			for range 3 {
				resp, _ = get(t, c, e.httpsURL("/"), &dials)
				if resp.StatusCode != 200 || resp.Close {
					t.Fatalf("request on the new connection: %d Close=%v", resp.StatusCode, resp.Close)
				}
			}
			if d := dials.n.Load(); d != 2 {
				t.Errorf("%d dials, want 2 (the client reconnected once)", d)
			}
			if got := maxClosed(e, tt.proto); got != 1 {
				t.Errorf("max_duration_closed_total{%s} = %v, want 1", tt.proto, got)
			}
		})
	}
}

// TestMaxConnectionDurationIdle: the janitor closes idle connections older
// than the maximum, and clients reconnect transparently.
func TestMaxConnectionDurationIdle(t *testing.T) {
	cfg := fastConfig()
	cfg.MaxConnectionDuration = testMaxAge
	e := startEnv(t, cfg, okHandler, Options{}, nil)

	for _, proto := range []string{protoH1, protoH2, protoH3} {
		t.Run(proto, func(t *testing.T) {
			w := newConnWatch()
			c := e.watchedClient(proto, w)
			url := e.httpsURL("/")
			if proto == protoH3 {
				url = e.h3URL("/")
			}
			get(t, c, url, nil)
			if got := gauge(e, proto); got != 1 {
				t.Fatalf("open %s connections = %v, want 1", proto, got)
			}
			eventually(t, 3*time.Second, "janitor closes the idle "+proto+" connection", func() bool {
				return gauge(e, proto) == 0
			})
			if got := maxClosed(e, proto); got != 1 {
				t.Errorf("max_duration_closed_total{%s} = %v, want 1", proto, got)
			}
			select {
			case <-w.closed:
			case <-time.After(3 * time.Second):
				t.Fatal("client never noticed the server closed its idle connection")
			}
			resp, _ := get(t, c, url, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("request after the janitor closed the connection: %d", resp.StatusCode)
			}
			if d := w.dials.Load(); d != 2 {
				t.Errorf("%d dials, want 2", d)
			}
		})
	}
}

// TestMaxConnectionDurationKeepsActive: a connection busy with a request
// when it passes the maximum is not cut; the request completes.
func TestMaxConnectionDurationKeepsActive(t *testing.T) {
	cfg := fastConfig()
	cfg.MaxConnectionDuration = testMaxAge
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		outlive()
		_, _ = w.Write([]byte("survived"))
	})
	e := startEnv(t, cfg, h, Options{}, nil)
	for _, c := range []struct {
		client *http.Client
		url    string
	}{{e.tcpClient(false), e.httpsURL("/")}, {e.tcpClient(true), e.httpsURL("/")}, {e.h3Client(), e.h3URL("/")}} {
		resp, body := get(t, c.client, c.url, nil)
		if resp.StatusCode != 200 || body != "survived" {
			t.Errorf("%s: %d %q, want the long request to complete", resp.Proto, resp.StatusCode, body)
		}
	}
}
