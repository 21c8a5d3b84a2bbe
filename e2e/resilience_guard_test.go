package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"meshgate/bench"
	"meshgate/intercept"
	"meshgate/proxy"
	"meshgate/topology"
)

// appClient is an HTTP/1.1 client with keep-alive whose connections are
// made from inside pod, as the pod's app makes them: through its sidecar.
func appClient(pod *topology.Pod, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: pod.Dial, MaxIdleConnsPerHost: 8}}
}

// timedGet GETs url and returns the status, X-Meshgate-Error, the body
// and how long it took.
func timedGet(c *http.Client, url string) (int, string, string, time.Duration, error) {
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", "", time.Since(start), err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Meshgate-Error"), string(body), time.Since(start), err
}

// quantile is the q-quantile (0 to 1) of ds, sorted in place.
func quantile(ds []time.Duration, q float64) time.Duration {
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

// resilienceOf fetches a sidecar's GET /resilience from its admin port.
func (s *sidecar) resilienceOf(t *testing.T) proxy.ResilienceStatus {
	t.Helper()
	code, body, err := podGet(s.pod, fmt.Sprintf("http://127.0.0.1:%d/resilience", intercept.AdminPort))
	if err != nil || code != 200 {
		t.Fatalf("GET /resilience: %d %v", code, err)
	}
	var st proxy.ResilienceStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("GET /resilience: %v\n%s", err, body)
	}
	return st
}

// destination returns the status of the destination named key, or nil.
func destination(st proxy.ResilienceStatus, key string) *proxy.DestinationStatus {
	for i := range st.Destinations {
		if st.Destinations[i].Destination == key {
			return &st.Destinations[i]
		}
	}
	return nil
}

// accessDurations are the durations of the sidecar's outbound access
// log lines whose reason or authority has what in it.
func accessDurations(s *sidecar, what string) []time.Duration {
	var out []time.Duration
	for _, line := range strings.Split(s.proc.Output(), "\n") {
		var l struct {
			Logger, Direction, Reason, Authority string
			Duration                             float64 // seconds
		}
		if json.Unmarshal([]byte(line), &l) != nil || l.Logger != "access" || l.Direction != "outbound" {
			continue
		}
		if strings.Contains(l.Reason, what) || l.Authority == what {
			out = append(out, time.Duration(l.Duration*float64(time.Second)))
		}
	}
	return out
}

// control sets the demo app's faults in pod (POST /control from inside
// it): e.g. "delay=2s", or "" for none.
func control(t *testing.T, pod *topology.Pod, query string) {
	t.Helper()
	resp, err := pod.HTTPClient(5*time.Second).Post("http://127.0.0.1:8080/control?"+query, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /control?%s in %s: %s", query, pod.Name, resp.Status)
	}
}

