package proxy

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"meshgate/proxy/resilience"
)

// Circuit breaking, bulkheads and fallbacks (issue 16; shared/DESIGN.md
// §5, Resilience): what keeps one failing or slow destination from
// taking the app's outbound calls down with it. In the outbound request
// path they sit after the request stages (fault injection and mirror
// last) and around the retry loop:
//
//	admit     the destination's bulkhead (maxActive, maxPending) and
//	          circuit breaker: refused → the route's fallback, or 503
//	          "overflow" / "circuit open" (gRPC: UNAVAILABLE), at once,
//	          nothing sent
//	  retry loop (balance → pooled mesh connection → per-try timeout)
//	    pick     endpoints whose own circuit is open are left out
//	    dial     connections beyond maxConnections are refused (overflow)
//	    retry    a retry beyond maxRetries is not made (tryRetry)
//	outcome   the breaker told how the request ended; the bulkhead's
//	          places given back; a good answer to a cacheable GET kept for
//	          the route's stale fallback; a failure (after the retries)
//	          answered with the fallback when the route has one
//
// The HTTP/1 engine calls them from h1serve.go (guard_h1.go), the
// HTTP/2 path wraps its transport (guardTransport, fallback.go), and
// opaque TCP connections go through the breaker when dialed
// (dialService): an open circuit refuses them, and a connection that
// fails before the destination sent a byte is a failure.
//
// The state lives per destination (a DestPolicy's Key; for the default
// policy, per destination address, at most defaultGuards of them, least
// recently used first out), in one registry with the retries' budget
// (retry.go): a destGuard is found once per outbound connection
// (resolveRes) and holds the destination's retry budget, breakers,
// bulkhead and stale caches. It follows config reloads: a destination
// whose name and settings are unchanged keeps its breakers, counts and
// cached responses, and its budget while its budget is unchanged; one
// whose settings changed starts afresh. A destination with no breaker,
// no bulkhead and no fallback is not guarded: its requests pay a field
// load for the guard, and the callers that know only an address
// (forDst) two atomic loads while no destination is guarded.

// defaultGuards bounds the destinations of the default policy that keep
// state (a retry budget, and a guard when defaults set one), least
// recently used first out; endpointBreakersMax bounds the endpoints per
// destination with a breaker of their own.
const (
	defaultGuards       = 4096
	endpointBreakersMax = 256
)

// resolveFor is how long a destination address's guard is remembered
// before it is looked up again (the names an address is known by may
// change); resolvedMax bounds the addresses remembered.
const (
	resolveFor  = 5 * time.Second
	resolvedMax = 4096
)

// guards is the proxy's per-destination state: retry budgets, circuit
// breakers, bulkheads and stale caches.
type guards struct {
	p   *Proxy
	m   *guardMetrics
	log *zap.Logger

	mu  sync.Mutex // serialises retable
	cur atomic.Pointer[guardSet]

	// slots maps each upstream connection that holds a place under a
	// destination's maxConnections to that limiter, given back when
	// closeUpstream closes it; held counts them, so that closeUpstream
	// looks only when some are.
	slots sync.Map // *net.TCPConn → *resilience.Limiter
	held  atomic.Int64
}

// guardSet is the per-destination state of one resilience table.
type guardSet struct {
	tbl *resilience.Table
	// any: some destination is guarded; without, forDst answers nil at
	// once.
	any   bool
	named map[*resilience.DestPolicy]*destGuard
	// def is the default policy, whose state is kept per address in defs.
	def   *resilience.DestPolicy
	defMu sync.Mutex
	defs  *simplelru.LRU[netip.AddrPort, *destGuard] // guarded by defMu

	// resolved remembers each destination address's guard (nil: none)
	// for resolveFor; n counts the entries.
	resolved sync.Map // netip.AddrPort → *resolvedGuard
	n        atomic.Int64
}

type resolvedGuard struct {
	g  *destGuard
	at time.Time
}

// destGuard is one destination's state: its policy in the table in
// effect, its retry budget, and its guard, which a reload that keeps the
// destination carries over to the new table's policy (the budget too,
// while its budget policy is unchanged).
type destGuard struct {
	pol    *resilience.DestPolicy
	budget *resilience.RetryBudget
	*guardState
}

