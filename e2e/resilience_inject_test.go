package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"meshgate/bench"
	"meshgate/demoapp"
	"meshgate/topology"
)

// Issue 16's acceptance for fault injection and mirroring (the resilience
// section's faults and mirror, in the client's sidecar).

// appStats is a demo app's GET /stats, asked from inside its pod (on
// loopback, which the rules leave alone).
func appStats(t *testing.T, pod *topology.Pod) demoapp.Stats {
	t.Helper()
	out, err := pod.Run(ctxFor(t, 10*time.Second), "curl", "-sS", "--fail", "http://127.0.0.1:8080/stats")
	if err != nil {
		t.Fatalf("GET /stats in %s: %v\n%s", pod.Name, err, out)
	}
	var s demoapp.Stats
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("GET /stats in %s: %v: %q", pod.Name, err, out)
	}
	return s
}

// controlApp commands a demo app's faults (POST /control?query) from
// inside its pod.
func controlApp(t *testing.T, pod *topology.Pod, query string) {
	t.Helper()
	if out, err := pod.Run(ctxFor(t, 10*time.Second), "curl", "-sS", "--fail", "-X", "POST", "http://127.0.0.1:8080/control?"+query); err != nil {
		t.Fatalf("POST /control?%s in %s: %v\n%s", query, pod.Name, err, out)
	}
}

// TestFaultInjectionAbort (issue 16: "a 10% abort rule yields 10% ± 2%
// aborts over 2 000 requests"): a service of two replicas found through
// the client sidecar's DNS proxy, and an abort rule of 10% for it in the
// client's sidecar. Of 2 000 requests the app makes, 10% ± 2% are
// answered 503 "fault: abort" by its sidecar, which counts each; the
// replicas' own counts show that none of those reached them, and every
// other request did.
func TestFaultInjectionAbort(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "cli", "r1", "r2", "ns")
	cli, r1, r2, nsPod := pods[0], pods[1], pods[2], pods[3]
	for _, p := range []*topology.Pod{r1, r2} {
		startApp(t, p)
	}
	apiID := "spiffe://" + meshTD + "/ns/default/sa/api"
	z := &zone{identity: apiID}
	z.set(30, r1, r2)
	z.serve(t, nsPod)
	resolv := filepath.Join(publicTempDir(t), "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver "+nsPod.IPv4.String()+"\n"), 0o644)

	ca := meshCA(t)
	co := meshOpts(issueFor(t, ca, cli), "strict", cli)
	co.proxyConfig = `resilience:
  destinations:
  - name: api
    match: {hosts: [api.example.test], ports: [8080]}
    faults: {abort: {status: 503, percent: 10}}
`
	co.proxyArgs = append(co.proxyArgs, "--resolv-conf", resolv)
	co.redirectArgs = []string{"--capture-dns", "--dns-servers", nsPod.IPv4.String()}
	sc := enroll(t, cli, co)
	for _, p := range []*topology.Pod{r1, r2} {
		enroll(t, p, meshOpts(issueAs(t, ca, p, apiID), "strict", cli))
	}

	app := cli.NameClient(hostPort(nsPod.IPv4, 53), 10*time.Second, true)
	const n = 2000
	got := tally(n, 8, func() string {
		resp, err := app.Get("http://api.example.test:8080/")
		if err != nil {
			return "error: " + err.Error()
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == 503 && resp.Header.Get("X-Meshgate-Error") == "fault: abort":
			return "aborted"
		case resp.StatusCode != 200:
			return fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get("X-Meshgate-Error"))
		}
		return "200"
	})
	aborted := got["aborted"]
	s1, s2 := appStats(t, r1), appStats(t, r2)
	counted := sc.metrics(t)["meshgate_faults_injected_total{destination=api,kind=abort,route=}"]
	t.Logf("%d requests: %v (%.2f%% aborted); the sidecar counted %v aborts; the replicas answered %d + %d = %d",
		n, got, 100*float64(aborted)/n, counted, s1.Requests, s2.Requests, s1.Requests+s2.Requests)
	if got["200"]+aborted != n {
		t.Errorf("answers other than 200 and the abort: %v", got)
	}
	if math.Abs(float64(aborted)-0.1*n) > 0.02*n {
		t.Errorf("%d of %d requests aborted (%.2f%%); want 10%% ± 2%%", aborted, n, 100*float64(aborted)/n)
	}
	if counted != float64(aborted) {
		t.Errorf("the sidecar counted %v aborts; the app saw %d", counted, aborted)
	}
	if s1.Requests+s2.Requests != int64(n-aborted) || s1.Requests == 0 || s2.Requests == 0 {
		t.Errorf("the replicas answered %d and %d requests; want the %d not aborted, between them", s1.Requests, s2.Requests, n-aborted)
	}
	// The sidecar writes its log in batches, every quarter second.
	eventually(t, 5*time.Second, func() error {
		if lines := strings.Count(sc.proc.Output(), `"fault":"abort","reason":"fault: abort (destination api)"`); lines != aborted {
			return fmt.Errorf("%d access log lines say fault: abort; want %d", lines, aborted)
		}
		return nil
	})
}

