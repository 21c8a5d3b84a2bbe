package proxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"meshgate/proxy/ratelimit"
)

// The rate limit tests use rates of a few an hour: a bucket's burst is
// all a test can spend, and nothing refills while it runs, so the
// answers do not depend on how fast the machine is.

// rateLimitsOf parses a config holding rateLimits (and redis) for a test.
func rateLimitsOf(t testing.TB, doc string) func(*Config) {
	t.Helper()
	cfg := configOf(t, doc)
	return func(c *Config) { c.RateLimits, c.Redis = cfg.RateLimits, cfg.Redis }
}

// answer is what a client saw of one request.
type answer struct {
	status                        int
	why, retry, policy, remaining string
}

func do(t *testing.T, c *http.Client, method, url string, hdr http.Header) answer {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return answer{resp.StatusCode, resp.Header.Get(hdrError), resp.Header.Get("Retry-After"),
		resp.Header.Get("RateLimit-Policy"), resp.Header.Get("RateLimit")}
}

// statuses are the statuses of n GETs of url.
func statuses(t *testing.T, c *http.Client, url string, hdr http.Header, n int) []int {
	t.Helper()
	var out []int
	for range n {
		out = append(out, do(t, c, http.MethodGet, url, hdr).status)
	}
	return out
}

// TestRateLimitPerCaller: a limit keyed by the caller's verified
// identity refuses its requests past the burst with 429 and the header
// fields a client needs to back off, over HTTP/1.1 and HTTP/2 alike;
// nothing refused reaches the app; every decision is counted and the
// refusal logged with the limit's name.
func TestRateLimitPerCaller(t *testing.T) {
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			app, seen := startL7App(t)
			p := startMeshPair(t, app, pairOptions{serverCfg: rateLimitsOf(t, `
rateLimits:
- name: per-caller
  key: sourceIdentity
  rate: 1000/s
  overrides: [{value: "`+clientID+`", rate: 1/h, burst: 2}]
`)})
			client := c.new(t)
			url := "http://" + p.client.out() + "/api/items"
			if got := statuses(t, client, url, nil, 2); !slices.Equal(got, []int{200, 200}) {
				t.Fatalf("the burst: %v; want 200 200", got)
			}
			a := do(t, client, http.MethodGet, url, nil)
			if a.status != http.StatusTooManyRequests || !strings.HasPrefix(a.why, "rate-limit: per-caller: over 1/h; retry after ") {
				t.Fatalf("past the burst: %+v; want 429 rate-limit: per-caller: over 1/h; ...", a)
			}
			retry, err := strconv.Atoi(a.retry)
			if err != nil || retry < 3500 || retry > 3600 {
				t.Errorf("Retry-After %q; want the seconds until a token, about 3600", a.retry)
			}
			if a.policy != `"per-caller";q=1;w=3600` || a.remaining != `"per-caller";r=0;t=`+a.retry {
				t.Errorf("RateLimit-Policy %q, RateLimit %q; want \"per-caller\";q=1;w=3600 and \"per-caller\";r=0;t=%s", a.policy, a.remaining, a.retry)
			}
			if n := len(seen()); n != 2 {
				t.Errorf("the app saw %d requests, want 2", n)
			}
			for res, want := range map[string]float64{"allowed": 2, "limited": 1} {
				if n := p.server.counter(t, "meshgate_ratelimit_decisions_total", map[string]string{"direction": "inbound", "limit": "per-caller", "result": res}); n != want {
					t.Errorf("%s: %v; want %v", res, n, want)
				}
			}
			var logged bool
			for _, e := range p.server.logs.FilterMessage("request").All() {
				if r := field(e, "reason"); strings.Contains(r, "rate-limit: per-caller: over 1/h") && strings.Contains(r, `key sourceIdentity "`+clientID+`"`) && e.Level.String() == "warn" {
					logged = true
				}
			}
			if !logged {
				t.Error("no warn access log line names the limit and the caller")
			}
			// Every line says what the limit decided for its request.
			var got []string
			for _, e := range p.server.logs.FilterMessage("request").All() {
				got = append(got, e.Level.String()+" "+field(e, "rate_limits"))
			}
			if want := []string{"info [per-caller:allowed]", "info [per-caller:allowed]", "warn [per-caller:limited]"}; !slices.Equal(got, want) {
				t.Errorf("the server's access log lines: %q; want %q", got, want)
			}
			// The client sidecar met no limit: its lines have no field.
			for _, e := range p.client.logs.FilterMessage("request").All() {
				if v := field(e, "rate_limits"); v != "<missing>" {
					t.Errorf("the client sidecar's line has rate_limits %s", v)
				}
			}
		})
	}
}

