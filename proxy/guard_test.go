package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"meshgate/proxy/resilience"
)

// guardApp is an app that answers as the test commands: fail, the
// status of every answer (0: 200, with the path and the request's
// number as the body); hold, when set, what every request waits for
// (or its client to go). ?cc= sets the answer's Cache-Control, ?size=N
// pads its body to N bytes, ?stream=DUR sends part of the body and the
// rest after DUR.
type guardApp struct {
	addr string
	fail atomic.Int32
	mu   sync.Mutex
	hold chan struct{} // guarded by mu
	hits atomic.Int64  // requests that reached it
	gone atomic.Int64  // requests whose client went away while held
}

func startGuardApp(t *testing.T) *guardApp {
	t.Helper()
	a := &guardApp{}
	a.addr = startHTTPApp(t, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := a.hits.Add(1)
		a.mu.Lock()
		hold := a.hold
		a.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-r.Context().Done():
				a.gone.Add(1)
				return
			}
		}
		if s := a.fail.Load(); s != 0 {
			w.WriteHeader(int(s))
			return
		}
		if d, err := time.ParseDuration(r.URL.Query().Get("stream")); err == nil {
			// Part of the body at once, the rest after d.
			io.WriteString(w, "partial ")
			w.(http.Flusher).Flush()
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
			io.WriteString(w, "rest")
			return
		}
		if cc := r.URL.Query().Get("cc"); cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		body := fmt.Sprintf("%s #%d", r.URL.Path, n)
		if size, _ := strconv.Atoi(r.URL.Query().Get("size")); size > len(body) {
			body += strings.Repeat(".", size-len(body))
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	}))
	t.Cleanup(a.release) // before the server's Close, which waits for the requests held
	return a
}

// holdRequests has the requests from now on wait until release.
func (a *guardApp) holdRequests() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hold == nil {
		a.hold = make(chan struct{})
	}
}

// release lets the requests held go, and no longer holds any.
func (a *guardApp) release() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hold != nil {
		close(a.hold)
		a.hold = nil
	}
}

// guardConfig reads a resilience section (YAML, without its key).
func guardConfig(t testing.TB, doc string) resilience.Config {
	t.Helper()
	return configOf(t, "resilience:\n"+doc).Resilience
}

// guardedConfig is testConfig with the resilience section doc (YAML,
// without its key).
func guardedConfig(t testing.TB, doc string) Config {
	t.Helper()
	cfg := testConfig()
	cfg.Resilience = guardConfig(t, doc)
	return cfg
}

// startGuarded starts a pair of sidecars in front of app and returns
// the client sidecar, whose resilience section has the destination api
// (the server sidecar) with the settings api (apiSection).
func startGuarded(t *testing.T, app string, api string) *running {
	t.Helper()
	return startMeshPair(t, app, pairOptions{clientCfg: apiResilience(t, api)}).client
}

// gauge returns the value of the gauge name whose labels are exactly
// want; -1 when there is none.
func (r *running) gauge(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(want) {
				continue
			}
			for _, l := range m.GetLabel() {
				if want[l.GetName()] != l.GetValue() {
					continue series
				}
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// series counts the series of name with label k = v.
func (r *running) series(t *testing.T, name, k, v string) int {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					n++
				}
			}
		}
	}
	return n
}

