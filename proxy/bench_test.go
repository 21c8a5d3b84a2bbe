package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"meshgate/internal/testca"
	"meshgate/mtls"
	"meshgate/proxy/policy"
	"meshgate/proxy/resilience"
)

// BenchmarkL4 measures what one proxy on loopback costs against talking to
// the backend directly:
//
//	throughput: one connection, 256 KiB written per op to a backend that
//	            discards it (b.SetBytes: MB/s is the one-way rate);
//	rtt:        one connection, a 64-byte request echoed back per op.
//
// Run: go test -run '^$' -bench L4 -benchtime 2s ./proxy
func BenchmarkL4(b *testing.B) {
	sink := startBackend(b, "127.0.0.1:0", discardAndCount)
	echoer := startBackend(b, "127.0.0.1:0", echo)

	for _, path := range []string{"direct", "proxied"} {
		b.Run(path, func(b *testing.B) {
			b.Run("throughput", func(b *testing.B) {
				benchThroughput(b, entry(b, path, sink.addr()))
			})
			b.Run("rtt", func(b *testing.B) {
				benchRTT(b, entry(b, path, echoer.addr()))
			})
		})
	}
}

// BenchmarkCopy compares the two ways forward can move bytes, through the
// whole proxy: splice(2) (the default) and a pooled 32 KiB buffer (the
// fallback).
func BenchmarkCopy(b *testing.B) {
	sink := startBackend(b, "127.0.0.1:0", discardAndCount)
	echoer := startBackend(b, "127.0.0.1:0", echo)
	for _, m := range []struct {
		name string
		mode copyMode
	}{{"splice", copySplice}, {"buffer", copyBuffer}} {
		b.Run(m.name, func(b *testing.B) {
			b.Run("throughput", func(b *testing.B) {
				benchThroughput(b, entry(b, "proxied", sink.addr(), withCopyMode(m.mode)))
			})
			b.Run("rtt", func(b *testing.B) {
				benchRTT(b, entry(b, "proxied", echoer.addr(), withCopyMode(m.mode)))
			})
		})
	}
}

// discardAndCount reads to EOF, then answers with the byte count.
func discardAndCount(c *net.TCPConn) {
	buf := make([]byte, 256<<10)
	var n uint64
	for {
		m, err := c.Read(buf)
		n += uint64(m)
		if err != nil {
			break
		}
	}
	binary.Write(c, binary.BigEndian, n)
}

// entry returns the address a client dials: the backend itself, or a
// proxy in front of it.
func entry(b *testing.B, path, backend string, opts ...Option) string {
	if path == "direct" {
		return backend
	}
	return benchProxy(b, testConfig(), append([]Option{to(backend)}, opts...)...).out()
}

