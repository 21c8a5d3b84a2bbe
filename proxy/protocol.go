package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"meshgate/proxy/sniff"
)

// How a protocol verdict was reached: the "by" label of
// meshgate_protocol_detections_total and the log line's detected_by.
const (
	byClient      = "client"        // the client's first bytes
	byServerFirst = "server_first"  // the upstream spoke first, the client silent
	byDeclared    = "declared"      // protocols.ports says opaque
	byRemembered  = "remembered"    // the destination spoke first before
	byIncomplete  = "incomplete"    // the client's bytes settled nothing (it went quiet, or the server answered them)
	byTimeout     = "timeout"       // nobody spoke within protocols.detectTimeout
	byClosed      = "client_closed" // the client closed before settling anything
)

// detectQuiet is how long the client may pause after first bytes that
// settle nothing before the connection is taken for opaque: real clients
// send a request line, a preface or a ClientHello in one write.
const detectQuiet = 50 * time.Millisecond

// detectSettled says whether the client's bytes decide the protocol.
func detectSettled(b []byte) bool {
	_, err := sniff.Detect(b)
	return err == nil
}

// detectRace is the wait of protocol detection on pc until deadline: for
// bytes that settle the protocol (sniff.Detect), given up when the client
// goes quiet after bytes that settle nothing or when the upstream (once
// set to be dialed) answers them.
func detectRace(pc *peekConn, deadline time.Time) firstBytesRace {
	return firstBytesRace{client: pc, settled: detectSettled, deadline: deadline, quiet: detectQuiet, upstreamEnds: true}
}

// destMemory remembers destinations for a while: those whose server
// spoke first (their next connections skip detection), and those whose
// clients spoke HTTP (theirs skip the dial made while detecting). It is
// bounded: past serverFirstMax entries, expired ones go, then the oldest.
type destMemory struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[netip.AddrPort]time.Time // destination → when it is forgotten
}

// serverFirstMax bounds the destinations remembered.
const serverFirstMax = 4096

func newDestMemory(ttl time.Duration) *destMemory {
	return &destMemory{ttl: ttl, m: make(map[netip.AddrPort]time.Time)}
}

// has reports whether dst is remembered as server-first.
func (s *destMemory) has(dst netip.AddrPort, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.m[dst]
	if ok && !now.Before(until) {
		delete(s.m, dst)
		return false
	}
	return ok
}

// remember records dst as server-first from now.
func (s *destMemory) remember(dst netip.AddrPort, now time.Time) {
	if s.ttl <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[dst]; !ok && len(s.m) >= serverFirstMax {
		var oldest netip.AddrPort
		var oldestUntil time.Time
		for k, until := range s.m {
			if !now.Before(until) {
				delete(s.m, k)
				continue
			}
			if oldestUntil.IsZero() || until.Before(oldestUntil) {
				oldest, oldestUntil = k, until
			}
		}
		if len(s.m) >= serverFirstMax {
			delete(s.m, oldest)
		}
	}
	s.m[dst] = now.Add(s.ttl)
}

// detection is a protocol verdict, for metrics and the log line.
type detection struct {
	proto sniff.Detection
	by    string
	// maybe is, when the client's bytes settled nothing (byIncomplete),
	// what they could still become (sniff.Detect): TLS, HTTP1 or HTTP2.
	maybe sniff.Protocol
}

// verdict reads what a race's opening says of the protocol: the server
// spoke first, the client closed or went quiet without settling
// anything, nobody spoke, or the client's bytes say (sniff.Detect).
func verdict(op opening, peeked []byte) detection {
	switch {
	case op.first == speakerServer:
		return detection{by: byServerFirst}
	case len(peeked) == 0 && op.clientEOF:
		return detection{by: byClosed}
	case len(peeked) == 0:
		return detection{by: byTimeout}
	}
	det, err := sniff.Detect(peeked)
	if err == nil {
		return detection{proto: det, by: byClient}
	}
	return detection{by: byIncomplete, maybe: det.Protocol}
}

// knownHTTP says whether dst speaks HTTP, so that its connections need
// not be dialed while detecting: its port is declared http, or its
// clients spoke HTTP within destMemory.
func (p *Proxy) knownHTTP(dst netip.AddrPort, now time.Time) bool {
	return p.cfg.Protocols.Ports[dst.Port()] == PortHTTP || p.httpDests.has(dst, now)
}

// skipDetection says why an outbound connection to dst is not detected
// ("" when it is): its port is declared opaque, or it spoke first before.
func (p *Proxy) skipDetection(dst netip.AddrPort) string {
	if p.cfg.Protocols.Ports[dst.Port()] == PortOpaque {
		return byDeclared
	}
	if p.serverFirst.has(dst, time.Now()) {
		return byRemembered
	}
	return ""
}

// countDetection counts a verdict and how long it took.
func (p *Proxy) countDetection(dir Direction, d detection, took time.Duration) {
	p.metrics.detections.WithLabelValues(dir.String(), d.proto.Protocol.String(), d.by).Inc()
	p.metrics.detectSeconds.WithLabelValues(dir.String()).Observe(took.Seconds())
	if d.proto.Protocol == sniff.TLS {
		p.metrics.appTLS.WithLabelValues(dir.String(), p.metrics.sniSeen.label(d.proto.Hello.ServerName)).Inc()
	}
}

