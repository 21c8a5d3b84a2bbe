package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"meshgate/intercept"
	"meshgate/proxy/jwtauth/jwtauthtest"
	"meshgate/topology"
)

// The identities of the policy tests' callers: web and batch are
// services of other namespaces than the pods' default one, so that rules
// by namespace and service account mean something.
const (
	webID   = "spiffe://" + meshTD + "/ns/shop/sa/web"
	batchID = "spiffe://" + meshTD + "/ns/ops/sa/batch"
)

// servicesPolicy is the policy of TestPolicyServices' api and db
// sidecars (and of TestPolicyExplainCLI): web may GET /api/* on 8080 and
// call EmptyCall on the gRPC port; nobody may send x-debug there; only
// the batch service account may reach the database port. no-debug lists
// its ports: a deny rule with HTTP conditions denies every connection
// that is not HTTP on the ports it applies to (fail closed), which with
// no ports would include the database's.
const servicesPolicy = `policy:
  rules:
  - name: api-read
    action: allow
    ports: [8080]
    from: {identities: ["` + webID + `"]}
    http: {methods: [GET], paths: ["/api/*"]}
  - name: no-debug
    action: deny
    ports: [8080, 10000]
    http: {headers: {x-debug: {present: true}}}
  - name: grpc-web
    action: allow
    ports: [10000]
    from: {identities: ["` + webID + `"]}
    http: {grpc: ["grpc.testing.TestService/EmptyCall"]}
  - name: db-batch-only
    action: allow
    ports: [5432]
    from: {serviceAccounts: [batch]}
`

// egressPolicy lets a pod call the mesh pods and nothing else, and tells
// its app why when it is refused.
func egressPolicy(mesh ...*topology.Pod) string {
	var cidrs []string
	for _, p := range mesh {
		cidrs = append(cidrs, p.IPv4.String()+"/32")
		if p.IPv6.IsValid() {
			cidrs = append(cidrs, p.IPv6.String()+"/128")
		}
	}
	return "policy:\n  revealReason: true\n  rules:\n  - name: egress-mesh\n    action: allow\n    direction: outbound\n" +
		"    to: {cidrs: [" + strings.Join(cidrs, ", ") + "]}\n"
}

