package resilience

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// grants counts the retries b grants in a row at now, up to limit.
func grants(b *RetryBudget, now time.Time, limit int) int {
	n := 0
	for n < limit && b.TryRetry(now) {
		n++
	}
	return n
}

func TestRetryBudgetRatio(t *testing.T) {
	for _, tc := range []struct {
		ratio    float64
		requests int
		want     int
	}{
		{0.2, 100, 20},
		{0.2, 4, 0}, // 0.8 of a token is no retry
		{0.2, 5, 1},
		{0.29, 100, 29}, // 28.999999999999996 in float64
		{0.07, 100, 7},
		{1, 3, 3},
		{2.5, 2, 5},
		{0, 1000, 0},
	} {
		t.Run(fmt.Sprintf("%v×%d", tc.ratio, tc.requests), func(t *testing.T) {
			b := NewRetryBudget(tc.ratio, 0, 10*time.Second)
			for range tc.requests {
				b.Request(t0)
			}
			if got := grants(b, t0, 10_000); got != tc.want {
				t.Errorf("%d retries granted; want %d", got, tc.want)
			}
		})
	}
}

func TestRetryBudgetFloor(t *testing.T) {
	for _, tc := range []struct {
		perSecond float64
		burst     int           // granted at once, from a full floor
		refill    time.Duration // then one more after
	}{
		{3, 3, time.Second/3 + 1}, // a third of a second, rounded up
		{10, 10, 100 * time.Millisecond},
		{0.5, 1, 2 * time.Second},        // holds at least one
		{2.5, 2, 200 * time.Millisecond}, // half a token left
	} {
		t.Run(fmt.Sprint(tc.perSecond), func(t *testing.T) {
			b := NewRetryBudget(0.2, tc.perSecond, 10*time.Second)
			if got := grants(b, t0, 1000); got != tc.burst {
				t.Fatalf("%d retries granted with no requests; want the floor's %d", got, tc.burst)
			}
			if b.TryRetry(t0.Add(tc.refill - time.Millisecond)) {
				t.Errorf("retry granted %v after the floor was spent; want none before %v", tc.refill-time.Millisecond, tc.refill)
			}
			if !b.TryRetry(t0.Add(tc.refill)) {
				t.Errorf("no retry %v after the floor was spent", tc.refill)
			}
		})
	}
	t.Run("off", func(t *testing.T) {
		b := NewRetryBudget(0.2, 0, 10*time.Second)
		if b.TryRetry(t0) || b.TryRetry(t0.Add(time.Hour)) {
			t.Error("retry granted with no requests and no floor")
		}
	})
}

func TestRetryBudgetDepositsExpire(t *testing.T) {
	const w = 10 * time.Second
	// A deposit counts for the whole window when made at the start of a
	// bucket, and not a moment longer.
	b := NewRetryBudget(1, 0, w)
	b.Request(t0)
	if !b.TryRetry(t0.Add(w - time.Nanosecond)) {
		t.Error("deposit gone before the window ended")
	}
	b = NewRetryBudget(1, 0, w)
	b.Request(t0)
	if b.TryRetry(t0.Add(w)) {
		t.Error("deposit still there a window later")
	}
	// Made at the end of a bucket, for nine tenths of it.
	b = NewRetryBudget(1, 0, w)
	b.Request(t0)
	if !b.TryRetry(t0) {
		t.Fatal("no retry for a deposit")
	}
	b.Request(t0.Add(w/10 - time.Nanosecond))
	if b.TryRetry(t0.Add(w)) {
		t.Error("deposit still there past its bucket's window")
	}
}

func TestRetryBudgetWithdrawalsOutliveDeposits(t *testing.T) {
	const w = 10 * time.Second
	b := NewRetryBudget(1, 0, w)
	b.Request(t0)
	if !b.TryRetry(t0) {
		t.Fatal("no retry for a deposit")
	}
	// A window later the deposit is gone but the retry it funded still
	// counts: a new request's token pays for it, not for a new retry, or
	// the window (t0, t0+w] would hold two retries for one request.
	b.Request(t0.Add(w))
	if b.TryRetry(t0.Add(w)) {
		t.Error("retry granted while the last window's retry still counts")
	}
	if !b.TryRetry(t0.Add(w + w/10)) {
		t.Error("no retry once the old withdrawal is a bucket past the window")
	}
}

