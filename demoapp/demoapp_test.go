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
)

// TestApp serves both servers on loopback: GET / names the app, /bytes
// matches its hash, and echo answers after a half-close; ending ctx stops
// Serve cleanly.
func TestApp(t *testing.T) {
	a, err := Listen("web", "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

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
