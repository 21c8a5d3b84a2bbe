package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// The HTTP/1.x codec of the L7 engine (h1serve.go): it reads a message's
// head into a buffer of the connection's, parses what a proxy must know
// of it (the start line, the framing, Connection, Upgrade), lets the
// request stages read and edit its header fields in place, writes it out
// again, and copies its body by its framing (RFC 9112 §6). Nothing else
// of a message is parsed: field values pass as they came.
//
// It is strict where a lenient reading would let a request mean one
// thing to this proxy and another to the app behind it (request
// smuggling): both Content-Length and Transfer-Encoding, two different
// Content-Lengths, a transfer coding other than chunked, whitespace
// before a field's colon, obsolete line folding, control bytes in a field
// and a bad chunk size are refused with 400, never passed on.

// h1BufSize is the read buffer of a connection: a request or response
// head fits in it (they grow it up to maxHeaderBytes), and small bodies
// come in the same read.
const h1BufSize = 4 << 10

// h1Bufs lends connections their read buffers (see h1Reader.release).
var h1Bufs = sync.Pool{New: func() any { b := make([]byte, h1BufSize); return &b }}

// errHeadTooLarge: a head longer than maxHeaderBytes (431 for a request).
var errHeadTooLarge = errors.New("message head larger than 1 MiB")

// h1Error is a malformed message: the status to answer a request with
// (400, 431, 501) and why.
type h1Error struct {
	status int
	msg    string
}

func (e *h1Error) Error() string { return e.msg }

func badMessage(msg string) error { return &h1Error{status: 400, msg: msg} }

// h1Reader reads a connection through a buffer that it borrows from
// h1Bufs while it holds bytes, so an idle connection holds none.
type h1Reader struct {
	src  io.Reader
	bp   *[]byte // the borrowed buffer; nil when none
	buf  []byte  // *bp, or a larger one for a long head
	r, w int     // buf[r:w] is read and not yet consumed
	// lim, when set, are the limits on the requests read (a client
	// connection's; protect.go): the head's size and time (its read
	// deadline is set on conn once a head has begun and is not all in),
	// a chunked body's size.
	lim  *DirectionLimits
	dir  Direction
	conn *net.TCPConn
}

// buffered returns the bytes read and not yet consumed.
func (b *h1Reader) buffered() []byte { return b.buf[b.r:b.w] }

// consume marks n buffered bytes consumed.
func (b *h1Reader) consume(n int) {
	b.r += n
	if b.r == b.w {
		b.r, b.w = 0, 0
	}
}

