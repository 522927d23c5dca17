package edge

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Protocol label values for the connection metrics.
const (
	protoH1 = "h1"
	protoH2 = "h2"
	protoH3 = "h3"
)

// Reason label values for ztna_edge_proxy_protocol_rejected_total.
const (
	rejectUntrusted = "untrusted_header" // a PROXY header (or its start) from a peer outside trusted_cidrs
	rejectBad       = "bad_header"       // a trusted peer's header is malformed, truncated, too large or not TCP
	rejectTimeout   = "timeout"          // no complete header within header_timeout
	rejectMissing   = "missing_header"   // require: true and a trusted peer sent no header
)

type metrics struct {
	open          *prometheus.GaugeVec   // ztna_edge_connections_open{proto}
	maxClosed     *prometheus.CounterVec // ztna_edge_connections_max_duration_closed_total{proto}
	proxyRejected *prometheus.CounterVec // ztna_edge_proxy_protocol_rejected_total{reason}
	tunnelOpen    prometheus.Gauge       // ztna_edge_tunnel_connections
	tunnelClosed  *prometheus.CounterVec // ztna_edge_tunnel_connections_closed_total{reason}
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ztna_edge_connections_open",
			Help: "Client connections open on the edge after the TLS handshake, by protocol (h1, h2, h3). Hijacked (WebSocket) connections count until they close.",
		}, []string{"proto"}),
		maxClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztna_edge_connections_max_duration_closed_total",
			Help: "Client connections told to close (Connection: close / GOAWAY) or closed while idle because they outlived listen.max_connection_duration, by protocol.",
		}, []string{"proto"}),
		proxyRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztna_edge_proxy_protocol_rejected_total",
			Help: "Connections closed by the inbound PROXY protocol check (listen.proxy_protocol), by reason: untrusted_header, bad_header, timeout, missing_header.",
		}, []string{"reason"}),
		tunnelOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztna_edge_tunnel_connections",
			Help: "Tunnel connections (QUIC, ALPN " + TunnelALPN + ") open on the edge after the TLS handshake.",
		}),
		tunnelClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztna_edge_tunnel_connections_closed_total",
			Help: "Tunnel connections the edge itself ended or refused, by reason: drain (shutdown), max_duration (listen.max_connection_duration), limit (too many tunnel connections), panic (the tunnel handler panicked).",
		}, []string{"reason"}),
	}
	// Initialise the label values so dashboards see zeros, not gaps.
	for _, p := range []string{protoH1, protoH2, protoH3} {
		m.open.WithLabelValues(p)
		m.maxClosed.WithLabelValues(p)
	}
	for _, r := range []string{rejectUntrusted, rejectBad, rejectTimeout, rejectMissing} {
		m.proxyRejected.WithLabelValues(r)
	}
	for _, r := range []string{tunnelClosedDrain, tunnelClosedMaxDuration, tunnelClosedLimit, tunnelClosedPanic} {
		m.tunnelClosed.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.open, err = register(reg, m.open); err != nil {
		return nil, err
	}
	if m.maxClosed, err = register(reg, m.maxClosed); err != nil {
		return nil, err
	}
	if m.proxyRejected, err = register(reg, m.proxyRejected); err != nil {
		return nil, err
	}
	if m.tunnelOpen, err = register(reg, m.tunnelOpen); err != nil {
		return nil, err
	}
	if m.tunnelClosed, err = register(reg, m.tunnelClosed); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under the
// same descriptor, so a second Server on the same registry (a restart in the
// same process) shares the series instead of failing.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	var zero C
	return zero, fmt.Errorf("edge: register metrics: %w", err)
}