// guardState is the guard kept per destination: nothing but its key and
// settings when it is not guarded.
type guardState struct {
	gs  *guards
	key string // the destination label of metrics and logs
	set guardSettings

	// breaker is the destination's circuit breaker (nil: none), state
	// its state as last changed (for logs and notes).
	breaker *resilience.Breaker
	state   atomic.Uint32
	// eps are the endpoints' breakers (nil: none).
	eps *endpointBreakers
	// The bulkhead: each nil when the destination has no bulkhead; one
	// with max 0 counts without a limit. conns is nil unless it has a
	// limit (a connection holding a place costs a map entry).
	conns, pending, active, retries *resilience.Limiter
	overflows                       [numCaps]prometheus.Counter

	staleMu sync.Mutex
	stale   map[staleKey]*resilience.StaleCache // guarded by staleMu; made when first used

	// retired: replaced by a reload or dropped; its metrics are gone,
	// and a late change of its breakers must not bring them back.
	retired atomic.Bool
}

// guardSettings are what a reload compares to keep a destination's
// state: the same, and the state goes on under the new table.
type guardSettings struct {
	breaker, endpoint resilience.BreakerPolicy
	bulkhead          resilience.BulkheadPolicy
	// fallbacks fingerprints the destination's fallbacks and its
	// routes' (their names and matches too): the stale caches are kept
	// by route name.
	fallbacks string
}

// staleKey names a stale cache of a destination: the level its
// StalePolicy is written at ("" for the destination's own, shared by
// the routes that set no fallback; else the route's name) and the
// policy.
type staleKey struct {
	level string
	pol   resilience.StalePolicy
}

// The bulkhead's caps, as the limit label of meshgate_overflows_total
// and guardNote.overflow say them.
const (
	capConnections = iota
	capPending
	capActive
	capRetries
	numCaps
)

var capNames = [numCaps]string{"connections", "pending", "active", "retries"}

// capFields are the config fields of the caps, for reasons.
var capFields = [numCaps]string{"maxConnections", "maxPending", "maxActive", "maxRetries"}

// newGuards registers the guards' metrics with reg.
func newGuards(p *Proxy, reg prometheus.Registerer) (*guards, error) {
	m, err := newGuardMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &guards{p: p, m: m, log: p.log.Named("resilience")}, nil
}

// retable puts the state of tbl, compiled from rc, in effect: a
// destination whose key and guard settings are unchanged keeps its
// guard, and its budget when its budget policy is unchanged; the others
// start afresh, and the state of those gone is dropped (its metrics
// too). Called at New and by each reload, under cfgMu.
func (gs *guards) retable(tbl *resilience.Table, rc resilience.Config) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	old := gs.cur.Load()
	ns := &guardSet{tbl: tbl, named: map[*resilience.DestPolicy]*destGuard{}}
	oldByKey := map[string]*destGuard{}
	if old != nil {
		for _, g := range old.named {
			oldByKey[g.key] = g
		}
	}
	// Which states go on: decided first, and those that do not retired
	// (their series deleted) before any new state makes its own, which
	// may have the same labels.
	type plan struct {
		dp     *resilience.DestPolicy
		set    guardSettings
		st     *guardState             // kept; nil: a new one
		budget *resilience.RetryBudget // kept; nil: a new one
	}
	var plans []plan
	kept := map[*guardState]bool{}
	for i, dp := range tbl.Destinations() {
		if dp.IsDefault() {
			continue
		}
		fp := ""
		if i < len(rc.Destinations) {
			fp = fallbackFingerprint(rc.Destinations[i])
		}
		pl := plan{dp: dp, set: settingsOf(dp, fp)}
		if og := oldByKey[dp.Key()]; og != nil {
			if og.set == pl.set {
				pl.st = og.guardState
				kept[og.guardState] = true
			}
			if og.pol.Budget == dp.Budget {
				pl.budget = og.budget
			}
		}
		plans = append(plans, pl)
	}
	def := tbl.Default()
	// The default policy's states go on when its guard settings are
	// unchanged; a changed budget policy gives each a new budget.
	keepDefs := old != nil && settingsOf(old.def, "") == settingsOf(def, "")
	if old != nil {
		for _, g := range oldByKey {
			if !kept[g.guardState] {
				g.retire()
			}
		}
		if !keepDefs {
			old.defMu.Lock()
			for _, a := range old.defs.Keys() {
				g, _ := old.defs.Peek(a)
				g.retire()
			}
			old.defMu.Unlock()
		}
	}
	for _, pl := range plans {
		if pl.st == nil {
			pl.st = gs.newState(pl.dp.Key(), pl.set)
		}
		if pl.budget == nil {
			pl.budget = newBudget(pl.dp)
		}
		ns.named[pl.dp] = &destGuard{pol: pl.dp, budget: pl.budget, guardState: pl.st}
		ns.any = ns.any || pl.set.guarded()
	}
	ns.def = def
	ns.defs, _ = simplelru.NewLRU[netip.AddrPort, *destGuard](defaultGuards, func(_ netip.AddrPort, g *destGuard) {
		g.retire()
	})
	if keepDefs {
		sameBudget := old.def.Budget == def.Budget
		old.defMu.Lock()
		for _, a := range old.defs.Keys() { // oldest first
			g, _ := old.defs.Peek(a)
			b := g.budget
			if !sameBudget {
				b = newBudget(def)
			}
			ns.defs.Add(a, &destGuard{pol: def, budget: b, guardState: g.guardState})
		}
		old.defMu.Unlock()
	}
	ns.any = ns.any || settingsOf(def, "").guarded()
	gs.cur.Store(ns)
}