// fill reads more bytes into the buffer, making room first: it compacts,
// or grows the buffer (up to limit) when it is full of one unconsumed
// head.
func (b *h1Reader) fill(limit int) error {
	if b.bp == nil && b.buf == nil {
		b.bp = h1Bufs.Get().(*[]byte)
		b.buf = *b.bp
	}
	if b.r > 0 && b.w == len(b.buf) {
		copy(b.buf, b.buf[b.r:b.w])
		b.r, b.w = 0, b.w-b.r
	}
	if b.w == len(b.buf) {
		if len(b.buf) >= limit {
			return errHeadTooLarge
		}
		grown := make([]byte, min(2*len(b.buf), limit))
		copy(grown, b.buf[:b.w])
		b.buf = grown
	}
	n, err := b.src.Read(b.buf[b.w:])
	b.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// release gives the buffer back once nothing in it is unconsumed; a grown
// one is dropped. It reports whether the reader is empty.
func (b *h1Reader) release() bool {
	if b.r != b.w {
		return false
	}
	if b.bp != nil {
		h1Bufs.Put(b.bp)
	}
	b.bp, b.buf, b.r, b.w = nil, nil, 0, 0
	return true
}

// readHead reads a message head, up to and including its empty line, into
// m.raw and parses it as a request (or a response, for response). The
// buffer keeps what follows it. io.EOF means the connection ended cleanly
// before a first byte.
//
// With lim (a client's requests), a head larger than its
// MaxRequestHeaderBytes, or not all in within its RequestHeaderTimeout of
// being found begun, is a *limitError. A head that is all there in one
// read sets no deadline.
func (b *h1Reader) readHead(m *h1Msg, response bool) error {
	scanned, limit, timed := 0, maxHeaderBytes, false
	if b.lim != nil && !response {
		limit = b.lim.MaxRequestHeaderBytes
	}
	for {
		buf := b.buffered()
		if end := headEnd(buf, scanned); end > 0 {
			if end > limit {
				return b.headTooLarge()
			}
			m.raw = append(m.raw[:0], buf[:end]...)
			b.consume(end)
			if response {
				return m.parseResponse()
			}
			return m.parseRequest()
		}
		if !timed && len(buf) > 0 && b.lim != nil && !response && b.lim.RequestHeaderTimeout > 0 {
			// Begun and not all in: a slow head (or a large one).
			b.conn.SetReadDeadline(time.Now().Add(b.lim.RequestHeaderTimeout.D()))
			timed = true
		}
		scanned = max(0, len(buf)-3)
		if err := b.fill(limit); err != nil {
			if err == io.EOF && len(b.buffered()) > 0 {
				return io.ErrUnexpectedEOF
			}
			if err == errHeadTooLarge {
				if b.lim != nil && !response {
					return b.headTooLarge()
				}
				return &h1Error{status: 431, msg: "request head larger than 1 MiB"}
			}
			if timed && errors.Is(err, os.ErrDeadlineExceeded) {
				return &limitError{status: 408, kind: limitHeaderTimeout, msg: fmt.Sprintf(
					"request head not all in within limits.%s.requestHeaderTimeout (%v)", b.dir, b.lim.RequestHeaderTimeout.D())}
			}
			return err
		}
	}
}

func (b *h1Reader) headTooLarge() error {
	return &limitError{status: 431, kind: limitHeaderSize, msg: fmt.Sprintf(
		"request head larger than limits.%s.maxRequestHeaderBytes (%d bytes)", b.dir, b.lim.MaxRequestHeaderBytes)}
}

// headEnd returns the length of the head in buf (through the empty line
// that ends it: CRLF CRLF, or bare LFs, which RFC 9112 §2.2 lets a
// recipient accept), or 0 if it is not all there. Leading empty lines
// before a request (§2.2) are part of the head. from is where to resume
// scanning.
func headEnd(buf []byte, from int) int {
	for i := from; i < len(buf); {
		j := bytes.IndexByte(buf[i:], '\n')
		if j < 0 {
			return 0
		}
		i += j + 1
		if i < len(buf) && buf[i] == '\n' {
			return i + 1
		}
		if i+1 < len(buf) && buf[i] == '\r' && buf[i+1] == '\n' {
			return i + 2
		}
	}
	return 0
}

// h1Field is a header field: name and value are slices of the message's
// raw head, or of storage of its own for a field a stage set. A deleted
// field has a nil name.
type h1Field struct {
	name, value []byte
}

// h1Msg is a parsed message head, request or response.
type h1Msg struct {
	raw []byte // the head as read

	// request line
	method, target []byte
	// status line
	status int
	reason []byte

	minor  int // HTTP/1.minor: 0 or 1
	fields []h1Field
	// added holds the bytes of fields set by stages, so that the raw head
	// is never written to; pending, the fields still to point at them.
	added   []byte
	pending []pendingField

	// framing (RFC 9112 §6)
	length  int64 // Content-Length; -1 if none
	chunked bool  // Transfer-Encoding: chunked
	// otherCoding: a response's Transfer-Encoding that is not chunked,
	// which ends with the connection.
	otherCoding bool
	// connection
	close   bool // this side wants the connection closed after the message
	upgrade bool // Connection: upgrade with an Upgrade field
	// host counts Host fields (a request must have one, HTTP/1.1).
	host int
	// meshTimeout: the head has an X-Meshgate-Timeout field, which the
	// engine removes (outbound) or reads (inbound); noted as the fields
	// are parsed, so that the many requests without one are not scanned
	// for it again.
	meshTimeout bool
}

// h1KeepHead is the largest head storage kept for the next message: a
// head far larger than most is not.
const h1KeepHead = 64 << 10

// keep returns an empty message that keeps m's storage, unless it grew
// far larger than most heads need.
func (m *h1Msg) keep() h1Msg {
	k := h1Msg{length: -1}
	if cap(m.raw) <= h1KeepHead {
		k.raw = m.raw[:0]
	}
	if cap(m.fields) <= 256 {
		// Cleared: the fields point into the heads they were read from.
		k.fields = m.fields[:0]
		clear(m.fields[:cap(m.fields)])
	}
	if cap(m.added) <= h1KeepHead {
		k.added = m.added[:0]
	}
	if cap(m.pending) <= 64 {
		k.pending = m.pending[:0]
	}
	return k
}

func (m *h1Msg) reset() {
	m.method, m.target, m.reason = nil, nil, nil
	m.status, m.minor = 0, 0
	m.fields = m.fields[:0]
	m.added, m.pending = m.added[:0], m.pending[:0]
	m.length, m.chunked, m.otherCoding = -1, false, false
	m.close, m.upgrade, m.host, m.meshTimeout = false, false, 0, false
}

// parseRequest parses m.raw as a request head.
func (m *h1Msg) parseRequest() error {
	m.reset()
	raw := m.raw
	// Empty lines before the request line are ignored (RFC 9112 §2.2).
	for len(raw) > 0 && (raw[0] == '\r' || raw[0] == '\n') {
		raw = raw[1:]
	}
	line, rest := cutLine(raw)
	sp1 := bytes.IndexByte(line, ' ')
	sp2 := bytes.LastIndexByte(line, ' ')
	if sp1 <= 0 || sp2 <= sp1+1 {
		return badMessage("malformed request line")
	}
	m.method, m.target = line[:sp1], line[sp1+1:sp2]
	if !isToken(m.method) || bytes.IndexByte(m.target, ' ') >= 0 || !validTarget(m.target) {
		return badMessage("malformed request line")
	}
	minor, ok := parseVersion(line[sp2+1:])
	if !ok {
		return &h1Error{status: 505, msg: "HTTP version not supported"}
	}
	m.minor = minor
	if err := m.parseFields(rest); err != nil {
		return err
	}
	if m.minor == 1 && m.host == 0 {
		return badMessage("missing Host header")
	}
	if m.host > 1 {
		return badMessage("more than one Host header")
	}
	if m.chunked && m.length >= 0 {
		return badMessage("both Transfer-Encoding and Content-Length")
	}
	if m.otherCoding {
		return &h1Error{status: 501, msg: "unsupported transfer coding (only chunked)"}
	}
	if m.chunked && m.minor == 0 {
		return badMessage("Transfer-Encoding in an HTTP/1.0 request")
	}
	return nil
}

// parseResponse parses m.raw as a response head.
func (m *h1Msg) parseResponse() error {
	m.reset()
	line, rest := cutLine(m.raw)
	if len(line) < 12 || line[8] != ' ' {
		return errors.New("malformed status line")
	}
	minor, ok := parseVersion(line[:8])
	if !ok {
		return errors.New("malformed status line: unsupported version")
	}
	m.minor = minor
	code := line[9:12]
	if code[0] < '1' || code[0] > '5' || !isDigit(code[1]) || !isDigit(code[2]) || (len(line) > 12 && line[12] != ' ') {
		return errors.New("malformed status code")
	}
	m.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if len(line) > 13 {
		m.reason = line[13:]
	}
	if err := m.parseFields(rest); err != nil {
		return err
	}
	if m.chunked && m.length >= 0 {
		m.length = -1 // RFC 9112 §6.3: Transfer-Encoding overrides
	}
	return nil
}

// parseFields parses the header fields of a head (after its first line)
// and notes the framing and connection ones.
func (m *h1Msg) parseFields(raw []byte) error {
	var connTokens []byte
	for len(raw) > 0 {
		var line []byte
		line, raw = cutLine(raw)
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return badMessage("obsolete line folding in a header")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return badMessage("malformed header field name")
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		if !validFieldValue(value) {
			return badMessage("invalid byte in header field " + strconv.Quote(string(name)))
		}
		m.fields = append(m.fields, h1Field{name: name, value: value})
		switch {
		case equalFold(name, "content-length"):
			n, ok := parseLength(value)
			if !ok || (m.length >= 0 && n != m.length) {
				return badMessage("invalid Content-Length")
			}
			m.length = n
		case equalFold(name, "transfer-encoding"):
			if m.chunked || m.otherCoding {
				m.otherCoding = true // chunked applied twice, or after another coding
				continue
			}
			if equalFold(value, "chunked") {
				m.chunked = true
			} else {
				m.otherCoding = true
			}
		case equalFold(name, "connection"):
			connTokens = value
			m.close = m.close || hasToken(value, "close")
			if hasToken(value, "upgrade") {
				m.upgrade = true
			}
		case equalFold(name, "host"):
			m.host++
		case equalFold(name, hdrTimeoutLower):
			m.meshTimeout = true
		}
	}
	if m.minor == 0 && !hasToken(connTokens, "keep-alive") {
		m.close = true
	}
	if m.upgrade && m.get("upgrade") == nil {
		m.upgrade = false
	}
	return nil
}

// get returns the value of the first field named name (any case), nil
// if none.
func (m *h1Msg) get(name string) []byte {
	for _, f := range m.fields {
		if f.name != nil && equalFold(f.name, name) {
			return f.value
		}
	}
	return nil
}

// has reports whether a field named name (any case) is present.
func (m *h1Msg) has(name string) bool {
	for _, f := range m.fields {
		if f.name != nil && equalFold(f.name, name) {
			return true
		}
	}
	return false
}

// del removes every field named name (any case).
func (m *h1Msg) del(name string) {
	for i := range m.fields {
		if m.fields[i].name != nil && equalFold(m.fields[i].name, name) {
			m.fields[i].name = nil
		}
	}
}

// delMatch removes every field whose name matches.
func (m *h1Msg) delMatch(match func(name []byte) bool) {
	for i := range m.fields {
		if m.fields[i].name != nil && match(m.fields[i].name) {
			m.fields[i].name = nil
		}
	}
}

// add appends a field; its bytes are copied.
func (m *h1Msg) add(name, value string) {
	start := len(m.added)
	m.added = append(m.added, name...)
	m.added = append(m.added, value...)
	// The slices are made once the storage stops moving: see fields'
	// fixAdded.
	m.fields = append(m.fields, h1Field{name: nil, value: nil})
	m.pending = append(m.pending, pendingField{at: len(m.fields) - 1, start: start, nameLen: len(name), end: len(m.added)})
}

// set replaces every field named name with one of value.
func (m *h1Msg) set(name, value string) {
	m.del(name)
	m.add(name, value)
}

// dropHopByHop removes the fields that describe one connection only
// (RFC 9110 §7.6.1): Connection, those it names, and the ones every proxy
// removes; a request's Upgrade and Connection: upgrade are kept when
// keepUpgrade, since the upstream is to switch.
func (m *h1Msg) dropHopByHop(keepUpgrade bool) {
	var named []byte
	for _, f := range m.fields {
		if f.name != nil && equalFold(f.name, "connection") {
			if named == nil {
				named = f.value
			} else {
				named = append(append(append([]byte(nil), named...), ','), f.value...)
			}
		}
	}
	m.delMatch(func(name []byte) bool {
		switch {
		case equalFold(name, "connection"), equalFold(name, "keep-alive"), equalFold(name, "proxy-connection"):
			return true
		case equalFold(name, "upgrade"):
			return !keepUpgrade
		case len(named) > 0 && hasTokenBytes(named, name):
			return !(keepUpgrade && equalFold(name, "upgrade"))
		}
		return false
	})
	if keepUpgrade {
		m.add("Connection", "upgrade")
	}
}

// pendingField is a field added by add whose slices into m.added are set
// when the head is written (add may move m.added).
type pendingField struct {
	at, start, nameLen, end int
}

// appendRequest appends the request head, as edited, to dst: the request
// line with version 1.minor, then the fields.
func (m *h1Msg) appendRequest(dst []byte) []byte {
	dst = append(dst, m.method...)
	dst = append(dst, ' ')
	dst = append(dst, m.target...)
	dst = append(dst, " HTTP/1."...)
	dst = append(dst, byte('0'+m.minor))
	dst = append(dst, "\r\n"...)
	return m.appendFields(dst)
}

// appendResponse appends the response head, as edited, to dst.
func (m *h1Msg) appendResponse(dst []byte) []byte {
	dst = append(dst, "HTTP/1."...)
	dst = append(dst, byte('0'+m.minor))
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(m.status), 10)
	dst = append(dst, ' ')
	dst = append(dst, m.reason...)
	dst = append(dst, "\r\n"...)
	return m.appendFields(dst)
}

