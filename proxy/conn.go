package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// errLoop refuses a connection whose original destination is the proxy
// itself: dialing it would loop.
var errLoop = errors.New("loop guard: the original destination is this proxy's own capture port")

// errCaptured refuses a connection that the proxy itself opened: its own
// upstream connection came back to a capture listener, so the rules do not
// exempt the proxy. Forwarding it would dial again and loop for ever.
var errCaptured = errors.New("loop guard: this connection was opened by the proxy itself and captured again; " +
	"the redirect rules must exempt the proxy's socket mark (--proxy-mark) or its UID (--proxy-uid)")

// outcome is what happened to one connection, for its log line.
type outcome struct {
	dst      netip.AddrPort // original destination; invalid if unknown
	sent     int64          // client → upstream
	received int64          // upstream → client
	err      error
	refused  bool // never forwarded: no destination, loop, or dial failure
}

// handle serves one captured connection from accept to close and writes
// its one log line.
func (p *Proxy) handle(ctx context.Context, l *captureListener, client *net.TCPConn) {
	start := time.Now()
	m := &p.metrics.dir[l.dir]
	m.opened.Inc()
	m.active.Inc()
	src := addrPort(client.RemoteAddr())
	if ce := p.log.Check(zapcore.DebugLevel, "connection accepted"); ce != nil {
		ce.Write(zap.Stringer("direction", l.dir), zap.Stringer("src", src), zap.Stringer("listener", l.addr))
	}

	o := p.pipeline(ctx, l, client, m)
	if o.refused {
		reset(client)
	} else {
		client.Close()
	}
	m.closed.Inc()
	m.active.Dec()

	lvl := zapcore.InfoLevel
	if o.refused {
		lvl = zapcore.WarnLevel
	}
	if ce := p.log.Check(lvl, "connection closed"); ce != nil {
		fields := make([]zap.Field, 0, 7)
		fields = append(fields, zap.Stringer("direction", l.dir), zap.Stringer("src", src))
		if o.dst.IsValid() {
			fields = append(fields, zap.Stringer("dst", o.dst))
		}
		fields = append(fields,
			zap.Int64("bytes_sent", o.sent),
			zap.Int64("bytes_received", o.received),
			zap.Duration("duration", time.Since(start)))
		if o.err != nil {
			fields = append(fields, zap.Error(o.err))
		}
		ce.Write(fields...)
	}
}

// pipeline runs the stages of one connection: original destination, loop
// guard, dial, forward. Later stages (mTLS termination, protocol
// detection, L7) slot in between the loop guard and the dial.
func (p *Proxy) pipeline(ctx context.Context, l *captureListener, client *net.TCPConn, m *dirMetrics) outcome {
	dst, err := p.originalDst(l, client)
	if err != nil {
		return outcome{err: err, refused: true}
	}
	if p.isSelf(dst, client) {
		return outcome{dst: dst, err: errLoop, refused: true}
	}
	// Checked as late as possible before dialing: the dial that opened
	// this connection registers itself when it returns, which can be just
	// after this connection was accepted. A loop missed here is caught one
	// hop later, and the refusal unwinds the whole chain.
	if _, ok := p.upstreams.Load(addrPort(client.RemoteAddr())); ok {
		return outcome{dst: dst, err: errCaptured, refused: true}
	}
	upstream, err := p.dial(ctx, l.dir, dst)
	if err != nil {
		m.connectFailures.Inc()
		return outcome{dst: dst, err: err, refused: true}
	}
	defer upstream.Close()
	local := addrPort(upstream.LocalAddr())
	p.upstreams.Store(local, struct{}{})
	defer p.upstreams.Delete(local)
	sent, received, err := forward(client, upstream, p.cfg.Timeouts.Idle.D(), p.copyMode, m)
	return outcome{dst: dst, sent: sent, received: received, err: err}
}

// originalDst finds where the client was going.
func (p *Proxy) originalDst(l *captureListener, c *net.TCPConn) (netip.AddrPort, error) {
	if p.origDst != nil {
		return p.origDst(l.dir, c)
	}
	if l.dir == Inbound && p.cfg.Mode == ModeTProxy {
		return localOriginalDst(c)
	}
	return redirectOriginalDst(c)
}

// isSelf reports whether dst is one of the proxy's capture listeners: a
// capture port on an address of this namespace. Only a capture port is
// looked into further, so the common case costs a map lookup.
func (p *Proxy) isSelf(dst netip.AddrPort, c *net.TCPConn) bool {
	if _, ok := p.ownPorts[dst.Port()]; !ok {
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
// the passthrough source so the rules do not capture it again. Both are
// marked (when marking works).
func (p *Proxy) dial(ctx context.Context, dir Direction, dst netip.AddrPort) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: p.cfg.Timeouts.Connect.D()}
	if p.markOn {
		d.Control = markControl(uint32(p.cfg.Mark))
	}
	fam := 0
	if dst.Addr().Is6() {
		fam = 1
	}
	if dir == Inbound && !p.noSource[fam].Load() {
		src := p.cfg.Inbound.PassthroughSourceIPv4
		if fam == 1 {
			src = p.cfg.Inbound.PassthroughSourceIPv6
		}
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil && d.LocalAddr != nil && isBindAddrNotAvail(err) {
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
