package e2e

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDemo runs 'meshgate demo', the README's first command, and checks
// its report: traffic through the sidecars as mTLS, the outsider refused,
// every sidecar's handshakes counted, and everything cleaned up (TestMain
// fails the run on any namespace left behind).
func TestDemo(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "demo", "--requests", "10").CombinedOutput()
	if err != nil {
		t.Fatalf("meshgate demo: %v\n%s", err, out)
	}
	report := string(out)
	for _, want := range []string{
		"mesh CA made for trust domain demo.local",
		"identity spiffe://demo.local/ns/demo/sa/web",
		"10 HTTP requests, half IPv4 half IPv6, a new connection each: all 200",
		"16 MiB download, SHA-256 verified",
		"10 raw TCP sessions of 64 KiB",
		"outsider → web plaintext from a pod without a sidecar: refused (mTLS strict)",
		"cleaned up: rules removed, sidecars drained and stopped, namespaces deleted.",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("the report lacks %q:\n%s", want, report)
		}
	}
	// The table: web's inbound carried the 11 HTTP requests as L7 from a
	// verified client, none failed, and the outsider's plaintext was
	// refused; echo's raw TCP sessions resumed their TLS sessions.
	row := regexp.MustCompile(`(?m)^\s*web\s+inbound\s+\d+\s+(\d+)\s.*?\s(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+client\s*$`)
	m := row.FindStringSubmatch(report)
	if m == nil {
		t.Fatalf("no row for web inbound with peer client in the report:\n%s", report)
	}
	if m[1] != "11" || m[4] != "0" || m[5] != "1" {
		t.Errorf("web inbound: %s HTTP requests, %s failed handshakes, %s plaintext refused; "+
			"want the 11 requests, no failure and the outsider refused:\n%s", m[1], m[4], m[5], report)
	}
	echoRow := regexp.MustCompile(`(?m)^\s*echo\s+inbound\s+(\d+)\s+0\s.*?\s(\d+)\s+(\d+)\s+0\s+0\s+client\s*$`)
	if m := echoRow.FindStringSubmatch(report); m == nil || m[1] != "10" || m[3] == "0" {
		t.Errorf("echo inbound: want 10 connections, no HTTP, resumed handshakes, no failure:\n%s", report)
	}
}