func (m *h1Msg) appendFields(dst []byte) []byte {
	m.fixAdded()
	for _, f := range m.fields {
		if f.name == nil {
			continue
		}
		dst = append(dst, f.name...)
		dst = append(dst, ": "...)
		dst = append(dst, f.value...)
		dst = append(dst, "\r\n"...)
	}
	return append(dst, "\r\n"...)
}

// fixAdded points the fields added since the last call at their bytes.
func (m *h1Msg) fixAdded() {
	for _, pf := range m.pending {
		m.fields[pf.at] = h1Field{name: m.added[pf.start : pf.start+pf.nameLen], value: m.added[pf.start+pf.nameLen : pf.end]}
	}
	m.pending = m.pending[:0]
}

// bodyless reports whether a response to a request of method has no body
// whatever its fields say (RFC 9112 §6.3): 1xx, 204, 304, and any answer
// to HEAD; a 2xx to CONNECT switches to a tunnel.
func (m *h1Msg) bodyless(head bool) bool {
	return head || m.status < 200 || m.status == 204 || m.status == 304
}

// cutLine splits off raw's first line (without its CRLF or LF).
func cutLine(raw []byte) (line, rest []byte) {
	i := bytes.IndexByte(raw, '\n')
	if i < 0 {
		return raw, nil
	}
	line, rest = raw[:i], raw[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// parseVersion parses "HTTP/1.0" or "HTTP/1.1".
func parseVersion(b []byte) (minor int, ok bool) {
	if len(b) != 8 || string(b[:7]) != "HTTP/1." || (b[7] != '0' && b[7] != '1') {
		return 0, false
	}
	return int(b[7] - '0'), true
}

// parseLength parses a Content-Length value: digits only.
func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// tokenTable marks the bytes of an HTTP token (RFC 9110 §5.6.2).
var tokenTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenTable[c] {
			return false
		}
	}
	return true
}

