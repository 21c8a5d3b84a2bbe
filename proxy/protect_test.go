package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/net/http2"
)

func TestLimitsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*LimitsConfig)
		want []string
	}{
		{"defaults", func(*LimitsConfig) {}, nil},
		{"everything off", func(c *LimitsConfig) {
			c.Inbound = DirectionLimits{MaxRequestHeaderBytes: 1024, MaxConcurrentStreams: 1, KeepAliveTimeout: Duration(time.Second)}
		}, nil},
		{"negative", func(c *LimitsConfig) {
			c.Inbound.MaxConnections = -1
			c.Inbound.MaxConnectionsPerSourceIP = -1
			c.Inbound.MaxConnectionsPerIdentity = -1
			c.Inbound.RequestHeaderTimeout = -1
			c.Inbound.MaxRequestBodyBytes = -1
			c.Outbound.MinRequestBodyRate.BytesPerSecond = -1
		}, []string{
			"limits.inbound.maxConnections: must be >= 0 (0: no cap), e.g. 10000",
			"limits.inbound.maxConnectionsPerSourceIP: must be >= 0 (0: no cap), e.g. 1000",
			"limits.inbound.maxConnectionsPerIdentity: must be >= 0 (0: no cap), e.g. 1000",
			"limits.inbound.requestHeaderTimeout: must be >= 0 (0: none), e.g. 10s",
			"limits.inbound.maxRequestBodyBytes: must be >= 0 (0: no limit), e.g. 104857600",
			"limits.outbound.minRequestBodyRate.bytesPerSecond: must be >= 0 (0: no minimum), e.g. 1024",
		}},
		{"rate without a window", func(c *LimitsConfig) {
			c.Inbound.MinRequestBodyRate.Window = 0
			c.Outbound.MinRequestBodyRate = BodyRate{BytesPerSecond: 10, Window: Duration(100 * time.Millisecond)}
		}, []string{
			"limits.inbound.minRequestBodyRate.window: must be > 0 with a rate, e.g. 10s",
			"limits.outbound.minRequestBodyRate.window: 100ms is too short to measure a rate over (TCP alone can pause that long); want 1s or more, e.g. 10s",
		}},
		{"zeros that cannot be", func(c *LimitsConfig) {
			c.Inbound.MaxRequestHeaderBytes = 0
			c.Inbound.MaxConcurrentStreams = 0
			c.Outbound.KeepAliveTimeout = 0
			c.Outbound.MaxConnectionsPerIdentity = 3
		}, []string{
			"limits.inbound.maxRequestHeaderBytes: must be from 1024 to 16777216 (16 MiB), e.g. 65536; it is 0",
			"limits.inbound.maxConcurrentStreams: must be 1 or more, e.g. 250",
			"limits.outbound.keepAliveTimeout: must be > 0, e.g. 5m",
			"limits.outbound.maxConnectionsPerIdentity: outbound connections come from the app, which has no mesh identity of its own to count; " +
				"leave it 0 and cap limits.outbound.maxConnections instead",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.edit(&cfg.Limits)
			var got []string
			if err := cfg.Validate(); err != nil {
				got = strings.Split(err.Error(), "\n")
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("Validate:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestLimitsFromYAML(t *testing.T) {
	_, err := ParseConfig([]byte("limits: {inbound: {maxConnections: many, minRequestBodyRate: {bytesPerSecond: 1, windw: 1s}}}"))
	want := "limits.inbound.maxConnections: \"many\": json: cannot unmarshal string into Go value of type int\n" +
		"limits.inbound.minRequestBodyRate.windw: unknown field; want one of bytesPerSecond, window"
	if err == nil || err.Error() != want {
		t.Errorf("ParseConfig: %v\nwant:\n%s", err, want)
	}
	if d := DefaultConfig().Limits.Inbound.MaxConnections; d < 1 || d > maxAutoConnections {
		t.Errorf("default maxConnections %d, want 1 to %d", d, maxAutoConnections)
	}
}

// startPermissive starts a sidecar in permissive mode (plaintext
// inbound HTTP is served as L7) in front of app, with edit's limits.
func startPermissive(t *testing.T, app string, edit func(*Config)) *running {
	t.Helper()
	_, sm := newMeshCA(t).meshes()
	cfg := testConfig()
	cfg.MTLS.Mode = MTLSPermissive
	edit(&cfg)
	return startProxy(t, cfg, WithMeshTLS(sm), to(app))
}

// protectionEvents is the protection counter of dir and reason.
func (r *running) protectionEvents(t *testing.T, dir Direction, reason string) float64 {
	t.Helper()
	return r.counter(t, "meshgate_protection_events_total", map[string]string{"direction": dir.String(), "reason": reason})
}

// readAnswer reads one HTTP/1 response from c and what follows until c
// closes (or 5 s pass).
func readAnswer(t *testing.T, c net.Conn) (*http.Response, bool) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	io.ReadAll(resp.Body)
	_, err = br.ReadByte()
	return resp, err != nil && !isTimeout(err)
}

// TestLimitRequestHeaderTimeout: a request head begun and not finished
// within requestHeaderTimeout is answered 408 and its connection closed,
// inbound (plaintext, permissive) and outbound; nothing reaches the app.
// A connection that sat idle before sending a whole head is served.
func TestLimitRequestHeaderTimeout(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	app, seen := startL7App(t)
	short := func(c *Config) {
		c.MTLS.Mode = MTLSPermissive
		c.Limits.Inbound.RequestHeaderTimeout = Duration(200 * time.Millisecond)
		c.Limits.Outbound.RequestHeaderTimeout = Duration(200 * time.Millisecond)
	}
	p := startPair(t, app, cm, sm, pairOptions{serverCfg: short, clientCfg: short})
	for _, tc := range []struct {
		name string
		r    *running
		addr string
		dir  Direction
	}{{"inbound", p.server, p.server.in(), Inbound}, {"outbound", p.client, p.client.out(), Outbound}} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(seen())
			c := dial(t, tc.addr)
			defer c.Close()
			io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: a\r\nX-One: 1\r\n")
			resp, closed := readAnswer(t, c)
			if resp.StatusCode != 408 || !strings.HasPrefix(resp.Header.Get(hdrError), "limits: request head not all in within limits."+tc.dir.String()+".requestHeaderTimeout (200ms)") {
				t.Errorf("answer %d %q, want 408 naming the limit", resp.StatusCode, resp.Header.Get(hdrError))
			}
			if !closed {
				t.Error("connection left open after the 408")
			}
			if got := tc.r.protectionEvents(t, tc.dir, "request_header_timeout"); got != 1 {
				t.Errorf("request_header_timeout events = %v, want 1", got)
			}

			// Idle first, then a whole head: keep-alive idle is not a slow head.
			c2 := dial(t, tc.addr)
			defer c2.Close()
			time.Sleep(400 * time.Millisecond)
			io.WriteString(c2, "GET /fine HTTP/1.1\r\nHost: a\r\n\r\n")
			c2.SetReadDeadline(time.Now().Add(10 * time.Second))
			if resp, err := http.ReadResponse(bufio.NewReader(c2), nil); err != nil || resp.StatusCode != 200 {
				t.Errorf("request after an idle wait: %v %v, want 200", resp, err)
			}
			if n := len(seen()) - before; n != 1 {
				t.Errorf("the app saw %d requests, want 1 (the whole one)", n)
			}
		})
	}
}

