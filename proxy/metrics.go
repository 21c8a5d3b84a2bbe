package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's Prometheus collectors, with the per-direction
// children resolved once so the hot path never looks up labels.
type metrics struct {
	dir [2]dirMetrics // indexed by Direction

	// handshakes counts mesh TLS handshakes by direction, result
	// ("ok", "failed"), reason (the failure's label, "" when ok), resumed
	// ("true", "false") and peer_identity (the peer's SPIFFE ID, "" when
	// not known).
	handshakes *prometheus.CounterVec
	// plaintextRefused counts connections refused for not being mesh
	// mTLS, by direction and port: inbound, in strict mode (the app's
	// port); outbound, outside the mesh with mtls.plaintextOutsideMesh
	// false (the destination port).
	plaintextRefused *prometheus.CounterVec
}

// dirMetrics are the collectors of one direction.
type dirMetrics struct {
	opened          prometheus.Counter
	closed          prometheus.Counter
	active          prometheus.Gauge
	sent            prometheus.Counter // client → upstream
	received        prometheus.Counter // upstream → client
	connectFailures prometheus.Counter
}

// newMetrics registers the proxy's collectors with reg. The names are a
// contract: the e2e tests, the demo and dashboards read them.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	labels := []string{"direction"}
	opened := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_tcp_connections_opened_total",
		Help: "TCP connections accepted on a capture listener.",
	}, labels)
	closed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_tcp_connections_closed_total",
		Help: "TCP connections accepted on a capture listener and since closed, including refused ones.",
	}, labels)
	active := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshgate_tcp_connections_active",
		Help: "TCP connections accepted on a capture listener and not yet closed.",
	}, labels)
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_tcp_sent_bytes_total",
		Help: "Bytes forwarded from clients to upstreams, counted as they flow.",
	}, labels)
	received := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_tcp_received_bytes_total",
		Help: "Bytes forwarded from upstreams to clients, counted as they flow.",
	}, labels)
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_tcp_connect_failures_total",
		Help: "Failed attempts to connect to a connection's original destination (refused, unreachable, timed out).",
	}, labels)
	handshakes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_tls_handshakes_total",
		Help: "Mesh mTLS handshakes between sidecars, by result, failure reason, session resumption and the peer's SPIFFE ID.",
	}, []string{"direction", "result", "reason", "resumed", "peer_identity"})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_mtls_plaintext_refused_total",
		Help: "Connections refused for not being mesh mTLS: inbound in strict mode, by the app's port; outbound outside the mesh when plaintext is not allowed there, by destination port.",
	}, []string{"direction", "port"})
	for _, c := range []prometheus.Collector{opened, closed, active, sent, received, failures, handshakes, refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m := &metrics{handshakes: handshakes, plaintextRefused: refused}
	for _, d := range []Direction{Outbound, Inbound} {
		l := d.String()
		m.dir[d] = dirMetrics{
			opened:          opened.WithLabelValues(l),
			closed:          closed.WithLabelValues(l),
			active:          active.WithLabelValues(l),
			sent:            sent.WithLabelValues(l),
			received:        received.WithLabelValues(l),
			connectFailures: failures.WithLabelValues(l),
		}
	}
	return m, nil
}
