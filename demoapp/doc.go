// Package demoapp is the example workload of "meshgate demo" and the
// end-to-end tests ("meshgate demo-app"): an ordinary HTTP server and a
// TCP echo server that know nothing of the mesh, so what the mesh does to
// their traffic can be seen from both ends.
//
// HTTP (HTTP/1.x, and HTTP/2 without TLS: h2c by prior knowledge or
// Upgrade):
//
//	GET  /            who answered and what it saw (JSON: name, method, path,
//	                  remote, host, proto, and the headers a mesh adds:
//	                  client_cert, request_id, traceparent)
//	GET  /bytes?n=N   N bytes of deterministic data; X-Content-Sha256 gives their hash
//	POST /sha256      the length and SHA-256 of the request body (JSON)
//	GET  /ws          a WebSocket echo
//
// Any request of the API may carry ?sleep=DUR: it is answered after DUR,
// or not at all if its client goes away first. The app also fails on
// command, for resilience tests:
//
//	POST /control?fail=0.3&status=503&delay=2s
//	                  from now on, fail that share of requests with that
//	                  status (503 if not given) and answer every request
//	                  after that delay; parameters not given are reset, so
//	                  POST /control alone makes the app behave again
//	GET  /stats       requests answered, failed on command, and abandoned
//	                  by their clients while waiting (JSON)
//
// gRPC, on the HTTP port (HTTP/2 requests of content type
// application/grpc): the standard health service,
// grpc.health.v1.Health/Check, which answers SERVING. A call may carry
// "sleep" metadata (a duration), and the faults and counters below apply
// to it too: it waits the commanded delay, is counted cancelled when its
// client goes away first, and fails with UNAVAILABLE on command.
//
// The echo server writes back what it reads and closes its side after the
// client closes its own (TCP half-close).
package demoapp
