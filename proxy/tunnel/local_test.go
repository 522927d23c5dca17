package tunnel

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"
)

// localServer runs serveFn on a loopback listener and stops it at cleanup,
// checking that it returns nil once ctx is cancelled.
func localServer(t *testing.T, serveFn func(ctx context.Context, ln net.Listener) error) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- serveFn(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("server returned %v after cancel", err)
			}
		case <-time.After(testBound):
			t.Error("server did not return after cancel")
		}
	})
	return ln.Addr().String()
}

// tunnelFixture is an edge with echo, denied, unknown and unavailable apps,
// and a connected client.
func tunnelFixture(t *testing.T) *Conn {
	t.Helper()
	e := newTestEdge(t, map[string]string{"echo": echoServer(t), "down": closedPort(t)})
	return connect(t, e.client(t, goodToken))
}

func dialTCP(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testBound)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(testBound))
	return c.(*net.TCPConn)
}

func TestForward(t *testing.T) {
	conn := tunnelFixture(t)
	addr := localServer(t, func(ctx context.Context, ln net.Listener) error {
		return Forward(ctx, ln, func(ctx context.Context) (net.Conn, error) { return conn.Dial(ctx, "echo") }, nil)
	})
	for i := range 3 { // several connections, each its own stream
		c := dialTCP(t, addr)
		msg := strings.Repeat("forward ", 10_000+i)
		go func() {
			_, _ = io.WriteString(c, msg)
			_ = c.CloseWrite() // half-close must reach the echo server...
		}()
		got, err := io.ReadAll(c) // ...and its half-close must come back
		if err != nil || string(got) != msg {
			t.Fatalf("forward echo: %d bytes, %v", len(got), err)
		}
	}
}

func TestForwardStopsWithActiveConnections(t *testing.T) {
	conn := tunnelFixture(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- Forward(ctx, ln, func(ctx context.Context) (net.Conn, error) { return conn.Dial(ctx, "echo") }, nil)
	}()
	c := dialTCP(t, ln.Addr().String())
	if _, err := io.WriteString(c, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Forward = %v", err)
		}
	case <-time.After(testBound):
		t.Fatal("Forward did not return with a connection open")
	}
	if _, err := io.ReadAll(c); err != nil && !isTimeout(err) {
		// A reset is fine too: what matters is that the read ends.
		var ne *net.OpError
		if !errors.As(err, &ne) {
			t.Fatalf("read after stop: %v", err)
		}
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Fatal("listener still open after Forward returned")
	}
}

