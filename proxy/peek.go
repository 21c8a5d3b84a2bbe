package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"meshgate/proxy/sniff"
)

// peekSize is the first buffer a peeked connection gets: a ClientHello
// takes 200 bytes to 2 KiB, an HTTP request line less.
const peekSize = 4 << 10

// peekPool holds peek buffers. A connection takes one only once it has
// bytes to read (readPeek), so clients that say nothing hold none.
var peekPool = sync.Pool{New: func() any { b := make([]byte, peekSize); return &b }}

// aLongTimeAgo is a deadline in the past: setting it interrupts a blocked
// read or write at once.
var aLongTimeAgo = time.Unix(1, 0)

// peekConn is an accepted connection whose first bytes are read to decide
// what it is, then replayed: Read returns them before reading on. It is
// the net.Conn a TLS server reads the ClientHello through, and the one an
// HTTP server reads a detected connection through.
type peekConn struct {
	*net.TCPConn
	// tls, when set, is the mesh TLS terminated on TCPConn: what is peeked,
	// read and written is its plaintext (deadlines still act on TCPConn).
	tls *tls.Conn
	bp  *[]byte // buf's pooled backing array; nil when buf is not pooled
	buf []byte  // the bytes read so far
	off int     // how many of them Read has returned
	// now, when set, makes Read not wait: it reads what the socket has
	// through now, or returns errWouldBlock. forward sets it on the
	// peekConn under a mesh tls.Conn while it reads the rest of a record
	// (see leg.reader); set and read by that one reading goroutine.
	now *sockReader
}

// peeked returns the bytes read so far.
func (c *peekConn) peeked() []byte { return c.buf }

// fill waits for bytes and reads more of them into the buffer, growing it
// up to sniff.MaxClientHelloLen. It returns how many it read.
func (c *peekConn) fill() (int, error) {
	if c.bp == nil && c.buf == nil {
		if c.tls == nil {
			bp, n, err := readPeek(c.TCPConn)
			if bp != nil {
				c.bp, c.buf = bp, (*bp)[:n]
			}
			return n, err
		}
		// Through TLS the read itself waits (readable bytes may be no
		// data), so the buffer is taken at once, as upReport.readFirst does.
		c.bp = peekPool.Get().(*[]byte)
		c.buf = (*c.bp)[:0]
	}
	if len(c.buf) == cap(c.buf) {
		if cap(c.buf) >= sniff.MaxClientHelloLen {
			return 0, errors.New("peek buffer full")
		}
		grown := make([]byte, len(c.buf), min(2*cap(c.buf), sniff.MaxClientHelloLen))
		copy(grown, c.buf)
		c.releaseBuf()
		c.buf = grown
	}
	n, err := c.src().Read(c.buf[len(c.buf):cap(c.buf)])
	c.buf = c.buf[:len(c.buf)+n]
	return n, err
}

// readPeek waits until c has bytes to read, its peer's FIN or an error,
// or until its read deadline passes, and reads what it has into a buffer
// of peekPool, taken only once the socket has something for it (see
// sockReader.read): a connection that waits holds no buffer. It costs
// one read(2) when the bytes are there already, as a client's first ones
// usually are by the time its connection is served. bp is nil when
// nothing was read (EOF is io.EOF, as Read says it).
func readPeek(c *net.TCPConn) (bp *[]byte, n int, err error) {
	r, err := newSockReader(c)
	if err != nil {
		return nil, 0, err
	}
	r.bufs = peekBufs
	return r.read()
}

// src is what the connection's bytes are read from and written to.
func (c *peekConn) src() net.Conn {
	if c.tls != nil {
		return c.tls
	}
	return c.TCPConn
}

// Read returns the peeked bytes not yet returned, then reads the socket.
func (c *peekConn) Read(b []byte) (int, error) {
	if c.off < len(c.buf) {
		n := copy(b, c.buf[c.off:])
		c.off += n
		if c.off == len(c.buf) {
			c.release()
		}
		return n, nil
	}
	if c.now != nil && c.tls == nil {
		return c.now.readNow(b)
	}
	return c.src().Read(b)
}

