package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net/netip"
	"strings"
	"testing"

	"meshgate/netlist"
	"meshgate/redirect"
)

// TestRedirectRejects pins the full text of every refusal: each names the
// flag and the fix. --dry-run keeps the accepted cases away from iptables.
func TestRedirectRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad port", []string{"--inbound-ports", "80,http"},
			`--inbound-ports "http": not a port number; want a comma-separated list like 80,443`},
		{"port range", []string{"--exclude-outbound-ports", "8000-8010"},
			`--exclude-outbound-ports "8000-8010": port ranges are not supported; list each port, like 8000,8001,8002`},
		{"port out of range", []string{"--exclude-inbound-ports", "70000"},
			`--exclude-inbound-ports "70000": out of range; want a port from 1 to 65535`},
		{"proxy port captured", []string{"--inbound-ports", "8080,15021"},
			`--inbound-ports: 15021 is the proxy's health port and is never captured; remove it`},
		{"bad CIDR", []string{"--exclude-outbound-cidrs", "10.0.0.0/33"},
			`--exclude-outbound-cidrs "10.0.0.0/33": invalid prefix length "33" (IPv4 allows 0 to 32); want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`},
		{"CIDR host bits", []string{"--include-outbound-cidrs", "10.1.2.3/8"},
			`--include-outbound-cidrs 10.1.2.3/8: bits set past the /8; want 10.0.0.0/8`},
		{"bad mode", []string{"--mode", "nat"}, `--mode "nat": want redirect or tproxy`},
		{"bad ipv6", []string{"--ipv6=maybe"}, `--ipv6 "maybe": want auto, on or off`},
		{"both exemptions off", []string{"--proxy-uid", "none", "--proxy-mark", "0"},
			`--proxy-uid none with --proxy-mark 0: the proxy would capture its own connections; keep --proxy-uid (default 1337) or --proxy-mark (default 0x539)`},
		{"bad uid", []string{"--proxy-uid", "envoy"}, `--proxy-uid "envoy": want a numeric UID like 1337, or none`},
		{"root uid", []string{"--proxy-uid", "0"},
			`--proxy-uid 0: the traffic of every root process would escape capture, and apps in containers often run as root; run the proxy as a UID of its own, e.g. 1337`},
		{"bad mark", []string{"--proxy-mark", "0xgg"}, `--proxy-mark "0xgg": want a 32-bit mark like 0x539 or 1337, or 0 for none`},
		{"tproxy mark clash", []string{"--mode", "tproxy", "--proxy-mark", "0x1000"},
			`--proxy-mark 0x1000: shares bit 0x1000 with the tproxy routing mark, so the proxy's own packets would be routed back to itself; pick a mark without that bit, e.g. 0x539`},
		{"dns servers without capture", []string{"--dns-servers", "10.96.0.10"},
			`--dns-servers without --capture-dns: the servers only limit DNS capture; add --capture-dns or drop --dns-servers`},
		{"missing resolv.conf", []string{"--capture-dns", "--resolv-conf", "/nonexistent/resolv.conf"},
			`--capture-dns: read the DNS servers: open /nonexistent/resolv.conf: no such file or directory; pass --dns-servers with a list, or * to capture DNS to any server`},
		{"bad log level", []string{"--log-level", "loud"}, `--log-level "loud": want debug, info, warn or error`},
		{"cleanup and dry-run", []string{"--cleanup"},
			`--cleanup with --dry-run: --dry-run shows the rules an apply would install; drop one of them`},
		{"self-check of a dry run", []string{"--self-check"},
			`--self-check checks the rules an apply installs; it goes without --cleanup and --dry-run`},
		{"every problem at once", []string{"--mode", "nat", "--inbound-ports", "x", "--log-level", "loud"}, strings.Join([]string{
			`--inbound-ports "x": not a port number; want a comma-separated list like 80,443`,
			`--mode "nat": want redirect or tproxy`,
			`--log-level "loud": want debug, info, warn or error`,
		}, "\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"--dry-run"}, tc.args...)
			err := runRedirect(context.Background(), args, &stdout, &stderr)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error:\n got %v\nwant %s", err, tc.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("a refused redirect printed rules:\n%s", stdout.String())
			}
		})
	}
}

// TestRedirectRefusalIsOneLine: through main, a refusal is one line on
// stderr and exit code 1.
func TestRedirectRefusalIsOneLine(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := mainExit([]string{"redirect", "--dry-run", "--mode", "nat", "--exclude-outbound-cidrs", "10.0.0.0/33"}, &stdout, &stderr)
	want := `meshgate redirect: --exclude-outbound-cidrs "10.0.0.0/33": invalid prefix length "33" (IPv4 allows 0 to 32); want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3; --mode "nat": want redirect or tproxy` + "\n"
	if code != 1 || stderr.String() != want {
		t.Errorf("exit %d, stderr:\n%s\nwant exit 1, stderr:\n%s", code, stderr.String(), want)
	}
}

func TestRedirectDryRun(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"--dry-run", "--netns", "/run/netns/nowhere", "--exclude-inbound-ports", "22", "--capture-dns", "--dns-servers", "10.96.0.10"}
	if err := runRedirect(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	cfg := redirect.DefaultConfig()
	cfg.ExcludeInboundPorts = []uint16{22}
	cfg.CaptureDNS = true
	cfg.DNSServers = redirectAddrs(t, "10.96.0.10")
	want := "# meshgate redirect --dry-run: nothing was changed.\n# rules for: " + cfg.String() + "\n" +
		"# (--netns /run/netns/nowhere was not looked at: the rules do not depend on it)\n" +
		redirect.Build(cfg).Render()
	if got := stdout.String(); got != want {
		t.Errorf("dry run printed:\n%s\nwant:\n%s", got, want)
	}
	for _, s := range []string{"# IPv6 rules", "--ipv6=auto: installed only if the namespace has IPv6", "-A MESHGATE_INBOUND -p tcp -m tcp --dport 22 -j RETURN"} {
		if !strings.Contains(stdout.String(), s) {
			t.Errorf("dry run lacks %q", s)
		}
	}
}

func redirectAddrs(t *testing.T, s string) []netip.Addr {
	t.Helper()
	a, err := netlist.ParseAddrs(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestRedirectHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := runRedirect(context.Background(), []string{"--help"}, &stdout, &stderr)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, s := range []string{
		"Usage: meshgate redirect [--netns PATH] [--dry-run | --cleanup] [rule flags]",
		"-netns PATH", "-dry-run", "-cleanup", "-proxy-uid UID", "-proxy-gid LIST", "-proxy-mark MARK",
		"-inbound-ports LIST", "-exclude-inbound-ports LIST", "-exclude-outbound-ports LIST",
		"-exclude-outbound-cidrs LIST", "-include-outbound-cidrs LIST", "-capture-dns", "-dns-servers LIST",
		"-ipv6 auto", "-mode redirect", "-log-level level", "Examples:",
	} {
		if !strings.Contains(stderr.String(), s) {
			t.Errorf("help lacks %q", s)
		}
	}
}
