package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/internal/testca"
)

const (
	serverID = "spiffe://a.example/ns/default/sa/server"
	clientID = "spiffe://a.example/ns/default/sa/client"
)

var tdA = spiffeid.RequireTrustDomainFromString("a.example")

// TestMutualTLS: a client and a server of one trust domain see each
// other's verified identity over TLS 1.3, and the second connection
// resumes the first one's session on both sides.
func TestMutualTLS(t *testing.T) {
	ca := testca.New(t, "a.example")
	srvSrc := newMemSource(t, ca.Issue(t, serverID, testca.LeafOptions{}), ca)
	cliSrc := newMemSource(t, ca.Issue(t, clientID, testca.LeafOptions{}), ca)
	srv := startServer(t, ServerConfig(srvSrc, AuthorizeMemberOf(tdA)))
	cli := ClientConfig(cliSrc, AuthorizeID(mustID(serverID)))

	for i, wantResume := range []bool{false, true, true} {
		x := srv.dial(t, cli)
		if x.client.err != nil || x.server.err != nil {
			t.Fatalf("connection %d: client: %v; server: %v", i, x.client.err, x.server.err)
		}
		for side, r := range map[string]sideResult{"client": x.client, "server": x.server} {
			if r.cs.Version != tls.VersionTLS13 {
				t.Errorf("connection %d: %s negotiated %s", i, side, tls.VersionName(r.cs.Version))
			}
			if r.cs.DidResume != wantResume {
				t.Errorf("connection %d: %s DidResume = %v, want %v", i, side, r.cs.DidResume, wantResume)
			}
		}
		if id, err := PeerID(x.client.cs); err != nil || id.String() != serverID {
			t.Errorf("connection %d: client's PeerID = %v, %v; want %s", i, id, err, serverID)
		}
		if id, err := PeerID(x.server.cs); err != nil || id.String() != clientID {
			t.Errorf("connection %d: server's PeerID = %v, %v; want %s", i, id, err, clientID)
		}
	}
}