// TestMirrorDoesNotSlowTheMainPath (issue 16: "mirroring to an audit app
// that is slow or down does not change the main path's p99 by more than
// 10%, same run, with and without mirroring"): the app posts at a fixed
// rate to a service, at once on a path its sidecar mirrors to an audit
// app (by name, through the sidecar's DNS proxy, mTLS) and on one it
// does not, while the audit app answers after 2 s, then while it is
// down. The p99 with the mirror is within 10% of the one without (the
// median of the rounds' ratios); the copies are sent, dropped at
// maxConcurrent or failed, as counted; and the sidecar's goroutines stay
// bounded.
func TestMirrorDoesNotSlowTheMainPath(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "cli", "api", "audit", "ns")
	cli, api, audit, nsPod := pods[0], pods[1], pods[2], pods[3]
	startBenchServer(t, api)
	auditApp := startApp(t, audit)
	auditID := spiffeFor(audit)
	servePodDNS(t, nsPod, func(q dns.Question, m *dns.Msg) {
		hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 30}
		switch {
		case q.Name == "audit.example.test." && q.Qtype == dns.TypeA:
			m.Answer = []dns.RR{&dns.A{Hdr: hdr, A: audit.IPv4.AsSlice()}}
		case q.Name == "audit.example.test." && q.Qtype == dns.TypeTXT:
			m.Answer = []dns.RR{&dns.TXT{Hdr: hdr, Txt: []string{"meshgate.identity=" + auditID, "meshgate.meshed=true"}}}
		case q.Name == "audit.example.test.":
		default:
			m.Rcode = dns.RcodeNameError
		}
	})
	resolv := filepath.Join(publicTempDir(t), "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver "+nsPod.IPv4.String()+"\n"), 0o644)

	ca := meshCA(t)
	co := meshOpts(issueFor(t, ca, cli), "strict", cli, api) // audit: in the mesh by its TXT record
	co.proxyConfig = fmt.Sprintf(`resilience:
  destinations:
  - name: api
    match: {cidrs: [%s/32], ports: [8080]}
    routes:
    - name: mirrored
      match: {paths: [/m]}
      mirror: {to: "audit.example.test:8080", maxConcurrent: 10}
`, api.IPv4)
	co.proxyArgs = append(co.proxyArgs, "--resolv-conf", resolv)
	sc := enroll(t, cli, co)
	enroll(t, api, meshOpts(issueFor(t, ca, api), "strict", cli))
	enroll(t, audit, meshOpts(issueFor(t, ca, audit), "strict", cli))

	mirrorTotal := func() map[string]float64 {
		m := sc.metrics(t)
		out := map[string]float64{}
		for _, r := range []string{"sent", "failed", "dropped_full", "dropped_body"} {
			out[r] = m["meshgate_mirror_total{destination=api,result="+r+"}"]
		}
		return out
	}
	// The copies arrive: with the audit app answering at once, each
	// mirrored request is copied (by name, mTLS to its sidecar).
	mirrored, plain := url(api.IPv4, 8080, "/m"), url(api.IPv4, 8080, "/n")
	before := appStats(t, audit).Requests
	runBenches(t, benchRun{cli, mirrored, 50, 2 * time.Second}, benchRun{cli, plain, 50, 2 * time.Second})
	waitFor(t, "the copies of 100 requests at the audit app", 15*time.Second, func() bool {
		return appStats(t, audit).Requests-before >= 100
	})
	if c := mirrorTotal(); c["sent"] < 100 || c["failed"]+c["dropped_full"]+c["dropped_body"] != 0 {
		t.Errorf("the audit app answering at once: copies %v; want 100 sent at least, none lost", c)
	}
	if got := appStats(t, audit).Requests - before; got != int64(mirrorTotal()["sent"]) {
		t.Errorf("the audit app got %d copies; the sidecar sent %v", got, mirrorTotal()["sent"])
	}

	// Each round runs the two loads at once, one on the mirrored path and
	// one on the other, so that both meet the same machine: on this shared
	// 2-core machine the p99 of a run moves by ±30% from one run to the
	// next, and runs one after the other (interleaved, medians of 5 and 7
	// rounds) could not tell 10% apart. The median over the rounds of the
	// round's ratio is what is judged. What copies cost the sidecar as a
	// whole, which falls on both loads alike, is bounded by maxConcurrent
	// (copies in flight) and the mirror's breaker (a target that is down
	// is sent one copy every 5 s): the copies' counts and the sidecar's
	// goroutines show it.
	const (
		rate   = 250 // each load's
		d      = 5 * time.Second
		rounds = 9
	)
	phase := func(name string) {
		t.Helper()
		c0 := mirrorTotal()
		var with, without, ratios []float64
		var worst float64
		for i := range rounds {
			// Each load starts first every second round: the one started
			// second starts while the first one's connections are set up.
			var r []*bench.Result
			if i%2 == 0 {
				r = runBenches(t, benchRun{cli, mirrored, rate, d}, benchRun{cli, plain, rate, d})
			} else {
				r = runBenches(t, benchRun{cli, plain, rate, d}, benchRun{cli, mirrored, rate, d})
				r[0], r[1] = r[1], r[0]
			}
			for i, u := range []string{mirrored, plain} {
				if len(r[i].Errors) > 0 {
					t.Errorf("%s, %s: failures %v", name, u, r[i].Errors)
				}
			}
			with, without = append(with, r[0].Latency.P99), append(without, r[1].Latency.P99)
			ratios = append(ratios, r[0].Latency.P99/r[1].Latency.P99)
			worst = max(worst, sc.metrics(t)["go_goroutines"])
		}
		c1 := mirrorTotal()
		delta := map[string]float64{}
		for k := range c1 {
			delta[k] = c1[k] - c0[k]
		}
		ratio := median(ratios)
		t.Logf("%s: p99 with the mirror %s ms (median %.2f), without %s ms (median %.2f); the rounds' ratios %s, median %.3f; "+
			"copies %v; the client sidecar's goroutines at most %v after a round",
			name, fmtMS(with), median(with), fmtMS(without), median(without), fmtMS(ratios), ratio, delta, worst)
		if ratio > 1.10 {
			t.Errorf("%s: the p99 with the mirror is %.1f%% over the one without (the median of the rounds' ratios)", name, 100*(ratio-1))
		}
		if worst > 200 {
			t.Errorf("%s: the client sidecar had %v goroutines", name, worst)
		}
	}

	controlApp(t, audit, "delay=2s")
	phase("audit app slow (2s)")
	c := mirrorTotal()
	if c["dropped_full"] == 0 {
		t.Errorf("the audit app slow: no copy dropped at maxConcurrent: %v", c)
	}

	if err := auditApp.Stop(5 * time.Second); err != nil {
		t.Logf("the audit app: %v", err)
	}
	failedBefore := mirrorTotal()["failed"]
	phase("audit app down")
	if mirrorTotal()["failed"] == failedBefore {
		t.Errorf("the audit app down: no copy failed: %v", mirrorTotal())
	}
}

// median is the median of xs.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// fmtMS formats latencies in ms.
func fmtMS(xs []float64) string {
	var out []string
	for _, x := range xs {
		out = append(out, fmt.Sprintf("%.2f", x))
	}
	return "[" + strings.Join(out, " ") + "]"
}
