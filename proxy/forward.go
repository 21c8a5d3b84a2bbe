package proxy

import (
	"crypto/tls"
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
// connection costs no allocation per read. forward takes one only once
// bytes are there to read and puts it back once they are written: a
// connection waiting to read holds none (issue 12: at 2 000 idle mTLS
// connections, buffers held in Read were most of a sidecar's memory).
var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// bufsOut counts the buffers forward has taken from bufPool and not put
// back; tests read it.
var bufsOut atomic.Int64

func getBuf() *[]byte {
	bufsOut.Add(1)
	return bufPool.Get().(*[]byte)
}

func putBuf(bp *[]byte) {
	bufsOut.Add(-1)
	bufPool.Put(bp)
}

// bufSource is where a read takes its buffer and gives it back.
type bufSource struct {
	get func() *[]byte
	put func(*[]byte)
}

// copyBufs are forward's copy buffers; peekBufs the smaller ones a
// connection's first bytes are read into (peekPool).
var (
	copyBufs = bufSource{getBuf, putBuf}
	peekBufs = bufSource{
		func() *[]byte { return peekPool.Get().(*[]byte) },
		func(bp *[]byte) { peekPool.Put(bp) },
	}
)

// errWouldBlock is a read that found no bytes and did not wait for them
// (sockReader.readNow). It is a temporary net.Error: crypto/tls keeps its
// state after one, so the TLS connection can be read again.
var errWouldBlock error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "read would block" }
func (wouldBlockError) Timeout() bool   { return false }
func (wouldBlockError) Temporary() bool { return true }

// ErrIdleTimeout ends a connection on which no byte moved either way for
// the idle timeout.
var ErrIdleTimeout = errors.New("idle timeout")

// errSpliceUnsupported says splice(2) cannot go on (not supported for
// these sockets, or no pipe to be had) while no byte is in flight: the
// caller carries on with a buffer copy from where it stopped.
var errSpliceUnsupported = errors.New("splice not supported")

// copyMode picks how forward moves bytes.
type copyMode uint8

const (
	copySplice copyMode = iota // splice(2), falling back to a buffer
	copyBuffer                 // a pooled buffer only (tests, benchmarks)
)

// withCopyMode picks how bytes are moved (tests and benchmarks compare).
func withCopyMode(m copyMode) Option {
	return func(p *Proxy) { p.copyMode = m }
}

// leg is one side of a forwarded connection.
type leg struct {
	// tcp is the socket: deadlines, half-close, reset and splice act on it.
	tcp *net.TCPConn
	// tls, when set, is the mesh TLS carried on tcp: bytes are read and
	// written through it, and splice cannot be used.
	tls *tls.Conn
	// pending holds bytes already read from this side (while peeking at
	// the connection) and not yet written to the other: forward writes
	// them first. pendingBuf is their pooled buffer, put back after.
	pending    []byte
	pendingBuf *[]byte
}

// Read reads from the leg: plaintext, whether it is TLS or not.
func (l *leg) Read(b []byte) (int, error) {
	if l.tls != nil {
		return l.tls.Read(b)
	}
	return l.tcp.Read(b)
}

// closeWrite ends the leg's write side: for TLS a close_notify alert
// (which the peer sidecar reads as EOF, RFC 8446 §6.1), then a FIN.
func (l *leg) closeWrite() error {
	if l.tls != nil {
		if err := l.tls.CloseWrite(); err != nil {
			return err
		}
	}
	return l.tcp.CloseWrite()
}

// releasePending puts the pending bytes' buffer back.
func (l *leg) releasePending() {
	if l.pendingBuf != nil {
		peekPool.Put(l.pendingBuf)
	}
	l.pending, l.pendingBuf = nil, nil
}

// flow is the state two copy directions share.
type flow struct {
	client, upstream leg
	idle             time.Duration
	mode             copyMode
	last             atomic.Int64 // time of the last byte either way, unix ns

	once    sync.Once
	aborted atomic.Bool
	err     error // the first failure; written once, read after both directions end

	park        time.Duration // fwdTimes.park, when shorter than idle; else 0
	front, back *pump         // client → upstream, upstream → client
	running     atomic.Int32  // directions not over yet
	then        func(sent, received int64, err error)
}

