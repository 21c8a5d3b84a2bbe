package proxy

import "github.com/prometheus/client_golang/prometheus"

// guardMetrics are the collectors of circuit breaking, bulkheads and
// fallbacks (guard.go). The names are a contract (issue 16): dashboards
// and the e2e tests read them. The destination label is the
// destination's name (resilience.DestPolicy.Key), "default/ADDR" for a
// destination of the default policy; endpoint is "" for a destination's
// own breaker.
type guardMetrics struct {
	state       *prometheus.GaugeVec   // destination, endpoint
	transitions *prometheus.CounterVec // destination, endpoint, to
	overflows   *prometheus.CounterVec // destination, limit
	fallbacks   *prometheus.CounterVec // destination, route, kind
}

func newGuardMetrics(reg prometheus.Registerer) (*guardMetrics, error) {
	m := &guardMetrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshgate_circuit_state",
			Help: "The state of each circuit breaker: 0 closed, 1 open (requests fail fast), 2 half-open (trial requests " +
				"let through), by destination and endpoint (\"\" for the destination's own breaker).",
		}, []string{"destination", "endpoint"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshgate_circuit_transitions_total",
			Help: "Changes of state of the circuit breakers, by destination, endpoint (\"\" for the destination's own) and " +
				"the state changed to (open, half-open, closed).",
		}, []string{"destination", "endpoint", "to"}),
		overflows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshgate_overflows_total",
			Help: "Requests, connections and retries refused at once by a destination's bulkhead, by destination and " +
				"the cap reached: connections (maxConnections), pending (maxPending), active (maxActive) or retries (maxRetries).",
		}, []string{"destination", "limit"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshgate_fallbacks_served_total",
			Help: "Requests answered with a fallback while their destination's circuit was open, its bulkhead full, or " +
				"after it failed, by destination, route (\"\" for the destination's own settings) and kind: stale (the " +
				"last good response to the same GET) or static (the configured response).",
		}, []string{"destination", "route", "kind"}),
	}
	for _, c := range []prometheus.Collector{m.state, m.transitions, m.overflows, m.fallbacks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
