package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"meshgate/proxy/sniff"
)

// seenRequest is what the app behind the server sidecar saw of a request.
type seenRequest struct {
	proto  int
	header http.Header
	host   string
	uri    string // the request target
}

// startApp starts an HTTP app on loopback serving HTTP/1.1 and h2c. It
// answers /status/N with N, /trailers with a gRPC-like trailer, and
// anything else with the request's protocol; every request is recorded.
func startL7App(t *testing.T) (addr string, seen func() []seenRequest) {
	var mu sync.Mutex
	var reqs []seenRequest
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs = append(reqs, seenRequest{proto: r.ProtoMajor, header: r.Header.Clone(), host: r.Host, uri: r.RequestURI})
		mu.Unlock()
		switch {
		case strings.HasPrefix(r.URL.Path, "/status/"):
			var code int
			fmt.Sscan(strings.TrimPrefix(r.URL.Path, "/status/"), &code)
			w.WriteHeader(code)
		case r.URL.Path == "/trailers":
			w.Header().Set("Trailer", "Grpc-Status")
			io.WriteString(w, "body")
			w.Header().Set("Grpc-Status", "0")
		default:
			io.WriteString(w, r.Proto)
		}
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Listener = lenientListener{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), func() []seenRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]seenRequest(nil), reqs...)
	}
}

// lenientListener's connections skip the empty lines a client sends
// before its first request, as many servers do (RFC 9112 §2.2: nginx,
// Node.js, Tomcat), though net/http does not.
type lenientListener struct{ net.Listener }

func (l lenientListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &lenientConn{Conn: c}, nil
}

type lenientConn struct {
	net.Conn
	started bool
}

func (c *lenientConn) Read(b []byte) (int, error) {
	for {
		n, err := c.Conn.Read(b)
		if c.started || n == 0 {
			return n, err
		}
		i := 0
		for i < n && (b[i] == '\r' || b[i] == '\n') {
			i++
		}
		if i < n {
			c.started = true
			return copy(b, b[i:n]), err
		}
		if err != nil {
			return 0, err
		}
	}
}

