// Package proxy is meshgate's data plane: the sidecar that every captured
// TCP connection of a workload passes through.
//
// The namespace's rules (package redirect) send the app's outbound
// connections to the outbound capture listener (15001) and connections
// made to the app to the inbound capture listener (15006). Each accepted
// connection runs through one pipeline of narrow stages:
//
//		accept → original destination → loop guard → dial → forward
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
//	  - dial: outbound to the original destination, inbound to the app at
//	    the original destination's address from the passthrough source
//	    127.0.0.6 / ::6; both marked with SO_MARK so the rules let them by.
//	  - forward: a bidirectional copy that keeps TCP half-close, with an
//	    idle timeout and byte counters that move as the bytes do.
//
// Mesh mTLS termination (by ALPN) and protocol detection will slot in
// between the loop guard and the dial; L7 HTTP replaces forward for the
// protocols it understands.
//
// Beside the listeners, the proxy serves Prometheus metrics (15020), the
// health probes (15021) and an admin API on loopback (15000). Run drains
// on shutdown: it stops accepting, reports not ready, lets in-flight
// connections finish within a grace period and then closes them.
package proxy