// resilienceStatus fetches the admin endpoint GET /resilience.
func (r *running) resilienceStatus(t *testing.T) ResilienceStatus {
	t.Helper()
	resp, err := http.Get("http://" + r.Addrs().Admin.String() + "/resilience")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s ResilienceStatus
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// dest returns the status of the destination named key.
func (s ResilienceStatus) dest(t *testing.T, key string) DestinationStatus {
	t.Helper()
	for _, d := range s.Destinations {
		if d.Destination == key {
			return d
		}
	}
	t.Fatalf("/resilience has no destination %q: %+v", key, s)
	return DestinationStatus{}
}

// lastAccess returns the client sidecar's last outbound access log line:
// that of the request just answered (it is written before the answer
// leaves). The HTTP/1 engine's fields point into its buffers, which the
// next requests reuse: a line is read before the next request.
func lastAccess(t *testing.T, r *running) map[string]any {
	t.Helper()
	var last map[string]any
	for _, e := range r.logs.FilterMessage("request").All() {
		if m := e.ContextMap(); m["direction"] == "outbound" {
			last = m
		}
	}
	if last == nil {
		t.Fatal("no outbound access log line")
	}
	return last
}

// TestCircuitBreaker: a destination that fails opens its circuit after
// the configured consecutive failures; then requests are answered 503
// "circuit open" at once, nothing sent (a cacheable GET its stale copy),
// visible in the metrics, the log, the access log and /resilience;
// after openFor a trial request goes through: failing, it opens the
// circuit again, succeeding, it closes it. On both HTTP paths.
func TestCircuitBreaker(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			app := startGuardApp(t)
			cli := startGuarded(t, app.addr, `
circuitBreaker: {consecutiveFailures: 3, openFor: 400ms, halfOpenRequests: 1}
routes:
- name: items
  match: {methods: [GET], paths: ["/items/*"]}
  fallback: {stale: {maxAge: 1m}}
`)
			c := cl.new(t)
			base := "http://" + cli.out()
			if resp, body := get(t, c, base+"/items/1", nil); resp.StatusCode != 200 || body != "/items/1 #1" {
				t.Fatalf("first GET: %d %q", resp.StatusCode, body)
			}
			app.fail.Store(503)
			for i := range 3 {
				if resp, _ := get(t, c, base+"/x", nil); resp.StatusCode != 503 || resp.Header.Get(hdrError) != "" {
					t.Fatalf("failure %d: %d %q; want the app's 503", i, resp.StatusCode, resp.Header.Get(hdrError))
				}
			}
			hits := app.hits.Load()
			resp, body := get(t, c, base+"/x", nil)
			if want := "circuit-breaker: circuit open (destination api)"; resp.StatusCode != 503 || resp.Header.Get(hdrError) != want {
				t.Fatalf("after 3 failures: %d %q %q; want 503 %q", resp.StatusCode, resp.Header.Get(hdrError), body, want)
			}
			checkFields(t, "refused request", lastAccess(t, cli), map[string]string{"status": "503", "circuit": "open", "destination": "api"})
			// The stale copy of a cacheable GET, while open.
			resp, body = get(t, c, base+"/items/1", nil)
			if resp.StatusCode != 200 || body != "/items/1 #1" || resp.Header.Get("Warning") != resilience.StaleWarning || resp.Header.Get("Age") == "" {
				t.Errorf("cached GET while open: %d %q %v; want the stale copy with Age and Warning", resp.StatusCode, body, resp.Header)
			}
			checkFields(t, "stale answer", lastAccess(t, cli), map[string]string{"status": "200", "fallback": "stale"})
			if got := app.hits.Load(); got != hits {
				t.Errorf("the app saw %d requests while the circuit was open", got-hits)
			}
			if got := cli.gauge(t, "meshgate_circuit_state", map[string]string{"destination": "api", "endpoint": ""}); got != 1 {
				t.Errorf("meshgate_circuit_state = %v, want 1 (open)", got)
			}
			if got := cli.counter(t, "meshgate_circuit_transitions_total", map[string]string{"destination": "api", "to": "open"}); got != 1 {
				t.Errorf("transitions to open = %v, want 1", got)
			}
			if n := cli.logs.FilterMessage("circuit opened: requests fail fast").FilterField(zap.String("destination", "api")).Len(); n != 1 {
				t.Errorf("%d 'circuit opened' lines, want 1", n)
			}
			st := cli.resilienceStatus(t).dest(t, "api")
			if b := st.Breaker; b == nil || b.State != "open" || b.OpenUntil == nil || b.OpensAfter != 3 {
				t.Errorf("/resilience breaker: %+v", b)
			}

			// After openFor, one trial: the app still fails, so it opens
			// again.
			time.Sleep(450 * time.Millisecond)
			if resp, _ := get(t, c, base+"/x", nil); resp.StatusCode != 503 || resp.Header.Get(hdrError) != "" {
				t.Fatalf("trial: %d %q; want the app's 503", resp.StatusCode, resp.Header.Get(hdrError))
			}
			if resp, _ := get(t, c, base+"/x", nil); resp.Header.Get(hdrError) == "" {
				t.Fatalf("after a failed trial: %d, want the circuit open again", resp.StatusCode)
			}
			// The app is back: the next trial closes it.
			app.fail.Store(0)
			time.Sleep(450 * time.Millisecond)
			if resp, _ := get(t, c, base+"/x", nil); resp.StatusCode != 200 {
				t.Fatalf("trial with the app back: %d", resp.StatusCode)
			}
			checkFields(t, "trial", lastAccess(t, cli), map[string]string{"circuit": "half-open"})
			for i := range 5 {
				if resp, _ := get(t, c, base+"/x", nil); resp.StatusCode != 200 {
					t.Fatalf("closed, request %d: %d", i, resp.StatusCode)
				}
			}
			if got := cli.gauge(t, "meshgate_circuit_state", map[string]string{"destination": "api", "endpoint": ""}); got != 0 {
				t.Errorf("meshgate_circuit_state = %v, want 0 (closed)", got)
			}
			for to, want := range map[string]float64{"open": 2, "half-open": 2, "closed": 1} {
				if got := cli.counter(t, "meshgate_circuit_transitions_total", map[string]string{"destination": "api", "to": to}); got != want {
					t.Errorf("transitions to %s = %v, want %v", to, got, want)
				}
			}
		})
	}
}

