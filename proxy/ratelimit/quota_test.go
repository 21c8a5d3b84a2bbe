package ratelimit

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"sigs.k8s.io/yaml"
)

// TestQuotaWindow: a quota allows N requests in the window its first
// request starts, at any pace, refuses the rest until the window ends
// (Retry-After: the time left), and starts a new window with the first
// request after it; a refused request neither counts nor moves the end.
func TestQuotaWindow(t *testing.T) {
	r := mustRate(t, "5/m")
	l := New(Limit{Name: "q", Type: TypeQuota, Key: SourceIdentity, Rate: r})
	start := t0.Add(40 * time.Second) // not on a minute: the window is the key's own
	for i := range 5 {
		now := start.Add(time.Duration(i) * time.Second)
		want := Decision{Allowed: true, Limit: r, Remaining: 4 - i, Reset: time.Minute - time.Duration(i)*time.Second}
		if d := cmp.Diff(want, l.Allow("web", now)); d != "" {
			t.Fatalf("request %d (-want +got):\n%s", i, d)
		}
	}
	for _, at := range []time.Duration{5 * time.Second, 30 * time.Second, time.Minute - time.Nanosecond} {
		want := Decision{Limit: r, RetryAfter: time.Minute - at, Reset: time.Minute - at}
		if d := cmp.Diff(want, l.Allow("web", start.Add(at))); d != "" {
			t.Fatalf("at %v, over the quota (-want +got):\n%s", at, d)
		}
	}
	// The window ends a minute after its first request, whatever the
	// refusals: the next request starts a new one.
	next := start.Add(time.Minute + 10*time.Second)
	want := Decision{Allowed: true, Limit: r, Remaining: 4, Reset: time.Minute}
	if d := cmp.Diff(want, l.Allow("web", next)); d != "" {
		t.Fatalf("after the window (-want +got):\n%s", d)
	}
	// Another key value has its own window.
	if d := l.Allow("batch", start.Add(5*time.Second)); !d.Allowed || d.Remaining != 4 {
		t.Errorf("another key: %+v", d)
	}
}

// TestQuotaNoDoubleBurst: driven without a pause across the end of a
// minute, a quota of 600/m never lets more than 600 through in any
// minute starting at a request it counted; a fixed window on the clock
// would let 1200 through in the two seconds around the boundary.
func TestQuotaNoDoubleBurst(t *testing.T) {
	l := New(Limit{Name: "q", Type: TypeQuota, Key: Route, Rate: mustRate(t, "600/m")})
	var allowedAt []time.Time
	// 10 requests a second from 12:00:50 to 12:03:50, 1800 in all.
	for i := range 1800 {
		now := t0.Add(50*time.Second + time.Duration(i)*100*time.Millisecond)
		if l.Allow("GET /", now).Allowed {
			allowedAt = append(allowedAt, now)
		}
	}
	// Three windows (12:00:50, 12:01:50, 12:02:50), each filled in its
	// first 60 s at 10/s: every request allowed.
	if len(allowedAt) != 1800 {
		t.Fatalf("%d allowed at 10/s under 600/m; want all 1800", len(allowedAt))
	}
	l = New(Limit{Name: "q", Type: TypeQuota, Key: Route, Rate: mustRate(t, "600/m")})
	allowedAt = nil
	// 1000 a second from 12:00:59 for 3 s: 600 in the window from
	// 12:00:59, none until it ends at 12:01:59, then 600 again.
	for i := range 3000 {
		now := t0.Add(59*time.Second + time.Duration(i)*time.Millisecond)
		if l.Allow("GET /", now).Allowed {
			allowedAt = append(allowedAt, now)
		}
	}
	if len(allowedAt) != 600 {
		t.Fatalf("%d allowed in 3 s across 12:01:00; want 600 (one window)", len(allowedAt))
	}
	if last := allowedAt[599]; last != t0.Add(59*time.Second+599*time.Millisecond) {
		t.Errorf("the 600th allowed at %v", last.Sub(t0))
	}
}

// TestQuotaOverrides: an override's quota is the key value's, its window
// its own.
func TestQuotaOverrides(t *testing.T) {
	l := New(Limit{Name: "q", Type: TypeQuota, Key: SourceIdentity, Rate: mustRate(t, "2/h"),
		Overrides: []Override{{Value: "batch", Rate: mustRate(t, "3/s")}}})
	count := func(key string, at time.Duration) (n int) {
		for range 10 {
			if l.Allow(key, t0.Add(at)).Allowed {
				n++
			}
		}
		return n
	}
	if n := count("web", 0); n != 2 {
		t.Errorf("web: %d allowed; want 2", n)
	}
	if n := count("batch", 0); n != 3 {
		t.Errorf("batch: %d allowed; want 3", n)
	}
	if n := count("batch", time.Second); n != 3 {
		t.Errorf("batch a second later: %d allowed; want 3 (a new window)", n)
	}
	if n := count("web", time.Second); n != 0 {
		t.Errorf("web a second later: %d allowed; want 0 (its hour runs)", n)
	}
	if d := l.Allow("batch", t0.Add(time.Second)); d.Limit != mustRate(t, "3/s") || d.Burst != 0 {
		t.Errorf("batch's decision: %+v", d)
	}
}

