package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"meshgate/topology"
)

// tool returns the path of a Go tool that 'make tools' installs in
// bin/tools (MESHGATE_TOOLS names another directory).
func tool(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("MESHGATE_TOOLS")
	if dir == "" {
		dir = filepath.Join("..", "bin", "tools")
	}
	p, err := filepath.Abs(filepath.Join(dir, name))
	if err == nil {
		_, err = os.Stat(p)
	}
	if err != nil {
		t.Fatalf("%s not installed (%v): run 'make tools'", name, err)
	}
	return p
}

// grpcInteropCases are the standard test cases of grpc-go's interop
// client that need no cloud credentials and no second server.
var grpcInteropCases = []string{
	"empty_unary", "large_unary", "client_streaming", "server_streaming", "ping_pong", "empty_stream",
	"timeout_on_sleeping_server", "cancel_after_begin", "cancel_after_first_response",
	"status_code_and_message", "special_status_message", "custom_metadata",
	"unimplemented_method", "unimplemented_service",
}

// TestGRPCInteropThroughTheMesh: grpc-go's interop client and server pass
// every standard test case through two sidecars with mTLS, each RPC as
// an L7 request on the pooled HTTP/2 mesh connection.
func TestGRPCInteropThroughTheMesh(t *testing.T) {
	needRoot(t)
	server, client := tool(t, "server"), tool(t, "client")
	_, pods := newLabWith(t, "a", "b")
	a, b := pods[0], pods[1]
	srv, err := b.Start([]string{server, "--port", "10000"}, topology.ProcOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop(5 * time.Second) })
	waitListening(t, b, netip.AddrPortFrom(b.IPv4, 10000), srv)
	ca := meshCA(t)
	sa := enroll(t, a, meshOpts(issueFor(t, ca, a), "strict", a, b))
	sb := enroll(t, b, meshOpts(issueFor(t, ca, b), "strict", a, b))

	for _, tc := range grpcInteropCases {
		t.Run(tc, func(t *testing.T) {
			out, err := a.Run(ctxFor(t, 60*time.Second), client, "--server_host", b.IPv4.String(), "--server_port", "10000", "--test_case", tc)
			if err != nil {
				t.Errorf("%s through the mesh: %v\n%s", tc, err, out)
			}
		})
	}
	// A request is counted as its response ends, which can be after the
	// client has read it.
	eventually(t, 5*time.Second, func() error {
		if n := sb.metrics(t)["meshgate_http_requests_total{direction=inbound,method=POST,peer_identity="+spiffeFor(a)+",response_class=2xx}"]; n < float64(len(grpcInteropCases)) {
			return fmt.Errorf("b's sidecar counted %v gRPC requests from %s, want at least %d: the RPCs did not go as L7", n, spiffeFor(a), len(grpcInteropCases))
		}
		return nil
	})
	if n := sa.tlsHandshakes(t, "direction=outbound", "result=ok"); n > float64(len(grpcInteropCases)) {
		t.Logf("a's sidecar made %v mesh handshakes for %d client runs", n, len(grpcInteropCases))
	}
}

// h2specSummary matches h2spec's last line, e.g. "145 tests, 137 passed,
// 0 skipped, 8 failed".
var h2specSummary = regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`)

// runH2spec runs h2spec (h2c, prior knowledge) from pod against addr
// twice and returns how many tests it runs and which failed both times:
// a few of its tests depend on timing, and a failure that does not
// repeat says nothing about the server.
func runH2spec(t *testing.T, pod *topology.Pod, addr netip.AddrPort) (total int, failed []string) {
	t.Helper()
	count := map[string]int{}
	for range 2 {
		out, _ := pod.Run(ctxFor(t, 5*time.Minute), tool(t, "h2spec"), "-h", addr.Addr().String(), "-p", strconv.Itoa(int(addr.Port())), "-o", "2")
		m := h2specSummary.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("h2spec printed no summary:\n%s", out)
		}
		total, _ = strconv.Atoi(m[1])
		// The failures section lists each failed test as "× N: title"
		// under its section's heading.
		section := ""
		inFailures := false
		for _, line := range strings.Split(out, "\n") {
			trimmed := strings.TrimSpace(line)
			switch {
			case trimmed == "Failures:":
				inFailures = true
			case !inFailures || trimmed == "":
			case strings.HasPrefix(trimmed, "× "):
				count[section+" / "+strings.TrimPrefix(trimmed, "× ")]++
			default:
				section = trimmed
			}
		}
	}
	for name, n := range count {
		if n == 2 {
			failed = append(failed, name)
		}
	}
	slices.Sort(failed)
	return total, failed
}

// TestH2specThroughTheMesh: h2spec against the sidecar path (the client
// sidecar terminates the app's HTTP/2) passes at least what it passes
// against a bare Go HTTP/2 server (the demo app, h2c), in the same run.
func TestH2specThroughTheMesh(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "a", "b", "bare")
	a, b, bare := pods[0], pods[1], pods[2]
	startApp(t, b)
	startApp(t, bare)
	ca := meshCA(t)
	enroll(t, a, meshOpts(issueFor(t, ca, a), "strict", a, b))
	enroll(t, b, meshOpts(issueFor(t, ca, b), "strict", a, b))

	bareTotal, bareFailed := runH2spec(t, bare, netip.AddrPortFrom(bare.IPv4, 8080))
	meshTotal, meshFailed := runH2spec(t, a, netip.AddrPortFrom(b.IPv4, 8080))
	t.Logf("h2spec: bare Go HTTP/2 server %d/%d passed; through the sidecars %d/%d passed", bareTotal-len(bareFailed), bareTotal, meshTotal-len(meshFailed), meshTotal)
	t.Logf("failed against the bare server: %q", bareFailed)
	t.Logf("failed through the sidecars: %q", meshFailed)
	if meshTotal-len(meshFailed) < bareTotal-len(bareFailed) {
		t.Errorf("through the sidecars h2spec passes %d tests, fewer than the %d of a bare Go server", meshTotal-len(meshFailed), bareTotal-len(bareFailed))
	}
}
