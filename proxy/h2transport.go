package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"meshgate/proxy/resilience"
)

// newMeshTransport returns a transport of the HTTP/2 path to peer
// sidecars (see meshTransports): it dials an endpoint and originates mesh
// TLS for meshgate/h2, and closes a pooled connection that has carried no
// request for idle.
func (p *Proxy) newMeshTransport(idle time.Duration) *http2.Transport {
	return &http2.Transport{
		DialTLSContext: func(ctx context.Context, _, addr string, _ *tls.Config) (net.Conn, error) {
			dst, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			conn, info, err := p.dialEndpoint(ctx, dst, dst, alpnH2)
			if err != nil {
				return nil, err
			}
			return &meshHTTPConn{Conn: conn.tls, p: p, tcp: conn.tcp, info: info}, nil
		},
		DisableCompression: true,
		MaxHeaderListSize:  maxHeaderBytes + 64<<10,
		ReadIdleTimeout:    30 * time.Second,
		PingTimeout:        15 * time.Second,
		IdleConnTimeout:    idle,
	}
}

// meshTransports are the HTTP/2 path's transports to peer sidecars, one
// for each idle timeout in use. An http2.Transport closes a pooled
// connection once it has carried no request for its IdleConnTimeout, one
// value for its whole pool (pooled by endpoint address), and its pool is
// not for us to close connections in: one closed from outside as a
// request is put on it fails that request, where the transport's own
// idle close is taken under the connection's lock and a request racing
// it goes on a new connection. So the connections of a destination whose
// resilience timeouts.idle is not the proxy's timeouts.idle are pooled
// by a transport of their own with that timeout: made when first needed,
// dropped when a reload leaves no destination with it (its connections
// still in use close once idle that long, as they would have). Two
// destinations with different idle timeouts that share an endpoint then
// use a connection each.
type meshTransports struct {
	p       *Proxy
	def     *http2.Transport // the proxy's timeouts.idle
	defIdle time.Duration
	mu      sync.RWMutex
	by      map[time.Duration]*http2.Transport // the other idle timeouts'
}

func newMeshTransports(p *Proxy) *meshTransports {
	idle := p.cfg.Timeouts.Idle.D()
	return &meshTransports{p: p, def: p.newMeshTransport(idle), defIdle: idle, by: make(map[time.Duration]*http2.Transport)}
}

// forIdle returns the transport whose connections close after idle
// without a request; 0 is the proxy's timeouts.idle.
func (m *meshTransports) forIdle(idle time.Duration) *http2.Transport {
	if idle <= 0 || idle == m.defIdle {
		return m.def
	}
	m.mu.RLock()
	t := m.by[idle]
	m.mu.RUnlock()
	if t != nil {
		return t
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if t = m.by[idle]; t == nil {
		t = m.p.newMeshTransport(idle)
		m.by[idle] = t
	}
	return t
}

// retable drops the transports of the idle timeouts no destination of t
// has, closing their idle connections.
func (m *meshTransports) retable(t *resilience.Table) {
	keep := map[time.Duration]bool{}
	for _, dp := range t.Destinations() {
		keep[dp.Policy().Timeouts.Idle] = true
	}
	var gone []*http2.Transport
	m.mu.Lock()
	for d, tr := range m.by {
		if !keep[d] {
			gone = append(gone, tr)
			delete(m.by, d)
		}
	}
	m.mu.Unlock()
	for _, tr := range gone {
		tr.CloseIdleConnections()
	}
}

// closeIdle closes the connections no request uses, of every transport.
func (m *meshTransports) closeIdle() {
	m.def.CloseIdleConnections()
	m.mu.RLock()
	defer m.mu.RUnlock()
	for _, tr := range m.by {
		tr.CloseIdleConnections()
	}
}

// meshHTTPConn is a pooled upstream connection: closing it deregisters it
// from the loop guard.
type meshHTTPConn struct {
	net.Conn
	p    *Proxy
	tcp  *net.TCPConn
	info tlsInfo
	once sync.Once
}

func (c *meshHTTPConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.p.closeUpstream(c.tcp) })
	return err
}

// CloseWrite half-closes the connection, so that a protocol switched to
// (ReverseProxy copies an upgraded connection) keeps TCP half-close.
func (c *meshHTTPConn) CloseWrite() error { return closeWrite(c.Conn) }

