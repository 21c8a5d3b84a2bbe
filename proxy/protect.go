package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
)

// Connection and request protection (issue 15; shared/DESIGN.md §5:
// "connection limits per source, slow-client protection"): caps on the
// connections held at once, in total, per source address and per mesh
// identity, checked at accept (and, for identities, right after the
// mesh handshake); and, for HTTP, bounds on how long a request's head
// may take to arrive, how slowly its body may come, and how large they
// may be. Every refusal is counted in meshgate_protection_events_total
// by reason and logged at warn, at most once a second per direction and
// reason (with how many were left unlogged), so that an attack cannot
// flood the log.

// LimitsConfig is the limits section: one set of limits for each
// direction. Inbound, the clients are whoever can reach the pod (mesh
// peers, and plaintext clients in permissive mode): the defaults bound
// what one of them can hold. Outbound, the client is the app itself: the
// defaults bound only what a runaway app can make the sidecar hold.
type LimitsConfig struct {
	Inbound  DirectionLimits `json:"inbound"`
	Outbound DirectionLimits `json:"outbound"`
}

// DirectionLimits are the limits on one direction's connections and
// HTTP requests. For every field, 0 turns the limit off, but where said.
type DirectionLimits struct {
	// MaxConnections caps the connections of the direction held at once;
	// one more is reset at accept, before anything is read from it.
	// The default is a quarter of the process's open-file limit (each
	// connection takes two descriptors, client and upstream, and both
	// directions share the limit), at most 16384: as HAProxy sizes its
	// maxconn from ulimit -n, so that a flood of connections meets this
	// cap, counted and logged, rather than "too many open files" in
	// accept, which would stop every new connection, and long before it
	// holds gigabytes. Envoy and nginx ship no cap (Envoy's edge guidance
	// is 50 000 through its overload manager).
	MaxConnections int `json:"maxConnections"`
	// MaxConnectionsPerSourceIP caps the connections held at once from
	// one client address (IPv6: one /128) that have not authenticated as
	// a mesh peer, so that one client cannot take all of MaxConnections
	// with connections that never say who they are: plaintext ones count
	// for their life, mesh ones until their TLS handshake completes.
	// A peer's authenticated connections do not count: a client sidecar
	// holds one mesh connection per opaque TCP connection of its app (a
	// pool of 2000 database connections is 2000), and they are bounded
	// by MaxConnectionsPerIdentity, rateLimits and MaxConnections instead.
	// Default: inbound 1000, outbound 0 (the app is the only client);
	// raise it for plaintext callers that concentrate many clients behind
	// one address (an ingress proxy without a sidecar, a NAT).
	MaxConnectionsPerSourceIP int `json:"maxConnectionsPerSourceIP"`
	// MaxConnectionsPerIdentity caps the mesh connections held at once by
	// one verified peer identity (SPIFFE ID); one more is closed right
	// after its handshake. Default 0: an identity is a service account,
	// often shared by many replicas, and it is authenticated, so rate
	// limits (rateLimits) are the tool for it; MaxConnections bounds the
	// total anyway. Inbound only.
	MaxConnectionsPerIdentity int `json:"maxConnectionsPerIdentity"`
	// RequestHeaderTimeout bounds how long an HTTP/1 request's head may
	// take to arrive once its first byte has (slowloris): past it the
	// request is answered 408 and the connection closed. A head that comes
	// in one read, as every ordinary client's does, costs nothing. The
	// default, 10 s inbound, is HAProxy's recommended `timeout
	// http-request`, shorter than nginx's client_header_timeout (60 s)
	// and Apache's mod_reqtimeout (20–40 s); outbound, 60 s (the app is
	// local). The wait for a connection's first bytes and the mesh
	// handshake are timeouts.handshake's; HTTP/2's connection preface is
	// bounded by the HTTP/2 server (10 s).
	RequestHeaderTimeout Duration `json:"requestHeaderTimeout"`
	// MinRequestBodyRate is the slowest an HTTP/1 request body may come
	// (slow POST): see BodyRate. Default inbound 1024 bytes/s over 10 s
	// windows (Apache's mod_reqtimeout ships MinRate=500 for bodies);
	// outbound off. A request body that streams for long with pauses (a
	// chunked upload fed as events happen) needs it off (bytesPerSecond:
	// 0) or lower. HTTP/2 streams (gRPC) are not measured: their flow
	// control, MaxConcurrentStreams and the connection caps bound what a
	// slow one holds.
	MinRequestBodyRate BodyRate `json:"minRequestBodyRate"`
	// MaxRequestHeaderBytes bounds a request's head (request line and
	// header fields; HTTP/2: the decoded header list): a larger one is
	// answered 431. Default 1 MiB (shared/DESIGN.md §5: large headers);
	// Envoy's is 60 KiB, nginx's 4 × 8 KiB. It bounds the memory a
	// connection can make the sidecar hold for a head.
	MaxRequestHeaderBytes int `json:"maxRequestHeaderBytes"`
	// MaxRequestBodyBytes bounds a request body: a Content-Length above it
	// is answered 413 before anything reaches the upstream; a chunked (or
	// HTTP/2) body that grows past it is cut off, the upstream request
	// aborted and the client answered 413 if no response has begun.
	// Default 0, no limit: the sidecar streams bodies without buffering
	// them, and a mesh must not break uploads (nginx's 1 MiB
	// client_max_body_size is a well-known source of 413s).
	MaxRequestBodyBytes int64 `json:"maxRequestBodyBytes"`
	// MaxConcurrentStreams caps the HTTP/2 streams a client may have open
	// at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS); must be
	// 1 or more. Default 250, Go's: a client sidecar multiplexes all of
	// its app's requests to a destination, long-lived gRPC streams
	// included, over one pooled connection, and opens another only when
	// this one is full. Envoy's edge guidance is 100.
	MaxConcurrentStreams uint32 `json:"maxConcurrentStreams"`
	// KeepAliveTimeout closes an HTTP connection that has no request in
	// flight for this long: HTTP/1 between requests, HTTP/2 with no
	// stream open. A request or stream in progress, however quiet (a
	// long-lived gRPC stream, a WebSocket), is never cut by it: that is
	// timeouts.idle's, on bytes. Must be > 0. Default inbound 5 min,
	// longer than the client sidecars' pool keeps an idle connection
	// (90 s) so a pooled connection is not closed under a request, and
	// than most client libraries' (OkHttp 5 min, Go 90 s); outbound 1 h
	// (timeouts.idle's default: the app's own pools decide).
	KeepAliveTimeout Duration `json:"keepAliveTimeout"`
}