// TestCircuitBreakerGRPC: a gRPC call refused by an open circuit is
// answered UNAVAILABLE, trailers-only, with the reason.
func TestCircuitBreakerGRPC(t *testing.T) {
	cli := startGuarded(t, closedAddr(t).String(), "circuitBreaker: {consecutiveFailures: 2, openFor: 1m}")
	hc := grpcHealthClient(t, cli.out())
	for i := range 2 {
		_, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.Unavailable || strings.Contains(err.Error(), "circuit open") {
			t.Fatalf("call %d with the app down: %v; want UNAVAILABLE from the 502", i, err)
		}
	}
	_, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if s := status.Convert(err); s.Code() != codes.Unavailable || s.Message() != "circuit-breaker: circuit open (destination api)" {
		t.Fatalf("with the circuit open: %v; want UNAVAILABLE, circuit open", err)
	}
}

// TestOneRequestOneFailure: an HTTP request on a new connection to a
// destination whose app is down counts once against its circuit, though
// the mesh connection dialed while the sidecar waited for the app's first
// bytes failed too (the peer sidecar closed it: its app refused).
func TestOneRequestOneFailure(t *testing.T) {
	cli := startGuarded(t, closedAddr(t).String(), "circuitBreaker: {consecutiveFailures: 5, openFor: 1m}")
	c, err := net.Dial("tcp", cli.out())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Silent long enough for the sidecar's dial (made while it waits to
	// hear the app) to reach the peer and be closed by it.
	time.Sleep(300 * time.Millisecond)
	if _, err := c.Write([]byte("GET /x HTTP/1.1\r\nHost: api\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 {
		t.Fatalf("status %d, want the 502 of an app that is down", resp.StatusCode)
	}
	if b := cli.resilienceStatus(t).dest(t, "api").Breaker; b == nil || b.ConsecutiveFailures != 1 {
		t.Errorf("breaker after one failed request: %+v, want 1 consecutive failure", b)
	}
}

// TestEndpointBreaker: with circuit breakers per endpoint, an endpoint
// that fails is left out of the balancing while its circuit is open, and
// the others serve; with every endpoint's open, requests are refused
// with 503 "circuit open".
func TestEndpointBreaker(t *testing.T) {
	good, bad := startGuardApp(t), startGuardApp(t)
	bad.fail.Store(503)
	cm, sm := newMeshCA(t).meshes()
	goodEP := netip.MustParseAddrPort(startProxy(t, testConfig(), WithMeshTLS(sm), to(good.addr)).in())
	badEP := netip.MustParseAddrPort(startProxy(t, testConfig(), WithMeshTLS(sm), to(bad.addr)).in())
	b := &fakeBalancer{eps: []netip.AddrPort{badEP, goodEP}}
	ccfg := guardedConfig(t, apiSection(`
circuitBreaker: {consecutiveFailures: 0, perEndpoint: {consecutiveFailures: 2, openFor: 1m}}
retries: {attempts: 0}   # each 503 is the client's: the breaker alone is tested
`))
	ccfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
	cli := startProxy(t, ccfg, WithMeshTLS(cm), WithBalancer(b), to(badEP.String()))
	c := h1Client(t)
	var got []int
	for range 10 {
		resp, _ := get(t, c, "http://"+cli.out()+"/", nil)
		got = append(got, resp.StatusCode)
	}
	if bad.hits.Load() != 2 || good.hits.Load() != 8 {
		t.Errorf("statuses %v: the bad endpoint served %d, the good %d; want 2 and 8", got, bad.hits.Load(), good.hits.Load())
	}
	if got := cli.gauge(t, "meshgate_circuit_state", map[string]string{"destination": "api", "endpoint": badEP.String()}); got != 1 {
		t.Errorf("the bad endpoint's circuit state %v, want 1", got)
	}
	if got := cli.gauge(t, "meshgate_circuit_state", map[string]string{"destination": "api", "endpoint": goodEP.String()}); got != 0 {
		t.Errorf("the good endpoint's circuit state %v, want 0", got)
	}
	eps := cli.resilienceStatus(t).dest(t, "api").Endpoints
	if len(eps) != 2 || eps[0].State == eps[1].State {
		t.Errorf("/resilience endpoints: %+v", eps)
	}

	// The good one fails too: once its circuit opens, nothing is left.
	good.fail.Store(503)
	for range 2 {
		get(t, c, "http://"+cli.out()+"/", nil)
	}
	hits := good.hits.Load() + bad.hits.Load()
	resp, _ := get(t, c, "http://"+cli.out()+"/", nil)
	if want := "circuit-breaker: circuit open (every endpoint of api)"; resp.StatusCode != 503 || resp.Header.Get(hdrError) != want {
		t.Errorf("every endpoint open: %d %q; want 503 %q", resp.StatusCode, resp.Header.Get(hdrError), want)
	}
	if good.hits.Load()+bad.hits.Load() != hits {
		t.Error("a request went to an endpoint whose circuit is open")
	}
}

// TestBulkhead: requests over a destination's maxActive are refused at
// once with 503 "overflow", nothing sent, counted; the places are given
// back when the requests end, and when their clients go away.
func TestBulkhead(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			app := startGuardApp(t)
			cli := startGuarded(t, app.addr, "bulkhead: {maxActive: 2}")
			base := "http://" + cli.out()
			c := cl.new(t)
			get(t, c, base+"/warm", nil) // the mesh connection is set up
			app.holdRequests()
			var wg sync.WaitGroup
			for range 2 {
				wg.Go(func() {
					if resp, _ := get(t, c, base+"/slow", nil); resp.StatusCode != 200 {
						t.Errorf("held request: %d", resp.StatusCode)
					}
				})
			}
			waitFor(t, func() bool { return app.hits.Load() == 3 })
			start := time.Now()
			resp, _ := get(t, c, base+"/more", nil)
			took := time.Since(start)
			if want := "bulkhead: overflow (maxActive 2, destination api)"; resp.StatusCode != 503 || resp.Header.Get(hdrError) != want {
				t.Errorf("third request: %d %q; want 503 %q", resp.StatusCode, resp.Header.Get(hdrError), want)
			}
			if took > time.Second || app.hits.Load() != 3 {
				t.Errorf("the overflow took %v and reached the app %d times", took, app.hits.Load()-3)
			}
			if got := cli.counter(t, "meshgate_overflows_total", map[string]string{"destination": "api", "limit": "active"}); got != 1 {
				t.Errorf("overflows = %v, want 1", got)
			}
			checkFields(t, "overflow", lastAccess(t, cli), map[string]string{"status": "503", "overflow": "active"})
			if a := cli.resilienceStatus(t).dest(t, "api").Bulkhead.Active; a != (Usage{InUse: 2, Max: 2}) {
				t.Errorf("/resilience active: %+v, want 2 of 2", a)
			}
			app.release()
			wg.Wait()
			waitFor(t, func() bool { return cli.resilienceStatus(t).dest(t, "api").Bulkhead.Active.InUse == 0 })

			// Clients that go away give their places back: at once on the
			// HTTP/2 path (the request is cancelled), once the upstream
			// answers on the HTTP/1 engine's.
			app.holdRequests()
			ctx, cancel := context.WithCancel(context.Background())
			for range 2 {
				wg.Go(func() {
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/gone", nil)
					if resp, err := c.Do(req); err == nil {
						resp.Body.Close()
					}
				})
			}
			waitFor(t, func() bool { return app.hits.Load() == 5 })
			cancel()
			wg.Wait()
			if cl.name == "http1" {
				app.release()
			}
			waitFor(t, func() bool { return cli.resilienceStatus(t).dest(t, "api").Bulkhead.Active.InUse == 0 })
			app.release()
			if resp, _ := get(t, c, base+"/after", nil); resp.StatusCode != 200 {
				t.Errorf("after the clients went: %d", resp.StatusCode)
			}

			// A client that goes away in the middle of the answer: the
			// HTTP/2 path aborts its handler (a panic, as ReverseProxy's),
			// the HTTP/1 engine fails its next write; the place is given
			// back either way.
			ctx, cancel = context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/stream?stream=300ms", nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if a := cli.resilienceStatus(t).dest(t, "api").Bulkhead.Active; a.InUse != 1 {
				t.Errorf("while the answer streams: %+v active, want 1", a)
			}
			cancel()
			resp.Body.Close()
			waitFor(t, func() bool { return cli.resilienceStatus(t).dest(t, "api").Bulkhead.Active.InUse == 0 })
		})
	}
}

