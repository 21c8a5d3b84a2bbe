package proxy

import (
	"errors"
	"io"
	"sync"
)

// replayBody keeps what the tries of an HTTP/2 request read of its body,
// up to a bound (retries.maxBodyBytes), so that a retry can send it
// again: each try reads through a reader of its own (reader), from the
// start, what was kept, then on from the app's body, keeping what it
// reads. The body is not read ahead of the tries: a stream (a gRPC
// client stream) goes as it comes, and a request whose body turns out
// longer than the bound is not retried once it is (replayable), the try
// under way reading on without keeping anything.
//
// A try's transport may still be reading the body after the try was given
// up on (net/http closes a request's body in a goroutine of its own):
// only the newest reader reads, an older one's Read failing, but a read
// of the app's body already under way when a new reader came is waited
// for by it, and what that read got is kept for it, over the bound if
// need be (by one read at most), so nothing of the body is lost.
type replayBody struct {
	src io.Reader
	max int64

	mu      sync.Mutex
	cond    sync.Cond // signalled when a read of src ends
	buf     []byte    // what was read of src, while not over
	over    bool      // src gave more than max: nothing is kept, no retry
	err     error     // src's error (io.EOF at its end)
	reading bool      // a read of src is under way, with mu unlocked
	cur     *replayReader
}

// errReplaced fails the reads of a try's body once another try has
// begun.
var errReplaced = errors.New("request body: read by a later try")

func newReplayBody(src io.Reader, max int64) *replayBody {
	rb := &replayBody{src: src, max: max}
	rb.cond.L = &rb.mu
	return rb
}

// reader returns a reader of the body for a new try, from its start;
// earlier ones fail from now on. Call it only while replayable.
func (rb *replayBody) reader() *replayReader {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	r := &replayReader{rb: rb}
	rb.cur = r
	return r
}

// replayable reports whether another try can be sent the whole body:
// none of it was dropped, and reading it did not fail.
func (rb *replayBody) replayable() bool {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return !rb.over && (rb.err == nil || rb.err == io.EOF)
}

// replayReader is one try's reader of a replayBody.
type replayReader struct {
	rb  *replayBody
	off int // bytes of rb.buf read
}

func (r *replayReader) Read(p []byte) (int, error) {
	rb := r.rb
	rb.mu.Lock()
	defer rb.mu.Unlock()
	for {
		if r != rb.cur {
			return 0, errReplaced
		}
		if r.off < len(rb.buf) {
			n := copy(p, rb.buf[r.off:])
			r.off += n
			return n, nil
		}
		if rb.err != nil {
			return 0, rb.err
		}
		if !rb.reading {
			break
		}
		rb.cond.Wait() // an older try's read: what it gets is kept for r
	}
	if len(p) == 0 {
		return 0, nil
	}
	rb.reading = true
	rb.mu.Unlock()
	n, err := rb.src.Read(p)
	rb.mu.Lock()
	rb.reading = false
	rb.cond.Broadcast()
	if err != nil {
		rb.err = err
	}
	switch {
	case r != rb.cur:
		// Replaced while reading: the newer try gets it, kept.
		rb.buf = append(rb.buf, p[:n]...)
		return 0, errReplaced
	case rb.over:
	case int64(len(rb.buf)+n) > rb.max:
		rb.over, rb.buf = true, nil
	default:
		rb.buf = append(rb.buf, p[:n]...)
		r.off += n
	}
	return n, err
}

// Close leaves the app's body alone: the server closes it once the
// handler is done.
func (r *replayReader) Close() error { return nil }
