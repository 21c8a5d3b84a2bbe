package discovery

import (
	"testing"

	"github.com/miekg/dns"
)

// FuzzAnswer feeds the proxy any message a client could send: whatever it
// is, the answer carries the question's ID, packs, and fits in a UDP
// client's size once truncated. No upstream is set, so nothing leaves the
// process: names outside the registry get SERVFAIL.
func FuzzAnswer(f *testing.F) {
	reg, err := ParseRegistry([]byte(`
services:
- name: web.shop.mesh
  identity: spiffe://cluster.local/ns/shop/sa/web
  meshed: true
  ports: [{name: http, port: 8080}]
  endpoints: [10.1.0.5, "fd00::5"]
`))
	if err != nil {
		f.Fatal(err)
	}
	s, err := New(Options{Addrs: []string{"127.0.0.1:0"}, Registry: reg})
	if err != nil {
		f.Fatal(err)
	}
	for _, q := range []struct {
		name  string
		qtype uint16
		edns  uint16
	}{{"web.shop.mesh.", dns.TypeA, 0}, {"_http._tcp.web.shop.mesh.", dns.TypeSRV, 1232}, {"web.shop.mesh.", dns.TypeTXT, 4096}, {"x.example.", dns.TypeA, 0}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if q.edns > 0 {
			m.SetEdns0(q.edns, true)
		}
		b, _ := m.Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := new(dns.Msg)
		if err := r.Unpack(in); err != nil {
			return
		}
		resp, result := s.answer(r)
		if resp.Id != r.Id || !resp.Response {
			t.Fatalf("answer ID %d (response %v) to question %d", resp.Id, resp.Response, r.Id)
		}
		if result == "" {
			t.Fatal("no result label")
		}
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			size = max(int(opt.UDPSize()), dns.MinMsgSize)
		}
		resp.Truncate(size)
		b, err := resp.Pack()
		if err != nil {
			t.Fatalf("the answer does not pack: %v", err)
		}
		if len(b) > size {
			t.Fatalf("a %d-byte answer to a client taking %d", len(b), size)
		}
	})
}
