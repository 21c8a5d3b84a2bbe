package sockmark

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Control returns a net.Dialer Control hook that puts mark on each socket
// before it connects; nil for mark 0, which is no mark.
//
// Where the process may not set a mark (EPERM: SO_MARK needs
// CAP_NET_ADMIN), the socket is left unmarked and the dial goes on. That
// is how the proxy has always treated its data path: the rules exempt its
// traffic by mark or by UID, either alone sufficing, so a sidecar that
// lacks the capability but runs as the exempt UID works, and failing its
// dials would break it for nothing. A sidecar with neither is a
// deployment error, reported once at start with Probe's answer rather
// than at every socket. Any other failure fails the dial: the socket is
// not what the rules expect.
func Control(mark uint32) func(network, address string, c syscall.RawConn) error {
	if mark == 0 {
		return nil
	}
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = set(int(fd), mark) }); err != nil {
			return err
		}
		if serr != nil && !errors.Is(serr, unix.EPERM) {
			return serr
		}
		return nil
	}
}

// Probe reports whether this process can mark its sockets with mark,
// trying once on a socket of its own: nil if it can, the error (EPERM
// without CAP_NET_ADMIN) if not.
func Probe(mark uint32) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return os.NewSyscallError("socket", err)
		}
	}
	defer unix.Close(fd)
	return set(fd, mark)
}

// Get returns the mark of c's socket (reading it needs no privilege).
func Get(c syscall.RawConn) (uint32, error) {
	var v int
	var serr error
	if err := c.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) }); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, os.NewSyscallError("getsockopt SO_MARK", serr)
	}
	return uint32(v), nil
}

func set(fd int, mark uint32) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		return os.NewSyscallError("setsockopt SO_MARK", err)
	}
	return nil
}

// AsUser makes a process started with attr run as uid and gid, keeping
// CAP_NET_ADMIN across the change of user (an ambient capability): a
// sidecar run as the exempt UID can so still mark its sockets, and either
// exemption alone keeps it out of capture.
func AsUser(attr *syscall.SysProcAttr, uid, gid uint32) {
	attr.Credential = &syscall.Credential{Uid: uid, Gid: gid}
	attr.AmbientCaps = []uintptr{unix.CAP_NET_ADMIN}
}
