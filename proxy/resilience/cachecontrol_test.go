package resilience

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseCacheControl(t *testing.T) {
	none := cacheControl{maxAge: -1, sMaxAge: -1, staleIfError: -1}
	with := func(f func(*cacheControl)) cacheControl { c := none; f(&c); return c }
	for _, tc := range []struct {
		name   string
		values []string
		want   cacheControl
	}{
		{"none", nil, none},
		{"empty", []string{""}, none},
		{"max-age", []string{"max-age=60"}, with(func(c *cacheControl) { c.maxAge = 60 })},
		{"any case", []string{"Max-Age=60, NO-STORE"}, with(func(c *cacheControl) { c.maxAge, c.noStore = 60, true })},
		{"all of them", []string{"public, private, no-cache, no-store, must-revalidate, proxy-revalidate, max-age=1, s-maxage=2, stale-if-error=3"},
			cacheControl{true, true, true, true, true, true, 1, 2, 3}},
		{"two lines", []string{"max-age=60", "stale-if-error=30"}, with(func(c *cacheControl) { c.maxAge, c.staleIfError = 60, 30 })},
		{"white space", []string{" \tmax-age = 60 ,\tpublic\t"}, with(func(c *cacheControl) { c.maxAge, c.public = 60, true })},
		{"empty members", []string{",,max-age=5,, ,"}, with(func(c *cacheControl) { c.maxAge = 5 })},
		{"quoted number", []string{`max-age="60"`}, with(func(c *cacheControl) { c.maxAge = 60 })},
		{"quoted list with commas", []string{`no-cache="Set-Cookie, X-Foo", max-age=9`}, with(func(c *cacheControl) { c.noCache, c.maxAge = true, 9 })},
		{"escaped quote", []string{`ext="a\"b, max-age=1", max-age=9`}, with(func(c *cacheControl) { c.maxAge = 9 })},
		{"unterminated quote", []string{`private="x, max-age=1`}, with(func(c *cacheControl) { c.private = true })},
		{"private with fields", []string{`private="Set-Cookie"`}, with(func(c *cacheControl) { c.private = true })},
		{"unknown directives", []string{"immutable, stale-while-revalidate=30, foo=bar"}, none},
		{"not a number is 0", []string{"max-age=abc, stale-if-error=1.5"}, with(func(c *cacheControl) { c.maxAge, c.staleIfError = 0, 0 })},
		{"no argument is 0", []string{"max-age, s-maxage="}, with(func(c *cacheControl) { c.maxAge, c.sMaxAge = 0, 0 })},
		{"negative is 0", []string{"max-age=-5"}, with(func(c *cacheControl) { c.maxAge = 0 })},
		{"huge is 2^31", []string{"max-age=99999999999999999999999"}, with(func(c *cacheControl) { c.maxAge = 1 << 31 })},
		{"twice: the smaller", []string{"max-age=60, max-age=10", "max-age=30"}, with(func(c *cacheControl) { c.maxAge = 10 })},
		{"twice, one bad: 0", []string{"max-age=60, max-age=x"}, with(func(c *cacheControl) { c.maxAge = 0 })},
		{"trailing junk ignored", []string{"max-age=60 junk, public"}, with(func(c *cacheControl) { c.maxAge, c.public = 60, true })},
		{"name prefix is not the name", []string{"no-stored, max-aged=5"}, none},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parseCacheControl(tc.values)
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(cacheControl{})); diff != "" {
				t.Errorf("parseCacheControl(%q) (-want +got):\n%s", tc.values, diff)
			}
		})
	}
}

func TestCacheControlLimit(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  time.Duration
	}{
		{"", noLimit},
		{"max-age=60", noLimit},
		{"max-age=60, stale-if-error=30", 90 * time.Second},
		{"stale-if-error=30", 30 * time.Second},
		{"stale-if-error=0", 0},
		{"max-age=60, must-revalidate", time.Minute},
		{"max-age=60, proxy-revalidate, stale-if-error=30", time.Minute},
		{"must-revalidate", 0},
		{"s-maxage=10, max-age=60", 10 * time.Second}, // s-maxage: no stale for a shared cache
		{"s-maxage=10, stale-if-error=300", 10 * time.Second},
		{"max-age=bad, stale-if-error=5", 5 * time.Second},
		{"max-age=99999999999, stale-if-error=99999999999", (2 << 31) * time.Second},
	} {
		if got := parseCacheControl([]string{tc.value}).limit(); got != tc.want {
			t.Errorf("limit of %q = %v; want %v", tc.value, got, tc.want)
		}
	}
}

// FuzzParseCacheControl checks the parser on any bytes: it does not
// panic, never reads a number it was not given, and reads a directive
// the same wherever it stands in the list.
func FuzzParseCacheControl(f *testing.F) {
	for _, s := range []string{
		"max-age=60", `no-cache="a, b", private`, `x="\"`, "stale-if-error=5,,", " = , =", `"`, "max-age=\"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		c := parseCacheControl([]string{v})
		for _, n := range []int64{c.maxAge, c.sMaxAge, c.staleIfError} {
			if n < -1 || n > maxDeltaSeconds {
				t.Fatalf("parseCacheControl(%q) = %+v: a number out of range", v, c)
			}
		}
		if c.limit() < 0 {
			t.Fatalf("limit of %q < 0", v)
		}
		// A directive added after the value, in a line of its own, is
		// read whatever the value was.
		if d := parseCacheControl([]string{v, "no-store"}); !d.noStore {
			t.Fatalf("no-store after %q not read", v)
		}
		// Joined to a value with no open quote by a comma, likewise.
		if strings.Count(v, `"`) == 0 {
			if d := parseCacheControl([]string{v + ", no-store"}); !d.noStore {
				t.Fatalf("no-store after %q, not read", v)
			}
		}
	})
}
