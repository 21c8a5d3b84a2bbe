package proxy

import (
	"net"
	"net/netip"

	"meshgate/intercept"
)

// OriginalDstFunc returns the address a captured connection was made to
// before the namespace's rules sent it to the proxy. It is the seam
// between interception and forwarding: by default it is SO_ORIGINAL_DST
// (or, for inbound in tproxy mode, the socket's local address), and tests
// and benchmarks that cannot install iptables rules (no root) replace it,
// for instance with a function returning a loopback backend's address.
// It runs on the connection's goroutine and may be called concurrently.
type OriginalDstFunc func(dir Direction, c *net.TCPConn) (netip.AddrPort, error)

// WithOriginalDst replaces the original-destination lookup (see
// OriginalDstFunc). The loop guard still applies to what fn returns.
func WithOriginalDst(fn OriginalDstFunc) Option {
	return func(p *Proxy) { p.origDst = fn }
}

// tproxied reports whether l accepted c from TPROXY, in tproxy mode: its
// local address is then where the client was going. A connection whose
// local port is the listener's own was redirected there by nat: the pod
// calling its own address, which TPROXY (only for traffic from outside
// the pod) does not see. The inbound port itself is never captured, so
// the two cannot be confused.
func (p *Proxy) tproxied(l *captureListener, c *net.TCPConn) bool {
	return l.dir == Inbound && p.cfg.Mode == intercept.ModeTProxy && addrPort(c.LocalAddr()).Port() != l.addr.Port()
}

// originalDst finds where the client was going.
// tproxied is p.tproxied(l, c).
func (p *Proxy) originalDst(l *captureListener, c *net.TCPConn, tproxied bool) (netip.AddrPort, error) {
	if p.origDst != nil {
		return p.origDst(l.dir, c)
	}
	if tproxied {
		// TPROXY delivers the connection without rewriting it: the
		// accepted socket's local address is where the client was going.
		return addrPort(c.LocalAddr()), nil
	}
	return redirectOriginalDst(c)
}