// newAppTransport returns transports to the local app whose connections
// are dialed from from (see dialApp).
func (p *Proxy) newAppTransport(from netip.Addr) appTransport {
	dialApp := func(ctx context.Context, addr string) (net.Conn, error) {
		dst, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, err
		}
		c, err := p.dialApp(ctx, from, dst)
		if err != nil {
			return nil, &dialError{err}
		}
		return &meshHTTPConn{Conn: c, p: p, tcp: c}, nil
	}
	return appTransport{
		h1: &http.Transport{
			DialContext:            func(ctx context.Context, _, addr string) (net.Conn, error) { return dialApp(ctx, addr) },
			DisableCompression:     true,
			MaxIdleConnsPerHost:    64,
			IdleConnTimeout:        90 * time.Second,
			MaxResponseHeaderBytes: maxHeaderBytes,
		},
		h2c: &http2.Transport{
			AllowHTTP:          true,
			DialTLSContext:     func(ctx context.Context, _, addr string, _ *tls.Config) (net.Conn, error) { return dialApp(ctx, addr) },
			DisableCompression: true,
			MaxHeaderListSize:  maxHeaderBytes + 64<<10,
			IdleConnTimeout:    90 * time.Second,
		},
	}
}

// appTransport sends a request to the local app in the protocol named by
// hdrAppProtocol (which it removes): HTTP/1.1, or h2c.
type appTransport struct {
	h1  *http.Transport
	h2c *http2.Transport
}

func (t appTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	proto := r.Header.Get(hdrAppProtocol)
	r.Header.Del(hdrAppProtocol)
	var resp *http.Response
	var err error
	if proto == "http2" {
		resp, err = t.h2c.RoundTrip(r)
	} else {
		resp, err = t.h1.RoundTrip(r)
	}
	// The answer's headers are in: a deadline the client's sidecar
	// propagated no longer applies (deadline.go).
	stopHeadDeadline(r.Context())
	return resp, err
}

// closeIdle closes the app connections no request uses.
func (t appTransport) closeIdle() {
	t.h1.CloseIdleConnections()
	t.h2c.CloseIdleConnections()
}

// balancedTransport sends each L7 request to an endpoint of its
// destination that the balancer picks, over the pooled mesh connections
// to that endpoint; a request that could not be sent (connect or
// handshake failure) is tried on another endpoint.
type balancedTransport struct {
	p   *Proxy
	dst netip.AddrPort
}

// outboundKey is the context key of a request's *outboundRequest.
type outboundKey struct{}

func (t balancedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	st, _ := r.Context().Value(outboundKey{}).(*outboundRequest)
	if st == nil || st.res.pol == nil {
		return t.send(r, st, nil, nil)
	}
	return t.retry(r, st, &st.res)
}

// send makes a try of r: to an endpoint the balancer picks, another one
// while connecting fails (endpointsFor). With rr, it is a try of rr's
// request: bounded by its deadline, its body read through rb when rb is
// not nil (replay.go).
func (t balancedTransport) send(r *http.Request, st *outboundRequest, rr *reqRes, rb *replayBody) (*http.Response, error) {
	var resp *http.Response
	ctx := r.Context()
	var tw *tryWatch
	if rr != nil {
		if tw = rr.watchTry(ctx); tw != nil {
			ctx = tw.ctx
		}
		if d := rr.pol.Timeouts.Connect; d > 0 {
			ctx = context.WithValue(ctx, connectKey{}, d)
		}
	}
	err := t.p.endpointsFor(ctx, t.dst, rr, func(tr *try) error {
		// One trace per try, and only when someone listens: the request's
		// peer sidecar (st) and the balancer's set-up time. The pooled
		// transport dials and runs the mesh handshake, when it has no
		// connection to the endpoint, before GotConn: set-up, which the
		// balancer does not count as the endpoint's latency.
		out := r
		switch {
		case st != nil && st.traced:
			st.try = tr // the request's own trace notes its connection
		case st != nil || tr.done != nil:
			out = r.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
				GotConn: func(c httptrace.GotConnInfo) {
					if mc, ok := c.Conn.(*meshHTTPConn); ok && st != nil {
						st.peer = mc.info
					}
					if st != nil {
						st.guard.connected()
					}
					if tr.done != nil {
						if tr.connected = time.Now(); c.Reused {
							tr.connected = tr.start
						}
					}
				},
			}))
		}
		if out == r && ctx != r.Context() {
			out = r.WithContext(ctx)
		}
		// r is the proxy's own copy of the app's request (ReverseProxy's,
		// or h2Proxy's), so a shallow copy will do: the transport changes neither its header nor its
		// URL. The URL is copied only when the balancer picked an endpoint
		// other than the destination, which Rewrite already set.
		if tr.addr != t.dst {
			if out == r {
				out = r.WithContext(r.Context())
			}
			u := *r.URL
			u.Host = tr.addr.String()
			out.URL = &u
		}
		if r.Body != nil && r.Body != http.NoBody {
			// The transport closes the body when the try fails; another
			// try needs it: unread after a connect failure, or kept
			// (replayBody). The server closes it once the handler is
			// done. Unbalanced and without retries, there is no other
			// try; h2Proxy's body is one the transport cannot close.
			body := r.Body
			switch _, noClose := body.(*noCloseBody); {
			case rb != nil:
				body = rb.reader()
			case (tr.done != nil || rr != nil) && !noClose:
				body = io.NopCloser(body)
			}
			if tw != nil && tw.idle > 0 {
				body = &watchedRequestBody{watchedBody{ReadCloser: body, tw: tw}}
			}
			if body != r.Body {
				if out == r {
					out = r.WithContext(r.Context())
				}
				out.Body = body
			}
		}
		var idle time.Duration // the destination's idle timeout, when set
		if rr != nil {
			idle = rr.pol.Timeouts.Idle
		}
		var err error
		if resp, err = t.p.l7.mesh.forIdle(idle).RoundTrip(out); err != nil {
			return err
		}
		if tw != nil && !tw.headers() {
			// The try's deadline passed as its answer came.
			resp.Body.Close()
			resp = nil
			return errTryDeadline
		}
		if tr.done != nil {
			if tr.connected.IsZero() {
				tr.connected = tr.start // no trace of the connection: all latency
			}
			setup, latency := tr.spent(time.Now())
			failed := resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusServiceUnavailable ||
				resp.StatusCode == http.StatusGatewayTimeout
			resp.Body = &doneBody{ReadCloser: resp.Body, done: func() { tr.report(setup, latency, failed) }}
		}
		if tw != nil {
			resp.Body = &watchedBody{ReadCloser: resp.Body, tw: tw}
		}
		return nil
	})
	if err != nil {
		if tw != nil {
			tw.end()
			if _, ok := errors.AsType[*timeoutError](err); !ok && tw.deadlinePassed() {
				err = rr.tryTimeout()
			}
		}
		return nil, err
	}
	return resp, nil
}

