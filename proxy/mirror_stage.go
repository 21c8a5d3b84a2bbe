package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"meshgate/proxy/resilience"
)

// The mirror stage (issue 16 item 6): a share of the outbound requests
// of a destination (or route) with a mirror is copied to mirror.to, fire
// and forget, for an audit service or a new version to see real traffic.
// The app's request never waits for its copy, and nothing of the copy's
// fate changes its answer:
//
//   - the stage picks the request (mirror.percent) and takes a place
//     among the mirror's copies in flight (mirror.maxConcurrent; a
//     mirror is shared by the routes that take it from the same level).
//     With none free the request is not copied (dropped_full): copies are
//     never queued. A request whose Content-Length is over
//     mirror.maxBodyBytes is not copied either (dropped_body).
//   - its head is copied at once; its body, if it has one, as it passes
//     to the destination, unchanged and as it comes (a body that streams
//     still streams), into a buffer of at most mirror.maxBodyBytes: a
//     body that grows past that drops the copy (dropped_body), and one
//     that does not all pass (the request failed, or was answered before
//     its body was sent) fails it.
//   - once the copy has its body, a goroutine of its own sends it, and
//     reads its answer (1 MiB at most) and drops it. The copy goes where
//     the app's requests to mirror.to would go: the name is resolved as
//     the app's names are (WithResolver: the sidecar's DNS proxy, which
//     learns the name's mesh identity and endpoints). An address in the
//     mesh gets mTLS, balanced over its endpoints, and the copy reaches
//     the target's app in HTTP/1.1, which every HTTP server speaks, over
//     the HTTP/1 engine's pooled connections (mirror_h1.go), or, for
//     gRPC, which needs HTTP/2, over the pooled HTTP/2 mesh connections
//     (balancedTransport) and h2c to the app. An address outside the
//     mesh gets plaintext HTTP/1.1 where mtls.plaintextOutsideMesh allows
//     (a pooled transport of the proxy's, made once). Its Host is
//     mirror.to, and it carries X-Meshgate-Mirror: 1 so the target can
//     tell it from a request of its own. Each copy is bounded by the
//     request timeout of mirror.to's resilience destination, or 10s.
//
// A mirror target that fails (mirrorBreakerFailures copies in a row not
// answered, or answered 500 or more) is sent no copy for
// mirrorBreakerOpenFor, then one is tried (a circuit breaker of the
// mirror's own): the copies of a target that is down cost a counter
// each, not a round trip.
//
// Each copy chosen counts once in meshgate_mirror_total{destination,
// result}: sent (answered below 500), failed (not answered, answered 500
// or more, not sent while the target fails, or its body did not all
// come), dropped_full, dropped_body; the request's access log line says
// mirror: mirrored, failed, dropped_full or dropped_body. A reload that changes or removes a mirror stops new
// copies at once; copies in flight go on, within their timeout. When the
// proxy stops, the copies still in flight at the end of the drain are
// cut, and Run returns once every copy's goroutine has.
//
// A copy carries the request's header fields as the app sent them (the
// outbound stages' changes included: request IDs), credentials too
// (Authorization, Cookie): a mirror is for services trusted with them.
// Not copied: CONNECT and requests that switch protocols (tunnels), and
// an HTTP/1 request's trailers. The copy does not pass the outbound
// stages (policy, rate limits) again: the mirror is the operator's own
// config, not the app's request.

// hdrMirror marks a copy, for the mirror target.
const hdrMirror = "X-Meshgate-Mirror"

// defaultMirrorTimeout bounds a copy when mirror.to's resilience
// destination sets no request timeout.
const defaultMirrorTimeout = 10 * time.Second

// maxMirrorAnswer is how much of a copy's answer is read (and dropped)
// before it is closed.
const maxMirrorAnswer = 1 << 20

// mirrorTargetTTL is how long a resolved mirror.to is used before it is
// resolved again.
const mirrorTargetTTL = 5 * time.Second

// A mirror's circuit breaker: after mirrorBreakerFailures copies failed
// in a row, none is sent for mirrorBreakerOpenFor, then one is tried.
const (
	mirrorBreakerFailures = 5
	mirrorBreakerOpenFor  = 5 * time.Second
)

// newMirrorBreaker is a mirror's circuit breaker.
func newMirrorBreaker() *resilience.Breaker {
	return resilience.NewBreaker(resilience.BreakerOptions{ConsecutiveFailures: mirrorBreakerFailures, OpenFor: mirrorBreakerOpenFor})
}

