package console

import (
	"net/http"
	"strconv"

	"github.com/aymanbagabas/go-udiff"

	"github.com/ztna-dev/ztna/groups"
)

// Policy: where it comes from, which version every replica serves, and in
// store mode its history — each version with author and message, the
// diff to any other, and revert.

func (h *Handler) policyPage(w http.ResponseWriter, r *http.Request, act Actor) error {
	ps := h.b.Policy()
	replicas, err := h.b.Replicas(r.Context())
	if err != nil {
		return err
	}
	data := map[string]any{"Replicas": replicas}
	if ps.Store {
		versions, err := h.b.Versions(r.Context())
		if err != nil {
			return err
		}
		data["Versions"] = versions
	} else {
		data["YAML"] = groups.FileYAML(&groups.File{Groups: ps.Source.Groups, Apps: ps.Source.Apps})
	}
	h.render(w, r, act, http.StatusOK, "policy.html", "Policy", "policy", data)
	return nil
}

// policyVersion shows version n and its diff to another (?against=M, by
// default the one before it).
func (h *Handler) policyVersion(w http.ResponseWriter, r *http.Request, act Actor) error {
	q := r.URL.Query()
	n, err := strconv.Atoi(q.Get("n"))
	if err != nil || n < 1 {
		return notFound("policy version")
	}
	v, err := h.b.Version(r.Context(), n)
	if err != nil {
		return err
	}
	against := n - 1
	if s := q.Get("against"); s != "" {
		if against, err = strconv.Atoi(s); err != nil || against < 0 {
			return badInput("Compare with a version number.")
		}
	}
	old, oldName := "", "(nothing)"
	if against > 0 {
		o, err := h.b.Version(r.Context(), against)
		if err != nil {
			return err
		}
		old, oldName = o.YAML(), "version "+strconv.Itoa(against)
	}
	diff := udiff.Unified(oldName, "version "+strconv.Itoa(n), old, v.YAML())
	h.render(w, r, act, http.StatusOK, "version.html", "Policy version "+strconv.Itoa(n), "policy",
		map[string]any{"Version": v, "Against": against, "Diff": diff})
	return nil
}

// policyRevert saves a new version with the content of version n, through
// the same guard as every other change.
func (h *Handler) policyRevert(w http.ResponseWriter, r *http.Request, act Actor) error {
	ps := h.b.Policy()
	if !ps.Store {
		return badInput("The policy comes from files: revert the commit in the policy repository.")
	}
	n, err := strconv.Atoi(r.PostForm.Get("n"))
	if err != nil || n < 1 {
		return notFound("policy version")
	}
	v, err := h.b.Version(r.Context(), n)
	if err != nil {
		return err
	}
	src := v.Source()
	p, err := h.b.Compile(src)
	if err != nil {
		return badInput("Version %d does not compile with the current config: %s", n, policyError(err))
	}
	if err := h.guard(r.Context(), act, ps, proposal{after: p, afterSrc: src}); err != nil {
		return err
	}
	msg := r.PostForm.Get("message")
	if msg == "" {
		msg = "Revert to version " + strconv.Itoa(n)
	}
	if _, err := h.b.Commit(r.Context(), act, ps.N, v.Policy, msg, n); err != nil {
		return err
	}
	return done(w, r, "/policy", nil, "reverted")
}
