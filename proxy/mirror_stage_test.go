package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"meshgate/proxy/resilience"
)

// auditApp is a mirror target: it records what it is sent and answers
// status, after hold is closed when it is set.
type auditApp struct {
	addr   string
	mu     sync.Mutex
	got    []auditReq
	hold   chan struct{}
	status int
}

type auditReq struct {
	method, uri, host, mirror, requestID, appProto string
	proto                                          int
	body                                           []byte
}

// startAuditApp serves HTTP/1.1 and h2c on ip (127.0.0.1 unless given).
func startAuditApp(t *testing.T, status int, hold bool, ip ...string) *auditApp {
	a := &auditApp{status: status}
	if hold {
		a.hold = make(chan struct{})
	}
	on := "" // startHTTPApp's default, 127.0.0.1
	if len(ip) > 0 {
		on = ip[0]
	}
	a.addr = startHTTPApp(t, on, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.got = append(a.got, auditReq{method: r.Method, uri: r.RequestURI, host: r.Host, mirror: r.Header.Get(hdrMirror),
			requestID: r.Header.Get(hdrRequestID), appProto: r.Header.Get(hdrAppProtocol), proto: r.ProtoMajor, body: body})
		a.mu.Unlock()
		if a.hold != nil {
			select {
			case <-a.hold:
			case <-r.Context().Done():
				return
			}
		}
		w.WriteHeader(a.status)
		io.WriteString(w, strings.Repeat("x", 100))
	}))
	return a
}

func (a *auditApp) seen() []auditReq {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.got)
}

// release answers the held requests, and the next ones at once.
func (a *auditApp) release() { close(a.hold) }

// startBodyApp is the main destination's app: it answers each request
// with its body's length and SHA-256, and notes their request IDs.
func startBodyApp(t *testing.T) (addr string, ids func() []string) {
	var mu sync.Mutex
	var seen []string
	addr = startHTTPApp(t, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		l, _ := io.Copy(h, r.Body)
		mu.Lock()
		seen = append(seen, r.Header.Get(hdrRequestID))
		mu.Unlock()
		fmt.Fprintf(w, "%d %s", l, hex.EncodeToString(h.Sum(nil)))
	}))
	return addr, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// bodySum is what startBodyApp answers for body.
func bodySum(body []byte) string {
	s := sha256.Sum256(body)
	return strconv.Itoa(len(body)) + " " + hex.EncodeToString(s[:])
}

// mirrorPair is a pair of sidecars in front of a body app whose client
// sidecar mirrors (the resilience destination "api", settings mirror) to
// an audit app behind a sidecar of its own.
type mirrorPair struct {
	*pair
	audit     *auditApp
	auditSide *running
	mainIDs   func() []string
}

func startMirrorPair(t *testing.T, audit *auditApp, mirror string, opts ...Option) *mirrorPair {
	t.Helper()
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	_, asm := mca.meshes()
	as := startProxy(t, testConfig(), WithMeshTLS(asm), to(audit.addr))
	mirror = strings.ReplaceAll(mirror, "AUDITPORT", strconv.Itoa(int(as.Addrs().Inbound[0].Port())))
	mirror = strings.ReplaceAll(mirror, "AUDIT", as.in())
	app, ids := startBodyApp(t)
	p := startPair(t, app, cm, sm, pairOptions{
		clientCfg:  apiResilience(t, "mirror: "+mirror),
		clientOpts: opts,
	})
	return &mirrorPair{pair: p, audit: audit, auditSide: as, mainIDs: ids}
}

// mirrored sums the client sidecar's meshgate_mirror_total of result.
func (m *mirrorPair) mirrored(t *testing.T, result string) float64 {
	return m.client.counter(t, "meshgate_mirror_total", map[string]string{"destination": "api", "result": result})
}

// waitCount waits for count to say want, and fails the test with what
// it last said if it does not within 10s.
func waitCount(t *testing.T, what string, count func() float64, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := count()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v after 10s; want %v", what, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sendMain makes one request of the app's and checks the main answer.
func sendMain(t *testing.T, c *http.Client, method, url string, body io.Reader, want []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != bodySum(want) {
		t.Fatalf("%s %s: %d %q; want 200 %q", method, url, resp.StatusCode, b, bodySum(want))
	}
}

// streamed is a body that comes in pieces, with pauses, of no declared
// length (HTTP/1.1 chunked, HTTP/2 DATA frames).
func streamed(pieces ...[]byte) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		for _, p := range pieces {
			time.Sleep(20 * time.Millisecond)
			if _, err := pw.Write(p); err != nil {
				return
			}
		}
		pw.Close()
	}()
	return pr
}

