package netlist

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// TestParsers pins what each list parser returns (printed with %v) or
// the error it says, item by item.
func TestParsers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		parse func(string) (any, error)
		in    string
		want  string
	}{
		{"cidrs", cidrs, "10.0.0.0/8, 192.168.1.7 ,fd00::/8,::1", "[10.0.0.0/8 192.168.1.7/32 fd00::/8 ::1/128]"},
		{"ports", ports, " 80, 443 ,8080", "[80 443 8080]"},
		{"empty ports", ports, " ", "[]"},
		{"port word", ports, "80,http", `"http": not a port number; want a comma-separated list like 80,443`},
		{"port range", ports, "8000-8010", `"8000-8010": port ranges are not supported; list each port, like 8000,8001,8002`},
		{"port range colon", ports, "8000:8010", `"8000:8010": port ranges are not supported; list each port, like 8000,8001,8002`},
		{"negative port", ports, "-1", `"-1": not a port number; want a comma-separated list like 80,443`},
		{"big port", ports, "65536", `"65536": out of range; want a port from 1 to 65535`},
		{"zero port", ports, "0", `"0": port 0 is not a port; want a port from 1 to 65535`},
		{"star in plain list", ports, "*", `"*": not allowed in this list; list the ports`},
		{"empty item", ports, "80,,443", `"80,,443": an empty item; separate items with single commas`},
		{"two bad ports", ports, "x,0", "\"x\": not a port number; want a comma-separated list like 80,443\n\"0\": port 0 is not a port; want a port from 1 to 65535"},
		{"cidr bits", cidrs, "10.0.0.0/33", `"10.0.0.0/33": invalid prefix length "33" (IPv4 allows 0 to 32); want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`},
		{"cidr bits v6", cidrs, "fd00::/129", `"fd00::/129": invalid prefix length "129" (IPv6 allows 0 to 128); want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`},
		{"cidr host bits", cidrs, "10.1.2.3/8", `10.1.2.3/8: bits set past the /8; want 10.0.0.0/8`},
		{"cidr word", cidrs, "example.com", `"example.com": not an IP address or CIDR; want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`},
		{"cidr zone", cidrs, "fe80::1%eth0", `"fe80::1%eth0": zones are not supported; drop "%eth0"`},
		{"cidr mapped", cidrs, "::ffff:10.0.0.1", `"::ffff:10.0.0.1": an IPv4-mapped IPv6 address; write it as IPv4 (10.0.0.1)`},
		{"addrs", addrs, "10.96.0.10, fd00::a", "[10.96.0.10 fd00::a]"},
		{"addr zone", addrs, "fe80::1%eth0", `"fe80::1%eth0": zones are not supported; drop "%eth0"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.parse(tc.in)
			msg := fmt.Sprint(got)
			if err != nil {
				msg = err.Error()
			}
			if msg != tc.want {
				t.Errorf("%q:\n got %s\nwant %s", tc.in, msg, tc.want)
			}
		})
	}
}

func ports(s string) (any, error) { return ParsePorts(s) }
func cidrs(s string) (any, error) { return ParseCIDRs(s) }
func addrs(s string) (any, error) { return ParseAddrs(s) }

func TestCheckPrefix(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   netip.Prefix
		want string
	}{
		{"canonical", netip.MustParsePrefix("10.0.0.0/8"), ""},
		{"host", netip.MustParsePrefix("fd00::1/128"), ""},
		{"invalid", netip.Prefix{}, "want a CIDR, e.g. 10.0.0.0/8 or fd00::/8"},
		{"host bits", netip.MustParsePrefix("10.1.2.3/8"), "10.1.2.3/8: bits set past the /8; want 10.0.0.0/8"},
		{"mapped", netip.MustParsePrefix("::ffff:10.0.0.0/104"), "::ffff:10.0.0.0/104: IPv4-mapped, so it would never match; write it as IPv4, e.g. 10.0.0.0/8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ""
			if err := CheckPrefix(tc.in); err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// fuzzList checks a list parser on s: an error comes without a result;
// every item accepted is good; and the list printed back parses to the same.
func fuzzList[T comparable](t *testing.T, s string, parseOrAll func(string) (bool, []T, error), parse func(string) ([]T, error), good func(T) bool) {
	all, items, err := parseOrAll(s)
	if err != nil {
		if all || items != nil {
			t.Fatalf("%q: error with a result", s)
		}
		return
	}
	parts := make([]string, len(items))
	for i, it := range items {
		if !good(it) {
			t.Fatalf("%q: accepted %v", s, it)
		}
		parts[i] = fmt.Sprint(it)
	}
	if all {
		return
	}
	again, err := parse(strings.Join(parts, ","))
	if err != nil || !slices.Equal(again, items) {
		t.Fatalf("%q: round trip gave %v, %v", s, again, err)
	}
}

func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"80,443", "*", "", "0", "65535,1", " 8080 ", "80,,1", "8000-8010", "+80", "0x50", "١٢"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fuzzList(t, s, ParsePortsOrAll, ParsePorts, func(p uint16) bool { return p != 0 })
	})
}

// FuzzParseCIDRs also checks that whatever it accepts, iptables would
// match as written (CheckPrefix passes, no zone).
func FuzzParseCIDRs(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "10.0.0.0/33", "::1", "fd00::/8,1.2.3.4", "*", "fe80::1%eth0/64", "::ffff:1.2.3.4/128", "1.2.3.4/+8", "1.2.3.4/08"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fuzzList(t, s, ParseCIDRsOrAll, ParseCIDRs, func(p netip.Prefix) bool { return CheckPrefix(p) == nil && p.Addr().Zone() == "" })
	})
}
