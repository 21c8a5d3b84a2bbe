package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/http2"

	"meshgate/proxy/sniff"
)

// serveOutboundH2 is serveOutboundHTTP's HTTP/2 half: an HTTP/2 server
// (serveH2Conn) whose requests go to dst's sidecar (balancedTransport).
func (p *Proxy) serveOutboundH2(ctx context.Context, pc *peekConn, dst netip.AddrPort, proto sniff.Protocol, az *connAuthz, m *dirMetrics) outcome {
	o := outcome{dst: dst, mtls: true}
	cc := &countingConn{Conn: pc, sentC: m.sent, recvC: m.received}
	h := &outboundHTTP{p: p, dst: dst, appProto: appProtoLabel(proto), authz: az}
	host := dst.String()
	var transport http.RoundTripper = balancedTransport{p: p, dst: dst}
	// The destination's circuit breaker, bulkhead and fallbacks, around
	// the tries (fallback.go).
	transport = guardTransport{p: p, dst: dst, next: transport}
	h.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = host
			pr.Out.Host = pr.In.Host
			keepForwarded(pr)
			pr.Out.Header.Set(hdrAppProtocol, h.appProto)
		},
		Transport:     transport,
		BufferPool:    copyBuffers{},
		FlushInterval: 0, // see flushNote
		ErrorLog:      discardLog,
		ErrorHandler:  p.proxyError,
	}
	// HTTP/2 requests: as the ReverseProxy above, for less (h2proxy.go).
	appProto := []string{h.appProto} // shared by the requests, never written
	h.h2 = &h2Proxy{
		transport: transport,
		rewrite: func(out *http.Request) {
			out.URL.Scheme = "https"
			out.URL.Host = host
			out.Header[hdrAppProtocol] = appProto
		},
		errorHandler: p.proxyError,
	}
	p.serveH2Conn(ctx, Outbound, cc, h)
	o.sent, o.received = cc.sent.Load(), cc.received.Load()
	o.tls = h.lastPeer()
	return o
}

// outboundHTTP is the client sidecar's handler for one app connection.
type outboundHTTP struct {
	p        *Proxy
	dst      netip.AddrPort
	appProto string
	authz    *connAuthz // the connection's authorization
	rp       *httputil.ReverseProxy
	h2       *h2Proxy // the requests it handles
	// res is the connection's resilience policy (h2retry.go).
	res atomic.Pointer[resConn]

	mu   sync.Mutex
	peer tlsInfo // the peer sidecar of the last request
}

func (h *outboundHTTP) lastPeer() tlsInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.peer
}

// outboundRequest is what outboundHTTP keeps of one request: its
// recorder, and the peer sidecar that served it, which balancedTransport
// notes (found by outboundKey in the request's context). One allocation
// for both.
type outboundRequest struct {
	rec  recorder
	peer tlsInfo
	// traced: the request's own trace calls gotConn (h2Proxy), so
	// balancedTransport adds none, and sets try to the try under way.
	traced bool
	try    *try
	// guard is the request's passage through its destination's guard
	// (guardTransport).
	guard guardCall
	// res is the request's retries and timeouts (retry.go).
	res reqRes
}

// gotConn notes the connection a try of the request went on: its peer
// sidecar, and for the balancer when the try had it.
func (st *outboundRequest) gotConn(c httptrace.GotConnInfo) {
	if mc, ok := c.Conn.(*meshHTTPConn); ok {
		st.peer = mc.info
	}
	st.guard.connected()
	if t := st.try; t != nil && t.done != nil {
		if t.connected = time.Now(); c.Reused {
			t.connected = t.start
		}
	}
}

