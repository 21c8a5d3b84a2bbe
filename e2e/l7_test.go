package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// appView is what the demo app's GET / reports of a request.
type appView struct {
	Remote      string `json:"remote"`
	Proto       string `json:"proto"`
	ClientCert  string `json:"client_cert"`
	RequestID   string `json:"request_id"`
	Traceparent string `json:"traceparent"`
}

// TestL7RealClients: through two sidecars with mTLS, curl over HTTP/1.0,
// HTTP/1.1, HTTP/2 with prior knowledge and h2c Upgrade, nghttp, and a
// WebSocket echo all work; the app is reached in the client's HTTP
// version, gets the client's verified identity and request IDs, and each
// request is in the sidecars' access logs and metrics.
func TestL7RealClients(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "a", "b")
	a, b := pods[0], pods[1]
	startApp(t, b)
	ca := meshCA(t)
	sa := enroll(t, a, meshOpts(issueFor(t, ca, a), "strict", a, b))
	ob := meshOpts(issueFor(t, ca, b), "strict", a, b)
	ob.proxyConfig = "accessLog: true\n"
	sb := enroll(t, b, ob)
	u := url(b.IPv4, 8080, "/")
	identity := "URI=" + spiffeFor(a)

	for _, tc := range []struct {
		name  string
		flags []string
		proto string // at the app
	}{
		{"HTTP/1.0", []string{"--http1.0"}, "HTTP/1.1"},
		{"HTTP/1.1", []string{"--http1.1"}, "HTTP/1.1"},
		{"HTTP/2 prior knowledge", []string{"--http2-prior-knowledge"}, "HTTP/2.0"},
		// Go's server declines the h2c Upgrade (RFC 9113 deprecated it)
		// and answers in HTTP/1.1, on the upgrade's own mesh connection.
		{"h2c Upgrade", []string{"--http2"}, "HTTP/1.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v appView
			if err := json.Unmarshal([]byte(curl(t, a, append(tc.flags, u)...)), &v); err != nil {
				t.Fatal(err)
			}
			if v.Proto != tc.proto {
				t.Errorf("the app was reached over %s, want %s", v.Proto, tc.proto)
			}
			if v.ClientCert != identity || v.RequestID == "" || !strings.HasPrefix(v.Traceparent, "00-") {
				t.Errorf("the app saw client_cert %q, request_id %q, traceparent %q; want %q and generated IDs", v.ClientCert, v.RequestID, v.Traceparent, identity)
			}
		})
	}
	t.Run("nghttp", func(t *testing.T) {
		out, err := a.Run(ctxFor(t, 20*time.Second), "nghttp", u)
		var v appView
		if err != nil || json.Unmarshal([]byte(out), &v) != nil || v.Proto != "HTTP/2.0" || v.ClientCert != identity {
			t.Errorf("nghttp: %q, %v; want the app reached over HTTP/2.0 with the client's identity", out, err)
		}
	})
	t.Run("WebSocket", func(t *testing.T) {
		cfg, err := websocket.NewConfig("ws://"+hostPort(b.IPv4, 8080)+"/ws", "http://"+hostPort(a.IPv4, 1))
		if err != nil {
			t.Fatal(err)
		}
		c, err := a.Dial(ctxFor(t, 10*time.Second), "tcp", hostPort(b.IPv4, 8080))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		ws, err := websocket.NewClient(cfg, c)
		if err != nil {
			t.Fatalf("WebSocket handshake through the mesh: %v", err)
		}
		wsEcho(t, ws, "hello", "through two sidecars")
	})

	// Each side saw every request: 3 by curl over L7, curl's h2c Upgrade
	// (declined: 200) and the WebSocket's (101), each on a mesh connection
	// of its own, and nghttp's; the server side, each from the verified
	// peer. A request is counted and logged as its response ends, which
	// can be after the client has read it.
	eventually(t, 5*time.Second, func() error {
		var errs []error
		am := sa.metrics(t)
		if n := am["meshgate_http_requests_total{direction=outbound,method=GET,peer_identity="+spiffeFor(b)+",response_class=2xx}"]; n != 5 {
			errs = append(errs, fmt.Errorf("a's sidecar counted %v GETs to %s answered 2xx, want 5", n, spiffeFor(b)))
		}
		if n := am["meshgate_http_requests_total{direction=outbound,method=GET,peer_identity="+spiffeFor(b)+",response_class=1xx}"]; n != 1 {
			errs = append(errs, fmt.Errorf("a's sidecar counted %v GETs to %s answered 101, want 1 (the WebSocket)", n, spiffeFor(b)))
		}
		bm := sb.metrics(t)
		if n := bm["meshgate_http_requests_total{direction=inbound,method=GET,peer_identity="+spiffeFor(a)+",response_class=2xx}"]; n != 5 {
			errs = append(errs, fmt.Errorf("b's sidecar counted %v GETs from %s answered 2xx, want 5", n, spiffeFor(a)))
		}
		if n := bm["meshgate_http_requests_total{direction=inbound,method=GET,peer_identity="+spiffeFor(a)+",response_class=1xx}"]; n != 1 {
			errs = append(errs, fmt.Errorf("b's sidecar counted %v GETs from %s answered 101, want 1 (the WebSocket)", n, spiffeFor(a)))
		}
		if n := strings.Count(sb.proc.Output(), `"msg":"request"`); n != 6 {
			errs = append(errs, fmt.Errorf("b's access log has %d request lines, want 6", n))
		}
		return errors.Join(errs...)
	})
}

// wsEcho sends each message on ws and fails t unless it comes back.
func wsEcho(t *testing.T, ws *websocket.Conn, msgs ...string) {
	t.Helper()
	for _, msg := range msgs {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("WebSocket echo: %q, %v", got, err)
		}
	}
}
