package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// originate runs the client side of mesh TLS for proto over upstream,
// within timeouts.handshake, and checks that the server is a meshgate
// sidecar serving proto (by the ALPN it picked) with a SPIFFE ID, the one
// expected of dst (the service address the app dialed; upstream may be
// another endpoint of the service). It counts the handshake either way;
// an error is a *handshakeError.
func (p *Proxy) originate(ctx context.Context, upstream *net.TCPConn, dst netip.AddrPort, proto string) (meshConn, error) {
	cfg := p.mesh.clientConfig(p.mesh.expected(dst.Addr()), proto)
	if cfg == nil {
		err := &handshakeError{reason: reasonNotReady, err: errors.New("mesh TLS to " + upstream.RemoteAddr().String() + ": no client certificate yet")}
		p.countHandshake(Outbound, tlsInfo{}, err)
		return meshConn{}, err
	}
	// The TLS reads through a peekConn (with nothing peeked), which
	// forward can make not wait (see leg.reader).
	tc := tls.Client(&peekConn{TCPConn: upstream}, cfg)
	// A deadline rather than HandshakeContext, which would cost a
	// goroutine per handshake; ctx (cancelled when the drain's grace
	// period is over) interrupts it the same way.
	upstream.SetDeadline(time.Now().Add(p.cfg.Timeouts.Handshake.D()))
	stop := context.AfterFunc(ctx, func() { upstream.SetDeadline(aLongTimeAgo) })
	err := offStack(tc.Handshake)
	if stop() && err == nil {
		// The deadline bounded the handshake only: whoever carries the
		// connection on sets its own (forward, the L7 pool).
		upstream.SetDeadline(time.Time{})
	}
	var info tlsInfo
	if err == nil {
		st := tc.ConnectionState()
		info, err = peerInfo(&st, proto)
	}
	if err != nil {
		he := p.handshakeFailed(err, p.cfg.Timeouts.Handshake.D())
		he.err = fmt.Errorf("mesh TLS to %s: %w", upstream.RemoteAddr(), he.err)
		err = he
	}
	p.countHandshake(Outbound, info, err)
	return meshConn{conn: tc, info: info}, err
}

// isRemoteAlert reports whether err is a TLS alert the peer sent.
func isRemoteAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}
