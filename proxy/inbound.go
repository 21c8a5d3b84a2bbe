package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/proxy/sniff"
)

// inbound serves a connection made to the app, by the mode of the app's
// port (MTLSConfig):
//
//   - disable: forwarded as it comes (the L4 path).
//   - strict: the first bytes must be a ClientHello offering a mesh
//     protocol; the TLS is terminated with MeshTLS.ServerConfig and the
//     app dialed only then, so an unauthenticated client never reaches
//     it. Any other ClientHello is terminated too, to be refused after
//     (or by) the handshake as no sidecar, so that the port looks to a
//     TLS scanner like what it is, a TLS 1.3 server that requires a
//     client certificate. Anything else is reset. A client sidecar always
//     speaks first, so the wait for its bytes needs no race.
//   - permissive: the same for mesh TLS, and anything else is served as
//     plaintext (serveInbound) with the peeked bytes replayed. The app is
//     dialed while the client's first bytes are awaited (firstBytesRace),
//     so a server-first app's greeting reaches a silent plaintext client
//     at once (after mtls.greetingHold) instead of after a timeout (an
//     HTTP/2 app's SETTINGS is no such greeting: see h2Greeting); an
//     app whose clients spoke HTTP before, or whose port is declared
//     http, is not (see serveInbound).
//
// The first bytes and the handshake together get timeouts.handshake. The
// app is dialed from from: the client's own address in tproxy mode, or,
// when invalid, the passthrough source (see Proxy.dialApp).
func (p *Proxy) inbound(ctx context.Context, client *net.TCPConn, from netip.Addr, dst netip.AddrPort, m *dirMetrics) outcome {
	mode := p.mesh.inboundMode(dst.Port())
	src := addrPort(client.RemoteAddr())
	// Connection limits by address, before any TLS: on a port with no
	// mTLS, those by identity too (the caller has none).
	keys := connKeySourceIP
	if mode == MTLSDisable {
		keys |= connKeySourceIdentity
	}
	if o := p.connLimited(dst, src, spiffeid.ID{}, keys); o != nil {
		return *o
	}
	if mode == MTLSDisable {
		az := p.authorizeConn(inboundConn(dst.Port(), src, spiffeid.ID{}), Inbound)
		if az.pending() != nil || p.readsRequests(dst.Port()) {
			// Denied, or its requests decide: they are to be read.
			pc := &peekConn{TCPConn: client}
			defer pc.release()
			return p.serveInbound(ctx, pc, &leg{}, from, dst, tlsInfo{authz: az}, m)
		}
		return p.plain(ctx, client, from, dst, m)
	}
	start := time.Now()
	timeout := p.cfg.Timeouts.Handshake.D()
	pc := &peekConn{TCPConn: client}
	defer pc.release()
	race := firstBytesRace{client: pc, settled: helloSettled, deadline: start.Add(timeout)}
	// The app is dialed early (permissive mode) only if policy allows a
	// plaintext client outright; a mesh client is decided after its
	// handshake (terminate).
	if mode == MTLSPermissive && !p.knownHTTP(dst, start) && !p.readsRequests(dst.Port()) &&
		dialEarly(authorize(p.policy.Load(), inboundConn(dst.Port(), src, spiffeid.ID{}))) {
		race.dialApp(p, from, dst)
		race.holdUntil = start.Add(p.cfg.MTLS.GreetingHold.D())
	}
	op, err := race.run(ctx)
	if err != nil {
		return p.dialFailed(outcome{dst: dst}, err, m)
	}
	// The app's connection, if dialed, is closed here; the paths below
	// may dial it, or close it early and clear it.
	upstream := leg{tcp: op.upstream.tcp, pending: op.greeting, pendingBuf: op.greetBuf}
	defer func() {
		if upstream.tcp != nil {
			p.closeUpstream(upstream.tcp)
		}
	}()

	var (
		hello    sniff.ClientHello
		helloErr = errNoBytes
	)
	if len(pc.peeked()) > 0 {
		hello, helloErr = sniff.ParseClientHello(pc.peeked())
	}
	mesh, served := false, ""
	if helloErr == nil {
		mesh, served = offersMesh(hello.ALPN)
	}
	switch {
	case mesh && served == "":
		upstream.releasePending()
		err := &handshakeError{reason: reasonUnsupported, err: fmt.Errorf("client offers mesh protocols %q, none of which this sidecar serves (%q)", hello.ALPN, meshProtocols)}
		p.countHandshake(Inbound, tlsInfo{}, err)
		return outcome{dst: dst, err: err, refused: true, mtls: true, reason: refusedUnsupported}
	case mesh, helloErr == nil && mode == MTLSStrict:
		return p.terminate(ctx, pc, &upstream, from, dst, start.Add(timeout), &hello, m)
	case mode == MTLSStrict:
		p.metrics.plaintextRefused.WithLabelValues(Inbound.String(), strconv.Itoa(int(dst.Port()))).Inc()
		o := outcome{dst: dst, err: notMeshError(op, pc.peeked(), helloErr, timeout), refused: true, reason: refusedStrict}
		if op.first == speakerNone && !op.clientEOF {
			// Nothing, or part of a ClientHello, within timeouts.handshake.
			o.limited = p.protect.handshakeTimedOut(src, len(pc.peeked()), timeout)
		}
		return o
	}

	// Permissive, and not mesh TLS: plaintext.
	if o := p.connLimited(dst, src, spiffeid.ID{}, connKeySourceIdentity); o != nil {
		upstream.releasePending()
		return *o
	}
	plain := tlsInfo{authz: p.authorizeConn(inboundConn(dst.Port(), src, spiffeid.ID{}), Inbound)}
	if op.upErr != nil {
		upstream.releasePending()
		return outcome{dst: dst, err: fmt.Errorf("read from upstream: %w", op.upErr), refused: true}
	}
	if op.first == speakerServer || op.clientEOF {
		// The app spoke first, or the client closed before its first
		// bytes said anything: nothing to detect.
		d := verdict(op, pc.peeked())
		p.countDetection(Inbound, d, time.Since(start))
		if noCall(d, plain.authz) {
			return outcome{dst: dst, detected: &d}
		}
		o := p.forwardInbound(ctx, pc, &upstream, from, dst, plain, m)
		o.detected = &d
		return o
	}
	return p.serveInbound(ctx, pc, &upstream, from, dst, plain, m)
}

