package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/yaml"

	"meshgate/proxy/jwtauth/jwtauthtest"
)

// policyOf parses a policy section for a test.
func policyOf(t testing.TB, doc string) PolicyConfig {
	t.Helper()
	cfg, err := ParseConfig([]byte(doc))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	return cfg.Policy
}

func withPolicy(pc PolicyConfig) func(*Config) { return func(c *Config) { c.Policy = pc } }

// TestPolicyHTTP: the server sidecar's rules decide each request, over
// HTTP/1.1 and HTTP/2 alike; a denied one is answered 403 and nothing of
// it reaches the app.
func TestPolicyHTTP(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, seen := startL7App(t)
	pol := policyOf(t, `
policy:
  rules:
  - name: api-read
    action: allow
    from: {identities: ["`+clientID+`"]}
    http: {methods: [GET], paths: ["/api/*"]}
  - name: no-debug
    action: deny
    http: {headers: {x-debug: {present: true}}}
    revealReason: true
`)
	p := startPair(t, app, cm, sm, pairOptions{serverCfg: withPolicy(pol)})
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"http1", h1Client(t)}, {"h2c", h2cClient(t)}} {
		t.Run(c.name, func(t *testing.T) {
			base := "http://" + p.client.out()
			before := len(seen())
			if resp, body := get(t, c.client, base+"/api/items", nil); resp.StatusCode != 200 {
				t.Fatalf("GET /api/items: %d %s", resp.StatusCode, body)
			}
			if n := len(seen()) - before; n != 1 {
				t.Fatalf("the app saw %d requests, want 1", n)
			}
			for _, tc := range []struct {
				method, path string
				hdr          http.Header
				why          string
			}{
				{"POST", "/api/items", nil, "policy: access denied"},
				{"GET", "/admin", nil, "policy: access denied"},
				{"GET", "/api/../admin", nil, "policy: access denied"},
				{"GET", "/api/items", http.Header{"X-Debug": {"1"}}, "policy: denied by rule no-debug (policy main): rule no-debug (deny) matched: http.headers.x-debug: x-debug: \"1\" in present"},
			} {
				before := len(seen())
				req, _ := http.NewRequest(tc.method, base+tc.path, strings.NewReader("body"))
				req.Header = tc.hdr.Clone()
				if req.Header == nil {
					req.Header = http.Header{}
				}
				resp, err := c.client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusForbidden || resp.Header.Get(hdrError) != tc.why || !strings.Contains(string(body), tc.why) {
					t.Errorf("%s %s: %d %q %q; want 403 %q", tc.method, tc.path, resp.StatusCode, resp.Header.Get(hdrError), body, tc.why)
				}
				if n := len(seen()) - before; n != 0 {
					t.Errorf("%s %s: the app saw %d requests, want 0", tc.method, tc.path, n)
				}
			}
		})
	}
	if n := p.server.counter(t, "meshgate_policy_decisions_total", map[string]string{"direction": "inbound", "rule": "api-read", "action": "allow", "result": "allowed"}); n != 2 {
		t.Errorf("api-read allowed %v requests, want 2", n)
	}
	if n := p.server.counter(t, "meshgate_policy_decisions_total", map[string]string{"rule": "default", "result": "denied"}); n != 6 {
		t.Errorf("the default denied %v requests, want 6", n)
	}
	if n := p.server.counter(t, "meshgate_policy_decisions_total", map[string]string{"rule": "no-debug", "result": "denied"}); n != 2 {
		t.Errorf("no-debug denied %v requests, want 2", n)
	}
	// The log has the whole reason, though the caller was told less.
	found := false
	for _, e := range p.server.logs.FilterMessage("request").All() {
		if strings.Contains(field(e, "reason"), "api-read: http.methods: method POST not in [GET]") {
			found = true
		}
	}
	if !found {
		t.Errorf("no request log line names api-read's failed condition: %v", p.server.logs.FilterMessage("request").All())
	}
}

