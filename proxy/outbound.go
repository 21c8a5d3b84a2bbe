package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"meshgate/proxy/sniff"
)

// errOutsideMesh refuses an outbound connection to a destination without
// a sidecar when config allows no plaintext there.
var errOutsideMesh = errors.New("destination is outside mtls.meshCIDRs and mtls.plaintextOutsideMesh is false: " +
	"add it to mtls.meshCIDRs if it runs a sidecar, or allow plaintext outside the mesh")

// outbound serves a connection the app made: to the mesh, as mTLS with
// ALPN meshgate/tcp to the destination's address (the peer's rules hand it
// to its sidecar); elsewhere, plaintext where allowed. Its protocol is
// detected while the destination is dialed (detectOutbound), unless its
// port is declared opaque or it is known to speak first.
func (p *Proxy) outbound(ctx context.Context, client *net.TCPConn, dst netip.AddrPort, m *dirMetrics) outcome {
	s := p.mesh
	inMesh := s.inMesh(dst.Addr())
	if !inMesh && !s.plainOut {
		p.metrics.plaintextRefused.WithLabelValues(Outbound.String(), strconv.Itoa(int(dst.Port()))).Inc()
		return outcome{dst: dst, err: errOutsideMesh, refused: true, reason: refusedOutside}
	}
	meshTLS := inMesh && s.outboundMTLS()
	az := p.authorizeOut(dst)
	if az.pending() != nil {
		return p.outboundByRequest(ctx, client, dst, meshTLS, az, m)
	}
	by := p.skipDetection(dst)
	if by == "" {
		return p.detectOutbound(ctx, client, dst, meshTLS, az, m)
	}
	d := detection{by: by}
	p.countDetection(Outbound, d, 0)
	o := p.opaqueOut(ctx, &peekConn{TCPConn: client}, dst, meshTLS, m)
	o.detected = &d
	return o
}

// detectOutbound serves an outbound connection whose protocol is not
// declared: it dials the destination (with mesh TLS when meshTLS) while
// it waits for the app's first bytes (firstBytesRace), so that a server
// that speaks first is heard at once (not an HTTP/2 server's SETTINGS,
// held while the app's bytes are awaited: see h2Greeting), classifies
// what the app sent (sniff.Detect), and forwards both sides' first bytes
// on. The bytes
// pass as they are whatever the verdict: it labels the connection.
func (p *Proxy) detectOutbound(ctx context.Context, client *net.TCPConn, dst netip.AddrPort, meshTLS bool, az *connAuthz, m *dirMetrics) outcome {
	start := time.Now()
	o := outcome{dst: dst, mtls: meshTLS}
	pc := &peekConn{TCPConn: client}
	defer pc.release()
	l7 := meshTLS && p.cfg.Protocols.L7
	if l7 && p.knownHTTP(dst, start) {
		return p.detectKnownHTTP(ctx, pc, dst, start, az, m)
	}
	var svc *service // written by the dial, read once run has returned
	to := p.destTimeouts(dst)
	race := detectRace(pc, start.Add(p.cfg.Protocols.DetectTimeout.D()))
	race.dial = func(ctx context.Context) (upConn, error) {
		s, err := p.dialService(to.dialing(ctx), dst, meshTLS, alpnTCP)
		if err != nil {
			return upConn{}, err
		}
		svc = s
		return s.conn, nil
	}
	race.drop = func(u upConn) {
		p.closeUpstream(u.tcp)
		svc.handOver(false)
	}
	op, err := race.run(ctx)
	if err != nil {
		if _, refused := asGuardError(err); refused && l7 {
			// The destination's circuit is open (or its connections
			// are all taken): an app that speaks HTTP hears it as a
			// 503 per request, with the reason (or its fallback).
			return p.detectKnownHTTP(ctx, pc, dst, start, az, m)
		}
		return p.dialFailed(o, err, m)
	}
	kept := false // handed to the HTTP/1 pool
	defer func() {
		if !kept {
			p.closeUpstream(op.upstream.tcp)
		}
	}()
	o.tls, o.endpoint = svc.info, svc.endpoint
	upstream := leg{tcp: op.upstream.tcp, tls: op.upstream.tls, pending: op.greeting, pendingBuf: op.greetBuf}
	if op.upErr != nil && l7 && !isRemoteAlert(op.upErr) {
		// The peer sidecar reset the connection before the app said
		// anything that settled its protocol: its app is not there. An
		// app that speaks HTTP is to hear that as a 502 with the reason,
		// not a reset, so its bytes are awaited as if dst were known to
		// speak HTTP.
		upstream.releasePending()
		svc.handOver(true) // the HTTP requests' own outcomes tell the breaker
		return p.detectKnownHTTP(ctx, pc, dst, start, az, m)
	}
	if op.upErr != nil {
		// The upstream failed before the app said anything that settled
		// its protocol: a reset, or (mesh) the peer sidecar refusing us
		// with an alert, which in TLS 1.3 comes after our handshake.
		upstream.releasePending()
		o.err, o.refused = fmt.Errorf("read from upstream: %w", op.upErr), true
		svc.finish(true)
		if meshTLS {
			p.noteRefusal(&o, op.upErr, 0)
		}
		return o
	}

	d := verdict(op, pc.peeked())
	if d.by == byServerFirst && len(op.greeting) > 0 {
		p.serverFirst.remember(dst, time.Now())
	}
	p.countDetection(Outbound, d, time.Since(start))
	o.detected = &d
	if l7 && (d.proto.Protocol == sniff.HTTP1 || d.proto.Protocol == sniff.HTTP2) {
		// HTTP goes by the pooled L7 connections, and the next
		// connections to dst are not dialed while detecting. The mesh
		// connection dialed this time joins the HTTP/1 pool: its peer
		// serves HTTP it finds on meshgate/tcp as it serves meshgate/http1
		// (serveInbound), so its handshake is not thrown away.
		p.httpDests.remember(dst, time.Now())
		if d.proto.Protocol == sniff.HTTP1 && upstream.tls != nil && len(upstream.pending) == 0 {
			p.l7.h1.put(newH1Up(upstream.tcp, upstream.tls, svc.info, poolKey{addr: svc.endpoint, mesh: true}), time.Now())
			kept = true
		}
		upstream.releasePending()
		svc.handOver(false)
		lo := p.serveOutboundHTTP(ctx, pc, dst, d.proto.Protocol, az, m)
		lo.detected = &d
		return lo
	}

	if fo, stop := p.tcpFault(client, o); stop {
		upstream.releasePending()
		svc.finish(false)
		fo.detected = &d
		return fo
	}
	pending, pendingBuf := pc.take()
	kept = true // the flow's now
	o.flow = &flowPlan{
		client:   leg{tcp: client, pending: pending, pendingBuf: pendingBuf},
		upstream: upstream,
		idle:     to.idle,
		after: func(o *outcome) {
			to.countIdle(p, o.err)
			svc.finish(failedEarly(*o))
			if meshTLS {
				p.noteRefusal(o, o.err, o.received)
			}
			p.closeUpstream(upstream.tcp)
		},
	}
	return o
}

