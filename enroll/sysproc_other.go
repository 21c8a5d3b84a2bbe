//go:build !linux

package enroll

import "syscall"

// keepNetAdmin does nothing off Linux, which has no ambient capabilities;
// there, entering the pod's network namespace fails first.
func keepNetAdmin(*syscall.SysProcAttr) {}
