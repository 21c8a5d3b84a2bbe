package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from
// linux/netfilter_ipv6/ip6_tables.h; golang.org/x/sys/unix lacks it. It
// has the same value as SO_ORIGINAL_DST but lives at level SOL_IPV6.
const ip6tSOOriginalDst = 80

// redirectOriginalDst returns the destination a connection had before an
// iptables REDIRECT (or DNAT) rewrote it: SO_ORIGINAL_DST for IPv4 and
// IP6T_SO_ORIGINAL_DST for IPv6, read from conntrack through the socket.
// The family is the one of the connection's local address, since the
// capture listeners are single-family.
func redirectOriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: local address %v is not TCP", c.LocalAddr())
	}
	v6 := local.IP.To4() == nil
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var dst netip.AddrPort
	var serr error
	if err := rc.Control(func(fd uintptr) { dst, serr = getOriginalDst(int(fd), v6) }); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return dst, serr
}

// getOriginalDst reads the original destination socket option of fd.
func getOriginalDst(fd int, v6 bool) (netip.AddrPort, error) {
	var (
		sa4   unix.RawSockaddrInet4
		sa6   unix.RawSockaddrInet6
		level = unix.SOL_IP
		opt   = unix.SO_ORIGINAL_DST
		ptr   = unsafe.Pointer(&sa4)
		size  = uint32(unsafe.Sizeof(sa4))
	)
	if v6 {
		level, opt = unix.SOL_IPV6, ip6tSOOriginalDst
		ptr, size = unsafe.Pointer(&sa6), uint32(unsafe.Sizeof(sa6))
	}
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(ptr), uintptr(unsafe.Pointer(&size)), 0)
	switch errno {
	case 0:
	case unix.ENOENT:
		// conntrack knows no such connection (not tracked, or not NATed
		// and untracked).
		return netip.AddrPort{}, errNotRedirected
	case unix.ENOPROTOOPT:
		// No conntrack in this namespace: nothing can have redirected it.
		return netip.AddrPort{}, fmt.Errorf("%w; connection tracking is not active in this namespace", errNotRedirected)
	default:
		return netip.AddrPort{}, fmt.Errorf("original destination: getsockopt: %w", syscall.Errno(errno))
	}
	if v6 {
		return netip.AddrPortFrom(netip.AddrFrom16(sa6.Addr).Unmap(), ntohs(sa6.Port)), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), ntohs(sa4.Port)), nil
}

// ntohs converts a port read from a sockaddr (network byte order).
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