// newBudget is a new retry budget of dp's budget policy.
func newBudget(dp *resilience.DestPolicy) *resilience.RetryBudget {
	return resilience.NewRetryBudget(dp.Budget.Ratio, float64(dp.Budget.MinPerSecond), budgetWindow)
}

// settingsOf is what of dp's policy the guard keeps state for; fp is
// its fallbacks' fingerprint ("" for none).
func settingsOf(dp *resilience.DestPolicy, fp string) guardSettings {
	return guardSettings{breaker: dp.Breaker, endpoint: dp.EndpointBreaker, bulkhead: dp.Bulkhead, fallbacks: fp}
}

// guarded reports whether a destination with these settings needs
// state: a breaker, a bulkhead or a fallback.
func (s guardSettings) guarded() bool {
	return s.breaker.Enabled() || s.endpoint.Enabled() || s.bulkhead.Enabled() || s.fallbacks != ""
}

// fallbackFingerprint is "" when d and its routes have no fallback, and
// otherwise a string that changes with any of their fallbacks, or the
// names or matches of its routes.
func fallbackFingerprint(d resilience.Destination) string {
	type route struct {
		Name     string
		Match    *resilience.RouteMatch
		Fallback *resilience.Fallback
	}
	has := func(f *resilience.Fallback) bool { return f != nil && (f.Stale != nil || f.Static != nil) }
	any := has(d.Fallback)
	rs := make([]route, len(d.Routes))
	for i, r := range d.Routes {
		rs[i] = route{r.Name, r.Match, r.Fallback}
		any = any || has(r.Fallback)
	}
	if !any {
		return ""
	}
	b, _ := json.Marshal(struct {
		F *resilience.Fallback
		R []route
	}{d.Fallback, rs})
	return string(b)
}

// newState makes a destination's guard: its breakers (closed), its
// bulkhead (empty) and its metrics' children.
func (gs *guards) newState(key string, set guardSettings) *guardState {
	st := &guardState{gs: gs, key: key, set: set}
	if set.breaker.Enabled() {
		st.breaker = resilience.NewBreaker(breakerOptions(set.breaker, func(from, to resilience.State) {
			st.state.Store(uint32(to))
			st.changed("", from, to, set.breaker.OpenFor)
		}))
		gs.m.state.WithLabelValues(key, "").Set(0)
	}
	if set.endpoint.Enabled() {
		st.eps = &endpointBreakers{st: st, pol: set.endpoint, m: map[netip.AddrPort]*endpointBreaker{}}
	}
	if b := set.bulkhead; b.Enabled() {
		if b.MaxConnections > 0 {
			st.conns = resilience.NewLimiter(int64(b.MaxConnections))
		}
		st.pending = resilience.NewLimiter(int64(b.MaxPending))
		st.active = resilience.NewLimiter(int64(b.MaxActive))
		st.retries = resilience.NewLimiter(int64(b.MaxRetries))
		for i := range numCaps {
			st.overflows[i] = gs.m.overflows.WithLabelValues(key, capNames[i])
		}
	}
	return st
}

// breakerOptions are a breaker's options from its policy (percent to a
// fraction).
func breakerOptions(b resilience.BreakerPolicy, onChange func(from, to resilience.State)) resilience.BreakerOptions {
	return resilience.BreakerOptions{
		ConsecutiveFailures: b.ConsecutiveFailures,
		FailureRate:         b.FailurePercent / 100,
		Window:              b.FailureWindow,
		MinRequests:         b.FailureMinRequests,
		OpenFor:             b.OpenFor,
		HalfOpenRequests:    b.HalfOpenRequests,
		OnChange:            onChange,
	}
}

