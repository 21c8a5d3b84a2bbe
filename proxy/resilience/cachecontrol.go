package resilience

import (
	"math"
	"strings"
	"time"
)

// cacheControl is what the stale cache reads of Cache-Control field
// values (RFC 9111 §5.2; stale-if-error, RFC 5861 §4). A directive given
// twice counts once, at its most restrictive: the smallest number.
type cacheControl struct {
	noStore, noCache, private, public bool
	mustRevalidate, proxyRevalidate   bool
	maxAge, sMaxAge, staleIfError     int64 // seconds; -1 when absent
}

// maxDeltaSeconds is what a delta-seconds too large to hold is taken as
// (RFC 9111 §1.2.2).
const maxDeltaSeconds = 1 << 31

// parseCacheControl reads the directives of every Cache-Control field
// line in values. Unknown directives are ignored; a number directive
// (max-age, s-maxage, stale-if-error) without a valid delta-seconds is
// taken as 0, so a response with invalid freshness is stale at once (RFC
// 9111 §4.2.1 encourages it). Its argument may be quoted (RFC 9111 §5.2:
// recipients accept both forms). no-cache and private with a list of
// field names count as the unqualified directives, the stricter reading.
// It allocates nothing.
func parseCacheControl(values []string) cacheControl {
	c := cacheControl{maxAge: -1, sMaxAge: -1, staleIfError: -1}
	for _, v := range values {
		for v != "" {
			var name, arg string
			var hasArg bool
			name, arg, hasArg, v = nextDirective(v)
			switch {
			case strings.EqualFold(name, "no-store"):
				c.noStore = true
			case strings.EqualFold(name, "no-cache"):
				c.noCache = true
			case strings.EqualFold(name, "private"):
				c.private = true
			case strings.EqualFold(name, "public"):
				c.public = true
			case strings.EqualFold(name, "must-revalidate"):
				c.mustRevalidate = true
			case strings.EqualFold(name, "proxy-revalidate"):
				c.proxyRevalidate = true
			case strings.EqualFold(name, "max-age"):
				c.maxAge = minSeconds(c.maxAge, arg, hasArg)
			case strings.EqualFold(name, "s-maxage"):
				c.sMaxAge = minSeconds(c.sMaxAge, arg, hasArg)
			case strings.EqualFold(name, "stale-if-error"):
				c.staleIfError = minSeconds(c.staleIfError, arg, hasArg)
			}
		}
	}
	return c
}

// nextDirective cuts the first directive off a Cache-Control value:
// its name, its argument (unquoted when it is a quoted-string; hasArg
// when there was an '='), and the rest of the value after the comma that
// ends it. Anything between the directive and that comma is ignored.
func nextDirective(v string) (name, arg string, hasArg bool, rest string) {
	i := 0
	for i < len(v) && (v[i] == ' ' || v[i] == '\t' || v[i] == ',') {
		i++
	}
	j := i
	for j < len(v) && v[j] != '=' && v[j] != ',' && v[j] != ' ' && v[j] != '\t' {
		j++
	}
	name = v[i:j]
	for j < len(v) && (v[j] == ' ' || v[j] == '\t') {
		j++
	}
	if j < len(v) && v[j] == '=' {
		hasArg = true
		j++
		for j < len(v) && (v[j] == ' ' || v[j] == '\t') {
			j++
		}
		if j < len(v) && v[j] == '"' {
			// A quoted-string: up to the closing quote, a backslash
			// escaping the byte after it. A number has no escapes, so
			// the raw content is enough: one with a backslash is no
			// number.
			k := j + 1
			for k < len(v) && v[k] != '"' {
				if v[k] == '\\' {
					k++
				}
				k++
			}
			arg = v[j+1 : min(k, len(v))]
			j = min(k+1, len(v))
		} else {
			k := j
			for k < len(v) && v[k] != ',' && v[k] != ' ' && v[k] != '\t' {
				k++
			}
			arg = v[j:k]
			j = k
		}
	}
	for j < len(v) && v[j] != ',' {
		j++
	}
	return name, arg, hasArg, v[j:]
}

// minSeconds is the smaller of old (-1: none yet) and the delta-seconds
// in arg, which is 0 when it is not one.
func minSeconds(old int64, arg string, hasArg bool) int64 {
	n := int64(0)
	if hasArg && isDigits(arg) {
		n = deltaSeconds(arg)
	}
	if old >= 0 && old < n {
		return old
	}
	return n
}

// deltaSeconds is the value of digits, at most maxDeltaSeconds.
func deltaSeconds(digits string) int64 {
	var n int64
	for i := 0; i < len(digits); i++ {
		n = n*10 + int64(digits[i]-'0')
		if n >= maxDeltaSeconds {
			return maxDeltaSeconds
		}
	}
	return n
}

// noLimit is a servable age no response sets: only the cache's maxAge
// bounds it.
const noLimit = time.Duration(math.MaxInt64)

// limit is the most age at which a response with these directives may
// be served after an error:
//   - its freshness lifetime (s-maxage, else max-age, else 0: Expires
//     and heuristic freshness are not used) when it must not be served
//     stale (must-revalidate, proxy-revalidate, or s-maxage, which implies
//     proxy-revalidate for a shared cache: RFC 9111 §5.2.2.10);
//   - that lifetime plus stale-if-error's seconds when it has one (RFC
//     5861 §4: the most staleness allowed);
//   - otherwise noLimit: a cache cut off from the origin may serve a
//     stale response (RFC 9111 §4.2.4).
func (c cacheControl) limit() time.Duration {
	life := int64(0)
	switch {
	case c.sMaxAge >= 0:
		life = c.sMaxAge
	case c.maxAge >= 0:
		life = c.maxAge
	}
	switch {
	case c.mustRevalidate || c.proxyRevalidate || c.sMaxAge >= 0:
		return time.Duration(life) * time.Second
	case c.staleIfError >= 0:
		return time.Duration(life+c.staleIfError) * time.Second
	}
	return noLimit
}
