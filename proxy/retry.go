package proxy

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"meshgate/proxy/policy"
	"meshgate/proxy/resilience"
)

// Retries and timeouts of outbound HTTP requests (issue 16, items 1 and
// 2; shared/DESIGN.md §5, Resilience), driven by each request's
// resilience.Policy. In the request path they are the retry loop: after
// the stages, each try of a request is balanced (eachEndpoint), sent over
// a pooled mesh connection and bounded by the per-try timeout; a try
// that failed in a way its policy retries is tried again, after a
// backoff, on another endpoint where one is left, while the request's
// timeout lasts, its retries (retries.attempts) are not used up and the
// destination's retry budget has a token. Both HTTP paths run it: the
// HTTP/1 engine (h1Conn.exchange) and the HTTP/2 path
// (balancedTransport.RoundTrip).
//
// What counts what:
//   - loadBalancing.connectAttempts is the endpoints a request may be
//     sent to on connect (or mesh handshake) failures alone, as for any
//     connection: connectAttempts - 1 connect failures move on to
//     another endpoint at once, free, for the whole request (not per
//     try). Nothing was sent, so they take nothing from the budget and
//     are no retries.
//   - retries.attempts is the retries: a try that failed past those (a
//     connect failure when the free ones are spent, a reset before any
//     response byte, a retried status, a try cut by its per-try timeout)
//     is tried again, after a backoff, at most attempts times, each
//     taking a token of the budget.
//   - A pooled HTTP/1 connection that turns out to have been closed by
//     its peer before the request got there is replaced by a new one
//     (h1Conn.exchange, at most 3 times); the request never left, so
//     that is neither.
//
// So a request is sent to at most connectAttempts + attempts endpoints
// (plus replaced stale connections), and reaches an app at most
// 1 + attempts times.

// budgetWindow is how long a request's deposit in its destination's
// retry budget lasts (Linkerd's and Finagle's default TTL).
const budgetWindow = 10 * time.Second

// resRuntime is the metrics of retries and timeouts; the state they
// keep per destination (the retry budget) is in the per-destination
// registry (guards, guard.go).
type resRuntime struct {
	// retries counts retries by destination (resilience.DestPolicy.Key)
	// and reason; exhausted, the retries a destination's budget refused;
	// timeouts, timeouts by direction, destination and kind.
	retries   *prometheus.CounterVec
	exhausted *prometheus.CounterVec
	timeouts  *prometheus.CounterVec
}

// newResRuntime registers the retry and timeout metrics with reg.
func newResRuntime(reg prometheus.Registerer) (*resRuntime, error) {
	r := &resRuntime{
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshgate_retries_total",
			Help: "Outbound HTTP requests tried again, by destination (the resilience destination's name; \"default\" for the built-in one) " +
				"and reason: connect_failure, reset (closed before any response byte), per_try_timeout, status_NNN (a retried status, e.g. status_503), " +
				"grpc_CODE (a retried gRPC status of a trailers-only answer, e.g. grpc_unavailable).",
		}, []string{"destination", "reason"}),
		exhausted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshgate_retry_budget_exhausted_total",
			Help: "Retries not made because the destination's retry budget was empty: the failed answer went back as it was.",
		}, []string{"destination"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshgate_timeouts_total",
			Help: "Timeouts that fired, by direction, destination and kind: request (resilience timeouts.request, a gRPC request's grpc-timeout, " +
				"or inbound the deadline the client's sidecar propagated), per_try, connect, idle, stream_idle.",
		}, []string{"direction", "destination", "kind"}),
	}
	for _, c := range []prometheus.Collector{r.retries, r.exhausted, r.timeouts} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// resConn is a connection's view of the resilience section: the state
// set it was resolved against, its destination's policy and state.
type resConn struct {
	s  *guardSet
	dp *resilience.DestPolicy
	g  *destGuard
}

// resolveRes resolves rc for an outbound connection to dst against the
// state set in effect, unless it already is: once per connection, and
// again after a reload.
func (p *Proxy) resolveRes(rc *resConn, dst netip.AddrPort) {
	s := p.guards.curSet()
	if rc.g != nil && rc.s == s {
		return
	}
	rc.s, rc.dp = s, p.lookupRes(s.tbl, dst)
	rc.g = s.get(p, rc.dp, dst)
}

