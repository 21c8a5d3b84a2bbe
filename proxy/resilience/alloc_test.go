package resilience

import (
	"net/http"
	"testing"
	"time"
)

// TestHotPathsDoNotAllocate pins what the benchmarks show: the calls
// every request makes allocate nothing.
func TestHotPathsDoNotAllocate(t *testing.T) {
	budget := NewRetryBudget(0.2, 3, 10*time.Second)
	breaker := NewBreaker(BreakerOptions{ConsecutiveFailures: 5, FailureRate: 0.5, Window: 10 * time.Second, MinRequests: 20, OpenFor: time.Second, HalfOpenRequests: 2})
	limiter := NewLimiter(10)
	cache := NewStaleCache(1<<20, 64<<10, time.Hour)
	cache.Put("k", resp("x", "Cache-Control", "max-age=60"), t0)
	req := http.Header{"Accept": {"*/*"}}
	respFields := http.Header{"Cache-Control": {"public, max-age=60, stale-if-error=600"}, "Age": {"3"}}
	now := t0
	rnd := func() float64 { return 0.5 }
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"RetryBudget", func() {
			now = now.Add(time.Millisecond)
			budget.Request(now)
			budget.TryRetry(now)
		}},
		{"Breaker", func() {
			now = now.Add(time.Millisecond)
			if tk, ok := breaker.Allow(now); ok {
				breaker.Done(tk, now.Nanosecond()%3 != 0, now)
			}
			breaker.State(now)
			breaker.Status(now)
		}},
		{"Limiter", func() {
			if limiter.TryAcquire() {
				limiter.Release()
			}
		}},
		{"Backoff", func() {
			BackoffDelay(25*time.Millisecond, time.Second, 3, rnd)
			BackoffDelay(25*time.Millisecond, time.Second, 3, nil)
			RetryAfter("120", now)
		}},
		{"StaleCache", func() {
			cache.Get("k", t0.Add(time.Second))
			cache.Wants("k", t0.Add(time.Second))
			Cacheable("GET", 200, req, respFields)
		}},
	} {
		if n := testing.AllocsPerRun(1000, tc.f); n != 0 {
			t.Errorf("%s: %v allocations a call; want 0", tc.name, n)
		}
	}
}
