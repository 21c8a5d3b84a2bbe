package proxy

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"meshgate/proxy/policy"
	"meshgate/proxy/resilience"
)

// ExplainResilience is the resilience policy an outbound call would get
// (retry.go, guard.go, fault_stage.go, mirror_stage.go, tcpfault.go):
// its destination, its route (HTTP), the timeouts and retries, the
// faults and mirror, and the circuit breakers, bulkhead and fallback in
// effect.
type ExplainResilience struct {
	// Destination is the destination's name (resilience.DestPolicy.Key):
	// "default" when no entry of resilience.destinations matched.
	Destination string
	// Route is the route's name; "" for the destination's own settings.
	Route    string
	HTTP     bool // the call is an HTTP request: Route, Retries, Faults, Mirror, Fallback apply
	Timeouts resilience.TimeoutPolicy
	Retry    resilience.RetryPolicy
	Budget   resilience.BudgetPolicy
	// ConnectDefault and IdleDefault are the proxy's timeouts.connect and
	// timeouts.idle, which stand for the destination's when unset.
	ConnectDefault, IdleDefault time.Duration
	// Faults and Mirror are the route's (HTTP): the faults injected and
	// where copies go (nil: no mirror). TCPFaults are the destination's,
	// for a connection that is not HTTP.
	Faults    resilience.FaultPolicy
	Mirror    *resilience.MirrorPolicy
	TCPFaults resilience.TCPFaultPolicy
	// Breaker, EndpointBreaker and Bulkhead are the destination's (each
	// off unless Enabled); Fallback is the route's (HTTP).
	Breaker, EndpointBreaker resilience.BreakerPolicy
	Bulkhead                 resilience.BulkheadPolicy
	Fallback                 resilience.FallbackPolicy
}

// explainResilience is what t gives an outbound call q; nil for an
// inbound one.
func explainResilience(t *resilience.Table, q ExplainQuery, proxy Timeouts) *ExplainResilience {
	if q.Direction != policy.Outbound {
		return nil
	}
	d := resilience.Dest{Identity: q.DestID, IP: q.DestIP, Port: q.Port}
	if q.DestHost != "" {
		d.Names = []string{q.DestHost}
	}
	dp := t.Lookup(d)
	pol := dp.Policy()
	if q.Method != "" {
		pol = dp.Route(q.Method, policy.NormalizePath(q.Path))
	}
	e := &ExplainResilience{Destination: dp.Key(), Route: pol.RouteName(), HTTP: q.Method != "",
		Timeouts: pol.Timeouts, Retry: pol.Retry, Budget: dp.Budget,
		ConnectDefault: proxy.Connect.D(), IdleDefault: proxy.Idle.D(),
		Breaker: dp.Breaker, EndpointBreaker: dp.EndpointBreaker, Bulkhead: dp.Bulkhead}
	if e.HTTP {
		e.Faults, e.Mirror, e.Fallback = pol.Faults, pol.Mirror, pol.Fallback
	} else {
		e.TCPFaults = dp.TCPFaults
	}
	return e
}

func (e *ExplainResilience) format(w io.Writer) {
	if e == nil {
		return
	}
	dest := e.Destination
	if dest == resilience.DefaultName {
		dest += " (no entry of resilience.destinations matched: the defaults)"
	}
	fmt.Fprintf(w, "resilience:\n  destination %s\n", dest)
	if e.HTTP {
		route := e.Route
		if route == "" {
			route = "none (the destination's own settings)"
		}
		fmt.Fprintf(w, "  route       %s\n", route)
	}
	to := e.Timeouts
	or := func(d, def time.Duration, name string) string {
		if d > 0 {
			return d.String()
		}
		return def.String() + " (" + name + ")"
	}
	none := func(d time.Duration) string {
		if d > 0 {
			return d.String()
		}
		return "none"
	}
	fmt.Fprintf(w, "  timeouts    connect %s, idle %s", or(to.Connect, e.ConnectDefault, "timeouts.connect"), or(to.Idle, e.IdleDefault, "timeouts.idle"))
	if e.HTTP {
		fmt.Fprintf(w, ", request %s, perTry %s, streamIdle %s", none(to.Request), none(to.PerTry), none(to.StreamIdle))
	}
	fmt.Fprintln(w)
	if !e.HTTP {
		// A connection that is not HTTP meets its destination's TCP
		// faults, then its breaker and maxConnections when dialed. (A
		// reset written with percent 0 compiles to none: not shown.)
		if f := e.TCPFaults; f.Delay > 0 || f.ResetPercent > 0 {
			fmt.Fprintf(w, "  tcpFaults   %s\n", describeTCPFaults(f))
		}
		e.formatGuard(w)
		return
	}
	r := e.Retry
	if r.Attempts == 0 {
		fmt.Fprintln(w, "  retries     none (attempts 0)")
	} else {
		fmt.Fprintf(w, "  retries     attempts %d on %s, methods %s, backoff %v to %v, maxBodyBytes %d, maxRetryAfter %v\n",
			r.Attempts, describeConditions(r.On), r.Methods, r.Backoff.Base, r.Backoff.Max, r.MaxBodyBytes, r.MaxRetryAfter)
	}
	fmt.Fprintf(w, "  budget      %v of the destination's requests + %d a second\n", e.Budget.Ratio, e.Budget.MinPerSecond)
	// The rest in the order the outbound chain meets them (stages.go):
	// fault injection, mirror, circuit breaker and bulkhead, and the
	// fallback once they refused or the tries failed. Each is shown only
	// when the config sets it, with a percent of 0 too: it says why a
	// rule written does nothing.
	if f := e.Faults; f.Delay > 0 || f.AbortStatus != 0 || f.AbortGRPC != codes.OK {
		fmt.Fprintf(w, "  faults      %s\n", describeFaults(f))
	}
	if m := e.Mirror; m != nil {
		fmt.Fprintf(w, "  mirror      to %s, percent %v, maxConcurrent %d, maxBodyBytes %d\n", m.Addr, m.Percent, m.MaxConcurrent, m.MaxBodyBytes)
	}
	e.formatGuard(w)
	if fb := e.Fallback; fb.Enabled() {
		fmt.Fprintf(w, "  fallback    %s\n", describeFallback(fb))
	}
}

