package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// The parsers below read the values of the rule flags. Their errors quote
// the offending item and say what is wanted; AddFlags puts the flag's name
// in front.
//
// Lists are comma-separated; spaces around items are allowed; the empty
// string is the empty list. Port ranges ("8000-8010") are not supported:
// every port becomes one rule that a reader can see, and a range is rarely
// what a sidecar's exclusions need. Bare addresses in CIDR lists mean the
// one host (/32 or /128).

// ParsePorts parses a comma-separated list of TCP ports, like "80,443".
func ParsePorts(s string) ([]uint16, error) {
	items, err := splitList(s)
	if err != nil {
		return nil, err
	}
	ports := make([]uint16, 0, len(items))
	var errs []error
	for _, it := range items {
		p, err := parsePort(it)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ports = append(ports, p)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(ports) == 0 {
		return nil, nil
	}
	return ports, nil
}

// ParsePortsOrAll is ParsePorts that also accepts "*", meaning every port.
func ParsePortsOrAll(s string) (all bool, ports []uint16, err error) {
	if strings.TrimSpace(s) == "*" {
		return true, nil, nil
	}
	ports, err = ParsePorts(s)
	return false, ports, err
}

func parsePort(it string) (uint16, error) {
	switch {
	case it == "*":
		return 0, fmt.Errorf(`"*": not allowed in this list; list the ports`)
	case strings.ContainsAny(it, "-:") && !strings.HasPrefix(it, "-"):
		return 0, fmt.Errorf("%q: port ranges are not supported; list each port, like 8000,8001,8002", it)
	}
	for _, r := range it {
		if r < '0' || r > '9' {
			return 0, fmt.Errorf("%q: not a port number; want a comma-separated list like 80,443", it)
		}
	}
	n, err := strconv.ParseUint(it, 10, 32)
	switch {
	case err != nil || n > 65535:
		return 0, fmt.Errorf("%q: out of range; want a port from 1 to 65535", it)
	case n == 0:
		return 0, fmt.Errorf("%q: port 0 is not a port; want a port from 1 to 65535", it)
	}
	return uint16(n), nil
}

// ParseCIDRs parses a comma-separated list of CIDRs, like
// "10.0.0.0/8,fd00::/8". A bare address is a single host (/32 or /128).
// Prefixes with host bits set ("10.1.2.3/8") are refused rather than
// silently masked.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	items, err := splitList(s)
	if err != nil {
		return nil, err
	}
	prefixes := make([]netip.Prefix, 0, len(items))
	var errs []error
	for _, it := range items {
		p, err := parseCIDR(it)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		prefixes = append(prefixes, p)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(prefixes) == 0 {
		return nil, nil
	}
	return prefixes, nil
}

// ParseCIDRsOrAll is ParseCIDRs that also accepts "*", meaning everywhere.
func ParseCIDRsOrAll(s string) (all bool, prefixes []netip.Prefix, err error) {
	if strings.TrimSpace(s) == "*" {
		return true, nil, nil
	}
	prefixes, err = ParseCIDRs(s)
	return false, prefixes, err
}

const wantCIDR = "want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3"

func parseCIDR(it string) (netip.Prefix, error) {
	if it == "*" {
		return netip.Prefix{}, fmt.Errorf(`"*": not allowed in this list; %s`, wantCIDR)
	}
	addrPart, bitsPart, hasBits := strings.Cut(it, "/")
	addr, err := parseAddr(it, addrPart)
	if err != nil {
		return netip.Prefix{}, err
	}
	if !hasBits {
		return netip.PrefixFrom(addr, addr.BitLen()), nil
	}
	bits, err := strconv.Atoi(bitsPart)
	if err != nil || bits < 0 || bits > addr.BitLen() || strings.HasPrefix(bitsPart, "+") {
		fam := "IPv4"
		if addr.Is6() {
			fam = "IPv6"
		}
		return netip.Prefix{}, fmt.Errorf("%q: invalid prefix length %q (%s allows 0 to %d); %s", it, bitsPart, fam, addr.BitLen(), wantCIDR)
	}
	p := netip.PrefixFrom(addr, bits)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q: host bits are set; want %s", it, p.Masked())
	}
	return p, nil
}

