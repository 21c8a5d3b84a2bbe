package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/net/http2"

	"meshgate/proxy/resilience"
)

// scriptApp is an app behind a server sidecar that answers as its test
// says, request by request, and records what it was sent.
type scriptApp struct {
	addr string
	// answer answers the app's n-th request (from 1), its body read.
	answer func(n int, w http.ResponseWriter, r *http.Request)

	mu   sync.Mutex
	reqs []*appReq
}

// appReq is what a scriptApp saw of a request.
type appReq struct {
	method  string
	proto   int
	header  http.Header
	bodyLen int
	bodySum string
	// cancelled: the request's context ended (its client went away)
	// before the answer was written; at, when.
	cancelled bool
	start, at time.Time
}

func startScriptApp(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request)) *scriptApp {
	t.Helper()
	a := &scriptApp{answer: answer}
	a.addr = startHTTPApp(t, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		ar := &appReq{method: r.Method, proto: r.ProtoMajor, header: r.Header.Clone(), bodyLen: int(n),
			bodySum: hex.EncodeToString(h.Sum(nil)), start: start}
		a.mu.Lock()
		a.reqs = append(a.reqs, ar)
		num := len(a.reqs)
		a.mu.Unlock()
		a.answer(num, w, r)
		if r.Context().Err() != nil {
			a.mu.Lock()
			ar.cancelled, ar.at = true, time.Now()
			a.mu.Unlock()
		}
	}))
	return a
}

// seen returns what the app saw so far.
func (a *scriptApp) seen() []appReq {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]appReq, len(a.reqs))
	for i, r := range a.reqs {
		out[i] = *r
	}
	return out
}

func (a *scriptApp) count() int { return len(a.seen()) }

// The scripts.
func answerStatus(code int) func(int, http.ResponseWriter, *http.Request) {
	return func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(code)
		fmt.Fprintf(w, "status %d\n", code)
	}
}

func ok(_ int, w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }

// hang waits for its client to go away.
func hang(_ int, _ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }

// retryLab is a client sidecar whose destination has an endpoint (a
// server sidecar) in front of each of its apps, balanced in order.
type retryLab struct {
	cli  *running
	apps []*scriptApp
	eps  []netip.AddrPort
	srvs []*running
	bal  *fakeBalancer
	sm   *testMesh // the server sidecars' mesh TLS
}

// startRetryLab starts the lab: res is the client sidecar's resilience
// section (YAML, below "resilience:"), mod changes its config further.
// An app may be nil: its endpoint is an address nothing listens on.
func startRetryLab(t *testing.T, res string, mod func(*Config), apps ...*scriptApp) *retryLab {
	t.Helper()
	cm, sm := newMeshCA(t).meshes()
	l := &retryLab{apps: apps, sm: sm}
	for _, a := range apps {
		if a == nil {
			l.eps = append(l.eps, closedAddr(t))
			l.srvs = append(l.srvs, nil)
			continue
		}
		srv := startProxy(t, testConfig(), WithMeshTLS(sm), to(a.addr))
		l.srvs = append(l.srvs, srv)
		l.eps = append(l.eps, netip.MustParseAddrPort(srv.in()))
	}
	l.bal = &fakeBalancer{eps: l.eps, inOrder: true}
	ccfg := testConfig()
	ccfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
	svc := netip.MustParseAddrPort("127.0.0.1:1") // what the app dialed: any address of the service
	if l.eps[0].IsValid() {
		svc = l.eps[0]
	}
	declareHTTP(&ccfg, svc)
	ccfg.Resilience = resilienceYAML(t, res)
	if mod != nil {
		mod(&ccfg)
	}
	l.cli = startProxy(t, ccfg, WithMeshTLS(cm), WithBalancer(l.bal), to(svc.String()))
	return l
}

// resilienceYAML reads a resilience section.
func resilienceYAML(t *testing.T, y string) resilience.Config {
	t.Helper()
	if strings.TrimSpace(y) == "" {
		return resilience.Config{}
	}
	return configOf(t, "resilience:\n"+indent(y, "  ")).Resilience
}

// picks returns the endpoints picked, by app index.
func (l *retryLab) picks() []int {
	l.bal.mu.Lock()
	defer l.bal.mu.Unlock()
	var out []int
	for _, p := range l.bal.picks {
		out = append(out, slices.Index(l.eps, p))
	}
	return out
}

// url is the destination's URL through the client sidecar.
func (l *retryLab) url(path string) string { return "http://" + l.cli.out() + path }

// sumCounter is counter with the labels written name=value.
func (r *running) sumCounter(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	want := map[string]string{}
	for _, kv := range labels {
		k, v, _ := strings.Cut(kv, "=")
		want[k] = v
	}
	return r.counter(t, name, want)
}

// result is an answer a test client got.
type result struct {
	status int
	header http.Header
	body   string
	took   time.Duration
}

// do sends a request with method, body (nil: none) and header through c.
func send(t *testing.T, c *http.Client, method, url string, body []byte, hdr http.Header) result {
	t.Helper()
	var rb io.Reader
	if body != nil {
		rb = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rb)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, url, err)
	}
	return result{status: resp.StatusCode, header: resp.Header, body: string(b), took: time.Since(start)}
}