// TestRefusals pins, for each kind of bad peer, the full error of the
// side that refuses, what the refused side sees, and both reasons.
func TestRefusals(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	stamp := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	caA := testca.New(t, "a.example")
	caB := testca.New(t, "b.example")
	rogueA := testca.New(t, "a.example") // claims our trust domain, not in our bundle
	server := caA.Issue(t, serverID, testca.LeafOptions{})
	client := caA.Issue(t, clientID, testca.LeafOptions{})
	expired := testca.LeafOptions{NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}
	notYetValid := testca.LeafOptions{NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)}
	clientOfB := caB.Issue(t, "spiffe://b.example/ns/default/sa/client", testca.LeafOptions{})
	clientOfRogueCA := rogueA.Issue(t, clientID, testca.LeafOptions{})
	expiredClient := caA.Issue(t, clientID, expired)
	notYetValidClient := caA.Issue(t, clientID, notYetValid)
	clientWithoutSPIFFEID := caA.Issue(t, "https://client.a.example/", testca.LeafOptions{})
	expiredServer := caA.Issue(t, serverID, expired)
	serverOfRogueCA := rogueA.Issue(t, serverID, testca.LeafOptions{})
	serverOfB := caB.Issue(t, "spiffe://b.example/ns/default/sa/server", testca.LeafOptions{})
	plainTLS12 := &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{client.TLSCertificate()}}
	plainWithoutCert := &tls.Config{InsecureSkipVerify: true}

	const badCertificate = "remote error: tls: bad certificate"
	for _, tc := range []struct {
		name                     string
		serverLeaf, clientLeaf   *testca.Leaf
		serverTrust, clientTrust []*testca.CA
		serverAuthz, clientAuthz Authorizer
		plainClient              *tls.Config // instead of ClientConfig
		wantServer, wantClient   string
		wantReasons              [2]string // server, client
	}{
		{
			name:       "client of a trust domain we hold no bundle for",
			clientLeaf: clientOfB, clientTrust: []*testca.CA{caA},
			wantServer:  "mtls: peer spiffe://b.example/ns/default/sa/client: trust domain not accepted: no trust bundle for trust domain b.example",
			wantClient:  badCertificate,
			wantReasons: [2]string{"wrong_trust_domain", "other"},
		},
		{
			name:       "client of a trusted trust domain the authorizer refuses",
			clientLeaf: clientOfB, clientTrust: []*testca.CA{caA}, serverTrust: []*testca.CA{caA, caB},
			wantServer:  "mtls: peer spiffe://b.example/ns/default/sa/client: trust domain not accepted: want trust domain a.example",
			wantClient:  badCertificate,
			wantReasons: [2]string{"wrong_trust_domain", "other"},
		},
		{
			name:        "client signed by a rogue CA of our trust domain",
			clientLeaf:  clientOfRogueCA,
			wantServer:  "mtls: peer spiffe://a.example/ns/default/sa/client: certificate signed by an unknown authority: no chain to a root of the a.example trust bundle",
			wantClient:  badCertificate,
			wantReasons: [2]string{"unknown_ca", "other"},
		},
		{
			name:        "expired client",
			clientLeaf:  expiredClient,
			wantServer:  fmt.Sprintf("mtls: peer %s: certificate expired: expired at %s, now is %s", clientID, stamp(expired.NotAfter), stamp(now)),
			wantClient:  badCertificate,
			wantReasons: [2]string{"expired", "other"},
		},
		{
			name:        "client not yet valid",
			clientLeaf:  notYetValidClient,
			wantServer:  fmt.Sprintf("mtls: peer %s: certificate not yet valid: valid from %s, now is %s", clientID, stamp(notYetValid.NotBefore), stamp(now)),
			wantClient:  badCertificate,
			wantReasons: [2]string{"not_yet_valid", "other"},
		},
		{
			name:        "client without a SPIFFE ID",
			clientLeaf:  clientWithoutSPIFFEID,
			wantServer:  fmt.Sprintf(`mtls: peer certificate "" (serial %x): identity not accepted: scheme is missing or invalid`, clientWithoutSPIFFEID.Cert.SerialNumber),
			wantClient:  badCertificate,
			wantReasons: [2]string{"wrong_identity", "other"},
		},
		{
			name: "client the server's own authorizer refuses",
			serverAuthz: func(id spiffeid.ID, _ [][]*x509.Certificate) error {
				return errors.New("only the prod namespace may call")
			},
			wantServer:  "mtls: peer spiffe://a.example/ns/default/sa/client: identity not accepted: only the prod namespace may call",
			wantClient:  badCertificate,
			wantReasons: [2]string{"wrong_identity", "other"},
		},
		{
			name:        "client without a certificate",
			plainClient: plainWithoutCert,
			wantServer:  "tls: client didn't provide a certificate",
			wantClient:  "remote error: tls: certificate required",
			wantReasons: [2]string{"no_certificate", "no_certificate"},
		},
		{
			name:        "client offering only TLS 1.2",
			plainClient: plainTLS12,
			wantServer:  "tls: client offered only unsupported versions: [303]",
			wantClient:  "remote error: tls: protocol version not supported",
			wantReasons: [2]string{"not_tls13", "not_tls13"},
		},
		{
			name:        "server of another identity than the expected one",
			clientAuthz: AuthorizeID(mustID("spiffe://a.example/ns/default/sa/db")),
			wantServer:  badCertificate,
			wantClient:  "mtls: peer spiffe://a.example/ns/default/sa/server: identity not accepted: want spiffe://a.example/ns/default/sa/db",
			wantReasons: [2]string{"other", "wrong_identity"},
		},
		{
			name:        "expired server",
			serverLeaf:  expiredServer,
			wantServer:  badCertificate,
			wantClient:  fmt.Sprintf("mtls: peer %s: certificate expired: expired at %s, now is %s", serverID, stamp(expired.NotAfter), stamp(now)),
			wantReasons: [2]string{"other", "expired"},
		},
		{
			name:        "server signed by a rogue CA of our trust domain",
			serverLeaf:  serverOfRogueCA,
			wantServer:  badCertificate,
			wantClient:  "mtls: peer spiffe://a.example/ns/default/sa/server: certificate signed by an unknown authority: no chain to a root of the a.example trust bundle",
			wantReasons: [2]string{"other", "unknown_ca"},
		},
		{
			name:        "server of another trust domain",
			serverLeaf:  serverOfB,
			serverTrust: []*testca.CA{caA}, clientTrust: []*testca.CA{caA, caB},
			wantServer:  badCertificate,
			wantClient:  "mtls: peer spiffe://b.example/ns/default/sa/server: trust domain not accepted: want trust domain a.example",
			wantReasons: [2]string{"other", "wrong_trust_domain"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			def := func(l, d *testca.Leaf) *testca.Leaf {
				if l == nil {
					return d
				}
				return l
			}
			trust := func(c []*testca.CA) []*testca.CA {
				if c == nil {
					return []*testca.CA{caA}
				}
				return c
			}
			authz := func(a Authorizer) Authorizer {
				if a == nil {
					return AuthorizeMemberOf(tdA)
				}
				return a
			}
			clock := WithClock(func() time.Time { return now })
			srv := startServer(t, ServerConfig(newMemSource(t, def(tc.serverLeaf, server), trust(tc.serverTrust)...), authz(tc.serverAuthz), clock))
			cli := tc.plainClient
			if cli == nil {
				cli = ClientConfig(newMemSource(t, def(tc.clientLeaf, client), trust(tc.clientTrust)...), authz(tc.clientAuthz), clock)
			}
			x := srv.dial(t, cli)
			if got := errText(x.server.err); got != tc.wantServer {
				t.Errorf("server error:\n got %s\nwant %s", got, tc.wantServer)
			}
			if got := errText(x.client.err); got != tc.wantClient {
				t.Errorf("client error:\n got %s\nwant %s", got, tc.wantClient)
			}
			if got := [2]string{Reason(x.server.err), Reason(x.client.err)}; got != tc.wantReasons {
				t.Errorf("reasons (server, client) = %q, want %q", got, tc.wantReasons)
			}
		})
	}
}

