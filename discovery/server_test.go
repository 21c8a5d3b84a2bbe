package discovery

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"meshgate/internal/testdns"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// upstream is an authoritative DNS server for the tests' zone, on
// 127.0.0.1 (UDP and TCP), counting the questions it gets.
type upstream struct {
	addr string
	*testdns.Server
}

func (u *upstream) count(name string, qtype uint16) int { return u.Count(name, qtype) }

// txtOf returns n TXT strings of 100 bytes: an answer of about n × 100 bytes.
func txtOf(n int) []string {
	var s []string
	for i := 0; i < n; i++ {
		s = append(s, strings.Repeat(string(rune('a'+i%26)), 100))
	}
	return s
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	pc, ln, err := ListenBoth("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{addr: pc.LocalAddr().String()}
	u.Server = testdns.Serve(t, pc, ln, func(q dns.Question, m *dns.Msg) {
		hdr := func(t uint16, ttl uint32) dns.RR_Header {
			return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
		}
		switch {
		case q.Name == "a.example." && q.Qtype == dns.TypeA:
			m.Answer = []dns.RR{&dns.A{Hdr: hdr(dns.TypeA, 2), A: net.IPv4(192, 0, 2, 1)}}
		case q.Name == "svc.example." && q.Qtype == dns.TypeA:
			m.Answer = []dns.RR{&dns.A{Hdr: hdr(dns.TypeA, 60), A: net.IPv4(192, 0, 2, 9)}}
		case q.Name == "svc.example." && q.Qtype == dns.TypeTXT:
			m.Answer = []dns.RR{&dns.TXT{Hdr: hdr(dns.TypeTXT, 60), Txt: []string{"meshgate.identity=spiffe://cluster.local/ns/shop/sa/svc", "meshgate.meshed=true"}}}
		case q.Name == "big.example." && q.Qtype == dns.TypeTXT:
			m.Answer = []dns.RR{&dns.TXT{Hdr: hdr(dns.TypeTXT, 60), Txt: txtOf(8)}} // ~800 bytes
		case q.Name == "huge.example." && q.Qtype == dns.TypeTXT:
			m.Answer = []dns.RR{&dns.TXT{Hdr: hdr(dns.TypeTXT, 60), Txt: txtOf(30)}} // ~3 KB
		default:
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
				Ns: "ns.example.", Mbox: "h.example.", Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: 1}}
		}
	})
	return u
}

// startProxy runs a Server for the test with reg, forwarding to ups.
func startProxy(t *testing.T, reg Registry, ups ...string) (*Server, string) {
	t.Helper()
	return startProxyWith(t, Options{Registry: reg, Upstreams: ups})
}

