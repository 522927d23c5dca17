package console

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/ztna-dev/ztna/groups"
	"github.com/ztna-dev/ztna/internal/httperr"
)

// Groups: the list, the editor with its live preview, save (store mode) or
// export (files mode), delete.

type groupRow struct {
	Group   groups.Group
	Members int
}

func (h *Handler) groupList(w http.ResponseWriter, r *http.Request, act Actor) error {
	ps := h.b.Policy()
	users, err := h.b.Users(r.Context())
	if err != nil {
		return err
	}
	count := map[string]int{}
	for _, u := range users {
		in, err := ps.Compiled.Groups(subjectOf(u.Effective()), nil)
		if err != nil {
			continue
		}
		for _, g := range in {
			count[g]++
		}
	}
	rows := make([]groupRow, len(ps.Source.Groups))
	for i, g := range ps.Source.Groups {
		rows[i] = groupRow{Group: g, Members: count[g.Name]}
	}
	h.render(w, r, act, http.StatusOK, "groups.html", "Groups", "groups", map[string]any{"Groups": rows, "Users": len(users)})
	return nil
}

// groupForm is the editor's form.
type groupForm struct {
	Orig  string // the name being edited; "" for a new group
	Group groups.Group
}

func formGroup(v url.Values) groupForm {
	return groupForm{Orig: strings.TrimSpace(v.Get("orig")), Group: groups.Group{
		Name:        strings.TrimSpace(v.Get("name")),
		Description: strings.TrimSpace(v.Get("description")),
		When:        strings.TrimSpace(v.Get("when")),
		Members:     splitList(v.Get("members")),
		Include:     splitList(v.Get("include")),
	}}
}

// splitList reads a list written one per line or comma-separated.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == ',' || r == '\r' }) {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func (h *Handler) groupEdit(w http.ResponseWriter, r *http.Request, act Actor) error {
	ps := h.b.Policy()
	name := r.URL.Query().Get("name")
	f := groupForm{}
	if name != "" {
		g := groupDef(ps.Source, name)
		if g == nil {
			return notFound("group")
		}
		f = groupForm{Orig: name, Group: *g}
	}
	prev, err := h.preview(r.Context(), ps, f)
	if err != nil {
		return err
	}
	title := "New group"
	if name != "" {
		title = "Group " + name
	}
	h.render(w, r, act, http.StatusOK, "group.html", title, "groups", map[string]any{"Form": f, "Preview": prev})
	return nil
}

// groupPreview answers the editor's live preview: the candidate compiled,
// and who would be in the group and why. It changes nothing, so it is a
// GET that viewers may use too.
func (h *Handler) groupPreview(w http.ResponseWriter, r *http.Request, act Actor) error {
	f := formGroup(r.URL.Query())
	prev, err := h.preview(r.Context(), h.b.Policy(), f)
	if err != nil {
		return err
	}
	h.fragment(w, "preview", prev)
	return nil
}

// preview is the live member list of a candidate group.
type preview struct {
	Error   string
	Members []previewRow
	Others  []previewRow // not members, with why not (the first few)
	More    int          // not members not listed
	Total   int
}

type previewRow struct {
	User  string
	Email string
	Name  string
	Why   string
}

const previewOthers = 20

func (h *Handler) preview(ctx context.Context, ps PolicyState, f groupForm) (*preview, error) {
	if f.Group.Name == "" {
		return &preview{Error: "Give the group a name."}, nil
	}
	src := withGroup(ps.Source, f.Orig, &f.Group)
	p, err := h.b.Compile(src)
	if err != nil {
		return &preview{Error: policyError(err)}, nil
	}
	users, err := h.b.Users(ctx)
	if err != nil {
		return nil, err
	}
	prev := &preview{Total: len(users)}
	for _, u := range users {
		id := u.Effective()
		x, err := p.ExplainGroups(subjectOf(id), nil, f.Group.Name)
		if err != nil || len(x) != 1 {
			continue
		}
		row := previewRow{User: id.Subject, Email: id.Email, Name: id.Name, Why: x[0].Why}
		switch {
		case x[0].Member:
			prev.Members = append(prev.Members, row)
		case len(prev.Others) < previewOthers:
			prev.Others = append(prev.Others, row)
		default:
			prev.More++
		}
	}
	return prev, nil
}