func TestRetryBudgetQuietPeriodEmptiesIt(t *testing.T) {
	const w = 10 * time.Second
	b := NewRetryBudget(0.2, 3, w)
	// Five seconds of good traffic at 1000/s: 1000 tokens deposited, none
	// spent.
	for i := range 5000 {
		b.Request(t0.Add(time.Duration(i) * time.Millisecond))
	}
	end := t0.Add(5 * time.Second)
	// Then a quiet window: what is left is the floor alone.
	later := end.Add(w)
	if got := grants(b, later, 10_000); got != 3 {
		t.Errorf("%d retries granted after a quiet window; want the floor's 3", got)
	}
	// Had the failures come at once, the deposits would have paid.
	b = NewRetryBudget(0.2, 3, w)
	for i := range 5000 {
		b.Request(t0.Add(time.Duration(i) * time.Millisecond))
	}
	if got := grants(b, end, 10_000); got != 1003 {
		t.Errorf("%d retries granted right after the traffic; want 1000 + the floor's 3", got)
	}
}

// event is a request or a retry granted, at a time.
type event struct {
	at    time.Time
	retry bool
}

// history is events in time order, with their running counts.
type history struct {
	evs               []event
	requests, retries []int // before each event, and after the last
}

func (h *history) add(e event) {
	if len(h.requests) == 0 {
		h.requests, h.retries = []int{0}, []int{0}
	}
	req, ret := h.requests[len(h.evs)], h.retries[len(h.evs)]
	if e.retry {
		ret++
	} else {
		req++
	}
	h.evs = append(h.evs, e)
	h.requests, h.retries = append(h.requests, req), append(h.retries, ret)
}

// inWindow counts the requests and retries in (at-w, at].
func (h *history) inWindow(at time.Time, w time.Duration) (requests, retries int) {
	i := sort.Search(len(h.evs), func(i int) bool { return h.evs[i].at.After(at.Add(-w)) })
	j := sort.Search(len(h.evs), func(i int) bool { return h.evs[i].at.After(at) })
	if j == 0 {
		return 0, 0
	}
	return h.requests[j] - h.requests[i], h.retries[j] - h.retries[i]
}

func TestRetryBudgetBoundUnderFailingTraffic(t *testing.T) {
	const (
		w        = 10 * time.Second
		run      = 120 * time.Second
		attempts = 3 // a request that fails tries to retry this many times
	)
	for _, tc := range []struct {
		name              string
		ratio, floor      float64
		requestsPerSecond float64
	}{
		{"ratio and floor, 0.5/s", 0.2, 3, 0.5},
		{"ratio and floor, 10/s", 0.2, 3, 10},
		{"ratio and floor, 100/s", 0.2, 3, 100},
		{"ratio and floor, 1000/s", 0.2, 3, 1000},
		{"ratio alone, 100/s", 0.2, 0, 100},
		{"floor alone, 100/s", 0, 3, 100},
		{"big ratio, 50/s", 1.5, 1, 50},
		{"small floor, 100/s", 0.1, 0.5, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewRetryBudget(tc.ratio, tc.floor, w)
			gap := time.Duration(float64(time.Second) / tc.requestsPerSecond)
			var h history
			for now := t0; now.Before(t0.Add(run)); now = now.Add(gap) {
				b.Request(now)
				h.add(event{at: now})
				// Every try fails: retry until refused or out of attempts.
				for range attempts {
					if !b.TryRetry(now) {
						break
					}
					h.add(event{at: now, retry: true})
				}
			}
			// The budget's bound, over the window ending at each retry:
			// ratio × requests + floor × (seconds + 1), and one request's
			// share for the windows' rounding.
			worst := 0.0
			for _, e := range h.evs {
				if !e.retry {
					continue
				}
				req, ret := h.inWindow(e.at, w)
				bound := tc.ratio*float64(req+1) + tc.floor*(w.Seconds()+1)
				if float64(ret) > bound {
					t.Fatalf("at %v: %d retries in the window to it, for %d requests; want at most %.1f", e.at.Sub(t0), ret, req, bound)
				}
				worst = max(worst, float64(ret)/bound)
			}
			// And it is a budget, not a wall: over the run, the retries
			// come close to what it allows, or to the attempts made when
			// those are fewer.
			req, ret := h.inWindow(t0.Add(run), run+time.Second)
			allowed := min(tc.ratio*float64(req)+tc.floor*run.Seconds(), float64(attempts*req))
			if float64(ret) < 0.9*allowed || float64(ret) > allowed+tc.floor+tc.ratio*float64(req)/float64(run/w) {
				t.Errorf("%d retries for %d requests over %v; want about %.0f", ret, req, run, allowed)
			}
			t.Logf("%d requests, %d retries (%.0f allowed over the run); the fullest window at %.0f%% of its bound", req, ret, allowed, 100*worst)
		})
	}
}