// TestPolicyOpaque: a connection that is not HTTP, from a caller no rule
// allows, is reset before the app is even dialed; one that is allowed is
// forwarded.
func TestPolicyOpaque(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	accepted := make(chan struct{}, 10)
	be := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
		accepted <- struct{}{}
		echo(c)
	})
	deny := policyOf(t, `
policy:
  rules:
  - name: db-batch-only
    action: allow
    from: {serviceAccounts: [batch]}
`)
	p := startPair(t, be.addr(), cm, sm, pairOptions{serverCfg: withPolicy(deny)})
	c := dial(t, p.client.out())
	c.Write([]byte("\x00\x01binary hello"))
	// The server sidecar resets the mesh connection; the client sidecar
	// ends the app's (an L4 forward passes an upstream's end on as a
	// close).
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := io.Copy(io.Discard, c); n != 0 || isTimeout(err) {
		t.Fatalf("denied connection: %d bytes back, %v; want it ended with none", n, err)
	}
	select {
	case <-accepted:
		t.Fatal("the app was dialed for a denied connection")
	case <-time.After(100 * time.Millisecond):
	}
	lines := p.server.closedLogs(t, 1)
	if r := field(lines[0], "error"); !strings.Contains(r, "denied by policy: no allow rule matched") || !strings.Contains(r, "db-batch-only: from.serviceAccounts: service account client not in [batch]") {
		t.Errorf("connection log error %q", r)
	}

	// A connection that sends nothing and closes called nothing: it is
	// neither counted nor logged as a denial.
	empty := dial(t, p.client.out())
	time.Sleep(100 * time.Millisecond)
	empty.Close()
	p.server.closedLogs(t, 2)
	if n := p.server.counter(t, "meshgate_policy_decisions_total", map[string]string{"result": "denied"}); n != 1 {
		t.Errorf("%v denials counted; want 1 (the empty connection is none)", n)
	}

	// The same rule, for the client's service account: forwarded.
	allow := policyOf(t, `
policy:
  rules:
  - name: db-client
    action: allow
    from: {serviceAccounts: [client]}
`)
	if err := p.server.ReloadPolicy(allow); err != nil {
		t.Fatal(err)
	}
	c2 := dial(t, p.client.out())
	if got := roundTrip(t, c2, "\x00\x01binary hello"); got != "\x00\x01binary hello" {
		t.Errorf("echo %q", got)
	}
}

// TestPolicyEgress: outbound rules limit what the app may call: a
// connection to a denied destination is reset, an HTTP request to it
// answered 403 by the client sidecar, and nothing is dialed.
func TestPolicyEgress(t *testing.T) {
	app, seen := startL7App(t)
	pol := policyOf(t, `
policy:
  revealReason: true
  rules:
  - name: only-10-1
    action: allow
    direction: outbound
    to: {cidrs: [10.1.0.0/16]}
`)
	cfg := testConfig()
	cfg.Policy = pol
	r := startProxy(t, cfg, to(app))
	resp, body := get(t, h1Client(t), "http://"+r.out()+"/", nil)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "only-10-1: to.cidrs: address 127.0.0.1 not in [10.1.0.0/16]") {
		t.Errorf("egress to 127.0.0.1: %d %q", resp.StatusCode, body)
	}
	if len(seen()) != 0 {
		t.Errorf("the destination saw %d requests", len(seen()))
	}
	c := dial(t, r.out())
	c.Write([]byte("\x00opaque"))
	if err := expectClosed(t, c, 5*time.Second); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("denied connection ended with %v; want a reset", err)
	}
}

// TestPolicyGRPC: a gRPC call policy denies gets PERMISSION_DENIED, as a
// real gRPC client reads it.
func TestPolicyGRPC(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app := grpcHealthServer(t)
	pol := policyOf(t, `
policy:
  rules:
  - name: no-health-watch
    action: deny
    http: {grpc: ["grpc.health.v1.Health/Watch"]}
  - name: health-check
    action: allow
    http: {grpc: ["grpc.health.v1.Health/Check"]}
    from: {namespaces: [ops]}
`)
	p := startPair(t, app, cm, sm, pairOptions{serverCfg: withPolicy(pol)})
	hc := grpcHealthClient(t, p.client.out())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || st.Message() != "policy: access denied" {
		t.Errorf("Check: %v; want PermissionDenied, policy: access denied", err)
	}
}