// BodyRate is a minimum rate for a request body: measured over the time
// the sidecar waits for the client (not the time it waits to write to a
// slow upstream), one window after another. A body that has not come at
// BytesPerSecond over a whole window is cut off, the upstream request
// aborted and the client answered 408 (if no response has begun) and
// closed. A body done within its first window is never judged.
type BodyRate struct {
	// BytesPerSecond is the rate; 0 turns the check off.
	BytesPerSecond int64 `json:"bytesPerSecond"`
	// Window is the span each measurement covers; must be > 0 with a
	// rate. Longer tolerates pauses better, and lets a slow client hold
	// on longer.
	Window Duration `json:"window"`
}

// maxAutoConnections bounds the default MaxConnections.
const maxAutoConnections = 16384

// defaultLimits returns the limits section's defaults (see the fields'
// docs for why each).
func defaultLimits() LimitsConfig {
	conns := autoMaxConnections()
	return LimitsConfig{
		Inbound: DirectionLimits{
			MaxConnections:            conns,
			MaxConnectionsPerSourceIP: 1000,
			RequestHeaderTimeout:      Duration(10 * time.Second),
			MinRequestBodyRate:        BodyRate{BytesPerSecond: 1024, Window: Duration(10 * time.Second)},
			MaxRequestHeaderBytes:     maxHeaderBytes,
			MaxConcurrentStreams:      250,
			KeepAliveTimeout:          Duration(5 * time.Minute),
		},
		Outbound: DirectionLimits{
			MaxConnections:        conns,
			RequestHeaderTimeout:  Duration(time.Minute),
			MinRequestBodyRate:    BodyRate{Window: Duration(10 * time.Second)},
			MaxRequestHeaderBytes: maxHeaderBytes,
			MaxConcurrentStreams:  250,
			KeepAliveTimeout:      Duration(time.Hour),
		},
	}
}