// lookupRes is the policy of dst in t: by what the proxy knows of the
// destination, the name the app resolved its address by (discovery's
// DNS proxy), the identity its sidecar must present, and its address.
func (p *Proxy) lookupRes(t *resilience.Table, dst netip.AddrPort) *resilience.DestPolicy {
	c := p.outboundConn(dst)
	var names [1]string
	d := resilience.Dest{Identity: c.DestID, IP: c.DestIP, Port: dst.Port()}
	if c.DestHost != "" {
		names[0] = c.DestHost
		d.Names = names[:]
	}
	return t.Lookup(d)
}

// routePolicy is the policy of a request with method and target to rc's
// destination; the target is normalised only when the destination has
// routes to match it against.
func routePolicy[T string | []byte](dp *resilience.DestPolicy, method string, target T) *resilience.Policy {
	if !dp.HasRoutes() {
		return dp.Policy()
	}
	return dp.Route(method, policy.NormalizePath(string(target)))
}

// reqRes is one outbound request's retries and timeouts: its policy, its
// deadlines, and what its tries did. The HTTP/1 engine keeps one in each
// client connection, the HTTP/2 path one in each request's state; none is
// allocated per request.
type reqRes struct {
	p     *Proxy
	pol   *resilience.Policy // nil: the request has none (not begun)
	g     *destGuard         // its destination's state: the retry budget
	start time.Time
	// methodOK: the method is among those retried.
	methodOK bool
	// deadline bounds the request until its response's headers (zero:
	// none): timeouts.request, or a gRPC request's grpc-timeout when
	// sooner; dl says which, for the answer.
	deadline time.Time
	dl       timeoutError
	// tryDeadline bounds the try under way: the deadline, or its per-try
	// timeout when sooner (perTry).
	tryDeadline time.Time
	perTry      bool
	// attempts is the endpoints tried; retries, the retries made.
	attempts, retries int
	// freeConnects is what is left of the connect failures that move on
	// to another endpoint without a retry (loadBalancing.connectAttempts
	// - 1).
	freeConnects int
	// tried is every endpoint tried, in order; endpoint, the last.
	tried    []netip.AddrPort
	triedArr [3]netip.AddrPort
	endpoint netip.AddrPort
	// budgetOut: a retry was refused by the budget. timeout is the
	// timeout that ended the request, if one did (tkNone).
	budgetOut bool
	timeout   timeoutKind
	// tw watches the last try (HTTP/2), whose stream-idle timeout may end
	// the request as its answer streams.
	tw *tryWatch
	// grpcTimeout: the request came with a grpc-timeout, which each try
	// passes on reduced to what it has left.
	grpcTimeout bool
	// gate is the request's passage through its destination's guard,
	// whose bulkhead.maxRetries a retry must fit under (guard.go); nil:
	// none.
	gate *guardCall
}

// begin readies rr for an outbound request with method under pol to the
// destination of g, had at start: the request deposits in the retry
// budget, and its timeout starts.
func (rr *reqRes) begin(p *Proxy, pol *resilience.Policy, g *destGuard, method string, start time.Time) {
	*rr = reqRes{p: p, pol: pol, g: g, start: start, freeConnects: p.cfg.LoadBalancing.ConnectAttempts - 1,
		methodOK: pol.Retry.Methods.Has(method)}
	rr.tried = rr.triedArr[:0]
	if d := pol.Timeouts.Request; d > 0 {
		rr.deadline, rr.dl = start.Add(d), timeoutError{kind: tkRequest, d: d}
	}
	g.budget.Request(start)
}

// limit bounds rr's request by d from its start too, as kind, when that
// is sooner than its deadline: a gRPC request's grpc-timeout.
func (rr *reqRes) limit(d time.Duration, kind timeoutKind) {
	if at := rr.start.Add(d); rr.deadline.IsZero() || at.Before(rr.deadline) {
		rr.deadline, rr.dl = at, timeoutError{kind: kind, d: d}
	}
}

// beginTry starts a try at now: its deadline is the request's, or the
// per-try timeout when sooner.
func (rr *reqRes) beginTry(now time.Time) {
	rr.tryDeadline, rr.perTry = rr.deadline, false
	if d := rr.pol.Timeouts.PerTry; d > 0 {
		if at := now.Add(d); rr.tryDeadline.IsZero() || at.Before(rr.tryDeadline) {
			rr.tryDeadline, rr.perTry = at, true
		}
	}
}

