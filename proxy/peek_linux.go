package proxy

import (
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// idleAlive reports whether an idle pooled connection may still be used:
// nothing to read on it (a close by the peer reads as EOF, and bytes
// nobody asked for make it unusable too).
func idleAlive(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var b [1]byte
	rc.Control(func(fd uintptr) {
		for {
			_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if err != unix.EINTR {
				alive = err == unix.EAGAIN
				return
			}
		}
	})
	return alive
}

// readable reports whether the socket fd has bytes to read, its peer's
// FIN or an error: whether a read would not block. It is a
// syscall.RawConn.Read callback, which waits for the poller and asks
// again while it says no.
func readable(fd uintptr) bool {
	var b [1]byte
	for {
		// recvfrom(2) itself, not unix.Recvfrom, which allocates the
		// sender's address it returns, on every call.
		_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		if errno != unix.EINTR {
			return errno != unix.EAGAIN
		}
	}
}