// TestPolicyJWT: tokens are validated (401 when they fail), their claims
// decide rules, are handed to the app in headers, and a forged claims
// header from the client is removed.
func TestPolicyJWT(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, seen := startL7App(t)
	key := jwtauthtest.NewKey(t, "ES256", "k1")
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwks, jwtauthtest.JWKS(key), 0o600); err != nil {
		t.Fatal(err)
	}
	pol := policyOf(t, `
policy:
  revealReason: true
  jwtProviders:
  - name: corp
    issuer: https://idp.test
    audiences: [api]
    jwksFile: `+jwks+`
    outputClaimHeaders: {sub: x-user}
    stripToken: true
  rules:
  - name: admins
    action: allow
    jwt: {claims: {role: admin}}
`)
	p := startPair(t, app, cm, sm, pairOptions{serverCfg: withPolicy(pol)})
	now := time.Now().Unix()
	tok := func(claims map[string]any) http.Header {
		base := map[string]any{"iss": "https://idp.test", "aud": "api", "sub": "ada", "exp": now + 300, "iat": now}
		for k, v := range claims {
			base[k] = v
		}
		return http.Header{"Authorization": {"Bearer " + key.Sign(t, base)}, "X-User": {"mallory"}}
	}
	client := h1Client(t)
	url := "http://" + p.client.out() + "/x"
	resp, body := get(t, client, url, tok(map[string]any{"role": "admin"}))
	if resp.StatusCode != 200 {
		t.Fatalf("admin token: %d %s", resp.StatusCode, body)
	}
	r := seen()[len(seen())-1]
	if r.header.Get("X-User") != "ada" || r.header.Get("Authorization") != "" {
		t.Errorf("the app got X-User %q (want ada) and Authorization %q (want it stripped)", r.header.Get("X-User"), r.header.Get("Authorization"))
	}
	for _, tc := range []struct {
		name   string
		hdr    http.Header
		status int
		why    string
	}{
		{"user", tok(map[string]any{"role": "user"}), 403, "admins: jwt.claims.role: role user not in [admin]"},
		{"no token", nil, 403, "admins: jwt: no validated token not in [a validated token]"},
		{"expired", tok(map[string]any{"role": "admin", "exp": now - 3600}), 401, "jwt: invalid token: expired: "},
		{"wrong audience", tok(map[string]any{"role": "admin", "aud": "web"}), 401, "jwt: invalid token: wrong-audience: "},
		{"alg none", http.Header{"Authorization": {"Bearer " + jwtauthtest.SignNone(map[string]any{"iss": "https://idp.test", "aud": "api", "role": "admin"})}}, 401, "jwt: invalid token: alg-refused: "},
	} {
		before := len(seen())
		resp, body := get(t, client, url, tc.hdr)
		if resp.StatusCode != tc.status || !strings.Contains(resp.Header.Get(hdrError), tc.why) {
			t.Errorf("%s: %d %q; want %d with %q", tc.name, resp.StatusCode, resp.Header.Get(hdrError), tc.status, tc.why)
		}
		if tc.status == 401 && resp.Header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
			t.Errorf("%s: WWW-Authenticate %q", tc.name, resp.Header.Get("WWW-Authenticate"))
		}
		if n := len(seen()) - before; n != 0 {
			t.Errorf("%s: the app saw %d requests (%s)", tc.name, n, body)
		}
	}
}

