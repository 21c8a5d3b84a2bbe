package e2e

import (
	"context"
	"os/exec"
	"regexp"
	"strconv"
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
		"client → web   DELETE /          403 policy: denied by rule default (policy default): no allow rule matched, and 1 allow rule(s) apply to app port 8080, so the default is deny; client-reads: http.methods: method DELETE not in [GET, HEAD]",
		"client → web   GET /admin/users  403 policy: denied by rule no-admin (policy main): rule no-admin (deny) matched: http.paths: path /admin/users in [/admin/*]",
		"cleaned up: rules removed, sidecars drained and stopped, namespaces deleted.",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("the report lacks %q:\n%s", want, report)
		}
	}
	// The table: web's inbound carried the 11 HTTP requests and the 2
	// its policy denied as L7 from a verified client, none failed, and
	// the outsider's plaintext was refused; echo's raw TCP sessions
	// resumed their TLS sessions.
	row := regexp.MustCompile(`(?m)^\s*web\s+inbound\s+\d+\s+(\d+)\s.*?\s(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+client\s*$`)
	m := row.FindStringSubmatch(report)
	if m == nil {
		t.Fatalf("no row for web inbound with peer client in the report:\n%s", report)
	}
	// By name, 20 requests spread over web and web2 (web's second
	// replica, with web's identity).
	byName := regexp.MustCompile(`client → web\.demo\.mesh\s+20 HTTP requests by name, 4 at a time, balanced by client's sidecar: web (\d+), web2 (\d+)`).FindStringSubmatch(report)
	if byName == nil {
		t.Fatalf("no line for the requests by name in the report:\n%s", report)
	}
	toWeb, toWeb2 := atoi(t, byName[1]), atoi(t, byName[2])
	if toWeb+toWeb2 != 20 || toWeb == 0 || toWeb2 == 0 {
		t.Errorf("requests by name: web %d, web2 %d; want 20 spread over both", toWeb, toWeb2)
	}
	if atoi(t, m[1]) != 13+toWeb || m[4] != "0" || m[5] != "1" {
		t.Errorf("web inbound: %s HTTP requests, %s failed handshakes, %s plaintext refused; "+
			"want the 13 requests and the %d by name, no failure and the outsider refused:\n%s", m[1], m[4], m[5], toWeb, report)
	}
	web2Row := regexp.MustCompile(`(?m)^\s*web2\s+inbound\s+\d+\s+(\d+)\s.*\s0\s+0\s+client\s*$`).FindStringSubmatch(report)
	if web2Row == nil || atoi(t, web2Row[1]) != toWeb2 {
		t.Errorf("web2 inbound: want %d HTTP requests from a verified client, no failure:\n%s", toWeb2, report)
	}
	echoRow := regexp.MustCompile(`(?m)^\s*echo\s+inbound\s+(\d+)\s+0\s.*?\s(\d+)\s+(\d+)\s+0\s+0\s+client\s*$`)
	if m := echoRow.FindStringSubmatch(report); m == nil || m[1] != "10" || m[3] == "0" {
		t.Errorf("echo inbound: want 10 connections, no HTTP, resumed handshakes, no failure:\n%s", report)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
