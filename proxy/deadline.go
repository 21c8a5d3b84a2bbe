package proxy

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Timeouts and deadlines of HTTP requests (issue 16, item 1), and the
// deadline a client sidecar hands the server sidecar (item 2).
//
// A timeout that fires answers the request 504 with the timeout named in
// X-Meshgate-Error ("timeout: request 5s", "timeout: per-try 1s",
// "timeout: connect 1s", "timeout: grpc-timeout 100ms", "timeout:
// deadline 850ms"); a gRPC request gets DEADLINE_EXCEEDED, trailers-only,
// instead.
//
// Deadline propagation: the client sidecar sends the time its request
// has left until its response's headers in hdrTimeout, as a duration
// (e.g. 850ms), so that the two sidecars' clocks need not agree. The
// server sidecar bounds the app's request by it: past it, the request
// to the app is cancelled (its connection closed, or its HTTP/2 stream
// reset: the app sees its client go away) and answered 504, so that the
// app does no work nobody waits for. The header is the sidecars' own: one
// an app sends is removed, and the server sidecar never passes it on; it
// is honoured only from a mesh peer.

// hdrTimeout carries, from the client sidecar to the server sidecar, the
// time a request has left until its response's headers (see above).
const hdrTimeout = "X-Meshgate-Timeout"

// hdrGRPCTimeout is gRPC's own deadline: an integer of at most 8 digits
// and a unit, H, M, S, m (milliseconds), u or n (gRPC over HTTP/2).
const hdrGRPCTimeout = "Grpc-Timeout"

// timeoutKind names a timeout.
type timeoutKind uint8

const (
	tkNone       timeoutKind = iota
	tkRequest                // resilience timeouts.request
	tkGRPC                   // a gRPC request's grpc-timeout, as its request timeout
	tkDeadline               // inbound: the deadline the client sidecar propagated
	tkPerTry                 // timeouts.perTry
	tkConnect                // timeouts.connect (resilience, or the proxy's)
	tkIdle                   // timeouts.idle
	tkStreamIdle             // timeouts.streamIdle
)

// label is the kind label of meshgate_timeouts_total and the access
// log's timeout field: the request timeout's three sources are one kind.
func (k timeoutKind) label() string {
	switch k {
	case tkRequest, tkGRPC, tkDeadline:
		return "request"
	case tkPerTry:
		return "per_try"
	case tkConnect:
		return "connect"
	case tkIdle:
		return "idle"
	case tkStreamIdle:
		return "stream_idle"
	}
	return ""
}

// name is the timeout's name in an answer's reason.
func (k timeoutKind) name() string {
	switch k {
	case tkRequest:
		return "request"
	case tkGRPC:
		return "grpc-timeout"
	case tkDeadline:
		return "deadline"
	case tkPerTry:
		return "per-try"
	case tkConnect:
		return "connect"
	case tkIdle:
		return "idle"
	case tkStreamIdle:
		return "stream-idle"
	}
	return "timeout"
}

// timeoutError is a timeout that ended a request (or a try): its answer
// is 504, or gRPC's DEADLINE_EXCEEDED, with Error as the reason.
type timeoutError struct {
	kind timeoutKind
	d    time.Duration
}

func (e *timeoutError) Error() string { return "timeout: " + e.kind.name() + " " + e.d.String() }

// Timeout reports true: it is one (net.Error).
func (e *timeoutError) Timeout() bool { return true }

// peerDeadline reports whether an answer (its status and hdrError) is a
// server sidecar's to a request whose propagated deadline passed (see
// above): for the client sidecar, the try's own timeout, which fired a
// moment early at the other end (the two race by a hair), and is handled
// as its own.
func peerDeadline[T string | []byte](status int, why T) bool {
	const prefix = "timeout: " + "deadline "
	return status == http.StatusGatewayTimeout && len(why) > len(prefix) && string(why[:len(prefix)]) == prefix
}

// grpcDeadlineExceeded is gRPC's DEADLINE_EXCEEDED.
const grpcDeadlineExceeded = 4

// formatTimeout writes d, rounded up to a millisecond, as hdrTimeout's
// value (e.g. 850ms) into buf, and returns it.
func formatTimeout(buf []byte, d time.Duration) []byte {
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return append(strconv.AppendInt(buf[:0], int64(max(ms, 1)), 10), "ms"...)
}

// parseTimeout reads hdrTimeout's value: a positive duration (any unit
// time.ParseDuration reads).
func parseTimeout(v string) (time.Duration, bool) {
	d, err := time.ParseDuration(v)
	return d, err == nil && d > 0
}

// parseGRPCTimeout reads a grpc-timeout value: 1 to 8 digits and a unit.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	var n int64
	for i := 0; i < len(v)-1; i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if n == 0 {
		return 0, false
	}
	return time.Duration(n) * unit, true // 99999999H fits in a Duration
}

// formatGRPCTimeout writes d as a grpc-timeout value, rounded up:
// milliseconds (what clients send), microseconds below one, and a coarser
// unit when milliseconds take more than 8 digits.
func formatGRPCTimeout(d time.Duration) string {
	if d < time.Millisecond {
		return strconv.FormatInt(int64(max((d+time.Microsecond-1)/time.Microsecond, 1)), 10) + "u"
	}
	for _, u := range []struct {
		d time.Duration
		c string
	}{{time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}, {time.Hour, "H"}} {
		if n := (d + u.d - 1) / u.d; n <= 99999999 {
			return strconv.FormatInt(int64(n), 10) + u.c
		}
	}
	return "99999999H"
}

// inboundTimeout reads and removes hdrTimeout from an inbound request's
// header: the deadline its client sidecar propagated, when the request
// came from a mesh peer (mesh) and carries a valid one.
func inboundTimeout(h http.Header, mesh bool) (time.Duration, bool) {
	v, ok := h[hdrTimeout]
	if !ok {
		return 0, false
	}
	delete(h, hdrTimeout)
	if !mesh || len(v) != 1 {
		return 0, false
	}
	return parseTimeout(v[0])
}

// headDeadline cancels a request to the app that has no response
// headers within the deadline its client sidecar propagated; stop, once
// they are in, leaves the response's body alone.
type headDeadline struct {
	timer *time.Timer
	once  sync.Once
}

// headDeadlineKey is the context key of a request's *headDeadline.
type headDeadlineKey struct{}

// withHeadDeadline returns r's context bounded by d until the response's
// headers (stopHeadDeadline): past d, the request is cancelled with a
// *timeoutError as its cause. cancel must be called once the request is
// over.
func withHeadDeadline(r *http.Request, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(r.Context())
	hd := &headDeadline{}
	hd.timer = time.AfterFunc(d, func() { cancel(&timeoutError{kind: tkDeadline, d: d}) })
	ctx = context.WithValue(ctx, headDeadlineKey{}, hd)
	return ctx, func() { hd.stop(); cancel(nil) }
}

func (hd *headDeadline) stop() { hd.once.Do(func() { hd.timer.Stop() }) }

// stopHeadDeadline stops the head deadline of ctx, if it has one: the
// response's headers are in.
func stopHeadDeadline(ctx context.Context) {
	if hd, ok := ctx.Value(headDeadlineKey{}).(*headDeadline); ok {
		hd.stop()
	}
}

// timeoutCause is the timeout that cancelled ctx, nil if none did.
func timeoutCause(ctx context.Context) *timeoutError {
	if ctx.Err() == nil {
		return nil
	}
	te, _ := context.Cause(ctx).(*timeoutError)
	return te
}
