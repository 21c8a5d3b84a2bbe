package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"time"

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
//   - permissive: the same for mesh TLS, and anything else is forwarded
//     as plaintext with the peeked bytes replayed. The app is dialed
//     while the client's first bytes are awaited (firstBytesRace), so a
//     server-first app's greeting reaches a silent plaintext client at
//     once (after mtls.greetingHold) instead of after a timeout.
//
// The first bytes and the handshake together get timeouts.handshake. The
// app is dialed from from: the client's own address in tproxy mode, or,
// when invalid, the passthrough source (see dialApp).
func (p *Proxy) inbound(ctx context.Context, client *net.TCPConn, from netip.Addr, dst netip.AddrPort, m *dirMetrics) outcome {
	mode := p.mesh.inboundMode(dst.Port())
	if mode == MTLSDisable {
		return p.plain(ctx, client, from, dst, m)
	}
	start := time.Now()
	timeout := p.cfg.Timeouts.Handshake.D()
	pc := &peekConn{TCPConn: client}
	defer pc.release()
	race := firstBytesRace{client: pc, settled: helloSettled, deadline: start.Add(timeout)}
	if mode == MTLSPermissive {
		race.dial = func(ctx context.Context) (upConn, error) {
			c, err := p.dialApp(ctx, from, dst)
			if err != nil {
				return upConn{}, &dialError{err}
			}
			return upConn{tcp: c}, nil
		}
		race.drop = func(u upConn) { p.closeUpstream(u.tcp) }
		race.holdUntil = start.Add(p.cfg.MTLS.GreetingHold.D())
	}
	op, err := race.run(ctx)
	if err != nil {
		if de, ok := errors.AsType[*dialError](err); ok {
			m.connectFailures.Inc()
			err = de.err
		}
		return outcome{dst: dst, err: err, refused: true}
	}
	upstream := leg{tcp: op.upstream.tcp, pending: op.greeting, pendingBuf: op.greetBuf}
	if op.upstream.tcp != nil {
		defer p.closeUpstream(op.upstream.tcp)
	}

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
		return p.terminate(ctx, pc, upstream, from, dst, start.Add(timeout), &hello, m)
	case mode == MTLSStrict:
		p.metrics.plaintextRefused.WithLabelValues(Inbound.String(), strconv.Itoa(int(dst.Port()))).Inc()
		return outcome{dst: dst, err: notMeshError(op, pc.peeked(), helloErr, timeout), refused: true, reason: refusedStrict}
	}

	// Permissive, and not mesh TLS: plaintext, as it came.
	if op.upErr != nil {
		upstream.releasePending()
		return outcome{dst: dst, err: fmt.Errorf("read from upstream: %w", op.upErr), refused: true}
	}
	pending, pendingBuf := pc.take()
	o := outcome{dst: dst}
	o.sent, o.received, o.err = forward(leg{tcp: client, pending: pending, pendingBuf: pendingBuf}, upstream,
		p.cfg.Timeouts.Idle.D(), p.copyMode, m)
	return o
}

// terminate runs the server side of mesh TLS on the client, then
// forwards the plaintext to the app (dialed now from from, unless
// permissive mode dialed it already).
func (p *Proxy) terminate(ctx context.Context, pc *peekConn, upstream leg, from netip.Addr, dst netip.AddrPort, deadline time.Time, hello *sniff.ClientHello, m *dirMetrics) outcome {
	o := outcome{dst: dst, mtls: true}
	mc, err := p.accept(pc, deadline, hello)
	if err != nil {
		upstream.releasePending()
		o.err, o.refused, o.reason = err, true, reasonOf(err)
		if he, ok := errors.AsType[*handshakeError](err); ok {
			o.alerted = he.alerted
		}
		return o
	}
	o.tls = mc.info
	var head []byte // what the app gets first, for meshgate/http1
	switch mc.conn.ConnectionState().NegotiatedProtocol {
	case alpnH2:
		// L7 HTTP from a client sidecar: requests, each to the app on a
		// connection of the pool; what permissive mode dialed goes unused.
		upstream.releasePending()
		return p.serveInboundHTTP(ctx, mc, from, dst, m)
	case alpnHTTP1:
		// A request that switches protocols: its head, with the client's
		// identity set, then the bytes as they are.
		if head, err = p.upgradeHead(mc); err != nil {
			upstream.releasePending()
			o.err, o.refused = err, true
			return o
		}
	}
	if upstream.tcp == nil {
		c, err := p.dialApp(ctx, from, dst)
		if err != nil {
			m.connectFailures.Inc()
			o.err, o.refused = err, true
			return o
		}
		defer p.closeUpstream(c)
		upstream.tcp = c
	}
	o.sent, o.received, o.err = forward(leg{tcp: pc.TCPConn, tls: mc.conn, pending: head}, upstream, p.cfg.Timeouts.Idle.D(), p.copyMode, m)
	return o
}

