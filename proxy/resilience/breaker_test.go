package resilience

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// changes records a breaker's OnChange calls.
type changes struct {
	mu  sync.Mutex
	got []string
}

func (c *changes) on(from, to State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, from.String()+"→"+to.String())
}

func (c *changes) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	got := c.got
	c.got = nil
	return got
}

// call is one request through b at now with its outcome; it reports
// whether b admitted it.
func call(b *Breaker, now time.Time, success bool) bool {
	tk, ok := b.Allow(now)
	if ok {
		b.Done(tk, success, now)
	}
	return ok
}

func TestStateString(t *testing.T) {
	for _, tc := range []struct {
		s     State
		name  string
		gauge float64
	}{
		{Closed, "closed", 0},
		{Open, "open", 1},
		{HalfOpen, "half-open", 2},
		{State(7), "State(7)", 7},
	} {
		if tc.s.String() != tc.name || float64(tc.s) != tc.gauge {
			t.Errorf("State %d: %q, gauge %v; want %q, %v", tc.s, tc.s.String(), float64(tc.s), tc.name, tc.gauge)
		}
	}
}

func TestBreakerConsecutiveFailures(t *testing.T) {
	var ch changes
	b := NewBreaker(BreakerOptions{ConsecutiveFailures: 3, OpenFor: 10 * time.Second, OnChange: ch.on})
	now := t0
	// Two failures, a success: the count starts again.
	for _, ok := range []bool{false, false, true, false, false} {
		if !call(b, now, ok) {
			t.Fatal("closed breaker refused a request")
		}
	}
	if s := b.Status(now); s.State != Closed || s.ConsecutiveFailures != 2 {
		t.Fatalf("after fail, fail, ok, fail, fail: %+v; want closed with 2 failures in a row", s)
	}
	call(b, now, false)
	if got := b.State(now); got != Open {
		t.Fatalf("after 3 failures in a row: %v; want open", got)
	}
	if diff := cmp.Diff([]string{"closed→open"}, ch.take()); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if s := b.Status(now); s.OpenUntil != now.Add(10*time.Second) {
		t.Errorf("open until %v; want %v", s.OpenUntil, now.Add(10*time.Second))
	}
}

func TestBreakerOpenThenHalfOpen(t *testing.T) {
	for _, trials := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d trials", trials), func(t *testing.T) {
			var ch changes
			const openFor = 10 * time.Second
			b := NewBreaker(BreakerOptions{ConsecutiveFailures: 1, OpenFor: openFor, HalfOpenRequests: trials, OnChange: ch.on})
			call(b, t0, false)
			// Open: every request refused, at once, until OpenFor is over.
			for _, at := range []time.Duration{0, time.Second, openFor - time.Nanosecond} {
				if tk, ok := b.Allow(t0.Add(at)); ok || tk != (Ticket{}) {
					t.Fatalf("open breaker admitted a request %v after opening", at)
				}
			}
			// Half-open: trials trials, and not one more until they end.
			half := t0.Add(openFor)
			var tickets []Ticket
			for range trials {
				tk, ok := b.Allow(half)
				if !ok {
					t.Fatalf("half-open breaker refused trial %d of %d", len(tickets)+1, trials)
				}
				tickets = append(tickets, tk)
			}
			if _, ok := b.Allow(half); ok {
				t.Fatalf("half-open breaker admitted %d trials; want %d", trials+1, trials)
			}
			if s := b.Status(half); s.State != HalfOpen || s.Trials != trials {
				t.Fatalf("status %+v; want half-open with %d trials out", s, trials)
			}
			// All but the last succeed: still half-open, and no more
			// trials: the next one would be one too many.
			for _, tk := range tickets[:trials-1] {
				b.Done(tk, true, half)
			}
			if _, ok := b.Allow(half); ok || b.State(half) != HalfOpen {
				t.Fatalf("after %d of %d trials passed: admitted %v, %v; want refused, half-open", trials-1, trials, ok, b.State(half))
			}
			b.Done(tickets[trials-1], true, half)
			if got := b.State(half); got != Closed {
				t.Fatalf("after every trial passed: %v; want closed", got)
			}
			if diff := cmp.Diff([]string{"closed→open", "open→half-open", "half-open→closed"}, ch.take()); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
			if !call(b, half, true) {
				t.Error("closed breaker refused a request")
			}
		})
	}
}

