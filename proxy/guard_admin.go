package proxy

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"meshgate/proxy/resilience"
)

// ResilienceStatus is what GET /resilience on the admin port shows: the
// state of every destination the proxy keeps a guard for (a circuit
// breaker, a bulkhead or a fallback), by destination name.
type ResilienceStatus struct {
	Destinations []DestinationStatus `json:"destinations"`
}

// DestinationStatus is one destination's guard.
type DestinationStatus struct {
	// Destination is its name: the destination label of its metrics.
	Destination string `json:"destination"`
	// Breaker is its own circuit breaker; nil: none.
	Breaker *BreakerStatus `json:"breaker,omitempty"`
	// Endpoints are its endpoints' breakers (circuitBreaker.perEndpoint),
	// by endpoint address.
	Endpoints []EndpointStatus `json:"endpoints,omitempty"`
	// Bulkhead is what is in use of its caps; nil: no bulkhead.
	Bulkhead *BulkheadStatus `json:"bulkhead,omitempty"`
	// StaleCaches are the responses kept for its stale fallbacks.
	StaleCaches []StaleCacheStatus `json:"staleCaches,omitempty"`
}

// BreakerStatus is a circuit breaker's state and counts.
type BreakerStatus struct {
	// State is closed, open or half-open.
	State string `json:"state"`
	// ConsecutiveFailures is the failures in a row so far (closed), of
	// OpensAfter (0: not on consecutive failures).
	ConsecutiveFailures int `json:"consecutiveFailures"`
	OpensAfter          int `json:"opensAfter"`
	// Requests and Failures are those of the failure-rate window
	// (closed; 0 without a failure rate).
	Requests int64 `json:"requests"`
	Failures int64 `json:"failures"`
	// OpenUntil is when an open circuit lets trial requests through.
	OpenUntil *time.Time `json:"openUntil,omitempty"`
	// Trials are the trial requests out, Passed those that succeeded,
	// of HalfOpenRequests (half-open).
	Trials           int `json:"trials"`
	Passed           int `json:"passed"`
	HalfOpenRequests int `json:"halfOpenRequests"`
}

// EndpointStatus is one endpoint's breaker.
type EndpointStatus struct {
	Endpoint string `json:"endpoint"`
	BreakerStatus
}

// BulkheadStatus is a destination's caps and what is in use of them; a
// Max of 0 is no limit.
type BulkheadStatus struct {
	Connections Usage `json:"connections"`
	Pending     Usage `json:"pending"`
	Active      Usage `json:"active"`
	Retries     Usage `json:"retries"`
}

// Usage is what is in use of a cap.
type Usage struct {
	InUse int64 `json:"inUse"`
	Max   int64 `json:"max"`
}

// StaleCacheStatus is one stale cache: the destination's own (Route "")
// or a route's.
type StaleCacheStatus struct {
	Route    string `json:"route"`
	Entries  int    `json:"entries"`
	Bytes    int64  `json:"bytes"`
	MaxBytes int64  `json:"maxBytes"`
	MaxAge   string `json:"maxAge"`
}

// serveResilience writes ResilienceStatus as JSON.
func (p *Proxy) serveResilience(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	body, _ := json.MarshalIndent(p.guards.status(time.Now()), "", "  ")
	w.Write(append(body, '\n'))
}

// status is every guarded destination's state at now.
func (gs *guards) status(now time.Time) ResilienceStatus {
	out := ResilienceStatus{Destinations: []DestinationStatus{}}
	s := gs.cur.Load()
	if s == nil {
		return out
	}
	for _, g := range s.named {
		if g.guarded() {
			out.Destinations = append(out.Destinations, g.status(now))
		}
	}
	{
		s.defMu.Lock()
		var defs []*destGuard
		for _, a := range s.defs.Keys() {
			if g, _ := s.defs.Peek(a); g.guarded() {
				defs = append(defs, g)
			}
		}
		s.defMu.Unlock()
		for _, g := range defs {
			out.Destinations = append(out.Destinations, g.status(now))
		}
	}
	slices.SortFunc(out.Destinations, func(a, b DestinationStatus) int { return cmp.Compare(a.Destination, b.Destination) })
	return out
}

func (g *destGuard) status(now time.Time) DestinationStatus {
	d := DestinationStatus{Destination: g.key}
	if g.breaker != nil {
		b := breakerStatus(g.breaker.Status(now), g.set.breaker)
		d.Breaker = &b
	}
	if e := g.eps; e != nil {
		e.mu.Lock()
		for a, eb := range e.m {
			d.Endpoints = append(d.Endpoints, EndpointStatus{Endpoint: a.String(), BreakerStatus: breakerStatus(eb.b.Status(now), e.pol)})
		}
		e.mu.Unlock()
		slices.SortFunc(d.Endpoints, func(a, b EndpointStatus) int { return cmp.Compare(a.Endpoint, b.Endpoint) })
	}
	if g.active != nil {
		use := func(l *resilience.Limiter) Usage {
			if l == nil {
				return Usage{}
			}
			return Usage{InUse: l.InUse(), Max: l.Max()}
		}
		d.Bulkhead = &BulkheadStatus{Connections: use(g.conns), Pending: use(g.pending), Active: use(g.active), Retries: use(g.retries)}
	}
	g.staleMu.Lock()
	for k, c := range g.stale {
		d.StaleCaches = append(d.StaleCaches, StaleCacheStatus{Route: k.level, Entries: c.Len(), Bytes: c.Bytes(),
			MaxBytes: k.pol.MaxBytes, MaxAge: k.pol.MaxAge.String()})
	}
	g.staleMu.Unlock()
	slices.SortFunc(d.StaleCaches, func(a, b StaleCacheStatus) int { return cmp.Compare(a.Route, b.Route) })
	return d
}

func breakerStatus(s resilience.BreakerStatus, pol resilience.BreakerPolicy) BreakerStatus {
	b := BreakerStatus{State: s.State.String(), ConsecutiveFailures: s.ConsecutiveFailures, OpensAfter: pol.ConsecutiveFailures,
		Requests: s.Outcomes, Failures: s.Failures, Trials: s.Trials, Passed: s.Passed, HalfOpenRequests: pol.HalfOpenRequests}
	if !s.OpenUntil.IsZero() {
		t := s.OpenUntil
		b.OpenUntil = &t
	}
	return b
}
