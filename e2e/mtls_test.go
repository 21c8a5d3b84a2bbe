package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshgate/internal/testca"
	"meshgate/topology"
)

// The trust domain of the e2e mesh.
const meshTD = "mesh.test"

func spiffeFor(pod *topology.Pod) string { return spiffeForName(pod.Name) }

// spiffeForName is the SPIFFE ID the tests give a workload called name.
func spiffeForName(name string) string { return "spiffe://" + meshTD + "/ns/default/sa/" + name }

// meshCA makes a CA with "meshgate ca init" in a directory of its own.
func meshCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(publicTempDir(t), "ca")
	mustMeshgate(t, "ca", "init", "--dir", dir, "--trust-domain", meshTD)
	return dir
}

// issueFor issues pod's workload certificate with "meshgate ca issue" into
// a directory the sidecar (UID 1337) can read, as a secret volume would be.
func issueFor(t *testing.T, caDir string, pod *topology.Pod, extra ...string) string {
	t.Helper()
	return certsFor(t, caDir, pod.Name, spiffeFor(pod), extra...)
}

// certsFor issues id's certificate with "meshgate ca issue" into a
// directory the sidecar (UID 1337) can read, as a secret volume would be.
func certsFor(t *testing.T, caDir, name, id string, extra ...string) string {
	t.Helper()
	out := filepath.Join(publicTempDir(t), "certs-"+name)
	mustMeshgate(t, append([]string{"ca", "issue", "--dir", caDir, "--id", id, "--out", out}, extra...)...)
	chownSidecar(t, out)
	return out
}

// chownSidecar gives dir and its files to the sidecar's UID.
func chownSidecar(t *testing.T, dir string) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, 1337, 1337)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// meshOpts enrolls a pod with mTLS: its certificates, the mode, and the
// lab's subnets as the mesh.
func meshOpts(certDir, mode string, pods ...*topology.Pod) enrollOpts {
	return enrollOpts{proxyArgs: append([]string{"--cert-dir", certDir}, meshArgs(mode, pods...)...)}
}

// meshArgs are the proxy flags of mode with pods as the mesh.
func meshArgs(mode string, pods ...*topology.Pod) []string {
	var cidrs []string
	for _, p := range pods {
		cidrs = append(cidrs, p.IPv4.String()+"/32", p.IPv6.String()+"/128")
	}
	return []string{"--mtls-mode", mode, "--mesh-cidrs", strings.Join(cidrs, ",")}
}

// tlsHandshakes sums the sidecar's handshake counter over the samples whose
// labels contain every one of want (e.g. "result=ok", "direction=inbound").
func (s *sidecar) tlsHandshakes(t *testing.T, want ...string) float64 {
	t.Helper()
	return s.metrics(t).Sum("meshgate_tls_handshakes_total", want...)
}

