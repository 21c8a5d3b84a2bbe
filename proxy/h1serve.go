package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The HTTP/1 engine: one goroutine per client connection reads a request
// (h1codec.go), runs it through the direction's request stages
// (stages.go), writes it to an upstream connection taken from a pool
// (h1pool.go), reads the response and writes it back, then waits for the
// next request. No goroutine hand-off on the way, and the head and a
// small body of each message leave in one write. Only a request body
// that is not all there yet gets a goroutine of its own, so that it
// streams to the upstream while the response streams back (full duplex:
// an echo, or 100-continue).
//
// Outbound, the upstream is the destination's sidecar: for each request
// the balancer picks an endpoint, and the request goes over a pooled
// keep-alive mesh connection to it (ALPN meshgate/http1), a new one
// dialed and mTLS'd only when none is idle. Inbound, it is the app:
// pooled keep-alive connections from the passthrough source (in tproxy
// mode, from the client's address: one connection per client
// connection, never shared). Each side's Connection header describes its
// own connection only: a client that closes after every request still
// has its requests carried over connections that stay open.
//
// A request that switches protocols (Upgrade, CONNECT) gets its
// connection to itself: once the answer is 101 (2xx for CONNECT) the
// bytes pass both ways as they are (forward).

// h1Conn serves one client connection of the engine.
type h1Conn struct {
	p    *Proxy
	dir  Direction
	dst  netip.AddrPort
	from netip.Addr // inbound tproxy: the client's address the app is dialed from
	tcp  *net.TCPConn
	tls  *tls.Conn // the client side's TLS (inbound mesh), if any
	cc   countingConn
	r    h1Reader
	w    h1Writer
	req  h1Msg
	resp h1Msg
	sreq Request
	// limits are the rate limits the request met (sreq.limits).
	limits rlNotes
	m      *dirMetrics
	// own is the app connection of a tproxy client (never pooled).
	own *h1Up
	// peer is the identity of the last upstream sidecar (outbound).
	peer tlsInfo
	// clientMinor is the HTTP/1 minor version the client's request came in.
	clientMinor int
	// idle is set while the connection waits for a request's first byte,
	// so a drain can end it then.
	idle atomic.Bool
	// bodyDone is where the goroutine that streams a request body (when
	// there is one) reports; bodyRead is set once it has read all of the
	// body from the client, and has only the upstream write left.
	bodyDone chan error
	bodyRead atomic.Bool
	// bodyFrom is the client's byte count (cc.sent) where the streaming
	// body began, and bodyLen its length (-1: chunked): what bodyLeft
	// counts from.
	bodyFrom, bodyLen int64
	// bodyErr is the limit the request body broke (protect.go), set by
	// its goroutine before it reports on bodyDone.
	bodyErr *limitError
	rate    bodyRateReader
	// limited: the answer being written is a limit's, logged by the
	// protection event (see refuse).
	limited bool
	// gc is the request's passage through its destination's guard
	// (outbound; guard_h1.go).
	gc guardCall
	// res is the connection's resilience policy (outbound); rr, the
	// retries and timeouts of the request under way (h1retry.go).
	res resConn
	rr  reqRes
}

