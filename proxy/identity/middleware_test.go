package identity

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestMiddleware(t *testing.T) {
	ks := NewKeySet(fixedKey(t, "1"))
	jwks := newJWKSServer(t, ks.JWKS())
	var logBuf syncWriter
	v, err := NewVerifier(VerifierConfig{
		Issuer: testIssuer, Audience: testAudience, JWKSURL: jwks.url(),
		Logger: slog.New(slog.NewTextHandler(&logBuf, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	v.now = newClock(testNow).Now

	var reached atomic.Int64
	app := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		c, ok := FromContext(r.Context())
		if !ok {
			http.Error(w, "no claims", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%s %s %s", c.Subject, c.Email, strings.Join(c.Groups, ","))
	}))
	srv := httptest.NewServer(app)
	defer srv.Close()

	valid := mustSign(t, testSigner(ks), validClaims())
	otherApp := validClaims()
	otherApp.Audience = "payroll"
	wrongAud := mustSign(t, testSigner(ks), otherApp)

	for _, tc := range []struct {
		name       string
		headers    []string
		wantStatus int
		wantBody   string
	}{
		{"valid assertion", []string{valid}, 200, "u-alice alice@corp.example engineering,security"},
		{"no assertion", nil, 401, `{"error":"missing_assertion"}`},
		{"empty assertion", []string{""}, 401, `{"error":"invalid_assertion"}`},
		{"garbage", []string{"Bearer xyz"}, 401, `{"error":"invalid_assertion"}`},
		{"other app's assertion", []string{wrongAud}, 401, `{"error":"invalid_assertion"}`},
		{"two assertions", []string{valid, valid}, 401, `{"error":"invalid_assertion"}`},
		{"assertion list in one header", []string{valid + ", " + valid}, 401, `{"error":"invalid_assertion"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := reached.Load()
			req, _ := http.NewRequestWithContext(context.Background(), "GET", srv.URL+"/page", nil)
			for _, h := range tc.headers {
				req.Header.Add(HeaderName, h)
			}
			// The plain forwarded headers alone never authenticate.
			req.Header.Set("X-Forwarded-User", "u-admin")
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			if resp.StatusCode != tc.wantStatus || strings.TrimSpace(string(body)) != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, tc.wantStatus, tc.wantBody)
			}
			passed := reached.Load() - before
			if tc.wantStatus == 200 && passed != 1 || tc.wantStatus != 200 && passed != 0 {
				t.Errorf("handler ran %d times", passed)
			}
			if tc.wantStatus == 401 {
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q", ct)
				}
				if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
					t.Errorf("Cache-Control %q", cc)
				}
				if !json.Valid(body) {
					t.Errorf("body is not JSON: %q", body)
				}
			}
		})
	}
	if strings.Contains(logBuf.String(), valid[len(valid)-40:]) || strings.Contains(logBuf.String(), wrongAud[len(wrongAud)-40:]) {
		t.Error("a token was logged")
	}
	if !strings.Contains(logBuf.String(), "wrong audience") {
		t.Errorf("rejection reason not logged; log:\n%s", logBuf.String())
	}
}

func TestFromContextEmpty(t *testing.T) {
	if c, ok := FromContext(context.Background()); ok || c != nil {
		t.Errorf("FromContext(empty) = %v, %v", c, ok)
	}
	ctx := context.WithValue(context.Background(), claimsKey{}, (*Claims)(nil))
	if _, ok := FromContext(ctx); ok {
		t.Error("FromContext(nil claims) = ok")
	}
}

// syncWriter serialises log writes from concurrent handlers.
type syncWriter struct {
	mu sync.Mutex
	w  bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}
