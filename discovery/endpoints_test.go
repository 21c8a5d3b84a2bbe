package discovery

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"meshgate/internal/testdns"
)

// pickAll makes n picks for dst, each done at once, and counts them by
// endpoint.
func pickAll(t *testing.T, s *Server, dst netip.AddrPort, n int) map[netip.AddrPort]int {
	t.Helper()
	got := map[netip.AddrPort]int{}
	for range n {
		ep, done, ok := s.Pick(dst, nil)
		if !ok {
			t.Fatalf("Pick(%s): not a service address", dst)
		}
		got[ep]++
		done(0, time.Millisecond, false)
	}
	return got
}

// TestPickRegistryService: a connection to an address answered for a
// registry service goes to any of its endpoints, at the port dialed; one
// to an address not answered for a service goes where it was going.
func TestPickRegistryService(t *testing.T) {
	reg, err := ParseRegistry([]byte(`services:
- name: web.shop.mesh
  identity: spiffe://cluster.local/ns/shop/sa/web
  meshed: true
  endpoints: [10.0.0.5, 10.0.0.6, "fd00::5"]
`))
	if err != nil {
		t.Fatal(err)
	}
	s, addr := startProxy(t, reg)
	dst := netip.MustParseAddrPort("10.0.0.5:8080")
	if _, _, ok := s.Pick(dst, nil); ok {
		t.Error("Pick balanced an address the app did not get from DNS")
	}
	ask(t, addr, "udp", "web.shop.mesh.", dns.TypeA, 0)
	got := pickAll(t, s, dst, 200)
	a, b := netip.MustParseAddrPort("10.0.0.5:8080"), netip.MustParseAddrPort("10.0.0.6:8080")
	if len(got) != 2 || got[a] < 50 || got[b] < 50 {
		t.Errorf("picks %v; want both IPv4 endpoints, at port 8080", got)
	}
	// The identity holds for every endpoint, asked by address.
	if id, ok := s.MeshDestination(netip.MustParseAddr("10.0.0.6")); !ok || id.String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("MeshDestination(10.0.0.6) = %v, %v", id, ok)
	}
	// A new registry is used at once.
	reg2, err := ParseRegistry([]byte(`services:
- name: web.shop.mesh
  identity: spiffe://cluster.local/ns/shop/sa/web
  meshed: true
  endpoints: [10.0.0.7]
`))
	if err != nil {
		t.Fatal(err)
	}
	s.SetRegistry(reg2)
	if got := pickAll(t, s, dst, 10); got[netip.MustParseAddrPort("10.0.0.7:8080")] != 10 {
		t.Errorf("after SetRegistry: picks %v, want all to 10.0.0.7:8080", got)
	}
}

// TestPickFollowsDNS: a meshed name outside the registry is balanced over
// the addresses of its A answers, which are asked again when their TTL is
// over: a replica added upstream and a TTL changed are followed with no
// question from the app.
func TestPickFollowsDNS(t *testing.T) {
	var mu sync.Mutex
	replicas := []net.IP{net.IPv4(192, 0, 2, 11), net.IPv4(192, 0, 2, 12)}
	ttl := uint32(1)
	pc, ln, err := ListenBoth("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := testdns.Serve(t, pc, ln, func(q dns.Question, m *dns.Msg) {
		mu.Lock()
		defer mu.Unlock()
		hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: ttl}
		switch q.Qtype {
		case dns.TypeA:
			for _, ip := range replicas {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: ip})
			}
		case dns.TypeTXT:
			m.Answer = []dns.RR{&dns.TXT{Hdr: hdr, Txt: []string{"meshgate.identity=spiffe://cluster.local/ns/shop/sa/api", "meshgate.meshed=true"}}}
		}
	})
	c := newClock()
	s, addr := startProxyWith(t, Options{Upstreams: []string{pc.LocalAddr().String()}, Now: c.now})
	ask(t, addr, "udp", "api.example.", dns.TypeA, 0)
	dst := netip.MustParseAddrPort("192.0.2.11:9000")
	got := pickAll(t, s, dst, 100)
	if len(got) != 2 {
		t.Fatalf("picks %v; want both replicas", got)
	}
	mu.Lock()
	replicas = append(replicas, net.IPv4(192, 0, 2, 13))
	ttl = 30
	mu.Unlock()
	// pickAsked makes picks d from now, once the addresses asked again
	// on the way (if they were) are learnt, and returns them and how
	// many times upstream was asked.
	pickAsked := func(d time.Duration) (map[netip.AddrPort]int, int) {
		t.Helper()
		c.advance(d)
		pickAll(t, s, dst, 1)
		s.eps.wait()
		return pickAll(t, s, dst, 30), up.Count("api.example.", dns.TypeA)
	}
	third := netip.MustParseAddrPort("192.0.2.13:9000")
	// Within the TTL (1s), the addresses stay; after it, they are asked
	// again.
	if got, n := pickAsked(500 * time.Millisecond); got[third] != 0 || n != 1 {
		t.Errorf("within the TTL: picks %v, upstream asked %d times; want the two replicas, asked once", got, n)
	}
	got, n := pickAsked(time.Second)
	if got[third] == 0 || n != 2 {
		t.Fatalf("after the TTL: picks %v, upstream asked %d times; want the third replica too, asked again", got, n)
	}
	// The new TTL (30s) holds: no more questions within it, one after.
	if _, m := pickAsked(29 * time.Second); m != n {
		t.Errorf("asked %d more times within the new 30s TTL", m-n)
	}
	if _, m := pickAsked(time.Second); m != n+1 {
		t.Errorf("asked %d more times once the new 30s TTL was over, want 1", m-n)
	}
}
