package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
)

// echoMethod is Serve's gRPC method: it answers with the request message.
const echoMethod = "/meshgate.bench.Echo/Echo"

// rawCodec carries gRPC messages as the bytes they are, so the harness
// needs no generated code: a request is the body, the answer its echo.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("bench: raw codec: %T is not []byte", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("bench: raw codec: %T is not *[]byte", v)
	}
	*p = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "raw" }

// grpcError names a failed call for Result.Errors.
func grpcError(err error) error {
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return &statusError{kind: "grpc_" + strings.ToLower(s.Code().String())}
	}
	return err
}

// echoService is the gRPC service of Serve.
var echoService = grpc.ServiceDesc{
	ServiceName: "meshgate.bench.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			return in, nil
		},
	}},
}

// ServeOptions are the listen addresses of Serve; an empty one is not
// served.
type ServeOptions struct {
	// HTTP serves HTTP/1.1 and h2c: POST echoes its body, GET answers
	// ?size=N bytes (default ResponseSize).
	HTTP string
	// TLS serves the same as HTTP over TLS (HTTP/1.1 and h2, by ALPN),
	// with a self-signed certificate made at start (clients: Insecure).
	TLS string
	// GRPC serves the raw echo method.
	GRPC string
	// TCP echoes what it reads.
	TCP string
	// ResponseSize is the body of a GET without ?size.
	ResponseSize int
	// Ready, if set, is called with the bound addresses once all listen.
	Ready func(http, tls, grpc, tcp net.Addr)
}

// Serve runs the benchmark backend until ctx ends.
func Serve(ctx context.Context, o ServeOptions) error {
	if o.HTTP == "" && o.TLS == "" && o.GRPC == "" && o.TCP == "" {
		return errors.New("bench: serve: nothing to serve: give an HTTP, TLS, gRPC or TCP address")
	}
	var lns [4]net.Listener
	closeAll := func() {
		for _, ln := range lns {
			if ln != nil {
				ln.Close()
			}
		}
	}
	for i, a := range []struct{ name, addr string }{{"http", o.HTTP}, {"grpc", o.GRPC}, {"tcp", o.TCP}, {"tls", o.TLS}} {
		if a.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", a.addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("bench: serve: --%s %s: %w", a.name, a.addr, err)
		}
		lns[i] = ln
	}
	if o.Ready != nil {
		addr := func(ln net.Listener) net.Addr {
			if ln == nil {
				return nil
			}
			return ln.Addr()
		}
		o.Ready(addr(lns[0]), addr(lns[3]), addr(lns[1]), addr(lns[2]))
	}
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	serveHTTP := func(ln net.Listener, tlsOn bool) error {
		srv := &http.Server{Handler: httpHandler(o.ResponseSize), ReadHeaderTimeout: 10 * time.Second}
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		if tlsOn {
			cert, err := selfSigned()
			if err != nil {
				return err
			}
			srv.Protocols.SetHTTP2(true)
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
			ln = tls.NewListener(ln, srv.TLSConfig)
		} else {
			srv.Protocols.SetUnencryptedHTTP2(true)
		}
		wg.Go(func() {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errc <- err
			}
		})
		wg.Go(func() {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
		})
		return nil
	}
	for _, i := range []int{0, 3} {
		if ln := lns[i]; ln != nil {
			lns[i] = nil // Shutdown closes it
			if err := serveHTTP(ln, i == 3); err != nil {
				ln.Close()
				closeAll()
				return fmt.Errorf("bench: serve: TLS: %w", err)
			}
		}
	}
	if ln := lns[1]; ln != nil {
		lns[1] = nil // GracefulStop closes it
		gs := grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}))
		gs.RegisterService(&echoService, struct{}{})
		wg.Go(func() {
			if err := gs.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) && !errors.Is(err, net.ErrClosed) {
				errc <- err
			}
		})
		wg.Go(func() { <-ctx.Done(); gs.GracefulStop() })
	}
	if ln := lns[2]; ln != nil {
		wg.Go(func() { serveEcho(ctx, ln) })
	}
	<-ctx.Done()
	closeAll()
	wg.Wait()
	close(errc)
	return <-errc
}

func httpHandler(defaultSize int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			n, _ := io.Copy(w, r.Body)
			_ = n
			return
		}
		size := defaultSize
		if s := r.URL.Query().Get("size"); s != "" {
			if n, err := strconv.Atoi(s); err == nil && n >= 0 && n <= 64<<20 {
				size = n
			}
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		buf := make([]byte, min(size, 32<<10))
		for size > 0 {
			n := min(size, len(buf))
			w.Write(buf[:n])
			size -= n
		}
	})
}

// serveEcho echoes every connection until ln closes; it waits for the
// connections it serves.
func serveEcho(ctx context.Context, ln net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			io.Copy(c, c)
		})
	}
}

// selfSigned makes a throwaway ECDSA P-256 certificate for the TLS port.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "meshgate bench serve"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