// TestMirror: requests are copied to the mirror target as the app sent
// them (method, target, header fields, body), with Host the target and
// X-Meshgate-Mirror: 1, over HTTP/1.1 and HTTP/2 alike, a body that
// streams as it streams to the destination; a body over maxBodyBytes,
// declared or streamed, is not copied, and still reaches the
// destination whole; each copy is counted and the access log says it.
func TestMirror(t *testing.T) {
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			const wantProto = 1 // HTTP/1.1 whatever the app spoke, gRPC aside
			audit := startAuditApp(t, 200, false)
			m := startMirrorPair(t, audit, "{to: 'AUDIT', maxBodyBytes: 40000}")
			client := c.new(t)
			base := "http://" + m.client.out()
			small := []byte("hello")
			piece := bytes.Repeat([]byte("0123456789"), 1000) // 10 kB
			sendMain(t, client, "GET", base+"/a?x=1", nil, nil)
			sendMain(t, client, "POST", base+"/b", bytes.NewReader(small), small)
			sendMain(t, client, "PUT", base+"/c", streamed(piece, piece, piece), slices.Concat(piece, piece, piece))
			sendMain(t, client, "POST", base+"/d", streamed(piece, piece, piece, piece, piece), slices.Concat(piece, piece, piece, piece, piece))
			big := bytes.Repeat(piece, 5)
			sendMain(t, client, "POST", base+"/e", bytes.NewReader(big), big)
			waitCount(t, "sent", func() float64 { return m.mirrored(t, "sent") }, 3)
			if got := m.mirrored(t, "dropped_body"); got != 2 {
				t.Errorf("dropped_body %v; want 2 (one declared, one streamed over 40000 bytes)", got)
			}
			got := m.audit.seen()
			if len(got) != 3 {
				t.Fatalf("the audit app got %d copies; want 3", len(got))
			}
			slices.SortFunc(got, func(a, b auditReq) int { return strings.Compare(a.uri, b.uri) })
			for i, w := range []struct {
				method, uri string
				body        []byte
			}{{"GET", "/a?x=1", nil}, {"POST", "/b", small}, {"PUT", "/c", slices.Concat(piece, piece, piece)}} {
				g := got[i]
				if g.method != w.method || g.uri != w.uri || !bytes.Equal(g.body, w.body) || g.host != m.auditSide.in() ||
					g.mirror != "1" || g.requestID == "" || g.appProto != "" || g.proto != wantProto {
					t.Errorf("copy %d: %s %s HTTP/%d Host %s, %s: %q, body %d bytes, X-Request-Id %q, app protocol %q; want %s %s HTTP/%d Host %s, %s: 1, body %d bytes",
						i, g.method, g.uri, g.proto, g.host, hdrMirror, g.mirror, len(g.body), g.requestID, g.appProto, w.method, w.uri, wantProto, m.auditSide.in(), hdrMirror, len(w.body))
				}
			}
			// The copy's request ID is the request's: the audit app can
			// tell which request a copy is of.
			ids := m.mainIDs()
			for _, g := range got {
				if !slices.Contains(ids, g.requestID) {
					t.Errorf("copy %s has X-Request-Id %s, which no request of the app's has", g.uri, g.requestID)
				}
			}
			notes := map[string]int{}
			for _, e := range m.client.logs.FilterMessage("request").All() {
				notes[field(e, "mirror")]++
			}
			if notes["mirrored"] != 3 || notes["dropped_body"] != 2 {
				t.Errorf("access log lines by mirror: %v; want 3 mirrored and 2 dropped_body", notes)
			}
			if n := len(m.mainIDs()); n != 5 {
				t.Errorf("the destination got %d requests; want 5", n)
			}
		})
	}
}

// TestMirrorGRPC: a gRPC call (HTTP/2, application/grpc) is copied
// over HTTP/2 to the target's app, as gRPC needs; other requests of an
// HTTP/2 app go as HTTP/1.1 (TestMirror).
func TestMirrorGRPC(t *testing.T) {
	audit := startAuditApp(t, 200, false)
	m := startMirrorPair(t, audit, "{to: 'AUDIT'}")
	req, _ := http.NewRequest(http.MethodPost, "http://"+m.client.out()+"/grpc.health.v1.Health/Check", bytes.NewReader([]byte{0, 0, 0, 0, 0}))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := h2cClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	waitCount(t, "sent", func() float64 { return m.mirrored(t, "sent") }, 1)
	if g := audit.seen(); len(g) != 1 || g[0].proto != 2 || g[0].uri != "/grpc.health.v1.Health/Check" || len(g[0].body) != 5 {
		t.Errorf("the copy of a gRPC call: %+v; want it over HTTP/2 with its 5 bytes", g)
	}
}

