package proxy

import (
	"bufio"
	"context"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"meshgate/proxy/resilience"
)

// resilienceOf parses a config holding a resilience section for a test.
func resilienceOf(t testing.TB, doc string) func(*Config) {
	t.Helper()
	cfg := configOf(t, doc)
	return func(c *Config) { c.Resilience = cfg.Resilience }
}

// seeded is a seeded random source for withFaultRandom, safe for
// concurrent use: two made with the same seed give the same numbers, so
// a test knows which of its serial requests a share picks.
func seeded(seed uint64) func() float64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func() float64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Float64()
	}
}

// picked is how many of n rolls of a source seeded with seed fall under
// percent, as the stages roll them.
func picked(seed uint64, n int, percent float64) int {
	r, k := seeded(seed), 0
	for range n {
		if r()*100 < percent {
			k++
		}
	}
	return k
}

// apiSection is a resilience section (YAML, below its key) of one
// destination, api: every address on 127.0.0.1, which in a pair is the
// server sidecar's inbound listener. settings are api's (YAML, as under
// a destination).
func apiSection(settings string) string {
	return "  destinations:\n  - name: api\n    match: {cidrs: [127.0.0.1/32]}\n" + indent(settings, "    ")
}

// apiResilience gives a config the resilience section apiSection(settings).
func apiResilience(t testing.TB, settings string) func(*Config) {
	t.Helper()
	return resilienceOf(t, "resilience:\n"+apiSection(settings))
}

// TestFaultAbort: an abort rule of 10% answers its share of requests
// with the configured status and reason, without sending them, over
// HTTP/1.1 and HTTP/2 alike: with a seeded random source exactly the
// requests its rolls pick, within 10% ± 3% of 1000; each counted and
// logged.
func TestFaultAbort(t *testing.T) {
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			app, seen := startL7App(t)
			p := startMeshPair(t, app, pairOptions{
				clientCfg:  apiResilience(t, "faults: {abort: {status: 503, percent: 10}}"),
				clientOpts: []Option{withFaultRandom(seeded(1))},
			})
			client := c.new(t)
			const n = 1000
			aborted := 0
			for i := range n {
				a := do(t, client, http.MethodGet, "http://"+p.client.out()+"/api/items", nil)
				switch {
				case a.status == http.StatusServiceUnavailable && a.why == "fault: abort":
					aborted++
				case a.status != http.StatusOK:
					t.Fatalf("request %d: %+v", i, a)
				}
			}
			want := picked(1, n, 10)
			t.Logf("%d of %d requests aborted (the seeded rolls pick %d)", aborted, n, want)
			if aborted != want || math.Abs(float64(aborted)-n*0.1) > n*0.03 {
				t.Errorf("%d aborted; want %d, 10%% ± 3%% of %d", aborted, want, n)
			}
			if got := len(seen()); got != n-aborted {
				t.Errorf("the app saw %d requests; want the %d not aborted", got, n-aborted)
			}
			if got := p.client.counter(t, "meshgate_faults_injected_total", map[string]string{"destination": "api", "route": "", "kind": "abort"}); got != float64(aborted) {
				t.Errorf("meshgate_faults_injected_total{kind=abort} = %v; want %d", got, aborted)
			}
			logged := 0
			for _, e := range p.client.logs.FilterMessage("request").All() {
				if field(e, "fault") == "abort" {
					logged++
					if field(e, "reason") != "fault: abort (destination api)" || field(e, "status") != "503" {
						t.Errorf("an aborted request's line: reason %s, status %s", field(e, "reason"), field(e, "status"))
					}
				}
			}
			if logged != aborted {
				t.Errorf("%d access log lines say fault: abort; want %d", logged, aborted)
			}
		})
	}
}