// benchProxy runs a proxy that logs nowhere until the benchmark ends.
func benchProxy(b *testing.B, cfg Config, opts ...Option) *running {
	p, err := New(cfg, zap.NewNop(), append([]Option{WithRegistry(prometheus.NewRegistry())}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	select {
	case <-p.Ready():
	case err := <-done:
		b.Fatal(err)
	}
	return &running{Proxy: p}
}

// BenchmarkMesh measures a pair of sidecars, client → client sidecar →
// server sidecar → backend, on loopback: with mesh mTLS between them
// ("mtls-pair"), as plain L4 proxies ("l4-pair"), against talking to the
// backend directly; throughput and round trip as BenchmarkL4. Beside
// them, "tls-floor" is one crypto/tls connection with the same
// certificates and no proxy: what the mTLS itself costs. The mesh TLS is
// package mtls's, as the sidecar runs it.
//
// Run: go test -run '^$' -bench Mesh -benchtime 2s ./proxy
func BenchmarkMesh(b *testing.B) {
	sink := startBackend(b, "127.0.0.1:0", discardAndCount)
	echoer := startBackend(b, "127.0.0.1:0", echo)
	mca := newMeshCA(b)
	for _, path := range []string{"direct", "l4-pair", "mtls-pair", "tls-floor"} {
		b.Run(path, func(b *testing.B) {
			b.Run("throughput", func(b *testing.B) {
				benchThroughput(b, meshEntry(b, path, mca, sink.addr(), true))
			})
			b.Run("rtt", func(b *testing.B) {
				benchRTT(b, meshEntry(b, path, mca, echoer.addr(), true))
			})
		})
	}
}

// BenchmarkMeshConnect measures new connections through the pair: per
// op, connect, send a byte, read its echo, close. With mTLS, each is a
// full handshake (no session cache) or a resumed one; the tls-floor
// variants are the same handshakes with crypto/tls alone. Connections
// per second are 1e9 / ns/op.
//
// Run: go test -run '^$' -bench MeshConnect -benchtime 3000x ./proxy
func BenchmarkMeshConnect(b *testing.B) {
	echoer := startBackend(b, "127.0.0.1:0", echo)
	mca := newMeshCA(b)
	for _, tc := range []struct {
		name, path string
		resume     bool
	}{
		{"direct", "direct", false},
		{"l4-pair", "l4-pair", false},
		{"mtls-pair/full", "mtls-pair", false},
		{"mtls-pair/resumed", "mtls-pair", true},
		{"tls-floor/full", "tls-floor", false},
		{"tls-floor/resumed", "tls-floor", true},
	} {
		addr := meshEntry(b, tc.path, mca, echoer.addr(), tc.resume)
		// serial: one client after the other (latency per connection);
		// parallel: 4 clients per CPU at once (what the machine sustains).
		b.Run(tc.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				connectOnce(b, addr)
			}
		})
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					connectOnce(b, addr)
				}
			})
		})
	}
}

// connectOnce connects to addr, sends a byte, reads its echo and closes.
func connectOnce(b *testing.B, addr string) {
	one := []byte{'x'}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Write(one); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(c, one); err != nil {
		b.Fatal(err)
	}
	// Reset, not FIN: a benchmark of thousands of connections must not
	// run out of ports in TIME_WAIT.
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// meshEntry returns the address a benchmark's client dials for path.
func meshEntry(b *testing.B, path string, mca *meshCA, backend string, resume bool) string {
	switch path {
	case "direct":
		return backend
	case "tls-floor":
		return tlsFloor(b, mca, backend, resume)
	}
	scfg, ccfg := testConfig(), testConfig()
	var sopts, copts []Option
	if path == "mtls-pair" {
		cm, sm := mca.realMeshes(b, resume)
		sopts, copts = []Option{WithMeshTLS(sm)}, []Option{WithMeshTLS(cm)}
		ccfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
	}
	srv := benchProxy(b, scfg, append(sopts, to(backend))...)
	return benchProxy(b, ccfg, append(copts, to(srv.in()))...).out()
}

// tlsFloor runs a relay that is only crypto/tls: the client dials it in
// plaintext on loopback, as it would a sidecar, and it relays over one
// mTLS connection (meshgate's certificates and configs, no proxy) to a
// TLS server that relays to backend. It is what two sidecars cost if
// all they did was the TLS, built from the same parts.
func tlsFloor(b *testing.B, mca *meshCA, backend string, resume bool) string {
	cm, sm := mca.realMeshes(b, resume)
	scfg := meshConfig(sm.ServerConfig(), meshProtocols)
	ccfg := meshConfig(cm.ClientConfig(nil), []string{alpnTCP})

	tlsLn, err := tls.Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		b.Fatal(err)
	}
	plainLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	closeWrite := func(c net.Conn) {
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}
	relay := func(a, z net.Conn) {
		var inner sync.WaitGroup
		inner.Go(func() { io.Copy(a, z); closeWrite(a) })
		io.Copy(z, a)
		closeWrite(z)
		inner.Wait()
		a.Close()
		z.Close()
	}
	serve := func(ln net.Listener, dial func() (net.Conn, error)) {
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Go(func() {
					u, err := dial()
					if err != nil {
						c.Close()
						return
					}
					relay(c, u)
				})
			}
		})
	}
	serve(tlsLn, func() (net.Conn, error) { return net.Dial("tcp", backend) })
	serve(plainLn, func() (net.Conn, error) {
		c, err := tls.Dial("tcp", tlsLn.Addr().String(), ccfg)
		if err != nil {
			return nil, err
		}
		return c, nil
	})
	b.Cleanup(func() {
		tlsLn.Close()
		plainLn.Close()
		wg.Wait()
	})
	return plainLn.Addr().String()
}