// TestBulkheadConnections: a request that needs a connection to its
// destination beyond maxConnections is refused (overflow); the place is
// given back when the connection closes.
func TestBulkheadConnections(t *testing.T) {
	app := startGuardApp(t)
	cli := startGuarded(t, app.addr, "bulkhead: {maxConnections: 1}")
	base := "http://" + cli.out()
	get(t, h1Client(t), base+"/warm", nil)
	app.holdRequests()
	done := make(chan int)
	go func() {
		resp, _ := get(t, h1Client(t), base+"/slow", nil)
		done <- resp.StatusCode
	}()
	waitFor(t, func() bool { return app.hits.Load() == 2 })
	resp, _ := get(t, h1Client(t), base+"/second", nil)
	if want := "bulkhead: overflow (maxConnections 1, destination api)"; resp.StatusCode != 503 || resp.Header.Get(hdrError) != want {
		t.Errorf("a second connection: %d %q; want 503 %q", resp.StatusCode, resp.Header.Get(hdrError), want)
	}
	checkFields(t, "overflow", lastAccess(t, cli), map[string]string{"overflow": "connections"})
	if got := cli.counter(t, "meshgate_overflows_total", map[string]string{"destination": "api", "limit": "connections"}); got != 1 {
		t.Errorf("overflows = %v, want 1", got)
	}
	if c := cli.resilienceStatus(t).dest(t, "api").Bulkhead.Connections; c != (Usage{InUse: 1, Max: 1}) {
		t.Errorf("/resilience connections: %+v", c)
	}
	app.release()
	if s := <-done; s != 200 {
		t.Errorf("held request: %d", s)
	}
	if resp, _ := get(t, h1Client(t), base+"/third", nil); resp.StatusCode != 200 {
		t.Errorf("with the connection back in the pool: %d", resp.StatusCode)
	}
	cli.l7.closeIdle()
	waitFor(t, func() bool { return cli.resilienceStatus(t).dest(t, "api").Bulkhead.Connections.InUse == 0 })
}

