//go:build !linux

package proxy

import "net"

// spliceCopy moves nothing off Linux, which has no splice(2): the caller
// goes on with bufferCopy.
func (f *flow) spliceCopy(dst, src *net.TCPConn, d *direction) (int64, error) {
	return 0, errSpliceUnsupported
}