// accept runs the server side of a mesh handshake on pc (whose ClientHello
// hello was peeked and is replayed) until deadline, and checks the
// protocol and the client's SPIFFE ID. It counts the handshake either
// way; an error is a *handshakeError.
func (p *Proxy) accept(pc *peekConn, deadline time.Time, hello *sniff.ClientHello) (meshConn, error) {
	cfg := p.mesh.serverConfig()
	if cfg == nil {
		err := &handshakeError{reason: reasonNotReady, err: errors.New("mesh TLS: no server certificate yet")}
		p.countHandshake(Inbound, tlsInfo{}, err)
		return meshConn{}, err
	}
	tc := tls.Server(pc, cfg)
	pc.SetDeadline(deadline)
	err := tc.Handshake()
	if err == nil {
		// The deadline bounded the handshake only (see originate).
		pc.SetDeadline(time.Time{})
	}
	alerted := err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
	var info tlsInfo
	if err == nil {
		st := tc.ConnectionState()
		// The handshake picked one of meshProtocols that the ClientHello
		// offered (or none, from a client that is no sidecar).
		proto := st.NegotiatedProtocol
		if !slices.Contains(meshProtocols, proto) {
			proto = alpnTCP
		}
		info, err = peerInfo(&st, proto)
	}
	if err != nil {
		he := p.handshakeFailed(err, p.cfg.Timeouts.Handshake.D())
		he.err = fmt.Errorf("mesh TLS from client: %w", he.err)
		if mesh, _ := offersMesh(hello.ALPN); !mesh {
			// Whatever failed, the cause is a client that is no sidecar.
			he.reason = reasonALPN
			he.err = fmt.Errorf("client offers no mesh protocol (ALPN %q), it is not a meshgate sidecar: %w", hello.ALPN, he.err)
		}
		he.alerted = alerted
		err = he
	}
	p.countHandshake(Inbound, info, err)
	return meshConn{conn: tc, info: info}, err
}

// errNoBytes: the client sent nothing to parse.
var errNoBytes = errors.New("no bytes")

// probe answers a connection made to the inbound listener itself rather
// than redirected to it, which has nowhere to go (refusal says why), when
// mTLS is on: if it opens with a ClientHello, the mesh handshake is run
// before the refusal. So the mesh port shows a TLS scanner (sslscan, with
// a client certificate) what mesh peers get: TLS 1.3 only, a client
// certificate required.
func (p *Proxy) probe(ctx context.Context, client *net.TCPConn, refusal outcome) outcome {
	if p.mesh.tls == nil || p.mesh.mode == MTLSDisable {
		return refusal
	}
	deadline := time.Now().Add(p.cfg.Timeouts.Handshake.D())
	pc := &peekConn{TCPConn: client}
	defer pc.release()
	race := firstBytesRace{client: pc, settled: helloSettled, deadline: deadline}
	if _, err := race.run(ctx); err != nil || len(pc.peeked()) == 0 {
		return refusal
	}
	hello, err := sniff.ParseClientHello(pc.peeked())
	if err != nil {
		return refusal
	}
	refusal.mtls = true
	mc, err := p.accept(pc, deadline, &hello)
	if err != nil {
		refusal.reason = reasonOf(err)
		refusal.err = fmt.Errorf("%w; its TLS handshake failed too: %w", refusal.err, err)
		if he, ok := errors.AsType[*handshakeError](err); ok {
			refusal.alerted = he.alerted
		}
		return refusal
	}
	refusal.tls = mc.info
	return refusal
}

// dialError marks the upstream dial failing during a firstBytesRace.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// helloSettled says whether the peeked bytes settle what the client is:
// a ClientHello or not.
func helloSettled(b []byte) bool {
	_, err := sniff.ParseClientHello(b)
	return err != sniff.ErrNeedMore
}

// notMeshError says what a client refused in strict mode sent instead of
// mesh TLS.
func notMeshError(op opening, peeked []byte, helloErr error, timeout time.Duration) error {
	switch {
	case len(peeked) == 0 && op.clientEOF:
		return errors.New("client closed without sending a ClientHello")
	case len(peeked) == 0 && op.first == speakerServer:
		return errors.New("the app spoke first and the client sent no ClientHello")
	case len(peeked) == 0:
		return fmt.Errorf("client sent nothing within timeouts.handshake (%v)", timeout)
	case errors.Is(helloErr, sniff.ErrNeedMore):
		return fmt.Errorf("client sent %d bytes of a ClientHello, not all of it, within timeouts.handshake (%v)", len(peeked), timeout)
	}
	return fmt.Errorf("client sent no TLS ClientHello: %w", helloErr)
}