func (h *outboundHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := &outboundRequest{rec: recorder{ResponseWriter: w, status: http.StatusOK}}
	rec := &st.rec
	sr := Request{Dir: Outbound, Dst: h.dst, ctx: r.Context(), authz: h.authz, msg: httpFields{r}}
	// Deferred: ReverseProxy aborts the handler with a panic when the
	// client goes away mid-response, and the request still counts.
	defer func() {
		st.guard.end()
		if !st.peer.peer.IsZero() {
			h.mu.Lock()
			h.peer = st.peer
			h.mu.Unlock()
		}
		h.p.observeRequest(Outbound, r, rec, sr.limits, &sr.inject, st.peer.peer.String(), time.Since(start))
		sr.endInject()
	}()
	if h.p.protect.limitBody(Outbound, rec, r) {
		return
	}
	if a := h.p.chains.Load()[Outbound].decide(&sr); a != nil {
		h.p.answerHTTP(rec, r, a)
		return
	}
	h.beginRes(&st.res, r, start)
	st.res.gate = &st.guard
	rec.res = &st.res
	if h.h2.handles(r) {
		st.traced = true
		h.h2.serve(rec, r, context.WithValue(r.Context(), outboundKey{}, st), st.gotConn)
		return
	}
	h.rp.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), outboundKey{}, st)))
}

// serveInboundH2 is serveInboundHTTP's HTTP/2 half: an HTTP/2 server
// (serveH2Conn) whose requests go to the app (appTransport).
func (p *Proxy) serveInboundH2(ctx context.Context, c net.Conn, appProto string, from netip.Addr, dst netip.AddrPort, peer tlsInfo, m *dirMetrics) outcome {
	o := outcome{dst: dst, tls: peer}
	app := p.l7.app
	if from.IsValid() {
		app = p.newAppTransport(from)
		defer app.closeIdle()
	}
	cc := &countingConn{Conn: c, sentC: m.sent, recvC: m.received}
	id, host, src := peer.peer.String(), dst.String(), addrPort(c.RemoteAddr())
	cert := ""
	if !peer.peer.IsZero() {
		cert = "URI=" + id
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = host
			pr.Out.Host = pr.In.Host
			keepForwarded(pr)
			if appProto != "" {
				pr.Out.Header.Set(hdrAppProtocol, appProto)
			}
		},
		Transport:     app,
		BufferPool:    copyBuffers{},
		FlushInterval: 0, // see flushNote
		ErrorLog:      discardLog,
		ErrorHandler:  p.proxyError,
	}
	// HTTP/2 requests: as the ReverseProxy above, for less (h2proxy.go).
	// The request's header is edited in place, so the forwarded headers
	// stay as the client sent them without being put back.
	var appProtoHdr []string // shared by the requests, never written
	if appProto != "" {
		appProtoHdr = []string{appProto}
	}
	h2 := &h2Proxy{
		transport: app,
		rewrite: func(out *http.Request) {
			out.URL.Scheme = "http"
			out.URL.Host = host
			if appProtoHdr != nil {
				out.Header[hdrAppProtocol] = appProtoHdr
			}
		},
		errorHandler: p.proxyError,
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		sr := Request{Dir: Inbound, Peer: peer.peer, Dst: dst, Src: src, ctx: r.Context(), clientCert: cert, authz: peer.authz, msg: httpFields{r}}
		defer func() { p.observeRequest(Inbound, r, rec, sr.limits, &sr.inject, id, time.Since(start)) }()
		if p.protect.limitBody(Inbound, rec, r) {
			return
		}
		if a := p.chains.Load()[Inbound].decide(&sr); a != nil {
			p.answerHTTP(rec, r, a)
			return
		}
		if dr, done := inboundDeadline(r, !peer.peer.IsZero()); done != nil {
			r = dr
			defer func() {
				if timeoutCause(r.Context()) != nil {
					rec.timeout = tkDeadline
					p.res.countTimeout(Inbound, host, tkDeadline)
				}
				done()
			}()
		}
		if h2.handles(r) {
			h2.serve(rec, r, r.Context(), nil)
			return
		}
		rp.ServeHTTP(rec, r)
	})
	p.serveH2Conn(ctx, Inbound, cc, h)
	o.sent, o.received = cc.sent.Load(), cc.received.Load()
	return o
}

