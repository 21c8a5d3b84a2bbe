package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"meshgate/topology"
)

// family picks the IPv4 or IPv6 address of a pod.
type family struct {
	name        string
	addr        func(*topology.Pod) netip.Addr
	passthrough string // the inbound sidecar's source address toward the app
}

var families = []family{
	{"ipv4", func(p *topology.Pod) netip.Addr { return p.IPv4 }, "127.0.0.6"},
	{"ipv6", func(p *topology.Pod) netip.Addr { return p.IPv6 }, "::6"},
}

// TestPodToPodHTTP: a request from pod a to pod b's HTTP server leaves a
// through a's sidecar and enters b through b's, for IPv4 and IPv6; both
// sidecars record the original destination, the server sees the request,
// and multi-megabyte bodies arrive intact both ways.
func TestPodToPodHTTP(t *testing.T) {
	needRoot(t)
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			skipNoIPv6(t, fam)
			pods := newLab(t, "a", "b")
			a, b := pods[0], pods[1]
			startApp(t, b)
			sa := enroll(t, a, enrollOpts{})
			sb := enroll(t, b, enrollOpts{})
			dst := fam.addr(b)
			want := hostPort(dst, 8080)

			var seen struct{ Name, Method, Path, Remote string }
			body := curl(t, a, url(dst, 8080, "/"))
			if err := json.Unmarshal([]byte(body), &seen); err != nil {
				t.Fatalf("response %q: %v", body, err)
			}
			if seen.Name != "b" || seen.Method != "GET" || seen.Path != "/" {
				t.Errorf("server saw %+v, want GET / answered by b", seen)
			}
			// The app sees the inbound sidecar's passthrough source: proof
			// that the request entered through b's sidecar.
			if host, _, _ := net.SplitHostPort(seen.Remote); host != fam.passthrough {
				t.Errorf("server saw remote %s, want the sidecar's %s", seen.Remote, fam.passthrough)
			}
			out := sa.waitLog(t, "outbound", want)
			in := sb.waitLog(t, "inbound", want)
			if out["error"] != nil || in["error"] != nil {
				t.Errorf("connection errors: outbound %v, inbound %v", out["error"], in["error"])
			}

			bigBodies(t, a, dst)

			// Both sidecars counted the bytes in their own direction. A
			// connection's last bytes are counted, and it stops being
			// active, as it closes, which can be after curl has finished.
			eventually(t, 5*time.Second, func() error {
				var errs []error
				ma, mb := sa.metrics(t), sb.metrics(t)
				if v := ma["meshgate_tcp_received_bytes_total{direction=outbound}"]; v < 8e6 {
					errs = append(errs, fmt.Errorf("a outbound received bytes = %v, want ≥ 8e6", v))
				}
				if v := ma["meshgate_tcp_sent_bytes_total{direction=outbound}"]; v < 6<<20 {
					errs = append(errs, fmt.Errorf("a outbound sent bytes = %v, want ≥ 6 MiB", v))
				}
				if v := mb["meshgate_tcp_sent_bytes_total{direction=inbound}"]; v < 6<<20 {
					errs = append(errs, fmt.Errorf("b inbound sent bytes = %v, want ≥ 6 MiB", v))
				}
				if v := mb["meshgate_tcp_connections_opened_total{direction=inbound}"]; v != 3 {
					errs = append(errs, fmt.Errorf("b inbound connections = %v, want 3 (one per curl)", v))
				}
				if v := ma["meshgate_tcp_connections_active{direction=outbound}"]; v != 0 {
					errs = append(errs, fmt.Errorf("a outbound active connections = %v after all clients finished, want 0", v))
				}
				return errors.Join(errs...)
			})
		})
	}
}