// flowPlan is an L4 forward that a connection's stage has set up and
// handle runs once the stages have returned (see Proxy.runFlow): the
// stages' goroutine stack is not under the flow, which may outlive it.
type flowPlan struct {
	client, upstream leg
	// idle, when set, is the flow's idle timeout instead of the proxy's
	// timeouts.idle: its destination's (resilience timeouts.idle).
	idle time.Duration
	// after runs once the flow is over, with the connection's outcome
	// (bytes and error filled in): what the stage that set it up does
	// after a forward (close the upstream, count the endpoint, ...).
	after func(o *outcome)
}

// fwdTimes are forward's timers: the idle timeout, and how long a flow
// is idle before its upstream → client direction parks (0: never).
type fwdTimes struct {
	idle, park time.Duration
}

// parkAfter is how long a forwarded connection is idle before its
// upstream → client direction parks (see pump).
const parkAfter = 500 * time.Millisecond

// withParkAfter sets how long a forwarded connection is idle before its
// upstream → client direction parks; 0 never parks (tests).
func withParkAfter(d time.Duration) Option {
	return func(p *Proxy) { p.parkAfter = d }
}

// fwdTimes returns forward's timers from the config.
func (p *Proxy) fwdTimes() fwdTimes {
	return fwdTimes{idle: p.cfg.Timeouts.Idle.D(), park: p.parkAfter}
}

// errParked ends a pump's bufferCopy when it is to park.
var errParked = errors.New("parked")

// pump is one direction of a flow: it copies src to dst. A direction
// parks once no byte has moved either way for fwdTimes.park: its
// goroutine ends, and the parker waits on the socket for it; what comes
// next (bytes, the end, a failure, the idle timeout) starts a new
// goroutine that carries on where it stopped. A held connection that
// nothing moves on costs no goroutine (nor buffer): at 2 000 held mTLS
// connections, goroutine stacks were half of each sidecar's memory
// (issue 12). The upstream → client direction always may; the other one
// when the flow runs apart from the stages that set it up (runFlow).
type pump struct {
	f        *flow
	dst, src *leg
	d        *direction
	n        int64                        // bytes written to dst
	read     func() (*[]byte, int, error) // the buffer copy's reader, once it began
	park     time.Duration                // 0: never parks

	// Set by the parker, under its lock.
	fd   int32       // the socket it is parked on
	idle *time.Timer // the idle timeout while parked
	woke error       // why it was resumed, when not for its socket
}

// resume carries a parked pump on, on a new goroutine: err says why, when
// it is not its socket (the flow failed, or it was idle too long).
func (u *pump) resume(err error) {
	u.woke = err
	go u.loop()
}

// loop runs the pump until it is over, or parked.
func (u *pump) loop() {
	for {
		if err := u.woke; err != nil {
			u.woke = nil
			if errors.Is(err, ErrIdleTimeout) {
				u.f.fail(fmt.Errorf("read from %s: %w", u.d.srcName, err))
			}
			u.f.pumpDone()
			return
		}
		if !u.run() {
			u.f.pumpDone()
			return
		}
		if parking.park(u, u.src.tcp) {
			return
		}
		// It could not park (the flow failed meanwhile, or the parker
		// cannot be had): it waits here after all.
		u.park = 0
	}
}

// run copies until src's EOF or a failure, which aborts the flow, or
// until the pump parks; it reports whether it parked.
func (u *pump) run() (parked bool) {
	f, dst, src, d := u.f, u.dst, u.src, u.d
	if u.read == nil {
		if len(src.pending) > 0 {
			n, err := f.write(dst, src.pending)
			u.n += n
			d.counter.Add(float64(n))
			src.releasePending()
			if err != nil {
				f.fail(fmt.Errorf("write to %s: %w", d.dstName, err))
				return false
			}
		}
		if f.mode == copySplice && src.tls == nil && dst.tls == nil {
			more, err := f.spliceCopy(dst.tcp, src.tcp, d)
			u.n += more
			if !errors.Is(err, errSpliceUnsupported) {
				if err != nil {
					f.fail(err)
				}
				return false
			}
		}
		u.read = src.reader()
	} else if u.park > 0 {
		// Resumed after it parked: its socket has something.
		src.tcp.SetReadDeadline(time.Now().Add(min(u.park, f.idle)))
	}
	err := f.bufferCopy(u)
	if err == errParked {
		return true
	}
	if err != nil {
		f.fail(err)
	}
	return false
}