// changed records a breaker's change of state: the gauge, the counter
// and a log line (warn when it opens). endpoint is "" for the
// destination's own breaker. It runs under the breaker's lock.
func (st *guardState) changed(endpoint string, from, to resilience.State, openFor time.Duration) {
	if st.retired.Load() {
		return
	}
	m := st.gs.m
	m.state.WithLabelValues(st.key, endpoint).Set(float64(to))
	m.transitions.WithLabelValues(st.key, endpoint, to.String()).Inc()
	fields := []zap.Field{zap.String("destination", st.key), zap.String("from", from.String()), zap.String("to", to.String())}
	if endpoint != "" {
		fields = append(fields, zap.String("endpoint", endpoint))
	}
	switch to {
	case resilience.Open:
		st.gs.log.Warn("circuit opened: requests fail fast", append(fields, zap.Duration("open_for", openFor))...)
	case resilience.HalfOpen:
		st.gs.log.Info("circuit half-open: trial requests let through", fields...)
	default:
		st.gs.log.Info("circuit closed", fields...)
	}
}

// retire drops the state's metrics; its breakers may still be used by
// requests in flight, but their changes are no longer shown.
func (st *guardState) retire() {
	if !st.set.guarded() || st.retired.Swap(true) {
		return // an unguarded state has no series
	}
	for _, v := range []*prometheus.GaugeVec{st.gs.m.state} {
		v.DeletePartialMatch(prometheus.Labels{"destination": st.key})
	}
	for _, v := range []*prometheus.CounterVec{st.gs.m.transitions, st.gs.m.overflows, st.gs.m.fallbacks} {
		v.DeletePartialMatch(prometheus.Labels{"destination": st.key})
	}
}

// curSet returns the guards in effect; nil when none (a nil guards).
func (gs *guards) curSet() *guardSet {
	if gs == nil {
		return nil
	}
	return gs.cur.Load()
}

// guarded reports whether the destination has a breaker, a bulkhead
// or a fallback.
func (st *guardState) guarded() bool { return st.set.guarded() }

// forDst returns the guard of the destination at dst, nil when it is not
// guarded, for the callers that know only the address (a connection's
// requests have theirs from resolveRes): the cost of the guard to them
// when no destination is guarded is this call's two atomic loads. now is
// the request's start.
func (gs *guards) forDst(dst netip.AddrPort, now time.Time) *destGuard {
	s := gs.curSet()
	if s == nil || !s.any {
		return nil
	}
	if v, ok := s.resolved.Load(dst); ok {
		if r := v.(*resolvedGuard); now.Sub(r.at) < resolveFor {
			return r.g
		}
	}
	g := s.get(gs.p, gs.p.lookupRes(s.tbl, dst), dst)
	if g != nil && !g.guarded() {
		g = nil
	}
	if s.n.Add(1) > resolvedMax {
		s.resolved.Clear()
		s.n.Store(1)
	}
	s.resolved.Store(dst, &resolvedGuard{g: g, at: now})
	return g
}

// get returns the state of the destination at dst whose policy in s's
// table is dp: a named destination's, or the default policy's for dst,
// made when there is none.
func (s *guardSet) get(p *Proxy, dp *resilience.DestPolicy, dst netip.AddrPort) *destGuard {
	if !dp.IsDefault() {
		return s.named[dp]
	}
	s.defMu.Lock()
	defer s.defMu.Unlock()
	if g, ok := s.defs.Get(dst); ok {
		return g
	}
	g := &destGuard{pol: dp, budget: newBudget(dp), guardState: p.guards.newState(dp.Key()+"/"+dst.String(), settingsOf(dp, ""))}
	s.defs.Add(dst, g)
	return g
}

// staleCache returns the cache of pol's stale fallback (which must be
// set), made when first asked for.
func (g *destGuard) staleCache(pol *resilience.Policy) *resilience.StaleCache {
	sp := pol.Fallback.Stale
	k := staleKey{pol: *sp}
	if sp != g.pol.Policy().Fallback.Stale {
		k.level = pol.RouteName()
	}
	g.staleMu.Lock()
	defer g.staleMu.Unlock()
	if g.stale == nil {
		g.stale = map[staleKey]*resilience.StaleCache{}
	}
	c := g.stale[k]
	if c == nil {
		c = resilience.NewStaleCache(sp.MaxBytes, sp.MaxBytes, sp.MaxAge)
		g.stale[k] = c
	}
	return c
}

