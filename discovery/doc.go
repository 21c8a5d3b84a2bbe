// Package discovery is meshgate's DNS-based discovery (shared/DESIGN.md
// §7): the sidecar's DNS proxy, the mesh registry it answers from, and the
// memory of which name an address was answered for.
//
// The DNS proxy (Server, on 15053 UDP and TCP, where 'meshgate redirect
// --capture-dns' sends the app's DNS) answers mesh names from a Registry
// (StaticRegistry: a file listing services, their endpoints, ports and
// SPIFFE identity) and forwards every other question to the upstream
// resolvers of resolv.conf. Upstream answers are cached for their TTL,
// negative ones for their SOA's (RFC 2308). EDNS0 sizes are kept: over
// UDP an answer is cut to what the client can take, with TC set, so the
// client asks again over TCP; upstreams are asked over UDP for up to 1232
// bytes, and over TCP when that is not enough; every upstream socket carries
// the sidecar's mark (Options.Mark), so capture rules exempting it do not
// send the proxy's own questions back to it. For every A and AAAA answer
// the proxy remembers the name the address belongs to (NameOf), so that
// outbound connections can be routed, logged and authorized by name.
//
// Registry answers: A and AAAA records from a service's endpoints, SRV
// records _PORT._tcp.SERVICE from its named ports, and a TXT record at
// the service's name that publishes its identity and mesh membership —
// "meshgate.identity=spiffe://..." and "meshgate.meshed=true" — the
// convention a CoreDNS zone can serve too. WatchRegistry reloads the
// registry file when it changes; a broken file is refused and the
// registry in use stays.
//
// Endpoints and balancing: a connection (or HTTP request) to an address
// the proxy answered for a mesh service goes to one of that service's
// endpoints, not necessarily the one the app picked (Pick). A registry
// service's endpoints are the registry's; a name the TXT convention says
// is meshed has the addresses of its latest A and AAAA answers, asked
// again once their TTL is over, so replicas added or removed upstream are
// followed without a restart. Names outside the mesh are never balanced:
// the app's choice stands. The balancer (one per service, family and
// port) is power-of-two-choices over peak-EWMA latency by default, round
// robin or least-request as options, with passive outlier ejection: an
// endpoint failing ConsecutiveFailures times in a row is left out for a
// while, longer each time. See BalanceOptions.
package discovery
