package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// accessOf parses an access section over testConfig.
func accessOf(t testing.TB, doc string) AccessConfig {
	t.Helper()
	cfg, err := ParseConfig([]byte(doc))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	return cfg.Access
}

// dialFrom connects to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) (*net.TCPConn, error) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn), nil
}

// echoes reports whether a connection from src to addr is forwarded to
// the echo backend (true), or reset with no byte (false).
func echoes(t *testing.T, src, addr string) bool {
	t.Helper()
	c, err := dialFrom(t, src, addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return false // reset before the dial returned
	}
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	b := make([]byte, 4)
	n, err := c.Read(b)
	switch {
	case n == 4 && string(b) == "ping":
		return true
	case isTimeout(err):
		t.Fatalf("from %s: neither echoed nor closed after 5s", src)
	}
	return false
}

// TestIPListsInbound: a deny list refuses a caller at accept (reset, the
// app never dialed, counted and logged by list); an allow list lets in
// only what it holds; a list file's change is picked up, and a bad one
// keeps the last good list, the bad line named.
func TestIPListsInbound(t *testing.T) {
	dialed := make(chan struct{}, 100)
	be := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
		dialed <- struct{}{}
		echo(c)
	})
	dir := t.TempDir()
	file := filepath.Join(dir, "allowed.txt")
	if err := os.WriteFile(file, []byte("# the office\n127.0.0.3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Access = accessOf(t, `
access:
  ipLists:
  - {name: scanners, action: deny, cidrs: [127.0.0.2/32]}
  - {name: office, action: allow, cidrs: [127.0.0.0/30], files: [`+file+`]}
`)
	r := startProxy(t, cfg, to(be.addr()))

	if !echoes(t, "127.0.0.1", r.in()) {
		t.Error("127.0.0.1 (in office) was refused")
	}
	<-dialed
	for _, src := range []string{"127.0.0.2", "127.0.0.4"} {
		if echoes(t, src, r.in()) {
			t.Errorf("%s was forwarded; want it refused", src)
		}
	}
	select {
	case <-dialed:
		t.Error("the app was dialed for a refused caller")
	case <-time.After(100 * time.Millisecond):
	}
	if !echoes(t, "127.0.0.3", r.in()) {
		t.Error("127.0.0.3 (in office's file) was refused")
	}
	for rule, want := range map[string]float64{"scanners": 1, "default": 1, "office": 0} {
		if got := r.counter(t, "meshgate_access_denials_total", map[string]string{"direction": "inbound", "stage": "ip-list", "rule": rule}); got != want {
			t.Errorf("denials by %s: %v, want %v", rule, got, want)
		}
	}
	var reasons []string
	for _, e := range r.logs.FilterMessage("connection refused").All() {
		reasons = append(reasons, field(e, "reason"))
	}
	if diff := cmp.Diff([]string{"ip-list: scanners", "ip-list: default (in no allow list: office)"}, reasons); diff != "" {
		t.Errorf("refusal log lines (-want +got):\n%s", diff)
	}

	// The file changes: 127.0.0.4 is let in, with nothing restarted.
	writeFile(t, file, "127.0.0.3\n127.0.0.4 # new\n")
	waitFor(t, func() bool { return echoes(t, "127.0.0.4", r.in()) })

	// A bad file keeps the last good list, and the log names the line.
	writeFile(t, file, "127.0.0.3\n127.0.0.5/24\n")
	waitFor(t, func() bool {
		return r.logs.FilterMessage("ip list file refused: its last good content stays").Len() > 0
	})
	e := r.logs.FilterMessage("ip list file refused: its last good content stays").All()[0]
	if got := e.ContextMap()["problems"]; !strings.Contains(strings.Join(toStrings(got), "\n"), file+": line 2: 127.0.0.5/24: bits set past the /24; want 127.0.0.0/24") {
		t.Errorf("refusal problems %v", got)
	}
	if !echoes(t, "127.0.0.4", r.in()) {
		t.Error("after a bad file, 127.0.0.4 was refused; want the last good list kept")
	}

	// A config reload while the file is bad keeps its last good content
	// too.
	if err := r.ReloadAccess(cfg.Access); err != nil {
		t.Fatalf("reload with a bad list file it had good content of: %v", err)
	}
	if !echoes(t, "127.0.0.4", r.in()) {
		t.Error("after a reload with the bad file, 127.0.0.4 was refused; want the last good list kept")
	}

	// A reload without lists: nothing is checked.
	if err := r.ReloadAccess(AccessConfig{}); err != nil {
		t.Fatal(err)
	}
	if !echoes(t, "127.0.0.2", r.in()) {
		t.Error("after the lists were removed, 127.0.0.2 was refused")
	}
	if n := r.counter(t, "meshgate_access_denials_total", map[string]string{"rule": "scanners"}); n != 0 {
		t.Errorf("the removed list's series stays in /metrics (%v)", n)
	}
}

func toStrings(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, s := range l {
			out = append(out, s.(string))
		}
	}
	if l, ok := v.([]string); ok {
		out = l
	}
	return out
}

// writeFile replaces path's content the way config management does: a
// new file renamed over it.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestIPListsOutbound: an outbound deny list refuses the app's
// connections to the listed destinations before they are dialed.
func TestIPListsOutbound(t *testing.T) {
	dialed := make(chan struct{}, 10)
	be := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
		dialed <- struct{}{}
		echo(c)
	})
	cfg := testConfig()
	cfg.Access = accessOf(t, "access:\n  ipLists:\n  - {name: no-loopback, action: deny, direction: outbound, cidrs: [127.0.0.0/8]}\n")
	r := startProxy(t, cfg, to(be.addr()))
	// Reset at once: the dial itself may see it, or the write (a reset
	// that came first is reported once, to whichever call is first).
	if c, err := dialFrom(t, "127.0.0.1", r.out()); !errors.Is(err, syscall.ECONNRESET) {
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("hello")); !errors.Is(err, syscall.ECONNRESET) {
			if err := expectClosed(t, c, 5*time.Second); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("refused connection ended with %v; want a reset", err)
			}
		}
	}
	select {
	case <-dialed:
		t.Error("the destination was dialed")
	case <-time.After(100 * time.Millisecond):
	}
	line := r.closedLogs(t, 1)[0]
	if got := field(line, "reason"); got != "ip-list: no-loopback" {
		t.Errorf("connection log reason %q", got)
	}
	if n := r.counter(t, "meshgate_access_denials_total", map[string]string{"direction": "outbound", "rule": "no-loopback"}); n != 1 {
		t.Errorf("%v denials counted, want 1", n)
	}
}

// TestHeaderBlocks: a request whose header matches a block is answered
// 403 with the block's name, over HTTP/1.1 and HTTP/2 alike, and never
// reaches the app; a second field of the header does not hide the
// first; a request without the header passes; gRPC gets
// PERMISSION_DENIED. A reload adds and removes the stage.
func TestHeaderBlocks(t *testing.T) {
	app, seen := startL7App(t)
	cfg := testConfig()
	cfg.Access = accessOf(t, `
access:
  headerBlocks:
  - {name: no-curl, header: User-Agent, pattern: "(?i)^curl/"}
  - {name: no-internal-host, header: Host, pattern: "\\.internal(:[0-9]+)?$"}
`)
	r := startProxy(t, cfg, to(app))
	base := "http://" + r.in()
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"http1", h1Client(t)}, {"h2c", h2cClient(t)}} {
		t.Run(c.name, func(t *testing.T) {
			before := len(seen())
			if resp, body := get(t, c.client, base+"/ok", http.Header{"User-Agent": {"Mozilla/5.0"}}); resp.StatusCode != 200 {
				t.Fatalf("browser: %d %s", resp.StatusCode, body)
			}
			for _, tc := range []struct {
				name, host string
				hdr        http.Header
				want       string
			}{
				{"curl", "", http.Header{"User-Agent": {"CURL/8.1.2"}}, "block: no-curl"},
				{"host", "db.internal:8080", nil, "block: no-internal-host"},
			} {
				req, _ := http.NewRequest(http.MethodGet, base+"/blocked", nil)
				req.Header = tc.hdr
				if tc.host != "" {
					req.Host = tc.host
				}
				resp, err := c.client.Do(req)
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Meshgate-Error") != tc.want {
					t.Errorf("%s: %d %q; want 403 %q", tc.name, resp.StatusCode, resp.Header.Get("X-Meshgate-Error"), tc.want)
				}
			}
			if n := len(seen()) - before; n != 1 {
				t.Errorf("the app saw %d requests, want the allowed one", n)
			}
		})
	}
	// A second User-Agent field does not hide the first (Go's clients
	// send one: a raw request).
	c := dial(t, r.in())
	c.Write([]byte("GET /two HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0\r\nUser-Agent: curl/8\r\n\r\n"))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Meshgate-Error") != "block: no-curl" {
		t.Errorf("two User-Agent fields, the second curl's: %d %q; want 403 block: no-curl", resp.StatusCode, resp.Header.Get("X-Meshgate-Error"))
	}
	// curl: twice (one per protocol), and once more as a second field.
	if n := r.counter(t, "meshgate_access_denials_total", map[string]string{"direction": "inbound", "stage": "block", "rule": "no-curl"}); n != 3 {
		t.Errorf("no-curl counted %v, want 3", n)
	}
	waitFor(t, func() bool {
		for _, e := range r.logs.All() {
			if strings.Contains(field(e, "reason"), `block: no-curl: header User-Agent matches "(?i)^curl/"`) {
				return true
			}
		}
		return false
	})

	// Removed by a reload: the stage is gone from the chain.
	if err := r.ReloadAccess(AccessConfig{}); err != nil {
		t.Fatal(err)
	}
	for _, s := range r.chains.Load()[Inbound] {
		if s.Name() == stageBlock {
			t.Error("the block stage is still in the inbound chain")
		}
	}
	if resp, _ := get(t, h1Client(t), base+"/x", http.Header{"User-Agent": {"curl/8"}}); resp.StatusCode != 200 {
		t.Errorf("curl after the blocks were removed: %d", resp.StatusCode)
	}
}

func TestHeaderBlockGRPC(t *testing.T) {
	app := grpcHealthServer(t)
	cfg := testConfig()
	cfg.Access = accessOf(t, "access:\n  headerBlocks:\n  - {name: no-grpc-go, header: user-agent, pattern: ^grpc-go/}\n")
	r := startProxy(t, cfg, to(app))
	hc := grpcHealthClient(t, r.in())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || st.Message() != "block: no-grpc-go" {
		t.Errorf("Check: %v; want PermissionDenied, block: no-grpc-go", err)
	}
}

// TestAccessConfigErrors: every problem of the access section, named by
// its field path, at once.
func TestAccessConfigErrors(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
access:
  ipLists:
  - {name: a, action: block, cidrs: [10.1.2.3/8]}
  - {name: a, action: allow, direction: sideways}
  - {name: default, action: deny, files: [relative.txt, /x, /x]}
  headerBlocks:
  - {name: "no curl", header: "User Agent", pattern: "curl("}
  - {name: b, header: X-A, pattern: "", ports: [0, 5432]}
`))
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.Validate()
	want := []string{
		`access.ipLists[0].action: "block" is not an action; want deny or allow`,
		`access.ipLists[0].cidrs[0]: 10.1.2.3/8: bits set past the /8; want 10.0.0.0/8`,
		`access.ipLists[1].name: "a" is also access.ipLists[0].name; give each its own name`,
		`access.ipLists[1].direction: "sideways" is not a direction; want inbound or outbound`,
		`access.ipLists[1]: lists nothing; give cidrs, files or both`,
		`access.ipLists[2].name: "default" names refusals of addresses in no allow list; choose another`,
		`access.ipLists[2].files[0]: "relative.txt" is relative; want an absolute path, e.g. /etc/meshgate/blocked.txt`,
		`access.ipLists[2].files[2]: "/x" is listed twice; list it once`,
		`access.headerBlocks[0].name: "no curl": want 1 to 64 letters, digits, '.', '_' or '-'`,
		`access.headerBlocks[0].header: "User Agent" is not a header name; want e.g. User-Agent`,
		"access.headerBlocks[0].pattern: \"curl(\" is not an RE2 regular expression: missing closing ): `curl(`",
		`access.headerBlocks[1].pattern: missing; want an RE2 regular expression searched for in the value, e.g. (?i)curl; ^ blocks any value`,
		`access.headerBlocks[1].ports[0]: 0 is not a port; want a number from 1 to 65535`,
		`access.headerBlocks[1].ports[1]: port 5432 is declared opaque (protocols.ports), so no request to it is HTTP and the block could never apply; declare the port detect or http, or leave it out`,
	}
	var got []string
	for _, e := range splitJoined(err) {
		if strings.HasPrefix(e.Error(), "access.") {
			got = append(got, e.Error())
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}

	// A list file that is missing or bad at start is an error naming the
	// field, the file and the line.
	bad := filepath.Join(t.TempDir(), "bad.txt")
	os.WriteFile(bad, []byte("10.0.0.0/8\nnot-an-ip\n"), 0o600)
	cfg = testConfig()
	cfg.Access = accessOf(t, "access:\n  ipLists:\n  - {name: x, action: deny, files: ["+bad+", /nonexistent/list.txt]}\n")
	_, err = New(cfg, nil)
	for _, w := range []string{
		`access.ipLists[0].files[0]: ` + bad + `: line 2: "not-an-ip": not an IP address or CIDR`,
		`access.ipLists[0].files[1]: open /nonexistent/list.txt: no such file or directory`,
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("New: %v; want it to say %q", err, w)
		}
	}
}