// TestPolicyServices: the api and db sidecars enforce who may call what,
// the web sidecar what web may call, against real clients: curl gets 403
// with "policy: access denied" for a method, a path (also one that
// reaches it only once normalised), a header or a caller no rule allows;
// grpc-go's interop client gets PERMISSION_DENIED for a method or a
// caller no rule allows; a raw TCP client of the database from the wrong
// service account has its connection closed with no byte, and the
// database never sees it. web's calls outside the mesh are refused by its
// own sidecar: HTTP with 403 and the reason, TCP closed, the outside
// servers seeing no connection. Nothing of a denied call reaches an app,
// and the decisions metric counts each by rule.
func TestPolicyServices(t *testing.T) {
	needRoot(t)
	grpcServer, grpcClient := tool(t, "server"), tool(t, "client")
	_, pods := newLabWith(t, "web", "batch", "api", "db", "outside")
	web, batch, api, db, outside := pods[0], pods[1], pods[2], pods[3], pods[4]
	mesh := []*topology.Pod{web, batch, api, db}

	app := startRecordingApp(t, api, 8080, nil)
	gs, err := api.Start([]string{grpcServer, "--port", "10000"}, topology.ProcOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gs.Stop(5 * time.Second) })
	waitListening(t, api, netip.AddrPortFrom(api.IPv4, 10000), gs)
	dbServer := startTCPGreeter(t, db, 5432, "db ready\n")
	outApp := startRecordingApp(t, outside, 8080, nil)
	outTCP := startTCPGreeter(t, outside, 9000, "outside ready\n")

	ca := meshCA(t)
	opts := func(certs, config string) enrollOpts {
		o := meshOpts(certs, "strict", mesh...)
		o.proxyConfig = config
		return o
	}
	sweb := enroll(t, web, opts(issueAs(t, ca, web, webID), egressPolicy(mesh...)))
	enroll(t, batch, opts(issueAs(t, ca, batch, batchID), ""))
	sapi := enroll(t, api, opts(issueFor(t, ca, api), servicesPolicy))
	sdb := enroll(t, db, opts(issueFor(t, ca, db), servicesPolicy))

	t.Run("HTTP", func(t *testing.T) {
		r := curlReply(t, web, url(api.IPv4, 8080, "/api/items"))
		if r.status != http.StatusOK || r.body != "ok" {
			t.Fatalf("web GET /api/items: %v; want 200 from the app (rule api-read)", r)
		}
		seen := app.requests("/api/items")
		if len(seen) != 1 || seen[0].header.Get("X-Forwarded-Client-Cert") != "URI="+webID {
			t.Errorf("the app saw %d requests to /api/items (want 1) with X-Forwarded-Client-Cert %q (want URI=%s)", len(seen), xfccOf(seen), webID)
		}
		for _, tc := range []struct {
			name string
			from *topology.Pod
			args []string
		}{
			{"web POST (api-read allows GET only)", web, []string{"-d", "order=1", url(api.IPv4, 8080, "/api/orders")}},
			{"web GET /admin (outside /api/*)", web, []string{url(api.IPv4, 8080, "/admin")}},
			{"web GET /api/../admin (normalised to /admin)", web, []string{"--path-as-is", url(api.IPv4, 8080, "/api/../admin")}},
			{"web GET /api/* with x-debug (no-debug)", web, []string{"-H", "x-debug: 1", url(api.IPv4, 8080, "/api/debug")}},
			{"batch GET /api/* (api-read is web's)", batch, []string{url(api.IPv4, 8080, "/api/batch")}},
			{"batch GET /api/* with x-debug (no-debug)", batch, []string{"-H", "X-Debug: yes", url(api.IPv4, 8080, "/api/batch-debug")}},
		} {
			before := app.count()
			r := curlReply(t, tc.from, tc.args...)
			if r.status != http.StatusForbidden || r.header.Get("X-Meshgate-Error") != "policy: access denied" {
				t.Errorf("%s: %v; want 403 with X-Meshgate-Error \"policy: access denied\"", tc.name, r)
			}
			if n := app.count() - before; n != 0 {
				t.Errorf("%s: denied, yet the app saw %d requests", tc.name, n)
			}
		}
		// The caller is told only "access denied"; the log says why.
		sapi.waitOutput(t, "api-read: http.methods: method POST not in [GET]", "the api sidecar's log does not say why web's POST was denied")
		sapi.waitOutput(t, "rule no-debug (deny) matched: http.headers.x-debug", "the api sidecar's log does not name no-debug for the x-debug requests")
	})

	t.Run("gRPC", func(t *testing.T) {
		call := func(from *topology.Pod, testCase string) (string, error) {
			return from.Run(ctxFor(t, 60*time.Second), grpcClient, "--server_host", api.IPv4.String(), "--server_port", "10000", "--test_case", testCase)
		}
		if out, err := call(web, "empty_unary"); err != nil {
			t.Errorf("web EmptyCall (rule grpc-web): %v\n%s", err, out)
		}
		for _, tc := range []struct {
			name     string
			from     *topology.Pod
			testCase string
		}{
			{"web UnaryCall (grpc-web allows EmptyCall only)", web, "large_unary"},
			{"batch EmptyCall (grpc-web is web's)", batch, "empty_unary"},
		} {
			out, err := call(tc.from, tc.testCase)
			if err == nil || !strings.Contains(err.Error(), "code = PermissionDenied desc = policy: access denied") {
				t.Errorf("%s: %v\n%s; want the RPC to fail with PermissionDenied, policy: access denied", tc.name, err, out)
			}
		}
	})

	t.Run("TCP to the database", func(t *testing.T) {
		before := dbServer.accepted.Load()
		got, err := rawTCP(t, web, hostPort(db.IPv4, 5432), "")
		if got != "" || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("web to db:5432 (db-batch-only): read %q, ended by %v; want the connection closed with no byte", got, err)
		}
		if n := dbServer.accepted.Load() - before; n != 0 {
			t.Errorf("the database accepted %d connections for web's denied one, want 0", n)
		}
		sdb.waitOutput(t, "db-batch-only: from.serviceAccounts: service account web not in [batch]", "the db sidecar's log does not say why web's connection was refused")

		// batch's is allowed: the greeting, then an echo.
		c, err := batch.Dial(ctxFor(t, 10*time.Second), "tcp", hostPort(db.IPv4, 5432))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		greeting, err := br.ReadString('\n')
		if err != nil || greeting != "db ready\n" {
			t.Fatalf("batch to db:5432: greeting %q, %v; want \"db ready\\n\"", greeting, err)
		}
		io.WriteString(c, "ping\n")
		if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
			t.Errorf("batch to db:5432: echo %q, %v", line, err)
		}
		if n := dbServer.accepted.Load() - before; n != 1 {
			t.Errorf("the database accepted %d connections, want batch's one", n)
		}
	})

	t.Run("egress outside the mesh", func(t *testing.T) {
		conns, accepted, reqs := outApp.conns.Load(), outTCP.accepted.Load(), int64(outApp.count())
		r := curlReply(t, web, url(outside.IPv4, 8080, "/leak"))
		want := "egress-mesh: to.cidrs: address " + outside.IPv4.String() + " not in ["
		if why := r.header.Get("X-Meshgate-Error"); r.status != http.StatusForbidden ||
			!strings.HasPrefix(why, "policy: denied by rule default (policy default): ") || !strings.Contains(why, want) {
			t.Errorf("web GET outside:8080: %v; want 403 from web's sidecar naming %q", r, want)
		}
		got, err := rawTCP(t, web, hostPort(outside.IPv4, 9000), "hello\n")
		if got != "" || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("web to outside:9000: read %q, ended by %v; want the connection closed with no byte", got, err)
		}
		if n, m, k := outApp.conns.Load()-conns, outTCP.accepted.Load()-accepted, int64(outApp.count())-reqs; n+m+k != 0 {
			t.Errorf("the outside pod's servers saw %d HTTP connections (%d requests) and %d TCP connections from web, want none", n, k, m)
		}
		// The outside pod is there to be reached by a pod no egress
		// rule limits: it is web's policy that refused web.
		if r := curlReply(t, batch, url(outside.IPv4, 8080, "/from-batch")); r.status != http.StatusOK {
			t.Errorf("batch GET outside:8080: %v; want 200", r)
		}
	})

	// Each denial is counted once, by the rule that made it (the default
	// for a port some allow rule applies to), and each allowed call by
	// its rule.
	checkDecisions(t, sapi,
		decisionCount{"inbound", "main", "api-read", "allow", "allowed", 1},
		decisionCount{"inbound", "main", "grpc-web", "allow", "allowed", 1},
		decisionCount{"inbound", "main", "no-debug", "deny", "denied", 2},
		// web's POST, /admin and /api/../admin, batch's GET; web's
		// UnaryCall and batch's EmptyCall.
		decisionCount{"inbound", "default", "default", "default", "denied", 6},
	)
	checkDecisions(t, sdb,
		decisionCount{"inbound", "main", "db-batch-only", "allow", "allowed", 1},
		decisionCount{"inbound", "default", "default", "default", "denied", 1},
	)
	checkDecisions(t, sweb,
		decisionCount{"outbound", "default", "default", "default", "denied", 2},
	)
}