// errNoBytes: the client sent nothing to parse.
var errNoBytes = errors.New("no bytes")

// plain dials the app at dst (from from, see dialApp) and forwards the
// connection as it is: the inbound L4 path (outbound, see opaqueOut).
func (p *Proxy) plain(ctx context.Context, client *net.TCPConn, from netip.Addr, dst netip.AddrPort, m *dirMetrics) outcome {
	upstream, err := p.dialApp(ctx, from, dst)
	if err != nil {
		m.connectFailures.Inc()
		return outcome{dst: dst, err: err, refused: true}
	}
	return outcome{dst: dst, flow: &flowPlan{
		client:   leg{tcp: client},
		upstream: leg{tcp: upstream},
		after:    func(*outcome) { p.closeUpstream(upstream) },
	}}
}

// readsRequests reports whether a stage looks at the inbound HTTP
// requests to port even where policy allows the connection outright: a
// header block (access.go) or a request rate limit (ratelimit_stage.go).
// Such a connection is read as HTTP before its app is dialed, so a client
// cannot pass its requests as bytes by waiting for an app that speaks
// first.
func (p *Proxy) readsRequests(port uint16) bool {
	return p.blocksPort(Inbound, port) || p.requestLimited(Inbound, port)
}

// serveInbound serves a connection to the app that is no mesh TLS being
// set up: plaintext in permissive mode (pc reads the socket), or the
// plaintext of meshgate/tcp (pc reads the mesh TLS; peer is the client's
// verified identity). Whatever a client that speaks HTTP sends, the app
// must learn of its identity only what the sidecar tells it
// (shared/DESIGN.md §5), so the client's first bytes are classified
// (verdict): HTTP is served request by request (serveInboundHTTP), and
// anything else forwarded as it is.
//
// Nothing is delayed by the wait. The app is dialed meanwhile (or,
// dialed already, watched), so a server-first app's greeting ends it at
// once (an HTTP/2 app's SETTINGS does not: it is held for the client's
// bytes to decide, see h2Greeting); an app whose clients spoke HTTP
// before is dialed only if they turn out not to. Until one side speaks
// there is nothing to forward, so the wait has no timeout of its own
// (timeouts.idle bounds it): with one, a client could wait it out, then
// send HTTP to pass as bytes, forged X-Forwarded-Client-Cert and all. For
// the same reason, to an app whose clients spoke HTTP lately
// (destMemory), bytes that could still become an HTTP request when the
// client pauses (for detectQuiet) are served as HTTP, unless the app
// spoke meanwhile; to any other app they pass as bytes, so that a
// client-first protocol whose first message looks like the start of a
// request line is not broken.
//
// Detection is stricter than some servers: a method longer than
// sniff.MaxMethodLen, or two spaces after it, is not HTTP to it and may
// be to the app. Only a port declared http (protocols.ports) closes that
// for good: whatever a client sends first there but TLS is served as HTTP
// (httpAppProtocol), and what the sidecar's HTTP server finds malformed
// it refuses. That is a declaration, not something learnt from traffic:
// learnt, one HTTP request to a port of another client-first protocol
// would break that protocol's clients for as long as it is remembered.
// A port declared opaque is forwarded with no detection; unlike
// outbound, an app is not skipped for having spoken first before, since
// whether HTTP reaches it as bytes must not depend on what other
// connections did.
func (p *Proxy) serveInbound(ctx context.Context, pc *peekConn, upstream *leg, from netip.Addr, dst netip.AddrPort, peer tlsInfo, m *dirMetrics) outcome {
	start := time.Now()
	declared := p.cfg.Protocols.Ports[dst.Port()]
	knownHTTP := p.knownHTTP(dst, start)
	var d detection
	switch {
	case declared == PortOpaque:
		d.by = byDeclared
	case serverGreeting(upstream.pending):
		// The app greeted before the client's first bytes settled
		// anything (permissive mode's wait): it speaks first.
		d.by = byServerFirst
	case detectSettled(pc.peeked()):
		d = verdict(opening{first: speakerClient}, pc.peeked())
	default:
		wait := p.cfg.Timeouts.Idle.D()
		// Denied, or its requests decide: the app is not dialed (a
		// client that waited for it to speak first would pass as bytes),
		// so a client that waits for it would wait for ever. After
		// protocols.detectTimeout it is decided as not HTTP.
		held := peer.authz.pending() != nil || p.readsRequests(dst.Port())
		if held {
			wait = p.cfg.Protocols.DetectTimeout.D()
		}
		race := detectRace(pc, start.Add(wait))
		switch u := upstream.tcp; {
		case len(upstream.pending) > 0:
			// The app greeted as an HTTP/2 server does (h2Greeting) in
			// permissive mode's wait: it has said what it says before
			// the client speaks, and is not watched again.
		case u != nil:
			// Watched, not dialed; its owner closes it.
			race.dial = func(context.Context) (upConn, error) { return upConn{tcp: u}, nil }
			race.drop = func(upConn) {}
		case !knownHTTP && !held:
			// Not while policy has yet to allow the client, nor where
			// stages read the requests.
			race.dialApp(p, from, dst)
		}
		op, err := race.run(ctx)
		if err != nil {
			return p.dialFailed(outcome{dst: dst, mtls: pc.tls != nil, tls: peer}, err, m)
		}
		if op.upstream.tcp != nil {
			upstream.tcp = op.upstream.tcp
			upstream.pending, upstream.pendingBuf = op.greeting, op.greetBuf
		}
		if op.upErr != nil {
			upstream.releasePending()
			return outcome{dst: dst, mtls: pc.tls != nil, tls: peer, err: fmt.Errorf("read from upstream: %w", op.upErr), refused: true}
		}
		d = verdict(op, pc.peeked())
	}
	switch {
	case serverGreeting(upstream.pending):
	case declared == PortHTTP:
		d.proto.Protocol = httpAppProtocol(d)
	case knownHTTP && d.by == byIncomplete && (d.maybe == sniff.HTTP1 || d.maybe == sniff.HTTP2):
		d.proto.Protocol = d.maybe
	}
	p.countDetection(Inbound, d, time.Since(start))
	if d.proto.Protocol == sniff.HTTP1 || d.proto.Protocol == sniff.HTTP2 {
		// Requests go to the app on the pool's connections: the one
		// dialed while detecting goes unused, and is not dialed next time.
		p.httpDests.remember(dst, time.Now())
		p.dropUpstream(upstream)
		o := p.serveInboundHTTP(ctx, pc, d.proto.Protocol, appProtoLabel(d.proto.Protocol), from, dst, peer, m)
		o.mtls, o.detected = pc.tls != nil, &d
		return o
	}
	if noCall(d, peer.authz) {
		return outcome{dst: dst, mtls: pc.tls != nil, tls: peer, detected: &d}
	}
	o := p.forwardInbound(ctx, pc, upstream, from, dst, peer, m)
	o.detected = &d
	return o
}