// direction names one way of a flow, for errors, and counts its bytes.
type direction struct {
	srcName, dstName string
	counter          prometheus.Counter
}

// forward copies client→upstream and upstream→client until both ways have
// ended. An EOF one way half-closes the other side (CloseWrite, or a TLS
// close_notify) and the other way goes on: TCP half-close is preserved
// end to end, across mesh TLS too. Any failure one way (reset, idle
// timeout) resets both connections, so neither peer mistakes a broken
// stream for a complete one. Bytes (plaintext bytes, on a TLS leg) are
// added to the counters as they flow, pending bytes first. While it
// runs, the flow is the client connection's, as an L4 one is (runFlow):
// the end of a drain's grace period kills it (killAll), which also wakes
// a direction parked on the upstream; closing the socket under a parked
// direction would not.
func (p *Proxy) forward(client, upstream leg, t fwdTimes, mode copyMode, m *dirMetrics) (sent, received int64, err error) {
	f := newFlow(client, upstream, t, mode, m)
	p.setFlow(client.tcp, f)
	defer p.setFlow(client.tcp, nil)
	done := make(chan struct{})
	f.start(false, func(s, r int64, e error) {
		sent, received, err = s, r, e
		close(done)
	})
	<-done
	return sent, received, err
}

// newFlow sets up forwarding client and upstream (see forward); start
// starts it.
func newFlow(client, upstream leg, t fwdTimes, mode copyMode, m *dirMetrics) *flow {
	f := &flow{client: client, upstream: upstream, idle: t.idle, mode: mode}
	f.front = &pump{f: f, dst: &f.upstream, src: &f.client, d: &direction{"client", "upstream", m.sent}}
	f.back = &pump{f: f, dst: &f.client, src: &f.upstream, d: &direction{"upstream", "client", m.received}}
	if t.park > 0 && t.park < t.idle {
		f.park = t.park
	}
	return f
}

// start runs the flow: upstream → client on a goroutine of its own,
// client → upstream on the caller's until it is over, or (apart) parked.
// then gets the bytes each way and the first failure once both ways are
// over, on the goroutine of the last one.
func (f *flow) start(apart bool, then func(sent, received int64, err error)) {
	f.then = then
	f.running.Store(2)
	f.back.park = f.park
	if apart {
		f.front.park = f.park
	}
	// Idle detection costs nothing per read: both sockets get a deadline
	// one idle period out (a direction that may park reads with one a
	// park delay out); when one fires, the shared last-activity time says
	// whether to push it on (traffic flowed the other way, or earlier
	// this way), park, or end the idle connection.
	now := time.Now()
	f.last.Store(now.UnixNano())
	f.front.setDeadlines(now)
	f.back.setDeadlines(now)
	go f.back.loop()
	f.front.loop()
}

// setDeadlines sets the deadlines of the socket u reads at the start of
// its flow: reading, the idle timeout or, if u may park, the park delay;
// writing (the other direction's), the idle timeout.
func (u *pump) setDeadlines(now time.Time) {
	if u.park > 0 {
		u.src.tcp.SetReadDeadline(now.Add(u.park))
		u.src.tcp.SetWriteDeadline(now.Add(u.f.idle))
		return
	}
	u.src.tcp.SetDeadline(now.Add(u.f.idle))
}

// pumpDone is a direction's end; the last one calls then.
func (f *flow) pumpDone() {
	if f.running.Add(-1) != 0 {
		return
	}
	// A fail from elsewhere (killAll) after this would write err as it
	// is read: the once closes it.
	f.once.Do(func() {})
	f.then(f.front.n, f.back.n, f.err)
}

// kill ends the flow as a failure: the drain's grace period is over.
func (f *flow) kill() { f.fail(errKilled) }

// errKilled ends a connection still open when the drain's grace period is over.
var errKilled = errors.New("closed: the drain's grace period is over")