// TestRotation: a new certificate in the source is served at the next
// handshake, with no new config, while a connection made before goes on.
func TestRotation(t *testing.T) {
	ca := testca.New(t, "a.example")
	first := ca.Issue(t, serverID, testca.LeafOptions{})
	srvSrc := newMemSource(t, first, ca)
	cliSrc := newMemSource(t, ca.Issue(t, clientID, testca.LeafOptions{}), ca)
	srvCfg := ServerConfig(srvSrc, AuthorizeMemberOf(tdA))
	cliCfg := ClientConfig(cliSrc, AuthorizeID(mustID(serverID)))

	// A long-lived connection, open across the rotation.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 4)
		for {
			if _, err := c.Read(buf); err != nil {
				done <- nil
				return
			}
			if _, err := c.Write(buf); err != nil {
				done <- err
				return
			}
		}
	}()
	long, err := tls.Dial("tcp", ln.Addr().String(), cliCfg)
	if err != nil {
		t.Fatal(err)
	}
	echo := func() error {
		if _, err := long.Write([]byte("ping")); err != nil {
			return err
		}
		_, err := long.Read(make([]byte, 4))
		return err
	}
	if err := echo(); err != nil {
		t.Fatal(err)
	}

	second := ca.Issue(t, serverID, testca.LeafOptions{})
	srvSrc.setLeaf(t, second)

	srv := startServer(t, srvCfg)
	// A fresh client config: no session to resume, so the certificate is sent.
	x := srv.dial(t, ClientConfig(cliSrc, AuthorizeID(mustID(serverID))))
	if x.client.err != nil || x.server.err != nil {
		t.Fatalf("after rotation: client: %v; server: %v", x.client.err, x.server.err)
	}
	if got := x.client.cs.PeerCertificates[0].SerialNumber; got.Cmp(second.Cert.SerialNumber) != 0 {
		t.Errorf("new connection got serial %x, want the new %x (old %x)", got, second.Cert.SerialNumber, first.Cert.SerialNumber)
	}
	if err := echo(); err != nil {
		t.Errorf("the connection made before the rotation broke: %v", err)
	}
	if got := long.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(first.Cert.SerialNumber) != 0 {
		t.Errorf("old connection's serial %x, want %x", got, first.Cert.SerialNumber)
	}
	long.Close()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