// serveH1 serves an HTTP/1 client connection until it ends: tcp, through
// tc when the client side is TLS (mesh), pending the bytes already read
// from it. peer is the client's verified identity (inbound).
func (p *Proxy) serveH1(ctx context.Context, dir Direction, tcp *net.TCPConn, tc *tls.Conn, pending []byte, from netip.Addr, dst netip.AddrPort, peer tlsInfo, m *dirMetrics) outcome {
	c := h1ConnPool.Get().(*h1Conn)
	defer c.recycle()
	c.p, c.dir, c.dst, c.from, c.tcp, c.tls, c.m = p, dir, dst, from, tcp, tc, m
	var src net.Conn = tcp
	if tc != nil {
		src = tc
	}
	c.cc.Conn, c.cc.sentC, c.cc.recvC = src, m.sent, m.received
	c.r.src, c.w.dst = &c.cc, &c.cc
	c.r.lim, c.r.dir, c.r.conn = &p.protect.dir[dir].lim, dir, tcp
	if len(pending) > 0 {
		c.r.bp = h1Bufs.Get().(*[]byte)
		c.r.buf = *c.r.bp
		if len(pending) > len(c.r.buf) {
			c.r.buf = make([]byte, len(pending))
		}
		c.r.w = copy(c.r.buf, pending)
	}
	c.sreq = Request{Dir: dir, Dst: dst, ctx: ctx, authz: peer.authz, msg: h1Fields{&c.req}, limits: &c.limits, conn: tcp}
	if dir == Inbound {
		c.sreq.Peer, c.sreq.Src = peer.peer, addrPort(tcp.RemoteAddr())
		if !peer.peer.IsZero() {
			c.sreq.clientCert = "URI=" + peer.peer.String()
		}
	}
	p.h1Mu.Lock()
	if p.h1Conns == nil {
		p.h1Conns = make(map[*h1Conn]struct{})
	}
	p.h1Conns[c] = struct{}{}
	p.h1Mu.Unlock()
	// When the drain's grace period is over, killAll resets tcp (handle's
	// client connection), which ends serve.
	c.serve(ctx)
	p.h1Mu.Lock()
	delete(p.h1Conns, c) // before c is recycled: drainH1 never sees it again
	p.h1Mu.Unlock()
	c.r.release()
	if c.own != nil {
		p.closeUpstream(c.own.tcp)
	}
	o := outcome{dst: dst, sent: c.cc.sent.Load(), received: c.cc.received.Load(), tls: peer}
	if dir == Outbound {
		o.tls, o.mtls = c.peer, true
	}
	return o
}

// h1ConnPool keeps the state of client connections that ended for the
// next ones, with the storage their heads' fields grew: per new
// connection, a fresh one and its fields' growth were a third of the
// client sidecar's allocations (issue 12).
var h1ConnPool = sync.Pool{New: func() any { return new(h1Conn) }}

// recycle clears c, but for the storage of its messages' fields, and
// puts it back in h1ConnPool. Nothing may use c after.
func (c *h1Conn) recycle() {
	req, resp := c.req.keep(), c.resp.keep()
	*c = h1Conn{req: req, resp: resp}
	h1ConnPool.Put(c)
}

// drainH1 ends the engine's connections that wait for a request; the
// others end after the response they are busy with.
func (p *Proxy) drainH1() {
	p.h1Mu.Lock()
	for c := range p.h1Conns {
		if c.idle.Load() {
			c.tcp.SetReadDeadline(aLongTimeAgo)
		}
	}
	p.h1Mu.Unlock()
	p.l7.h1.closeIdle(true)
}

func (c *h1Conn) serve(ctx context.Context) {
	lim := c.r.lim
	idle := lim.KeepAliveTimeout.D()
	for {
		// Set before the drain is looked at: a drain that comes after
		// sees idle and ends the wait (drainH1).
		c.tcp.SetReadDeadline(time.Now().Add(idle))
		c.idle.Store(true)
		if c.p.draining.Load() {
			return
		}
		c.r.release() // nothing of a next request yet: no buffer held
		c.limits.n = 0
		c.rr.clear()
		err := c.r.readHead(&c.req, false)
		c.idle.Store(false)
		if err != nil {
			switch e := err.(type) {
			case *h1Error:
				c.req.close = true
				c.answer(time.Now(), e.status, "request", e.msg, nil)
			case *limitError:
				if !c.p.draining.Load() { // a drain's deadline is no slow client's
					c.req.close = true
					c.refuse(time.Now(), e)
				}
			}
			return
		}
		start := time.Now()
		if max := lim.MaxRequestBodyBytes; max > 0 && c.req.length > max {
			c.req.close = true // its body is not read
			c.refuse(start, bodyTooLarge(c.dir, max))
			return
		}
		c.clientMinor = c.req.minor
		// The idle deadline stays: nothing reads the client until the
		// next request's head (which sets its own), but a body that
		// streams (exchange clears it) and a tunnel (forward sets its own).
		if a := c.p.chains.Load()[c.dir].decide(&c.sreq); a != nil {
			if c.req.length > 0 || c.req.chunked {
				c.req.close = true // its body is not read: the connection cannot go on
			}
			c.answerStage(start, a)
			c.sreq.endInject()
			if c.req.close {
				return
			}
			continue
		}
		keep := c.guardedExchange(ctx, start)
		c.sreq.endInject()
		c.w.release()
		if !keep {
			return
		}
		if cap(c.req.raw) > h1KeepHead {
			c.req.raw = nil
		}
		if cap(c.resp.raw) > h1KeepHead {
			c.resp.raw = nil
		}
	}
}