// autoMaxConnections is the default MaxConnections: a quarter of the
// open-file limit (which the Go runtime raises to the hard limit at
// start), at most maxAutoConnections.
func autoMaxConnections() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return 1024
	}
	return int(min(rl.Cur/4, maxAutoConnections))
}

// validate reports the problems of the limits section.
func (c LimitsConfig) validate() []error {
	var errs []error
	for _, d := range []struct {
		name string
		l    DirectionLimits
	}{{"inbound", c.Inbound}, {"outbound", c.Outbound}} {
		bad := func(field, format string, args ...any) {
			errs = append(errs, fmt.Errorf("limits.%s.%s: "+format, append([]any{d.name, field}, args...)...))
		}
		l := d.l
		if l.MaxConnections < 0 {
			bad("maxConnections", "must be >= 0 (0: no cap), e.g. 10000")
		}
		if l.MaxConnectionsPerSourceIP < 0 {
			bad("maxConnectionsPerSourceIP", "must be >= 0 (0: no cap), e.g. 1000")
		}
		if l.MaxConnectionsPerIdentity < 0 {
			bad("maxConnectionsPerIdentity", "must be >= 0 (0: no cap), e.g. 1000")
		}
		if l.RequestHeaderTimeout < 0 {
			bad("requestHeaderTimeout", "must be >= 0 (0: none), e.g. 10s")
		}
		switch r := l.MinRequestBodyRate; {
		case r.BytesPerSecond < 0:
			bad("minRequestBodyRate.bytesPerSecond", "must be >= 0 (0: no minimum), e.g. 1024")
		case r.BytesPerSecond > 0 && r.Window <= 0:
			bad("minRequestBodyRate.window", "must be > 0 with a rate, e.g. 10s")
		case r.BytesPerSecond > 0 && r.Window < Duration(time.Second):
			bad("minRequestBodyRate.window", "%v is too short to measure a rate over (TCP alone can pause that long); want 1s or more, e.g. 10s", r.Window.D())
		}
		if l.MaxRequestHeaderBytes < 1<<10 || l.MaxRequestHeaderBytes > 16<<20 {
			bad("maxRequestHeaderBytes", "must be from 1024 to 16777216 (16 MiB), e.g. 65536; it is %d", l.MaxRequestHeaderBytes)
		}
		if l.MaxRequestBodyBytes < 0 {
			bad("maxRequestBodyBytes", "must be >= 0 (0: no limit), e.g. 104857600")
		}
		if l.MaxConcurrentStreams < 1 {
			bad("maxConcurrentStreams", "must be 1 or more, e.g. 250")
		}
		if l.KeepAliveTimeout <= 0 {
			bad("keepAliveTimeout", "must be > 0, e.g. 5m")
		}
	}
	if c.Outbound.MaxConnectionsPerIdentity != 0 {
		errs = append(errs, errors.New("limits.outbound.maxConnectionsPerIdentity: outbound connections come from the app, "+
			"which has no mesh identity of its own to count; leave it 0 and cap limits.outbound.maxConnections instead"))
	}
	return errs
}

// The reasons of protection events: the values of the reason label of
// meshgate_protection_events_total, and of the log lines.
const (
	limitConnections      = iota // maxConnections reached: reset at accept
	limitConnectionsPerIP        // maxConnectionsPerSourceIP reached: reset at accept
	limitConnectionsPerID        // maxConnectionsPerIdentity reached: closed after the handshake
	limitHandshakeTimeout        // no ClientHello, or no handshake, within timeouts.handshake (mesh ports)
	limitHeaderTimeout           // requestHeaderTimeout: 408
	limitBodyRate                // minRequestBodyRate: 408
	limitHeaderSize              // maxRequestHeaderBytes: 431
	limitBodySize                // maxRequestBodyBytes: 413
	numLimits
)

