package proxy

import (
	"errors"
	"net"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// waitConn waits d for a client connection, or until the client goes
// away (false): a FIN or a reset on c. It waits in the runtime's poller,
// as a read would, with neither a goroutine nor a buffer of its own, and
// reads nothing: a byte the client sends is left for whoever reads c
// next, and from then on the wait is d's alone (the byte hides what comes
// after it). c's read deadline is cleared when it returns.
func waitConn(c *net.TCPConn, d time.Duration) bool {
	end := time.Now().Add(d)
	rc, err := c.SyscallConn()
	if err != nil || c.SetReadDeadline(end) != nil {
		return sleepUntil(end)
	}
	defer c.SetReadDeadline(time.Time{})
	gone := false
	err = rc.Read(func(fd uintptr) bool {
		switch peekConn1(fd) {
		case unix.EAGAIN:
			return false // nothing yet: wait for the poller
		case nil:
			return true // bytes: the client is there
		}
		gone = true // its FIN (EOF) or an error
		return true
	})
	switch {
	case gone:
		return false
	case errors.Is(err, os.ErrDeadlineExceeded):
		return true
	case err != nil:
		return false // closed under us: the proxy is ending the connection
	}
	return sleepUntil(end)
}

// peekConn1 peeks at the socket fd without waiting: nil when it has
// bytes, unix.EAGAIN when it has none, errEOF at its peer's FIN, or the
// error.
func peekConn1(fd uintptr) error {
	var b [1]byte
	for {
		// recvfrom(2) itself, not unix.Recvfrom, which allocates (see readable).
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno != 0:
			return errno
		case n == 0:
			return errEOF
		}
		return nil
	}
}

// errEOF is a socket's end, as peekConn1 reports it.
var errEOF = errors.New("EOF")

// sleepUntil waits until end; it reports true, for waitConn.
func sleepUntil(end time.Time) bool {
	if d := time.Until(end); d > 0 {
		time.Sleep(d)
	}
	return true
}
