package proxy

import (
	"errors"
	"net"
	"net/netip"
)

// errLoop refuses a connection whose original destination is the proxy
// itself: dialing it would loop.
var errLoop = errors.New("loop guard: the original destination is this proxy's own capture port")

// errCaptured refuses a connection that the proxy itself opened: its own
// upstream connection came back to a capture listener, so the rules do not
// exempt the proxy. Forwarding it would dial again and loop for ever.
var errCaptured = errors.New("loop guard: this connection was opened by the proxy itself and captured again; " +
	"the redirect rules must exempt the proxy's socket mark (--proxy-mark) or its UID (--proxy-uid)")

// errNotRedirected says a connection reached a capture listener without
// being redirected there: someone connected to the port directly.
var errNotRedirected = errors.New("not redirected: no NAT entry for this connection (was it made to the capture port directly?)")

// ownPort is a capture listener's port in its address family: the IPv4
// and IPv6 listeners are bound apart (tcp4, tcp6), so a port of one
// family may be another program's in the other.
type ownPort struct {
	port uint16
	v6   bool
}

func ownPortOf(a netip.AddrPort) ownPort {
	return ownPort{a.Port(), !a.Addr().Unmap().Is4()}
}

// isSelf reports whether dst is one of the proxy's capture listeners: a
// capture port of dst's family on an address of this namespace. Only a
// capture port is looked into further, so the common case costs a map
// lookup.
func (p *Proxy) isSelf(dst netip.AddrPort, c *net.TCPConn) bool {
	if _, ok := p.ownPorts[ownPortOf(dst)]; !ok {
		return false
	}
	a := dst.Addr().Unmap()
	if a.IsLoopback() || a.IsUnspecified() || a == addrPort(c.LocalAddr()).Addr() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: refusing is safer than looping
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// upstreamKey is a connection the proxy dialed, as the loop guard knows
// it: its local address and where it went. Captured again, it arrives
// from the one, with the other for original destination. The local
// address alone is not enough: the kernel gives one local port to
// connections to different destinations, so the app's own connection
// may share it with one of the proxy's.
type upstreamKey struct {
	local, remote netip.AddrPort
	// transparent: dialed from a client's own address (tproxy mode),
	// registered only to be cut at the end of a drain; the loop guard,
	// which looks keys up with it unset, never finds it (see dialApp).
	transparent bool
}

func upstreamKeyOf(c *net.TCPConn) upstreamKey {
	return upstreamKey{local: addrPort(c.LocalAddr()), remote: addrPort(c.RemoteAddr())}
}

// capturedAgain reports whether client is one of the proxy's own
// connections (to dst) come back: one of them has client's address for
// its local address and went to dst, and has not heard a byte from its
// peer yet. A connection captured again has not: its peer is client,
// which nothing has read or written. The bytes rule out a false alarm:
// NAT may give the app's connection another source port when the one it
// had clashes with an older entry's, and that port may be one a live
// connection of the proxy to dst has too (the kernel picks ports for the
// two apart); such a connection has heard its peer, at least the TLS
// handshake. Seen in peerbench (issue 12), one connection in ~2 000
// after runs of short connections.
func (p *Proxy) capturedAgain(client *net.TCPConn, dst netip.AddrPort) bool {
	v, ok := p.upstreams.Load(upstreamKey{local: addrPort(client.RemoteAddr()), remote: dst})
	if !ok {
		return false
	}
	up, ok := v.(*net.TCPConn)
	return !ok || !heardFrom(up)
}