// TestPolicyJWT: the api sidecar validates bearer tokens against the keys
// of a JWKS server in another pod, fetched through the mesh: a valid
// token whose claims a rule allows reaches the app with its claims in the
// configured headers (and a client's forgery of them gone); an expired
// one, one for another audience, from an unknown issuer, with a bad
// signature (another key under a known kid, a tampered payload), unsigned
// or HMAC-signed is answered 401 with the reason; one of a key the
// served JWKS lacks is refused as unknown-kid until the key is added to
// the JWKS, and then accepted with nothing restarted.
func TestPolicyJWT(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "cli", "api", "idp")
	cli, api, idp := pods[0], pods[1], pods[2]
	const issuer = "https://idp.mesh.test"
	k1 := jwtauthtest.NewKey(t, "ES256", "k1")
	k2 := jwtauthtest.NewKey(t, "ES256", "k2")
	jwksFile := filepath.Join(publicTempDir(t), "jwks.json")
	writeAtomic(t, jwksFile, jwtauthtest.JWKS(k1))
	// The identity provider serves the file as it is on disk at each
	// request, as one whose keys are rotated by a deployment would.
	jwks := startRecordingApp(t, idp, 8080, func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(jwksFile)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	app := startRecordingApp(t, api, 8080, nil)

	ca := meshCA(t)
	enroll(t, idp, meshOpts(issueFor(t, ca, idp), "strict", pods...))
	ao := meshOpts(issueFor(t, ca, api), "strict", pods...)
	ao.proxyConfig = `policy:
  jwtProviders:
  - name: corp
    issuer: ` + issuer + `
    audiences: [shop-api]
    jwksURL: ` + url(idp.IPv4, 8080, "/jwks.json") + `
    outputClaimHeaders: {sub: x-user, role: x-role}
  rules:
  - name: admins
    action: allow
    ports: [8080]
    jwt: {claims: {role: admin}}
`
	sapi := enroll(t, api, ao)
	enroll(t, cli, meshOpts(issueFor(t, ca, cli), "strict", pods...))

	now := time.Now().Unix()
	claims := func(over map[string]any) map[string]any {
		c := map[string]any{"iss": issuer, "aud": "shop-api", "sub": "ada", "role": "admin", "iat": now, "exp": now + 600}
		maps.Copy(c, over)
		return c
	}
	// send GETs path from cli with token as a bearer token (none if
	// empty) and a forged X-User, and fails t unless the answer is status
	// with an X-Meshgate-Error starting with why, and the app saw the
	// request only if it was answered 200.
	send := func(t *testing.T, path, token string, status int, why string) {
		t.Helper()
		args := []string{"-H", "X-User: mallory"}
		if token != "" {
			args = append(args, "-H", "Authorization: Bearer "+token)
		}
		before := app.count()
		r := curlReply(t, cli, append(args, url(api.IPv4, 8080, path))...)
		if r.status != status || !strings.HasPrefix(r.header.Get("X-Meshgate-Error"), why) {
			t.Errorf("%s: %v; want %d with X-Meshgate-Error %q...", path, r, status, why)
		}
		if status == http.StatusUnauthorized && r.header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
			t.Errorf("%s: 401 with WWW-Authenticate %q, want Bearer error=\"invalid_token\"", path, r.header.Get("WWW-Authenticate"))
		}
		if n := app.count() - before; status != http.StatusOK && n != 0 {
			t.Errorf("%s: refused with %d, yet the app saw %d requests", path, r.status, n)
		}
	}

	send(t, "/valid", k1.Sign(t, claims(nil)), http.StatusOK, "")
	if seen := app.requests("/valid"); len(seen) != 1 || seen[0].header.Get("X-User") != "ada" || seen[0].header.Get("X-Role") != "admin" ||
		len(seen[0].header.Values("X-User")) != 1 {
		t.Errorf("the app saw %d requests to /valid, with X-User %q and X-Role %q; want one, with ada (the token's sub, not the client's mallory) and admin",
			len(seen), headerValues(seen, "X-User"), headerValues(seen, "X-Role"))
	}
	// A key the served JWKS does not have yet: its kid is looked for in
	// a fresh fetch (which starts the 5s the next such fetch waits).
	newKeyToken := k2.Sign(t, claims(nil))
	send(t, "/new-key-early", newKeyToken, http.StatusUnauthorized, `jwt: invalid token: unknown-kid: provider "corp" has no key with kid "k2"`)

	valid := k1.Sign(t, claims(map[string]any{"role": "user"}))
	parts := strings.Split(valid, ".")
	adminPayload, _ := json.Marshal(claims(nil))
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(adminPayload) + "." + parts[2]
	impostor := jwtauthtest.NewKey(t, "ES256", "k1") // not the JWKS's k1
	for _, tc := range []struct {
		path   string
		token  string
		status int
		why    string
	}{
		{"/role-user", valid, http.StatusForbidden, "policy: access denied"},
		{"/no-token", "", http.StatusForbidden, "policy: access denied"},
		{"/expired", k1.Sign(t, claims(map[string]any{"iat": now - 7200, "exp": now - 3600})), http.StatusUnauthorized, "jwt: invalid token: expired: token expired at "},
		{"/wrong-audience", k1.Sign(t, claims(map[string]any{"aud": "web"})), http.StatusUnauthorized, `jwt: invalid token: wrong-audience: token audience ["web"] has none of ["shop-api"]`},
		{"/wrong-issuer", k1.Sign(t, claims(map[string]any{"iss": "https://evil.test"})), http.StatusUnauthorized, `jwt: invalid token: unknown-issuer: no provider for issuer "https://evil.test"`},
		{"/other-key", impostor.Sign(t, claims(nil)), http.StatusUnauthorized, `jwt: invalid token: bad-signature: signature does not verify with key "k1" of provider "corp"`},
		{"/tampered", tampered, http.StatusUnauthorized, `jwt: invalid token: bad-signature: signature does not verify with key "k1" of provider "corp"`},
		{"/alg-none", jwtauthtest.SignNone(claims(nil)), http.StatusUnauthorized, `jwt: invalid token: alg-refused: alg "none" is not accepted`},
		{"/hmac", jwtauthtest.SignHMAC(t, "HS256", []byte("the issuer's public key, as a secret"), "k1", claims(nil)), http.StatusUnauthorized, "jwt: invalid token: alg-refused: "},
	} {
		send(t, tc.path, tc.token, tc.status, tc.why)
	}

	// Rotation: the identity provider publishes k2. A token of k2 is
	// accepted once the sidecar fetches the JWKS again, which a token
	// naming an unknown kid makes it do, at most every 5s.
	writeAtomic(t, jwksFile, jwtauthtest.JWKS(k1, k2))
	rotated := time.Now()
	tries := 0
	eventually(t, 12*time.Second, func() error {
		tries++
		args := []string{"-H", "Authorization: Bearer " + newKeyToken, url(api.IPv4, 8080, "/new-key")}
		switch r := curlReply(t, cli, args...); {
		case r.status == http.StatusOK:
			return nil
		case r.status == http.StatusUnauthorized && strings.HasPrefix(r.header.Get("X-Meshgate-Error"), "jwt: invalid token: unknown-kid: "):
			return fmt.Errorf("a token of the new key k2 is still refused %v after the JWKS was rotated: %v", time.Since(rotated).Round(time.Millisecond), r)
		default:
			t.Fatalf("a token of the new key k2, after the rotation: %v; want 401 unknown-kid until the sidecar fetches the JWKS again, then 200", r)
			return nil
		}
	})
	t.Logf("a token of the rotated-in key was accepted %v after the rotation, at the %d. try", time.Since(rotated).Round(time.Millisecond), tries)
	send(t, "/old-key", k1.Sign(t, claims(nil)), http.StatusOK, "")

	// The keys came through the mesh: the identity provider's sidecar
	// handed its app the api sidecar's verified identity.
	fetches := jwks.requests("/jwks.json")
	if len(fetches) < 2 {
		t.Errorf("the JWKS was fetched %d times, want at least twice (at the start, after the rotation)", len(fetches))
	}
	for i, f := range fetches {
		if xfcc := f.header.Get("X-Forwarded-Client-Cert"); xfcc != "URI="+spiffeFor(api) {
			t.Errorf("JWKS fetch %d: X-Forwarded-Client-Cert %q, want URI=%s (fetched through the mesh by the api sidecar)", i, xfcc, spiffeFor(api))
		}
	}
	checkDecisions(t, sapi,
		decisionCount{"inbound", "main", "admins", "allow", "allowed", 3},
		decisionCount{"inbound", "default", "default", "default", "denied", 2}, // role user, no token
	)
}

