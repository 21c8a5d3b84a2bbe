package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"meshgate/intercept"
	"meshgate/proxy/sniff"
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

// outcome is what happened to one connection, for its log line.
type outcome struct {
	dst      netip.AddrPort // original destination; invalid if unknown
	sent     int64          // client → upstream
	received int64          // upstream → client
	err      error
	refused  bool           // never forwarded: no destination, loop, dial or handshake failure, policy
	mtls     bool           // mesh mTLS was used, or tried
	tls      tlsInfo        // the mesh handshake's peer and resumption
	reason   string         // why it was refused, when a reason other than err is worth a field
	alerted  bool           // refused with a TLS alert: close gracefully so the client can read it
	detected *detection     // the protocol verdict, when there was one
	endpoint netip.AddrPort // the endpoint of the service dialed, when it is not dst
}

// alertLinger bounds how long a client refused with a TLS alert is given
// to read it, see lingerClose.
const alertLinger = 500 * time.Millisecond

// handle serves one captured connection from accept to close and writes
// its one log line.
func (p *Proxy) handle(ctx context.Context, l *captureListener, client *net.TCPConn) {
	start := time.Now()
	m := &p.metrics.dir[l.dir]
	m.opened.Inc()
	m.active.Inc()
	src := addrPort(client.RemoteAddr())
	p.logAccepted(l, src)

	o := p.pipeline(ctx, l, client, m)
	switch {
	case o.refused && o.alerted:
		lingerClose(client)
	case o.refused:
		reset(client)
	default:
		client.Close()
	}
	m.closed.Inc()
	m.active.Dec()

	p.logClosed(l.dir, src, time.Since(start), &o)
}

// logAccepted logs an accepted connection, at debug level; apart from
// handle for the reason logClosed is.
func (p *Proxy) logAccepted(l *captureListener, src netip.AddrPort) {
	if ce := p.log.Check(zapcore.DebugLevel, "connection accepted"); ce != nil {
		ce.Write(zap.Stringer("direction", l.dir), zap.Stringer("src", src), zap.Stringer("listener", l.addr))
	}
}

// logClosed writes a connection's one log line. It is handle's tail, kept
// apart so that handle's own stack frame stays small: a connection's
// goroutine waits in forward with handle's frame under it for as long as
// the connection lasts, and the garbage collector shrinks a goroutine's
// stack only while it uses less than a quarter of it (issue 12).
func (p *Proxy) logClosed(dir Direction, src netip.AddrPort, took time.Duration, o *outcome) {
	lvl := zapcore.InfoLevel
	if o.refused || o.reason != "" {
		lvl = zapcore.WarnLevel
	}
	if ce := p.log.Check(lvl, "connection closed"); ce != nil {
		fields := make([]zap.Field, 0, 16)
		fields = append(fields, zap.Stringer("direction", dir), zap.Stringer("src", src))
		if o.dst.IsValid() {
			fields = append(fields, zap.Stringer("dst", o.dst))
		}
		if o.endpoint.IsValid() && o.endpoint != o.dst {
			fields = append(fields, zap.Stringer("endpoint", o.endpoint))
		}
		fields = append(fields,
			zap.Int64("bytes_sent", o.sent),
			zap.Int64("bytes_received", o.received),
			zap.Duration("duration", took),
			zap.Bool("mtls", o.mtls),
			zap.String("peer_identity", o.tls.peer.String()),
			zap.Bool("tls_resumed", o.tls.resumed))
		if d := o.detected; d != nil {
			fields = append(fields, zap.Stringer("protocol", d.proto.Protocol), zap.String("detected_by", d.by))
			if d.proto.Protocol == sniff.TLS {
				fields = append(fields, zap.String("sni", d.proto.Hello.ServerName), zap.Strings("alpn", d.proto.Hello.ALPN))
			}
			if d.proto.Protocol == sniff.HTTP1 {
				fields = append(fields, zap.String("http_method", d.proto.Method), zap.String("http_version", d.proto.Version))
			}
		}
		if o.reason != "" {
			fields = append(fields, zap.String("reason", o.reason))
		}
		if o.err != nil {
			fields = append(fields, zap.Error(o.err))
		}
		ce.Write(fields...)
	}
}

// lingerClose closes a connection that was just sent a TLS alert so that
// the peer reads the alert: a FIN after it, then the peer's bytes read
// and dropped until it closes (a close with unread bytes would send a
// reset, and a reset makes the peer's kernel discard the alert unread),
// for alertLinger at most; a peer still sending then is reset.
func lingerClose(c *net.TCPConn) {
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(alertLinger))
	if _, err := io.Copy(io.Discard, c); err != nil {
		reset(c)
		return
	}
	c.Close()
}