// exchange sends the request read to an upstream and its response back.
// It reports whether the client connection can carry another request.
func (c *h1Conn) exchange(ctx context.Context, start time.Time) bool {
	req := &c.req
	connect := equalFold(req.method, "CONNECT")
	req.dropHopByHop(req.upgrade)
	// The request goes on in the proxy's own version, HTTP/1.1 (RFC 9110
	// §6.2), whatever the client spoke: the upstream connection stays
	// open for the next request, and an HTTP/1.0 client's answer is made
	// one it can read below. HTTP/1.1 needs a Host: the destination.
	clientMinor := c.clientMinor
	if req.minor == 0 {
		req.minor = 1
		if req.host == 0 {
			req.add("Host", c.dst.String())
		}
	}
	hasBody := req.chunked || req.length > 0
	// Outbound, the request's retries and timeouts (h1retry.go); inbound,
	// the deadline its client's sidecar propagated.
	rr, inDeadline := c.beginRes(start)
	if rr != nil && c.keepBody(rr) && !c.readBody(rr, start) {
		return false
	}
	// All of the body is here already: it leaves with the head, and the
	// request can be sent again on another connection if the one it went
	// out on turns out to have been closed, or (retries) to another
	// endpoint.
	whole := !req.chunked && req.length <= int64(len(c.r.buffered()))
	resend := whole || !hasBody
	// A retry sends a body again only within retries.maxBodyBytes.
	replayable := resend && (!hasBody || rr == nil || req.length <= rr.pol.Retry.MaxBodyBytes)
	if hasBody && whole {
		c.mirrorWhole(c.r.buffered()[:req.length])
	}
	var (
		u        *h1Up
		t        try
		err      error
		reused   bool
		answered bool // the upstream sent a byte of a response
		stale    int  // pooled connections found closed
	)
	for {
		deadline := inDeadline
		if rr != nil {
			rr.beginTry(time.Now())
			c.setTimeoutHeader(rr)
			deadline = rr.tryDeadline
		}
		u, t, reused, err = c.upstream(ctx, rr)
		c.gc.connected()
		if err != nil {
			if rr != nil {
				if retriable(err) {
					if wait, ok := rr.again(retryWhy{kind: retryConnect}, true, ""); ok && rr.sleep(ctx, wait) {
						continue
					}
				}
				rr.failed(err)
			}
			c.fail(start, err, t)
			return !req.close && !hasBody
		}
		u.w.buf = req.appendRequest(u.w.take())
		if hasBody && whole {
			u.w.buf = append(u.w.buf, c.r.buffered()[:req.length]...)
		}
		if err = u.w.flush(); err == nil && hasBody && !whole {
			c.bodyDone = make(chan error, 1)
			c.bodyRead.Store(false)
			c.bodyFrom, c.bodyLen = c.cc.sent.Load()-int64(len(c.r.buffered())), req.length
			c.bodyErr = nil
			rate := c.r.lim.MinRequestBodyRate
			if rate.BytesPerSecond > 0 {
				// Measured as it is read (protect.go), the deadline set per window.
				c.rate = bodyRateReader{src: &c.cc, conn: c.tcp, dir: c.dir, rate: rate}
				c.r.src = &c.rate
			} else {
				c.tcp.SetReadDeadline(time.Time{})
			}
			go func(u *h1Up) {
				err := c.copyRequestBody(u, req.length, req.chunked)
				c.r.src = &c.cc
				if err == nil {
					c.bodyRead.Store(true)
					err = u.w.flush()
				}
				if le, ok := err.(*limitError); ok {
					// Cut off: the upstream request is aborted (the wait
					// for its response ends) and the client answered.
					c.bodyErr = le
					u.tcp.SetReadDeadline(aLongTimeAgo)
				}
				c.bodyDone <- err
			}(u)
		}
		if err == nil {
			if !deadline.IsZero() {
				u.tcp.SetReadDeadline(deadline)
			}
			err = u.r.readHead(&c.resp, true)
			answered = err == nil || len(u.r.buffered()) > 0
			if err == nil && !deadline.IsZero() {
				u.tcp.SetReadDeadline(time.Time{})
			}
		}
		if err == nil && rr != nil && !deadline.IsZero() && peerDeadline(c.resp.status, c.resp.get(hdrErrorLower)) {
			// The peer sidecar cut the app's request at the deadline this
			// try gave it: this try's own timeout, a moment early.
			c.dropAnswer(u, t)
			err = rr.tryTimeout()
			if rr.perTry {
				if wait, ok := rr.again(retryWhy{kind: retryPerTry}, replayable, ""); ok {
					if !rr.sleep(ctx, wait) {
						return false
					}
					continue
				}
			}
			rr.failed(err)
			c.endBody()
			c.fail(start, err, try{})
			return false
		}
		if err == nil {
			if rr != nil && c.resp.status >= 200 {
				// A status the policy retries: the answer is dropped (its
				// connection kept when its body is all in, else closed)
				// and the request tried again.
				if why, ok := rr.retriesStatus(c.resp.status, ""); ok {
					if wait, ok := rr.again(why, replayable, string(c.resp.get("retry-after"))); ok {
						c.dropAnswer(u, t)
						if !rr.sleep(ctx, wait) {
							return false
						}
						continue
					}
				}
			}
			break
		}
		c.p.closeUpstream(u.tcp)
		if reused && !answered && resend && stale < 3 && ctx.Err() == nil && !isDeadline(err) {
			// A pooled connection the upstream had closed: the request
			// never got there, so it goes again, on a new connection (the
			// other idle ones to that upstream are likely closed too, as
			// when its sidecar or app restarted, and are dropped). The try
			// measured nothing of the endpoint.
			stale++
			c.p.l7.h1.drop(u.key)
			setup, _ := t.spent(time.Now())
			t.report(setup, 0, false)
			continue
		}
		c.endBody()
		if c.bodyErr != nil {
			c.req.close = true
			c.refuse(start, c.bodyErr)
			return false
		}
		switch {
		case !deadline.IsZero() && isDeadline(err) && rr != nil:
			// Cut at the try's deadline: its per-try timeout, with the
			// request's time left, may go again.
			err = rr.tryTimeout()
			if rr.perTry {
				if wait, ok := rr.again(retryWhy{kind: retryPerTry}, replayable, ""); ok {
					c.tryFailed(t)
					if !rr.sleep(ctx, wait) {
						return false
					}
					continue
				}
			}
		case !deadline.IsZero() && isDeadline(err):
			err = c.inboundTimeout(inDeadline.Sub(start))
		case rr != nil && !answered:
			if wait, ok := rr.again(retryWhy{kind: retryReset}, replayable, ""); ok {
				c.tryFailed(t)
				if !rr.sleep(ctx, wait) {
					return false
				}
				continue
			}
		}
		if rr != nil {
			rr.failed(err)
		}
		c.fail(start, err, t)
		return false
	}
	if hasBody && whole {
		c.r.consume(int(req.length))
	}
	c.peer = u.info
	got := time.Now()

	// Interim responses pass on as they come.
	for c.resp.status < 200 && c.resp.status != 101 {
		c.resp.dropHopByHop(false)
		c.w.buf = c.resp.appendResponse(c.w.take())
		if err = c.w.flush(); err == nil {
			err = u.r.readHead(&c.resp, true)
		}
		if err != nil {
			c.abandon(u)
			c.done(start, t, got, true, 502, 0, "upstream closed the connection", err)
			return false
		}
	}
	resp := &c.resp
	if served, keep := c.fallbackInstead(start, u, t, got); served {
		return keep
	}
	head := equalFold(req.method, "HEAD")
	switched := (resp.status == 101 && req.upgrade) || (connect && resp.status/100 == 2)
	framed := resp.bodyless(head) || resp.chunked || resp.length >= 0
	keepUp := framed && !resp.close && !switched && !(resp.status == 101)
	keepClient := framed && !req.close && !switched && !c.p.draining.Load()
	if !switched && c.bodyLeft() > h1EarlyAnswerMax {
		// The answer came long before the request's body is all in (the
		// app answered early, as with a 413 to an upload): the rest will
		// not be read, so the connection ends with this answer, and the
		// client is told so (RFC 9112 §9.6) rather than finding it closed
		// under its next request. With less to come the body may well
		// end as it streams (an app answering as it reads, full duplex),
		// and the connection goes on if it does.
		keepClient = false
	}

	resp.dropHopByHop(switched && resp.status == 101)
	// An HTTP/1.0 client cannot read chunked: it gets the data alone,
	// ended by the connection's end.
	dechunk := clientMinor == 0 && resp.chunked && !resp.bodyless(head)
	if dechunk {
		resp.del("transfer-encoding")
		resp.del("trailer")
		keepClient = false
	}
	kept := c.keepResponse(switched, dechunk, got)
	switch {
	case switched:
	case !keepClient:
		resp.add("Connection", "close")
	case clientMinor == 0:
		resp.add("Connection", "keep-alive")
	}
	c.w.buf = resp.appendResponse(c.w.take())
	status := resp.status
	sentBefore := c.w.n

	if switched {
		c.done(start, t, got, false, status, 0, "", nil)
		err := c.w.flush()
		c.settleBody(&keepUp)
		if c.bodyDone != nil {
			c.abandon(u) // a body still coming: no tunnel to be had
			return false
		}
		if err == nil {
			c.tunnel(u)
		}
		c.p.closeUpstream(u.tcp)
		return false
	}
	watched := c.watchStream(u, rr)
	switch {
	case dechunk:
		err = copyChunked(&c.w, &u.r, true)
	case kept != nil:
		err = c.copyKept(kept, &u.r)
	case !resp.bodyless(head):
		err = copyBody(&c.w, &u.r, resp.length, resp.chunked, resp.length < 0 && !resp.chunked)
	}
	if watched != nil && watched() {
		keepUp = false
	}
	// Counted before the last bytes leave: a client that has its answer
	// finds it in the metrics.
	bytes := c.w.n + int64(len(c.w.buf)) - sentBefore
	failed := status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
	c.done(start, t, got, failed || err != nil, status, bytes, "", err)
	if err != nil {
		keepUp, keepClient = false, false
	}
	// With no request body still streaming, the upstream's part is over
	// once the response is read: it goes back before the client has the
	// last bytes, so that the client's next request, which may come on a
	// new connection the moment it has them, finds it in the pool rather
	// than dial another.
	early := c.bodyDone == nil
	if early {
		c.keepUpstream(u, keepUp)
	}
	if err == nil {
		err = c.w.flush()
	}
	if err != nil {
		keepUp, keepClient = false, false
	}
	if !early {
		c.settleBody(&keepUp)
		if c.bodyDone != nil {
			keepClient = false
		}
		c.keepUpstream(u, keepUp)
		c.endBody() // its reader is stuck on the client
	}
	return keepClient
}

