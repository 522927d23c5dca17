package identity_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

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
