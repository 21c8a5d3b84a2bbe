package proxy

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"time"

	"meshgate/proxy/policy"
	"meshgate/proxy/resilience"
)

// The guard in the HTTP/1 engine (h1serve.go): guardedExchange admits an
// outbound request (seam 1) and, when its exchange is over, makes sure it
// holds and owes nothing; exchange tells the guard when the request has
// its connection (connected) and how it ended (seam 3): done, with a
// response (finish: the breaker told, the places given back before the
// answer's last bytes leave, so that a client's next request finds them
// free), or fail, without one, where failGuarded answers with the
// fallback (or a 503 for the guard's own refusal); fallbackInstead
// answers a 502, 503 or 504 with the fallback; keepResponse and copyKept
// keep a good answer to a cacheable GET for the stale fallback.

// guardedExchange is exchange behind the guard of the request's
// destination (outbound): refused, the request is answered with its
// fallback or a 503, and nothing is sent. It reports whether the client
// connection can carry another request.
func (c *h1Conn) guardedExchange(ctx context.Context, start time.Time) bool {
	if c.dir != Outbound {
		return c.exchange(ctx, start)
	}
	c.p.resolveRes(&c.res, c.dst)
	g := c.res.g
	if g == nil || !g.guarded() {
		return c.exchange(ctx, start)
	}
	// After the exchange (whose log line has the guard's note), the
	// request holds and owes nothing, and the next one starts clean.
	defer func() {
		c.gc.end()
		c.gc = guardCall{}
	}()
	target := string(c.req.target)
	if e := c.gc.admit(g, g.pol.Route(string(c.req.method), policy.NormalizePath(target)), start); e != nil {
		if c.req.length > 0 || c.req.chunked {
			c.req.close = true // its body is not read: the connection cannot go on
		}
		if !c.answerFallback(start, target, start) {
			c.answerStage(start, &Answer{Status: http.StatusServiceUnavailable, Reason: e.reason(), stage: e.stage()})
		}
		return !c.req.close && !c.p.draining.Load()
	}
	return c.exchange(ctx, start)
}

// answerFallback answers the request with its fallback at now, if it has
// one; target is its target.
func (c *h1Conn) answerFallback(start time.Time, target string, now time.Time) bool {
	fa, ok := c.gc.fallback(string(c.req.method), string(c.req.get("host")), target, now)
	if !ok {
		return false
	}
	c.gc.served(&fa)
	c.writeFallback(start, &fa)
	return true
}

// failGuarded answers a request that got no response (err) when its
// guard has something to say: the breaker is told of the failure, and
// the answer is the fallback, or for the guard's own refusal (a
// connection over maxConnections, every endpoint's circuit open) a 503.
// false: errorAnswer's answer it is.
func (c *h1Conn) failGuarded(start time.Time, err error) bool {
	if c.gc.g == nil {
		return false
	}
	now := time.Now()
	c.gc.outcomeErr(err, now)
	c.gc.release() // before the answer leaves: see finish
	if c.answerFallback(start, string(c.req.target), now) {
		return true
	}
	if e, ok := asGuardError(err); ok {
		c.answerStage(start, &Answer{Status: http.StatusServiceUnavailable, Reason: e.reason(), stage: e.stage()})
		return true
	}
	return false
}

// fallbackInstead answers with the fallback in place of the upstream's
// failed answer (a 502, 503 or 504, its head just read) when the request
// has one: the breaker is told of the failure, the try reported failed,
// and the upstream connection, its answer unread, closed. It reports
// whether it answered, and whether the client connection can go on.
func (c *h1Conn) fallbackInstead(start time.Time, u *h1Up, t try, got time.Time) (served, keep bool) {
	if c.gc.g == nil || !failedStatus(c.resp.status) {
		return false, false
	}
	fa, ok := c.gc.fallback(string(c.req.method), string(c.req.get("host")), string(c.req.target), got)
	if !ok {
		return false, false
	}
	c.gc.outcome(false, got)
	if c.bodyDone != nil && !c.bodyRead.Load() {
		c.req.close = true // the rest of the request body is not read
	}
	c.abandon(u)
	setup, latency := t.spent(got)
	t.report(setup, latency, true)
	c.gc.served(&fa)
	c.writeFallback(start, &fa)
	return true, !c.req.close && !c.p.draining.Load()
}