// keepUpstream gives u back after an exchange: to the pool, to a tproxy
// client (dialed from its address, it is that client's alone), or
// closed when it cannot carry another request.
func (c *h1Conn) keepUpstream(u *h1Up, keep bool) {
	switch {
	case keep && c.from.IsValid():
		c.own = u
	case keep:
		if c.dir == Outbound && c.res.dp != nil {
			u.idle = c.res.dp.Policy().Timeouts.Idle // the destination's idle timeout, when set
		}
		c.p.l7.h1.put(u, time.Now())
	default:
		c.p.closeUpstream(u.tcp)
	}
}

// h1EarlyAnswerMax is the most of a request body still to come when the
// answer comes (an app that answers early) with which the connection is
// not given up at once: the body may end as the answer streams. Past it,
// the answer says Connection: close. (Go's net/http server reads on up
// to 256 KiB of an unread body in the same case.)
const h1EarlyAnswerMax = 256 << 10

// bodyLeft is how much of the streaming request body has yet to come
// from the client: 0 when there is none or it is all read, and -1 when
// its length is not known (chunked) and it is not all read.
func (c *h1Conn) bodyLeft() int64 {
	if c.bodyDone == nil || c.bodyRead.Load() {
		return 0
	}
	if c.bodyLen < 0 {
		return -1
	}
	return c.bodyLen - (c.cc.sent.Load() - c.bodyFrom)
}

