package proxy

import (
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// sockReader reads a socket without holding a buffer while it waits: read
// takes a pooled copy buffer only once the socket has bytes (or its EOF,
// or an error) for it, and readNow never waits. It is one direction's
// reader, used by one goroutine; its callbacks are made once, so a read
// allocates nothing.
type sockReader struct {
	c    *net.TCPConn
	rc   syscall.RawConn
	bufs bufSource // where read takes its buffer
	// pooledFn, nowFn and waitFn are the RawConn.Read callbacks of read,
	// readNow and wait.
	pooledFn, nowFn, waitFn func(fd uintptr) bool
	// The callbacks' arguments and results.
	bp     *[]byte // read: the pooled buffer, nil while waiting
	b      []byte  // readNow: where to read
	n      int
	errno  error
	waited bool // wait: parked once
	// drained: the last readNow read less than asked, so the socket had
	// no more then; the next readNow says errWouldBlock without asking
	// it again (wait, which the caller goes on to, asks it).
	drained bool
}

func newSockReader(c *net.TCPConn) (*sockReader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &sockReader{c: c, rc: rc, bufs: copyBufs}
	r.pooledFn, r.nowFn, r.waitFn = r.pooled, r.now, r.waitReadable
	return r, nil
}

// read waits until the socket is readable, then reads it into a buffer
// of r.bufs (bufPool unless set), which it returns (nil when it read no byte: EOF, an error).
// Waiting, it holds no buffer: a readiness notice takes one, and a read
// that finds nothing after all (EAGAIN) puts it back before waiting on.
func (r *sockReader) read() (*[]byte, int, error) {
	r.n, r.errno = 0, nil
	err := r.rc.Read(r.pooledFn)
	bp := r.bp
	r.bp = nil
	n, err := r.result(err)
	if n == 0 {
		if bp != nil {
			r.bufs.put(bp)
			bp = nil
		}
		if err == nil {
			err = io.EOF
		}
	}
	return bp, n, err
}

func (r *sockReader) pooled(fd uintptr) bool {
	if r.bp == nil {
		r.bp = r.bufs.get()
	}
	for {
		r.n, r.errno = unix.Read(int(fd), *r.bp)
		if r.errno != unix.EINTR {
			break
		}
	}
	if r.errno == unix.EAGAIN {
		r.bufs.put(r.bp)
		r.bp = nil
		return false
	}
	return true
}

// readNow reads what the socket has into b without waiting: with nothing
// there, it returns errWouldBlock.
func (r *sockReader) readNow(b []byte) (int, error) {
	if r.drained {
		return 0, errWouldBlock
	}
	r.b, r.n, r.errno = b, 0, nil
	err := r.rc.Read(r.nowFn)
	r.b = nil
	if r.errno == unix.EAGAIN {
		r.drained = true
		return 0, errWouldBlock
	}
	n, err := r.result(err)
	if n == 0 && err == nil {
		err = io.EOF
	}
	r.drained = n > 0 && n < len(b)
	return n, err
}

func (r *sockReader) now(fd uintptr) bool {
	for {
		r.n, r.errno = unix.Read(int(fd), r.b)
		if r.errno != unix.EINTR {
			return true
		}
	}
}

// wait blocks until the socket has bytes to read, its peer's FIN or an
// error, or until its read deadline passes, reading nothing. It may
// return early, rarely: a readiness notice from the poller can be stale;
// the caller's readNow then finds nothing and it waits again.
func (r *sockReader) wait() error {
	r.waited = false
	err := r.rc.Read(r.waitFn)
	r.drained = false
	return err
}

// waitReadable looks at the socket first (the poller's notices from
// before RawConn.Read began are forgotten), then, parked once, trusts
// the notice that woke it rather than look again.
func (r *sockReader) waitReadable(fd uintptr) bool {
	if r.waited {
		return true
	}
	if readable(fd) {
		return true
	}
	r.waited = true
	return false
}

// result turns a callback's outcome into what net.Conn.Read returns:
// n > 0, or an error as net.TCPConn would give it, or (0, nil) for EOF
// (read tells EOF apart from an empty result itself).
func (r *sockReader) result(err error) (int, error) {
	if err == nil && r.errno != nil {
		err = os.NewSyscallError("read", r.errno)
	}
	if err != nil {
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(), Err: err}
	}
	return max(r.n, 0), nil
}