// validTarget refuses control bytes in a request target.
func validTarget(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// validFieldValue refuses NUL, CR, LF and other control bytes but tab.
func validFieldValue(b []byte) bool {
	for _, c := range b {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold reports whether b equals s but for ASCII case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c, d := b[i], s[i]
		if c == d {
			continue
		}
		if l := c | 0x20; l != d|0x20 || l < 'a' || l > 'z' {
			return false
		}
	}
	return true
}

// hasToken reports whether the comma-separated list v holds token,
// ignoring case and whitespace.
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var t []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			t, v = v[:i], v[i+1:]
		} else {
			t, v = v, nil
		}
		if equalFold(trimOWS(t), token) {
			return true
		}
	}
	return false
}

// hasTokenBytes is hasToken for a token read off the wire.
func hasTokenBytes(v, name []byte) bool {
	return hasToken(v, string(name))
}

// h1Writer gathers bytes for a connection and writes them in one call
// when flushed, so a head and a small body leave in one TLS record and
// one system call.
type h1Writer struct {
	dst net.Conn
	bp  *[]byte // buf's pooled holder; nil when it holds none
	buf []byte
	n   int64 // bytes written to dst
}

// h1WriteBufs lends writers their buffers for the time of an exchange.
var h1WriteBufs = sync.Pool{New: func() any { b := make([]byte, 0, h1BufSize); return &b }}

