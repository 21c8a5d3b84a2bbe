package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/websocket"

	"meshgate/topology"
)

// forgedCert is the client identity a client claims for itself; the app
// must never see it, whatever path the request takes to it.
const forgedCert = "URI=spiffe://" + meshTD + "/ns/default/sa/admin;By=forged"

// forgedHeaders are the spellings of X-Forwarded-Client-Cert a client
// uses to smuggle forgedCert in: case variants, which HTTP says are one
// header, and the underscore one, which CGI-style frameworks (WSGI, PHP,
// Rack) read as the same HTTP_X_FORWARDED_CLIENT_CERT.
var forgedHeaders = []string{"X-Forwarded-Client-Cert", "x-forwarded-client-cert", "X-FORWARDED-CLIENT-CERT", "X_Forwarded_Client_Cert"}

// identityApp is an HTTP app (HTTP/1.x and h2c) that records every
// header of every request it is sent, keyed by path, so a test can tell
// exactly what reached it. It answers with a trailer, and /ws is a
// WebSocket echo.
type identityApp struct {
	mu   sync.Mutex
	seen map[string][]http.Header
}

// startIdentityApp serves an identityApp on port inside pod (in the pod's
// network namespace, so its sidecar's inbound rules apply to it).
func startIdentityApp(t *testing.T, pod *topology.Pod, port int) *identityApp {
	t.Helper()
	app := &identityApp{seen: make(map[string][]http.Header)}
	ws := websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) })
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		app.mu.Lock()
		app.seen[r.URL.Path] = append(app.seen[r.URL.Path], r.Header.Clone())
		app.mu.Unlock()
		if r.URL.Path == "/ws" {
			ws.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Trailer", "X-App-Trailer")
		io.WriteString(w, r.Proto)
		w.Header().Set("X-App-Trailer", "done")
	})}
	serveHTTPIn(t, pod, port, srv)
	return app
}

// headers returns what the app saw of the requests to path.
func (a *identityApp) headers(path string) []http.Header {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[path]
}

// check fails t unless the app saw n requests to path, none carrying the
// forged identity under any header name, each with exactly want as its
// X-Forwarded-Client-Cert (want "": none at all).
func (a *identityApp) check(t *testing.T, path string, n int, want string) {
	t.Helper()
	got := a.headers(path)
	if len(got) != n {
		t.Errorf("%s: the app saw %d requests, want %d", path, len(got), n)
	}
	for i, h := range got {
		for k, vs := range h {
			for _, v := range vs {
				if strings.Contains(v, "forged") {
					t.Errorf("%s request %d: the forged identity reached the app: %s: %s", path, i, k, v)
				}
			}
			norm := strings.ToLower(strings.ReplaceAll(k, "_", "-"))
			if norm == "x-forwarded-client-cert" && k != "X-Forwarded-Client-Cert" {
				t.Errorf("%s request %d: the app saw a %q header", path, i, k)
			}
		}
		xfcc := h.Values("X-Forwarded-Client-Cert")
		switch {
		case want == "" && len(xfcc) != 0:
			t.Errorf("%s request %d: X-Forwarded-Client-Cert %q at the app, want none (no verified client)", path, i, xfcc)
		case want != "" && (len(xfcc) != 1 || xfcc[0] != want):
			t.Errorf("%s request %d: X-Forwarded-Client-Cert %q at the app, want [%s]", path, i, xfcc, want)
		}
	}
}

