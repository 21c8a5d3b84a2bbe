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
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// seenRequest is what the app behind the server sidecar saw of a request.
type seenRequest struct {
	proto  int
	header http.Header
	host   string
}

// startApp starts an HTTP app on loopback serving HTTP/1.1 and h2c. It
// answers /status/N with N, /trailers with a gRPC-like trailer, and
// anything else with the request's protocol; every request is recorded.
func startL7App(t *testing.T) (addr string, seen func() []seenRequest) {
	var mu sync.Mutex
	var reqs []seenRequest
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs = append(reqs, seenRequest{proto: r.ProtoMajor, header: r.Header.Clone(), host: r.Host})
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
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), func() []seenRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]seenRequest(nil), reqs...)
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
				resp, body := get(t, tc.client, url+"/", http.Header{"X-Forwarded-Client-Cert": {"URI=spiffe://forged/evil"}})
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
				if r.header.Get(hdrAppProtocol) != "" {
					t.Errorf("the app saw the sidecars' %s header", hdrAppProtocol)
				}
				if r.host != p.client.out() {
					t.Errorf("Host at the app = %q, want %q", r.host, p.client.out())
				}
			}
		})
	}
	// One HTTP/2 mesh connection carried all six requests (beside the
	// meshgate/tcp one dialed while the first connection was detected).
	if n := p.server.counter(t, "meshgate_tls_handshakes_total", map[string]string{"direction": "inbound", "result": "ok"}); n != 2 {
		t.Errorf("%v inbound handshakes on the server sidecar, want 2 (one meshgate/tcp, one pooled meshgate/h2)", n)
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
// gets a mesh connection of its own (meshgate/http1), reaches the app with
// the client's verified identity (a forged one dropped), and bytes flow
// both ways after the 101.
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
	})
	p := startPair(t, be.addr(), cm, sm, pairOptions{})
	c := dial(t, p.client.out())
	defer c.Close()
	io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: chat\r\nUpgrade: echo\r\nConnection: Upgrade\r\nX-Forwarded-Client-Cert: URI=spiffe://forged\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	if got := <-identity; len(got) != 1 || got[0] != "URI="+clientID {
		t.Errorf("X-Forwarded-Client-Cert at the app = %q, want [URI=%s]", got, clientID)
	}
	for _, msg := range []string{"hello", "through the mesh"} {
		io.WriteString(c, msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
			t.Fatalf("after the upgrade: %q, %v", got, err)
		}
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

// TestL7PoolOutlivesHandshakeTimeout: the pooled mesh connection serves
// requests long after timeouts.handshake, on both sidecars.
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
	if n := p.server.counter(t, "meshgate_tls_handshakes_total", map[string]string{"direction": "inbound", "result": "ok"}); n != 2 {
		t.Errorf("%v inbound handshakes, want 2: the pooled connection was not kept", n)
	}
}