// bigBodies sends an 8 MB download and a 6 MB upload between pod and the
// demo app at dst, and checks that both bodies arrived intact.
func bigBodies(t *testing.T, pod *topology.Pod, dst netip.Addr) {
	t.Helper()
	// 8 MB down: the body hash matches the server's.
	dir := t.TempDir()
	file := filepath.Join(dir, "down")
	hdrs := curl(t, pod, "-D", "-", "-o", file, url(dst, 8080, "/bytes?n=8000000"))
	m := regexp.MustCompile(`(?i)x-content-sha256: ([0-9a-f]{64})`).FindStringSubmatch(hdrs)
	if m == nil {
		t.Fatalf("no X-Content-Sha256 in %q", hdrs)
	}
	if got := fileSHA(t, file); got != m[1] {
		t.Errorf("8 MB download: sha256 %s, server sent %s", got, m[1])
	}

	// 6 MB up: the server's hash of what it received matches.
	up := filepath.Join(dir, "up")
	data := make([]byte, 6<<20)
	rand.Read(data)
	os.WriteFile(up, data, 0o644)
	var res struct {
		Length int64
		SHA256 string
	}
	body := curl(t, pod, "--data-binary", "@"+up, "-H", "Content-Type: application/octet-stream", url(dst, 8080, "/sha256"))
	if err := json.Unmarshal([]byte(body), &res); err != nil {
		t.Fatalf("upload response %q: %v", body, err)
	}
	if sum := sha256.Sum256(data); res.Length != int64(len(data)) || res.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("6 MB upload: server got %d bytes sha256 %s", res.Length, res.SHA256)
	}
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

// TestOutboundBypass: excluded ports and CIDRs leave the pod without its
// sidecar, and an include list captures only that range.
func TestOutboundBypass(t *testing.T) {
	needRoot(t)
	t.Run("exclude", func(t *testing.T) {
		pods := newLab(t, "a", "b", "c")
		a, b, c := pods[0], pods[1], pods[2]
		startApp(t, b)
		startApp(t, c)
		sb := enroll(t, b, enrollOpts{})
		enroll(t, c, enrollOpts{})
		sa := enroll(t, a, enrollOpts{redirectArgs: []string{
			"--exclude-outbound-ports", "9000",
			"--exclude-outbound-cidrs", c.IPv4.String() + "/32",
		}})

		echo(t, a, hostPort(b.IPv4, 9000), []byte("port 9000 is excluded"))
		if n := sa.conns(t, "outbound"); n != 0 {
			t.Errorf("excluded port 9000: a's sidecar saw %v outbound connections, want 0", n)
		}
		if n := sb.conns(t, "inbound"); n != 1 {
			t.Errorf("b's sidecar saw %v inbound connections, want 1 (inbound capture is b's own)", n)
		}
		curl(t, a, url(c.IPv4, 8080, "/"))
		if n := sa.conns(t, "outbound"); n != 0 {
			t.Errorf("excluded CIDR: a's sidecar saw %v outbound connections, want 0", n)
		}
		curl(t, a, url(b.IPv4, 8080, "/"))
		if n := sa.conns(t, "outbound"); n != 1 {
			t.Errorf("b:8080 is not excluded: a's sidecar saw %v outbound connections, want 1", n)
		}
	})
	t.Run("include", func(t *testing.T) {
		pods := newLab(t, "a", "b", "c")
		a, b, c := pods[0], pods[1], pods[2]
		startApp(t, b)
		startApp(t, c)
		sa := enroll(t, a, enrollOpts{redirectArgs: []string{"--include-outbound-cidrs", c.IPv4.String() + "/32"}})
		curl(t, a, url(b.IPv4, 8080, "/"))
		if n := sa.conns(t, "outbound"); n != 0 {
			t.Errorf("b is outside the include list: a's sidecar saw %v outbound connections, want 0", n)
		}
		curl(t, a, url(c.IPv4, 8080, "/"))
		sa.waitLog(t, "outbound", hostPort(c.IPv4, 8080))
		if n := sa.conns(t, "outbound"); n != 1 {
			t.Errorf("c is in the include list: a's sidecar saw %v outbound connections, want 1", n)
		}
	})
}

