package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"meshgate/mtls"
	"meshgate/sockmark"
)

// TestCAClientMarksSockets: the CA client's connections, for the first
// certificate and for renewals, carry CAClientConfig.Mark, read at the CA
// server as each is accepted from the client's own socket. The capture
// rules exempt the sidecar by that mark; with the sidecar running as
// root, an unmarked connection to the CA would be captured.
func TestCAClientMarksSockets(t *testing.T) {
	const mark = 0x539
	if err := sockmark.Probe(mark); err != nil {
		t.Skipf("cannot mark sockets here (needs CAP_NET_ADMIN, e.g. root): %v", err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &peerMarks{Listener: inner}
	c, addr, _ := serveCAOn(t, ln, 2*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := mtls.NewCAClientSource(ctx, mtls.CAClientConfig{Server: addr, ID: webID, Token: webToken,
		Roots: []*x509.Certificate{c.Root()}, Mark: mark}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	first := serial(src)
	waitFor(t, "a renewal", func() bool { return serial(src) != first })
	marks, errs := ln.get()
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
	if len(marks) < 2 {
		t.Fatalf("%d connections to the CA server for a certificate and a renewal, want 2 or more", len(marks))
	}
	for i, m := range marks {
		if m != mark {
			t.Errorf("connection %d to the CA server carries mark %#x, want %#x", i, m, mark)
		}
	}
}

// peerMarks is a listener for clients in this same process: for each
// connection it accepts, it notes the mark of the client's socket.
type peerMarks struct {
	net.Listener
	mu    sync.Mutex
	marks []uint32
	errs  []error
}

func (l *peerMarks) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	m, err := peerMark(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.errs = append(l.errs, err)
	} else {
		l.marks = append(l.marks, m)
	}
	return c, nil
}

func (l *peerMarks) get() ([]uint32, []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]uint32(nil), l.marks...), append([]error(nil), l.errs...)
}

// peerMark returns the mark of the socket at the other end of c, an IPv4
// loopback connection whose client is this process: the socket among
// this process's files whose local address is c's remote address. The
// client waits for the server's handshake meanwhile, so it is open.
func peerMark(c net.Conn) (uint32, error) {
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
		in4, ok := sa.(*unix.SockaddrInet4)
		if err != nil || !ok || netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)) != want {
			continue
		}
		m, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
		if err != nil {
			return 0, os.NewSyscallError("getsockopt SO_MARK", err)
		}
		return uint32(m), nil
	}
	return 0, errors.New("no socket of this process at the other end of " + c.LocalAddr().String())
}
