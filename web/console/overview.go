package console

import (
	"net/http"

	"github.com/ztna-dev/ztna/internal/audit"
	"github.com/ztna-dev/ztna/posture"
)

// The overview: how much there is, which policy serves where, what was
// refused lately and who is isolated now.

// overviewDenials is how many recent denials the overview lists.
const overviewDenials = 10

// overviewCounts are the overview's numbers.
type overviewCounts struct {
	Users, Groups, Apps, Devices, Revoked, Quarantined, Live, Sessions int
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request, act Actor) error {
	ctx := r.Context()
	ps := h.b.Policy()
	users, err := h.b.Users(ctx)
	if err != nil {
		return err
	}
	devices, err := h.b.Devices(ctx, "")
	if err != nil {
		return err
	}
	sessions, err := h.b.Sessions(ctx, "")
	if err != nil {
		return err
	}
	quarantines := h.b.Quarantines()
	c := overviewCounts{
		Users:       len(users),
		Apps:        len(ps.Apps),
		Quarantined: len(quarantines),
		Live:        len(h.b.Live()),
		Sessions:    len(sessions),
	}
	if ps.Source != nil {
		c.Groups = len(ps.Source.Groups)
	}
	for _, d := range devices {
		if d.Revoked {
			c.Revoked++
		} else {
			c.Devices++
		}
	}
	// The replicas' versions are shown, not relied on: when the store
	// cannot say, the page says so instead of failing.
	replicas, rerr := h.b.Replicas(ctx)
	replicaErr := ""
	if rerr != nil {
		h.logger.Info("console: list replicas", "err", rerr)
		replicaErr = "The replicas' policy versions could not be read."
	}
	denials, more := h.b.Audit(audit.Query{Decision: "deny", Limit: overviewDenials})
	h.render(w, r, act, http.StatusOK, "overview.html", "Overview", "", map[string]any{
		"Counts":      c,
		"Version":     ps.Compiled.Version(),
		"Replicas":    replicas,
		"ReplicaErr":  replicaErr,
		"Replica":     h.b.Replica(),
		"Denials":     denials,
		"MoreDenials": more,
		"Quarantines": quarantines,
		"DeviceKind":  posture.QuarantineDevice,
	})
	return nil
}