// TestMirrorFull: with maxConcurrent copies in flight to a target that
// does not answer, further requests are not copied (dropped_full,
// never queued), and none of the app's requests waits for its copy.
func TestMirrorFull(t *testing.T) {
	audit := startAuditApp(t, 200, true)
	m := startMirrorPair(t, audit, "{to: 'AUDIT', maxConcurrent: 2}")
	client := h1Client(t)
	for i := range 6 {
		start := time.Now()
		sendMain(t, client, "POST", "http://"+m.client.out()+"/x", strings.NewReader("body"), []byte("body"))
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("request %d took %v while its copy is held", i, d)
		}
	}
	if got := m.mirrored(t, "dropped_full"); got != 4 {
		t.Errorf("dropped_full %v; want 4", got)
	}
	waitFor(t, func() bool { return len(audit.seen()) == 2 })
	audit.release()
	waitCount(t, "sent", func() float64 { return m.mirrored(t, "sent") }, 2)
	// The places are free again.
	sendMain(t, client, "GET", "http://"+m.client.out()+"/y", nil, nil)
	waitCount(t, "sent", func() float64 { return m.mirrored(t, "sent") }, 3)
}

// TestMirrorFailure: a mirror target that is down, answers 500 or
// 404 never changes the app's answers; the copies that did not arrive
// are counted failed.
func TestMirrorFailure(t *testing.T) {
	t.Run("down", func(t *testing.T) {
		down := closedAddr(t).String()
		m := startMirrorPair(t, startAuditApp(t, 200, false), "{to: '"+down+"'}")
		for _, client := range []*http.Client{h1Client(t), h2cClient(t)} {
			for range 5 {
				sendMain(t, client, "POST", "http://"+m.client.out()+"/x", strings.NewReader("b"), []byte("b"))
			}
		}
		waitCount(t, "failed", func() float64 { return m.mirrored(t, "failed") }, 10)
	})
	for _, status := range []int{500, 404} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			m := startMirrorPair(t, startAuditApp(t, status, false), "{to: 'AUDIT'}")
			for range 5 {
				sendMain(t, h1Client(t), "GET", "http://"+m.client.out()+"/x", nil, nil)
			}
			res := map[int]string{500: "failed", 404: "sent"}[status]
			waitCount(t, res, func() float64 { return m.mirrored(t, res) }, 5)
		})
	}
}

// TestMirrorBreaker: a target that fails copies in a row is sent none
// for a while: they fail at once, a counter each, not a round trip.
func TestMirrorBreaker(t *testing.T) {
	audit := startAuditApp(t, 503, false)
	m := startMirrorPair(t, audit, "{to: 'AUDIT'}")
	client := h1Client(t)
	url := "http://" + m.client.out() + "/x"
	for i := range mirrorBreakerFailures {
		sendMain(t, client, "GET", url, nil, nil)
		waitCount(t, "failed", func() float64 { return m.mirrored(t, "failed") }, float64(i+1))
	}
	for range 20 {
		sendMain(t, client, "GET", url, nil, nil)
	}
	waitCount(t, "failed", func() float64 { return m.mirrored(t, "failed") }, mirrorBreakerFailures+20)
	if n := len(audit.seen()); n != mirrorBreakerFailures {
		t.Errorf("the failing target got %d copies; want the %d before the breaker opened", n, mirrorBreakerFailures)
	}
	notes := 0
	for _, e := range m.client.logs.FilterMessage("request").All() {
		if field(e, "mirror") == "failed" {
			notes++
		}
	}
	if notes != 20 {
		t.Errorf("%d access log lines say mirror: failed; want 20", notes)
	}
}

// TestMirrorPercent: a mirror of 25% copies exactly the requests a
// seeded source's rolls pick.
func TestMirrorPercent(t *testing.T) {
	audit := startAuditApp(t, 200, false)
	m := startMirrorPair(t, audit, "{to: 'AUDIT', percent: 25, maxConcurrent: 1000}", withFaultRandom(seeded(5)))
	client := h1Client(t)
	const n = 200
	for range n {
		sendMain(t, client, "GET", "http://"+m.client.out()+"/x", nil, nil)
	}
	want := picked(5, n, 25)
	waitCount(t, "sent", func() float64 { return m.mirrored(t, "sent") }, float64(want))
	if got := len(audit.seen()); got != want {
		t.Errorf("the audit app got %d copies; want %d", got, want)
	}
}