// NameResolver resolves a host name to addresses as the app's own
// lookups are answered. Package discovery's DNS proxy is one: what it
// answers it learns (the name's mesh identity and its endpoints, for
// balancing).
type NameResolver interface {
	LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error)
}

// WithResolver has the proxy resolve the names it sends requests to of
// its own (mirror targets) with r. Without it, net.DefaultResolver.
func WithResolver(r NameResolver) Option {
	return func(p *Proxy) { p.inject.resolver = r }
}

// mirrorState is one mirror's: its cap on copies in flight, counters and
// resolved target.
type mirrorState struct {
	pol     *resilience.MirrorPolicy
	dest    string // the destination's resilience name: the metric's label
	limit   *resilience.Limiter
	breaker *resilience.Breaker
	counted [mirrorResults]prometheus.Counter
	target  atomic.Pointer[mirrorTarget]
}

// mirrorTarget is a resolved mirror.to, until it is to be resolved again.
type mirrorTarget struct {
	addr  netip.AddrPort
	until time.Time
}

// mirrorStage is the mirror stage of the outbound chain, in it while some
// destination has a mirror (newChains).
type mirrorStage struct {
	p  *Proxy
	st *injectState
}

func (mirrorStage) Name() string { return stageMirror }

func (s mirrorStage) Decide(r *Request) *Answer {
	pol := s.st.policy(s.p, r)
	m := pol.Mirror
	if !m.Enabled() || s.p.inject.roll() >= m.Percent {
		return nil
	}
	var (
		length  int64 // -1: unknown
		chunked bool
		body    io.ReadCloser // HTTP/2's
		h2      *http.Request
	)
	switch f := r.msg.(type) {
	case h1Fields:
		if f.m.upgrade || equalFold(f.m.method, "CONNECT") {
			return nil // a tunnel
		}
		length, chunked = f.m.length, f.m.chunked
		if length < 0 && !chunked {
			length = 0
		}
	case httpFields:
		if f.r.Method == http.MethodConnect {
			return nil
		}
		h2, length, body = f.r, f.r.ContentLength, f.r.Body
		if body == nil || body == http.NoBody {
			length = 0
		}
	default:
		return nil
	}
	ms := s.st.mirror[m]
	if ms.breaker.State(time.Now()) == resilience.Open {
		ms.counted[mirrorFailed].Inc()
		r.inject.mirror = noteMirrorFailed
		return nil
	}
	if length > m.MaxBodyBytes {
		ms.counted[mirrorDroppedBody].Inc()
		r.inject.mirror = noteMirrorDroppedBody
		return nil
	}
	if !ms.limit.TryAcquire() {
		ms.counted[mirrorDroppedFull].Inc()
		r.inject.mirror = noteMirrorDroppedFull
		return nil
	}
	c := newMirrorCopy(s.p, ms, r, h2)
	r.inject.mirror = noteMirrored
	if length == 0 {
		c.state = copySent
		c.send()
		return nil
	}
	c.chunked = chunked
	if length > 0 {
		c.body = make([]byte, 0, length)
	}
	r.inject.copy = c
	if h2 != nil {
		h2.Body = &mirrorBody{ReadCloser: body, c: c}
	}
	return nil
}

// mirrorCopy is one request's copy, while its body comes and while it is
// sent.
type mirrorCopy struct {
	p      *Proxy
	st     *mirrorState
	method string
	target string
	header http.Header
	proto  string // the target app's protocol, for hdrAppProtocol: http1, or http2 for gRPC

	ticket resilience.Ticket // the mirror's breaker's, once sent

	mu      sync.Mutex
	state   int // copyCollecting, then copySent or copyDropped
	result  int // copyDropped: the mirror result it was dropped as
	body    []byte
	chunked bool // the body comes with HTTP/1 chunked framing (dechunk)
	dechunk chunkDecoder
}

// The states of a copy.
const (
	copyCollecting = iota
	copySent
	copyDropped
)

