package discovery

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Policy is how a balancer chooses among a service's endpoints.
type Policy string

// The balancing policies.
const (
	// P2CPeakEWMA, the default, picks two endpoints at random and takes
	// the cheaper: cost is the endpoint's latency estimate times its
	// requests in flight plus one. The estimate is a moving average of
	// the time to answer, connection set-up not included, that jumps at
	// once to a slower level held for peakRun answers in a row (the
	// "peak") and forgets it with time (Decay), so an endpoint that turns
	// slow loses traffic within a few answers and wins it back gradually.
	// Costs within tieMargin of each other are a tie, which goes to the
	// endpoint picked less recently.
	P2CPeakEWMA Policy = "p2c-peak-ewma"
	// RoundRobin takes the endpoints in turn.
	RoundRobin Policy = "round-robin"
	// LeastRequest picks two endpoints at random and takes the one with
	// fewer requests (or connections) in flight; a tie goes to the one
	// picked less recently.
	LeastRequest Policy = "least-request"
)

// tieMargin is how much cheaper than another an endpoint must look for
// P2CPeakEWMA to prefer it. An estimate is the peak of recent samples: of
// two equal endpoints, the one that served the last requests has had
// more samples and so a higher peak, and loses to the other only when a
// sample beats the other's last peak. Taken strictly, the comparison
// hands serial traffic to one endpoint in ever longer runs; within the
// margin, equal endpoints take turns, and an endpoint half again as slow
// as another is still avoided.
const tieMargin = 1.5

// peakRun is how many answers in a row must be slower than an endpoint's
// estimate for it to jump: it jumps to the fastest of them. One slow
// answer is as often the measuring side's (a pause of the sidecar's, the
// scheduler of a busy machine) or an endpoint's first, warming up (its
// sidecar's first connection to the app, code run cold); taken as a
// peak, it kept the endpoint out of serial traffic for about Decay
// while an equal one took it all. Failures are charged at once.
const peakRun = 3

// BalanceOptions configure load balancing and passive outlier ejection.
// The zero value is the defaults.
type BalanceOptions struct {
	// Policy is P2CPeakEWMA, RoundRobin or LeastRequest; "" means
	// P2CPeakEWMA.
	Policy Policy
	// Decay is how fast a latency estimate forgets: a sample's weight
	// falls by e every Decay. 0 means 10s.
	Decay time.Duration
	// ConsecutiveFailures ejects an endpoint once that many connections or
	// requests to it failed in a row (a connect or mesh handshake failure,
	// a reset before any byte, an HTTP 502, 503 or 504). 0 means 5; a
	// negative number never ejects.
	ConsecutiveFailures int
	// BaseEjection is how long an endpoint is ejected the first time; each
	// ejection after the first lasts that much longer, up to MaxEjection,
	// until the endpoint has served without failing for MaxEjection. 0
	// means 30s and 5m.
	BaseEjection, MaxEjection time.Duration
	// MaxEjectedPercent bounds the share of a service's endpoints ejected
	// at once, rounded down but at least one of two or more: a service
	// whose every endpoint fails keeps some to try. 0 means 50.
	MaxEjectedPercent int
}

// withDefaults fills the zero fields of o.
func (o BalanceOptions) withDefaults() BalanceOptions {
	if o.Policy == "" {
		o.Policy = P2CPeakEWMA
	}
	if o.Decay == 0 {
		o.Decay = 10 * time.Second
	}
	if o.ConsecutiveFailures == 0 {
		o.ConsecutiveFailures = 5
	}
	if o.BaseEjection == 0 {
		o.BaseEjection = 30 * time.Second
	}
	if o.MaxEjection == 0 {
		o.MaxEjection = 5 * time.Minute
	}
	if o.MaxEjectedPercent == 0 {
		o.MaxEjectedPercent = 50
	}
	return o
}

// Validate reports every problem of o at once, each naming its field.
func (o BalanceOptions) Validate() error {
	var errs []error
	switch o.Policy {
	case "", P2CPeakEWMA, RoundRobin, LeastRequest:
	default:
		errs = append(errs, fmt.Errorf("policy: %q: want %s, %s or %s", o.Policy, P2CPeakEWMA, RoundRobin, LeastRequest))
	}
	if o.Decay < 0 {
		errs = append(errs, errors.New("decay: want 0 (10s) or more"))
	}
	if o.BaseEjection < 0 || o.MaxEjection < 0 {
		errs = append(errs, errors.New("baseEjection, maxEjection: want 0 (the default) or more"))
	}
	if o.BaseEjection > 0 && o.MaxEjection > 0 && o.MaxEjection < o.BaseEjection {
		errs = append(errs, fmt.Errorf("maxEjection: %v is less than baseEjection %v", o.MaxEjection, o.BaseEjection))
	}
	if o.MaxEjectedPercent < 0 || o.MaxEjectedPercent > 100 {
		errs = append(errs, fmt.Errorf("maxEjectedPercent: %d: want 0 (50) to 100", o.MaxEjectedPercent))
	}
	return errors.Join(errs...)
}