// settleBody, once the response is over, waits for the request body's
// goroutine if it has read all of the body (it has a write to the
// upstream to finish at most: an app that answered after reading the
// body, as an echo does, got all of it). If it has not, the client still
// owes bytes the upstream may never read: neither connection can carry
// another request, and the goroutine is left for the caller to end.
func (c *h1Conn) settleBody(keepUp *bool) {
	if c.bodyDone == nil {
		return
	}
	if !c.bodyRead.Load() {
		*keepUp = false
		return
	}
	if err := <-c.bodyDone; err != nil {
		*keepUp = false
	}
	c.bodyDone = nil
}

// abandon closes an upstream connection whose exchange failed, ending the
// request body's goroutine if there is one.
func (c *h1Conn) abandon(u *h1Up) {
	c.p.closeUpstream(u.tcp)
	c.endBody()
}

// endBody ends the request body's goroutine, if there is one, by cutting
// its read of the client short, and waits for it.
func (c *h1Conn) endBody() {
	if c.bodyDone != nil {
		c.rate.stop.Store(true)
		c.tcp.SetReadDeadline(aLongTimeAgo)
		<-c.bodyDone
		c.bodyDone = nil
	}
}

// tunnel passes bytes both ways as they are between the client and u,
// what either side sent early first, until both are done.
func (c *h1Conn) tunnel(u *h1Up) {
	client := leg{tcp: c.tcp, tls: c.tls, pending: append([]byte(nil), c.r.buffered()...)}
	up := leg{tcp: u.tcp, pending: append([]byte(nil), u.r.buffered()...)}
	if tc, ok := u.conn.(*tls.Conn); ok {
		up.tls = tc
	}
	c.r.consume(len(c.r.buffered()))
	u.r.consume(len(u.r.buffered()))
	times, kind := c.tunnelTimes()
	sent, received, err := c.p.forward(client, up, times, copyBuffer, c.m)
	c.cc.sent.Add(sent)
	c.cc.received.Add(received)
	if kind != tkNone && errors.Is(err, ErrIdleTimeout) {
		c.p.res.countTimeout(Outbound, c.rr.g.pol.Key(), kind)
	}
}