// TestMirrorReload: a reload that removes the mirror stops new copies
// at once, while a copy in flight finishes; one that brings it back
// starts them again.
func TestMirrorReload(t *testing.T) {
	audit := startAuditApp(t, 200, true)
	m := startMirrorPair(t, audit, "{to: 'AUDIT'}")
	client := h1Client(t)
	url := "http://" + m.client.out() + "/x"
	sendMain(t, client, "GET", url, nil, nil)
	waitFor(t, func() bool { return len(audit.seen()) == 1 })
	on := m.client.cfg.Resilience
	if err := m.client.ReloadResilience(resilience.Config{}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		sendMain(t, client, "GET", url, nil, nil)
	}
	audit.release()
	waitCount(t, "sent", func() float64 { return m.mirrored(t, "sent") }, 1)
	if n := len(audit.seen()); n != 1 {
		t.Errorf("the audit app got %d copies; want the 1 in flight before the reload", n)
	}
	if err := m.client.ReloadResilience(on); err != nil {
		t.Fatal(err)
	}
	sendMain(t, client, "GET", url, nil, nil)
	waitFor(t, func() bool { return len(audit.seen()) == 2 })
}

// TestMirrorShutdown: copies in flight when the proxy stops are cut at
// the end of the drain, and Run returns once their goroutines have
// (goleak checks none is left when the package's tests end).
func TestMirrorShutdown(t *testing.T) {
	audit := startAuditApp(t, 200, true)
	m := startMirrorPair(t, audit, "{to: 'AUDIT'}")
	client := h1Client(t)
	for range 3 {
		sendMain(t, client, "GET", "http://"+m.client.out()+"/x", nil, nil)
	}
	waitFor(t, func() bool { return len(audit.seen()) == 3 })
	client.CloseIdleConnections()
	before := runtime.NumGoroutine()
	start := time.Now()
	if err := m.client.stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run returned %v after the stop", d)
	}
	// The target's sidecar stops after: its HTTP/1 engine waits for the
	// app's answer without a deadline, even past its drain.
	audit.release()
	if got := m.mirrored(t, "failed"); got != 3 {
		t.Errorf("failed %v; want the 3 copies cut", got)
	}
	t.Logf("goroutines: %d before the stop, %d after", before, runtime.NumGoroutine())
	m.client.inject.mu.Lock()
	stopped := m.client.inject.stopped
	m.client.inject.mu.Unlock()
	if !stopped {
		t.Error("the injector was not stopped")
	}
}

// fixedResolver resolves names from a map.
type fixedResolver map[string]string

func (r fixedResolver) LookupNetIP(_ context.Context, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return []netip.Addr{netip.MustParseAddr(a)}, nil
	}
	return nil, fmt.Errorf("no such host %s", host)
}

// TestMirrorByName: a mirror.to name is resolved with the proxy's
// resolver, and the copy's Host is the name.
func TestMirrorByName(t *testing.T) {
	audit := startAuditApp(t, 200, false)
	m := startMirrorPair(t, audit, "{to: 'audit.shop.test:AUDITPORT'}", WithResolver(fixedResolver{"audit.shop.test": "127.0.0.1"}))
	sendMain(t, h2cClient(t), "GET", "http://"+m.client.out()+"/x", nil, nil)
	waitCount(t, "sent", func() float64 { return m.mirrored(t, "sent") }, 1)
	to := "audit.shop.test:" + strconv.Itoa(int(m.auditSide.Addrs().Inbound[0].Port()))
	if g := audit.seen(); len(g) != 1 || g[0].host != to {
		t.Errorf("the copy: %+v; want Host %s", g, to)
	}
}

