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
//	                  client_cert, request_id, traceparent); ?sleep=DUR answers
//	                  after DUR, or not at all if the client goes away first
//	GET  /bytes?n=N   N bytes of deterministic data; X-Content-Sha256 gives their hash
//	POST /sha256      the length and SHA-256 of the request body (JSON)
//	GET  /ws          a WebSocket echo
//
// The echo server writes back what it reads and closes its side after the
// client closes its own (TCP half-close).
package demoapp