// TestMTLSOnTheWire: between two enrolled pods, the link carries TLS 1.3
// records with the meshgate ALPN and no plaintext of request or response.
func TestMTLSOnTheWire(t *testing.T) {
	needRoot(t)
	lab, pods := newLabWith(t, "a", "b")
	a, b := pods[0], pods[1]
	startApp(t, b)
	ca := meshCA(t)
	sa := enroll(t, a, meshOpts(issueFor(t, ca, a), "strict", a, b))
	sb := enroll(t, b, meshOpts(issueFor(t, ca, b), "strict", a, b))

	capt, err := lab.Capture(b, "tcp port 9000 or tcp port 8080", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	capt.DecodeAs = []string{"tcp.port==8080,tls", "tcp.port==9000,tls"}
	secret := make([]byte, 16)
	rand.Read(secret)
	marker := []byte("meshgate-secret-" + hex.EncodeToString(secret))
	msg := []byte(strings.Repeat(string(marker)+" ", 200))
	echo(t, a, hostPort(b.IPv4, 9000), msg)
	curl(t, a, "-H", "X-Marker: "+string(marker), url(b.IPv4, 8080, "/"))
	if err := capt.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 30*time.Second)

	payload, err := capt.Fields(ctx, "tcp.len > 0", "tcp.payload")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(payload) == "" {
		t.Fatal("the capture holds no payload at all")
	}
	if strings.Contains(strings.ReplaceAll(payload, ":", ""), hex.EncodeToString(marker)[:32]) {
		t.Error("plaintext of the request or the echo crossed the wire")
	}
	hello, err := capt.Fields(ctx, "tls.handshake.type == 1", "tls.handshake.extensions.supported_version", "tls.handshake.extensions_alpn_str")
	if err != nil {
		t.Fatal(err)
	}
	// The echo's connection and, for curl's, the one dialed while its
	// first bytes were detected, which then carried its request from the
	// HTTP/1 pool: both meshgate/tcp.
	if n := strings.Count(hello, "\n"); n != 2 {
		t.Errorf("want 2 ClientHellos (echo; HTTP: detection's dial, reused by the pool), got %d:\n%s", n, hello)
	}
	for _, line := range strings.Split(strings.TrimSpace(hello), "\n") {
		if !strings.Contains(line, "0x0304") || !(strings.HasSuffix(line, "meshgate/tcp") || strings.HasSuffix(line, "meshgate/http1") || strings.HasSuffix(line, "meshgate/h2")) {
			t.Errorf("ClientHello does not offer TLS 1.3 and one mesh ALPN: %q", line)
		}
	}
	server, err := capt.Fields(ctx, "tls.handshake.type == 2", "tls.handshake.extensions.supported_version")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(server), "\n") {
		if strings.TrimSpace(line) != "0x0304" {
			t.Errorf("ServerHello did not choose TLS 1.3: %q", line)
		}
	}
	records, err := capt.Fields(ctx, "tls.record.opaque_type == 23 || tls.record.content_type == 23", "frame.number")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(records, "\n") < 4 {
		t.Errorf("too few TLS application-data records on the wire: %q", records)
	}
	// Both sides verified each other.
	if n := sa.tlsHandshakes(t, "direction=outbound", "result=ok", "peer_identity="+spiffeFor(b)); n != 2 {
		t.Errorf("a's sidecar: %v outbound handshakes with %s, want 2", n, spiffeFor(b))
	}
	if n := sb.tlsHandshakes(t, "direction=inbound", "result=ok", "peer_identity="+spiffeFor(a)); n != 2 {
		t.Errorf("b's sidecar: %v inbound handshakes with %s, want 2", n, spiffeFor(a))
	}
}

// TestMTLSModes: strict refuses plaintext from a pod without a sidecar;
// permissive accepts it, and still speaks mTLS with enrolled pods.
func TestMTLSModes(t *testing.T) {
	needRoot(t)
	for _, mode := range []string{"strict", "permissive"} {
		t.Run(mode, func(t *testing.T) {
			_, pods := newLabWith(t, "a", "b", "plain")
			a, b, plain := pods[0], pods[1], pods[2]
			startApp(t, b)
			ca := meshCA(t)
			enroll(t, a, meshOpts(issueFor(t, ca, a), "strict", a, b))
			sb := enroll(t, b, meshOpts(issueFor(t, ca, b), mode, a, b))

			curl(t, a, url(b.IPv4, 8080, "/")) // mesh to mesh: always
			_, err := plain.Run(ctxFor(t, 20*time.Second), "curl", "-sS", "--fail", "--max-time", "5", url(b.IPv4, 8080, "/"))
			switch {
			case mode == "strict" && err == nil:
				t.Error("strict: plaintext from a pod without a sidecar was accepted")
			case mode == "permissive" && err != nil:
				t.Errorf("permissive: plaintext refused: %v", err)
			}
			if mode == "strict" {
				// The line is written as the refused connection closes,
				// which can be a moment after curl saw it refused.
				sb.waitOutput(t, "plaintext refused", "strict refusal not explained in the log")
			}
			// From a: the connection dialed while curl's first bytes were
			// detected, which then carried its request from the pool.
			if n := sb.tlsHandshakes(t, "direction=inbound", "result=ok", "peer_identity="+spiffeFor(a)); n != 1 {
				t.Errorf("b: %v inbound mTLS handshakes from a, want 1", n)
			}
			if n := sb.tlsHandshakes(t, "direction=inbound", "result=failed"); n != 0 {
				t.Errorf("b: %v failed inbound handshakes", n)
			}
		})
	}
}