// forwardedHeaders are the headers ReverseProxy's Rewrite removes from a
// request (RFC 7239 Forwarded and the X-Forwarded- ones).
var forwardedHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// keepForwarded puts back what Rewrite dropped of forwardedHeaders: the
// app gets them as its client sent them, as it would without the
// sidecars (and as the HTTP/1 engine and h2Proxy pass them, untouched).
func keepForwarded(pr *httputil.ProxyRequest) {
	for _, k := range forwardedHeaders {
		if v := pr.In.Header[k]; v != nil {
			pr.Out.Header[k] = v
		}
	}
}

// flushNote: the reverse proxies keep ReverseProxy's default flushing.
// It flushes a response of unknown length (a stream: gRPC, server-sent
// events) at every write, and a response whose upstream stream ended with
// its headers (length 0) not at all, so that it leaves as one HEADERS
// frame with END_STREAM. gRPC's trailers-only answers (an error before
// any message) depend on that: flushed early, the status would arrive as
// headers followed by an empty DATA frame, which gRPC clients reject.
// FlushInterval -1 would flush those headers at once, racing the end of
// the handler.

// serveH2Conn runs an HTTP/2 server over one connection until it ends:
// prior knowledge (h2c) from an app, or the mesh's meshgate/h2. (HTTP/1
// is the engine's, h1serve.go.)
func (p *Proxy) serveH2Conn(ctx context.Context, dir Direction, c net.Conn, h http.Handler) {
	lim := &p.protect.dir[dir].lim
	base := &http.Server{
		Handler:           h,
		MaxHeaderBytes:    lim.MaxRequestHeaderBytes,
		ReadHeaderTimeout: p.cfg.Timeouts.Handshake.D(),
		IdleTimeout:       lim.KeepAliveTimeout.D(),
		ErrorLog:          discardLog,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	// Registered so that a drain closes the connection once its requests
	// are answered (GOAWAY on HTTP/2), instead of holding it open for the
	// grace period.
	p.httpServers.Store(base, struct{}{})
	defer p.httpServers.Delete(base)
	h2 := &http2.Server{IdleTimeout: lim.KeepAliveTimeout.D(), MaxConcurrentStreams: lim.MaxConcurrentStreams, MaxUploadBufferPerConnection: 1 << 20}
	if err := http2.ConfigureServer(base, h2); err != nil {
		p.log.Error("HTTP/2 server", zap.Error(err))
		return
	}
	if p.draining.Load() {
		base.Shutdown(context.Background())
	}
	h2.ServeConn(c, &http2.ServeConnOpts{Context: ctx, Handler: h, BaseConfig: base})
}

// discardLog silences net/http's own error log; the proxy logs what
// matters itself.
var discardLog = log.New(io.Discard, "", 0)

// copyBuffers lends ReverseProxy the pooled copy buffers of forward, so
// a request's body copy allocates none.
type copyBuffers struct{}

func (copyBuffers) Get() []byte  { return *bufPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { bufPool.Put(&b) }

// proxyError answers a request the proxy could not pass on: 502 when the
// upstream could not be reached or refused us, 504 when it did not answer
// in time, with the reason in hdrError and the body.
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	te, _ := errors.AsType[*timeoutError](err)
	if te == nil {
		te = timeoutCause(r.Context()) // inbound: the deadline propagated (deadline.go)
	}
	if te != nil {
		if rec, ok := w.(*recorder); ok {
			rec.err = err
			p.answerHTTP(rec, r, &Answer{Status: http.StatusGatewayTimeout, Reason: te.kind.name() + " " + te.d.String(),
				stage: "timeout", grpcStatus: grpcDeadlineExceeded})
			return
		}
	}
	if r.Context().Err() != nil && !errors.Is(err, context.DeadlineExceeded) {
		return // the client went away: nobody to answer
	}
	status, reason := errorAnswer(err)
	if rec, ok := w.(*recorder); ok {
		rec.reason = reason
		rec.err = err
	}
	w.Header().Set(hdrError, reason)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, "meshgate: %s\n", reason)
}