// TestRateLimitQuota: a quota allows its N requests at once, then
// refuses until its window ends, with Retry-After and RateLimit's t the
// seconds to the end, RateLimit-Policy its N and window; an override
// gives a key value its own quota.
func TestRateLimitQuota(t *testing.T) {
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			app, seen := startL7App(t)
			p := startMeshPair(t, app, pairOptions{serverCfg: rateLimitsOf(t, `
rateLimits:
- name: daily
  type: quota
  key: sourceIdentity
  rate: 1000/d
  overrides: [{value: "`+clientID+`", rate: 3/h}]
`)})
			client := c.new(t)
			url := "http://" + p.client.out() + "/api/items"
			if got := statuses(t, client, url, nil, 3); !slices.Equal(got, []int{200, 200, 200}) {
				t.Fatalf("the quota: %v; want 200 200 200", got)
			}
			for range 2 {
				a := do(t, client, http.MethodGet, url, nil)
				if a.status != http.StatusTooManyRequests || !strings.HasPrefix(a.why, "rate-limit: daily: over quota 3/h; retry after ") {
					t.Fatalf("past the quota: %+v; want 429 rate-limit: daily: over quota 3/h; ...", a)
				}
				retry, err := strconv.Atoi(a.retry)
				if err != nil || retry < 3500 || retry > 3600 {
					t.Errorf("Retry-After %q; want the seconds until the hour since the first request ends", a.retry)
				}
				if a.policy != `"daily";q=3;w=3600` || a.remaining != `"daily";r=0;t=`+a.retry {
					t.Errorf("RateLimit-Policy %q, RateLimit %q; want \"daily\";q=3;w=3600 and \"daily\";r=0;t=%s", a.policy, a.remaining, a.retry)
				}
			}
			if n := len(seen()); n != 3 {
				t.Errorf("the app saw %d requests, want 3", n)
			}
			for res, want := range map[string]float64{"allowed": 3, "limited": 2} {
				if n := p.server.counter(t, "meshgate_ratelimit_decisions_total", map[string]string{"direction": "inbound", "limit": "daily", "result": res}); n != want {
					t.Errorf("%s: %v; want %v", res, n, want)
				}
			}
		})
	}
}

// TestRateLimitAccessLogBound: a request that meets many limits lists
// the first few in its access log line, and how many more.
func TestRateLimitAccessLogBound(t *testing.T) {
	app, _ := startL7App(t)
	cfg := testConfig()
	doc := "rateLimits:\n"
	for i := range maxRateLimitNotes + 2 {
		doc += "- {name: l" + strconv.Itoa(i) + ", key: sourceIP, rate: 1000/h}\n"
	}
	rateLimitsOf(t, doc)(&cfg)
	p := startProxy(t, cfg, to(app))
	if a := do(t, h1Client(t), http.MethodGet, "http://"+p.in()+"/", nil); a.status != 200 {
		t.Fatalf("%+v", a)
	}
	lines := p.logs.FilterMessage("request").All()
	if len(lines) != 1 {
		t.Fatalf("%d access log lines", len(lines))
	}
	if got, want := field(lines[0], "rate_limits"), "[l0:allowed l1:allowed l2:allowed l3:allowed +2 more]"; got != want {
		t.Errorf("rate_limits %s; want %s", got, want)
	}
}

