package proxy

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeBalancer hands out its endpoints in turn, or with inOrder the
// first not to avoid (so that a test knows where each try goes), and
// records the picks and the reports.
type fakeBalancer struct {
	mu      sync.Mutex
	eps     []netip.AddrPort
	inOrder bool
	next    int
	picks   []netip.AddrPort
	reports []fakeReport // as done was called
}

// fakeReport is one call of a try's done.
type fakeReport struct {
	ep             netip.AddrPort
	setup, latency time.Duration
	failed         bool
}

func (b *fakeBalancer) Pick(_ netip.AddrPort, avoid []netip.AddrPort) (netip.AddrPort, func(time.Duration, time.Duration, bool), bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inOrder {
		b.next = 0
	}
	for range len(b.eps) {
		ep := b.eps[b.next%len(b.eps)]
		b.next++
		if slices.Contains(avoid, ep) {
			continue
		}
		b.picks = append(b.picks, ep)
		return ep, func(setup, latency time.Duration, failed bool) {
			b.mu.Lock()
			defer b.mu.Unlock()
			b.reports = append(b.reports, fakeReport{ep, setup, latency, failed})
		}, true
	}
	return netip.AddrPort{}, nil, false
}

// got returns the reports as "ENDPOINT ok" or "ENDPOINT failed".
func (b *fakeBalancer) got() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, r := range b.reports {
		out = append(out, fmt.Sprintf("%s %s", r.ep, map[bool]string{false: "ok", true: "failed"}[r.failed]))
	}
	return out
}

// phases returns the reports as what they measured: "set-up", "latency",
// "set-up+latency" or "nothing".
func (b *fakeBalancer) phases() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, r := range b.reports {
		switch {
		case r.setup > 0 && r.latency > 0:
			out = append(out, "set-up+latency")
		case r.setup > 0:
			out = append(out, "set-up")
		case r.latency > 0:
			out = append(out, "latency")
		default:
			out = append(out, "nothing")
		}
	}
	return out
}

func (b *fakeBalancer) count(s string) int {
	n := 0
	for _, r := range b.got() {
		if r == s {
			n++
		}
	}
	return n
}

// closedAddr is a loopback address nothing listens on for the whole
// test: its port is held by a socket that is bound but never listens, so
// a connection to it is refused, and no listener the test opens on port
// 0 can be given it, as one was the port of a listener just closed (the
// client sidecar's own, which made the "dead" endpoint a live loop).
func closedAddr(t *testing.T) netip.AddrPort {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	lo := [4]byte{127, 0, 0, 1}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: lo}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(lo), uint16(sa.(*syscall.SockaddrInet4).Port))
}

// TestBalancedConnections: connections and L7 requests go to the
// endpoints the balancer picks; one that cannot be connected to is
// reported failed and the next endpoint tried, so the app sees no error;
// a peer's 502 is reported failed.
func TestBalancedConnections(t *testing.T) {
	app, _ := startL7App(t)
	dead := closedAddr(t)
	good, b, cli := startBalanced(t, app, nil, dead)
	for i := range 4 {
		resp, body := get(t, h1Client(t), "http://"+cli.out()+"/", nil)
		if resp.StatusCode != 200 || body != "HTTP/1.1" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	waitFor(t, func() bool { return b.count(good.String()+" ok") >= 4 })
	if n := b.count(dead.String() + " failed"); n < 2 {
		t.Errorf("reports %q: want the dead endpoint reported failed each time it was picked", b.got())
	}
	if n := cli.metric(t, "meshgate_http_requests_total", Outbound); n != 4 {
		t.Errorf("%v requests counted, want 4", n)
	}

	// Opaque bytes: the connection's endpoint is picked the same way.
	sendOpaque(t, cli.out())
	waitFor(t, func() bool {
		logs := cli.closedLogs(t, 1)
		return field(logs[len(logs)-1], "endpoint") == good.String()
	})

	// A 502 from the peer sidecar (its app is gone) counts against the
	// endpoint. The service's port is declared http: with detection, the
	// connection dialed while the client's request is awaited fails too
	// (the peer sidecar cannot reach its app), and when that comes first
	// the client's connection is reset before it can send its request.
	srv2, b2, cli2 := startBalanced(t, closedAddr(t).String(), declareHTTP)
	if resp, _ := get(t, h1Client(t), "http://"+cli2.out()+"/", nil); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("app down: %d, want 502", resp.StatusCode)
	}
	waitFor(t, func() bool { return b2.count(srv2.String()+" failed") == 1 })
}

// startBalanced starts a server sidecar in front of app, and a client
// sidecar whose balancer hands out first, then the server sidecar's
// address, in turn. It returns that address, the balancer and the client
// sidecar, whose original destination is the first endpoint (any address
// of the service). client, if not nil, changes the client sidecar's
// config, given the service's address.
func startBalanced(t *testing.T, app string, client func(*Config, netip.AddrPort), first ...netip.AddrPort) (netip.AddrPort, *fakeBalancer, *running) {
	t.Helper()
	cm, sm := newMeshCA(t).meshes()
	srv := netip.MustParseAddrPort(startProxy(t, testConfig(), WithMeshTLS(sm), to(app)).in())
	b := &fakeBalancer{eps: append(first, srv)}
	ccfg := testConfig()
	ccfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
	if client != nil {
		client(&ccfg, b.eps[0])
	}
	return srv, b, startProxy(t, ccfg, WithMeshTLS(cm), WithBalancer(b), to(b.eps[0].String()))
}

// declareHTTP declares the service's port http in the client sidecar's
// config (protocols.ports).
func declareHTTP(c *Config, svc netip.AddrPort) {
	c.Protocols.Ports = map[uint16]PortProtocol{svc.Port(): PortHTTP}
}

// sendOpaque sends bytes that are no HTTP over a connection to addr and
// waits for an answer.
func sendOpaque(t *testing.T, addr string) {
	t.Helper()
	c := dial(t, addr)
	if _, err := c.Write([]byte("\x00\x01 not http\n")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := c.Read(buf)
	c.Close()
	if n == 0 {
		t.Fatal("no answer through a balanced opaque connection")
	}
}

// TestBalancerToldSetUpApart: a connection's set-up (dial and mesh
// handshake) is reported to the balancer apart from the latency after
// it, which alone is the endpoint's: the connection detection dialed
// reports its set-up, and the HTTP requests that then go over it (it
// joins the pool) their latency only; a connection of its own (opaque
// bytes') reports its set-up only.
func TestBalancerToldSetUpApart(t *testing.T) {
	app, _ := startL7App(t)
	ep, b, cli := startBalanced(t, app, nil)

	step := func(what string, do func(), want ...string) {
		t.Helper()
		n := len(b.phases())
		do()
		waitFor(t, func() bool { return len(b.phases()) >= n+len(want) })
		if got := b.phases()[n:]; !slices.Equal(got, want) {
			t.Errorf("%s: reports %q, want %q", what, got, want)
		}
	}
	getOK := func() {
		if resp, body := get(t, h1Client(t), "http://"+cli.out()+"/", nil); resp.StatusCode != 200 || body != "HTTP/1.1" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	}
	// Detection dials while it waits for the app's bytes; HTTP then goes
	// by the pool, where that connection went.
	step("first request", getOK, "set-up", "latency")
	step("second request", getOK, "latency")
	step("opaque connection", func() { sendOpaque(t, cli.out()) }, "set-up")
	if got := b.got(); slices.ContainsFunc(got, func(r string) bool { return r != ep.String()+" ok" }) {
		t.Errorf("reports %q, want all ok", got)
	}
}
