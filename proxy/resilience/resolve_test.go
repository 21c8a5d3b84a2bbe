package resilience

import (
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
)

func compile(t testing.TB, cfg Config) *Table {
	t.Helper()
	tb, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func dest(addr string, id string, names ...string) Dest {
	ap := netip.MustParseAddrPort(addr)
	d := Dest{Names: names, IP: ap.Addr(), Port: ap.Port()}
	if id != "" {
		d.Identity = spiffeid.RequireFromString(id)
	}
	return d
}

// TestLookup: the first entry whose every list holds wins, in config
// order; hosts match the destination's names, identities its SPIFFE ID,
// cidrs and ports its address; nothing matching gives the default.
func TestLookup(t *testing.T) {
	tb := compile(t, parse(t, `
resilience:
  destinations:
  - name: api-8080
    match: {hosts: [api.shop.mesh], ports: [8080]}
  - name: api-any
    match: {hosts: [api.shop.mesh, "*.api.shop.mesh"]}
  - name: shop-ns
    match: {identities: ["spiffe://td/ns/shop/*"]}
  - name: db
    match: {cidrs: [10.9.0.0/16, "fd00:9::/32"], ports: [5432]}
  - name: web-pinned
    match: {hosts: [web.mesh], identities: ["spiffe://td/ns/web/sa/web"]}
  - match: {ports: [6379]}
`))
	for _, tc := range []struct {
		name string
		dst  Dest
		want string
	}{
		{"host and port", dest("10.0.0.1:8080", "", "api.shop.mesh"), "api-8080"},
		{"host, any case, trailing dot", dest("10.0.0.1:8080", "", "API.Shop.Mesh."), "api-8080"},
		{"host, other port: the next entry", dest("10.0.0.1:9090", "", "api.shop.mesh"), "api-any"},
		{"one of several names", dest("10.0.0.1:9090", "", "x.example", "api.shop.mesh"), "api-any"},
		{"wildcard host", dest("10.0.0.1:80", "", "v2.api.shop.mesh"), "api-any"},
		{"host wins over a later identity", dest("10.0.0.1:80", "spiffe://td/ns/shop/sa/api", "api.shop.mesh"), "api-any"},
		{"identity", dest("10.0.0.1:80", "spiffe://td/ns/shop/sa/cart"), "shop-ns"},
		{"identity of another namespace", dest("10.0.0.1:80", "spiffe://td/ns/other/sa/cart"), DefaultName},
		{"cidr and port", dest("10.9.3.4:5432", ""), "db"},
		{"cidr, IPv4-mapped address", dest("[::ffff:10.9.3.4]:5432", ""), "db"},
		{"cidr IPv6", dest("[fd00:9::5]:5432", ""), "db"},
		{"cidr, other port", dest("10.9.3.4:5433", ""), DefaultName},
		{"port, outside the cidr", dest("10.8.3.4:5432", ""), DefaultName},
		{"host and identity both", dest("10.0.0.1:80", "spiffe://td/ns/web/sa/web", "web.mesh"), "web-pinned"},
		{"host without the identity", dest("10.0.0.1:80", "spiffe://td/ns/web/sa/evil", "web.mesh"), DefaultName},
		{"identity without the host", dest("10.0.0.1:80", "spiffe://td/ns/web/sa/web"), DefaultName},
		{"ports only", dest("192.0.2.1:6379", ""), "*:6379"},
		{"no name, no identity", dest("192.0.2.1:80", ""), DefaultName},
	} {
		got := tb.Lookup(tc.dst)
		if got.Key() != tc.want {
			t.Errorf("%s: %s; want %s", tc.name, got.Key(), tc.want)
		}
		if got.IsDefault() != (tc.want == DefaultName) {
			t.Errorf("%s: IsDefault %v", tc.name, got.IsDefault())
		}
	}
	var keys []string
	for _, d := range tb.Destinations() {
		keys = append(keys, d.Key())
	}
	if d := cmp.Diff([]string{"api-8080", "api-any", "shop-ns", "db", "web-pinned", "*:6379", DefaultName}, keys); d != "" {
		t.Errorf("Destinations (-want +got):\n%s", d)
	}
}

// TestBuiltinDefault: with no section (a nil table too), every
// destination gets the built-in policy of issue 16: idempotent requests
// retried twice on connect failure, reset and 503, within a budget of
// 0.2 plus 3 a second; no breaker, bulkhead, fallback, mirror or fault.
func TestBuiltinDefault(t *testing.T) {
	want := &Policy{
		Retry: RetryPolicy{
			Attempts: 2,
			Methods:  MethodGet | MethodHead | MethodOptions | MethodPut | MethodDelete,
			Backoff:  BackoffPolicy{Base: 25 * time.Millisecond, Max: 250 * time.Millisecond},
			// On is compared below.
			MaxBodyBytes:  64 << 10,
			MaxRetryAfter: 10 * time.Second,
		},
	}
	for name, tb := range map[string]*Table{"nil table": nil, "empty section": compile(t, Config{})} {
		d := tb.Lookup(dest("10.0.0.1:80", "spiffe://td/ns/a/sa/b", "a.mesh"))
		if d.Key() != DefaultName || !d.IsDefault() || d != tb.Default() {
			t.Errorf("%s: %s", name, d.Key())
		}
		if d.Budget != (BudgetPolicy{Ratio: 0.2, MinPerSecond: 3}) {
			t.Errorf("%s: budget %+v", name, d.Budget)
		}
		if d.Breaker.Enabled() || d.EndpointBreaker.Enabled() || d.Bulkhead.Enabled() || d.TCPFaults.Enabled() {
			t.Errorf("%s: %+v", name, d)
		}
		p := d.Route("POST", "/x")
		if p != d.Policy() || p.Dest() != d || p.RouteName() != "" {
			t.Errorf("%s: Route gave another policy", name)
		}
		on := p.Retry.On
		if !on.ConnectFailure || !on.Reset || on.GRPC != 0 {
			t.Errorf("%s: on %+v", name, on)
		}
		for s := 100; s < 600; s++ {
			if on.Statuses.Has(s) != (s == 503) {
				t.Errorf("%s: status %d: %v", name, s, on.Statuses.Has(s))
			}
		}
		got := *p
		got.Retry.On, got.dest = Conditions{}, nil
		if d := cmp.Diff(*want, got, cmp.AllowUnexported(Policy{})); d != "" {
			t.Errorf("%s: policy (-want +got):\n%s", name, d)
		}
		if p.Fallback.Enabled() || p.Mirror.Enabled() || p.Faults.Enabled() {
			t.Errorf("%s: %+v", name, p)
		}
		if p.Retry.Methods.Has("POST") || !p.Retry.Methods.Has("DELETE") || p.Retry.Methods.String() != "GET,HEAD,PUT,DELETE,OPTIONS" {
			t.Errorf("%s: methods %s", name, p.Retry.Methods)
		}
	}
}

// TestMerge: a route's timeouts and retries are merged field by field
// over its destination's, and those over the defaults; fallback, mirror
// and faults are taken whole from the narrowest level, {} turning them
// off; per-destination settings are merged with the defaults.
func TestMerge(t *testing.T) {
	tb := compile(t, parse(t, `
resilience:
  defaults:
    timeouts: {connect: 2s, request: 20s, idle: 10m}
    retries: {attempts: 1, maxRetryAfter: 1s, budget: {ratio: 0.5}}
    circuitBreaker: {openFor: 30s, perEndpoint: {consecutiveFailures: 2}}
    bulkhead: {maxActive: 100, maxPending: 10}
  destinations:
  - name: api
    match: {hosts: [api.mesh]}
    timeouts: {request: 5s, perTry: 1s}
    retries:
      on: [connect-failure, "502", 503, "429", unavailable, RESOURCE_EXHAUSTED]
      backoff: {base: 10ms}
      budget: {minPerSecond: 7}
    circuitBreaker: {consecutiveFailures: 3, failureRate: {percent: 50}, perEndpoint: {}}
    bulkhead: {maxActive: 0, maxConnections: 5}
    fallback: {static: {status: 503, headers: {retry-after: "5", x-custom: a}, body: down}}
    mirror: {to: "Audit.Mesh.:9000", percent: 10}
    faults: {delay: {duration: 1s}}
    tcpFaults: {delay: {duration: 2s, percent: 5}, reset: {}}
    routes:
    - name: search
      match: {methods: [GET, HEAD], paths: ["/search", "/search/*"]}
      timeouts: {request: 2s}
      retries: {attempts: 3, methods: [GET]}
      fallback: {stale: {}}
      mirror: {}
    - name: pay
      match: {methods: [POST], paths: ["/orders/*/pay"]}
      retries: {attempts: 0}
      faults: {abort: {grpc: unavailable, percent: 5}}
    - match: {paths: ["/admin/*"]}
      faults: {}
  - name: plain
    match: {hosts: [plain.mesh]}
    circuitBreaker: {consecutiveFailures: 0}
`))
	api := tb.Lookup(dest("10.0.0.1:80", "", "api.mesh"))
	if api.Key() != "api" {
		t.Fatalf("lookup: %s", api.Key())
	}
	if api.Budget != (BudgetPolicy{Ratio: 0.2, MinPerSecond: 7}) {
		t.Errorf("budget %+v: taken whole from the destination", api.Budget)
	}
	wantBreaker := BreakerPolicy{ConsecutiveFailures: 3, FailurePercent: 50, FailureWindow: 10 * time.Second,
		FailureMinRequests: 20, OpenFor: 30 * time.Second, HalfOpenRequests: 1}
	if api.Breaker != wantBreaker {
		t.Errorf("breaker %+v\nwant %+v", api.Breaker, wantBreaker)
	}
	if api.EndpointBreaker.Enabled() {
		t.Errorf("perEndpoint {} left a breaker: %+v", api.EndpointBreaker)
	}
	if api.Bulkhead != (BulkheadPolicy{MaxConnections: 5, MaxPending: 10}) {
		t.Errorf("bulkhead %+v", api.Bulkhead)
	}
	if api.TCPFaults != (TCPFaultPolicy{Delay: 2 * time.Second, DelayPercent: 5, ResetPercent: 100}) {
		t.Errorf("tcp faults %+v", api.TCPFaults)
	}

	base := api.Policy()
	if base.Timeouts != (TimeoutPolicy{Connect: 2 * time.Second, Request: 5 * time.Second, PerTry: time.Second, Idle: 10 * time.Minute}) {
		t.Errorf("destination timeouts %+v", base.Timeouts)
	}
	r := base.Retry
	if r.Attempts != 1 || r.MaxRetryAfter != time.Second || r.Backoff != (BackoffPolicy{10 * time.Millisecond, 100 * time.Millisecond}) {
		t.Errorf("destination retries %+v", r)
	}
	for _, s := range []int{429, 502, 503} {
		if !r.On.Statuses.Has(s) {
			t.Errorf("status %d not retried", s)
		}
	}
	if r.On.Statuses.Has(504) || r.On.Statuses.Has(500) || r.On.Statuses.Has(-1) || r.On.Statuses.Has(1000) {
		t.Error("a status not listed is retried")
	}
	if !r.On.GRPC.Has(codes.Unavailable) || !r.On.GRPC.Has(codes.ResourceExhausted) || r.On.GRPC.Has(codes.Internal) || r.On.Reset {
		t.Errorf("on %+v", r.On)
	}
	st := base.Fallback.Static
	if st == nil || st.Status != 503 || string(st.Body) != "down" ||
		!cmp.Equal(st.Header, http.Header{"Retry-After": {"5"}, "X-Custom": {"a"}}) || base.Fallback.Stale != nil {
		t.Errorf("destination fallback %+v %+v", base.Fallback, st)
	}
	if base.Mirror == nil || *base.Mirror != (MirrorPolicy{Addr: "audit.mesh:9000", Host: "audit.mesh", Port: 9000, Percent: 10, MaxConcurrent: 10, MaxBodyBytes: 64 << 10}) {
		t.Errorf("mirror %+v", base.Mirror)
	}
	if base.Faults != (FaultPolicy{Delay: time.Second, DelayPercent: 100}) {
		t.Errorf("faults %+v", base.Faults)
	}

	search := api.Route("GET", "/search/books")
	if search.RouteName() != "search" || search.Dest() != api {
		t.Fatalf("route %q", search.RouteName())
	}
	if search.Timeouts != (TimeoutPolicy{Connect: 2 * time.Second, Request: 2 * time.Second, PerTry: time.Second, Idle: 10 * time.Minute}) {
		t.Errorf("route timeouts %+v", search.Timeouts)
	}
	if search.Retry.Attempts != 3 || search.Retry.Methods != MethodGet || search.Retry.On != r.On || search.Retry.Backoff != r.Backoff {
		t.Errorf("route retries %+v", search.Retry)
	}
	if search.Fallback.Static != nil || search.Fallback.Stale == nil || *search.Fallback.Stale != (StalePolicy{MaxAge: 5 * time.Minute, MaxBytes: 1 << 20}) {
		t.Errorf("route fallback %+v: the route's, whole", search.Fallback)
	}
	if search.Mirror.Enabled() || search.Mirror != nil {
		t.Errorf("mirror {} left %+v", search.Mirror)
	}
	if search.Faults != base.Faults {
		t.Errorf("route faults %+v: the destination's", search.Faults)
	}
	pay := api.Route("POST", "/orders/42/pay")
	if pay.RouteName() != "pay" || pay.Retry.Attempts != 0 ||
		pay.Faults != (FaultPolicy{AbortGRPC: codes.Unavailable, AbortPercent: 5}) || pay.Fallback != base.Fallback {
		t.Errorf("pay: %q %+v %+v", pay.RouteName(), pay.Retry, pay.Faults)
	}
	admin := api.Route("DELETE", "/admin/users")
	if admin.RouteName() != "/admin/*" || admin.Faults.Enabled() {
		t.Errorf("admin: %q %+v", admin.RouteName(), admin.Faults)
	}
	// Routes that take the destination's mirror share it (and its cap on
	// copies in flight), and its stale cache; a route's own is its own.
	if pay.Mirror != base.Mirror || admin.Mirror != base.Mirror {
		t.Error("routes inheriting the mirror have one of their own")
	}
	if other := api.Route("GET", "/x"); other != base {
		t.Error("an unmatched request did not get the destination's own policy")
	}
	for _, tc := range []struct{ method, path, want string }{
		{"HEAD", "/search", "search"},
		{"POST", "/search", ""}, // the method is not the route's
		{"GET", "/searching", ""},
		{"POST", "/orders/42/refund", ""},
		{"PURGE", "/search", ""}, // a method no route can name
		{"GET", "/admin/x", "/admin/*"},
	} {
		if got := api.Route(tc.method, tc.path).RouteName(); got != tc.want {
			t.Errorf("%s %s: route %q; want %q", tc.method, tc.path, got, tc.want)
		}
	}

	plain := tb.Lookup(dest("10.0.0.1:80", "", "plain.mesh"))
	if plain.Breaker.Enabled() {
		t.Errorf("consecutiveFailures 0 left a breaker: %+v", plain.Breaker)
	}
	if plain.EndpointBreaker != (BreakerPolicy{ConsecutiveFailures: 2, OpenFor: 10 * time.Second, HalfOpenRequests: 1}) {
		t.Errorf("defaults' perEndpoint: %+v", plain.EndpointBreaker)
	}
	if plain.Budget != (BudgetPolicy{Ratio: 0.5, MinPerSecond: 3}) || plain.Bulkhead != (BulkheadPolicy{MaxActive: 100, MaxPending: 10}) {
		t.Errorf("defaults: %+v %+v", plain.Budget, plain.Bulkhead)
	}
	if p := plain.Policy(); p.Mirror.Enabled() || p.Fallback.Enabled() || p.Faults.Enabled() || p.Retry.Attempts != 1 {
		t.Errorf("plain: %+v", p)
	}
	// The defaults are the unmatched destinations' too.
	def := tb.Lookup(dest("10.0.0.1:80", ""))
	if def.Key() != DefaultName || def.Policy().Timeouts.Request != 20*time.Second || def.Policy().Retry.Attempts != 1 ||
		def.Breaker != (BreakerPolicy{ConsecutiveFailures: 5, OpenFor: 30 * time.Second, HalfOpenRequests: 1}) {
		t.Errorf("default: %+v %+v", def.Policy().Timeouts, def.Breaker)
	}
}

// TestNames: unnamed destinations and routes are named after their
// match, whatever else changes; a name taken gets #2, #3, ...
func TestNames(t *testing.T) {
	tb := compile(t, parse(t, `
resilience:
  destinations:
  - match: {hosts: [api.mesh, web.mesh], ports: [80, 443, 8080]}
    routes:
    - match: {methods: [GET, HEAD], paths: ["/a/*", /b]}
    - match: {paths: [/c]}
    - match: {methods: [POST]}
    - {name: POST, match: {methods: [PUT]}}
  - match: {identities: ["spiffe://td/ns/a/*"]}
  - match: {cidrs: [10.0.0.0/8, 192.168.0.0/16], ports: [5432]}
  - match: {hosts: [web.mesh]}
  - name: web.mesh
    match: {hosts: [www.mesh]}
  - match: {hosts: [web.mesh], ports: [1]}
  - match: {hosts: [web.mesh], ports: [1, 2]}
  - match: {hosts: [default]}
  - match: {}
`))
	var got []string
	for _, d := range tb.Destinations() {
		got = append(got, d.Key())
	}
	want := []string{"api.mesh+1:80+2", "spiffe://td/ns/a/*", "10.0.0.0/8+1:5432", "web.mesh#2", "web.mesh",
		"web.mesh:1", "web.mesh:1+1", "default#2", "*", DefaultName}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("destination names (-want +got):\n%s", d)
	}
	d := tb.Destinations()[0]
	var routes []string
	for _, r := range []struct{ m, p string }{{"GET", "/a/x"}, {"GET", "/c"}, {"POST", "/"}, {"PUT", "/"}} {
		routes = append(routes, d.Route(r.m, r.p).RouteName())
	}
	if d := cmp.Diff([]string{"GET,HEAD /a/*+1", "/c", "POST#2", "POST"}, routes); d != "" {
		t.Errorf("route names (-want +got):\n%s", d)
	}
}