// realMeshes returns the client's and the server's MeshTLS as the
// sidecar runs them: package mtls's Mesh over the test certificates.
// Without resume the client keeps no sessions, so every connection is a
// full handshake.
func (c *meshCA) realMeshes(b *testing.B, resume bool) (client, server *mtls.Mesh) {
	var copts []mtls.Option
	if !resume {
		copts = append(copts, mtls.WithSessionCache(noSessions{}))
	}
	return mtls.NewMesh(newStaticSource(b, c.client, c.ca), copts...), mtls.NewMesh(newStaticSource(b, c.server, c.ca))
}

// noSessions is a session cache that keeps nothing.
type noSessions struct{}

func (noSessions) Get(string) (*tls.ClientSessionState, bool) { return nil, false }
func (noSessions) Put(string, *tls.ClientSessionState)        {}

// staticSource is an mtls.Source of one certificate and one CA's root.
type staticSource struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func newStaticSource(t testing.TB, leaf *testca.Leaf, ca *testca.CA) *staticSource {
	id, err := x509svid.IDFromCert(leaf.Cert)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString(ca.TrustDomain)
	return &staticSource{
		svid:   &x509svid.SVID{ID: id, Certificates: leaf.Chain, PrivateKey: leaf.Key},
		bundle: x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Root}),
	}
}

func (s *staticSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

func (s *staticSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.bundle.TrustDomain() {
		return nil, errors.New("no bundle for " + td.String())
	}
	return s.bundle, nil
}

func benchThroughput(b *testing.B, addr string) {
	const chunk = 256 << 10
	c := dial(b, addr)
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ReportAllocs()
	var sent uint64
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		sent += chunk
	}
	// Everything written must have arrived before the clock stops.
	c.CloseWrite()
	var got uint64
	if err := binary.Read(c, binary.BigEndian, &got); err != nil || got != sent {
		b.Fatalf("backend read %d bytes (%v), want %d", got, err, sent)
	}
}

func benchRTT(b *testing.B, addr string) {
	c := dial(b, addr)
	msg := make([]byte, 64)
	reply := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHTTP measures HTTP/1.1 keep-alive requests (GET, 1 KiB
// answer) through a pair of sidecars against the backend directly:
// "l4-pair" plain L4 proxies, "mtls-opaque" mesh mTLS with L7 off (the
// bytes as they are over meshgate/tcp, which the server sidecar serves
// as HTTP), "mtls-l7" the default: each request over a pooled keep-alive
// meshgate/http1 connection of the HTTP/1 engine. serial is one client
// (latency per request); parallel, 8 clients per CPU, each with its own
// keep-alive connection (what the pair sustains); newconn, one client
// that opens a connection per request. cpu-ns/op is the CPU time of the
// whole process (client, sidecars, backend) per request.
//
// Run: go test -run '^$' -bench 'HTTP$' -benchtime 2s ./proxy
func BenchmarkHTTP(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1024)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }))
	b.Cleanup(srv.Close)
	backend := srv.Listener.Addr().String()
	mca := newMeshCA(b)
	for _, path := range []string{"direct", "l4-pair", "mtls-opaque", "mtls-l7"} {
		addr := httpEntry(b, path, mca, backend)
		tr := &http.Transport{MaxIdleConnsPerHost: 64}
		b.Cleanup(tr.CloseIdleConnections)
		client := &http.Client{Transport: tr}
		url := "http://" + addr + "/"
		serialAndParallel(b, path, func(b *testing.B) { fetch1K(b, client, url) })
		// A new client connection per request (Connection: close), as
		// peerbench's newconn row: the sidecars may keep theirs. From
		// 127.0.0.2: on loopback, with the original destination faked
		// (to), a client port that a pooled upstream connection of the
		// sidecar's own uses from 127.0.0.1 would look to the loop guard
		// like that connection captured again.
		dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
		closing := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: dialer.DialContext}}
		b.Run(path+"/newconn", func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				fetch1K(b, closing, url)
			}
		})
	}
}

