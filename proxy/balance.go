package proxy

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"
)

// Balancer chooses the endpoint an outbound connection or HTTP request to
// a service address goes to (shared/DESIGN.md §7). Package discovery's
// DNS proxy is one: it knows which addresses it answered for which
// service, and the service's endpoints.
type Balancer interface {
	// Pick returns the endpoint for a try at dst, avoiding those in avoid
	// (already tried). done must be called once the try is over, with how
	// long it spent setting up a connection to the endpoint (dial and
	// mesh handshake; 0 when a pooled one served), how long it took
	// after that to get the response's headers (0 for a connection of
	// its own: it measures nothing after its set-up), and whether it
	// failed; a try that failed before it had a connection reports all
	// its time as set-up. ok false: dst is no service address, or every
	// endpoint has been tried.
	Pick(dst netip.AddrPort, avoid []netip.AddrPort) (ep netip.AddrPort, done func(setup, latency time.Duration, failed bool), ok bool)
}

// WithBalancer has outbound connections and requests to service addresses
// balanced by b.
func WithBalancer(b Balancer) Option {
	return func(p *Proxy) { p.balancer = b }
}

// try is where one try at a destination goes, and when it began and had
// its connection.
type try struct {
	addr netip.AddrPort
	done func(setup, latency time.Duration, failed bool) // nil: not balanced
	// start is when the try began; connected when it had its connection,
	// new or pooled (zero: not yet). What came before is set-up, which
	// the balancer does not count as the endpoint's latency.
	start, connected time.Time
}

// pick returns the endpoint of dst for a try, avoiding those tried: the
// balancer's choice, or dst itself when it is no service address. ok is
// false when there is nothing left to try. rr is the request the try is
// for, whose destination's state (and endpoint breakers) its connection
// resolved already; nil for a connection's dial, whose are looked up.
func (p *Proxy) pick(dst netip.AddrPort, tried []netip.AddrPort, rr *reqRes) (try, bool) {
	if p.balancer != nil {
		if eps := p.endpointBreakersOf(dst, rr); eps != nil {
			// Endpoints whose own circuit is open are left out
			// (guard_endpoints.go); refused: all that are left are.
			if t, ok, refused := eps.pickGuarded(p.balancer, dst, tried); ok || refused {
				return t, ok
			}
		} else if ep, done, ok := p.balancer.Pick(dst, tried); ok {
			return try{addr: ep, done: done}, true
		}
	}
	if len(tried) > 0 {
		return try{}, false
	}
	return try{addr: dst}, true
}

// spent splits the try's time until end into set-up (until it had its
// connection) and latency (since): a try not connected was all set-up.
func (t *try) spent(end time.Time) (setup, latency time.Duration) {
	if t.connected.IsZero() {
		return end.Sub(t.start), 0
	}
	return t.connected.Sub(t.start), end.Sub(t.connected)
}

// report ends a try.
func (t *try) report(setup, latency time.Duration, failed bool) {
	if t.done != nil {
		t.done(setup, latency, failed)
	}
}

// retriable reports whether a try's error left nothing of the app's sent,
// so another endpoint may be tried: a connect or mesh handshake failure.
func retriable(err error) bool {
	return errors.As(err, new(*dialError)) || errors.As(err, new(*handshakeError))
}

// service is an upstream connection to an endpoint of a destination, and
// how to end its try.
type service struct {
	conn     upConn
	info     tlsInfo
	endpoint netip.AddrPort
	once     sync.Once
	t        try
	ct       connTicket // the destination's breaker (admitConn)
}

// finish ends the connection's try: failed if it failed before the
// upstream sent a byte. Its latency is nothing: the connection's own
// time, from its set-up to its end, says nothing of how fast the
// endpoint answers. Later calls do nothing.
func (s *service) finish(failed bool) {
	s.once.Do(func() {
		s.t.report(s.t.connected.Sub(s.t.start), 0, failed)
		s.ct.done(failed)
	})
}

// handOver ends the connection's try as finish does, but leaves the
// destination's breaker unjudged (its ticket given back): the
// connection was dialed while the app's first bytes were awaited, and
// what it was for is now served request by request, each judged on its
// own. Later calls, and finish after it, do nothing.
func (s *service) handOver(failed bool) {
	s.once.Do(func() {
		s.t.report(s.t.connected.Sub(s.t.start), 0, failed)
		s.ct.cancel()
	})
}

// eachEndpoint runs attempt on an endpoint of dst the balancer picks and,
// while it fails with nothing of the app's sent (retriable), reports the
// failure and tries the next, up to loadBalancing.connectAttempts. An
// attempt that succeeds reports its own try. The error is the last try's.
func (p *Proxy) eachEndpoint(ctx context.Context, dst netip.AddrPort, attempt func(t *try) error) error {
	return p.endpointsFor(ctx, dst, nil, attempt)
}