// h1Client and h2cClient are app clients: HTTP/1.1 with keep-alive, and
// HTTP/2 with prior knowledge.
func h1Client(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func h2cClient(t *testing.T) *http.Client {
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// clients are the app's two ways to speak HTTP: the HTTP/1 engine and
// the HTTP/2 path serve them.
var clients = []struct {
	name string
	new  func(*testing.T) *http.Client
}{{"http1", h1Client}, {"h2c", h2cClient}}

func get(t *testing.T, c *http.Client, url string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestL7BetweenSidecars: HTTP/1.1 and h2c requests from the app cross
// the sidecars as requests over one pooled HTTP/2 mesh connection and
// reach the app in the protocol the client used, with request IDs
// generated, the client's verified identity in X-Forwarded-Client-Cert
// (a forged one removed), and each request counted and logged on both
// sides.
func TestL7BetweenSidecars(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, seen := startL7App(t)
	p := startPair(t, app, cm, sm, pairOptions{})
	url := "http://" + p.client.out()

	for _, tc := range []struct {
		name   string
		client *http.Client
		proto  int
	}{{"http1", h1Client(t), 1}, {"h2c", h2cClient(t), 2}} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(seen())
			for i := range 3 {
				resp, body := get(t, tc.client, url+"/", http.Header{"X-Forwarded-Client-Cert": {"URI=spiffe://forged/evil"}, "X-Forwarded-For": {"192.0.2.9"}})
				if resp.StatusCode != 200 || body != fmt.Sprintf("HTTP/%d.%d", tc.proto, map[int]int{1: 1, 2: 0}[tc.proto]) {
					t.Errorf("request %d: %d %q", i, resp.StatusCode, body)
				}
			}
			reqs := seen()[before:]
			if len(reqs) != 3 {
				t.Fatalf("the app saw %d requests, want 3", len(reqs))
			}
			for _, r := range reqs {
				if r.proto != tc.proto {
					t.Errorf("the app saw HTTP/%d, want HTTP/%d (the client's)", r.proto, tc.proto)
				}
				if got := r.header.Values("X-Forwarded-Client-Cert"); len(got) != 1 || got[0] != "URI="+clientID {
					t.Errorf("X-Forwarded-Client-Cert at the app = %q, want [URI=%s]", got, clientID)
				}
				if r.header.Get("X-Request-Id") == "" || r.header.Get("Traceparent") == "" || r.header.Get("X-Correlation-Id") == "" {
					t.Errorf("request IDs not generated: %v", r.header)
				}
				if got := r.header.Get("X-Forwarded-For"); got != "192.0.2.9" {
					t.Errorf("X-Forwarded-For at the app = %q, want the client's own 192.0.2.9", got)
				}
				if r.header.Get(hdrAppProtocol) != "" {
					t.Errorf("the app saw the sidecars' %s header", hdrAppProtocol)
				}
				if r.host != p.client.out() {
					t.Errorf("Host at the app = %q, want %q", r.host, p.client.out())
				}
			}
		})
	}
	// Two mesh connections carried all six requests: the meshgate/tcp
	// one dialed while the first connection was detected, which then
	// carried the HTTP/1 requests from the pool, and one pooled
	// meshgate/h2 for the HTTP/2 ones.
	if n := p.server.counter(t, "meshgate_tls_handshakes_total", map[string]string{"direction": "inbound", "result": "ok"}); n != 2 {
		t.Errorf("%v inbound handshakes on the server sidecar, want 2 (one meshgate/tcp, reused by the HTTP/1 pool, and one pooled meshgate/h2)", n)
	}
	for _, side := range []struct {
		r   *running
		dir string
	}{{p.client, "outbound"}, {p.server, "inbound"}} {
		if n := side.r.counter(t, "meshgate_http_requests_total", map[string]string{"direction": side.dir, "method": "GET", "response_class": "2xx"}); n != 6 {
			t.Errorf("%s: %v requests counted, want 6", side.dir, n)
		}
		if n := len(side.r.logs.FilterMessage("request").All()); n != 6 {
			t.Errorf("%s: %d access log lines, want 6", side.dir, n)
		}
	}
	if n := p.server.counter(t, "meshgate_http_requests_total", map[string]string{"direction": "inbound", "peer_identity": clientID}); n != 6 {
		t.Errorf("server side: %v requests from %s, want 6", n, clientID)
	}
	if n := p.client.counter(t, "meshgate_http_requests_total", map[string]string{"direction": "outbound", "peer_identity": serverID}); n != 6 {
		t.Errorf("client side: %v requests to %s, want 6", n, serverID)
	}
	// A request ID the app sent is kept.
	get(t, h1Client(t), url+"/", http.Header{"X-Request-Id": {"abc-123"}})
	if r := seen()[len(seen())-1]; r.header.Get("X-Request-Id") != "abc-123" || r.header.Get("X-Correlation-Id") != "abc-123" {
		t.Errorf("request ID abc-123 not propagated: %v", r.header)
	}
}

// TestL7Trailers: a response's trailers (gRPC's status) cross the sidecars
// to an HTTP/2 client.
func TestL7Trailers(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, _ := startL7App(t)
	p := startPair(t, app, cm, sm, pairOptions{})
	resp, body := get(t, h2cClient(t), "http://"+p.client.out()+"/trailers", nil)
	if body != "body" || resp.Trailer.Get("Grpc-Status") != "0" {
		t.Errorf("body %q, trailers %v; want body and Grpc-Status: 0", body, resp.Trailer)
	}
}