// TestNoAllocs: Lookup and Route allocate nothing.
func TestNoAllocs(t *testing.T) {
	tb := benchTable(t, 20)
	dst := dest("10.0.0.1:8080", "spiffe://td/ns/shop/sa/svc10", "svc10.shop.mesh")
	if n := testing.AllocsPerRun(100, func() {
		d := tb.Lookup(dst)
		if d.Route("GET", "/api/items/7").RouteName() != "items" {
			t.Fatal("wrong route")
		}
	}); n != 0 {
		t.Errorf("%v allocations per lookup and route", n)
	}
}

// benchTable has n destinations by host and port, each with routes, a
// CIDR entry and a catch-all.
func benchTable(t testing.TB, n int) *Table {
	var cfg Config
	for i := range n {
		cfg.Destinations = append(cfg.Destinations, Destination{
			Match: &Match{Hosts: []string{fmt.Sprintf("svc%d.shop.mesh", i), fmt.Sprintf("*.svc%d.shop.mesh", i)}, Ports: []uint16{8080}},
			Routes: []Route{
				{Name: "admin", Match: &RouteMatch{Paths: []string{"/admin/*"}}},
				{Name: "orders", Match: &RouteMatch{Methods: []string{"POST"}, Paths: []string{"/api/orders", "/api/orders/*"}}},
				{Name: "user-orders", Match: &RouteMatch{Paths: []string{"/users/*/orders"}}},
				{Name: "items", Match: &RouteMatch{Methods: []string{"GET", "HEAD"}, Paths: []string{"/api/items/*"}}},
			},
		})
	}
	cfg.Destinations = append(cfg.Destinations,
		Destination{Match: &Match{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Ports: []uint16{5432}}},
		Destination{Match: &Match{}})
	return compile(t, cfg)
}