// TestAccessExplain: explain says what the lists and blocks would do,
// before policy, and a refusal makes the call denied.
func TestAccessExplain(t *testing.T) {
	cfg := testConfig()
	cfg.Access = accessOf(t, `
access:
  ipLists:
  - {name: scanners, action: deny, cidrs: [203.0.113.0/24]}
  headerBlocks:
  - {name: no-curl, header: User-Agent, pattern: ^curl/}
`)
	for _, tc := range []struct {
		name    string
		q       ExplainQuery
		allowed bool
		want    string
	}{
		{"scanner", ExplainQuery{Port: 8080, SourceIP: netip.MustParseAddr("203.0.113.9")}, false,
			"ip lists: DENY: source 203.0.113.9 is in deny list scanners (access.ipLists[0]); the connection is closed at once\n" +
				"block:    not checked: the call is not HTTP\n" +
				"          refused (ip-list: scanners) before policy; policy alone would say:\n"},
		{"curl", ExplainQuery{Port: 8080, SourceIP: netip.MustParseAddr("10.0.0.1"), Method: "GET", Header: http.Header{"User-Agent": {"curl/8"}}}, false,
			"ip lists: allow: source 10.0.0.1 is in no deny list\n" +
				"block:    DENY by no-curl: header User-Agent \"curl/8\" matches \"^curl/\"; answered 403\n" +
				"          refused (block: no-curl) before policy; policy alone would say:\n"},
		{"no source", ExplainQuery{Port: 8080, Method: "GET"}, true,
			"ip lists: not checked: inbound lists apply, give the source address (--source-ip (source-ip))\n" +
				"block:    pass: no header block of 1 matches\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Explain(context.Background(), cfg, tc.q)
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			res.Format(&b)
			if !strings.HasPrefix(b.String(), tc.want) || res.Allowed() != tc.allowed {
				t.Errorf("allowed %v (want %v):\n%s\nwant it to start with:\n%s", res.Allowed(), tc.allowed, b.String(), tc.want)
			}
		})
	}
}

