package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestMain(m *testing.M) {
	// The parker's goroutine outlives its last parked direction by
	// parkWait at most, and is shared by every proxy of the process.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("meshgate/proxy.(*parker).loop"))
}

// running is a proxy under test.
type running struct {
	*Proxy
	reg    *prometheus.Registry
	logs   *observer.ObservedLogs
	cancel context.CancelFunc
	errc   chan error
	once   sync.Once
	err    error
}

// newProxy makes a proxy for the test without running it: its log lines
// and metrics are kept for the test to read, as a running one's. Not
// run, it has nothing to stop (stop is for startProxy's).
func newProxy(t *testing.T, cfg Config, opts ...Option) *running {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core()))
	reg := prometheus.NewRegistry()
	p, err := New(cfg, log, append([]Option{WithRegistry(reg)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return &running{Proxy: p, reg: reg, logs: logs}
}

// startProxy runs a proxy for the test; it is stopped (and Run must
// return nil) at cleanup, if the test did not stop it.
func startProxy(t *testing.T, cfg Config, opts ...Option) *running {
	t.Helper()
	r := newProxy(t, cfg, opts...)
	p := r.Proxy
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.errc = cancel, make(chan error, 1)
	go func() { r.errc <- p.Run(ctx) }()
	select {
	case <-p.Ready():
	case err := <-r.errc:
		cancel()
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("proxy not ready after 10s")
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	})
	return r
}

// stop cancels the proxy's context and waits for Run.
func (r *running) stop() error {
	r.once.Do(func() {
		r.cancel()
		r.err = <-r.errc
	})
	return r.err
}

// out returns the IPv4 outbound listener address, on loopback.
func (r *running) out() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(r.Addrs().Outbound[0].Port())))
}

// in returns the IPv4 inbound listener address, on loopback.
func (r *running) in() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(r.Addrs().Inbound[0].Port())))
}

// metric returns the value of the named counter or gauge for direction.
func (r *running) metric(t *testing.T, name string, dir Direction) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "direction" && l.GetValue() == dir.String() {
					if m.Counter != nil {
						return m.Counter.GetValue()
					}
					return m.Gauge.GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{direction=%q} not found", name, dir)
	return 0
}

// closedLogs waits for n "connection closed" lines and returns them.
func (r *running) closedLogs(t *testing.T, n int) []observer.LoggedEntry {
	t.Helper()
	var got []observer.LoggedEntry
	waitFor(t, func() bool {
		got = r.logs.FilterMessage("connection closed").All()
		return len(got) >= n
	})
	return got
}

// to is an OriginalDstFunc sending every connection to dst.
func to(dst string) Option {
	ap := netip.MustParseAddrPort(dst)
	return WithOriginalDst(func(Direction, *net.TCPConn) (netip.AddrPort, error) { return ap, nil })
}

// waitFor polls cond for up to 10s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// backend is a TCP server on loopback serving each connection with fn.
type backend struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	srcs []netip.AddrPort // remote addresses of accepted connections
}

func (b *backend) addr() string { return b.ln.Addr().String() }

func (b *backend) sources() []netip.AddrPort {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]netip.AddrPort(nil), b.srcs...)
}

// startBackend listens on addr (e.g. "127.0.0.1:0") and serves each
// connection with fn; cleanup closes it and waits for every handler.
func startBackend(t testing.TB, addr string, fn func(*net.TCPConn)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln}
	var conns sync.Map
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.srcs = append(b.srcs, addrPort(c.RemoteAddr()))
			b.mu.Unlock()
			conns.Store(c, nil)
			b.wg.Go(func() {
				defer conns.Delete(c)
				defer c.Close()
				fn(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		b.wg.Wait()
	})
	return b
}

// echo copies a connection back to itself, then half-closes.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
	io.Copy(io.Discard, c)
}

// dial connects to addr, failing the test on error.
func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip writes msg and reads len(msg) bytes back.
func roundTrip(t testing.TB, c net.Conn, msg string) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	return string(buf)
}

// httpGet fetches url with keep-alives off (so no idle connection
// goroutine outlives the test) and returns status and body.
func httpGet(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// expectClosed waits for the peer to end c: EOF or reset.
func expectClosed(t *testing.T, c net.Conn, within time.Duration) error {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, net.ErrClosed) || isTimeout(err) {
		t.Fatalf("connection not closed by the proxy within %v: %v", within, err)
	}
	return err
}

// expectRefused connects to addr and expects the proxy to refuse: a
// reset, which may arrive while the client is still connecting.
func expectRefused(t *testing.T, addr string) error {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("dial %s: %v, want success or a reset", addr, err)
		}
		return err
	}
	defer c.Close()
	return expectClosed(t, c, 5*time.Second)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// field returns a log entry's field, formatted.
func field(e observer.LoggedEntry, key string) string {
	v, ok := e.ContextMap()[key]
	if !ok {
		return "<missing>"
	}
	return fmt.Sprint(v)
}

// grpcHealthServer starts a gRPC server with the standard health service
// (every service SERVING) and returns its address.
func grpcHealthServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return ln.Addr().String()
}

// grpcHealthClient is a plaintext gRPC health client of target (a
// sidecar's port), closed when the test ends.
func grpcHealthClient(t *testing.T, target string) healthpb.HealthClient {
	t.Helper()
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return healthpb.NewHealthClient(cc)
}

// configOf reads doc as a config file would be read, and validates it:
// the sections a test sets, over the defaults.
func configOf(t testing.TB, doc string) Config {
	t.Helper()
	cfg, err := ParseConfig([]byte(doc))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, doc)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("validate: %v\n%s", err, doc)
	}
	return cfg
}

// indent puts prefix before each line of yaml that is not blank, and
// ends it with a newline: YAML to go under a key.
func indent(yaml, prefix string) string {
	var b strings.Builder
	for line := range strings.Lines(yaml) {
		if strings.TrimSpace(line) != "" {
			b.WriteString(prefix + strings.TrimSuffix(line, "\n") + "\n")
		}
	}
	return b.String()
}

// startHTTPApp serves h on a loopback address of ip (127.0.0.1 when
// empty) over HTTP/1.1 and h2c, as an app behind a sidecar, until the
// test ends, and returns the address.
func startHTTPApp(t *testing.T, ip string, h http.Handler) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	if ip != "" {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		srv.Listener.Close()
		srv.Listener = ln
	}
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// watchConfigFile has p watch a config file of its own, first holding
// a config that changes nothing, until the test ends; write replaces
// the file's content.
func watchConfigFile(t *testing.T, p *Proxy) (write func(doc string)) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "proxy.yaml")
	write = func(doc string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("logLevel: info\n")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.WatchConfig(ctx, file) }()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(50 * time.Millisecond) // the watch is set up
	return write
}

// expectIdleClosed waits for r to close c, silent from now on, for the
// idle timeout idle: not much before idle has passed, and with the
// connection's log line naming that timeout.
func expectIdleClosed(t *testing.T, r *running, c net.Conn, idle time.Duration) {
	t.Helper()
	start := time.Now()
	expectClosed(t, c, 5*time.Second)
	if d := time.Since(start); d < idle*5/6 {
		t.Errorf("closed after %v, before the idle timeout of %v", d, idle)
	}
	e := r.closedLogs(t, 1)[0]
	if got, want := field(e, "error"), "idle timeout: no bytes either way for "+idle.String(); !strings.Contains(got, want) {
		t.Errorf("error = %q, want %q", got, want)
	}
}
