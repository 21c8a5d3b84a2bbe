package resilience

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// RetryBudget bounds the retries to one destination by the requests
// sent to it (as Finagle's and Linkerd's retry budgets do): each
// original request deposits ratio of a token, each retry withdraws a
// whole one, and a retry without a token is not made. Deposits expire
// with the window, so a burst of traffic long ago cannot fund a retry
// storm now; and a floor of minPerSecond retries a second is allowed
// whatever the traffic, so a destination called rarely can still be
// retried.
//
// What it guarantees:
//   - a retry funded by deposits is granted only if, with it, the retries
//     so funded in the window before it are at most ratio × the requests
//     in that window; so in any window they are at most ratio × the
//     requests in it and in the window before;
//   - the floor is a token bucket that refills minPerSecond tokens a
//     second and holds a second's worth (at least one): over any s
//     seconds it grants at most minPerSecond × s + max(1, minPerSecond);
//   - so under steady traffic, failing or not, the retries in a window
//     are at most ratio × its requests + minPerSecond × (its seconds + 1).
//
// The window is cut into ten buckets (a window not a multiple of 10ns is
// rounded down to one): a deposit counts for between nine tenths of the
// window and the whole of it, a withdrawal for between the whole window
// and a tenth more, so the bounds hold over the exact window and the
// budget errs on the side of fewer retries: under steady failure it
// grants about nine tenths of ratio (0.18 of the requests for 0.2). The
// floor is a token bucket rather than Finagle's reserve of minPerSecond
// × window tokens because the reserve, refilled by a quiet spell, can be
// spent in one burst (30 retries at once for 3/s over 10s): the storm a
// budget is there to prevent.
//
// Safe for concurrent use; Request and TryRetry allocate nothing.
type RetryBudget struct {
	ratio float64
	rate  float64 // the floor's tokens a second
	cap   float64 // and most it holds

	mu     sync.Mutex
	ring   ring      // a: requests, b: retries funded by them; guarded by mu
	tokens float64   // the floor's; guarded by mu
	seen   bool      // last is set; guarded by mu
	last   time.Time // when the floor was last refilled; guarded by mu
}

// NewRetryBudget returns the retry budget that lets ratio retries per
// request (0.2: one retry for five requests) plus minPerSecond retries a
// second, deposits expiring after window. It starts with the floor full and no
// deposits. It panics if ratio or minPerSecond is negative or not a
// number, or window is not positive: a config validator refuses them.
func NewRetryBudget(ratio, minPerSecond float64, window time.Duration) *RetryBudget {
	if !(ratio >= 0) || !(minPerSecond >= 0) || math.IsInf(ratio, 0) || math.IsInf(minPerSecond, 0) || window <= 0 {
		panic(fmt.Sprintf("resilience: NewRetryBudget(%v, %v, %v): want a finite ratio and minPerSecond >= 0 and a window > 0", ratio, minPerSecond, window))
	}
	b := &RetryBudget{ratio: ratio, rate: minPerSecond, ring: newRing(window)}
	if minPerSecond > 0 {
		b.cap = max(1, minPerSecond)
		b.tokens = b.cap
	}
	return b
}

// Request deposits one original request's share of a token. Retries are
// not requests: call it once per request, before or after its first try.
func (b *RetryBudget) Request(now time.Time) {
	b.mu.Lock()
	b.ring.advance(now)
	b.ring.at().a++
	b.mu.Unlock()
}

// epsilon absorbs float64 rounding of ratio × requests (0.29 × 100 is
// 28.999999999999996): without it the 29th retry would be refused.
const epsilon = 1e-9

// TryRetry withdraws a token for one retry and reports whether there was
// one: from the deposits first, then from the floor. A retry refused is
// not made, and costs nothing.
func (b *RetryBudget) TryRetry(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ring.advance(now)
	// Deposits count over the newest slots buckets, withdrawals over one
	// more: see the type's doc.
	requests, retries := b.ring.sum(slots, slots+1)
	if float64(retries+1) <= b.ratio*float64(requests)+epsilon {
		b.ring.at().b++
		return true
	}
	if b.rate == 0 {
		return false
	}
	if !b.seen {
		b.seen, b.last = true, now
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens = min(b.cap, b.tokens+d.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}