// expiresSoon is the life left in the "expired" case's certificate when
// its sidecar starts.
const expiresSoon = 3 * time.Second

// TestMTLSRefusesBadPeers: a server presenting a certificate of another
// trust domain, an expired one, or a valid one of the wrong identity is
// refused by the client sidecar, with the reason in its log and metric.
func TestMTLSRefusesBadPeers(t *testing.T) {
	needRoot(t)
	good := testca.New(t, meshTD)
	other := testca.New(t, "other.test")
	rogue := testca.New(t, meshTD) // claims our trust domain; nobody trusts it
	cases := []struct {
		name   string
		leaf   func(b *topology.Pod) *testca.Leaf
		reason string
	}{
		{"other-trust-domain", func(b *topology.Pod) *testca.Leaf {
			return other.Issue(t, "spiffe://other.test/ns/default/sa/b", testca.LeafOptions{})
		}, "wrong_trust_domain"},
		{"unknown-ca", func(b *topology.Pod) *testca.Leaf {
			return rogue.Issue(t, spiffeFor(b), testca.LeafOptions{})
		}, "unknown_ca"},
		// The sidecar refuses to start on an expired certificate, so b's
		// expires while it runs (see expiresSoon below).
		{"expired", func(b *topology.Pod) *testca.Leaf {
			return good.Issue(t, spiffeFor(b), testca.LeafOptions{NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(expiresSoon)})
		}, "expired"},
		{"wrong-identity", func(b *topology.Pod) *testca.Leaf {
			return good.Issue(t, "spiffe://"+meshTD+"/ns/default/sa/impostor", testca.LeafOptions{})
		}, "wrong_identity"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, pods := newLabWith(t, "a", "b")
			a, b := pods[0], pods[1]
			startApp(t, b)
			aDir, bDir := publicTempDir(t), publicTempDir(t)
			good.Issue(t, spiffeFor(a), testca.LeafOptions{}).WriteDir(t, aDir, good)
			// b trusts every root, so only a's own checks can refuse.
			tc.leaf(b).WriteDir(t, bDir, good, other, rogue)
			chownSidecar(t, aDir)
			chownSidecar(t, bDir)
			ao := meshOpts(aDir, "strict", a, b)
			ao.proxyConfig = fmt.Sprintf("mtls:\n  destinations:\n  - cidr: %s/32\n    identity: %s\n", b.IPv4, spiffeFor(b))
			sa := enroll(t, a, ao)
			enroll(t, b, meshOpts(bDir, "permissive", a, b))
			if tc.reason == "expired" {
				time.Sleep(expiresSoon + time.Second) // certificates have whole-second validity
			}

			_, err := a.Run(ctxFor(t, 20*time.Second), "curl", "-sS", "--fail", "--max-time", "5", url(b.IPv4, 8080, "/"))
			if err == nil {
				t.Fatalf("a reached b although b presents a bad certificate (%s)", tc.name)
			}
			if n := sa.tlsHandshakes(t, "direction=outbound", "result=failed", "reason="+tc.reason); n < 1 {
				t.Errorf("no failed outbound handshake with reason %s in a's metrics", tc.reason)
			}
			// The line is written as the refused connection closes,
			// which can be a moment after curl saw it refused.
			sa.waitOutput(t, tc.reason, "a's log does not name the reason "+tc.reason)
		})
	}
}

