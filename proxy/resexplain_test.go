package proxy

import (
	"bytes"
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"meshgate/proxy/resilience"
)

// explainOf is what explain says of the call v describes (the admin
// API's query parameters) under cfg.
func explainOf(t *testing.T, cfg Config, v url.Values) *ExplainResult {
	t.Helper()
	q, err := ParseExplainQuery(v, func(k string) string { return k })
	if err != nil {
		t.Fatal(err)
	}
	res, err := Explain(context.Background(), cfg, q)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// explainResilienceText is what explain says of the resilience policy of
// the call v describes under cfg.
func explainResilienceText(t *testing.T, cfg Config, v url.Values) string {
	t.Helper()
	res := explainOf(t, cfg, v)
	var b bytes.Buffer
	res.Resilience.format(&b)
	return b.String()
}

// TestExplainResilience: explain says which resilience policy an
// outbound call gets: its destination, route, timeouts and retries, and
// nothing of faults, mirrors, breakers, bulkheads or fallbacks when the
// config sets none.
func TestExplainResilience(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
resilience:
  destinations:
  - name: api
    match: {hosts: [api.shop.mesh]}
    timeouts: {request: 5s, perTry: 1s}
    retries: {on: [connect-failure, "503", unavailable, cancelled], budget: {ratio: 0.1, minPerSecond: 5}}
    routes:
    - {name: checkout, match: {methods: [POST], paths: [/checkout]}, retries: {attempts: 0}}
`))
	if err != nil {
		t.Fatal(err)
	}
	explain := func(v url.Values) string { t.Helper(); return explainResilienceText(t, cfg, v) }
	out := url.Values{"direction": {"outbound"}, "port": {"8080"}, "to-host": {"api.shop.mesh"}, "method": {"GET"}, "path": {"/items"}}
	// The gRPC codes as retries.on writes them: cancelled, not Go's
	// Canceled.
	want := `resilience:
  destination api
  route       none (the destination's own settings)
  timeouts    connect 10s (timeouts.connect), idle 1h0m0s (timeouts.idle), request 5s, perTry 1s, streamIdle none
  retries     attempts 2 on [connect-failure, 503, cancelled, unavailable], methods GET,HEAD,PUT,DELETE,OPTIONS, backoff 25ms to 250ms, maxBodyBytes 65536, maxRetryAfter 10s
  budget      0.1 of the destination's requests + 5 a second
`
	if diff := cmp.Diff(want, explain(out)); diff != "" {
		t.Errorf("explain GET /items (-want +got):\n%s", diff)
	}
	out.Set("method", "POST")
	out.Set("path", "/checkout")
	if got := explain(out); !strings.Contains(got, "route       checkout\n") || !strings.Contains(got, "retries     none (attempts 0)\n") {
		t.Errorf("explain POST /checkout:\n%s", got)
	}
	out.Set("to-host", "db.shop.mesh")
	if got := explain(out); !strings.Contains(got, "destination default (no entry") {
		t.Errorf("explain of another host:\n%s", got)
	}
	if got := explain(url.Values{"port": {"8080"}}); got != "" {
		t.Errorf("explain inbound: %q, want nothing of resilience", got)
	}
}

// TestExplainResilienceInjectAndGuard: explain says which faults a
// request may meet and where its copies go (why a request got a 503 it
// never sent, why the audit service sees it), and the circuit breakers,
// bulkhead and fallback of its destination, as its route has them: a
// route's faults and mirror replace the destination's, and {} turns them
// off. A connection that is not HTTP gets the destination's TCP faults,
// breakers and maxConnections, and nothing of what only requests meet.
func TestExplainResilienceInjectAndGuard(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
resilience:
  destinations:
  - name: shop-api
    match: {hosts: [api.shop.mesh]}
    circuitBreaker:
      consecutiveFailures: 5
      failureRate: {percent: 50, window: 30s, minRequests: 20}
      openFor: 10s
      halfOpenRequests: 2
      perEndpoint: {consecutiveFailures: 3, openFor: 30s}
    bulkhead: {maxConnections: 100, maxActive: 50}
    fallback: {static: {status: 503, body: "try later"}}
    faults: {delay: {duration: 2s, percent: 10}, abort: {status: 503, grpc: unavailable, percent: 5}}
    mirror: {to: "audit.shop.mesh:8080", percent: 25}
    tcpFaults: {delay: {duration: 500ms, percent: 20}, reset: {percent: 1}}
    routes:
    - name: checkout
      match: {methods: [POST], paths: [/checkout]}
      faults: {}
      mirror: {}
    - name: catalog
      match: {methods: [GET], paths: ["/catalog/*"]}
      faults: {abort: {grpc: resource-exhausted}}
      mirror: {to: "10.0.0.7:9000", percent: 0, maxConcurrent: 3, maxBodyBytes: 0}
      fallback: {stale: {maxAge: 10m}}
  - name: payments
    match: {hosts: [pay.shop.mesh]}
    circuitBreaker: {consecutiveFailures: 0, failureRate: {percent: 25}}
    faults: {abort: {status: 500, percent: 0.5}}
`))
	if err != nil {
		t.Fatal(err)
	}
	call := func(host, method, path string) url.Values {
		v := url.Values{"direction": {"outbound"}, "port": {"8080"}, "to-host": {host}}
		if method != "" {
			v.Set("method", method)
			v.Set("path", path)
		}
		return v
	}
	const head = `  timeouts    connect 10s (timeouts.connect), idle 1h0m0s (timeouts.idle), request none, perTry none, streamIdle none
  retries     attempts 2 on [connect-failure, reset, 503], methods GET,HEAD,PUT,DELETE,OPTIONS, backoff 25ms to 250ms, maxBodyBytes 65536, maxRetryAfter 10s
  budget      0.2 of the destination's requests + 3 a second
`
	const guard = `  breaker     consecutiveFailures 5 or failureRate 50% over 30s (minRequests 20), openFor 10s, halfOpenRequests 2
  perEndpoint consecutiveFailures 3, openFor 30s, halfOpenRequests 1
  bulkhead    maxConnections 100, maxActive 50
`
	for _, c := range []struct {
		name string
		v    url.Values
		want string
	}{{
		name: "the destination's own",
		v:    call("api.shop.mesh", "GET", "/items"),
		want: "resilience:\n  destination shop-api\n  route       none (the destination's own settings)\n" + head +
			"  faults      delay 2s for 10% of requests, then abort 503 (gRPC requests: unavailable) for 5% of requests\n" +
			"  mirror      to audit.shop.mesh:8080, percent 25, maxConcurrent 10, maxBodyBytes 65536\n" +
			guard +
			"  fallback    static 503 (9 bytes of body)\n",
	}, {
		name: "a route that turns faults and mirror off",
		v:    call("api.shop.mesh", "POST", "/checkout"),
		want: "resilience:\n  destination shop-api\n  route       checkout\n" + head + guard +
			"  fallback    static 503 (9 bytes of body)\n",
	}, {
		// A mirror written with percent 0 copies nothing, and says so.
		name: "a route with faults, mirror and fallback of its own",
		v:    call("api.shop.mesh", "GET", "/catalog/shoes"),
		want: "resilience:\n  destination shop-api\n  route       catalog\n" + head +
			"  faults      abort gRPC resource-exhausted for 100% of gRPC requests (others are not aborted: no status)\n" +
			"  mirror      to 10.0.0.7:9000, percent 0, maxConcurrent 3, maxBodyBytes 0\n" +
			guard +
			"  fallback    stale for GET (maxAge 10m0s, maxBytes 1048576)\n",
	}, {
		name: "a breaker on a failure rate alone, an abort alone",
		v:    call("pay.shop.mesh", "POST", "/pay"),
		want: "resilience:\n  destination payments\n  route       none (the destination's own settings)\n" + head +
			"  faults      abort 500 for 0.5% of requests\n" +
			"  breaker     failureRate 25% over 10s (minRequests 20), openFor 10s, halfOpenRequests 1\n",
	}, {
		name: "a connection that is not HTTP",
		v:    call("api.shop.mesh", "", ""),
		want: `resilience:
  destination shop-api
  timeouts    connect 10s (timeouts.connect), idle 1h0m0s (timeouts.idle)
  tcpFaults   delay 500ms for 20% of connections, then reset 1% of connections
  breaker     consecutiveFailures 5 or failureRate 50% over 30s (minRequests 20), openFor 10s, halfOpenRequests 2
  perEndpoint consecutiveFailures 3, openFor 30s, halfOpenRequests 1
  bulkhead    maxConnections 100
`,
	}, {
		name: "a connection to a destination without TCP faults",
		v:    call("pay.shop.mesh", "", ""),
		want: `resilience:
  destination payments
  timeouts    connect 10s (timeouts.connect), idle 1h0m0s (timeouts.idle)
  breaker     failureRate 25% over 10s (minRequests 20), openFor 10s, halfOpenRequests 1
`,
	}} {
		t.Run(c.name, func(t *testing.T) {
			if diff := cmp.Diff(c.want, explainResilienceText(t, cfg, c.v)); diff != "" {
				t.Errorf("-want +got:\n%s", diff)
			}
		})
	}
}