// TestL7Errors: the app's own errors pass as they are; when the app
// cannot be reached the server sidecar answers 502 with the reason.
func TestL7Errors(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, _ := startL7App(t)
	p := startPair(t, app, cm, sm, pairOptions{})
	if resp, _ := get(t, h1Client(t), "http://"+p.client.out()+"/status/503", nil); resp.StatusCode != 503 || resp.Header.Get(hdrError) != "" {
		t.Errorf("the app's 503: got %d, %s %q", resp.StatusCode, hdrError, resp.Header.Get(hdrError))
	}

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	gone := ln.Addr().String()
	ln.Close()
	p2 := startPair(t, gone, cm, sm, pairOptions{})
	resp, body := get(t, h1Client(t), "http://"+p2.client.out()+"/", nil)
	if resp.StatusCode != 502 || resp.Header.Get(hdrError) != "upstream connection refused" || !strings.Contains(body, "upstream connection refused") {
		t.Errorf("app down: %d, %s %q, body %q; want 502 upstream connection refused", resp.StatusCode, hdrError, resp.Header.Get(hdrError), body)
	}
	if n := p2.server.counter(t, "meshgate_http_requests_total", map[string]string{"direction": "inbound", "response_class": "5xx"}); n != 1 {
		t.Errorf("server side: %v 5xx counted, want 1", n)
	}
}

// TestL7Upgrade: a request that switches protocols (as WebSocket does)
// reaches the app with the client's verified identity (a forged one
// dropped), and bytes flow both ways after the 101, the first ones sent
// with the request too, until a half-close: from a client sidecar on a
// mesh connection of its own (meshgate/http1) or over meshgate/tcp
// (protocols.l7 off), and from a plaintext client (permissive mode, no
// identity).
func TestL7Upgrade(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	// An app that switches to an echo protocol on Upgrade.
	identity := make(chan []string, 1)
	be := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil || req.Header.Get("Upgrade") != "echo" {
			return
		}
		identity <- req.Header.Values("X-Forwarded-Client-Cert")
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		io.Copy(c, br)
		c.CloseWrite()
	})
	permissive := func(c *Config) { c.MTLS.Mode = MTLSPermissive }
	l7 := startPair(t, be.addr(), cm, sm, pairOptions{serverCfg: permissive})
	tcp := startPair(t, be.addr(), cm, sm, pairOptions{clientCfg: func(c *Config) { c.Protocols.L7 = false }})
	for _, path := range []struct {
		name, addr string
		want       []string
	}{
		{"meshgate/http1", l7.client.out(), []string{"URI=" + clientID}},
		{"meshgate/tcp", tcp.client.out(), []string{"URI=" + clientID}},
		{"plaintext", l7.server.in(), nil},
	} {
		t.Run(path.name, func(t *testing.T) {
			c := dial(t, path.addr)
			defer c.Close()
			// The first bytes of the new protocol come with the request,
			// before the 101: they must not be lost on the way.
			io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: chat\r\nUpgrade: echo\r\nConnection: Upgrade\r\nX-Forwarded-Client-Cert: URI=spiffe://forged\r\n\r\nearly")
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != 101 {
				t.Fatalf("upgrade: %v, %v", resp, err)
			}
			if got := <-identity; !slices.Equal(got, path.want) {
				t.Errorf("X-Forwarded-Client-Cert at the app = %q, want %q", got, path.want)
			}
			for _, msg := range []string{"early", "hello", "through the mesh"} {
				if msg != "early" {
					io.WriteString(c, msg)
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
					t.Fatalf("after the upgrade: %q, %v", got, err)
				}
			}
			// Half-close: the app sees EOF, and closes its side after.
			c.CloseWrite()
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Errorf("after the half-close: %q, %v; want EOF", rest, err)
			}
		})
	}
}