// TestCircuitBreakerHardDown (issue 16's acceptance): a destination whose
// app is stopped fails; the client sidecar's circuit for it opens after
// the configured 5 failures, and then its requests fail fast with 503
// "circuit open" without leaving the pod: faster than a request to a
// healthy destination in the same run, which is the sidecar's own
// latency to it (so what the refusal adds is less than the sidecar adds
// to any request, well under 1 ms). A cacheable GET gets its stale copy
// while the circuit is open. When the app comes back, the half-open
// trials close the circuit again.
func TestCircuitBreakerHardDown(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "cli", "api", "web")
	cli, api, web := pods[0], pods[1], pods[2]
	apiApp := startApp(t, api)
	startApp(t, web)
	ca := meshCA(t)
	sapi := enroll(t, api, meshOpts(issueFor(t, ca, api), "strict", pods...))
	enroll(t, web, meshOpts(issueFor(t, ca, web), "strict", pods...))
	o := meshOpts(issueFor(t, ca, cli), "strict", pods...)
	o.proxyConfig = `accessLog: true
resilience:
  destinations:
  - name: api
    match: {cidrs: [` + api.IPv4.String() + `/32], ports: [8080]}
    circuitBreaker: {consecutiveFailures: 5, openFor: 2s, halfOpenRequests: 2}
    routes:
    - name: home
      match: {methods: [GET], paths: ["/"]}
      fallback: {stale: {maxAge: 5m}}
`
	scli := enroll(t, cli, o)
	c := appClient(cli, 5*time.Second)
	apiURL, webURL := url(api.IPv4, 8080, "/"), url(web.IPv4, 8080, "/")

	// The stale copy of GET / is kept while the app answers.
	code, _, home, _, err := timedGet(c, apiURL)
	if err != nil || code != 200 {
		t.Fatalf("GET / with the app up: %d %v", code, err)
	}
	// The sidecar's own latency to a healthy destination, this run.
	var healthy []time.Duration
	for range 300 {
		code, _, _, took, err := timedGet(c, webURL)
		if err != nil || code != 200 {
			t.Fatalf("healthy destination: %d %v", code, err)
		}
		healthy = append(healthy, took)
	}

	if err := apiApp.Stop(10 * time.Second); err != nil {
		t.Logf("stopping the api app: %v", err)
	}
	for i := range 5 {
		code, why, _, _, err := timedGet(c, url(api.IPv4, 8080, "/stats"))
		if err != nil || code != 502 || strings.Contains(why, "circuit open") {
			t.Fatalf("failure %d with the app stopped: %d %q %v; want the server sidecar's 502", i+1, code, why, err)
		}
	}
	served := sapi.metrics(t).Sum("meshgate_http_requests_total", "direction=inbound")
	var refused []time.Duration
	for i := range 300 {
		code, why, _, took, err := timedGet(c, url(api.IPv4, 8080, "/stats"))
		if err != nil || code != 503 || why != "circuit-breaker: circuit open (destination api)" {
			t.Fatalf("request %d after 5 failures: %d %q %v; want 503 circuit open", i+1, code, why, err)
		}
		refused = append(refused, took)
	}
	if got := sapi.metrics(t).Sum("meshgate_http_requests_total", "direction=inbound"); got != served {
		t.Errorf("the api's sidecar served %v requests while the circuit was open", got-served)
	}
	h50, h99 := quantile(healthy, 0.5), quantile(healthy, 0.99)
	r50, r99 := quantile(refused, 0.5), quantile(refused, 0.99)
	t.Logf("client-side latency: healthy destination p50 %v p99 %v; refused (circuit open) p50 %v p99 %v", h50, h99, r50, r99)
	if r50 >= h50 {
		t.Errorf("a refused request (p50 %v) took no less than a request to a healthy destination (p50 %v): the refusal adds more than the sidecar's own latency", r50, h50)
	}

	// The sidecar's own time for each, from its access log: a refusal's
	// is the guard's, a healthy request's the whole exchange.
	waitFor(t, "the access log of the refused requests", 5*time.Second, func() bool {
		return len(accessDurations(scli, "circuit open")) >= 300
	})
	sr, sh := accessDurations(scli, "circuit open"), accessDurations(scli, web.IPv4.String()+":8080")
	t.Logf("sidecar's own time (access log): healthy destination p50 %v; refused p50 %v p99 %v",
		quantile(sh, 0.5), quantile(sr, 0.5), quantile(sr, 0.99))

	// A cacheable GET: its stale copy, while open.
	resp, err := c.Get(apiURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != home || !strings.HasPrefix(resp.Header.Get("Warning"), "110 ") || resp.Header.Get("Age") == "" {
		t.Errorf("GET / while open: %d %v %q; want the copy kept, with Age and Warning 110", resp.StatusCode, resp.Header, body)
	}
	m := scli.metrics(t)
	if got := m[`meshgate_circuit_state{destination=api,endpoint=}`]; got != 1 {
		t.Errorf("meshgate_circuit_state = %v, want 1 (open)", got)
	}
	if got := m.Sum("meshgate_fallbacks_served_total", "destination=api", "kind=stale", "route=home"); got != 1 {
		t.Errorf("stale fallbacks served: %v, want 1", got)
	}
	st := destination(scli.resilienceOf(t), "api")
	if st == nil || st.Breaker == nil || st.Breaker.State != "open" || len(st.StaleCaches) != 1 || st.StaleCaches[0].Entries != 1 {
		t.Errorf("/resilience: %+v", st)
	}

	// The app comes back: after openFor, two trials pass and close the
	// circuit.
	startApp(t, api)
	eventually(t, 10*time.Second, func() error {
		code, why, _, _, err := timedGet(c, url(api.IPv4, 8080, "/stats"))
		if err != nil || code != 200 {
			return fmt.Errorf("%d %q %v", code, why, err)
		}
		return nil
	})
	for i := range 20 {
		if code, why, _, _, err := timedGet(c, url(api.IPv4, 8080, "/stats")); err != nil || code != 200 {
			t.Fatalf("request %d with the app back: %d %q %v", i, code, why, err)
		}
	}
	m = scli.metrics(t)
	if got := m[`meshgate_circuit_state{destination=api,endpoint=}`]; got != 0 {
		t.Errorf("meshgate_circuit_state = %v, want 0 (closed)", got)
	}
	for _, to := range []string{"open", "half-open", "closed"} {
		if got := m.Sum("meshgate_circuit_transitions_total", "destination=api", "to="+to+"}"); got < 1 {
			t.Errorf("no transition to %s counted", to)
		}
	}
	// Lines leave the sidecar in batches, every quarter second.
	scli.waitOutput(t, `"msg":"circuit opened: requests fail fast","destination":"api"`, "no warning that the circuit opened")
	scli.waitOutput(t, `"msg":"circuit closed","destination":"api"`, "no line saying the circuit closed")
}

