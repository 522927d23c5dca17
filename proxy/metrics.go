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
	if reg != nil {
		reg.MustRegister(m.requests, m.decisionTime, m.reloads, m.configVersion)
	}
	return m
}
