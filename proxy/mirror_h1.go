package proxy

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// A mirror copy to a mesh destination that is not gRPC goes as the HTTP/1
// engine's requests go (h1serve.go): over a pooled keep-alive mesh
// connection to an endpoint (ALPN meshgate/http1), written and read with
// the engine's codec, its connection back in the pool after. It costs a
// third of what the HTTP/2 path through net/http costs (BenchmarkHTTPMirror).

// roundTripH1 sends the copy to an endpoint of dst the balancer picks and
// reads its answer, dropping its body; it returns the answer's status. A
// pooled connection the peer had closed before any byte of an answer is
// tried again on a new one, as exchange does.
func (c *mirrorCopy) roundTripH1(ctx context.Context, dst netip.AddrPort) (int, error) {
	p := c.p
	for attempt := 0; ; attempt++ {
		u, t, reused, err := p.meshH1Upstream(ctx, dst, nil)
		if err != nil {
			return 0, err
		}
		status, answered, keep, err := c.exchangeH1(ctx, u)
		end := time.Now()
		setup, latency := t.spent(end)
		if err != nil {
			p.closeUpstream(u.tcp)
			if reused && !answered && attempt < 2 && ctx.Err() == nil {
				p.l7.h1.drop(u.key)
				t.report(setup, 0, false)
				continue
			}
			t.report(setup, latency, true)
			return 0, err
		}
		t.report(setup, latency, status == 502 || status == 503 || status == 504)
		if keep {
			p.l7.h1.put(u, end)
		} else {
			p.closeUpstream(u.tcp)
		}
		return status, nil
	}
}

// exchangeH1 writes the copy on u and reads the answer, within ctx;
// answered says a byte of an answer came, keep that u can carry another
// request. An answer's body longer than maxMirrorAnswer, or of a length
// not known up front, is not read: u is closed instead.
func (c *mirrorCopy) exchangeH1(ctx context.Context, u *h1Up) (status int, answered, keep bool, err error) {
	if dl, ok := ctx.Deadline(); ok {
		u.tcp.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { u.tcp.SetDeadline(aLongTimeAgo) })
	defer func() {
		if !stop() {
			keep = false // cut by ctx: its deadline may be set yet
			return
		}
		u.tcp.SetDeadline(time.Time{})
	}()

	b := u.w.take()
	b = append(b, c.method...)
	b = append(b, ' ')
	b = append(b, c.target...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, c.st.pol.Addr...)
	b = append(b, "\r\n"...)
	for k, vv := range c.header {
		if k == "Te" {
			continue // hop-by-hop in HTTP/1
		}
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	if len(c.body) > 0 {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(c.body)), 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	u.w.buf = b
	if err = u.w.write(c.body); err == nil {
		err = u.w.flush()
	}
	if err != nil {
		return 0, false, false, err
	}
	var resp h1Msg
	for {
		if err = u.r.readHead(&resp, true); err != nil {
			return 0, len(u.r.buffered()) > 0, false, err
		}
		if resp.status >= 200 {
			break
		}
	}
	head := c.method == "HEAD"
	keep = !resp.close
	if !resp.bodyless(head) {
		if resp.chunked || resp.length < 0 || resp.length > maxMirrorAnswer {
			return resp.status, true, false, nil
		}
		sink := h1Writer{dst: discardConn{}}
		err = copyBody(&sink, &u.r, resp.length, false, false)
		sink.flush()
		sink.release()
	}
	return resp.status, true, keep && err == nil, err
}

// discardConn is a connection whose writes go nowhere: where an answer's
// body is copied to be dropped.
type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error) { return len(b), nil }