// startProxyWith starts a DNS proxy with o, serving on 127.0.0.1 with a
// 1s timeout and metrics of its own, and returns it and its address.
func startProxyWith(t *testing.T, o Options) (*Server, string) {
	t.Helper()
	o.Addrs, o.Timeout, o.Registerer = []string{"127.0.0.1:0"}, time.Second, prometheus.NewRegistry()
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for len(s.Addrs()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the proxy did not bind")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s, s.Addrs()[0]
}

// ask sends one question over network, with EDNS0 size edns (0: none).
func ask(t *testing.T, addr, network, name string, qtype uint16, edns uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: max(edns, dns.MinMsgSize)}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

// TestForwardAndCache: names outside the mesh are forwarded and cached
// for their TTL, which ages; NXDOMAIN is cached for the SOA minimum.
func TestForwardAndCache(t *testing.T) {
	up := startUpstream(t)
	c := newClock()
	s, addr := startProxyWith(t, Options{Upstreams: []string{up.addr}, Now: c.now})
	r := ask(t, addr, "udp", "a.example.", dns.TypeA, 0)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.1" || r.Answer[0].Header().Ttl != 2 {
		t.Fatalf("a.example: %v", r)
	}
	c.advance(time.Second)
	r = ask(t, addr, "udp", "a.example.", dns.TypeA, 0)
	if up.count("a.example.", dns.TypeA) != 1 || r.Answer[0].Header().Ttl != 1 {
		t.Errorf("from the cache a second later: upstream asked %d times, TTL %d; want 1 and 1", up.count("a.example.", dns.TypeA), r.Answer[0].Header().Ttl)
	}
	c.advance(time.Second)
	ask(t, addr, "udp", "a.example.", dns.TypeA, 0)
	if up.count("a.example.", dns.TypeA) != 2 {
		t.Errorf("after the TTL: upstream asked %d times, want 2", up.count("a.example.", dns.TypeA))
	}
	if name, ok := s.NameOf(netip.MustParseAddr("192.0.2.1")); !ok || name != "a.example" {
		t.Errorf("NameOf(192.0.2.1) = %q, %v; want a.example", name, ok)
	}

	for i := 0; i < 3; i++ {
		if r := ask(t, addr, "udp", "missing.example.", dns.TypeA, 0); r.Rcode != dns.RcodeNameError {
			t.Fatalf("missing.example: rcode %s", dns.RcodeToString[r.Rcode])
		}
	}
	if n := up.count("missing.example.", dns.TypeA); n != 1 {
		t.Errorf("NXDOMAIN asked upstream %d times in its negative TTL, want 1", n)
	}
	c.advance(time.Second)
	ask(t, addr, "udp", "missing.example.", dns.TypeA, 0)
	if n := up.count("missing.example.", dns.TypeA); n != 2 {
		t.Errorf("NXDOMAIN after its negative TTL (SOA minimum 1 s): upstream asked %d times, want 2", n)
	}
}

// TestLargeAnswers: an answer over 512 bytes reaches a UDP client that
// offers EDNS0 whole, a client that does not with TC set, and the TCP
// retry whole; one over 1232 bytes is fetched from upstream over TCP.
func TestLargeAnswers(t *testing.T) {
	up := startUpstream(t)
	_, addr := startProxy(t, nil, up.addr)
	if r := ask(t, addr, "udp", "big.example.", dns.TypeTXT, 4096); r.Truncated || len(r.Answer) != 1 || len(r.Answer[0].(*dns.TXT).Txt) != 8 {
		t.Errorf("big over UDP with EDNS0 4096: TC %v, %d answers", r.Truncated, len(r.Answer))
	} else if r.IsEdns0() == nil {
		t.Error("an EDNS0 question got an answer without OPT")
	}
	if r := ask(t, addr, "udp", "big.example.", dns.TypeTXT, 0); !r.Truncated || r.IsEdns0() != nil {
		t.Errorf("big over UDP without EDNS0: TC %v, OPT %v; want TC and no OPT", r.Truncated, r.IsEdns0())
	}
	if r := ask(t, addr, "tcp", "big.example.", dns.TypeTXT, 0); r.Truncated || len(r.Answer) != 1 {
		t.Errorf("big over TCP: TC %v, %d answers", r.Truncated, len(r.Answer))
	}
	if r := ask(t, addr, "tcp", "huge.example.", dns.TypeTXT, 0); r.Truncated || len(r.Answer) != 1 || len(r.Answer[0].(*dns.TXT).Txt) != 30 {
		t.Errorf("huge over TCP: TC %v, %d answers", r.Truncated, len(r.Answer))
	}
}

