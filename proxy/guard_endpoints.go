package proxy

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshgate/proxy/resilience"
)

// endpointBreakers are a destination's circuit breakers per endpoint
// (circuitBreaker.perEndpoint): the balancer is asked to leave out the
// endpoints whose circuit is open (pickGuarded), and each try tells its
// endpoint's breaker how it ended. At most endpointBreakersMax endpoints
// have one; past that, a closed one is dropped for a new one, and when
// none is closed the new endpoint goes without.
type endpointBreakers struct {
	st  *guardState
	pol resilience.BreakerPolicy

	mu sync.Mutex
	m  map[netip.AddrPort]*endpointBreaker // guarded by mu
	// notClosed counts the breakers not closed: while none is, a pick
	// looks at none.
	notClosed atomic.Int32
}

// endpointBreaker is one endpoint's breaker, with its state as last
// changed and, open, until when, readable without its lock.
type endpointBreaker struct {
	b     *resilience.Breaker
	state atomic.Uint32
	until atomic.Int64 // unix nanoseconds; set when it opens
	// gone: dropped for another endpoint's; its changes are no longer
	// counted or shown.
	gone atomic.Bool
}

// get returns ep's breaker, made closed when ep has none; nil when there
// is no room for one.
func (e *endpointBreakers) get(ep netip.AddrPort) *endpointBreaker {
	e.mu.Lock()
	defer e.mu.Unlock()
	if eb := e.m[ep]; eb != nil {
		return eb
	}
	if len(e.m) >= endpointBreakersMax {
		for a, eb := range e.m {
			if resilience.State(eb.state.Load()) == resilience.Closed {
				delete(e.m, a)
				eb.gone.Store(true)
				labels := prometheus.Labels{"destination": e.st.key, "endpoint": a.String()}
				e.st.gs.m.state.DeletePartialMatch(labels)
				e.st.gs.m.transitions.DeletePartialMatch(labels)
				break
			}
		}
		if len(e.m) >= endpointBreakersMax {
			return nil
		}
	}
	eb := &endpointBreaker{}
	label := ep.String()
	eb.b = resilience.NewBreaker(breakerOptions(e.pol, func(from, to resilience.State) {
		if eb.gone.Load() {
			return // dropped: a try still out told it late
		}
		eb.state.Store(uint32(to))
		if to == resilience.Open {
			eb.until.Store(time.Now().Add(e.pol.OpenFor).UnixNano())
		}
		switch {
		case from == resilience.Closed:
			e.notClosed.Add(1)
		case to == resilience.Closed:
			e.notClosed.Add(-1)
		}
		e.st.changed(label, from, to, e.pol.OpenFor)
	}))
	e.m[ep] = eb
	if !e.st.retired.Load() {
		e.st.gs.m.state.WithLabelValues(e.st.key, label).Set(0)
	}
	return eb
}