// TestRateLimitKeys: each key counts what it says: header values apart
// (and requests without the header together), a route by its pattern
// (two paths under it share it), the caller's address; an outbound limit
// counts the app's calls in the client sidecar. The most specific
// matching limit is asked first, and the first refusal answers.
func TestRateLimitKeys(t *testing.T) {
	app, _ := startL7App(t)
	p := startMeshPair(t, app, pairOptions{
		serverCfg: rateLimitsOf(t, `
rateLimits:
- name: by-api-key
  key: header:x-api-key
  match: {http: {paths: ["/keyed"]}}
  rate: 1/h
- name: api-route
  key: route
  match: {http: {methods: [GET], paths: ["/api/*"]}}
  rate: 2/h
  burst: 2
- name: by-ip
  key: sourceIP
  match: {http: {paths: ["/ip"]}}
  rate: 1/h
- name: broad
  key: route
  rate: 1/h
  burst: 100
- name: narrow
  key: route
  match: {http: {paths: ["/order"]}}
  rate: 1/h
`),
		clientCfg: rateLimitsOf(t, `
rateLimits:
- name: egress
  direction: outbound
  key: route
  match: {http: {paths: ["/out/*"]}}
  rate: 1/h
`)})
	client := h1Client(t)
	base := "http://" + p.client.out()
	key := func(v string) http.Header { return http.Header{"X-Api-Key": {v}} }
	for _, tc := range []struct {
		name string
		path string
		hdr  http.Header
		want int
		why  string
	}{
		{"key a", "/keyed", key("a"), 200, ""},
		{"key a again", "/keyed", key("a"), 429, "rate-limit: by-api-key: "},
		{"key b", "/keyed", key("b"), 200, ""},
		{"no key", "/keyed", nil, 200, ""},
		{"no key again: one bucket", "/keyed", nil, 429, "rate-limit: by-api-key: "},
		{"route /api/a", "/api/a", nil, 200, ""},
		{"route /api/b: the same pattern", "/api/b", nil, 200, ""},
		{"route /api/c: its 2/h spent", "/api/c", nil, 429, "rate-limit: api-route: "},
		{"address", "/ip", nil, 200, ""},
		{"address again", "/ip", nil, 429, "rate-limit: by-ip: "},
		{"order", "/order", nil, 200, ""},
		{"order again: narrow answers before broad", "/order", nil, 429, "rate-limit: narrow: "},
		{"outbound", "/out/x", nil, 200, ""},
		{"outbound again", "/out/y", nil, 429, "rate-limit: egress: "},
	} {
		a := do(t, client, http.MethodGet, base+tc.path, tc.hdr)
		if a.status != tc.want || !strings.HasPrefix(a.why, tc.why) || (tc.why == "") != (a.why == "") {
			t.Errorf("%s: %d %q; want %d %q", tc.name, a.status, a.why, tc.want, tc.why)
		}
	}
	if n := p.client.counter(t, "meshgate_ratelimit_decisions_total", map[string]string{"direction": "outbound", "limit": "egress", "result": "limited"}); n != 1 {
		t.Errorf("the client sidecar counted %v outbound refusals, want 1", n)
	}
}

// TestRateLimitGRPC: a gRPC call over its limit gets RESOURCE_EXHAUSTED
// with the reason, the gRPC way.
func TestRateLimitGRPC(t *testing.T) {
	p := startMeshPair(t, grpcHealthServer(t), pairOptions{serverCfg: rateLimitsOf(t, `
rateLimits:
- {name: health, key: sourceIdentity, rate: 1/h}
`)})
	hc := grpcHealthClient(t, p.client.out())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("first Check: %v", err)
	}
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted || !strings.HasPrefix(st.Message(), "rate-limit: health: over 1/h; retry after ") {
		t.Errorf("second Check: %v; want ResourceExhausted, rate-limit: health: over 1/h; ...", err)
	}
}

