package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"
)

// req is a request for tests.
type req struct {
	method, target, authority string
	headers                   map[string]string
}

func (r req) Method() string    { return r.method }
func (r req) Target() string    { return r.target }
func (r req) Authority() string { return r.authority }
func (r req) Has(n string) bool { _, ok := r.headers[strings.ToLower(n)]; return ok }
func (r req) Get(n string) string {
	return r.headers[strings.ToLower(n)]
}

// claims are token claims for tests.
type claims map[string]any

func (c claims) Lookup(path ...string) (any, bool) {
	var v any = map[string]any(c)
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[k]; !ok {
			return nil, false
		}
	}
	return v, true
}

func mustEngine(t testing.TB, doc string, issuers ...string) *Engine {
	t.Helper()
	var rules []Rule
	if err := yaml.UnmarshalStrict([]byte(doc), &rules); err != nil {
		t.Fatalf("rules: %v", err)
	}
	iss := Issuers{}
	for _, i := range issuers {
		iss[i] = true
	}
	if err := Validate("policy.rules", rules, iss); err != nil {
		t.Fatalf("validate: %v", err)
	}
	e, err := Compile(rules, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

var (
	web   = spiffeid.RequireFromString("spiffe://td/ns/shop/sa/web")
	batch = spiffeid.RequireFromString("spiffe://td/ns/ops/sa/batch")
	other = spiffeid.RequireFromString("spiffe://other/ns/shop/sa/web")
)

func in(port uint16, id spiffeid.ID, ip string) Conn {
	return Conn{Dir: Inbound, Port: port, Source: id, SourceIP: netip.MustParseAddr(ip)}
}

const shopRules = `
- name: api-read
  action: allow
  ports: [8080]
  from: {identities: ["spiffe://td/ns/shop/sa/web"]}
  http: {methods: [GET, HEAD], paths: ["/api/*"]}
- name: no-debug
  action: deny
  ports: [8080]
  http: {headers: {x-debug: {present: true}}}
- name: db-batch-only
  action: allow
  ports: [5432]
  from: {namespaces: [ops], serviceAccounts: [batch]}
- name: block-lab
  action: deny
  from: {cidrs: [10.9.0.0/16]}
`

func TestDecisions(t *testing.T) {
	e := mustEngine(t, shopRules)
	get := func(path string) req { return req{method: "GET", target: path, authority: "api"} }
	for _, tc := range []struct {
		name    string
		conn    Conn
		req     *req // nil: opaque
		allowed bool
		rule    string
		reason  string // a part of the reason
	}{
		{"web GET /api/x", in(8080, web, "10.0.0.5"), &req{method: "GET", target: "/api/items?id=3"}, true, "api-read", ""},
		{"web GET deep", in(8080, web, "10.0.0.5"), ptr(get("/api/v1/items/3")), true, "api-read", ""},
		{"web POST", in(8080, web, "10.0.0.5"), &req{method: "POST", target: "/api/items"}, false, DefaultRule,
			"api-read: http.methods: method POST not in [GET, HEAD]"},
		{"web /admin", in(8080, web, "10.0.0.5"), ptr(get("/admin")), false, DefaultRule, "api-read: http.paths: path /admin not in [/api/*]"},
		{"dot-dot escape", in(8080, web, "10.0.0.5"), ptr(get("/api/../admin")), false, DefaultRule, "path /admin not in"},
		{"encoded escape", in(8080, web, "10.0.0.5"), ptr(get("/api%2F..%2Fadmin")), false, DefaultRule, "path /admin"},
		{"/api itself is not under /api/", in(8080, web, "10.0.0.5"), ptr(get("/api")), false, DefaultRule, ""},
		{"batch is not web", in(8080, batch, "10.0.0.5"), ptr(get("/api/x")), false, DefaultRule,
			"from.identities: spiffe://td/ns/ops/sa/batch not in [spiffe://td/ns/shop/sa/web]"},
		{"debug header denied", in(8080, web, "10.0.0.5"), &req{method: "GET", target: "/api/x", headers: map[string]string{"x-debug": "1"}}, false, "no-debug",
			"rule no-debug (deny) matched: http.headers.x-debug: x-debug: \"1\" in present"},
		{"opaque on 8080: deny rule with HTTP conditions fails closed", in(8080, web, "10.0.0.5"), nil, false, "no-debug", "fail closed"},
		{"db: batch allowed", in(5432, batch, "10.0.0.5"), nil, true, "db-batch-only", ""},
		{"db: web refused", in(5432, web, "10.0.0.5"), nil, false, DefaultRule, "db-batch-only: from.namespaces: namespace shop not in [ops]"},
		{"db: plaintext refused", in(5432, spiffeid.ID{}, "10.0.0.5"), nil, false, DefaultRule, "no identity (plaintext)"},
		{"lab CIDR denied everywhere", in(9000, web, "10.9.1.1"), nil, false, "block-lab", "from.cidrs: address 10.9.1.1 in [10.9.0.0/16]"},
		{"no allow rule on 9000: default allow", in(9000, web, "10.0.0.5"), nil, true, DefaultRule, ""},
		{"lab denied on 8080 before HTTP", in(8080, web, "10.9.0.1"), ptr(get("/api/x")), false, "block-lab", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cd := e.Connection(tc.conn)
			var d Decision
			switch {
			case cd.Final() != nil:
				d = *cd.Final()
			case tc.req != nil:
				d = cd.Request(*tc.req, nil)
			default:
				d = cd.Opaque()
			}
			if d.Allowed != tc.allowed || d.RuleName() != tc.rule {
				t.Fatalf("decision = allowed %v by %s (%s); want allowed %v by %s", d.Allowed, d.RuleName(), d.Reason, tc.allowed, tc.rule)
			}
			if !tc.allowed && !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("reason = %q; want it to contain %q", d.Reason, tc.reason)
			}
			// Explain agrees with the request path.
			var r Request
			if tc.req != nil {
				r = *tc.req
			}
			tr := e.Explain(tc.conn, r, nil)
			if tr.Decision.Allowed != d.Allowed || tr.Decision.RuleName() != d.RuleName() {
				t.Errorf("explain decided %v by %s; the request path %v by %s", tr.Decision.Allowed, tr.Decision.RuleName(), d.Allowed, d.RuleName())
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestFinalAtConnection(t *testing.T) {
	e := mustEngine(t, shopRules)
	if d := e.Connection(in(5432, batch, "10.0.0.1")); d.Final() == nil || !d.Final().Allowed {
		t.Errorf("a connection rule should decide at the connection")
	}
	if d := e.Connection(in(8080, web, "10.0.0.1")); d.Final() != nil {
		t.Errorf("port 8080 has HTTP rules: the requests decide; got final %+v", d.Final())
	}
	if d := e.Connection(in(8080, batch, "10.0.0.1")); d.Final() != nil {
		t.Errorf("the deny rule with HTTP conditions still applies to batch's requests")
	}
	if d := e.Connection(Conn{Dir: Outbound, Port: 80}); !d.NoRules() {
		t.Errorf("no outbound rule: NoRules should hold")
	}
}

func TestOutbound(t *testing.T) {
	e := mustEngine(t, `
- name: egress-mesh
  action: allow
  direction: outbound
  to: {cidrs: [10.1.0.0/16]}
- name: egress-api
  action: allow
  direction: outbound
  ports: [443]
  to: {hosts: ["*.example.com"]}
- name: no-evil
  action: deny
  direction: outbound
  to: {hosts: [evil.example.com]}
`)
	for _, tc := range []struct {
		conn    Conn
		allowed bool
		rule    string
	}{
		{Conn{Dir: Outbound, Port: 8080, DestIP: netip.MustParseAddr("10.1.0.7")}, true, "egress-mesh"},
		{Conn{Dir: Outbound, Port: 443, DestIP: netip.MustParseAddr("203.0.113.5"), DestHost: "api.example.com."}, true, "egress-api"},
		{Conn{Dir: Outbound, Port: 443, DestIP: netip.MustParseAddr("203.0.113.5"), DestHost: "evil.example.com"}, false, "no-evil"},
		{Conn{Dir: Outbound, Port: 443, DestIP: netip.MustParseAddr("203.0.113.5")}, false, DefaultRule},
		{Conn{Dir: Outbound, Port: 80, DestIP: netip.MustParseAddr("203.0.113.5"), DestHost: "api.example.com"}, false, DefaultRule},
	} {
		d := e.Connection(tc.conn).Final()
		if d == nil || d.Allowed != tc.allowed || d.RuleName() != tc.rule {
			t.Errorf("%+v: decision %+v; want allowed %v by %s", tc.conn, d, tc.allowed, tc.rule)
		}
	}
}

func TestDryRunAndAudit(t *testing.T) {
	e := mustEngine(t, `
- name: would-deny-post
  action: deny
  dryRun: true
  http: {methods: [POST]}
- name: watch-admin
  action: audit
  http: {paths: ["/admin/*"]}
- name: watch-batch
  action: audit
  from: {serviceAccounts: [batch]}
`)
	cd := e.Connection(in(8080, batch, "10.0.0.1"))
	d := cd.Request(req{method: "POST", target: "/admin/x"}, nil)
	if !d.Allowed {
		t.Fatalf("dryRun and audit rules must not deny: %+v", d)
	}
	got := map[string]string{}
	for _, r := range d.Reports {
		got[r.Rule.Name] = r.Result
	}
	want := map[string]string{"would-deny-post": ResultDryRunDenied, "watch-admin": ResultAudited, "watch-batch": ResultAudited}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("report of %s = %q; want %q (all: %v)", k, got[k], v, got)
		}
	}
	d = cd.Request(req{method: "GET", target: "/x"}, nil)
	if len(d.Reports) != 1 || d.Reports[0].Rule.Name != "watch-batch" {
		t.Errorf("GET /x by batch: reports %+v; want watch-batch's audit only", d.Reports)
	}

	// A dryRun allow rule does not turn its port to default deny; it
	// reports what would be denied.
	e = mustEngine(t, `
- name: only-get
  action: allow
  dryRun: true
  http: {methods: [GET]}
`)
	cd = e.Connection(in(80, web, "10.0.0.1"))
	d = cd.Request(req{method: "DELETE", target: "/"}, nil)
	if !d.Allowed || len(d.Reports) != 1 || d.Reports[0].Result != ResultDryRunDenied {
		t.Errorf("DELETE under a dryRun allow rule: %+v", d)
	}
	d = cd.Request(req{method: "GET", target: "/"}, nil)
	if !d.Allowed || len(d.Reports) != 1 || d.Reports[0].Result != ResultDryRunAllowed || d.Reports[0].Rule.Name != "only-get" {
		t.Errorf("GET under a dryRun allow rule: %+v", d)
	}
}

func TestJWT(t *testing.T) {
	e := mustEngine(t, `
- name: admins
  action: allow
  ports: [8080]
  jwt: {issuers: ["https://idp"], audiences: [api], claims: {realm.roles: admin}}
`, "https://idp")
	cd := e.Connection(in(8080, web, "10.0.0.1"))
	ok := claims{"iss": "https://idp", "aud": []any{"api", "x"}, "realm": map[string]any{"roles": []any{"user", "admin"}}}
	if d := cd.Request(req{method: "GET", target: "/"}, ok); !d.Allowed {
		t.Errorf("admin token: %+v", d)
	}
	notAdmin := claims{"iss": "https://idp", "aud": "api", "realm": map[string]any{"roles": []any{"user"}}}
	if d := cd.Request(req{method: "GET", target: "/"}, notAdmin); d.Allowed || !strings.Contains(d.Reason, "jwt.claims.realm.roles") {
		t.Errorf("user token: %+v", d)
	}
	if d := cd.Request(req{method: "GET", target: "/"}, nil); d.Allowed {
		t.Errorf("no token: %+v", d)
	}
	// A negated claim still needs a token.
	e = mustEngine(t, `
- name: not-guest
  action: allow
  jwt: {not: {claims: {role: guest}}}
`, "https://idp")
	cd = e.Connection(in(8080, web, "10.0.0.1"))
	if d := cd.Request(req{method: "GET", target: "/"}, nil); d.Allowed {
		t.Errorf("negated JWT condition without a token allowed: %+v", d)
	}
	if d := cd.Request(req{method: "GET", target: "/"}, claims{"role": "user"}); !d.Allowed {
		t.Errorf("negated JWT condition with a user token: %+v", d)
	}
}

func TestGRPC(t *testing.T) {
	e := mustEngine(t, `
- name: greeter
  action: allow
  http: {grpc: ["helloworld.Greeter/SayHello", "grpc.health.v1.Health/*"]}
`)
	cd := e.Connection(in(50051, web, "10.0.0.1"))
	g := func(path string) req {
		return req{method: "POST", target: path, headers: map[string]string{"content-type": "application/grpc+proto"}}
	}
	for path, want := range map[string]bool{
		"/helloworld.Greeter/SayHello":   true,
		"/helloworld.Greeter/SayGoodbye": false,
		"/grpc.health.v1.Health/Check":   true,
		"/grpc.health.v1.Health/Watch":   true,
		"/grpc.health.v1.Health":         false,
	} {
		if d := cd.Request(g(path), nil); d.Allowed != want {
			t.Errorf("%s: allowed %v; want %v (%s)", path, d.Allowed, want, d.Reason)
		}
	}
	if d := cd.Request(req{method: "POST", target: "/helloworld.Greeter/SayHello"}, nil); d.Allowed {
		t.Errorf("a request that is not gRPC met a grpc condition")
	}
}

func TestPatterns(t *testing.T) {
	for _, tc := range []struct {
		pat  string
		s    string
		want bool
	}{
		{"/api/*", "/api/", true},
		{"/api/*", "/api/a/b", true},
		{"/api/*", "/api", false},
		{"/api/*", "/apix", false},
		{"/users/*/orders", "/users/7/orders", true},
		{"/users/*/orders", "/users/7/8/orders", false},
		{"/users/*/orders", "/users//orders", false},
		{"/users/*/orders/*", "/users/7/orders/1/2", true},
		{"/v*", "/v1/x", true},
		{"spiffe://td/ns/*/sa/web", "spiffe://td/ns/shop/sa/web", true},
		{"spiffe://td/ns/*/sa/web", "spiffe://td/ns/shop/sa/webx", false},
		{"spiffe://td/ns/shop/*", "spiffe://td/ns/shop/sa/web", true},
		{"spiffe://td/ns/shop/*", "spiffe://td/ns/shopx/sa/web", false},
	} {
		if got := compilePatterns([]string{tc.pat}).match(tc.s); got != tc.want {
			t.Errorf("%q matches %q = %v; want %v", tc.pat, tc.s, got, tc.want)
		}
	}
}

func TestNormalizePath(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b?x=1":          "/a/b",
		"/a//b":             "/a/b",
		"/a/./b/../c":       "/a/c",
		"/a/%2e%2e/c":       "/c",
		"/a/%2E%2E%2Fc":     "/c",
		"/../../etc":        "/etc",
		"/a/b/":             "/a/b/",
		"/a/b/..":           "/a/",
		"http://h:80/x/y?q": "/x/y",
		"/a\\..\\b":         "/b",
		"*":                 "/*",
		"":                  "/",
	} {
		if got := NormalizePath(in); got != want {
			t.Errorf("NormalizePath(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestValidate(t *testing.T) {
	doc := `
- name: a
  action: permit
  ports: [0]
- name: a
  action: allow
  direction: sideways
- action: deny
  from: {identities: ["web"], namespaces: [], cidrs: [10.0.0.1/8]}
  http: {methods: [get], paths: [api], headers: {x-a: {exact: a, prefix: b}, "bad name": x, x-r: {regex: "("}}, grpc: [Greeter]}
  jwt: {issuers: ["https://nobody"]}
- name: out
  action: allow
  direction: outbound
  from: {namespaces: [x]}
  jwt: {claims: {role: admin}}
- name: in
  action: audit
  dryRun: true
  to: {hosts: [API.example.com]}
  from: {not: {not: {namespaces: [x]}}}
`
	var rules []Rule
	if err := yaml.UnmarshalStrict([]byte(doc), &rules); err != nil {
		t.Fatal(err)
	}
	err := Validate("policy.rules", rules, Issuers{"https://idp": true})
	want := []string{
		`policy.rules[0].action: "permit" is not an action; want allow, deny or audit`,
		`policy.rules[0].ports[0]: 0 is not a port; want a number from 1 to 65535`,
		`policy.rules[1].direction: "sideways" is not a direction; want inbound or outbound`,
		`policy.rules[1].name: "a" is also policy.rules[0].name; give each rule its own name`,
		`policy.rules[2].name: missing; every rule needs a name, e.g. api-read`,
		`policy.rules[2].from.identities[0]: "web" is not a SPIFFE ID pattern`,
		`policy.rules[2].from.namespaces: empty list; remove it to match any, or list what to match`,
		`policy.rules[2].from.cidrs[0]: `,
		`policy.rules[2].http.methods[0]: "get" is not a method; want upper case, e.g. GET`,
		`policy.rules[2].http.paths[0]: "api" does not start with /`,
		`policy.rules[2].http.headers.x-a: want exactly one of exact, prefix, regex or present`,
		`policy.rules[2].http.headers: "bad name" is not a header name`,
		`policy.rules[2].http.headers.x-r.regex: "(" does not compile`,
		`policy.rules[2].http.grpc[0]: "Greeter" is not a gRPC method`,
		`policy.rules[2].jwt.issuers[0]: "https://nobody" is the issuer of no provider in policy.jwtProviders`,
		`policy.rules[3].from: outbound rules have one caller, the app`,
		`policy.rules[3].jwt: JWT conditions apply to inbound requests only`,
		`policy.rules[4].dryRun: an audit rule never enforces anything; remove dryRun`,
		`policy.rules[4].to: inbound rules guard the app's ports`,
		`policy.rules[4].from.not.not: not may not be nested`,
	}
	if err == nil {
		t.Fatal("no error")
	}
	got := err.Error()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("missing %q in:\n%s", w, got)
		}
	}
	if n, m := strings.Count(got, "\n")+1, len(want); n != m {
		t.Errorf("%d problems reported; want %d:\n%s", n, m, got)
	}
}

func TestExplainFormat(t *testing.T) {
	e := mustEngine(t, shopRules)
	tr := e.Explain(in(8080, web, "10.0.0.5"), req{method: "POST", target: "/api/x"}, nil)
	var b strings.Builder
	tr.Format(&b)
	out := b.String()
	for _, w := range []string{
		"decision: DENY by default (policy default)",
		"reason:   no allow rule matched, and 1 allow rule(s) apply to app port 8080, so the default is deny; api-read: http.methods: method POST not in [GET, HEAD]",
		"1. api-read (allow): no match",
		"ok   from.identities: spiffe://td/ns/shop/sa/web in [spiffe://td/ns/shop/sa/web]",
		"FAIL http.methods: method POST not in [GET, HEAD]",
		"3. db-batch-only (allow): skipped: it applies to ports [5432], not 8080",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("explain output lacks %q:\n%s", w, out)
		}
	}
}

// benchRules makes n allow rules, each for its own caller and paths, and
// a few deny rules, as a large mesh's policy might be.
func benchRules(b *testing.B, n int) *Engine {
	var sb strings.Builder
	for i := range n {
		fmt.Fprintf(&sb, "- name: r%d\n  action: allow\n  ports: [8080]\n  from: {identities: [\"spiffe://td/ns/ns%d/sa/sa%d\"]}\n  http: {methods: [GET, POST], paths: [\"/svc%d/*\", \"/v1/items/%d\"]}\n", i, i%50, i, i, i)
		if i%100 == 0 {
			fmt.Fprintf(&sb, "- name: d%d\n  action: deny\n  ports: [8080]\n  http: {headers: {x-block-%d: {regex: \"^evil.*\"}}}\n", i, i)
		}
	}
	return mustEngine(b, sb.String())
}

// BenchmarkPolicy: the cost of deciding a request that is allowed (the
// common case): per request on a connection whose rules were narrowed
// at connect time, and per connection.
func BenchmarkPolicy(b *testing.B) {
	for _, n := range []int{20, 1000} {
		e := benchRules(b, n)
		id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://td/ns/ns%d/sa/sa%d", (n-1)%50, n-1))
		c := in(8080, id, "10.0.0.9")
		var r Request = req{method: "GET", target: fmt.Sprintf("/svc%d/orders/17?x=1", n-1), authority: "api", headers: map[string]string{"x-other": "1"}}
		b.Run(fmt.Sprintf("request/rules=%d", n), func(b *testing.B) {
			cd := e.Connection(c)
			b.ReportAllocs()
			for b.Loop() {
				if d := cd.Request(r, nil); !d.Allowed {
					b.Fatal(d.Reason)
				}
			}
		})
		b.Run(fmt.Sprintf("connection+request/rules=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d := e.Connection(c).Request(r, nil); !d.Allowed {
					b.Fatal(d.Reason)
				}
			}
		})
	}
}

