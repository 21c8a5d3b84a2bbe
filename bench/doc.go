// Package bench is meshgate's load harness (shared/DESIGN.md §9): it
// drives load against a target and records every request's latency in an
// HDR histogram.
//
// Two ways to drive load:
//
//   - fixed rate (Config.Rate > 0), open loop: request k is due at
//     start + k/Rate, whatever happened to the ones before it. A request
//     that could not go on time because every connection was still
//     waiting for the server has its latency measured from its due time,
//     not from when it was sent; one sent on time, from its send. A server
//     that stalls thus shows its stall in every request that should have
//     gone out meanwhile (no coordinated omission, as wrk2 measures it),
//     while the client's own timer slack is not blamed on the server.
//   - as fast as possible (Rate 0), closed loop: each connection sends
//     its next request when the previous one is answered, for the
//     maximum throughput; latencies are per request as sent, so a stall
//     shows only in the few requests that were in flight.
//
// Protocols: HTTP/1.1 (keep-alive, or a new connection per request; with
// or without TLS), HTTP/2 without TLS (h2c, prior knowledge) and over TLS
// (h2), gRPC unary (a raw-bytes echo method of Serve's), and a raw TCP
// echo. Serve is the matching backend
// ("meshgate bench serve"); Mesh builds a lab of network namespaces and
// measures the same load without and with a pair of meshgate sidecars
// ("meshgate bench mesh").
package bench
