package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// poolMetrics describe the per-identity upstream pools of PROXY v2 apps.
type poolMetrics struct {
	pools     prometheus.Gauge
	evictions prometheus.Counter
	dials     *prometheus.CounterVec
}

func newPoolMetrics(reg prometheus.Registerer) *poolMetrics {
	m := &poolMetrics{
		pools: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztna_proxy_identity_pools", Help: "Upstream connection pools, one per identity, of apps with proxy_protocol v2.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ztna_proxy_identity_pool_evictions_total", Help: "Identity pools closed because pool.max_identities was reached.",
		}),
		dials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztna_proxy_identity_dials_total", Help: "Upstream connections opened with a PROXY v2 identity header, by app.",
		}, []string{"app"}),
	}
	if reg != nil {
		reg.MustRegister(m.pools, m.evictions, m.dials)
	}
	return m
}

type metrics struct {
	requests      *prometheus.CounterVec
	decisionTime  prometheus.Histogram
	reloads       *prometheus.CounterVec
	configVersion prometheus.Gauge

	// Policy: which version decides, and reloads it refused.
	policyInfo         *prometheus.GaugeVec
	policyReloadErrors prometheus.Counter
	policyCompile      prometheus.Gauge

	// Device trust: the seed's KPIs (time to isolate, quarantines,
	// releases, posture failures by reason).
	postureFailures *prometheus.CounterVec
	reports         *prometheus.CounterVec
	signals         *prometheus.CounterVec
	quarantines     *prometheus.CounterVec
	releases        *prometheus.CounterVec
	quarantined     prometheus.Gauge
	isolation       prometheus.Histogram
	replicaEvents   *prometheus.CounterVec
	replicaResyncs  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztna_proxy_requests_total", Help: "Access decisions on HTTP requests, by app and decision.",
		}, []string{"app", "decision"}),
		decisionTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ztna_proxy_decision_duration_seconds", Help: "Time from request arrival to access decision.",
			Buckets: []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1},
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztna_proxy_config_reloads_total", Help: "Configuration loads, by result (applied, rejected).",
		}, []string{"result"}),
		configVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztna_proxy_config_version", Help: "Version number of the configuration in use (increments per applied load).",
		}),
	}
	m.policyInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ztna_policy_info", Help: "1 for the policy version in use (a hash of what the policy says; also in audit events).",
	}, []string{"version"})
	m.policyReloadErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztna_policy_reload_errors_total", Help: "Policy (config or policy dir) reloads rejected; the previous policy kept serving.",
	})
	m.policyCompile = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztna_policy_compile_seconds", Help: "Time the policy in use took to load and compile.",
	})
	m.postureFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztna_posture_failures_total", Help: "Requests refused by the posture step, by failed check (device = no device certificate).",
	}, []string{"check"})
	m.reports = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztna_posture_reports_total", Help: "Posture reports received, by result (accepted or the refusal code).",
	}, []string{"result"})
	m.signals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztna_signals_total", Help: "Signals received, by source and outcome (quarantined, recorded, checkin, unknown_device, rejected).",
	}, []string{"source", "outcome"})
	m.quarantines = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztna_posture_quarantines_total", Help: "Quarantines started, by source.",
	}, []string{"source"})
	m.releases = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztna_posture_releases_total", Help: "Quarantines lifted, by how (admin, auto).",
	}, []string{"how"})
	m.quarantined = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztna_posture_quarantined", Help: "Devices and users in quarantine now.",
	})
	m.isolation = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "ztna_posture_isolation_seconds", Help: "Time from a signal's arrival to its device's live connections being closed (MTTR of isolation).",
		Buckets: []float64{1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5},
	})
	m.replicaEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztna_replica_events_received_total", Help: "Trust events applied from other replicas, by kind.",
	}, []string{"kind"})
	m.replicaResyncs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztna_replica_resyncs_total", Help: "Reconciliations from the store after the bus (re)connected.",
	})
	if reg != nil {
		reg.MustRegister(m.requests, m.decisionTime, m.reloads, m.configVersion, m.policyInfo, m.policyReloadErrors, m.policyCompile,
			m.postureFailures, m.reports, m.signals, m.quarantines, m.releases, m.quarantined, m.isolation,
			m.replicaEvents, m.replicaResyncs)
	}
	return m
}