// TestRootRotation walks a root rotation with no failed connection: trust
// old and new roots, move the certificates to the new root, then drop the
// old root, after which a certificate of the old root is refused.
func TestRootRotation(t *testing.T) {
	oldCA, newCA := testca.New(t, "a.example"), testca.New(t, "a.example")
	srvSrc := newMemSource(t, oldCA.Issue(t, serverID, testca.LeafOptions{}), oldCA)
	cliSrc := newMemSource(t, oldCA.Issue(t, clientID, testca.LeafOptions{}), oldCA)
	srv := startServer(t, ServerConfig(srvSrc, AuthorizeMemberOf(tdA)))
	cli := ClientConfig(cliSrc, AuthorizeID(mustID(serverID)))
	// Each step connects twice: the second connection resumes, so the
	// next step starts with a cached session on both sides.
	connect := func(step string) {
		for i := range 2 {
			x := srv.dial(t, cli)
			if x.client.err != nil || x.server.err != nil {
				t.Fatalf("%s, connection %d: client: %v; server: %v", step, i, x.client.err, x.server.err)
			}
			if i == 1 && !x.client.cs.DidResume {
				t.Fatalf("%s: the second connection did not resume", step)
			}
		}
	}
	connect("old root")
	srvSrc.setTrust(t, oldCA, newCA)
	cliSrc.setTrust(t, oldCA, newCA)
	connect("both roots trusted")
	srvSrc.setLeaf(t, newCA.Issue(t, serverID, testca.LeafOptions{}))
	connect("server moved to the new root, client still on the old one")
	cliSrc.setLeaf(t, newCA.Issue(t, clientID, testca.LeafOptions{}))
	connect("both moved")
	srvSrc.setTrust(t, newCA)
	cliSrc.setTrust(t, newCA)
	connect("old root dropped")

	stale := ClientConfig(newMemSource(t, oldCA.Issue(t, clientID, testca.LeafOptions{}), oldCA, newCA), AuthorizeMemberOf(tdA))
	x := srv.dial(t, stale)
	if want := "mtls: peer spiffe://a.example/ns/default/sa/client: certificate signed by an unknown authority: no chain to a root of the a.example trust bundle"; errText(x.server.err) != want {
		t.Errorf("client of the dropped root: server error\n got %v\nwant %s", x.server.err, want)
	}
}

