package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"meshgate/netlist"
)

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
	items, err := netlist.Split(s)
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