// overflow counts a refusal at a cap.
func (st *guardState) overflow(limit int) {
	if c := st.overflows[limit]; c != nil {
		c.Inc()
	}
}

// tryRetry takes a place under the destination's bulkhead.maxRetries for
// a retry about to be made (waiting out its backoff or sent), reporting
// false, counted as an overflow, when there is none: the retry is not
// made, and the try's failure is the request's. A retry taken must be
// given back with doneRetry once it is over. A nil guard allows every
// retry. (The retry loop calls these through guardCall, which notes the
// overflow in the request's access log line.)
func (g *destGuard) tryRetry() bool {
	if g == nil || g.retries == nil {
		return true
	}
	if !g.retries.TryAcquire() {
		g.overflow(capRetries)
		return false
	}
	return true
}

// doneRetry gives back the place tryRetry took.
func (g *destGuard) doneRetry() {
	if g != nil && g.retries != nil {
		g.retries.Release()
	}
}

// guardError is a request or connection the guard refused: its
// destination's circuit is open, every endpoint's circuit is, or a
// bulkhead cap is reached.
type guardError struct {
	kind  guardRefusal
	limit int   // overflow: capConnections, ...
	max   int64 // overflow: the cap
	dest  string
}

type guardRefusal uint8

const (
	refusedCircuit guardRefusal = iota + 1
	refusedEndpoints
	refusedOverflow
)

// stage names the part of the request path that refused.
func (e *guardError) stage() string {
	if e.kind == refusedOverflow {
		return "bulkhead"
	}
	return "circuit-breaker"
}

// reason is why, for X-Meshgate-Error and the log.
func (e *guardError) reason() string {
	switch e.kind {
	case refusedCircuit:
		return "circuit open (destination " + e.dest + ")"
	case refusedEndpoints:
		return "circuit open (every endpoint of " + e.dest + ")"
	}
	return "overflow (" + capFields[e.limit] + " " + strconv.FormatInt(e.max, 10) + ", destination " + e.dest + ")"
}

func (e *guardError) Error() string { return e.stage() + ": " + e.reason() }

// asGuardError returns err's guardError, if it is one.
func asGuardError(err error) (*guardError, bool) {
	var ge *guardError
	return ge, errors.As(err, &ge)
}

// guardCall is one request's passage through its destination's guard:
// what it holds and owes, from admit to end. The zero guardCall (a
// destination without a guard) does nothing.
//
// The retry loop (the HTTP/1 engine's c.gc, the HTTP/2 path's
// outboundRequest.guard) calls tryRetry before each retry: false means
// no retry (bulkhead.maxRetries is reached; the try's failure is the
// request's); each retry tryRetry allowed is ended with doneRetry once
// its try is over. The guard judges the request once, by its final
// outcome: the HTTP/1 engine's done and fail, and guardTransport, tell
// it after the last try, never per try (each try's endpoint is told by
// its try's report, see pickGuarded).
type guardCall struct {
	g   *destGuard
	pol *resilience.Policy // the request's route
	// ticket is the breaker's, owed a Done while owed.
	ticket resilience.Ticket
	owed   bool
	// active and pending: the request holds a place under maxActive, and
	// under maxPending until it has a connection; retry, a place under
	// maxRetries for its retry under way (tryRetry).
	active, pending, retry bool
	note                   guardNote
}

// guardNote is what the request's access log line says of the guard,
// when it played a part.
type guardNote struct {
	dest     string // the destination label; set with any other field
	circuit  string // "open": refused; "half-open": a trial; "endpoints-open": every endpoint's is open
	overflow string // the cap that refused it: connections, pending, active or retries
	fallback string // the fallback it was answered with: stale or static
}

// admit lets the request through the destination's bulkhead (maxActive,
// maxPending) and circuit breaker, at now. Refused, it returns why; the
// request then holds nothing and owes nothing.
func (gc *guardCall) admit(g *destGuard, pol *resilience.Policy, now time.Time) *guardError {
	gc.g, gc.pol = g, pol
	if l := g.active; l != nil {
		if !l.TryAcquire() {
			return gc.refuse(&guardError{kind: refusedOverflow, limit: capActive, max: l.Max(), dest: g.key})
		}
		gc.active = true
	}
	if l := g.pending; l != nil {
		if !l.TryAcquire() {
			gc.release()
			return gc.refuse(&guardError{kind: refusedOverflow, limit: capPending, max: l.Max(), dest: g.key})
		}
		gc.pending = true
	}
	if b := g.breaker; b != nil {
		t, ok := b.Allow(now)
		if !ok {
			gc.release()
			return gc.refuse(&guardError{kind: refusedCircuit, dest: g.key})
		}
		gc.ticket, gc.owed = t, true
		if resilience.State(g.state.Load()) == resilience.HalfOpen {
			gc.note.dest, gc.note.circuit = g.key, "half-open"
		}
	}
	return nil
}