// detectKnownHTTP serves a connection to a mesh destination whose port is
// declared http or whose clients spoke HTTP before: it waits for the app's first bytes without dialing
// (HTTP goes by the pooled L7 connections), and if they are not HTTP
// after all, dials the destination with mesh TLS and passes them on.
func (p *Proxy) detectKnownHTTP(ctx context.Context, pc *peekConn, dst netip.AddrPort, start time.Time, az *connAuthz, m *dirMetrics) outcome {
	d, err := p.awaitClient(ctx, pc, start)
	if err != nil {
		return outcome{dst: dst, err: err, refused: true, mtls: true}
	}
	if d.proto.Protocol == sniff.HTTP1 || d.proto.Protocol == sniff.HTTP2 {
		p.httpDests.remember(dst, time.Now())
		o := p.serveOutboundHTTP(ctx, pc, dst, d.proto.Protocol, az, m)
		o.detected = &d
		return o
	}
	o := p.opaqueOut(ctx, pc, dst, true, m)
	o.detected = &d
	return o
}

// awaitClient classifies what the app sends first on an outbound
// connection that nothing is dialed for yet (protocols.detectTimeout at
// most since start) and counts the verdict.
func (p *Proxy) awaitClient(ctx context.Context, pc *peekConn, start time.Time) (detection, error) {
	op := opening{first: speakerClient}
	if !detectSettled(pc.peeked()) {
		race := detectRace(pc, start.Add(p.cfg.Protocols.DetectTimeout.D()))
		var err error
		if op, err = race.run(ctx); err != nil {
			return detection{}, err
		}
	}
	d := verdict(op, pc.peeked())
	p.countDetection(Outbound, d, time.Since(start))
	return d, nil
}

