package netlist

import (
	"net/netip"
	"strings"
	"testing"
)

func prefixes(t testing.TB, ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// TestSet pins membership at the edges of prefixes, merged and not,
// in both families.
func TestSet(t *testing.T) {
	s := NewSet(prefixes(t, "10.0.0.0/8", "10.1.0.0/16", "192.168.1.7/32", "192.168.1.8/31", "255.255.255.255/32",
		"fd00::/8", "2001:db8::1/128", "2001:db8::2/127", "::/128"), nil)
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"10.0.0.0", true}, {"10.255.255.255", true}, {"9.255.255.255", false}, {"11.0.0.0", false},
		{"10.1.2.3", true},
		{"192.168.1.6", false}, {"192.168.1.7", true}, {"192.168.1.8", true}, {"192.168.1.9", true}, {"192.168.1.10", false},
		{"255.255.255.255", true}, {"255.255.255.254", false},
		{"::ffff:10.2.3.4", true}, // mapped: taken as IPv4
		{"fd00::", true}, {"fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true}, {"fe00::", false}, {"fc00::1", false},
		{"2001:db8::", false}, {"2001:db8::1", true}, {"2001:db8::3", true}, {"2001:db8::4", false},
		{"::", true}, {"::1", false},
	} {
		if got := s.Contains(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("Contains(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	if s.Len() != 9 {
		t.Errorf("Len() = %d, want 9", s.Len())
	}
	all := NewSet(prefixes(t, "0.0.0.0/0", "::/0"))
	for _, a := range []string{"0.0.0.0", "255.255.255.255", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"} {
		if !all.Contains(netip.MustParseAddr(a)) {
			t.Errorf("0.0.0.0/0 and ::/0 lack %s", a)
		}
	}
	var empty *Set
	if empty.Contains(netip.MustParseAddr("10.0.0.1")) || NewSet().Contains(netip.MustParseAddr("::1")) || NewSet().Contains(netip.Addr{}) {
		t.Error("an empty set contains an address")
	}
}

func TestParseLines(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		max      int
		want     string
	}{
		{"good", "# scanners\n10.0.0.0/8\n\n  192.168.1.7   # one host\r\nfd00::/8", 10, "[10.0.0.0/8 192.168.1.7/32 fd00::/8]"},
		{"empty", "# nothing\n\n", 10, "[]"},
		{"bad lines", "10.0.0.0/8\n10.1.2.3/8\nexample.com\n", 10,
			"line 2: 10.1.2.3/8: bits set past the /8; want 10.0.0.0/8\n" +
				`line 3: "example.com": not an IP address or CIDR; want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`},
		{"too many", "10.0.0.1\n10.0.0.2\n10.0.0.3\n", 2, "line 3: more than 2 entries; split the list, or merge its CIDRs"},
		{"many bad", strings.Repeat("x\n", MaxLinesErrors+3), 100, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLines([]byte(tc.in), tc.max)
			msg := ""
			if err != nil {
				msg = err.Error()
			} else {
				msg = fmtList(got)
			}
			if tc.name == "many bad" {
				if !strings.HasSuffix(msg, "and 3 more bad lines") || strings.Count(msg, "\n") != MaxLinesErrors {
					t.Errorf("got %s", msg)
				}
				return
			}
			if msg != tc.want {
				t.Errorf("got\n%s\nwant\n%s", msg, tc.want)
			}
		})
	}
}

func fmtList(ps []netip.Prefix) string {
	var ss []string
	for _, p := range ps {
		ss = append(ss, p.String())
	}
	return "[" + strings.Join(ss, " ") + "]"
}

// FuzzSet checks Set.Contains against a look at every prefix, for
// prefixes and an address made of the fuzzer's bytes.
func FuzzSet(f *testing.F) {
	f.Add([]byte{10, 0, 0, 0, 8, 10, 1, 2, 3, 32, 192, 168, 0, 0, 16}, []byte{10, 1, 2, 3}, false)
	f.Add([]byte{0xfd, 0, 0, 0, 8, 0x20, 1, 0xd, 0xb8, 32}, []byte{0xfd, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, true)
	f.Fuzz(func(t *testing.T, spec, addr []byte, v6 bool) {
		n, bitLen := 4, 32
		if v6 {
			n, bitLen = 16, 128
		}
		if len(addr) < n {
			return
		}
		var ps []netip.Prefix
		for len(spec) >= 5 {
			// Four bytes of address (repeated for IPv6) and a length.
			var b [16]byte
			for i := range n {
				b[i] = spec[i%4]
			}
			a := netip.AddrFrom16(b)
			if !v6 {
				a = netip.AddrFrom4([4]byte(b[:4]))
			}
			ps = append(ps, netip.PrefixFrom(a, int(spec[4])%(bitLen+1)).Masked())
			spec = spec[5:]
		}
		a, _ := netip.AddrFromSlice(addr[:n])
		want := false
		for _, p := range ps {
			if p.Contains(a) {
				want = true
			}
		}
		if got := NewSet(ps).Contains(a); got != want {
			t.Fatalf("%v contains %s: got %v, want %v", ps, a, got, want)
		}
	})
}

func FuzzParseLines(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8\n# c\n::1", "x", "\n\n", "1.2.3.4/33 # c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParseLines([]byte(s), 1000)
		if err != nil && ps != nil {
			t.Fatal("an error with a result")
		}
		for _, p := range ps {
			if CheckPrefix(p) != nil {
				t.Fatalf("accepted %v", p)
			}
		}
	})
}
