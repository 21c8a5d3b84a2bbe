package demoapp

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

// App is the example workload, bound and ready to serve.
type App struct {
	name   string
	httpLn net.Listener // nil: no HTTP
	echoLn net.Listener // nil: no echo
}

// Listen binds the app's servers: HTTP on httpAddr and TCP echo on
// echoAddr, either of which may be empty (not both). Its errors name the
// flags of "meshgate demo-app".
func Listen(name, httpAddr, echoAddr string) (*App, error) {
	if httpAddr == "" && echoAddr == "" {
		return nil, errors.New("nothing to serve: give --http ADDR, --echo ADDR or both")
	}
	a := &App{name: name}
	if httpAddr != "" {
		ln, err := net.Listen("tcp", httpAddr)
		if err != nil {
			return nil, fmt.Errorf("--http %s: %w", httpAddr, err)
		}
		a.httpLn = ln
	}
	if echoAddr != "" {
		ln, err := net.Listen("tcp", echoAddr)
		if err != nil {
			if a.httpLn != nil {
				a.httpLn.Close()
			}
			return nil, fmt.Errorf("--echo %s: %w", echoAddr, err)
		}
		a.echoLn = ln
	}
	return a, nil
}

// HTTPAddr is where HTTP is served, nil if not.
func (a *App) HTTPAddr() net.Addr { return addrOf(a.httpLn) }

// EchoAddr is where TCP echo is served, nil if not.
func (a *App) EchoAddr() net.Addr { return addrOf(a.echoLn) }

func addrOf(ln net.Listener) net.Addr {
	if ln == nil {
		return nil
	}
	return ln.Addr()
}

// Serve serves until ctx ends, then shuts the servers down (HTTP within
// 2 s; echo connections end when their clients close).
func (a *App) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	if a.httpLn != nil {
		srv := &http.Server{Handler: Handler(a.name), ReadHeaderTimeout: 10 * time.Second}
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
		wg.Add(2)
		go func() { defer wg.Done(); errc <- ignoreClosed(srv.Serve(a.httpLn)) }()
		go func() {
			defer wg.Done()
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}
	if a.echoLn != nil {
		wg.Add(2)
		go func() { defer wg.Done(); errc <- serveEcho(a.echoLn) }()
		go func() { defer wg.Done(); <-ctx.Done(); a.echoLn.Close() }()
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

// streamBytes writes n bytes of a fixed pseudo-random stream and returns
// their SHA-256, so a client can check a large body arrived intact.
func streamBytes(w io.Writer, n int64) (string, error) {
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

// Handler is the app's HTTP API (see the package comment), answering as
// name.
func Handler(name string) http.Handler {
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
		sum, _ := streamBytes(nil, n)
		w.Header().Set("X-Content-Sha256", sum)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = streamBytes(w, n)
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
	return controlled(mux)
}

// HashBody reads r to the end and returns its SHA-256 and length: the
// client's side of GET /bytes, to check against X-Content-Sha256.
func HashBody(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil)), n, err
}
