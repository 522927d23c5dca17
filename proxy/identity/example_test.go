package identity_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/ztna-dev/ztna/proxy/identity"
)

// An app behind the ztna edge verifies the assertion header on every request
// and takes the user's identity from the verified claims, never from
// X-Forwarded-User alone.
func Example() {
	// The edge's side, only so this example runs on its own: a signing key,
	// its JWKS endpoint and one signed assertion. Apps never see the keys.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edgeKeys := identity.NewKeySet(key)
	edge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(edgeKeys.JWKS())
	}))
	defer edge.Close()
	now := time.Now()
	assertion, _ := edgeKeys.Signer("https://auth.corp.example").Sign(identity.Claims{
		Subject:  "u-1042",
		Audience: "wiki",
		Email:    "alice@corp.example",
		Groups:   []string{"engineering"},
		Expiry:   now.Add(5 * time.Minute).Unix(),
	})

	// The app's side. In production JWKSURL is
	// https://auth.corp.example/.well-known/ztna/jwks.json.
	verifier, err := identity.NewVerifier(identity.VerifierConfig{
		Issuer:   "https://auth.corp.example",
		Audience: "wiki", // this app's name in the edge's config
		JWKSURL:  edge.URL + "/.well-known/ztna/jwks.json",
	})
	if err != nil {
		log.Fatal(err)
	}
	wiki := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, _ := identity.FromContext(r.Context()) // always present behind Middleware
		fmt.Fprintf(w, "hello %s (%s), groups %v", user.Email, user.Subject, user.Groups)
	})
	app := httptest.NewServer(verifier.Middleware(wiki))
	defer app.Close()

	// A request forwarded by the edge, and one that bypassed it.
	for _, header := range []string{assertion, ""} {
		req, _ := http.NewRequest("GET", app.URL+"/", nil)
		req.Header.Set("X-Forwarded-User", "u-1042") // not enough on its own
		if header != "" {
			req.Header.Set(identity.HeaderName, header)
		}
		resp, err := app.Client().Do(req)
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%d %s\n", resp.StatusCode, body)
	}
	// Output:
	// 200 hello alice@corp.example (u-1042), groups [engineering]
	// 401 {"error":"missing_assertion"}
}

// A TCP app behind the ztna edge wraps its listener: every connection starts
// with the edge's PROXY v2 header, and the app learns who is connecting, from
// where, and the edge's reference for the session before it reads a byte.
func ExampleNewListener() {
	// The edge's side, only so this example runs on its own.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edgeKeys := identity.NewKeySet(key)
	token, _ := edgeKeys.Signer("https://auth.corp.example").SignFitting(identity.Claims{
		Subject:  "u-1042",
		Audience: "db",
		Email:    "alice@corp.example",
		Expiry:   time.Now().Add(5 * time.Minute).Unix(),
	}, identity.MaxTLVTokenBytes)

	// The app's side. In production the verifier uses
	// JWKSURL: "https://auth.corp.example/.well-known/ztna/jwks.json".
	verifier, err := identity.NewVerifier(identity.VerifierConfig{
		Issuer:        "https://auth.corp.example",
		Audience:      "db", // this app's name in the edge's config
		Keys:          edgeKeys.JWKS(),
		MaxTokenBytes: identity.MaxTLVTokenBytes,
	})
	if err != nil {
		log.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ln, err := identity.NewListener(inner, identity.ListenerConfig{Verifier: verifier})
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()

	// The edge connects on behalf of a client at 203.0.113.7.
	edgeDone := make(chan struct{})
	go func() {
		defer close(edgeDone)
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			log.Fatal(err)
		}
		defer c.Close()
		hdr := proxyproto.HeaderProxyFromAddrs(2,
			&net.TCPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 51234},
			&net.TCPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 5432})
		tlvs, _ := identity.IdentityTLVs(token, "db.corp.example", "s-7f3a9c")
		hdr.SetTLVs(tlvs)
		hdr.WriteTo(c)
		io.WriteString(c, "SELECT 1\n")
		io.Copy(io.Discard, c) // until the app closes
	}()

	c, err := ln.Accept() // returns at once; nothing is read yet
	if err != nil {
		log.Fatal(err)
	}
	conn := c.(*identity.Conn)
	who, err := conn.Identity() // reads and verifies the header
	if err != nil {
		fmt.Println("rejected:", err) // the connection is closed
		return
	}
	query, _ := bufio.NewReader(conn).ReadString('\n')
	fmt.Printf("%s (%s) from %s via %s, session %s: %q\n",
		who.Email, who.Subject, conn.RemoteAddr(), conn.Authority(), conn.UniqueID(), query)
	conn.Close()
	<-edgeDone
	// Output:
	// alice@corp.example (u-1042) from 203.0.113.7:51234 via db.corp.example, session s-7f3a9c: "SELECT 1\n"
}
