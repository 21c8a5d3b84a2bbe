package discovery

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a test clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_000_000, 0)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// events records a balancer's events.
type events struct{ log []string }

func (e *events) picked(string, netip.AddrPort) {}
func (e *events) failed(string, netip.AddrPort) {}
func (e *events) ejected(_ string, ep netip.AddrPort, n int, d time.Duration) {
	e.log = append(e.log, fmt.Sprintf("ejected %s after %d for %v", ep, n, d))
}
func (e *events) returned(_ string, ep netip.AddrPort) {
	e.log = append(e.log, "returned "+ep.String())
}
func (e *events) removed(_ string, ep netip.AddrPort) { e.log = append(e.log, "removed "+ep.String()) }

func eps(n int) []netip.AddrPort {
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 8080)
	}
	return out
}

func newTestBalancer(t *testing.T, o BalanceOptions, n int) (*balancer, *clock, *events) {
	t.Helper()
	c := newClock()
	ev := &events{}
	b := newBalancer("web.shop.mesh", o, ev, c.now, 1)
	b.update(eps(n))
	return b, c, ev
}

// serve makes n sequential picks, each answered after latency(endpoint)
// and failing if fail(endpoint); it returns the picks per endpoint.
func serve(t *testing.T, b *balancer, c *clock, n int, latency func(netip.AddrPort) time.Duration, fail func(netip.AddrPort) bool) map[netip.AddrPort]int {
	t.Helper()
	return serveTries(t, b, c, n, func(e netip.AddrPort) (time.Duration, time.Duration, bool) {
		return 0, latency(e), fail != nil && fail(e)
	})
}

// serveTries makes n sequential picks, each try taking setup (connecting)
// then latency, and failing as try says; it returns the picks per
// endpoint.
func serveTries(t *testing.T, b *balancer, c *clock, n int, try func(netip.AddrPort) (setup, latency time.Duration, failed bool)) map[netip.AddrPort]int {
	t.Helper()
	got := map[netip.AddrPort]int{}
	for range n {
		e, ok := b.pick(nil)
		if !ok {
			t.Fatal("no pick")
		}
		got[e.addr]++
		setup, latency, failed := try(e.addr)
		c.advance(setup + latency)
		b.done(e, setup, latency, failed)
		c.advance(time.Millisecond)
	}
	return got
}

func TestRoundRobinTakesTurns(t *testing.T) {
	b, c, _ := newTestBalancer(t, BalanceOptions{Policy: RoundRobin}, 3)
	got := serve(t, b, c, 300, func(netip.AddrPort) time.Duration { return time.Millisecond }, nil)
	for _, e := range eps(3) {
		if got[e] != 100 {
			t.Errorf("%s got %d of 300 picks, want 100: %v", e, got[e], got)
		}
	}
}

func TestPeakEWMAAvoidsTheSlowEndpoint(t *testing.T) {
	b, c, _ := newTestBalancer(t, BalanceOptions{}, 2)
	slow, fast := eps(2)[0], eps(2)[1]
	got := serve(t, b, c, 1000, func(e netip.AddrPort) time.Duration {
		if e == slow {
			return 50 * time.Millisecond
		}
		return time.Millisecond
	}, nil)
	if got[slow] > 5 || got[fast] < 995 {
		t.Errorf("picks: slow %d, fast %d; want the slow one avoided", got[slow], got[fast])
	}
	// Its estimate decays (by e every 10s) until it is tried again.
	c.advance(40 * time.Second)
	got = serve(t, b, c, 10, func(netip.AddrPort) time.Duration { return time.Millisecond }, nil)
	if got[slow] == 0 {
		t.Errorf("the slow endpoint was not tried again 40s later: %v", got)
	}
}

