package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"meshgate/proxy/policy"
	"meshgate/proxy/resilience"
)

// Fallbacks (resilience.Fallback): what a request is answered when its
// destination's circuit is open, its bulkhead is full, or it failed
// after its retries, if its route has one: the last good response to the
// same GET, kept in the route's stale cache, with Age and a Warning 110
// (stale-if-error, RFC 5861), while it is within its age; else the
// configured static response; else the error.

// fallbackAnswer is a fallback response. Its header and body are shared
// (the stale cache's, or the config's): copied into an answer, never
// changed.
type fallbackAnswer struct {
	kind   string // "stale" or "static"
	status int
	header http.Header
	body   []byte
	age    time.Duration // stale
}

// staleKeyOf is what a GET's response is kept under in a stale cache: its
// authority and target (the cache is the destination's, or its route's).
func staleKeyOf(authority, target string) string { return authority + " " + target }

// fallback returns the request's fallback at now, if its route has one
// that can answer it: a stale response for a GET to authority and target
// when one is kept, else the static one.
func (gc *guardCall) fallback(method, authority, target string, now time.Time) (fallbackAnswer, bool) {
	if gc.g == nil {
		return fallbackAnswer{}, false
	}
	fb := &gc.pol.Fallback
	if fb.Stale != nil && method == http.MethodGet {
		if r, age, ok := gc.g.staleCache(gc.pol).Get(staleKeyOf(authority, target), now); ok {
			return fallbackAnswer{kind: "stale", status: r.Status, header: r.Header, body: r.Body, age: age}, true
		}
	}
	if s := fb.Static; s != nil {
		return fallbackAnswer{kind: "static", status: s.Status, header: s.Header, body: s.Body}, true
	}
	return fallbackAnswer{}, false
}

// served counts and notes that the request was answered with fa, and
// gives back the places it held.
func (gc *guardCall) served(fa *fallbackAnswer) {
	gc.release()
	gc.note.dest, gc.note.fallback = gc.g.key, fa.kind
	if !gc.g.retired.Load() {
		gc.g.gs.m.fallbacks.WithLabelValues(gc.g.key, gc.pol.RouteName(), fa.kind).Inc()
	}
}

// framingFields are header fields a fallback's own framing replaces.
func framingField(name string) bool {
	return strings.EqualFold(name, "Content-Length") || strings.EqualFold(name, "Transfer-Encoding") ||
		strings.EqualFold(name, "Connection") || strings.EqualFold(name, "Age")
}

// keeps reports whether a response to a request of method could be kept
// for the request's stale fallback: before anything is looked at or
// buffered.
func (gc *guardCall) keeps(method string) bool {
	return gc.g != nil && gc.pol.Fallback.Stale != nil && method == http.MethodGet
}

// keepIn returns the stale cache a response is to be kept in, nil when
// it is not: the request's route has a stale fallback (keeps), the
// response's body is length bytes (known, and no more than the cache
// keeps), it is Cacheable, and the cache Wants it (the copy kept is not
// from the last second). Asked before the body is read: no body is
// buffered that would not be kept.
func (gc *guardCall) keepIn(status int, length int64, req, resp resilience.Fields, key string, now time.Time) *resilience.StaleCache {
	if length < 0 || length > gc.pol.Fallback.Stale.MaxBytes || !resilience.Cacheable(http.MethodGet, status, req, resp) {
		return nil
	}
	c := gc.g.staleCache(gc.pol)
	if !c.Wants(key, now) {
		return nil
	}
	return c
}

// guardTransport puts a destination's guard around the HTTP/2 path's
// transport (next: the retry loop, then balancedTransport), in the order
// of the request path: admit; next; the outcome to the breaker; the
// fallback for a request refused or failed; a good answer to a
// cacheable GET kept. A refusal or a fallback is an answer made here,
// passed back as the response (a refusal to a gRPC request is
// UNAVAILABLE, trailers-only): nothing reaches the network. The places
// the request holds are given back when it has its answer's head, or at
// the latest when its handler ends (outboundHTTP's guardCall.end).
type guardTransport struct {
	p    *Proxy
	dst  netip.AddrPort
	next http.RoundTripper
}