var limitLabels = [numLimits]string{
	"max_connections", "max_connections_per_source_ip", "max_connections_per_identity", "handshake_timeout",
	"request_header_timeout", "request_body_rate", "request_header_size", "request_body_size",
}

// protectLogEvery is how often each (direction, reason) may log a line.
const protectLogEvery = time.Second

// protection is the proxy's connection caps and protection events.
type protection struct {
	log *zap.Logger
	dir [2]dirProtection
}

// dirProtection is one direction's caps, counts and event counters.
type dirProtection struct {
	lim DirectionLimits
	// total counts the connections held, when MaxConnections caps them.
	total atomic.Int64
	// perIP and perID count the connections held per source address and
	// per identity, when capped; an entry goes when its count falls to 0,
	// so each holds at most MaxConnections entries. byConn remembers the
	// identity a connection was counted under; authed, the connections
	// perIP no longer counts (their peer authenticated).
	mu     sync.Mutex
	perIP  map[netip.Addr]int32
	perID  map[spiffeid.ID]int32
	byConn map[*net.TCPConn]spiffeid.ID
	authed map[*net.TCPConn]struct{}
	events [numLimits]prometheus.Counter
	logs   [numLimits]eventLog
}

// eventLog rate-limits the log lines of one kind of event.
type eventLog struct {
	next       atomic.Int64 // unix nanoseconds before which nothing is logged
	suppressed atomic.Int64 // events not logged since the last line
}

func newProtection(lc LimitsConfig, events *prometheus.CounterVec, log *zap.Logger) *protection {
	pr := &protection{log: log.Named("limits")}
	for _, d := range []Direction{Outbound, Inbound} {
		dp := &pr.dir[d]
		dp.lim = lc.Outbound
		if d == Inbound {
			dp.lim = lc.Inbound
		}
		if dp.lim.MaxConnectionsPerSourceIP > 0 {
			dp.perIP = make(map[netip.Addr]int32)
			dp.authed = make(map[*net.TCPConn]struct{})
		}
		if dp.lim.MaxConnectionsPerIdentity > 0 {
			dp.perID = make(map[spiffeid.ID]int32)
			dp.byConn = make(map[*net.TCPConn]spiffeid.ID)
		}
		for i := range dp.events {
			dp.events[i] = events.WithLabelValues(d.String(), limitLabels[i])
		}
	}
	return pr
}

// admit counts a connection just accepted from src against the caps, or
// refuses it (the caller resets it at once: no goroutine, no read)
// and reports the event. Caps that are off cost nothing.
func (pr *protection) admit(dir Direction, src netip.AddrPort) bool {
	dp := &pr.dir[dir]
	if max := dp.lim.MaxConnections; max > 0 {
		if dp.total.Add(1) > int64(max) {
			dp.total.Add(-1)
			pr.event(dir, limitConnections, src, "limits.%s.maxConnections (%d) reached", dir, max)
			return false
		}
	}
	if dp.perIP != nil {
		a := src.Addr().Unmap()
		dp.mu.Lock()
		n := dp.perIP[a]
		if int(n) >= dp.lim.MaxConnectionsPerSourceIP {
			dp.mu.Unlock()
			if dp.lim.MaxConnections > 0 {
				dp.total.Add(-1)
			}
			pr.event(dir, limitConnectionsPerIP, src, "limits.%s.maxConnectionsPerSourceIP (%d) reached by %s", dir, dp.lim.MaxConnectionsPerSourceIP, a)
			return false
		}
		dp.perIP[a] = n + 1
		dp.mu.Unlock()
	}
	return true
}

// leave uncounts a connection admit counted, once it is closed.
func (pr *protection) leave(dir Direction, c *net.TCPConn, src netip.AddrPort) {
	dp := &pr.dir[dir]
	if dp.lim.MaxConnections > 0 {
		dp.total.Add(-1)
	}
	if dp.perIP == nil && dp.perID == nil {
		return
	}
	dp.mu.Lock()
	if dp.perIP != nil {
		if _, ok := dp.authed[c]; ok {
			delete(dp.authed, c)
		} else {
			dp.uncountIP(src)
		}
	}
	if dp.perID != nil {
		if id, ok := dp.byConn[c]; ok {
			delete(dp.byConn, c)
			if n := dp.perID[id] - 1; n > 0 {
				dp.perID[id] = n
			} else {
				delete(dp.perID, id)
			}
		}
	}
	dp.mu.Unlock()
}

