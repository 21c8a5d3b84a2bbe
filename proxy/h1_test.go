package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestH1ParseRequest: the codec takes what a server must accept and
// refuses, with the status a client is answered, what would let a request
// mean one thing to the sidecar and another to the app.
func TestH1ParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name, head string
		status     int // 0: accepted
		length     int64
		chunked    bool
		close      bool
	}{
		{"get", "GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n", 0, -1, false, false},
		{"bare LF", "GET / HTTP/1.1\nHost: x\n\n", 0, -1, false, false},
		{"leading empty line", "\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, -1, false, false},
		{"post with length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n", 0, 12, false, false},
		{"the same length twice", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n", 0, 3, false, false},
		{"chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n", 0, -1, true, false},
		{"close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n", 0, -1, false, true},
		{"HTTP/1.0 closes", "GET / HTTP/1.0\r\n\r\n", 0, -1, false, true},
		{"HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 0, -1, false, false},

		{"length and chunked", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, 0, false, false},
		{"two lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, 0, false, false},
		{"signed length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400, 0, false, false},
		{"length list", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", 400, 0, false, false},
		{"gzip coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, 0, false, false},
		{"chunked twice", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501, 0, false, false},
		{"chunked in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, 0, false, false},
		{"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, 0, false, false},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", 400, 0, false, false},
		{"NUL in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400, 0, false, false},
		{"CR in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400, 0, false, false},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 400, 0, false, false},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, 0, false, false},
		{"HTTP/2.0 line", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, 0, false, false},
		{"no version", "GET /\r\nHost: a\r\n\r\n", 400, 0, false, false},
		{"bad method", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, 0, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h1Reader{src: strings.NewReader(tc.head + "rest")}
			var m h1Msg
			err := r.readHead(&m, false)
			if tc.status != 0 {
				he, ok := err.(*h1Error)
				if !ok || he.status != tc.status {
					t.Fatalf("err %v, want status %d", err, tc.status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.length != tc.length || m.chunked != tc.chunked || m.close != tc.close {
				t.Errorf("length %d chunked %v close %v, want %d %v %v", m.length, m.chunked, m.close, tc.length, tc.chunked, tc.close)
			}
			if got := string(r.buffered()); got != "rest" {
				t.Errorf("after the head: %q, want rest", got)
			}
		})
	}
}

// TestH1HeadLimit: a head up to maxHeaderBytes is read whole; a longer
// one is refused with 431.
func TestH1HeadLimit(t *testing.T) {
	fits := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", maxHeaderBytes-100) + "\r\n\r\n"
	r := h1Reader{src: strings.NewReader(fits)}
	var m h1Msg
	if err := r.readHead(&m, false); err != nil || len(m.get("x-big")) != maxHeaderBytes-100 {
		t.Fatalf("a head of %d bytes: %v", len(fits), err)
	}
	r = h1Reader{src: strings.NewReader("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", maxHeaderBytes) + "\r\n\r\n")}
	if he, ok := r.readHead(&m, false).(*h1Error); !ok || he.status != 431 {
		t.Fatalf("a head over 1 MiB: %v, want 431", he)
	}
}

// TestH1Chunked: a chunked body passes as it came, extensions and
// trailers included, and ends where its last chunk says; a malformed one
// is an error.
func TestH1Chunked(t *testing.T) {
	body := "5;ext=1\r\nhello\r\n0\r\nTrailer-A: 1\r\n\r\n"
	r := h1Reader{src: strings.NewReader(body + "NEXT")}
	var out bytes.Buffer
	w := h1Writer{dst: &fakeConn{Writer: &out}}
	if err := copyBody(&w, &r, -1, true, false); err != nil {
		t.Fatal(err)
	}
	w.flush()
	if out.String() != body {
		t.Errorf("copied %q, want %q", out.String(), body)
	}
	if string(r.buffered()) != "NEXT" {
		t.Errorf("left %q, want NEXT", r.buffered())
	}
	for _, bad := range []string{"x\r\nhello\r\n0\r\n\r\n", "5\r\nhelloXX0\r\n\r\n", "5\r\nhel", "fffffffffffffffff\r\n"} {
		r := h1Reader{src: strings.NewReader(bad)}
		w := h1Writer{dst: &fakeConn{Writer: io.Discard}}
		if err := copyBody(&w, &r, -1, true, false); err == nil {
			t.Errorf("%q: copied without error", bad)
		}
	}
}

// TestH1HopByHop: the fields of one connection are not passed on; an
// upgrade keeps what the upstream needs to switch.
func TestH1HopByHop(t *testing.T) {
	head := "GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\nKeep-Alive: 5\r\nX-Secret: s\r\nProxy-Connection: x\r\nUpgrade: websocket\r\nX-Keep: k\r\n\r\n"
	for _, upgrade := range []bool{false, true} {
		var m h1Msg
		r := h1Reader{src: strings.NewReader(head)}
		if err := r.readHead(&m, false); err != nil {
			t.Fatal(err)
		}
		m.dropHopByHop(upgrade)
		out := string(m.appendRequest(nil))
		want := "GET / HTTP/1.1\r\nHost: x\r\nX-Keep: k\r\n\r\n"
		if upgrade {
			want = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Keep: k\r\nConnection: upgrade\r\n\r\n"
		}
		if out != want {
			t.Errorf("upgrade %v: %q, want %q", upgrade, out, want)
		}
	}
}

type fakeConn struct {
	net.Conn
	io.Writer
}

func (c *fakeConn) Write(b []byte) (int, error) { return c.Writer.Write(b) }

// rawExchange writes raw to addr and returns what comes back until the
// connection closes or goes quiet for a moment.
func rawExchange(t *testing.T, addr, raw string) string {
	t.Helper()
	c := dial(t, addr)
	defer c.Close()
	c.Write([]byte(raw))
	var out bytes.Buffer
	buf := make([]byte, 64<<10)
	for {
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			return out.String()
		}
	}
}

// TestH1Smuggling: requests whose framing two servers could read two ways
// are refused by the sidecar that reads them first, and nothing of them
// reaches the app: through the client sidecar and into the server one.
func TestH1Smuggling(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, seen := startL7App(t)
	p := startPair(t, app, cm, sm, pairOptions{serverCfg: func(c *Config) { c.MTLS.Mode = MTLSPermissive }})
	for _, path := range []struct{ name, addr string }{{"outbound", p.client.out()}, {"inbound-plaintext", p.server.in()}} {
		for _, tc := range []struct{ name, raw, status string }{
			{"CL.TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", "400"},
			{"TE obfuscated", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", "501"},
			{"two lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", "400"},
			{"space before colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", "400"},
		} {
			t.Run(path.name+"/"+tc.name, func(t *testing.T) {
				before := len(seen())
				got := rawExchange(t, path.addr, tc.raw)
				if !strings.HasPrefix(got, "HTTP/1.1 "+tc.status+" ") || !strings.Contains(got, hdrError) {
					t.Errorf("answer %q, want %s with %s", got, tc.status, hdrError)
				}
				if strings.Count(got, "HTTP/1.1 ") != 1 {
					t.Errorf("more than one answer: %q", got)
				}
				if n := len(seen()) - before; n != 0 {
					t.Errorf("the app saw %d requests, want 0", n)
				}
			})
		}
	}
}

// TestH1Framing: what HTTP/1 lets a message be crosses the sidecars as it
// is: HTTP/1.0 with and without keep-alive, a response that ends with the
// connection, chunked bodies with trailers both ways, HEAD, 204, 304 and
// 100-continue; and the client's connection carries the next request
// whenever its framing allows.
func TestH1Framing(t *testing.T) {
	app := startRawApp(t, func(req *http.Request, body []byte) string {
		switch req.URL.Path {
		case "/eof":
			return "HTTP/1.0 200 OK\r\n\r\nuntil the end"
		case "/chunked":
			return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: done\r\n\r\n"
		case "/204":
			return "HTTP/1.1 204 No Content\r\n\r\n"
		case "/304":
			return "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"
		}
		if req.Method == "HEAD" {
			return "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
		}
		return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body)+len(req.Proto)+1, req.Proto+" "+string(body))
	})
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	p := startPair(t, app, cm, sm, pairOptions{})
	c := dial(t, p.client.out())
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	ask := func(raw, method string) *http.Response {
		t.Helper()
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		return resp
	}
	body := func(resp *http.Response) string {
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if r := ask("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz", "POST"); body(r) != "HTTP/1.1 xyz" {
		t.Error("a body with a length")
	}
	if r := ask("POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n1\r\nz\r\n0\r\nX-Req-T: 1\r\n\r\n", "POST"); body(r) != "HTTP/1.1 xyz" {
		t.Error("a chunked request body")
	}
	if r := ask("GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n", "GET"); body(r) != "abc" || r.Trailer.Get("X-T") != "done" {
		t.Errorf("a chunked response: trailers %v", r.Trailer)
	}
	if r := ask("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", "HEAD"); r.ContentLength != 5 || body(r) != "" {
		t.Error("HEAD")
	}
	if r := ask("GET /204 HTTP/1.1\r\nHost: a\r\n\r\n", "GET"); r.StatusCode != 204 {
		t.Error("204")
	}
	if r := ask("GET /304 HTTP/1.1\r\nHost: a\r\n\r\n", "GET"); r.StatusCode != 304 || body(r) != "" {
		t.Error("304")
	}
	if r := ask("POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", "POST"); r.StatusCode != 100 {
		t.Errorf("100-continue: %d first", r.StatusCode)
	} else {
		io.WriteString(c, "ok")
		if r, err := http.ReadResponse(br, &http.Request{Method: "POST"}); err != nil || body(r) != "HTTP/1.1 ok" {
			t.Errorf("after 100-continue: %v", err)
		}
	}
	// HTTP/1.0 goes on as HTTP/1.1 (the proxy's own version), with a Host.
	if r := ask("GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "GET"); body(r) != "HTTP/1.1 " || r.Close {
		t.Errorf("HTTP/1.0 keep-alive: close %v", r.Close)
	}
	// A chunked answer to HTTP/1.0 is its data alone, ended by the close.
	io.WriteString(c, "GET /chunked HTTP/1.0\r\n\r\n")
	if raw, err := io.ReadAll(br); err != nil || !strings.HasSuffix(string(raw), "\r\n\r\nabc") || strings.Contains(string(raw), "chunked") {
		t.Errorf("a chunked answer to HTTP/1.0: %q, %v; want the data alone, then the close", raw, err)
	}
	c = dial(t, p.client.out())
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br = bufio.NewReader(c)
	// A response that ends with the connection ends the client's too.
	if r := ask("GET /eof HTTP/1.1\r\nHost: a\r\n\r\n", "GET"); body(r) != "until the end" || !r.Close {
		t.Errorf("a response until EOF: close %v", r.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after a response until EOF: %v, want EOF", err)
	}
}

// startRawApp serves HTTP/1.1 with answer writing each response raw,
// keeping connections open unless a response is read until EOF
// (HTTP/1.0 without a length).
func startRawApp(t *testing.T, answer func(req *http.Request, body []byte) string) string {
	return startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Header.Get("Expect") == "100-continue" {
				io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
			}
			b, _ := io.ReadAll(req.Body)
			out := answer(req, b)
			io.WriteString(c, out)
			if strings.HasPrefix(out, "HTTP/1.0") && !strings.Contains(out, "Content-Length") {
				return
			}
		}
	}).addr()
}

// TestH1StalePooledConn: an app that closes idle keep-alive connections
// without saying so (as servers with a short keep-alive timeout do) costs
// its clients nothing: a request that finds its pooled connection closed
// goes again on a new one.
func TestH1StalePooledConn(t *testing.T) {
	var accepted atomic.Int32
	app := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
		// One request per connection, then a close with no
		// "Connection: close" said.
		accepted.Add(1)
		if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	}).addr()
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	p := startPair(t, app, cm, sm, pairOptions{})
	client := h1Client(t)
	for i := range 4 {
		if resp, body := get(t, client, "http://"+p.client.out()+"/", nil); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q (%s)", i, resp.StatusCode, body, resp.Header.Get(hdrError))
		}
		time.Sleep(20 * time.Millisecond) // the app's close arrives
	}
	if n := accepted.Load(); n < 4 {
		t.Errorf("the app accepted %d connections for 4 requests", n)
	}
}

// teapot is a test stage: it answers requests for its path itself, and
// marks the others.
type teapot struct {
	dir  Direction
	path string
}

func (teapot) Name() string { return "teapot" }

func (s teapot) Decide(r *Request) *Answer {
	if r.Target() == s.path {
		return &Answer{Status: http.StatusTeapot, Reason: "short and stout " + s.dir.String()}
	}
	r.Set("X-Stage-"+s.dir.String(), r.Method()+" "+r.Authority())
	return nil
}

// TestRequestStages: a stage on the request path sees every request,
// whichever codec read it (HTTP/1.1, h2c), on both sidecars, may edit it,
// and may answer it itself: then the request goes no further, and the
// answer names the stage.
func TestRequestStages(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, seen := startL7App(t)
	p := startPair(t, app, cm, sm, pairOptions{
		clientOpts: []Option{withStage(Outbound, teapot{Outbound, "/out"})},
		serverOpts: []Option{withStage(Inbound, teapot{Inbound, "/in"})},
	})
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"http1", h1Client(t)}, {"h2c", h2cClient(t)}} {
		t.Run(c.name, func(t *testing.T) {
			for _, dir := range []string{"out", "in"} {
				before := len(seen())
				resp, body := get(t, c.client, "http://"+p.client.out()+"/"+dir, nil)
				why := "teapot: short and stout " + dir + "bound"
				if resp.StatusCode != http.StatusTeapot || resp.Header.Get(hdrError) != why || !strings.Contains(body, why) {
					t.Errorf("/%s answered %d %q %q, want 418 %q", dir, resp.StatusCode, resp.Header.Get(hdrError), body, why)
				}
				if n := len(seen()) - before; n != 0 {
					t.Errorf("/%s: the app saw %d requests, want 0", dir, n)
				}
			}
			if resp, _ := get(t, c.client, "http://"+p.client.out()+"/", nil); resp.StatusCode != 200 {
				t.Fatalf("passed on: %d", resp.StatusCode)
			}
			r := seen()[len(seen())-1]
			for _, h := range []string{"X-Stage-outbound", "X-Stage-inbound"} {
				if got := r.header.Get(h); got != "GET "+p.client.out() {
					t.Errorf("%s at the app: %q", h, got)
				}
			}
		})
	}
	for _, side := range []struct {
		r   *running
		dir string
		n   float64
	}{{p.client, "outbound", 4}, {p.server, "inbound", 2}} {
		if n := side.r.counter(t, "meshgate_http_requests_total", map[string]string{"direction": side.dir, "response_class": "4xx"}); n != side.n {
			t.Errorf("%s: %v 4xx counted, want %v", side.dir, n, side.n)
		}
	}
}

// TestAccessLogOff: with accessLog off (the default), a request that
// went through is counted but not logged; one the proxy answered itself
// is logged at warn all the same.
func TestAccessLogOff(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, _ := startL7App(t)
	off := func(c *Config) { c.AccessLog = false }
	p := startPair(t, app, cm, sm, pairOptions{clientCfg: off, serverCfg: off,
		clientOpts: []Option{withStage(Outbound, teapot{Outbound, "/out"})}})
	client := h1Client(t)
	if resp, _ := get(t, client, "http://"+p.client.out()+"/", nil); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if resp, _ := get(t, client, "http://"+p.client.out()+"/out", nil); resp.StatusCode != http.StatusTeapot {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if n := p.client.counter(t, "meshgate_http_requests_total", map[string]string{"direction": "outbound"}); n != 2 {
		t.Errorf("%v requests counted, want 2", n)
	}
	lines := p.client.logs.FilterMessage("request").All()
	if len(lines) != 1 || lines[0].Level.String() != "warn" || field(lines[0], "reason") != "teapot: short and stout outbound" {
		t.Errorf("access log lines %v, want the teapot's answer alone, at warn", lines)
	}
	if n := len(p.server.logs.FilterMessage("request").All()); n != 0 {
		t.Errorf("the server sidecar logged %d requests, want none", n)
	}
}

// TestH1MeshTimeoutNoted: the codec notes an X-Meshgate-Timeout field in
// any case as it parses a head (the engine strips or reads the field only
// then), and the next head on the connection starts without the note.
func TestH1MeshTimeoutNoted(t *testing.T) {
	r := h1Reader{src: strings.NewReader("GET / HTTP/1.1\r\nHost: x\r\nx-MESHGATE-timeout: 5ms\r\n\r\n" +
		"GET / HTTP/1.1\r\nHost: x\r\nX-Meshgate-Timeouts: 5ms\r\n\r\n")}
	var m h1Msg
	if err := r.readHead(&m, false); err != nil {
		t.Fatal(err)
	}
	if !m.meshTimeout || string(m.get(hdrTimeoutLower)) != "5ms" {
		t.Errorf("first head: meshTimeout %v, value %q; want it noted", m.meshTimeout, m.get(hdrTimeoutLower))
	}
	m = m.keep()
	if err := r.readHead(&m, false); err != nil {
		t.Fatal(err)
	}
	if m.meshTimeout {
		t.Error("second head, with no such field: meshTimeout still set")
	}
}

// TestH1EarlyAnswer: an app that answers before it has read a request's
// body (a 413 on the headers alone) ends the connection, and the client
// hears it in the answer (Connection: close), through both sidecars,
// instead of finding the connection closed under its next request.
func TestH1EarlyAnswer(t *testing.T) {
	app := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\n\r\ntoo large")
		io.Copy(io.Discard, c) // the rest, until the sidecar closes
	}).addr()
	p := startMeshPair(t, app, pairOptions{})
	c := dial(t, p.client.out())
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// A body longer than a retry keeps (64 KiB): it streams as it comes,
	// and most of it never does.
	io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("x", 1000))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 413 || string(b) != "too large" {
		t.Fatalf("%d %q, want the app's 413", resp.StatusCode, b)
	}
	if !resp.Close {
		t.Error("the early answer does not say Connection: close, though the connection ends with it")
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("the connection carried on after an answer that left the body unread")
	}
}
