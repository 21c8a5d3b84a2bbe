package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"meshgate/internal/testdns"
	"meshgate/topology"
)

// zone is a DNS zone the test changes as it goes: a service's replicas
// and TTL, served by an authoritative server in the ns pod.
type zone struct {
	mu       sync.Mutex
	replicas []*topology.Pod
	ttl      uint32
	identity string
}

func (z *zone) set(ttl uint32, replicas ...*topology.Pod) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.ttl, z.replicas = ttl, replicas
}

// serve answers api.example.test (A, TXT in the meshgate convention, SRV
// _http._tcp) from the zone, and NXDOMAIN with a 2s negative TTL for the
// rest.
func (z *zone) serve(t *testing.T, pod *topology.Pod) *testdns.Server {
	t.Helper()
	return servePodDNS(t, pod, func(q dns.Question, m *dns.Msg) {
		z.mu.Lock()
		defer z.mu.Unlock()
		hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: z.ttl}
		switch {
		case q.Name == "api.example.test." && q.Qtype == dns.TypeA:
			for _, p := range z.replicas {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: p.IPv4.AsSlice()})
			}
		case q.Name == "api.example.test." && q.Qtype == dns.TypeTXT:
			m.Answer = []dns.RR{&dns.TXT{Hdr: hdr, Txt: []string{"meshgate.identity=" + z.identity, "meshgate.meshed=true"}}}
		case q.Name == "_http._tcp.api.example.test." && q.Qtype == dns.TypeSRV:
			m.Answer = []dns.RR{&dns.SRV{Hdr: hdr, Priority: 0, Weight: 10, Port: 8080, Target: "api.example.test."}}
		case q.Name == "api.example.test.":
			m.Ns = []dns.RR{z.soa()}
		default:
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{z.soa()}
		}
	})
}

func (z *zone) soa() *dns.SOA {
	return &dns.SOA{Hdr: dns.RR_Header{Name: "example.test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
		Ns: "ns.example.test.", Mbox: "h.example.test.", Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: 2}
}

// call makes one GET and returns the status and the name of the replica
// that answered ("" if none did).
func call(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", err
	}
	var v struct{ Name string }
	json.Unmarshal(body, &v)
	return resp.StatusCode, v.Name, nil
}

// spread makes n GETs over 4 connections and counts the answers by
// replica name; failures are counted under "!STATUS" or "!error".
func spread(t *testing.T, c *http.Client, url string, n int) map[string]int {
	t.Helper()
	return tally(n, 4, func() string {
		code, name, err := call(c, url)
		switch {
		case err != nil:
			return "!error"
		case code != 200:
			return fmt.Sprintf("!%d", code)
		}
		return name
	})
}

// tally runs one n times from workers goroutines at once and counts what
// the runs returned.
func tally(n, workers int, one func() string) map[string]int {
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	work := make(chan struct{})
	for range workers {
		wg.Go(func() {
			for range work {
				key := one()
				mu.Lock()
				got[key]++
				mu.Unlock()
			}
		})
	}
	for range n {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	return got
}

// answerTTL is the TTL of the first record of dig +noall +answer output,
// -1 if none.
func answerTTL(out string) int {
	f := strings.Fields(out)
	if len(f) < 2 {
		return -1
	}
	n, err := strconv.Atoi(f[1])
	if err != nil {
		return -1
	}
	return n
}

// issueAs issues pod a certificate for id (replicas of one service share
// its identity).
func issueAs(t *testing.T, caDir string, pod *topology.Pod, id string) string {
	t.Helper()
	out := filepath.Join(publicTempDir(t), "certs-"+pod.Name)
	mustMeshgate(t, "ca", "issue", "--dir", caDir, "--id", id, "--out", out)
	chownSidecar(t, out)
	return out
}

// TestServiceBalancing: a client pod calls a service by name, found
// through its sidecar's DNS proxy from a real DNS server: its requests,
// serial or concurrent, spread over the replicas; a replica added
// upstream, with a new TTL, gets traffic without a restart; a replica
// whose app stops is ejected after a few failures; a replica presenting a
// valid mesh certificate of another identity never serves a request;
// negative answers are cached for their TTL; a registry file edited in
// place is followed; and a replica gone whole (sidecar and app) costs the
// app no failed request. All of it with either exemption alone: the
// sidecar's own DNS questions are not captured back to it.
func TestServiceBalancing(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig not installed: run 'make deps'")
	}
	eachExemption(t, testServiceBalancing)
}