// echo checks a TCP echo round trip with half-close from inside pod.
func echo(t *testing.T, pod *topology.Pod, addr string, msg []byte) {
	t.Helper()
	if err := pod.Echo(ctxFor(t, 20*time.Second), addr, msg); err != nil {
		t.Fatal(err)
	}
}

// TestTCPEchoHalfClose: an opaque TCP protocol passes both sidecars, and a
// client that shuts down its write side still reads the whole reply.
func TestTCPEchoHalfClose(t *testing.T) {
	needRoot(t)
	pods := newLab(t, "a", "b")
	a, b := pods[0], pods[1]
	startApp(t, b)
	sa := enroll(t, a, enrollOpts{})
	sb := enroll(t, b, enrollOpts{})
	msg := make([]byte, 3<<20)
	rand.Read(msg)
	echo(t, a, hostPort(b.IPv4, 9000), msg)
	out := sa.waitLog(t, "outbound", hostPort(b.IPv4, 9000))
	sb.waitLog(t, "inbound", hostPort(b.IPv4, 9000))
	if out["bytes_sent"] != float64(len(msg)) || out["bytes_received"] != float64(len(msg)) {
		t.Errorf("a's sidecar logged sent=%v received=%v, want %d each way", out["bytes_sent"], out["bytes_received"], len(msg))
	}
	// socat, a real TCP client, shutting down its side after stdin ends.
	if _, err := os.Stat("/usr/bin/socat"); err == nil {
		cmd := []string{"sh", "-c", "printf 'hello over the mesh' | socat -t 5 - TCP:" + hostPort(b.IPv4, 9000)}
		got, err := a.Run(ctxFor(t, 20*time.Second), cmd...)
		if err != nil || got != "hello over the mesh" {
			t.Errorf("socat echo = %q, %v", got, err)
		}
	}
}

// TestNoLoop: the proxy's own upstream connections are not captured, with
// only the mark exemption and with only the UID exemption.
func TestNoLoop(t *testing.T) {
	needRoot(t)
	eachExemption(t, func(t *testing.T, e exemption) {
		pods := newLab(t, "a", "b")
		a, b := pods[0], pods[1]
		startApp(t, b)
		sa := enroll(t, a, e.with(enrollOpts{}))
		curl(t, a, url(b.IPv4, 8080, "/"))
		// Once the client's connection is logged closed, a loop would
		// have shown: the sidecar's own connection to b, had it been
		// captured, was accepted (and counted) on the way to b, before
		// any answer could come back.
		sa.waitLog(t, "outbound", hostPort(b.IPv4, 8080))
		if n := sa.conns(t, "outbound"); n != 1 {
			t.Errorf("a's sidecar opened %v outbound connections for one request, want 1 (a loop captures its own)", n)
		}
		if n := sa.conns(t, "inbound"); n != 0 {
			t.Errorf("a's sidecar saw %v inbound connections, want 0", n)
		}
	})
}