// upstream returns a connection for the request: outbound, to an
// endpoint of the destination the balancer picks (another one while
// connecting fails, see eachEndpoint), pooled or new; inbound, to the
// app. t is the try to report once the response is in (its done is nil
// when there is nothing to balance); reused says the connection was
// pooled.
func (c *h1Conn) upstream(ctx context.Context, rr *reqRes) (u *h1Up, t try, reused bool, err error) {
	p := c.p
	if c.dir == Inbound {
		if c.from.IsValid() {
			if c.own != nil {
				u, c.own = c.own, nil
				return u, try{}, true, nil
			}
		} else if u = p.l7.h1.get(poolKey{addr: c.dst}, time.Now()); u != nil {
			return u, try{}, true, nil
		}
		tcp, err := p.dialApp(ctx, c.from, c.dst)
		if err != nil {
			return nil, try{}, false, &dialError{err}
		}
		return newH1Up(tcp, nil, tlsInfo{}, poolKey{addr: c.dst}), try{}, false, nil
	}
	return p.meshH1Upstream(ctx, c.dst, rr)
}

// meshH1Upstream returns a connection to an endpoint of dst, a mesh
// destination, that the balancer picks (another one while connecting
// fails, see endpointsFor; rr, when not nil, is the request's retries):
// pooled, or dialed with mesh TLS for meshgate/http1. t is the try to
// report once the response is in; reused says the connection was pooled.
func (p *Proxy) meshH1Upstream(ctx context.Context, dst netip.AddrPort, rr *reqRes) (u *h1Up, t try, reused bool, err error) {
	err = p.endpointsFor(ctx, dst, rr, func(tr *try) error {
		key := poolKey{addr: tr.addr, mesh: true}
		if u = p.l7.h1.get(key, time.Now()); u != nil {
			tr.connected, reused = tr.start, true
			t = *tr
			return nil
		}
		dctx, cancel := rr.dialContext(ctx)
		conn, info, err := p.dialEndpoint(dctx, tr.addr, dst, alpnHTTP1)
		if cancel != nil {
			cancel()
		}
		if err != nil {
			return err
		}
		u = newH1Up(conn.tcp, conn.tls, info, key)
		tr.connected = time.Now()
		t = *tr
		return nil
	})
	return u, t, reused, err
}

