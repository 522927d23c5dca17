package console

import (
	"cmp"
	"net/http"
	"slices"
	"strings"
)

// Live: what is connected to this replica now — tunnels, tunnel streams,
// forwarded requests and WebSockets — and every signed-in session, each
// revocable with immediate effect.

// liveKinds are the kinds of live exchanges, in the order the page shows
// them.
var liveKinds = []struct{ Kind, Title string }{
	{"tunnel", "Tunnel connections"},
	{"stream", "Tunnel streams"},
	{"http", "HTTP requests, WebSockets and streams"},
}

// liveGroup is the live exchanges of one kind.
type liveGroup struct {
	Kind, Title string
	Conns       []LiveConn
}

func groupLive(conns []LiveConn) []liveGroup {
	out := make([]liveGroup, 0, len(liveKinds))
	for _, k := range liveKinds {
		out = append(out, liveGroup{Kind: k.Kind, Title: k.Title})
	}
	for _, c := range conns {
		i := slices.IndexFunc(out, func(g liveGroup) bool { return g.Kind == c.Kind })
		if i < 0 {
			// A kind this page does not know yet is still shown.
			out = append(out, liveGroup{Kind: c.Kind, Title: c.Kind})
			i = len(out) - 1
		}
		out[i].Conns = append(out[i].Conns, c)
	}
	for i := range out {
		slices.SortStableFunc(out[i].Conns, func(a, b LiveConn) int {
			return cmp.Or(strings.Compare(strings.ToLower(a.Email), strings.ToLower(b.Email)), strings.Compare(a.User, b.User),
				a.Since.Compare(b.Since))
		})
	}
	return out
}

func (h *Handler) livePage(w http.ResponseWriter, r *http.Request, act Actor) error {
	conns := h.b.Live() // at most MaxLive
	sessions, err := h.b.Sessions(r.Context(), "")
	if err != nil {
		return err
	}
	h.render(w, r, act, http.StatusOK, "live.html", "Live", "live", map[string]any{
		"Replica": h.b.Replica(), "Groups": groupLive(conns), "Total": len(conns), "Sessions": sessions,
	})
	return nil
}

func (h *Handler) sessionRevoke(w http.ResponseWriter, r *http.Request, act Actor) error {
	ref := strings.TrimSpace(r.PostForm.Get("ref"))
	if ref == "" || len(ref) > maxField {
		return badInput("Choose a session to revoke.")
	}
	if err := h.b.RevokeSession(r.Context(), act, ref); err != nil {
		return err
	}
	return done(w, r, "/live", nil, "revoked")
}
