package devenv

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ztna-dev/ztna/proxy/identity"
)

// whoami is the demo app: it shows the identity it received from the edge
// and whether the signed assertion verified against the edge's JWKS. It is
// also the real upstream of the integration tests: /ws echoes WebSocket
// messages, /stream streams server-sent events.
type whoami struct {
	app      string
	verifier *identity.Verifier // audience = app
}

// startWhoami serves whoami for app on a loopback port behind PROXY v2.
func startWhoami(app string, v *identity.Verifier, logger *slog.Logger) (addr string, stop func(context.Context) error, err error) {
	pln, err := listenBehindEdge(v, logger)
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: &whoami{app: app, verifier: v}, ReadHeaderTimeout: 10 * time.Second,
		ConnContext: connContext, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug)}
	go func() { _ = srv.Serve(pln) }()
	return pln.Addr().String(), srv.Shutdown, nil
}

// WhoamiReport is what whoami answers with ?format=json.
type WhoamiReport struct {
	App string `json:"app"`
	// ProxyIdentity is the identity verified from the PROXY v2 header of
	// the connection the request came on.
	ProxyIdentity *identity.Claims  `json:"proxy_identity,omitempty"`
	ProxyClient   string            `json:"proxy_client,omitempty"`
	ProxyUniqueID string            `json:"proxy_unique_id,omitempty"`
	Host          string            `json:"host"`
	Method        string            `json:"method"`
	Path          string            `json:"path"`
	Verified      bool              `json:"assertion_verified"`
	VerifyError   string            `json:"assertion_error,omitempty"`
	Claims        *identity.Claims  `json:"claims,omitempty"`
	User          string            `json:"x_forwarded_user"`
	Email         string            `json:"x_forwarded_email"`
	Groups        string            `json:"x_forwarded_groups"`
	ForwardedFor  string            `json:"x_forwarded_for"`
	Headers       map[string]string `json:"headers"`
	ReceivedAtUTC string            `json:"received_at"`
}

func (h *whoami) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/ws":
		h.echo(w, r)
		return
	case "/stream":
		h.stream(w, r)
		return
	}
	rep := h.report(r)
	if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rep)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	if err := whoamiPage.Execute(w, rep); err != nil {
		http.Error(w, "render", http.StatusInternalServerError)
	}
}

func (h *whoami) report(r *http.Request) WhoamiReport {
	rep := WhoamiReport{
		App: h.app, Host: r.Header.Get("X-Forwarded-Host"), Method: r.Method, Path: r.URL.Path,
		User: r.Header.Get("X-Forwarded-User"), Email: r.Header.Get("X-Forwarded-Email"),
		Groups: r.Header.Get("X-Forwarded-Groups"), ForwardedFor: r.Header.Get("X-Forwarded-For"),
		Headers: map[string]string{}, ReceivedAtUTC: time.Now().UTC().Format(time.RFC3339),
	}
	for k, v := range r.Header {
		if k == identity.HeaderName {
			rep.Headers[k] = fmt.Sprintf("(%d bytes)", len(v[0]))
			continue
		}
		rep.Headers[k] = strings.Join(v, ", ")
	}
	if c, ok := identity.ConnIdentity(r.Context()); ok {
		rep.ProxyIdentity = c
	}
	if pc := proxyConn(r.Context()); pc != nil {
		if a := pc.ClientAddr(); a != nil {
			rep.ProxyClient = a.String()
		}
		rep.ProxyUniqueID = pc.UniqueID()
	}
	v := h.verifier
	tok := r.Header.Get(identity.HeaderName)
	switch {
	case tok == "":
		rep.VerifyError = "no assertion header"
	default:
		c, err := v.Verify(r.Context(), tok)
		if err != nil {
			rep.VerifyError = err.Error()
		} else {
			rep.Verified, rep.Claims = true, c
		}
	}
	return rep
}

type proxyConnKey struct{}

// connContext keeps the PROXY v2 connection with each request, so the page
// can show the client address and unique ID the edge sent.
func connContext(ctx context.Context, c net.Conn) context.Context {
	ctx = identity.ConnContext(ctx, c)
	if pc, ok := c.(*identity.Conn); ok {
		ctx = context.WithValue(ctx, proxyConnKey{}, pc)
	}
	return ctx
}

func proxyConn(ctx context.Context) *identity.Conn {
	pc, _ := ctx.Value(proxyConnKey{}).(*identity.Conn)
	return pc
}

var upgrader = websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096}

// echo is a WebSocket echo that prefixes each message with the verified user.
func (h *whoami) echo(w http.ResponseWriter, r *http.Request) {
	rep := h.report(r)
	if !rep.Verified {
		http.Error(w, "assertion: "+rep.VerifyError, http.StatusUnauthorized)
		return
	}
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetReadLimit(64 << 10)
	for {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(mt, append([]byte(rep.Claims.Subject+": "), msg...)); err != nil {
			return
		}
	}
}

// stream sends one server-sent event per 100ms until the client leaves.
func (h *whoami) stream(w http.ResponseWriter, r *http.Request) {
	f, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "no streaming", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		if _, err := fmt.Fprintf(w, "data: tick %d\n\n", i); err != nil {
			return
		}
		f.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var whoamiPage = template.Must(template.New("whoami").Funcs(template.FuncMap{"keys": sortedKeys}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>whoami · ztna demo</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}
.ok{color:#116329}.bad{color:#a40e26}table{border-collapse:collapse}td{padding:.2rem .6rem;border-bottom:1px solid #ddd;vertical-align:top}
code{word-break:break-all}</style></head><body>
<h1>whoami <small>({{.App}})</small></h1>
<p>Signed in as <strong id="user">{{.Email}}</strong> (<code id="sub">{{.User}}</code>), groups <code id="groups">{{.Groups}}</code>.</p>
{{if .Verified}}<p class="ok" id="verified">Assertion verified with the edge's JWKS: audience <code>{{.Claims.Audience}}</code>, session <code>{{.Claims.SessionID}}</code>.</p>
{{else}}<p class="bad" id="verified">Assertion NOT verified: {{.VerifyError}}</p>{{end}}
{{if .ProxyIdentity}}<p class="ok" id="proxy">PROXY v2 identity verified on this connection: <strong>{{.ProxyIdentity.Email}}</strong>, audience <code>{{.ProxyIdentity.Audience}}</code>, client <code>{{.ProxyClient}}</code>, unique ID <code>{{.ProxyUniqueID}}</code>.</p>
{{else}}<p class="bad" id="proxy">No PROXY v2 identity on this connection.</p>{{end}}
{{with .Claims}}{{if .Device}}<p class="ok" id="device">From enrolled device <code>{{.Device}}</code>{{if .Posture}}, which meets the <strong>{{.Posture}}</strong> posture profile{{end}}.</p>
{{else}}<p id="device">No device certificate: this browser does not present an enrolled device's certificate (see <code>ztna agent status</code>).</p>{{end}}{{end}}
<p>{{.Method}} <code>{{.Path}}</code> from <code>{{.ForwardedFor}}</code></p>
<form method="get" action="/.ztna/logout"><button id="logout" type="submit">Sign out</button></form>
<h2>Headers received</h2><table>{{range $k := keys .Headers}}<tr><td>{{$k}}</td><td><code>{{index $.Headers $k}}</code></td></tr>{{end}}</table>
</body></html>`))
