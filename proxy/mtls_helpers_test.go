package proxy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"meshgate/internal/testca"
)

// The identities of the tests: a client workload and a server workload in
// trust domain cluster.local.
const (
	clientID = "spiffe://cluster.local/ns/shop/sa/client"
	serverID = "spiffe://cluster.local/ns/shop/sa/server"
)

// The test MeshTLS's verification errors, which its Reason labels.
var (
	errTestNoCert     = errors.New("no certificate")
	errTestWrongTD    = errors.New("wrong trust domain")
	errTestExpired    = errors.New("certificate expired")
	errTestNotYet     = errors.New("certificate not yet valid")
	errTestUnknownCA  = errors.New("unknown authority")
	errTestWrongID    = errors.New("wrong identity")
	errTestNoSPIFFEID = errors.New("no SPIFFE ID")
)

// testMesh is a MeshTLS made of plain tls.Configs: its certificate (a
// leaf of a test CA), the roots it trusts and the one trust domain it
// accepts peers from. Verification is its own VerifyConnection, run on
// full and resumed handshakes. It is test code only: package mtls is the
// real one.
type testMesh struct {
	accept spiffeid.TrustDomain
	roots  *x509.CertPool

	cert   atomic.Pointer[tls.Certificate] // nil: present none
	server atomic.Pointer[tls.Config]      // replaced on rotation
	cache  tls.ClientSessionCache

	mu      sync.Mutex
	clients map[string]*tls.Config
	seen    []seenPeer // every peer VerifyConnection passed
	quiet   bool       // do not record seen (benchmarks)
}

// seenPeer is a peer certificate the mesh verified.
type seenPeer struct {
	id      string
	serial  *big.Int
	alpn    string
	resumed bool
}

// newTestMesh returns a mesh presenting leaf (nil: no certificate) and
// accepting peers of trust domain accept whose chains lead to one of
// roots.
func newTestMesh(leaf *testca.Leaf, accept string, roots ...*testca.CA) *testMesh {
	m := &testMesh{
		accept:  spiffeid.RequireTrustDomainFromString(accept),
		roots:   testca.Pool(roots...),
		cache:   tls.NewLRUClientSessionCache(64),
		clients: make(map[string]*tls.Config),
	}
	m.rotate(leaf)
	return m
}

// rotate presents leaf from now on. The server config is replaced, as
// the MeshTLS contract asks, so sessions resumed after this carry the
// new certificate.
func (m *testMesh) rotate(leaf *testca.Leaf) {
	if leaf != nil {
		c := leaf.TLSCertificate()
		m.cert.Store(&c)
	}
	m.server.Store(&tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := m.cert.Load(); c != nil {
				return c, nil
			}
			return nil, errors.New("no certificate")
		},
		VerifyConnection: func(cs tls.ConnectionState) error { return m.verify(cs, nil) },
	})
}

func (m *testMesh) ServerConfig() *tls.Config { return m.server.Load() }

func (m *testMesh) ClientConfig(expected *spiffeid.ID) *tls.Config {
	key := ""
	if expected != nil {
		key = expected.String()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.clients[key]; c != nil {
		return c
	}
	var want *spiffeid.ID
	if expected != nil {
		id := *expected
		want = &id
	}
	c := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // VerifyConnection verifies, SPIFFE-style: no host names
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := m.cert.Load(); c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil // send none
		},
		VerifyConnection:   func(cs tls.ConnectionState) error { return m.verify(cs, want) },
		ClientSessionCache: m.cache,
	}
	m.clients[key] = c
	return c
}

func (m *testMesh) Reason(err error) string {
	for _, r := range []struct {
		err   error
		label string
	}{
		{errTestNoCert, "no_certificate"},
		{errTestWrongTD, "wrong_trust_domain"},
		{errTestExpired, "expired"},
		{errTestNotYet, "not_yet_valid"},
		{errTestUnknownCA, "unknown_ca"},
		{errTestWrongID, "wrong_identity"},
		{errTestNoSPIFFEID, "wrong_identity"},
	} {
		if errors.Is(err, r.err) {
			return r.label
		}
	}
	if err != nil && strings.Contains(err.Error(), "didn't provide a certificate") {
		return "no_certificate"
	}
	return "other"
}

// verify checks the peer: a SPIFFE ID of the accepted trust domain, a
// valid chain to our roots, and the expected identity if one is given.
func (m *testMesh) verify(cs tls.ConnectionState, expected *spiffeid.ID) error {
	if len(cs.PeerCertificates) == 0 {
		return errTestNoCert
	}
	leaf := cs.PeerCertificates[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return fmt.Errorf("%w: %v", errTestNoSPIFFEID, err)
	}
	if !id.MemberOf(m.accept) {
		return fmt.Errorf("%w: %s is not of %s", errTestWrongTD, id, m.accept)
	}
	now := time.Now()
	if now.After(leaf.NotAfter) {
		return fmt.Errorf("%w: %s expired at %v", errTestExpired, id, leaf.NotAfter)
	}
	if now.Before(leaf.NotBefore) {
		return fmt.Errorf("%w: %s", errTestNotYet, id)
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: now}); err != nil {
		return fmt.Errorf("%w: %v", errTestUnknownCA, err)
	}
	if expected != nil && id != *expected {
		return fmt.Errorf("%w: got %s, want %s", errTestWrongID, id, expected)
	}
	m.mu.Lock()
	if !m.quiet {
		m.seen = append(m.seen, seenPeer{id: id.String(), serial: leaf.SerialNumber, alpn: cs.NegotiatedProtocol, resumed: cs.DidResume})
	}
	m.mu.Unlock()
	return nil
}

