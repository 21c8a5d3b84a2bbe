// Package proxy is meshgate's data plane: the sidecar that every captured
// TCP connection of a workload passes through.
//
// The namespace's rules (package redirect) send the app's outbound
// connections to the outbound capture listener (15001) and connections
// made to the app to the inbound capture listener (15006). Each accepted
// connection runs through one pipeline of narrow stages:
//
//		accept → original destination → loop guard → (inbound: mTLS termination by ALPN)
//		       → (outbound: protocol detection while dialing, with mTLS origination to the mesh)
//		       → forward
//
//	  - accept: one IPv4 and one IPv6 listener per direction (the IPv6 one
//	    is skipped when the namespace has no IPv6).
//	  - original destination: where the client was going before the rules
//	    rewrote the connection: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST in
//	    redirect mode, the accepted socket's local address for inbound in
//	    tproxy mode. The lookup is a seam (WithOriginalDst), so tests and
//	    benchmarks without root can point the proxy at a loopback backend.
//	  - loop guard: a connection bound for the proxy's own capture port on
//	    a local address, or one that was never redirected, is refused, never
//	    dialed.
//	  - mTLS termination (inbound.go): by the mode of the app's port
//	    (MTLSConfig), the first bytes are peeked under a deadline and
//	    parsed (package sniff); a ClientHello offering ALPN meshgate/tcp
//	    is mesh TLS from another sidecar, terminated with the certificates
//	    of MeshTLS (WithMeshTLS); plaintext is refused (strict) or
//	    replayed to the app (permissive). In permissive mode the app is
//	    dialed while the client's first bytes are awaited, so a
//	    server-first app is heard at once (firstBytesRace).
//	  - protocol detection, inbound: plaintext (permissive) and the
//	    plaintext of meshgate/tcp are classified the same way while the
//	    app is dialed, so that HTTP is served by L7 (below) whatever the
//	    client sidecar did with it: the app learns of its client's
//	    identity only what this sidecar tells it. Anything else is
//	    forwarded as it is.
//	  - protocol detection (protocol.go), outbound: unless the port is
//	    declared opaque (ProtocolsConfig; the well-known server-first
//	    ports are by default) or the destination spoke first before, the
//	    app's first bytes are peeked and classified by package sniff (its
//	    own TLS, with SNI and ALPN; HTTP/1.x; HTTP/2; opaque) while the
//	    destination is dialed and watched in the same race, so a
//	    server-first protocol is heard at once and never waits for a
//	    detection timeout. The bytes pass as they are; the verdict labels
//	    the log line and the metrics.
//	  - dial: outbound to the original destination, inbound to the app at
//	    the original destination's address from the passthrough source
//	    127.0.0.6 / ::6 (in tproxy mode, a connection TPROXY delivered
//	    from the client's own address, with IP_TRANSPARENT, so the app
//	    sees who called it); all marked with SO_MARK so the rules let them by.
//	    Outbound to the mesh (mtls.meshCIDRs), the connection is TLS 1.3
//	    with ALPN meshgate/tcp, the server's SPIFFE ID checked (outbound.go).
//	  - forward: a bidirectional copy that keeps TCP half-close (across
//	    TLS as close_notify), with an idle timeout and byte counters that
//	    move as the bytes do. Plaintext legs use splice(2), TLS legs a
//	    pooled buffer, taken once there are bytes to read: a connection
//	    waiting to read holds neither pipe nor buffer (issue 12).
//
// L7 (l7.go): HTTP/1.x and HTTP/2 to a mesh destination are served
// request by request instead of forwarded as bytes: each rides a pooled,
// multiplexed HTTP/2 mTLS connection to the peer sidecar (ALPN
// meshgate/h2), whose inbound side passes it to its app in the client
// app's protocol, with the client's verified identity in
// X-Forwarded-Client-Cert (setClientCert: any a client sent, in any
// spelling, is removed; plaintext gets none). Upgrades get a
// meshgate/http1 connection of their own. Inbound HTTP detected on
// meshgate/tcp or plaintext is served the same way, and on a port
// declared http (protocols.ports) whatever a client sends but TLS is.
//
// Beside the listeners, the proxy serves Prometheus metrics (15020), the
// health probes (15021) and an admin API on loopback (15000). Run drains
// on shutdown: it stops accepting, reports not ready, lets in-flight
// connections finish within a grace period and then closes them.
//
// The system calls (original destination, socket mark, transparent
// listeners, splice, peeking) live in *_linux.go files. Off Linux the
// *_other.go stubs let the package build and vet: splice and peeking fall
// back to a buffer, and anything that needs Linux fails with an error
// naming it, so a captured connection is refused there.
package proxy
