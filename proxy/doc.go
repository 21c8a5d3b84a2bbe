// Package proxy is meshgate's data plane: the sidecar that every captured
// TCP connection of a workload passes through.
//
// The namespace's rules (package redirect) send the app's outbound
// connections to the outbound capture listener (15001) and connections
// made to the app to the inbound capture listener (15006). Each accepted
// connection runs through one pipeline of narrow stages, in this order:
//
//	accept → original destination → loop guard
//	       → inbound: mTLS termination by ALPN, then protocol detection
//	         outbound: protocol detection while dialing
//	       → L4 forward, or L7 (the HTTP/1 engine; HTTP/2 via net/http)
//	         with the request stages
//	       → dial: balance, mTLS origination to the mesh
//
// The stages:
//
//   - accept: one IPv4 and one IPv6 listener per direction (the IPv6 one
//     is skipped when the namespace has no IPv6). Each connection runs on
//     a goroutine of its own (handle, pipeline), one that served a
//     connection before when one waits (handlerPool: its stack is grown
//     already), and gets one log line when it is over (endConn).
//   - original destination: where the client was going before the rules
//     rewrote the connection: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST in
//     redirect mode, the accepted socket's local address for inbound in
//     tproxy mode. The lookup is a seam (WithOriginalDst), so tests and
//     benchmarks without root can point the proxy at a loopback backend.
//   - loop guard: a connection bound for the proxy's own capture port on
//     a local address, or one that was never redirected, is refused, never
//     dialed; so is a connection the proxy opened itself that the rules
//     captured again (it comes from the local address of one of the
//     proxy's connections, which has not heard its peer yet).
//   - inbound, mTLS termination: by the mode of the app's port
//     (MTLSConfig), the first bytes are peeked under a deadline and
//     parsed (package sniff); a ClientHello offering a mesh protocol
//     (ALPN meshgate/tcp, meshgate/http1 or meshgate/h2) is mesh TLS from
//     another sidecar, terminated with the certificates of MeshTLS
//     (WithMeshTLS); plaintext is refused (strict) or replayed to the app
//     (permissive). In permissive mode the app is dialed while the
//     client's first bytes are awaited, so a server-first app is heard at
//     once (firstBytesRace, the peek race).
//   - inbound, protocol detection: plaintext (permissive) and the
//     plaintext of meshgate/tcp are classified the same way while the
//     app is dialed, so that HTTP is served by L7 (below) whatever the
//     client sidecar did with it: the app learns of its client's
//     identity only what this sidecar tells it. Anything else is
//     forwarded as it is.
//   - outbound, protocol detection: unless the port is declared opaque
//     (ProtocolsConfig; the well-known server-first ports are by default)
//     or the destination spoke first before, the app's first bytes are
//     peeked and classified by package sniff (its own TLS, with SNI and
//     ALPN; HTTP/1.x; HTTP/2; opaque) while the destination is dialed and
//     watched in the same race, so a server-first protocol is heard at
//     once and never waits for a detection timeout. An HTTP/2 server's
//     SETTINGS (grpc-go sends it on accepting) does not end the race, in
//     either direction: the client's bytes still decide, and the
//     SETTINGS waits for them. The verdict labels the log line and the
//     metrics; the bytes pass as they are, but for HTTP to a mesh
//     destination, which goes to L7.
//   - L4 forward: a bidirectional copy that keeps TCP half-close (across
//     TLS as close_notify), with an idle timeout and byte counters that
//     move as the bytes do. Plaintext legs use splice(2), TLS legs a
//     pooled buffer, taken once there are bytes to read: a connection
//     waiting to read holds neither pipe nor buffer. The stages only set
//     the forward up (outcome.flow); handle runs it once they have
//     returned (runFlow), and a direction idle for 500 ms parks: its
//     goroutine ends and the parker waits on its socket, so a held
//     connection nothing moves on holds no goroutine (issue 12).
//   - L7: see below.
//   - dial: outbound to the original destination, or to the endpoint of
//     its service that the balancer picks (WithBalancer; another one
//     when connecting fails); inbound to the app at the original
//     destination's address from the passthrough source 127.0.0.6 / ::6
//     (in tproxy mode, a connection TPROXY delivered from the client's
//     own address, with IP_TRANSPARENT, so the app sees who called it);
//     all marked with SO_MARK so the rules let them by. Outbound to the
//     mesh (mtls.meshCIDRs), the connection is TLS 1.3 with the ALPN of
//     what it carries, the server's SPIFFE ID checked.
//
// L7: with protocols.l7, HTTP/1.x and HTTP/2 that an app sends to a mesh
// destination are served request by request instead of forwarded as
// bytes. HTTP/1 goes to the HTTP/1 engine, whose requests ride pooled
// keep-alive mesh connections to the peer sidecar (ALPN meshgate/http1);
// the meshgate/tcp connection dialed while detecting HTTP/1 joins that
// pool. A request that switches protocols (WebSocket) keeps its
// connection, whose bytes then pass as they are. HTTP/2 (h2c, gRPC) is served by
// net/http's HTTP/2 server, whose requests ride a pooled, multiplexed
// HTTP/2 mTLS connection to the peer sidecar (ALPN meshgate/h2). The
// peer sidecar's inbound side passes each request to its app in the
// client app's protocol. Inbound HTTP detected on meshgate/tcp or
// plaintext is served the same way, and on a port declared http
// (protocols.ports) whatever a client sends but TLS is. Every request,
// whichever codec read it, runs through its direction's request stages
// before it is sent on: outbound, request IDs are made when absent;
// both ways, the client-identity stage makes X-Forwarded-Client-Cert the
// sidecar's own: any a client sent, in any spelling, is removed, and
// inbound the client's verified identity is set (plaintext gets none).
//
// Beside the listeners, the proxy serves Prometheus metrics (15020), the
// health probes (15021) and an admin API on loopback (15000). Run drains
// on shutdown: it stops accepting, reports not ready, lets in-flight
// connections finish within a grace period and then closes them.
//
// # Where each stage lives
//
//	stage                                      file
//	Proxy: New, Run, the drain                 proxy.go
//	accept                                     listen.go
//	  IP lists (at accept), header blocks      access.go
//	one connection: handle → pipeline, log     conn.go
//	original destination                       origdst.go
//	loop guard                                 loopguard.go
//	inbound, by the port's mTLS mode           inbound.go
//	  mTLS termination by ALPN                 terminate.go
//	outbound                                   outbound.go
//	protocol detection (both directions)       detect.go
//	  the peek race (detection, termination)   peek.go
//	L4 forward                                 forward.go
//	  idle directions parked                   park_linux.go
//	L7: dispatch, what both codecs share       l7.go
//	  request stages                           stages.go
//	    rate limits (and per connection)       ratelimit_stage.go
//	  HTTP/1 engine: serving loop              h1serve.go
//	    its codec                              h1codec.go
//	    its upstream pool                      h1pool.go
//	  HTTP/2 via net/http: serving             h2.go
//	    passing a request on                   h2proxy.go
//	    its upstream transports                h2transport.go
//	dial                                       dial.go
//	  balance                                  balance.go
//	  mTLS origination                         originate.go
//	mesh TLS: MeshTLS, configs, shared bits    mtls.go
//	metrics                                    metrics.go
//	admin API and health probes                admin.go
//	  the app's own probes (WithAppProbes)     appprobe/
//	config                                     config.go
//
// The system calls live in *_linux.go files: origdst_linux.go (the
// original destination), sockopt_linux.go (transparent sockets for
// tproxy mode; whether the namespace has IPv6), peek_linux.go (waiting
// for bytes without a buffer; whether an idle pooled connection is still
// open), splice_linux.go (splice(2)) and sockread_linux.go (reading a
// socket without holding a buffer while it waits). Off Linux the
// *_other.go stubs let the package build and vet: splice and peeking fall
// back to a buffer, and anything that needs Linux fails with an error
// naming it, so a captured connection is refused there.
package proxy