// parseAddr parses the address part of item it, refusing zones and
// IPv4-mapped IPv6 addresses, which iptables would not match as meant.
func parseAddr(it, s string) (netip.Addr, error) {
	addr, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("%q: not an IP address or CIDR; %s", it, wantCIDR)
	case addr.Zone() != "":
		return netip.Addr{}, fmt.Errorf("%q: zones are not supported; drop %q", it, "%"+addr.Zone())
	case addr.Is4In6():
		return netip.Addr{}, fmt.Errorf("%q: an IPv4-mapped IPv6 address; write it as IPv4 (%s)", it, addr.Unmap())
	}
	return addr, nil
}

// ParseAddrs parses a comma-separated list of IP addresses, like
// "10.96.0.10,fd00::a".
func ParseAddrs(s string) ([]netip.Addr, error) {
	items, err := splitList(s)
	if err != nil {
		return nil, err
	}
	addrs := make([]netip.Addr, 0, len(items))
	var errs []error
	for _, it := range items {
		a, err := parseAddr(it, it)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		addrs = append(addrs, a)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(addrs) == 0 {
		return nil, nil
	}
	return addrs, nil
}

// ParseResolvConf returns the nameserver addresses of a resolv.conf(5)
// file, in order and without duplicates. Lines that are not nameserver
// lines, comments and unparsable addresses are skipped, as the resolver
// itself skips them. A zone ("fe80::1%eth0") is dropped: iptables matches
// the address, not its scope.
func ParseResolvConf(r io.Reader) ([]netip.Addr, error) {
	var addrs []netip.Addr
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		a = a.WithZone("").Unmap()
		if !containsAddr(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	return addrs, sc.Err()
}

func containsAddr(s []netip.Addr, a netip.Addr) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

// ParseUID parses a UID, or "none" for no UID exemption (nil).
func ParseUID(s string) (*uint32, error) {
	s = strings.TrimSpace(s)
	if s == "none" {
		return nil, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%q: want a numeric UID like 1337, or none", s)
	}
	u := uint32(n)
	return &u, nil
}

// ParseGIDs parses a comma-separated list of numeric GIDs.
func ParseGIDs(s string) ([]uint32, error) {
	items, err := splitList(s)
	if err != nil {
		return nil, err
	}
	var gids []uint32
	var errs []error
	for _, it := range items {
		n, err := strconv.ParseUint(it, 10, 32)
		if err != nil {
			errs = append(errs, fmt.Errorf("%q: want numeric GIDs like 1337,1338", it))
			continue
		}
		gids = append(gids, uint32(n))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return gids, nil
}

// ParseMark parses a 32-bit packet mark, in decimal ("1337") or hex
// ("0x539"); 0 means no mark exemption. A leading 0 does not mean octal.
func ParseMark(s string) (uint32, error) {
	s = strings.TrimSpace(s)
	var n uint64
	var err error
	if h, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		n, err = strconv.ParseUint(h, 16, 32)
	} else {
		n, err = strconv.ParseUint(s, 10, 32)
	}
	if err != nil {
		return 0, fmt.Errorf("%q: want a 32-bit mark like 0x539 or 1337, or 0 for none", s)
	}
	return uint32(n), nil
}

// splitList splits a comma-separated list into trimmed items; "" is the
// empty list and an empty item is an error.
func splitList(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	items := strings.Split(s, ",")
	for i, it := range items {
		items[i] = strings.TrimSpace(it)
		if items[i] == "" {
			return nil, fmt.Errorf("%q: an empty item; separate items with single commas", s)
		}
	}
	return items, nil
}