// TestRetryStatus: with no configuration, a 503 is retried, on the next
// endpoint, and the app gets the answer of the try that worked; when
// every try gets 503 the last 503 goes back as it is, after 1 + 2 tries
// (the default attempts), each to an endpoint not tried before while one
// is left; a 500 (not in the defaults) is not retried.
func TestRetryStatus(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			l := startRetryLab(t, "", nil, startScriptApp(t, answerStatus(503)), startScriptApp(t, ok))
			c := cl.new(t)
			if r := send(t, c, "GET", l.url("/a"), nil, nil); r.status != 200 || r.body != "ok" {
				t.Fatalf("GET through a failing and a good endpoint: %d %q, want 200 ok", r.status, r.body)
			}
			if got := l.picks(); !slices.Equal(got, []int{0, 1}) {
				t.Errorf("tries went to endpoints %v, want [0 1]", got)
			}
			if n := l.cli.sumCounter(t, "meshgate_retries_total", "destination=default", "reason=status_503"); n != 1 {
				t.Errorf("meshgate_retries_total{reason=status_503} = %v, want 1", n)
			}
			// The access log line says how many endpoints were tried and
			// which answered.
			lines := l.cli.logs.FilterMessage("request").FilterField(zap.String("direction", "outbound")).All()
			if len(lines) == 0 || field(lines[len(lines)-1], "attempts") != "2" || field(lines[len(lines)-1], "endpoint") != l.eps[1].String() {
				t.Errorf("access log: %v", lines)
			}
		})
	}
	for _, cl := range clients {
		t.Run(cl.name+"/all fail", func(t *testing.T) {
			a, b, c3 := startScriptApp(t, answerStatus(503)), startScriptApp(t, answerStatus(503)), startScriptApp(t, answerStatus(503))
			l := startRetryLab(t, "", nil, a, b, c3)
			c := cl.new(t)
			if r := send(t, c, "GET", l.url("/"), nil, nil); r.status != 503 || r.body != "status 503\n" {
				t.Fatalf("GET, every endpoint failing: %d %q, want the app's 503", r.status, r.body)
			}
			if got := l.picks(); !slices.Equal(got, []int{0, 1, 2}) {
				t.Errorf("tries went to endpoints %v, want [0 1 2]", got)
			}
			if n := a.count() + b.count() + c3.count(); n != 3 {
				t.Errorf("the apps saw %d requests, want 3", n)
			}
		})
	}
	t.Run("one endpoint", func(t *testing.T) {
		a := startScriptApp(t, answerStatus(503))
		l := startRetryLab(t, "", nil, a)
		if r := send(t, h1Client(t), "GET", l.url("/"), nil, nil); r.status != 503 {
			t.Fatalf("%d, want 503", r.status)
		}
		if n := a.count(); n != 3 {
			t.Errorf("the one endpoint's app saw %d tries, want 3 (tried again where no other is left)", n)
		}
	})
	t.Run("500 is not retried", func(t *testing.T) {
		a, b := startScriptApp(t, answerStatus(500)), startScriptApp(t, ok)
		l := startRetryLab(t, "", nil, a, b)
		if r := send(t, h1Client(t), "GET", l.url("/"), nil, nil); r.status != 500 {
			t.Fatalf("%d, want the app's 500", r.status)
		}
		if b.count() != 0 {
			t.Error("a 500 was retried with no configuration")
		}
	})
}

// TestRetryMethodsAndBodies: only the policy's methods are retried (POST
// not by default); a body within retries.maxBodyBytes is kept and sent
// again whole; a larger one is not, and its request is not retried.
func TestRetryMethodsAndBodies(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1 KiB
	sum := sha256.Sum256(body)
	for _, cl := range clients {
		t.Run(cl.name+"/POST is not retried", func(t *testing.T) {
			a, b := startScriptApp(t, answerStatus(503)), startScriptApp(t, ok)
			l := startRetryLab(t, "", nil, a, b)
			if r := send(t, cl.new(t), "POST", l.url("/"), body, nil); r.status != 503 {
				t.Fatalf("POST: %d, want the app's 503 (not retried)", r.status)
			}
			if a.count() != 1 || b.count() != 0 {
				t.Errorf("the apps saw %d and %d POSTs, want 1 and 0", a.count(), b.count())
			}
		})
		t.Run(cl.name+"/POST retried when configured", func(t *testing.T) {
			a, b := startScriptApp(t, answerStatus(503)), startScriptApp(t, ok)
			l := startRetryLab(t, "defaults: {retries: {methods: [GET, POST]}}", nil, a, b)
			if r := send(t, cl.new(t), "POST", l.url("/"), body, nil); r.status != 200 {
				t.Fatalf("POST: %d, want 200 (retried)", r.status)
			}
			for i, app := range []*scriptApp{a, b} {
				if s := app.seen(); len(s) != 1 || s[0].bodyLen != len(body) || s[0].bodySum != hex.EncodeToString(sum[:]) {
					t.Errorf("app %d saw %+v, want the whole body once", i, s)
				}
			}
		})
		t.Run(cl.name+"/PUT with a body over maxBodyBytes", func(t *testing.T) {
			a, b := startScriptApp(t, answerStatus(503)), startScriptApp(t, ok)
			l := startRetryLab(t, "defaults: {retries: {maxBodyBytes: 512}}", nil, a, b)
			if r := send(t, cl.new(t), "PUT", l.url("/"), body, nil); r.status != 503 {
				t.Fatalf("PUT of 1 KiB over maxBodyBytes 512: %d, want 503 (not retried)", r.status)
			}
			if s := a.seen(); len(s) != 1 || s[0].bodyLen != len(body) || b.count() != 0 {
				t.Errorf("apps saw %+v and %d requests, want the whole body at the first only", s, b.count())
			}
			// Within it: retried, the body sent again whole.
			small := body[:500]
			if r := send(t, cl.new(t), "PUT", l.url("/"), small, nil); r.status != 200 {
				t.Fatalf("PUT of 500 bytes: %d, want 200 (retried)", r.status)
			}
			if s := b.seen(); len(s) != 1 || s[0].bodyLen != len(small) {
				t.Errorf("the second endpoint saw %+v, want the 500 bytes", s)
			}
		})
	}
	// A body of unknown length: the HTTP/1 engine streams a chunked body
	// (it is not retried once sent); the HTTP/2 path keeps what a try
	// reads, within the bound, and sends it again.
	for _, cl := range clients {
		t.Run(cl.name+"/body of unknown length", func(t *testing.T) {
			a, b := startScriptApp(t, answerStatus(503)), startScriptApp(t, ok)
			l := startRetryLab(t, "", nil, a, b)
			req, _ := http.NewRequest("PUT", l.url("/"), io.MultiReader(bytes.NewReader(body))) // no length: chunked
			resp, err := cl.new(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			want := 200
			if cl.name == "http1" {
				want = 503
			}
			if resp.StatusCode != want {
				t.Fatalf("PUT of unknown length: %d, want %d", resp.StatusCode, want)
			}
			if want == 200 {
				if s := b.seen(); len(s) != 1 || s[0].bodySum != hex.EncodeToString(sum[:]) {
					t.Errorf("the second endpoint saw %+v, want the whole body", s)
				}
			}
		})
	}
}

// TestRetryBudget: a retry the destination's budget has no token for is
// not made, the answer goes back as it is, and that is counted and
// logged.
func TestRetryBudget(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			a, b := startScriptApp(t, answerStatus(503)), startScriptApp(t, ok)
			// No ratio, one retry a second: the first request's retry has
			// the floor's token, the next ones none.
			l := startRetryLab(t, "defaults: {retries: {budget: {ratio: 0, minPerSecond: 1}}}", nil, a, b)
			c := cl.new(t)
			if r := send(t, c, "GET", l.url("/"), nil, nil); r.status != 200 {
				t.Fatalf("first GET: %d, want 200 (retried)", r.status)
			}
			if r := send(t, c, "GET", l.url("/"), nil, nil); r.status != 503 {
				t.Fatalf("second GET at once: %d, want 503 (the budget is empty)", r.status)
			}
			if n := l.cli.sumCounter(t, "meshgate_retry_budget_exhausted_total", "destination=default"); n != 1 {
				t.Errorf("meshgate_retry_budget_exhausted_total = %v, want 1", n)
			}
			if n := l.cli.sumCounter(t, "meshgate_retries_total"); n != 1 {
				t.Errorf("meshgate_retries_total = %v, want 1", n)
			}
			lines := l.cli.logs.FilterMessage("request").FilterField(zap.Bool("retry_budget_exhausted", true)).All()
			if len(lines) != 1 {
				t.Errorf("%d access log lines say retry_budget_exhausted, want 1", len(lines))
			}
		})
	}
}

