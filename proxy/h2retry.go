package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// The HTTP/2 path's part of retries and timeouts (retry.go,
// deadline.go): what outboundHTTP, balancedTransport and the inbound
// handler call around a request's tries.

// beginRes readies an outbound request for its tries (rr): the policy of
// its route, its timeout (or its grpc-timeout when sooner), its deposit in
// the retry budget. Any hdrTimeout the app sent is removed.
func (h *outboundHTTP) beginRes(rr *reqRes, r *http.Request, start time.Time) {
	delete(r.Header, hdrTimeout)
	rc := h.res.Load()
	if rc == nil || rc.s != h.p.guards.curSet() {
		rc = &resConn{}
		h.p.resolveRes(rc, h.dst)
		h.res.Store(rc)
	}
	rr.begin(h.p, routePolicy(rc.dp, r.Method, r.RequestURI), rc.g, r.Method, start)
	if v := r.Header[hdrGRPCTimeout]; len(v) == 1 && isGRPC(r.Header.Get("Content-Type")) {
		if d, ok := parseGRPCTimeout(v[0]); ok {
			rr.limit(d, tkGRPC)
			rr.grpcTimeout = true
		}
	}
}

// errTryDeadline ends a try whose deadline passed (tryWatch).
var errTryDeadline = errors.New("try deadline passed")

// tryWatch bounds one try of an HTTP/2 request by its deadline until its
// answer's headers, and then, when the request has a stream-idle
// timeout, ends it once neither its body nor its answer's moved for that
// long. Its context is the try's: cancelled at the end.
type tryWatch struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	rr     *reqRes
	// timer fires at the try's deadline, then (idle) checks for a stream
	// gone idle.
	timer *time.Timer
	idle  time.Duration
	// last is when a byte of the body or the answer last moved (Unix
	// nanoseconds).
	last atomic.Int64
	// passed: the deadline fired; idled: the stream-idle timeout did.
	passed, idled atomic.Bool
}

// watchTry returns the watch of the try about to begin, nil when the
// request has neither a deadline nor a stream-idle timeout.
func (rr *reqRes) watchTry(ctx context.Context) *tryWatch {
	idle := rr.pol.Timeouts.StreamIdle
	if rr.tryDeadline.IsZero() && idle <= 0 {
		return nil
	}
	tw := &tryWatch{rr: rr, idle: idle}
	tw.ctx, tw.cancel = context.WithCancelCause(ctx)
	if !rr.tryDeadline.IsZero() {
		tw.timer = time.AfterFunc(time.Until(rr.tryDeadline), func() {
			tw.passed.Store(true)
			tw.cancel(errTryDeadline)
		})
	}
	rr.tw = tw
	return tw
}

// headers notes the answer's headers: the deadline no longer applies,
// and the stream-idle watch starts. false: the deadline passed first.
func (tw *tryWatch) headers() bool {
	if tw.timer != nil && !tw.timer.Stop() {
		tw.passed.Store(true) // its function may not have run yet
		return false
	}
	if tw.idle > 0 {
		tw.last.Store(time.Now().UnixNano())
		tw.timer = time.AfterFunc(tw.idle, tw.checkIdle)
	}
	return true
}

// checkIdle ends the stream if nothing moved for idle, and looks again
// when it would be.
func (tw *tryWatch) checkIdle() {
	since := time.Duration(time.Now().UnixNano() - tw.last.Load())
	if since < tw.idle {
		tw.timer.Reset(tw.idle - since)
		return
	}
	tw.idled.Store(true)
	tw.rr.p.res.countTimeout(Outbound, tw.rr.g.pol.Key(), tkStreamIdle)
	tw.cancel(&timeoutError{kind: tkStreamIdle, d: tw.idle})
}

// end stops the watch and cancels the try's context.
func (tw *tryWatch) end() {
	if tw.timer != nil {
		tw.timer.Stop()
	}
	tw.cancel(nil)
}

// deadlinePassed reports whether the try's deadline fired.
func (tw *tryWatch) deadlinePassed() bool { return tw.passed.Load() }

// watchedBody is a body of a watched try, request or answer: what it
// reads is movement; closing the answer's ends the try.
type watchedBody struct {
	io.ReadCloser
	tw *tryWatch
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 && b.tw.idle > 0 {
		b.tw.last.Store(time.Now().UnixNano())
	}
	return n, err
}

func (b *watchedBody) Close() error {
	err := b.ReadCloser.Close()
	b.tw.end()
	return err
}

// watchedRequestBody is watchedBody for a request's body: closing it (the
// transport does when the try ends either way) leaves the try alone.
type watchedRequestBody struct{ watchedBody }

func (b *watchedRequestBody) Close() error { return b.ReadCloser.Close() }

// inboundDeadline bounds r, an inbound request, by the deadline its
// client's sidecar propagated (hdrTimeout, removed either way; honoured
// from a mesh peer only), until its answer's headers: it returns the
// request to send and a function to call once it is over; r itself and
// nil when there is no deadline.
func inboundDeadline(r *http.Request, mesh bool) (*http.Request, func()) {
	d, ok := inboundTimeout(r.Header, mesh)
	if !ok {
		return r, nil
	}
	ctx, done := withHeadDeadline(r, d)
	return r.WithContext(ctx), done
}
