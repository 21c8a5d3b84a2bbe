package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// The HTTP/1 engine's part of retries and timeouts (retry.go,
// deadline.go): what h1Conn.exchange calls around its tries.

// hdrTimeoutLower and hdrErrorLower are hdrTimeout and hdrError as the
// engine looks them up.
const (
	hdrTimeoutLower = "x-meshgate-timeout"
	hdrErrorLower   = "x-meshgate-error"
)

// beginRes readies the request read for its tries. Outbound it returns
// the request's retries and timeouts (c.rr, its policy resolved); any
// hdrTimeout the app sent is removed. Inbound it removes hdrTimeout and
// returns the deadline a mesh peer's sidecar propagated in it (zero:
// none).
func (c *h1Conn) beginRes(start time.Time) (*reqRes, time.Time) {
	if c.dir == Inbound {
		if !c.req.meshTimeout {
			return nil, time.Time{}
		}
		v := c.req.get(hdrTimeoutLower)
		c.req.del(hdrTimeoutLower)
		if d, ok := parseTimeout(string(v)); ok && !c.sreq.Peer.IsZero() {
			return nil, start.Add(d)
		}
		return nil, time.Time{}
	}
	if c.req.meshTimeout {
		c.req.del(hdrTimeoutLower)
		c.req.meshTimeout = false
	}
	c.p.resolveRes(&c.res, c.dst) // done by guardedExchange: a check
	pol := routePolicy(c.res.dp, string(c.req.method), c.req.target)
	c.rr.begin(c.p, pol, c.res.g, string(c.req.method), start)
	c.rr.gate = &c.gc
	return &c.rr, time.Time{}
}

// clear forgets the last request's notes, before the next one.
func (rr *reqRes) clear() {
	rr.pol, rr.attempts, rr.timeout, rr.budgetOut = nil, 0, tkNone, false
}

// keepBody reports whether the request's body is to be read whole before
// it is sent, so that a retry can send it again: a body of known length
// within retries.maxBodyBytes, of a method that is retried, not all read
// yet. A chunked body (its length unknown until its end), a larger one,
// and one whose client waits for 100 Continue before it sends it stream
// as they come, and are not retried once sent.
func (c *h1Conn) keepBody(rr *reqRes) bool {
	req := &c.req
	return !req.chunked && req.length > 0 && rr.methodOK && rr.pol.Retry.Attempts > 0 &&
		req.length <= rr.pol.Retry.MaxBodyBytes && req.length > int64(len(c.r.buffered())) &&
		!req.upgrade && !hasToken(req.get("expect"), "100-continue")
}

// readBody reads the rest of the request's body into the connection's
// buffer (keepBody), under the body rate limit when one is set and the
// request's timeout. It answers the client and reports false when the
// body does not come.
func (c *h1Conn) readBody(rr *reqRes, start time.Time) bool {
	if rate := c.r.lim.MinRequestBodyRate; rate.BytesPerSecond > 0 {
		c.rate = bodyRateReader{src: &c.cc, conn: c.tcp, dir: c.dir, rate: rate}
		c.r.src = &c.rate
	}
	if !rr.deadline.IsZero() {
		c.tcp.SetReadDeadline(rr.deadline) // else the keep-alive timeout serve set bounds it
	}
	limit := max(h1BufSize, int(c.req.length))
	var err error
	for err == nil && int64(len(c.r.buffered())) < c.req.length {
		err = c.r.fill(limit)
	}
	c.r.src = &c.cc
	if err == nil {
		return true
	}
	c.req.close = true // the rest of the body is not read
	var le *limitError
	switch {
	case errors.As(err, &le):
		c.refuse(start, le)
	case isDeadline(err) && !rr.deadline.IsZero():
		c.answer(start, 504, "", rr.tryTimeoutOf(rr.dl).Error(), err)
	case isDeadline(err):
		c.answer(start, 408, "request", "request body not all in within the keep-alive timeout", err)
	default:
		c.answer(start, 400, "request", "request body ended early", err)
	}
	return false
}

// tryTimeoutOf counts the request timeout e (not a try's) and notes it.
func (rr *reqRes) tryTimeoutOf(e timeoutError) *timeoutError {
	rr.p.res.countTimeout(Outbound, rr.g.pol.Key(), e.kind)
	rr.timeout = e.kind
	return &e
}

// setTimeoutHeader sets hdrTimeout to the time the try has left, when it
// has a deadline.
func (c *h1Conn) setTimeoutHeader(rr *reqRes) {
	if rr.tryDeadline.IsZero() {
		return
	}
	var b [24]byte
	c.req.set(hdrTimeout, string(formatTimeout(b[:0], time.Until(rr.tryDeadline))))
}