// httpAppProtocol is what a client that spoke first is served in on a
// port declared http: whatever it sent but the app's own TLS goes
// through L7, HTTP/2 if it is (or may become) the preface, else HTTP/1.
// A request the sidecar's detection or its HTTP server finds malformed
// is thus refused by the sidecar, never passed as bytes to an app that
// may be more lenient (empty lines first, a long method, two spaces) and
// read it with the client's own identity header. Other verdicts stand.
func httpAppProtocol(d detection) sniff.Protocol {
	switch {
	case d.by != byClient && d.by != byIncomplete, d.proto.Protocol == sniff.TLS, d.maybe == sniff.TLS:
		return d.proto.Protocol
	case d.proto.Protocol == sniff.HTTP2, d.maybe == sniff.HTTP2:
		return sniff.HTTP2
	}
	return sniff.HTTP1
}

// dialApp makes r dial the app at dst from from (see firstBytesRace.dial
// and Proxy.dialApp).
func (r *firstBytesRace) dialApp(p *Proxy, from netip.Addr, dst netip.AddrPort) {
	r.dial = func(ctx context.Context) (upConn, error) {
		c, err := p.dialApp(ctx, from, dst)
		if err != nil {
			return upConn{}, &dialError{err}
		}
		return upConn{tcp: c}, nil
	}
	r.drop = func(u upConn) { p.closeUpstream(u.tcp) }
}