// TestPolicyDryRunAndAudit: a dryRun deny rule and an audit rule change
// nothing of the traffic (every request reaches the app), and each match
// is logged by the sidecar ("policy dry-run-denied", "policy audited",
// with the rule) and counted in the decisions metric.
func TestPolicyDryRunAndAudit(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "cli", "api")
	cli, api := pods[0], pods[1]
	app := startRecordingApp(t, api, 8080, nil)
	ca := meshCA(t)
	ao := meshOpts(issueFor(t, ca, api), "strict", pods...)
	ao.proxyConfig = `policy:
  rules:
  - name: watch-deletes
    action: audit
    http: {methods: [DELETE]}
  - name: close-beta
    action: deny
    dryRun: true
    http: {paths: ["/beta/*"]}
`
	sapi := enroll(t, api, ao)
	enroll(t, cli, meshOpts(issueFor(t, ca, cli), "strict", pods...))

	for _, tc := range []struct {
		args []string
		n    int
	}{
		{[]string{"-X", "DELETE", url(api.IPv4, 8080, "/items/1")}, 2},
		{[]string{url(api.IPv4, 8080, "/beta/new")}, 3},
		{[]string{url(api.IPv4, 8080, "/plain")}, 1},
	} {
		for range tc.n {
			if r := curlReply(t, cli, tc.args...); r.status != http.StatusOK || r.body != "ok" {
				t.Errorf("curl %s: %v; want 200 from the app (audit and dryRun rules never block)", strings.Join(tc.args, " "), r)
			}
		}
	}
	for path, n := range map[string]int{"/items/1": 2, "/beta/new": 3, "/plain": 1} {
		if got := len(app.requests(path)); got != n {
			t.Errorf("the app saw %d requests to %s, want %d", got, path, n)
		}
	}
	checkDecisions(t, sapi,
		decisionCount{"inbound", "main", "watch-deletes", "audit", "audited", 2},
		decisionCount{"inbound", "main", "close-beta", "deny", "dry-run-denied", 3},
	)
	if n := sumDecisions(sapi.metrics(t), "result=denied"); n != 0 {
		t.Errorf("%v requests counted denied, want none", n)
	}
	eventually(t, 5*time.Second, func() error {
		audited := sapi.logs("policy audited", "rule", "watch-deletes")
		dry := sapi.logs("policy dry-run-denied", "rule", "close-beta")
		if len(audited) != 2 || len(dry) != 3 {
			return fmt.Errorf("the sidecar logged %d \"policy audited\" lines for watch-deletes (want 2) and %d \"policy dry-run-denied\" for close-beta (want 3):\n%s",
				len(audited), len(dry), tail(sapi.proc.Output(), 20))
		}
		if why, _ := dry[0]["reason"].(string); !strings.Contains(why, "rule close-beta (deny) matched: http.paths: path /beta/new in [/beta/*]") {
			t.Errorf("the dry-run report's reason is %q; want it to say which condition matched", why)
		}
		return nil
	})
}

