// Package console is the admin console: server-rendered pages where
// admins define attribute-based groups and see who is in them, read apps
// and their rules, watch devices, posture, sessions and tunnels, revoke
// and quarantine with immediate effect, ask the policy "what if", and read
// the audit log.
//
// The edge serves the console as an app with `builtin: console`, so its
// pipeline authenticates and authorizes every console request with the
// console app's rules before this package sees it, and hands over the
// admin as an Actor (WithActor). The console reaches the edge only
// through Backend; it imports the domain packages for their values
// (groups, authn, posture) and never the proxy.
//
// What it must never do: change anything on a GET; accept a change
// without the session's CSRF token from the console's own origin; let an
// admin widen their own access to the console (see guard.go); render
// untrusted text (group names, attributes, reasons) other than through
// html/template's escaping; load anything from another origin.
package console

import (
	"bytes"
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/internal/httperr"
)

//go:embed templates/*.html
var templateFS embed.FS

// ContentSecurityPolicy is sent with every console page: scripts and
// styles only from the edge's own assets, nothing inline, no framing.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// Limits.
const (
	maxFormBytes = 256 << 10
	// MaxLive bounds the live exchanges listed.
	MaxLive = 5000
)

// Handler serves the console.
type Handler struct {
	b      Backend
	logger *slog.Logger
	tmpl   *template.Template
	mux    *http.ServeMux
	now    func() time.Time
}

// New returns the console served from b. It panics only if the embedded
// templates are broken, which the package tests rule out.
func New(b Backend, logger *slog.Logger) *Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{b: b, logger: logger, now: time.Now}
	h.tmpl = template.Must(template.New("").Funcs(funcs).ParseFS(templateFS, "templates/*.html"))
	h.mux = http.NewServeMux()
	for _, rt := range []struct {
		pattern string
		fn      func(http.ResponseWriter, *http.Request, Actor) error
	}{
		{"GET /{$}", h.overview},
		{"GET /groups", h.groupList},
		{"GET /group", h.groupEdit},
		{"GET /group/preview", h.groupPreview},
		{"POST /group/save", h.groupSave},
		{"POST /group/delete", h.groupDelete},
		{"GET /users", h.userList},
		{"GET /user", h.userPage},
		{"POST /user/attributes", h.userAttributes},
		{"POST /user/sign-out", h.userSignOut},
		{"POST /user/quarantine", h.userQuarantine},
		{"GET /apps", h.appList},
		{"GET /app", h.appPage},
		{"POST /app/rules", h.appRules},
		{"GET /devices", h.deviceList},
		{"GET /device", h.devicePage},
		{"POST /device/quarantine", h.deviceQuarantine},
		{"POST /device/release", h.deviceRelease},
		{"POST /device/revoke", h.deviceRevoke},
		{"POST /device/approve", h.deviceApprove},
		{"GET /live", h.livePage},
		{"POST /session/revoke", h.sessionRevoke},
		{"GET /audit", h.auditPage},
		{"GET /whatif", h.whatIf},
		{"GET /policy", h.policyPage},
		{"GET /policy/version", h.policyVersion},
		{"POST /policy/revert", h.policyRevert},
	} {
		fn := rt.fn
		h.mux.HandleFunc(rt.pattern, func(w http.ResponseWriter, r *http.Request) {
			act, _ := actorFrom(r.Context())
			if err := fn(w, r, act); err != nil {
				h.fail(w, r, act, err)
			}
		})
	}
	return h
}

type actorKey struct{}

// WithActor returns ctx carrying the admin the edge authenticated.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

func actorFrom(ctx context.Context) (Actor, bool) {
	a, ok := ctx.Value(actorKey{}).(Actor)
	return a, ok
}

// ServeHTTP checks what the edge cannot know — the admin's role for this
// method, the CSRF token and origin of a change — and serves the page.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Every answer, the router's 404 and 405 too, is a console page.
	setHeaders(w.Header())
	act, ok := actorFrom(r.Context())
	if !ok || act.User == "" || act.Role < RoleViewer {
		h.fail(w, r, act, httperr.New(http.StatusForbidden, "console_denied", "You are not allowed to use the console."))
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if err := checkChange(w, r, act); err != nil {
			h.fail(w, r, act, err)
			return
		}
	}
	h.mux.ServeHTTP(w, r)
}