// tryTimeout is the timeout that ended a try cut at its deadline, counted.
func (rr *reqRes) tryTimeout() *timeoutError {
	if rr.perTry {
		rr.p.res.countTimeout(Outbound, rr.g.pol.Key(), tkPerTry)
		return &timeoutError{kind: tkPerTry, d: rr.pol.Timeouts.PerTry}
	}
	rr.p.res.countTimeout(Outbound, rr.g.pol.Key(), rr.dl.kind)
	e := rr.dl
	return &e
}

// connectTimeout is the connect timeout of rr's destination: its
// policy's, else the proxy's timeouts.connect.
func (rr *reqRes) connectTimeout() time.Duration {
	if d := rr.pol.Timeouts.Connect; d > 0 {
		return d
	}
	return rr.p.cfg.Timeouts.Connect.D()
}

// failed notes the timeout that ends the request, if err is one, for the
// access log.
func (rr *reqRes) failed(err error) {
	if te, ok := errors.AsType[*timeoutError](err); ok {
		rr.timeout = te.kind
	}
}

// connectErr says which timeout a connect failure of one of rr's tries
// was, when it timed out: the try's deadline, when it had passed (the
// dial was cut by it), else the connect timeout (counted); other errors
// are returned as they are. The result is still a connect failure
// (retriable).
func (rr *reqRes) connectErr(err error, now time.Time) error {
	if !retriable(err) || !isDeadline(err) {
		return err
	}
	if !rr.tryDeadline.IsZero() && !now.Before(rr.tryDeadline) {
		return &dialError{rr.tryTimeout()}
	}
	if te, ok := errors.AsType[*timeoutError](err); ok {
		// The connect timeout of the destination's policy (dialEndpoint).
		rr.p.res.countTimeout(Outbound, rr.g.pol.Key(), te.kind)
		return err
	}
	if _, ok := errors.AsType[*dialError](err); !ok {
		return err // the mesh handshake's own timeout (timeouts.handshake)
	}
	rr.p.res.countTimeout(Outbound, rr.g.pol.Key(), tkConnect)
	return &dialError{&timeoutError{kind: tkConnect, d: rr.connectTimeout()}}
}

// tryOver reports whether the try's deadline has passed.
func (rr *reqRes) tryOver(now time.Time) bool {
	return !rr.tryDeadline.IsZero() && !now.Before(rr.tryDeadline)
}

// isDeadline reports whether err is a deadline that passed.
func isDeadline(err error) bool {
	var te interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &te) && te.Timeout()
}

// retryWhy is why a try failed, as far as retries go.
type retryWhy struct {
	kind   retryKind
	status int        // retryStatus: the HTTP status
	code   codes.Code // retryGRPC: the gRPC status
}

type retryKind uint8

const (
	retryConnect retryKind = iota + 1 // connect or mesh handshake failure: nothing was sent
	retryReset                        // closed or reset before any response byte
	retryPerTry                       // cut by the per-try timeout
	retryStatus                       // a status among retries.on
	retryGRPC                         // a gRPC status among retries.on
)

// reason is the why's label in meshgate_retries_total.
func (w retryWhy) reason() string {
	switch w.kind {
	case retryConnect:
		return "connect_failure"
	case retryReset:
		return "reset"
	case retryPerTry:
		return "per_try_timeout"
	case retryStatus:
		return "status_" + strconv.Itoa(w.status)
	case retryGRPC:
		return "grpc_" + grpcCodeName(w.code)
	}
	return "other"
}

// grpcCodeName is a gRPC code's name in lower case with '_', e.g.
// unavailable, resource_exhausted.
func grpcCodeName(c codes.Code) string {
	if c > codes.Unauthenticated {
		return strconv.Itoa(int(c))
	}
	s := []byte(c.String()) // its Go name, e.g. ResourceExhausted
	out := make([]byte, 0, len(s)+4)
	for i, b := range s {
		if 'A' <= b && b <= 'Z' {
			if i > 0 {
				out = append(out, '_')
			}
			b += 'a' - 'A'
		}
		out = append(out, b)
	}
	return string(out)
}

// retriesStatus reports whether a response's status (or, for a gRPC
// answer that is trailers-only, its grpc-status) is one rr's policy
// retries, and which.
func (rr *reqRes) retriesStatus(status int, grpcStatus string) (retryWhy, bool) {
	on := &rr.pol.Retry.On
	if on.Statuses.Has(status) {
		return retryWhy{kind: retryStatus, status: status}, true
	}
	if grpcStatus != "" && on.GRPC != 0 {
		if n, err := strconv.Atoi(grpcStatus); err == nil && n > 0 && on.GRPC.Has(codes.Code(n)) {
			return retryWhy{kind: retryGRPC, code: codes.Code(n)}, true
		}
	}
	return retryWhy{}, false
}

