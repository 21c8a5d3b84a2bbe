package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
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

// TestDetectHTTP2ServerGreeting: a gRPC server (grpc-go) sends its
// SETTINGS as soon as it accepts a connection, and its client may say
// nothing for a while after connecting; the greeting reaching a sidecar
// first is no server-first protocol. The call is served as HTTP/2 by L7
// (policy, limits, resilience and metrics per request) on every path the
// greeting can race the client's preface: through the mesh, where the
// server sidecar holds the greeting; outbound, when the greeting crosses
// the mesh (its app's port declared opaque on the server side); the
// server sidecar's detection of meshgate/tcp (a client sidecar with L7
// off); and a plaintext client in permissive mode. The destination is not
// remembered as server-first: the next connection is HTTP/2 too.
func TestDetectHTTP2ServerGreeting(t *testing.T) {
	for _, tc := range []struct {
		name string
		po   func(app string) pairOptions
		// target is where the app connects; detects says which sidecar
		// detects the app's HTTP/2 (its direction).
		target  func(*pair) string
		detects func(*pair) (*running, Direction)
	}{
		{"mesh", func(string) pairOptions { return pairOptions{} },
			func(p *pair) string { return p.client.out() },
			func(p *pair) (*running, Direction) { return p.client, Outbound }},
		{"greeting across the mesh", func(app string) pairOptions {
			return pairOptions{serverCfg: func(c *Config) {
				c.Protocols.Ports = map[uint16]PortProtocol{netip.MustParseAddrPort(app).Port(): PortOpaque}
			}}
		},
			func(p *pair) string { return p.client.out() },
			func(p *pair) (*running, Direction) { return p.client, Outbound }},
		{"meshgate/tcp", func(string) pairOptions {
			return pairOptions{clientCfg: func(c *Config) { c.Protocols.L7 = false }}
		},
			func(p *pair) string { return p.client.out() },
			func(p *pair) (*running, Direction) { return p.server, Inbound }},
		{"permissive plaintext", func(string) pairOptions {
			return pairOptions{serverCfg: func(c *Config) { c.MTLS.Mode = MTLSPermissive }}
		},
			func(p *pair) string { return p.server.in() },
			func(p *pair) (*running, Direction) { return p.server, Inbound }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app, greeted := greetingGRPCServer(t)
			p := startMeshPair(t, app, tc.po(app))
			r, dir := tc.detects(p)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for i, hc := range []healthpb.HealthClient{
				lateGRPCClient(t, tc.target(p), greeted),
				grpcHealthClient(t, tc.target(p)),
			} {
				if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
					t.Fatalf("connection %d: Check: %v", i, err)
				}
				if n := r.counter(t, "meshgate_protocol_detections_total", map[string]string{"direction": dir.String(), "protocol": "http2"}); n != float64(i+1) {
					t.Errorf("connection %d: %s HTTP/2 detections = %v, want %d", i, dir, n, i+1)
				}
				calls := 0
				for _, e := range r.logs.FilterMessage("request").FilterField(zap.String("direction", dir.String())).All() {
					if field(e, "path") == "/grpc.health.v1.Health/Check" && field(e, "protocol") == "HTTP/2.0" {
						calls++
					}
				}
				if calls != i+1 {
					t.Errorf("connection %d: %d %s HTTP/2 calls logged, want %d", i, calls, dir, i+1)
				}
			}
			for _, by := range []string{byServerFirst, byRemembered} {
				if n := p.client.counter(t, "meshgate_protocol_detections_total", map[string]string{"by": by}); n != 0 {
					t.Errorf("client sidecar: %v detections by %s, want none", n, by)
				}
				if n := p.server.counter(t, "meshgate_protocol_detections_total", map[string]string{"by": by}); n != 0 {
					t.Errorf("server sidecar: %v detections by %s, want none", n, by)
				}
			}
		})
	}
}

// TestDetectHTTP2GreetingSilentClient: an HTTP/2 server's SETTINGS does
// not end the wait for the client's first bytes, nor is it lost: a client
// silent for the whole detection timeout gets it then, its connection
// taken for opaque by timeout, and the destination is not remembered as
// server-first (its next connection is detected again).
func TestDetectHTTP2GreetingSilentClient(t *testing.T) {
	// grpc-go's: SETTINGS_MAX_FRAME_SIZE 16384.
	const settings = "\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x05\x00\x00\x40\x00"
	be := startBackend(t, "127.0.0.1:0", func(c *net.TCPConn) {
		io.WriteString(c, settings)
		echo(c)
	})
	r := startProxy(t, detectConfig(100*time.Millisecond), to(be.addr()))
	for i := range 2 {
		c := dial(t, r.out())
		got := make([]byte, len(settings))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != settings {
			t.Fatalf("connection %d: greeting % x, %v; want % x", i, got, err, settings)
		}
		if got := roundTrip(t, c, "late"); got != "late" {
			t.Errorf("connection %d: echo = %q", i, got)
		}
		c.Close()
		checkFields(t, "log", r.closedLogs(t, i+1)[i].ContextMap(), map[string]string{"protocol": "opaque", "detected_by": "timeout"})
	}
}

// greetingGRPCServer is grpcHealthServer whose connections tell greeted
// when the server has written its first bytes (its SETTINGS, sent as
// soon as it accepts).
func greetingGRPCServer(t *testing.T) (addr string, greeted chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	greeted = make(chan struct{}, 16)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(&greetListener{Listener: ln, greeted: greeted})
	t.Cleanup(gs.Stop)
	return ln.Addr().String(), greeted
}

// greetListener's connections send on greeted after their first write.
type greetListener struct {
	net.Listener
	greeted chan struct{}
}

func (l *greetListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &greetConn{Conn: c, greeted: l.greeted}, nil
}

type greetConn struct {
	net.Conn
	once    sync.Once
	greeted chan struct{}
}

func (c *greetConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.once.Do(func() {
		select {
		case c.greeted <- struct{}{}:
		default:
		}
	})
	return n, err
}

// lateGRPCClient is a gRPC health client of target whose connection says
// nothing (no HTTP/2 preface) until the app behind the sidecars has
// greeted the connection they made for it, and then for long enough for
// the greeting to cross them: a client slower than its server.
func lateGRPCClient(t *testing.T, target string, greeted chan struct{}) healthpb.HealthClient {
	t.Helper()
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		for len(greeted) > 0 {
			<-greeted
		}
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		select {
		case <-greeted:
		case <-ctx.Done():
			c.Close()
			return nil, ctx.Err()
		}
		time.Sleep(150 * time.Millisecond)
		return c, nil
	}
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dial))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return healthpb.NewHealthClient(cc)
}