// TestMTLSRotationKeepsConnections: replacing a sidecar's certificate files
// while a stream runs drops nothing, and the next connection is served
// with the new certificate (read by openssl from a pod outside the mesh).
func TestMTLSRotationKeepsConnections(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	_, pods := newLabWith(t, "a", "b", "probe")
	a, b, probe := pods[0], pods[1], pods[2]
	startApp(t, b)
	ca := meshCA(t)
	bDir := issueFor(t, ca, b)
	enroll(t, a, meshOpts(issueFor(t, ca, a), "strict", a, b))
	enroll(t, b, meshOpts(bDir, "strict", a, b))
	probeDir := issueFor(t, ca, probe)
	before := servedSerial(t, probe, b, probeDir)

	// A stream through the mesh that runs across the rotation.
	ctx := ctxFor(t, 30*time.Second)
	c, err := a.Dial(ctx, "tcp", hostPort(b.IPv4, 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	roundTrip := func(i int) {
		t.Helper()
		msg := []byte(fmt.Sprintf("message %03d through a rotating mesh......................", i))[:64]
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("stream write %d: %v", i, err)
		}
		if _, err := readFull(c, buf); err != nil || string(buf) != string(msg) {
			t.Fatalf("stream read %d: %q, %v", i, buf, err)
		}
	}
	for i := 0; i < 10; i++ {
		roundTrip(i)
	}
	// Rotate: a new certificate for b, written the way a secret volume
	// update lands (new files renamed over the old ones).
	next := filepath.Join(publicTempDir(t), "next")
	mustMeshgate(t, "ca", "issue", "--dir", ca, "--id", spiffeFor(b), "--out", next)
	chownSidecar(t, next)
	for _, f := range []string{"key.pem", "cert.pem", "bundle.pem"} {
		if err := os.Rename(filepath.Join(next, f), filepath.Join(bDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	// The stream goes on while b takes up its new certificate (when the
	// file change is seen, which a busy machine can delay), and after.
	i := 10
	waitFor(t, "b to serve a certificate other than "+before, 20*time.Second, func() bool {
		for range 3 {
			roundTrip(i)
			i++
		}
		return servedSerial(t, probe, b, probeDir) != before
	})
	for end := i + 10; i < end; i++ {
		roundTrip(i)
	}
	curl(t, a, url(b.IPv4, 8080, "/")) // new connections work with the new cert
}

func readFull(c interface{ Read([]byte) (int, error) }, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// servedSerial connects with openssl from probe (a pod without a sidecar)
// straight to pod's inbound port 15006 with a mesh client certificate and
// returns the serial of the certificate the sidecar serves.
func servedSerial(t *testing.T, probe, pod *topology.Pod, certDir string) string {
	t.Helper()
	script := fmt.Sprintf(`openssl s_client -connect %s -tls1_3 -alpn meshgate/tcp -cert %s/cert.pem -key %s/key.pem -CAfile %s/bundle.pem </dev/null 2>/dev/null | openssl x509 -noout -serial`,
		hostPort(pod.IPv4, 15006), certDir, certDir, certDir)
	out, err := probe.Run(ctxFor(t, 20*time.Second), "sh", "-c", script)
	if err != nil || !strings.HasPrefix(out, "serial=") {
		t.Fatalf("openssl s_client to %s:15006: %q, %v", pod.Name, out, err)
	}
	return strings.TrimSpace(out)
}

// TestMTLSInboundPortIsTLS13Only: sslscan with a mesh client certificate
// finds TLS 1.3 and nothing older on the inbound port.
func TestMTLSInboundPortIsTLS13Only(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("sslscan"); err != nil {
		t.Fatal("sslscan not installed: run 'make deps'")
	}
	_, pods := newLabWith(t, "b", "probe")
	b, probe := pods[0], pods[1]
	startApp(t, b)
	ca := meshCA(t)
	enroll(t, b, meshOpts(issueFor(t, ca, b), "strict", b))
	pdir := issueFor(t, ca, probe)
	out, err := probe.Run(ctxFor(t, 60*time.Second), "sslscan", "--no-colour", "--certs="+pdir+"/cert.pem", "--pk="+pdir+"/key.pem", hostPort(b.IPv4, 15006))
	if err != nil {
		t.Fatalf("sslscan: %v\n%s", err, out)
	}
	for _, want := range []string{"TLSv1.3   enabled", "TLSv1.2   disabled", "TLSv1.1   disabled", "TLSv1.0   disabled"} {
		if !strings.Contains(out, want) {
			t.Errorf("sslscan output lacks %q:\n%s", want, out)
		}
	}
}
