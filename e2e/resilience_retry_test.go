package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"meshgate/demoapp"
	"meshgate/topology"
)

// retryMesh is a client pod calling api.example.test, a service of two
// replicas (demo-apps that fail on command) found through its sidecar's
// DNS proxy, for the retry and timeout tests of issue 16.
type retryMesh struct {
	cli, r1, r2 *topology.Pod
	sc          *sidecar // the client's sidecar
	app         *http.Client
	fresh       *http.Client // a new connection for each request
	h2          *http.Client // HTTP/2 with prior knowledge (h2c), as a gRPC client speaks it
	resolve     func(ctx context.Context, host string) (string, error)
	cfgFile     string // the client sidecar's config file
	cfg         string // what it says
	ep          map[*topology.Pod]string
}

// clientConfig is the client sidecar's config before the tests add a
// resilience section: access logs (the tests read them), and requests
// balanced round-robin, without outlier ejection, so that each replica
// gets half of the requests' first tries whatever failed before (the
// default balancer steers traffic away from a replica that fails or
// hangs, which leaves retries little to do), and what retries do is all
// there is to see.
const clientConfig = "accessLog: true\nloadBalancing: {policy: round-robin, outlierDetection: {consecutiveFailures: 0}}\n"

func startRetryMesh(t *testing.T) *retryMesh {
	t.Helper()
	_, pods := newLabWith(t, "cli", "r1", "r2", "ns")
	m := &retryMesh{cli: pods[0], r1: pods[1], r2: pods[2]}
	nsPod := pods[3]
	startApp(t, m.r1)
	startApp(t, m.r2)
	apiID := "spiffe://" + meshTD + "/ns/default/sa/api"
	z := &zone{identity: apiID}
	z.set(30, m.r1, m.r2)
	z.serve(t, nsPod)

	dir := publicTempDir(t)
	resolv := filepath.Join(dir, "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver "+nsPod.IPv4.String()+"\n"), 0o644)
	ca := meshCA(t)
	co := meshOpts(issueFor(t, ca, m.cli), "strict", m.cli, m.r1, m.r2)
	co.proxyConfig = clientConfig
	co.proxyArgs = append(co.proxyArgs, "--resolv-conf", resolv)
	co.redirectArgs = []string{"--capture-dns", "--dns-servers", nsPod.IPv4.String()}
	m.sc = enroll(t, m.cli, co)
	m.cfg = clientConfig
	if i := slices.Index(m.sc.proc.Cmd.Args, "--config"); i >= 0 {
		m.cfgFile = m.sc.proc.Cmd.Args[i+1]
	}
	for _, p := range []*topology.Pod{m.r1, m.r2} {
		enroll(t, p, meshOpts(issueAs(t, ca, p, apiID), "strict", m.cli, m.r1, m.r2))
	}
	m.ep = map[*topology.Pod]string{m.r1: hostPort(m.r1.IPv4, 8080), m.r2: hostPort(m.r2.IPv4, 8080)}

	dnsServer := hostPort(nsPod.IPv4, 53)
	m.app = m.cli.NameClient(dnsServer, 20*time.Second, true)
	m.fresh = m.cli.NameClient(dnsServer, 20*time.Second, false)
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return m.cli.Dial(ctx, network, dnsServer)
	}}
	m.resolve = func(ctx context.Context, hostport string) (string, error) {
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			return "", err
		}
		ips, err := r.LookupNetIP(ctx, "ip4", host)
		if err != nil {
			return "", err
		}
		return net.JoinHostPort(ips[0].String(), port), nil
	}
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		a, err := m.resolve(ctx, addr)
		if err != nil {
			return nil, err
		}
		return m.cli.Dial(ctx, network, a)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	m.h2 = &http.Client{Transport: tr, Timeout: 20 * time.Second}
	return m
}

const apiURL = "http://api.example.test:8080"

// replicaControl commands a replica's faults (POST /control?query), from
// inside its pod.
func replicaControl(t *testing.T, pod *topology.Pod, query string) {
	t.Helper()
	out, err := pod.Run(ctxFor(t, 20*time.Second), "curl", "-sS", "--fail", "-X", "POST", "http://127.0.0.1:8080/control?"+query)
	if err != nil {
		t.Fatalf("POST /control?%s in %s: %v\n%s", query, pod.Name, err, out)
	}
}

