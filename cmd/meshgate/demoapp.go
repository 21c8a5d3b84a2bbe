package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/websocket"
)

// runDemoApp is the example workload of the demo and the e2e tests: an
// ordinary HTTP server and a TCP echo server that know nothing of the mesh.
func runDemoApp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo-app", "[--http ADDR] [--echo ADDR] [--name NAME]", `
An example workload for meshgate demo and the end-to-end tests. It knows
nothing about the mesh. HTTP/1.x and HTTP/2 without TLS (h2c, prior
knowledge or Upgrade) on --http. Endpoints:
  GET  /            who answered and what it saw (JSON: name, method, path,
                    remote, host, proto, and the headers a mesh adds:
                    client_cert, request_id, traceparent)
  GET  /bytes?n=N   N bytes of deterministic data; X-Content-Sha256 gives their hash
  POST /sha256      the length and SHA-256 of the request body (JSON)
  GET  /ws          a WebSocket echo
The echo server writes back what it reads and closes its side after the
client closes its own (TCP half-close).`, stderr)
	httpAddr := fs.String("http", "", "serve HTTP on `ADDR` (e.g. :8080)")
	echoAddr := fs.String("echo", "", "serve TCP echo on `ADDR` (e.g. :9000)")
	name := fs.String("name", "app", "name reported in responses")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if *httpAddr == "" && *echoAddr == "" {
		return errors.New("nothing to serve: give --http ADDR, --echo ADDR or both")
	}

	var wg sync.WaitGroup
	errc := make(chan error, 2)
	if *httpAddr != "" {
		ln, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			return fmt.Errorf("--http %s: %w", *httpAddr, err)
		}
		srv := &http.Server{Handler: demoHandler(*name), ReadHeaderTimeout: 10 * time.Second}
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
		wg.Add(2)
		go func() { defer wg.Done(); errc <- ignoreClosed(srv.Serve(ln)) }()
		go func() {
			defer wg.Done()
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		fmt.Fprintf(stdout, "demo-app %s: HTTP on %s\n", *name, ln.Addr())
	}
	if *echoAddr != "" {
		ln, err := net.Listen("tcp", *echoAddr)
		if err != nil {
			return fmt.Errorf("--echo %s: %w", *echoAddr, err)
		}
		wg.Add(2)
		go func() { defer wg.Done(); errc <- serveEcho(ln) }()
		go func() { defer wg.Done(); <-ctx.Done(); ln.Close() }()
		fmt.Fprintf(stdout, "demo-app %s: TCP echo on %s\n", *name, ln.Addr())
	}
	<-ctx.Done()
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	return nil
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// serveEcho echoes every connection until the listener closes; open
// connections end when their clients close.
func serveEcho(ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return ignoreClosed(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			_, _ = io.Copy(c, c)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
		}()
	}
}

// demoBytes writes n bytes of a fixed pseudo-random stream and returns
// their SHA-256, so a client can check a large body arrived intact.
func demoBytes(w io.Writer, n int64) (string, error) {
	h := sha256.New()
	r := rand.New(rand.NewPCG(1, uint64(n)))
	buf := make([]byte, 32<<10)
	for n > 0 {
		chunk := buf[:min(int64(len(buf)), n)]
		for i := 0; i+8 <= len(chunk); i += 8 {
			v := r.Uint64()
			for j := 0; j < 8; j++ {
				chunk[i+j] = byte(v >> (8 * j))
			}
		}
		for i := len(chunk) &^ 7; i < len(chunk); i++ {
			chunk[i] = byte(r.Uint64())
		}
		h.Write(chunk)
		if w != nil {
			if _, err := w.Write(chunk); err != nil {
				return "", err
			}
		}
		n -= int64(len(chunk))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func demoHandler(name string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{
			"name": name, "method": r.Method, "path": r.URL.Path,
			"remote": r.RemoteAddr, "host": r.Host, "proto": r.Proto,
			"client_cert": r.Header.Get("X-Forwarded-Client-Cert"),
			"request_id":  r.Header.Get("X-Request-Id"),
			"traceparent": r.Header.Get("Traceparent"),
		})
	})
	mux.Handle("GET /ws", websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) }))
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > 1<<32 {
			http.Error(w, "want ?n=BYTES between 0 and 4294967296", http.StatusBadRequest)
			return
		}
		sum, _ := demoBytes(nil, n)
		w.Header().Set("X-Content-Sha256", sum)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = demoBytes(w, n)
	})
	mux.HandleFunc("POST /sha256", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"name": name, "length": n, "sha256": hex.EncodeToString(h.Sum(nil))})
	})
	return mux
}

// hashBody reads r to the end and returns its SHA-256 and length.
func hashBody(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil)), n, err
}
