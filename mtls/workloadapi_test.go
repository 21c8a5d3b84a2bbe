package mtls

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"meshgate/internal/testca"
)

// fakeWorkloadAPI is a SPIFFE Workload API server (the X.509 part, as a
// SPIRE agent serves it) whose answer a test sets and changes.
type fakeWorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	mu      sync.Mutex
	current *workload.X509SVIDResponse
	changed chan struct{} // closed when current is replaced
}

// startFakeWorkloadAPI serves on a unix socket in a temporary directory
// and returns the server and its address.
func startFakeWorkloadAPI(t *testing.T, first *workload.X509SVIDResponse) (*fakeWorkloadAPI, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return startFakeWorkloadAPIOn(t, ln, first), "unix://" + sock
}

// startFakeWorkloadAPIOn serves on ln.
func startFakeWorkloadAPIOn(t *testing.T, ln net.Listener, first *workload.X509SVIDResponse) *fakeWorkloadAPI {
	t.Helper()
	f := &fakeWorkloadAPI{current: first, changed: make(chan struct{})}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, f)
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	t.Cleanup(func() {
		srv.Stop()
		wg.Wait()
	})
	return f
}

// push replaces the answer; every open stream sends it at once.
func (f *fakeWorkloadAPI) push(resp *workload.X509SVIDResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.current = resp
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeWorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	// The Workload API requires this header of every client (SPIFFE
	// Workload Endpoint spec, section 3), so that a browser or a
	// confused proxy cannot call it.
	md, _ := metadata.FromIncomingContext(stream.Context())
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	for {
		f.mu.Lock()
		resp, changed := f.current, f.changed
		f.mu.Unlock()
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// svidResponse is the Workload API's answer for leaf, with the roots of
// its own trust domain, and federated bundles of other trust domains.
func svidResponse(t *testing.T, leaf *testca.Leaf, own *testca.CA, federated ...*testca.CA) *workload.X509SVIDResponse {
	t.Helper()
	key, err := x509.MarshalPKCS8PrivateKey(leaf.Key)
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, c := range leaf.Chain {
		chain = append(chain, c.Raw...)
	}
	resp := &workload.X509SVIDResponse{
		Svids: []*workload.X509SVID{{
			SpiffeId:    leaf.Cert.URIs[0].String(),
			X509Svid:    chain,
			X509SvidKey: key,
			Bundle:      own.Root.Raw,
		}},
		FederatedBundles: map[string][]byte{},
	}
	for _, ca := range federated {
		resp.FederatedBundles["spiffe://"+ca.TrustDomain] = ca.Root.Raw
	}
	return resp
}

func TestWorkloadAPISource(t *testing.T) {
	caA, caB := testca.New(t, "a.example"), testca.New(t, "b.example")
	first := caA.Issue(t, serverID, testca.LeafOptions{})
	api, addr := startFakeWorkloadAPI(t, svidResponse(t, first, caA, caB))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	log, _ := observed()
	src, err := NewWorkloadAPISource(ctx, addr, 0, log)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	svid, err := src.GetX509SVID()
	if err != nil || svid.ID.String() != serverID || svid.Certificates[0].SerialNumber.Cmp(first.Cert.SerialNumber) != 0 {
		t.Fatalf("first SVID: %v, %v", svid, err)
	}
	for _, ca := range []*testca.CA{caA, caB} {
		b, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(ca.TrustDomain))
		if err != nil || !b.X509Authorities()[0].Equal(ca.Root) {
			t.Errorf("bundle of %s: %v", ca.TrustDomain, err)
		}
	}

	// As a Source of a server config.
	srv := startServer(t, ServerConfig(src, AuthorizeMemberOf(tdA)))
	cliSrc := newMemSource(t, caA.Issue(t, clientID, testca.LeafOptions{}), caA)
	if x := srv.dial(t, ClientConfig(cliSrc, AuthorizeID(mustID(serverID)))); x.client.err != nil || x.server.err != nil {
		t.Fatalf("handshake: client: %v; server: %v", x.client.err, x.server.err)
	}

	// The agent rotates the certificate: the next handshake presents it.
	second := caA.Issue(t, serverID, testca.LeafOptions{})
	api.push(svidResponse(t, second, caA, caB))
	waitFor(t, "the pushed SVID", func() bool {
		s := src.CurrentSVID()
		return s != nil && s.Certificates[0].SerialNumber.Cmp(second.Cert.SerialNumber) == 0
	})
	x := srv.dial(t, ClientConfig(cliSrc, AuthorizeID(mustID(serverID))))
	if x.client.err != nil || x.client.cs.PeerCertificates[0].SerialNumber.Cmp(second.Cert.SerialNumber) != 0 {
		t.Errorf("after the push: %v, serial %x; want %x", x.client.err, x.client.cs.PeerCertificates[0].SerialNumber, second.Cert.SerialNumber)
	}

	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if src.CurrentSVID() != nil {
		t.Error("CurrentSVID after Close")
	}
}

func TestWorkloadAPISourceRejects(t *testing.T) {
	for _, tc := range []struct {
		name, addr string
		unsetEnv   bool
		want       string
	}{
		{"not a socket URI", "/run/spire/agent.sock", false,
			`mtls: workload API address "/run/spire/agent.sock": workload endpoint socket URI must have a "tcp" or "unix" scheme`},
		{"tcp with a host name", "tcp://localhost:8081", false,
			`mtls: workload API address "tcp://localhost:8081": workload endpoint tcp socket URI host component must be an IP:port`},
		{"no address at all", "", true,
			"mtls: workload API: no address given and SPIFFE_ENDPOINT_SOCKET is not set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.unsetEnv {
				unsetenv(t, "SPIFFE_ENDPOINT_SOCKET")
			}
			src, err := NewWorkloadAPISource(context.Background(), tc.addr, 0, nil)
			if src != nil {
				src.Close()
			}
			if errText(err) != tc.want {
				t.Errorf("error\n got %v\nwant %s", err, tc.want)
			}
		})
	}
	t.Run("nobody listening", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		addr := "unix://" + filepath.Join(t.TempDir(), "none.sock")
		src, err := NewWorkloadAPISource(ctx, addr, 0, nil)
		if src != nil {
			src.Close()
		}
		if want := "mtls: workload API " + addr + ": context deadline exceeded"; errText(err) != want || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error\n got %v\nwant %s", err, want)
		}
	})
}

// unsetenv unsets an environment variable for the rest of the test.
func unsetenv(t *testing.T, key string) {
	t.Setenv(key, "") // restores the old value at the end of the test
	os.Unsetenv(key)
}
