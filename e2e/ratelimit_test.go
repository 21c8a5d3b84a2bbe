package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"meshgate/bench"
	"meshgate/topology"
)

// benchRun is one 'meshgate bench' of a pod: HTTP/1.1 POSTs at a fixed
// rate from inside it, for d, nothing unmeasured before.
type benchRun struct {
	pod  *topology.Pod
	url  string
	rate int
	d    time.Duration
}

// runBenches runs the loads at once and returns their results, in order.
func runBenches(t *testing.T, runs ...benchRun) []*bench.Result {
	t.Helper()
	out := make([]*bench.Result, len(runs))
	errs := make([]error, len(runs))
	var wg sync.WaitGroup
	for i, r := range runs {
		wg.Go(func() {
			js := filepath.Join(t.TempDir(), "bench.json")
			_, err := r.pod.Run(ctxFor(t, r.d+time.Minute), bin, "bench", "--quiet", "--rate", strconv.Itoa(r.rate),
				"--connections", "8", "--body", "64", "--warmup", "0s", "--duration", r.d.String(), "--timeout", "5s", "--json", js, r.url)
			if err != nil {
				errs[i] = err
				return
			}
			var rep bench.Report
			b, err := os.ReadFile(js)
			if err == nil {
				err = json.Unmarshal(b, &rep)
			}
			if err == nil && len(rep.Scenarios) != 1 {
				err = fmt.Errorf("%d scenarios in the report", len(rep.Scenarios))
			}
			if err != nil {
				errs[i] = err
				return
			}
			out[i] = rep.Scenarios[0].Result
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("bench from %s: %v", runs[i].pod.Name, err)
		}
	}
	return out
}

// refused is how many of a run's requests were answered 4xx (the limits'
// 429s: the sidecars' counters say which), and other its failures of
// any other kind.
func refused(r *bench.Result) (n int64, other map[string]int64) {
	other = map[string]int64{}
	for k, v := range r.Errors {
		if k == "status_4xx" {
			n += v
		} else {
			other[k] = v
		}
	}
	return n, other
}

// rateLimitDecisions sums a sidecar's meshgate_ratelimit_decisions_total
// of limit by result.
func (s *sidecar) rateLimitDecisions(t *testing.T, limit, result string) float64 {
	return s.metrics(t).Sum("meshgate_ratelimit_decisions_total", "limit="+limit+",", "result="+result+"}")
}

// startBenchServer runs 'meshgate bench serve' in pod, HTTP on 8080.
func startBenchServer(t *testing.T, pod *topology.Pod) {
	t.Helper()
	p, err := pod.Start([]string{bin, "bench", "serve", "--http", ":8080", "--tls", "", "--grpc", "", "--tcp", ""}, topology.ProcOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitListening(t, pod, netip.AddrPortFrom(pod.IPv4, 8080), p)
}

// TestRateLimitPerCaller (issue 15's local acceptance): a limit of 50/s,
// burst 10, on one caller identity, in the server's sidecar; that caller
// driven at 200 rps gets 429s for the excess, its allowed requests
// within ±5% of 10 + 50·T, while a second caller at 100 rps at the same
// time is untouched.
func TestRateLimitPerCaller(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "api", "greedy", "calm")
	api, greedy, calm := pods[0], pods[1], pods[2]
	startBenchServer(t, api)
	ca := meshCA(t)
	enroll(t, greedy, meshOpts(issueFor(t, ca, greedy), "strict", pods...))
	enroll(t, calm, meshOpts(issueFor(t, ca, calm), "strict", pods...))
	o := meshOpts(issueFor(t, ca, api), "strict", pods...)
	o.proxyConfig = `rateLimits:
- name: per-caller
  key: sourceIdentity
  rate: 100000/s
  overrides: [{value: "` + spiffeFor(greedy) + `", rate: 50/s, burst: 10}]
`
	sapi := enroll(t, api, o)

	const d = 5 * time.Second
	res := runBenches(t, benchRun{greedy, url(api.IPv4, 8080, "/"), 200, d}, benchRun{calm, url(api.IPv4, 8080, "/"), 100, d})
	g, c := res[0], res[1]
	gRefused, gOther := refused(g)
	cRefused, cOther := refused(c)
	n := g.Requests + gRefused
	// The requests arrive over (n-1)/200 s: the bucket's 10, then 50 a
	// second over that span.
	want := 10 + 50*float64(n-1)/200
	t.Logf("greedy: %d requests, %d allowed, %d refused (want %.1f allowed ±5%%); calm: %d allowed, %d refused",
		n, g.Requests, gRefused, want, c.Requests, cRefused)
	if len(gOther) > 0 || len(cOther) > 0 {
		t.Errorf("failures other than 4xx: greedy %v, calm %v", gOther, cOther)
	}
	if n < 950 {
		t.Errorf("greedy sent %d requests in %v at 200 rps, want about 1000", n, d)
	}
	if math.Abs(float64(g.Requests)-want) > 0.05*want {
		t.Errorf("greedy: %d allowed, want %.1f ±5%%", g.Requests, want)
	}
	if cRefused != 0 || c.Requests < 475 {
		t.Errorf("calm: %d allowed, %d refused; want all of about 500 allowed", c.Requests, cRefused)
	}
	if got := sapi.rateLimitDecisions(t, "per-caller", "limited"); got != float64(gRefused) {
		t.Errorf("the api sidecar counted %v refusals; greedy got %d 4xx", got, gRefused)
	}
	if got := sapi.rateLimitDecisions(t, "per-caller", "allowed"); got != float64(g.Requests+c.Requests) {
		t.Errorf("the api sidecar counted %v allowed; the callers got %d", got, g.Requests+c.Requests)
	}
	// A refusal as a client sees it: 429, the reason, when to retry. The
	// bucket refills in 200 ms: a quick burst past its 10 finds it empty.
	cl := &http.Client{Transport: &http.Transport{DialContext: greedy.Dial}, Timeout: 5 * time.Second}
	var resp *http.Response
	for range 30 {
		r, err := cl.Get(url(api.IPv4, 8080, "/"))
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if resp = r; r.StatusCode == http.StatusTooManyRequests {
			break
		}
	}
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" ||
		resp.Header.Get("RateLimit-Policy") != `"per-caller";q=50;w=1` || resp.Header.Get("RateLimit") != `"per-caller";r=0;t=1` ||
		!strings.HasPrefix(resp.Header.Get("X-Meshgate-Error"), "rate-limit: per-caller: over 50/s") {
		t.Errorf("30 quick requests: the last %s %v; want 429 with Retry-After 1, RateLimit-Policy and RateLimit", resp.Status, resp.Header)
	}
}

// redisIn is a redis-server in a pod of its own, on 6379.
type redisIn struct {
	pod  *topology.Pod
	proc *topology.Process
}

func startRedisIn(t *testing.T, pod *topology.Pod) *redisIn {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not installed: run 'make deps'")
	}
	r := &redisIn{pod: pod}
	r.start(t)
	// A server left stopped (SIGSTOP) by a failed test must be able to
	// hear the lab's stop.
	t.Cleanup(func() { r.proc.Cmd.Process.Signal(syscall.SIGCONT) })
	return r
}

