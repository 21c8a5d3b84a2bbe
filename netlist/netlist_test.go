package netlist

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParsers(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		parse    func(string) (any, error)
		want     any
		wantErr  string
	}{
		{"cidrs", "10.0.0.0/8, 192.168.1.7 ,fd00::/8,::1", cidrs,
			[]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.7/32"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("::1/128")}, ""},
		{"ports", " 80, 443 ,8080", ports, []uint16{80, 443, 8080}, ""},
		{"empty ports", " ", ports, []uint16(nil), ""},
		{"port word", "80,http", ports, nil, `"http": not a port number; want a comma-separated list like 80,443`},
		{"port range", "8000-8010", ports, nil, `"8000-8010": port ranges are not supported; list each port, like 8000,8001,8002`},
		{"port range colon", "8000:8010", ports, nil, `"8000:8010": port ranges are not supported; list each port, like 8000,8001,8002`},
		{"negative port", "-1", ports, nil, `"-1": not a port number; want a comma-separated list like 80,443`},
		{"big port", "65536", ports, nil, `"65536": out of range; want a port from 1 to 65535`},
		{"zero port", "0", ports, nil, `"0": port 0 is not a port; want a port from 1 to 65535`},
		{"star in plain list", "*", ports, nil, `"*": not allowed in this list; list the ports`},
		{"empty item", "80,,443", ports, nil, `"80,,443": an empty item; separate items with single commas`},
		{"two bad ports", "x,0", ports, nil, "\"x\": not a port number; want a comma-separated list like 80,443\n\"0\": port 0 is not a port; want a port from 1 to 65535"},
		{"cidr bits", "10.0.0.0/33", cidrs, nil, `"10.0.0.0/33": invalid prefix length "33" (IPv4 allows 0 to 32); want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`},
		{"cidr bits v6", "fd00::/129", cidrs, nil, `"fd00::/129": invalid prefix length "129" (IPv6 allows 0 to 128); want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`},
		{"cidr host bits", "10.1.2.3/8", cidrs, nil, `10.1.2.3/8: bits set past the /8; want 10.0.0.0/8`},
		{"cidr word", "example.com", cidrs, nil, `"example.com": not an IP address or CIDR; want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`},
		{"cidr zone", "fe80::1%eth0", cidrs, nil, `"fe80::1%eth0": zones are not supported; drop "%eth0"`},
		{"cidr mapped", "::ffff:10.0.0.1", cidrs, nil, `"::ffff:10.0.0.1": an IPv4-mapped IPv6 address; write it as IPv4 (10.0.0.1)`},
		{"addrs", "10.96.0.10, fd00::a", addrs, []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a")}, ""},
		{"addr zone", "fe80::1%eth0", addrs, nil, `"fe80::1%eth0": zones are not supported; drop "%eth0"`},
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
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
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

func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"80,443", "*", "", "0", "65535,1", " 8080 ", "80,,1", "8000-8010", "+80", "0x50", "١٢"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		all, ps, err := ParsePortsOrAll(s)
		if err != nil {
			if all || ps != nil {
				t.Fatalf("%q: error with a result", s)
			}
			return
		}
		parts := make([]string, len(ps))
		for i, p := range ps {
			if p == 0 {
				t.Fatalf("%q: port 0 accepted", s)
			}
			parts[i] = strconv.Itoa(int(p))
		}
		if all {
			return
		}
		again, err := ParsePorts(strings.Join(parts, ","))
		if err != nil || !slices.Equal(again, ps) {
			t.Fatalf("%q: round trip gave %v, %v", s, again, err)
		}
	})
}

func FuzzParseCIDRs(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "10.0.0.0/33", "::1", "fd00::/8,1.2.3.4", "*", "fe80::1%eth0/64", "::ffff:1.2.3.4/128", "1.2.3.4/+8", "1.2.3.4/08"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		all, ps, err := ParseCIDRsOrAll(s)
		if err != nil {
			if all || ps != nil {
				t.Fatalf("%q: error with a result", s)
			}
			return
		}
		parts := make([]string, len(ps))
		for i, p := range ps {
			if !p.IsValid() || p.Masked() != p || p.Addr().Zone() != "" || p.Addr().Is4In6() {
				t.Fatalf("%q: accepted %v, which iptables would not match as written", s, p)
			}
			parts[i] = p.String()
		}
		if all {
			return
		}
		again, err := ParseCIDRs(strings.Join(parts, ","))
		if err != nil || len(again) != len(ps) {
			t.Fatalf("%q: round trip gave %v, %v", s, again, err)
		}
		for i := range ps {
			if again[i] != ps[i] {
				t.Fatalf("%q: round trip changed %v to %v", s, ps[i], again[i])
			}
		}
	})
}
