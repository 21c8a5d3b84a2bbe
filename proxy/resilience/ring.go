package resilience

import "time"

// slots is how many buckets a sliding window is cut into: the window
// moves a tenth of its length at a time.
const slots = 10

// ring counts two quantities, a and b, over a sliding window cut into
// slots buckets of equal width, plus one bucket more that b may be
// counted over (see RetryBudget). It is a fixed array: counting allocates
// nothing. Not safe for concurrent use: its owner locks.
type ring struct {
	width   time.Duration // of a bucket: the window / slots
	started bool
	origin  time.Time // the first time seen: bucket 0 starts there
	cur     int64     // the bucket now is in, counted from origin
	b       [slots + 1]bucket
}

type bucket struct{ a, b int64 }

func newRing(window time.Duration) ring {
	return ring{width: max(window/slots, 1)}
}

// advance moves the ring to now: the buckets it passes are emptied. A
// time before the latest seen (a caller that read the clock before
// another but locked after it) counts in the current bucket.
func (r *ring) advance(now time.Time) {
	if !r.started {
		r.started, r.origin = true, now
		return
	}
	i := int64(now.Sub(r.origin) / r.width)
	if i <= r.cur {
		return
	}
	if i-r.cur >= int64(len(r.b)) {
		clear(r.b[:])
	} else {
		for j := r.cur + 1; j <= i; j++ {
			r.b[j%int64(len(r.b))] = bucket{}
		}
	}
	r.cur = i
}

// at is the current bucket; advance first.
func (r *ring) at() *bucket { return &r.b[r.cur%int64(len(r.b))] }

// sum is a over the newest na buckets and b over the newest nb (each at
// most slots+1), the current one included; advance first.
func (r *ring) sum(na, nb int) (a, b int64) {
	n := int64(len(r.b))
	for k := range int64(max(na, nb)) {
		i := (r.cur - k) % n
		if i < 0 {
			i += n // before the first bucket: empty since reset
		}
		x := r.b[i]
		if k < int64(na) {
			a += x.a
		}
		if k < int64(nb) {
			b += x.b
		}
	}
	return a, b
}

// reset empties the ring; the next time seen starts bucket 0.
func (r *ring) reset() {
	clear(r.b[:])
	r.started, r.cur = false, 0
}