func TestLogLimiter(t *testing.T) {
	var l logLimiter
	sec := int64(time.Second)
	var got []int64
	for _, now := range []int64{10 * sec, 10*sec + 1, 10*sec + sec/2, 11 * sec, 11*sec + 1, 13 * sec} {
		if n, ok := l.take(now); ok {
			got = append(got, n)
		}
	}
	// A line at once, then one a second later for the three since, then
	// one for the two after.
	if diff := cmp.Diff([]int64{1, 3, 2}, got); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
}

// BenchmarkBlockStage is the block stage's cost per request that passes
// two blocks (User-Agent, Referer), on an HTTP/1 request of a browser's
// usual fields.
func BenchmarkBlockStage(b *testing.B) {
	cfg := testConfig()
	cfg.Access = accessOf(b, `
access:
  headerBlocks:
  - {name: no-scrapers, header: User-Agent, pattern: "(?i)^(curl|wget|python-requests|scrapy)/"}
  - {name: no-spam, header: Referer, pattern: "^https?://([^/]*\\.)?spam\\.example/"}
`)
	st, err := newAccessState(cfg.Access, nil, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	m := h1Msg{raw: []byte("GET /api/items?page=2 HTTP/1.1\r\nHost: api.shop:8080\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
		"Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-GB,en;q=0.5\r\n" +
		"Referer: https://shop.example/cart\r\nCookie: session=abcdef0123456789\r\n\r\n")}
	if err := m.parseRequest(); err != nil {
		b.Fatal(err)
	}
	r := &Request{Dir: Inbound, Dst: netip.MustParseAddrPort("10.0.0.1:8080"), msg: h1Fields{&m}}
	s := blockStage{st.blocks[Inbound]}
	b.ReportAllocs()
	for b.Loop() {
		if s.Decide(r) != nil {
			b.Fatal("blocked")
		}
	}
}

// BenchmarkIPCheck is the accept-time decision for an address against a
// deny list of 100 000 CIDRs and an allow list.
func BenchmarkIPCheck(b *testing.B) {
	var big []netip.Prefix
	for i := range 100_000 {
		big = append(big, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(i >> 16), byte(i >> 8), byte(i), 0}), 24))
	}
	st, err := newAccessState(AccessConfig{IPLists: []IPList{
		{Name: "feed", Action: IPListDeny, CIDRs: big},
		{Name: "cluster", Action: IPListAllow, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
	}}, nil, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ck := st.ip[Inbound]
	a := netip.MustParseAddr("10.200.3.4")
	b.ReportAllocs()
	for b.Loop() {
		if _, denied := ck.decide(a); denied {
			b.Fatal("denied")
		}
	}
}