// TestPolicyReloadAndExplain: a reloaded policy decides the next
// requests; /explain and /config show the policy in effect.
func TestPolicyReloadAndExplain(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, _ := startL7App(t)
	p := startPair(t, app, cm, sm, pairOptions{})
	client := h1Client(t)
	url := "http://" + p.client.out() + "/x"
	if resp, _ := get(t, client, url, nil); resp.StatusCode != 200 {
		t.Fatalf("no policy: %d", resp.StatusCode)
	}
	cfgFile := filepath.Join(t.TempDir(), "proxy.yaml")
	doc := "policy:\n  rules:\n  - {name: nobody, action: allow, from: {namespaces: [none]}}\n"
	os.WriteFile(cfgFile, []byte("logLevel: info\n"), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.server.WatchConfig(ctx, cfgFile) }()
	defer func() { cancel(); <-done }()
	time.Sleep(50 * time.Millisecond) // the watch is set up
	if err := os.WriteFile(cfgFile, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, _ := get(t, client, url, nil)
		if resp.StatusCode == http.StatusForbidden {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reloaded policy is not in effect: %d", resp.StatusCode)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A broken file is refused; the policy stays.
	os.WriteFile(cfgFile, []byte("policy:\n  rules:\n  - {name: x, action: permit}\n"), 0o600)
	waitFor(t, func() bool {
		return len(p.server.logs.FilterMessage("config reload refused: the running config stays").All()) > 0
	})
	if resp, _ := get(t, client, url, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("after a broken file: %d; want the policy kept (403)", resp.StatusCode)
	}
	e := p.server.logs.FilterMessage("config reload refused: the running config stays").All()[0]
	if b, _ := json.Marshal(e.ContextMap()["problems"]); !strings.Contains(string(b), `policy.rules[0].action: \"permit\" is not an action`) {
		t.Errorf("refusal names %s", b)
	}

	admin := "http://" + p.server.Addrs().Admin.String()
	resp, body := get(t, client, admin+"/explain?from="+clientID+"&port=8080&method=GET&path=/x", nil)
	if resp.StatusCode != 200 || !strings.Contains(body, "decision: DENY by default") || !strings.Contains(body, "FAIL from.namespaces: namespace shop not in [none]") {
		t.Errorf("/explain: %d\n%s", resp.StatusCode, body)
	}
	_, body = get(t, client, admin+"/config", nil)
	var cfg Config
	if err := yaml.Unmarshal([]byte(body), &cfg); err != nil || len(cfg.Policy.Rules) != 1 || cfg.Policy.Rules[0].Name != "nobody" {
		t.Errorf("/config policy: %+v (%v)", cfg.Policy, err)
	}
}

// TestPolicyConfigErrors: the policy section's problems are named with
// their field paths, all at once, by the config reader.
func TestPolicyConfigErrors(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
policy:
  jwtProviders:
  - {name: corp, issuer: "https://idp", jwksFile: /nonexistent, jwksURL: "https://x"}
  rules:
  - name: a
    action: allow
    http: {headers: {x-a: [1]}, methodz: [GET]}
`))
	if err == nil {
		err = cfg.Validate()
	}
	want := []string{
		"policy.rules[0].http.headers.x-a: [1] is not a header condition",
		"policy.rules[0].http.methodz: unknown field; want one of methods, hosts, paths, headers, grpc, not",
	}
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v; want it to contain %q", err, w)
		}
	}
	cfg, err = ParseConfig([]byte(`
policy:
  jwtProviders:
  - {name: corp, issuer: "https://idp", jwksFile: /nonexistent, jwksURL: "https://x"}
  rules:
  - {name: a, action: allow, jwt: {issuers: ["https://other"]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.Validate()
	for _, w := range []string{
		"policy.jwtProviders[0].jwksFile: want exactly one of jwksFile or jwksURL",
		`policy.rules[0].jwt.issuers[0]: "https://other" is the issuer of no provider in policy.jwtProviders`,
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v; want it to contain %q", err, w)
		}
	}
}

// TestPolicyOpaquePortRule: a rule with HTTP conditions on a port whose
// connections are never HTTP is refused, not left to silently never
// allow.
func TestPolicyOpaquePortRule(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
policy:
  rules:
  - {name: pg, action: allow, ports: [8080, 5432], http: {methods: [GET]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := "policy.rules[0].ports[1]: port 5432 is declared opaque (protocols.ports; the default for well-known binary protocols)"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "ports[0]") {
		t.Errorf("Validate: %v; want %q alone", err, want)
	}
}

// TestReloadKeepsJWTProviders: a reload that leaves a provider's config
// as it was keeps the provider, keys and all; a changed one is new.
func TestReloadKeepsJWTProviders(t *testing.T) {
	key := jwtauthtest.NewKey(t, "ES256", "k1")
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwks, jwtauthtest.JWKS(key), 0o600); err != nil {
		t.Fatal(err)
	}
	doc := func(rule, aud string) PolicyConfig {
		return policyOf(t, `
policy:
  jwtProviders:
  - {name: corp, issuer: https://idp.test, audiences: [`+aud+`], jwksFile: `+jwks+`}
  rules:
  - {name: `+rule+`, action: allow, jwt: {claims: {role: admin}}}
`)
	}
	cfg := testConfig()
	cfg.Policy = doc("a", "api")
	r := startProxy(t, cfg)
	before := r.policy.Load().providers[0].prov
	if err := r.ReloadPolicy(doc("b", "api")); err != nil {
		t.Fatal(err)
	}
	if got := r.policy.Load().providers[0].prov; got != before {
		t.Errorf("an unchanged provider was made anew on reload")
	}
	if err := r.ReloadPolicy(doc("b", "web")); err != nil {
		t.Fatal(err)
	}
	if got := r.policy.Load().providers[0].prov; got == before {
		t.Errorf("a changed provider was kept on reload")
	}
}

// TestJWTFromQuery: a token sent as a query parameter is validated, and
// with stripToken removed from the target, the rest of the query kept,
// over HTTP/1.1 and HTTP/2 alike.
func TestJWTFromQuery(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, seen := startL7App(t)
	key := jwtauthtest.NewKey(t, "EdDSA", "k1")
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwks, jwtauthtest.JWKS(key), 0o600); err != nil {
		t.Fatal(err)
	}
	pol := policyOf(t, `
policy:
  jwtProviders:
  - {name: corp, issuer: https://idp.test, jwksFile: `+jwks+`, fromParams: [access_token], stripToken: true}
  rules:
  - {name: token-holders, action: allow, jwt: {issuers: [https://idp.test]}}
`)
	p := startPair(t, app, cm, sm, pairOptions{serverCfg: withPolicy(pol)})
	tok := key.Sign(t, map[string]any{"iss": "https://idp.test", "exp": time.Now().Unix() + 300})
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"http1", h1Client(t)}, {"h2c", h2cClient(t)}} {
		resp, body := get(t, c.client, "http://"+p.client.out()+"/x?a=1&access_token="+tok+"&b=2", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", c.name, resp.StatusCode, body)
		}
		if got := seen()[len(seen())-1].uri; got != "/x?a=1&b=2" {
			t.Errorf("%s: the app got %q; want the token stripped, /x?a=1&b=2", c.name, got)
		}
		if resp, _ := get(t, c.client, "http://"+p.client.out()+"/x?a=1", nil); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: no token: %d; want 403", c.name, resp.StatusCode)
		}
	}
}