// balancer chooses among the endpoints of one service port.
type balancer struct {
	o       BalanceOptions // with defaults
	service string
	now     func() time.Time
	events  balanceEvents

	mu    sync.Mutex
	eps   []*endpoint
	next  uint64     // round robin
	picks uint64     // picks made, numbering them
	rnd   *rand.Rand // under mu
}

// balanceEvents is what a balancer tells its owner (metrics, log).
type balanceEvents interface {
	picked(service string, ep netip.AddrPort)
	failed(service string, ep netip.AddrPort)
	ejected(service string, ep netip.AddrPort, failures int, for_ time.Duration)
	returned(service string, ep netip.AddrPort)
	removed(service string, ep netip.AddrPort)
}

// endpoint is one endpoint's balancing state.
type endpoint struct {
	addr    netip.AddrPort
	pending int     // picked and not done
	ewma    float64 // latency estimate, ns
	stamp   time.Time
	// sampled says the estimate has had a sample: before, it is only
	// where the endpoint started (the service's mean, or nothing).
	sampled bool
	last    uint64 // the number of its latest pick
	// prev are the latest latency samples, ns, latest first (0: none).
	prev [peakRun - 1]float64
	// fails counts failures in a row; ejections how many times the
	// endpoint was ejected (it lengthens the next one); until is when the
	// current ejection ends (zero: not ejected).
	fails     int
	ejections int
	until     time.Time
	back      time.Time // when the last ejection ended
}

func newBalancer(service string, o BalanceOptions, events balanceEvents, now func() time.Time, seed uint64) *balancer {
	return &balancer{o: o.withDefaults(), service: service, now: now, events: events,
		rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// update makes addrs the endpoints. Those already known keep their state;
// a new one starts with the mean latency estimate of those sampled, so
// that it is neither starved nor flooded before its first sample.
func (b *balancer) update(addrs []netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	old := make(map[netip.AddrPort]*endpoint, len(b.eps))
	var sum float64
	var n int
	for _, e := range b.eps {
		old[e.addr] = e
		if e.sampled {
			sum += b.estimate(e, now)
			n++
		}
	}
	mean := 0.0
	if n > 0 {
		mean = sum / float64(n)
	}
	eps := make([]*endpoint, 0, len(addrs))
	for _, a := range addrs {
		if e, ok := old[a]; ok {
			eps = append(eps, e)
			delete(old, a)
			continue
		}
		if slices.ContainsFunc(eps, func(e *endpoint) bool { return e.addr == a }) {
			continue
		}
		eps = append(eps, &endpoint{addr: a, ewma: mean, stamp: now})
	}
	b.eps = eps
	for a := range old {
		b.events.removed(b.service, a)
	}
}

// sync makes addrs, at port, the endpoints if they are not already.
func (b *balancer) sync(addrs []netip.Addr, port uint16) {
	b.mu.Lock()
	same := len(addrs) == len(b.eps)
	for i := 0; same && i < len(addrs); i++ {
		same = b.eps[i].addr == netip.AddrPortFrom(addrs[i], port)
	}
	b.mu.Unlock()
	if same {
		return
	}
	eps := make([]netip.AddrPort, len(addrs))
	for i, a := range addrs {
		eps[i] = netip.AddrPortFrom(a, port)
	}
	b.update(eps)
}

// addrs returns the endpoints, in order.
func (b *balancer) addrs() []netip.AddrPort {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]netip.AddrPort, len(b.eps))
	for i, e := range b.eps {
		out[i] = e.addr
	}
	return out
}

// estimate is e's latency estimate decayed to now (tower's and Finagle's
// peak EWMA: an idle endpoint's estimate falls, so it is tried again).
func (b *balancer) estimate(e *endpoint, now time.Time) float64 {
	el := now.Sub(e.stamp)
	if el <= 0 {
		return e.ewma
	}
	return e.ewma * math.Exp(-float64(el)/float64(b.o.Decay))
}

