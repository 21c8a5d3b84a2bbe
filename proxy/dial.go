package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// dialUpstream dials dst for an outbound connection (see dial) and
// registers the connection until closeUpstream (see register).
func (p *Proxy) dialUpstream(ctx context.Context, dst netip.AddrPort) (*net.TCPConn, error) {
	c, err := p.dial(ctx, Outbound, netip.Addr{}, dst)
	if err != nil {
		return nil, err
	}
	return p.register(c, false)
}

// dialApp connects to the app at dst for an inbound connection, to be
// closed with closeUpstream: from the passthrough source, or with from
// (tproxy mode) from the client's own address (see dial). Only the
// former is one the loop guard looks for: the latter's local address is
// the client's, and a connection of that client from the same port to
// another port of the pod is no loop. The rules never capture it (nat
// OUTPUT lets a non-local source to lo pass, mangle PREROUTING returns
// lo, and MESHGATE_TPROXY_OUTPUT routes the app's replies back here).
func (p *Proxy) dialApp(ctx context.Context, from netip.Addr, dst netip.AddrPort) (*net.TCPConn, error) {
	c, err := p.dial(ctx, Inbound, from, dst)
	if err != nil {
		return nil, err
	}
	return p.register(c, from.IsValid())
}

// register records c, a connection just dialed, in upstreams until
// closeUpstream: the loop guard looks there for the proxy's own
// connections (but for transparent ones, see dialApp), and the end of a
// drain's grace period resets every connection there (cutUpstreams).
// A connection registered after that is closed at once, with errKilled:
// either cutUpstreams sees it, or it sees cut set (both are sequentially
// consistent), so no dial that was under way escapes the cut.
func (p *Proxy) register(c *net.TCPConn, transparent bool) (*net.TCPConn, error) {
	k := upstreamKeyOf(c)
	k.transparent = transparent
	p.upstreams.Store(k, c)
	if p.cut.Load() {
		p.closeUpstream(c)
		return nil, errKilled
	}
	return c, nil
}

// closeUpstream closes a connection of dialUpstream or dialApp.
func (p *Proxy) closeUpstream(c *net.TCPConn) {
	// Most are not transparent: those cost one look-up.
	if k := upstreamKeyOf(c); !p.upstreams.CompareAndDelete(k, c) {
		k.transparent = true
		p.upstreams.CompareAndDelete(k, c)
	}
	p.guards.closed(c)
	c.Close()
}

// cutUpstreams resets every connection the proxy dialed and has not
// closed, and makes register close any dialed after: the drain's grace
// period is over. An L7 request in flight waits on its upstream (the
// HTTP/1 engine reads the app's or the peer sidecar's answer; a tunnel's
// upstream → client direction reads on after its client is done), not
// on its client, so resetting the clients (killAll) does not end it.
// The owners of the connections see the failure and close them as
// always (closeUpstream). It returns how many it reset.
func (p *Proxy) cutUpstreams() int {
	p.cut.Store(true)
	n := 0
	p.upstreams.Range(func(_, v any) bool {
		if c, ok := v.(*net.TCPConn); ok {
			reset(c)
			n++
		}
		return true
	})
	return n
}

// dial connects to the connection's destination: outbound, the original
// destination; inbound, the app at the original destination address, from
// the passthrough source so the rules do not capture it again, or with
// from (tproxy mode) from the client's own address, on a port the kernel
// picks, through a transparent socket: that is what the app is to see.
// All are marked (when marking works).
func (p *Proxy) dial(ctx context.Context, dir Direction, from netip.Addr, dst netip.AddrPort) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: p.cfg.Timeouts.Connect.D(), Control: p.markCtl}
	if _, ok := ctx.Value(connectKey{}).(time.Duration); ok {
		d.Timeout = 0 // ctx's deadline is the destination's connect timeout (dialEndpoint)
	}
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
	var c net.Conn
	dialDst := func() (err error) {
		c, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	}
	err := offStack(dialDst) // see offStack (issue 12)
	if err != nil && d.LocalAddr != nil && !from.IsValid() && isBindAddrNotAvail(err) {
		// The passthrough source is not assigned here (typically ::6):
		// connect without one from now on.
		p.noSource[fam].Store(true)
		if ce := p.log.Check(zapcore.DebugLevel, "passthrough source not assigned; connecting to the app without an explicit source"); ce != nil {
			ce.Write(zap.Stringer("source", d.LocalAddr), zap.Error(err))
		}
		d.LocalAddr = nil
		err = offStack(dialDst)
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

// offStack runs fn on a goroutine of its own and waits for it: for the
// calls that go deeper than anything a connection's goroutine does
// after them, a mesh handshake (certificate verification, ECDSA) and a
// dial (package net). A goroutine's stack, once grown, is shrunk only by
// the garbage collector, only by half at a time and only while less than
// a quarter of it is in use: a connection's goroutine that made such a
// call kept twice or four times the stack it forwards with, for as long
// as the connection lasted (issue 12). fn's goroutine ends with it, and
// its stack goes to the next one.
func offStack(fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	return <-done
}

// isBindAddrNotAvail reports whether err is a failed bind of a dial's
// source address (and not, say, ephemeral ports running out at connect).
func isBindAddrNotAvail(err error) bool {
	var se *os.SyscallError
	return errors.As(err, &se) && se.Syscall == "bind" && errors.Is(se.Err, syscall.EADDRNOTAVAIL)
}

// dialError marks the upstream dial failing during a firstBytesRace.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// dialFailed is the outcome of a connection whose upstream could not be
// reached (a *dialError) or refused mesh TLS (a *handshakeError).
func (p *Proxy) dialFailed(o outcome, err error, m *dirMetrics) outcome {
	o.err, o.refused = err, true
	if de, ok := errors.AsType[*dialError](err); ok {
		m.connectFailures.Inc()
		o.err = de.err
	}
	o.reason = reasonOf(err)
	if e, ok := asGuardError(err); ok {
		o.reason = e.Error()
	}
	return o
}