// retry sends r, a request of rr's, and tries it again while its policy
// says (retry.go): on a connect failure, a reset before its answer, a
// retried status or gRPC status (of a trailers-only answer), a try cut by
// its per-try timeout.
func (t balancedTransport) retry(r *http.Request, st *outboundRequest, rr *reqRes) (*http.Response, error) {
	ctx := r.Context()
	var rb *replayBody
	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	if hasBody && rr.methodOK && rr.pol.Retry.Attempts > 0 && rr.pol.Retry.MaxBodyBytes > 0 && r.ContentLength <= rr.pol.Retry.MaxBodyBytes {
		rb = newReplayBody(r.Body, rr.pol.Retry.MaxBodyBytes)
	}
	replayable := func() bool { return !hasBody || rb != nil && rb.replayable() }
	for tries := 0; ; tries++ {
		now := time.Now()
		rr.beginTry(now)
		req := r
		if !rr.tryDeadline.IsZero() {
			if tries > 0 {
				// An earlier try's transport may still be writing its
				// header: this one gets its own.
				req = r.WithContext(ctx)
				req.Header = r.Header.Clone()
			}
			left := rr.tryDeadline.Sub(now)
			var b [24]byte
			req.Header[hdrTimeout] = []string{string(formatTimeout(b[:0], left))}
			if rr.grpcTimeout {
				req.Header[hdrGRPCTimeout] = []string{formatGRPCTimeout(left)}
			}
		}
		resp, err := t.send(req, st, rr, rb)
		if err == nil && !rr.tryDeadline.IsZero() && peerDeadline(resp.StatusCode, resp.Header.Get(hdrError)) {
			// The peer sidecar cut the app's request at the deadline this
			// try gave it: this try's own timeout, a moment early.
			resp.Body.Close()
			resp, err = nil, rr.tryTimeout()
		}
		var why retryWhy
		switch {
		case err == nil:
			grpcStatus := ""
			if rr.pol.Retry.On.GRPC != 0 {
				grpcStatus = resp.Header.Get("Grpc-Status")
			}
			var ok bool
			if why, ok = rr.retriesStatus(resp.StatusCode, grpcStatus); !ok {
				return resp, nil
			}
			wait, ok := rr.again(why, replayable(), resp.Header.Get("Retry-After"))
			if !ok {
				return resp, nil
			}
			resp.Body.Close() // the answer is dropped: its stream is reset, the try reported
			if !rr.sleep(ctx, wait) {
				return nil, ctx.Err()
			}
			continue
		case ctx.Err() != nil:
			return nil, err // the client went away
		case retriable(err):
			why.kind = retryConnect
		default:
			if te, ok := errors.AsType[*timeoutError](err); ok {
				if te.kind != tkPerTry {
					rr.failed(err)
					return nil, err
				}
				why.kind = retryPerTry
			} else {
				why.kind = retryReset
			}
		}
		if wait, ok := rr.again(why, replayable(), ""); ok && rr.sleep(ctx, wait) {
			continue
		}
		if ctx.Err() != nil {
			return nil, err
		}
		rr.failed(err)
		return nil, err
	}
}

// doneBody reports a request's try when its response body is closed (the
// request is in flight until then, for least-request).
type doneBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}