// writeFallback writes fa as the answer to the request, and accounts
// for it (metrics, access log).
func (c *h1Conn) writeFallback(start time.Time, fa *fallbackAnswer) {
	b := c.w.take()
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(fa.status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(fa.status)...)
	b = append(b, "\r\n"...)
	for k, vv := range fa.header {
		if framingField(k) {
			continue
		}
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	if fa.kind == "stale" {
		age, warning := resilience.StaleFields(fa.age)
		b = append(b, "Age: "...)
		b = append(b, age...)
		b = append(b, "\r\nWarning: "...)
		b = append(b, warning...)
		b = append(b, "\r\n"...)
	}
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(fa.body)), 10)
	if c.req.close || c.req.method == nil {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n\r\n"...)
	n := int64(0)
	if !equalFold(c.req.method, "HEAD") {
		b = append(b, fa.body...)
		n = int64(len(fa.body))
	}
	c.w.buf = b
	c.observe(start, fa.status, n, "", nil)
	c.w.flush()
	c.w.release()
}

// keptH1 is a response being kept for a stale fallback: where, under
// what, its header, and its body's length.
type keptH1 struct {
	cache  *resilience.StaleCache
	key    string
	header http.Header
	length int64
}

// keepResponse decides, its head read and rid of hop-by-hop fields but
// nothing written yet, whether the response is kept for the request's
// stale fallback (see guardCall.keepIn): a GET's, of a length known
// (not chunked), passed on as it is. nil: not kept.
func (c *h1Conn) keepResponse(switched, dechunk bool, now time.Time) *keptH1 {
	if c.gc.g == nil || c.gc.pol.Fallback.Stale == nil || string(c.req.method) != http.MethodGet {
		return nil
	}
	resp := &c.resp
	length := resp.length
	if resp.bodyless(false) {
		length = 0
	}
	if switched || dechunk || resp.chunked || resp.otherCoding || length < 0 {
		return nil
	}
	key := staleKeyOf(string(c.req.get("host")), string(c.req.target))
	cache := c.gc.keepIn(resp.status, length, h1Values{&c.req}, h1Values{resp}, key, now)
	if cache == nil {
		return nil
	}
	resp.fixAdded()
	h := make(http.Header, len(resp.fields))
	for _, f := range resp.fields {
		if f.name != nil {
			k := http.CanonicalHeaderKey(string(f.name))
			h[k] = append(h[k], string(f.value))
		}
	}
	return &keptH1{cache: cache, key: key, header: h, length: length}
}

// copyKept copies the response's body, k.length bytes, from r to the
// client through a copy of its own, which it then keeps.
func (c *h1Conn) copyKept(k *keptH1, r *h1Reader) error {
	body := make([]byte, 0, k.length)
	for int64(len(body)) < k.length {
		b := r.buffered()
		if len(b) == 0 {
			if err := r.fill(h1BufSize); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
			continue
		}
		n := int(min(int64(len(b)), k.length-int64(len(body))))
		body = append(body, b[:n]...)
		r.consume(n)
	}
	if err := c.w.write(body); err != nil {
		return err
	}
	k.cache.Put(k.key, resilience.Response{Status: c.resp.status, Header: k.header, Body: body}, time.Now())
	return nil
}

// h1Values is a message's fields as resilience.Fields.
type h1Values struct{ m *h1Msg }

func (h h1Values) Values(name string) []string {
	var out []string
	for _, f := range h.m.fields {
		if f.name != nil && equalFold(f.name, name) {
			out = append(out, string(f.value))
		}
	}
	return out
}