// take readies w's buffer for a message: one from h1WriteBufs, empty.
func (w *h1Writer) take() []byte {
	if w.buf == nil {
		w.bp = h1WriteBufs.Get().(*[]byte)
		w.buf = (*w.bp)[:0]
	}
	return w.buf[:0]
}

// release gives the buffer back once it is written out, so that a
// connection waiting for its next message holds none; a buffer grown past
// h1FlushAt is dropped.
func (w *h1Writer) release() {
	if w.bp != nil && len(w.buf) == 0 {
		if cap(w.buf) <= 2*h1FlushAt {
			*w.bp = w.buf[:0]
			h1WriteBufs.Put(w.bp)
		}
		w.bp, w.buf = nil, nil
	}
}

func (w *h1Writer) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	n, err := w.dst.Write(w.buf)
	w.n += int64(n)
	w.buf = w.buf[:0]
	return err
}

// h1FlushAt is how much h1Writer gathers before it writes.
const h1FlushAt = 16 << 10

// write gathers b, writing through when there is much.
func (w *h1Writer) write(b []byte) error {
	if w.buf == nil {
		w.buf = w.take()
	}
	if len(w.buf)+len(b) <= h1FlushAt {
		w.buf = append(w.buf, b...)
		return nil
	}
	if err := w.flush(); err != nil {
		return err
	}
	if len(b) >= h1FlushAt {
		n, err := w.dst.Write(b)
		w.n += int64(n)
		return err
	}
	w.buf = append(w.buf, b...)
	return nil
}