// formatGuard writes the destination's circuit breakers and bulkhead,
// when it has them; for a connection that is not HTTP, only the
// bulkhead's maxConnections, the one cap it meets.
func (e *ExplainResilience) formatGuard(w io.Writer) {
	if e.Breaker.Enabled() {
		fmt.Fprintf(w, "  breaker     %s\n", describeBreaker(e.Breaker))
	}
	if e.EndpointBreaker.Enabled() {
		fmt.Fprintf(w, "  perEndpoint %s\n", describeBreaker(e.EndpointBreaker))
	}
	b := e.Bulkhead
	if !e.HTTP {
		b = resilience.BulkheadPolicy{MaxConnections: b.MaxConnections}
	}
	var caps []string
	for _, c := range []struct {
		name string
		n    int
	}{{"maxConnections", b.MaxConnections}, {"maxPending", b.MaxPending}, {"maxActive", b.MaxActive}, {"maxRetries", b.MaxRetries}} {
		if c.n > 0 {
			caps = append(caps, c.name+" "+strconv.Itoa(c.n))
		}
	}
	if len(caps) > 0 {
		fmt.Fprintf(w, "  bulkhead    %s\n", strings.Join(caps, ", "))
	}
}

// describeBreaker says what opens a circuit breaker, and for how long.
func describeBreaker(b resilience.BreakerPolicy) string {
	var on []string
	if b.ConsecutiveFailures > 0 {
		on = append(on, "consecutiveFailures "+strconv.Itoa(b.ConsecutiveFailures))
	}
	if b.FailurePercent > 0 {
		on = append(on, fmt.Sprintf("failureRate %v%% over %v (minRequests %d)", b.FailurePercent, b.FailureWindow, b.FailureMinRequests))
	}
	return fmt.Sprintf("%s, openFor %v, halfOpenRequests %d", strings.Join(on, " or "), b.OpenFor, b.HalfOpenRequests)
}

// describeFaults says which faults a request may meet, and how often.
func describeFaults(f resilience.FaultPolicy) string {
	var out []string
	if f.Delay > 0 {
		out = append(out, fmt.Sprintf("delay %v for %v%% of requests", f.Delay, f.DelayPercent))
	}
	switch grpc := resilience.CodeName(f.AbortGRPC); {
	case f.AbortStatus != 0 && f.AbortGRPC != codes.OK:
		out = append(out, fmt.Sprintf("abort %d (gRPC requests: %s) for %v%% of requests", f.AbortStatus, grpc, f.AbortPercent))
	case f.AbortStatus != 0:
		out = append(out, fmt.Sprintf("abort %d for %v%% of requests", f.AbortStatus, f.AbortPercent))
	case f.AbortGRPC != codes.OK:
		out = append(out, fmt.Sprintf("abort gRPC %s for %v%% of gRPC requests (others are not aborted: no status)", grpc, f.AbortPercent))
	}
	return strings.Join(out, ", then ")
}

// describeTCPFaults says which faults a connection may meet.
func describeTCPFaults(f resilience.TCPFaultPolicy) string {
	var out []string
	if f.Delay > 0 {
		out = append(out, fmt.Sprintf("delay %v for %v%% of connections", f.Delay, f.DelayPercent))
	}
	if f.ResetPercent > 0 {
		out = append(out, fmt.Sprintf("reset %v%% of connections", f.ResetPercent))
	}
	return strings.Join(out, ", then ")
}

// describeFallback says what answers a request refused or failed.
func describeFallback(fb resilience.FallbackPolicy) string {
	var out []string
	if s := fb.Stale; s != nil {
		out = append(out, fmt.Sprintf("stale for GET (maxAge %v, maxBytes %d)", s.MaxAge, s.MaxBytes))
	}
	if s := fb.Static; s != nil {
		out = append(out, fmt.Sprintf("static %d (%d bytes of body)", s.Status, len(s.Body)))
	}
	return strings.Join(out, ", else ")
}

// describeConditions lists retry conditions as retries.on writes them.
func describeConditions(c resilience.Conditions) string {
	var out []string
	if c.ConnectFailure {
		out = append(out, string(resilience.OnConnectFailure))
	}
	if c.Reset {
		out = append(out, string(resilience.OnReset))
	}
	for s := 100; s < 600; s++ {
		if c.Statuses.Has(s) {
			out = append(out, strconv.Itoa(s))
		}
	}
	var grpc []string
	for code := codes.Code(1); code <= codes.Unauthenticated; code++ {
		if c.GRPC.Has(code) {
			grpc = append(grpc, resilience.CodeName(code))
		}
	}
	slices.Sort(grpc)
	return "[" + strings.Join(append(out, grpc...), ", ") + "]"
}