// TestLimitRequestBodyRate: a body that stalls is cut off after a window
// below minRequestBodyRate: 408, the connection closed, the app never
// gets a whole body; a body at speed passes, however large.
func TestLimitRequestBodyRate(t *testing.T) {
	var whole atomic.Int32
	app := startRawApp(t, func(req *http.Request, body []byte) string {
		if int64(len(body)) == req.ContentLength {
			whole.Add(1)
		}
		return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(fmt.Sprint(len(body))), fmt.Sprint(len(body)))
	})
	srv := startPermissive(t, app, func(c *Config) {
		c.Limits.Inbound.MinRequestBodyRate = BodyRate{BytesPerSecond: 1000, Window: Duration(time.Second)}
	})

	c := dial(t, srv.in())
	defer c.Close()
	io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
	io.WriteString(c, "a few bytes, then nothing")
	resp, closed := readAnswer(t, c)
	if resp.StatusCode != 408 || !strings.Contains(resp.Header.Get(hdrError), "below limits.inbound.minRequestBodyRate (1000 bytes/s)") {
		t.Errorf("answer %d %q, want 408 naming the limit", resp.StatusCode, resp.Header.Get(hdrError))
	}
	if !closed {
		t.Error("connection left open after the 408")
	}
	if got := srv.protectionEvents(t, Inbound, "request_body_rate"); got != 1 {
		t.Errorf("request_body_rate events = %v, want 1", got)
	}

	// 8 MiB at loopback speed, in one stream.
	c2 := dial(t, srv.in())
	defer c2.Close()
	const size = 8 << 20
	go func() {
		io.WriteString(c2, fmt.Sprintf("POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", size))
		c2.Write(bytes.Repeat([]byte("x"), size))
	}()
	c2.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c2), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("large upload: %v %v, want 200", resp, err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != fmt.Sprint(size) {
		t.Errorf("the app read %s bytes, want %d", b, size)
	}
	if whole.Load() != 1 {
		t.Errorf("the app got %d whole bodies, want 1 (the fast one)", whole.Load())
	}
}