// TestPeakEWMASerialRequestsSpread drives the balancer as the proxy does
// over pooled mesh connections: requests one at a time to two equal
// endpoints, the first to each also connecting to it (dial and mesh
// handshake). They share the requests whatever else the answers do: the
// first ones slower (the peer sidecar connects to its app, code runs
// cold), with noise, or now and then one much slower (a pause).
func TestPeakEWMASerialRequestsSpread(t *testing.T) {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	type serialCase struct {
		name  string
		decay time.Duration
		// answer is how long an endpoint's nth answer (from 0) takes.
		answer func(ep netip.AddrPort, n int) time.Duration
	}
	cases := []serialCase{
		{"set-up", 0, func(netip.AddrPort, int) time.Duration { return time.Millisecond }},
		{"set-up, decay 2s", 2 * time.Second, func(netip.AddrPort, int) time.Duration { return time.Millisecond }},
		{"warm-up", 0, func(ep netip.AddrPort, n int) time.Duration {
			if ep == eps(2)[0] {
				return ms([]float64{4, 2, 1}[min(n, 2)])
			}
			return ms([]float64{3, 1.2, 1}[min(n, 2)])
		}},
		{"a pause now and then", 0, func(_ netip.AddrPort, n int) time.Duration {
			if n%7 == 3 {
				return 10 * time.Millisecond
			}
			return time.Millisecond
		}},
	}
	for seed := range uint64(8) {
		noise := rand.New(rand.NewPCG(seed, 2))
		cases = append(cases, serialCase{fmt.Sprintf("noise %d", seed), 0, func(netip.AddrPort, int) time.Duration {
			return ms(0.3 + 0.2*noise.ExpFloat64())
		}})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, c, _ := newTestBalancer(t, BalanceOptions{Decay: tc.decay}, 2)
			uses := map[netip.AddrPort]int{}
			got := serveTries(t, b, c, 40, func(e netip.AddrPort) (time.Duration, time.Duration, bool) {
				n := uses[e]
				uses[e]++
				var setup time.Duration
				if n == 0 {
					setup = 5 * time.Millisecond
				}
				return setup, tc.answer(e, n), false
			})
			for _, e := range eps(2) {
				if got[e] < 10 {
					t.Errorf("40 requests one at a time over two equal endpoints: %s got %d; want 10 (25%%) at least: %v", e, got[e], got)
				}
			}
		})
	}
}

func TestPeakEWMASpreadsRequestsInFlight(t *testing.T) {
	b, _, _ := newTestBalancer(t, BalanceOptions{}, 2)
	// Equal estimates: requests in flight raise the cost, so concurrent
	// requests go to both.
	got := map[netip.AddrPort]int{}
	for range 10 {
		e, _ := b.pick(nil)
		got[e.addr]++
	}
	for _, e := range eps(2) {
		if got[e] != 5 {
			t.Errorf("10 requests in flight: %v, want 5 each", got)
		}
	}
}

func TestLeastRequestPrefersFewerInFlight(t *testing.T) {
	b, _, _ := newTestBalancer(t, BalanceOptions{Policy: LeastRequest}, 2)
	first, _ := b.pick(nil)
	first.pending += 5 // a burst of long requests to it
	for range 5 {
		e, _ := b.pick(nil)
		if e == first {
			t.Fatal("least-request picked the endpoint with more requests in flight")
		}
	}
}

func TestEjectionAfterConsecutiveFailures(t *testing.T) {
	// Round robin sends the failing endpoint every other request.
	b, c, ev := newTestBalancer(t, BalanceOptions{Policy: RoundRobin}, 2)
	bad := eps(2)[0]
	failing := func(e netip.AddrPort) bool { return e == bad }
	ms := func(netip.AddrPort) time.Duration { return time.Millisecond }
	got := serve(t, b, c, 100, ms, failing)
	if got[bad] != 5 {
		t.Errorf("the failing endpoint got %d requests, want 5 (ejected after 5 in a row)", got[bad])
	}
	want := "ejected " + bad.String() + " after 5 for 30s"
	if len(ev.log) != 1 || ev.log[0] != want {
		t.Fatalf("events %q, want [%s]", ev.log, want)
	}
	// Back after 30s; failing again, out for twice as long.
	c.advance(30 * time.Second)
	got = serve(t, b, c, 100, ms, failing)
	if got[bad] != 5 || !strings.HasSuffix(ev.log[len(ev.log)-1], "after 5 for 1m0s") || ev.log[1] != "returned "+bad.String() {
		t.Errorf("second round: %d requests to the failing endpoint, events %q", got[bad], ev.log)
	}
	// A success in between resets the count.
	c.advance(time.Minute)
	n := 0
	got = serve(t, b, c, 200, ms, func(e netip.AddrPort) bool {
		if e != bad {
			return false
		}
		n++
		return n%4 != 0 // three failures, a success, ...
	})
	if strings.Count(strings.Join(ev.log, "\n"), "ejected") != 2 {
		t.Errorf("an endpoint failing 3 times in 4 was ejected: %q", ev.log)
	}
	// Healthy for maxEjection (5m) since: the next ejection is the first
	// again.
	c.advance(5 * time.Minute)
	serve(t, b, c, 10, ms, nil)
	serve(t, b, c, 100, ms, failing)
	if last := ev.log[len(ev.log)-1]; last != want {
		t.Errorf("after 5m healthy: %q, want %q", last, want)
	}
}

