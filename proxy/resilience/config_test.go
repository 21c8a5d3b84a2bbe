package resilience

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"

	"meshgate/internal/confval"
)

// doc is the resilience section as it sits in the proxy config.
type doc struct {
	Resilience Config `json:"resilience"`
}

// parse reads a config document strictly, as the proxy reads its file.
func parse(t *testing.T, text string) Config {
	t.Helper()
	var d doc
	if err := confval.Read([]byte(text), &d); err != nil {
		t.Fatalf("read: %v", err)
	}
	return d.Resilience
}

// fullConfig sets every field of every type of the section somewhere.
const fullConfig = `
resilience:
  defaults:
    timeouts: {connect: 2s, request: 20s, perTry: 5s, idle: 10m, streamIdle: 10m}
    retries:
      attempts: 1
      on: [connect-failure, reset, 503, "429", unavailable, RESOURCE_EXHAUSTED]
      methods: [GET, HEAD]
      backoff: {base: 10ms, max: 100ms}
      budget: {ratio: 0.1, minPerSecond: 1}
      maxBodyBytes: 1024
      maxRetryAfter: 2s
    circuitBreaker:
      consecutiveFailures: 7
      failureRate: {percent: 50, window: 30s, minRequests: 10}
      openFor: 20s
      halfOpenRequests: 2
      perEndpoint: {consecutiveFailures: 3, failureRate: {percent: 80, window: 5s, minRequests: 5}, openFor: 5s, halfOpenRequests: 1}
    bulkhead: {maxConnections: 100, maxPending: 50, maxActive: 200, maxRetries: 10}
  destinations:
  - name: shop-api
    match:
      hosts: [api.shop.mesh, "*.api.shop.mesh"]
      ports: [8080, 8443]
      identities: ["spiffe://cluster.local/ns/shop/*"]
      cidrs: [10.1.0.0/16]
    timeouts: {connect: 1s, request: 5s, perTry: 1s, idle: 5m, streamIdle: 5m}
    retries:
      attempts: 2
      on: [connect-failure, reset, "503", "502"]
      methods: [GET, HEAD, OPTIONS, PUT, DELETE, POST]
      backoff: {base: 25ms, max: 1s}
      budget: {ratio: 0.2, minPerSecond: 3}
      maxBodyBytes: 65536
      maxRetryAfter: 5s
    circuitBreaker: {consecutiveFailures: 5, openFor: 10s, halfOpenRequests: 1}
    bulkhead: {maxConnections: 10, maxPending: 10, maxActive: 10, maxRetries: 2}
    fallback:
      stale: {maxAge: 10m, maxBytes: 2097152}
      static: {status: 503, headers: {retry-after: "30", content-type: text/plain}, body: "shop unavailable"}
    mirror: {to: "audit.shop.mesh:8080", percent: 10, maxConcurrent: 5, maxBodyBytes: 4096}
    faults:
      delay: {duration: 100ms, percent: 5}
      abort: {status: 503, grpc: unavailable, percent: 1}
    tcpFaults:
      delay: {duration: 1s, percent: 10}
      reset: {percent: 1}
    routes:
    - name: search
      match: {methods: [GET, HEAD], paths: [/api/search, "/api/search/*"]}
      timeouts: {request: 2s, perTry: 500ms, streamIdle: 1m}
      retries: {attempts: 3, on: [unavailable], methods: [GET], backoff: {base: 5ms}, maxBodyBytes: 0, maxRetryAfter: 0s}
      fallback: {stale: {maxAge: 1m}}
      mirror: {}
      faults: {}
    - match: {methods: [POST], paths: ["/api/orders/*/pay"]}
      retries: {attempts: 0}
      mirror: {to: "[fd00::7]:9000", percent: 0.5}
      fallback: {static: {status: 202}}
  - match: {cidrs: [192.0.2.0/24], ports: [5432]}
    tcpFaults: {reset: {}}
  - match: {}
`