// TestRateLimitConnections: connection limits refuse new connections
// before anything is forwarded: by address before the mesh handshake, by
// identity after it; a refused connection is counted and logged with
// the limit's name, and the app never sees it.
func TestRateLimitConnections(t *testing.T) {
	t.Run("sourceIP, plaintext", func(t *testing.T) {
		b := startBackend(t, "127.0.0.1:0", echo)
		cfg := testConfig()
		rateLimitsOf(t, "rateLimits:\n- {name: conns, per: connection, key: sourceIP, rate: 1/h}\n")(&cfg)
		p := startProxy(t, cfg, to(b.addr()))
		c := dial(t, p.in())
		if got := roundTrip(t, c, "one"); got != "one" {
			t.Fatalf("first connection: %q", got)
		}
		c.Close()
		// Reset at accept: the reset may reach the client before its
		// connect has returned.
		if c2, err := net.DialTimeout("tcp", p.in(), 5*time.Second); err == nil {
			defer c2.Close()
			if err := expectClosed(t, c2, 5*time.Second); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("second connection: %v; want it closed", err)
			}
		} else if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("second connection: %v; want it reset", err)
		}
		if n := len(b.sources()); n != 1 {
			t.Errorf("the app saw %d connections, want 1", n)
		}
		if n := p.counter(t, "meshgate_ratelimit_decisions_total", map[string]string{"limit": "conns", "result": "limited"}); n != 1 {
			t.Errorf("limited: %v, want 1", n)
		}
		var logged bool
		for _, e := range p.closedLogs(t, 2) {
			logged = logged || field(e, "reason") == "rate-limit: conns"
		}
		if !logged {
			t.Error("no connection closed line with reason rate-limit: conns")
		}
	})
	t.Run("sourceIdentity, mesh", func(t *testing.T) {
		b := startBackend(t, "127.0.0.1:0", echo)
		p := startMeshPair(t, b.addr(), pairOptions{serverCfg: rateLimitsOf(t, `
rateLimits:
- {name: mesh-conns, per: connection, key: sourceIdentity, rate: 1/h}
`)})
		c := dial(t, p.client.out())
		if got := roundTrip(t, c, "one"); got != "one" {
			t.Fatalf("first connection: %q", got)
		}
		c2 := dial(t, p.client.out())
		c2.Write([]byte("two"))
		if err := expectClosed(t, c2, 5*time.Second); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("second connection: %v; want it closed", err)
		}
		if n := len(b.sources()); n != 1 {
			t.Errorf("the app saw %d connections, want 1", n)
		}
		if n := p.server.tlsOK(t); n < 2 {
			t.Errorf("%v handshakes; want the second connection refused after its handshake", n)
		}
		// The client sidecar may try again on another connection: each
		// is refused.
		if n := p.server.counter(t, "meshgate_ratelimit_decisions_total", map[string]string{"limit": "mesh-conns", "result": "limited"}); n < 1 {
			t.Errorf("limited: %v, want 1 or more", n)
		}
	})
}

// tlsOK counts the inbound mesh handshakes that succeeded.
func (r *running) tlsOK(t *testing.T) float64 {
	return r.counter(t, "meshgate_tls_handshakes_total", map[string]string{"direction": "inbound", "result": "ok"})
}