// forwardInbound sets up forwarding pc to the app as it is, the bytes
// peeked first (outcome.flow, which handle runs), dialing the app (from
// from) unless upstream holds its connection already.
func (p *Proxy) forwardInbound(ctx context.Context, pc *peekConn, upstream *leg, from netip.Addr, dst netip.AddrPort, peer tlsInfo, m *dirMetrics) outcome {
	o := outcome{dst: dst, mtls: pc.tls != nil, tls: peer}
	if d, ok := p.opaqueAllowed(peer.authz); !ok {
		// Not one byte of it reaches the app; a greeting the app sent
		// (dialed early) is not passed on.
		p.dropUpstream(upstream)
		return p.refuseByPolicy(o, peer.authz, d)
	}
	if upstream.tcp == nil {
		c, err := p.dialApp(ctx, from, dst)
		if err != nil {
			m.connectFailures.Inc()
			o.err, o.refused = err, true
			return o
		}
		upstream.tcp = c
	}
	pending, pendingBuf := pc.take()
	up := *upstream
	// The flow's now: the caller neither closes it nor puts back its
	// pending bytes' buffer.
	upstream.tcp, upstream.pending, upstream.pendingBuf = nil, nil, nil
	o.flow = &flowPlan{
		client:   leg{tcp: pc.TCPConn, tls: pc.tls, pending: pending, pendingBuf: pendingBuf},
		upstream: up,
		after:    func(*outcome) { p.closeUpstream(up.tcp) },
	}
	return o
}

// dropUpstream closes the app's connection a detection dialed, unused.
func (p *Proxy) dropUpstream(upstream *leg) {
	upstream.releasePending()
	if upstream.tcp != nil {
		p.closeUpstream(upstream.tcp)
		upstream.tcp = nil
	}
}