// replicaStats reads a replica's counters (GET /stats), from inside its pod.
func replicaStats(t *testing.T, pod *topology.Pod) demoapp.Stats {
	t.Helper()
	code, body, err := podGet(pod, "http://127.0.0.1:8080/stats")
	var s demoapp.Stats
	if err == nil {
		err = json.Unmarshal([]byte(body), &s)
	}
	if err != nil || code != 200 {
		t.Fatalf("GET /stats in %s: %d %v", pod.Name, code, err)
	}
	return s
}

// since is what a replica's counters counted between then and now.
func since(now, then demoapp.Stats) demoapp.Stats {
	return demoapp.Stats{Requests: now.Requests - then.Requests, Failed: now.Failed - then.Failed, Cancelled: now.Cancelled - then.Cancelled}
}

// reload rewrites the client sidecar's config with res as its resilience
// section and waits until it is in effect.
func (m *retryMesh) reload(t *testing.T, res string) {
	t.Helper()
	before := strings.Count(m.sc.proc.Output(), `"config reloaded"`)
	cfg := clientConfig + res
	tmp := m.cfgFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, m.cfgFile); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the client sidecar's config reloaded", 10*time.Second, func() bool {
		return strings.Count(m.sc.proc.Output(), `"config reloaded"`) > before
	})
	m.cfg = cfg
}

// metric sums a counter of the client sidecar over the samples whose
// labels hold all of want.
func (m *retryMesh) metric(t *testing.T, name string, want ...string) float64 {
	t.Helper()
	return m.sc.metrics(t).Sum(name, want...)
}

// load sends n requests (GET without a body) to url over 8 connections
// of the app's and returns how many did not get a 200, and how long it
// took.
func (m *retryMesh) load(t *testing.T, method, url string, n int) (failed int, took time.Duration) {
	t.Helper()
	start := time.Now()
	got := tally(n, 8, func() string {
		req, _ := http.NewRequest(method, url, nil)
		resp, err := m.app.Do(req)
		if err != nil {
			return "failed"
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return "failed"
		}
		return "200"
	})
	return got["failed"], time.Since(start)
}

