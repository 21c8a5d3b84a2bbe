package appprobe

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// portOf is the port of a test server's address.
func portOf(t *testing.T, a string) int {
	t.Helper()
	ap, err := netip.ParseAddrPort(strings.TrimPrefix(strings.TrimPrefix(a, "http://"), "https://"))
	if err != nil {
		t.Fatal(err)
	}
	return int(ap.Port())
}

// serve runs set's handler behind a real HTTP server and returns a GET of
// path: status and body.
func probeOnce(t *testing.T, set Set, path string) (int, string, time.Duration) {
	t.Helper()
	r := NewRunner(nil)
	defer r.Close()
	srv := httptest.NewServer(Handler(set, r, zaptest.NewLogger(t)))
	defer srv.Close()
	start := time.Now()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 512)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, strings.TrimSpace(b.String()), time.Since(start)
}

func TestHTTPProbe(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ready":
			w.WriteHeader(http.StatusOK)
		case "/moved":
			http.Redirect(w, r, "http://elsewhere.invalid/", http.StatusFound)
		case "/headers":
			if r.Header.Get("X-Probe") != "yes" || r.Host != "app.example" || r.URL.RawQuery != "deep=1" {
				http.Error(w, "want X-Probe, Host and the query", http.StatusBadRequest)
			}
		default:
			http.Error(w, "broken", http.StatusInternalServerError)
		}
	}))
	defer app.Close()
	tlsApp := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer tlsApp.Close()
	port, tlsPort := portOf(t, app.URL), portOf(t, tlsApp.URL)

	for _, tc := range []struct {
		name   string
		probe  HTTPGet
		status int
		body   string
	}{
		{"200", HTTPGet{Path: "/ready", Port: port}, 200, "app httpGet probe passed"},
		{"3xx passes, not followed", HTTPGet{Path: "/moved", Port: port}, 200, "app httpGet probe passed"},
		{"headers, Host and query", HTTPGet{Path: "/headers?deep=1", Port: port, HTTPHeaders: []Header{{"X-Probe", "yes"}, {"Host", "app.example"}}}, 200, "app httpGet probe passed"},
		{"500", HTTPGet{Path: "/other", Port: port}, 503,
			"app httpGet probe failed: GET http://127.0.0.1:" + itoa(port) + "/other: status 500 Internal Server Error"},
		{"HTTPS, the app's certificate not verified", HTTPGet{Path: "/", Port: tlsPort, Scheme: "HTTPS"}, 200, "app httpGet probe passed"},
		{"HTTP to an HTTPS app", HTTPGet{Path: "/", Port: tlsPort}, 503,
			"app httpGet probe failed: GET http://127.0.0.1:" + itoa(tlsPort) + "/: status 400 Bad Request"},
		{"empty path", HTTPGet{Port: port, Host: "127.0.0.1"}, 503,
			"app httpGet probe failed: GET http://127.0.0.1:" + itoa(port) + "/: status 500 Internal Server Error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.probe
			status, body, _ := probeOnce(t, Set{"/app-health/web/readyz": {HTTPGet: &g}}, "/app-health/web/readyz")
			if status != tc.status || body != tc.body {
				t.Errorf("got %d %q, want %d %q", status, body, tc.status, tc.body)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestGRPCProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("api", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	defer func() { srv.Stop(); <-done }()
	port := portOf(t, ln.Addr().String())
	api, nope := "api", "nope"

	for _, tc := range []struct {
		name   string
		probe  GRPC
		status int
		body   string
	}{
		{"server SERVING", GRPC{Port: port}, 200, "app grpc probe passed"},
		{"service NOT_SERVING", GRPC{Port: port, Service: &api}, 503,
			`app grpc probe failed: gRPC health 127.0.0.1:` + itoa(port) + ` service "api": NOT_SERVING`},
		{"unknown service", GRPC{Port: port, Service: &nope}, 503,
			`app grpc probe failed: gRPC health 127.0.0.1:` + itoa(port) + `: NotFound: unknown service`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.probe
			status, body, _ := probeOnce(t, Set{"/app-health/api/livez": {GRPC: &g}}, "/app-health/api/livez")
			if status != tc.status || body != tc.body {
				t.Errorf("got %d %q, want %d %q", status, body, tc.status, tc.body)
			}
		})
	}
}

// closedPort returns a port nothing listens on.
func closedPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := portOf(t, ln.Addr().String())
	ln.Close()
	return port
}

func TestTCPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	open, closed := portOf(t, ln.Addr().String()), closedPort(t)

	status, body, _ := probeOnce(t, Set{"/app-health/db/readyz": {TCPSocket: &TCPSocket{Port: open}}}, "/app-health/db/readyz")
	if status != 200 || body != "app tcpSocket probe passed" {
		t.Errorf("open port: %d %q", status, body)
	}
	status, body, _ = probeOnce(t, Set{"/app-health/db/readyz": {TCPSocket: &TCPSocket{Port: closed}}}, "/app-health/db/readyz")
	want := "app tcpSocket probe failed: connect 127.0.0.1:" + itoa(closed) + ": dial tcp 127.0.0.1:" + itoa(closed) + ": connect: connection refused"
	if status != 503 || body != want {
		t.Errorf("closed port: %d %q, want 503 %q", status, body, want)
	}
	for _, kind := range []string{"http", "grpc"} {
		p := Probe{HTTPGet: &HTTPGet{Port: closed}}
		if kind == "grpc" {
			p = Probe{GRPC: &GRPC{Port: closed}}
		}
		status, body, _ := probeOnce(t, Set{"/app-health/x/livez": p}, "/app-health/x/livez")
		if status != 503 || !strings.Contains(body, "connection refused") {
			t.Errorf("%s to a closed port: %d %q, want 503 and connection refused", kind, status, body)
		}
	}
}

