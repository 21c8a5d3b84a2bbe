package resilience

import (
	"math"
	"math/rand/v2"
	"net/http"
	"time"
)

// Exponential backoff with full jitter: the wait before a retry is drawn
// uniformly between zero and a ceiling that doubles with each retry
// (base, 2×base, 4×base, ... up to maxDelay). Full jitter spreads the
// retries of clients that failed together, so they do not come back
// together. attempt counts retries from 0: the first retry's ceiling is
// base (the config's n-th retry, n from 1, is attempt n-1).
//
// These are functions of plain values rather than a type: the config's
// resolved backoff (a base and a max) is the caller's to pass in.

// BackoffCeiling is the most BackoffDelay waits before the retry
// numbered attempt: min(maxDelay, base × 2^attempt), without overflow.
// A base of zero (or less) is no wait; a maxDelay of zero (or less) is
// no cap but the largest Duration, some 292 years. A negative attempt
// counts as 0.
func BackoffCeiling(base, maxDelay time.Duration, attempt int) time.Duration {
	limit := maxDelay
	if limit <= 0 {
		limit = math.MaxInt64
	}
	if base <= 0 {
		return 0
	}
	attempt = max(attempt, 0)
	if attempt >= 63 || base > limit>>attempt {
		return limit
	}
	return base << attempt
}

// BackoffDelay is how long to wait before the retry numbered attempt:
// uniform in [0, BackoffCeiling(base, maxDelay, attempt)). rnd returns a
// number in [0, 1) (rand.Float64 of math/rand/v2 when nil; tests pass
// their own); one outside is taken as the nearest end. A Retry-After the
// response carried (RetryAfter) is waited for instead when longer.
func BackoffDelay(base, maxDelay time.Duration, attempt int, rnd func() float64) time.Duration {
	c := BackoffCeiling(base, maxDelay, attempt)
	if c == 0 {
		return 0
	}
	if rnd == nil {
		rnd = rand.Float64
	}
	f := rnd()
	if !(f > 0) { // and NaN
		return 0
	}
	// float64(c) may round up to 2^63 for a c near the top, and f×c to
	// c itself: both are taken as c.
	d := f * float64(c)
	if f >= 1 || d >= float64(c) {
		return c
	}
	return time.Duration(d)
}

// maxDelaySeconds is the most delay-seconds a Duration holds.
const maxDelaySeconds = math.MaxInt64 / int64(time.Second)

// RetryAfter parses a Retry-After field value (RFC 9110 §10.2.3), either
// delay-seconds ("120") or an HTTP-date (in any of the three forms of
// RFC 9110 §5.6.7), and returns how long from now the server asks the
// client to wait: a retry should wait at least that long (the caller caps
// it). A date in the past is 0; a number of seconds too large for a
// Duration is the largest Duration. ok is false for an empty or malformed
// value (a sign, a fraction, a bad date), which the caller ignores.
func RetryAfter(value string, now time.Time) (d time.Duration, ok bool) {
	value = trimOWS(value)
	if value == "" {
		return 0, false
	}
	if isDigits(value) {
		var n int64
		for i := 0; i < len(value); i++ {
			n = n*10 + int64(value[i]-'0')
			if n > maxDelaySeconds {
				return math.MaxInt64, true
			}
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(value)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// isDigits reports whether s is one or more ASCII digits.
func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// trimOWS trims optional white space, spaces and tabs (RFC 9110 §5.6.3).
func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}
