package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"meshgate/intercept"
	"meshgate/nsrun"
)

// netnsChildEnv marks the copy of the test binary that runs inside the
// throwaway namespace.
const netnsChildEnv = "MESHGATE_PROXY_NETNS_CHILD"

// TestInterceptionNetns checks the real original-destination lookups
// against real iptables rules: SO_ORIGINAL_DST (IPv4) and
// IP6T_SO_ORIGINAL_DST (IPv6) behind REDIRECT, inbound with its
// passthrough source, and TPROXY with IP_TRANSPARENT.
//
// Every socket of the proxy, including those it dials from any goroutine,
// must live in the namespace, and a namespace belongs to a thread, not to
// a process: so the test binary runs itself again inside a throwaway
// namespace (started from a thread switched there by nsrun), and that
// child does the work. The namespace, and with it every rule and address,
// is deleted at cleanup.
func TestInterceptionNetns(t *testing.T) {
	if os.Getenv(netnsChildEnv) != "" {
		interceptionInNetns(t)
		return
	}
	if testing.Short() {
		t.Skip("creates a network namespace with iptables rules: needs root, not run with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("creates a network namespace with iptables rules: needs root")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install iproute2 iptables)", tool)
		}
	}
	name := fmt.Sprintf("mgproxytest%d", os.Getpid())
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { run(t, "ip", "netns", "delete", name) })

	args := []string{"-test.run=^TestInterceptionNetns$", "-test.v", "-test.count=1"}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), netnsChildEnv+"=1")
	var out []byte
	err := nsrun.Do("/run/netns/"+name, func() error {
		var err error
		out, err = cmd.CombinedOutput() // forked from the switched thread: born in the namespace
		return err
	})
	if err != nil {
		t.Fatalf("in namespace %s: %v\n%s", name, err, out)
	}
	t.Logf("in namespace %s:\n%s", name, out)
}