// checkChange admits a state-changing request only from an admin, from a
// page of the console itself (Origin, Sec-Fetch-Site), carrying the
// session's CSRF token.
func checkChange(w http.ResponseWriter, r *http.Request, act Actor) error {
	if r.Method != http.MethodPost {
		return httperr.New(http.StatusMethodNotAllowed, "method_not_allowed", "The console changes things with POST only.")
	}
	if act.Role < RoleAdmin {
		return httperr.New(http.StatusForbidden, "read_only", "Your console access is read-only.")
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return httperr.New(http.StatusForbidden, "cross_site", "This change came from another site and was refused.")
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return httperr.New(http.StatusForbidden, "cross_site", "This change came from another site and was refused.")
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		return httperr.BadRequest("The form could not be read.", err)
	}
	if tok := r.PostForm.Get("csrf"); act.CSRF == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(act.CSRF)) != 1 {
		return httperr.New(http.StatusForbidden, "csrf", "This form has expired or did not come from the console. Reload the page and try again.")
	}
	return nil
}

// page is what every template gets.
type page struct {
	Title  string
	Nav    string // the active section
	Actor  Actor
	Policy PolicyState
	Notice string // a fixed message after a change (see notices)
	Data   any
}

// notices are the messages a change redirects with (?ok=KEY): fixed
// strings, so a link cannot put words in the console's mouth.
var notices = map[string]string{
	"saved":       "Saved. The new policy is serving on every replica.",
	"deleted":     "Deleted. The new policy is serving on every replica.",
	"attributes":  "Attributes changed. The user's sessions and live connections follow now.",
	"signed-out":  "Signed out everywhere: every session of the user ended.",
	"quarantined": "Quarantined. Live connections were closed.",
	"released":    "Released.",
	"revoked":     "Revoked.",
	"approved":    "Approved: the device reaches apps from its next request.",
	"reverted":    "Reverted. The restored policy is serving on every replica.",
}

func (h *Handler) render(w http.ResponseWriter, r *http.Request, act Actor, status int, name, title, nav string, data any) {
	p := page{Title: title, Nav: nav, Actor: act, Policy: h.b.Policy(), Notice: notices[r.URL.Query().Get("ok")], Data: data}
	var buf bytes.Buffer
	if err := h.tmpl.ExecuteTemplate(&buf, name, p); err != nil {
		h.logger.Error("render console page", "template", name, "err", err)
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString("internal error\n")
	}
	setHeaders(w.Header())
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// fragment renders a template without the layout (the live previews).
func (h *Handler) fragment(w http.ResponseWriter, name string, data any) {
	var buf bytes.Buffer
	if err := h.tmpl.ExecuteTemplate(&buf, name, data); err != nil {
		h.logger.Error("render console fragment", "template", name, "err", err)
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	setHeaders(w.Header())
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(buf.Bytes())
}

func setHeaders(h http.Header) {
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

// done answers a successful change: back to a console page, with a
// notice.
func done(w http.ResponseWriter, r *http.Request, path string, q url.Values, notice string) error {
	if q == nil {
		q = url.Values{}
	}
	q.Set("ok", notice)
	http.Redirect(w, r, path+"?"+q.Encode(), http.StatusSeeOther)
	return nil
}

// fail renders err as a console page; the cause goes to the log only.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, act Actor, err error) {
	he := httperr.As(err)
	if he.Cause != nil {
		lvl := h.logger.Info
		if he.Status >= 500 {
			lvl = h.logger.Error
		}
		lvl("console request failed", "path", r.URL.Path, "status", he.Status, "code", he.Code, "err", he.Cause)
	}
	title := he.Title
	if title == "" {
		title = http.StatusText(he.Status)
	}
	if act.Role < RoleViewer {
		// Not an admin: no navigation, no policy state.
		var buf bytes.Buffer
		_ = h.tmpl.ExecuteTemplate(&buf, "denied.html", map[string]any{"Title": title, "Message": he.Message})
		setHeaders(w.Header())
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(he.Status)
		_, _ = w.Write(buf.Bytes())
		return
	}
	h.render(w, r, act, he.Status, "error.html", title, "", he)
}

// badInput is a form value the admin has to fix.
func badInput(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	return httperr.BadRequest(msg, errors.New(msg))
}

// notFound is a console object that does not exist.
func notFound(what string) error {
	return httperr.New(http.StatusNotFound, "not_found", "No such "+what+".")
}