// TestBulkheadPending: requests waiting for a connection to their
// destination (here, one whose connects hang) are at most maxPending;
// the next is refused at once.
func TestBulkheadPending(t *testing.T) {
	hole := blackhole(t)
	cfg := guardedConfig(t, apiSection("bulkhead: {maxPending: 1}"))
	cfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
	cfg.Timeouts.Connect = Duration(time.Second)
	cfg.Protocols.Ports = map[uint16]PortProtocol{netip.MustParseAddrPort(hole).Port(): PortHTTP}
	cm, _ := newMeshCA(t).meshes()
	cli := startProxy(t, cfg, WithMeshTLS(cm), to(hole))
	done := make(chan int)
	go func() {
		resp, _ := get(t, h1Client(t), "http://"+cli.out()+"/waits", nil)
		done <- resp.StatusCode
	}()
	waitFor(t, func() bool { return cli.resilienceStatus(t).dest(t, "api").Bulkhead.Pending.InUse == 1 })
	resp, _ := get(t, h1Client(t), "http://"+cli.out()+"/next", nil)
	if want := "bulkhead: overflow (maxPending 1, destination api)"; resp.StatusCode != 503 || resp.Header.Get(hdrError) != want {
		t.Errorf("while one waits to connect: %d %q; want 503 %q", resp.StatusCode, resp.Header.Get(hdrError), want)
	}
	if s := <-done; s != http.StatusGatewayTimeout && s != http.StatusBadGateway {
		t.Errorf("the request that waited: %d, want a connect failure", s)
	}
	if p := cli.resilienceStatus(t).dest(t, "api").Bulkhead.Pending; p.InUse != 0 {
		t.Errorf("pending after the connect failed: %+v", p)
	}
}