// interceptionInNetns runs inside the throwaway namespace.
func interceptionInNetns(t *testing.T) {
	const v6 = "fd00:6d67:7078::1" // assigned to lo here: ::1 is not NATed
	run(t, "ip", "link", "set", "lo", "up")
	run(t, "ip", "-6", "addr", "add", v6+"/128", "dev", "lo", "nodad")

	t.Run("redirect", func(t *testing.T) {
		r := startProxy(t, testConfig())
		if r.markCtl == nil {
			t.Fatal("socket mark not set although root")
		}
		a := r.Addrs()
		if len(a.Outbound) != 2 {
			t.Fatalf("outbound listeners %v, want IPv4 and IPv6", a.Outbound)
		}
		for i, tc := range []struct {
			name, dir, ipt, host string
			proxyPort            uint16
		}{
			{"IPv4 outbound", "outbound", "iptables", "127.0.0.1", a.Outbound[0].Port()},
			{"IPv6 outbound", "outbound", "ip6tables", v6, a.Outbound[1].Port()},
			{"IPv4 inbound", "inbound", "iptables", "127.0.0.1", a.Inbound[0].Port()},
			{"IPv6 inbound", "inbound", "ip6tables", v6, a.Inbound[1].Port()},
		} {
			t.Run(tc.name, func(t *testing.T) {
				be := startBackend(t, net.JoinHostPort(tc.host, "0"), echo)
				bport := strconv.Itoa(int(addrPort(be.ln.Addr()).Port()))
				rule := []string{"-t", "nat", "OUTPUT", "-p", "tcp", "-d", tc.host, "--dport", bport,
					"-m", "mark", "!", "--mark", "0x539", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(tc.proxyPort))}
				ipt(t, tc.ipt, rule)

				c := dial(t, be.addr()) // to the backend: the rule sends it to the proxy
				if got := roundTrip(t, c, "via the proxy"); got != "via the proxy" {
					t.Fatalf("echo = %q", got)
				}
				src := addrPort(c.LocalAddr()).String()
				c.Close()
				e := r.closedLogs(t, i+1)[i]
				for k, want := range map[string]string{"direction": tc.dir, "src": src, "dst": be.addr(), "bytes_sent": "13", "bytes_received": "13"} {
					if got := field(e, k); got != want {
						t.Errorf("log %s = %q, want %q", k, got, want)
					}
				}
				srcs := be.sources()
				if len(srcs) != 1 {
					t.Fatalf("backend saw %d connections, want 1", len(srcs))
				}
				if tc.dir == "inbound" && tc.ipt == "iptables" && srcs[0].Addr() != netip.MustParseAddr("127.0.0.6") {
					t.Errorf("app saw the connection from %v, want 127.0.0.6", srcs[0])
				}
				if tc.dir == "outbound" && srcs[0].Addr() != addrPort(c.LocalAddr()).Addr() {
					t.Errorf("backend saw the connection from %v, want the client's address", srcs[0])
				}
			})
		}
		if got := r.metric(t, "meshgate_tcp_connections_opened_total", Outbound); got != 2 {
			t.Errorf("outbound opened = %v, want 2 (one per family, no loop)", got)
		}
		if got := r.metric(t, "meshgate_tcp_connections_opened_total", Inbound); got != 2 {
			t.Errorf("inbound opened = %v, want 2", got)
		}

		t.Run("direct connection to the capture port is refused", func(t *testing.T) {
			n := len(r.logs.FilterMessage("connection closed").All())
			expectRefused(t, r.out())
			e := r.closedLogs(t, n+1)[n]
			if got := field(e, "error"); !strings.Contains(got, "loop guard") && !strings.Contains(got, "not redirected") {
				t.Errorf("error = %q, want refused by the loop guard", got)
			}
		})
	})

	t.Run("IPv6 inbound from ::6 once assigned", func(t *testing.T) {
		run(t, "ip", "-6", "addr", "add", "::6/128", "dev", "lo", "nodad")
		t.Cleanup(func() { run(t, "ip", "-6", "addr", "del", "::6/128", "dev", "lo") })
		r := startProxy(t, testConfig())
		be := startBackend(t, net.JoinHostPort(v6, "0"), echo)
		bport := strconv.Itoa(int(addrPort(be.ln.Addr()).Port()))
		ipt(t, "ip6tables", []string{"-t", "nat", "OUTPUT", "-p", "tcp", "-d", v6, "--dport", bport,
			"-m", "mark", "!", "--mark", "0x539", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(r.Addrs().Inbound[1].Port()))})
		c := dial(t, be.addr())
		roundTrip(t, c, "six")
		c.Close()
		r.closedLogs(t, 1)
		if srcs := be.sources(); len(srcs) != 1 || srcs[0].Addr() != netip.MustParseAddr("::6") {
			t.Errorf("app saw %v, want one connection from ::6", srcs)
		}
	})

	t.Run("tproxy", func(t *testing.T) {
		cfg := testConfig()
		cfg.Mode = intercept.ModeTProxy
		r := startProxy(t, cfg)
		be := startBackend(t, "127.0.0.1:0", echo)
		bport := strconv.Itoa(int(addrPort(be.ln.Addr()).Port()))
		inPort := strconv.Itoa(int(r.Addrs().Inbound[0].Port()))
		// TPROXY inbound: marked packets are routed locally; the proxy's
		// own connections to the app (by their socket mark) pass.
		run(t, "ip", "rule", "add", "fwmark", "0x1/0x1", "lookup", "133")
		t.Cleanup(func() { run(t, "ip", "rule", "del", "fwmark", "0x1/0x1", "lookup", "133") })
		run(t, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "133")
		t.Cleanup(func() { run(t, "ip", "route", "del", "local", "0.0.0.0/0", "dev", "lo", "table", "133") })
		ipt(t, "iptables", []string{"-t", "mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", "0x539", "-j", "RETURN"})
		ipt(t, "iptables", []string{"-t", "mangle", "PREROUTING", "-p", "tcp", "--dport", bport,
			"-j", "TPROXY", "--on-port", inPort, "--tproxy-mark", "0x1/0x1"})

		c := dial(t, be.addr())
		if got := roundTrip(t, c, "tproxied"); got != "tproxied" {
			t.Fatalf("echo = %q", got)
		}
		client := addrPort(c.LocalAddr())
		c.Close()
		e := r.closedLogs(t, 1)[0]
		if got := field(e, "direction"); got != "inbound" {
			t.Errorf("direction = %s, want inbound", got)
		}
		if got := field(e, "dst"); got != be.addr() {
			t.Errorf("dst = %s, want %s", got, be.addr())
		}
		// What tproxy mode is for: the app sees the client's address.
		if srcs := be.sources(); len(srcs) != 1 || srcs[0].Addr() != client.Addr() || srcs[0] == client {
			t.Errorf("app saw %v, want one connection from the client's address %v (on a port of the proxy's)", srcs, client.Addr())
		}

		// The pod calling its own address is captured by nat (TPROXY sees
		// only traffic from outside): its original destination is
		// SO_ORIGINAL_DST, and the app is reached from 127.0.0.6.
		be2 := startBackend(t, "127.0.0.1:0", echo)
		ipt(t, "iptables", []string{"-t", "nat", "OUTPUT", "-p", "tcp", "-d", "127.0.0.1", "--dport", strconv.Itoa(int(addrPort(be2.ln.Addr()).Port())),
			"-m", "mark", "!", "--mark", "0x539", "-j", "REDIRECT", "--to-ports", inPort})
		c = dial(t, be2.addr())
		if got := roundTrip(t, c, "redirected"); got != "redirected" {
			t.Fatalf("echo = %q", got)
		}
		c.Close()
		if got := field(r.closedLogs(t, 2)[1], "dst"); got != be2.addr() {
			t.Errorf("redirected in tproxy mode: dst = %s, want %s", got, be2.addr())
		}
		if srcs := be2.sources(); len(srcs) != 1 || srcs[0].Addr() != netip.MustParseAddr("127.0.0.6") {
			t.Errorf("redirected in tproxy mode: app saw %v, want one connection from 127.0.0.6", srcs)
		}
	})
}

// ipt appends rule (table, chain, then the match) with tool, and deletes
// it at cleanup.
func ipt(t *testing.T, tool string, rule []string) {
	t.Helper()
	table, chain, spec := rule[:2], rule[2], rule[3:]
	run(t, tool, append(append(append([]string{}, table...), "-A", chain), spec...)...)
	t.Cleanup(func() { run(t, tool, append(append(append([]string{}, table...), "-D", chain), spec...)...) })
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