// TestBreakerCancel: a trial cancelled gives its place to the next
// request at once and judges nothing; a cancelled ticket of a closed
// breaker changes nothing either.
func TestBreakerCancel(t *testing.T) {
	const openFor = 5 * time.Second
	b := NewBreaker(BreakerOptions{ConsecutiveFailures: 2, OpenFor: openFor, HalfOpenRequests: 1})
	tk, _ := b.Allow(t0)
	call(b, t0, false)
	b.Cancel(tk, t0)
	if s := b.Status(t0); s.State != Closed || s.ConsecutiveFailures != 1 {
		t.Fatalf("closed, after a failure and a cancel: %+v; want closed with 1 failure", s)
	}
	call(b, t0, false)
	half := t0.Add(openFor)
	trial, ok := b.Allow(half)
	if !ok {
		t.Fatal("half-open breaker refused its trial")
	}
	if _, ok := b.Allow(half); ok {
		t.Fatal("half-open breaker let a second trial through with one allowed")
	}
	b.Cancel(trial, half)
	if s := b.Status(half); s.State != HalfOpen {
		t.Fatalf("after the trial was cancelled: %v, want still half-open", s.State)
	}
	next, ok := b.Allow(half)
	if !ok {
		t.Fatal("the cancelled trial's place was not given back")
	}
	b.Done(next, true, half)
	if s := b.State(half); s != Closed {
		t.Errorf("after the next trial succeeded: %v, want closed", s)
	}
}

func TestBreakerTrialFailureReopens(t *testing.T) {
	var ch changes
	const openFor = 5 * time.Second
	b := NewBreaker(BreakerOptions{ConsecutiveFailures: 2, OpenFor: openFor, HalfOpenRequests: 2, OnChange: ch.on})
	call(b, t0, false)
	call(b, t0, false)
	half := t0.Add(openFor)
	a, _ := b.Allow(half)
	c, _ := b.Allow(half)
	b.Done(a, true, half)
	failed := half.Add(time.Second)
	b.Done(c, false, failed)
	if s := b.Status(failed); s.State != Open || s.OpenUntil != failed.Add(openFor) {
		t.Fatalf("after a trial failed: %+v; want open until %v (OpenFor does not grow)", s, failed.Add(openFor))
	}
	if _, ok := b.Allow(failed.Add(openFor - 1)); ok {
		t.Error("reopened breaker admitted a request before OpenFor")
	}
	if _, ok := b.Allow(failed.Add(openFor)); !ok {
		t.Error("reopened breaker refused a trial after OpenFor")
	}
	if diff := cmp.Diff([]string{"closed→open", "open→half-open", "half-open→open", "open→half-open"}, ch.take()); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
}