// TestBulkheadSlowDestination (issue 16's acceptance): destination S
// answers in 2 s; the app sends it 200 concurrent requests (200 streams
// over one HTTP/2 connection, each sent again 2 s after it was sent, S's
// answer time, when it came back sooner: 200 in flight as the app sees
// them, 100 rps) while it sends 300 rps to destination T. With S's
// bulkhead (maxActive 20, maxPending 10, maxConnections 40), S has 20
// requests in flight and the rest are refused at once (503 overflow);
// T's p99 stays within 2× of its p99 in the same run without S's load
// (two rounds of each, alternated, their p99s averaged: one p99 of a few
// seconds on a shared machine is mostly its noise); and the client
// sidecar's goroutines and memory stay bounded by S's limits, not by its
// load.
func TestBulkheadSlowDestination(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "cli", "slow", "fast")
	cli, slow, fast := pods[0], pods[1], pods[2]
	startApp(t, slow)
	startBenchServer(t, fast)
	ca := meshCA(t)
	enroll(t, slow, meshOpts(issueFor(t, ca, slow), "strict", pods...))
	enroll(t, fast, meshOpts(issueFor(t, ca, fast), "strict", pods...))
	o := meshOpts(issueFor(t, ca, cli), "strict", pods...)
	o.proxyConfig = `resilience:
  destinations:
  - name: slow
    match: {cidrs: [` + slow.IPv4.String() + `/32]}
    bulkhead: {maxActive: 20, maxPending: 10, maxConnections: 40}
`
	scli := enroll(t, cli, o)
	control(t, slow, "delay=2s")
	t.Cleanup(func() { control(t, slow, "") })

	// S's load: 200 streams over one h2c connection from the app.
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		return cli.Dial(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	sl := &slowLoad{client: &http.Client{Transport: tr, Timeout: 10 * time.Second}, url: url(slow.IPv4, 8080, "/")}
	watch := &sidecarWatch{pod: cli}

	const d = 4 * time.Second
	fastURL := url(fast.IPv4, 8080, "/")
	before := watch.sample()
	var alone, loaded []*bench.Result
	for range 2 {
		alone = append(alone, runBenches(t, benchRun{cli, fastURL, 300, d})[0])
		sl.start(200)
		time.Sleep(2 * time.Second) // every stream under way
		watch.start()
		loaded = append(loaded, runBenches(t, benchRun{cli, fastURL, 300, d})[0])
		watch.stop()
		sl.stop()
	}
	after := watch.sample()

	var pAlone, pLoaded float64
	for i := range alone {
		t.Logf("round %d: T alone %d requests, p50 %.2f ms, p99 %.2f ms; with S's load %d requests, p50 %.2f ms, p99 %.2f ms",
			i+1, alone[i].Requests, alone[i].Latency.P50, alone[i].Latency.P99, loaded[i].Requests, loaded[i].Latency.P50, loaded[i].Latency.P99)
		pAlone += alone[i].Latency.P99 / float64(len(alone))
		pLoaded += loaded[i].Latency.P99 / float64(len(loaded))
		if len(alone[i].Errors) > 0 || len(loaded[i].Errors) > 0 {
			t.Errorf("round %d, T's errors: alone %v, with S's load %v", i+1, alone[i].Errors, loaded[i].Errors)
		}
	}
	t.Logf("T's p99: %.2f ms alone, %.2f ms with S's load (%.2f×)", pAlone, pLoaded, pLoaded/pAlone)
	t.Logf("S: %d answered, %d refused (overflow), %d other; at most %d active, %d connections",
		sl.ok.Load(), sl.overflow.Load(), sl.other.Load(), watch.maxActive, watch.maxConns)
	t.Logf("client sidecar: goroutines %v before, at most %v under S's load, %v after; RSS %.1f MiB before, at most %.1f MiB, %.1f MiB after",
		before.goroutines, watch.peak.goroutines, after.goroutines, before.rss/(1<<20), watch.peak.rss/(1<<20), after.rss/(1<<20))

	if pLoaded > 2*pAlone {
		t.Errorf("T's p99 with S's load %.2f ms, more than 2× its p99 alone (%.2f ms)", pLoaded, pAlone)
	}
	if n := sl.other.Load(); n > 0 {
		t.Errorf("S: %d answers neither 200 nor 503 overflow, e.g. %v", n, sl.others[:min(len(sl.others), 3)])
	}
	if sl.ok.Load() == 0 || sl.overflow.Load() == 0 {
		t.Errorf("S: %d answered, %d refused; want both", sl.ok.Load(), sl.overflow.Load())
	}
	if watch.maxActive > 20 || watch.maxConns > 40 {
		t.Errorf("S: %d active, %d connections; over the limits 20 and 40", watch.maxActive, watch.maxConns)
	}
	m := scli.metrics(t)
	if got := m.Sum("meshgate_overflows_total", "destination=slow"); got != float64(sl.overflow.Load()) {
		t.Errorf("meshgate_overflows_total for slow: %v; the app got %d overflows", got, sl.overflow.Load())
	}
	// What S's load may cost the sidecar: per request in flight (20),
	// its handler's and its upstream stream's goroutines; per mesh
	// connection, its read loop; and slack for T's bench connections and
	// the runtime. 200 streams' worth of goroutines would be over it.
	if limit := before.goroutines + 4*20 + 40; watch.peak.goroutines > limit {
		t.Errorf("goroutines under S's load: %v, over %v (%v before)", watch.peak.goroutines, limit, before.goroutines)
	}
	if watch.peak.rss-before.rss > 64<<20 {
		t.Errorf("RSS grew %.1f MiB under S's load", (watch.peak.rss-before.rss)/(1<<20))
	}
}