// Write writes to the connection (through its TLS, if any).
func (c *peekConn) Write(b []byte) (int, error) { return c.src().Write(b) }

// CloseWrite half-closes the connection: through TLS, a close_notify
// alert, which the peer sidecar reads as EOF.
func (c *peekConn) CloseWrite() error {
	if c.tls != nil {
		return c.tls.CloseWrite()
	}
	return c.TCPConn.CloseWrite()
}

// Close closes the connection (through its TLS, if any).
func (c *peekConn) Close() error { return c.src().Close() }

// take hands the peeked bytes not yet read, and the pooled buffer holding
// them, to the caller (for replay by forward); c forgets them.
func (c *peekConn) take() (b []byte, bp *[]byte) {
	b, bp = c.buf[c.off:], c.bp
	c.bp, c.buf, c.off = nil, nil, 0
	return b, bp
}

// release returns the buffer to the pool; the peeked bytes are gone.
func (c *peekConn) release() {
	c.releaseBuf()
	c.buf, c.off = nil, 0
}

func (c *peekConn) releaseBuf() {
	if c.bp != nil {
		peekPool.Put(c.bp)
		c.bp = nil
	}
}

// putPeekBuf gives a buffer taken from a peekConn back, if it is pooled.
func putPeekBuf(bp *[]byte) {
	if bp != nil {
		peekPool.Put(bp)
	}
}

// speaker says who spoke first on a connection.
type speaker uint8

const (
	// speakerNone: neither side sent a byte before the deadline (or the
	// client's bytes so far did not settle anything).
	speakerNone speaker = iota
	// speakerClient: the client spoke and its bytes settled the
	// question (or it closed its side).
	speakerClient
	// speakerServer: the upstream spoke first (or closed): a server-first
	// protocol, and the client still silent.
	speakerServer
)

// opening is how a connection began, ready to be replayed: what the
// client sent is in its peekConn, what the upstream sent is here.
type opening struct {
	first speaker
	// clientEOF: the client closed its side before its bytes settled
	// anything.
	clientEOF bool
	// upstream is the connection dialed during the wait, zero if none was.
	upstream upConn
	// greeting is what the upstream sent first: a server-first
	// protocol's greeting, an answer to the client's unsettled bytes, or
	// an HTTP/2 server's SETTINGS, held while the client was awaited
	// (h2Greeting). greetBuf is its pooled buffer (put back once the
	// greeting is written).
	greeting []byte
	greetBuf *[]byte
	// upErr is how the upstream's first read failed, if it did (not EOF):
	// forwarding starts by passing it on as a failure.
	upErr error
}

// firstBytesRace is the wait for whoever speaks first on a new
// connection. The client's bytes are read into its peekConn until
// settled says they are enough; meanwhile, if dial is set, the upstream
// is dialed and watched, so that an upstream that speaks first (a
// server-first protocol: MySQL, SMTP, ...) is heard at once instead of
// after a detection timeout. An HTTP/2 server's SETTINGS is not heard so
// (h2Greeting): the wait goes on for the client. Inbound mTLS waits for
// the ClientHello with it (dialing the app only in permissive mode), and
// protocol detection waits for the app's first bytes with it (detect.go).
type firstBytesRace struct {
	client  *peekConn
	settled func(peeked []byte) bool
	// dial, when set, connects the upstream during the wait (with mesh
	// TLS, the handshake included); drop closes what it dialed when the
	// connection is lost.
	dial func(ctx context.Context) (upConn, error)
	drop func(upConn)
	// deadline bounds the whole wait.
	deadline time.Time
	// holdUntil is the earliest moment an upstream that spoke first is
	// taken for a server-first protocol while the client is silent; until
	// then the client may still speak and win (see MTLSConfig.GreetingHold).
	holdUntil time.Time
	// quiet, when set, ends the wait once the client has sent bytes that
	// do not settle anything and then nothing more for this long: a
	// client waiting for an answer to a few bytes is not kept waiting for
	// the deadline.
	quiet time.Duration
	// upstreamEnds ends the wait when the upstream speaks while the
	// client's bytes are still unsettled: it is answering them.
	upstreamEnds bool
}

