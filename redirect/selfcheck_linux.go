package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SelfCheck proves that the rules Apply installed for c capture traffic in
// the namespace of o (entered as Apply enters it), with probe connections
// that never leave the namespace:
//
//   - inbound: with the inbound port (15006) bound on every address for the
//     check, a connection to one of the namespace's own addresses on a
//     port c captures must arrive there with that address and port as its
//     original destination (SO_ORIGINAL_DST). The rule that sends a
//     connection to the pod's own address to inbound capture makes this
//     work from inside. If the port is taken (a proxy runs already), the
//     check is skipped and says so.
//   - outbound: only where the namespace has a route to OutboundProbeAddr,
//     c captures it, and this process is not exempt: a connection to it
//     must arrive at the outbound port (15001).
//
// It returns what it proved or why it did not check each direction, or a
// *SelfCheckError saying which direction failed, what happened and the
// likely cause. It logs nothing: the caller says what it returned.
func SelfCheck(ctx context.Context, c Config, o Options) (SelfCheckResult, error) {
	if err := c.Validate(); err != nil {
		return SelfCheckResult{}, fmt.Errorf("redirect: invalid config: %w", err)
	}
	var res SelfCheckResult
	err := inNetns(o.NetnsPath, func() error {
		var err error
		if res.Inbound, err = checkInbound(ctx, c); err != nil {
			return err
		}
		res.Outbound, err = checkOutbound(ctx, c, uint32(os.Geteuid()), uint32(os.Getegid()))
		return err
	})
	return res, err
}

func checkInbound(ctx context.Context, c Config) (string, error) {
	if why := inboundNotChecked(c); why != "" {
		return notChecked(why), nil
	}
	port, ok := inboundProbePort(c)
	if !ok {
		return notChecked("no inbound port is captured"), nil
	}
	addr, why, err := ownAddr(c)
	if err != nil {
		return "", fmt.Errorf("redirect: self-check inbound: list the namespace's addresses: %w", err)
	}
	if why != "" {
		return notChecked(why), nil
	}
	return probe(ctx, "inbound", netip.AddrPortFrom(addr, port), c.InboundPort)
}

// ownAddr picks an address of the namespace that is not loopback: IPv4
// first; IPv6 only when --ipv6=on (with auto, ip6tables rules may not be
// there).
func ownAddr(c Config) (netip.Addr, string, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return netip.Addr{}, "", err
	}
	var v6 netip.Addr
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return netip.Addr{}, "", err
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			switch {
			case ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast():
			case ip.Is4():
				return ip, "", nil
			case !v6.IsValid():
				v6 = ip
			}
		}
	}
	switch {
	case v6.IsValid() && c.IPv6 == IPv6On:
		return v6, "", nil
	case v6.IsValid():
		return netip.Addr{}, "the namespace has IPv6 addresses only, and IPv6 is checked with --ipv6=on only", nil
	}
	return netip.Addr{}, "the namespace has no address but loopback's to connect to", nil
}

func checkOutbound(ctx context.Context, c Config, euid, egid uint32) (string, error) {
	dst, why := outboundProbe(c, euid, egid)
	if why != "" {
		return notChecked(why), nil
	}
	// A UDP "connection" sends nothing; it only asks for a route.
	u, err := net.Dial("udp4", netip.AddrPortFrom(dst.Addr(), 9).String())
	if err != nil {
		return notChecked(fmt.Sprintf("no route to %s in the namespace", dst.Addr())), nil
	}
	u.Close()
	return probe(ctx, "outbound", dst, c.OutboundPort)
}