// TestPolicyReloadUnderLoad: a policy written over the sidecar's config
// file while a client drives 200 requests/s at a path both the old and
// the new policy allow takes effect within a second (a probe path the new
// one denies is answered 403, also on the connection the probe already
// had open), and costs the load no request. A broken file written next is
// refused with the problem named, and the policy in effect stays.
func TestPolicyReloadUnderLoad(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "cli", "api")
	cli, api := pods[0], pods[1]
	app := startRecordingApp(t, api, 8080, nil)
	const (
		oldPolicy = `policy:
  rules:
  - {name: main, action: allow, ports: [8080], http: {paths: ["/main/*"]}}
  - {name: probe, action: allow, ports: [8080], http: {paths: ["/probe/*"]}}
`
		newPolicy = `policy:
  rules:
  - {name: main, action: allow, ports: [8080], http: {paths: ["/main/*"]}}
  - {name: probe-closed, action: deny, ports: [8080], http: {paths: ["/probe/*"]}}
`
		brokenPolicy = `policy:
  rules:
  - {name: main, action: permit, ports: [8080], http: {paths: ["/main/*"]}}
`
	)
	config := filepath.Join(publicTempDir(t), "proxy.yaml")
	writeAtomic(t, config, []byte(oldPolicy))
	ca := meshCA(t)
	ao := meshOpts(issueFor(t, ca, api), "strict", pods...)
	ao.proxyArgs = append(ao.proxyArgs, "--config", config)
	sapi := enroll(t, api, ao)
	enroll(t, cli, meshOpts(issueFor(t, ca, cli), "strict", pods...))

	type result struct {
		end    time.Time
		status int
		err    error
	}
	var (
		mu           sync.Mutex
		load, probes []result
		wg           sync.WaitGroup
		stop         = make(chan struct{})
		stopOnce     sync.Once
		seq          atomic.Int64
		loadClient   = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: cli.Dial, MaxIdleConnsPerHost: 8}}
		probeDials   atomic.Int64
		probeClient  = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				probeDials.Add(1)
				return cli.Dial(ctx, network, addr)
			}}}
		stopLoad      = func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
		record        = func(to *[]result, r result) { mu.Lock(); *to = append(*to, r); mu.Unlock() }
		countOf       = func(of *[]result) int { mu.Lock(); defer mu.Unlock(); return len(*of) }
		getStatusFrom = func(c *http.Client, path string) result {
			resp, err := c.Get(url(api.IPv4, 8080, path))
			if err != nil {
				return result{time.Now(), 0, err}
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return result{time.Now(), resp.StatusCode, err}
		}
	)
	t.Cleanup(func() {
		stopLoad()
		loadClient.CloseIdleConnections()
		probeClient.CloseIdleConnections()
	})
	// 200 requests/s: a tick every 5ms, taken by whichever of 4 workers
	// is free (a tick none is free for is skipped, not queued).
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				record(&load, getStatusFrom(loadClient, fmt.Sprintf("/main/%d", seq.Add(1))))
			}
		})
	}
	// The probe, every 20ms, on the one keep-alive connection it keeps.
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			record(&probes, getStatusFrom(probeClient, fmt.Sprintf("/probe/%d", i)))
		}
	})
	// moreLoad waits for n more requests of the load.
	moreLoad := func(n int) {
		t.Helper()
		until := countOf(&load) + n
		waitFor(t, fmt.Sprintf("%d more requests of the load", n), 30*time.Second, func() bool { return countOf(&load) >= until })
	}
	moreLoad(200)

	writeAtomic(t, config+".new", []byte(newPolicy))
	written := time.Now()
	if err := os.Rename(config+".new", config); err != nil {
		t.Fatal(err)
	}
	var firstDenied time.Time
	eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range probes {
			if p.status == http.StatusForbidden {
				firstDenied = p.end
				return nil
			}
		}
		return fmt.Errorf("the probe path is not denied %v after the new policy was written", time.Since(written).Round(time.Millisecond))
	})
	took := firstDenied.Sub(written)
	t.Logf("the probe path was first answered 403 %v after the new policy was written", took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("the probe path was first answered 403 %v after the new policy was written, want within 1s", took.Round(time.Millisecond))
	}
	eventually(t, 5*time.Second, func() error {
		if l := sapi.logs("config reloaded"); len(l) != 1 || l[0]["policy_rules"] != 2.0 {
			return fmt.Errorf("the sidecar logged %d \"config reloaded\" lines, want 1 with policy_rules 2: %v", len(l), l)
		}
		return nil
	})
	moreLoad(200)

	writeAtomic(t, config+".new", []byte(brokenPolicy))
	if err := os.Rename(config+".new", config); err != nil {
		t.Fatal(err)
	}
	var refusal logLine
	eventually(t, 5*time.Second, func() error {
		l := sapi.logs("config reload refused: the running config stays")
		if len(l) == 0 {
			return fmt.Errorf("the broken config was not refused in the log:\n%s", tail(sapi.proc.Output(), 10))
		}
		refusal = l[0]
		return nil
	})
	problems, _ := refusal["problems"].([]any)
	if len(problems) != 1 || !strings.HasPrefix(fmt.Sprint(problems[0]), `policy.rules[0].action: "permit"`) {
		t.Errorf("the refusal names the problems %q; want one, policy.rules[0].action: \"permit\" ...", problems)
	}
	probesBefore := countOf(&probes)
	moreLoad(200)
	waitFor(t, "more probes", 10*time.Second, func() bool { return countOf(&probes) >= probesBefore+5 })
	stopLoad()

	mu.Lock()
	defer mu.Unlock()
	var failed []result
	ok := 0
	for _, r := range load {
		if r.status != http.StatusOK || r.err != nil {
			failed = append(failed, r)
		} else {
			ok++
		}
	}
	t.Logf("load: %d requests, %d failed; probe: %d requests on %d connections", len(load), len(failed), len(probes), probeDials.Load())
	if n := probeDials.Load(); n != 1 {
		t.Errorf("the probe made %d connections, want its one kept open across the reload (whose next requests the new policy decides)", n)
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d requests of the load failed (both policies allow them), e.g. %d %v", len(failed), len(load), failed[0].status, failed[0].err)
	}
	probeOK := 0
	for i, p := range probes {
		switch {
		case p.end.Before(written) && (p.status != http.StatusOK || p.err != nil):
			t.Errorf("probe %d, before the new policy was written: %d %v; want 200", i, p.status, p.err)
		case !p.end.Before(firstDenied) && (p.status != http.StatusForbidden || p.err != nil):
			t.Errorf("probe %d, after the new policy took effect (and after the broken one was refused): %d %v; want 403", i, p.status, p.err)
		}
		if p.status == http.StatusOK {
			probeOK++
		}
	}
	if n := len(app.requests("/main/")); n != ok {
		t.Errorf("the app saw %d requests of the load, want the %d answered 200", n, ok)
	}
	if n := len(app.requests("/probe/")); n != probeOK {
		t.Errorf("the app saw %d probes, want the %d answered 200", n, probeOK)
	}
	// Each probe answered 403 was denied and counted once. Rarely (about
	// one run in ten here) one more is counted: the client sidecar resends
	// a request whose pooled connection ended before any answer came back
	// (h1serve.go, exchange), and the api sidecar decides it again. The
	// log cannot tell (zap samples a line logged a hundred times a
	// second), so one or two more are let pass; a count that misses a
	// denial, or counts each twice, does not.
	m := sapi.metrics(t)
	if n, want := sumDecisions(m, "rule=probe-closed}", "result=denied"), float64(len(probes)-probeOK); n < want || n > want+2 {
		t.Errorf("probe-closed denied %v requests, want the %v probes answered 403 (or one or two more, resent)", n, want)
	}
	if n := sumDecisions(m, "rule=probe}"); n != 0 { // rule sorts last of the labels
		t.Errorf("the decisions of rule probe, gone with the reload, are still in /metrics (%v)", n)
	}
}