// outboundByRequest serves a connection that policy denied, or whose
// HTTP requests it decides (az): nothing is dialed until that is known.
// The app's first bytes are awaited (protocols.detectTimeout at most).
// HTTP is served request by request, so that each is decided (a denied
// one answered 403 by the policy stage): to a mesh destination with L7
// on, or, denied, to any. Anything else is decided as a connection that
// is not HTTP (policy.ConnDecision.Opaque): refused with a reset, or
// forwarded.
func (p *Proxy) outboundByRequest(ctx context.Context, client *net.TCPConn, dst netip.AddrPort, meshTLS bool, az *connAuthz, m *dirMetrics) outcome {
	pc := &peekConn{TCPConn: client}
	defer pc.release()
	d, err := p.awaitClient(ctx, pc, time.Now())
	if err != nil {
		return outcome{dst: dst, err: err, refused: true}
	}
	if noCall(d, az) {
		return outcome{dst: dst, detected: &d}
	}
	isHTTP := d.proto.Protocol == sniff.HTTP1 || d.proto.Protocol == sniff.HTTP2
	if isHTTP && (az.pending().Final() != nil || meshTLS && p.cfg.Protocols.L7) {
		o := p.serveOutboundHTTP(ctx, pc, dst, d.proto.Protocol, az, m)
		o.detected = &d
		return o
	}
	if dec, ok := p.opaqueAllowed(az); !ok {
		o := p.refuseByPolicy(outcome{dst: dst}, az, dec)
		o.detected = &d
		return o
	}
	o := p.opaqueOut(ctx, pc, dst, meshTLS, m)
	o.detected = &d
	return o
}

// opaqueOut connects to an endpoint of dst, with mesh TLS (meshgate/tcp)
// when meshTLS, and sets up forwarding the connection as it is, the
// bytes peeked into pc (if any) first (outcome.flow, which handle runs).
func (p *Proxy) opaqueOut(ctx context.Context, pc *peekConn, dst netip.AddrPort, meshTLS bool, m *dirMetrics) outcome {
	o := outcome{dst: dst, mtls: meshTLS}
	if fo, stop := p.tcpFault(pc.TCPConn, o); stop {
		return fo
	}
	to := p.destTimeouts(dst)
	svc, err := p.dialService(to.dialing(ctx), dst, meshTLS, alpnTCP)
	if err != nil {
		return p.dialFailed(o, err, m)
	}
	o.tls, o.endpoint = svc.info, svc.endpoint
	pending, pendingBuf := pc.take()
	o.flow = &flowPlan{
		client:   leg{tcp: pc.TCPConn, pending: pending, pendingBuf: pendingBuf},
		upstream: leg{tcp: svc.conn.tcp, tls: svc.conn.tls},
		idle:     to.idle,
		after: func(o *outcome) {
			to.countIdle(p, o.err)
			svc.finish(failedEarly(*o))
			if meshTLS {
				p.noteRefusal(o, o.err, o.received)
			}
			p.closeUpstream(svc.conn.tcp)
		},
	}
	return o
}

// destTimeouts are the timeouts of an opaque outbound connection that
// its resilience destination sets (timeouts.connect, timeouts.idle); 0
// where it sets none, and the proxy's timeouts.connect or timeouts.idle
// apply. dest is the destination's name, the label its timeouts are
// counted under.
type destTimeouts struct {
	connect, idle time.Duration
	dest          string
}

// destTimeouts finds the timeouts of dst's resilience destination for an
// opaque connection to it: once per connection, against the table in
// effect then.
func (p *Proxy) destTimeouts(dst netip.AddrPort) destTimeouts {
	dp := p.lookupRes(p.resilienceTable(), dst)
	to := &dp.Policy().Timeouts
	return destTimeouts{connect: to.Connect, idle: to.Idle, dest: dp.Key()}
}

// dialing returns ctx carrying the destination's connect timeout, when it
// sets one: dialEndpoint bounds each endpoint's dial and mesh handshake
// by it instead of the proxy's timeouts.connect.
func (t destTimeouts) dialing(ctx context.Context) context.Context {
	if t.connect > 0 {
		return context.WithValue(ctx, connectKey{}, t.connect)
	}
	return ctx
}

// countIdle counts err in meshgate_timeouts_total when it is the
// destination's idle timeout ending the connection (as a WebSocket's is
// counted, h1Conn.tunnel); the proxy's own timeouts.idle is not a
// resilience timeout, and is not.
func (t destTimeouts) countIdle(p *Proxy, err error) {
	if t.idle > 0 && errors.Is(err, ErrIdleTimeout) {
		p.res.countTimeout(Outbound, t.dest, tkIdle)
	}
}

// failedEarly says whether a forwarded connection failed before the
// upstream sent a byte (a reset: the endpoint's app is not there), which
// counts against the endpoint.
func failedEarly(o outcome) bool {
	return o.err != nil && o.received == 0 && !errors.Is(o.err, ErrIdleTimeout)
}

// noteRefusal gives a mesh connection that failed before the peer sent a
// byte the reason the peer refused it, when err is the peer's TLS alert:
// in TLS 1.3 the client's handshake ends before the server has verified
// the client's certificate, so a refusal comes as the server's first
// record, an alert.
func (p *Proxy) noteRefusal(o *outcome, err error, received int64) {
	if err != nil && received == 0 && isRemoteAlert(err) {
		o.reason = "refused by peer: " + p.meshTLS.Reason(err)
	}
}