// uncountIP takes a connection from src off perIP; dp.mu is held.
func (dp *dirProtection) uncountIP(src netip.AddrPort) {
	a := src.Addr().Unmap()
	if n := dp.perIP[a] - 1; n > 0 {
		dp.perIP[a] = n
	} else {
		delete(dp.perIP, a)
	}
}

// admitIdentity is called once the inbound mesh connection c has
// authenticated its peer as id: c no longer counts against its source
// address, and counts against id, or is refused (reporting the event)
// when id holds MaxConnectionsPerIdentity already. leave uncounts it.
func (pr *protection) admitIdentity(c *net.TCPConn, src netip.AddrPort, id spiffeid.ID) bool {
	dp := &pr.dir[Inbound]
	if dp.perIP != nil && !id.IsZero() {
		dp.mu.Lock()
		dp.uncountIP(src)
		dp.authed[c] = struct{}{}
		dp.mu.Unlock()
	}
	if dp.perID == nil || id.IsZero() {
		return true
	}
	dp.mu.Lock()
	n := dp.perID[id]
	if int(n) >= dp.lim.MaxConnectionsPerIdentity {
		dp.mu.Unlock()
		pr.event(Inbound, limitConnectionsPerID, src, "limits.inbound.maxConnectionsPerIdentity (%d) reached by %s", dp.lim.MaxConnectionsPerIdentity, id)
		return false
	}
	dp.perID[id] = n + 1
	dp.byConn[c] = id
	dp.mu.Unlock()
	return true
}

// event counts a protection event and logs it at warn, unless its kind
// logged less than protectLogEvery ago: then it is only counted as
// suppressed, and the next line says how many were.
func (pr *protection) event(dir Direction, kind int, src netip.AddrPort, format string, args ...any) {
	dp := &pr.dir[dir]
	dp.events[kind].Inc()
	l := &dp.logs[kind]
	now := time.Now().UnixNano()
	next := l.next.Load()
	if now < next || !l.next.CompareAndSwap(next, now+int64(protectLogEvery)) {
		l.suppressed.Add(1)
		return
	}
	fields := []zap.Field{
		zap.Stringer("direction", dir),
		zap.String("reason", limitLabels[kind]),
		zap.Stringer("src", src),
		zap.String("limit", fmt.Sprintf(format, args...)),
	}
	if n := l.suppressed.Swap(0); n > 0 {
		fields = append(fields, zap.Int64("suppressed", n), zap.Duration("suppressed_within", protectLogEvery))
	}
	pr.log.Warn(limitMessages[kind], fields...)
}

var limitMessages = [numLimits]string{
	"connection refused by a limit", "connection refused by a limit", "connection refused by a limit", "connection timed out before its handshake",
	"request refused by a limit", "request refused by a limit", "request refused by a limit", "request refused by a limit",
}

// limitError is a request refused by a limit: the status to answer (when
// no response has begun), the event and what to say.
type limitError struct {
	status int
	kind   int
	msg    string
}

func (e *limitError) Error() string { return e.msg }

// Timeout says a body-rate error is a timeout, as the read deadline it
// replaces would have.
func (e *limitError) Timeout() bool { return e.kind == limitBodyRate || e.kind == limitHeaderTimeout }

// bodyRateReader reads a request body from src while measuring the
// client's rate (see BodyRate): it accumulates the time spent in Read
// and the bytes it returned, and once a window's worth of waiting is
// over, fails with a limitError if the bytes fall short. conn's read
// deadline ends a wait at the window's end, so a client that sends
// nothing is judged on time; set once per window, not per read.
type bodyRateReader struct {
	src    io.Reader
	conn   *net.TCPConn
	dir    Direction
	rate   BodyRate
	waited time.Duration // in Read, this window
	got    int64         // bytes, this window
	armed  bool
	// stop is set by whoever interrupts the reader with a deadline in
	// the past (h1Conn.endBody), before it does: the interrupt is not
	// taken for the end of a window.
	stop atomic.Bool
}