func TestBreakerStaleTicketsIgnored(t *testing.T) {
	const openFor = 10 * time.Second
	b := NewBreaker(BreakerOptions{ConsecutiveFailures: 2, OpenFor: openFor})
	// Three requests go out while closed; two fail and open it.
	slow, _ := b.Allow(t0)
	call(b, t0, false)
	call(b, t0, false)
	half := t0.Add(openFor)
	trial, _ := b.Allow(half)
	// The slow one from before ends, failed, while the trial is out: it
	// says nothing of the destination now, and must not reopen it.
	b.Done(slow, false, half)
	if got := b.State(half); got != HalfOpen {
		t.Fatalf("a ticket of the closed state moved the half-open breaker to %v", got)
	}
	// Nor may a request never admitted report.
	b.Done(Ticket{}, false, half)
	if got := b.State(half); got != HalfOpen {
		t.Fatalf("the zero ticket moved the half-open breaker to %v", got)
	}
	b.Done(trial, true, half)
	if got := b.State(half); got != Closed {
		t.Fatalf("after the trial passed: %v; want closed", got)
	}
	// A failed trial's ticket reported again, after it closed, is void.
	b.Done(trial, false, half)
	if s := b.Status(half); s.State != Closed || s.ConsecutiveFailures != 0 {
		t.Fatalf("a half-open ticket counted in the closed state: %+v", s)
	}
	// The zero ticket in the closed state counts nothing either.
	for range 5 {
		b.Done(Ticket{}, false, half)
	}
	if s := b.Status(half); s.State != Closed || s.ConsecutiveFailures != 0 {
		t.Fatalf("the zero ticket counted in the closed state: %+v", s)
	}
}

func TestBreakerLostTrials(t *testing.T) {
	// A trial that never reports must not hold the breaker half-open,
	// refusing everything, for ever; one slower than OpenFor still
	// counts when it does report.
	const openFor = 10 * time.Second
	half := t0.Add(openFor)
	later := half.Add(openFor)
	for _, tc := range []struct {
		name string
		// what the first trial, and the second (of the next round),
		// report; "" never
		first, second string
		want          State
	}{
		{"first lost, second passes", "", "ok", Closed},
		{"first lost, second fails", "", "fail", Open},
		{"first slow and passes", "ok", "", Closed},
		{"first slow and fails", "fail", "", Open},
		{"first passes after the second failed", "ok", "fail", Open},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBreaker(BreakerOptions{ConsecutiveFailures: 1, OpenFor: openFor})
			call(b, t0, false)
			first, ok := b.Allow(half)
			if !ok {
				t.Fatal("no trial")
			}
			if _, ok := b.Allow(later.Add(-1)); ok {
				t.Fatal("second trial admitted while the first is out, within OpenFor")
			}
			second, ok := b.Allow(later)
			if !ok {
				t.Fatal("no new trial OpenFor after the first, unreported")
			}
			if _, ok := b.Allow(later); ok {
				t.Fatal("two trials in the new round; want 1")
			}
			if tc.second != "" {
				b.Done(second, tc.second == "ok", later)
			}
			if tc.first != "" {
				b.Done(first, tc.first == "ok", later)
			}
			if got := b.State(later); got != tc.want {
				t.Errorf("%v; want %v", got, tc.want)
			}
		})
	}
}

func TestBreakerFailureRate(t *testing.T) {
	const w = 10 * time.Second
	for _, tc := range []struct {
		name     string
		rate     float64
		min      int
		outcomes string // o: success, x: failure, one a 100ms
		openAt   int    // the outcome after which it opens; -1: never
	}{
		{"under the minimum", 0.5, 10, "xxxxxxxxx", -1},
		{"at the minimum", 0.5, 10, "xxxxxxxxxx", 9},
		{"rate reached exactly", 0.5, 4, "ooxx", 3},
		{"rate just under", 0.5, 4, "oooxx", -1}, // 2 of 5
		{"rate after more", 0.5, 4, "oooxxx", 5}, // 3 of 6
		{"success cannot open", 0.1, 2, "xooooooooo", -1},
		{"rate 1: every one failed", 1, 3, "xxx", 2},
		{"rate 1: one success holds", 1, 3, "xxoxxx", -1},
		{"minimum zero is one", 0.5, 0, "x", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBreaker(BreakerOptions{FailureRate: tc.rate, Window: w, MinRequests: tc.min, OpenFor: time.Second})
			opened := -1
			for i, c := range tc.outcomes {
				now := t0.Add(time.Duration(i) * 100 * time.Millisecond)
				call(b, now, c == 'o')
				if opened < 0 && b.State(now) == Open {
					opened = i
				}
			}
			if opened != tc.openAt {
				t.Errorf("opened after outcome %d; want %d", opened, tc.openAt)
			}
		})
	}
}

