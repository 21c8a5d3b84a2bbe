package ratelimit

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func mustRate(t testing.TB, s string) Rate {
	t.Helper()
	r, err := ParseRate(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestBurstThenSteadyRate(t *testing.T) {
	r := mustRate(t, "50/s")
	l := New(Limit{Name: "a", Key: SourceIdentity, Rate: r, Burst: 10})
	for i := range 10 {
		d := l.Allow("web", t0)
		want := Decision{Allowed: true, Limit: r, Burst: 10, Remaining: 9 - i, Reset: time.Duration(i+1) * 20 * time.Millisecond}
		if diff := cmp.Diff(want, d); diff != "" {
			t.Fatalf("request %d (-want +got):\n%s", i, diff)
		}
	}
	d := l.Allow("web", t0)
	want := Decision{Limit: r, Burst: 10, RetryAfter: 20 * time.Millisecond, Reset: 200 * time.Millisecond}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Fatalf("over the burst (-want +got):\n%s", diff)
	}
	// Then one request every 20ms, and no more: driven at 200/s for 10s
	// (every 5ms), 500 get through, plus the burst.
	allowed := 0
	for i := 1; i <= 2000; i++ {
		if l.Allow("web", t0.Add(time.Duration(i)*5*time.Millisecond)).Allowed {
			allowed++
		}
	}
	if allowed != 500 {
		t.Errorf("%d allowed in 10s at 50/s; want 500", allowed)
	}
}

func TestRetryAfterExact(t *testing.T) {
	for _, tc := range []struct {
		rate  string
		burst int
		retry time.Duration
	}{
		{"50/s", 1, 20 * time.Millisecond},
		{"3/s", 2, 333333333 * time.Nanosecond}, // the limiter allows a wait under 1ns
		{"600/m", 0, 100 * time.Millisecond},
		{"10/h", 1, 6 * time.Minute},
		{"1/d", 1, Day},
	} {
		t.Run(tc.rate, func(t *testing.T) {
			// Two limiters in the same state: a probe that is allowed
			// takes the token it probes for.
			var d Decision
			var ls [2]*Local
			for i := range ls {
				ls[i] = New(Limit{Name: "a", Key: SourceIP, Rate: mustRate(t, tc.rate), Burst: tc.burst})
				for ls[i].Allow("10.0.0.1", t0).Allowed {
				}
				d = ls[i].Allow("10.0.0.1", t0)
			}
			if d.RetryAfter != tc.retry {
				t.Fatalf("RetryAfter = %v; want %v", d.RetryAfter, tc.retry)
			}
			// The limiter counts tokens in float64: a nanosecond early is
			// within its rounding, a microsecond is not.
			if d := ls[0].Allow("10.0.0.1", t0.Add(tc.retry-time.Microsecond)); d.Allowed || d.RetryAfter != time.Microsecond {
				t.Errorf("1µs before RetryAfter: %+v; want refused, retry after 1µs", d)
			}
			if d := ls[1].Allow("10.0.0.1", t0.Add(tc.retry)); !d.Allowed || d.RetryAfter != 0 {
				t.Errorf("after RetryAfter: %+v; want allowed", d)
			}
		})
	}
}

func TestReset(t *testing.T) {
	l := New(Limit{Name: "a", Key: SourceIP, Rate: mustRate(t, "10/s"), Burst: 5})
	for range 3 {
		l.Allow("k", t0)
	}
	d := l.Allow("k", t0.Add(50*time.Millisecond)) // 2 + 0.5 - 1 = 1.5 tokens
	if d.Remaining != 1 || d.Reset != 350*time.Millisecond {
		t.Errorf("Remaining %d, Reset %v; want 1, 350ms", d.Remaining, d.Reset)
	}
	if d := l.Allow("k", t0.Add(time.Hour)); d.Remaining != 4 || d.Reset != 100*time.Millisecond {
		t.Errorf("after an hour: Remaining %d, Reset %v; want 4, 100ms", d.Remaining, d.Reset)
	}
}

func TestDefaultBurstApplied(t *testing.T) {
	l := New(Limit{Name: "a", Key: SourceIP, Rate: mustRate(t, "600/m")})
	n := 0
	for l.Allow("k", t0).Allowed {
		n++
	}
	if n != 10 {
		t.Errorf("burst %d; want 10 (600/m per second)", n)
	}
}

func TestOverrides(t *testing.T) {
	l := New(Limit{
		Name: "a", Key: SourceIdentity, Rate: mustRate(t, "1/s"), Burst: 2,
		Overrides: []Override{
			{Value: "spiffe://td/ns/shop/sa/batch", Rate: mustRate(t, "100/s"), Burst: 50},
			{Value: "spiffe://td/ns/shop/sa/slow", Rate: mustRate(t, "120/m")}, // burst 2
		},
	})
	count := func(key string) (n int, last Decision) {
		for {
			d := l.Allow(key, t0)
			if !d.Allowed {
				return n, d
			}
			n++
		}
	}
	for _, tc := range []struct {
		key   string
		burst int
		rate  string
		retry time.Duration
	}{
		{"spiffe://td/ns/shop/sa/web", 2, "1/s", time.Second},
		{"spiffe://td/ns/shop/sa/batch", 50, "100/s", 10 * time.Millisecond},
		{"spiffe://td/ns/shop/sa/slow", 2, "120/m", 500 * time.Millisecond},
	} {
		n, d := count(tc.key)
		if n != tc.burst || d.Burst != tc.burst || d.Limit.String() != tc.rate || d.RetryAfter != tc.retry {
			t.Errorf("%s: %d allowed, %+v; want %d allowed at %s, retry after %v", tc.key, n, d, tc.burst, tc.rate, tc.retry)
		}
	}
}

func TestIndependentKeys(t *testing.T) {
	l := New(Limit{Name: "a", Key: SourceIP, Rate: mustRate(t, "1/s"), Burst: 1})
	if !l.Allow("10.0.0.1", t0).Allowed || l.Allow("10.0.0.1", t0).Allowed {
		t.Fatal("10.0.0.1: want one allowed, then refused")
	}
	if !l.Allow("10.0.0.2", t0).Allowed {
		t.Error("10.0.0.2 refused for 10.0.0.1's requests")
	}
	if !l.Allow("", t0).Allowed {
		t.Error("the empty key value has a bucket of its own")
	}
}

func TestKeyTableBound(t *testing.T) {
	l := New(Limit{Name: "a", Key: SourceIP, Rate: mustRate(t, "1/h"), Burst: 1, MaxKeys: 100})
	for i := range 1000 {
		if !l.Allow(strconv.Itoa(i), t0).Allowed {
			t.Fatalf("key %d: a new key's bucket is full", i)
		}
		if n := l.Len(); n > 100 {
			t.Fatalf("%d keys remembered; want at most 100", n)
		}
	}
	// 900..999 are remembered, their buckets empty; 0 was forgotten and
	// starts again with a full bucket (documented).
	if l.Allow("999", t0).Allowed {
		t.Error("999: a remembered key's empty bucket allowed a request")
	}
	if !l.Allow("0", t0).Allowed {
		t.Error("0: a forgotten key starts with a full bucket")
	}
	// Using a key keeps it: 900 (least recently used) goes when 0 came
	// back, 901 is used now, so the next new key pushes out 902.
	l.Allow("901", t0)
	l.Allow("new", t0)
	if l.Allow("901", t0).Allowed {
		t.Error("901 was forgotten though recently used")
	}
	if !l.Allow("902", t0).Allowed {
		t.Error("902 was remembered though least recently used")
	}
	if n := l.Len(); n != 100 {
		t.Errorf("%d keys; want 100", n)
	}
}

func TestDefaultMaxKeys(t *testing.T) {
	l := New(Limit{Name: "a", Key: SourceIP, Rate: mustRate(t, "1/s")})
	for i := range DefaultMaxKeys + 10 {
		l.Allow(strconv.Itoa(i), t0)
	}
	if n := l.Len(); n != DefaultMaxKeys {
		t.Errorf("%d keys; want %d", n, DefaultMaxKeys)
	}
}

// TestConcurrent drives one limiter from many goroutines at one instant
// (run it with -race): exactly the burst of each key is allowed.
func TestConcurrent(t *testing.T) {
	const keys, burst, workers = 8, 100, 16
	l := New(Limit{Name: "a", Key: SourceIP, Rate: mustRate(t, "1/h"), Burst: burst, MaxKeys: keys})
	var allowed [keys]atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range 200 {
				k := (w + i) % keys
				if l.Allow(strconv.Itoa(k), t0).Allowed {
					allowed[k].Add(1)
				}
			}
		})
	}
	wg.Wait()
	for k := range keys {
		if n := allowed[k].Load(); n != burst {
			t.Errorf("key %d: %d allowed; want %d", k, n, burst)
		}
	}
}