// TestRetryPlaces: a retry takes a place under maxRetries (tryRetry)
// until doneRetry, the request's next retry or its end; none left, it is
// refused and counted.
func TestRetryPlaces(t *testing.T) {
	p := newProxy(t, guardedConfig(t, `
  destinations:
  - name: api
    match: {cidrs: [10.0.0.0/8]}
    bulkhead: {maxRetries: 1}
`))
	g := p.guards.forDst(netip.MustParseAddrPort("10.0.0.7:80"), time.Now())
	var gc, other guardCall
	for _, c := range []*guardCall{&gc, &other} {
		if e := c.admit(g, g.pol.Route("GET", "/"), time.Now()); e != nil {
			t.Fatal(e)
		}
	}
	if !gc.tryRetry() {
		t.Fatal("first retry refused")
	}
	if !gc.tryRetry() {
		t.Fatal("the same request's next retry refused: its first is over")
	}
	if other.tryRetry() {
		t.Fatal("another request's retry at once allowed; maxRetries is 1")
	}
	if other.note.overflow != "retries" {
		t.Errorf("note %+v, want overflow retries", other.note)
	}
	gc.doneRetry()
	if !other.tryRetry() {
		t.Fatal("retry after doneRetry refused")
	}
	other.end() // gives its retry's place back
	if !gc.tryRetry() {
		t.Fatal("retry after the other request's end refused")
	}
	gc.end()
	if got := p.guards.status(time.Now()).Destinations[0].Bulkhead.Retries; got != (Usage{InUse: 0, Max: 1}) {
		t.Errorf("retries in use after: %+v", got)
	}
	var none guardCall // a destination without a guard
	if !none.tryRetry() {
		t.Error("no guard: a retry refused")
	}
	none.doneRetry()
}

// TestStaleFallback: a route's stale fallback keeps the last good answer
// to each cacheable GET, within its bounds, and answers it, with Age and
// Warning, when the destination fails; a GET with nothing kept (or not
// cacheable, or too large to keep) gets the static fallback; a kept
// answer past maxAge is not served.
func TestStaleFallback(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			app := startGuardApp(t)
			cli := startGuarded(t, app.addr, `
routes:
- name: items
  match: {paths: ["/items/*"]}
  fallback:
    stale: {maxAge: 1m, maxBytes: 2048}
    static: {status: 200, headers: {content-type: application/json}, body: '{"items": []}'}
- name: short
  match: {paths: ["/short/*"]}
  fallback: {stale: {maxAge: 300ms}}
`)
			c := cl.new(t)
			base := "http://" + cli.out()
			for _, path := range []string{"/items/a", "/items/big?size=4096", "/items/private?cc=no-store", "/short/s"} {
				if resp, _ := get(t, c, base+path, nil); resp.StatusCode != 200 {
					t.Fatalf("%s: %d", path, resp.StatusCode)
				}
			}
			sc := cli.resilienceStatus(t).dest(t, "api").StaleCaches
			if len(sc) != 2 || sc[0].Route != "items" || sc[0].Entries != 1 || sc[0].Bytes > 2048 || sc[0].MaxBytes != 2048 || sc[1].Entries != 1 {
				t.Errorf("/resilience stale caches: %+v; want items with 1 entry of at most 2048 bytes, short with 1", sc)
			}
			app.fail.Store(503)
			resp, body := get(t, c, base+"/items/a", nil)
			age, _ := strconv.Atoi(resp.Header.Get("Age"))
			if resp.StatusCode != 200 || body != "/items/a #1" || resp.Header.Get("Warning") != resilience.StaleWarning || age < 0 || age > 5 ||
				resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
				t.Errorf("kept GET, app failing: %d %q %v; want the stale copy", resp.StatusCode, body, resp.Header)
			}
			checkFields(t, "stale", lastAccess(t, cli), map[string]string{"status": "200", "fallback": "stale", "destination": "api"})
			for _, path := range []string{"/items/big?size=4096", "/items/private?cc=no-store", "/items/never"} {
				resp, body := get(t, c, base+path, nil)
				if resp.StatusCode != 200 || body != `{"items": []}` || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Warning") != "" {
					t.Errorf("%s, app failing: %d %q %v; want the static fallback", path, resp.StatusCode, body, resp.Header)
				}
			}
			if resp, _ := get(t, c, base+"/short/s", nil); resp.StatusCode != 200 {
				t.Errorf("/short/s within its maxAge: %d, want the stale copy", resp.StatusCode)
			}
			time.Sleep(350 * time.Millisecond)
			if resp, _ := get(t, c, base+"/short/s", nil); resp.StatusCode != 503 {
				t.Errorf("/short/s past its maxAge: %d, want the app's 503", resp.StatusCode)
			}
			if resp, _ := get(t, c, base+"/other", nil); resp.StatusCode != 503 {
				t.Errorf("no fallback: %d, want the app's 503", resp.StatusCode)
			}
			for kind, want := range map[string]float64{"stale": 1, "static": 3} {
				if got := cli.counter(t, "meshgate_fallbacks_served_total", map[string]string{"destination": "api", "route": "items", "kind": kind}); got != want {
					t.Errorf("fallbacks served, %s: %v, want %v", kind, got, want)
				}
			}
		})
	}
}

