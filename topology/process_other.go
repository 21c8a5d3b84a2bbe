//go:build !linux

package topology

import (
	"errors"
	"syscall"
)

// sysProcAttr fails off Linux: a pod's processes need Pdeathsig and
// ambient capabilities (and network namespaces to run in).
func (o ProcOptions) sysProcAttr() (*syscall.SysProcAttr, error) {
	return nil, errors.New("process attributes: needs Linux (Pdeathsig, ambient capabilities)")
}