// bufferCopy is copy through a pooled buffer, taken once src has bytes
// and put back once they are written (see reader). It returns errParked
// when u is to park.
func (f *flow) bufferCopy(u *pump) error {
	dst, src, d := u.dst, u.src, u.d
	for {
		bp, nr, rerr := u.read()
		if nr > 0 {
			f.touch()
			nw, werr := f.write(dst, (*bp)[:nr])
			putBuf(bp)
			u.n += nw
			d.counter.Add(float64(nw))
			if werr != nil {
				return fmt.Errorf("write to %s: %w", d.dstName, werr)
			}
		}
		if rerr == nil {
			continue
		}
		if rerr == io.EOF {
			if err := dst.closeWrite(); err != nil {
				return fmt.Errorf("half-close %s: %w", d.dstName, err)
			}
			return nil
		}
		if u.park > 0 && errors.Is(rerr, os.ErrDeadlineExceeded) && !f.aborted.Load() {
			last := time.Unix(0, f.last.Load())
			switch since := time.Since(last); {
			case since < u.park:
				if src.tcp.SetReadDeadline(last.Add(u.park)) == nil {
					continue
				}
			case since < f.idle:
				return errParked
			}
		}
		if f.extend(rerr, src.tcp.SetReadDeadline) {
			continue
		}
		return fmt.Errorf("read from %s: %w", d.srcName, f.idleOr(rerr))
	}
}

// reader returns how bufferCopy reads l: it waits for bytes, then reads
// them into a buffer of bufPool, which it returns with them (nil when it
// read none). Waiting, it holds no pooled buffer, and its goroutine is
// parked a few calls deep, so that the garbage collector can shrink its
// stack:
//
//   - plaintext: sockReader takes the buffer once the socket is readable;
//   - TLS: the TLS is read with the socket under it made not to wait
//     (peekConn.now). A read that finds no record complete in crypto/tls
//     and nothing on the socket (errWouldBlock) puts the buffer back and
//     waits for the socket before trying again. crypto/tls keeps what
//     it had of a record (it takes a temporary error as no failure);
//     that buffer of its own, a record's worth, it keeps anyway;
//   - TLS over some other net.Conn than a peekConn (none in the proxy
//     today): the buffer is taken before the read, which waits with it.
func (l *leg) reader() func() (*[]byte, int, error) {
	sr, err := newSockReader(l.tcp)
	if err != nil {
		sr = nil
	}
	var pc *peekConn
	if l.tls != nil {
		pc, _ = l.tls.NetConn().(*peekConn)
	}
	switch {
	case l.tls == nil && sr != nil:
		return sr.read
	case l.tls != nil && sr != nil && pc != nil:
		// wait: the last read found nothing, so the socket is next.
		// Not at first: crypto/tls may hold bytes from the handshake.
		wait := false
		return func() (*[]byte, int, error) {
			for {
				if wait {
					if err := sr.wait(); err != nil {
						return nil, 0, err
					}
					wait = false
				}
				bp := getBuf()
				pc.now = sr
				n, err := l.tls.Read(*bp)
				pc.now = nil
				if err == errWouldBlock {
					if n == 0 {
						putBuf(bp)
						wait = true
						continue
					}
					err = nil
				}
				if n == 0 {
					putBuf(bp)
					bp = nil
				}
				return bp, n, err
			}
		}
	}
	return func() (*[]byte, int, error) {
		bp := getBuf()
		n, err := l.Read(*bp)
		if n == 0 {
			putBuf(bp)
			bp = nil
		}
		return bp, n, err
	}
}

// write writes all of b to dst, riding over deadlines while the flow is
// active. A TLS leg cannot ride over one (a timed-out TLS write leaves
// the stream corrupt), so each of its writes gets a deadline one idle
// period out instead: a TLS write fails when it has made no progress for
// that long.
func (f *flow) write(dst *leg, b []byte) (int64, error) {
	if dst.tls != nil {
		dst.tcp.SetWriteDeadline(time.Now().Add(f.idle))
		n, err := dst.tls.Write(b)
		if n > 0 {
			f.touch()
		}
		if err != nil {
			return int64(n), f.idleOr(err)
		}
		return int64(n), nil
	}
	var total int64
	for {
		n, err := dst.tcp.Write(b)
		total += int64(n)
		if err == nil {
			f.touch()
			return total, nil
		}
		if n > 0 {
			f.touch()
		}
		b = b[n:]
		if !f.extend(err, dst.tcp.SetWriteDeadline) {
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
		// Before the sockets close: a parked direction is resumed (and
		// ends) rather than left in the parker's set.
		parking.cancel(f.front, err)
		parking.cancel(f.back, err)
		reset(f.client.tcp)
		reset(f.upstream.tcp)
	})
}