func testServiceBalancing(t *testing.T, e exemption) {
	_, pods := newLabWith(t, "cli", "r1", "r2", "r3", "bad", "ns")
	cli, r1, r2, r3, bad, nsPod := pods[0], pods[1], pods[2], pods[3], pods[4], pods[5]
	apps := map[*topology.Pod]*topology.Process{}
	for _, p := range []*topology.Pod{r1, r2, r3, bad} {
		apps[p] = startApp(t, p)
	}
	apiID := "spiffe://" + meshTD + "/ns/default/sa/api"
	z := &zone{identity: apiID}
	z.set(3, r1, r2)
	up := z.serve(t, nsPod)

	dir := publicTempDir(t)
	resolv := filepath.Join(dir, "resolv.conf")
	registry := filepath.Join(dir, "registry.yaml")
	os.WriteFile(resolv, []byte("nameserver "+nsPod.IPv4.String()+"\n"), 0o644)
	writeRegistry := func(eps ...*topology.Pod) {
		var ips []string
		for _, p := range eps {
			ips = append(ips, p.IPv4.String())
		}
		b := fmt.Appendf(nil, "services:\n- name: web.shop.mesh\n  identity: %s\n  meshed: true\n  ttl: 2s\n  endpoints: [%s]\n", apiID, strings.Join(ips, ", "))
		tmp := registry + ".tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, registry); err != nil {
			t.Fatal(err)
		}
	}
	writeRegistry(r1)

	ca := meshCA(t)
	co := meshOpts(issueFor(t, ca, cli), "strict", cli)
	// A shorter decay than the default 10s, so that a failing endpoint is
	// tried again (and ejected) within seconds.
	co.proxyConfig = "loadBalancing: {decay: 2s}\n"
	co.proxyArgs = append(co.proxyArgs, "--resolv-conf", resolv, "--registry", registry)
	co.redirectArgs = []string{"--capture-dns", "--dns-servers", nsPod.IPv4.String()}
	sc := enroll(t, cli, e.with(co))
	sidecars := map[*topology.Pod]*sidecar{}
	for _, p := range []*topology.Pod{r1, r2, r3} {
		sidecars[p] = enroll(t, p, e.with(meshOpts(issueAs(t, ca, p, apiID), "strict", cli)))
	}
	enroll(t, bad, e.with(meshOpts(issueFor(t, ca, bad), "strict", cli))) // a valid cert, another identity

	dig := func(args ...string) string {
		t.Helper()
		out, err := cli.Run(ctxFor(t, 20*time.Second), append([]string{"dig", "@" + nsPod.IPv4.String(), "+time=3", "+tries=1"}, args...)...)
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return out
	}
	if out := dig("+short", "api.example.test", "A"); !strings.Contains(out, r1.IPv4.String()) || !strings.Contains(out, r2.IPv4.String()) {
		t.Errorf("api.example.test A = %q, want %s and %s", out, r1.IPv4, r2.IPv4)
	}
	if out := dig("+short", "_http._tcp.api.example.test", "SRV"); strings.TrimSpace(out) != "0 10 8080 api.example.test." {
		t.Errorf("SRV = %q, want the upstream's 0 10 8080 api.example.test.", out)
	}
	if out := dig("+short", "api.example.test", "TXT"); !strings.Contains(out, "meshgate.identity="+apiID) {
		t.Errorf("TXT = %q", out)
	}

	// Negative answers are cached for the SOA minimum (2s): asked again
	// at once, the answer comes from the cache; asked until the upstream
	// sees the question again, that takes the TTL.
	asked := time.Now()
	dig("nx.example.test", "A")
	dig("nx.example.test", "A")
	if n := up.Count("nx.example.test.", dns.TypeA); n != 1 && time.Since(asked) < 2*time.Second {
		t.Errorf("NXDOMAIN asked upstream %d times within its 2s TTL, want 1", n)
	}
	waitFor(t, "NXDOMAIN asked upstream again after its TTL", 10*time.Second, func() bool {
		dig("nx.example.test", "A")
		return up.Count("nx.example.test.", dns.TypeA) >= 2
	})
	if d := time.Since(asked); d < 2*time.Second {
		t.Errorf("NXDOMAIN asked upstream again %v after the first time, within its 2s TTL", d.Round(time.Millisecond))
	}

	api := "http://api.example.test:8080/"
	// First, while neither replica has been connected to: requests one at
	// a time, each on a new connection of the app's, spread over both.
	// The first request to each replica also sets up the sidecars' mesh
	// connection (dial and mTLS handshake) and warms the replica up,
	// which is no latency of the replica's: were it charged, one replica
	// would look the faster for seconds and take nearly every request.
	// Each replica takes 10ms to answer: answers of a millisecond make
	// the estimates follow the scheduler of a busy machine, whose stall of
	// a replica's sidecar for a few answers in a row is a peak that keeps
	// it out of serial traffic for a good part of Decay (it failed CI
	// 37:3 and 3:37 so). That set-up is not charged is pinned exactly by
	// the unit tests (TestBalancerToldSetUpApart).
	t.Run("serial requests spread over equal replicas", func(t *testing.T) {
		serial := cli.NameClient(hostPort(nsPod.IPv4, 53), 10*time.Second, false)
		got := map[string]int{}
		for i := range 40 {
			code, name, err := call(serial, api+"?sleep=10ms")
			if err != nil || code != 200 {
				t.Fatalf("request %d: %d %q %v", i, code, name, err)
			}
			got[name]++
		}
		t.Logf("40 serial requests, a new connection each: %v", got)
		if got["r1"] < 10 || got["r2"] < 10 {
			t.Errorf("40 serial requests over two equal replicas: %v; want 10 (25%%) each at least\nthe client sidecar's last warnings:\n%s", got, sc.warnings(10))
		}
	})

	// The app resolves by name through the captured DNS, connects to the
	// first address of the answer, and keeps its connections alive.
	app := cli.NameClient(hostPort(nsPod.IPv4, 53), 10*time.Second, true)
	got := spread(t, app, api, 200)
	t.Logf("200 requests over two replicas: %v", got)
	if got["r1"] < 20 || got["r2"] < 20 || got["r1"]+got["r2"] != 200 {
		t.Errorf("200 requests: %v; want all answered, by both replicas", got)
	}
	if n := sc.tlsHandshakes(t, "direction=outbound", "result=ok", "peer_identity="+apiID); n < 2 {
		t.Errorf("%v mesh handshakes with %s, want one to each replica at least", n, apiID)
	}

	// A new replica and a new TTL upstream: followed once the old TTL
	// (3s) is over, with nothing restarted.
	z.set(6, r1, r2, r3)
	deadline := time.Now().Add(20 * time.Second)
	for got = spread(t, app, api, 40); got["r3"] == 0; got = spread(t, app, api, 40) {
		if time.Now().After(deadline) {
			t.Fatalf("the new replica got no request 20s after it was added: %v", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The sidecar asked again just now: the TTL it gives is the new one
	// (6s, aged by a second or two), above the old 3s.
	if out := dig("+noall", "+answer", "api.example.test", "A"); !strings.Contains(out, r3.IPv4.String()) || answerTTL(out) <= 3 {
		t.Errorf("after the change, api.example.test A (want r3 and a TTL above the old 3s):\n%s", out)
	}

	// r2's app stops: its sidecar answers 502 until r2 is ejected.
	if err := apps[r2].Stop(5 * time.Second); err != nil {
		t.Logf("r2's app: %v", err)
	}
	ejected := func(p *topology.Pod) bool {
		return sc.metrics(t)["meshgate_endpoint_ejected{endpoint="+hostPort(p.IPv4, 8080)+",service=api.example.test}"] == 1
	}
	failed, served, start := 0, 0, time.Now()
	for !ejected(r2) {
		if time.Since(start) > 60*time.Second {
			t.Fatalf("r2 not ejected after %v: %d failed, %d served", time.Since(start), failed, served)
		}
		if code, _, err := call(app, api); err != nil || code != 200 {
			failed++
		} else {
			served++
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("r2 stopped: %d requests failed and %d were served before it was ejected, %v after it stopped", failed, served, time.Since(start).Round(100*time.Millisecond))
	if failed < 1 || failed > 5 {
		t.Errorf("%d requests failed before r2 was ejected; want 1 to 5 (ejected after 5 failures in a row)", failed)
	}
	if got := spread(t, app, api, 60); got["r2"] != 0 || got["r1"]+got["r3"] != 60 {
		t.Errorf("after r2's ejection: %v; want every request answered by r1 or r3", got)
	}

	// A replica with a valid mesh certificate of another identity joins
	// the answer: every connection to it is refused at the handshake, and
	// the request tried on another replica.
	z.set(6, r1, r3, bad)
	deadline = time.Now().Add(40 * time.Second)
	for sc.tlsHandshakes(t, "direction=outbound", "result=failed", "reason=wrong_identity") == 0 || !ejected(bad) {
		if time.Now().After(deadline) {
			t.Fatalf("no handshake with the impostor refused, or it not ejected, 40s after it joined")
		}
		if got := spread(t, app, api, 20); got["bad"] != 0 || got["r1"]+got["r3"] != 20 {
			t.Fatalf("with an impostor among the replicas: %v; want every request answered by r1 or r3\nthe last warnings of the sidecars of cli:\n%s\nr1:\n%s\nr2:\n%s\nr3:\n%s",
				got, sc.warnings(10), sidecars[r1].warnings(5), sidecars[r2].warnings(5), sidecars[r3].warnings(5))
		}
	}

	// The registry file, edited while running: its new endpoint serves.
	web := "http://web.shop.mesh:8080/"
	if got := spread(t, app, web, 20); got["r1"] != 20 {
		t.Errorf("web.shop.mesh (registry, endpoint r1): %v", got)
	}
	writeRegistry(r1, r3)
	deadline = time.Now().Add(15 * time.Second)
	for got := spread(t, app, web, 20); got["r3"] == 0; got = spread(t, app, web, 20) {
		if time.Now().After(deadline) {
			t.Fatalf("web.shop.mesh: r3, added to the registry file, got no request in 15s: %v", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if up.CountName("web.shop.mesh.") != 0 {
		t.Error("a registry name reached the upstream DNS server")
	}

	// r3 goes away whole, sidecar and app: connecting to it fails, and
	// every request is tried on another replica before the app sees a
	// failure.
	if err := sidecars[r3].proc.Stop(10 * time.Second); err != nil {
		t.Errorf("r3's sidecar: %v", err)
	}
	apps[r3].Stop(5 * time.Second)
	for _, u := range []string{api, web} {
		if got := spread(t, app, u, 100); got["r1"] != 100 {
			t.Errorf("%s with r3 gone: %v; want every request answered by r1", u, got)
		}
	}
}
