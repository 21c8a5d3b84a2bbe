package proxy

import (
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// parker holds the copy directions that parked (see pump): for each, the
// socket it waits to read is in an epoll set of the parker's own, and no
// goroutine waits for it. One goroutine, running only while something is
// parked, waits on the set and starts a goroutine for each socket that
// becomes readable (or hung up, or failed).
//
// The runtime's poller has the same sockets in its own set, edge
// triggered; this set is level triggered and a socket is taken out of it
// before the direction reads it again, so no readiness is missed
// however the two interleave.
type parker struct {
	mu      sync.Mutex
	epfd    int // -1 until the first park
	running bool
	parked  map[int32]*pump // by socket
}

var parking = &parker{epfd: -1, parked: make(map[int32]*pump)}

// parkWait is how long the parker's goroutine waits for events before it
// looks whether anything is still parked (and exits if not).
const parkWait = time.Second

// park puts u in the set, waiting for c to become readable, unless u's
// flow has failed (which cancels what is parked: see cancel). It reports
// false when it did not park u; u then carries on at once.
func (pk *parker) park(u *pump, c *net.TCPConn) bool {
	fd, ok := sysfd(c)
	if !ok {
		return false
	}
	pk.mu.Lock()
	defer pk.mu.Unlock()
	if u.f.aborted.Load() {
		return false
	}
	if pk.epfd < 0 {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return false
		}
		pk.epfd = epfd
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(fd)}
	if err := unix.EpollCtl(pk.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return false
	}
	u.fd = int32(fd)
	pk.parked[u.fd] = u
	// The flow's idle timeout, which no read deadline measures while u
	// is parked.
	left := time.Until(time.Unix(0, u.f.last.Load()).Add(u.f.idle))
	if u.idle == nil {
		u.idle = time.AfterFunc(left, func() { pk.idleCheck(u) })
	} else {
		u.idle.Reset(left)
	}
	if !pk.running {
		pk.running = true
		go pk.loop(pk.epfd)
	}
	return true
}

// unpark takes the pump parked on fd out of the set, if one is; the
// caller resumes it.
func (pk *parker) unpark(fd int32) *pump {
	pk.mu.Lock()
	defer pk.mu.Unlock()
	u := pk.parked[fd]
	if u != nil {
		pk.remove(u)
	}
	return u
}

// remove takes u out of the set; pk.mu is held.
func (pk *parker) remove(u *pump) {
	delete(pk.parked, u.fd)
	unix.EpollCtl(pk.epfd, unix.EPOLL_CTL_DEL, int(u.fd), nil)
	u.idle.Stop()
}

// idleCheck is u's idle timer: u resumes with the idle timeout, unless
// bytes moved the other way meanwhile.
func (pk *parker) idleCheck(u *pump) {
	pk.mu.Lock()
	if pk.parked[u.fd] != u {
		pk.mu.Unlock()
		return
	}
	if left := time.Until(time.Unix(0, u.f.last.Load()).Add(u.f.idle)); left > 0 {
		u.idle.Reset(left)
		pk.mu.Unlock()
		return
	}
	pk.remove(u)
	pk.mu.Unlock()
	u.resume(u.f.idleOr(os.ErrDeadlineExceeded))
}

// cancel resumes u, if it is parked, with err. A flow that fails calls it
// (after marking itself failed, so that u cannot park again) before it
// closes the socket u is parked on: a socket closed while in the set
// would leave it without telling anyone.
func (pk *parker) cancel(u *pump, err error) {
	pk.mu.Lock()
	if pk.parked[u.fd] != u {
		pk.mu.Unlock()
		return
	}
	pk.remove(u)
	pk.mu.Unlock()
	u.resume(err)
}

func (pk *parker) loop(epfd int) {
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(epfd, events, int(parkWait/time.Millisecond))
		if err != nil && err != unix.EINTR {
			n = 0
		}
		for _, ev := range events[:max(n, 0)] {
			if u := pk.unpark(ev.Fd); u != nil {
				u.resume(nil)
			}
		}
		pk.mu.Lock()
		if n <= 0 && len(pk.parked) == 0 {
			pk.running = false
			pk.mu.Unlock()
			return
		}
		pk.mu.Unlock()
	}
}

// sysfd returns c's file descriptor.
func sysfd(c *net.TCPConn) (int, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	fd := -1
	if rc.Control(func(s uintptr) { fd = int(s) }) != nil || fd < 0 {
		return 0, false
	}
	return fd, true
}

// count returns how many directions are parked.
func (pk *parker) count() int {
	pk.mu.Lock()
	defer pk.mu.Unlock()
	return len(pk.parked)
}
