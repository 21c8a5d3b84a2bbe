package proxy

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeBalancer hands out its endpoints in turn and records the reports.
type fakeBalancer struct {
	mu      sync.Mutex
	eps     []netip.AddrPort
	next    int
	reports []string // "ENDPOINT ok" or "ENDPOINT failed", as done was called
}

func (b *fakeBalancer) Pick(_ netip.AddrPort, avoid []netip.AddrPort) (netip.AddrPort, func(time.Duration, bool), bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for range len(b.eps) {
		ep := b.eps[b.next%len(b.eps)]
		b.next++
		if slices.Contains(avoid, ep) {
			continue
		}
		return ep, func(_ time.Duration, failed bool) {
			b.mu.Lock()
			defer b.mu.Unlock()
			b.reports = append(b.reports, fmt.Sprintf("%s %s", ep, map[bool]string{false: "ok", true: "failed"}[failed]))
		}, true
	}
	return netip.AddrPort{}, nil, false
}

func (b *fakeBalancer) got() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.reports)
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

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return a
}

// TestBalancedConnections: connections and L7 requests go to the
// endpoints the balancer picks; one that cannot be connected to is
// reported failed and the next endpoint tried, so the app sees no error;
// a peer's 502 is reported failed.
func TestBalancedConnections(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, _ := startL7App(t)
	srv := startProxy(t, testConfig(), WithMeshTLS(sm), to(app))
	good := netip.MustParseAddrPort(srv.in())
	dead := closedAddr(t)
	b := &fakeBalancer{eps: []netip.AddrPort{dead, good}}
	ccfg := testConfig()
	ccfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
	// The original destination: any address of the service.
	cli := startProxy(t, ccfg, WithMeshTLS(cm), WithBalancer(b), to(dead.String()))

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
	c := dial(t, cli.out())
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
	waitFor(t, func() bool {
		logs := cli.closedLogs(t, 1)
		return field(logs[len(logs)-1], "endpoint") == good.String()
	})

	// A 502 from the peer sidecar (its app is gone) counts against the
	// endpoint.
	gone := closedAddr(t)
	srv2 := startProxy(t, testConfig(), WithMeshTLS(sm), to(gone.String()))
	b2 := &fakeBalancer{eps: []netip.AddrPort{netip.MustParseAddrPort(srv2.in())}}
	cli2 := startProxy(t, ccfg, WithMeshTLS(cm), WithBalancer(b2), to(gone.String()))
	if resp, _ := get(t, h1Client(t), "http://"+cli2.out()+"/", nil); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("app down: %d, want 502", resp.StatusCode)
	}
	waitFor(t, func() bool { return b2.count(srv2.in()+" failed") == 1 })
}
