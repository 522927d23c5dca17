package devidp

import (
	"bytes"
	"errors"
	"html/template"
	"net/http"

	"github.com/zitadel/oidc/v3/pkg/op"
)

// The login form's field names and element ids (username, password,
// authRequestID, submit, error) are relied on by browser tests; keep them.
var pageTemplate = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}} · ztna development IdP</title>
<style>
body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;padding:3rem 1rem;color:#1d2330}
main{max-width:22rem;margin:auto;background:#fff;padding:2rem;border-radius:.5rem;box-shadow:0 1px 4px #0002}
h1{font-size:1.3rem;margin-top:0}
label{display:block;margin:.8rem 0 .2rem}
input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}
button{margin-top:1.2rem;width:100%;padding:.6rem;font-size:1rem}
#error{color:#a4161a;font-weight:600}
.note{color:#596273;font-size:.85rem}
</style>
</head>
<body>
<main>
<h1>{{.Title}}</h1>
{{- if .Error}}
<p id="error" role="alert">{{.Error}}</p>
{{- end}}
{{- if .AuthRequestID}}
<p class="note">Signing in to <strong id="client">{{.ClientID}}</strong></p>
<form method="post" action="{{.Action}}" autocomplete="off">
<input type="hidden" name="authRequestID" value="{{.AuthRequestID}}">
<label for="username">Username</label>
<input id="username" name="username" value="{{.Username}}" autofocus required>
<label for="password">Password</label>
<input id="password" name="password" type="password" required>
<button id="submit" type="submit">Sign in</button>
</form>
{{- else}}
<p id="message">{{.Message}}</p>
{{- end}}
<p class="note">Development identity provider: not for production use.</p>
</main>
</body>
</html>
`))

type pageData struct {
	Title         string
	Error         string
	Message       string
	Action        string
	AuthRequestID string
	ClientID      string
	Username      string
}

func (p *Provider) handleLogin(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		id := r.URL.Query().Get("authRequestID")
		clientID, err := p.st.pendingAuthRequest(id)
		if err != nil {
			renderMessage(w, http.StatusBadRequest, "Sign-in failed", err.Error()+": go back to the application and start again.")
			return
		}
		renderPage(w, http.StatusOK, pageData{Title: "Sign in", Action: loginPath, AuthRequestID: id, ClientID: clientID})
	case http.MethodPost:
		p.postLogin(w, r)
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		renderMessage(w, http.StatusMethodNotAllowed, "Sign-in failed", "method not allowed")
	}
}

func (p *Provider) postLogin(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		status := http.StatusBadRequest
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			status = http.StatusRequestEntityTooLarge
		}
		renderMessage(w, status, "Sign-in failed", "the form could not be read")
		return
	}
	id := r.PostForm.Get("authRequestID")
	username := r.PostForm.Get("username")
	clientID, err := p.st.pendingAuthRequest(id)
	if err != nil {
		renderMessage(w, http.StatusBadRequest, "Sign-in failed", err.Error()+": go back to the application and start again.")
		return
	}
	err = p.st.login(id, username, r.PostForm.Get("password"))
	switch {
	case errors.Is(err, errBadCredentials):
		// The username is not logged: people type passwords into it.
		p.log.Warn("devidp: login failed", "client", clientID, "reason", "bad credentials")
		renderPage(w, http.StatusUnauthorized, pageData{
			Title: "Sign in", Error: "Invalid username or password.", Action: loginPath,
			AuthRequestID: id, ClientID: clientID, Username: username,
		})
		return
	case err != nil:
		renderMessage(w, http.StatusBadRequest, "Sign-in failed", err.Error()+": go back to the application and start again.")
		return
	}
	p.log.Info("devidp: login", "user", username, "client", clientID)
	callback := op.AuthCallbackURL(p.op)(op.ContextWithIssuer(r.Context(), p.issuer), id)
	http.Redirect(w, r, callback, http.StatusSeeOther)
}

func handleLoggedOut(w http.ResponseWriter, _ *http.Request) {
	renderMessage(w, http.StatusOK, "Signed out", "You are signed out of the development identity provider.")
}

func renderMessage(w http.ResponseWriter, status int, title, msg string) {
	renderPage(w, status, pageData{Title: title, Message: msg})
}

func renderPage(w http.ResponseWriter, status int, d pageData) {
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, d); err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// No form-action: Chrome applies it to the redirects after the POST,
	// which leave for the relying party's origin.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
