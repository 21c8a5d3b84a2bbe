package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// detectConfig is testConfig with a long detection timeout, so that a
// stall on it cannot pass for a quick answer.
func detectConfig(timeout time.Duration) Config {
	c := testConfig()
	c.Protocols.DetectTimeout = Duration(timeout)
	return c
}

// TestDetectClientFirst: what the app sends first is classified (HTTP/1,
// HTTP/2 prior knowledge, its own TLS with SNI and ALPN, opaque bytes),
// counted and logged, and reaches the server byte for byte.
func TestDetectClientFirst(t *testing.T) {
	be := startBackend(t, "127.0.0.1:0", echo)
	hello := clientHello(t, &tls.Config{ServerName: "api.example.com", NextProtos: []string{"h2", "http/1.1"}})
	for _, tc := range []struct {
		name, first, protocol string
		fields                map[string]string
	}{
		{"http1", "GET /x HTTP/1.1\r\nHost: web\r\n\r\n", "http1", map[string]string{"http_method": "GET", "http_version": "HTTP/1.1"}},
		{"http2", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http2", nil},
		{"tls", string(hello), "tls", map[string]string{"sni": "api.example.com", "alpn": "[h2 http/1.1]"}},
		{"opaque", "*1\r\n$4\r\nPING\r\n", "opaque", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startProxy(t, detectConfig(5*time.Second), to(be.addr()))
			c := dial(t, r.out())
			if got := roundTrip(t, c, tc.first); got != tc.first {
				t.Errorf("echo = %q, want %q", got, tc.first)
			}
			c.Close()
			e := r.closedLogs(t, 1)[0].ContextMap()
			want := map[string]string{"protocol": tc.protocol, "detected_by": "client"}
			for k, v := range tc.fields {
				want[k] = v
			}
			checkFields(t, "log", e, want)
			if n := r.counter(t, "meshgate_protocol_detections_total", map[string]string{"direction": "outbound", "protocol": tc.protocol, "by": "client"}); n != 1 {
				t.Errorf("detections{protocol=%s,by=client} = %v, want 1", tc.protocol, n)
			}
			if tc.protocol == "tls" {
				if n := r.counter(t, "meshgate_app_tls_connections_total", map[string]string{"sni": "api.example.com"}); n != 1 {
					t.Errorf("app TLS connections with SNI api.example.com = %v, want 1", n)
				}
			}
		})
	}
}

// clientHello returns the first flight of a crypto/tls client.
func clientHello(t *testing.T, cfg *tls.Config) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		tls.Client(a, cfg).Handshake()
		a.Close()
	}()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16<<10)
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	return buf[:n]
}

// TestDetectServerFirst: a server that speaks first on a port nobody
// declared greets a silent client with no wait for the detection timeout
// (the destination is dialed while the client's bytes are awaited), and
// the destination is remembered: its next connection skips detection.
func TestDetectServerFirst(t *testing.T) {
	be := startBackend(t, "127.0.0.1:0", greeter)
	const timeout = 5 * time.Second
	r := startProxy(t, detectConfig(timeout), to(be.addr()))
	for i, by := range []string{"server_first", "remembered"} {
		start := time.Now()
		c := dial(t, r.out())
		greeting := make([]byte, len("220 ready\r\n"))
		c.SetReadDeadline(time.Now().Add(2 * timeout))
		if _, err := io.ReadFull(c, greeting); err != nil || string(greeting) != "220 ready\r\n" {
			t.Fatalf("connection %d: greeting %q, %v", i, greeting, err)
		}
		// A stall would be the whole detection timeout; this is a fifth.
		if d := time.Since(start); d > timeout/5 {
			t.Errorf("connection %d: greeted after %v, a detection stall (timeout %v)", i, d, timeout)
		}
		if got := roundTrip(t, c, "EHLO x"); got != "EHLO x" {
			t.Errorf("connection %d: echo = %q", i, got)
		}
		c.Close()
		e := r.closedLogs(t, i+1)[i].ContextMap()
		checkFields(t, "log", e, map[string]string{"protocol": "opaque", "detected_by": by})
	}
}

// TestDetectDeclaredOpaque: a port declared opaque is not detected at
// all; a default opaque port (MySQL's) is declared so out of the box.
func TestDetectDeclaredOpaque(t *testing.T) {
	be := startBackend(t, "127.0.0.1:0", echo)
	port, _ := strconv.Atoi(be.addr()[len("127.0.0.1:"):])
	cfg := detectConfig(5 * time.Second)
	cfg.Protocols.Ports = map[uint16]PortProtocol{uint16(port): PortOpaque}
	r := startProxy(t, cfg, to(be.addr()))
	c := dial(t, r.out())
	if got := roundTrip(t, c, "GET / HTTP/1.1\r\n\r\n"); got != "GET / HTTP/1.1\r\n\r\n" {
		t.Errorf("echo = %q", got)
	}
	c.Close()
	checkFields(t, "log", r.closedLogs(t, 1)[0].ContextMap(), map[string]string{"protocol": "opaque", "detected_by": "declared"})
	if DefaultConfig().Protocols.Ports[3306] != PortOpaque {
		t.Error("3306 (MySQL, server-first) is not opaque by default")
	}
}