// TestRetryAfter: a retried answer's Retry-After is waited for when it
// fits in retries.maxRetryAfter and the request's time left; otherwise
// the answer goes back as it is, at once.
func TestRetryAfter(t *testing.T) {
	retryAfter := func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(503)
	}
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			a, b := startScriptApp(t, retryAfter), startScriptApp(t, ok)
			l := startRetryLab(t, "", nil, a, b)
			if r := send(t, cl.new(t), "GET", l.url("/"), nil, nil); r.status != 200 || r.took < time.Second {
				t.Errorf("Retry-After: 1: %d after %v, want 200 after 1s at least", r.status, r.took)
			}
		})
	}
	for _, tc := range []struct{ name, res string }{
		{"over maxRetryAfter", "defaults: {retries: {maxRetryAfter: 500ms}}"},
		{"over the request's time", "defaults: {timeouts: {request: 800ms}}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := startScriptApp(t, retryAfter), startScriptApp(t, ok)
			l := startRetryLab(t, tc.res, nil, a, b)
			r := send(t, h1Client(t), "GET", l.url("/"), nil, nil)
			if r.status != 503 || r.header.Get("Retry-After") != "1" || r.took > 500*time.Millisecond {
				t.Errorf("%d (Retry-After %q) after %v, want the 503 as it is, at once", r.status, r.header.Get("Retry-After"), r.took)
			}
			if b.count() != 0 {
				t.Error("retried")
			}
		})
	}
}

// TestRetryBackoff: the waits before retries are drawn from 0 to the
// backoff's ceiling (full jitter): 20 waits of up to 200ms take about 2s
// in all, never more than 4s, and (by far) not under 1s.
func TestRetryBackoff(t *testing.T) {
	a := startScriptApp(t, answerStatus(503))
	l := startRetryLab(t, "defaults: {retries: {backoff: {base: 200ms, max: 200ms}, budget: {ratio: 1, minPerSecond: 100}}}", nil, a)
	c := h1Client(t)
	var total time.Duration
	for range 10 {
		r := send(t, c, "GET", l.url("/"), nil, nil)
		if r.status != 503 {
			t.Fatalf("%d, want 503", r.status)
		}
		total += r.took
	}
	if a.count() != 30 {
		t.Errorf("the app saw %d tries, want 30", a.count())
	}
	if total < time.Second || total > 4*time.Second+time.Second {
		t.Errorf("20 backoffs of up to 200ms took %v in all, want about 2s", total)
	}
}

// within fails the test unless d is within [lo, hi].
func within(t *testing.T, what string, d, lo, hi time.Duration) {
	t.Helper()
	if d < lo || d > hi {
		t.Errorf("%s took %v, want %v to %v", what, d.Round(time.Millisecond), lo, hi)
	}
}

