package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"meshgate/internal/testdns"
	"meshgate/nsrun"
	"meshgate/topology"
)

// startPodDNS serves an authoritative DNS server for example.test from
// the test process inside pod's namespace (UDP and TCP on port 53); extra
// answers "NAME TYPE" (e.g. "c.example.test. A") with its records.
func startPodDNS(t *testing.T, pod *topology.Pod, extra map[string][]dns.RR) *testdns.Server {
	t.Helper()
	return servePodDNS(t, pod, func(q dns.Question, m *dns.Msg) {
		hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 60}
		switch rrs, ok := extra[q.Name+" "+dns.TypeToString[q.Qtype]]; {
		case ok:
			m.Answer = rrs
		case q.Name == "ext.example.test." && q.Qtype == dns.TypeA:
			m.Answer = []dns.RR{&dns.A{Hdr: hdr, A: net.IPv4(192, 0, 2, 7)}}
		case q.Name == "big.example.test." && q.Qtype == dns.TypeTXT:
			var txt []string
			for i := 0; i < 20; i++ {
				txt = append(txt, strings.Repeat("x", 100))
			}
			m.Answer = []dns.RR{&dns.TXT{Hdr: hdr, Txt: txt}}
		default:
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "example.test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 30},
				Ns: "ns.example.test.", Mbox: "h.example.test.", Serial: 1, Refresh: 30, Retry: 30, Expire: 30, Minttl: 30}}
		}
	})
}