// newMirrorCopy copies r's head for a copy (h2: r's net/http request,
// nil for the HTTP/1 engine's): the method, the target and the header
// fields, less those of the connection (hop-by-hop) and those the copy
// sets itself.
func newMirrorCopy(p *Proxy, ms *mirrorState, r *Request, h2 *http.Request) *mirrorCopy {
	c := &mirrorCopy{p: p, st: ms, method: r.Method(), target: r.Target()}
	c.proto = "http1"
	if h2 != nil {
		c.header = h2.Header.Clone()
		if r.isGRPC() {
			c.proto = "http2"
		}
	} else {
		m := r.msg.(h1Fields).m
		m.fixAdded()
		c.header = make(http.Header, len(m.fields))
		for _, f := range m.fields {
			if f.name != nil {
				k := http.CanonicalHeaderKey(string(f.name))
				c.header[k] = append(c.header[k], string(f.value))
			}
		}
	}
	te := c.header.Get("Te")
	removeHopByHopHeaders(c.header)
	if te == "trailers" {
		c.header.Set("Te", te) // gRPC's, which HTTP/2 allows
	}
	// Expect: the copy has its body whole before it is sent.
	for _, k := range []string{"Host", "Content-Length", "Expect", hdrAppProtocol, hdrTimeout} {
		delete(c.header, k)
	}
	c.header.Set(hdrMirror, "1")
	return c
}

// feed adds b, bytes of the request's body, to the copy (with HTTP/1
// chunked framing, when the body has it); eof says the body is all
// there: the copy is sent. A body longer than the mirror's maxBodyBytes
// drops the copy.
func (c *mirrorCopy) feed(b []byte, eof bool) {
	c.mu.Lock()
	if c.state != copyCollecting {
		c.mu.Unlock()
		return
	}
	max := c.st.pol.MaxBodyBytes
	over := false
	if c.chunked {
		c.body, over = c.dechunk.decode(c.body, b, max)
	} else if over = int64(len(c.body))+int64(len(b)) > max; !over {
		c.body = append(c.body, b...)
	}
	if over {
		c.state, c.result, c.body = copyDropped, mirrorDroppedBody, nil
		c.mu.Unlock()
		c.drop(mirrorDroppedBody)
		return
	}
	if !eof {
		c.mu.Unlock()
		return
	}
	c.state = copySent
	c.mu.Unlock()
	c.send()
}

// end is called once the request is answered: a copy still waiting for
// its body's end will not get it, and fails.
func (c *mirrorCopy) end() {
	c.mu.Lock()
	if c.state != copyCollecting {
		c.mu.Unlock()
		return
	}
	c.state, c.result, c.body = copyDropped, mirrorFailed, nil
	c.mu.Unlock()
	c.drop(mirrorFailed)
}

// drop gives up the copy's place and counts it as res.
func (c *mirrorCopy) drop(res int) {
	c.st.limit.Release()
	c.count(res)
}

// count counts the copy as res. The counter is looked up now, not taken
// from the mirror's state: a reload that removed the mirror since the
// copy began deleted the state's series.
func (c *mirrorCopy) count(res int) {
	c.p.metrics.mirrors.WithLabelValues(c.st.dest, mirrorResultNames[res]).Inc()
}

// noted is the mirror note of the copy for the access log: a copy
// dropped while its body came says why.
func (c *mirrorCopy) noted() uint8 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == copyDropped && c.result == mirrorDroppedBody {
		return noteMirrorDroppedBody
	}
	return noteMirrored
}

// send sends the copy from a goroutine of its own (the proxy's, waited
// for when it stops), unless the mirror's breaker is open (the target
// failing) or the proxy has stopped: the copy then fails at once.
func (c *mirrorCopy) send() {
	t, ok := c.st.breaker.Allow(time.Now())
	if !ok {
		c.drop(mirrorFailed)
		return
	}
	c.ticket = t
	if !c.p.inject.launch(c.deliver) {
		c.drop(mirrorFailed)
	}
}

// launch runs fn on a goroutine of the injector's, with a context that
// ends when the proxy stops; false once it has.
func (inj *injector) launch(fn func(ctx context.Context)) bool {
	inj.mu.Lock()
	defer inj.mu.Unlock()
	if inj.stopped {
		return false
	}
	if inj.ctx == nil {
		inj.ctx, inj.cancel = context.WithCancel(context.Background())
	}
	ctx := inj.ctx
	inj.wg.Go(func() { fn(ctx) })
	return true
}

// stop cuts the copies in flight and waits for their goroutines; no copy
// is sent after it.
func (inj *injector) stop() {
	inj.mu.Lock()
	inj.stopped = true
	cancel := inj.cancel
	inj.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	inj.wg.Wait()
	if inj.plain != nil {
		inj.plain.CloseIdleConnections()
	}
}

