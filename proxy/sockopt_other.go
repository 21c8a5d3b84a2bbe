//go:build !linux

package proxy

import (
	"errors"
	"syscall"
)

// errNoMark is the error of marking a socket off Linux.
var errNoMark = errors.New("proxy: socket mark: needs Linux (SO_MARK)")

// markControl fails to dial off Linux: there is no socket mark.
func markControl(uint32) func(network, address string, c syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error { return errNoMark }
}

// probeMark fails off Linux, so the proxy runs unmarked.
func probeMark(uint32) error { return errNoMark }

// transparentControl fails off Linux: tproxy mode needs IP_TRANSPARENT.
func transparentControl(string, string, syscall.RawConn) error {
	return errors.New("proxy: transparent listener: needs Linux (IP_TRANSPARENT)")
}

// ipv6Disabled cannot tell off Linux (no /proc/sys): binding [::] finds out.
func ipv6Disabled() (bool, string) { return false, "" }

// transparentDialControl fails off Linux: tproxy mode needs IP_TRANSPARENT.
func transparentDialControl(uint32) func(network, address string, c syscall.RawConn) error {
	return transparentControl
}
