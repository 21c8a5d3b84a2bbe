package bench

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startServe runs Serve on loopback for the test and returns its
// addresses.
func startServe(t *testing.T) (httpAddr, tlsAddr, grpcAddr, tcpAddr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan [4]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ServeOptions{HTTP: "127.0.0.1:0", TLS: "127.0.0.1:0", GRPC: "127.0.0.1:0", TCP: "127.0.0.1:0", ResponseSize: 1024,
			Ready: func(h, s, g, c net.Addr) { ready <- [4]string{h.String(), s.String(), g.String(), c.String()} }})
	}()
	var a [4]string
	select {
	case a = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return a[0], a[1], a[2], a[3]
}

// TestRunProtocols: every protocol runs against Serve, as fast as possible
// and at a fixed rate, with keep-alive and with a new connection per
// request, without errors; a fixed-rate run sends exactly rate × duration
// requests.
func TestRunProtocols(t *testing.T) {
	h, s, g, c := startServe(t)
	for _, tc := range []struct {
		proto  Protocol
		target string
	}{{HTTP1, "http://" + h + "/"}, {HTTP1, "https://" + s + "/"}, {H2C, "http://" + h + "/"}, {H2, "https://" + s + "/"}, {GRPC, g}, {TCP, c}} {
		for _, newConn := range []bool{false, true} {
			name := string(tc.proto) + "/" + strings.SplitN(tc.target, ":", 2)[0]
			if newConn {
				name += "/new-connection"
			}
			t.Run(name, func(t *testing.T) {
				cfg := Config{Protocol: tc.proto, Target: tc.target, Connections: 4, Duration: 300 * time.Millisecond, BodySize: 1024, NewConnection: newConn, Insecure: true}
				res, err := Run(context.Background(), cfg, nil)
				if err != nil {
					t.Fatal(err)
				}
				if res.Requests == 0 || res.ErrorCount() != 0 || res.Mode != "max" {
					t.Errorf("max: %d requests, errors %v, mode %s", res.Requests, res.Errors, res.Mode)
				}
				cfg.Rate, cfg.Duration = 100, time.Second
				res, err = Run(context.Background(), cfg, nil)
				if err != nil {
					t.Fatal(err)
				}
				if res.Requests != 100 || res.ErrorCount() != 0 || res.Mode != "fixed-rate" {
					t.Errorf("fixed rate: %d requests (want 100), errors %v, mode %s", res.Requests, res.Errors, res.Mode)
				}
			})
		}
	}
}

// stallingServer answers at once, except that 500 ms after its first
// request it stops answering everything for one second, once.
func stallingServer(t *testing.T) string {
	var mu sync.Mutex
	var first time.Time
	stalled := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		if !stalled && now.Sub(first) > 500*time.Millisecond {
			stalled = true
			time.Sleep(time.Second) // holding mu: every request waits
		}
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/"
}

// TestCoordinatedOmission: a server that stalls for one second once. At a
// fixed rate, every request due during the stall waits for it, and the
// latencies (from the due times) show it: p99 near the stall. Closed
// loop, only the few requests in flight saw it, and its p99 hides the
// stall: the measurement a load generator that waits for answers before
// sending (coordinated omission) would report.
func TestCoordinatedOmission(t *testing.T) {
	cfg := Config{Target: stallingServer(t), Connections: 4, Rate: 200, Duration: 3 * time.Second}
	fixed, err := Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Target, cfg.Rate = stallingServer(t), 0
	closed, err := Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fixed rate: %d requests, p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.0f ms", fixed.Requests, fixed.Latency.P50, fixed.Latency.P90, fixed.Latency.P99, fixed.Latency.Max)
	t.Logf("closed loop: %d requests, p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.0f ms", closed.Requests, closed.Latency.P50, closed.Latency.P90, closed.Latency.P99, closed.Latency.Max)
	if fixed.Latency.P99 < 500 || fixed.Latency.Max < 900 {
		t.Errorf("fixed rate p99 %.1f ms, max %.1f ms: the 1 s stall does not show", fixed.Latency.P99, fixed.Latency.Max)
	}
	if fixed.Latency.P90 < 100 {
		t.Errorf("fixed rate p90 %.1f ms: a third of the run's requests were due during the stall", fixed.Latency.P90)
	}
	if closed.Latency.Max < 900 {
		t.Errorf("closed loop max %.1f ms: the requests in flight during the stall waited 1 s", closed.Latency.Max)
	}
	if closed.Latency.P99 > fixed.Latency.P99/4 {
		t.Errorf("closed loop p99 %.1f ms is not far below the fixed rate's %.1f ms", closed.Latency.P99, fixed.Latency.P99)
	}
	if fixed.Requests != 600 {
		t.Errorf("fixed rate answered %d requests, want the 600 due", fixed.Requests)
	}
}

// TestValidate pins the refusals, each naming its flag.
func TestValidate(t *testing.T) {
	err := Config{Protocol: "quic", Target: "x", Rate: -1, Connections: -1, Duration: -1, BodySize: -1, Timeout: -1}.Validate()
	want := `--protocol "quic": want http1, h2c, h2, grpc or tcp
--rate -1: want requests per second, or 0 for as fast as possible
--connections -1: want 1 to 10000
--duration -1ns: want a positive duration, e.g. 10s
--body -1: want 0 to 67108864 bytes
--timeout -1ns: want a positive duration`
	if err == nil || err.Error() != want {
		t.Errorf("Validate:\n%v\nwant:\n%s", err, want)
	}
	if err := (Config{Protocol: HTTP1, Target: "10.0.0.2:80"}).withDefaults().Validate(); err == nil {
		t.Error("an http1 target without http:// passed")
	}
	if err := (Config{Protocol: TCP, Target: "10.0.0.2:9000"}).withDefaults().Validate(); err == nil {
		t.Error("a TCP echo without a body passed")
	}
}