func TestEjectionKeepsSomeEndpoints(t *testing.T) {
	b, c, ev := newTestBalancer(t, BalanceOptions{Policy: RoundRobin}, 2)
	got := serve(t, b, c, 100, func(netip.AddrPort) time.Duration { return time.Millisecond }, func(netip.AddrPort) bool { return true })
	if strings.Count(strings.Join(ev.log, "\n"), "ejected") != 1 {
		t.Errorf("both endpoints failing: %q; want only one of two ejected (maxEjectedPercent 50)", ev.log)
	}
	if len(got) != 2 {
		t.Errorf("picks %v", got)
	}
	// With one endpoint, none is ejected.
	one, c1, ev1 := newTestBalancer(t, BalanceOptions{}, 1)
	serve(t, one, c1, 20, func(netip.AddrPort) time.Duration { return time.Millisecond }, func(netip.AddrPort) bool { return true })
	if len(ev1.log) != 0 {
		t.Errorf("the only endpoint was ejected: %q", ev1.log)
	}
	// ConsecutiveFailures < 0: never.
	never, c2, ev2 := newTestBalancer(t, BalanceOptions{ConsecutiveFailures: -1}, 3)
	serve(t, never, c2, 50, func(netip.AddrPort) time.Duration { return time.Millisecond }, func(netip.AddrPort) bool { return true })
	if len(ev2.log) != 0 {
		t.Errorf("ejection off, yet: %q", ev2.log)
	}
}

func TestFastFailuresDoNotAttractTraffic(t *testing.T) {
	b, c, _ := newTestBalancer(t, BalanceOptions{ConsecutiveFailures: -1}, 2)
	bad := eps(2)[0]
	got := serve(t, b, c, 400, func(e netip.AddrPort) time.Duration {
		if e == bad {
			return 10 * time.Microsecond // refused at once
		}
		return 2 * time.Millisecond
	}, func(e netip.AddrPort) bool { return e == bad })
	if got[bad] > 10 {
		t.Errorf("the endpoint failing fast got %d of 400 requests: a fast failure must not lower its cost", got[bad])
	}
	// It is tried again as its estimate decays, and ejected after five
	// failures in a row.
	b, c, ev := newTestBalancer(t, BalanceOptions{Decay: time.Second}, 2)
	got = serve(t, b, c, 5000, func(netip.AddrPort) time.Duration { return 2 * time.Millisecond }, func(e netip.AddrPort) bool { return e == bad })
	if got[bad] != 5 || len(ev.log) != 1 {
		t.Errorf("P2C: %d requests to the failing endpoint, events %q; want 5 and its ejection", got[bad], ev.log)
	}
}

func TestPickAvoids(t *testing.T) {
	b, _, _ := newTestBalancer(t, BalanceOptions{}, 2)
	all := eps(2)
	e, ok := b.pick(all[:1])
	if !ok || e.addr != all[1] {
		t.Fatalf("pick avoiding %s = %v, %v", all[0], e, ok)
	}
	if _, ok := b.pick(all); ok {
		t.Error("pick with every endpoint avoided succeeded")
	}
}

func TestUpdateKeepsState(t *testing.T) {
	b, c, ev := newTestBalancer(t, BalanceOptions{}, 2)
	all := eps(4)
	for range peakRun { // an endpoint's first answers only start its estimate
		for i, d := range []time.Duration{4 * time.Millisecond, 2 * time.Millisecond} {
			e, _ := b.pick([]netip.AddrPort{all[1-i]})
			b.done(e, 0, d, false)
		}
	}
	c.advance(time.Millisecond)
	b.update([]netip.AddrPort{all[1], all[2]}) // all[0] goes, all[2] comes
	if ev.log[len(ev.log)-1] != "removed "+all[0].String() {
		t.Errorf("events %q", ev.log)
	}
	if got := b.addrs(); len(got) != 2 || got[0] != all[1] || got[1] != all[2] {
		t.Fatalf("endpoints %v", got)
	}
	now := c.now()
	kept, added := b.estimate(b.eps[0], now), b.estimate(b.eps[1], now)
	if kept < float64(time.Millisecond) || added < float64(time.Millisecond) || added > float64(4*time.Millisecond) {
		t.Errorf("estimates after update: kept %v, new %v; want the kept one's and the mean of the old", time.Duration(kept), time.Duration(added))
	}
	// The mean is of the endpoints sampled: all[2]'s start is no sample.
	b.update([]netip.AddrPort{all[1], all[2], all[3]})
	if got := b.estimate(b.eps[2], now); got != kept {
		t.Errorf("a third endpoint starts at %v, want %v: the mean of the one sampled", time.Duration(got), time.Duration(kept))
	}
}

func TestBalanceOptionsValidate(t *testing.T) {
	if err := (BalanceOptions{}).Validate(); err != nil {
		t.Fatal(err)
	}
	err := BalanceOptions{Policy: "random", MaxEjectedPercent: 101, BaseEjection: time.Minute, MaxEjection: time.Second}.Validate()
	for _, want := range []string{`policy: "random": want p2c-peak-ewma, round-robin or least-request`, "maxEjectedPercent: 101", "maxEjection: 1s is less than baseEjection 1m0s"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to say %q", err, want)
		}
	}
}