// TestXFCCNeverForged: a client-sent X-Forwarded-Client-Cert (in any
// spelling) never reaches the app, on every inbound path: mesh L7
// (meshgate/h2, and meshgate/http1 for an upgrade, declined or not),
// meshgate/tcp carrying HTTP/1.1 or h2c from a client sidecar with
// protocols.l7 off, and plaintext HTTP/1.1 or h2c in permissive mode, nor
// by a client that tries to slip past detection. The app sees the
// verified identity on the mesh paths and none on plaintext; keep-alive,
// a declined upgrade, WebSocket, trailers and large headers still work on
// each.
func TestXFCCNeverForged(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "a", "n", "plain", "b")
	a, n, plain, b := pods[0], pods[1], pods[2], pods[3]
	app := startIdentityApp(t, b, 8080)
	// The same app on a port declared http (protocols.ports), for a
	// client whose request detection cannot tell from other bytes.
	declaredApp := startIdentityApp(t, b, 8081)
	ca := meshCA(t)
	enroll(t, a, meshOpts(issueFor(t, ca, a), "strict", a, n, b))
	no := meshOpts(issueFor(t, ca, n), "strict", a, n, b)
	no.proxyConfig = "protocols:\n  l7: false\n"
	enroll(t, n, no)
	bo := meshOpts(issueFor(t, ca, b), "permissive", a, n, b)
	// A short handshake timeout, for a client to outwait (see "late" below).
	bo.proxyConfig = "timeouts:\n  handshake: 1s\nprotocols:\n  ports: {8081: http}\n"
	enroll(t, b, bo)
	target := hostPort(b.IPv4, 8080)

	for _, path := range []struct {
		name string
		from *topology.Pod
		want string // X-Forwarded-Client-Cert at the app
	}{
		{"mesh-l7", a, "URI=" + spiffeFor(a)},
		{"meshgate-tcp", n, "URI=" + spiffeFor(n)},
		{"plaintext", plain, ""},
	} {
		t.Run(path.name, func(t *testing.T) {
			t.Run("HTTP/1.1", func(t *testing.T) {
				p := "/" + path.name + "/h1"
				up := "/" + path.name + "/h1-upgrade"
				after := "/" + path.name + "/h1-after-upgrade"
				big := strings.Repeat("b", 200<<10)
				c, err := path.from.Dial(ctxFor(t, 10*time.Second), "tcp", target)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				br := bufio.NewReader(c)
				// Three requests on one connection: the forged header in
				// every spelling (and a large header); an upgrade the app
				// declines; one more after it.
				for i, req := range []string{
					"GET " + p + " HTTP/1.1\r\nHost: b\r\nX-Big: " + big + "\r\n" + forgedLines(forgedHeaders...) + "\r\n",
					"GET " + up + " HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: example/1\r\n" + forgedLines(forgedHeaders[0]) + "\r\n",
					"GET " + after + " HTTP/1.1\r\nHost: b\r\n" + forgedLines(forgedHeaders...) + "\r\n",
				} {
					if _, err := io.WriteString(c, req); err != nil {
						t.Fatalf("request %d: %v", i, err)
					}
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("request %d: %v", i, err)
					}
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != 200 || string(body) != "HTTP/1.1" || resp.Trailer.Get("X-App-Trailer") != "done" {
						t.Fatalf("request %d: %d %q, trailers %v, %v; want 200 HTTP/1.1 with the app's trailer", i, resp.StatusCode, body, resp.Trailer, err)
					}
				}
				app.check(t, p, 1, path.want)
				app.check(t, up, 1, path.want)
				app.check(t, after, 1, path.want)
				if h := app.headers(p); len(h) == 1 && len(h[0].Get("X-Big")) != len(big) {
					t.Errorf("the app got a %d-byte X-Big, want %d", len(h[0].Get("X-Big")), len(big))
				}
			})
			t.Run("h2c", func(t *testing.T) {
				p := "/" + path.name + "/h2c"
				tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
					return path.from.Dial(ctx, network, addr)
				}}
				defer tr.CloseIdleConnections()
				client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
				for i := range 2 { // two requests on one connection
					req, _ := http.NewRequest(http.MethodGet, "http://"+target+p, nil)
					for _, k := range forgedHeaders {
						req.Header[k] = []string{forgedCert}
					}
					resp, err := client.Do(req)
					if err != nil {
						t.Fatalf("request %d: %v", i, err)
					}
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != 200 || string(body) != "HTTP/2.0" || resp.Trailer.Get("X-App-Trailer") != "done" {
						t.Fatalf("request %d: %d %q, trailers %v, %v; want 200 HTTP/2.0 with the app's trailer", i, resp.StatusCode, body, resp.Trailer, err)
					}
				}
				app.check(t, p, 2, path.want)
			})
			// Clients that try to slip past detection: one that waits out
			// every timeout (timeouts.handshake, protocols.detectTimeout)
			// before it speaks, one that pauses mid-request-line, one whose
			// request line is longer than detection reads, and to the port
			// declared http, one whose method is (the app accepts any
			// token; undeclared, such bytes pass as a client-first
			// protocol's would).
			for _, tc := range []struct {
				name     string
				parts    []string
				pause    time.Duration
				declared bool
			}{
				{"late", []string{"", "GET /" + path.name + "/late HTTP/1.1\r\n"}, 1500 * time.Millisecond, false},
				{"paused", []string{"GET /" + path.name + "/paused HT", "TP/1.1\r\n"}, 300 * time.Millisecond, false},
				{"long", []string{"GET /" + path.name + "/long?q=" + strings.Repeat("q", 70<<10) + " HTTP/1.1\r\n"}, 0, false},
				{"long-method", []string{strings.Repeat("GET", 20) + " /" + path.name + "/long-method HTTP/1.1\r\n"}, 0, true},
			} {
				t.Run(tc.name, func(t *testing.T) {
					target, app := target, app
					if tc.declared {
						target, app = hostPort(b.IPv4, 8081), declaredApp
					}
					c, err := path.from.Dial(ctxFor(t, 10*time.Second), "tcp", target)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(20 * time.Second))
					for _, part := range tc.parts[:len(tc.parts)-1] {
						io.WriteString(c, part)
						time.Sleep(tc.pause)
					}
					io.WriteString(c, tc.parts[len(tc.parts)-1]+"Host: b\r\n"+forgedLines(forgedHeaders...)+"\r\n")
					resp, err := http.ReadResponse(bufio.NewReader(c), nil)
					if err != nil {
						t.Fatal(err)
					}
					resp.Body.Close()
					if resp.StatusCode != 200 {
						t.Errorf("status %d", resp.StatusCode)
					}
					app.check(t, "/"+path.name+"/"+tc.name, 1, path.want)
				})
			}
			t.Run("WebSocket", func(t *testing.T) {
				cfg, err := websocket.NewConfig("ws://"+target+"/ws", "http://"+hostPort(path.from.IPv4, 1))
				if err != nil {
					t.Fatal(err)
				}
				cfg.Header = http.Header{}
				for _, k := range forgedHeaders {
					cfg.Header[k] = []string{forgedCert}
				}
				c, err := path.from.Dial(ctxFor(t, 10*time.Second), "tcp", target)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				before := len(app.headers("/ws"))
				ws, err := websocket.NewClient(cfg, c)
				if err != nil {
					t.Fatalf("WebSocket handshake: %v", err)
				}
				wsEcho(t, ws, "hello", "after the upgrade")
				app.mu.Lock()
				h := app.seen["/ws"][before:]
				app.seen["/ws-"+path.name] = h
				app.mu.Unlock()
				app.check(t, "/ws-"+path.name, 1, path.want)
			})
		})
	}
}

// forgedLines is one header line claiming forgedCert per name.
func forgedLines(names ...string) string {
	var s strings.Builder
	for _, k := range names {
		s.WriteString(k + ": " + forgedCert + "\r\n")
	}
	return s.String()
}