// TestResumptionReverified: a resumed session is verified again against
// the current bundle, clock and authorizer, on both sides.
func TestResumptionReverified(t *testing.T) {
	t.Run("client drops the server's root", func(t *testing.T) {
		ca, other := testca.New(t, "a.example"), testca.New(t, "a.example")
		srv := startServer(t, ServerConfig(newMemSource(t, ca.Issue(t, serverID, testca.LeafOptions{}), ca), AuthorizeMemberOf(tdA)))
		cliSrc := newMemSource(t, ca.Issue(t, clientID, testca.LeafOptions{}), ca, other)
		cli := ClientConfig(cliSrc, AuthorizeMemberOf(tdA))
		resumed := recordResume(cli)
		srv.dial(t, cli)
		if x := srv.dial(t, cli); x.client.err != nil || !x.client.cs.DidResume {
			t.Fatalf("no resumption to start from: %v", x.client.err)
		}
		cliSrc.setTrust(t, other)
		x := srv.dial(t, cli)
		want := "mtls: peer spiffe://a.example/ns/default/sa/server: certificate signed by an unknown authority: no chain to a root of the a.example trust bundle"
		if resumed.Load() || errText(x.client.err) != want {
			t.Errorf("resumed %v (want a full handshake: the bundle changed), client error\n got %v\nwant %s", resumed.Load(), x.client.err, want)
		}
	})
	t.Run("client's authorizer changes", func(t *testing.T) {
		ca := testca.New(t, "a.example")
		srv := startServer(t, ServerConfig(newMemSource(t, ca.Issue(t, serverID, testca.LeafOptions{}), ca), AuthorizeMemberOf(tdA)))
		cliSrc := newMemSource(t, ca.Issue(t, clientID, testca.LeafOptions{}), ca)
		cache := tls.NewLRUClientSessionCache(4)
		srv.dial(t, ClientConfig(cliSrc, AuthorizeMemberOf(tdA), WithSessionCache(cache)))
		// Another destination's config sharing the cache must not accept
		// this server through its session.
		cli := ClientConfig(cliSrc, AuthorizeID(mustID("spiffe://a.example/ns/default/sa/db")), WithSessionCache(cache))
		resumed := recordResume(cli)
		x := srv.dial(t, cli)
		want := "mtls: peer spiffe://a.example/ns/default/sa/server: identity not accepted: want spiffe://a.example/ns/default/sa/db"
		if !resumed.Load() || errText(x.client.err) != want {
			t.Errorf("resumed %v, client error\n got %v\nwant %s", resumed.Load(), x.client.err, want)
		}
	})
	t.Run("server's authorizer changes", func(t *testing.T) {
		ca := testca.New(t, "a.example")
		var allowed atomic.Value
		allowed.Store(clientID)
		authz := func(id spiffeid.ID, _ [][]*x509.Certificate) error {
			if want := allowed.Load().(string); id.String() != want {
				return fmt.Errorf("want %s", want)
			}
			return nil
		}
		srvCfg := ServerConfig(newMemSource(t, ca.Issue(t, serverID, testca.LeafOptions{}), ca), authz)
		resumed := recordResume(srvCfg)
		srv := startServer(t, srvCfg)
		cli := ClientConfig(newMemSource(t, ca.Issue(t, clientID, testca.LeafOptions{}), ca), AuthorizeMemberOf(tdA))
		srv.dial(t, cli)
		allowed.Store("spiffe://a.example/ns/default/sa/admin")
		x := srv.dial(t, cli)
		want := "mtls: peer spiffe://a.example/ns/default/sa/client: identity not accepted: want spiffe://a.example/ns/default/sa/admin"
		if !resumed.Load() || errText(x.server.err) != want {
			t.Errorf("resumed %v, server error\n got %v\nwant %s", resumed.Load(), x.server.err, want)
		}
	})
	t.Run("server's bundle changes", func(t *testing.T) {
		// A root is added on the server only: the client still offers its
		// session, the server declines it, and a full handshake succeeds.
		ca, next := testca.New(t, "a.example"), testca.New(t, "a.example")
		srvSrc := newMemSource(t, ca.Issue(t, serverID, testca.LeafOptions{}), ca)
		srv := startServer(t, ServerConfig(srvSrc, AuthorizeMemberOf(tdA)))
		cli := ClientConfig(newMemSource(t, ca.Issue(t, clientID, testca.LeafOptions{}), ca), AuthorizeMemberOf(tdA))
		srv.dial(t, cli)
		if x := srv.dial(t, cli); !x.server.cs.DidResume {
			t.Fatal("no resumption to start from")
		}
		srvSrc.setTrust(t, ca, next)
		x := srv.dial(t, cli)
		if x.client.err != nil || x.server.err != nil || x.server.cs.DidResume {
			t.Errorf("want a full handshake; resumed %v, client: %v, server: %v", x.server.cs.DidResume, x.client.err, x.server.err)
		}
		if x := srv.dial(t, cli); !x.server.cs.DidResume {
			t.Error("the session of the full handshake does not resume")
		}
	})
	t.Run("server's certificate about to expire", func(t *testing.T) {
		// A session is not offered within resumeMargin of its server
		// certificate's expiry: the full handshake gets the renewed one,
		// instead of a resumption refused a round trip later.
		ca := testca.New(t, "a.example")
		soon := ca.Issue(t, serverID, testca.LeafOptions{NotAfter: time.Now().Add(resumeMargin / 2)})
		srvSrc := newMemSource(t, soon, ca)
		srv := startServer(t, ServerConfig(srvSrc, AuthorizeMemberOf(tdA)))
		cli := ClientConfig(newMemSource(t, ca.Issue(t, clientID, testca.LeafOptions{}), ca), AuthorizeMemberOf(tdA))
		srv.dial(t, cli)
		renewed := ca.Issue(t, serverID, testca.LeafOptions{})
		srvSrc.setLeaf(t, renewed)
		x := srv.dial(t, cli)
		if x.client.err != nil || x.client.cs.DidResume || x.client.cs.PeerCertificates[0].SerialNumber.Cmp(renewed.Cert.SerialNumber) != 0 {
			t.Errorf("want a full handshake with the renewed certificate; resumed %v, err %v", x.client.cs.DidResume, x.client.err)
		}
	})
	t.Run("server's certificate expires", func(t *testing.T) {
		ca := testca.New(t, "a.example")
		start := time.Now().Truncate(time.Second)
		var now fakeClock
		now.set(start)
		clock := WithClock(now.now)
		short := testca.LeafOptions{NotBefore: start.Add(-time.Minute), NotAfter: start.Add(time.Minute)}
		srv := startServer(t, ServerConfig(newMemSource(t, ca.Issue(t, serverID, short), ca), AuthorizeMemberOf(tdA)))
		cli := ClientConfig(newMemSource(t, ca.Issue(t, clientID, testca.LeafOptions{}), ca), AuthorizeMemberOf(tdA), clock)
		srv.dial(t, cli)
		now.set(start.Add(2 * time.Minute))
		x := srv.dial(t, cli)
		want := fmt.Sprintf("mtls: peer %s: certificate expired: expired at %s, now is %s", serverID,
			short.NotAfter.UTC().Format(time.RFC3339), now.now().UTC().Format(time.RFC3339))
		if errText(x.client.err) != want || Reason(x.client.err) != "expired" {
			t.Errorf("client error\n got %v\nwant %s", x.client.err, want)
		}
	})
	t.Run("client's certificate expires", func(t *testing.T) {
		ca := testca.New(t, "a.example")
		start := time.Now().Truncate(time.Second)
		var now fakeClock
		now.set(start)
		clock := WithClock(now.now)
		short := testca.LeafOptions{NotBefore: start.Add(-time.Minute), NotAfter: start.Add(time.Minute)}
		srv := startServer(t, ServerConfig(newMemSource(t, ca.Issue(t, serverID, testca.LeafOptions{}), ca), AuthorizeMemberOf(tdA), clock))
		cli := ClientConfig(newMemSource(t, ca.Issue(t, clientID, short), ca), AuthorizeMemberOf(tdA))
		srv.dial(t, cli)
		now.set(start.Add(2 * time.Minute))
		x := srv.dial(t, cli)
		want := fmt.Sprintf("mtls: peer %s: certificate expired: expired at %s, now is %s", clientID,
			short.NotAfter.UTC().Format(time.RFC3339), now.now().UTC().Format(time.RFC3339))
		if errText(x.server.err) != want || Reason(x.server.err) != "expired" {
			t.Errorf("server error\n got %v\nwant %s", x.server.err, want)
		}
	})
}

