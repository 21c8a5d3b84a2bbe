package proxy

import (
	"io"
	"net"
	"os"
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

// readPeek waits until c has bytes to read, its peer's FIN or an error,
// or until its read deadline passes, and reads what it has into a buffer
// of peekPool, taken only once the socket has something for it: a
// connection that waits holds no buffer. It costs one read(2) when the
// bytes are there already, as a client's first ones usually are by the
// time its connection is served. bp is nil when nothing was read (EOF is
// io.EOF, as Read says it).
func readPeek(c *net.TCPConn) (bp *[]byte, n int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	var errno error
	err = rc.Read(func(fd uintptr) bool {
		if bp == nil {
			bp = peekPool.Get().(*[]byte)
		}
		for {
			n, errno = unix.Read(int(fd), (*bp)[:cap(*bp)])
			if errno != unix.EINTR {
				break
			}
		}
		if errno == unix.EAGAIN {
			peekPool.Put(bp)
			bp = nil
			return false
		}
		return true
	})
	switch {
	case err != nil:
	case errno != nil:
		err = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	case n == 0:
		err = io.EOF
	}
	if n <= 0 {
		n = 0
		if bp != nil {
			peekPool.Put(bp)
			bp = nil
		}
	}
	return bp, n, err
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
