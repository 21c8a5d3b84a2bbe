package demoapp

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// serve starts an app named web on httpAddr and echoAddr ("": no echo
// server) until the test ends, when ending its context must stop Serve
// cleanly.
func serve(t *testing.T, httpAddr, echoAddr string) *App {
	t.Helper()
	a, err := Listen("web", httpAddr, echoAddr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return a
}

// TestApp serves both servers on loopback: GET / names the app, /bytes
// matches its hash, and echo answers after a half-close; ending ctx stops
// Serve cleanly.
func TestApp(t *testing.T) {
	a := serve(t, "127.0.0.1:0", "127.0.0.1:0")

	resp, err := http.Get("http://" + a.HTTPAddr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Name string }
	err = json.NewDecoder(resp.Body).Decode(&v)
	resp.Body.Close()
	if err != nil || v.Name != "web" {
		t.Errorf("GET /: name %q, %v; want web", v.Name, err)
	}

	resp, err = http.Get("http://" + a.HTTPAddr().String() + "/bytes?n=100000")
	if err != nil {
		t.Fatal(err)
	}
	sum, n, err := HashBody(resp.Body)
	resp.Body.Close()
	if err != nil || n != 100000 || sum != resp.Header.Get("X-Content-Sha256") {
		t.Errorf("GET /bytes: %d bytes, sha256 %s, want 100000 and %s (%v)", n, sum, resp.Header.Get("X-Content-Sha256"), err)
	}

	c, err := net.Dial("tcp", a.EchoAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello" {
		t.Errorf("echo: %q, %v; want hello", got, err)
	}
}

func TestListenNeedsSomething(t *testing.T) {
	if _, err := Listen("x", "", ""); err == nil || err.Error() != "nothing to serve: give --http ADDR, --echo ADDR or both" {
		t.Errorf("got %v", err)
	}
}

// TestSleep: GET /?sleep=DUR answers no sooner than DUR, and a bad value
// is a 400 that says what to send.
func TestSleep(t *testing.T) {
	srv := httptest.NewServer(Handler("web"))
	defer srv.Close()
	start := time.Now()
	resp, err := http.Get(srv.URL + "/?sleep=50ms")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if took := time.Since(start); resp.StatusCode != 200 || took < 50*time.Millisecond {
		t.Errorf("GET /?sleep=50ms: %d after %v, want 200 after 50ms at least", resp.StatusCode, took)
	}
	resp, err = http.Get(srv.URL + "/?sleep=soon")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "?sleep=DURATION") {
		t.Errorf("GET /?sleep=soon: %d %q, want 400 naming ?sleep=DURATION", resp.StatusCode, body)
	}
}

// TestControl: on command the app fails a share of its requests with
// the status asked for, delays its answers, counts a client that left
// while it waited, and behaves again once told so; bad commands are
// refused naming the parameter.
func TestControl(t *testing.T) {
	srv := httptest.NewServer(Handler("web"))
	defer srv.Close()
	post := func(q string) int {
		t.Helper()
		resp, err := http.Post(srv.URL+"/control?"+q, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	stats := func() Stats {
		t.Helper()
		resp, err := http.Get(srv.URL + "/stats")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s Stats
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	codes := func(n int) map[int]int {
		got := map[int]int{}
		for range n {
			resp, err := http.Get(srv.URL + "/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got[resp.StatusCode]++
		}
		return got
	}

	if code := post("fail=0.3&status=502"); code != 200 {
		t.Fatalf("POST /control?fail=0.3&status=502: %d", code)
	}
	got := codes(1000)
	if got[502] < 240 || got[502] > 360 || got[200]+got[502] != 1000 {
		t.Errorf("fail=0.3&status=502 over 1000 requests: %v, want about 300 502s, the rest 200", got)
	}
	if s := stats(); s.Requests != 1000 || s.Failed != int64(got[502]) {
		t.Errorf("stats %+v after 1000 requests of which %d failed", s, got[502])
	}
	if code := post("fail=1"); code != 200 {
		t.Fatal(code)
	}
	if got := codes(10); got[503] != 10 {
		t.Errorf("fail=1 (status not given): %v, want 10 503s", got)
	}
	post("")
	if got := codes(10); got[200] != 10 {
		t.Errorf("after POST /control alone: %v, want 10 200s", got)
	}

	post("delay=10s")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/", nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("delay=10s: answered %d within 100ms", resp.StatusCode)
	}
	deadline := time.Now().Add(5 * time.Second)
	for stats().Cancelled != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("a client gone during the delay was not counted: %+v", stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	post("")

	for _, q := range []string{"fail=2", "status=200", "delay=forever"} {
		resp, err := http.Post(srv.URL+"/control?"+q, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		name, _, _ := strings.Cut(q, "=")
		if resp.StatusCode != 400 || !strings.Contains(string(body), name+"=") {
			t.Errorf("POST /control?%s: %d %q, want 400 naming %s", q, resp.StatusCode, body, name)
		}
	}
}

// TestGRPC: the health service answers on the HTTP port; "sleep"
// metadata delays a call, whose client going away (its deadline) is
// counted as cancelled; a commanded failure is UNAVAILABLE.
func TestGRPC(t *testing.T) {
	a := serve(t, "127.0.0.1:0", "")
	base := "http://" + a.HTTPAddr().String()
	cc, err := grpc.NewClient(a.HTTPAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check: %v %v, want SERVING", resp, err)
	}
	cctx, ccancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "sleep", "1h"), 50*time.Millisecond)
	defer ccancel()
	if _, err := hc.Check(cctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("Check sleeping past its deadline: %v, want DEADLINE_EXCEEDED", err)
	}
	if r, err := http.Post(base+"/control?fail=1", "", nil); err != nil {
		t.Fatal(err)
	} else {
		r.Body.Close()
	}
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("Check failing on command: %v, want UNAVAILABLE", err)
	}
	var st Stats
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, err := http.Get(base + "/stats")
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(r.Body).Decode(&st)
		r.Body.Close()
		if st.Cancelled == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st != (Stats{Requests: 3, Failed: 1, Cancelled: 1}) {
		t.Errorf("stats %+v, want 3 requests, 1 failed, 1 cancelled", st)
	}
}