// TestMirrorOutsideMesh: a target outside the mesh gets its copies in
// plaintext HTTP/1.1 where plaintext is allowed there, and none where it
// is not.
func TestMirrorOutsideMesh(t *testing.T) {
	audit := startAuditApp(t, 200, false, "127.0.0.2")
	app, _ := startBodyApp(t)
	for _, plain := range []bool{true, false} {
		p := startMeshPair(t, app, pairOptions{clientCfg: func(c *Config) {
			apiResilience(t, "mirror: {to: '"+audit.addr+"'}")(c)
			c.MTLS.MeshCIDRs = prefixes("127.0.0.1/32")
			c.MTLS.PlaintextOutsideMesh = plain
		}})
		sendMain(t, h2cClient(t), "GET", "http://"+p.client.out()+"/x", nil, nil)
		res := map[bool]string{true: "sent", false: "failed"}[plain]
		waitFor(t, func() bool {
			return p.client.counter(t, "meshgate_mirror_total", map[string]string{"destination": "api", "result": res}) == 1
		})
	}
	if g := audit.seen(); len(g) != 1 || g[0].proto != 1 || g[0].mirror != "1" {
		t.Errorf("copies outside the mesh: %+v; want one over HTTP/1.1", g)
	}
}

// TestChunkDecoder: the data of a chunked body comes out whole however
// its bytes are cut, extensions and trailers dropped, and a body past
// the limit is refused.
func TestChunkDecoder(t *testing.T) {
	wire := []byte("5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: x\r\n\r\n")
	want := "helloabcdefghijklmnopqrstuvwxyz"
	for cut := 1; cut <= len(wire); cut++ {
		var d chunkDecoder
		var out []byte
		for b := wire; len(b) > 0; {
			n := min(cut, len(b))
			var over bool
			if out, over = d.decode(out, b[:n], 1000); over {
				t.Fatalf("cut %d: over", cut)
			}
			b = b[n:]
		}
		if string(out) != want {
			t.Errorf("cut %d: %q; want %q", cut, out, want)
		}
	}
	var d chunkDecoder
	if _, over := d.decode(nil, wire, int64(len(want)-1)); !over {
		t.Error("a body one byte over the limit was not refused")
	}
}

// BenchmarkMirrorStage is the mirror stage's cost: configured but not
// firing (the roll above its share), what each request pays; and firing,
// one copy at a time from the stage to its answer from a real target
// behind a sidecar of its own (mTLS, the HTTP/1 engine's pooled
// connection, HTTP/1.1 to the target's app): ns/op is a copy's latency
// (polled every 20µs), cpu-ns/op the process's CPU time per copy, the
// target's sidecar and app included, each copy waking them all from
// idle. What copies cost the requests around them, under load, is
// BenchmarkHTTPMirror's.
func BenchmarkMirrorStage(b *testing.B) {
	audit := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	b.Cleanup(audit.Close)
	mca := newMeshCA(b)
	cm, asm := mca.realMeshes(b, true)
	as := benchProxy(b, testConfig(), WithMeshTLS(asm), to(audit.Listener.Addr().String()))
	for _, bc := range []struct {
		name string
		roll float64
	}{{"not-firing", 0.99}, {"firing", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := testConfig()
			cfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
			resilienceOf(b, "resilience:\n  destinations:\n  - name: api\n    match: {hosts: [api.shop.mesh], ports: [8080]}\n"+
				"    mirror: {to: '"+as.in()+"', percent: 50}\n")(&cfg)
			p, err := New(cfg, zaptest.NewLogger(b, zaptest.Level(zapcore.WarnLevel)), withFaultRandom(func() float64 { return bc.roll }), WithHostNames(apiNames),
				WithMeshTLS(cm))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { p.inject.stop(); p.l7.closeIdle() })
			st := mirrorStage{p, p.inject.state.Load()}
			var ms *mirrorState
			for _, m := range st.st.mirror {
				ms = m
			}
			req, _ := http.NewRequest(http.MethodGet, "/api/items", nil)
			req.RequestURI = "/api/items"
			req.Header.Set("X-Request-Id", "0d8a5dc2-2afb-4c25-82b5-31aac57a5884")
			req.Header.Set("Traceparent", "00-0d8a5dc22afb4c2582b531aac57a5884-0d8a5dc22afb4c25-01")
			r := &Request{Dir: Outbound, Dst: netip.MustParseAddrPort("10.0.0.2:8080"), msg: httpFields{req}}
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if a := st.Decide(r); a != nil {
					b.Fatal(a.Reason)
				}
				r.endInject()
				for ms.limit.InUse() > 0 { // firing: one copy at a time
					time.Sleep(20 * time.Microsecond)
				}
			}
			var failed dto.Metric
			p.metrics.mirrors.WithLabelValues("api", "failed").Write(&failed)
			if n := failed.GetCounter().GetValue(); n > 0 {
				b.Fatalf("%v copies failed", n)
			}
		})
	}
}