// upConn is an upstream connection dialed during a firstBytesRace: the
// socket, and the mesh TLS on it when there is one (its first bytes are
// then read through the TLS).
type upConn struct {
	tcp *net.TCPConn
	tls *tls.Conn
}

// upReport is what the dialing goroutine found.
type upReport struct {
	conn  upConn
	err   error   // dial failure (conn zero) or first read failure
	bp    *[]byte // pooled buffer of the first bytes
	n     int     // how many first bytes
	spoke bool    // the upstream sent bytes (but an HTTP/2 server's preface), closed, or failed first
}

// run waits as described on firstBytesRace. An error means the connection
// is lost: the client failed (reset, refused by a grace period over) or
// the upstream could not be dialed; anything dialed is closed then.
// Without error, the opening says who spoke first; the client's read
// deadline is cleared.
func (r *firstBytesRace) run(ctx context.Context) (opening, error) {
	c := r.client
	c.SetReadDeadline(r.deadline)
	defer c.SetReadDeadline(time.Time{})

	var (
		upc     chan upReport // nil when not racing
		upDone  chan struct{} // closed when the goroutine has returned
		up      *upReport     // the report, once in
		mu      sync.Mutex
		dialed  *net.TCPConn // set by the goroutine once dialed, to interrupt its read
		stopped bool
	)
	cancelDial := context.CancelFunc(func() {})
	if r.dial != nil {
		upc, upDone = make(chan upReport, 1), make(chan struct{})
		var dctx context.Context
		dctx, cancelDial = context.WithCancel(ctx)
		// The goroutine is owned by run, which always waits for it to
		// return. It reports, then interrupts the client's read (a
		// deadline in the past) so that run looks at the report; run
		// waits for upDone, so no interrupt reaches the connection once
		// run has returned.
		go func() {
			defer close(upDone)
			rep := upReport{}
			rep.conn, rep.err = r.dial(dctx)
			if rep.err == nil {
				mu.Lock()
				if !stopped {
					dialed = rep.conn.tcp
				}
				stop := stopped
				mu.Unlock()
				if !stop {
					rep.readFirst()
				}
			}
			upc <- rep
			c.SetReadDeadline(aLongTimeAgo)
		}()
	}
	defer cancelDial()
	// collect stops the goroutine and takes its report; with abandon, it
	// also cuts a dial short.
	collect := func(abandon bool) {
		if upc == nil {
			return
		}
		if up == nil {
			if abandon {
				cancelDial()
			}
			mu.Lock()
			stopped = true
			if dialed != nil {
				dialed.SetReadDeadline(aLongTimeAgo)
			}
			mu.Unlock()
			rep := <-upc
			up = &rep
		}
		<-upDone
	}

	var o opening
	// spoke: the client sent a byte, during this wait or before it (a
	// wait may go on from bytes peeked by an earlier one, see
	// serveInbound); quiet counts from the start then.
	spoke := len(c.peeked()) > 0
	// quietUntil is when a client that spoke is taken to have paused:
	// quiet from now, never past the race's deadline.
	quietUntil := func() time.Time {
		if q := time.Now().Add(r.quiet); q.Before(r.deadline) {
			return q
		}
		return r.deadline
	}
	want := r.deadline
	if spoke && r.quiet > 0 {
		if want = quietUntil(); want != r.deadline {
			c.SetReadDeadline(want)
		}
	}
	for {
		n, err := c.fill()
		if n > 0 {
			if !spoke {
				spoke = true
				if want != r.deadline {
					want = r.deadline
					c.SetReadDeadline(want)
				}
			}
			if r.settled(c.peeked()) {
				o.first = speakerClient
				break
			}
			if r.quiet > 0 {
				want = quietUntil()
				c.SetReadDeadline(want)
			}
			continue
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			o.first, o.clientEOF = speakerClient, true
			break
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			collect(true)
			if up != nil && up.conn.tcp != nil {
				up.release()
				r.drop(up.conn)
			}
			return opening{}, err
		}
		now := time.Now()
		if upc != nil && up == nil {
			select {
			case rep := <-upc:
				// The goroutine has reported (and interrupted the read).
				up = &rep
				if up.conn.tcp == nil {
					<-upDone
					return opening{}, up.err
				}
				if up.spoke && !spoke {
					want = r.holdUntil
					if !now.Before(want) {
						o.first = speakerServer
					}
				}
			default:
			}
			if o.first != speakerNone || (up != nil && up.spoke && spoke && r.upstreamEnds) {
				break
			}
		}
		if now.Before(want) {
			c.SetReadDeadline(want)
			continue
		}
		if up != nil && up.spoke && !spoke {
			o.first = speakerServer
		}
		break // the deadline passed
	}
	collect(false)
	if up != nil {
		if up.conn.tcp == nil {
			return opening{}, up.err
		}
		up.conn.tcp.SetReadDeadline(time.Time{})
		o.upstream, o.upErr = up.conn, up.err
		if up.bp != nil {
			o.greeting, o.greetBuf = (*up.bp)[:up.n], up.bp
		}
	}
	return o, nil
}