func TestSOCKS5WithXNetProxy(t *testing.T) {
	conn := tunnelFixture(t)
	addr := localServer(t, func(ctx context.Context, ln net.Listener) error {
		return ServeSOCKS5(ctx, ln, conn.Dial, nil)
	})
	d, err := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.(proxy.ContextDialer).DialContext(testCtx(t), "tcp", "echo:7")
	if err != nil {
		t.Fatalf("SOCKS5 dial: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testBound))
	if _, err := io.WriteString(c, "through socks"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("through socks"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "through socks" {
		t.Fatalf("echo %q, %v", got, err)
	}
	// Refusals surface through the real client too.
	if c, err := d.(proxy.ContextDialer).DialContext(testCtx(t), "tcp", "denied:22"); err == nil {
		c.Close()
		t.Fatal("SOCKS5 dial to a denied app succeeded")
	}
}

func TestSOCKS5Refusals(t *testing.T) {
	conn := tunnelFixture(t)
	addr := localServer(t, func(ctx context.Context, ln net.Listener) error {
		return ServeSOCKS5(ctx, ln, conn.Dial, nil)
	})
	domain := func(cmd byte, name string) []byte {
		return append(append([]byte{5, cmd, 0, 3, byte(len(name))}, name...), 0, 22)
	}
	tests := []struct {
		name    string
		request []byte
		reply   byte
	}{
		{"ipv4", []byte{5, 1, 0, 1, 10, 0, 0, 1, 0, 22}, socksAddressUnsupported},
		{"ipv6", append(append([]byte{5, 1, 0, 4}, make([]byte, 16)...), 0, 22), socksAddressUnsupported},
		{"bind", domain(2, "echo"), socksCommandUnsupported},
		{"udp associate", domain(3, "echo"), socksCommandUnsupported},
		{"denied", domain(1, "denied"), socksNotAllowed},
		{"unknown", domain(1, "nope"), socksHostUnreachable},
		{"unavailable", domain(1, "down"), socksConnectionRefused},
		{"not an app name", domain(1, "db.internal.example"), socksHostUnreachable},
		{"ip as domain", domain(1, "10.0.0.1"), socksHostUnreachable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialTCP(t, addr)
			if _, err := c.Write([]byte{5, 1, 0}); err != nil {
				t.Fatal(err)
			}
			method := make([]byte, 2)
			if _, err := io.ReadFull(c, method); err != nil || method[1] != 0 {
				t.Fatalf("method reply %v, %v", method, err)
			}
			if _, err := c.Write(tt.request); err != nil {
				t.Fatal(err)
			}
			reply := make([]byte, 10)
			if _, err := io.ReadFull(c, reply); err != nil {
				t.Fatalf("read reply: %v", err)
			}
			if reply[0] != 5 || reply[1] != tt.reply {
				t.Fatalf("reply code %#x, want %#x", reply[1], tt.reply)
			}
			if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Fatalf("connection left open after refusal: %d, %v", n, err)
			}
		})
	}
	t.Run("no acceptable auth method", func(t *testing.T) {
		c := dialTCP(t, addr)
		if _, err := c.Write([]byte{5, 1, 2}); err != nil { // username/password only
			t.Fatal(err)
		}
		reply := make([]byte, 2)
		if _, err := io.ReadFull(c, reply); err != nil || reply[1] != 0xFF {
			t.Fatalf("reply %v, %v; want 0xFF", reply, err)
		}
	})
}

func TestHTTPConnect(t *testing.T) {
	conn := tunnelFixture(t)
	addr := localServer(t, func(ctx context.Context, ln net.Listener) error {
		return ServeHTTPConnect(ctx, ln, conn.Dial, nil)
	})

	t.Run("connect with early data", func(t *testing.T) {
		c := dialTCP(t, addr)
		// The client sends bytes right after the request head; they must not be lost.
		if _, err := io.WriteString(c, "CONNECT echo:7 HTTP/1.1\r\nHost: echo:7\r\n\r\nearly bytes"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("response %v, %v", resp, err)
		}
		if _, err := io.WriteString(c, " and more"); err != nil {
			t.Fatal(err)
		}
		_ = c.CloseWrite()
		got, err := io.ReadAll(br)
		if err != nil || string(got) != "early bytes and more" {
			t.Fatalf("echo %q, %v", got, err)
		}
	})

	tests := []struct {
		name    string
		request string
		status  int
		body    string
	}{
		{"get", "GET http://echo/ HTTP/1.1\r\nHost: echo\r\n\r\n", http.StatusMethodNotAllowed, "only CONNECT"},
		{"denied", "CONNECT denied:22 HTTP/1.1\r\nHost: denied:22\r\n\r\n", http.StatusForbidden, denyReason},
		{"unknown", "CONNECT nope:22 HTTP/1.1\r\nHost: nope:22\r\n\r\n", http.StatusNotFound, "no such app: nope"},
		{"unavailable", "CONNECT down:22 HTTP/1.1\r\nHost: down:22\r\n\r\n", http.StatusBadGateway, "app unavailable"},
		{"ip address", "CONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: 10.0.0.1:22\r\n\r\n", http.StatusBadRequest, "not an app name"},
		{"garbage", "\x16\x03\x01 not http\r\n\r\n", http.StatusBadRequest, "malformed"},
		{"huge header", "CONNECT echo:7 HTTP/1.1\r\nX: " + strings.Repeat("a", maxHTTPHeader) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialTCP(t, addr)
			go func() { _, _ = io.WriteString(c, tt.request) }()
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode != tt.status || !strings.Contains(string(body), tt.body) {
				t.Fatalf("got %d %q, want %d containing %q", resp.StatusCode, body, tt.status, tt.body)
			}
		})
	}
}
