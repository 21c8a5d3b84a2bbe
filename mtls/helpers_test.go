package mtls

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"

	"meshgate/internal/testca"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// memSource is a Source held in memory whose certificate and bundles a
// test swaps at will.
type memSource struct {
	svid    atomic.Pointer[x509svid.SVID]
	bundles atomic.Pointer[x509bundle.Set]
}

// newMemSource serves leaf, and trusts the roots of the given CAs (several
// CAs of one trust domain make one bundle holding all their roots).
func newMemSource(t testing.TB, leaf *testca.Leaf, trust ...*testca.CA) *memSource {
	s := &memSource{}
	s.setLeaf(t, leaf)
	s.setTrust(t, trust...)
	return s
}

func (s *memSource) setLeaf(t testing.TB, leaf *testca.Leaf) {
	t.Helper()
	s.svid.Store(svidOf(t, leaf))
}

func (s *memSource) setTrust(t testing.TB, trust ...*testca.CA) {
	t.Helper()
	s.bundles.Store(bundleSet(t, trust...))
}

func (s *memSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid.Load(), nil }

func (s *memSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundles.Load().GetX509BundleForTrustDomain(td)
}

func svidOf(t testing.TB, leaf *testca.Leaf) *x509svid.SVID {
	t.Helper()
	id, err := x509svid.IDFromCert(leaf.Cert)
	if err != nil {
		id = spiffeid.ID{} // a fixture without a SPIFFE ID
	}
	return &x509svid.SVID{ID: id, Certificates: leaf.Chain, PrivateKey: leaf.Key}
}

func bundleSet(t testing.TB, trust ...*testca.CA) *x509bundle.Set {
	t.Helper()
	set := x509bundle.NewSet()
	for _, ca := range trust {
		td := spiffeid.RequireTrustDomainFromString(ca.TrustDomain)
		b, ok := set.Get(td)
		if !ok {
			b = x509bundle.New(td)
			set.Add(b)
		}
		b.AddX509Authority(ca.Root)
	}
	return set
}

func mustID(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

// testServer accepts TLS connections on 127.0.0.1:0; for each one it
// completes the handshake, reports the result, and echoes one ping.
type testServer struct {
	ln      net.Listener
	cfg     *tls.Config
	results chan sideResult
	wg      sync.WaitGroup
}

type sideResult struct {
	cs  tls.ConnectionState
	err error
}

func startServer(t testing.TB, cfg *tls.Config) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{ln: ln, cfg: cfg, results: make(chan sideResult, 16)}
	s.wg.Go(s.serve)
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *testServer) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Go(func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			tc := tls.Server(c, s.cfg)
			err := tc.Handshake()
			if err == nil {
				// TLS 1.3: the client's certificate is checked after the
				// client's handshake has returned, and before its first
				// byte is read; read it so both sides see the same result.
				var b [4]byte
				if _, err = io.ReadFull(tc, b[:]); err == nil {
					_, err = tc.Write([]byte("pong"))
				}
			}
			s.results <- sideResult{cs: tc.ConnectionState(), err: err}
		})
	}
}

// exchange is both sides of one connection.
type exchange struct {
	client, server sideResult
}

// dial connects with cfg, exchanges a ping and a pong (which also carries
// the server's session ticket to the client), and returns both sides.
func (s *testServer) dial(t testing.TB, cfg *tls.Config) exchange {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d tls.Dialer
	d.Config = cfg
	var x exchange
	c, err := d.DialContext(ctx, "tcp", s.ln.Addr().String())
	if err == nil {
		tc := c.(*tls.Conn)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err = tc.Write([]byte("ping")); err == nil {
			var b [4]byte
			_, err = io.ReadFull(tc, b[:])
		}
		x.client = sideResult{cs: tc.ConnectionState(), err: err}
		tc.Close()
	} else {
		x.client = sideResult{err: err}
	}
	select {
	case x.server = <-s.results:
	case <-ctx.Done():
		t.Fatal("the server reported no result")
	}
	return x
}

// errText is err's text, or "<nil>".
func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// recordResume wraps cfg's VerifyConnection to record whether the last
// handshake resumed a session.
func recordResume(cfg *tls.Config) *atomic.Bool {
	var resumed atomic.Bool
	verify := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		resumed.Store(cs.DidResume)
		return verify(cs)
	}
	return &resumed
}

// fakeClock is a clock a test sets, safe to read from handshake goroutines.
type fakeClock struct{ unixNano atomic.Int64 }

func (c *fakeClock) set(t time.Time) { c.unixNano.Store(t.UnixNano()) }
func (c *fakeClock) now() time.Time  { return time.Unix(0, c.unixNano.Load()) }