// accessLines returns the client sidecar's access log lines of outbound
// requests, from the from-th on.
func (m *retryMesh) accessLines(from int) []logLine {
	var out []logLine
	sc := bufio.NewScanner(strings.NewReader(m.sc.proc.Output()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l["msg"] == "request" && l["direction"] == "outbound" {
			out = append(out, l)
		}
	}
	if from > len(out) {
		return nil
	}
	return out[from:]
}

// TestResilienceRetries: issue 16's acceptance for timeouts and retries,
// with real replicas that fail on command, through a client sidecar that
// finds them through its DNS proxy.
func TestResilienceRetries(t *testing.T) {
	needRoot(t)
	m := startRetryMesh(t)
	// Warm up: both replicas answer, connections are pooled.
	if failed, _ := m.load(t, "GET", apiURL+"/", 20); failed != 0 {
		t.Fatalf("%d of 20 warm-up requests failed\n%s", failed, m.sc.warnings(10))
	}

	t.Run("one replica failing 30%", func(t *testing.T) {
		// With no resilience section at all: the built-in defaults retry
		// a GET's 503, up to twice, on another endpoint, within a budget
		// of 20% of the requests plus 3 a second.
		replicaControl(t, m.r1, "fail=0.3")
		defer replicaControl(t, m.r1, "")
		s1, s2 := replicaStats(t, m.r1), replicaStats(t, m.r2)
		retries0 := m.metric(t, "meshgate_retries_total", "destination=default")
		lines0 := len(m.accessLines(0))
		const n = 2000
		failed, took := m.load(t, "GET", apiURL+"/", n)
		d1, d2 := since(replicaStats(t, m.r1), s1), since(replicaStats(t, m.r2), s2)
		retries := m.metric(t, "meshgate_retries_total", "destination=default") - retries0
		exhausted := m.metric(t, "meshgate_retry_budget_exhausted_total", "destination=default")
		t.Logf("%d requests in %v: %d failed at the client; %v retries (%v refused by the budget in all); r1 %+v, r2 %+v",
			n, took.Round(time.Millisecond), failed, retries, exhausted, d1, d2)
		if failed*1000 >= 5*n {
			t.Errorf("%d of %d requests failed at the client: want under 0.5%%", failed, n)
		}
		// Every 503 of r1's was retried, but those the client saw.
		if int64(retries) != d1.Failed-int64(failed) || d2.Failed != 0 {
			t.Errorf("%v retries, r1 failed %d, r2 failed %d, %d failed at the client: want retries = r1's failures - the client's",
				retries, d1.Failed, d2.Failed, failed)
		}
		// The replicas saw each request once, and each retry once more.
		if got := d1.Requests + d2.Requests; got != n+int64(retries) {
			t.Errorf("the replicas saw %d requests, want %d + %v retries", got, n, retries)
		}
		if max := 0.2*(n+20) + 3*(took.Seconds()+1); retries > max {
			t.Errorf("%v retries, more than the budget's %.0f (20%% of %d requests and the warm-up's 20, + 3 a second)", retries, max, n)
		}
		// Every retry went to the other replica: every request tried
		// twice was answered by r2 (r1 was its first try: r2 never fails).
		// (The lines are read from the sidecar's output as they come.)
		eventually(t, 5*time.Second, func() error {
			retried, onR2 := 0, 0
			for _, l := range m.accessLines(lines0) {
				if a, _ := l["attempts"].(float64); a >= 2 {
					retried++
					if l["endpoint"] == m.ep[m.r2] {
						onR2++
					}
				}
			}
			if retried != int(retries) || onR2 != retried {
				return fmt.Errorf("the access log has %d requests tried more than once, %d of them answered by r2 (%s); want %v, all",
					retried, onR2, m.ep[m.r2], retries)
			}
			return nil
		})
	})

	t.Run("POST", func(t *testing.T) {
		replicaControl(t, m.r1, "fail=1")
		defer replicaControl(t, m.r1, "")
		var postWith func(c *http.Client, body []byte) (int, error)
		post := func(body []byte) (int, error) {
			return postWith(m.app, body)
		}
		postWith = func(c *http.Client, body []byte) (int, error) {
			resp, err := c.Post(apiURL+"/sha256", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				return 0, err
			}
			defer resp.Body.Close()
			io.Copy(io.Discard, resp.Body)
			return resp.StatusCode, nil
		}
		// Not retried unless configured: every request reaches one app,
		// once; those r1 got fail.
		s1, s2 := replicaStats(t, m.r1), replicaStats(t, m.r2)
		retries0 := m.metric(t, "meshgate_retries_total")
		bad := 0
		for range 20 {
			if code, err := post([]byte("small")); err != nil || code != 200 {
				bad++
			}
		}
		d1, d2 := since(replicaStats(t, m.r1), s1), since(replicaStats(t, m.r2), s2)
		if n := m.metric(t, "meshgate_retries_total") - retries0; n != 0 || d1.Requests+d2.Requests != 20 || int64(bad) != d1.Failed || bad == 0 {
			t.Errorf("20 POSTs, POST not configured: %v retries, the replicas saw %d and %d (%d failed), the client %d failures; "+
				"want no retry, each POST seen once, r1's failures the client's", n, d1.Requests, d2.Requests, d1.Failed, bad)
		}

		// Configured: retried, their (small) bodies sent again.
		m.reload(t, "resilience:\n  defaults:\n    retries: {methods: [GET, HEAD, OPTIONS, PUT, DELETE, POST]}\n")
		s1, s2 = replicaStats(t, m.r1), replicaStats(t, m.r2)
		retries0 = m.metric(t, "meshgate_retries_total")
		for i := range 20 {
			if code, err := post([]byte("small")); err != nil || code != 200 {
				t.Errorf("POST %d, POST configured: %d %v, want 200", i, code, err)
			}
		}
		d1, d2 = since(replicaStats(t, m.r1), s1), since(replicaStats(t, m.r2), s2)
		if n := m.metric(t, "meshgate_retries_total") - retries0; int64(n) != d1.Failed || d1.Requests+d2.Requests != 20+int64(n) {
			t.Errorf("20 POSTs, POST configured: %v retries, r1 failed %d; the replicas saw %d and %d", n, d1.Failed, d1.Requests, d2.Requests)
		}

		// A 2 MiB body is over retries.maxBodyBytes (64 KiB): not kept,
		// so not retried even with POST configured. (Each on a connection
		// of its own: r1 answers before it has read the body, and the
		// connection that carried it cannot carry another request.)
		big := bytes.Repeat([]byte("x"), 2<<20)
		s1, s2 = replicaStats(t, m.r1), replicaStats(t, m.r2)
		retries0 = m.metric(t, "meshgate_retries_total")
		good := 0
		for range 10 {
			if code, err := postWith(m.fresh, big); err == nil && code == 200 {
				good++
			}
		}
		d1, d2 = since(replicaStats(t, m.r1), s1), since(replicaStats(t, m.r2), s2)
		if n := m.metric(t, "meshgate_retries_total") - retries0; n != 0 || d1.Requests+d2.Requests != 10 || d1.Failed != d1.Requests ||
			int64(good) != d2.Requests || d1.Requests == 0 {
			t.Errorf("10 POSTs of 2 MiB: %v retries; the replicas saw %d (r1, %d failed) and %d (r2); %d answered 200; "+
				"want none retried, each seen once, r2's answered, some at r1", n, d1.Requests, d1.Failed, d2.Requests, good)
		}
		t.Logf("10 POSTs of 2 MiB with r1 failing: %d reached r1 and failed, none retried", d1.Requests)
	})

	t.Run("2 MiB bodies stream", func(t *testing.T) {
		// Not held back either: 8 uploads of 2 MiB, each paused halfway,
		// have all reached an app while paused, and the client sidecar's
		// heap did not grow by their halves (8 MiB).
		heap := func() float64 { return m.sc.metrics(t)["go_memstats_heap_inuse_bytes"] }
		s1, s2 := replicaStats(t, m.r1), replicaStats(t, m.r2)
		h0 := heap()
		type upload struct {
			pw   *io.PipeWriter
			done chan error
		}
		var ups []upload
		half := bytes.Repeat([]byte("y"), 1<<20)
		for range 8 {
			pr, pw := io.Pipe()
			req, _ := http.NewRequest("POST", apiURL+"/sha256", pr)
			req.ContentLength = 2 << 20
			u := upload{pw: pw, done: make(chan error, 1)}
			go func() {
				resp, err := m.app.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				u.done <- err
			}()
			if _, err := pw.Write(half); err != nil {
				t.Fatal(err)
			}
			ups = append(ups, u)
		}
		defer func() {
			for _, u := range ups {
				u.pw.Close()
			}
		}()
		eventually(t, 10*time.Second, func() error {
			got := since(replicaStats(t, m.r1), s1).Requests + since(replicaStats(t, m.r2), s2).Requests
			if got != 8 {
				return fmt.Errorf("the replicas saw %d of 8 uploads while they were half sent", got)
			}
			return nil
		})
		h1 := heap()
		t.Logf("the client sidecar's heap in use: %.1f MiB before, %.1f MiB with 8 uploads half sent (8 MiB)", h0/(1<<20), h1/(1<<20))
		if h1-h0 > 4<<20 {
			t.Errorf("the client sidecar's heap grew by %.1f MiB with 8 uploads half sent: their bodies are held", (h1-h0)/(1<<20))
		}
		for _, u := range ups {
			u.pw.Write(half)
			u.pw.Close()
		}
		for i, u := range ups {
			if err := <-u.done; err != nil {
				t.Errorf("upload %d: %v", i, err)
			}
		}
	})

	t.Run("a replica hangs", func(t *testing.T) {
		m.reload(t, "resilience:\n  defaults:\n    timeouts: {request: 3s, perTry: 500ms}\n")
		replicaControl(t, m.r1, "delay=1h")
		defer replicaControl(t, m.r1, "")
		s1 := replicaStats(t, m.r1)
		perTry0 := m.metric(t, "meshgate_timeouts_total", "kind=per_try")
		var slow []time.Duration
		for i := range 20 {
			start := time.Now()
			code, name, err := call(m.app, apiURL+"/")
			took := time.Since(start)
			if err != nil || code != 200 || name != "r2" {
				t.Errorf("GET %d: %d from %q (%v) after %v, want 200 from r2", i, code, name, err, took)
			}
			if took > 3*time.Second {
				t.Errorf("GET %d took %v, more than the request timeout (3s)", i, took)
			}
			if took >= 500*time.Millisecond {
				slow = append(slow, took.Round(time.Millisecond))
			}
		}
		fired := m.metric(t, "meshgate_timeouts_total", "kind=per_try") - perTry0
		// The server sidecar cancelled r1's requests at the deadline it was
		// given: r1's app saw each of its clients go away.
		eventually(t, 5*time.Second, func() error {
			if d := since(replicaStats(t, m.r1), s1); d.Cancelled != d.Requests || d.Requests != int64(fired) {
				return fmt.Errorf("r1 saw %d requests, %d cancelled; %v per-try timeouts fired", d.Requests, d.Cancelled, fired)
			}
			return nil
		})
		t.Logf("20 GETs with r1 hanging: %v per-try timeouts, each retried on r2; the requests that met r1 took %v", fired, slow)
		if fired == 0 || len(slow) != int(fired) {
			t.Errorf("%v per-try timeouts and %d requests of 500ms or more: want some, as many", fired, len(slow))
		}
	})

	t.Run("grpc-timeout", func(t *testing.T) {
		// A gRPC call to a server that takes an hour, with grpc-timeout:
		// 100m and no deadline of the client's own: the client sidecar
		// ends it at 100ms with DEADLINE_EXCEEDED, and the server sidecar
		// cancels the app's call.
		s1, s2 := replicaStats(t, m.r1), replicaStats(t, m.r2)
		var took []time.Duration
		for i := range 5 {
			req, _ := http.NewRequest("POST", apiURL+"/grpc.health.v1.Health/Check", bytes.NewReader([]byte{0, 0, 0, 0, 0}))
			req.Header = http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}, "Grpc-Timeout": {"100m"}, "Sleep": {"1h"}}
			start := time.Now()
			resp, err := m.h2.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			took = append(took, time.Since(start))
			if st := resp.Header.Get("Grpc-Status"); resp.StatusCode != 200 || st != "4" {
				t.Errorf("call %d: %d grpc-status %q (%s), want grpc-status 4 (DEADLINE_EXCEEDED)", i, resp.StatusCode, st, resp.Header.Get("X-Meshgate-Error"))
			}
		}
		slices.Sort(took)
		t.Logf("5 calls with grpc-timeout: 100m ended after %v", took)
		if med := took[2]; med < 100*time.Millisecond || med > 120*time.Millisecond {
			t.Errorf("the calls' median time %v, want 100ms ± 20ms", med)
		}
		if took[0] < 100*time.Millisecond || took[4] > 500*time.Millisecond {
			t.Errorf("the calls took %v: none before 100ms, none long after", took)
		}
		eventually(t, 5*time.Second, func() error {
			d1, d2 := since(replicaStats(t, m.r1), s1), since(replicaStats(t, m.r2), s2)
			if d1.Requests+d2.Requests != 5 || d1.Cancelled+d2.Cancelled != 5 {
				return fmt.Errorf("the apps saw %d calls, %d cancelled; want 5, all", d1.Requests+d2.Requests, d1.Cancelled+d2.Cancelled)
			}
			return nil
		})

		// A gRPC client of the app's, with a 100ms deadline: the same.
		cc, err := grpc.NewClient("passthrough:///api.example.test:8080", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				a, err := m.resolve(ctx, addr)
				if err != nil {
					return nil, err
				}
				return m.cli.Dial(ctx, "tcp", a)
			}))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("Check: %v", err)
		}
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "sleep", "1h"), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("Check with a 100ms deadline: %v, want DEADLINE_EXCEEDED", err)
		}
		t.Logf("a gRPC client's call with a 100ms deadline ended after %v: %v", time.Since(start).Round(time.Millisecond), err)
	})
	t.Run("both replicas failing", func(t *testing.T) {
		// Last, as it empties the budget. Its deposits of the runs above
		// expire first, so that this one's retries are counted against
		// its own requests.
		time.Sleep(11 * time.Second)
		replicaControl(t, m.r1, "fail=1")
		replicaControl(t, m.r2, "fail=1")
		defer replicaControl(t, m.r2, "")
		defer replicaControl(t, m.r1, "")
		s1, s2 := replicaStats(t, m.r1), replicaStats(t, m.r2)
		retries0 := m.metric(t, "meshgate_retries_total", "destination=default")
		exhausted0 := m.metric(t, "meshgate_retry_budget_exhausted_total", "destination=default")
		const n = 1000
		failed, took := m.load(t, "GET", apiURL+"/", n)
		d1, d2 := since(replicaStats(t, m.r1), s1), since(replicaStats(t, m.r2), s2)
		retries := m.metric(t, "meshgate_retries_total", "destination=default") - retries0
		exhausted := m.metric(t, "meshgate_retry_budget_exhausted_total", "destination=default") - exhausted0
		t.Logf("%d requests in %v, %d failed; %v retries, %v refused by the budget; r1 %+v, r2 %+v",
			n, took.Round(time.Millisecond), failed, retries, exhausted, d1, d2)
		if failed != n {
			t.Errorf("%d of %d requests failed, want all", failed, n)
		}
		// No retry storm: the replicas saw each request once, and the
		// retries the budget allowed, no more.
		if got := d1.Requests + d2.Requests; got != n+int64(retries) {
			t.Errorf("the replicas saw %d requests, want %d + %v retries", got, n, retries)
		}
		if max := 0.2*n + 3*(took.Seconds()+1); retries > max || retries == 0 {
			t.Errorf("%v retries of %d requests, want some, at most the budget's %.0f (20%% + 3 a second)", retries, n, max)
		}
		// Without the budget each would have been tried 3 times; each
		// retry refused is counted.
		if exhausted < n-retries {
			t.Errorf("%v retries refused by the budget, want %v at least (one per request not retried)", exhausted, n-retries)
		}
	})

}
