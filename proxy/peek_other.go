//go:build !linux

package proxy

import "net"

// readPeek reads c into a buffer of peekPool, taken before the read waits
// off Linux (see the Linux one). bp is nil when nothing was read.
func readPeek(c *net.TCPConn) (bp *[]byte, n int, err error) {
	bp = peekPool.Get().(*[]byte)
	n, err = c.Read((*bp)[:cap(*bp)])
	if n == 0 {
		peekPool.Put(bp)
		bp = nil
	}
	return bp, n, err
}

// idleAlive cannot look without reading off Linux: a pooled connection is
// taken as alive (a request that finds it closed is sent again).
func idleAlive(*net.TCPConn) bool { return true }
