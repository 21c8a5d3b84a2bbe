package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"meshgate/proxy/sniff"
)

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
	flow     *flowPlan      // an L4 forward for handle to run; the fields above it fills in
	// limited: refused by a limit, whose protection event logged it
	// (rate-limited, protect.go): its own line is at debug.
	limited bool
}

// alertLinger bounds how long a client refused with a TLS alert is given
// to read it, see lingerClose.
const alertLinger = 500 * time.Millisecond

// handle serves one captured connection from accept to close and writes
// its one log line; release runs when the connection is over. An L4
// forward (the stages return it as outcome.flow) goes on apart from the
// stages (runFlow): the goroutine is free as soon as the flow parks.
func (p *Proxy) handle(ctx context.Context, l *captureListener, client *net.TCPConn, release func()) {
	start := time.Now()
	m := &p.metrics.dir[l.dir]
	m.opened.Inc()
	m.active.Inc()
	src := addrPort(client.RemoteAddr())
	p.logAccepted(l, src)

	o := p.pipeline(ctx, l, client, m)
	if o.flow != nil {
		p.runFlow(client, m, o, func(o *outcome) {
			p.endConn(l, client, src, start, m, o)
			release()
		})
		return
	}
	p.endConn(l, client, src, start, m, &o)
	release()
}

// runFlow runs o's flow, apart from the stages that set it up: its
// client → upstream direction on this goroutine until it is over or
// parked, the other on a goroutine of its own (see pump). Once both are
// over, the flow's after and end run, on the goroutine of the last one.
func (p *Proxy) runFlow(client *net.TCPConn, m *dirMetrics, o outcome, end func(*outcome)) {
	fp := o.flow
	o.flow = nil
	times := p.fwdTimes()
	if fp.idle > 0 {
		times.idle = fp.idle
	}
	f := newFlow(fp.client, fp.upstream, times, p.copyMode, m)
	p.setFlow(client, f)
	f.start(true, func(sent, received int64, err error) {
		o.sent, o.received, o.err = sent, received, err
		fp.after(&o)
		end(&o)
	})
}

// endConn closes the client connection as its outcome says, counts it
// and writes its log line.
func (p *Proxy) endConn(l *captureListener, client *net.TCPConn, src netip.AddrPort, start time.Time, m *dirMetrics, o *outcome) {
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
	p.logClosed(l.dir, src, time.Since(start), o)
}

// pipeline runs the stages of one connection: original destination
// (origdst.go), loop guard (loopguard.go), then the direction's own:
// inbound, mTLS termination by ALPN (inbound.go, terminate.go), then
// protocol detection; outbound, protocol detection while the destination
// is dialed, with mTLS origination to the mesh (outbound.go, detect.go,
// originate.go); then dial (dial.go) and forward (forward.go), or L7.
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
	if p.capturedAgain(client, dst) {
		return outcome{dst: dst, err: errCaptured, refused: true}
	}
	if l.dir == Inbound {
		var from netip.Addr
		if tproxied {
			from = addrPort(client.RemoteAddr()).Addr()
		}
		return p.inbound(ctx, client, from, dst, m)
	}
	if o, refused := p.refusedOut(dst); refused {
		return o
	}
	return p.outbound(ctx, client, dst, m)
}

// logAccepted logs an accepted connection, at debug level; apart from
// handle for the reason logClosed is.
func (p *Proxy) logAccepted(l *captureListener, src netip.AddrPort) {
	if ce := p.log.Check(zapcore.DebugLevel, "connection accepted"); ce != nil {
		ce.Write(zap.Stringer("direction", l.dir), zap.Stringer("src", src), zap.Stringer("listener", l.addr))
	}
}

// logClosed writes a connection's one log line: at info with the access
// log on (accessLog), at debug with it off, at warn for a connection
// refused or cut short for a reason. It is handle's tail, kept
// apart so that handle's own stack frame stays small: a connection's
// goroutine waits in forward with handle's frame under it for as long as
// the connection lasts, and the garbage collector shrinks a goroutine's
// stack only while it uses less than a quarter of it (issue 12).
func (p *Proxy) logClosed(dir Direction, src netip.AddrPort, took time.Duration, o *outcome) {
	lvl := zapcore.DebugLevel // the access log's, when it is off
	switch {
	case o.limited:
	case o.refused || o.reason != "":
		lvl = zapcore.WarnLevel
	case p.cfg.AccessLog:
		lvl = zapcore.InfoLevel
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

// reset closes c with an RST rather than a FIN, so the peer sees a failed
// stream and not one that ended cleanly.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}