// TestRetryBudgetRatioBoundBurstyTraffic checks the guarantee exactly, under
// traffic that comes and goes: the retries a budget without a floor
// grants in the window before each are at most ratio × its requests.
func TestRetryBudgetRatioBoundBurstyTraffic(t *testing.T) {
	const w = 5 * time.Second
	for seed := range uint64(20) {
		rnd := rand.New(rand.NewPCG(seed, 16))
		ratio := []float64{0.1, 0.2, 0.5, 1}[seed%4]
		b := NewRetryBudget(ratio, 0, w)
		var h history
		now := t0
		for range 20_000 {
			// Bursts, gaps of up to two windows, and everything between.
			switch rnd.IntN(10) {
			case 0:
				now = now.Add(time.Duration(rnd.Int64N(int64(2 * w))))
			default:
				now = now.Add(time.Duration(rnd.Int64N(int64(20 * time.Millisecond))))
			}
			if rnd.IntN(3) > 0 {
				b.Request(now)
				h.add(event{at: now})
			} else if b.TryRetry(now) {
				h.add(event{at: now, retry: true})
			}
		}
		granted := 0
		for _, e := range h.evs {
			if !e.retry {
				continue
			}
			granted++
			req, ret := h.inWindow(e.at, w)
			if float64(ret) > ratio*float64(req)+epsilon {
				t.Fatalf("seed %d: at %v: %d retries in the window to it, for %d requests; want at most %v × %d", seed, e.at.Sub(t0), ret, req, ratio, req)
			}
		}
		if granted == 0 {
			t.Fatalf("seed %d: no retry granted", seed)
		}
	}
}

// TestRetryBudgetFloorBoundBurstyTraffic checks the floor's bound exactly:
// over any span of s seconds, at most floor × s + max(1, floor).
func TestRetryBudgetFloorBoundBurstyTraffic(t *testing.T) {
	for seed := range uint64(10) {
		rnd := rand.New(rand.NewPCG(seed, 17))
		floor := []float64{0.5, 1, 3, 10, 2.5}[seed%5]
		b := NewRetryBudget(0, floor, 10*time.Second)
		var at []time.Time
		now := t0
		for range 1500 {
			now = now.Add(time.Duration(rnd.Int64N(int64(time.Second / 2))))
			for range rnd.IntN(4) {
				if b.TryRetry(now) {
					at = append(at, now)
				}
			}
		}
		if len(at) == 0 {
			t.Fatalf("seed %d: no retry granted", seed)
		}
		for i := range at {
			for j := i; j < len(at); j++ {
				if bound := floor*at[j].Sub(at[i]).Seconds() + max(1, floor); float64(j-i+1) > bound+epsilon {
					t.Fatalf("seed %d: %d retries over %v; want at most %.2f", seed, j-i+1, at[j].Sub(at[i]), bound)
				}
			}
		}
	}
}

func TestRetryBudgetOutOfOrderTimes(t *testing.T) {
	// A caller that read the clock before another but locked after it
	// passes a time a little in the past: it counts as now.
	b := NewRetryBudget(1, 0, 10*time.Second)
	b.Request(t0.Add(5 * time.Second))
	b.Request(t0.Add(4 * time.Second))
	if got := grants(b, t0.Add(3*time.Second), 10); got != 2 {
		t.Errorf("%d retries granted for two requests; want 2", got)
	}
}

func TestRetryBudgetConcurrent(t *testing.T) {
	b := NewRetryBudget(0.25, 4, 10*time.Second)
	const goroutines, each = 16, 1000
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range each {
				b.Request(t0)
			}
		})
	}
	wg.Wait()
	var granted atomic.Int64
	for range goroutines {
		wg.Go(func() {
			for range each {
				if b.TryRetry(t0) {
					granted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got, want := granted.Load(), int64(goroutines*each/4+4); got != want {
		t.Errorf("%d retries granted; want %d (a quarter of the requests and the floor)", got, want)
	}
}

func TestNewRetryBudgetPanics(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		ratio, floor float64
		window       time.Duration
	}{
		{-0.1, 1, time.Second},
		{0.1, -1, time.Second},
		{nan, 1, time.Second},
		{0.1, nan, time.Second},
		{0.1, 1, 0},
		{0.1, 1, -time.Second},
		{math.Inf(1), 1, time.Second},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewRetryBudget(%v, %v, %v) did not panic", tc.ratio, tc.floor, tc.window)
				}
			}()
			NewRetryBudget(tc.ratio, tc.floor, tc.window)
		}()
	}
}

func BenchmarkRetryBudget(b *testing.B) {
	bu := NewRetryBudget(0.2, 3, 10*time.Second)
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Millisecond)
		bu.Request(now)
		bu.TryRetry(now)
	}
}

func BenchmarkRetryBudgetParallel(b *testing.B) {
	bu := NewRetryBudget(0.2, 3, 10*time.Second)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		now := t0
		for pb.Next() {
			now = now.Add(time.Millisecond)
			bu.Request(now)
			bu.TryRetry(now)
		}
	})
}
