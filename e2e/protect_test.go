package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"meshgate/bench"
	"meshgate/topology"
)

// TestProtectionUnderAttack is issue 15's slowloris acceptance, on the
// default limits: web's sidecar takes mesh mTLS and, on its HTTP port,
// plaintext too (permissive); client calls it through the mesh at a
// fixed 300 rps while attacker, with no sidecar, attacks the sidecar:
//
//   - slowloris: slowhttptest -H with 1000 connections on the permissive
//     HTTP port (each sends a header line every 5 s and never ends its
//     head; requestHeaderTimeout closes them);
//   - on a strict port: 200 clients sending a ClientHello one byte every
//     100 ms (timeouts.handshake closes them) and 2000 idle TCP
//     connections (maxConnectionsPerSourceIP resets all but 1000 of them
//     at accept, the handshake timeout the rest).
//
// Under either, the mesh traffic has no error and its p99 stays within
// 2× of a run without attack, in the same test; the sidecar's file
// descriptors and resident memory stay bounded by what the caps allow,
// and come back down once the attack is over.
func TestProtectionUnderAttack(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("slowhttptest"); err != nil {
		t.Fatal("slowhttptest not found: run 'make deps' (apt-get install slowhttptest)")
	}
	pods := newLab(t, "web", "client", "attacker")
	web, client, attacker := pods[0], pods[1], pods[2]
	if _, err := web.Start([]string{bin, "bench", "serve", "--http", ":8080", "--tcp", ":9000"}, topology.ProcOptions{}); err != nil {
		t.Fatal(err)
	}
	waitListening(t, web, netip.AddrPortFrom(web.IPv4, 8080), nil)
	ca := meshCA(t)
	info := []string{"--log-level", "info"} // not debug: a line per attacking connection would be the test's cost
	wo := meshOpts(issueFor(t, ca, web), "strict", web, client)
	wo.proxyArgs = append(wo.proxyArgs, info...)
	wo.proxyConfig = "mtls: {portModes: {8080: permissive}}\n"
	ws := enroll(t, web, wo)
	co := meshOpts(issueFor(t, ca, client), "strict", web, client)
	co.proxyArgs = append(co.proxyArgs, info...)
	enroll(t, client, co)

	target := url(web.IPv4, 8080, "/")
	load := func(what string) *bench.Result {
		t.Helper()
		js := filepath.Join(publicTempDir(t), "bench.json")
		cpu0 := cpuOf(t, ws.proc.PID())
		defer func() { t.Logf("%s: sidecar CPU %.2f s", what, cpuOf(t, ws.proc.PID())-cpu0) }()
		out, err := client.Run(ctxFor(t, time.Minute), bin, "bench", "--rate", "300", "--connections", "8", "--duration", "8s",
			"--warmup", "1s", "--quiet", "--json", js, target)
		if err != nil {
			t.Fatalf("%s: bench: %v\n%s", what, err, out)
		}
		var r bench.Report
		b, err := os.ReadFile(js)
		if err != nil || json.Unmarshal(b, &r) != nil || len(r.Scenarios) != 1 {
			t.Fatalf("%s: bench JSON: %v\n%s", what, err, b)
		}
		res := r.Scenarios[0].Result
		t.Logf("%s: %d requests, p50 %.2f ms, p99 %.2f ms, max %.2f ms, errors %v", what, res.Requests, res.Latency.P50, res.Latency.P99, res.Latency.Max, res.Errors)
		if len(res.Errors) != 0 || res.Requests < 2400 {
			t.Errorf("%s: %d requests, errors %v; want the 2400 due, none failed", what, res.Requests, res.Errors)
		}
		return res
	}
	pid := ws.proc.PID()
	var attackerPID func() int
	before := usageOf(t, pid)
	t.Logf("sidecar before: %v", before)
	events := func(reason string) float64 {
		return ws.metrics(t)["meshgate_protection_events_total{direction=inbound,reason="+reason+"}"]
	}

	// underAttack runs the load while attack runs, sampling the sidecar's
	// usage for its peak, then waits for the usage to come back down
	// once stop has ended the attack. The machine is shared (other tests
	// run on its two cores): the load runs without attack just before
	// and just after, and the attack's p99 is held to 2× the larger.
	underAttack := func(name string, attack func(), stop func(), wantPeakFDs int) {
		base := load(name + ": baseline before")
		attack()
		peak := before
		sampled := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(sampled)
			for {
				peak = peak.max(usageOf(t, pid))
				select {
				case <-done:
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
		}()
		cpu0, acpu0 := cpuOf(t, pid), cpuOf(t, attackerPID())
		res := load(name)
		t.Logf("%s: CPU during the load: sidecar %.2f s, attacker %.2f s", name, cpuOf(t, pid)-cpu0, cpuOf(t, attackerPID())-acpu0)
		close(done)
		<-sampled
		stop()
		t.Logf("%s: sidecar peak %v", name, peak)
		if peak.fds > before.fds+wantPeakFDs {
			t.Errorf("%s: the sidecar held %d fds, want at most %d (%d before, and what the caps allow)", name, peak.fds, before.fds+wantPeakFDs, before.fds)
		}
		// 1000 connections held, each with its goroutine and a head's
		// buffer: 64 KiB each would be a lot.
		if grown := peak.rss - before.rss; grown > 64<<20 {
			t.Errorf("%s: the sidecar's RSS grew by %d MiB, want at most 64", name, grown>>20)
		}
		var after usage
		eventually(t, 30*time.Second, func() error {
			if after = usageOf(t, pid); after.fds > before.fds+20 {
				return fmt.Errorf("%s: the sidecar still holds %d fds (%d before)", name, after.fds, before.fds)
			}
			return nil
		})
		t.Logf("%s: sidecar after %v", name, after)
		after2 := load(name + ": baseline after")
		if p99 := max(base.Latency.P99, after2.Latency.P99); res.Latency.P99 > 2*p99 {
			t.Errorf("%s: p99 %.2f ms, more than 2× the %.2f ms without attack", name, res.Latency.P99, p99)
		}
	}

	// Slowloris on the permissive HTTP port.
	var slow *topology.Process
	attackerPID = func() int {
		if slow == nil {
			return os.Getpid()
		}
		return slow.PID()
	}
	underAttack("slowloris", func() {
		var err error
		// SCHED_IDLE: the attacker gets the CPU nothing else wants. In a
		// cluster it runs on a machine of its own; here it shares two
		// cores with the sidecars and the load, and what is measured is
		// what the attack costs the sidecar, not the attacker's own CPU.
		slow, err = attacker.Start([]string{"chrt", "--idle", "0", "slowhttptest", "-H", "-c", "1000", "-r", "200", "-i", "5", "-l", "25", "-p", "5", "-u", target}, topology.ProcOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Most of the 1000 connected, and in the sidecar, before the load.
		waitFor(t, "slowloris connections", 20*time.Second, func() bool { return usageOf(t, pid).fds > before.fds+500 })
	}, func() {
		// Every slowloris connection ends by requestHeaderTimeout.
		waitFor(t, "slowloris connections timed out", 30*time.Second, func() bool { return events("request_header_timeout") >= 990 })
		if err := slow.Stop(5 * time.Second); err != nil {
			t.Logf("slowhttptest: %v", err)
		}
		t.Logf("slowhttptest:\n%s", tail(slow.Output(), 12))
	}, 1000+100)

	// A strict port: byte-by-byte ClientHellos first (their connections
	// count against the per-IP cap too), then idle connections.
	strict := hostPort(web.IPv4, 9000)
	hello := clientHelloBytes(t)
	// The counters run on from the slowloris phase, where a connection
	// slowhttptest opens the moment the sidecar closes one of its 1000
	// may meet the per-IP cap too: this phase counts from here.
	perIP0, hs0 := events("max_connections_per_source_ip"), events("handshake_timeout")
	var conns []net.Conn
	var trickle sync.WaitGroup
	halt := make(chan struct{})
	underAttack("strict port: slow hellos and idle connections", func() {
		for range 200 {
			c, err := attacker.Dial(ctxFor(t, 10*time.Second), "tcp", strict)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			trickle.Go(func() {
				for _, b := range hello {
					if _, err := c.Write([]byte{b}); err != nil {
						return
					}
					select {
					case <-halt:
						return
					case <-time.After(100 * time.Millisecond):
					}
				}
			})
		}
		for range 2000 {
			// Past the cap the sidecar resets at accept: the dial itself
			// may see it.
			if c, err := attacker.Dial(ctxFor(t, 10*time.Second), "tcp", strict); err == nil {
				conns = append(conns, c)
			}
		}
	}, func() {
		// The connections the cap let in end by timeouts.handshake.
		waitFor(t, "strict-port connections timed out", 30*time.Second, func() bool { return events("handshake_timeout")-hs0 >= 1000 })
		close(halt)
		trickle.Wait()
		for _, c := range conns {
			c.Close()
		}
	}, 1000+100)
	perIP, hs := events("max_connections_per_source_ip")-perIP0, events("handshake_timeout")-hs0
	t.Logf("strict port: %v connections reset at accept (per-IP cap), %v closed by the handshake timeout", perIP, hs)
	if perIP != 1200 || hs != 1000 {
		t.Errorf("per-IP cap resets %v, handshake timeouts %v; want 1200 and 1000 of the 2200 connections", perIP, hs)
	}
	// The log says so, without a line per connection.
	var lines int
	for _, l := range strings.Split(ws.proc.Output(), "\n") {
		if strings.Contains(l, `"limits"`) {
			lines++
		}
	}
	t.Logf("sidecar log: %d lines from the limits for %v events", lines, perIP+hs+events("request_header_timeout"))
	if lines == 0 || lines > 200 {
		t.Errorf("%d log lines from the limits, want some, rate-limited (at most a few a second)", lines)
	}
}

// cpuOf returns the CPU seconds pid has used (0 if it has ended).
func cpuOf(t *testing.T, pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil || pid == 0 {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100
}

// usage is what a process holds: open file descriptors and resident memory.
type usage struct {
	fds int
	rss int64 // bytes
}

func (u usage) String() string {
	return fmt.Sprintf("%d fds, RSS %.1f MiB", u.fds, float64(u.rss)/(1<<20))
}

func (u usage) max(v usage) usage {
	return usage{fds: max(u.fds, v.fds), rss: max(u.rss, v.rss)}
}

// usageOf reads /proc for pid's usage.
func usageOf(t *testing.T, pid int) usage {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	u := usage{fds: len(fds)}
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			u.rss = kb << 10
		}
	}
	return u
}

// clientHelloBytes is a TLS ClientHello offering the mesh's ALPN, as a
// client sidecar's first flight would be.
func clientHelloBytes(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		tls.Client(a, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"meshgate/tcp"}}).HandshakeContext(context.Background())
		a.Close()
	}()
	buf := make([]byte, 4096)
	n, err := b.Read(buf)
	if err != nil || n < 100 {
		t.Fatalf("ClientHello: %d bytes, %v", n, err)
	}
	return buf[:n]
}
