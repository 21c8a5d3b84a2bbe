package proxy

import (
	"strconv"
	"sync"
	"time"

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
	// detections counts protocol detections by direction, protocol (see
	// sniff.Protocol) and how it was decided (see the verdict constants).
	detections *prometheus.CounterVec
	// detectSeconds is how long detection took, by direction: from
	// accept to the verdict (0 for declared and remembered ones).
	detectSeconds *prometheus.HistogramVec
	// appTLS counts the app's own TLS connections passed through, by
	// direction and SNI (at most maxSNILabels names; then "other").
	appTLS  *prometheus.CounterVec
	sniSeen sniLabels
	// requests counts L7 HTTP requests by direction, method, response
	// class (2xx, ...) and the peer sidecar's SPIFFE ID; requestSeconds
	// is their duration, to the end of the response.
	requests       *prometheus.CounterVec
	requestSeconds *prometheus.HistogramVec
	// policyDecisions counts authorization decisions (authz.go).
	policyDecisions *prometheus.CounterVec
	// accessDenials counts refusals by IP lists and header blocks
	// (access.go).
	accessDenials *prometheus.CounterVec
	// rateLimitDecisions counts rate limit decisions (ratelimit_stage.go).
	rateLimitDecisions *prometheus.CounterVec
	// protectionEvents counts connections and requests refused by a
	// limit (protect.go), by direction and reason.
	protectionEvents *prometheus.CounterVec
	requestChildren  sync.Map // requestKey → *requestChildren

	// faultsInjected and mirrors count faults injected and request
	// copies (inject.go).
	faultsInjected, mirrors *prometheus.CounterVec
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
	detections := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_protocol_detections_total",
		Help: "Protocol detections, by direction, protocol (tls, http1, http2, opaque) and how it was decided " +
			"(client: its first bytes; server_first: the server spoke first; declared: protocols.ports; remembered: " +
			"a server-first destination seen before; incomplete: the client's bytes settled nothing; timeout: nobody spoke " +
			"within protocols.detectTimeout; client_closed).",
	}, []string{"direction", "protocol", "by"})
	detectSeconds := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "meshgate_protocol_detection_duration_seconds",
		Help:    "Time from accepting a connection to its protocol verdict, while the upstream is dialed alongside.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"direction"})
	appTLS := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_app_tls_connections_total",
		Help: "Connections on which the app speaks TLS itself, passed through untouched, by direction and SNI " +
			"(\"\" when none was sent; \"other\" past the first 1000 names).",
	}, []string{"direction", "sni"})
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_http_requests_total",
		Help: "HTTP requests carried as L7 between sidecars, by direction, method, response class (2xx, 5xx, ...) and the peer sidecar's SPIFFE ID.",
	}, []string{"direction", "method", "response_class", "peer_identity"})
	requestSeconds := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "meshgate_http_request_duration_seconds",
		Help:    "Duration of L7 HTTP requests, from the request's headers to the end of the response, by direction, method and response class.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"direction", "method", "response_class"})
	policyDecisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_policy_decisions_total",
		Help: "Authorization decisions, by direction, the policy and rule that decided (\"default\" when none did), " +
			"the rule's action and the result (allowed, denied; audited and dry-run-allowed/-denied for what audit and " +
			"dryRun rules found, which changes nothing). Counted once per connection decided at connect time, per request otherwise.",
	}, []string{"direction", "policy", "rule", "action", "result"})
	protectionEvents := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_protection_events_total",
		Help: "Connections and requests refused or cut off by a limit (the limits section), by direction and reason: " +
			"max_connections, max_connections_per_source_ip (reset at accept), max_connections_per_identity (closed after the handshake), " +
			"handshake_timeout (no ClientHello or handshake within timeouts.handshake), request_header_timeout (408), " +
			"request_body_rate (408), request_header_size (431), request_body_size (413).",
	}, []string{"direction", "reason"})
	accessDenials := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_access_denials_total",
		Help: "Connections refused by an IP list (stage ip-list; rule: the list, \"default\" for an address in no allow list) " +
			"and requests refused by a header block (stage block; rule: the block), by direction.",
	}, []string{"direction", "stage", "rule"})
	rateLimitDecisions := newRateLimitDecisions()
	for _, c := range []prometheus.Collector{opened, closed, active, sent, received, failures, handshakes, refused, detections, detectSeconds, appTLS, requests, requestSeconds, policyDecisions, accessDenials, rateLimitDecisions, protectionEvents} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m := &metrics{handshakes: handshakes, plaintextRefused: refused, detections: detections, detectSeconds: detectSeconds, appTLS: appTLS,
		requests: requests, requestSeconds: requestSeconds, policyDecisions: policyDecisions, accessDenials: accessDenials,
		rateLimitDecisions: rateLimitDecisions, protectionEvents: protectionEvents}
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
	m.faultsInjected, m.mirrors = newFaultsInjected(), newMirrorTotal()
	for _, c := range []prometheus.Collector{m.faultsInjected, m.mirrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// requestKey names the children of requests and requestSeconds one
// request counts into.
type requestKey struct {
	dir           Direction
	method, class string
	peer          string
}

// requestChildren are the collectors a requestKey resolves to.
type requestChildren struct {
	count   prometheus.Counter
	seconds prometheus.Observer
}

// observe counts an L7 request and its duration; the children are looked
// up once per label set, not per request.
func (m *metrics) observe(dir Direction, method string, status int, peer string, took time.Duration) {
	k := requestKey{dir: dir, method: method, class: statusClass(status), peer: peer}
	v, ok := m.requestChildren.Load(k)
	if !ok {
		d := dir.String()
		v, _ = m.requestChildren.LoadOrStore(k, &requestChildren{
			count:   m.requests.WithLabelValues(d, method, k.class, peer),
			seconds: m.requestSeconds.WithLabelValues(d, method, k.class),
		})
	}
	c := v.(*requestChildren)
	c.count.Inc()
	c.seconds.Observe(took.Seconds())
}

// statusClass is the response_class label of a status: 2xx, 5xx, ...
func statusClass(status int) string {
	if status >= 100 && status < 600 {
		return [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}[status/100-1]
	}
	return strconv.Itoa(status/100) + "xx"
}

// maxSNILabels bounds the SNI label values of meshgate_app_tls_connections_total,
// so a client making up names cannot grow the metrics without end.
const maxSNILabels = 1000

// sniLabels hands out SNI label values: the name itself for the first
// maxSNILabels names, "other" after.
type sniLabels struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

func (l *sniLabels) label(sni string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.seen[sni]; ok {
		return sni
	}
	if len(l.seen) >= maxSNILabels {
		return "other"
	}
	if l.seen == nil {
		l.seen = make(map[string]struct{})
	}
	l.seen[sni] = struct{}{}
	return sni
}