// peers returns the peers verified so far.
func (m *testMesh) peers() []seenPeer {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]seenPeer(nil), m.seen...)
}

// meshCA is a trust domain for a test with its two workloads.
type meshCA struct {
	ca             *testca.CA
	client, server *testca.Leaf
}

func newMeshCA(t testing.TB) *meshCA {
	ca := testca.New(t, "cluster.local")
	return &meshCA{ca: ca,
		client: ca.Issue(t, clientID, testca.LeafOptions{}),
		server: ca.Issue(t, serverID, testca.LeafOptions{})}
}

// meshes returns the client's and the server's MeshTLS.
func (c *meshCA) meshes() (client, server *testMesh) {
	return newTestMesh(c.client, "cluster.local", c.ca), newTestMesh(c.server, "cluster.local", c.ca)
}

// pair is two sidecars chained on loopback: the app's connection to
// client.out() leaves the client sidecar as mesh TLS for the server
// sidecar's inbound listener (as the server pod's rules would deliver
// it), which forwards plaintext to the backend.
type pair struct {
	client, server *running
	tap            *tap // between the sidecars, when asked for
}

// pairOptions tune startPair.
type pairOptions struct {
	clientCfg, serverCfg func(*Config)
	withTap              bool
	clientOpts           []Option
	serverOpts           []Option
}

// startPair starts the server sidecar (inbound to backend) and the client
// sidecar (outbound to the server sidecar, 127.0.0.0/8 being the mesh).
func startPair(t *testing.T, backend string, cm, sm MeshTLS, po pairOptions) *pair {
	t.Helper()
	scfg := testConfig()
	if po.serverCfg != nil {
		po.serverCfg(&scfg)
	}
	var srvOpts []Option
	if sm != nil {
		srvOpts = append(srvOpts, WithMeshTLS(sm))
	}
	srv := startProxy(t, scfg, append(append(srvOpts, to(backend)), po.serverOpts...)...)
	dst := srv.in()
	var tp *tap
	if po.withTap {
		tp = startTap(t, dst)
		dst = tp.addr()
	}
	ccfg := testConfig()
	ccfg.MTLS.MeshCIDRs = prefixes("127.0.0.0/8")
	if po.clientCfg != nil {
		po.clientCfg(&ccfg)
	}
	opts := append([]Option{to(dst)}, po.clientOpts...)
	if cm != nil {
		opts = append(opts, WithMeshTLS(cm))
	}
	cli := startProxy(t, ccfg, opts...)
	return &pair{client: cli, server: srv, tap: tp}
}

// startMeshPair is startPair with mesh TLS of a trust domain of its own:
// a pair in front of backend, when the test is about neither
// certificates nor peers.
func startMeshPair(t *testing.T, backend string, po pairOptions) *pair {
	t.Helper()
	cm, sm := newMeshCA(t).meshes()
	return startPair(t, backend, cm, sm, po)
}

// tap relays TCP connections to dst and records what crosses it client
// to server, to look at what the sidecars put on the wire.
type tap struct {
	ln  net.Listener
	dst string
	wg  sync.WaitGroup
	mu  sync.Mutex
	up  bytes.Buffer // everything sent towards dst
}

func startTap(t *testing.T, dst string) *tap {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{ln: ln, dst: dst}
	var conns sync.Map
	tp.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", dst)
			if err != nil {
				c.Close()
				continue
			}
			conns.Store(c, nil)
			conns.Store(u, nil)
			tp.wg.Go(func() {
				io.Copy(io.MultiWriter(u, tp), c)
				u.(*net.TCPConn).CloseWrite()
			})
			tp.wg.Go(func() {
				io.Copy(c, u)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		tp.wg.Wait()
	})
	return tp
}

func (tp *tap) addr() string { return tp.ln.Addr().String() }

// Write records bytes going to dst.
func (tp *tap) Write(b []byte) (int, error) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.up.Write(b)
}

func (tp *tap) recorded() []byte {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return bytes.Clone(tp.up.Bytes())
}

// counter returns the sum of the named counter over the series whose
// labels include all of want (0 when none has).
func (r *running) counter(t testing.TB, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// fields checks a log entry's fields against want ("<missing>" for
// absent).
func checkFields(t *testing.T, what string, e map[string]any, want map[string]string) {
	t.Helper()
	for k, w := range want {
		got := "<missing>"
		if v, ok := e[k]; ok {
			got = fmt.Sprint(v)
		}
		if got != w {
			t.Errorf("%s: log field %s = %q, want %q", what, k, got, w)
		}
	}
}
