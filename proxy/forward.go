package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// bufSize is the copy buffer size: 32 KiB, as io.Copy.
const bufSize = 32 << 10

// bufPool holds copy buffers for when splice cannot be used, so a
// connection costs no allocation per read.
var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// ErrIdleTimeout ends a connection on which no byte moved either way for
// the idle timeout.
var ErrIdleTimeout = errors.New("idle timeout")

// copyMode picks how forward moves bytes.
type copyMode uint8

const (
	copySplice copyMode = iota // splice(2), falling back to a buffer
	copyBuffer                 // a pooled buffer only (tests, benchmarks)
)

// flow is the state two copy directions share.
type flow struct {
	client, upstream *net.TCPConn
	idle             time.Duration
	mode             copyMode
	last             atomic.Int64 // time of the last byte either way, unix ns

	once    sync.Once
	aborted atomic.Bool
	err     error // the first failure; written once, read after both directions end
}

// direction names one way of a flow, for errors, and counts its bytes.
type direction struct {
	srcName, dstName string
	counter          prometheus.Counter
}

// forward copies client→upstream and upstream→client until both ways have
// ended. An EOF one way half-closes the other side (CloseWrite) and the
// other way goes on: TCP half-close is preserved end to end. Any failure
// one way (reset, idle timeout) resets both connections, so neither peer
// mistakes a broken stream for a complete one. Bytes are added to the
// counters as they flow.
func forward(client, upstream *net.TCPConn, idle time.Duration, mode copyMode, m *dirMetrics) (sent, received int64, err error) {
	f := &flow{client: client, upstream: upstream, idle: idle, mode: mode}
	// Idle detection costs nothing per read: both sockets get a deadline
	// one idle period out; when one fires, the shared last-activity time
	// says whether to push it on (traffic flowed the other way, or earlier
	// this way) or whether the connection is idle.
	now := time.Now()
	f.last.Store(now.UnixNano())
	client.SetDeadline(now.Add(idle))
	upstream.SetDeadline(now.Add(idle))

	done := make(chan struct{})
	go func() {
		defer close(done)
		received = f.copy(client, upstream, &direction{"upstream", "client", m.received})
	}()
	sent = f.copy(upstream, client, &direction{"client", "upstream", m.sent})
	<-done
	return sent, received, f.err
}

// copy moves bytes from src to dst until src's EOF, which it passes on as
// a half-close of dst, or until a failure, which aborts the flow.
func (f *flow) copy(dst, src *net.TCPConn, d *direction) int64 {
	var (
		n   int64
		err error
	)
	if f.mode == copySplice {
		n, err = f.spliceCopy(dst, src, d)
	}
	if f.mode == copyBuffer || errors.Is(err, errSpliceUnsupported) {
		var more int64
		more, err = f.bufferCopy(dst, src, d)
		n += more
	}
	if err != nil {
		f.fail(err)
	}
	return n
}

// bufferCopy is copy through a pooled buffer.
func (f *flow) bufferCopy(dst, src *net.TCPConn, d *direction) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			f.touch()
			nw, werr := f.write(dst, buf[:nr])
			total += nw
			d.counter.Add(float64(nw))
			if werr != nil {
				return total, fmt.Errorf("write to %s: %w", d.dstName, werr)
			}
		}
		if rerr == nil {
			continue
		}
		if rerr == io.EOF {
			if err := dst.CloseWrite(); err != nil {
				return total, fmt.Errorf("half-close %s: %w", d.dstName, err)
			}
			return total, nil
		}
		if f.extend(rerr, src.SetReadDeadline) {
			continue
		}
		return total, fmt.Errorf("read from %s: %w", d.srcName, f.idleOr(rerr))
	}
}

// write writes all of b, riding over deadlines while the flow is active.
func (f *flow) write(dst *net.TCPConn, b []byte) (int64, error) {
	var total int64
	for {
		n, err := dst.Write(b)
		total += int64(n)
		if err == nil {
			f.touch()
			return total, nil
		}
		if n > 0 {
			f.touch()
		}
		b = b[n:]
		if !f.extend(err, dst.SetWriteDeadline) {
			return total, f.idleOr(err)
		}
	}
}

// touch records activity.
func (f *flow) touch() { f.last.Store(time.Now().UnixNano()) }

// extend handles an error from a read or write: if it is a deadline and
// the flow has been active within the idle period, it moves the deadline
// one idle period past the last activity and says to retry.
func (f *flow) extend(err error, set func(time.Time) error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) || f.aborted.Load() {
		return false
	}
	next := time.Unix(0, f.last.Load()).Add(f.idle)
	if !next.After(time.Now()) {
		return false
	}
	return set(next) == nil
}

// idleOr turns a deadline error into ErrIdleTimeout.
func (f *flow) idleOr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) && !f.aborted.Load() {
		return fmt.Errorf("%w: no bytes either way for %v", ErrIdleTimeout, f.idle)
	}
	return err
}

// fail records the first failure and resets both sides, which also
// unblocks the other direction.
func (f *flow) fail(err error) {
	f.once.Do(func() {
		f.err = err
		f.aborted.Store(true)
		reset(f.client)
		reset(f.upstream)
	})
}
