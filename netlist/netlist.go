package netlist

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// The parsers below read lists given on the command line. Their errors
// quote the offending item and say what is wanted; the caller puts the
// flag's name in front.
//
// Lists are comma-separated; spaces around items are allowed; the empty
// string is the empty list. Port ranges ("8000-8010") are not supported:
// every port becomes one rule that a reader can see, and a range is rarely
// what a sidecar's exclusions need. Bare addresses in CIDR lists mean the
// one host (/32 or /128).

// ParsePorts parses a comma-separated list of TCP ports, like "80,443".
func ParsePorts(s string) ([]uint16, error) { return parseList(s, parsePort) }

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
func ParseCIDRs(s string) ([]netip.Prefix, error) { return parseList(s, parseCIDR) }

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
	if err := CheckPrefix(p); err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}

// parseAddr parses the address part s of item it, refusing zones and
// IPv4-mapped IPv6 addresses, which no rule or match would treat as
// meant.
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
	return parseList(s, func(it string) (netip.Addr, error) { return parseAddr(it, it) })
}

// parseList parses each item of the list s with parse. Every bad item is
// reported (errors.Join); the empty list is nil.
func parseList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	items, err := Split(s)
	if err != nil {
		return nil, err
	}
	var out []T
	var errs []error
	for _, it := range items {
		v, err := parse(it)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, v)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// Split splits a comma-separated list into trimmed items; "" is the
// empty list and an empty item is an error.
func Split(s string) ([]string, error) {
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

// CheckPrefix reports what makes p unusable as a CIDR to match
// destinations against: invalid; IPv4-mapped IPv6, which never matches
// (addresses are compared unmapped); or host bits set past its length,
// most likely a typo for a /32 or for the masked prefix.
func CheckPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("want a CIDR, e.g. 10.0.0.0/8 or fd00::/8")
	case p.Addr().Is4In6():
		return fmt.Errorf("%s: IPv4-mapped, so it would never match; write it as IPv4, e.g. %s",
			p, netip.PrefixFrom(p.Addr().Unmap(), max(0, p.Bits()-96)).Masked())
	case p != p.Masked():
		return fmt.Errorf("%s: bits set past the /%d; want %s", p, p.Bits(), p.Masked())
	}
	return nil
}

// Named puts name (a flag, "--mesh-cidrs") in front of each item's error
// of a parser's err, which joins one error per bad item.
func Named(name string, err error) []error {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		var errs []error
		for _, e := range joined.Unwrap() {
			errs = append(errs, fmt.Errorf("%s %w", name, e))
		}
		return errs
	}
	return []error{fmt.Errorf("%s %w", name, err)}
}