// BenchmarkLookup: the destination of a connection, matched by host at
// the middle of 20 entries, by CIDR after them, and by nothing but the
// catch-all.
func BenchmarkLookup(b *testing.B) {
	tb := benchTable(b, 20)
	for _, bc := range []struct {
		name string
		dst  Dest
	}{
		{"host-10th-of-20", dest("10.0.0.1:8080", "", "svc10.shop.mesh")},
		{"cidr-after-20", dest("10.1.2.3:5432", "")},
		{"catch-all", dest("192.0.2.1:443", "", "example.com")},
		{"default-empty-table", dest("192.0.2.1:443", "", "example.com")},
	} {
		t := tb
		if bc.name == "default-empty-table" {
			t = compile(b, Config{})
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				t.Lookup(bc.dst)
			}
		})
	}
}

// BenchmarkRoute: a request's policy among 4 routes: the last one, and
// none (the destination's own).
func BenchmarkRoute(b *testing.B) {
	d := benchTable(b, 1).Lookup(dest("10.0.0.1:8080", "", "svc0.shop.mesh"))
	for _, bc := range []struct{ name, method, path string }{
		{"4th-of-4", "GET", "/api/items/7"},
		{"no-route", "GET", "/"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				d.Route(bc.method, bc.path)
			}
		})
	}
}