// httpEntry returns the address an HTTP benchmark's client dials for path.
func httpEntry(b *testing.B, path string, mca *meshCA, backend string) string {
	switch path {
	case "direct":
		return backend
	case "l4-pair":
		return meshEntry(b, "l4-pair", mca, backend, true)
	}
	cm, sm := mca.realMeshes(b, true)
	scfg, ccfg := testConfig(), testConfig()
	ccfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
	ccfg.Protocols.L7 = path == "mtls-l7"
	srv := benchProxy(b, scfg, WithMeshTLS(sm), to(backend))
	return benchProxy(b, ccfg, WithMeshTLS(cm), to(srv.in())).out()
}

// BenchmarkHTTP2 measures HTTP/2 requests (GET, 1 KiB answer) from an
// h2c client (prior knowledge, as gRPC clients speak it) to an h2c
// backend, through a pair of sidecars ("mtls-l7": each request over the
// pooled HTTP/2 mesh connection, then h2c to the backend) against the
// backend directly. serial is one request at a time (latency per
// request); parallel, 8 goroutines per CPU multiplexed on the client's
// one connection, as an HTTP/2 client does (what the pair sustains).
// cpu-ns/op as BenchmarkHTTP's.
//
// Run: go test -run '^$' -bench HTTP2 -benchtime 2s ./proxy
func BenchmarkHTTP2(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1024)
	srv := httptest.NewServer(h2c.NewHandler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }), &http2.Server{}))
	b.Cleanup(srv.Close)
	backend := srv.Listener.Addr().String()
	mca := newMeshCA(b)
	for _, path := range []string{"direct", "mtls-l7"} {
		addr := httpEntry(b, path, mca, backend)
		tr := &http2.Transport{
			AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			},
		}
		b.Cleanup(tr.CloseIdleConnections)
		client := &http.Client{Transport: tr}
		url := "http://" + addr + "/"
		get := func(b *testing.B) {
			resp, err := client.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			if n, _ := io.Copy(io.Discard, resp.Body); n != 1024 || resp.StatusCode != 200 || resp.ProtoMajor != 2 {
				b.Fatalf("%d %s, %d bytes", resp.StatusCode, resp.Proto, n)
			}
			resp.Body.Close()
		}
		serialAndParallel(b, path, get)
	}
}

// reportCPU starts counting the process's CPU time; the function it
// returns reports it per op as cpu-ns/op. The client, both sidecars and
// the backend are this process, so it is what a request costs them
// all, and unlike ns/op it holds on a machine busy with other work.
func reportCPU(b *testing.B) func() {
	start, ok := processCPU()
	return func() {
		if end, ok2 := processCPU(); ok && ok2 && b.N > 0 {
			b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

// serialAndParallel runs get as path/serial (one client) and
// path/parallel (8 clients per CPU), reporting allocations and the
// process's CPU time per request.
func serialAndParallel(b *testing.B, path string, get func(*testing.B)) {
	b.Run(path+"/serial", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			get(b)
		}
	})
	b.Run(path+"/parallel", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				get(b)
			}
		})
	})
}

// fetch1K GETs url with client and checks the answer is 200 with the
// backend's 1 KiB.
func fetch1K(b *testing.B, client *http.Client, url string) {
	resp, err := client.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	if n, _ := io.Copy(io.Discard, resp.Body); n != 1024 || resp.StatusCode != 200 {
		b.Fatalf("%d, %d bytes", resp.StatusCode, n)
	}
	resp.Body.Close()
}