// TestTimeouts: the request timeout answers 504 naming it, in time; a
// per-try timeout gives a hung try up and retries it on another
// endpoint, within the request timeout; when every try hangs, 504 names
// the per-try timeout; the connect timeout bounds a dial that hangs. Each
// is counted. The app whose request was given up sees its client go away.
func TestTimeouts(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name+"/request", func(t *testing.T) {
			a := startScriptApp(t, hang)
			l := startRetryLab(t, "defaults: {timeouts: {request: 300ms}}", nil, a)
			r := send(t, cl.new(t), "GET", l.url("/"), nil, nil)
			if r.status != 504 || r.header.Get(hdrError) != "timeout: request 300ms" {
				t.Errorf("%d %q, want 504 timeout: request 300ms", r.status, r.header.Get(hdrError))
			}
			within(t, "the request", r.took, 300*time.Millisecond, 600*time.Millisecond)
			if n := l.cli.sumCounter(t, "meshgate_timeouts_total", "direction=outbound", "kind=request"); n != 1 {
				t.Errorf("meshgate_timeouts_total{kind=request} = %v, want 1", n)
			}
			waitFor(t, func() bool { s := a.seen(); return len(s) == 1 && s[0].cancelled })
		})
		t.Run(cl.name+"/per try", func(t *testing.T) {
			a, b := startScriptApp(t, hang), startScriptApp(t, ok)
			l := startRetryLab(t, "defaults: {timeouts: {request: 2s, perTry: 200ms}}", nil, a, b)
			r := send(t, cl.new(t), "GET", l.url("/"), nil, nil)
			if r.status != 200 {
				t.Fatalf("%d %q, want 200 from the second endpoint", r.status, r.header.Get(hdrError))
			}
			within(t, "the request", r.took, 200*time.Millisecond, 2*time.Second)
			if n := l.cli.sumCounter(t, "meshgate_retries_total", "reason=per_try_timeout"); n != 1 {
				t.Errorf("meshgate_retries_total{reason=per_try_timeout} = %v, want 1", n)
			}
			if n := l.cli.sumCounter(t, "meshgate_timeouts_total", "kind=per_try"); n != 1 {
				t.Errorf("meshgate_timeouts_total{kind=per_try} = %v, want 1", n)
			}
			waitFor(t, func() bool { s := a.seen(); return len(s) == 1 && s[0].cancelled })
		})
		t.Run(cl.name+"/every try hangs", func(t *testing.T) {
			a := startScriptApp(t, hang)
			l := startRetryLab(t, "defaults: {timeouts: {perTry: 100ms}, retries: {backoff: {base: 1ms}}}", nil, a)
			r := send(t, cl.new(t), "GET", l.url("/"), nil, nil)
			if r.status != 504 || r.header.Get(hdrError) != "timeout: per-try 100ms" {
				t.Errorf("%d %q, want 504 timeout: per-try 100ms", r.status, r.header.Get(hdrError))
			}
			within(t, "three tries of 100ms", r.took, 300*time.Millisecond, time.Second)
			waitFor(t, func() bool { return a.count() == 3 })
		})
	}
	for _, cl := range clients {
		t.Run(cl.name+"/the peer's deadline first", func(t *testing.T) {
			// The server sidecar's deadline may fire a hair before the
			// try's own: its 504 is the try's timeout, and retried as one.
			peer := func(_ int, w http.ResponseWriter, _ *http.Request) {
				w.Header().Set(hdrError, "timeout: deadline 200ms")
				w.WriteHeader(504)
			}
			a, b := startScriptApp(t, peer), startScriptApp(t, ok)
			l := startRetryLab(t, "defaults: {timeouts: {perTry: 200ms}}", nil, a, b)
			if r := send(t, cl.new(t), "GET", l.url("/"), nil, nil); r.status != 200 {
				t.Fatalf("%d %q, want 200 from the second endpoint", r.status, r.header.Get(hdrError))
			}
			if n := l.cli.sumCounter(t, "meshgate_retries_total", "reason=per_try_timeout"); n != 1 {
				t.Errorf("meshgate_retries_total{reason=per_try_timeout} = %v, want 1", n)
			}
			// Without a deadline of the try's, a 504 is only a 504.
			l2 := startRetryLab(t, "", nil, startScriptApp(t, peer), startScriptApp(t, ok))
			if r := send(t, cl.new(t), "GET", l2.url("/"), nil, nil); r.status != 504 {
				t.Errorf("%d, want the 504 as it is", r.status)
			}
		})
	}
	t.Run("connect", func(t *testing.T) {
		b := startScriptApp(t, ok)
		black := netip.MustParseAddrPort(blackhole(t))
		l := startRetryLab(t, "defaults: {timeouts: {connect: 200ms}}", nil, b)
		l.bal.mu.Lock()
		l.bal.eps = append([]netip.AddrPort{black}, l.bal.eps...)
		l.bal.mu.Unlock()
		r := send(t, h1Client(t), "GET", l.url("/"), nil, nil)
		if r.status != 200 {
			t.Fatalf("%d, want 200 from the endpoint that connects", r.status)
		}
		within(t, "the request", r.took, 200*time.Millisecond, time.Second)
		if n := l.cli.sumCounter(t, "meshgate_timeouts_total", "kind=connect"); n != 1 {
			t.Errorf("meshgate_timeouts_total{kind=connect} = %v, want 1", n)
		}
		// The only endpoint hangs: 504 naming the connect timeout, after
		// the free connect attempt and both retries.
		l.bal.mu.Lock()
		l.bal.eps = []netip.AddrPort{black}
		l.bal.mu.Unlock()
		r = send(t, h1Client(t), "GET", l.url("/"), nil, nil)
		if r.status != 504 || r.header.Get(hdrError) != "timeout: connect 200ms" {
			t.Errorf("%d %q, want 504 timeout: connect 200ms", r.status, r.header.Get(hdrError))
		}
	})
}

// meshEndpoint is a peer "sidecar" that completes mesh TLS and then does
// what fn does with the connection (close it, say).
func meshEndpoint(t *testing.T, sm *testMesh, fn func(c net.Conn)) netip.AddrPort {
	t.Helper()
	cfg := sm.ServerConfig().Clone()
	cfg.NextProtos = []string{alpnHTTP1, alpnH2}
	b := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
		tc := tls.Server(c, cfg)
		if tc.Handshake() != nil {
			return
		}
		fn(tc)
	})
	return netip.MustParseAddrPort(b.addr())
}

// resetAfterRequest reads a bit of what comes, then resets the
// connection: a peer gone before it answered.
func resetAfterRequest(c net.Conn) {
	c.Read(make([]byte, 1024))
	c.(*tls.Conn).NetConn().(*net.TCPConn).SetLinger(0)
}

// prepend puts ep before the lab's endpoints: tried first.
func (l *retryLab) prepend(ep netip.AddrPort) {
	l.bal.mu.Lock()
	defer l.bal.mu.Unlock()
	l.bal.eps = append([]netip.AddrPort{ep}, l.bal.eps...)
}

