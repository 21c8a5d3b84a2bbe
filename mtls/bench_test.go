package mtls

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"

	"meshgate/internal/testca"
)

// The benchmarks run mesh mTLS on loopback, with this package's configs
// ("meshgate") next to the floor: crypto/tls with the same certificates
// and no callbacks ("crypto-tls": static Certificates, ClientCAs and
// RootCAs, host name verification). Both are TLS 1.3 with Go's default key
// exchange. Each handshake is counted once the server has verified the
// client and the client has read a byte from it (so the ticket, sent just
// before, is in the client's cache).
//
//	go test -run '^$' -bench . -benchtime 3s ./mtls/

type benchConfigs struct {
	server, client *tls.Config
}

func benchSetup(b *testing.B) map[string]benchConfigs {
	ca := testca.New(b, "a.example")
	srvLeaf := ca.Issue(b, serverID, testca.LeafOptions{DNSNames: []string{"server.a.example"}})
	cliLeaf := ca.Issue(b, clientID, testca.LeafOptions{})
	roots := testca.Pool(ca)
	return map[string]benchConfigs{
		"meshgate": {
			server: ServerConfig(newMemSource(b, srvLeaf, ca), AuthorizeMemberOf(tdA)),
			client: ClientConfig(newMemSource(b, cliLeaf, ca), AuthorizeID(mustID(serverID))),
		},
		"crypto-tls": {
			server: &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{srvLeaf.TLSCertificate()},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    roots,
			},
			client: &tls.Config{
				MinVersion:         tls.VersionTLS13,
				Certificates:       []tls.Certificate{cliLeaf.TLSCertificate()},
				RootCAs:            roots,
				ServerName:         "server.a.example",
				ClientSessionCache: tls.NewLRUClientSessionCache(16),
			},
		},
	}
}

// handshakeServer accepts TLS connections; each one completes its
// handshake, sends one byte and closes.
func handshakeServer(b *testing.B, cfg *tls.Config) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				if tc.Handshake() == nil {
					tc.Write([]byte{1})
					tc.Read(make([]byte, 1)) // until the client closes
				}
			})
		}
	})
	b.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// handshakeOnce connects, and fails unless the handshake resumed a
// session as wantResume says (1) or did not (0); -1 accepts either.
func handshakeOnce(b *testing.B, addr string, cfg *tls.Config, wantResume int) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	tc := tls.Client(c, cfg)
	defer tc.Close() // before any Fatal: the server waits for it
	if _, err := io.ReadFull(tc, make([]byte, 1)); err != nil {
		b.Fatal(err)
	}
	if r := tc.ConnectionState().DidResume; wantResume >= 0 && r != (wantResume == 1) {
		b.Fatalf("DidResume = %v", r)
	}
}

// BenchmarkHandshakeFull: a full mTLS handshake per connection (no session
// to resume).
func BenchmarkHandshakeFull(b *testing.B) {
	for name, cfgs := range benchSetup(b) {
		b.Run(name, func(b *testing.B) {
			addr := handshakeServer(b, cfgs.server)
			cli := cfgs.client.Clone()
			cli.ClientSessionCache = nil
			b.ReportAllocs()
			for b.Loop() {
				handshakeOnce(b, addr, cli, 0)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

// BenchmarkHandshakeResumed: every connection resumes a session (TLS 1.3
// PSK with a fresh key exchange; the peer is still verified).
func BenchmarkHandshakeResumed(b *testing.B) {
	for name, cfgs := range benchSetup(b) {
		b.Run(name, func(b *testing.B) {
			addr := handshakeServer(b, cfgs.server)
			handshakeOnce(b, addr, cfgs.client, -1) // a session to resume (crypto/tls's may be cached from the last round)
			b.ReportAllocs()
			for b.Loop() {
				handshakeOnce(b, addr, cfgs.client, 1)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

// BenchmarkBulk: one connection, 64 KiB writes from the client, the
// server reading and discarding; "tcp" is the same without TLS.
func BenchmarkBulk(b *testing.B) {
	const chunk = 64 << 10
	run := func(b *testing.B, wrapServer, wrapClient func(net.Conn) net.Conn) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		done := make(chan int64, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- 0
				return
			}
			defer c.Close()
			n, _ := io.Copy(io.Discard, wrapServer(c))
			done <- n
		}()
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		c := wrapClient(raw)
		buf := make([]byte, chunk)
		if _, err := c.Write(buf); err != nil { // the handshake, outside the timing
			b.Fatal(err)
		}
		b.SetBytes(chunk)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		// Half-close and wait: closing with the server's unread session
		// ticket in our receive buffer would reset the connection and
		// lose data the server has not read yet.
		if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			b.Fatal(err)
		}
		n := <-done
		c.Close()
		if n != int64(b.N+1)*chunk {
			b.Fatalf("server read %d bytes, want %d", n, int64(b.N+1)*chunk)
		}
	}
	for name, cfgs := range benchSetup(b) {
		b.Run(name, func(b *testing.B) {
			run(b, func(c net.Conn) net.Conn { return tls.Server(c, cfgs.server) },
				func(c net.Conn) net.Conn { return tls.Client(c, cfgs.client) })
		})
	}
	b.Run("tcp", func(b *testing.B) {
		id := func(c net.Conn) net.Conn { return c }
		run(b, id, id)
	})
}