func (r *redisIn) start(t *testing.T) {
	t.Helper()
	p, err := r.pod.Start([]string{"redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir()}, topology.ProcOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.proc = p
	waitListening(t, r.pod, netip.AddrPortFrom(r.pod.IPv4, 6379), p)
}

func (r *redisIn) addr() string { return net.JoinHostPort(r.pod.IPv4.String(), "6379") }

// TestRateLimitGlobal (issue 15's global acceptance): three client
// sidecars in three pods share a quota of 600 requests per minute on one
// service through one redis-server. Driven together at 30 rps each for
// 30 s, they are allowed 600 within ±2% (exactly 600 when no decision
// fell back), every denial a 429, and each request's access log line
// says what the quota decided. Then Redis hangs mid-run (SIGSTOP): the
// fail-open sidecars allow, saying so in the lines of the requests
// allowed so, and no request waits much more than the decision timeout
// (5 ms) over the healthy run's latencies; with onError failClosed (a
// reload) and Redis gone, they refuse, as fast; and once a redis-server
// is back the shared counting resumes: a new window of 600 for the
// three.
func TestRateLimitGlobal(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "api", "c1", "c2", "c3", "redis")
	api, clients, rpod := pods[0], pods[1:4], pods[4]
	mesh := pods[:4]
	startBenchServer(t, api)
	rds := startRedisIn(t, rpod)
	ca := meshCA(t)
	enroll(t, api, meshOpts(issueFor(t, ca, api), "strict", mesh...))
	config := func(onError, timeout string) string {
		return `accessLog: true
rateLimits:
- name: api-quota
  type: quota
  direction: outbound
  key: route
  match: {ports: [8080]}
  rate: 600/m
  global: true
redis: {address: "` + rds.addr() + `", onError: ` + onError + `, timeout: ` + timeout + `}
`
	}
	var sidecars []*sidecar
	var files []string
	for _, c := range clients {
		f := filepath.Join(publicTempDir(t), "proxy.yaml")
		if err := os.WriteFile(f, []byte(config("failOpen", "250ms")), 0o644); err != nil {
			t.Fatal(err)
		}
		o := meshOpts(issueFor(t, ca, c), "strict", mesh...)
		o.proxyArgs = append(o.proxyArgs, "--config", f)
		sidecars = append(sidecars, enroll(t, c, o))
		files = append(files, f)
	}
	target := url(api.IPv4, 8080, "/")
	load := func(d time.Duration) []benchRun {
		var runs []benchRun
		for _, c := range clients {
			runs = append(runs, benchRun{c, target, 30, d})
		}
		return runs
	}
	// reload writes the clients' config and waits until each sidecar
	// has reloaded it.
	reloads := 0
	reload := func(onError, timeout string) {
		t.Helper()
		reloads++
		for i, f := range files {
			if err := os.WriteFile(f, []byte(config(onError, timeout)), 0o644); err != nil {
				t.Fatal(err)
			}
			waitFor(t, clients[i].Name+"'s reload", 10*time.Second, func() bool {
				return strings.Count(sidecars[i].proc.Output(), `"msg":"config reloaded"`) >= reloads
			})
		}
	}
	sum := func(result string) float64 {
		var n float64
		for _, s := range sidecars {
			n += s.rateLimitDecisions(t, "api-quota", result)
		}
		return n
	}
	// logged counts the access log lines of the clients' sidecars that
	// list the quota's decision result.
	logged := func(result string) int {
		n := 0
		for _, s := range sidecars {
			n += strings.Count(s.proc.Output(), `"rate_limits":["api-quota:`+result+`"]`)
		}
		return n
	}

	// Healthy: one bucket for the three. The decision timeout is long
	// here (250 ms), so that a busy machine's slow round trip is not
	// taken for Redis failing (the fallback would allow it).
	res := runBenches(t, load(30*time.Second)...)
	var allowed, denied int64
	var p50, p99 float64
	for i, r := range res {
		n, other := refused(r)
		if len(other) > 0 {
			t.Errorf("%s: failures other than 429: %v", clients[i].Name, other)
		}
		allowed, denied = allowed+r.Requests, denied+n
		p50, p99 = max(p50, r.Latency.P50), max(p99, r.Latency.P99)
	}
	fallbacks := sum("allowed_failopen")
	t.Logf("healthy: %d allowed (%v of them by the fallback), %d refused (want 600 ±2%%, exactly 600 without fallbacks); allowed latency p50 %.2f ms, p99 %.2f ms",
		allowed, fallbacks, denied, p50, p99)
	if math.Abs(float64(allowed)-600) > 12 || fallbacks == 0 && allowed != 600 {
		t.Errorf("the three were allowed %d requests together (%v by the fallback); want 600 ±2%%, exactly 600 when none fell back", allowed, fallbacks)
	}
	if got := sum("limited"); got != float64(denied) {
		t.Errorf("the sidecars counted %v refusals by api-quota; the clients got %d 4xx", got, denied)
	}
	// Every request's line says what the quota decided (a line is
	// written once its response is).
	eventually(t, 5*time.Second, func() error {
		if a, l := logged("allowed"), logged("limited"); a != int(sum("allowed")) || l != int(denied) {
			return fmt.Errorf("access log lines: %d say api-quota:allowed, %d api-quota:limited; want %v and %d", a, l, sum("allowed"), denied)
		}
		return nil
	})
	if allowed+denied < 2600 {
		t.Errorf("%d requests in all; want about 2700 (3 × 30 rps × 30 s)", allowed+denied)
	}

	// Redis hangs mid-run: fail open, each decision bounded by the
	// timeout, now the default 5 ms.
	reload("failOpen", "5ms")
	openBefore := sum("allowed_failopen")
	hung := make(chan struct{})
	go func() {
		defer close(hung)
		time.Sleep(time.Second)
		rds.proc.Cmd.Process.Signal(syscall.SIGSTOP)
	}()
	res = runBenches(t, load(5*time.Second)...)
	<-hung
	var openP50, openP99 float64
	for i, r := range res {
		if _, other := refused(r); len(other) > 0 {
			t.Errorf("%s, Redis hung: failures other than 429: %v", clients[i].Name, other)
		}
		openP50, openP99 = max(openP50, r.Latency.P50), max(openP99, r.Latency.P99)
	}
	failOpen := sum("allowed_failopen") - openBefore
	t.Logf("Redis hung, failOpen: %v requests allowed by the fallback; allowed latency p50 %.2f ms, p99 %.2f ms", failOpen, openP50, openP99)
	if failOpen < 250 {
		t.Errorf("%v requests allowed by the fallback while Redis hung; want the ~360 sent after it stopped", failOpen)
	}
	eventually(t, 5*time.Second, func() error {
		if n := logged("allowed_failopen"); n != int(sum("allowed_failopen")) {
			return fmt.Errorf("%d access log lines say api-quota:allowed_failopen; the sidecars counted %v", n, sum("allowed_failopen"))
		}
		return nil
	})
	// The decision waits 5 ms at most; the rest is the machine's noise.
	if openP50 > p50+5+10 {
		t.Errorf("with Redis hung, p50 %.2f ms; want at most the healthy p50 (%.2f ms) + the 5 ms timeout + 10 ms", openP50, p50)
	}

	// Fail closed (reloaded), Redis gone: every request refused, at once.
	reload("failClosed", "5ms")
	rds.proc.Cmd.Process.Signal(syscall.SIGKILL)
	<-rds.proc.Done()
	closedBefore := sum("limited_failclosed")
	cl := &http.Client{Transport: &http.Transport{DialContext: clients[0].Dial}, Timeout: 5 * time.Second}
	var took []time.Duration
	for range 60 {
		start := time.Now()
		resp, err := cl.Get(target)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		took = append(took, time.Since(start))
		if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(resp.Header.Get("X-Meshgate-Error"), "redis.onError failClosed") {
			t.Fatalf("Redis gone, failClosed: %s %q; want 429 by the fallback", resp.Status, resp.Header.Get("X-Meshgate-Error"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	slices.Sort(took)
	closedP99 := float64(took[len(took)*99/100].Microseconds()) / 1000
	t.Logf("Redis gone, failClosed: 60 of 60 refused; latency p50 %.2f ms, p99 %.2f ms", float64(took[30].Microseconds())/1000, closedP99)
	if got := sum("limited_failclosed") - closedBefore; got != 60 {
		t.Errorf("%v refusals counted limited_failclosed, want 60", got)
	}
	if closedP50 := float64(took[30].Microseconds()) / 1000; closedP50 > p50+5+10 {
		t.Errorf("with Redis gone, p50 %.2f ms; want at most the healthy p50 (%.2f ms) + the 5 ms timeout + 10 ms", closedP50, p50)
	}

	// Redis is back (empty): shared counting resumes, a new window of
	// 600 for the three. A sidecar whose dials kept failing tries again
	// every second (the client's dial circuit breaker): each waits to be
	// allowed once by Redis (a fallback would refuse). These are GETs, a
	// key value of their own (route: the method and the pattern): the
	// load's POSTs then start their own window.
	rds.start(t)
	resumed := time.Now()
	for _, c := range clients {
		cl := &http.Client{Transport: &http.Transport{DialContext: c.Dial}, Timeout: 5 * time.Second}
		eventually(t, 10*time.Second, func() error {
			resp, err := cl.Get(target)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s %q", c.Name, resp.Status, resp.Header.Get("X-Meshgate-Error"))
			}
			return nil
		})
	}
	t.Logf("Redis back: every sidecar counts in it again after %v", time.Since(resumed).Round(time.Millisecond))
	allowedBefore, limitedBefore := sum("allowed"), sum("limited")
	closedBefore = sum("limited_failclosed")
	// 8 s at 90 rps: 720 requests, more than the window's 600.
	res = runBenches(t, load(8*time.Second)...)
	allowed, denied = 0, 0
	for i, r := range res {
		n, other := refused(r)
		if len(other) > 0 {
			t.Errorf("%s, Redis back: failures other than 429: %v", clients[i].Name, other)
		}
		allowed, denied = allowed+r.Requests, denied+n
	}
	fromRedis := sum("allowed") - allowedBefore + sum("limited") - limitedBefore
	fellBack := sum("limited_failclosed") - closedBefore
	t.Logf("Redis back: %d allowed, %d refused (want 600 ±2%% allowed, exactly 600 without fallbacks), %v decisions by Redis, %v by the fallback",
		allowed, denied, fromRedis, fellBack)
	if math.Abs(float64(allowed)-600) > 12 || fellBack == 0 && allowed != 600 {
		t.Errorf("after Redis came back: %d allowed (%v refused by the fallback); want 600 ±2%% (a new shared window), exactly 600 when none fell back", allowed, fellBack)
	}
	if fromRedis < float64(allowed+denied)-5 {
		t.Errorf("only %v of %d decisions came from Redis once it was back", fromRedis, allowed+denied)
	}
}