// again decides whether rr's request is tried again after a try that
// failed for why, whose answer (a retried status) carried retryAfter
// (""); replayable says the request can be sent again whole (its body,
// if any, was kept). It returns how long to wait first (sleep): the
// backoff, or the answer's Retry-After when longer. It returns false,
// and the try's outcome is the app's, when the retries are used up, why
// is not retried for the request's method, the wait would not end before
// the request's deadline (or Retry-After asks more than
// retries.maxRetryAfter), or the destination's budget is empty (counted,
// and noted for the log). A retry granted is counted.
func (rr *reqRes) again(why retryWhy, replayable bool, retryAfter string) (time.Duration, bool) {
	pol := &rr.pol.Retry
	if rr.retries >= pol.Attempts {
		return 0, false
	}
	switch why.kind {
	case retryConnect:
		// Nothing was sent: any method, whatever its body.
		if !pol.On.ConnectFailure {
			return 0, false
		}
	case retryReset:
		if !pol.On.Reset || !rr.methodOK || !replayable {
			return 0, false
		}
	case retryPerTry, retryStatus, retryGRPC:
		// A try cut by perTry is tried again whenever the retries allow
		// (resilience.Timeouts.PerTry); the statuses are on's.
		if !rr.methodOK || !replayable {
			return 0, false
		}
	default:
		return 0, false
	}
	now := time.Now()
	wait := resilience.BackoffDelay(pol.Backoff.Base, pol.Backoff.Max, rr.retries, nil)
	if retryAfter != "" {
		if d, ok := resilience.RetryAfter(retryAfter, now); ok && d > 0 {
			if d > pol.MaxRetryAfter {
				return 0, false
			}
			wait = max(wait, d)
		}
	}
	if !rr.deadline.IsZero() && !now.Add(wait).Before(rr.deadline) {
		return 0, false
	}
	if rr.gate != nil && !rr.gate.tryRetry() {
		return 0, false // bulkhead.maxRetries: counted as an overflow
	}
	if !rr.g.budget.TryRetry(now) {
		rr.gate.doneRetry()
		rr.budgetOut = true
		rr.p.res.exhausted.WithLabelValues(rr.g.pol.Key()).Inc()
		return 0, false
	}
	rr.retries++
	rr.p.res.retries.WithLabelValues(rr.g.pol.Key(), why.reason()).Inc()
	return wait, true
}

// sleep waits d before a retry; false if ctx ended first.
func (rr *reqRes) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// pickRetry is pick for the first endpoint of a try of rr: one no earlier
// try of the request went to where one is left, else one other than the
// last try's, else any.
func (p *Proxy) pickRetry(dst netip.AddrPort, tried []netip.AddrPort, rr *reqRes) (try, bool) {
	t, ok := p.pick(dst, tried, rr)
	if !ok && len(tried) > 0 {
		if t, ok = p.pick(dst, tried[len(tried)-1:], rr); !ok {
			t, ok = p.pick(dst, nil, rr)
		}
	}
	return t, ok
}

// logFields adds rr's fields to a request's access log line: attempts
// (the endpoints tried) and endpoint (the last, the one that answered
// when one did), and when set timeout (the kind that ended the request)
// and retry_budget_exhausted.
func (rr *reqRes) logFields(fields []zap.Field) []zap.Field {
	if rr.attempts > 0 {
		fields = append(fields, zap.Int("attempts", rr.attempts), zap.Stringer("endpoint", rr.endpoint))
	}
	if rr.timeout != tkNone {
		fields = append(fields, zap.String("timeout", rr.timeout.label()))
	} else if rr.tw != nil && rr.tw.idled.Load() {
		fields = append(fields, zap.String("timeout", tkStreamIdle.label()))
	}
	if rr.budgetOut {
		fields = append(fields, zap.Bool("retry_budget_exhausted", true))
	}
	return fields
}

// countTimeout counts a timeout that fired.
func (r *resRuntime) countTimeout(dir Direction, dest string, kind timeoutKind) {
	r.timeouts.WithLabelValues(dir.String(), dest, kind.label()).Inc()
}
