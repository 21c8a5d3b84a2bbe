// Package resilience keeps a failing destination from making an outbound
// call's failure worse (shared/DESIGN.md §5 Resilience; issue 16): it
// holds what the request path's circuit breaker, bulkhead, retry and
// fallback stages are made of.
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