// TestDetectNoStallOnUnsettledBytes: a client that sends a few bytes
// that settle nothing ("HELLO", a prefix of an HTTP method) and waits
// for the answer gets it at once, from a server that answers on read or
// one that says nothing, with no wait for the detection timeout.
func TestDetectNoStallOnUnsettledBytes(t *testing.T) {
	be := startBackend(t, "127.0.0.1:0", echo)
	const timeout = 5 * time.Second
	r := startProxy(t, detectConfig(timeout), to(be.addr()))
	start := time.Now()
	c := dial(t, r.out())
	if got := roundTrip(t, c, "HELLO"); got != "HELLO" {
		t.Errorf("echo = %q", got)
	}
	if d := time.Since(start); d > timeout/5 {
		t.Errorf("answered after %v, a detection stall (timeout %v)", d, timeout)
	}
	c.Close()
	checkFields(t, "log", r.closedLogs(t, 1)[0].ContextMap(), map[string]string{"protocol": "opaque", "detected_by": "incomplete"})
}

// TestDetectSilentConnection: when neither side speaks, the connection
// is taken for opaque after the detection timeout and still works.
func TestDetectSilentConnection(t *testing.T) {
	be := startBackend(t, "127.0.0.1:0", echo)
	r := startProxy(t, detectConfig(100*time.Millisecond), to(be.addr()))
	c := dial(t, r.out())
	time.Sleep(300 * time.Millisecond)
	if got := roundTrip(t, c, "late"); got != "late" {
		t.Errorf("echo = %q", got)
	}
	c.Close()
	checkFields(t, "log", r.closedLogs(t, 1)[0].ContextMap(), map[string]string{"protocol": "opaque", "detected_by": "timeout"})
}

// TestDetectThroughTheMesh: through a pair of sidecars with mTLS, a
// server-first app on an undeclared port greets the client with no
// detection stall, and an HTTP request is detected as HTTP/1 on the
// client side.
func TestDetectThroughTheMesh(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	greet := startBackend(t, "127.0.0.1:0", greeter)
	const timeout = 5 * time.Second
	p := startPair(t, greet.addr(), cm, sm, pairOptions{clientCfg: func(c *Config) { c.Protocols.DetectTimeout = Duration(timeout) }})
	start := time.Now()
	c := dial(t, p.client.out())
	greeting := make([]byte, len("220 ready\r\n"))
	c.SetReadDeadline(time.Now().Add(2 * timeout))
	if _, err := io.ReadFull(c, greeting); err != nil || string(greeting) != "220 ready\r\n" {
		t.Fatalf("greeting %q, %v", greeting, err)
	}
	if d := time.Since(start); d > timeout/5 {
		t.Errorf("greeted after %v through the mesh, a detection stall (timeout %v)", d, timeout)
	}
	c.Close()
	checkFields(t, "client sidecar", p.client.closedLogs(t, 1)[0].ContextMap(),
		map[string]string{"protocol": "opaque", "detected_by": "server_first", "mtls": "true", "peer_identity": serverID})

	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	defer web.Close()
	p2 := startPair(t, web.Listener.Addr().String(), cm, sm, pairOptions{})
	code, body := httpGet(t, http.MethodGet, "http://"+p2.client.out()+"/")
	if code != 200 || body != "ok" {
		t.Errorf("GET through the mesh: %d %q", code, body)
	}
	checkFields(t, "client sidecar", p2.client.closedLogs(t, 1)[0].ContextMap(),
		map[string]string{"protocol": "http1", "detected_by": "client", "http_method": "GET", "mtls": "true"})
}

// TestServerFirstMemory: destinations are forgotten after the TTL, and
// the memory stays bounded.
func TestServerFirstMemory(t *testing.T) {
	m := newDestMemory(time.Minute)
	now := time.Now()
	a := netip.MustParseAddrPort("10.0.0.1:25")
	m.remember(a, now)
	if !m.has(a, now.Add(59*time.Second)) || m.has(a, now.Add(61*time.Second)) {
		t.Error("not remembered for exactly the TTL")
	}
	for i := range serverFirstMax + 10 {
		m.remember(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 25), now.Add(time.Duration(i)*time.Millisecond))
	}
	if len(m.m) > serverFirstMax {
		t.Errorf("%d destinations remembered, want at most %d", len(m.m), serverFirstMax)
	}
	off := newDestMemory(0)
	off.remember(a, now)
	if off.has(a, now) {
		t.Error("destMemory 0 remembered a destination")
	}
}
