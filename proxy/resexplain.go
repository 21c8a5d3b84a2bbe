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
// (retry.go): its destination, its route (HTTP), the timeouts and the
// retries in effect.
type ExplainResilience struct {
	// Destination is the destination's name (resilience.DestPolicy.Key):
	// "default" when no entry of resilience.destinations matched.
	Destination string
	// Route is the route's name; "" for the destination's own settings.
	Route    string
	HTTP     bool // the call is an HTTP request: Route, Retries apply
	Timeouts resilience.TimeoutPolicy
	Retry    resilience.RetryPolicy
	Budget   resilience.BudgetPolicy
	// ConnectDefault and IdleDefault are the proxy's timeouts.connect and
	// timeouts.idle, which stand for the destination's when unset.
	ConnectDefault, IdleDefault time.Duration
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
	return &ExplainResilience{Destination: dp.Key(), Route: pol.RouteName(), HTTP: q.Method != "",
		Timeouts: pol.Timeouts, Retry: pol.Retry, Budget: dp.Budget,
		ConnectDefault: proxy.Connect.D(), IdleDefault: proxy.Idle.D()}
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
			grpc = append(grpc, strings.ReplaceAll(grpcCodeName(code), "_", "-"))
		}
	}
	slices.Sort(grpc)
	return "[" + strings.Join(append(out, grpc...), ", ") + "]"
}