// deliver sends the copy and reads its answer, counting the result, then
// frees its place.
func (c *mirrorCopy) deliver(ctx context.Context) {
	res := mirrorFailed
	defer func() {
		c.st.breaker.Done(c.ticket, res == mirrorSent, time.Now())
		c.st.limit.Release()
		c.count(res)
	}()
	p := c.p
	dst, err := p.mirrorDst(ctx, c.st)
	if err == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.mirrorTimeout(dst))
		defer cancel()
		var status int
		if status, err = c.roundTrip(ctx, dst); err == nil && status >= 500 {
			err = fmt.Errorf("answered %d", status)
		}
	}
	if err != nil {
		if ce := p.log.Check(zapcore.DebugLevel, "mirror copy failed"); ce != nil {
			ce.Write(zap.String("destination", c.st.dest), zap.String("to", c.st.pol.Addr), zap.Error(err))
		}
		return
	}
	res = mirrorSent
}

// roundTrip sends the copy to dst and reads its answer; it returns the
// answer's status.
func (c *mirrorCopy) roundTrip(ctx context.Context, dst netip.AddrPort) (int, error) {
	p := c.p
	inMesh := p.mesh.inMesh(dst.Addr())
	if !inMesh && !p.mesh.plainOut {
		return 0, errOutsideMesh
	}
	mesh := inMesh && p.mesh.outboundMTLS()
	u, err := url.ParseRequestURI(c.target)
	if err != nil {
		return 0, fmt.Errorf("request target %q: %w", c.target, err)
	}
	u.Scheme, u.Host = "http", dst.String()
	if dl, ok := ctx.Deadline(); ok && mesh {
		// The target's sidecar cancels its app's work on the copy when
		// the copy's time is up (deadline.go).
		var b [24]byte
		c.header.Set(hdrTimeout, string(formatTimeout(b[:0], time.Until(dl))))
	}
	var rt http.RoundTripper
	switch {
	case mesh && c.proto == "http1":
		return c.roundTripH1(ctx, dst)
	case mesh:
		u.Scheme = "https"
		c.header.Set(hdrAppProtocol, c.proto)
		rt = balancedTransport{p: p, dst: dst}
	default:
		rt = p.inject.plainTransport(p)
	}
	var body io.Reader
	if len(c.body) > 0 {
		body = bytes.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(ctx, c.method, u.String(), body)
	if err != nil {
		return 0, err
	}
	req.Header, req.Host = c.header, c.st.pol.Addr
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxMirrorAnswer))
	resp.Body.Close()
	return resp.StatusCode, err
}

// mirrorDst returns the address of the mirror's target: its IP address,
// or its name resolved (WithResolver's resolver, else the system's),
// kept for mirrorTargetTTL.
func (p *Proxy) mirrorDst(ctx context.Context, ms *mirrorState) (netip.AddrPort, error) {
	now := time.Now()
	if t := ms.target.Load(); t != nil && now.Before(t.until) {
		return t.addr, nil
	}
	host, port := ms.pol.Host, ms.pol.Port
	if ip, err := netip.ParseAddr(host); err == nil {
		addr := netip.AddrPortFrom(ip.Unmap(), port)
		ms.target.Store(&mirrorTarget{addr: addr, until: now.Add(100 * 365 * 24 * time.Hour)})
		return addr, nil
	}
	var ips []netip.Addr
	var err error
	if r := p.inject.resolver; r != nil {
		ips, err = r.LookupNetIP(ctx, host)
	} else {
		ips, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}
	if err == nil && len(ips) == 0 {
		err = fmt.Errorf("resolve %s: no address", host)
	}
	if err != nil {
		return netip.AddrPort{}, err
	}
	addr := netip.AddrPortFrom(ips[0].Unmap(), port)
	ms.target.Store(&mirrorTarget{addr: addr, until: now.Add(mirrorTargetTTL)})
	return addr, nil
}

// mirrorTimeout bounds a copy to dst: the request timeout of dst's
// resilience destination, or defaultMirrorTimeout.
func (p *Proxy) mirrorTimeout(dst netip.AddrPort) time.Duration {
	if t := p.lookupRes(p.resilienceTable(), dst).Policy().Timeouts.Request; t > 0 {
		return t
	}
	return defaultMirrorTimeout
}