// TestFaultAbortGRPC: a gRPC call gets the abort's gRPC status, the gRPC
// way, or its HTTP status when it sets none; a request that is not gRPC
// is not aborted by a rule with a gRPC status alone.
func TestFaultAbortGRPC(t *testing.T) {
	for _, c := range []struct {
		name, abort string
		code        codes.Code
		msg         string
	}{
		{"grpc status", "{status: 503, grpc: resource-exhausted}", codes.ResourceExhausted, "fault: abort"},
		{"http status alone", "{status: 503}", codes.Unavailable, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := startMeshPair(t, grpcHealthServer(t), pairOptions{
				clientCfg: apiResilience(t, "faults: {abort: "+c.abort+"}"),
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := grpcHealthClient(t, p.client.out()).Check(ctx, &healthpb.HealthCheckRequest{})
			st, _ := status.FromError(err)
			if st.Code() != c.code || c.msg != "" && st.Message() != c.msg {
				t.Errorf("Check: %v; want %v %q", err, c.code, c.msg)
			}
		})
	}
	t.Run("grpc alone, not gRPC", func(t *testing.T) {
		app, _ := startL7App(t)
		p := startMeshPair(t, app, pairOptions{
			clientCfg: apiResilience(t, "faults: {abort: {grpc: unavailable}}"),
		})
		for _, client := range []*http.Client{h1Client(t), h2cClient(t)} {
			if a := do(t, client, http.MethodGet, "http://"+p.client.out()+"/", nil); a.status != http.StatusOK {
				t.Errorf("a request that is not gRPC: %+v; want 200", a)
			}
		}
	})
}

// TestFaultDelay: a delay rule holds its share of requests for its
// duration before they are sent (with a seeded random source, exactly
// those its rolls pick); a route's rule holds for the route's requests
// alone, and a route's faults: {} turns the destination's off; a request
// both delayed and aborted is delayed first.
func TestFaultDelay(t *testing.T) {
	app, seen := startL7App(t)
	p := startMeshPair(t, app, pairOptions{
		clientCfg: apiResilience(t, `
faults: {delay: {duration: 300ms, percent: 50}}
routes:
- name: slow
  match: {paths: [/slow]}
  faults: {delay: {duration: 300ms}, abort: {status: 500}}
- name: fast
  match: {paths: [/fast]}
  faults: {}
`),
		clientOpts: []Option{withFaultRandom(seeded(7))},
	})
	base := "http://" + p.client.out()
	for _, client := range []*http.Client{h1Client(t), h2cClient(t)} {
		start := time.Now()
		if a := do(t, client, http.MethodGet, base+"/slow", nil); a.status != 500 || a.why != "fault: abort" {
			t.Errorf("/slow: %+v; want 500 fault: abort", a)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Errorf("/slow answered in %v; want the 300ms delay first", d)
		}
		for range 5 {
			if a := do(t, client, http.MethodGet, base+"/fast", nil); a.status != 200 {
				t.Errorf("/fast: %+v", a)
			}
		}
	}
	// The destination's own rule, 50%: /slow rolled twice per request
	// (delay, abort), /fast not at all, then one roll per request.
	rolls := seeded(7)
	for range 4 {
		rolls()
	}
	want := 0
	for range 20 {
		if rolls()*100 < 50 {
			want++
		}
	}
	client := h1Client(t)
	for range 20 {
		if a := do(t, client, http.MethodGet, base+"/other", nil); a.status != 200 {
			t.Fatalf("/other: %+v", a)
		}
	}
	// By fault alone: the observer keeps the HTTP/1 engine's path as
	// bytes the connection's next request overwrites.
	got := map[string]int{}
	for _, e := range p.client.logs.FilterMessage("request").All() {
		got[field(e, "fault")]++
		if field(e, "fault") == "delay" {
			if d, _ := time.ParseDuration(field(e, "duration")); d < 300*time.Millisecond {
				t.Errorf("a request delayed 300ms took %v", d)
			}
		}
	}
	if want := map[string]int{"delay,abort": 2, "<missing>": 10 + 20 - want, "delay": want}; !maps.Equal(got, want) {
		t.Errorf("access log lines by fault: %v; want %v", got, want)
	}
	if n := p.client.counter(t, "meshgate_faults_injected_total", map[string]string{"destination": "api", "route": "", "kind": "delay"}); n != float64(want) {
		t.Errorf("delays counted for the destination: %v; want %d", n, want)
	}
	if n := p.client.counter(t, "meshgate_faults_injected_total", map[string]string{"destination": "api", "route": "slow"}); n != 4 {
		t.Errorf("faults counted for route slow: %v; want 4 (2 delays, 2 aborts)", n)
	}
	if got := len(seen()); got != 10+20 {
		t.Errorf("the app saw %d requests; want 30 (none of /slow's)", got)
	}
}

// TestFaultDelayClientGone: a client that goes away while its request
// is delayed ends the delay: the request is not sent, nothing is left
// waiting, and its log line says so long before the delay would have
// ended; over HTTP/1.1 (the engine watches the client's socket) and
// HTTP/2 (the stream's context).
func TestFaultDelayClientGone(t *testing.T) {
	app, seen := startL7App(t)
	p := startMeshPair(t, app, pairOptions{
		clientCfg: apiResilience(t, "faults: {delay: {duration: 1m}}"),
	})
	gone := func() int {
		n := 0
		for _, e := range p.client.logs.FilterMessage("request").All() {
			if field(e, "reason") == "fault: delay: the client went away" && field(e, "status") == "499" {
				n++
			}
		}
		return n
	}
	t.Run("http1", func(t *testing.T) {
		c := dial(t, p.client.out())
		if _, err := io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		start := time.Now()
		c.Close()
		waitFor(t, func() bool { return gone() == 1 })
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("the delay ended %v after the client left", d)
		}
	})
	t.Run("h2c", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.client.out()+"/b", nil)
		if _, err := h2cClient(t).Do(req); err == nil {
			t.Fatal("a request delayed 1m answered within 100ms")
		}
		start := time.Now()
		waitFor(t, func() bool { return gone() == 2 })
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("the delay ended %v after the client left", d)
		}
	})
	if n := len(seen()); n != 0 {
		t.Errorf("the app saw %d requests whose clients had gone", n)
	}
}

