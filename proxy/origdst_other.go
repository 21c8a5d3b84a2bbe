//go:build !linux

package proxy

import (
	"errors"
	"net"
	"net/netip"
)

// redirectOriginalDst needs conntrack's SO_ORIGINAL_DST, which only Linux
// has: elsewhere every captured connection is refused with this error.
func redirectOriginalDst(*net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("proxy: original destination: needs Linux (SO_ORIGINAL_DST)")
}
