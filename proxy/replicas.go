package proxy

import (
	"context"
	"encoding/json"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztna-dev/ztna/internal/bus"
)

// Replicas. Several edges share one store (Redis); each tells the others,
// over Options.Bus, about the trust changes it made — a session revoked or
// refreshed, a device revoked, a quarantine, an accepted posture report, a
// policy version applied — after writing them to the store, and applies
// theirs from the store (ReplicaEvents), so caches drop what changed and
// live connections no longer allowed close on every replica. When the bus
// was away it resyncs: caches are dropped, quarantines and reports reread,
// and the live connections of sessions the store no longer holds closed.
//
// While the store is unreachable nothing new can be checked, so nothing new
// is allowed: a session a replica has not read within the last 30 s
// (authn's cache lifetime) is refused with 503, logins fail, and every
// change already received keeps applying. Live connections stay up; when
// the bus is back, the resync closes those revoked meanwhile.

// announce wires this edge's registries to tell the other replicas, and
// exports whether the bus is connected.
func (e *Edge) announce(b bus.Bus, reg prometheus.Registerer) {
	e.sessions.Announce(b.Publish)
	e.quarantine.Announce(b.Publish)
	e.reports.Announce(b.Publish)
	if e.devices != nil {
		e.devices.Announce(b.Publish)
	}
	if reg != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ztna_replica_bus_connected",
			Help: "1 while this replica hears the other replicas' trust events (always 1 for a single replica).",
		}, func() float64 {
			if ok, _ := b.Connected(); ok {
				return 1
			}
			return 0
		}))
	}
}

// ReplicaEvents is what the bus delivers the other replicas' events to.
func (e *Edge) ReplicaEvents() bus.Handler { return replicaEvents{e} }

type replicaEvents struct{ e *Edge }

// replicaEventWait bounds the store reads of applying one event.
const replicaEventWait = 5 * time.Second

func (h replicaEvents) Event(ev bus.Event) {
	e := h.e
	ctx, cancel := context.WithTimeout(context.Background(), replicaEventWait)
	defer cancel()
	e.metrics.replicaEvents.WithLabelValues(ev.Kind).Inc()
	switch ev.Kind {
	case bus.SessionRevoked:
		e.sessions.Forget(ctx, ev.Key)
	case bus.SessionUpdated:
		e.sessions.Reread(ctx, ev.Key)
	case bus.DeviceRevoked:
		if e.devices != nil {
			e.devices.Forget(ctx, ev.Key)
		}
	case bus.Quarantine:
		if err := e.quarantine.Load(ctx); err != nil {
			e.logger.Error("quarantine changed on another replica and could not be reread", "err", err)
		}
		e.metrics.quarantined.Set(float64(e.quarantine.Len()))
	case bus.Report:
		if err := e.reports.Refresh(ctx, ev.Key); err != nil {
			e.logger.Warn("posture report from another replica not reread", "device", ev.Key, "err", err)
		}
	case bus.Policy:
		if err := e.SyncStoredPolicy(ctx); err != nil {
			e.logger.Error("policy changed on another replica and could not be applied here", "err", err)
		}
		if mine := e.state.Load().policy.Version(); mine != ev.Key {
			e.logger.Info("another replica applied another policy version", "theirs", ev.Key, "ours", mine)
		}
	}
}

func (h replicaEvents) Resync() {
	e := h.e
	ctx, cancel := context.WithTimeout(context.Background(), 4*replicaEventWait)
	defer cancel()
	e.metrics.replicaResyncs.Inc()
	e.sessions.Resync(ctx, e.live.sessions())
	if e.devices != nil {
		e.devices.Resync()
	}
	if err := e.quarantine.Load(ctx); err != nil {
		e.logger.Error("resync: quarantine not reread", "err", err)
	}
	e.metrics.quarantined.Set(float64(e.quarantine.Len()))
	if err := e.reports.Load(ctx); err != nil {
		e.logger.Error("resync: posture reports not reread", "err", err)
	}
	if err := e.SyncStoredPolicy(ctx); err != nil {
		e.logger.Error("resync: stored policy not reread", "err", err)
	}
}

// The policy each replica serves is recorded in the store, so that after a
// GitOps change an operator sees whether every replica runs the new version
// (GET /api/policy). A record expires unless its replica renews it, so a
// replica that is gone drops out.
const (
	bucketPolicyApplied = "policy_applied"
	policyRecordTTL     = 10 * time.Minute
)

// PolicyRecord is one replica's policy version.
type PolicyRecord struct {
	Replica string    `json:"replica"`
	Version string    `json:"version"`
	Since   time.Time `json:"since"` // when this replica started serving it
	Seen    time.Time `json:"seen"`  // when it last renewed the record
}

// recordPolicy writes this replica's record (after a policy change, and
// from the janitor so it does not expire).
func (e *Edge) recordPolicy(ctx context.Context) {
	st := e.state.Load()
	if st == nil {
		return
	}
	since, _ := e.policySince.Load().(time.Time)
	rec := PolicyRecord{Replica: e.opts.Bus.ID(), Version: st.policy.Version(), Since: since, Seen: time.Now()}
	b, err := json.Marshal(rec)
	if err == nil {
		err = e.opts.Store.Put(ctx, bucketPolicyApplied, rec.Replica, b, policyRecordTTL)
	}
	if err != nil {
		e.logger.Warn("policy version not recorded in the store", "err", err)
	}
}

// PolicyRecords lists the replicas' policy versions from the store.
func (e *Edge) PolicyRecords(ctx context.Context) ([]PolicyRecord, error) {
	var out []PolicyRecord
	err := e.opts.Store.List(ctx, bucketPolicyApplied, "", func(_ string, v []byte) bool {
		var r PolicyRecord
		if json.Unmarshal(v, &r) == nil {
			out = append(out, r)
		}
		return len(out) < 1000
	})
	return out, err
}