// TestPolicyExplainCLI: `meshgate policy explain` on the config of
// TestPolicyServices says which rule (or the default) decides a call and
// which condition failed, with exit status 1 for a denied call and 0 for
// an allowed one; a running sidecar's admin /explain, given the same
// call, says the same.
func TestPolicyExplainCLI(t *testing.T) {
	needRoot(t)
	config := filepath.Join(publicTempDir(t), "proxy.yaml")
	writeAtomic(t, config, []byte(servicesPolicy))
	_, pods := newLabWith(t, "api")
	api := pods[0]
	enroll(t, api, enrollOpts{proxyConfig: servicesPolicy})

	for _, tc := range []struct {
		name   string
		args   []string
		query  neturl.Values
		status int
		want   []string
	}{
		{
			"web POST, denied by the default",
			[]string{"--from", webID, "--port", "8080", "--method", "POST", "--path", "/api/x"},
			neturl.Values{"from": {webID}, "port": {"8080"}, "method": {"POST"}, "path": {"/api/x"}},
			1,
			[]string{
				"decision: DENY by default (policy default)\n",
				"reason:   no allow rule matched, and 1 allow rule(s) apply to app port 8080, so the default is deny; api-read: http.methods: method POST not in [GET]\n",
				"FAIL http.methods: method POST not in [GET]\n",
			},
		},
		{
			"web GET with x-debug, denied by no-debug",
			[]string{"--from", webID, "--port", "8080", "--method", "GET", "--path", "/api/x", "--header", "x-debug=1"},
			neturl.Values{"from": {webID}, "port": {"8080"}, "method": {"GET"}, "path": {"/api/x"}, "header": {"x-debug:1"}},
			1,
			[]string{"decision: DENY by no-debug (policy main)\n", "MATCHED\n"},
		},
		{
			"web GET, allowed",
			[]string{"--from", webID, "--port", "8080", "--method", "GET", "--path", "/api/x"},
			neturl.Values{"from": {webID}, "port": {"8080"}, "method": {"GET"}, "path": {"/api/x"}},
			0,
			[]string{"decision: ALLOW by api-read (policy main)\n", "ok   http.methods: method GET in [GET]\n"},
		},
		{
			"batch's connection to the database, allowed",
			[]string{"--from", batchID, "--port", "5432"},
			neturl.Values{"from": {batchID}, "port": {"5432"}},
			0,
			[]string{"decision: ALLOW by db-batch-only (policy main)\n", "request:  none (the connection is taken as not HTTP)\n"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := meshgate(t, append([]string{"policy", "explain", "--config", config}, tc.args...)...)
			status := 0
			if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
				status = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("meshgate policy explain: %v", err)
			}
			if status != tc.status {
				t.Errorf("meshgate policy explain %s: exit status %d, want %d\n%s", strings.Join(tc.args, " "), status, tc.status, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("meshgate policy explain %s: the output lacks %q:\n%s", strings.Join(tc.args, " "), w, out)
				}
			}
			code, body, err := podGet(api, fmt.Sprintf("http://127.0.0.1:%d/explain?%s", intercept.AdminPort, tc.query.Encode()))
			if err != nil || code != http.StatusOK || body != out {
				t.Errorf("the running sidecar's /explain?%s: %d %v; want 200 with what meshgate policy explain says:\n%s\nit says:\n%s", tc.query.Encode(), code, err, out, body)
			}
		})
	}
}

