package testmark

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"meshgate/sockmark"
)

// Need skips t unless this process may mark its sockets with mark
// (CAP_NET_ADMIN, as root has).
func Need(t testing.TB, mark uint32) {
	t.Helper()
	if err := sockmark.Probe(mark); err != nil {
		t.Skipf("cannot mark sockets here (needs CAP_NET_ADMIN, e.g. root): %v", err)
	}
}

// Listener is a net.Listener whose clients are in this process: for each
// connection it accepts, it notes the mark of the client's socket.
type Listener struct {
	net.Listener
	mark uint32

	mu    sync.Mutex
	marks []uint32
	errs  []error
}

// Listen listens on 127.0.0.1:0, TCP, for clients expected to mark their
// connections with mark (see Check), until the test ends; it skips the
// test where this process may not set the mark.
func Listen(t testing.TB, mark uint32) *Listener {
	t.Helper()
	Need(t, mark)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return &Listener{Listener: ln, mark: mark}
}

// Accept accepts a connection and notes its client's mark.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	m, err := Peer(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.errs = append(l.errs, err)
	} else {
		l.marks = append(l.marks, m)
	}
	return c, nil
}

// Check fails t unless at least min connections were accepted, each
// from a socket carrying the mark; what names the client in the message.
func (l *Listener) Check(t testing.TB, what string, min int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := errors.Join(l.errs...); err != nil {
		t.Fatal(err)
	}
	if len(l.marks) < min {
		t.Fatalf("%d connections from %s accepted, want %d or more", len(l.marks), what, min)
	}
	for i, m := range l.marks {
		if m != l.mark {
			t.Errorf("connection %d from %s carries mark %#x, want %#x", i, what, m, l.mark)
		}
	}
}

// Peer returns the mark of the socket at the other end of c, a TCP
// connection whose client is this process: the socket among this
// process's files whose local address is c's remote address. The client
// must still hold it, as one waiting for the server's first bytes does.
func Peer(c net.Conn) (uint32, error) {
	want := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	for _, e := range fds {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil || addrOf(sa) != want {
			continue
		}
		m, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
		if err != nil {
			return 0, os.NewSyscallError("getsockopt SO_MARK", err)
		}
		return uint32(m), nil
	}
	return 0, fmt.Errorf("testmark: no socket of this process is at %s, the other end of %s", want, c.LocalAddr())
}

func addrOf(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}
