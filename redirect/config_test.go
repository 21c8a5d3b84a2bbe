package redirect

import (
	"flag"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"meshgate/intercept"
)

func TestDefaultConfigIsValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	u32 := func(v uint32) *uint32 { return &v }
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		edit func(c *Config)
		want string
	}{
		{"zero config", func(c *Config) { *c = Config{} }, strings.Join([]string{
			`--mode "": want redirect or tproxy`,
			`--ipv6 "": want auto, on or off`,
			`--proxy-uid none with --proxy-mark 0: the proxy would capture its own connections; keep --proxy-uid (default 1337) or --proxy-mark (default 0x539)`,
			`redirect.Config.OutboundPort is 0: want a port, e.g. from DefaultConfig`,
			`redirect.Config.InboundPort is 0: want a port, e.g. from DefaultConfig`,
			`redirect.Config.DNSPort is 0: want a port, e.g. from DefaultConfig`,
		}, "\n")},
		{"bad mode", func(c *Config) { c.Mode = "nat" }, `--mode "nat": want redirect or tproxy`},
		{"bad ipv6", func(c *Config) { c.IPv6 = "yes" }, `--ipv6 "yes": want auto, on or off`},
		{"no exemption", func(c *Config) { c.ProxyUID, c.ProxyMark = nil, 0 },
			`--proxy-uid none with --proxy-mark 0: the proxy would capture its own connections; keep --proxy-uid (default 1337) or --proxy-mark (default 0x539)`},
		{"GID alone is an exemption", func(c *Config) { c.ProxyUID, c.ProxyMark, c.ProxyGIDs = nil, 0, []uint32{1337} }, ""},
		{"root UID", func(c *Config) { c.ProxyUID = u32(0) },
			`--proxy-uid 0: the traffic of every root process would escape capture, and apps in containers often run as root; run the proxy as a UID of its own, e.g. 1337`},
		{"root GID and a duplicate", func(c *Config) { c.ProxyGIDs = []uint32{0, 7, 7} },
			"--proxy-gid: GID 7 is listed twice; list it once\n--proxy-gid 0: the traffic of every root-group process would escape capture; use a group of the proxy's own"},
		{"tproxy mark overlap", func(c *Config) { c.Mode, c.ProxyMark = intercept.ModeTProxy, 0x1539 },
			`--proxy-mark 0x1539: shares bit 0x1000 with the tproxy routing mark, so the proxy's own packets would be routed back to itself; pick a mark without that bit, e.g. 0x539`},
		{"mark overlap is fine in redirect mode", func(c *Config) { c.ProxyMark = 0x1539 }, ""},
		{"same capture ports", func(c *Config) { c.DNSPort = c.InboundPort },
			`redirect.Config: OutboundPort 15001, InboundPort 15006 and DNSPort 15006 must differ`},
		{"all and a list", func(c *Config) { c.InboundPorts = []uint16{80} }, `--inbound-ports: "*" and a list of ports at once; give one`},
		{"inbound proxy ports", func(c *Config) { c.InboundAllPorts, c.InboundPorts = false, []uint16{80, 15020, 15006} },
			"--inbound-ports: 15020 is the proxy's metrics port and is never captured; remove it\n--inbound-ports: 15006 is the proxy's inbound capture port and is never captured; remove it"},
		{"inbound listed and excluded", func(c *Config) {
			c.InboundAllPorts, c.InboundPorts, c.ExcludeInboundPorts = false, []uint16{80, 443}, []uint16{443}
		}, `--inbound-ports and --exclude-inbound-ports both list 443; remove it from one`},
		{"port zero and duplicate", func(c *Config) { c.ExcludeOutboundPorts = []uint16{0, 22, 22} },
			"--exclude-outbound-ports: port 0 is not a port; want 1-65535\n--exclude-outbound-ports: port 22 is listed twice; list it once"},
		{"bad prefixes", func(c *Config) {
			c.ExcludeOutboundCIDRs = []netip.Prefix{{}, netip.PrefixFrom(netip.MustParseAddr("10.1.2.3"), 8), pfx("::ffff:10.0.0.0/104"), pfx("10.0.0.0/8"), pfx("10.0.0.0/8")}
		}, strings.Join([]string{
			`--exclude-outbound-cidrs: want a CIDR, e.g. 10.0.0.0/8 or fd00::/8`,
			`--exclude-outbound-cidrs 10.1.2.3/8: bits set past the /8; want 10.0.0.0/8`,
			`--exclude-outbound-cidrs ::ffff:10.0.0.0/104: IPv4-mapped, so it would never match; write it as IPv4, e.g. 10.0.0.0/8`,
			`--exclude-outbound-cidrs: 10.0.0.0/8 is listed twice; list it once`,
		}, "\n")},
		{"include all and a list", func(c *Config) { c.IncludeOutboundCIDRs = []netip.Prefix{pfx("10.0.0.0/8")} },
			`--include-outbound-cidrs: "*" and a list of CIDRs at once; give one`},
		{"dns servers without capture", func(c *Config) { c.DNSServers = []netip.Addr{netip.MustParseAddr("10.0.0.10")} },
			`--dns-servers without --capture-dns: the servers only limit DNS capture; add --capture-dns or drop --dns-servers`},
		{"bad dns servers", func(c *Config) {
			c.CaptureDNS = true
			c.DNSServers = []netip.Addr{{}, netip.MustParseAddr("::ffff:10.0.0.1"), netip.MustParseAddr("fe80::1%eth0"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.1")}
		}, strings.Join([]string{
			`--dns-servers: an empty address; want IP addresses like 10.96.0.10`,
			`--dns-servers "::ffff:10.0.0.1": an IPv4-mapped IPv6 address; write it as IPv4 (10.0.0.1)`,
			`--dns-servers "fe80::1%eth0": iptables cannot match a zone; drop %eth0`,
			`--dns-servers: 10.0.0.1 is listed twice; list it once`,
		}, "\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.edit(&c)
			got := ""
			if err := c.Validate(); err != nil {
				got = err.Error()
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Validate() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParsers(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		parse    func(string) (any, error)
		want     any
		wantErr  string
	}{
		{"uid", "1000", uid, uint32(1000), ""},
		{"uid none", "none", uid, "none", ""},
		{"uid word", "proxy", uid, nil, `"proxy": want a numeric UID like 1337, or none`},
		{"mark hex", "0x539", mark, uint32(0x539), ""},
		{"mark dec", "1337", mark, uint32(1337), ""},
		{"mark leading zero is decimal", "0100", mark, uint32(100), ""},
		{"mark big", "0x100000000", mark, nil, `"0x100000000": want a 32-bit mark like 0x539 or 1337, or 0 for none`},
		{"gids", "5, 6", gids, []uint32{5, 6}, ""},
		{"gid word", "5,wheel", gids, nil, `"wheel": want numeric GIDs like 1337,1338`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.parse(tc.in)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error:\n got %v\nwant %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func gids(s string) (any, error) { return ParseGIDs(s) }
func mark(s string) (any, error) { return ParseMark(s) }
func uid(s string) (any, error) {
	u, err := ParseUID(s)
	if err != nil || u == nil {
		if err == nil {
			return "none", nil
		}
		return nil, err
	}
	return *u, nil
}

func TestParseResolvConf(t *testing.T) {
	in := `# generated
search svc.cluster.local
nameserver 10.96.0.10
nameserver   fe80::1%eth0
; comment
nameserver not-an-address
nameserver 10.96.0.10
options ndots:5
nameserver ::ffff:192.0.2.1
`
	got, err := ParseResolvConf(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fe80::1"), netip.MustParseAddr("192.0.2.1")}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestAddFlags(t *testing.T) {
	dir := t.TempDir()
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 10.96.0.10\nnameserver fd00::a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.conf")
	if err := os.WriteFile(empty, []byte("search x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u32 := func(v uint32) *uint32 { return &v }
	def := DefaultConfig()
	for _, tc := range []struct {
		name    string
		args    []string
		want    func(c *Config)
		wantErr string
	}{
		{"defaults", nil, func(*Config) {}, ""},
		{"everything", []string{
			"--mode", "tproxy", "--ipv6=off", "--proxy-uid", "1000", "--proxy-gid", "5,6", "--proxy-mark", "0x400",
			"--inbound-ports", "80,443", "--exclude-inbound-ports", "22", "--exclude-outbound-ports", "5432",
			"--exclude-outbound-cidrs", "10.96.0.0/12,169.254.169.254", "--include-outbound-cidrs", "10.0.0.0/8",
			"--capture-dns", "--dns-servers", "10.96.0.10",
		}, func(c *Config) {
			c.Mode, c.IPv6, c.ProxyUID, c.ProxyGIDs, c.ProxyMark = intercept.ModeTProxy, IPv6Off, u32(1000), []uint32{5, 6}, 0x400
			c.InboundAllPorts, c.InboundPorts, c.ExcludeInboundPorts, c.ExcludeOutboundPorts = false, []uint16{80, 443}, []uint16{22}, []uint16{5432}
			c.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("169.254.169.254/32")}
			c.IncludeOutboundAll, c.IncludeOutboundCIDRs = false, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
			c.CaptureDNS, c.DNSServers = true, []netip.Addr{netip.MustParseAddr("10.96.0.10")}
		}, ""},
		{"no inbound, no outbound", []string{"--inbound-ports=", "--include-outbound-cidrs="}, func(c *Config) {
			c.InboundAllPorts, c.IncludeOutboundAll = false, false
		}, ""},
		{"mark only", []string{"--proxy-uid", "none"}, func(c *Config) { c.ProxyUID = nil }, ""},
		{"dns from resolv.conf", []string{"--capture-dns", "--resolv-conf", resolv}, func(c *Config) {
			c.CaptureDNS, c.DNSServers = true, []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a")}
		}, ""},
		{"dns to any server", []string{"--capture-dns", "--dns-servers", "*", "--resolv-conf", "/nonexistent"}, func(c *Config) { c.CaptureDNS = true }, ""},
		{"missing resolv.conf", []string{"--capture-dns", "--resolv-conf", "/nonexistent/resolv.conf"}, nil,
			"--capture-dns: read the DNS servers: open /nonexistent/resolv.conf: no such file or directory; pass --dns-servers with a list, or * to capture DNS to any server"},
		{"resolv.conf without servers", []string{"--capture-dns", "--resolv-conf", empty}, nil,
			"--capture-dns: " + empty + " lists no nameserver; pass --dns-servers with a list, or * to capture DNS to any server"},
		{"dns servers without capture", []string{"--dns-servers", "*"}, nil,
			"--dns-servers without --capture-dns: the servers only limit DNS capture; add --capture-dns or drop --dns-servers"},
		{"every problem at once", []string{
			"--mode", "nat", "--proxy-uid", "none", "--proxy-mark", "0", "--inbound-ports", "80,x",
			"--exclude-outbound-cidrs", "10.0.0.0/33,10.1.0.0/8", "--exclude-inbound-ports", "8000-8010", "--dns-servers", "dns.local", "--capture-dns",
		}, nil, strings.Join([]string{
			`--inbound-ports "x": not a port number; want a comma-separated list like 80,443`,
			`--exclude-inbound-ports "8000-8010": port ranges are not supported; list each port, like 8000,8001,8002`,
			`--exclude-outbound-cidrs "10.0.0.0/33": invalid prefix length "33" (IPv4 allows 0 to 32); want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`,
			`--exclude-outbound-cidrs 10.1.0.0/8: bits set past the /8; want 10.0.0.0/8`,
			`--dns-servers "dns.local": not an IP address or CIDR; want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`,
			`--mode "nat": want redirect or tproxy`,
			`--proxy-uid none with --proxy-mark 0: the proxy would capture its own connections; keep --proxy-uid (default 1337) or --proxy-mark (default 0x539)`,
		}, "\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			get := AddFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			c, err := get()
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error:\n got %v\nwant %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := def
			tc.want(&want)
			if diff := cmp.Diff(want, c, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestConfigString(t *testing.T) {
	got := DefaultConfig().String()
	want := "--mode=redirect --ipv6=auto --proxy-uid=1337 --proxy-mark=0x539 --inbound-ports=* --include-outbound-cidrs=*"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func FuzzParseResolvConf(f *testing.F) {
	f.Add("nameserver 10.0.0.1\nnameserver fe80::1%eth0\n")
	f.Add("nameserver\nnameserver ::ffff:1.2.3.4 extra\n#nameserver 1.1.1.1")
	f.Fuzz(func(t *testing.T, s string) {
		addrs, err := ParseResolvConf(strings.NewReader(s))
		if err != nil {
			return // lines too long for the scanner
		}
		for _, a := range addrs {
			if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
				t.Fatalf("%q: returned %v", s, a)
			}
		}
		if len(duplicates(addrs)) > 0 {
			t.Fatalf("%q: duplicates in %v", s, addrs)
		}
	})
}

// FuzzFlags feeds arbitrary flag values through AddFlags; whatever is
// accepted must build rules that keep the chain invariants.
func FuzzFlags(f *testing.F) {
	f.Add("*", "", "", "", "*", "1337", "0x539", "redirect", false)
	f.Add("80,443", "22", "5432", "10.0.0.0/8", "192.168.0.0/16", "none", "1", "tproxy", true)
	f.Add("", "15020", "", "fd00::/8", "", "7", "0", "redirect", true)
	f.Fuzz(func(t *testing.T, in, exIn, exOut, exCIDR, incCIDR, uid, mark, mode string, dns bool) {
		fs := flag.NewFlagSet("fuzz", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		get := AddFlags(fs)
		args := []string{"--inbound-ports=" + in, "--exclude-inbound-ports=" + exIn, "--exclude-outbound-ports=" + exOut,
			"--exclude-outbound-cidrs=" + exCIDR, "--include-outbound-cidrs=" + incCIDR, "--proxy-uid=" + uid,
			"--proxy-mark=" + mark, "--mode=" + mode, "--ipv6=on", "--dns-servers=*"}
		if dns {
			args = append(args, "--capture-dns")
		}
		if err := fs.Parse(args); err != nil {
			return
		}
		c, err := get()
		if err != nil {
			if !strings.HasPrefix(err.Error(), "--") && !strings.HasPrefix(err.Error(), "redirect.Config") {
				t.Fatalf("error does not start with the flag: %v", err)
			}
			return
		}
		rs := Build(c)
		for _, fr := range rs.Families {
			for _, tb := range fr.Tables {
				checkTable(t, fr.Family, tb)
			}
			checkProxyPortsNeverCaptured(t, c, fr)
			checkProxyNeverCapturesItself(t, c, fr)
		}
	})
}