// seenRequest is a request as an app received it.
type seenRequest struct {
	method, path string
	header       http.Header
}

// recordingApp is an HTTP app (HTTP/1.x and h2c) in a pod that records
// every request it is sent and counts the connections it accepts, so a
// test can tell that nothing of a denied call reached it.
type recordingApp struct {
	conns atomic.Int64
	mu    sync.Mutex
	seen  []seenRequest
}

// startRecordingApp serves a recordingApp on port inside pod. handler,
// if not nil, answers each request once it is recorded; otherwise the
// answer is 200 "ok".
func startRecordingApp(t *testing.T, pod *topology.Pod, port int, handler http.HandlerFunc) *recordingApp {
	t.Helper()
	app := &recordingApp{}
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				app.conns.Add(1)
			}
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			app.mu.Lock()
			app.seen = append(app.seen, seenRequest{r.Method, r.URL.Path, r.Header.Clone()})
			app.mu.Unlock()
			if handler != nil {
				handler(w, r)
				return
			}
			io.WriteString(w, "ok")
		}),
	}
	serveHTTPIn(t, pod, port, srv)
	return app
}

// count is how many requests the app has seen.
func (a *recordingApp) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.seen)
}

// requests returns the requests whose path is path, or starts with it
// when it ends in "/".
func (a *recordingApp) requests(path string) []seenRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []seenRequest
	for _, r := range a.seen {
		if r.path == path || strings.HasSuffix(path, "/") && strings.HasPrefix(r.path, path) {
			out = append(out, r)
		}
	}
	return out
}

func headerValues(rs []seenRequest, name string) [][]string {
	var out [][]string
	for _, r := range rs {
		out = append(out, r.header.Values(name))
	}
	return out
}

func xfccOf(rs []seenRequest) [][]string { return headerValues(rs, "X-Forwarded-Client-Cert") }

// tcpGreeter is a TCP server in a pod that greets each connection with a
// line and then echoes what it is sent (a server-first protocol, as
// PostgreSQL's and MySQL's servers speak first); it counts the
// connections it accepts.
type tcpGreeter struct{ accepted atomic.Int64 }