// TestStaticFallbackWhenRefused: a request the bulkhead refuses gets
// the static fallback, a HEAD its head alone.
func TestStaticFallbackWhenRefused(t *testing.T) {
	app := startGuardApp(t)
	cli := startGuarded(t, app.addr, `
bulkhead: {maxActive: 1}
fallback: {static: {status: 503, headers: {retry-after: "5"}, body: "busy, try later"}}
`)
	base := "http://" + cli.out()
	get(t, h1Client(t), base+"/warm", nil)
	app.holdRequests()
	done := make(chan struct{})
	go func() { defer close(done); get(t, h1Client(t), base+"/slow", nil) }()
	waitFor(t, func() bool { return app.hits.Load() == 2 })
	resp, body := get(t, h1Client(t), base+"/more", nil)
	if resp.StatusCode != 503 || body != "busy, try later" || resp.Header.Get("Retry-After") != "5" || resp.Header.Get(hdrError) != "" {
		t.Errorf("over the bulkhead: %d %q %v; want the static fallback", resp.StatusCode, body, resp.Header)
	}
	req, _ := http.NewRequest(http.MethodHead, base+"/more", nil)
	hr, err := h1Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	hr.Body.Close()
	if hr.StatusCode != 503 || hr.ContentLength != int64(len("busy, try later")) {
		t.Errorf("HEAD over the bulkhead: %d, length %d", hr.StatusCode, hr.ContentLength)
	}
	app.release()
	<-done
}

// TestGuardReload: a reload keeps the state of a destination whose name
// and settings are unchanged (an open circuit stays open), starts afresh
// one whose settings changed, and drops one gone, with its metrics; the
// default policy's state, per destination address, is bounded.
func TestGuardReload(t *testing.T) {
	doc := func(openFor string) string {
		return `
  defaults:
    bulkhead: {maxActive: 100}
  destinations:
  - name: api
    match: {cidrs: [10.0.0.0/8]}
    circuitBreaker: {consecutiveFailures: 1, openFor: ` + openFor + `}
`
	}
	p := newProxy(t, guardedConfig(t, doc("1m")))
	api := netip.MustParseAddrPort("10.0.0.7:80")
	now := time.Now()
	g := p.guards.forDst(api, now)
	var gc guardCall
	if e := gc.admit(g, g.pol.Route("GET", "/"), now); e != nil {
		t.Fatal(e)
	}
	gc.outcome(false, now)
	gc.end()
	state := func() string {
		return p.guards.forDst(api, time.Now().Add(time.Hour)).breaker.State(time.Now()).String()
	}
	if s := state(); s != "open" {
		t.Fatalf("after a failure: %s", s)
	}
	other := netip.MustParseAddrPort("192.0.2.1:80")
	dg := p.guards.forDst(other, now)
	if dg == nil || dg.key != "default/192.0.2.1:80" {
		t.Fatalf("a default destination's guard: %+v", dg)
	}

	// The same settings, and another destination: kept.
	if err := p.ReloadResilience(guardConfig(t, doc("1m")+`
  - name: web
    match: {ports: [8080]}
    bulkhead: {maxActive: 5}
`)); err != nil {
		t.Fatal(err)
	}
	if s := state(); s != "open" {
		t.Errorf("after a reload that changed nothing of api: %s, want still open", s)
	}
	if p.guards.forDst(other, time.Now().Add(time.Hour)).guardState != dg.guardState {
		t.Error("a default destination's state was not kept")
	}
	// Changed: a fresh breaker, and its gauge from the start.
	if err := p.ReloadResilience(guardConfig(t, doc("2m"))); err != nil {
		t.Fatal(err)
	}
	if s := state(); s != "closed" {
		t.Errorf("after openFor changed: %s, want closed (fresh)", s)
	}
	if got := p.gauge(t, "meshgate_circuit_state", map[string]string{"destination": "api", "endpoint": ""}); got != 0 {
		t.Errorf("gauge after the change: %v", got)
	}
	// Gone: no guard, no series.
	if err := p.ReloadResilience(resilience.Config{}); err != nil {
		t.Fatal(err)
	}
	if g := p.guards.forDst(api, time.Now().Add(time.Hour)); g != nil {
		t.Errorf("a guard for a destination no longer configured: %s", g.key)
	}
	if n := p.series(t, "meshgate_circuit_state", "destination", "api") + p.series(t, "meshgate_circuit_transitions_total", "destination", "api"); n != 0 {
		t.Errorf("%d series of api left after it was removed", n)
	}

	// The default policy's states are bounded.
	if err := p.ReloadResilience(guardConfig(t, doc("1m"))); err != nil {
		t.Fatal(err)
	}
	for i := range defaultGuards + 10 {
		p.guards.forDst(netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, byte(i >> 8), byte(i)}), 80), now)
	}
	if n := len(p.guards.status(now).Destinations); n != defaultGuards+1 {
		t.Errorf("%d destinations kept, want %d (the default's bounded) and api", n, defaultGuards+1)
	}
	if n := p.series(t, "meshgate_overflows_total", "limit", "active"); n > defaultGuards+1 {
		t.Errorf("%d overflow series: the evicted destinations' are left", n)
	}
}