func TestBreakerFailureRateWindowSlides(t *testing.T) {
	const w = 10 * time.Second
	b := NewBreaker(BreakerOptions{FailureRate: 0.5, Window: w, MinRequests: 4, OpenFor: time.Second})
	// Three failures, then a window of quiet: they are forgotten.
	for range 3 {
		call(b, t0, false)
	}
	if s := b.Status(t0); s.Outcomes != 3 || s.Failures != 3 {
		t.Fatalf("status %+v; want 3 outcomes, 3 failures", s)
	}
	later := t0.Add(w)
	if s := b.Status(later); s.State != Closed || s.Outcomes != 0 || s.Failures != 0 {
		t.Fatalf("a window later: %+v; want closed, nothing counted", s)
	}
	// So one more failure is one of one, under the minimum.
	call(b, later, false)
	if got := b.State(later); got != Closed {
		t.Fatalf("a failure after the old ones expired opened it: %v", got)
	}
	// Within the window they count: three more open it.
	for range 3 {
		call(b, later.Add(w/2), false)
	}
	if got := b.State(later.Add(w / 2)); got != Open {
		t.Fatalf("4 failures of 4 within the window: %v; want open", got)
	}
}

func TestBreakerBothTriggers(t *testing.T) {
	b := NewBreaker(BreakerOptions{ConsecutiveFailures: 5, FailureRate: 0.5, Window: time.Minute, MinRequests: 20, OpenFor: time.Second})
	// 5 in a row opens it long before the rate has its 20.
	for i := range 5 {
		call(b, t0, false)
		if want := map[bool]State{false: Closed, true: Open}[i == 4]; b.State(t0) != want {
			t.Fatalf("after %d failures: %v; want %v", i+1, b.State(t0), want)
		}
	}
	// And alternating failures, never two in a row, open it by the rate.
	b = NewBreaker(BreakerOptions{ConsecutiveFailures: 5, FailureRate: 0.5, Window: time.Minute, MinRequests: 20, OpenFor: time.Second})
	for i := range 20 {
		call(b, t0, i%2 == 0)
	}
	if got := b.State(t0); got != Open {
		t.Fatalf("10 of 20 failed: %v; want open", got)
	}
}

func TestBreakerClosingForgets(t *testing.T) {
	// Outcomes counted before it opened do not count after it closes:
	// one failure more would otherwise open it again at once.
	b := NewBreaker(BreakerOptions{ConsecutiveFailures: 3, FailureRate: 0.5, Window: time.Minute, MinRequests: 3, OpenFor: time.Second})
	for range 3 {
		call(b, t0, false)
	}
	half := t0.Add(time.Second)
	call(b, half, true)
	if got := b.State(half); got != Closed {
		t.Fatalf("%v; want closed", got)
	}
	call(b, half, false)
	if s := b.Status(half); s.State != Closed || s.ConsecutiveFailures != 1 || s.Outcomes != 1 || s.Failures != 1 {
		t.Fatalf("after closing and one failure: %+v; want closed, 1 of 1 failed", s)
	}
}

func TestBreakerOff(t *testing.T) {
	b := NewBreaker(BreakerOptions{})
	for i := range 1000 {
		if !call(b, t0.Add(time.Duration(i)), false) {
			t.Fatal("breaker with no trigger refused a request")
		}
	}
}

func TestNewBreakerPanics(t *testing.T) {
	for _, o := range []BreakerOptions{
		{ConsecutiveFailures: -1, OpenFor: time.Second},
		{FailureRate: 0.5, OpenFor: time.Second},
		{FailureRate: 1.5, Window: time.Second, OpenFor: time.Second},
		{FailureRate: -0.5, Window: time.Second, OpenFor: time.Second},
		{ConsecutiveFailures: 1},
		{ConsecutiveFailures: 1, OpenFor: -time.Second},
		{ConsecutiveFailures: 1, OpenFor: time.Second, HalfOpenRequests: -1},
		{ConsecutiveFailures: 1, OpenFor: time.Second, MinRequests: -1},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewBreaker(%+v) did not panic", o)
				}
			}()
			NewBreaker(o)
		}()
	}
}