func startTCPGreeter(t *testing.T, pod *topology.Pod, port int, greeting string) *tcpGreeter {
	t.Helper()
	ln := listenIn(t, pod, port)
	g := &tcpGreeter{}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		open = map[net.Conn]bool{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.accepted.Add(1)
			mu.Lock()
			open[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(open, c)
					mu.Unlock()
					c.Close()
				}()
				io.WriteString(c, greeting)
				io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	waitListening(t, pod, netip.AddrPortFrom(pod.IPv4, uint16(port)), nil)
	return g
}

// rawTCP connects from inside pod to addr as a plain TCP client, sends
// send (if any), and returns what it reads until the connection ends, and
// how it ended (nil: closed by the other side; os.ErrDeadlineExceeded
// after 10s without an end).
func rawTCP(t *testing.T, pod *topology.Pod, addr, send string) (string, error) {
	t.Helper()
	c, err := pod.Dial(ctxFor(t, 10*time.Second), "tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		// The sidecar accepted the connection, and the reset that ends it
		// came before the dial had looked at it: closed with no byte.
		return "", err
	}
	if err != nil {
		t.Fatalf("connect from %s to %s: %v", pod.Name, addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if send != "" {
		// A write can fail once the other side has reset: what is read
		// says the rest.
		io.WriteString(c, send)
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// reply is an HTTP response as curl got it.
type reply struct {
	status int
	header http.Header
	body   string
}

func (r reply) String() string {
	return fmt.Sprintf("%d (X-Meshgate-Error %q) %q", r.status, r.header.Get("X-Meshgate-Error"), r.body)
}

// curlReply makes an HTTP/1.1 request with curl inside pod and returns
// the response, whatever its status.
func curlReply(t *testing.T, pod *topology.Pod, args ...string) reply {
	t.Helper()
	headers := filepath.Join(t.TempDir(), "headers")
	argv := append([]string{"curl", "-sS", "--http1.1", "--max-time", "20", "-D", headers}, args...)
	body, err := pod.Run(ctxFor(t, 30*time.Second), argv...)
	if err != nil {
		t.Fatalf("curl %s in %s: %v", strings.Join(args, " "), pod.Name, err)
	}
	h, err := os.ReadFile(headers)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(h))), nil)
	if err != nil {
		t.Fatalf("curl %s in %s: unreadable response head (%v):\n%s", strings.Join(args, " "), pod.Name, err, h)
	}
	resp.Body.Close()
	return reply{resp.StatusCode, resp.Header, body}
}

// writeAtomic writes b to path the way config management does: a new
// file renamed over the old one, so no reader sees half of it.
func writeAtomic(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// decisionCount is a sample of meshgate_policy_decisions_total.
type decisionCount struct {
	direction, policy, rule, action, result string
	want                                    float64
}

// checkDecisions fails t unless the sidecar's decisions metric reaches
// every want (a decision is counted as it is made, which for a
// connection the client saw closed can be a moment later), and no
// connection that carried no byte was counted as a denial (see
// emptyConnDenials).
func checkDecisions(t *testing.T, s *sidecar, wants ...decisionCount) {
	t.Helper()
	eventually(t, 5*time.Second, func() error {
		m := s.metrics(t)
		var errs []error
		if empty := s.emptyConnDenials(); len(empty) > 0 {
			errs = append(errs, fmt.Errorf("%s sidecar: %d connections that carried no byte, closed by their client, were denied by policy: %v", s.pod.Name, len(empty), empty))
		}
		for _, w := range wants {
			key := fmt.Sprintf("meshgate_policy_decisions_total{action=%s,direction=%s,policy=%s,result=%s,rule=%s}", w.action, w.direction, w.policy, w.result, w.rule)
			want := w.want
			if got := m[key]; got != want {
				errs = append(errs, fmt.Errorf("%s sidecar: %s = %v, want %v", s.pod.Name, key, got, want))
			}
		}
		if len(errs) > 0 {
			errs = append(errs, fmt.Errorf("all of its decisions:\n%s", decisionLines(m)))
		}
		return errors.Join(errs...)
	})
}

// sumDecisions sums meshgate_policy_decisions_total over the samples
// whose labels contain every one of want.
func sumDecisions(m topology.Samples, want ...string) float64 {
	return m.Sum("meshgate_policy_decisions_total", want...)
}

func decisionLines(m topology.Samples) string {
	var lines []string
	for k, v := range m {
		if strings.HasPrefix(k, "meshgate_policy_decisions_total{") {
			lines = append(lines, fmt.Sprintf("  %s %v", k, v))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// emptyConnDenials are the sidecar's connections that policy denied as
// not HTTP although they carried nothing at all: their client closed
// them before sending a byte (detected_by client_closed). The sidecar
// counts such a connection as a denial (and logs it at warn), by the rule
// that would deny a connection that is not HTTP, e.g. a deny rule with
// HTTP conditions failing closed. A client sidecar makes one when it
// dials the destination while detecting its app's protocol and then
// carries the app's HTTP/2 on its pooled connection instead (which a
// busy machine makes likely), and so does any client that connects and
// closes, as a TCP health check does. Nobody was denied anything, so
// none is to be decided.
func (s *sidecar) emptyConnDenials() []logLine {
	var out []logLine
	for _, l := range s.logs("connection closed", "detected_by", "client_closed") {
		if why, _ := l["reason"].(string); strings.HasPrefix(why, "policy: ") && l["bytes_received"] == 0.0 && l["bytes_sent"] == 0.0 {
			out = append(out, l)
		}
	}
	return out
}

// logs returns the sidecar's JSON log lines with message msg and, for
// each key, value pair of kv, that value.
func (s *sidecar) logs(msg string, kv ...string) []logLine {
	var out []logLine
	sc := bufio.NewScanner(strings.NewReader(s.proc.Output()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) != nil || l["msg"] != msg {
			continue
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if l[kv[i]] != kv[i+1] {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}
