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
	"strings"
	"time"

	"meshgate/proxy/sniff"
)

// terminate runs the server side of mesh TLS on the client, then serves
// what it carries: meshgate/h2 and meshgate/http1 as HTTP, meshgate/tcp
// by what it turns out to be (serveInbound). upstream is the app's
// connection if permissive mode dialed it already; otherwise it is dialed
// from from.
func (p *Proxy) terminate(ctx context.Context, pc *peekConn, upstream *leg, from netip.Addr, dst netip.AddrPort, deadline time.Time, hello *sniff.ClientHello, m *dirMetrics) outcome {
	o := outcome{dst: dst, mtls: true}
	mc, err := p.accept(pc, deadline, hello)
	if err != nil {
		upstream.releasePending()
		o.err, o.refused, o.reason = err, true, reasonOf(err)
		if he, ok := errors.AsType[*handshakeError](err); ok {
			o.alerted = he.alerted
			if he.reason == reasonTimeout {
				o.limited = p.protect.handshakeTimedOut(addrPort(pc.RemoteAddr()), -1, p.cfg.Timeouts.Handshake.D())
			}
		}
		return o
	}
	if !p.protect.admitIdentity(pc.TCPConn, addrPort(pc.RemoteAddr()), mc.info.peer) {
		upstream.releasePending()
		return outcome{dst: dst, mtls: true, tls: mc.info, refused: true, limited: true,
			err: fmt.Errorf("%s holds limits.inbound.maxConnectionsPerIdentity connections already", mc.info.peer)}
	}
	if lo := p.connLimited(dst, addrPort(pc.RemoteAddr()), mc.info.peer, connKeySourceIdentity); lo != nil {
		upstream.releasePending()
		lo.mtls, lo.tls = true, mc.info
		return *lo
	}
	// Policy decides with the client's verified identity, before anything
	// reaches the app: a connection denied outright is refused (opaque)
	// or its requests answered 403 (HTTP).
	mc.info.authz = p.authorizeConn(inboundConn(dst.Port(), addrPort(pc.RemoteAddr()), mc.info.peer), Inbound)
	switch mc.conn.ConnectionState().NegotiatedProtocol {
	case alpnHTTP1:
		// HTTP/1.1 from a client sidecar's pool: requests, each to the app
		// on a connection of the pool; what permissive mode dialed goes
		// unused.
		p.dropUpstream(upstream)
		lo := p.serveH1(ctx, Inbound, pc.TCPConn, mc.conn, nil, from, dst, mc.info, m)
		lo.mtls = true
		return lo
	case alpnH2:
		// HTTP/2 from a client sidecar: each request names the app's
		// protocol (hdrAppProtocol).
		p.dropUpstream(upstream)
		lo := p.serveInboundHTTP(ctx, mc.conn, sniff.HTTP2, "", from, dst, mc.info, m)
		lo.mtls = true
		return lo
	}
	// meshgate/tcp: its plaintext is peeked as a plaintext client's is.
	tpc := &peekConn{TCPConn: pc.TCPConn, tls: mc.conn}
	defer tpc.release()
	return p.serveInbound(ctx, tpc, upstream, from, dst, mc.info, m)
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
	err := offStack(tc.Handshake) // see offStack (issue 12)
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

// helloSettled says whether the peeked bytes settle what the client is:
// a ClientHello or not.
func helloSettled(b []byte) bool {
	_, err := sniff.ParseClientHello(b)
	return err != sniff.ErrNeedMore
}

// offersMesh sorts a ClientHello's ALPN list: whether it offers any mesh
// protocol at all, and the first one we serve ("" if none).
func offersMesh(alpn []string) (mesh bool, served string) {
	for _, p := range alpn {
		if !strings.HasPrefix(p, alpnPrefix) {
			continue
		}
		mesh = true
		if served == "" && slices.Contains(meshProtocols, p) {
			served = p
		}
	}
	return mesh, served
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
