package ratelimit

import (
	"math"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// Decision is the answer to one request (or new connection).
type Decision struct {
	// Allowed says whether the request may go on; it took a token (a
	// quota: it was counted).
	Allowed bool
	// Limit is the key value's rate: Limit.N requests per Limit.Window
	// (the RateLimit-Policy field's quota and window), and Burst the
	// bucket's size (0 for a quota).
	Limit Rate
	Burst int
	// Remaining is the tokens left in the bucket, rounded down (a quota:
	// the requests left in the window): how many requests the key value
	// may send now.
	Remaining int
	// RetryAfter is how long until the bucket holds a token again (a
	// quota: until its window ends), when the request was refused; 0
	// when it was allowed. Retry-After is it in whole seconds, rounded
	// up.
	RetryAfter time.Duration
	// Reset is how long until the bucket is full again (a quota: until
	// its window ends and its count starts again).
	Reset time.Duration
	// Source is where a Global's decision came from: FromRedis, or
	// FromFallback (the redis section's onError) with Err saying why, for
	// the caller to count and log. A Local's decision has neither.
	Source Source
	Err    error
}

// Local is the limiter of one Limit in one sidecar: a token bucket (a
// quota: a window's count) per key value, at most MaxKeys of them, the
// least recently used dropped first. Safe for concurrent use.
type Local struct {
	rate      Rate
	limit     rate.Limit
	burst     int
	overrides map[string]bucketConf

	mu      sync.Mutex
	keys    *simplelru.LRU[string, *rate.Limiter] // a rate's; guarded by mu
	windows *simplelru.LRU[string, *window]       // a quota's; guarded by mu
}

// window is one key value's quota window: when it ends, and the requests
// counted in it.
type window struct {
	end   time.Time
	count int64
}

type bucketConf struct {
	rate  Rate
	limit rate.Limit
	burst int
}

func confOf(r Rate, burst int) bucketConf {
	if burst == 0 {
		burst = r.DefaultBurst()
	}
	return bucketConf{rate: r, limit: rate.Limit(r.PerSecond()), burst: burst}
}

// New returns the limiter of l, which Validate has accepted. Its Global
// is not looked at: a global limit's local share is the caller's choice.
func New(l Limit) *Local {
	c := confOf(l.Rate, l.Burst)
	lo := &Local{rate: c.rate, limit: c.limit, burst: c.burst}
	if len(l.Overrides) > 0 {
		lo.overrides = make(map[string]bucketConf, len(l.Overrides))
		for _, o := range l.Overrides {
			lo.overrides[o.Value] = confOf(o.Rate, o.Burst)
		}
	}
	n := l.MaxKeys
	if n == 0 {
		n = DefaultMaxKeys
	}
	var err error
	if l.Quota() {
		lo.windows, err = simplelru.NewLRU[string, *window](n, nil)
	} else {
		lo.keys, err = simplelru.NewLRU[string, *rate.Limiter](n, nil)
	}
	if err != nil {
		panic("ratelimit: " + err.Error()) // only when n <= 0, which Validate refuses
	}
	return lo
}

// Allow takes a token from key's bucket at now, if it has one. A key
// value not seen before, or forgotten since (see MaxKeys), starts with a
// full bucket. Of a quota, Allow counts the request in key's window if
// the window has room (see TypeQuota): a key value not seen before,
// forgotten, or whose window has ended, starts a window at now.
func (l *Local) Allow(key string, now time.Time) Decision {
	c := bucketConf{rate: l.rate, limit: l.limit, burst: l.burst}
	if l.overrides != nil {
		if o, ok := l.overrides[key]; ok {
			c = o
		}
	}
	if l.windows != nil {
		return l.count(key, c.rate, now)
	}
	l.mu.Lock()
	b, ok := l.keys.Get(key)
	if !ok {
		b = rate.NewLimiter(c.limit, c.burst)
		l.keys.Add(key, b)
	}
	allowed := b.AllowN(now, 1)
	tokens := b.TokensAt(now)
	l.mu.Unlock()

	d := Decision{Allowed: allowed, Limit: c.rate, Burst: c.burst}
	if tokens > 0 {
		d.Remaining = int(math.Floor(tokens))
	}
	if !allowed {
		d.RetryAfter = after(1-tokens, c.limit)
	}
	d.Reset = after(float64(c.burst)-tokens, c.limit)
	return d
}

// count is Allow of a quota of r.
func (l *Local) count(key string, r Rate, now time.Time) Decision {
	l.mu.Lock()
	w, ok := l.windows.Get(key)
	if !ok {
		w = &window{}
		l.windows.Add(key, w)
	}
	if w.count == 0 || !now.Before(w.end) {
		w.end, w.count = now.Add(r.Window), 0
	}
	allowed := w.count < r.N
	if allowed {
		w.count++
	}
	count, end := w.count, w.end
	l.mu.Unlock()

	d := Decision{Allowed: allowed, Limit: r, Remaining: int(max(0, r.N-count)), Reset: end.Sub(now)}
	if !allowed {
		d.RetryAfter = d.Reset
	}
	return d
}

// Len is how many key values l remembers.
func (l *Local) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.windows != nil {
		return l.windows.Len()
	}
	return l.keys.Len()
}

// after is how long the bucket takes to gain tokens, to the nearest
// nanosecond. rate.Limiter allows a request that would wait less than a
// nanosecond, so a caller that waits RetryAfter finds its token (the
// limiter's float64 arithmetic may let one through a nanosecond sooner).
func after(tokens float64, limit rate.Limit) time.Duration {
	if tokens <= 0 {
		return 0
	}
	return time.Duration(math.Round(tokens / float64(limit) * float64(time.Second)))
}