// policyError is what the admin sees of a candidate that does not compile.
func policyError(err error) string {
	var ge *groups.GroupError
	var re *groups.RuleError
	switch {
	case errors.As(err, &ge):
		return ge.Error()
	case errors.As(err, &re):
		return re.Error()
	}
	return err.Error()
}

// withGroup is src with the group named orig replaced by g (added when
// orig is "" or unknown; removed when g is nil).
func withGroup(src *groups.Source, orig string, g *groups.Group) *groups.Source {
	out := &groups.Source{Apps: src.Apps}
	replaced := false
	for _, old := range src.Groups {
		if orig != "" && old.Name == orig {
			replaced = true
			if g != nil {
				out.Groups = append(out.Groups, *g)
			}
			continue
		}
		out.Groups = append(out.Groups, old)
	}
	if !replaced && g != nil {
		out.Groups = append(out.Groups, *g)
	}
	return out
}

func (h *Handler) groupSave(w http.ResponseWriter, r *http.Request, act Actor) error {
	f := formGroup(r.PostForm)
	ps := h.b.Policy()
	if f.Orig != "" && groupDef(ps.Source, f.Orig) == nil {
		return notFound("group")
	}
	if f.Orig == "" && groupDef(ps.Source, f.Group.Name) != nil {
		return badInput("A group named %q exists already.", f.Group.Name)
	}
	c := groups.Change{Group: &f.Group, OldName: f.Orig}
	msg := r.PostForm.Get("message")
	if msg == "" {
		msg = "Group " + f.Group.Name + " edited in the console"
	}
	return h.propose(w, r, act, ps, withGroup(ps.Source, f.Orig, &f.Group), c, msg, "/group", url.Values{"name": {f.Group.Name}}, "saved")
}

func (h *Handler) groupDelete(w http.ResponseWriter, r *http.Request, act Actor) error {
	name := r.PostForm.Get("name")
	ps := h.b.Policy()
	if groupDef(ps.Source, name) == nil {
		return notFound("group")
	}
	msg := r.PostForm.Get("message")
	if msg == "" {
		msg = "Group " + name + " deleted in the console"
	}
	return h.propose(w, r, act, ps, withGroup(ps.Source, name, nil), groups.Change{RemoveGroup: name}, msg, "/groups", nil, "deleted")
}

// propose is where every policy change from the console goes: compiled,
// checked by the guard, then saved as a new version (store mode) or
// exported as a diff of the policy files (files mode). Nothing is applied
// unless all of that succeeds.
func (h *Handler) propose(w http.ResponseWriter, r *http.Request, act Actor, ps PolicyState, src *groups.Source, c groups.Change,
	message, backPath string, back url.Values, notice string) error {
	p, err := h.b.Compile(src)
	if err != nil {
		return &httperr.Error{Status: http.StatusUnprocessableEntity, Code: "invalid_policy", Title: "Not saved",
			Message: "The change does not compile: " + policyError(err), Hint: "Go back, fix it and try again. Nothing was changed."}
	}
	if err := h.guard(r.Context(), act, ps, proposal{after: p, afterSrc: src}); err != nil {
		return err
	}
	if !ps.Store {
		diff, err := h.b.ExportDiff(c)
		if err != nil {
			return &httperr.Error{Status: http.StatusUnprocessableEntity, Code: "export_failed", Title: "Cannot export",
				Message: "The change could not be written as a diff of the policy files.", Cause: err}
		}
		h.render(w, r, act, http.StatusOK, "diff.html", "Proposed change", "policy", map[string]any{"Diff": diff, "Message": message})
		return nil
	}
	parent, err := strconv.Atoi(r.PostForm.Get("parent"))
	if err != nil {
		parent = ps.N
	}
	if _, err := h.b.Commit(r.Context(), act, parent, groups.File{Groups: src.Groups, Apps: src.Apps}, message, 0); err != nil {
		switch {
		case errors.Is(err, groups.ErrPolicyConflict):
			return &httperr.Error{Status: http.StatusConflict, Code: "conflict", Title: "Not saved",
				Message: "Someone saved another change while you were editing. Reload and redo yours.", Cause: err}
		case errors.Is(err, groups.ErrPolicyTooLarge):
			return &httperr.Error{Status: http.StatusUnprocessableEntity, Code: "too_large", Title: "Not saved",
				Message: "The policy would no longer fit in one store record (1 MiB). Split rules into fewer, broader ones.", Cause: err}
		}
		return err
	}
	return done(w, r, backPath, back, notice)
}