// TestRetryResetAndConnect: a connection reset before any byte of the
// answer is retried (for the methods retried); a connect failure is
// retried on another endpoint for any method, free while
// loadBalancing.connectAttempts lasts, then as a retry.
func TestRetryResetAndConnect(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name+"/reset", func(t *testing.T) {
			b := startScriptApp(t, ok)
			l := startRetryLab(t, "", nil, b)
			l.prepend(meshEndpoint(t, l.sm, resetAfterRequest))
			c := cl.new(t)
			if r := send(t, c, "GET", l.url("/"), nil, nil); r.status != 200 {
				t.Fatalf("GET with the first endpoint resetting: %d %q, want 200", r.status, r.header.Get(hdrError))
			}
			if n := l.cli.sumCounter(t, "meshgate_retries_total", "reason=reset"); n != 1 {
				t.Errorf("meshgate_retries_total{reason=reset} = %v, want 1", n)
			}
			if r := send(t, c, "POST", l.url("/"), []byte("x"), nil); r.status != 502 {
				t.Errorf("POST with the first endpoint resetting: %d, want 502 (not retried)", r.status)
			}
			if b.count() != 1 {
				t.Errorf("the good endpoint saw %d requests, want 1", b.count())
			}
		})
	}
	for _, cl := range clients {
		t.Run(cl.name+"/connect", func(t *testing.T) {
			b := startScriptApp(t, ok)
			// One connect attempt: a connect failure is at once a retry's.
			l := startRetryLab(t, "", func(c *Config) { c.LoadBalancing.ConnectAttempts = 1 }, nil, b)
			if r := send(t, cl.new(t), "POST", l.url("/"), []byte("x"), nil); r.status != 200 {
				t.Fatalf("POST with the first endpoint refusing connections: %d, want 200", r.status)
			}
			if n := l.cli.sumCounter(t, "meshgate_retries_total", "reason=connect_failure"); n != 1 {
				t.Errorf("meshgate_retries_total{reason=connect_failure} = %v, want 1", n)
			}
			// The default three: the failure moves on at once, no retry.
			l2 := startRetryLab(t, "", nil, nil, startScriptApp(t, ok))
			if r := send(t, cl.new(t), "GET", l2.url("/"), nil, nil); r.status != 200 {
				t.Fatalf("GET: %d, want 200", r.status)
			}
			if n := l2.cli.sumCounter(t, "meshgate_retries_total"); n != 0 {
				t.Errorf("meshgate_retries_total = %v, want 0 (a free connect attempt)", n)
			}
		})
	}
	t.Run("attempts bound", func(t *testing.T) {
		// Four endpoints refusing connections, connectAttempts 2 and 1
		// retry: 2 + 1 endpoints are tried, no more.
		l := startRetryLab(t, "defaults: {retries: {attempts: 1, backoff: {base: 1ms}}}",
			func(c *Config) { c.LoadBalancing.ConnectAttempts = 2 }, nil, nil, nil, nil)
		if r := send(t, h1Client(t), "GET", l.url("/"), nil, nil); r.status != 502 {
			t.Fatalf("%d, want 502", r.status)
		}
		if got := l.picks(); len(got) != 3 {
			t.Errorf("endpoints tried: %v, want 3 (connectAttempts 2 + 1 retry)", got)
		}
	})
}

// meshClient returns an HTTP client that speaks to a server sidecar as a
// client sidecar would: mesh TLS with ALPN proto (meshgate/http1 or
// meshgate/h2).
func meshClient(t *testing.T, cm *testMesh, proto string) *http.Client {
	cfg := cm.ClientConfig(nil).Clone()
	cfg.NextProtos = []string{proto}
	dialTLS := func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := tls.Dialer{Config: cfg}
		return d.DialContext(ctx, network, addr)
	}
	if proto == alpnH2 {
		tr := &http2.Transport{DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return dialTLS(ctx, network, addr)
		}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	tr := &http.Transport{DialTLSContext: dialTLS}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// TestDeadlinePropagation: the client sidecar tells the server sidecar
// the time a request has left (hdrTimeout); the server sidecar cancels
// the app's request when it is over and answers 504, and never hands the
// header to the app; one an app sends is removed, and one from a client
// that is no mesh peer is not honoured.
func TestDeadlinePropagation(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name+"/end to end", func(t *testing.T) {
			a := startScriptApp(t, func(_ int, w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/hang" {
					hang(0, w, r)
				}
			})
			l := startRetryLab(t, "defaults: {timeouts: {request: 300ms}}", nil, a)
			c := cl.new(t)
			if r := send(t, c, "GET", l.url("/"), nil, http.Header{hdrTimeout: {"1ms"}}); r.status != 200 {
				t.Fatalf("GET with a timeout header of the app's own: %d, want 200", r.status)
			}
			if r := send(t, c, "GET", l.url("/hang"), nil, nil); r.status != 504 {
				t.Fatalf("GET /hang: %d %q, want 504", r.status, r.header.Get(hdrError))
			}
			waitFor(t, func() bool { s := a.seen(); return len(s) == 2 && s[1].cancelled })
			s := a.seen()
			for _, r := range s {
				if v := r.header.Get(hdrTimeout); v != "" {
					t.Errorf("the app saw %s: %s", hdrTimeout, v)
				}
			}
			// Cancelled by the server sidecar's deadline, or (HTTP/2) by
			// the client sidecar giving up the stream: about 300ms in.
			within(t, "the app's request", s[1].at.Sub(s[1].start), 250*time.Millisecond, time.Second)
		})
	}
	for _, proto := range []string{alpnHTTP1, alpnH2} {
		t.Run(proto, func(t *testing.T) {
			a := startScriptApp(t, hang)
			mca := newMeshCA(t)
			cm, sm := mca.meshes()
			srv := startProxy(t, testConfig(), WithMeshTLS(sm), to(a.addr))
			r := send(t, meshClient(t, cm, proto), "GET", "https://"+srv.in()+"/", nil, http.Header{hdrTimeout: {"200ms"}})
			if r.status != 504 || r.header.Get(hdrError) != "timeout: deadline 200ms" {
				t.Errorf("%d %q, want 504 timeout: deadline 200ms", r.status, r.header.Get(hdrError))
			}
			within(t, "the request", r.took, 200*time.Millisecond, 700*time.Millisecond)
			waitFor(t, func() bool { s := a.seen(); return len(s) == 1 && s[0].cancelled })
			if s := a.seen(); s[0].header.Get(hdrTimeout) != "" {
				t.Errorf("the app saw %s", hdrTimeout)
			}
			if n := srv.sumCounter(t, "meshgate_timeouts_total", "direction=inbound", "kind=request"); n != 1 {
				t.Errorf("meshgate_timeouts_total{direction=inbound,kind=request} = %v, want 1", n)
			}
		})
	}
	t.Run("plaintext client", func(t *testing.T) {
		a := startScriptApp(t, func(_ int, w http.ResponseWriter, r *http.Request) { time.Sleep(200 * time.Millisecond) })
		_, sm := newMeshCA(t).meshes()
		cfg := testConfig()
		cfg.MTLS.Mode = MTLSPermissive
		srv := startProxy(t, cfg, WithMeshTLS(sm), to(a.addr))
		if r := send(t, h1Client(t), "GET", "http://"+srv.in()+"/", nil, http.Header{hdrTimeout: {"50ms"}}); r.status != 200 {
			t.Errorf("a plaintext client's timeout header: %d, want 200 (not honoured)", r.status)
		}
		if s := a.seen(); len(s) != 1 || s[0].header.Get(hdrTimeout) != "" {
			t.Errorf("the app saw %+v, want one request without %s", s, hdrTimeout)
		}
	})
}

