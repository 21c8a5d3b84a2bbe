package proxy

import (
	"net"

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

// waitReadable blocks until c has bytes to read, its peer's FIN or an
// error, or until its read deadline passes, without reading anything: the
// caller takes a buffer only once there is something to put in it. A
// socket error is left for the caller's Read to report.
func waitReadable(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var b [1]byte
	return rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if err != unix.EINTR {
				return err != unix.EAGAIN
			}
		}
	})
}