// fail answers a request that could not be sent on (see errorAnswer).
func (c *h1Conn) fail(start time.Time, err error, t try) {
	if t.done != nil && !t.start.IsZero() {
		setup, latency := t.spent(time.Now())
		t.report(setup, latency, true)
	}
	if c.failGuarded(start, err) {
		return
	}
	status, reason := errorAnswer(err)
	c.answer(start, status, reason, "", err)
}

// done accounts for an exchange that ended: metrics, access log, the try.
func (c *h1Conn) done(start time.Time, t try, got time.Time, failed bool, status int, bytes int64, reason string, err error) {
	c.gc.finish(!failedStatus(status), got)
	c.observe(start, status, bytes, reason, err)
	setup, latency := t.spent(got)
	t.report(setup, latency, failed)
}

// answerStage writes a stage's answer (see answer): the reason the
// caller may see in the response, the whole one in the log.
func (c *h1Conn) answerStage(start time.Time, a *Answer) {
	c.respond(start, a.Status, a.stage+": "+a.Reason, a.logged(), a.challenge, a.fields, nil)
}

// refuse answers a request a limit refused (protect.go) and reports the
// event; the event's log line, rate-limited, stands for the request's
// warn line, so that an attack cannot flood the log.
func (c *h1Conn) refuse(start time.Time, e *limitError) {
	c.p.protect.event(c.dir, e.kind, addrPort(c.tcp.RemoteAddr()), "%s", e.msg)
	c.limited = true
	c.answer(start, e.status, "limits", e.msg, nil)
	c.limited = false
}

// answer writes the proxy's own response: status, with why in hdrError
// and the body ("stage: reason", or the reason alone).
func (c *h1Conn) answer(start time.Time, status int, stage, reason string, err error) {
	why := reason
	if stage != "" && reason != "" {
		why = stage + ": " + reason
	} else if reason == "" {
		why = stage
	}
	c.respond(start, status, why, why, "", nil, err)
}