// TestFullDuplex: an app that answers while the request's body is still
// arriving (an echo that streams it back) gets the whole body and its
// client the whole answer, through either sidecar's HTTP/1 serving: the
// client sidecar's of its app's requests (mesh L7), and the server
// sidecar's of plaintext; and the connection serves the next request.
func TestFullDuplex(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		w.WriteHeader(http.StatusOK)
		rc.Flush()
		b := make([]byte, 1)
		for {
			n, err := r.Body.Read(b)
			if n > 0 {
				w.Write(b[:n])
				rc.Flush()
			}
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	p := startPair(t, srv.Listener.Addr().String(), cm, sm, pairOptions{serverCfg: func(c *Config) { c.MTLS.Mode = MTLSPermissive }})
	for _, path := range []struct{ name, addr string }{{"outbound-l7", p.client.out()}, {"inbound-plaintext", p.server.in()}} {
		t.Run(path.name, func(t *testing.T) {
			c := dial(t, path.addr)
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			for i := range 2 {
				const body = "0123456789"
				fmt.Fprintf(c, "POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n%c", len(body), body[0])
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				got := make([]byte, len(body))
				for j := range len(body) {
					if j > 0 {
						time.Sleep(10 * time.Millisecond)
						io.WriteString(c, body[j:j+1])
					}
					if _, err := io.ReadFull(resp.Body, got[j:j+1]); err != nil {
						t.Fatalf("request %d: echo of byte %d: %v", i, j, err)
					}
				}
				if rest, err := io.ReadAll(resp.Body); err != nil || string(got) != body || len(rest) != 0 {
					t.Fatalf("request %d: echo %q%q, %v; want %q", i, got, rest, err, body)
				}
			}
		})
	}
}

// TestL7LargeHeaders: a request header of nearly 1 MiB (the default
// limit, less room for the rest of the request) crosses the sidecars.
func TestL7LargeHeaders(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, seen := startL7App(t)
	p := startPair(t, app, cm, sm, pairOptions{})
	big := strings.Repeat("x", 1<<20-8<<10)
	resp, _ := get(t, h1Client(t), "http://"+p.client.out()+"/", http.Header{"X-Big": {big}})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := seen()[0].header.Get("X-Big"); got != big {
		t.Errorf("the app got a %d-byte X-Big, want %d", len(got), len(big))
	}
}

// TestL7PoolOutlivesHandshakeTimeout: the pooled mesh connection (the one
// detection dialed, which joined the pool) serves requests long after
// timeouts.handshake, on both sidecars.
func TestL7PoolOutlivesHandshakeTimeout(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, _ := startL7App(t)
	short := func(c *Config) { c.Timeouts.Handshake = Duration(200 * time.Millisecond) }
	p := startPair(t, app, cm, sm, pairOptions{clientCfg: short, serverCfg: short})
	client := h1Client(t)
	for i := range 8 {
		if resp, _ := get(t, client, "http://"+p.client.out()+"/", nil); resp.StatusCode != 200 {
			t.Fatalf("request %d, %v after the first: %d %s", i, time.Duration(i)*100*time.Millisecond, resp.StatusCode, resp.Header.Get(hdrError))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := p.server.counter(t, "meshgate_tls_handshakes_total", map[string]string{"direction": "inbound", "result": "ok"}); n != 1 {
		t.Errorf("%v inbound handshakes, want 1: the pooled connection was not kept", n)
	}
}

// TestInboundClientCert: whatever path an HTTP request takes to the app
// (mesh L7 over meshgate/h2, or meshgate/http1 for an upgrade the app
// declines; meshgate/tcp from a client sidecar with protocols.l7 off;
// plaintext in permissive mode) and however the client spells
// X-Forwarded-Client-Cert, the app sees only the sidecar's: the client's
// verified identity, or none for plaintext.
func TestInboundClientCert(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, seen := startL7App(t)
	// Short waits, so that a client can outwait them (see "late" below).
	permissive := func(c *Config) {
		c.MTLS.Mode = MTLSPermissive
		c.Timeouts.Handshake = Duration(time.Second)
		c.Protocols.DetectTimeout = Duration(100 * time.Millisecond)
	}
	client := func(l7 bool) func(*Config) {
		return func(c *Config) {
			c.Protocols.L7 = l7
			c.Protocols.DetectTimeout = Duration(100 * time.Millisecond)
		}
	}
	// The app's port declared http (protocols.ports): whatever a client
	// sends there is served as HTTP.
	declaredHTTP := func(c *Config) {
		permissive(c)
		c.Protocols.Ports = map[uint16]PortProtocol{netip.MustParseAddrPort(app).Port(): PortHTTP}
	}
	l7 := startPair(t, app, cm, sm, pairOptions{serverCfg: permissive, clientCfg: client(true)})
	tcp := startPair(t, app, cm, sm, pairOptions{serverCfg: permissive, clientCfg: client(false)})
	declared := startPair(t, app, cm, sm, pairOptions{serverCfg: declaredHTTP, clientCfg: client(false)})
	const forgedID = "URI=spiffe://cluster.local/ns/shop/sa/forged"
	forged := http.Header{}
	for _, k := range []string{"X-Forwarded-Client-Cert", "x-forwarded-client-cert", "X_Forwarded_Client_Cert"} {
		forged[k] = []string{forgedID}
	}
	check := func(t *testing.T, reqs []seenRequest, n int, want string) {
		t.Helper()
		if len(reqs) != n {
			t.Fatalf("the app saw %d requests, want %d", len(reqs), n)
		}
		for i, r := range reqs {
			for k, vs := range r.header {
				if strings.Contains(strings.Join(vs, ","), "forged") {
					t.Errorf("request %d: the forged identity reached the app as %s: %q", i, k, vs)
				}
			}
			got := r.header.Values(hdrClientCert)
			if want == "" && len(got) != 0 || want != "" && (len(got) != 1 || got[0] != want) {
				t.Errorf("request %d: %s at the app = %q, want %q", i, hdrClientCert, got, want)
			}
		}
	}
	for _, path := range []struct {
		name, addr, want string
		declared         bool
	}{
		{"mesh-l7", l7.client.out(), "URI=" + clientID, false},
		{"meshgate-tcp", tcp.client.out(), "URI=" + clientID, false},
		{"plaintext", l7.server.in(), "", false},
		{"meshgate-tcp-declared-http", declared.client.out(), "URI=" + clientID, true},
		{"plaintext-declared-http", declared.server.in(), "", true},
	} {
		for _, c := range []struct {
			name   string
			client *http.Client
		}{{"http1", h1Client(t)}, {"h2c", h2cClient(t)}} {
			t.Run(path.name+"/"+c.name, func(t *testing.T) {
				before := len(seen())
				for i := range 2 { // two requests on one connection
					if resp, body := get(t, c.client, "http://"+path.addr+"/", forged); resp.StatusCode != 200 || !strings.HasPrefix(body, "HTTP/") {
						t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
					}
				}
				check(t, seen()[before:], 2, path.want)
			})
		}
		t.Run(path.name+"/declined-upgrade", func(t *testing.T) {
			// An upgrade the app declines leaves an HTTP/1.1 connection,
			// whose next request is a request like any other.
			before := len(seen())
			c := dial(t, path.addr)
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			for i, extra := range []string{"Connection: Upgrade\r\nUpgrade: example\r\n", ""} {
				fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: app\r\n%sX-Forwarded-Client-Cert: %s\r\nx_forwarded_client_cert: %[2]s\r\n\r\n", extra, forgedID)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("request %d: %d", i, resp.StatusCode)
				}
			}
			check(t, seen()[before:], 2, path.want)
		})
		// Nor do clients that try to slip past detection: one that waits
		// out every detection timeout before it speaks, one that pauses
		// mid-request-line (to an app that served HTTP just now), one that
		// sends an empty line first (which RFC 9112 §2.2 has a server
		// skip, as the sidecar does), one whose
		// request line is longer than detection reads, and, to a port
		// declared http, one whose method is.
		for _, tc := range []struct {
			name     string
			parts    []string
			pause    time.Duration
			status   int
			declared bool // only to a port declared http
		}{
			// Past timeouts.handshake and every detectTimeout.
			{"late", []string{"", "GET / HTTP/1.1\r\n"}, 1500 * time.Millisecond, 200, false},
			// Past detectQuiet, within timeouts.handshake (the header's
			// read deadline).
			{"paused", []string{"GET / HT", "TP/1.1\r\n"}, 300 * time.Millisecond, 200, false},
			{"empty-line-first", []string{"\r\nGET / HTTP/1.1\r\n"}, 0, 200, false},
			{"long-request-line", []string{"GET /?q=" + strings.Repeat("a", sniff.MaxRequestLineLen) + " HTTP/1.1\r\n"}, 0, 200, false},
			// Longer than sniff.MaxMethodLen: not HTTP to detection, a
			// method to net/http. Undeclared, such bytes pass as they are
			// (a client-first protocol may look like that).
			{"long-method", []string{strings.Repeat("GET", 20) + " / HTTP/1.1\r\n"}, 0, 200, true},
		} {
			if tc.declared && !path.declared {
				continue
			}
			t.Run(path.name+"/"+tc.name, func(t *testing.T) {
				before := len(seen())
				c := dial(t, path.addr)
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				for _, part := range tc.parts[:len(tc.parts)-1] {
					io.WriteString(c, part)
					time.Sleep(tc.pause)
				}
				fmt.Fprintf(c, "%sHost: app\r\nX-Forwarded-Client-Cert: %s\r\nConnection: close\r\n\r\n", tc.parts[len(tc.parts)-1], forgedID)
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != tc.status {
					t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
				}
				check(t, seen()[before:], map[bool]int{true: 1}[tc.status == 200], path.want)
			})
		}
	}
	// The meshgate/tcp and plaintext paths were served as HTTP: 2 http1,
	// 2 h2c, 2 around a declined upgrade, late, paused, empty line first,
	// a long request line, and to a port declared http, a long method.
	for _, side := range []struct {
		name string
		r    *running
		peer string
		want float64
	}{{"meshgate-tcp", tcp.server, clientID, 10}, {"plaintext", l7.server, "", 10},
		{"meshgate-tcp-declared-http", declared.server, clientID, 11}, {"plaintext-declared-http", declared.server, "", 11}} {
		if n := side.r.counter(t, "meshgate_http_requests_total", map[string]string{"direction": "inbound", "peer_identity": side.peer}); n != side.want {
			t.Errorf("%s: server sidecar counted %v inbound requests from %q, want %v", side.name, n, side.peer, side.want)
		}
	}
}

// TestClientIdentityStage: every spelling an app could read as
// X-Forwarded-Client-Cert goes, other headers stay, and the verified
// identity is set when there is one.
func TestClientIdentityStage(t *testing.T) {
	peer := spiffeid.RequireFromString(clientID)
	for _, tc := range []struct {
		name string
		in   http.Header
		peer spiffeid.ID
		want http.Header
	}{
		{"none sent, peer", http.Header{"A": {"1"}}, peer, http.Header{"A": {"1"}, hdrClientCert: {"URI=" + clientID}}},
		{"none sent, plaintext", http.Header{"A": {"1"}}, spiffeid.ID{}, http.Header{"A": {"1"}}},
		{"spellings, peer", http.Header{
			"X-Forwarded-Client-Cert": {"f1", "f2"}, "x-forwarded-client-cert": {"f3"}, "X_Forwarded_Client_Cert": {"f4"},
			"X-FORWARDED_CLIENT-CERT": {"f5"}, "X-Forwarded-Client-Certs": {"kept"}, "X-Forwarded-Client": {"kept"},
		}, peer, http.Header{hdrClientCert: {"URI=" + clientID}, "X-Forwarded-Client-Certs": {"kept"}, "X-Forwarded-Client": {"kept"}}},
		{"spellings, plaintext", http.Header{"X-Forwarded-Client-Cert": {"f1"}, "x_forwarded_client_cert": {"f2"}}, spiffeid.ID{}, http.Header{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Request{Dir: Inbound, Peer: tc.peer, msg: httpFields{&http.Request{Header: tc.in}}}
			if !tc.peer.IsZero() {
				r.clientCert = "URI=" + tc.peer.String()
			}
			if a := (clientIdentity{}).Decide(r); a != nil {
				t.Fatalf("answered %v", a)
			}
			if diff := cmp.Diff(tc.want, tc.in); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
		})
	}
}