// TestRegistryAnswers: mesh names are answered from the registry (A,
// AAAA, SRV, the TXT convention), without asking upstream.
func TestRegistryAnswers(t *testing.T) {
	up := startUpstream(t)
	reg, err := ParseRegistry([]byte(`
services:
- name: web.shop.mesh
  identity: spiffe://cluster.local/ns/shop/sa/web
  meshed: true
  ports: [{name: http, port: 8080}]
  endpoints: [10.1.0.5, 10.1.0.6, "fd00::5"]
  ttl: 10s
`))
	if err != nil {
		t.Fatal(err)
	}
	s, addr := startProxy(t, reg, up.addr)
	r := ask(t, addr, "udp", "web.shop.mesh.", dns.TypeA, 0)
	if !r.Authoritative || len(r.Answer) != 2 || r.Answer[0].Header().Ttl != 10 {
		t.Errorf("A: %v", r)
	}
	if r := ask(t, addr, "udp", "WEB.shop.mesh.", dns.TypeAAAA, 0); len(r.Answer) != 1 || r.Answer[0].(*dns.AAAA).AAAA.String() != "fd00::5" {
		t.Errorf("AAAA (name in another case): %v", r)
	}
	if r := ask(t, addr, "udp", "_http._tcp.web.shop.mesh.", dns.TypeSRV, 0); len(r.Answer) != 1 || r.Answer[0].(*dns.SRV).Port != 8080 ||
		r.Answer[0].(*dns.SRV).Target != "web.shop.mesh." {
		t.Errorf("SRV: %v", r)
	}
	if r := ask(t, addr, "udp", "web.shop.mesh.", dns.TypeTXT, 0); len(r.Answer) != 1 ||
		strings.Join(r.Answer[0].(*dns.TXT).Txt, " ") != "meshgate.identity=spiffe://cluster.local/ns/shop/sa/web meshgate.meshed=true" {
		t.Errorf("TXT: %v", r)
	}
	if r := ask(t, addr, "udp", "web.shop.mesh.", dns.TypeMX, 0); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Errorf("MX (NODATA): %v", r)
	}
	if n := up.count("web.shop.mesh.", dns.TypeA); n != 0 {
		t.Errorf("a mesh name was asked upstream %d times", n)
	}
	if name, ok := s.NameOf(netip.MustParseAddr("10.1.0.6")); !ok || name != "web.shop.mesh" {
		t.Errorf("NameOf(10.1.0.6) = %q, %v", name, ok)
	}
}

// TestNoUpstream: with no upstream answering, the client gets SERVFAIL
// at once rather than a timeout.
func TestNoUpstream(t *testing.T) {
	ln, _ := net.ListenPacket("udp", "127.0.0.1:0")
	dead := ln.LocalAddr().String()
	ln.Close()
	_, addr := startProxy(t, nil, dead)
	if r := ask(t, addr, "udp", "a.example.", dns.TypeA, 0); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
}

// TestRegistryRejects pins the refusals of a registry file.
func TestRegistryRejects(t *testing.T) {
	_, err := ParseRegistry([]byte(`
services:
- name: "bad name!"
  meshed: true
  ports: [{name: "", port: 0}]
  endpoints: [10.0.0.1]
- name: web.mesh
  identity: not-spiffe
- name: api.mesh
  identity: spiffe://a.example/ns/shop/sa/api
  meshed: true
  endpoints: [10.0.0.2, 10.0.0.3]
- name: pay.mesh
  identity: spiffe://a.example/ns/shop/sa/pay
  meshed: true
  endpoints: [10.0.0.3]
`))
	want := `discovery: registry: services[0].name: "bad name!" is not a DNS name; want e.g. web.shop.mesh
services[0].identity: a meshed service needs the SPIFFE ID its endpoints present
services[0].ports[0].port: want 1 to 65535
services[0].ports[0].name: "": want a label, e.g. http
services[1].identity: "not-spiffe" is not a SPIFFE ID (scheme is missing or invalid)
services[3].endpoints[0]: 10.0.0.3 is an endpoint of api.mesh (spiffe://a.example/ns/shop/sa/api) too; an address has one identity`
	if err == nil || err.Error() != want {
		t.Errorf("ParseRegistry:\n%v\nwant:\n%s", err, want)
	}
}

