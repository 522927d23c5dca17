package integration

import (
	"bufio"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy/edge"
)

// viaLoadBalancer sends one whoami request to the edge as a load balancer
// would: a PROXY v2 header naming client, then TLS and HTTP.
func viaLoadBalancer(t *testing.T, env *devenv.Env, client *net.TCPAddr, cookie string) (*http.Response, error) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", env.EdgeAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	hdr := proxyproto.HeaderProxyFromAddrs(2, client, raw.RemoteAddr().(*net.TCPAddr))
	hdr.Command = proxyproto.PROXY
	if _, err := hdr.WriteTo(raw); err != nil {
		return nil, err
	}
	host := hostOf(t, env.AppURL("whoami"))
	tc := tls.Client(raw, &tls.Config{ServerName: strings.Split(host, ":")[0], RootCAs: devCAPool(t, env), NextProtos: []string{"http/1.1"}})
	req, _ := http.NewRequest("GET", env.AppURL("whoami")+"/?format=json", nil)
	req.Header.Set("Accept", "application/json")
	req.AddCookie(&http.Cookie{Name: authn.SessionCookie, Value: cookie})
	if err := req.Write(tc); err != nil {
		return nil, err
	}
	return http.ReadResponse(bufio.NewReader(tc), req)
}

// The client address a trusted load balancer reports is the one the audit
// log, X-Forwarded-For and the outbound PROXY header carry.
func TestInboundProxyFromTrustedLoadBalancer(t *testing.T) {
	env := newEnvWith(t, func(o *devenv.Options) {
		o.ProxyProtocol = edge.InboundProxy{TrustedCIDRs: []string{"127.0.0.1/32"}}
	})
	c := loginAs(t, env, "whoami", "alice", "alice-password")
	cookie := sessionCookie(t, env, c, "whoami")
	client := &net.TCPAddr{IP: net.IPv4(203, 0, 113, 9), Port: 4242}
	resp, err := viaLoadBalancer(t, env, client, cookie)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := new(strings.Builder)
	_, _ = bufio.NewReader(resp.Body).WriteTo(buf)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, buf)
	}
	rep := decodeReport(t, []byte(buf.String()))
	if rep.ForwardedFor != "203.0.113.9" {
		t.Errorf("X-Forwarded-For %q, want the load balancer's client 203.0.113.9", rep.ForwardedFor)
	}
	if rep.ProxyClient != "203.0.113.9:4242" {
		t.Errorf("outbound PROXY client %q, want 203.0.113.9:4242", rep.ProxyClient)
	}
	evs := waitAudit(t, env, "/", 1)
	found := false
	for _, e := range evs {
		if e.Source == "203.0.113.9:4242" {
			found = true
		}
	}
	if !found {
		t.Errorf("no audit event names the real client 203.0.113.9:4242: %+v", evs)
	}
}

// A PROXY header from a peer that is not a trusted load balancer closes the
// connection: a client cannot claim another address.
func TestInboundProxyFromUntrustedPeerRefused(t *testing.T) {
	env := newEnvWith(t, func(o *devenv.Options) {
		o.ProxyProtocol = edge.InboundProxy{TrustedCIDRs: []string{"10.0.0.0/8"}}
	})
	c := loginAs(t, env, "whoami", "alice", "alice-password")
	cookie := sessionCookie(t, env, c, "whoami")
	resp, err := viaLoadBalancer(t, env, &net.TCPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 1}, cookie)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a spoofed PROXY header from an untrusted peer was served: %d", resp.StatusCode)
	}
	// Without a header, the same peer is served as itself.
	rep := whoamiAs(t, c, env, "whoami", "/")
	if rep.ForwardedFor != "127.0.0.1" {
		t.Errorf("X-Forwarded-For %q, want 127.0.0.1", rep.ForwardedFor)
	}
}
