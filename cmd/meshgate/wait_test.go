package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"meshgate/proxy"
)

// healthServer is a sidecar's health port that answers /healthz/ready
// 503 the first notReady times, then 200.
func healthServer(t *testing.T, notReady int32) (port int, calls *atomic.Int32) {
	calls = new(atomic.Int32)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz/ready" {
			http.NotFound(w, r)
			return
		}
		if calls.Add(1) <= notReady {
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port, calls
}

func TestWait(t *testing.T) {
	ready, _ := healthServer(t, 3)
	never, _ := healthServer(t, 1<<30)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"ready after a while", []string{"--port", fmt.Sprint(ready), "--timeout", "10s"}, 0, ""},
		{"never ready", []string{"--port", fmt.Sprint(never), "--timeout", "300ms"}, 1,
			"meshgate wait: the sidecar was not ready within 300ms: status 503 Service Unavailable\n"},
		{"no sidecar", []string{"--port", fmt.Sprint(closed), "--timeout", "1s"}, 1,
			fmt.Sprintf("meshgate wait: the sidecar was not ready within 1s: Get \"http://127.0.0.1:%d/healthz/ready\": dial tcp 127.0.0.1:%d: connect: connection refused\n", closed, closed)},
		{"bad flags", []string{"--port", "70000", "--timeout", "0s"}, 1,
			"meshgate wait: --port 70000: want 1-65535; --timeout 0s: want a positive duration, e.g. 60s\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := mainExit(append([]string{"wait"}, tc.args...), &stdout, &stderr)
			if code != tc.code || stderr.String() != tc.stderr {
				t.Errorf("exit %d, stderr %q; want %d, %q", code, stderr.String(), tc.code, tc.stderr)
			}
		})
	}
	// The default timeout is said as it is written in the manifests.
	var stdout, stderr bytes.Buffer
	mainExit([]string{"wait", "--help"}, &stdout, &stderr)
	if !strings.Contains(stderr.String(), "[--port 15021] [--timeout 60s]") {
		t.Errorf("help: %s", stderr.String())
	}
}

// TestWaitForProxy: wait against a real sidecar's health port.
func TestWaitForProxy(t *testing.T) {
	cfg, err := proxy.LoadConfig(testProxyConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy: %v", err)
		}
	}()
	<-p.Ready()
	var stdout, stderr bytes.Buffer
	if code := mainExit([]string{"wait", "--port", fmt.Sprint(p.Addrs().Health.Port()), "--timeout", "10s"}, &stdout, &stderr); code != 0 {
		t.Errorf("exit %d: %s", code, stderr.String())
	}
}