// TestGuardOpaque: opaque TCP connections go through their
// destination's circuit breaker: connections that fail open it, and the
// next are refused at once, without a dial.
func TestGuardOpaque(t *testing.T) {
	dead := closedAddr(t)
	cli := startProxy(t, guardedConfig(t, `
  destinations:
  - name: db
    match: {cidrs: [127.0.0.1/32]}
    circuitBreaker: {consecutiveFailures: 2, openFor: 1m}
`), to(dead.String()))
	for i := range 3 {
		// Refused with a reset, which may come while connecting.
		if c, err := net.DialTimeout("tcp", cli.out(), 5*time.Second); err == nil {
			c.Write([]byte("\x00\x01 not http\n"))
			expectClosed(t, c, 5*time.Second)
			c.Close()
		}
		cli.closedLogs(t, i+1)
	}
	logs := cli.closedLogs(t, 3)
	if got := field(logs[2], "reason"); got != "circuit-breaker: circuit open (destination db)" {
		t.Errorf("third connection: reason %q; want circuit open", got)
	}
	if got := cli.metric(t, "meshgate_tcp_connect_failures_total", Outbound); got != 2 {
		t.Errorf("%v connect failures, want 2 (the third not dialed)", got)
	}
}

// TestEndpointBreakersBounded: a destination keeps breakers for at most
// endpointBreakersMax endpoints; a new one takes a closed one's place,
// and when none is closed it goes without.
func TestEndpointBreakersBounded(t *testing.T) {
	p := newProxy(t, guardedConfig(t, `
  destinations:
  - name: api
    match: {cidrs: [10.0.0.0/8]}
    circuitBreaker: {consecutiveFailures: 0, perEndpoint: {consecutiveFailures: 1, openFor: 1m}}
`))
	eps := p.guards.forDst(netip.MustParseAddrPort("10.0.0.7:80"), time.Now()).eps
	ep := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 80)
	}
	for i := range endpointBreakersMax + 10 {
		eps.get(ep(i))
	}
	if n := len(eps.m); n != endpointBreakersMax {
		t.Errorf("%d endpoint breakers kept, want %d", n, endpointBreakersMax)
	}
	if n := p.series(t, "meshgate_circuit_state", "destination", "api"); n != endpointBreakersMax {
		t.Errorf("%d state series, want %d", n, endpointBreakersMax)
	}
	// Every one open: no room for another.
	now := time.Now()
	for _, eb := range eps.m {
		tk, _ := eb.b.Allow(now)
		eb.b.Done(tk, false, now)
	}
	if eb := eps.get(ep(999)); eb != nil {
		t.Error("a breaker made with every kept one open")
	}
	if avoid := eps.open(nil, now); len(avoid) != endpointBreakersMax {
		t.Errorf("%d endpoints to avoid, want %d", len(avoid), endpointBreakersMax)
	}
}