// readFirst waits for the dialed upstream's first bytes, unless
// interrupted by a read deadline in the past. Through TLS, the read
// itself waits (records that carry no data, session tickets, come
// first), so the buffer is taken at once; a TLS read cut short by a
// deadline loses nothing (crypto/tls keeps a partial record).
func (rep *upReport) readFirst() {
	var err error
	if rep.conn.tls != nil {
		rep.bp = peekPool.Get().(*[]byte)
		rep.n, err = rep.conn.tls.Read(*rep.bp)
	} else {
		rep.bp, rep.n, err = readPeek(rep.conn.tcp)
	}
	if rep.bp != nil && rep.n == 0 {
		peekPool.Put(rep.bp)
		rep.bp = nil
	}
	switch {
	case rep.n > 0 && err == nil && h2Greeting((*rep.bp)[:rep.n]):
		// Not spoken: the client is still to speak first (see
		// h2Greeting). The greeting is kept, and the upstream no longer
		// watched: an HTTP/2 server says nothing more until it has.
	case rep.n > 0 || errors.Is(err, io.EOF):
		rep.spoke = true
	case errors.Is(err, os.ErrDeadlineExceeded):
		// Interrupted: the client settled it first.
	case err != nil:
		rep.spoke, rep.err = true, err
	}
}

// h2Greeting says whether an upstream's first bytes are an HTTP/2
// server's preface, a SETTINGS frame (sniff.ServerPreface). It makes no
// server-first protocol: in HTTP/2 the client speaks first all the same,
// but a server may send its SETTINGS before the client's preface has
// arrived, and grpc-go's does as soon as it accepts. A firstBytesRace
// that hears it goes on waiting for the client's bytes, which decide, and
// holds it for whatever serves the connection: taken for server-first,
// a gRPC connection would lose L7 (and its destination be remembered as
// server-first). Anything else an upstream sends first costs a look at a
// byte or two more than before.
func h2Greeting(b []byte) bool { return sniff.ServerPreface(b) == nil }

// serverGreeting says whether what an upstream sent first, if anything,
// makes it speak first: an HTTP/2 server's preface does not.
func serverGreeting(b []byte) bool { return len(b) > 0 && !h2Greeting(b) }

// release puts back the buffer of the first bytes.
func (rep *upReport) release() {
	if rep.bp != nil {
		peekPool.Put(rep.bp)
		rep.bp = nil
	}
}
