package enroll

import "syscall"

// keepNetAdmin has a process started with attr keep CAP_NET_ADMIN (12)
// across its change of user, so it can still mark its sockets.
func keepNetAdmin(attr *syscall.SysProcAttr) {
	attr.AmbientCaps = []uintptr{12}
}