// BenchmarkHTTPMirror measures what mirroring costs the requests it
// copies: HTTP/1.1 keep-alive GETs (1 KiB answer) through a pair of
// sidecars (mtls-l7, as BenchmarkHTTP's) whose client sidecar has no
// mirror ("off"), a mirror that never fires (its roll above its share:
// the stage's cost), and one that copies every request to an audit app
// behind a sidecar of its own ("firing": each copy mTLS over the pooled
// HTTP/2 mesh connection, its answer read and dropped). ns/op is the
// app's request's latency (serial) or the pair's throughput (parallel);
// cpu-ns/op the whole process's CPU time per request, copies included;
// copies/op the copies sent per request.
//
// Run: go test -run '^$' -bench HTTPMirror -benchtime 2s ./proxy
func BenchmarkHTTPMirror(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1024)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }))
	b.Cleanup(srv.Close)
	audit := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	b.Cleanup(audit.Close)
	mca := newMeshCA(b)
	cm, sm := mca.realMeshes(b, true)
	backend := benchProxy(b, testConfig(), WithMeshTLS(sm), to(srv.Listener.Addr().String()))
	auditSide := benchProxy(b, testConfig(), WithMeshTLS(sm), to(audit.Listener.Addr().String()))
	for _, bc := range []struct {
		name, mirror string
		roll         float64
	}{
		{"off", "", 0},
		{"not-firing", "{to: '" + auditSide.in() + "', percent: 50, maxConcurrent: 1000}", 0.99},
		{"firing", "{to: '" + auditSide.in() + "', maxConcurrent: 1000}", 0},
	} {
		cfg := testConfig()
		cfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
		if bc.mirror != "" {
			resilienceOf(b, "resilience:\n  destinations:\n  - name: api\n    match: {cidrs: [127.0.0.1/32]}\n    mirror: "+bc.mirror+"\n")(&cfg)
		}
		reg := prometheus.NewRegistry()
		cli := benchProxy(b, cfg, WithMeshTLS(cm), to(backend.in()), WithRegistry(reg), withFaultRandom(func() float64 { return bc.roll }))
		cli.reg = reg
		tr := &http.Transport{MaxIdleConnsPerHost: 64}
		b.Cleanup(tr.CloseIdleConnections)
		client := &http.Client{Transport: tr}
		url := "http://" + cli.out() + "/"
		for _, mode := range []string{"serial", "parallel"} {
			b.Run(bc.name+"/"+mode, func(b *testing.B) {
				sent := func() float64 { return cli.counter(b, "meshgate_mirror_total", map[string]string{"result": "sent"}) }
				before := sent()
				b.ReportAllocs()
				cpu := reportCPU(b)
				if mode == "serial" {
					for b.Loop() {
						fetch1K(b, client, url)
					}
				} else {
					b.SetParallelism(8)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							fetch1K(b, client, url)
						}
					})
				}
				// The copies still in flight are the requests' cost too.
				for st := cli.inject.state.Load(); ; time.Sleep(time.Millisecond) {
					busy := int64(0)
					for _, ms := range st.mirror {
						busy += ms.limit.InUse()
					}
					if busy == 0 {
						break
					}
				}
				cpu()
				b.ReportMetric((sent()-before)/float64(b.N), "copies/op")
			})
		}
	}
}