// TestQuotaKeyTableBound: a quota's table holds MaxKeys key values.
func TestQuotaKeyTableBound(t *testing.T) {
	l := New(Limit{Name: "q", Type: TypeQuota, Key: SourceIP, Rate: mustRate(t, "1/h"), MaxKeys: 100})
	for i := range 1000 {
		l.Allow("10.0.0."+strconv.Itoa(i), t0)
	}
	if n := l.Len(); n != 100 {
		t.Errorf("%d key values remembered; want 100", n)
	}
}

// TestQuotaConcurrent: N and no more, however many ask at once.
func TestQuotaConcurrent(t *testing.T) {
	l := New(Limit{Name: "q", Type: TypeQuota, Key: Route, Rate: mustRate(t, "1000/h")})
	var mu sync.Mutex
	allowed := 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				if l.Allow("k", t0).Allowed {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if allowed != 1000 {
		t.Errorf("%d allowed; want 1000", allowed)
	}
}

func TestValidateQuota(t *testing.T) {
	doc := `
- {name: ok, type: quota, key: route, rate: 600/m, overrides: [{value: "GET /x", rate: 10/d}]}
- {name: rate, type: rate, key: route, rate: 600/m, burst: 300}
- {name: burst, type: quota, key: route, rate: 600/m, burst: 300, overrides: [{value: a, rate: 1/s, burst: 2}]}
- {name: kind, type: window, key: route, rate: 1/s}
- {name: conns, type: quota, per: connection, key: sourceIP, rate: 1000/d}
`
	var limits []Limit
	if err := yaml.UnmarshalStrict([]byte(doc), &limits); err != nil {
		t.Fatal(err)
	}
	if limits[0].Type != TypeQuota || !limits[0].Quota() || limits[1].Quota() {
		t.Errorf("decoded %+v", limits[:2])
	}
	want := []string{
		`rateLimits[2].burst: a quota has no burst: it allows the rate's N requests at any pace within its window; remove burst, or set type: rate for a token bucket`,
		`rateLimits[2].overrides[0].burst: a quota has no burst: it allows the rate's N requests at any pace within its window; remove burst, or set type: rate for a token bucket`,
		`rateLimits[3].type: "window": want rate (a token bucket: rate and burst) or quota (at most N requests per window)`,
	}
	var got []string
	if err := Validate(limits); err != nil {
		got = strings.Split(err.Error(), "\n")
	}
	if d := cmp.Diff(sortedCopy(want), sortedCopy(got)); d != "" {
		t.Errorf("problems (-want +got):\n%s", d)
	}
}

func TestShareQuota(t *testing.T) {
	l := share(Limit{Type: TypeQuota, Rate: mustRate(t, "600/m"), Overrides: []Override{{Value: "x", Rate: mustRate(t, "10/h")}}}, 4)
	if l.Rate != mustRate(t, "150/m") || l.Burst != 0 {
		t.Errorf("share of 600/m over 4: %s burst %d; want 150/m", l.Rate, l.Burst)
	}
	if o := l.Overrides[0]; o.Rate != mustRate(t, "3/h") || o.Burst != 0 {
		t.Errorf("share of the override 10/h over 4: %s burst %d; want 3/h (rounded up)", o.Rate, o.Burst)
	}
}

// TestGlobalQuotaExact: three sidecars on one server share a quota of
// 600/m: asked 2000 times in turn, as fast as they can, they allow 600
// exactly, each decision's Remaining the quota's count down, and the
// refused ones wait for the window's end; the window is the key's TTL.
func TestGlobalQuotaExact(t *testing.T) {
	s := startRedis(t)
	r := mustRate(t, "600/m")
	l := Limit{Name: "api-quota", Type: TypeQuota, Key: Route, Rate: r}
	var gs []*Global
	for range 3 {
		gs = append(gs, NewGlobal(l, newRedis(t, RedisConfig{Address: s.addr, Timeout: Duration(time.Second)})))
	}
	allowed := 0
	for i := range 2000 {
		d := gs[i%3].Allow(context.Background(), "GET /")
		if d.Source != FromRedis || d.Err != nil {
			t.Fatalf("request %d: %s, %v", i, d.Source, d.Err)
		}
		if d.Limit != r || d.Burst != 0 || d.Reset <= 0 || d.Reset > time.Minute {
			t.Fatalf("request %d: %+v", i, d)
		}
		if d.Allowed {
			allowed++
			if d.Remaining != 600-allowed || d.RetryAfter != 0 {
				t.Fatalf("request %d allowed: %+v; want %d remaining", i, d, 600-allowed)
			}
		} else if d.Remaining != 0 || d.RetryAfter != d.Reset {
			t.Fatalf("request %d refused: %+v; want 0 remaining, retry after the window's end", i, d)
		}
	}
	if allowed != 600 {
		t.Errorf("%d allowed by three sidecars; want 600", allowed)
	}
	c := redis.NewClient(&redis.Options{Addr: s.addr})
	defer c.Close()
	n, err := c.Get(context.Background(), "meshgate:rl:api-quota/quota:GET /").Int()
	ttl, err2 := c.PTTL(context.Background(), "meshgate:rl:api-quota/quota:GET /").Result()
	if err != nil || err2 != nil || n != 600 || ttl <= 0 || ttl > time.Minute {
		t.Errorf("the window's key: count %d (%v), TTL %v (%v); want 600, under a minute", n, err, ttl, err2)
	}
}

// TestGlobalQuotaWindow: the window ends its length after its first
// request (Redis expires the key), and the next request starts another.
func TestGlobalQuotaWindow(t *testing.T) {
	s := startRedis(t)
	g := NewGlobal(Limit{Name: "q", Type: TypeQuota, Key: SourceIP, Rate: mustRate(t, "3/s")},
		newRedis(t, RedisConfig{Address: s.addr, Timeout: Duration(time.Second)}))
	var refused Decision
	for i := range 5 {
		d := g.Allow(context.Background(), "10.0.0.1")
		if d.Allowed != (i < 3) {
			t.Fatalf("request %d: %+v", i, d)
		}
		if !d.Allowed {
			refused = d
		}
	}
	// Waiting as the answer says (Retry-After is whole seconds, rounded
	// up) finds a new window.
	time.Sleep(refused.RetryAfter + 10*time.Millisecond)
	if d := g.Allow(context.Background(), "10.0.0.1"); !d.Allowed || d.Remaining != 2 {
		t.Errorf("after the window: %+v; want allowed, 2 remaining", d)
	}
}

// TestGlobalQuotaOnError: without Redis, a quota's fallbacks: local
// counts this sidecar's share (N/instances, the window the same).
func TestGlobalQuotaOnError(t *testing.T) {
	s := startRedis(t)
	l := Limit{Name: "q", Type: TypeQuota, Key: Route, Rate: mustRate(t, "10/h")}
	mk := func(on OnError) *Global {
		return NewGlobal(l, newRedis(t, RedisConfig{Address: s.addr, OnError: on, Instances: 3, Timeout: Duration(100 * time.Millisecond)}))
	}
	open, closed, local := mk(FailOpen), mk(FailClosed), mk(FailLocal)
	s.stop()
	allowed := 0
	for i := range 10 {
		if d := open.Allow(context.Background(), "k"); !d.Allowed || d.Source != FromFallback {
			t.Errorf("failOpen %d: %+v", i, d)
		}
		if d := closed.Allow(context.Background(), "k"); d.Allowed || d.Source != FromFallback || d.RetryAfter != time.Second {
			t.Errorf("failClosed %d: %+v", i, d)
		}
		d := local.Allow(context.Background(), "k")
		if d.Source != FromFallback || d.Limit != mustRate(t, "4/h") {
			t.Errorf("local %d: %+v; want this sidecar's share, 4/h", i, d)
		}
		if d.Allowed {
			allowed++
		}
	}
	if allowed != 4 {
		t.Errorf("local share allowed %d; want 4 (10/h over 3 sidecars, rounded up)", allowed)
	}
}

func BenchmarkQuotaAllow(b *testing.B) {
	l := New(Limit{Name: "a", Type: TypeQuota, Key: SourceIdentity, Rate: mustRate(b, "1000000000/d")})
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		l.Allow("spiffe://cluster.local/ns/shop/sa/web", now)
	}
}

func BenchmarkGlobalQuotaAllow(b *testing.B) {
	s := startRedis(b)
	g := NewGlobal(Limit{Name: "a", Type: TypeQuota, Key: SourceIdentity, Rate: mustRate(b, "1000000000/d")},
		newRedis(b, RedisConfig{Address: s.addr, Timeout: Duration(time.Second)}))
	ctx := context.Background()
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		if d := g.Allow(ctx, "spiffe://cluster.local/ns/shop/sa/web"); d.Source != FromRedis || !d.Allowed {
			b.Fatal(d.Err)
		}
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "µs/op")
}