// TestGRPCTimeout: a gRPC request's grpc-timeout is its request timeout
// when sooner than the configured one: it ends with DEADLINE_EXCEEDED,
// trailers-only, in time, and the app sees grpc-timeout reduced to what
// is left.
func TestGRPCTimeout(t *testing.T) {
	grpcHeader := func(timeout string) http.Header {
		return http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}, "Grpc-Timeout": {timeout}}
	}
	for _, tc := range []struct {
		name, res, timeout, why string
		took                    time.Duration
	}{
		{"grpc-timeout", "", "100m", "timeout: grpc-timeout 100ms", 100 * time.Millisecond},
		{"the configured one sooner", "defaults: {timeouts: {request: 100ms}}", "5S", "timeout: request 100ms", 100 * time.Millisecond},
		{"grpc-timeout sooner", "defaults: {timeouts: {request: 5s}}", "150m", "timeout: grpc-timeout 150ms", 150 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := startScriptApp(t, hang)
			l := startRetryLab(t, tc.res, nil, a)
			r := send(t, h2cClient(t), "POST", l.url("/grpc.health.v1.Health/Check"), []byte("\x00\x00\x00\x00\x00"), grpcHeader(tc.timeout))
			if r.status != 200 || r.header.Get("Grpc-Status") != "4" || r.header.Get(hdrError) != tc.why {
				t.Errorf("%d grpc-status %q %q, want 200 grpc-status 4 (DEADLINE_EXCEEDED) %q", r.status, r.header.Get("Grpc-Status"), r.header.Get(hdrError), tc.why)
			}
			within(t, "the call", r.took, tc.took, tc.took+100*time.Millisecond)
			waitFor(t, func() bool { s := a.seen(); return len(s) == 1 && s[0].cancelled })
			got, ok := parseGRPCTimeout(a.seen()[0].header.Get("Grpc-Timeout"))
			if !ok || got > tc.took || got < tc.took-50*time.Millisecond {
				t.Errorf("the app saw grpc-timeout %q, want what was left of %v", a.seen()[0].header.Get("Grpc-Timeout"), tc.took)
			}
		})
	}
}

// TestLargeBodyStreams: a request body over retries.maxBodyBytes is not
// kept: it reaches the app while its client is still sending it, and its
// request is not retried.
func TestLargeBodyStreams(t *testing.T) {
	const size = 2 << 20
	for _, cl := range clients {
		for _, known := range []bool{true, false} {
			name := fmt.Sprintf("%s/length known %v", cl.name, known)
			t.Run(name, func(t *testing.T) {
				begun := make(chan struct{}, 1)
				a := startScriptApp(t, answerStatus(503))
				// The app behind the first endpoint says when a request
				// begins, before it reads the body.
				a.addr = startHTTPApp(t, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					begun <- struct{}{}
					n, _ := io.Copy(io.Discard, r.Body)
					w.WriteHeader(503)
					fmt.Fprintf(w, "%d", n)
				}))
				b := startScriptApp(t, ok)
				l := startRetryLab(t, "", nil, a, b)
				pr, pw := io.Pipe()
				req, _ := http.NewRequest("PUT", l.url("/"), pr)
				if known {
					req.ContentLength = size
				}
				type answer struct {
					resp *http.Response
					err  error
				}
				done := make(chan answer, 1)
				c := cl.new(t)
				go func() {
					resp, err := c.Do(req)
					done <- answer{resp, err}
				}()
				half := bytes.Repeat([]byte("x"), size/2)
				if _, err := pw.Write(half); err != nil {
					t.Fatal(err)
				}
				select {
				case <-begun:
				case <-time.After(5 * time.Second):
					pw.CloseWithError(fmt.Errorf("test over"))
					t.Fatal("the app saw no request while half of its 2 MiB body was sent: the body was held back")
				}
				pw.Write(half)
				pw.Close()
				got := <-done
				if got.err != nil {
					t.Fatal(got.err)
				}
				body, _ := io.ReadAll(got.resp.Body)
				got.resp.Body.Close()
				if got.resp.StatusCode != 503 || string(body) != fmt.Sprint(size) {
					t.Errorf("%d %q, want the app's 503 after it read all %d bytes (not retried)", got.resp.StatusCode, body, size)
				}
				if b.count() != 0 {
					t.Error("a request with a 2 MiB body was retried")
				}
			})
		}
	}
}