// answerHTTP writes a stage's answer to r (see h1Conn.answer). A gRPC
// request is answered the gRPC way when the stage gave a status: 200
// with grpc-status and grpc-message in one HEADERS frame that ends the
// stream (trailers-only, as gRPC servers answer errors).
func (p *Proxy) answerHTTP(w *recorder, r *http.Request, a *Answer) {
	why := a.stage + ": " + a.Reason
	w.reason = a.logged()
	h := w.Header()
	h.Set(hdrError, why)
	if a.challenge != "" {
		h.Set("WWW-Authenticate", a.challenge)
	}
	for _, f := range a.fields {
		h.Set(f.name, f.value)
	}
	if a.grpcStatus != 0 && r.ProtoMajor == 2 && isGRPC(r.Header.Get("Content-Type")) {
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(a.grpcStatus))
		h.Set("Grpc-Message", grpcMessage(why))
		w.WriteHeader(http.StatusOK)
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(a.Status)
	fmt.Fprintf(w, "meshgate: %s\n", why)
}

// grpcMessage percent-encodes s for grpc-message (the gRPC HTTP/2
// protocol: printable ASCII but '%' as is, anything else as %XX).
func grpcMessage(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// recorder notes a response's status and size for metrics and the access
// log. It unwraps for http.ResponseController, so flushing, trailers and
// hijacking reach the real ResponseWriter.
type recorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	bytes       int64
	hijacked    bool
	reason      string // the proxy's own error, when it answered
	err         error
	guard       *guardNote // what the guard did, outbound (guardTransport)
	// res is an outbound request's retries and timeouts, for the log;
	// timeout, an inbound request's timeout, if one ended it.
	res     *reqRes
	timeout timeoutKind
}

func (r *recorder) WriteHeader(code int) {
	if !r.wroteHeader && code >= 200 {
		r.status, r.wroteHeader = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// methodLabel bounds the method label to the standard methods.
// A method read off the wire (HTTP/1 engine) is compared without a copy.
func methodLabel[T string | []byte](m T) string {
	for _, s := range standardMethods {
		if string(m) == s {
			return s
		}
	}
	return "other"
}

var standardMethods = [...]string{http.MethodGet, http.MethodPost, http.MethodHead, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace}

// observeRequest counts a request and writes its access log line; limits
// are the rate limits it met, inj what fault injection and mirroring did.
func (p *Proxy) observeRequest(dir Direction, r *http.Request, rec *recorder, limits *rlNotes, inj *injectNotes, peer string, took time.Duration) {
	p.metrics.observe(dir, methodLabel(r.Method), rec.status, peer, took)
	lvl := zapcore.InfoLevel
	switch {
	case rec.reason != "":
		lvl = zapcore.WarnLevel
	case !p.cfg.AccessLog:
		return
	}
	if ce := p.access.Check(lvl, "request"); ce != nil {
		fields := []zap.Field{
			zap.String("direction", dir.String()),
			zap.String("method", r.Method),
			zap.String("authority", r.Host),
			zap.String("path", r.URL.RequestURI()),
			zap.String("protocol", r.Proto),
			zap.Int("status", rec.status),
			zap.Int64("response_bytes", rec.bytes),
			zap.Duration("duration", took),
			zap.String("request_id", r.Header.Get(hdrRequestID)),
			zap.String("peer_identity", peer),
		}
		if rec.hijacked {
			fields = append(fields, zap.String("upgrade", r.Header.Get("Upgrade")))
		}
		fields = rateLimitsField(fields, limits)
		fields = guardFields(fields, rec.guard)
		if rec.res != nil {
			fields = rec.res.logFields(fields)
		} else if rec.timeout != tkNone {
			fields = append(fields, zap.String("timeout", rec.timeout.label()))
		}
		fields = injectFields(fields, inj)
		if rec.reason != "" {
			fields = append(fields, zap.String("reason", rec.reason), zap.Error(rec.err))
		}
		ce.Write(fields...)
	}
}