// TestExplainResilienceAdmin: the running proxy's /explain shows the
// faults and mirror of the resilience section in effect, as reloaded.
func TestExplainResilienceAdmin(t *testing.T) {
	p := startProxy(t, testConfig())
	client := &http.Client{Timeout: 10 * time.Second}
	explain := "http://" + p.Addrs().Admin.String() +
		"/explain?direction=outbound&port=8080&to-ip=127.0.0.1&method=GET&path=/x"
	const faults = "  faults      abort 503 for 1% of requests\n"
	const mirror = "  mirror      to audit.shop.mesh:8080, percent 100, maxConcurrent 10, maxBodyBytes 65536\n"
	var cfg Config
	resilienceOf(t, `
resilience:
  destinations:
  - name: local
    match: {cidrs: [127.0.0.1/32]}
    faults: {abort: {status: 503, percent: 1}}
    mirror: {to: "audit.shop.mesh:8080"}
`)(&cfg)
	if err := p.ReloadResilience(cfg.Resilience); err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, client, explain, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "  destination local\n") ||
		!strings.Contains(body, faults) || !strings.Contains(body, mirror) {
		t.Errorf("/explain: %d\n%s\nwant the lines:\n%s%s", resp.StatusCode, body, faults, mirror)
	}
	if err := p.ReloadResilience(resilience.Config{}); err != nil {
		t.Fatal(err)
	}
	resp, body = get(t, client, explain, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "  destination default") ||
		strings.Contains(body, "\n  faults") || strings.Contains(body, "\n  mirror") {
		t.Errorf("/explain after a reload without faults or mirror: %d\n%s", resp.StatusCode, body)
	}
}