// BenchmarkGuard measures what circuit breaking and bulkheads cost a
// request's path: what the HTTP paths call per request to admit it and
// report its end (guard.go), for an outbound request to 10.0.0.7:8080.
//
//	none:             no resilience section: the destination has no guard
//	                  (what every request pays when nothing is configured);
//	other-guarded:    a section whose one guarded destination is another:
//	                  this one (resolved once, for its connection) has no
//	                  guard;
//	breaker+bulkhead: the destination has a circuit breaker and a bulkhead
//	                  (maxActive, maxPending): route, admit,
//	                  connected, outcome, end;
//	+stale:           and its route a stale fallback: the GET's answer is
//	                  also judged for keeping (Cacheable, Wants), and kept
//	                  once a second.
//
// serial is one goroutine; parallel, 8 per CPU on the one destination
// (its breaker's lock and the bulkhead's counters shared).
//
// Run: go test -run '^$' -bench Guard -benchtime 2s ./proxy
func BenchmarkGuard(b *testing.B) {
	dst := netip.MustParseAddrPort("10.0.0.7:8080")
	for _, c := range []struct{ name, doc string }{
		{"none", ""},
		{"other-guarded", `
  destinations:
  - name: other
    match: {ports: [9999]}
    circuitBreaker: {consecutiveFailures: 5}
`},
		{"breaker+bulkhead", `
  destinations:
  - name: api
    match: {ports: [8080]}
    circuitBreaker: {consecutiveFailures: 5, openFor: 10s}
    bulkhead: {maxActive: 100000, maxPending: 100000}
`},
		{"+stale", `
  destinations:
  - name: api
    match: {ports: [8080]}
    circuitBreaker: {consecutiveFailures: 5, openFor: 10s}
    bulkhead: {maxActive: 100000, maxPending: 100000}
    routes:
    - name: items
      match: {paths: ["/items/*"]}
      fallback: {stale: {maxAge: 1m}}
`},
	} {
		cfg := testConfig()
		if c.doc != "" {
			cfg.Resilience = guardConfig(b, c.doc)
		}
		p, err := New(cfg, nil, WithRegistry(prometheus.NewRegistry()))
		if err != nil {
			b.Fatal(err)
		}
		reqHeader := http.Header{}
		respHeader := http.Header{"Content-Type": {"application/json"}, "Content-Length": {"13"}}
		body := []byte(`{"items": []}`)
		methodBytes, targetBytes := []byte("GET"), []byte("/items/1")
		// The request's start, which its path has at hand: taken once
		// here, so that the clock's cost is not counted as the guard's.
		var now time.Time
		// The connection's destination, resolved once as the engines do
		// (resolveRes); each request then reads its guard from there.
		var rc resConn
		p.resolveRes(&rc, dst)
		one := func() {
			g := rc.g
			if !g.guarded() {
				return
			}
			// As the HTTP/1 engine has them: bytes off the wire.
			target := string(targetBytes)
			var gc guardCall
			if e := gc.admit(g, g.pol.Route(string(methodBytes), policy.NormalizePath(target)), now); e != nil {
				b.Fatal(e)
			}
			gc.connected()
			gc.outcome(true, now)
			if gc.keeps("GET") {
				key := staleKeyOf("api.shop.mesh", target)
				if k := gc.keepIn(200, int64(len(body)), reqHeader, respHeader, key, now); k != nil {
					k.Put(key, resilience.Response{Status: 200, Header: respHeader, Body: body}, now)
				}
			}
			gc.end()
		}
		b.Run(c.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			now = time.Now()
			for b.Loop() {
				one()
			}
		})
		b.Run(c.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			now = time.Now()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					one()
				}
			})
		})
	}
}

// BenchmarkHTTPGuarded measures HTTP/1.1 keep-alive requests through a
// pair of sidecars (mtls-l7, as BenchmarkHTTP's) with no resilience
// section, and with a circuit breaker and a bulkhead on the destination:
// the guard's cost in a whole request's.
//
// Run: go test -run '^$' -bench HTTPGuarded -benchtime 2s ./proxy
func BenchmarkHTTPGuarded(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1024)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }))
	b.Cleanup(srv.Close)
	mca := newMeshCA(b)
	for _, c := range []struct{ name, doc string }{
		{"none", ""},
		{"breaker+bulkhead", `
  destinations:
  - name: api
    match: {cidrs: [127.0.0.1/32]}
    circuitBreaker: {consecutiveFailures: 5, openFor: 10s}
    bulkhead: {maxActive: 100000, maxPending: 100000, maxConnections: 100000}
`},
	} {
		cm, sm := mca.realMeshes(b, true)
		scfg, ccfg := testConfig(), testConfig()
		ccfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
		if c.doc != "" {
			ccfg.Resilience = guardConfig(b, c.doc)
		}
		s := benchProxy(b, scfg, WithMeshTLS(sm), to(srv.Listener.Addr().String()))
		addr := benchProxy(b, ccfg, WithMeshTLS(cm), to(s.in())).out()
		tr := &http.Transport{MaxIdleConnsPerHost: 64}
		b.Cleanup(tr.CloseIdleConnections)
		client := &http.Client{Transport: tr}
		serialAndParallel(b, c.name, func(b *testing.B) { fetch1K(b, client, "http://"+addr+"/") })
	}
}