// pipeline runs the stages of one connection: original destination, loop
// guard, then the direction's own: inbound, mTLS termination by ALPN (see
// inbound.go); outbound, mTLS origination to the mesh (outbound.go);
// then dial and forward. Protocol detection and L7 slot in after mTLS.
func (p *Proxy) pipeline(ctx context.Context, l *captureListener, client *net.TCPConn, m *dirMetrics) outcome {
	tproxied := p.tproxied(l, client)
	dst, err := p.originalDst(l, client, tproxied)
	if err != nil {
		if l.dir == Inbound && errors.Is(err, errNotRedirected) {
			return p.probe(ctx, client, outcome{err: err, refused: true})
		}
		return outcome{err: err, refused: true}
	}
	if p.isSelf(dst, client) {
		if l.dir == Inbound {
			return p.probe(ctx, client, outcome{dst: dst, err: errLoop, refused: true})
		}
		return outcome{dst: dst, err: errLoop, refused: true}
	}
	// Checked as late as possible before dialing: the dial that opened
	// this connection registers itself when it returns, which can be just
	// after this connection was accepted. A loop missed here is caught one
	// hop later, and the refusal unwinds the whole chain.
	if _, ok := p.upstreams.Load(upstreamKey{addrPort(client.RemoteAddr()), dst}); ok {
		return outcome{dst: dst, err: errCaptured, refused: true}
	}
	if l.dir == Inbound {
		var from netip.Addr
		if tproxied {
			from = addrPort(client.RemoteAddr()).Addr()
		}
		return p.inbound(ctx, client, from, dst, m)
	}
	return p.outbound(ctx, client, dst, m)
}

// plain dials the app at dst (from from, see dialApp) and forwards the
// connection as it is: the inbound L4 path (outbound, see opaqueOut).
func (p *Proxy) plain(ctx context.Context, client *net.TCPConn, from netip.Addr, dst netip.AddrPort, m *dirMetrics) outcome {
	upstream, err := p.dialApp(ctx, from, dst)
	if err != nil {
		m.connectFailures.Inc()
		return outcome{dst: dst, err: err, refused: true}
	}
	defer p.closeUpstream(upstream)
	sent, received, err := forward(leg{tcp: client}, leg{tcp: upstream}, p.cfg.Timeouts.Idle.D(), p.copyMode, m)
	return outcome{dst: dst, sent: sent, received: received, err: err}
}

// dialUpstream dials dst for an outbound connection (see dial) and
// registers the connection with the loop guard until closeUpstream.
func (p *Proxy) dialUpstream(ctx context.Context, dst netip.AddrPort) (*net.TCPConn, error) {
	c, err := p.dial(ctx, Outbound, netip.Addr{}, dst)
	if err != nil {
		return nil, err
	}
	p.upstreams.Store(upstreamKeyOf(c), struct{}{})
	return c, nil
}

// upstreamKey is a connection the proxy dialed, as the loop guard knows
// it: its local address and where it went. Captured again, it arrives
// from the one, with the other for original destination. The local
// address alone is not enough: the kernel gives one local port to
// connections to different destinations, so the app's own connection
// may share it with one of the proxy's.
type upstreamKey struct{ local, remote netip.AddrPort }

func upstreamKeyOf(c *net.TCPConn) upstreamKey {
	return upstreamKey{addrPort(c.LocalAddr()), addrPort(c.RemoteAddr())}
}

// dialApp connects to the app at dst for an inbound connection, to be
// closed with closeUpstream: from the passthrough source, or with from
// (tproxy mode) from the client's own address (see dial). Only the
// former is registered with the loop guard: the latter's local address
// is the client's, and a connection of that client from the same port to
// another port of the pod is no loop. The rules never capture it (nat
// OUTPUT lets a non-local source to lo pass, mangle PREROUTING returns
// lo, and MESHGATE_TPROXY_OUTPUT routes the app's replies back here).
func (p *Proxy) dialApp(ctx context.Context, from netip.Addr, dst netip.AddrPort) (*net.TCPConn, error) {
	c, err := p.dial(ctx, Inbound, from, dst)
	if err != nil {
		return nil, err
	}
	if !from.IsValid() {
		p.upstreams.Store(upstreamKeyOf(c), struct{}{})
	}
	return c, nil
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

// closeUpstream closes a connection of dialUpstream.
func (p *Proxy) closeUpstream(c *net.TCPConn) {
	p.upstreams.Delete(upstreamKeyOf(c))
	c.Close()
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

// dial connects to the connection's destination: outbound, the original
// destination; inbound, the app at the original destination address, from
// the passthrough source so the rules do not capture it again, or with
// from (tproxy mode) from the client's own address, on a port the kernel
// picks, through a transparent socket: that is what the app is to see.
// All are marked (when marking works).
func (p *Proxy) dial(ctx context.Context, dir Direction, from netip.Addr, dst netip.AddrPort) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: p.cfg.Timeouts.Connect.D(), Control: p.markCtl}
	if dir == Inbound {
		d.KeepAlive = -1 // the app is on this host (see the outbound listener)
	}
	fam := 0
	if dst.Addr().Is6() {
		fam = 1
	}
	switch {
	case from.IsValid():
		d.LocalAddr, d.Control = net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), p.transparentCtl
	case dir == Inbound && !p.noSource[fam].Load():
		src := p.cfg.Inbound.PassthroughSourceIPv4
		if fam == 1 {
			src = p.cfg.Inbound.PassthroughSourceIPv6
		}
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil && d.LocalAddr != nil && !from.IsValid() && isBindAddrNotAvail(err) {
		// The passthrough source is not assigned here (typically ::6):
		// connect without one from now on.
		p.noSource[fam].Store(true)
		if ce := p.log.Check(zapcore.DebugLevel, "passthrough source not assigned; connecting to the app without an explicit source"); ce != nil {
			ce.Write(zap.Stringer("source", d.LocalAddr), zap.Error(err))
		}
		d.LocalAddr = nil
		c, err = d.DialContext(ctx, "tcp", dst.String())
	}
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("dial %s: not a TCP connection", dst)
	}
	return tc, nil
}
