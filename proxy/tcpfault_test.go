package proxy

import (
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tcpFaultProxy runs a proxy whose outbound connections all go to the
// echo backend be, outside the mesh, with tcpFaults for be's port, which
// is declared opaque unless detect.
func tcpFaultProxy(t *testing.T, be *backend, faults string, detect bool, opts ...Option) *running {
	t.Helper()
	port, _ := strconv.Atoi(be.addr()[strings.LastIndexByte(be.addr(), ':')+1:])
	cfg := testConfig()
	if !detect {
		cfg.Protocols.Ports = map[uint16]PortProtocol{uint16(port): PortOpaque}
	}
	resilienceOf(t, "resilience:\n  destinations:\n  - name: db\n    match: {ports: ["+strconv.Itoa(port)+"]}\n    tcpFaults: "+faults+"\n")(&cfg)
	return startProxy(t, cfg, append([]Option{to(be.addr())}, opts...)...)
}

// TestTCPFaultReset: a reset rule resets its share of the app's opaque
// connections at once, never dialing the destination (with a seeded
// random source, exactly the connections its rolls pick), whether the
// port is declared opaque or detection finds the bytes are not HTTP
// (then after the dial made while detecting); each is counted and
// logged.
func TestTCPFaultReset(t *testing.T) {
	for _, detect := range []bool{false, true} {
		t.Run(map[bool]string{false: "declared", true: "detected"}[detect], func(t *testing.T) {
			be := startBackend(t, "127.0.0.1:0", echo)
			r := tcpFaultProxy(t, be, "{reset: {percent: 30}}", detect, withFaultRandom(seeded(3)))
			const n = 40
			reset := 0
			for i := range n {
				// The reset may come while the client is still connecting.
				c, err := net.DialTimeout("tcp", r.out(), 5*time.Second)
				buf := make([]byte, 8)
				if err == nil {
					c.SetDeadline(time.Now().Add(5 * time.Second))
					if _, err = io.WriteString(c, "EHLO x\r\n"); err == nil {
						_, err = io.ReadFull(c, buf)
					}
					c.Close()
				}
				switch {
				case err == nil && string(buf) == "EHLO x\r\n":
				case errors.Is(err, syscall.ECONNRESET):
					reset++
				default:
					t.Fatalf("connection %d: %q, %v; want the echo or a reset", i, buf, err)
				}
			}
			want := picked(3, n, 30)
			if reset != want {
				t.Errorf("%d of %d connections reset; want the %d the seeded rolls pick", reset, n, want)
			}
			if !detect && len(be.sources()) != n-reset {
				t.Errorf("the backend got %d connections; want the %d not reset", len(be.sources()), n-reset)
			}
			if got := r.counter(t, "meshgate_faults_injected_total", map[string]string{"destination": "db", "route": "", "kind": "tcp_reset"}); got != float64(reset) {
				t.Errorf("tcp_reset counted %v; want %d", got, reset)
			}
			logged := 0
			for _, e := range r.closedLogs(t, n) {
				if field(e, "reason") == "fault: tcp_reset" {
					logged++
				}
			}
			if logged != reset {
				t.Errorf("%d connection lines say fault: tcp_reset; want %d", logged, reset)
			}
		})
	}
}

// TestTCPFaultDelay: a delay rule holds the app's connection before the
// destination is dialed; with a reset too, the connection is reset after
// the delay; an app that goes away during the delay ends it at once.
func TestTCPFaultDelay(t *testing.T) {
	be := startBackend(t, "127.0.0.1:0", echo)
	r := tcpFaultProxy(t, be, "{delay: {duration: 300ms}}", false)
	start := time.Now()
	c := dial(t, r.out())
	if got := roundTrip(t, c, "ping"); got != "ping" {
		t.Errorf("echo %q", got)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("the echo came %v after connecting; want the 300ms delay first", d)
	}
	c.Close()

	be2 := startBackend(t, "127.0.0.1:0", echo)
	r2 := tcpFaultProxy(t, be2, "{delay: {duration: 300ms}, reset: {}}", false)
	start = time.Now()
	err := expectRefused(t, r2.out())
	if d := time.Since(start); !errors.Is(err, syscall.ECONNRESET) || d < 300*time.Millisecond {
		t.Errorf("delay and reset: %v after %v; want a reset after 300ms", err, d)
	}
	if n := len(be2.sources()); n != 0 {
		t.Errorf("the backend got %d connections reset on purpose", n)
	}

	be3 := startBackend(t, "127.0.0.1:0", echo)
	r3 := tcpFaultProxy(t, be3, "{delay: {duration: 1m}}", false)
	c = dial(t, r3.out())
	time.Sleep(100 * time.Millisecond)
	start = time.Now()
	c.Close()
	e := r3.closedLogs(t, 1)[0]
	if d := time.Since(start); d > 5*time.Second || field(e, "reason") != "fault: tcp_delay" {
		t.Errorf("an app gone during a 1m delay: logged %v later, reason %s", d, field(e, "reason"))
	}
	if n := len(be3.sources()); n != 0 {
		t.Errorf("the backend got %d connections whose app had gone", n)
	}
	for _, x := range []struct {
		r    *running
		kind string
		want float64
	}{{r, "tcp_delay", 1}, {r2, "tcp_delay", 1}, {r2, "tcp_reset", 1}, {r3, "tcp_delay", 1}} {
		if got := x.r.counter(t, "meshgate_faults_injected_total", map[string]string{"destination": "db", "kind": x.kind}); got != x.want {
			t.Errorf("%s counted %v; want %v", x.kind, got, x.want)
		}
	}
}

// TestTCPFaultsNotHTTP: an HTTP connection to a destination with
// tcpFaults is not reset: its requests meet faults, not tcpFaults.
func TestTCPFaultsNotHTTP(t *testing.T) {
	app, _ := startL7App(t)
	p := startMeshPair(t, app, pairOptions{
		clientCfg: apiResilience(t, "tcpFaults: {reset: {}}"),
	})
	if a := do(t, h1Client(t), "GET", "http://"+p.client.out()+"/", nil); a.status != 200 {
		t.Errorf("an HTTP request to a destination whose TCP connections are reset: %+v", a)
	}
}