func TestPeerID(t *testing.T) {
	ca := testca.New(t, "a.example")
	leaf := ca.Issue(t, clientID, testca.LeafOptions{})
	for _, tc := range []struct {
		name string
		cs   tls.ConnectionState
		want string
	}{
		{"handshake not complete", tls.ConnectionState{}, "mtls: peer ID: the handshake is not complete"},
		{"no peer certificate", tls.ConnectionState{HandshakeComplete: true}, "mtls: peer ID: no certificate"},
		{"peer certificate", tls.ConnectionState{HandshakeComplete: true, PeerCertificates: leaf.Chain}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := PeerID(tc.cs)
			if tc.want != "" {
				if errText(err) != tc.want {
					t.Errorf("error\n got %v\nwant %s", err, tc.want)
				}
				return
			}
			if err != nil || id.String() != clientID {
				t.Errorf("PeerID = %v, %v; want %s", id, err, clientID)
			}
		})
	}
}

func TestAuthorizers(t *testing.T) {
	web, db := mustID("spiffe://a.example/ns/default/sa/web"), mustID("spiffe://a.example/ns/default/sa/db")
	other := mustID("spiffe://b.example/ns/default/sa/web")
	for _, tc := range []struct {
		name  string
		authz Authorizer
		id    spiffeid.ID
		want  string
	}{
		{"member", AuthorizeMemberOf(tdA), web, "<nil>"},
		{"not a member", AuthorizeMemberOf(tdA), other, "trust domain not accepted: want trust domain a.example"},
		{"the ID", AuthorizeID(web), web, "<nil>"},
		{"one of the IDs", AuthorizeID(db, web), web, "<nil>"},
		{"not the ID", AuthorizeID(db), web, "identity not accepted: want spiffe://a.example/ns/default/sa/db"},
		{"none of the IDs", AuthorizeID(db, other), web, "identity not accepted: want one of spiffe://a.example/ns/default/sa/db, spiffe://b.example/ns/default/sa/web"},
		{"no IDs", AuthorizeID(), web, "identity not accepted: no identity is accepted"},
		{"any", AuthorizeAny(), other, "<nil>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := errText(tc.authz(tc.id, nil)); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{fmt.Errorf("x: %w", ErrExpired), "expired"},
		{fmt.Errorf("x: %w", ErrNotYetValid), "not_yet_valid"},
		{fmt.Errorf("x: %w", ErrUnknownCA), "unknown_ca"},
		{fmt.Errorf("x: %w", ErrWrongTrustDomain), "wrong_trust_domain"},
		{fmt.Errorf("x: %w", ErrWrongIdentity), "wrong_identity"},
		{fmt.Errorf("x: %w", ErrNoCertificate), "no_certificate"},
		{fmt.Errorf("x: %w", ErrBadCertificate), "other"},
		{x509.UnknownAuthorityError{}, "unknown_ca"},
		{x509.CertificateInvalidError{Reason: x509.Expired, Detail: "current time 2026-01-02T00:00:00Z is after 2026-01-01T00:00:00Z"}, "expired"},
		{x509.CertificateInvalidError{Reason: x509.Expired, Detail: "current time 2026-01-01T00:00:00Z is before 2026-01-02T00:00:00Z"}, "not_yet_valid"},
		{errors.New("tls: server selected unsupported protocol version 303"), "not_tls13"},
		{errors.New("tls: first record does not look like a TLS handshake"), "other"},
		{errors.New("EOF"), "other"},
	} {
		if got := Reason(tc.err); got != tc.want {
			t.Errorf("Reason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