// TestFullConfig: a section that sets every field, each to a good value,
// reads strictly, validates and compiles; the test fails when a field is
// added to the section's types without being set here, so that every
// field has been read and validated once.
func TestFullConfig(t *testing.T) {
	cfg := parse(t, fullConfig)
	if err := Validate(cfg); err != nil {
		t.Fatalf("Validate:\n%v", err)
	}
	if _, err := New(cfg); err != nil {
		t.Fatalf("New: %v", err)
	}
	set := map[string]bool{}
	fieldsSet(reflect.ValueOf(cfg), set)
	for f, ok := range set {
		if !ok {
			t.Errorf("%s is set nowhere in fullConfig", f)
		}
	}
	if len(set) < 60 {
		t.Errorf("only %d fields seen; the walk is broken", len(set))
	}
}

// fieldsSet records, for each field of this package's struct types
// reachable from v, whether any instance of it is set.
func fieldsSet(v reflect.Value, set map[string]bool) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			fieldsSet(v.Elem(), set)
		}
	case reflect.Slice:
		for i := range v.Len() {
			fieldsSet(v.Index(i), set)
		}
	case reflect.Struct:
		t := v.Type()
		if t.PkgPath() != reflect.TypeFor[Config]().PkgPath() {
			return
		}
		for i := range t.NumField() {
			key := t.Name() + "." + t.Field(i).Name
			set[key] = set[key] || !v.Field(i).IsZero()
			fieldsSet(v.Field(i), set)
		}
	}
}