// TestRegistryValueErrors: values the registry's types cannot read and
// unknown fields are named by their paths, all at once, as in the
// proxy's config.
func TestRegistryValueErrors(t *testing.T) {
	_, err := ParseRegistry([]byte(`
services:
- name: web.mesh
  ttl: 30
- name: api.mesh
  ttl: forever
  endpoints: [10.0.0.300]
  weight: 3
`))
	want := `discovery: registry: services[0].ttl: 30 is not a duration; want a number with a unit, e.g. "5s" or "1m30s"
services[1].endpoints[0]: "10.0.0.300" is not an IP address; want e.g. 127.0.0.6 or ::6
services[1].ttl: "forever" is not a duration; want a number with a unit, e.g. "5s" or "1m30s"
services[1].weight: unknown field; want one of name, identity, meshed, ports, endpoints, ttl`
	if err == nil || err.Error() != want {
		t.Errorf("ParseRegistry:\n%v\nwant:\n%s", err, want)
	}
}

// TestTXTConvention: an address answered for a name whose TXT record
// publishes the meshgate convention is a mesh destination with that
// identity; one answered for a name without it is not. The TXT record is
// known by the time the A answer is out, so the app's first connection is
// already mTLS.
func TestTXTConvention(t *testing.T) {
	up := startUpstream(t)
	s, addr := startProxy(t, nil, up.addr)
	ask(t, addr, "udp", "svc.example.", dns.TypeA, 0)
	id, ok := s.MeshDestination(netip.MustParseAddr("192.0.2.9"))
	if !ok || id.String() != "spiffe://cluster.local/ns/shop/sa/svc" {
		t.Errorf("MeshDestination(192.0.2.9) = %v, %v; want spiffe://cluster.local/ns/shop/sa/svc", id, ok)
	}
	ask(t, addr, "udp", "a.example.", dns.TypeA, 0)
	if id, ok := s.MeshDestination(netip.MustParseAddr("192.0.2.1")); ok {
		t.Errorf("a.example (no TXT record) is a mesh destination: %v", id)
	}
	if _, ok := s.MeshDestination(netip.MustParseAddr("198.51.100.1")); ok {
		t.Error("an address never answered is a mesh destination")
	}
	// The TXT record is kept: asking again does not ask it again.
	ask(t, addr, "udp", "svc.example.", dns.TypeAAAA, 0)
	if n := up.count("svc.example.", dns.TypeTXT); n != 1 {
		t.Errorf("upstream asked svc.example's TXT record %d times, want once", n)
	}
}

// TestLookupNetIP: the proxy's own lookups are answered as the app's are
// (registry, upstream) and teach the DNS proxy the same: the address's
// name and mesh identity.
func TestLookupNetIP(t *testing.T) {
	up := startUpstream(t)
	reg, err := ParseRegistry([]byte(`
services:
- {name: web.shop.mesh, identity: "spiffe://cluster.local/ns/shop/sa/web", meshed: true, endpoints: [10.1.0.5]}
`))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := startProxy(t, reg, up.addr)
	ctx := context.Background()
	for _, c := range []struct{ host, addr, id string }{
		{"web.shop.mesh", "10.1.0.5", "spiffe://cluster.local/ns/shop/sa/web"},
		{"svc.example", "192.0.2.9", "spiffe://cluster.local/ns/shop/sa/svc"},
	} {
		ips, err := s.LookupNetIP(ctx, c.host)
		if err != nil || len(ips) != 1 || ips[0].String() != c.addr {
			t.Errorf("LookupNetIP(%s) = %v, %v; want [%s]", c.host, ips, err, c.addr)
			continue
		}
		if name, ok := s.NameOf(ips[0]); !ok || name != c.host {
			t.Errorf("NameOf(%s) = %q, %v; want %s", ips[0], name, ok, c.host)
		}
		if id, ok := s.MeshDestination(ips[0]); !ok || id.String() != c.id {
			t.Errorf("MeshDestination(%s) = %v, %v; want %s", ips[0], id, ok, c.id)
		}
	}
	if ips, err := s.LookupNetIP(ctx, "nx.example"); err == nil || !strings.Contains(err.Error(), "no such host") {
		t.Errorf("LookupNetIP(nx.example) = %v, %v; want no such host", ips, err)
	}
}