// TestStreamIdle: a response that keeps moving is never cut, however
// long it lasts; one that stops for streamIdle is.
func TestStreamIdle(t *testing.T) {
	stream := func(_ int, w http.ResponseWriter, r *http.Request) {
		for i := range 10 {
			pause := 30 * time.Millisecond
			if r.URL.Path == "/stall" {
				pause = 2 * time.Second
			}
			fmt.Fprintf(w, "%d", i)
			w.(http.Flusher).Flush()
			if i != 5 {
				pause = 30 * time.Millisecond
			}
			select {
			case <-time.After(pause):
			case <-r.Context().Done():
				return
			}
		}
	}
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			a := startScriptApp(t, stream)
			l := startRetryLab(t, "defaults: {timeouts: {streamIdle: 200ms, request: 100ms}}", nil, a)
			c := cl.new(t)
			// 300ms of streaming, past the request timeout (which ends at
			// the headers) and streamIdle both, never idle.
			if r := send(t, c, "GET", l.url("/"), nil, nil); r.status != 200 || r.body != "0123456789" {
				t.Fatalf("a moving stream: %d %q", r.status, r.body)
			}
			resp, err := c.Get(l.url("/stall"))
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && string(b) == "0123456789" {
				t.Fatalf("a stream that stalled for 2s was not cut")
			}
			within(t, "the stall", time.Since(start), 150*time.Millisecond, 1500*time.Millisecond)
			waitFor(t, func() bool {
				return l.cli.sumCounter(t, "meshgate_timeouts_total", "kind=stream_idle") == 1
			})
		})
	}
}

// TestRetryDecision: what again grants, rule by rule, without a network.
func TestRetryDecision(t *testing.T) {
	res, err := newResRuntime(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{res: res}
	p.cfg.LoadBalancing.ConnectAttempts = 3
	table, err := resilience.New(resilienceYAML(t, `defaults:
  timeouts: {request: 1s}
  retries: {attempts: 2, on: [reset, "503", unavailable], backoff: {base: 100ms, max: 100ms}, maxRetryAfter: 2s,
    budget: {ratio: 1, minPerSecond: 10000}}`))
	if err != nil {
		t.Fatal(err)
	}
	dp := table.Default()
	fresh := func(method string) *reqRes {
		rr := &reqRes{}
		rr.begin(p, dp.Policy(), &destGuard{pol: dp, budget: newBudget(dp), guardState: &guardState{}}, method, time.Now())
		return rr
	}
	st503 := retryWhy{kind: retryStatus, status: 503}
	for _, tc := range []struct {
		name       string
		method     string
		why        retryWhy
		replayable bool
		retryAfter string
		want       bool
	}{
		{"503 GET", "GET", st503, true, "", true},
		{"503 POST", "POST", st503, true, "", false},
		{"503 body not kept", "PUT", st503, false, "", false},
		{"connect failure POST", "POST", retryWhy{kind: retryConnect}, false, "", false}, // not in on
		{"reset GET", "GET", retryWhy{kind: retryReset}, true, "", true},
		{"per-try GET", "GET", retryWhy{kind: retryPerTry}, true, "", true},
		{"gRPC unavailable", "GET", retryWhy{kind: retryGRPC, code: 14}, true, "", true},
		{"Retry-After within", "GET", st503, true, "0", true},
		{"Retry-After over maxRetryAfter", "GET", st503, true, "3", false},
		{"Retry-After past the deadline", "GET", st503, true, "1", false},
		{"Retry-After unreadable", "GET", st503, true, "soon", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rr := fresh(tc.method)
			wait, ok := rr.again(tc.why, tc.replayable, tc.retryAfter)
			if ok != tc.want {
				t.Fatalf("again = %v, want %v", ok, tc.want)
			}
			if ok && (wait < 0 || wait > 100*time.Millisecond) {
				t.Errorf("wait %v, want 0 to the backoff's 100ms", wait)
			}
		})
	}
	t.Run("attempts", func(t *testing.T) {
		rr := fresh("GET")
		for i := range 3 {
			if _, ok := rr.again(st503, true, ""); ok != (i < 2) {
				t.Errorf("retry %d: %v", i+1, ok)
			}
		}
	})
	t.Run("statuses", func(t *testing.T) {
		rr := fresh("GET")
		for _, tc := range []struct {
			status int
			grpc   string
			want   bool
		}{{503, "", true}, {502, "", false}, {200, "14", true}, {200, "4", false}, {200, "x", false}, {200, "", false}} {
			if _, ok := rr.retriesStatus(tc.status, tc.grpc); ok != tc.want {
				t.Errorf("status %d grpc-status %q: %v, want %v", tc.status, tc.grpc, ok, tc.want)
			}
		}
	})
	if got := (retryWhy{kind: retryGRPC, code: 8}).reason(); got != "grpc_resource_exhausted" {
		t.Errorf("reason of RESOURCE_EXHAUSTED: %q", got)
	}
}

