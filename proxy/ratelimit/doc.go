// Package ratelimit limits how fast callers may call: token buckets keyed
// by who calls (source identity or IP), what is called (route), a JWT
// subject or a header value, one bucket per key value (shared/DESIGN.md
// §5b rateLimits; issue 15).
//
// A Limit is one entry of the proxy config's rateLimits list. Limits are
// validated as a whole (Validate), every problem named with its field
// path. Rates are written N/s, N/m, N/h or N/d (Rate); the bucket holds
// Burst tokens and refills at the rate, so a caller may send Burst
// requests at once and then the rate on average. A bucket spreads a
// window's requests over the window: 600/m with the default burst (10) is
// 10 requests a second, not 600 in the first second of a minute.
//
// A limit of type quota (TypeQuota) counts instead: at most N requests
// per window (a second, minute, hour or day) per key value, at any pace
// within it. A key value's window starts at its first counted request,
// not on the wall clock (so there is no double burst at a boundary), and
// the count starts again with the first request after it ends; a refused
// request is not counted. 600/m as a quota lets 600 through in the first
// second of a busy spell, then nothing until the minute since the first
// is over.
//
// A global limit is shared by every sidecar using it: Global counts it
// in Redis (the redis section, RedisConfig; ValidateWithRedis checks a
// global limit has one). Each decision is one round trip running a Lua
// script, atomic on the server, that implements GCRA (the generic cell
// rate algorithm: one timestamp per key value, the same answers as the
// token bucket of Local) on the server's clock, so sidecars' clocks do
// not matter; idle keys expire once their bucket is full. A quota's
// script counts the window in one key (GET; INCR, and PEXPIRE when the
// window is new; PTTL), also one round trip: the key expires when the
// window ends, on the server's clock. A decision
// waits at most the redis timeout; when Redis fails or is slow, onError
// decides: failOpen allows, failClosed refuses, local counts in this
// sidecar at its share of the limit (a quota: N/instances per window,
// rounded up). The Decision's Source and Err say
// so.
//
// Local is the limiter of one Limit in one sidecar: Allow takes the key
// value of a request (or, at L4, of a new connection: the same limiter
// keyed by source) and the time, and returns a Decision with what an
// answer needs: HTTP 429 and Retry-After (RFC 9110 §10.2.3), and the
// RateLimit and RateLimit-Policy header fields of the IETF httpapi
// draft. Key values are kept in a table of at most MaxKeys, least
// recently used first out: a key pushed out and seen again starts with a
// full bucket, so a caller that can make up more than MaxKeys key values
// (header keys, spoofable addresses) can send more than its rate; keep
// MaxKeys above the number of callers expected, and prefer keys a caller
// cannot choose (sourceIdentity).
//
// A limit counts HTTP requests (per: request, the default) or new
// connections (per: connection, inbound, keyed by source). The proxy's
// rate-limit stage (proxy/ratelimit_stage.go) asks the limiters: per
// request in the request path, per connection when one is accepted.
package ratelimit
