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
package resilience