// hopLimitOne sets a socket's IPv4 TTL and IPv6 hop limit to 1.
func hopLimitOne(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if strings.HasSuffix(network, "6") {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// probe binds the proxy's port on every address, connects to dst, and
// checks that the connection arrives there with dst as its original
// destination. It must run on the thread that is in the namespace (the
// sockets are made there).
func probe(ctx context.Context, dir string, dst netip.AddrPort, port uint16) (string, error) {
	network, unspec := "tcp4", netip.IPv4Unspecified()
	if dst.Addr().Is6() {
		network, unspec = "tcp6", netip.IPv6Unspecified()
	}
	ln, err := net.Listen(network, netip.AddrPortFrom(unspec, port).String())
	if errors.Is(err, unix.EADDRINUSE) {
		return notChecked(fmt.Sprintf("port %d is in use, likely by the proxy already running; the check needs it free", port)), nil
	}
	if err != nil {
		return "", fmt.Errorf("redirect: self-check %s: listen on port %d: %w", dir, port, err)
	}
	tl := ln.(*net.TCPListener)
	arrived := make(chan *net.TCPConn, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := tl.AcceptTCP()
			if err != nil {
				return
			}
			select {
			case arrived <- c:
			default:
				c.Close()
			}
		}
	}()
	defer func() {
		tl.Close()
		<-done
		close(arrived)
		for c := range arrived {
			c.Close()
		}
	}()

	fail := func(got, cause string) (string, error) {
		return "", &SelfCheckError{Direction: dir, Dst: dst, Port: port, Got: got, Cause: cause}
	}
	dctx, cancel := context.WithTimeout(ctx, selfCheckTimeout)
	defer cancel()
	d := &net.Dialer{KeepAlive: -1}
	if dir == "outbound" {
		// A hop limit of 1: captured, the probe is delivered locally (the
		// limit does not apply); not captured, it dies at the first
		// router instead of travelling towards a stranger's address.
		d.Control = hopLimitOne
	}
	conn, err := d.DialContext(dctx, "tcp", dst.String())
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return "", fmt.Errorf("redirect: self-check %s: %w", dir, ctx.Err())
	case errors.Is(err, unix.ECONNREFUSED):
		return fail("it was refused: it went to the port itself, where nothing listens", causeNotInEffect)
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return fail(fmt.Sprintf("it timed out after %s: it went towards %s itself", selfCheckTimeout, dst.Addr()), causeNotInEffect)
	default:
		return fail(fmt.Sprintf("connecting failed: %v", err), causeNotInEffect)
	}
	defer conn.Close()
	local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
	timer := time.NewTimer(selfCheckTimeout)
	defer timer.Stop()
	for {
		select {
		case c := <-arrived:
			remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			if remote.Port() != local.Port() || remote.Addr().Unmap() != local.Addr().Unmap() {
				c.Close() // someone else's
				continue
			}
			orig, err := originalDst(c)
			c.Close()
			switch {
			case err != nil:
				return fail(fmt.Sprintf("it arrived at port %d without an original destination (%v)", port, err), causeRewritten)
			case orig != dst:
				return fail(fmt.Sprintf("it arrived with original destination %s", orig), causeRewritten)
			}
			return fmt.Sprintf("ok (a connection to %s arrived at port %d)", dst, port), nil
		case <-timer.C:
			return fail(fmt.Sprintf("it connected to something else: nothing arrived at port %d within %s", port, selfCheckTimeout), causeNotInEffect)
		case <-ctx.Done():
			return "", fmt.Errorf("redirect: self-check %s: %w", dir, ctx.Err())
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h).
const ip6tSOOriginalDst = 80

// originalDst reads SO_ORIGINAL_DST (IP6T_SO_ORIGINAL_DST for IPv6) of an
// accepted connection: its destination before NAT.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	v6 := c.LocalAddr().(*net.TCPAddr).IP.To4() == nil
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		dst  netip.AddrPort
		serr error
	)
	err = rc.Control(func(fd uintptr) {
		var sa4 unix.RawSockaddrInet4
		var sa6 unix.RawSockaddrInet6
		level, opt, ptr, size := unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa4), uint32(unsafe.Sizeof(sa4))
		if v6 {
			level, opt, ptr, size = unix.SOL_IPV6, ip6tSOOriginalDst, unsafe.Pointer(&sa6), uint32(unsafe.Sizeof(sa6))
		}
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt), uintptr(ptr), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			serr = fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", syscall.Errno(errno))
			return
		}
		if v6 {
			dst = netip.AddrPortFrom(netip.AddrFrom16(sa6.Addr).Unmap(), ntohs(sa6.Port))
		} else {
			dst = netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), ntohs(sa4.Port))
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	return dst, serr
}

// ntohs converts a port read from a sockaddr (network byte order).
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
