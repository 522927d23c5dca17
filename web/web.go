// Package web renders what people see of ztna: the deny and error pages, the
// sign-out pages, and (later) the admin console. Pages are html/template only,
// served with a strict Content-Security-Policy and frame-ancestors 'none'.
//
// Everything user-facing about a failed request is rendered here, in one
// place: HTML for browser navigations, JSON for XHR, API and WebSocket
// clients. web never decides access and never imports the proxy, authn or
// groups packages; it renders the values it is given.
package web

import (
	"bytes"
	"embed"
	"encoding/json"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/internal/httperr"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

// AssetPrefix is the path under which the edge serves the pages' static
// files on every host (the /.ztna/ prefix is reserved by the edge).
const AssetPrefix = "/.ztna/assets/"

// ContentSecurityPolicy is sent with every page ztna renders itself.
const ContentSecurityPolicy = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// Pages renders ztna's own pages.
type Pages struct {
	tmpl   *template.Template
	logger *slog.Logger
}

// New parses the embedded templates. It panics only if the embedded
// templates are broken, which the package tests rule out.
func New(logger *slog.Logger) *Pages {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	t := template.Must(template.New("").ParseFS(templateFS, "templates/*.html"))
	return &Pages{tmpl: t, logger: logger}
}

// Assets serves the static files under AssetPrefix.
func (p *Pages) Assets() http.Handler {
	sub, err := fs.Sub(assetFS, "assets")
	if err != nil {
		panic(err)
	}
	fsrv := http.StripPrefix(AssetPrefix, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		fsrv.ServeHTTP(w, r)
	})
}

// WantsHTML reports whether r is a browser navigation that should get an
// HTML page (and may be redirected), rather than a JSON answer. Fetch/XHR,
// API clients and WebSocket upgrades get JSON and are never redirected.
func WantsHTML(r *http.Request) bool {
	if r.Header.Get("Upgrade") != "" {
		return false
	}
	if r.Header.Get("X-Requested-With") != "" {
		return false
	}
	if mode := r.Header.Get("Sec-Fetch-Mode"); mode != "" {
		return mode == "navigate"
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	accept := r.Header.Get("Accept")
	return strings.Contains(accept, "text/html")
}

// setPageHeaders marks a response as a ztna page: never cached, never framed.
func setPageHeaders(h http.Header, csp string) {
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
}

// errorBody is the JSON form of an error.
type errorBody struct {
	Error    string          `json:"error"`
	Message  string          `json:"message"`
	Hint     string          `json:"hint,omitempty"`
	Rule     string          `json:"rule,omitempty"`
	LoginURL string          `json:"login_url,omitempty"`
	Checks   []httperr.Check `json:"checks,omitempty"`
}

// Error renders e for r: an HTML page for browser navigations, JSON
// otherwise. The cause is never rendered.
func (p *Pages) Error(w http.ResponseWriter, r *http.Request, e *httperr.Error) {
	h := w.Header()
	if e.Status == http.StatusUnauthorized && e.LoginURL != "" {
		h.Set("WWW-Authenticate", `Bearer realm="ztna"`)
	}
	if !WantsHTML(r) {
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(e.Status)
		_ = json.NewEncoder(w).Encode(errorBody{Error: e.Code, Message: e.Message, Hint: e.Hint, Rule: e.Rule, LoginURL: e.LoginURL, Checks: e.Checks})
		return
	}
	title := e.Title
	if title == "" {
		title = http.StatusText(e.Status)
	}
	p.render(w, e.Status, "error.html", map[string]any{
		"Title": title, "Status": e.Status, "Code": e.Code, "Message": e.Message,
		"Hint": e.Hint, "Rule": e.Rule, "LoginURL": e.LoginURL, "Checks": e.Checks,
	}, ContentSecurityPolicy)
}

// SignOut renders the sign-out confirmation: a form that POSTs to action
// carrying the CSRF token. Browsers apply form-action to every redirect that
// follows a form POST, so the origins the sign-out passes through (the
// IdP's logout, the edge's signed-out page) are added to the policy.
func (p *Pages) SignOut(w http.ResponseWriter, action, csrfToken, user string, redirectOrigins ...string) {
	p.render(w, http.StatusOK, "signout.html", map[string]any{"Action": action, "CSRF": csrfToken, "User": user},
		formActionCSP(redirectOrigins))
}

// CLIDeviceGrant renders the CLI's device authorization page for user: a
// form to enter the code (userCode ""), or the request to approve or deny
// — which program, which computer, when. Approving redirects through
// redirectOrigins (the IdP), which the form-action policy allows.
func (p *Pages) CLIDeviceGrant(w http.ResponseWriter, user, csrfToken, userCode, client, host string, requested time.Time, redirectOrigins ...string) {
	p.render(w, http.StatusOK, "cli_device.html", map[string]any{"User": user, "CSRF": csrfToken, "UserCode": userCode,
		"Client": client, "Host": host, "Requested": requested}, formActionCSP(redirectOrigins))
}

// formActionCSP is the page policy with origins added to form-action:
// browsers apply it to every redirect that follows a form POST.
func formActionCSP(origins []string) string {
	allowed := "form-action 'self'"
	for _, o := range origins {
		if isOrigin(o) {
			allowed += " " + o
		}
	}
	return strings.Replace(ContentSecurityPolicy, "form-action 'self'", allowed, 1)
}

// isOrigin accepts only scheme://host[:port] with no characters that could
// end a CSP directive.
func isOrigin(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" &&
		u.Scheme+"://"+u.Host == s && !strings.ContainsAny(s, " ;,'\"")
}

// PendingDevice is what the approval page shows of a device asking to be
// enrolled.
type PendingDevice struct {
	Name, Platform, UserCode, Fingerprint string
}

// DeviceApproval renders the device enrollment page: a form to enter the
// code, or (pending non-nil) the device to approve or deny for user.
func (p *Pages) DeviceApproval(w http.ResponseWriter, user, csrfToken string, pending *PendingDevice) {
	p.render(w, http.StatusOK, "device.html", map[string]any{"User": user, "CSRF": csrfToken, "Pending": pending}, ContentSecurityPolicy)
}

// Message renders a short page with a title and a message.
func (p *Pages) Message(w http.ResponseWriter, status int, title, message string) {
	p.render(w, status, "message.html", map[string]any{"Title": title, "Message": message}, ContentSecurityPolicy)
}

// SignedOut renders the page shown after a local sign-out.
func (p *Pages) SignedOut(w http.ResponseWriter) {
	p.render(w, http.StatusOK, "signedout.html", nil, ContentSecurityPolicy)
}

func (p *Pages) render(w http.ResponseWriter, status int, name string, data any, csp string) {
	var buf bytes.Buffer
	if err := p.tmpl.ExecuteTemplate(&buf, name, data); err != nil {
		p.logger.Error("render page", "template", name, "err", err)
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString("internal error\n")
	}
	setPageHeaders(w.Header(), csp)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