// open returns the endpoints whose circuit is open at now, appended to
// avoid (nil when none is).
func (e *endpointBreakers) open(avoid []netip.AddrPort, now time.Time) []netip.AddrPort {
	if e.notClosed.Load() == 0 {
		return avoid
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	n := now.UnixNano()
	for a, eb := range e.m {
		if resilience.State(eb.state.Load()) == resilience.Open && n < eb.until.Load() && !slices.Contains(avoid, a) {
			avoid = append(avoid, a)
		}
	}
	return avoid
}

// pickGuarded is pick for a destination whose endpoints have breakers:
// the balancer is asked to avoid, beside those tried, the endpoints
// whose circuit is open; an endpoint it picks is tried only if its
// breaker lets the try through (a half-open one, a few trials), and the
// try's end is told to the breaker (a failure as the balancer is told
// one: failed before a response, or a 502, 503 or 504). A destination
// that is no service address, whose connection goes to dst itself, has
// no endpoint breakers (its own breaker covers it). refused is true when
// nothing is left to try because every endpoint not tried is open.
func (e *endpointBreakers) pickGuarded(b Balancer, dst netip.AddrPort, tried []netip.AddrPort) (t try, ok, refused bool) {
	now := time.Now()
	avoid := e.open(slices.Clip(tried), now)
	skipped := len(avoid) > len(tried)
	for {
		ep, done, ok := b.Pick(dst, avoid)
		if !ok {
			return try{}, false, skipped
		}
		eb := e.get(ep)
		if eb == nil {
			return try{addr: ep, done: done}, true, false
		}
		ticket, allowed := eb.b.Allow(now)
		if !allowed {
			// Half-open with its trials out: no try, and no measure of
			// the endpoint for the balancer.
			done(0, 0, false)
			avoid = append(avoid, ep)
			skipped = true
			continue
		}
		return try{addr: ep, done: func(setup, latency time.Duration, failed bool) {
			done(setup, latency, failed)
			eb.b.Done(ticket, !failed, time.Now())
		}}, true, false
	}
}

// endpointBreakersOf returns the endpoint breakers of dst's destination,
// nil when it has none: from the state rr's connection resolved, or for
// a dial with no request (rr nil), looked up by address.
func (p *Proxy) endpointBreakersOf(dst netip.AddrPort, rr *reqRes) *endpointBreakers {
	if rr != nil && rr.g != nil {
		return rr.g.eps
	}
	if g := p.guards.forDst(dst, time.Now()); g != nil {
		return g.eps
	}
	return nil
}

// connSlot takes a place under the maxConnections of the destination of
// a connection about to be dialed to an endpoint of dst: the guard of
// the request in ctx (the HTTP/2 path, whose dials know only the
// endpoint), else dst's. The place is held by the connection once bound
// (bindSlot) until closeUpstream closes it. A nil limiter and no error:
// no cap. Refused, the error is a *guardError (overflow).
func (gs *guards) connSlot(ctx context.Context, dst netip.AddrPort) (*resilience.Limiter, error) {
	if s := gs.curSet(); s == nil || !s.any {
		return nil, nil
	}
	var g *destGuard
	if st, ok := ctx.Value(outboundKey{}).(*outboundRequest); ok {
		g = st.guard.g
	} else {
		g = gs.forDst(dst, time.Now())
	}
	if g == nil || g.conns == nil {
		return nil, nil
	}
	if !g.conns.TryAcquire() {
		g.overflow(capConnections)
		return nil, &guardError{kind: refusedOverflow, limit: capConnections, max: g.conns.Max(), dest: g.key}
	}
	return g.conns, nil
}

// bindSlot has c hold l's place (see connSlot); a nil c gives it back.
func (gs *guards) bindSlot(l *resilience.Limiter, c *net.TCPConn) {
	if l == nil {
		return
	}
	if c == nil {
		l.Release()
		return
	}
	gs.held.Add(1)
	gs.slots.Store(c, l)
}

// closed gives back the place c held, if it held one: closeUpstream
// calls it for each connection it closes.
func (gs *guards) closed(c *net.TCPConn) {
	if gs == nil || gs.held.Load() == 0 {
		return
	}
	if v, ok := gs.slots.LoadAndDelete(c); ok {
		gs.held.Add(-1)
		v.(*resilience.Limiter).Release()
	}
}

// connTicket is an opaque TCP connection's passage through its
// destination's breaker (admitConn); its zero value does nothing.
type connTicket struct {
	g      *destGuard
	ticket resilience.Ticket
}

// admitConn lets a connection to dst through its destination's circuit
// breaker; refused (open), the error is a *guardError. The ticket is
// told the connection's outcome by done.
func (gs *guards) admitConn(dst netip.AddrPort) (connTicket, error) {
	now := time.Now()
	g := gs.forDst(dst, now)
	if g == nil || g.breaker == nil {
		return connTicket{}, nil
	}
	t, ok := g.breaker.Allow(now)
	if !ok {
		return connTicket{}, &guardError{kind: refusedCircuit, dest: g.key}
	}
	return connTicket{g: g, ticket: t}, nil
}

// done tells the breaker how the connection went: failed, when it could
// not be made or failed before the destination sent a byte.
func (ct connTicket) done(failed bool) {
	if ct.g != nil {
		ct.g.breaker.Done(ct.ticket, !failed, time.Now())
	}
}

// cancel gives the ticket back unjudged: the connection was made for
// the app's first bytes, which turned out to be HTTP, and the requests
// that go on are judged each by its own outcome (the guard judges a
// request once).
func (ct connTicket) cancel() {
	if ct.g != nil {
		ct.g.breaker.Cancel(ct.ticket, time.Now())
	}
}

// doneErr is done for a connection that could not be made: a failure,
// unless the guard refused it (over maxConnections), which says nothing
// of the destination.
func (ct connTicket) doneErr(err error) {
	if _, ok := asGuardError(err); !ok {
		ct.done(true)
	}
}

// allOpen is the error of a request to dst none of whose endpoints could
// be tried: their circuits are open.
func (gs *guards) allOpen(dst netip.AddrPort) error {
	key := dst.String()
	if g := gs.forDst(dst, time.Now()); g != nil {
		key = g.key
	}
	return &guardError{kind: refusedEndpoints, dest: key}
}
