package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"meshgate/internal/testca"
	"meshgate/topology"
)

// mariadbPort is deliberately not one of the ports declared opaque by
// default (3306 is): the sidecar has to find out that MariaDB speaks
// first.
const mariadbPort = 13306

// startMariaDB runs a throwaway MariaDB server in pod, bound to its IPv4
// address on mariadbPort.
func startMariaDB(t *testing.T, pod *topology.Pod) {
	t.Helper()
	for _, tool := range []string{"mariadbd", "mariadb-install-db", "mariadb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run 'make deps'", tool)
		}
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if out, err := exec.Command("mariadb-install-db", "--no-defaults", "--datadir="+data, "--user=root",
		"--auth-root-authentication-method=normal", "--skip-test-db").CombinedOutput(); err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	p, err := pod.Start([]string{"mariadbd", "--no-defaults", "--datadir=" + data, "--socket=" + filepath.Join(dir, "sock"),
		"--pid-file=" + filepath.Join(dir, "pid"), fmt.Sprintf("--port=%d", mariadbPort), "--bind-address=" + pod.IPv4.String(),
		"--user=root", "--skip-grant-tables", "--skip-name-resolve"}, topology.ProcOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(30 * time.Second) })
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := timeToGreeting(pod, netip.AddrPortFrom(pod.IPv4, mariadbPort)); err == nil {
			return
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("mariadbd did not come up:\n%s", tail(p.Output(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// timeToGreeting connects from pod to addr, as a MySQL client does, says
// nothing, and returns how long the server's first bytes took from the
// start of the connect.
func timeToGreeting(pod *topology.Pod, addr netip.AddrPort) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	c, err := pod.Dial(ctx, "tcp", addr.String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 4)
	if _, err := readFull(c, b); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// TestDetectServerFirstThroughTheMesh: MariaDB on a port nobody declared
// answers through two sidecars with mTLS with no detection stall, on the
// first connection too, and real clients work: the mariadb client, curl
// over HTTP/1.1, and an app's own TLS, whose SNI the sidecar records.
func TestDetectServerFirstThroughTheMesh(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "a", "b")
	a, b := pods[0], pods[1]
	startApp(t, b)
	startMariaDB(t, b)
	// An app that speaks TLS itself (started before the sidecars, so the
	// check that it listens is not captured).
	leaf := testca.New(t, "shop.test").Issue(t, "spiffe://shop.test/shop", testca.LeafOptions{DNSNames: []string{"shop.example"}})
	dir := t.TempDir()
	leaf.WriteDir(t, dir)
	srv, err := b.Start([]string{"openssl", "s_server", "-quiet", "-accept", hostPort(b.IPv4, 8443), "-cert", filepath.Join(dir, "cert.pem"),
		"-key", filepath.Join(dir, "key.pem"), "-www"}, topology.ProcOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop(5 * time.Second) })
	waitListening(t, b, netip.AddrPortFrom(b.IPv4, 8443), srv)
	db := netip.AddrPortFrom(b.IPv4, mariadbPort)

	// Direct, before any sidecar: the baseline.
	var direct []time.Duration
	for range 5 {
		d, err := timeToGreeting(a, db)
		if err != nil {
			t.Fatal(err)
		}
		direct = append(direct, d)
	}
	slices.Sort(direct)

	ca := meshCA(t)
	sa := enroll(t, a, meshOpts(issueFor(t, ca, a), "strict", a, b))
	enroll(t, b, meshOpts(issueFor(t, ca, b), "strict", a, b))
	first, err := timeToGreeting(a, db)
	if err != nil {
		t.Fatalf("first connection through the mesh: %v\n%s", err, tail(sa.proc.Output(), 10))
	}
	var mesh []time.Duration
	for range 5 {
		d, err := timeToGreeting(a, db)
		if err != nil {
			t.Fatal(err)
		}
		mesh = append(mesh, d)
	}
	slices.Sort(mesh)
	t.Logf("MariaDB greeting: direct median %v; through the mesh first connection %v (added %v), later median %v (added %v)",
		direct[2], first, first-direct[2], mesh[2], mesh[2]-direct[2])
	// A detection stall is the whole protocols.detectTimeout (1 s); the
	// figures are in the log above and the issue's note, not asserted.
	if first >= 500*time.Millisecond {
		t.Errorf("the first connection waited %v for MariaDB's greeting: a detection stall", first)
	}

	out, err := a.Run(ctxFor(t, 30*time.Second), "mariadb", "--no-defaults", "-h", b.IPv4.String(), "-P", fmt.Sprint(mariadbPort),
		"-u", "root", "--skip-ssl", "-N", "-e", "SELECT 6*7")
	if err != nil || strings.TrimSpace(out) != "42" {
		t.Fatalf("mariadb client through the mesh: %q, %v", out, err)
	}
	// The first connection to db's line (lines are written in batches).
	firstLog := sa.waitLog(t, "outbound", db.String())
	if firstLog["detected_by"] != "server_first" || firstLog["protocol"] != "opaque" || firstLog["mtls"] != true {
		t.Errorf("a's first connection to MariaDB logged %v, want protocol opaque detected_by server_first over mTLS", firstLog)
	}
	if n := sa.metrics(t)["meshgate_protocol_detections_total{by=remembered,direction=outbound,protocol=opaque}"]; n != 6 {
		t.Errorf("%v connections to MariaDB skipped detection as remembered, want the 6 after the first", n)
	}

	// HTTP/1.1 from curl is detected as such.
	curl(t, a, url(b.IPv4, 8080, "/"))
	l := sa.waitLog(t, "outbound", hostPort(b.IPv4, 8080))
	if l["protocol"] != "http1" || l["http_method"] != "GET" || l["detected_by"] != "client" {
		t.Errorf("curl's connection logged %v, want protocol http1, GET", l)
	}

	// The app's own TLS passes through untouched, inside the mesh mTLS.
	body := curl(t, a, "--insecure", "--resolve", "shop.example:8443:"+b.IPv4.String(), "https://shop.example:8443/")
	if !strings.Contains(body, "TLSv1.3") {
		t.Errorf("openssl s_server's page through the mesh lacks TLSv1.3:\n%s", body)
	}
	l = sa.waitLog(t, "outbound", hostPort(b.IPv4, 8443))
	if l["protocol"] != "tls" || l["sni"] != "shop.example" || l["mtls"] != true {
		t.Errorf("the app TLS connection logged %v, want protocol tls, sni shop.example, inside mTLS", l)
	}
	if n := sa.metrics(t)["meshgate_app_tls_connections_total{direction=outbound,sni=shop.example}"]; n != 1 {
		t.Errorf("app TLS connections with SNI shop.example: %v, want 1", n)
	}
}