// TestLimitRequestSizes: a head over maxRequestHeaderBytes is answered
// 431; a body over maxRequestBodyBytes 413, whether its length is
// declared (nothing reaches the app) or it is chunked, over HTTP/1 and
// HTTP/2 (h2c).
func TestLimitRequestSizes(t *testing.T) {
	// got counts the requests the app saw; whole, those it read a body
	// over the limit of (a chunked request begins before its size is
	// known, and is cut off).
	var got, whole atomic.Int32
	app := startRawApp(t, func(req *http.Request, body []byte) string {
		got.Add(1)
		if len(body) > 1000 {
			whole.Add(1)
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	srv := startPermissive(t, app, func(c *Config) {
		c.Limits.Inbound.MaxRequestHeaderBytes = 2048
		c.Limits.Inbound.MaxRequestBodyBytes = 1000
	})

	for _, tc := range []struct {
		name, raw, reason, hdr string
		status                 int
		begins                 bool // the app sees the request begin
	}{
		{"head", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("b", 3000) + "\r\n\r\n", "request_header_size", "limits: request head larger than limits.inbound.maxRequestHeaderBytes (2048 bytes)", 431, false},
		{"head in pieces", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("b", 5000), "request_header_size", "limits: request head larger than limits.inbound.maxRequestHeaderBytes (2048 bytes)", 431, false},
		{"declared body", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", "request_body_size", "limits: request body larger than limits.inbound.maxRequestBodyBytes (1000 bytes)", 413, false},
		{"chunked body", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n" + strings.Repeat("c", 512) + "\r\n200\r\n" + strings.Repeat("c", 512) + "\r\n0\r\n\r\n", "request_body_size", "limits: request body larger than limits.inbound.maxRequestBodyBytes (1000 bytes)", 413, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := got.Load()
			c := dial(t, srv.in())
			defer c.Close()
			io.WriteString(c, tc.raw)
			resp, closed := readAnswer(t, c)
			if resp.StatusCode != tc.status || resp.Header.Get(hdrError) != tc.hdr {
				t.Errorf("answer %d %q, want %d %q", resp.StatusCode, resp.Header.Get(hdrError), tc.status, tc.hdr)
			}
			if !closed {
				t.Errorf("connection left open after the %d", tc.status)
			}
			if n := got.Load() - before; n != 0 && !tc.begins {
				t.Errorf("the app saw %d requests, want 0", n)
			}
			if n := whole.Load(); n != 0 {
				t.Errorf("the app read %d bodies over the limit, want 0", n)
			}
		})
	}
	if n := srv.protectionEvents(t, Inbound, "request_header_size"); n != 2 {
		t.Errorf("request_header_size events = %v, want 2", n)
	}

	t.Run("h2c", func(t *testing.T) {
		// An app that reads the whole body before it answers.
		reader := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, err := io.ReadAll(r.Body)
			fmt.Fprintln(w, len(b), err)
		}))
		reader.Config.Protocols = new(http.Protocols)
		reader.Config.Protocols.SetUnencryptedHTTP2(true)
		reader.Start()
		defer reader.Close()
		h2app := reader.Listener.Addr().String()
		srv := startPermissive(t, h2app, func(c *Config) { c.Limits.Inbound.MaxRequestBodyBytes = 1000 })
		tr := &http2.Transport{AllowHTTP: true, DialTLS: func(network, addr string, _ *tls.Config) (net.Conn, error) { return net.Dial(network, addr) }}
		defer tr.CloseIdleConnections()
		for _, tc := range []struct {
			name   string
			body   io.Reader
			length int64
		}{
			{"declared", bytes.NewReader(make([]byte, 1001)), 1001},
			{"streamed", io.MultiReader(bytes.NewReader(make([]byte, 600)), bytes.NewReader(make([]byte, 600))), -1},
		} {
			req, _ := http.NewRequest("POST", "http://"+srv.in()+"/", io.NopCloser(tc.body))
			req.ContentLength = tc.length
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			resp.Body.Close()
			if resp.StatusCode != 413 || !strings.HasPrefix(resp.Header.Get(hdrError), "limits: request body") {
				t.Errorf("%s: %d %q, want 413 naming the limit", tc.name, resp.StatusCode, resp.Header.Get(hdrError))
			}
		}
		if n := srv.protectionEvents(t, Inbound, "request_body_size"); n != 2 {
			t.Errorf("request_body_size events = %v, want 2", n)
		}
	})
}