// copyBody copies a message's body from r to w by the message's framing:
// length bytes, chunked (chunk lines and trailers pass as they are), or
// (untilEOF) everything until r ends. Bytes gathered in w are written
// before any read that may wait, so a stream is passed on as it comes.
func copyBody(w *h1Writer, r *h1Reader, length int64, chunked, untilEOF bool) error {
	switch {
	case chunked:
		return copyChunked(w, r, false)
	case untilEOF:
		if b := r.buffered(); len(b) > 0 {
			if err := w.write(b); err != nil {
				return err
			}
			r.consume(len(b))
		}
		if err := w.flush(); err != nil {
			return err
		}
		return copyDirect(w, r, -1)
	}
	for length > 0 {
		b := r.buffered()
		if len(b) == 0 {
			if err := w.flush(); err != nil {
				return err
			}
			if length >= h1BufSize {
				return copyDirect(w, r, length)
			}
			if err := r.fill(h1BufSize); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
			continue
		}
		if int64(len(b)) > length {
			b = b[:length]
		}
		if err := w.write(b); err != nil {
			return err
		}
		r.consume(len(b))
		length -= int64(len(b))
	}
	return nil
}

// copyDirect copies length bytes (-1: until EOF) from r's connection,
// whose buffer is empty, straight to w's, through a large pooled buffer:
// a bulk body moves in reads and writes of up to bufSize.
func copyDirect(w *h1Writer, r *h1Reader, length int64) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for length != 0 {
		b := buf
		if length > 0 && int64(len(b)) > length {
			b = b[:length]
		}
		n, err := r.src.Read(b)
		if n > 0 {
			m, werr := w.dst.Write(b[:n])
			w.n += int64(m)
			if werr != nil {
				return werr
			}
			if length > 0 {
				length -= int64(n)
			}
		}
		if err != nil {
			if err == io.EOF && length <= 0 {
				return nil
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// more flushes w, then reads more into r.
func (b *h1Reader) more(w *h1Writer, limit int) error {
	if err := w.flush(); err != nil {
		return err
	}
	return b.fill(limit)
}

// maxChunkLine bounds a chunk-size line (with its extensions).
const maxChunkLine = 4 << 10

// copyChunked copies a chunked body (RFC 9112 §7.1) through its last
// chunk and trailer section, checking its framing as it goes; dataOnly
// copies the chunks' data alone (for a reader of HTTP/1.0).
func copyChunked(w *h1Writer, r *h1Reader, dataOnly bool) error {
	var total int64
	for {
		line, err := readLine(w, r, maxChunkLine)
		if err != nil {
			return err
		}
		size, ok := parseChunkSize(line)
		if !ok {
			return badMessage("malformed chunk size")
		}
		if !dataOnly {
			if err := w.write(line); err != nil {
				return err
			}
		}
		r.consume(len(line))
		if total += size; r.lim != nil && r.lim.MaxRequestBodyBytes > 0 && total > r.lim.MaxRequestBodyBytes {
			return bodyTooLarge(r.dir, r.lim.MaxRequestBodyBytes)
		}
		if size == 0 {
			// The trailer section, through its empty line.
			for total := 0; ; {
				line, err := readLine(w, r, maxHeaderBytes)
				if err != nil {
					return err
				}
				total += len(line)
				if total > maxHeaderBytes {
					return &h1Error{status: 431, msg: "trailers larger than 1 MiB"}
				}
				if !dataOnly {
					if err := w.write(line); err != nil {
						return err
					}
				}
				r.consume(len(line))
				if len(line) <= 2 {
					return nil
				}
			}
		}
		if err := copyBody(w, r, size, false, false); err != nil {
			return err
		}
		// The CRLF after the data.
		line, err = readLine(w, r, 2)
		if err != nil {
			return err
		}
		if !(len(line) == 2 && line[0] == '\r') && !(len(line) == 1) {
			return badMessage("malformed chunk")
		}
		if !dataOnly {
			if err := w.write(line); err != nil {
				return err
			}
		}
		r.consume(len(line))
	}
}

// readLine returns the next line in r's buffer with its LF (not
// consumed), reading more as needed, at most limit bytes.
func readLine(w *h1Writer, r *h1Reader, limit int) ([]byte, error) {
	for {
		b := r.buffered()
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			if i+1 > limit {
				return nil, badMessage("line too long in chunked body")
			}
			return b[:i+1], nil
		}
		if len(b) >= limit {
			return nil, badMessage("line too long in chunked body")
		}
		if err := r.more(w, max(limit, h1BufSize)); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// parseChunkSize parses a chunk-size line: hex digits, optional
// extensions after ';', CRLF.
func parseChunkSize(line []byte) (int64, bool) {
	line = bytes.TrimRight(line, "\r\n")
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = trimOWS(line)
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range line {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | int64(d)
	}
	return n, true
}