// TestBreakerOnChangeOrdered changes state from many goroutines at once:
// the callback's calls, one at a time, form one chain of changes.
func TestBreakerOnChangeOrdered(t *testing.T) {
	var ch changes
	var inside atomic.Int32
	on := func(from, to State) {
		if inside.Add(1) != 1 {
			t.Error("OnChange called while another call was running")
		}
		ch.on(from, to)
		inside.Add(-1)
	}
	var clock atomic.Int64 // nanoseconds since t0
	b := NewBreaker(BreakerOptions{ConsecutiveFailures: 1, OpenFor: time.Millisecond, HalfOpenRequests: 2, OnChange: on})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				now := t0.Add(time.Duration(clock.Add(int64(100 * time.Microsecond))))
				tk, ok := b.Allow(now)
				if ok {
					b.Done(tk, (g+i)%3 != 0, now)
				}
			}
		})
	}
	wg.Wait()
	got := ch.take()
	if len(got) < 10 {
		t.Fatalf("only %d changes: %v", len(got), got)
	}
	last := Closed
	for i, c := range got {
		from, to, _ := strings.Cut(c, "→")
		if from != last.String() {
			t.Fatalf("change %d is %s, after %s: the chain is broken: %v", i, c, last, got)
		}
		last = map[string]State{"closed": Closed, "open": Open, "half-open": HalfOpen}[to]
	}
}

// TestBreakerHalfOpenConcurrent lets many goroutines at a half-open
// breaker at once: exactly HalfOpenRequests get through.
func TestBreakerHalfOpenConcurrent(t *testing.T) {
	for _, trials := range []int{1, 5} {
		b := NewBreaker(BreakerOptions{ConsecutiveFailures: 1, OpenFor: time.Second, HalfOpenRequests: trials})
		call(b, t0, false)
		half := t0.Add(time.Second)
		var admitted atomic.Int64
		var wg sync.WaitGroup
		for range 64 {
			wg.Go(func() {
				for range 100 {
					if _, ok := b.Allow(half); ok {
						admitted.Add(1)
					}
				}
			})
		}
		wg.Wait()
		if got := admitted.Load(); got != int64(trials) {
			t.Errorf("%d trials admitted at once; want %d", got, trials)
		}
	}
}

func BenchmarkBreakerAllowDone(b *testing.B) {
	br := NewBreaker(BreakerOptions{ConsecutiveFailures: 5, FailureRate: 0.5, Window: 10 * time.Second, MinRequests: 20, OpenFor: 10 * time.Second})
	now := t0
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		now = now.Add(time.Microsecond)
		tk, ok := br.Allow(now)
		if ok {
			br.Done(tk, i%10 != 0, now)
		}
		i++
	}
}

func BenchmarkBreakerAllowDoneParallel(b *testing.B) {
	br := NewBreaker(BreakerOptions{ConsecutiveFailures: 5, FailureRate: 0.5, Window: 10 * time.Second, MinRequests: 20, OpenFor: 10 * time.Second})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		now := t0
		for pb.Next() {
			now = now.Add(time.Microsecond)
			if tk, ok := br.Allow(now); ok {
				br.Done(tk, true, now)
			}
		}
	})
}

func BenchmarkBreakerOpen(b *testing.B) {
	br := NewBreaker(BreakerOptions{ConsecutiveFailures: 1, OpenFor: time.Hour})
	call(br, t0, false)
	b.ReportAllocs()
	for b.Loop() {
		br.Allow(t0)
	}
}