// TestRateLimitRedisDown: a global limit whose Redis cannot be reached
// does what redis.onError says, at once, and says so in the metric.
func TestRateLimitRedisDown(t *testing.T) {
	// A port nothing listens on: the connection is refused at once.
	down := closedAddr(t).String()
	for _, tc := range []struct {
		onError string
		status  int
		result  string
	}{
		{"failOpen", 200, "allowed_failopen"},
		{"failClosed", 429, "limited_failclosed"},
		{"local", 200, "allowed_local"},
	} {
		t.Run(tc.onError, func(t *testing.T) {
			app, _ := startL7App(t)
			cfg := testConfig()
			rateLimitsOf(t, `
rateLimits:
- {name: quota, key: sourceIP, rate: 600/m, burst: 5, global: true}
redis: {address: "`+down+`", onError: `+tc.onError+`, timeout: 1s}
`)(&cfg)
			p := startProxy(t, cfg, to(app))
			a := do(t, h1Client(t), http.MethodGet, "http://"+p.in()+"/", nil)
			if a.status != tc.status {
				t.Fatalf("%d %q; want %d", a.status, a.why, tc.status)
			}
			if tc.status == 429 && !strings.HasPrefix(a.why, "rate-limit: quota: refused while the quota store is unreachable (redis.onError failClosed)") {
				t.Errorf("X-Meshgate-Error %q", a.why)
			}
			if n := p.counter(t, "meshgate_ratelimit_decisions_total", map[string]string{"limit": "quota", "result": tc.result}); n != 1 {
				t.Errorf("%s: %v, want 1", tc.result, n)
			}
			if n := len(p.logs.FilterMessage("global rate limit without Redis: redis.onError decides").All()); n != 1 {
				t.Errorf("%d fallback warnings, want 1", n)
			}
			// The request's own access log line says what decided it.
			lines := p.logs.FilterMessage("request").All()
			if len(lines) != 1 || field(lines[0], "rate_limits") != "[quota:"+tc.result+"]" {
				t.Errorf("access log: %v; want one line with rate_limits [quota:%s]", lines, tc.result)
			}
		})
	}
}

// TestRateLimitReload: limits come and go with the config file; a limit
// left unchanged keeps its buckets; a file with a bad limit changes
// nothing; explain shows the limits in effect.
func TestRateLimitReload(t *testing.T) {
	app, _ := startL7App(t)
	p := startMeshPair(t, app, pairOptions{})
	client := h1Client(t)
	url := "http://" + p.client.out() + "/x"
	write := watchConfigFile(t, p.server.Proxy)

	limit := "rateLimits:\n- {name: per-caller, key: sourceIdentity, rate: 1/h, burst: 1}\n"
	reloads := func() int { return len(p.server.logs.FilterMessage("config reloaded").All()) }
	write(limit)
	waitFor(t, func() bool { return reloads() == 1 })
	if got := statuses(t, client, url, nil, 2); !slices.Equal(got, []int{200, 429}) {
		t.Fatalf("after the limit came: %v; want 200 429", got)
	}
	// Another section changes; the limit does not, nor its bucket.
	write(limit + "policy: {revealReason: true}\n")
	waitFor(t, func() bool { return reloads() == 2 })
	if got := statuses(t, client, url, nil, 1); !slices.Equal(got, []int{429}) {
		t.Errorf("after an unrelated change: %v; want 429 (the bucket kept)", got)
	}
	// A bad limit: refused, with its field path; the running one stays.
	write("rateLimits:\n- {name: per-caller, key: sourceIdentity, rate: 1/x}\n")
	waitFor(t, func() bool {
		return len(p.server.logs.FilterMessage("config reload refused: the running config stays").All()) > 0
	})
	e := p.server.logs.FilterMessage("config reload refused: the running config stays").All()[0]
	if got := field(e, "problems"); !strings.Contains(got, `rateLimits[0].rate: "1/x": want N/s, N/m, N/h or N/d`) {
		t.Errorf("refusal names %s", got)
	}
	if got := statuses(t, client, url, nil, 1); !slices.Equal(got, []int{429}) {
		t.Errorf("after a bad file: %v; want 429", got)
	}

	admin := "http://" + p.server.Addrs().Admin.String()
	resp, body := get(t, client, admin+"/explain?from="+clientID+"&port=8080&method=GET&path=/x", nil)
	want := `per-caller       applies per request: key sourceIdentity = "` + clientID + `", rate 1/h burst 1, local`
	if resp.StatusCode != 200 || !strings.Contains(body, want) {
		t.Errorf("/explain: %d\n%s\nwant a line %q", resp.StatusCode, body, want)
	}

	// The limit is changed: a new bucket.
	write("rateLimits:\n- {name: per-caller, key: sourceIdentity, rate: 2/h, burst: 1}\n")
	waitFor(t, func() bool { return reloads() == 3 })
	if got := statuses(t, client, url, nil, 2); !slices.Equal(got, []int{200, 429}) {
		t.Errorf("after the limit changed: %v; want 200 429 (a new, full bucket)", got)
	}
	// And removed: nothing limits, its series are gone.
	write("logLevel: info\n")
	waitFor(t, func() bool { return reloads() == 4 })
	if got := statuses(t, client, url, nil, 2); !slices.Equal(got, []int{200, 200}) {
		t.Errorf("after the limit went: %v; want 200 200", got)
	}
	mfs, _ := p.server.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "meshgate_ratelimit_decisions_total" && len(mf.GetMetric()) > 0 {
			t.Errorf("%d series of a limit that is gone", len(mf.GetMetric()))
		}
	}
}

