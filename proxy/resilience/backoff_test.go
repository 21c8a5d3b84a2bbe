package resilience

import (
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func fixed(f float64) func() float64 { return func() float64 { return f } }

func TestBackoffCeiling(t *testing.T) {
	const maxDuration = time.Duration(math.MaxInt64)
	for _, tc := range []struct {
		name           string
		base, maxDelay time.Duration
		attempt        int
		want           time.Duration
	}{
		{"first", 25 * time.Millisecond, time.Second, 0, 25 * time.Millisecond},
		{"second", 25 * time.Millisecond, time.Second, 1, 50 * time.Millisecond},
		{"fifth", 25 * time.Millisecond, time.Second, 5, 800 * time.Millisecond},
		{"capped", 25 * time.Millisecond, time.Second, 6, time.Second},
		{"cap exactly reached", 250 * time.Millisecond, time.Second, 2, time.Second},
		{"negative attempt", 25 * time.Millisecond, time.Second, -3, 25 * time.Millisecond},
		{"zero base", 0, time.Second, 10, 0},
		{"zero backoff", 0, 0, 3, 0},
		{"max below base", time.Second, 100 * time.Millisecond, 0, 100 * time.Millisecond},
		{"attempt 62, 1ns", 1, 0, 62, 1 << 62},
		{"attempt 63 overflows", 1, 0, 63, maxDuration},
		{"attempt 64 overflows", time.Millisecond, time.Minute, 64, time.Minute},
		{"huge attempt", time.Millisecond, time.Minute, math.MaxInt, time.Minute},
		{"shift would overflow", time.Hour, 0, 40, maxDuration},
		{"just below overflow", time.Second, 0, 33, time.Second << 33},
		{"just over overflow", time.Second, 0, 34, maxDuration},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := BackoffCeiling(tc.base, tc.maxDelay, tc.attempt); got != tc.want {
				t.Errorf("BackoffCeiling(%v, %v, %d) = %v; want %v", tc.base, tc.maxDelay, tc.attempt, got, tc.want)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	const base, maxDelay = 100 * time.Millisecond, 10 * time.Second
	for _, tc := range []struct {
		name    string
		attempt int
		rnd     float64
		want    time.Duration
	}{
		{"low end", 2, 0, 0},
		{"middle", 2, 0.5, 200 * time.Millisecond},
		{"a quarter", 3, 0.25, 200 * time.Millisecond},
		{"below 1", 0, 0.999, 99900 * time.Microsecond},
		{"1 is the top", 2, 1, 400 * time.Millisecond},
		{"above 1 is the top", 2, 7, 400 * time.Millisecond},
		{"negative is 0", 2, -0.5, 0},
		{"NaN is 0", 2, math.NaN(), 0},
		{"capped", 20, 0.5, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := BackoffDelay(base, maxDelay, tc.attempt, fixed(tc.rnd)); got != tc.want {
				t.Errorf("BackoffDelay(%v, %v, %d, %v) = %v; want %v", base, maxDelay, tc.attempt, tc.rnd, got, tc.want)
			}
		})
	}
	// Near the largest Duration, float64 rounds up to 2^63: the delay
	// must still not overflow.
	for _, f := range []float64{0.5, 1 - 1e-16, math.Nextafter(1, 0)} {
		if got := BackoffDelay(time.Hour, 0, 100, fixed(f)); got < 0 || got > time.Duration(math.MaxInt64) || (f > 0.9 && got < time.Duration(math.MaxInt64/2)) {
			t.Errorf("Delay(100, %v) of an unbounded backoff = %v", f, got)
		}
	}
}

// TestBackoffFullJitter draws delays with the real random source: they
// spread over the whole of [0, ceiling), not near its top or bottom.
func TestBackoffFullJitter(t *testing.T) {
	const base, maxDelay = 10 * time.Millisecond, time.Second
	for _, attempt := range []int{0, 3, 10} {
		c := BackoffCeiling(base, maxDelay, attempt)
		var quarters [4]int
		const n = 4000
		for range n {
			d := BackoffDelay(base, maxDelay, attempt, nil)
			if d < 0 || d >= c {
				t.Fatalf("Delay(%d) = %v; want in [0, %v)", attempt, d, c)
			}
			quarters[d*4/c]++
		}
		for i, q := range quarters {
			// Each quarter expects n/4 = 1000; a fair source is within
			// ±200 but for one run in about 10^11.
			if q < n/4-200 || q > n/4+200 {
				t.Errorf("attempt %d: %d of %d delays in quarter %d of [0, %v); want about %d", attempt, q, n, i, c, n/4)
			}
		}
	}
	// A seeded source gives the caller's sequence.
	r := rand.New(rand.NewPCG(1, 2))
	r2 := rand.New(rand.NewPCG(1, 2))
	for range 10 {
		if got, want := BackoffDelay(base, maxDelay, 4, r.Float64), time.Duration(r2.Float64()*float64(160*time.Millisecond)); got != want {
			t.Fatalf("Delay with a seeded source = %v; want %v", got, want)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		value string
		want  time.Duration
		ok    bool
	}{
		{"seconds", "120", 2 * time.Minute, true},
		{"zero", "0", 0, true},
		{"leading zeros", "007", 7 * time.Second, true},
		{"white space", " \t5 ", 5 * time.Second, true},
		{"largest Duration in seconds", "9223372036", 9223372036 * time.Second, true},
		{"too many seconds", "9223372037", math.MaxInt64, true},
		{"far too many seconds", "99999999999999999999999999", math.MaxInt64, true},
		{"IMF-fixdate", "Sun, 01 Mar 2026 12:01:30 GMT", 90 * time.Second, true},
		{"RFC 850 date", "Sunday, 01-Mar-26 12:00:10 GMT", 10 * time.Second, true},
		{"asctime date", "Sun Mar  1 12:00:03 2026", 3 * time.Second, true},
		{"date now", "Sun, 01 Mar 2026 12:00:00 GMT", 0, true},
		{"date past", "Sun, 01 Mar 2026 11:00:00 GMT", 0, true},
		{"empty", "", 0, false},
		{"blank", "  ", 0, false},
		{"negative", "-5", 0, false},
		{"plus sign", "+5", 0, false},
		{"fraction", "1.5", 0, false},
		{"unit", "5s", 0, false},
		{"two numbers", "5 6", 0, false},
		{"hex", "0x10", 0, false},
		{"bad date", "Sun, 41 Mar 2026 12:00:00 GMT", 0, false},
		{"date without zone", "Sun, 01 Mar 2026 12:00:00", 0, false},
		{"words", "later", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := RetryAfter(tc.value, now)
			if got != tc.want || ok != tc.ok {
				t.Errorf("RetryAfter(%q) = %v, %v; want %v, %v", tc.value, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"120", "0", "Sun, 01 Mar 2026 12:01:30 GMT", "Sunday, 01-Mar-26 12:00:10 GMT", "Sun Mar  1 12:00:03 2026", "-1", "99999999999999999999", ""} {
		f.Add(s)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := RetryAfter(v, now)
		if d < 0 {
			t.Fatalf("RetryAfter(%q) = %v: negative", v, d)
		}
		if !ok && d != 0 {
			t.Fatalf("RetryAfter(%q) = %v, false: a refused value has no delay", v, d)
		}
		// A number is what it says, in seconds.
		if s := trimOWS(v); ok && isDigits(s) && len(s) < 10 {
			n, _ := strconv.ParseInt(s, 10, 64)
			if want := time.Duration(n) * time.Second; d != want {
				t.Fatalf("RetryAfter(%q) = %v; want %v", v, d, want)
			}
		}
		// A date is as net/http reads it.
		if s := trimOWS(v); ok && !isDigits(s) {
			if when, err := http.ParseTime(s); err != nil || d != max(when.Sub(now), 0) {
				t.Fatalf("RetryAfter(%q) = %v; net/http reads %v, %v", v, d, when, err)
			}
		}
	})
}

func BenchmarkBackoffDelay(b *testing.B) {
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		BackoffDelay(25*time.Millisecond, time.Second, i&7, nil)
		i++
	}
}

func BenchmarkRetryAfterSeconds(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		RetryAfter("120", t0)
	}
}

func BenchmarkRetryAfterDate(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		RetryAfter("Sun, 01 Mar 2026 12:01:30 GMT", t0)
	}
}