// slowLoad is the app's load on a slow destination: streams that each
// send a GET, and again 2 s after they sent it; the answers counted.
type slowLoad struct {
	client *http.Client
	url    string

	ok, overflow, other atomic.Int64
	mu                  sync.Mutex
	others              []string // guarded by mu
	halt                chan struct{}
	wg                  sync.WaitGroup
}

// start starts n streams, spread over 2 s (an app's requests come
// spread, not in one burst every 2 s).
func (l *slowLoad) start(n int) {
	l.halt = make(chan struct{})
	for i := range n {
		l.wg.Go(func() {
			next := time.After(time.Duration(i) * 2 * time.Second / time.Duration(n))
			for {
				select {
				case <-l.halt:
					return
				case <-next:
				}
				next = time.After(2 * time.Second)
				code, why, _, _, err := timedGet(l.client, l.url)
				switch {
				case err == nil && code == 200:
					l.ok.Add(1)
				case err == nil && code == 503 && strings.HasPrefix(why, "bulkhead: overflow"):
					l.overflow.Add(1)
				default:
					l.other.Add(1)
					l.mu.Lock()
					l.others = append(l.others, fmt.Sprintf("%d %q %v", code, why, err))
					l.mu.Unlock()
				}
			}
		})
	}
}

// stop ends the streams and waits for their requests.
func (l *slowLoad) stop() {
	close(l.halt)
	l.wg.Wait()
}

// sidecarWatch samples a sidecar's goroutines and memory, and its slow
// destination's bulkhead, every 250 ms while started.
type sidecarWatch struct {
	pod *topology.Pod

	peak                sidecarUsage
	maxActive, maxConns int64
	halt                chan struct{}
	done                chan struct{}
}

// sidecarUsage is a sidecar's goroutines and RSS.
type sidecarUsage struct{ goroutines, rss float64 }

// sample reads the sidecar's goroutines and RSS. It runs in the watch's
// goroutine too, so it fails no test: a scrape that fails counts nothing.
func (w *sidecarWatch) sample() sidecarUsage {
	m, err := w.pod.Scrape(context.Background(), intercept.MetricsPort)
	if err != nil {
		return sidecarUsage{}
	}
	return sidecarUsage{m["go_goroutines"], m["process_resident_memory_bytes"]}
}

func (w *sidecarWatch) start() {
	w.halt, w.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.halt:
				return
			case <-time.After(250 * time.Millisecond):
			}
			u := w.sample()
			w.peak.goroutines, w.peak.rss = max(w.peak.goroutines, u.goroutines), max(w.peak.rss, u.rss)
			_, body, err := podGet(w.pod, fmt.Sprintf("http://127.0.0.1:%d/resilience", intercept.AdminPort))
			var st proxy.ResilienceStatus
			if err == nil && json.Unmarshal([]byte(body), &st) == nil {
				if d := destination(st, "slow"); d != nil && d.Bulkhead != nil {
					w.maxActive = max(w.maxActive, d.Bulkhead.Active.InUse)
					w.maxConns = max(w.maxConns, d.Bulkhead.Connections.InUse)
				}
			}
		}
	}()
}

// stop ends the sampling; the peaks are then the caller's to read.
func (w *sidecarWatch) stop() {
	close(w.halt)
	<-w.done
}
