package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// transparentControl is a net.ListenConfig.Control that makes a listener
// IP_TRANSPARENT (IPv4) or IPV6_TRANSPARENT (IPv6), so TPROXY rules can
// hand it connections addressed to any destination.
func transparentControl(network, address string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = setTransparent(int(fd), network) }); err != nil {
		return err
	}
	return serr
}

// setTransparent sets IP_TRANSPARENT on an IPv4 socket of network (tcp4),
// IPV6_TRANSPARENT on an IPv6 one (tcp6).
func setTransparent(fd int, network string) error {
	level, opt, name := unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"
	if strings.HasSuffix(network, "6") {
		level, opt, name = unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"
	}
	serr := unix.SetsockoptInt(fd, level, opt, 1)
	if serr == nil {
		return nil
	}
	err := os.NewSyscallError("setsockopt "+name, serr)
	if errors.Is(serr, unix.EPERM) {
		return fmt.Errorf("%w (tproxy mode needs CAP_NET_ADMIN)", err)
	}
	return err
}

// ipv6Disabled reports whether this network namespace has IPv6 turned off.
// The kernel may have no IPv6 at all (no /proc/sys/net/ipv6), or it may be
// disabled by sysctl, in which case binding [::] still succeeds but no
// address can ever reach it.
func ipv6Disabled() (bool, string) {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	if errors.Is(err, os.ErrNotExist) {
		return true, "the kernel has no IPv6"
	}
	if err == nil && strings.TrimSpace(string(b)) == "1" {
		return true, "net.ipv6.conf.all.disable_ipv6 is 1"
	}
	return false, ""
}

// heardFrom reports whether c has received a byte from its peer.
func heardFrom(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	heard := false
	rc.Control(func(fd uintptr) {
		if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			heard = ti.Bytes_received > 0
		}
	})
	return heard
}