// TestRateLimitConfigErrors: the problems of rateLimits and redis are
// named with their field paths, all at once, by the config reader.
func TestRateLimitConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"values", `
rateLimits:
- {name: a, key: sourceIP, rate: 50/x}
redis: {address: "127.0.0.1:6379", timeout: 5}
`, []string{
			`rateLimits[0].rate: "50/x": want N/s, N/m, N/h or N/d`,
			`redis.timeout: 5 is not a duration; want a number with a unit, e.g. "5s" or "1m30s"`,
		}},
		{"validation", `
rateLimits:
- {name: a, key: sourceIP, rate: 50/s, global: true}
- {name: a, key: route, per: connection, rate: 1/s, direction: outbound}
- {name: c, key: "header:bad key", rate: 1/s, per: hour}
`, []string{
			"rateLimits[1].per: connection: connection limits are inbound only (a new connection's key is its source); limit the app's calls per request, keyed by route or header:NAME",
			"rateLimits[1].key: route: a new connection has no HTTP request to read it from; key a connection limit by sourceIP or sourceIdentity, or set per: request",
			`rateLimits[1].name: "a" is also rateLimits[0].name; give each limit its own name`,
			`rateLimits[2].key: "bad key" is not a header name; want e.g. header:x-api-key`,
			`rateLimits[2].per: "hour": want request or connection`,
			"rateLimits[0].global: true, but there is no redis section to count it in; add redis: {address: HOST:PORT}, or set global: false",
		}},
		{"redis", `
rateLimits:
- {name: a, key: sourceIP, rate: 50/s, global: true}
redis: {address: "nowhere", onError: maybe}
`, []string{
			`redis.address: "nowhere": want host:port, e.g. 127.0.0.1:6379`,
			`redis.onError: "maybe": want failOpen, failClosed or local`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tc.doc))
			if err == nil {
				err = cfg.Validate()
			}
			var got []string
			if err != nil {
				got = strings.Split(err.Error(), "\n")
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}
}

// TestExplainRateLimits: explain names the limits a call meets, with
// its key value and the rate that value gets, and why others do not
// apply.
func TestExplainRateLimits(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
rateLimits:
- name: per-caller
  key: sourceIdentity
  rate: 100/s
  overrides: [{value: "` + clientID + `", rate: 5/s, burst: 2}]
- {name: login, key: route, match: {http: {methods: [POST], paths: ["/login"]}}, rate: 10/m}
- {name: conns, per: connection, key: sourceIP, match: {ports: [9090]}, rate: 10/s}
- {name: egress, direction: outbound, key: header:x-tenant, rate: 1/s}
- {name: daily, type: quota, key: sourceIP, rate: 10000/d, global: true}
redis: {address: "127.0.0.1:6379"}
`))
	if err != nil {
		t.Fatal(err)
	}
	res := explainOf(t, cfg, url.Values{"from": {clientID}, "port": {"8080"}, "path": {"/api"}, "source-ip": {"10.0.0.7"}})
	var b bytes.Buffer
	formatRateLimits(&b, res.RateLimits)
	want := `rate limits:
  per-caller       applies per request: key sourceIdentity = "` + clientID + `", rate 5/s burst 2, local
  login            does not apply: match.http does not hold for GET /api
  conns            does not apply: port 8080 not in match.ports
  egress           does not apply: direction outbound
  daily            applies per request: key sourceIP = "10.0.0.7", quota 10000/d, global (redis)
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("explain (-want +got):\n%s", diff)
	}
	if res.RateLimits[0].Rate != (ratelimit.Rate{N: 5, Window: time.Second}) || res.RateLimits[0].Type != ratelimit.TypeRate {
		t.Errorf("override rate %v, type %q", res.RateLimits[0].Rate, res.RateLimits[0].Type)
	}
	if q := res.RateLimits[4]; q.Type != ratelimit.TypeQuota || q.Burst != 0 {
		t.Errorf("the quota: %+v", q)
	}
}