func (t guardTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	st, _ := r.Context().Value(outboundKey{}).(*outboundRequest)
	if st == nil {
		return t.next.RoundTrip(r)
	}
	g := st.res.g // the request's destination (outboundHTTP.beginRes)
	if g == nil || !g.guarded() {
		return t.next.RoundTrip(r)
	}
	start := time.Now()
	gc := &st.guard
	st.rec.guard = &gc.note
	target := r.URL.RequestURI()
	if e := gc.admit(g, g.pol.Route(r.Method, policy.NormalizePath(target)), start); e != nil {
		return t.refused(r, st, target, e), nil
	}
	resp, err := t.next.RoundTrip(r)
	gc.connected()
	now := time.Now()
	if err != nil {
		if r.Context().Err() != nil && !errors.Is(err, context.DeadlineExceeded) {
			gc.end() // the client went away: nothing to judge
			return nil, err
		}
		gc.outcomeErr(err, now)
		if fa, ok := gc.fallback(r.Method, r.Host, target, now); ok {
			gc.served(&fa)
			return fa.response(r), nil
		}
		gc.release()
		if e, ok := asGuardError(err); ok {
			return t.refused(r, st, target, e), nil
		}
		return nil, err
	}
	if failedStatus(resp.StatusCode) {
		gc.outcome(false, now)
		if fa, ok := gc.fallback(r.Method, r.Host, target, now); ok {
			resp.Body.Close()
			gc.served(&fa)
			return fa.response(r), nil
		}
		return resp, nil
	}
	gc.outcome(true, now)
	if gc.keeps(r.Method) {
		resp = keepH2(r, gc, target, resp, now)
	}
	return resp, nil
}

// refused answers a request the guard refused: its fallback, else 503
// with the reason (gRPC: UNAVAILABLE), noted for the log.
func (t guardTransport) refused(r *http.Request, st *outboundRequest, target string, e *guardError) *http.Response {
	gc := &st.guard
	if fa, ok := gc.fallback(r.Method, r.Host, target, time.Now()); ok {
		gc.served(&fa)
		return fa.response(r)
	}
	why := e.Error()
	st.rec.reason, st.rec.err = why, nil
	h := http.Header{hdrError: {why}}
	if r.ProtoMajor == 2 && isGRPC(r.Header.Get("Content-Type")) {
		// Trailers-only: the status in the one HEADERS frame.
		h["Content-Type"] = []string{"application/grpc"}
		h["Grpc-Status"] = []string{strconv.Itoa(grpcGuardRefused)}
		h["Grpc-Message"] = []string{grpcMessage(why)}
		return synthResponse(r, http.StatusOK, h, nil)
	}
	h["Content-Type"] = []string{"text/plain; charset=utf-8"}
	return synthResponse(r, http.StatusServiceUnavailable, h, []byte("meshgate: "+why+"\n"))
}

// grpcGuardRefused is the gRPC status of a request the guard refused:
// UNAVAILABLE (the client may try again later).
const grpcGuardRefused = 14

// response is fa as a response to r: its header copied but for its
// framing, with Age and Warning for a stale one.
func (fa *fallbackAnswer) response(r *http.Request) *http.Response {
	h := make(http.Header, len(fa.header)+3)
	for k, vv := range fa.header {
		if !framingField(k) {
			h[k] = vv[:len(vv):len(vv)] // shared: capped, so that an append copies
		}
	}
	if fa.kind == "stale" {
		age, warning := resilience.StaleFields(fa.age)
		h["Age"] = []string{age}
		h["Warning"] = append(h["Warning"], warning)
	}
	return synthResponse(r, fa.status, h, fa.body)
}

// synthResponse is a response the proxy makes to r itself, its body (no
// body for HEAD) with its length.
func synthResponse(r *http.Request, status int, h http.Header, body []byte) *http.Response {
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	resp := &http.Response{Status: strconv.Itoa(status) + " " + http.StatusText(status), StatusCode: status,
		Proto: "HTTP/2.0", ProtoMajor: 2, Header: h, ContentLength: int64(len(body)), Body: http.NoBody, Request: r}
	if r.Method != http.MethodHead && len(body) > 0 {
		resp.Body = io.NopCloser(bytes.NewReader(body))
	}
	return resp
}

// keepH2 keeps a copy of resp, a good answer to a GET of a route with a
// stale fallback, when keepIn says so: its body, of a known length no
// larger than the cache keeps, is read whole, then handed on from the
// copy.
func keepH2(r *http.Request, gc *guardCall, target string, resp *http.Response, now time.Time) *http.Response {
	if resp.ContentLength < 0 || resp.ContentLength > gc.pol.Fallback.Stale.MaxBytes {
		return resp
	}
	key := staleKeyOf(r.Host, target)
	c := gc.keepIn(resp.StatusCode, resp.ContentLength, r.Header, resp.Header, key, now)
	if c == nil {
		return resp
	}
	body := make([]byte, resp.ContentLength)
	n, err := io.ReadFull(resp.Body, body)
	if err != nil {
		// The answer broke off: handed on as far as it came, then the
		// error; nothing is kept.
		resp.Body = &keptBody{Reader: io.MultiReader(bytes.NewReader(body[:n]), errReader{err}), orig: resp.Body}
		return resp
	}
	c.Put(key, resilience.Response{Status: resp.StatusCode, Header: resp.Header, Body: body}, now)
	resp.Body = &keptBody{Reader: bytes.NewReader(body), orig: resp.Body}
	return resp
}

// keptBody hands on a body read ahead; closing it closes the original
// (which ends the request's try).
type keptBody struct {
	io.Reader
	orig io.Closer
}

func (b *keptBody) Close() error { return b.orig.Close() }

// errReader fails every read with err.
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
