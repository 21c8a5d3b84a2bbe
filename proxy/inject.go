package proxy

import (
	"context"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"meshgate/proxy/resilience"
)

// Fault injection and request mirroring (shared/DESIGN.md §5
// Resilience; issue 16 items 6 and 7), configured per destination and
// route in the resilience section (faults, mirror, tcpFaults). Both are
// off unless configured, and then cost nothing:
//
//   - the fault stage (fault_stage.go) and the mirror stage
//     (mirror_stage.go) are in the outbound chain, after rate-limit, only
//     while some destination of the resilience section has faults, or a
//     mirror; a reload that adds or removes them rebuilds the chains.
//   - the faults of opaque TCP connections (tcpfault.go) are looked at
//     for an outbound connection only while some destination has them:
//     one atomic load otherwise.
//
// What the stages keep per policy (the counters of each destination's
// and route's faults, each mirror's cap on copies in flight) is built
// here, once per resilience table, when the chains are (newChains).

// stageFault and stageMirror are the stages' names in answers, logs and
// metrics.
const (
	stageFault  = "fault"
	stageMirror = "mirror"
)

// The kinds of meshgate_faults_injected_total.
const (
	faultDelay = iota
	faultAbort
	faultTCPDelay
	faultTCPReset
	faultKinds
)

var faultKindNames = [faultKinds]string{"delay", "abort", "tcp_delay", "tcp_reset"}

// The results of meshgate_mirror_total.
const (
	mirrorSent = iota
	mirrorFailed
	mirrorDroppedFull
	mirrorDroppedBody
	mirrorResults
)

var mirrorResultNames = [mirrorResults]string{"sent", "failed", "dropped_full", "dropped_body"}

// newFaultsInjected is meshgate_faults_injected_total; its cardinality
// is bounded by the config: the destinations and routes with faults, and
// four kinds.
func newFaultsInjected() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_faults_injected_total",
		Help: "Faults injected on purpose (resilience faults and tcpFaults), by destination (its resilience name), " +
			"route (\"\" for the destination's own settings and for TCP) and kind: delay and abort (HTTP requests), " +
			"tcp_delay and tcp_reset (opaque TCP connections).",
	}, []string{"destination", "route", "kind"})
}

// newMirrorTotal is meshgate_mirror_total; its cardinality is bounded by
// the config: the destinations with a mirror, and four results.
func newMirrorTotal() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_mirror_total",
		Help: "Copies of requests to a destination (its resilience name) that its mirror chose, by result: sent (the " +
			"mirror target answered, below 500), failed (no answer, an answer of 500 or more, not sent while the target " +
			"fails, or the request's body did not all come), dropped_full (mirror.maxConcurrent copies were in flight) " +
			"and dropped_body (the body is longer than mirror.maxBodyBytes).",
	}, []string{"destination", "result"})
}

// injector is the proxy's state for fault injection and mirroring
// (Proxy.inject): what is in effect, and the copies in flight.
type injector struct {
	// state is what the chains in effect were built with (newChains).
	state atomic.Pointer[injectState]
	// rand, when set (tests: withFaultRandom), replaces math/rand/v2 for
	// the rolls that pick the requests and connections to fault or copy.
	rand func() float64
	// resolver is WithResolver's; nil: net.DefaultResolver.
	resolver NameResolver

	// The copies in flight (mirror_stage.go): each goroutine is counted
	// in wg, under mu, until stop.
	mu      sync.Mutex
	stopped bool
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	// plainOnce makes plain, the transport of copies to destinations
	// outside the mesh.
	plainOnce sync.Once
	plain     *http.Transport
}

// withFaultRandom has the rolls of fault injection and mirroring made by
// f (a number in [0, 1)), for tests that want them repeatable.
func withFaultRandom(f func() float64) Option {
	return func(p *Proxy) { p.inject.rand = f }
}

// roll returns a number in [0, 100): a share fires when it is below the
// share's percent.
func (inj *injector) roll() float64 {
	if inj.rand != nil {
		return inj.rand() * 100
	}
	return rand.Float64() * 100
}

// injectState is fault injection and mirroring as the resilience table
// of the chains in effect sets them.
type injectState struct {
	table *resilience.Table
	// faults, tcpFaults, mirrors: some destination has them.
	faults, tcpFaults, mirrors bool
	// counted are the fault counters of each policy with faults, by kind
	// (nil for a kind it cannot fire).
	counted map[*resilience.Policy]*[faultKinds]prometheus.Counter
	// tcpCounted are those of each destination with TCP faults.
	tcpCounted map[*resilience.DestPolicy]*[faultKinds]prometheus.Counter
	// mirrors of each MirrorPolicy in the table.
	mirror map[*resilience.MirrorPolicy]*mirrorState
	// series are the label sets of the counters, for a later state to
	// delete those it has no more.
	faultSeries  map[[3]string]bool
	mirrorSeries map[string]bool
}

