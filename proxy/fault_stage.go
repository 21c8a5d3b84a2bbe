package proxy

import (
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
)

// The fault stage (issue 16 item 7): the outbound requests of a
// destination (or route) with faults are delayed, or answered with an
// error without being sent, each for its share of requests (percent),
// picked at random, independently:
//
//   - delay holds the request for faults.delay.duration before it goes
//     on. The wait is the request's own goroutine's, with no buffer:
//     over HTTP/2 it ends when the request's context does (the client
//     reset the stream or went away); over HTTP/1 the engine watches the
//     client's socket (a FIN or a reset ends it, see waitConn). A request
//     whose client went away is not sent (the log says status 499,
//     "fault: delay: the client went away").
//   - abort answers faults.abort.status with X-Meshgate-Error "fault:
//     abort"; a gRPC request gets faults.abort.grpc, when set, as a
//     trailers-only answer (as the rate-limit stage answers
//     RESOURCE_EXHAUSTED), else the status; a request that is not gRPC
//     is not aborted when only grpc is set.
//
// A request may be both delayed and aborted, the delay first. Each fault
// counts in meshgate_faults_injected_total{destination,route,kind} and
// the request's access log line says it (fault: delay, abort or
// "delay,abort").

// statusClientGone is the status a request is logged with when its
// client went away while it was delayed (nginx's 499; nobody reads it).
const statusClientGone = 499

// faultStage is the fault stage of the outbound chain, in it while some
// destination has faults (newChains).
type faultStage struct {
	p  *Proxy
	st *injectState
}

func (faultStage) Name() string { return stageFault }

func (s faultStage) Decide(r *Request) *Answer {
	pol := s.st.policy(s.p, r)
	f := &pol.Faults
	if !f.Enabled() {
		return nil
	}
	inj := &s.p.inject
	counted := s.st.counted[pol]
	if f.Delay > 0 && f.DelayPercent > 0 && inj.roll() < f.DelayPercent {
		counted[faultDelay].Inc()
		r.inject.fired |= noteDelay
		if !r.waitDelay(f.Delay) {
			return &Answer{Status: statusClientGone, Reason: "delay: the client went away"}
		}
	}
	if f.AbortPercent == 0 {
		return nil
	}
	grpc := r.isGRPC() && f.AbortGRPC != codes.OK
	if !grpc && f.AbortStatus == 0 || inj.roll() >= f.AbortPercent {
		return nil
	}
	counted[faultAbort].Inc()
	r.inject.fired |= noteAbort
	a := &Answer{Status: f.AbortStatus, Reason: "abort"}
	if grpc {
		a.grpcStatus = int(f.AbortGRPC)
		if a.Status == 0 {
			a.Status = http.StatusServiceUnavailable
		}
	}
	a.logReason = "abort (destination " + pol.Dest().Key()
	if rn := pol.RouteName(); rn != "" {
		a.logReason += ", route " + rn
	}
	a.logReason += ")"
	return a
}

// isGRPC reports whether r is a gRPC request (HTTP/2, application/grpc).
func (r *Request) isGRPC() bool {
	h, ok := r.msg.(httpFields)
	return ok && h.r.ProtoMajor == 2 && isGRPC(h.r.Header.Get("Content-Type"))
}

// waitDelay waits d for a request, or until its client goes away
// (false): the HTTP/1 engine's client connection is watched (waitConn);
// an HTTP/2 request's context ends with its client.
func (r *Request) waitDelay(d time.Duration) bool {
	if r.conn != nil {
		return waitConn(r.conn, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.context().Done():
		return false
	}
}