// detectOutbound serves an outbound connection whose protocol is not
// declared: it dials the destination (with mesh TLS when meshTLS) while
// it waits for the app's first bytes (firstBytesRace), so that a server
// that speaks first is heard at once, classifies what the app sent
// (sniff.Detect), and forwards both sides' first bytes on. The bytes
// pass as they are whatever the verdict: it labels the connection.
func (p *Proxy) detectOutbound(ctx context.Context, client *net.TCPConn, dst netip.AddrPort, meshTLS bool, m *dirMetrics) outcome {
	start := time.Now()
	o := outcome{dst: dst, mtls: meshTLS}
	pc := &peekConn{TCPConn: client}
	defer pc.release()
	l7 := meshTLS && p.cfg.Protocols.L7
	if l7 && p.knownHTTP(dst, start) {
		return p.detectKnownHTTP(ctx, pc, dst, start, m)
	}
	var svc *service // written by the dial, read once run has returned
	race := detectRace(pc, start.Add(p.cfg.Protocols.DetectTimeout.D()))
	race.dial = func(ctx context.Context) (upConn, error) {
		s, err := p.dialService(ctx, dst, meshTLS, alpnTCP)
		if err != nil {
			return upConn{}, err
		}
		svc = s
		return s.conn, nil
	}
	race.drop = func(u upConn) {
		p.closeUpstream(u.tcp)
		svc.finish(false)
	}
	op, err := race.run(ctx)
	if err != nil {
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
		svc.finish(true)
		return p.detectKnownHTTP(ctx, pc, dst, start, m)
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
		svc.finish(false)
		lo := p.serveOutboundHTTP(ctx, pc, dst, d.proto.Protocol, m)
		lo.detected = &d
		return lo
	}

	pending, pendingBuf := pc.take()
	o.sent, o.received, o.err = forward(leg{tcp: client, pending: pending, pendingBuf: pendingBuf}, upstream,
		p.cfg.Timeouts.Idle.D(), p.copyMode, m)
	svc.finish(failedEarly(o))
	if meshTLS {
		p.noteRefusal(&o, o.err, o.received)
	}
	return o
}

// detectKnownHTTP serves a connection to a mesh destination whose port is
// declared http or whose clients spoke HTTP before: it waits for the app's first bytes without dialing
// (HTTP goes by the pooled L7 connections), and if they are not HTTP
// after all, dials the destination with mesh TLS and passes them on.
func (p *Proxy) detectKnownHTTP(ctx context.Context, pc *peekConn, dst netip.AddrPort, start time.Time, m *dirMetrics) outcome {
	op := opening{first: speakerClient}
	if !detectSettled(pc.peeked()) {
		race := detectRace(pc, start.Add(p.cfg.Protocols.DetectTimeout.D()))
		var err error
		if op, err = race.run(ctx); err != nil {
			return outcome{dst: dst, err: err, refused: true, mtls: true}
		}
	}
	d := verdict(op, pc.peeked())
	p.countDetection(Outbound, d, time.Since(start))
	if d.proto.Protocol == sniff.HTTP1 || d.proto.Protocol == sniff.HTTP2 {
		p.httpDests.remember(dst, time.Now())
		o := p.serveOutboundHTTP(ctx, pc, dst, d.proto.Protocol, m)
		o.detected = &d
		return o
	}
	o := p.opaqueOut(ctx, pc, dst, true, m)
	o.detected = &d
	return o
}

// opaqueOut connects to an endpoint of dst, with mesh TLS (meshgate/tcp)
// when meshTLS, and forwards the connection as it is, the bytes peeked
// into pc (if any) first.
func (p *Proxy) opaqueOut(ctx context.Context, pc *peekConn, dst netip.AddrPort, meshTLS bool, m *dirMetrics) outcome {
	o := outcome{dst: dst, mtls: meshTLS}
	svc, err := p.dialService(ctx, dst, meshTLS, alpnTCP)
	if err != nil {
		return p.dialFailed(o, err, m)
	}
	defer p.closeUpstream(svc.conn.tcp)
	o.tls, o.endpoint = svc.info, svc.endpoint
	pending, pendingBuf := pc.take()
	o.sent, o.received, o.err = forward(leg{tcp: pc.TCPConn, pending: pending, pendingBuf: pendingBuf}, leg{tcp: svc.conn.tcp, tls: svc.conn.tls},
		p.cfg.Timeouts.Idle.D(), p.copyMode, m)
	svc.finish(failedEarly(o))
	if meshTLS {
		p.noteRefusal(&o, o.err, o.received)
	}
	return o
}

// dialFailed is the outcome of a connection whose upstream could not be
// reached (a *dialError) or refused mesh TLS (a *handshakeError).
func (p *Proxy) dialFailed(o outcome, err error, m *dirMetrics) outcome {
	o.err, o.refused = err, true
	if de, ok := errors.AsType[*dialError](err); ok {
		m.connectFailures.Inc()
		o.err = de.err
	}
	o.reason = reasonOf(err)
	return o
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
