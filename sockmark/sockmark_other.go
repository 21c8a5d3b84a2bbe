//go:build !linux

package sockmark

import (
	"errors"
	"syscall"
)

// errNotLinux is every answer off Linux, which has no SO_MARK.
var errNotLinux = errors.New("sockmark: socket marks (SO_MARK) are Linux only")

// Control returns nil: off Linux there is no mark to set, and no capture
// rule that looks for one.
func Control(mark uint32) func(network, address string, c syscall.RawConn) error { return nil }

// Probe reports that marks are Linux only.
func Probe(mark uint32) error { return errNotLinux }

// Get reports that marks are Linux only.
func Get(c syscall.RawConn) (uint32, error) { return 0, errNotLinux }

// AsUser makes a process started with attr run as uid and gid; there are
// no ambient capabilities to keep off Linux.
func AsUser(attr *syscall.SysProcAttr, uid, gid uint32) {
	attr.Credential = &syscall.Credential{Uid: uid, Gid: gid}
}