// TestExplainFailsClosed: on a connection that is not HTTP, a deny rule
// with HTTP conditions is shown as what decided.
func TestExplainFailsClosed(t *testing.T) {
	e := mustEngine(t, shopRules)
	tr := e.Explain(in(8080, web, "10.0.0.5"), nil, nil)
	var b strings.Builder
	tr.Format(&b)
	for _, w := range []string{
		"decision: DENY by no-debug (policy main)",
		"2. no-debug (deny): FAILS CLOSED: a deny rule with HTTP or JWT conditions, on a connection that is not HTTP: it denies",
	} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("explain output lacks %q:\n%s", w, b.String())
		}
	}
}

// TestOpaquePorts: a rule with HTTP conditions and no ports does not
// apply to a port declared opaque; one with no HTTP condition does.
func TestOpaquePorts(t *testing.T) {
	var rules []Rule
	if err := yaml.UnmarshalStrict([]byte(`
- {name: no-debug, action: deny, http: {headers: {x-debug: {present: true}}}}
- {name: no-lab, action: deny, from: {cidrs: [10.9.0.0/16]}}
`), &rules); err != nil {
		t.Fatal(err)
	}
	e, err := Compile(rules, Options{OpaquePorts: []uint16{5432}})
	if err != nil {
		t.Fatal(err)
	}
	if d := e.Connection(in(5432, web, "10.0.0.1")).Final(); d == nil || !d.Allowed {
		t.Errorf("5432 (opaque): %+v; want allowed, no-debug not applying", d)
	}
	if d := e.Connection(in(5432, web, "10.9.0.1")).Final(); d == nil || d.Allowed || d.RuleName() != "no-lab" {
		t.Errorf("5432 from the lab: %+v; want denied by no-lab", d)
	}
	if d := e.Connection(in(9000, web, "10.0.0.1")).Opaque(); d.Allowed || d.RuleName() != "no-debug" {
		t.Errorf("9000 (not declared), opaque: %+v; want no-debug failing closed", d)
	}
}
