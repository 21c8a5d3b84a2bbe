//go:build !linux

package proxy

import "net"

// sockReader reads a socket. Off Linux it waits in Read, holding its
// buffer meanwhile, which costs memory but changes no result.
type sockReader struct {
	c    *net.TCPConn
	bufs bufSource // where read takes its buffer
}

func newSockReader(c *net.TCPConn) (*sockReader, error) {
	return &sockReader{c: c, bufs: copyBufs}, nil
}

// read reads the socket into a buffer of r.bufs, which it returns (nil
// when it read no byte).
func (r *sockReader) read() (*[]byte, int, error) {
	bp := r.bufs.get()
	n, err := r.c.Read(*bp)
	if n == 0 {
		r.bufs.put(bp)
		bp = nil
	}
	return bp, n, err
}

// readNow reads the socket into b (waiting, off Linux).
func (r *sockReader) readNow(b []byte) (int, error) { return r.c.Read(b) }

// wait returns at once off Linux: readNow waits.
func (r *sockReader) wait() error { return nil }