// TestLimitConcurrentStreams: an HTTP/2 client is told maxConcurrentStreams
// in the server's SETTINGS.
func TestLimitConcurrentStreams(t *testing.T) {
	app, _ := startL7App(t)
	srv := startPermissive(t, app, func(c *Config) { c.Limits.Inbound.MaxConcurrentStreams = 7 })
	c := dial(t, srv.in())
	defer c.Close()
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok {
		t.Fatalf("first frame %v, want SETTINGS", f)
	}
	if v, ok := sf.Value(http2.SettingMaxConcurrentStreams); !ok || v != 7 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d (%v), want 7", v, ok)
	}
}

// TestLimitConnections: past maxConnectionsPerSourceIP (inbound) or
// maxConnections (outbound) a new connection is reset at once, counted;
// once one closes, a new one is served.
func TestLimitConnections(t *testing.T) {
	be := startBackend(t, "127.0.0.1:0", echo)
	cfg := testConfig()
	cfg.Limits.Inbound.MaxConnectionsPerSourceIP = 3
	cfg.Limits.Outbound.MaxConnections = 2
	srv := startProxy(t, cfg, to(be.addr()))
	for _, tc := range []struct {
		dir    Direction
		addr   string
		n      int
		reason string
	}{{Inbound, srv.in(), 3, "max_connections_per_source_ip"}, {Outbound, srv.out(), 2, "max_connections"}} {
		t.Run(tc.dir.String(), func(t *testing.T) {
			var held []*net.TCPConn
			for i := range tc.n {
				c := dial(t, tc.addr)
				defer c.Close()
				if got := roundTrip(t, c, fmt.Sprint("hello ", i)); got != fmt.Sprint("hello ", i) {
					t.Fatalf("connection %d: %q", i, got)
				}
				held = append(held, c)
			}
			// Reset at accept: the dial itself may see it, or the first read.
			if over, err := net.DialTimeout("tcp", tc.addr, 5*time.Second); err == nil {
				over.SetReadDeadline(time.Now().Add(10 * time.Second))
				over.Write([]byte("x"))
				if _, err := over.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) && err != io.EOF {
					t.Errorf("connection over the cap: read %v, want a reset", err)
				}
				over.Close()
			} else if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("connection over the cap: dial %v, want a reset", err)
			}
			if got := srv.protectionEvents(t, tc.dir, tc.reason); got != 1 {
				t.Errorf("%s events = %v, want 1", tc.reason, got)
			}
			held[0].Close()
			// Counted out when its handler is done: a new one gets in then.
			waitFor(t, func() bool {
				c, err := net.DialTimeout("tcp", tc.addr, 2*time.Second)
				if err != nil {
					return false // reset at accept: still over the cap
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				c.Write([]byte("again"))
				b := make([]byte, 5)
				_, err = io.ReadFull(c, b)
				return err == nil && string(b) == "again"
			})
		})
	}
}

// TestLimitConnectionsPerSourceIPMesh: the per-address cap counts a mesh
// connection only until its peer authenticates: a client sidecar holds
// one mesh connection per opaque connection of its app, so an app's pool
// of connections bigger than the cap must all be served.
func TestLimitConnectionsPerSourceIPMesh(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", echo)
	p := startPair(t, be.addr(), cm, sm, pairOptions{serverCfg: func(c *Config) { c.Limits.Inbound.MaxConnectionsPerSourceIP = 2 }})
	for i := range 6 {
		c := dial(t, p.client.out())
		defer c.Close()
		if got := roundTrip(t, c, fmt.Sprint("hello ", i)); got != fmt.Sprint("hello ", i) {
			t.Fatalf("mesh connection %d of one address, over a cap of 2: %q", i, got)
		}
	}
	if got := p.server.protectionEvents(t, Inbound, "max_connections_per_source_ip"); got != 0 {
		t.Errorf("max_connections_per_source_ip events = %v, want 0", got)
	}
	// Connections that never authenticate still meet the cap.
	for range 2 {
		c := dial(t, p.server.in())
		defer c.Close()
	}
	waitFor(t, func() bool { return p.server.protectionEvents(t, Inbound, "max_connections_per_source_ip") == 0 })
	over, err := net.DialTimeout("tcp", p.server.in(), 5*time.Second)
	if err == nil {
		over.SetReadDeadline(time.Now().Add(10 * time.Second))
		over.Read(make([]byte, 1))
		over.Close()
	}
	waitFor(t, func() bool { return p.server.protectionEvents(t, Inbound, "max_connections_per_source_ip") == 1 })
}