// TestHungApp: an app that accepts and never answers fails the probe
// with 503 within the probe's timeout, so kubelet, which waits as long,
// reads the reason.
func TestHungApp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // never read, never answered
		}
	}()
	defer func() { ln.Close(); <-done }()
	port := portOf(t, ln.Addr().String())

	for _, p := range []Probe{
		{HTTPGet: &HTTPGet{Path: "/ready", Port: port}, TimeoutSeconds: 1},
		{GRPC: &GRPC{Port: port}, TimeoutSeconds: 1},
	} {
		t.Run(p.Kind(), func(t *testing.T) {
			status, body, took := probeOnce(t, Set{"/app-health/web/readyz": p}, "/app-health/web/readyz")
			if status != 503 || !strings.Contains(body, "no answer within the probe's timeout, 1s") {
				t.Errorf("got %d %q, want 503 and the timeout", status, body)
			}
			if took >= time.Second {
				t.Errorf("answered after %s, want within the probe's timeout (1s)", took)
			}
		})
	}
}

func TestUnknownPath(t *testing.T) {
	status, _, _ := probeOnce(t, Set{"/app-health/a/readyz": {TCPSocket: &TCPSocket{Port: 1}}}, "/app-health/b/readyz")
	if status != http.StatusNotFound {
		t.Errorf("status %d, want 404", status)
	}
}

// TestControl: every connection a probe makes goes through the control
// hook (the proxy's socket marking), whatever the probe's kind.
func TestControl(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := portOf(t, ln.Addr().String())
	var calls []string
	r := NewRunner(func(network, address string, c syscall.RawConn) error {
		calls = append(calls, network+" "+address)
		return nil
	})
	defer r.Close()
	for _, p := range []Probe{
		{HTTPGet: &HTTPGet{Port: port}, TimeoutSeconds: 1},
		{GRPC: &GRPC{Port: port}, TimeoutSeconds: 1},
		{TCPSocket: &TCPSocket{Port: port}},
	} {
		calls = nil
		done := make(chan struct{})
		go func() {
			defer close(done)
			if c, err := ln.Accept(); err == nil {
				c.Close()
			}
		}()
		r.Check(t.Context(), p) // passes or not: the app here just closes
		<-done
		if want := "tcp4 127.0.0.1:" + itoa(port); len(calls) == 0 || calls[0] != want {
			t.Errorf("%s: control saw %q, want %q", p.Kind(), calls, want)
		}
	}
}
