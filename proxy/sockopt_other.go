//go:build !linux

package proxy

import (
	"errors"
	"net"
	"syscall"
)

// transparentControl fails off Linux: tproxy mode needs IP_TRANSPARENT.
func transparentControl(string, string, syscall.RawConn) error {
	return errors.New("proxy: transparent socket: needs Linux (IP_TRANSPARENT)")
}

// ipv6Disabled cannot tell off Linux (no /proc/sys): binding [::] finds out.
func ipv6Disabled() (bool, string) { return false, "" }

// heardFrom cannot tell off Linux: a connection of the proxy's that came
// back is taken as captured again.
func heardFrom(*net.TCPConn) bool { return false }