func BenchmarkAllow(b *testing.B) {
	l := New(Limit{Name: "a", Key: SourceIdentity, Rate: mustRate(b, "1000000/s")})
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		l.Allow("spiffe://cluster.local/ns/shop/sa/web", now)
	}
}

func BenchmarkAllowManyKeys(b *testing.B) {
	l := New(Limit{Name: "a", Key: SourceIP, Rate: mustRate(b, "50/s"), MaxKeys: 10_000})
	keys := make([]string, 100_000)
	for i := range keys {
		keys[i] = "10." + strconv.Itoa(i>>16) + "." + strconv.Itoa(i>>8&0xff) + "." + strconv.Itoa(i&0xff)
	}
	now := t0
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		now = now.Add(time.Microsecond)
		l.Allow(keys[i%len(keys)], now)
		i += 7919 // a prime: visits every key, no two in a row alike
	}
}

func BenchmarkAllowParallel(b *testing.B) {
	l := New(Limit{Name: "a", Key: SourceIP, Rate: mustRate(b, "1000000/s")})
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = "10.0.0." + strconv.Itoa(i)
	}
	b.ReportAllocs()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		k := keys[n.Add(1)%int64(len(keys))]
		now := t0
		for pb.Next() {
			now = now.Add(time.Microsecond)
			l.Allow(k, now)
		}
	})
}