// pick chooses an endpoint not in avoid: among those not ejected, or if
// all are ejected, among all (better a try than a certain failure). ok is
// false when every endpoint is in avoid. The pick is pending until done.
func (b *balancer) pick(avoid []netip.AddrPort) (*endpoint, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	var cands []*endpoint
	for pass := 0; pass < 2 && len(cands) == 0; pass++ {
		for _, e := range b.eps {
			if slices.Contains(avoid, e.addr) {
				continue
			}
			if !e.until.IsZero() && !now.Before(e.until) {
				e.until, e.fails, e.back = time.Time{}, 0, now
				b.events.returned(b.service, e.addr)
			}
			if pass == 0 && !e.until.IsZero() {
				continue
			}
			cands = append(cands, e)
		}
	}
	if len(cands) == 0 {
		return nil, false
	}
	var e *endpoint
	switch {
	case len(cands) == 1:
		e = cands[0]
	case b.o.Policy == RoundRobin:
		e = cands[b.next%uint64(len(cands))]
		b.next++
	default:
		i := b.rnd.IntN(len(cands))
		j := b.rnd.IntN(len(cands) - 1)
		if j >= i {
			j++
		}
		x, y := cands[i], cands[j]
		margin := tieMargin
		if b.o.Policy == LeastRequest {
			margin = 1
		}
		cx, cy := b.cost(x, now), b.cost(y, now)
		switch {
		case cy*margin < cx:
			x = y
		case cx*margin < cy:
		case y.last < x.last:
			x = y // a tie: the one picked less recently
		}
		e = x
	}
	b.picks++
	e.last = b.picks
	e.pending++
	b.events.picked(b.service, e.addr)
	return e, true
}

// cost is what choosing e costs under the policy.
func (b *balancer) cost(e *endpoint, now time.Time) float64 {
	if b.o.Policy == LeastRequest {
		return float64(e.pending)
	}
	// A floor keeps requests in flight counting when the estimate is
	// nothing yet (or has decayed to nothing).
	return max(b.estimate(e, now), float64(time.Microsecond)) * float64(e.pending+1)
}

// done ends a pick: setup is how long the try spent setting up a
// connection to the endpoint (dial and mesh handshake; 0 over a pooled
// connection), latency how long it took after that (to the response's
// headers; 0 for a connection of its own, which measures nothing after
// its set-up); failed says it failed.
//
// A success's latency feeds the estimate; its set-up does not. Set-up is
// paid once per connection, by whichever try comes first, and the first
// connection to an endpoint costs more than the next (a full handshake,
// then resumed ones): charged, it made the endpoint connected to first
// look slower than an equal one for about Decay, and lose all serial
// traffic to it. A latency is a peak only as the fastest of peakRun in a
// row (an endpoint's first answers so never are: they are averaged into
// the estimate it started with). A success with no latency (a connection
// of its own) leaves the estimate as it is: such tries compete by their
// number in flight. A failure is charged at once its whole time, set-up
// and latency (twice the slowest other's estimate, beyond the tie
// margin, at least), and counts towards ejection.
func (b *balancer) done(e *endpoint, setup, latency time.Duration, failed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	e.pending--
	rtt := float64(latency)
	if failed {
		rtt = float64(setup + latency)
		// A failure costs twice the slowest of the others at least,
		// beyond the tie margin: a fast one (refused at once) must not
		// make the endpoint look cheap, or it would draw the traffic it
		// fails. Under P2C a failing endpoint so gets little traffic
		// until its estimate decays, and is ejected after its next
		// failures.
		for _, o := range b.eps {
			if o != e {
				rtt = max(rtt, 2*tieMargin*b.estimate(o, now))
			}
		}
	}
	peak := rtt
	if !failed && rtt > 0 {
		peak = min(rtt, slices.Min(e.prev[:]))
		copy(e.prev[1:], e.prev[:])
		e.prev[0] = rtt
	}
	if est := b.estimate(e, now); peak > est {
		e.ewma, e.stamp = peak, now
	} else if rtt > 0 {
		w := math.Exp(-float64(now.Sub(e.stamp)) / float64(b.o.Decay))
		e.ewma, e.stamp = est*w+rtt*(1-w), now
	}
	e.sampled = e.sampled || rtt > 0
	if !failed {
		e.fails = 0
		if e.ejections > 0 && e.until.IsZero() && now.Sub(e.back) >= b.o.MaxEjection {
			e.ejections = 0 // healthy for a whole maxEjection: forgiven
		}
		return
	}
	b.events.failed(b.service, e.addr)
	e.fails++
	if b.o.ConsecutiveFailures < 0 || e.fails < b.o.ConsecutiveFailures || !e.until.IsZero() {
		return
	}
	ejected := 0
	for _, o := range b.eps {
		if !o.until.IsZero() && now.Before(o.until) {
			ejected++
		}
	}
	limit := len(b.eps) * b.o.MaxEjectedPercent / 100
	if limit == 0 && len(b.eps) > 1 {
		limit = 1
	}
	if ejected >= limit || !slices.Contains(b.eps, e) {
		return
	}
	d := min(b.o.BaseEjection*time.Duration(e.ejections+1), b.o.MaxEjection)
	e.ejections++
	e.until = now.Add(d)
	b.events.ejected(b.service, e.addr, e.fails, d)
}
