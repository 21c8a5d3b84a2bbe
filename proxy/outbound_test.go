package proxy

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// destTimeoutProxy runs a proxy whose outbound connections all go to
// addr, outside the mesh, with the proxy's timeouts.connect and
// timeouts.idle a minute and an hour, and a resilience destination "db"
// for addr's port with timeouts (YAML); the port is declared opaque
// unless detect.
func destTimeoutProxy(t *testing.T, addr, timeouts string, detect bool) *running {
	t.Helper()
	port, _ := strconv.Atoi(addr[strings.LastIndexByte(addr, ':')+1:])
	cfg := testConfig()
	cfg.Timeouts.Connect = Duration(time.Minute)
	cfg.Timeouts.Idle = Duration(time.Hour)
	if !detect {
		cfg.Protocols.Ports = map[uint16]PortProtocol{uint16(port): PortOpaque}
	}
	resilienceOf(t, "resilience:\n  destinations:\n  - name: db\n    match: {ports: ["+strconv.Itoa(port)+"]}\n    timeouts: "+timeouts+"\n")(&cfg)
	return startProxy(t, cfg, to(addr))
}

// opaqueWays runs fn for an opaque connection whose port is declared
// opaque, and for one that detection finds is not HTTP.
func opaqueWays(t *testing.T, fn func(t *testing.T, detect bool)) {
	for _, detect := range []bool{false, true} {
		t.Run(map[bool]string{false: "declared", true: "detected"}[detect], func(t *testing.T) { fn(t, detect) })
	}
}

// TestDestinationTCPIdleTimeout: an opaque TCP connection to a
// destination with timeouts.idle is closed once nothing has moved either
// way for that long, not the proxy's timeouts.idle (an hour), and the
// timeout is counted under the destination's name.
func TestDestinationTCPIdleTimeout(t *testing.T) {
	opaqueWays(t, func(t *testing.T, detect bool) {
		be := startBackend(t, "127.0.0.1:0", echo)
		r := destTimeoutProxy(t, be.addr(), "{idle: 300ms}", detect)
		c := dial(t, r.out())
		if got := roundTrip(t, c, "EHLO x\r\n"); got != "EHLO x\r\n" {
			t.Fatalf("echo %q", got)
		}
		expectIdleClosed(t, r, c, 300*time.Millisecond) // the destination's, not the proxy's hour
		if got := r.counter(t, "meshgate_timeouts_total", map[string]string{"direction": "outbound", "destination": "db", "kind": "idle"}); got != 1 {
			t.Errorf("meshgate_timeouts_total{destination=db,kind=idle} = %v, want 1", got)
		}
	})
}

// TestDestinationTCPConnectTimeout: an opaque TCP connection to a
// destination with timeouts.connect whose address does not answer is
// refused once that timeout has passed, not the proxy's timeouts.connect
// (a minute).
func TestDestinationTCPConnectTimeout(t *testing.T) {
	opaqueWays(t, func(t *testing.T, detect bool) {
		r := destTimeoutProxy(t, blackhole(t), "{connect: 300ms}", detect)
		start := time.Now()
		expectRefused(t, r.out())
		if d := time.Since(start); d < 250*time.Millisecond {
			t.Errorf("refused after %v, before the destination's connect timeout", d)
		}
		e := r.closedLogs(t, 1)[0]
		if got := field(e, "error"); got != "timeout: connect 300ms" {
			t.Errorf("error = %q, want timeout: connect 300ms", got)
		}
		if got := r.metric(t, "meshgate_tcp_connect_failures_total", Outbound); got != 1 {
			t.Errorf("connect failures = %v, want 1", got)
		}
	})
}
