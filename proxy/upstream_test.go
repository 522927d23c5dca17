package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/authn"
	"github.com/ztna-dev/ztna/proxy/identity"
)

// seenIdentity is what the test upstream reports about a request.
type seenIdentity struct {
	Sub      string `json:"sub"`
	Header   string `json:"header_user"`
	Proto    string `json:"proto"`
	ClientCN string `json:"client_cn"`
}

// startIdentityUpstream serves an app behind identity.NewListener (PROXY
// v2 required), optionally TLS over it, answering with the connection's
// verified identity.
func startIdentityUpstream(t *testing.T, ks *identity.KeySet, aud string, tlsConf *tls.Config, h2c bool) string {
	t.Helper()
	v, err := identity.NewVerifier(identity.VerifierConfig{Issuer: testIssuer, Audience: aud, Keys: ks.JWKS()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pln, err := identity.NewListener(ln, identity.ListenerConfig{Verifier: v, HeaderTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		ConnContext: identity.ConnContext,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, ok := identity.ConnIdentity(r.Context())
			s := seenIdentity{Header: r.Header.Get(HeaderUser), Proto: r.Proto}
			if ok {
				s.Sub = c.Subject
			}
			if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
				s.ClientCN = r.TLS.PeerCertificates[0].Subject.CommonName
			}
			_ = json.NewEncoder(w).Encode(s)
		}),
	}
	if h2c {
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
	}
	var serveLn net.Listener = pln
	if tlsConf != nil {
		serveLn = tls.NewListener(pln, tlsConf)
	}
	go func() { _ = srv.Serve(serveLn) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// askAs sends n requests concurrently as sess through the edge front and
// checks every one arrived with sess's identity on its connection.
func askAs(t *testing.T, front string, sub string, n int) []seenIdentity {
	t.Helper()
	c := testClient(t)
	var mu sync.Mutex
	var out []seenIdentity
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(front + "/")
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var s seenIdentity
			if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&s) != nil {
				t.Errorf("status %d", resp.StatusCode)
				return
			}
			if s.Sub != sub || s.Header != sub {
				t.Errorf("request of %s arrived as connection identity %q, header %q", sub, s.Sub, s.Header)
			}
			mu.Lock()
			out = append(out, s)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func TestProxyV2OverH2C(t *testing.T) {
	e, ks := testEdge(t)
	addr := startIdentityUpstream(t, ks, "app", nil, true)
	alice := newSession(t, authn.Identity{Subject: "u-alice", Email: "alice@example.com"})
	bob := newSession(t, authn.Identity{Subject: "u-bob", Email: "bob@example.com"})
	fa := forwardTo(t, e, "h2c://"+addr, AppConfig{Name: "app", ProxyProtocol: "v2"}, alice)
	fb := forwardTo(t, e, "h2c://"+addr, AppConfig{Name: "app", ProxyProtocol: "v2"}, bob)
	for _, s := range append(askAs(t, fa, "u-alice", 20), askAs(t, fb, "u-bob", 20)...) {
		if s.Proto != "HTTP/2.0" {
			t.Fatalf("upstream saw %s, want HTTP/2.0 (h2c)", s.Proto)
		}
	}
}

func TestProxyV2BeforeTLSWithClientCertificate(t *testing.T) {
	dir := t.TempDir()
	caKey, caCert := newTestCA(t)
	srvCert := issueCert(t, caKey, caCert, "upstream", []string{"127.0.0.1"}, x509.ExtKeyUsageServerAuth)
	cliCert := issueCert(t, caKey, caCert, "ztna-edge", nil, x509.ExtKeyUsageClientAuth)
	caFile := writePEMFile(t, dir, "ca.pem", "CERTIFICATE", caCert.Raw)
	certFile := writePEMFile(t, dir, "client.pem", "CERTIFICATE", cliCert.Certificate[0])
	kb, _ := x509.MarshalECPrivateKey(cliCert.PrivateKey.(*ecdsa.PrivateKey))
	keyFile := writePEMFile(t, dir, "client-key.pem", "EC PRIVATE KEY", kb)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)

	e, ks := testEdge(t)
	addr := startIdentityUpstream(t, ks, "app", &tls.Config{
		Certificates: []tls.Certificate{srvCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool,
	}, false)
	alice := newSession(t, authn.Identity{Subject: "u-alice"})
	front := forwardTo(t, e, "https://"+addr, AppConfig{Name: "app", ProxyProtocol: "v2",
		UpstreamCAFile: caFile, UpstreamClientCertFile: certFile, UpstreamClientKeyFile: keyFile}, alice)
	for _, s := range askAs(t, front, "u-alice", 5) {
		if s.ClientCN != "ztna-edge" {
			t.Fatalf("upstream saw client certificate %q, want ztna-edge", s.ClientCN)
		}
	}
}

func TestIdentityPoolsBounded(t *testing.T) {
	p := newIdentityPools(PoolConfig{MaxIdentities: 3, IdleTimeout: time.Minute}, newPoolMetrics(nil))
	a := &app{}
	made := 0
	mk := func() *http.Transport { made++; return NewUpstreamTransport() }
	keys := []poolKey{{app: a, session: "s1"}, {app: a, session: "s2"}, {app: a, session: "s3"}, {app: a, session: "s4"}}
	for _, k := range keys[:3] {
		p.transport(k, mk)
		time.Sleep(time.Millisecond) // distinct last-used times
	}
	if tr1, tr1again := p.transport(keys[1], mk), p.transport(keys[1], mk); tr1 != tr1again || made != 3 {
		t.Fatalf("same identity should reuse its pool (made %d)", made)
	}
	p.transport(keys[3], mk) // evicts the least recently used: s1
	if len(p.m) != 3 {
		t.Fatalf("%d pools, want the bound 3", len(p.m))
	}
	if _, ok := p.m[keys[0]]; ok {
		t.Error("the least recently used pool (s1) should have been evicted")
	}
	p.sweep(time.Now().Add(2 * time.Minute))
	if len(p.m) != 0 {
		t.Errorf("%d pools left after the idle timeout", len(p.m))
	}
}

func TestProxyHeaderFitsReceivers(t *testing.T) {
	ks := identity.NewKeySet(newKey(t))
	groups := make([]string, 300)
	for i := range groups {
		groups[i] = fmt.Sprintf("group-with-a-rather-long-name-%03d", i)
	}
	sess := newSession(t, authn.Identity{Subject: "u-many", Email: "many@example.com", Groups: groups})
	id, err := newAssertionCache().get(ks.Signer(testIssuer), sess, "app", "", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := proxyHeader(upstreamHello{
		client: &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1}, local: &net.TCPAddr{IP: net.ParseIP("2001:db8::2"), Port: 443},
		authority: strings.Repeat("a", 253), uniqueID: sess.Ref(), token: id.token[0],
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := hdr.Format()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 4096 {
		t.Fatalf("header of %d bytes exceeds the receivers' 4096", len(b))
	}
	c := verifyAssertion(t, ks, "app", id.token[0])
	if !c.GroupsTruncated || len(c.Groups) == 0 || len(c.Groups) >= 300 || c.Groups[0] != groups[0] {
		t.Errorf("groups should be truncated by the documented rule (a prefix, flagged): %d groups, truncated=%v", len(c.Groups), c.GroupsTruncated)
	}
	if _, err := proxyHeader(upstreamHello{client: &net.TCPAddr{IP: net.IPv4(1, 2, 3, 4)}, local: &net.TCPAddr{IP: net.IPv4(5, 6, 7, 8)},
		uniqueID: strings.Repeat("u", 129), token: id.token[0]}); err == nil {
		t.Error("a unique ID over 128 bytes was accepted")
	}
}

func newTestCA(t *testing.T) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	k := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return k, c
}

func issueCert(t *testing.T, caKey *ecdsa.PrivateKey, ca *x509.Certificate, cn string, ips []string, eku x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku}}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

func writePEMFile(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