func (r *bodyRateReader) Read(b []byte) (int, error) {
	window := r.rate.Window.D()
	for {
		start := time.Now()
		if !r.armed {
			r.conn.SetReadDeadline(start.Add(window - r.waited))
			r.armed = true
			if r.stop.Load() {
				return 0, os.ErrDeadlineExceeded
			}
		}
		n, err := r.src.Read(b)
		r.waited += time.Since(start)
		r.got += int64(n)
		if r.waited >= window {
			if float64(r.got) < float64(r.rate.BytesPerSecond)*r.waited.Seconds() {
				return n, &limitError{status: 408, kind: limitBodyRate, msg: fmt.Sprintf(
					"request body came at %.0f bytes/s over %v, below limits.%s.minRequestBodyRate (%d bytes/s)",
					float64(r.got)/r.waited.Seconds(), window, r.dir, r.rate.BytesPerSecond)}
			}
			r.waited, r.got, r.armed = 0, 0, false
		}
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && !r.stop.Load() {
			// The deadline passed while the copy was writing to the
			// upstream, not waiting for the client: the window is not
			// over yet.
			r.armed = false
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// bodyTooLarge is the error of a request body over MaxRequestBodyBytes.
func bodyTooLarge(dir Direction, max int64) *limitError {
	return &limitError{status: 413, kind: limitBodySize, msg: fmt.Sprintf(
		"request body larger than limits.%s.maxRequestBodyBytes (%d bytes)", dir, max)}
}

// limitBody applies MaxRequestBodyBytes to an HTTP/2 request: one whose
// Content-Length is over it is answered 413 at once (it reports true);
// one of unknown length is cut off once it grows past it, the upstream
// request aborted and the client answered 413 by proxyError if no
// response has begun.
func (pr *protection) limitBody(dir Direction, w *recorder, r *http.Request) bool {
	max := pr.dir[dir].lim.MaxRequestBodyBytes
	if max <= 0 || r.Body == nil || r.Body == http.NoBody {
		return false
	}
	if r.ContentLength > max {
		e := bodyTooLarge(dir, max)
		pr.event(dir, e.kind, addrPortOf(r.RemoteAddr), "%s", e.msg)
		w.reason = "limits: " + e.msg
		w.Header().Set(hdrError, w.reason)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(e.status)
		fmt.Fprintf(w, "meshgate: %s\n", w.reason)
		return true
	}
	r.Body = &maxBodyReader{ReadCloser: r.Body, left: max, pr: pr, dir: dir, src: r.RemoteAddr}
	return false
}

// maxBodyReader is an HTTP/2 request body cut off past its limit.
type maxBodyReader struct {
	io.ReadCloser
	left int64
	pr   *protection
	dir  Direction
	src  string
}

func (b *maxBodyReader) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, &http.MaxBytesError{}
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.ReadCloser.Read(p)
	if b.left -= int64(n); b.left < 0 {
		e := bodyTooLarge(b.dir, b.pr.dir[b.dir].lim.MaxRequestBodyBytes)
		b.pr.event(b.dir, e.kind, addrPortOf(b.src), "%s", e.msg)
		return n + int(b.left), &http.MaxBytesError{Limit: b.pr.dir[b.dir].lim.MaxRequestBodyBytes}
	}
	return n, err
}

// addrPortOf parses a net/http RemoteAddr; invalid if it does not parse.
func addrPortOf(s string) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(s)
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// handshakeTimedOut reports a mesh-port client that sent no ClientHello
// (peeked bytes of one; -1: a ClientHello, then no finished handshake)
// within timeouts.handshake. It returns true: the event stands for the
// connection's own warn line.
func (pr *protection) handshakeTimedOut(src netip.AddrPort, peeked int, timeout time.Duration) bool {
	what := "no handshake"
	switch {
	case peeked == 0:
		what = "no byte"
	case peeked > 0:
		what = fmt.Sprintf("%d bytes of a ClientHello", peeked)
	}
	pr.event(Inbound, limitHandshakeTimeout, src, "%s within timeouts.handshake (%v)", what, timeout)
	return true
}