// dialContext is the context a try dials in: bounded by the try's
// deadline, and carrying the destination's connect timeout when its
// policy sets one (dialEndpoint). cancel is nil when ctx is returned as it is.
func (rr *reqRes) dialContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if rr == nil {
		return ctx, nil
	}
	var cancel context.CancelFunc
	if !rr.tryDeadline.IsZero() {
		ctx, cancel = context.WithDeadline(ctx, rr.tryDeadline)
	}
	if d := rr.pol.Timeouts.Connect; d > 0 {
		ctx = context.WithValue(ctx, connectKey{}, d)
	}
	return ctx, cancel
}

// dropAnswer drops the answer of a try that is to be retried and reports
// the try: its connection goes back to the pool when the answer's body
// is all in (it is consumed), and is closed otherwise.
func (c *h1Conn) dropAnswer(u *h1Up, t try) {
	resp := &c.resp
	keep := !resp.close && c.bodyDone == nil
	switch {
	case resp.bodyless(equalFold(c.req.method, "HEAD")):
	case !resp.chunked && resp.length >= 0 && int64(len(u.r.buffered())) >= resp.length:
		u.r.consume(int(resp.length))
	default:
		keep = false
	}
	setup, latency := t.spent(time.Now())
	t.report(setup, latency, resp.status == 502 || resp.status == 503 || resp.status == 504)
	c.keepUpstream(u, keep)
}

// tryFailed reports a try that failed and is retried.
func (c *h1Conn) tryFailed(t try) {
	setup, latency := t.spent(time.Now())
	t.report(setup, latency, true)
}

// inboundTimeout is the timeout of an inbound request whose app did not
// answer within the deadline propagated (d), counted and noted.
func (c *h1Conn) inboundTimeout(d time.Duration) error {
	c.rr.timeout = tkDeadline
	c.p.res.countTimeout(Inbound, c.dst.String(), tkDeadline)
	return &timeoutError{kind: tkDeadline, d: d}
}

// streamIdleReader reads a response's body from its upstream under the
// stream-idle timeout: it fails once neither the response nor the
// request's body (its client's bytes, client) moved for d.
type streamIdleReader struct {
	src    io.Reader
	conn   *net.TCPConn
	d      time.Duration
	client *atomic.Int64
	seen   int64
	fired  bool
}

func (r *streamIdleReader) Read(b []byte) (int, error) {
	for {
		r.conn.SetReadDeadline(time.Now().Add(r.d))
		n, err := r.src.Read(b)
		if n == 0 && err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			if s := r.client.Load(); s != r.seen {
				r.seen = s // the request's body moved: not idle
				continue
			}
			r.fired = true
			return 0, &timeoutError{kind: tkStreamIdle, d: r.d}
		}
		return n, err
	}
}

// watchStream has u's response body read under the request's
// stream-idle timeout, when it has one; the function returned undoes it
// and reports whether the timeout fired (counted).
func (c *h1Conn) watchStream(u *h1Up, rr *reqRes) func() bool {
	if rr == nil || rr.pol.Timeouts.StreamIdle <= 0 {
		return nil
	}
	r := &streamIdleReader{src: u.r.src, conn: u.tcp, d: rr.pol.Timeouts.StreamIdle, client: &c.cc.sent, seen: c.cc.sent.Load()}
	u.r.src = r
	return func() bool {
		u.r.src = r.src
		u.tcp.SetReadDeadline(time.Time{})
		if r.fired {
			rr.timeout = tkStreamIdle
			c.p.res.countTimeout(Outbound, rr.g.pol.Key(), tkStreamIdle)
		}
		return r.fired
	}
}

// tunnelTimes are the timers of a switched connection (WebSocket): the
// idle timeout of the request's destination (resilience timeouts.idle),
// or its stream-idle timeout when shorter, else the proxy's. Bytes moving
// either way keep it open however long it lasts.
func (c *h1Conn) tunnelTimes() (fwdTimes, timeoutKind) {
	t, kind := c.p.fwdTimes(), tkNone
	if c.dir != Outbound || c.rr.pol == nil {
		return t, kind
	}
	to := &c.rr.pol.Timeouts
	if d := c.res.dp.Policy().Timeouts.Idle; d > 0 {
		t.idle, kind = d, tkIdle
	}
	if d := to.StreamIdle; d > 0 && (kind == tkNone || d < t.idle) {
		t.idle, kind = d, tkStreamIdle
	}
	return t, kind
}