// TestValidateErrors: each bad section is refused with every problem, each
// named by its field path, and the fix.
func TestValidateErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		want []string
	}{
		{"retry conditions", `
resilience:
  destinations:
  - match: {hosts: [web.shop.mesh]}
  - match: {hosts: [api.shop.mesh]}
    routes:
    - match: {paths: ["/api/*"]}
      retries:
        on: [connect-failure, reset, "5xx", 404, ok, unavailable, unavailable]
        methods: [GET, FETCH, CONNECT]
    - match: {methods: [GET]}
      retries: {on: [], methods: []}
`, []string{
			`resilience.destinations[1].routes[0].retries.on[2]: "5xx" is not a condition; want connect-failure, reset, a status code 429 or 500-599 such as "503", or a gRPC code such as unavailable`,
			`resilience.destinations[1].routes[0].retries.on[3]: "404" is not a condition; want connect-failure, reset, a status code 429 or 500-599 such as "503", or a gRPC code such as unavailable`,
			`resilience.destinations[1].routes[0].retries.on[4]: "ok" is not a condition; want connect-failure, reset, a status code 429 or 500-599 such as "503", or a gRPC code such as unavailable`,
			`resilience.destinations[1].routes[0].retries.on[6]: unavailable is also retries.on[5]; list it once`,
			`resilience.destinations[1].routes[0].retries.methods[1]: "FETCH" is not a method; want GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE or PATCH`,
			`resilience.destinations[1].routes[0].retries.methods[2]: CONNECT opens a tunnel, which cannot be sent again; remove it`,
			`resilience.destinations[1].routes[1].retries.on: empty list; want e.g. [connect-failure, reset, "503"], or set attempts: 0 for no retries`,
			`resilience.destinations[1].routes[1].retries.methods: empty list; want e.g. [GET, HEAD, OPTIONS, PUT, DELETE], or set attempts: 0 for no retries`,
		}},
		{"ranges", `
resilience:
  defaults:
    retries:
      attempts: 11
      backoff: {base: 100ms, max: 50ms}
      budget: {ratio: 1.5, minPerSecond: -1}
      maxBodyBytes: 20000000
      maxRetryAfter: -1s
    circuitBreaker:
      consecutiveFailures: -1
      failureRate: {window: 0s, minRequests: 0}
      openFor: 0s
      halfOpenRequests: 0
      perEndpoint: {failureRate: {percent: 101}}
    bulkhead: {maxConnections: -1, maxActive: 2000000}
  destinations:
  - match: {ports: [8080]}
    retries: {attempts: -1, backoff: {base: 0s}}
    fallback:
      stale: {maxAge: 0s, maxBytes: 0}
      static: {status: 600, headers: {Content-Length: "3", "bad header": x, x-ok: "a\nb"}}
    mirror: {percent: 101, maxConcurrent: 0, maxBodyBytes: -1}
    faults:
      delay: {percent: -5}
      abort: {status: 200, grpc: okay, percent: 100}
    tcpFaults:
      delay: {duration: 2h}
      reset: {percent: 100.5}
  - match: {ports: [9090]}
    faults: {abort: {percent: 10, grpc: OK}}
    mirror: {to: audit.shop.mesh}
  - match: {ports: [9091]}
    faults: {abort: {percent: 10}}
    mirror: {to: "[fe80::1%eth0]:80"}
  - match: {ports: [9092]}
    mirror: {to: "api.shop.mesh:0"}
  - match: {ports: [9093]}
    mirror: {to: "api_shop:80"}
`, []string{
			`resilience.defaults.retries.attempts: 11: want 0 (no retries) to 10`,
			`resilience.defaults.retries.backoff.max: 50ms is less than the base (100ms); make it at least the base`,
			`resilience.defaults.retries.budget.ratio: 1.5: want 0 to 1, the retries allowed per request, e.g. 0.2`,
			`resilience.defaults.retries.budget.minPerSecond: -1: want 0 to 10000 retries a second, e.g. 3`,
			`resilience.defaults.retries.maxBodyBytes: 20000000: want 0 to 16777216 (16 MiB): a body kept to send again takes memory until its request ends`,
			`resilience.defaults.retries.maxRetryAfter: -1s: must be 0 or more, e.g. 10s`,
			`resilience.defaults.circuitBreaker.consecutiveFailures: -1: want 0 (not on consecutive failures) to 10000, e.g. 5`,
			`resilience.defaults.circuitBreaker.failureRate.percent: missing; want the share of failed requests that opens the circuit, more than 0 and at most 100, e.g. 50; or write failureRate: {} for none`,
			`resilience.defaults.circuitBreaker.failureRate.window: 0s: must be more than 0, e.g. 30s`,
			`resilience.defaults.circuitBreaker.failureRate.minRequests: 0: want 1 to 1000000, e.g. 20`,
			`resilience.defaults.circuitBreaker.openFor: 0s: must be more than 0, e.g. 10s`,
			`resilience.defaults.circuitBreaker.halfOpenRequests: 0: want 1 to 1000, e.g. 1`,
			`resilience.defaults.circuitBreaker.perEndpoint.failureRate.percent: 101: want more than 0 and at most 100, e.g. 50`,
			`resilience.defaults.bulkhead.maxConnections: -1: want 0 (no limit) to 1000000`,
			`resilience.defaults.bulkhead.maxActive: 2000000: want 0 (no limit) to 1000000`,
			`resilience.destinations[0].retries.attempts: -1: want 0 (no retries) to 10`,
			`resilience.destinations[0].retries.backoff.base: 0s: must be more than 0, e.g. 25ms`,
			`resilience.destinations[0].fallback.stale.maxAge: 0s: must be more than 0, e.g. 5m`,
			`resilience.destinations[0].fallback.stale.maxBytes: 0: want 1 to 1073741824 (1 GiB), e.g. 1048576`,
			`resilience.destinations[0].fallback.static.status: 600: want a status from 100 to 599, e.g. 503`,
			`resilience.destinations[0].fallback.static.headers.Content-Length: the proxy sets it; remove it`,
			`resilience.destinations[0].fallback.static.headers: "bad header" is not a header name`,
			`resilience.destinations[0].fallback.static.headers.x-ok: a header value cannot hold a line break or NUL`,
			`resilience.destinations[0].mirror.to: missing; want the host:port copies go to, e.g. audit.shop.mesh:8080; or write mirror: {} for no mirror`,
			`resilience.destinations[0].mirror.percent: 101: want 0 to 100, e.g. 10`,
			`resilience.destinations[0].mirror.maxConcurrent: 0: want 1 to 10000, e.g. 10`,
			`resilience.destinations[0].mirror.maxBodyBytes: -1: want 0 to 16777216 (16 MiB)`,
			`resilience.destinations[0].faults.delay.duration: missing; want how long to delay, e.g. 500ms`,
			`resilience.destinations[0].faults.delay.percent: -5: want 0 to 100, e.g. 10`,
			`resilience.destinations[0].faults.abort.status: 200: want an error status from 400 to 599, e.g. 503`,
			`resilience.destinations[0].faults.abort.grpc: "okay" is not a gRPC status code; want e.g. unavailable, deadline-exceeded or internal`,
			`resilience.destinations[0].tcpFaults.delay.duration: 2h0m0s: want more than 0 and at most 1h, e.g. 500ms`,
			`resilience.destinations[0].tcpFaults.reset.percent: 100.5: want 0 to 100, e.g. 10`,
			`resilience.destinations[1].mirror.to: "audit.shop.mesh" is not host:port; want e.g. audit.shop.mesh:8080, 10.0.0.7:8080 or [fd00::7]:8080`,
			`resilience.destinations[1].faults.abort.grpc: "OK" is success; want an error code, e.g. unavailable`,
			`resilience.destinations[2].mirror.to: "[fe80::1%eth0]:80": an address with a zone cannot be reached from a pod; want e.g. [fd00::7]:8080`,
			`resilience.destinations[2].faults.abort: want status or grpc or both, e.g. {status: 503, grpc: unavailable}`,
			`resilience.destinations[3].mirror.to: "api.shop.mesh:0": "0" is not a port; want a number from 1 to 65535`,
			`resilience.destinations[4].mirror.to: "api_shop:80": "api_shop" is not a host name or IP address; want e.g. audit.shop.mesh:8080`,
		}},
		{"timeouts", `
resilience:
  defaults:
    timeouts: {perTry: 3s}
  destinations:
  - match: {hosts: [a.mesh]}
    timeouts: {connect: 0s, request: 2s, idle: -1s, streamIdle: -1s}
    routes:
    - match: {paths: [/slow]}
      timeouts: {connect: 1s, idle: 1m, request: 10s}
    - match: {paths: [/fast]}
      timeouts: {perTry: 3s, request: 1s}
  - match: {hosts: [b.mesh]}
    timeouts: {perTry: 4s, request: 3s}
    routes:
    - match: {paths: [/x]}
      timeouts: {perTry: 1s}
    - match: {paths: [/y]}
      timeouts: {request: -1s}
`, []string{
			`resilience.destinations[0].timeouts.connect: 0s: must be more than 0, e.g. 1s; leave it out for the default`,
			`resilience.destinations[0].timeouts.idle: -1s: must be more than 0, e.g. 5m; leave it out for the default`,
			`resilience.destinations[0].timeouts.streamIdle: -1s: must be 0 (no limit) or more, e.g. 5m`,
			`resilience.destinations[0].timeouts.request: 2s is shorter than the per-try timeout (3s) it bounds; make it longer, or set perTry here too`,
			`resilience.destinations[0].routes[0].timeouts.connect: a route cannot set it: connections are shared by the destination's routes; set it in the destination's timeouts`,
			`resilience.destinations[0].routes[0].timeouts.idle: a route cannot set it: connections are shared by the destination's routes; set it in the destination's timeouts, or streamIdle for the route's requests`,
			`resilience.destinations[0].routes[1].timeouts.perTry: 3s is longer than the request timeout (1s), which bounds all tries; make it shorter, e.g. a third of it`,
			`resilience.destinations[1].timeouts.perTry: 4s is longer than the request timeout (3s), which bounds all tries; make it shorter, e.g. a third of it`,
			`resilience.destinations[1].routes[1].timeouts.request: -1s: must be 0 (no limit) or more, e.g. 5s`,
		}},
		{"matches and names", `
resilience:
  destinations:
  - name: "shop api"
    match: {hosts: [], ports: [0, 80, 80], identities: ["td/ns/x"], cidrs: [10.1.2.3/16]}
  - name: default
  - name: api
    match: {hosts: [API.shop.mesh, "api.shop.mesh:80"]}
    routes:
    - {name: a, match: {methods: [GET]}}
    - {name: a, match: {methods: [GET]}}
    - {match: {}}
    - {name: "b c", match: {paths: ["api/*", "/a*b"], methods: [get]}}
    - {match: {methods: [POST]}, fallback: {stale: {}}, retries: {budget: {ratio: 0.5}}}
    - {}
  - name: api
    match: {hosts: [web.mesh]}
  - match: {}
  - match: {ports: [443]}
  - match: {}
`, []string{
			`resilience.destinations[0].name: "shop api": want 1 to 64 letters, digits, '.', '_' or '-'`,
			`resilience.destinations[0].match.hosts: empty list; remove it to match any name`,
			`resilience.destinations[0].match.ports[0]: 0 is not a port; want a number from 1 to 65535`,
			`resilience.destinations[0].match.ports[2]: 80 is also match.ports[1]; list it once`,
			`resilience.destinations[0].match.identities[0]: "td/ns/x" is not a SPIFFE ID pattern; want e.g. spiffe://cluster.local/ns/shop/sa/web, spiffe://cluster.local/ns/shop/* or *`,
			`resilience.destinations[0].match.cidrs[0]: 10.1.2.3/16: bits set past the /16; want 10.1.0.0/16`,
			`resilience.destinations[1].name: "default" is the name of the built-in policy, for destinations no entry matches; pick another, or set resilience.defaults to change that policy`,
			`resilience.destinations[1].match: missing; want e.g. match: {hosts: [api.shop.mesh], ports: [8080]}, or match: {} for every destination`,
			`resilience.destinations[2].match.hosts[0]: "API.shop.mesh": write host names in lower case`,
			`resilience.destinations[2].match.hosts[1]: "api.shop.mesh:80" is not a host name; want e.g. api.example.com or *.example.com (no port, no scheme)`,
			`resilience.destinations[2].routes[1].name: "a" is also routes[0].name; give each route of a destination its own name`,
			`resilience.destinations[2].routes[1].match: never applies: the same as routes[0].match, which comes first; merge the two routes`,
			`resilience.destinations[2].routes[2].match: matches every request; set methods or paths, or move the route's settings to the destination`,
			`resilience.destinations[2].routes[3].name: "b c": want 1 to 64 letters, digits, '.', '_' or '-'`,
			`resilience.destinations[2].routes[3].match.methods[0]: "get" is not a method; want GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE or PATCH`,
			`resilience.destinations[2].routes[3].match.paths[0]: "api/*" does not start with /; want e.g. /api/items, /api/* or /users/*/orders`,
			`resilience.destinations[2].routes[3].match.paths[1]: "/a*b" has a * inside a segment: * stands for a whole segment, or ends a prefix; want e.g. /api/items, /api/* or /users/*/orders`,
			`resilience.destinations[2].routes[4].retries.budget: a route cannot set it: a retry budget is the destination's, shared by its routes; set it in the destination's retries`,
			`resilience.destinations[2].routes[4].fallback.stale: the route matches no GET, and only responses to GET are kept; remove stale, or use a static fallback`,
			`resilience.destinations[2].routes[5].match: missing; want e.g. match: {methods: [GET], paths: ["/api/*"]}`,
			`resilience.destinations[3].name: "api" is also resilience.destinations[2].name; give each destination its own name`,
			`resilience.destinations[5].match: never applies: resilience.destinations[4].match matches every destination first; put this entry before it`,
			`resilience.destinations[6].match: never applies: resilience.destinations[4].match matches every destination first; put this entry before it`,
		}},
		{"duplicate match", `
resilience:
  destinations:
  - match: {hosts: [a.mesh], ports: [80]}
  - match: {ports: [80], hosts: [a.mesh]}
  - match: {hosts: [a.mesh], ports: [81]}
`, []string{
			`resilience.destinations[1].match: never applies: the same as resilience.destinations[0].match, which comes first; merge the two entries, or make the matches differ`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := parse(t, tc.doc)
			err := Validate(cfg)
			var got []string
			if err != nil {
				got = strings.Split(err.Error(), "\n")
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("problems (-want +got):\n%s", d)
			}
			if _, nerr := New(cfg); nerr == nil || nerr.Error() != err.Error() {
				t.Errorf("New: %v; want Validate's error", nerr)
			}
		})
	}
}