// respond writes status with why in hdrError and the body, a
// WWW-Authenticate challenge when set, and fields; the log says logWhy.
func (c *h1Conn) respond(start time.Time, status int, why, logWhy, challenge string, fields []headerField, err error) {
	body := "meshgate: " + why + "\n"
	b := c.w.take()
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\n"+hdrError+": "...)
	b = append(b, why...)
	if challenge != "" {
		b = append(b, "\r\nWWW-Authenticate: "...)
		b = append(b, challenge...)
	}
	for _, f := range fields {
		b = append(b, "\r\n"...)
		b = append(b, f.name...)
		b = append(b, ": "...)
		b = append(b, f.value...)
	}
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	if c.req.close || c.req.method == nil {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n\r\n"...)
	if !equalFold(c.req.method, "HEAD") {
		b = append(b, body...)
	}
	c.w.buf = b
	c.observe(start, status, int64(len(body)), logWhy, err)
	c.w.flush()
	c.w.release()
}

// errorAnswer is the status and reason for a request the proxy could not
// pass on, whichever codec served it: 502 when the upstream could not be reached or refused us, 504
// when it did not answer in time.
func errorAnswer(err error) (int, string) {
	var he *handshakeError
	if te, ok := errors.AsType[*timeoutError](err); ok {
		return http.StatusGatewayTimeout, te.Error()
	}
	switch {
	case errors.As(err, new(*http.MaxBytesError)):
		return http.StatusRequestEntityTooLarge, "limits: request body too large"
	case errors.As(err, &he):
		return http.StatusBadGateway, "mesh TLS handshake failed: " + he.reason
	case errors.Is(err, syscall.ECONNREFUSED):
		return http.StatusBadGateway, "upstream connection refused"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return http.StatusGatewayTimeout, "upstream timed out"
	case errors.As(err, new(*dialError)):
		return http.StatusBadGateway, "upstream connect failed"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return http.StatusBadGateway, "upstream closed the connection"
	}
	return http.StatusBadGateway, "upstream request failed"
}

// observe counts a request and writes its access log line.
func (c *h1Conn) observe(start time.Time, status int, bytes int64, reason string, err error) {
	p := c.p
	took := time.Since(start)
	peer := ""
	if c.dir == Inbound {
		peer = c.sreq.Peer.String()
	} else {
		peer = c.peer.peer.String()
	}
	method := methodLabel(c.req.method)
	p.metrics.observe(c.dir, method, status, peer, took)
	lvl := zapcore.InfoLevel
	switch {
	case reason != "" && !c.limited:
		lvl = zapcore.WarnLevel
	case !p.cfg.AccessLog:
		return
	}
	if ce := p.access.Check(lvl, "request"); ce != nil {
		fields := []zap.Field{
			zap.String("direction", c.dir.String()),
			zap.ByteString("method", c.req.method),
			zap.ByteString("authority", c.req.get("host")),
			zap.ByteString("path", c.req.target),
			zap.String("protocol", protoName(c.clientMinor)),
			zap.Int("status", status),
			zap.Int64("response_bytes", bytes),
			zap.Duration("duration", took),
			zap.ByteString("request_id", c.req.get(hdrRequestID)),
			zap.String("peer_identity", peer),
		}
		if c.req.upgrade {
			fields = append(fields, zap.ByteString("upgrade", c.req.get("upgrade")))
		}
		fields = rateLimitsField(fields, &c.limits)
		fields = guardFields(fields, &c.gc.note)
		fields = c.rr.logFields(fields)
		fields = injectFields(fields, &c.sreq.inject)
		if reason != "" {
			fields = append(fields, zap.String("reason", reason))
			if err != nil {
				fields = append(fields, zap.Error(err))
			}
		}
		ce.Write(fields...)
	}
}

func protoName(minor int) string {
	if minor == 0 {
		return "HTTP/1.0"
	}
	return "HTTP/1.1"
}