// BenchmarkRateLimitStage is the stage's cost per request with one
// local limit keyed by the caller's identity, a token bucket (rate) or a
// quota, never used up: the cost of a decision, not of an answer. With
// no limits the stage is not in the chain (TestRateLimitStageOnlyWithLimits).
func BenchmarkRateLimitStage(b *testing.B) {
	for _, bc := range []struct{ name, limit string }{
		{"rate", "{name: per-caller, key: sourceIdentity, rate: 1000000000/s}"},
		{"quota", "{name: per-caller, type: quota, key: sourceIdentity, rate: 1000000000/d}"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := testConfig()
			rateLimitsOf(b, "rateLimits:\n- "+bc.limit+"\n")(&cfg)
			p, err := New(cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			req := httptest.NewRequest(http.MethodGet, "/api/items", nil)
			r := &Request{Dir: Inbound, Dst: netip.MustParseAddrPort("10.0.0.2:8080"), Src: netip.MustParseAddrPort("10.0.0.1:40000"),
				Peer: spiffeid.RequireFromString(clientID), msg: httpFields{req}, limits: new(rlNotes)} // as HTTP/1's, accessLog on
			s := rateLimitStage{p}
			b.ReportAllocs()
			for b.Loop() {
				r.limits.n = 0 // as a connection's next request
				if a := s.Decide(r); a != nil {
					b.Fatal(a.Reason)
				}
			}
		})
	}
}

// TestRateLimitStageOnlyWithLimits: the rate-limit stage is in a
// direction's chain only while that direction has request limits, so
// limits that are off cost nothing; a reload adds and removes it.
func TestRateLimitStageOnlyWithLimits(t *testing.T) {
	p := newProxy(t, testConfig())
	in := func() bool {
		return slices.ContainsFunc(p.chains.Load()[Inbound], func(s Stage) bool { return s.Name() == stageRateLimit })
	}
	if in() {
		t.Error("the rate-limit stage is in the inbound chain with no limits")
	}
	if err := p.ReloadRateLimits(configOf(t, "rateLimits:\n- {name: a, key: sourceIP, rate: 1/s}\n").RateLimits, nil); err != nil {
		t.Fatal(err)
	}
	if !in() {
		t.Error("a reload with a limit left the stage out of the inbound chain")
	}
	if err := p.ReloadRateLimits(nil, nil); err != nil {
		t.Fatal(err)
	}
	if in() {
		t.Error("a reload with no limits left the stage in the inbound chain")
	}
}

// TestRateLimitConnectionQuota: a quota of new connections refuses the
// ones past its N, saying so.
func TestRateLimitConnectionQuota(t *testing.T) {
	cfg := testConfig()
	rateLimitsOf(t, "rateLimits:\n- {name: conns, type: quota, per: connection, key: sourceIP, rate: 2/d}\n")(&cfg)
	p := newProxy(t, cfg)
	dst, src := netip.MustParseAddrPort("10.0.0.2:8080"), netip.MustParseAddrPort("10.0.0.1:40000")
	for i := range 2 {
		if o := p.connLimited(dst, src, spiffeid.ID{}, connKeySourceIP); o != nil {
			t.Fatalf("connection %d refused: %v", i, o.err)
		}
	}
	o := p.connLimited(dst, src, spiffeid.ID{}, connKeySourceIP)
	if o == nil || o.reason != "rate-limit: conns" || o.err.Error() != "rate-limit: conns: new connections over quota 2/d" {
		t.Errorf("the third connection: %+v; want refused over quota 2/d", o)
	}
}