// TestRetryOnReading: a status may be written as a number; what is
// neither a string nor a number is refused by the reader, with its path.
func TestRetryOnReading(t *testing.T) {
	cfg := parse(t, "resilience: {destinations: [{match: {}, retries: {on: [503, \"reset\"]}}]}")
	if got := cfg.Destinations[0].Retries.On; !slices.Equal(got, []RetryOn{"503", OnReset}) {
		t.Errorf("on: %q", got)
	}
	err := confval.Check[doc]([]byte("resilience: {destinations: [{match: {}, retries: {on: [true]}}]}"))
	want := `resilience.destinations[0].retries.on[0]: true is not a condition; want connect-failure, reset, a status code such as "503", or a gRPC code such as unavailable`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

// TestCodeName: explain names a gRPC code as the config writes it, so
// that what it shows can be written back (cancelled, not Go's Canceled).
func TestCodeName(t *testing.T) {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if got, ok := grpcCode(CodeName(c)); !ok || got != c {
			t.Errorf("CodeName(%v) = %q, read back as %v, %v", c, CodeName(c), got, ok)
		}
	}
	if got := CodeName(codes.Canceled); got != "cancelled" {
		t.Errorf("CodeName(Canceled) = %q, want cancelled", got)
	}
	if got := CodeName(codes.Code(42)); got != "42" {
		t.Errorf("CodeName(42) = %q, want 42", got)
	}
}

