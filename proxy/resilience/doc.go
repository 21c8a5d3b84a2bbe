// Package resilience is what keeps the network from hurting the app on
// its outbound calls (shared/DESIGN.md §5 Resilience, §5b; issue 16):
// timeouts, retries within a retry budget, circuit breakers, bulkheads,
// fallback responses, request mirroring and fault injection.
//
// Its configuration is the resilience section of the proxy config
// (Config): settings per destination service, picked by the names, the
// SPIFFE identity, or the address and port of an outbound connection's
// destination, and overridden per route (method and path), over defaults.
// The section is validated as a whole, every problem named with its field
// path (Validate), and compiled once (New) into a read-only Table, which
// the proxy swaps on a config reload.
//
// The data path asks the Table twice, without allocating:
//
//   - per outbound connection, Table.Lookup with what the proxy knows of
//     its destination (Dest) gives the destination's DestPolicy: the
//     first entry of resilience.destinations that matches, or the
//     built-in default. Its settings that hold per destination (the
//     retry budget, circuit breakers, bulkhead limits, faults of opaque
//     TCP) are there, and its Key names it in metrics and logs and keys
//     the state the proxy keeps per destination.
//   - per HTTP request, DestPolicy.Route with the request's method and
//     path gives the request's Policy: the timeouts, retries, fallback,
//     mirror and faults in effect, the route's settings over the
//     destination's over the defaults, merged once at New.
//
// In the request path (shared/DESIGN.md §5, "The request path, in one
// place") these settings drive, outbound, after the rate limits: fault
// injection → mirror → circuit breaker and bulkhead → retry loop (balance
// → pooled mesh connection → per-try timeout) → fallback.
//
// # Mechanisms
//
// Each destination has its own of these:
//
//   - Breaker, a circuit breaker: opened by consecutive failures or a
//     failure rate over a window, it fails requests fast for a while,
//     then lets a few trials through. Allow admits a request and gives a
//     Ticket; Done reports its outcome.
//   - Limiter, a bulkhead: at most so many connections, pending requests,
//     active requests or retries at once; the rest are refused, never
//     queued.
//   - RetryBudget: retries at most a ratio of the requests of the last
//     window, plus a small floor a second.
//   - BackoffDelay, exponential backoff with full jitter, and RetryAfter,
//     the server's own wait (Retry-After).
//   - StaleCache, the last good response of each cacheable GET (the rule
//     is Cacheable), served with StaleFields when the destination fails
//     (stale-if-error).
//
// The mechanisms know nothing of the proxy or of its config: each takes
// plain values (durations, counts, ratios) and the time as an argument,
// so tests drive them with a fake clock, and none starts a goroutine:
// time moves when they are called. Each is safe for concurrent use,
// bounded in memory, and allocates nothing on the path every request
// takes.
package resilience
