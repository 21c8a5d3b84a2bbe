package proxy

import (
	"errors"
	"net"
)

// Faults of opaque TCP connections (issue 16 item 7, L4): the app's
// connections to a destination with tcpFaults that the sidecar passes as
// bytes (a port declared opaque, a server that speaks first, bytes that
// detection found not to be HTTP, and any connection not served as L7:
// outside the mesh, or with protocols.l7 off) are delayed, or reset,
// each for its share (percent), picked at random:
//
//   - delay holds the connection for tcpFaults.delay.duration before the
//     destination is dialed (a connection dialed while its protocol was
//     being detected is held before any byte passes either way). The
//     wait watches the app's socket (waitConn): an app that gives up
//     ends it, and the connection is closed.
//   - reset resets the app's connection (SO_LINGER 0, as the IP lists'
//     refusal), at once or after the delay; the destination is never
//     dialed (or, dialed while detecting, is closed).
//
// Each counts in meshgate_faults_injected_total{destination, route="",
// kind=tcp_delay|tcp_reset}; the connection's log line says why it
// ended. HTTP connections served as L7 meet the faults of HTTP requests
// (faults) instead, request by request.

// errFaultReset is a connection reset on purpose (tcpFaults.reset).
var errFaultReset = errors.New("reset on purpose (resilience tcpFaults)")

// errFaultClientGone is a connection whose app went away while it was
// delayed on purpose (tcpFaults.delay).
var errFaultClientGone = errors.New("the client went away while the connection was delayed on purpose (resilience tcpFaults)")

// tcpFault applies the TCP faults of o's destination to the app's
// connection client: it reports false to go on (after a delay, maybe),
// or true with the outcome that ends the connection (refused: reset).
func (p *Proxy) tcpFault(client *net.TCPConn, o outcome) (outcome, bool) {
	st := p.inject.state.Load()
	if st == nil || !st.tcpFaults {
		return o, false
	}
	dp := p.lookupRes(st.table, o.dst)
	f := &dp.TCPFaults
	if !f.Enabled() {
		return o, false
	}
	counted := st.tcpCounted[dp]
	if f.Delay > 0 && f.DelayPercent > 0 && p.inject.roll() < f.DelayPercent {
		counted[faultTCPDelay].Inc()
		if !waitConn(client, f.Delay) {
			o.err, o.refused, o.reason = errFaultClientGone, true, stageFault+": tcp_delay"
			return o, true
		}
	}
	if f.ResetPercent > 0 && p.inject.roll() < f.ResetPercent {
		counted[faultTCPReset].Inc()
		o.err, o.refused, o.reason = errFaultReset, true, stageFault+": tcp_reset"
		return o, true
	}
	return o, false
}