// TestDesignExample: the section as shared/DESIGN.md §5b writes it (a
// contract) reads, validates and means what it says.
func TestDesignExample(t *testing.T) {
	tb, err := New(parse(t, `
resilience:
  destinations:
  - match: {hosts: [api.shop.mesh], ports: [8080]}        # or identities, cidrs
    timeouts: {connect: 1s, request: 5s, perTry: 1s}
    retries: {attempts: 2, on: [connect-failure, reset, "503"], budget: {ratio: 0.2, minPerSecond: 3}}
    circuitBreaker: {consecutiveFailures: 5, openFor: 10s, halfOpenRequests: 1}
    bulkhead: {maxConnections: 100, maxPending: 100, maxActive: 100}
`))
	if err != nil {
		t.Fatal(err)
	}
	d := tb.Lookup(dest("10.0.0.1:8080", "", "api.shop.mesh"))
	p := d.Policy()
	if d.Key() != "api.shop.mesh:8080" || p.Timeouts.PerTry != time.Second || p.Retry.Attempts != 2 || !p.Retry.On.Statuses.Has(503) ||
		d.Budget.Ratio != 0.2 || d.Breaker.ConsecutiveFailures != 5 || d.Bulkhead.MaxActive != 100 {
		t.Errorf("%s: %+v %+v %+v %+v", d.Key(), p, d.Budget, d.Breaker, d.Bulkhead)
	}
}

// FuzzConfig: whatever the document, reading, validating and compiling
// it never panics, and a section that validates compiles, and resolves.
func FuzzConfig(f *testing.F) {
	f.Add(fullConfig)
	f.Add("resilience: {destinations: [{match: {}, mirror: {to: \"[::1]:80\"}, routes: [{match: {paths: [\"*\"]}}]}]}")
	f.Add("resilience: {defaults: {retries: {on: [503, UNAVAILABLE], backoff: {}}}}")
	f.Fuzz(func(t *testing.T, text string) {
		var d doc
		if confval.Read([]byte(text), &d) != nil {
			return
		}
		if Validate(d.Resilience) != nil {
			return
		}
		tb, err := New(d.Resilience)
		if err != nil {
			t.Fatalf("New of a valid section: %v", err)
		}
		for _, dp := range tb.Destinations() {
			dp.Route("GET", "/a/b")
		}
		tb.Lookup(dest("10.0.0.1:80", "spiffe://td/ns/a/sa/b", "a.mesh"))
	})
}