// injectStateFor returns the state for table t: the one in effect when
// it is t's, else a new one, which it puts in effect. Called by
// newChains (under cfgMu, or from New).
func (p *Proxy) injectStateFor(t *resilience.Table) *injectState {
	old := p.inject.state.Load()
	if old != nil && old.table == t {
		return old
	}
	st := &injectState{table: t,
		counted:      map[*resilience.Policy]*[faultKinds]prometheus.Counter{},
		tcpCounted:   map[*resilience.DestPolicy]*[faultKinds]prometheus.Counter{},
		mirror:       map[*resilience.MirrorPolicy]*mirrorState{},
		faultSeries:  map[[3]string]bool{},
		mirrorSeries: map[string]bool{}}
	fc := p.metrics.faultsInjected
	count := func(dest, route string, kind int) prometheus.Counter {
		st.faultSeries[[3]string{dest, route, faultKindNames[kind]}] = true
		return fc.WithLabelValues(dest, route, faultKindNames[kind])
	}
	for _, dp := range t.Destinations() {
		key := dp.Key()
		if f := &dp.TCPFaults; f.Enabled() {
			st.tcpFaults = true
			var c [faultKinds]prometheus.Counter
			if f.Delay > 0 && f.DelayPercent > 0 {
				c[faultTCPDelay] = count(key, "", faultTCPDelay)
			}
			if f.ResetPercent > 0 {
				c[faultTCPReset] = count(key, "", faultTCPReset)
			}
			st.tcpCounted[dp] = &c
		}
		for _, pol := range dp.Policies() {
			if f := &pol.Faults; f.Enabled() {
				st.faults = true
				var c [faultKinds]prometheus.Counter
				if f.Delay > 0 && f.DelayPercent > 0 {
					c[faultDelay] = count(key, pol.RouteName(), faultDelay)
				}
				if f.AbortPercent > 0 {
					c[faultAbort] = count(key, pol.RouteName(), faultAbort)
				}
				st.counted[pol] = &c
			}
			if m := pol.Mirror; m.Enabled() && st.mirror[m] == nil {
				st.mirrors = true
				ms := &mirrorState{pol: m, dest: key, limit: resilience.NewLimiter(int64(m.MaxConcurrent)), breaker: newMirrorBreaker()}
				if o := old.mirrorOf(m, key); o != nil {
					// Copies in flight still count against the cap, and
					// the target's failures still count.
					ms.limit, ms.breaker = o.limit, o.breaker
				}
				for res := range mirrorResults {
					ms.counted[res] = p.metrics.mirrors.WithLabelValues(key, mirrorResultNames[res])
				}
				st.mirrorSeries[key] = true
				st.mirror[m] = ms
			}
		}
	}
	if old != nil {
		for s := range old.faultSeries {
			if !st.faultSeries[s] {
				fc.DeleteLabelValues(s[0], s[1], s[2])
			}
		}
		for d := range old.mirrorSeries {
			if !st.mirrorSeries[d] {
				p.metrics.mirrors.DeletePartialMatch(prometheus.Labels{"destination": d})
			}
		}
	}
	p.inject.state.Store(st)
	return st
}

// mirrorOf returns the mirror state of st (nil: none) for a mirror of
// destination dest with m's settings, so that a reload that keeps a
// mirror as it was keeps its cap's count of copies in flight.
func (st *injectState) mirrorOf(m *resilience.MirrorPolicy, dest string) *mirrorState {
	if st == nil {
		return nil
	}
	for om, ms := range st.mirror {
		if ms.dest == dest && *om == *m {
			return ms
		}
	}
	return nil
}

// policy returns the settings in effect for r, outbound: those of the
// route of r's destination that r matches (lookupRes, routePolicy).
func (st *injectState) policy(p *Proxy, r *Request) *resilience.Policy {
	return routePolicy(p.lookupRes(st.table, r.Dst), r.Method(), r.Target())
}

// injectNotes are what fault injection and mirroring did to a request,
// for its access log line (fault, mirror) and, for a copy being made, the
// copy.
type injectNotes struct {
	fired  uint8 // noteDelay, noteAbort
	mirror uint8 // 0, or a mirror result noted (noteMirrored, ...)
	copy   *mirrorCopy
}

// The notes of injectNotes.fired.
const (
	noteDelay = 1 << iota
	noteAbort
)

// The notes of injectNotes.mirror.
const (
	noteMirrored = 1 + iota
	noteMirrorFailed
	noteMirrorDroppedFull
	noteMirrorDroppedBody
)

// injectFields adds the access log's fault and mirror fields to fields
// when the request met either.
func injectFields(fields []zap.Field, n *injectNotes) []zap.Field {
	switch n.fired {
	case noteDelay:
		fields = append(fields, zap.String("fault", "delay"))
	case noteAbort:
		fields = append(fields, zap.String("fault", "abort"))
	case noteDelay | noteAbort:
		fields = append(fields, zap.String("fault", "delay,abort"))
	}
	mirror := n.mirror
	if n.copy != nil {
		mirror = n.copy.noted()
	}
	switch mirror {
	case noteMirrored:
		fields = append(fields, zap.String("mirror", "mirrored"))
	case noteMirrorFailed:
		fields = append(fields, zap.String("mirror", "failed"))
	case noteMirrorDroppedFull:
		fields = append(fields, zap.String("mirror", "dropped_full"))
	case noteMirrorDroppedBody:
		fields = append(fields, zap.String("mirror", "dropped_body"))
	}
	return fields
}

// endInject ends what fault injection and mirroring started for r once
// r is answered: a copy whose body did not all come is dropped. The
// notes are cleared (an HTTP/1 connection's Request is its next
// request's).
func (r *Request) endInject() {
	if c := r.inject.copy; c != nil {
		c.end()
	}
	r.inject = injectNotes{}
}