// refuse notes and counts a refusal.
func (gc *guardCall) refuse(e *guardError) *guardError {
	gc.noteRefusal(e)
	if e.kind == refusedOverflow {
		gc.g.overflow(e.limit)
	}
	return e
}

// noteRefusal notes e in the access log line.
func (gc *guardCall) noteRefusal(e *guardError) {
	gc.note.dest = e.dest
	switch e.kind {
	case refusedCircuit:
		gc.note.circuit = "open"
	case refusedEndpoints:
		gc.note.circuit = "endpoints-open"
	case refusedOverflow:
		gc.note.overflow = capNames[e.limit]
	}
}

// connected gives back the request's place under maxPending: it has its
// connection (or will have none).
func (gc *guardCall) connected() {
	if gc.pending {
		gc.pending = false
		gc.g.pending.Release()
	}
}

// release gives back every place the request holds.
func (gc *guardCall) release() {
	gc.connected()
	gc.doneRetry()
	if gc.active {
		gc.active = false
		gc.g.active.Release()
	}
}

// outcome tells the breaker how the request ended, once: success, or a
// failure (a connect failure, a reset or a timeout before a response, a
// 502, 503 or 504; see failedStatus).
func (gc *guardCall) outcome(success bool, now time.Time) {
	if gc.owed {
		gc.owed = false
		gc.g.breaker.Done(gc.ticket, success, now)
	}
}

// finish is outcome for a request whose answer has all but left (the
// HTTP/1 engine's, whose last bytes leave after its accounting): its
// places are given back too, before the client has its answer and can
// send the next request.
func (gc *guardCall) finish(success bool, now time.Time) {
	gc.outcome(success, now)
	gc.release()
}

// outcomeErr tells the breaker of a request that ended with err before
// a response: a failure, unless the guard itself refused it (a
// connection over maxConnections, every endpoint's circuit open), which
// says nothing of the destination (the ticket is given back unjudged).
func (gc *guardCall) outcomeErr(err error, now time.Time) {
	if e, ok := asGuardError(err); ok {
		if gc.owed {
			gc.owed = false
			gc.g.breaker.Cancel(gc.ticket, now)
		}
		gc.noteRefusal(e)
		return
	}
	gc.outcome(false, now)
}

// end gives back what the request still holds: its places, and (as
// neither success nor failure) a ticket no outcome was told of, as when
// the client went away, so that a half-open circuit's trial place is
// free again at once. Safe to call more than once.
func (gc *guardCall) end() {
	gc.release()
	if gc.owed {
		gc.owed = false
		gc.g.breaker.Cancel(gc.ticket, time.Now())
	}
}

// tryRetry is destGuard.tryRetry for the request, noting an overflow in
// its access log line. The request holds one place at most: the retry
// before this one is over when this one is asked for, and the last is
// given back when the request ends (release).
func (gc *guardCall) tryRetry() bool {
	gc.doneRetry()
	if gc.g == nil {
		return true // no guard: nothing to hold
	}
	if gc.g.tryRetry() {
		gc.retry = true
		return true
	}
	gc.note.dest, gc.note.overflow = gc.g.key, capNames[capRetries]
	return false
}

// doneRetry gives back the place of the request's retry, if it holds one
// (a nil gc holds none).
func (gc *guardCall) doneRetry() {
	if gc != nil && gc.retry {
		gc.retry = false
		gc.g.doneRetry()
	}
}

// failedStatus reports whether a response status is a failure for the
// breakers (and the balancer): 502, 503 or 504.
func failedStatus(status int) bool {
	return status == 502 || status == 503 || status == 504
}

// guardFields adds n's fields to an access log line.
func guardFields(fields []zap.Field, n *guardNote) []zap.Field {
	if n == nil || n.dest == "" {
		return fields
	}
	fields = append(fields, zap.String("destination", n.dest))
	if n.circuit != "" {
		fields = append(fields, zap.String("circuit", n.circuit))
	}
	if n.overflow != "" {
		fields = append(fields, zap.String("overflow", n.overflow))
	}
	if n.fallback != "" {
		fields = append(fields, zap.String("fallback", n.fallback))
	}
	return fields
}