// saveRules returns iptables-save and ip6tables-save of pod, without the
// timestamp comments and with counters zeroed, so two saves compare equal
// when the rules are equal.
func saveRules(t *testing.T, pod *topology.Pod) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := pod.Run(ctxFor(t, 10*time.Second), cmd)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			b.WriteString(regexp.MustCompile(`\[\d+:\d+\]`).ReplaceAllString(line, "[0:0]"))
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// TestRedirectIdempotentAndCleanup: a second redirect changes nothing, and
// cleanup gives back exactly the rules the namespace had before, both in a
// fresh namespace and in one that already had rules of its own.
func TestRedirectIdempotentAndCleanup(t *testing.T) {
	needRoot(t)
	for _, existing := range []bool{false, true} {
		name := "fresh"
		if existing {
			name = "with-own-rules"
		}
		t.Run(name, func(t *testing.T) {
			pods := newLab(t, "a")
			a := pods[0]
			ctx := ctxFor(t, 30*time.Second)
			if existing {
				for _, r := range [][]string{
					{"iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "5555", "-j", "RETURN"},
					{"iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"},
					{"ip6tables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "5555", "-j", "RETURN"},
				} {
					if _, err := a.Run(ctx, r...); err != nil {
						t.Fatal(err)
					}
				}
			}
			before := saveRules(t, a)
			args := []string{"redirect", "--netns", a.Path(), "--capture-dns", "--ipv6=on"}
			mustMeshgate(t, args...)
			first := saveRules(t, a)
			if !strings.Contains(first, "MESHGATE_OUTPUT") || !strings.Contains(first, "MESHGATE_DNS") {
				t.Fatalf("after redirect, rules lack our chains:\n%s", first)
			}
			mustMeshgate(t, args...)
			if second := saveRules(t, a); second != first {
				t.Errorf("second redirect changed the rules:\nfirst:\n%s\nsecond:\n%s", first, second)
			}
			mustMeshgate(t, "redirect", "--netns", a.Path(), "--cleanup")
			if after := saveRules(t, a); after != before {
				t.Errorf("cleanup did not restore the rules:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			mustMeshgate(t, "redirect", "--netns", a.Path(), "--cleanup") // twice is fine
		})
	}
}

// TestRedirectBadInputChangesNothing: a refused redirect names the flag and
// leaves the namespace untouched.
func TestRedirectBadInputChangesNothing(t *testing.T) {
	needRoot(t)
	a := newLab(t, "a")[0]
	before := saveRules(t, a)
	out, err := meshgate(t, "redirect", "--netns", a.Path(), "--exclude-outbound-cidrs", "10.0.0.0/33")
	if err == nil {
		t.Fatalf("redirect with a bad CIDR succeeded:\n%s", out)
	}
	if !strings.Contains(out, "--exclude-outbound-cidrs") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("error should be one line naming --exclude-outbound-cidrs, got:\n%s", out)
	}
	if after := saveRules(t, a); after != before {
		t.Errorf("a refused redirect changed the rules:\n%s", after)
	}
}

// TestLoopDetected: when the rules do not exempt the proxy (here: only the
// UID is exempt, but the proxy runs as root without marking), its own
// upstream connection is captured again. The proxy must notice and refuse
// it with a log line that says how to fix the rules, not loop or hang.
func TestLoopDetected(t *testing.T) {
	needRoot(t)
	pods := newLab(t, "a", "b")
	a, b := pods[0], pods[1]
	startApp(t, b)
	sa := enroll(t, a, enrollOpts{redirectArgs: []string{"--proxy-mark", "0"}, proxyConfig: "mark: 0\n", root: true})
	out, err := a.Run(ctxFor(t, 30*time.Second), "curl", "-sS", "--max-time", "10", url(b.IPv4, 8080, "/"))
	if err == nil {
		t.Fatalf("request through a looping sidecar succeeded: %q", out)
	}
	if strings.Contains(err.Error(), "timed out") {
		t.Errorf("the loop was not broken: curl timed out (%v)", err)
	}
	// The refusal is logged as the captured connection closes, which can
	// be a moment after curl saw the failure it caused.
	sa.waitOutput(t, "captured again", "sidecar log does not name the loop")
	// The loop was cut after a few hops, not left to run away. Each hop
	// is dialed by a connection still open, so once none is active no
	// further hop can come, and the count is final.
	eventually(t, 5*time.Second, func() error {
		if n := sa.metrics(t)["meshgate_tcp_connections_active{direction=outbound}"]; n != 0 {
			return fmt.Errorf("%v looped connections still active", n)
		}
		return nil
	})
	if n := sa.conns(t, "outbound"); n > 10 {
		t.Errorf("sidecar accepted %v outbound connections for one request: the loop ran on", n)
	}
}