// endpointsFor is eachEndpoint for one try of an HTTP request whose
// retries rr follows (nil: none, as eachEndpoint). With rr, the endpoints
// the request's earlier tries went to are avoided where another is left
// (pickRetry), every endpoint tried joins rr.tried, and the connect
// failures that move on to another endpoint at once are rr's free ones:
// connectAttempts - 1 for the whole request, not for each try. A connect
// failure past them ends the try, which rr's retries may try again
// (retry.go).
func (p *Proxy) endpointsFor(ctx context.Context, dst netip.AddrPort, rr *reqRes, attempt func(t *try) error) error {
	var tried []netip.AddrPort
	free := p.cfg.LoadBalancing.ConnectAttempts - 1
	if rr != nil {
		tried, free = rr.tried, rr.freeConnects
		defer func() { rr.tried, rr.freeConnects = tried, free }()
	}
	var lastErr error
	for first := true; ; first = false {
		var t try
		var ok bool
		if first && rr != nil {
			t, ok = p.pickRetry(dst, tried, rr)
		} else {
			t, ok = p.pick(dst, tried, rr)
		}
		if !ok {
			if lastErr == nil {
				// Nothing tried: every endpoint's circuit is open.
				lastErr = p.guards.allOpen(dst)
			}
			break
		}
		if rr != nil {
			rr.attempts++
			rr.endpoint = t.addr
		}
		tried = append(tried, t.addr)
		t.start = time.Now()
		err := attempt(&t)
		if err == nil {
			return nil
		}
		now := time.Now()
		setup, latency := t.spent(now)
		t.report(setup, latency, true)
		if rr != nil {
			err = rr.connectErr(err, now)
		}
		lastErr = err
		if t.done == nil || !retriable(err) || ctx.Err() != nil || free <= 0 || rr != nil && rr.tryOver(now) {
			break
		}
		free--
	}
	return lastErr
}

// dialService connects to an endpoint of dst and, when meshTLS, runs mesh
// TLS for proto, expecting dst's identity, trying other endpoints as
// eachEndpoint does; the error is a *dialError or a *handshakeError, or
// a *guardError when dst's guard refused the connection.
func (p *Proxy) dialService(ctx context.Context, dst netip.AddrPort, meshTLS bool, proto string) (*service, error) {
	if !meshTLS {
		proto = ""
	}
	// The destination's circuit breaker: open, the connection is
	// refused at once (a *guardError).
	ct, err := p.guards.admitConn(dst)
	if err != nil {
		return nil, err
	}
	var svc *service
	err = p.eachEndpoint(ctx, dst, func(t *try) error {
		conn, info, err := p.dialEndpoint(ctx, t.addr, dst, proto)
		if err != nil {
			return err
		}
		t.connected = time.Now()
		svc = &service{conn: conn, info: info, endpoint: t.addr, t: *t, ct: ct}
		return nil
	})
	if err != nil {
		ct.doneErr(err)
		return nil, err
	}
	return svc, nil
}

// dialEndpoint connects to endpoint, an endpoint of dst (the address the
// app dialed), and, unless proto is "", runs mesh TLS for proto on it,
// expecting dst's identity; a connection whose handshake failed is
// closed. The error is a *dialError or a *handshakeError, or a
// *guardError when dst's destination has no connection left (bulkhead
// maxConnections).
func (p *Proxy) dialEndpoint(ctx context.Context, endpoint, dst netip.AddrPort, proto string) (upConn, tlsInfo, error) {
	if d, ok := ctx.Value(connectKey{}).(time.Duration); ok {
		// The destination's connect timeout (resilience timeouts.connect)
		// bounds the dial and the handshake, instead of the proxy's.
		at := time.Now().Add(d)
		cctx, cancel := context.WithDeadline(ctx, at)
		defer cancel()
		conn, info, err := p.dialEndpointIn(cctx, endpoint, dst, proto)
		// The dial can fail on its deadline (an i/o timeout) a moment
		// before cctx's own timer has cancelled it: the time says.
		if err != nil && ctx.Err() == nil && (cctx.Err() != nil || !time.Now().Before(at)) {
			err = &dialError{&timeoutError{kind: tkConnect, d: d}}
		}
		return conn, info, err
	}
	return p.dialEndpointIn(ctx, endpoint, dst, proto)
}

// connectKey is the context key of a dial's connect timeout when the
// destination's resilience policy sets one (a time.Duration): it then
// bounds the dial and the mesh handshake instead of timeouts.connect.
type connectKey struct{}

// dialEndpointIn is dialEndpoint within ctx.
func (p *Proxy) dialEndpointIn(ctx context.Context, endpoint, dst netip.AddrPort, proto string) (upConn, tlsInfo, error) {
	// A place under the destination's maxConnections, held until
	// closeUpstream; none left: refused (a *guardError).
	slot, err := p.guards.connSlot(ctx, dst)
	if err != nil {
		return upConn{}, tlsInfo{}, err
	}
	c, err := p.dialUpstream(ctx, endpoint)
	p.guards.bindSlot(slot, c)
	if err != nil {
		return upConn{}, tlsInfo{}, &dialError{err}
	}
	if proto == "" {
		return upConn{tcp: c}, tlsInfo{}, nil
	}
	mc, err := p.originate(ctx, c, dst, proto)
	if err != nil {
		p.closeUpstream(c)
		return upConn{}, tlsInfo{}, err
	}
	return upConn{tcp: c, tls: mc.conn}, mc.info, nil
}
