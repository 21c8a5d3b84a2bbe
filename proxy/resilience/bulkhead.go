package resilience

import (
	"fmt"
	"sync/atomic"
)

// Limiter is one bulkhead: it bounds how many of something a destination
// has at once, so one slow destination cannot take every connection,
// goroutine and buffer of the proxy. A destination has four: its
// connections, its pending requests (waiting for a connection), its
// active requests, and its retries in progress. Overflow is refused at
// once, never queued: the caller answers it (503) or, for a retry, does
// not make it.
//
// The zero Limiter is unlimited and still counts what is in use (for a
// metric). Safe for concurrent use; it is one atomic counter, and
// allocates nothing.
type Limiter struct {
	max   int64
	inUse atomic.Int64
}

// NewLimiter returns a limiter of max in use at once; 0 is unlimited. It
// panics if max is negative: a config validator refuses it.
func NewLimiter(max int64) *Limiter {
	if max < 0 {
		panic(fmt.Sprintf("resilience: NewLimiter(%d): want max >= 0", max))
	}
	return &Limiter{max: max}
}

// TryAcquire takes one unit if fewer than max are in use, and reports
// whether it did. Each unit taken is given back by one Release.
func (l *Limiter) TryAcquire() bool {
	if l.max == 0 {
		l.inUse.Add(1)
		return true
	}
	for {
		n := l.inUse.Load()
		if n >= l.max {
			return false
		}
		if l.inUse.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Release gives back a unit TryAcquire took. It panics when none is in
// use: a release without its acquire is a bug that would let the limiter
// admit more than max.
func (l *Limiter) Release() {
	if l.inUse.Add(-1) < 0 {
		l.inUse.Add(1)
		panic("resilience: Limiter.Release without TryAcquire")
	}
}

// InUse is how many units are taken now.
func (l *Limiter) InUse() int64 { return l.inUse.Load() }

// Max is the most units in use at once; 0 is unlimited.
func (l *Limiter) Max() int64 { return l.max }
