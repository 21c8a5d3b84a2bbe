package e2e

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"meshgate/topology"
)

// caPort is where the e2e CA server listens in its pod.
const caPort = 15012

// caServer is "meshgate ca serve" running in a pod of its own.
type caServer struct {
	pod    *topology.Pod
	tokens string // the tokens file
	proc   *topology.Process
}

// start runs the CA server from dir with the given extra flags, replacing
// the one running (a restart, as a rollout of a new CA config would do).
func (c *caServer) start(t *testing.T, dir string, extra ...string) {
	t.Helper()
	if c.proc != nil {
		if err := c.proc.Stop(10 * time.Second); err != nil {
			t.Fatalf("ca serve: %v\n%s", err, c.proc.Output())
		}
	}
	args := append([]string{bin, "ca", "serve", "--dir", dir, "--listen", hostPort(c.pod.IPv4, caPort), "--ttl", "30s", "--tokens", c.tokens}, extra...)
	p, err := c.pod.Start(args, topology.ProcOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.proc = p
	t.Cleanup(func() { p.Stop(10 * time.Second) })
	waitListening(t, c.pod, netip.AddrPortFrom(c.pod.IPv4, caPort), p)
}

// caClientOpts enrolls pod with certificates from the CA server: a
// bootstrap token of its own, and the CA's root to verify the server.
func caClientOpts(t *testing.T, cs *caServer, caDir string, pod *topology.Pod, mesh ...*topology.Pod) enrollOpts {
	t.Helper()
	secret := make([]byte, 16)
	rand.Read(secret)
	token := hex.EncodeToString(secret)
	f, err := os.OpenFile(cs.tokens, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "%s %s\n", spiffeFor(pod), token)
	f.Close()

	dir := filepath.Join(publicTempDir(t), "ca-client-"+pod.Name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(filepath.Join(caDir, "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "token"), []byte(token+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "root.pem"), root, 0o644)
	chownSidecar(t, dir)

	return enrollOpts{proxyArgs: append([]string{"--ca-server", hostPort(cs.pod.IPv4, caPort), "--id", spiffeFor(pod),
		"--ca-token-file", filepath.Join(dir, "token"), "--ca-root", filepath.Join(dir, "root.pem")}, meshArgs("strict", mesh...)...)}
}

// TestMTLSCAClientUnderCapture: a sidecar started after its pod's rules
// (as an init container orders them) gets its first certificate from the
// CA server in another pod, with either exemption alone: its connection
// to the CA is not captured back to it, which serves nothing before it
// has a certificate.
func TestMTLSCAClientUnderCapture(t *testing.T) {
	needRoot(t)
	eachExemption(t, func(t *testing.T, e exemption) {
		_, pods := newLabWith(t, "a", "ca")
		a, caPod := pods[0], pods[1]
		caDir := meshCA(t)
		cs := &caServer{pod: caPod, tokens: filepath.Join(t.TempDir(), "tokens")}
		os.WriteFile(cs.tokens, nil, 0o600)
		o := e.with(caClientOpts(t, cs, caDir, a, a))
		o.rulesFirst = true
		o.proxyArgs = append(o.proxyArgs, "--ca-wait", "5s")
		cs.start(t, caDir)
		sa := enroll(t, a, o)
		if st := sa.certState(t); st.serial == "" || st.rootKeyID != rootKeyID(t, caDir) {
			t.Errorf("a's sidecar presents %+v, want a certificate from the CA server", st)
		}
	})
}

// rootKeyID is the subject key ID of the CA's root, as the sidecar's
// certificate metric labels the root its certificate chains to.
func rootKeyID(t *testing.T, caDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(caDir, "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s/root.pem holds no PEM", caDir)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(c.SubjectKeyId)
}

// certState is what a sidecar's metrics say of the certificate it
// presents and the bundle it trusts.
type certState struct {
	serial, rootKeyID string
	bundleRoots       int
}

func (s *sidecar) certState(t *testing.T) certState {
	t.Helper()
	var st certState
	for k, v := range s.metrics(t) {
		switch {
		case strings.HasPrefix(k, "meshgate_tls_certificate_expiry_timestamp_seconds{"):
			for _, l := range strings.Split(strings.Trim(strings.TrimPrefix(k, "meshgate_tls_certificate_expiry_timestamp_seconds"), "{}"), ",") {
				name, val, _ := strings.Cut(l, "=")
				switch name {
				case "serial":
					st.serial = val
				case "root_key_id":
					st.rootKeyID = val
				}
			}
		case strings.HasPrefix(k, "meshgate_tls_trust_bundle_roots{"):
			st.bundleRoots = int(v)
		}
	}
	return st
}

// renewals counts the certificates the sidecar got from the CA server
// after its first.
func (s *sidecar) renewals() int {
	return strings.Count(s.proc.Output(), `"workload certificate issued by the CA server"`) - 1
}

// traffic runs requests from a to b without pause until stopped: a new
// mesh connection per request (each a handshake, full or resumed), and
// a round trip on one long-lived stream; every failure is counted.
type traffic struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       chan struct{}
	done       sync.WaitGroup
}

func startTraffic(t *testing.T, a, b *topology.Pod) *traffic {
	t.Helper()
	tr := &traffic{stop: make(chan struct{})}
	fail := func(err error) {
		tr.failed.Add(1)
		tr.mu.Lock()
		defer tr.mu.Unlock()
		if len(tr.errs) < 10 {
			tr.errs = append(tr.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
		}
	}
	stream, err := a.Dial(ctxFor(t, 10*time.Second), "tcp", hostPort(b.IPv4, 9000))
	if err != nil {
		t.Fatal(err)
	}
	tr.done.Go(func() {
		defer stream.Close()
		buf := make([]byte, 64)
		streamUp := true
		for i := 0; ; i++ {
			select {
			case <-tr.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			// One request on the long-lived stream, while it lasts.
			msg := []byte(fmt.Sprintf("request %08d ..................................................", i))[:64]
			if streamUp {
				stream.SetDeadline(time.Now().Add(5 * time.Second))
				_, err := stream.Write(msg)
				if err == nil {
					_, err = io.ReadFull(stream, buf)
				}
				if err != nil || string(buf) != string(msg) {
					fail(fmt.Errorf("stream request %d: %q, %v", i, buf, err))
					streamUp = false
				} else {
					tr.ok.Add(1)
				}
			}
			// One request on a connection of its own.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := a.Echo(ctx, hostPort(b.IPv4, 9000), msg)
			cancel()
			if err != nil {
				fail(fmt.Errorf("connection %d: %w", i, err))
				continue
			}
			tr.ok.Add(1)
		}
	})
	t.Cleanup(tr.halt)
	return tr
}

// halt stops the traffic and waits for the last request.
func (tr *traffic) halt() {
	select {
	case <-tr.stop:
	default:
		close(tr.stop)
	}
	tr.done.Wait()
}

func (tr *traffic) check(t *testing.T, phase string) {
	t.Helper()
	if n := tr.failed.Load(); n > 0 {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		t.Fatalf("%s: %d of %d requests failed; first errors:\n%s", phase, n, n+tr.ok.Load(), strings.Join(tr.errs, "\n"))
	}
	t.Logf("%s: %d requests, 0 failed", phase, tr.ok.Load())
}

// TestMTLSCAServeRenewsAndRotatesRoot: two sidecars get 30 s certificates
// from "meshgate ca serve" and renew them several times under continuous
// traffic; then the root is rotated in steps (old root + new root in the
// bundle, certificates from the new CA, new root only), and no request
// fails throughout.
func TestMTLSCAServeRenewsAndRotatesRoot(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("takes two minutes of renewals")
	}
	_, pods := newLabWith(t, "a", "b", "ca")
	a, b, caPod := pods[0], pods[1], pods[2]
	startApp(t, b)
	oldCA := meshCA(t)
	newCA := filepath.Join(publicTempDir(t), "ca2")
	mustMeshgate(t, "ca", "init", "--dir", newCA, "--trust-domain", meshTD)
	oldRoot, newRoot := rootKeyID(t, oldCA), rootKeyID(t, newCA)

	cs := &caServer{pod: caPod, tokens: filepath.Join(t.TempDir(), "tokens")}
	os.WriteFile(cs.tokens, nil, 0o600)
	oa, ob := caClientOpts(t, cs, oldCA, a, a, b), caClientOpts(t, cs, oldCA, b, a, b)
	cs.start(t, oldCA)
	sa, sb := enroll(t, a, oa), enroll(t, b, ob)
	sidecars := []*sidecar{sa, sb}
	for _, s := range sidecars {
		if st := s.certState(t); st.rootKeyID != oldRoot || st.bundleRoots != 1 {
			t.Fatalf("%s starts with %+v, want a certificate of the old root (%s) and 1 root", s.pod.Name, st, oldRoot)
		}
	}
	tr := startTraffic(t, a, b)

	// Renewals: each sidecar renews at about 15 s; wait for three.
	waitFor(t, "three renewals on each sidecar", 90*time.Second, func() bool {
		return sa.renewals() >= 3 && sb.renewals() >= 3
	})
	tr.check(t, "renewals")
	for _, s := range sidecars {
		t.Logf("%s renewed %d times; now serial %s", s.pod.Name, s.renewals(), s.certState(t).serial)
	}

	// Root rotation, step 1: the old CA hands out both roots.
	cs.start(t, oldCA, "--also-trust", filepath.Join(newCA, "root.pem"))
	waitFor(t, "both roots in every bundle", 60*time.Second, func() bool {
		return sa.certState(t).bundleRoots == 2 && sb.certState(t).bundleRoots == 2
	})
	tr.check(t, "rotation step 1 (old and new root trusted)")

	// Step 2: the new CA issues, still trusting the old root, so sidecars
	// holding old certificates renew and talk to those holding new ones.
	cs.start(t, newCA, "--also-trust", filepath.Join(oldCA, "root.pem"))
	waitFor(t, "certificates of the new root on every sidecar", 60*time.Second, func() bool {
		return sa.certState(t).rootKeyID == newRoot && sb.certState(t).rootKeyID == newRoot
	})
	tr.check(t, "rotation step 2 (certificates from the new CA)")

	// Step 3: the old root is dropped.
	cs.start(t, newCA)
	waitFor(t, "the old root gone from every bundle", 60*time.Second, func() bool {
		return sa.certState(t).bundleRoots == 1 && sb.certState(t).bundleRoots == 1
	})
	time.Sleep(2 * time.Second) // traffic under the new root alone
	tr.halt()
	tr.check(t, "rotation step 3 (new root only)")
	for _, s := range sidecars {
		if st := s.certState(t); st.rootKeyID != newRoot || st.bundleRoots != 1 {
			t.Errorf("%s ends with %+v, want a certificate of the new root (%s) and 1 root", s.pod.Name, st, newRoot)
		}
		if n := s.tlsHandshakes(t, "result=failed"); n != 0 {
			t.Errorf("%s: %v failed handshakes", s.pod.Name, n)
		}
	}
	t.Logf("handshakes on b: %v full, %v resumed", sb.tlsHandshakes(t, "direction=inbound", "result=ok", "resumed=false"),
		sb.tlsHandshakes(t, "direction=inbound", "result=ok", "resumed=true"))
	// The audit log names every certificate issued.
	if n := strings.Count(cs.proc.Output(), spiffeFor(a)); n < 1 {
		t.Errorf("the CA server's log does not name %s:\n%s", spiffeFor(a), tail(cs.proc.Output(), 10))
	}
}