// TestLimitConnectionsPerIdentity: a mesh peer holding
// maxConnectionsPerIdentity connections has its next one closed after
// the handshake, and counted.
func TestLimitConnectionsPerIdentity(t *testing.T) {
	mca := newMeshCA(t)
	cm, sm := mca.meshes()
	be := startBackend(t, "127.0.0.1:0", echo)
	p := startPair(t, be.addr(), cm, sm, pairOptions{serverCfg: func(c *Config) { c.Limits.Inbound.MaxConnectionsPerIdentity = 2 }})
	var held []*net.TCPConn
	for i := range 2 {
		c := dial(t, p.client.out())
		defer c.Close()
		if got := roundTrip(t, c, fmt.Sprint("hello ", i)); got != fmt.Sprint("hello ", i) {
			t.Fatalf("connection %d: %q", i, got)
		}
		held = append(held, c)
	}
	over := dial(t, p.client.out())
	defer over.Close()
	over.SetReadDeadline(time.Now().Add(10 * time.Second))
	over.Write([]byte("x"))
	if n, err := over.Read(make([]byte, 1)); err == nil {
		t.Errorf("third connection of the identity: read %d bytes, want it closed", n)
	}
	// (The client sidecar may try its connection again: at least one.)
	if got := p.server.protectionEvents(t, Inbound, "max_connections_per_identity"); got < 1 {
		t.Errorf("max_connections_per_identity events = %v, want 1 or more", got)
	}
	held[1].Close()
	waitFor(t, func() bool {
		c, err := net.DialTimeout("tcp", p.client.out(), 2*time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write([]byte("again"))
		b := make([]byte, 5)
		_, err = io.ReadFull(c, b)
		return err == nil && string(b) == "again"
	})
}

// TestProtectionLogIsRateLimited: a burst of events is counted whole and
// logged once; the next line says how many went unlogged.
func TestProtectionLogIsRateLimited(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	events := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "e"}, []string{"direction", "reason"})
	pr := newProtection(DefaultConfig().Limits, events, zap.New(core))
	src := netip.MustParseAddrPort("192.0.2.1:1234")
	for range 1000 {
		pr.event(Inbound, limitConnectionsPerIP, src, "cap %d", 1)
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d log lines for 1000 events, want 1", n)
	}
	e := logs.All()[0]
	if e.Level != zapcore.WarnLevel || field(e, "reason") != "max_connections_per_source_ip" || field(e, "limit") != "cap 1" || field(e, "src") != "192.0.2.1:1234" {
		t.Errorf("log line %s %v", e.Message, e.ContextMap())
	}
	pr.dir[Inbound].logs[limitConnectionsPerIP].next.Store(0) // as if a second had passed
	pr.event(Inbound, limitConnectionsPerIP, src, "cap %d", 1)
	if e := logs.All()[1]; field(e, "suppressed") != "999" {
		t.Errorf("second line: suppressed %q, want 999", field(e, "suppressed"))
	}
	var m dto.Metric
	events.WithLabelValues("inbound", "max_connections_per_source_ip").Write(&m)
	if n := m.GetCounter().GetValue(); n != 1001 {
		t.Errorf("counted %v, want 1001", n)
	}
}

// BenchmarkProtectAdmit is the cost per connection of the default caps
// (total and per source IP): admit at accept and leave at close.
func BenchmarkProtectAdmit(b *testing.B) {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "e"}, []string{"direction", "reason"})
	pr := newProtection(DefaultConfig().Limits, events, zap.NewNop())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var i uint32
		for pb.Next() {
			i++
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 4000)
			if !pr.admit(Inbound, src) {
				b.Fatal("refused")
			}
			pr.leave(Inbound, nil, src)
		}
	})
}
