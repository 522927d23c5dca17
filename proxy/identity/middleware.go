package identity

import (
	"context"
	"net/http"
)

type claimsKey struct{}

// Middleware verifies the HeaderName header of every request and passes the
// request on with the verified *Claims in its context (see FromContext).
// A request without a valid assertion gets 401 with a short JSON body and
// never reaches next. The reason is logged, the token is not.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		vals := r.Header.Values(HeaderName)
		switch len(vals) {
		case 0:
			v.log.Info("identity: request without assertion", "method", r.Method, "path", r.URL.Path)
			unauthorized(w, `{"error":"missing_assertion"}`)
			return
		case 1:
		default:
			// Two assertions means something between the edge and the app
			// added one; which to believe is not ours to guess.
			v.log.Warn("identity: request with several assertions", "method", r.Method, "path", r.URL.Path, "count", len(vals))
			unauthorized(w, `{"error":"invalid_assertion"}`)
			return
		}
		c, err := v.Verify(r.Context(), vals[0])
		if err != nil {
			v.log.Warn("identity: assertion rejected", "method", r.Method, "path", r.URL.Path, "err", err)
			unauthorized(w, `{"error":"invalid_assertion"}`)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, c)))
	})
}

func unauthorized(w http.ResponseWriter, body string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusUnauthorized)
	w.Write([]byte(body + "\n"))
}

// FromContext returns the claims Middleware verified for this request.
func FromContext(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok && c != nil
}