// plainTransport is the transport of copies to destinations outside the
// mesh: HTTP/1.1 over connections dialed as the app's are (dialService,
// balanced, registered with the loop guard), pooled.
func (inj *injector) plainTransport(p *Proxy) *http.Transport {
	inj.plainOnce.Do(func() {
		inj.plain = &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				dst, err := netip.ParseAddrPort(addr)
				if err != nil {
					return nil, err
				}
				svc, err := p.dialService(ctx, dst, false, "")
				if err != nil {
					return nil, err
				}
				svc.finish(false)
				return &ownedConn{Conn: svc.conn.tcp, p: p, tcp: svc.conn.tcp}, nil
			},
			DisableCompression:     true,
			MaxIdleConnsPerHost:    16,
			IdleConnTimeout:        30 * time.Second,
			MaxResponseHeaderBytes: maxHeaderBytes,
		}
	})
	return inj.plain
}

// mirrorBody is an HTTP/2 request's body that its mirror copy gets as it
// is read.
type mirrorBody struct {
	io.ReadCloser
	c *mirrorCopy
}

func (b *mirrorBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 || err == io.EOF {
		b.c.feed(p[:n], err == io.EOF)
	}
	return n, err
}

// mirrorWhole gives the request's mirror copy, if any, its body, which
// came whole with its head (HTTP/1 engine).
func (c *h1Conn) mirrorWhole(body []byte) {
	if mc := c.sreq.inject.copy; mc != nil {
		mc.feed(body, true)
	}
}

// copyRequestBody is copyBody for a request body that streams to u (the
// HTTP/1 engine's body goroutine): with a mirror copy, what is written to
// u is fed to it too, and the bytes gathered in u.w and not yet written
// when the body ends (exchange flushes them) complete it.
func (c *h1Conn) copyRequestBody(u *h1Up, length int64, chunked bool) error {
	mc := c.sreq.inject.copy
	if mc == nil {
		return copyBody(&u.w, &c.r, length, chunked, false)
	}
	dst := u.w.dst
	u.w.dst = &mirrorTee{Conn: dst, c: mc}
	err := copyBody(&u.w, &c.r, length, chunked, false)
	u.w.dst = dst
	if err == nil {
		mc.feed(u.w.buf, true)
	}
	return err
}

// mirrorTee is an upstream connection whose writes a mirror copy gets
// too.
type mirrorTee struct {
	net.Conn
	c *mirrorCopy
}

func (t *mirrorTee) Write(b []byte) (int, error) {
	n, err := t.Conn.Write(b)
	t.c.feed(b[:n], false)
	return n, err
}

// chunkDecoder takes the data out of a chunked body (RFC 9112 §7.1)
// whose framing the HTTP/1 engine has checked, as it comes in pieces;
// chunk extensions and trailers are dropped.
type chunkDecoder struct {
	state int
	size  int64 // of the chunk being read
}

// The states of a chunkDecoder.
const (
	chunkSize    = iota // the chunk-size digits
	chunkLine           // the rest of the chunk-size line
	chunkData           // size bytes of data
	chunkDataEnd        // the CRLF after the data
	chunkTrailer        // the last chunk was read: the rest is dropped
)

// decode appends the data in b to dst; over reports that dst would grow
// past max (dst is then as it was).
func (d *chunkDecoder) decode(dst, b []byte, max int64) (_ []byte, over bool) {
	for len(b) > 0 {
		switch d.state {
		case chunkSize:
			c := b[0]
			if v, ok := hexDigit(c); ok {
				d.size = d.size<<4 | int64(v)
				b = b[1:]
				continue
			}
			d.state = chunkLine
		case chunkLine:
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return dst, false
			}
			b = b[i+1:]
			if d.state = chunkData; d.size == 0 {
				d.state = chunkTrailer
			}
		case chunkData:
			n := min(d.size, int64(len(b)))
			if int64(len(dst))+n > max {
				return dst, true
			}
			dst = append(dst, b[:n]...)
			b, d.size = b[n:], d.size-n
			if d.size == 0 {
				d.state = chunkDataEnd
			}
		case chunkDataEnd:
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return dst, false
			}
			b, d.state = b[i+1:], chunkSize
		default:
			return dst, false
		}
	}
	return dst, false
}

// hexDigit is the value of a hexadecimal digit.
func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
