package topology

import (
	"syscall"

	"meshgate/sockmark"
)

// sysProcAttr is how Start runs a process: in a process group of its own,
// killed with the test binary, as o's user with CAP_NET_ADMIN kept.
func (o ProcOptions) sysProcAttr() (*syscall.SysProcAttr, error) {
	// Pdeathsig: a test binary that dies without running Close takes its
	// pods' processes with it (the starting thread is a pooled one that
	// lives as long as the process).
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if o.UID != nil {
		gid := *o.UID
		if o.GID != nil {
			gid = *o.GID
		}
		sockmark.AsUser(attr, *o.UID, gid)
	}
	return attr, nil
}