// servePodDNS runs a test DNS server (testdns.Serve's answer) inside
// pod's namespace, on UDP and TCP port 53 of its IPv4 address.
func servePodDNS(t *testing.T, pod *topology.Pod, answer func(q dns.Question, m *dns.Msg)) *testdns.Server {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	addr := hostPort(pod.IPv4, 53)
	err := nsrun.Do(pod.Path(), func() error {
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return testdns.Serve(t, pc, ln, answer)
}

// TestDNSThroughTheSidecar: with DNS captured, a pod's questions reach its
// sidecar's DNS proxy whatever server they were sent to: mesh names are
// answered from the registry, the rest forwarded to the resolver of the
// sidecar's resolv.conf and cached; a large answer comes whole over UDP
// with EDNS0 and through dig's TCP retry without; and the registry's
// meshed endpoint is dialed with mTLS, expecting its identity. All of it
// with either exemption alone: the sidecar's own upstream questions are
// not captured back to it.
func TestDNSThroughTheSidecar(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig not installed: run 'make deps'")
	}
	eachExemption(t, testDNSThroughTheSidecar)
}

func testDNSThroughTheSidecar(t *testing.T, e exemption) {
	_, pods := newLabWith(t, "a", "b", "ns", "c", "d")
	a, b, nsPod, c, d := pods[0], pods[1], pods[2], pods[3], pods[4]
	for _, p := range []*topology.Pod{b, c, d} {
		startApp(t, p)
	}
	// c and d publish their mesh membership by the TXT convention; d's
	// record names c's identity, which d cannot present.
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	up := startPodDNS(t, nsPod, map[string][]dns.RR{
		"c.example.test. A":   {rr("c.example.test. 60 IN A " + c.IPv4.String())},
		"c.example.test. TXT": {rr(`c.example.test. 60 IN TXT "meshgate.identity=` + spiffeFor(c) + `" "meshgate.meshed=true"`)},
		"d.example.test. A":   {rr("d.example.test. 60 IN A " + d.IPv4.String())},
		"d.example.test. TXT": {rr(`d.example.test. 60 IN TXT "meshgate.identity=` + spiffeFor(c) + `" "meshgate.meshed=true"`)},
	})
	dir := publicTempDir(t)
	resolv := filepath.Join(dir, "resolv.conf")
	registry := filepath.Join(dir, "registry.yaml")
	os.WriteFile(resolv, []byte("nameserver "+nsPod.IPv4.String()+"\n"), 0o644)
	os.WriteFile(registry, []byte(fmt.Sprintf(`services:
- name: web.shop.mesh
  identity: %s
  meshed: true
  ports: [{name: http, port: 8080}]
  endpoints: [%s]
`, spiffeFor(b), b.IPv4)), 0o644)
	ca := meshCA(t)
	ao := meshOpts(issueFor(t, ca, a), "strict", a)
	ao.proxyArgs = append(ao.proxyArgs, "--resolv-conf", resolv, "--registry", registry)
	// The pod resolves through ns, as its resolv.conf would say.
	ao.redirectArgs = []string{"--capture-dns", "--dns-servers", nsPod.IPv4.String()}
	sa := enroll(t, a, e.with(ao))
	enroll(t, b, e.with(meshOpts(issueFor(t, ca, b), "strict", a, b)))
	enroll(t, c, e.with(meshOpts(issueFor(t, ca, c), "strict", a)))
	enroll(t, d, e.with(meshOpts(issueFor(t, ca, d), "strict", a)))

	digAt := func(args ...string) string {
		t.Helper()
		out, err := a.Run(ctxFor(t, 20*time.Second), append([]string{"dig", "@" + nsPod.IPv4.String(), "+time=3", "+tries=1"}, args...)...)
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return out
	}
	if out := strings.TrimSpace(digAt("+short", "web.shop.mesh", "A")); out != b.IPv4.String() {
		t.Errorf("web.shop.mesh A = %q, want %s (from the registry)", out, b.IPv4)
	}
	if out := digAt("+short", "_http._tcp.web.shop.mesh", "SRV"); !strings.Contains(out, "8080 web.shop.mesh.") {
		t.Errorf("SRV = %q", out)
	}
	if out := digAt("+short", "web.shop.mesh", "TXT"); !strings.Contains(out, "meshgate.identity="+spiffeFor(b)) {
		t.Errorf("TXT = %q", out)
	}
	if up.CountName("web.shop.mesh.") != 0 {
		t.Error("a mesh name reached the upstream resolver")
	}
	for range 2 {
		if out := strings.TrimSpace(digAt("+short", "ext.example.test", "A")); out != "192.0.2.7" {
			t.Errorf("ext.example.test A = %q, want 192.0.2.7 (forwarded)", out)
		}
	}
	if n := up.Count("ext.example.test.", dns.TypeA); n != 1 {
		t.Errorf("the upstream got ext.example.test A %d times, want 1 (then cached)", n)
	}
	if out := digAt("+bufsize=4096", "big.example.test", "TXT"); !strings.Contains(out, "MSG SIZE") || strings.Contains(out, "Truncated") || strings.Count(out, strings.Repeat("x", 100)) != 20 {
		t.Errorf("big TXT over UDP with EDNS0:\n%s", out)
	}
	if out := digAt("+noedns", "big.example.test", "TXT"); !strings.Contains(out, "Truncated, retrying in TCP mode") || strings.Count(out, strings.Repeat("x", 100)) != 20 {
		t.Errorf("big TXT without EDNS0 (TC, then TCP):\n%s", out)
	}
	m := sa.metrics(t)
	if m["meshgate_dns_queries_total{qtype=A,result=registry}"] < 1 || m["meshgate_dns_queries_total{qtype=A,result=cache}"] < 1 {
		t.Errorf("DNS metrics: registry %v, cache %v", m["meshgate_dns_queries_total{qtype=A,result=registry}"], m["meshgate_dns_queries_total{qtype=A,result=cache}"])
	}
	// The registry makes b a mesh destination expecting its identity.
	curl(t, a, url(b.IPv4, 8080, "/"))
	if n := sa.tlsHandshakes(t, "direction=outbound", "result=ok", "peer_identity="+spiffeFor(b)); n < 1 {
		t.Errorf("a dialed the registry's endpoint without mTLS to %s", spiffeFor(b))
	}
	// So does a name's TXT record: c is reached with mTLS, expecting c;
	// d, whose record names c's identity, is refused for presenting d's.
	if out := strings.TrimSpace(digAt("+short", "c.example.test", "A")); out != c.IPv4.String() {
		t.Fatalf("c.example.test A = %q", out)
	}
	curl(t, a, url(c.IPv4, 8080, "/"))
	if n := sa.tlsHandshakes(t, "direction=outbound", "result=ok", "peer_identity="+spiffeFor(c)); n < 1 {
		t.Errorf("a did not reach c.example.test with mTLS to %s", spiffeFor(c))
	}
	digAt("+short", "d.example.test", "A")
	if _, err := a.Run(ctxFor(t, 20*time.Second), "curl", "-sS", "--fail", "--max-time", "5", url(d.IPv4, 8080, "/")); err == nil {
		t.Error("a reached d, which presents an identity other than its TXT record's")
	}
	if n := sa.tlsHandshakes(t, "direction=outbound", "result=failed", "reason=wrong_identity"); n < 1 {
		t.Error("no handshake with d refused for its identity")
	}
}