// TestResStatesReload: a destination keeps its retry budget over a reload
// that keeps its name and budget (even when its guard changed), gets a
// new one when its budget changed (keeping its guard when that did not),
// and loses its state when it is gone; the default policy's are kept
// per destination address, over a reload too.
func TestResStatesReload(t *testing.T) {
	p, err := New(testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	load := func(y string) {
		rc := resilienceYAML(t, y)
		tb, err := resilience.New(rc)
		if err != nil {
			t.Fatal(err)
		}
		p.commitResilience(tb, rc)
	}
	state := func(dst netip.AddrPort) *destGuard {
		var rc resConn
		p.resolveRes(&rc, dst)
		return rc.g
	}
	a, b := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80")
	a81, b81 := netip.MustParseAddrPort("10.0.0.1:81"), netip.MustParseAddrPort("10.0.0.2:81")
	load("destinations:\n- {name: api, match: {ports: [80]}}\n- {name: db, match: {ports: [5432]}}")
	s1 := state(a)
	if state(b) != s1 {
		t.Error("two addresses of one named destination have states of their own")
	}
	d1 := state(a81)
	if d1 == state(b81) || d1.budget == state(b81).budget {
		t.Error("two destinations of the default policy share a budget")
	}
	if state(a81) != d1 {
		t.Error("a default destination's state was not kept between connections")
	}
	load("destinations:\n- {name: api, match: {ports: [80]}, circuitBreaker: {consecutiveFailures: 3}}")
	s2 := state(a)
	if s2.budget != s1.budget {
		t.Error("a reload that kept the destination and its budget dropped its budget")
	}
	if s2.guardState == s1.guardState || s2.breaker == nil {
		t.Error("a reload that set a breaker kept the guard without one")
	}
	if state(a81).budget != d1.budget {
		t.Error("a reload dropped the default policy's budgets")
	}
	load("destinations:\n- {name: api, match: {ports: [80]}, circuitBreaker: {consecutiveFailures: 3}, retries: {budget: {ratio: 0.5}}}")
	s3 := state(a)
	if s3.budget == s2.budget {
		t.Error("a changed budget kept the old one")
	}
	if s3.guardState != s2.guardState {
		t.Error("a reload that changed only the budget dropped the breaker")
	}
	load("")
	if n := len(p.guards.curSet().named); n != 0 {
		t.Errorf("%d named destinations' states kept after they went", n)
	}
	if g := state(a); !g.pol.IsDefault() || g == s3 {
		t.Error("the destination gone still has its state")
	}
}

// TestDestinationIdleTimeout: a destination's idle timeout closes the
// pooled mesh connections to it that stay unused that long: HTTP/1 (the
// pool's own limit is 90s) and HTTP/2 (the proxy's timeouts.idle, an
// hour).
func TestDestinationIdleTimeout(t *testing.T) {
	for _, tc := range []struct {
		res    string
		h2     bool
		closed bool
	}{
		{"defaults: {timeouts: {idle: 200ms}}", false, true}, {"", false, false},
		{"defaults: {timeouts: {idle: 200ms}}", true, true}, {"", true, false},
	} {
		t.Run(fmt.Sprint(map[bool]string{false: "http1", true: "http2"}[tc.h2], " closed ", tc.closed), func(t *testing.T) {
			l := startRetryLab(t, tc.res, nil, startScriptApp(t, ok))
			client := h1Client(t)
			if tc.h2 {
				client = h2cClient(t)
			}
			if r := send(t, client, "GET", l.url("/"), nil, nil); r.status != 200 {
				t.Fatalf("%d, want 200", r.status)
			}
			closed := func() bool { return l.srvs[0].metric(t, "meshgate_tcp_connections_closed_total", Inbound) > 0 }
			if tc.closed {
				waitFor(t, closed)
				return
			}
			time.Sleep(500 * time.Millisecond)
			if closed() {
				t.Error("the pooled connection was closed with no idle timeout set")
			}
		})
	}
}

// TestMeshTransportsByIdle: the HTTP/2 path pools a destination's mesh
// connections by a transport closing them after its idle timeout, shared
// with every destination with the same one, the proxy's for those with
// none; a reload drops those no destination has any more.
func TestMeshTransportsByIdle(t *testing.T) {
	p, err := New(testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	m := p.l7.mesh
	if tr := m.forIdle(0); tr != m.def || tr.IdleConnTimeout != time.Hour || m.forIdle(time.Hour) != tr {
		t.Errorf("no idle timeout of the destination's: want the proxy's transport, closing after timeouts.idle (1h)")
	}
	tr := m.forIdle(200 * time.Millisecond)
	if tr.IdleConnTimeout != 200*time.Millisecond || m.forIdle(200*time.Millisecond) != tr || m.forIdle(time.Second) == tr {
		t.Errorf("idle 200ms: want one transport of its own, closing after 200ms")
	}
	tb, err := resilience.New(resilienceYAML(t, "destinations:\n- match: {ports: [80]}\n  timeouts: {idle: 1s}"))
	if err != nil {
		t.Fatal(err)
	}
	m.retable(tb)
	m.mu.RLock()
	_, kept200 := m.by[200*time.Millisecond]
	_, kept1s := m.by[time.Second]
	m.mu.RUnlock()
	if kept200 || !kept1s {
		t.Errorf("after a reload with only idle 1s: 200ms kept %v, 1s kept %v; want false, true", kept200, kept1s)
	}
}

// retryHotPath is what the retry loop adds to a request of the default
// policy that succeeds at once, on either path: the policy resolved
// (cached per connection), the budget's deposit, the try's deadline,
// the endpoint noted, the answer's status looked at.
func retryHotPath(tb testing.TB) func() {
	p, err := New(testConfig(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	dst := netip.MustParseAddrPort("10.0.0.1:8080")
	var rc resConn
	var rr reqRes
	method, target := "GET", []byte("/api/items?x=1")
	return func() {
		now := time.Now()
		p.resolveRes(&rc, dst)
		rr.begin(p, routePolicy(rc.dp, method, target), rc.g, method, now)
		rr.beginTry(now)
		if t, ok := p.pickRetry(dst, rr.tried, &rr); ok {
			rr.attempts++
			rr.endpoint = t.addr
			rr.tried = append(rr.tried, t.addr)
		}
		if _, retry := rr.retriesStatus(200, ""); retry {
			tb.Fatal("200 retried")
		}
	}
}

// TestRetryHotPathAllocs: a request of the default policy that succeeds
// costs the retry loop no allocation.
func TestRetryHotPathAllocs(t *testing.T) {
	f := retryHotPath(t)
	if n := testing.AllocsPerRun(1000, f); n != 0 {
		t.Errorf("%v allocations a request, want 0", n)
	}
}

// BenchmarkRetryHotPath is retryHotPath's cost per request, serial and
// from every CPU at once (one destination's budget, shared).
func BenchmarkRetryHotPath(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		f := retryHotPath(b)
		b.ReportAllocs()
		for b.Loop() {
			f()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		p, err := New(testConfig(), nil)
		if err != nil {
			b.Fatal(err)
		}
		dst := netip.MustParseAddrPort("10.0.0.1:8080")
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			// A connection each, the destination's budget shared.
			var rc resConn
			var rr reqRes
			for pb.Next() {
				now := time.Now()
				p.resolveRes(&rc, dst)
				rr.begin(p, routePolicy(rc.dp, "GET", "/api/items"), rc.g, "GET", now)
				rr.beginTry(now)
				rr.retriesStatus(200, "")
			}
		})
	})
}
