package mtls

import (
	"crypto/tls"
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"meshgate/internal/testca"
)

// meshPair is a server and a client Mesh of trust domain a.example.
func meshPair(t *testing.T) (ca *testca.CA, srvSrc *memSource, srv, cli *Mesh) {
	ca = testca.New(t, "a.example")
	srvSrc = newMemSource(t, ca.Issue(t, serverID, testca.LeafOptions{}), ca)
	cliSrc := newMemSource(t, ca.Issue(t, clientID, testca.LeafOptions{}), ca)
	return ca, srvSrc, NewMesh(srvSrc), NewMesh(cliSrc)
}

// TestMeshResumesAndRotates: a Mesh keeps one server config while its
// certificate stays, so sessions resume; a new certificate brings a new
// config, and the next connection sees the new certificate, not a session
// of the old one.
func TestMeshResumesAndRotates(t *testing.T) {
	ca, srvSrc, srv, cli := meshPair(t)
	serverCfg := srv.ServerConfig()
	if serverCfg == nil || srv.ServerConfig() != serverCfg {
		t.Fatal("ServerConfig is not one stable config while the certificate stays")
	}
	want := mustID(serverID)
	if cli.ClientConfig(&want) != cli.ClientConfig(&want) || cli.ClientConfig(&want) == cli.ClientConfig(nil) {
		t.Error("ClientConfig is not one config per expected identity")
	}
	ts := startServer(t, serverCfg)
	for i, wantResume := range []bool{false, true} {
		x := ts.dial(t, cli.ClientConfig(&want))
		if x.client.err != nil || x.server.err != nil {
			t.Fatalf("connection %d: client: %v; server: %v", i, x.client.err, x.server.err)
		}
		if x.client.cs.DidResume != wantResume {
			t.Errorf("connection %d: DidResume = %v, want %v", i, x.client.cs.DidResume, wantResume)
		}
	}

	next := ca.Issue(t, serverID, testca.LeafOptions{})
	srvSrc.setLeaf(t, next)
	rotated := srv.ServerConfig()
	if rotated == serverCfg || rotated == nil {
		t.Fatal("ServerConfig did not change with the certificate")
	}
	ts2 := startServer(t, rotated)
	// The client still holds a session for the old server's address only;
	// dial the rotated config's server as the proxy would, after rotation.
	x := ts2.dial(t, cli.ClientConfig(&want))
	if x.client.err != nil || x.server.err != nil {
		t.Fatalf("after rotation: client: %v; server: %v", x.client.err, x.server.err)
	}
	if got := x.client.cs.PeerCertificates[0].SerialNumber; got.Cmp(next.Cert.SerialNumber) != 0 {
		t.Errorf("after rotation the server presented serial %x, want the new %x", got, next.Cert.SerialNumber)
	}
}

// TestMeshAuthorizes: outbound, a server of the wrong identity is refused
// when one is expected; inbound, a client of another trust domain is
// refused even when its root is trusted. Reason names both.
func TestMeshAuthorizes(t *testing.T) {
	ca, _, _, cli := meshPair(t)
	other := testca.New(t, "b.example")

	impostor := NewMesh(newMemSource(t, ca.Issue(t, "spiffe://a.example/ns/shop/sa/impostor", testca.LeafOptions{}), ca))
	ts := startServer(t, impostor.ServerConfig())
	want := mustID(serverID)
	x := ts.dial(t, cli.ClientConfig(&want))
	if x.client.err == nil || cli.Reason(x.client.err) != ReasonWrongIdentity {
		t.Errorf("a server of the wrong identity: client error %q, reason %q; want %s", errText(x.client.err), cli.Reason(x.client.err), ReasonWrongIdentity)
	}
	// Expecting nobody in particular, any member of the trust domain will do.
	if x := ts.dial(t, cli.ClientConfig(nil)); x.client.err != nil {
		t.Errorf("any member of the trust domain: %v", x.client.err)
	}

	// The server trusts b.example's root, yet accepts only its own trust domain.
	srv := NewMesh(newMemSource(t, ca.Issue(t, serverID, testca.LeafOptions{}), ca, other))
	ts = startServer(t, srv.ServerConfig())
	foreign := NewMesh(newMemSource(t, other.Issue(t, "spiffe://b.example/ns/shop/sa/client", testca.LeafOptions{}), ca, other))
	x = ts.dial(t, foreign.ClientConfig(&want)) // expects our server, so only the server can refuse
	if x.server.err == nil || srv.Reason(x.server.err) != ReasonWrongTrustDomain {
		t.Errorf("a client of another trust domain: server error %q, reason %q; want %s", errText(x.server.err), srv.Reason(x.server.err), ReasonWrongTrustDomain)
	}
}

// noCertSource holds bundles but no certificate yet.
type noCertSource struct{ *memSource }

func (noCertSource) GetX509SVID() (*x509svid.SVID, error) {
	return nil, errors.New("no certificate yet")
}

// TestMeshWithoutCertificate: with no certificate there is no config, so
// the proxy refuses mesh connections instead of handshaking without one.
func TestMeshWithoutCertificate(t *testing.T) {
	ca := testca.New(t, "a.example")
	m := NewMesh(noCertSource{newMemSource(t, ca.Issue(t, serverID, testca.LeafOptions{}), ca)})
	if m.ServerConfig() != nil {
		t.Error("ServerConfig without a certificate is not nil")
	}
	if m.ClientConfig(nil) != nil {
		t.Error("ClientConfig without a certificate is not nil")
	}
	var _ interface {
		ServerConfig() *tls.Config
		ClientConfig(*spiffeid.ID) *tls.Config
		Reason(error) string
	} = m
}