// TestFaultHTTP1BodyAfterDelay: a request whose body comes while it is
// delayed gets to the app whole once the delay is over, and the client
// connection carries the next request.
func TestFaultHTTP1BodyAfterDelay(t *testing.T) {
	app := startRawApp(t, func(req *http.Request, body []byte) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body)
	})
	p := startMeshPair(t, app, pairOptions{
		clientCfg: apiResilience(t, "faults: {delay: {duration: 200ms}}"),
	})
	c := dial(t, p.client.out())
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i := range 2 {
		io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
		time.Sleep(50 * time.Millisecond) // the body comes during the delay
		io.WriteString(c, "hello")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "hello" {
			t.Errorf("request %d: %d %q", i, resp.StatusCode, b)
		}
	}
}

// TestFaultStageOnlyWithFaults: the fault and mirror stages are in the
// outbound chain only while some destination (or route) has faults or a
// mirror, so that they cost nothing otherwise; a reload adds and removes
// them.
func TestFaultStageOnlyWithFaults(t *testing.T) {
	p := newProxy(t, testConfig())
	names := func() []string {
		var out []string
		for _, s := range p.chains.Load()[Outbound] {
			out = append(out, s.Name())
		}
		return out
	}
	if n := names(); slices.Contains(n, stageFault) || slices.Contains(n, stageMirror) {
		t.Errorf("with no resilience section: %v", n)
	}
	for _, c := range []struct {
		doc  string
		want []string
	}{
		{"  - match: {ports: [80]}\n    routes:\n    - match: {paths: [/x]}\n      faults: {abort: {status: 503}}\n", []string{stageFault}},
		{"  - match: {ports: [80]}\n    mirror: {to: 'audit:80'}\n", []string{stageMirror}},
		{"  - match: {ports: [80]}\n    tcpFaults: {reset: {percent: 1}}\n    mirror: {to: 'audit:80', percent: 5}\n    faults: {delay: {duration: 1s, percent: 1}}\n",
			[]string{stageFault, stageMirror}},
		{"  - match: {ports: [80]}\n    mirror: {to: 'audit:80', percent: 0}\n    faults: {delay: {duration: 1s, percent: 0}}\n", nil},
	} {
		if err := p.ReloadResilience(configOf(t, "resilience:\n  destinations:\n"+c.doc).Resilience); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, n := range names() {
			if n == stageFault || n == stageMirror {
				got = append(got, n)
			}
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: the chain has %v; want %v", c.doc, got, c.want)
		}
		if n := names(); len(c.want) > 0 && n[len(n)-len(c.want)-1] != stageRateLimit && n[len(n)-len(c.want)-1] != "policy" {
			t.Errorf("the stages are not right after policy / rate-limit: %v", n)
		}
	}
	if err := p.ReloadResilience(resilience.Config{}); err != nil {
		t.Fatal(err)
	}
	if n := names(); slices.Contains(n, stageFault) || slices.Contains(n, stageMirror) {
		t.Errorf("after a reload without the section: %v", n)
	}
}

// BenchmarkFaultStage is the fault stage's cost per request: with
// faults configured but not firing (the roll above their share), and
// with an abort firing (the cost of making the answer). The stage is not
// in the chain without faults (TestFaultStageOnlyWithFaults).
func BenchmarkFaultStage(b *testing.B) {
	for _, bc := range []struct {
		name, faults string
		roll         float64
	}{
		{"not-firing", "{delay: {duration: 1s, percent: 50}, abort: {status: 503, percent: 50}}", 0.99},
		{"abort-firing", "{abort: {status: 503}}", 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := testConfig()
			resilienceOf(b, `
resilience:
  destinations:
  - name: other
    match: {cidrs: [10.9.0.0/16]}
    faults: {abort: {status: 503}}
  - name: api
    match: {hosts: [api.shop.mesh], ports: [8080]}
    faults: `+bc.faults+"\n")(&cfg)
			p, err := New(cfg, nil, withFaultRandom(func() float64 { return bc.roll }), WithHostNames(apiNames))
			if err != nil {
				b.Fatal(err)
			}
			st := faultStage{p, p.inject.state.Load()}
			req, _ := http.NewRequest(http.MethodGet, "/api/items", nil)
			req.RequestURI = "/api/items"
			r := &Request{Dir: Outbound, Dst: netip.MustParseAddrPort("10.0.0.2:8080"), msg: httpFields{req}}
			b.ReportAllocs()
			for b.Loop() {
				if a := st.Decide(r); (a != nil) != (bc.roll == 0) {
					b.Fatalf("answer %v", a)
				}
				r.inject = injectNotes{}
			}
		})
	}
}

// staticNames is a HostNamer of fixed names.
type staticNames map[netip.Addr]string

func (s staticNames) NameOf(a netip.Addr) (string, bool) {
	n, ok := s[a]
	return n, ok
}

// apiNames names 10.0.0.2 api.shop.mesh.
var apiNames = staticNames{netip.MustParseAddr("10.0.0.2"): "api.shop.mesh"}
