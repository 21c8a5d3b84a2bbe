package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"meshgate/topology"
)

// TestRedisBenchmarkThroughTheMesh: redis-benchmark against a real
// redis-server through two mTLS sidecars, as opaque TCP (6379 is declared
// so by default), with no error.
func TestRedisBenchmarkThroughTheMesh(t *testing.T) {
	needRoot(t)
	for _, tool := range []string{"redis-server", "redis-benchmark"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run 'make deps'", tool)
		}
	}
	_, pods := newLabWith(t, "a", "b")
	a, b := pods[0], pods[1]
	srv, err := b.Start([]string{"redis-server", "--port", "6379", "--bind", b.IPv4.String(), "--save", "", "--appendonly", "no",
		"--protected-mode", "no", "--dir", t.TempDir()}, topology.ProcOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop(10 * time.Second) })
	waitListening(t, b, netip.AddrPortFrom(b.IPv4, 6379), srv)
	ca := meshCA(t)
	sa := enroll(t, a, meshOpts(issueFor(t, ca, a), "strict", a, b))
	enroll(t, b, meshOpts(issueFor(t, ca, b), "strict", a, b))

	out, err := a.Run(ctxFor(t, 2*time.Minute), "redis-benchmark", "-h", b.IPv4.String(), "-p", "6379", "-q",
		"-n", "20000", "-c", "16", "-t", "set,get,incr,lpush,lpop")
	if err != nil || strings.Contains(strings.ToLower(out), "error") {
		t.Fatalf("redis-benchmark through the mesh: %v\n%s", err, out)
	}
	for _, cmd := range []string{"SET", "GET", "INCR", "LPUSH", "LPOP"} {
		if !regexp.MustCompile(`\b` + cmd + `: [\d.]+ requests per second`).MatchString(out) {
			t.Errorf("redis-benchmark reports no %s throughput:\n%s", cmd, out)
		}
	}
	var summary []string
	for _, l := range regexp.MustCompile(`[A-Z]+: [\d.]+ requests per second[^\r\n]*`).FindAllString(out, -1) {
		summary = append(summary, l)
	}
	t.Logf("redis-benchmark through the mesh: %s", strings.Join(summary, "; "))
	m := sa.metrics(t)
	if n := m["meshgate_protocol_detections_total{by=declared,direction=outbound,protocol=opaque}"]; n < 16 {
		t.Errorf("%v connections to Redis taken as declared opaque, want at least the 16 clients'", n)
	}
	if n := sa.tlsHandshakes(t, "result=failed"); n != 0 {
		t.Errorf("%v failed mesh handshakes", n)
	}
}

// postgresBin finds a PostgreSQL server program of Debian's packages.
func postgresBin(t *testing.T, name string) string {
	t.Helper()
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	if len(m) == 0 {
		t.Fatalf("%s not installed: run 'make deps'", name)
	}
	return m[len(m)-1]
}

// TestPgbenchThroughTheMesh: pgbench against a real PostgreSQL through two
// mTLS sidecars, as opaque TCP (5432 is declared so by default), with no
// failed transaction.
func TestPgbenchThroughTheMesh(t *testing.T) {
	needRoot(t)
	initdb, postgres, pgbench := postgresBin(t, "initdb"), postgresBin(t, "postgres"), postgresBin(t, "pgbench")
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("no postgres user: run 'make deps' (%v)", err)
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	_, pods := newLabWith(t, "a", "b")
	a, b := pods[0], pods[1]

	dir := publicTempDir(t)
	data := filepath.Join(dir, "data")
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	// The sidecar connects to the app from 127.0.0.6: trust the lab.
	hba, err := os.OpenFile(filepath.Join(data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(hba, "host all all all trust")
	hba.Close()
	u32, g32 := uint32(uid), uint32(gid)
	srv, err := b.Start([]string{postgres, "-D", data, "-k", dir, "-h", b.IPv4.String(), "-p", "5432",
		"-c", "fsync=off", "-c", "listen_addresses=" + b.IPv4.String()}, topology.ProcOptions{UID: &u32, GID: &g32})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop(20 * time.Second) })
	waitListening(t, b, netip.AddrPortFrom(b.IPv4, 5432), srv)
	ca := meshCA(t)
	sa := enroll(t, a, meshOpts(issueFor(t, ca, a), "strict", a, b))
	enroll(t, b, meshOpts(issueFor(t, ca, b), "strict", a, b))

	conn := []string{"-h", b.IPv4.String(), "-p", "5432", "-U", "postgres"}
	if out, err := a.Run(ctxFor(t, 2*time.Minute), append(append([]string{pgbench, "-i", "-q"}, conn...), "postgres")...); err != nil {
		t.Fatalf("pgbench -i through the mesh: %v\n%s", err, out)
	}
	out, err := a.Run(ctxFor(t, 2*time.Minute), append(append([]string{pgbench, "-c", "4", "-j", "2", "-T", "5"}, conn...), "postgres")...)
	if err != nil {
		t.Fatalf("pgbench through the mesh: %v\n%s", err, out)
	}
	t.Logf("pgbench through the mesh:\n%s", out)
	failed := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(out)
	done := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(out)
	if failed == nil || failed[1] != "0" || done == nil || done[1] == "0" {
		t.Errorf("pgbench: %s failed, %s processed; want 0 failed and some processed", fmt.Sprint(failed), fmt.Sprint(done))
	}
	if n := sa.metrics(t)["meshgate_protocol_detections_total{by=declared,direction=outbound,protocol=opaque}"]; n < 4 {
		t.Errorf("%v connections to PostgreSQL taken as declared opaque, want at least pgbench's 4", n)
	}
}
