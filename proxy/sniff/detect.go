package sniff

import (
	"bytes"
	"errors"
	"fmt"
)

// Protocol is what a connection speaks, as far as its first bytes tell.
type Protocol uint8

// The protocols Detect tells apart.
const (
	// Opaque is anything else: bytes the proxy passes on as they are.
	Opaque Protocol = iota
	// TLS is a TLS ClientHello: the app's own TLS, passed through.
	TLS
	// HTTP1 is an HTTP/1.0 or HTTP/1.1 request line.
	HTTP1
	// HTTP2 is the HTTP/2 connection preface of prior knowledge (h2c
	// without Upgrade, RFC 9113 §3.3).
	HTTP2
)

// String returns the protocol's label in metrics and logs: opaque, tls,
// http1 or http2.
func (p Protocol) String() string {
	switch p {
	case TLS:
		return "tls"
	case HTTP1:
		return "http1"
	case HTTP2:
		return "http2"
	}
	return "opaque"
}

// Detection is what Detect found.
type Detection struct {
	Protocol Protocol
	// Hello is the ClientHello, for TLS.
	Hello ClientHello
	// Method and Version are the request line's, for HTTP1 (e.g. "GET",
	// "HTTP/1.1").
	Method, Version string
}

// http2Preface opens every HTTP/2 connection with prior knowledge.
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Limits of the HTTP/1 request line.
const (
	// MaxMethodLen bounds the method token; standard methods are at most
	// 7 letters, extensions (WebDAV's PROPPATCH, ...) a few more.
	MaxMethodLen = 32
	// MaxRequestLineLen bounds what is read of a request line (with the
	// empty lines before it): one longer, well-formed so far, is taken
	// for HTTP/1 without its version rather than buffered on.
	MaxRequestLineLen = 64 << 10
)

// Detect classifies b, the first bytes a client sent. It returns a
// Detection once the bytes decide it, ErrNeedMore while they are a prefix
// of a TLS ClientHello, an HTTP/2 preface or an HTTP/1.x request line
// (read more and ask again); it never fails otherwise: bytes that are
// none of these are Opaque. With ErrNeedMore, the Detection's Protocol
// says what the bytes could still become: TLS, HTTP2 (for a prefix of the
// preface, which may be a request line's too) or HTTP1; Opaque for none.
//
// A verdict, once given, holds for any bytes appended, and a prefix of
// bytes that need more needs more too (the fuzz test holds it to both),
// so a caller may ask after every read. TLS is decided by the whole
// ClientHello (for its SNI and ALPN), HTTP/2 by the whole 24-byte
// preface, HTTP/1 by the end of the request line (or by its first
// MaxRequestLineLen bytes, well-formed: Version is then "").
func Detect(b []byte) (Detection, error) {
	if len(b) == 0 {
		return Detection{}, ErrNeedMore
	}
	if b[0] == recordTypeHandshake {
		h, err := ParseClientHello(b)
		switch {
		case err == nil:
			return Detection{Protocol: TLS, Hello: h}, nil
		case errors.Is(err, ErrNeedMore):
			return Detection{Protocol: TLS}, ErrNeedMore
		}
		return Detection{Protocol: Opaque}, nil
	}
	if n := min(len(b), len(http2Preface)); string(b[:n]) == http2Preface[:n] {
		if n < len(http2Preface) {
			return Detection{Protocol: HTTP2}, ErrNeedMore
		}
		return Detection{Protocol: HTTP2}, nil
	}
	method, version, err := requestLine(b)
	switch {
	case err == nil:
		return Detection{Protocol: HTTP1, Method: method, Version: version}, nil
	case errors.Is(err, ErrNeedMore) && len(b) >= MaxRequestLineLen:
		if method == "" {
			return Detection{Protocol: Opaque}, nil // empty lines only
		}
		// Well-formed so far, and longer than is buffered: servers take
		// longer request lines (net/http up to its header limit, 1 MiB
		// by default), so it is HTTP, of a version not read.
		return Detection{Protocol: HTTP1, Method: method}, nil
	case errors.Is(err, ErrNeedMore):
		return Detection{Protocol: HTTP1}, ErrNeedMore
	}
	return Detection{Protocol: Opaque}, nil
}

// requestLine parses an HTTP/1.x request line (RFC 9112 §3): method SP
// request-target SP HTTP-version, ended by CRLF or a bare LF (which
// servers accept, §2.2). Empty lines before it are skipped, as servers
// do (§2.2), and count towards MaxRequestLineLen. With ErrNeedMore, the
// method is returned once read.
func requestLine(b []byte) (method, version string, err error) {
	if len(b) > MaxRequestLineLen {
		b = b[:MaxRequestLineLen]
	}
	for {
		if bytes.HasPrefix(b, []byte("\r\n")) {
			b = b[2:]
		} else if len(b) > 0 && b[0] == '\n' {
			b = b[1:]
		} else {
			break
		}
	}
	if len(b) == 1 && b[0] == '\r' {
		return "", "", ErrNeedMore
	}
	// The method: one or more token characters, then SP.
	i := 0
	for i < len(b) && isTokenChar(b[i]) {
		i++
		if i > MaxMethodLen {
			return "", "", fmt.Errorf("%w: method longer than %d characters", ErrNoMatch, MaxMethodLen)
		}
	}
	switch {
	case i == len(b):
		return "", "", ErrNeedMore
	case i == 0 || b[i] != ' ':
		return "", "", fmt.Errorf("%w: no method token", ErrNoMatch)
	}
	method = string(b[:i])
	// The target: anything but spaces and control characters (servers
	// take non-ASCII bytes too, as net/http does), then SP.
	j := i + 1
	for j < len(b) && b[j] > ' ' && b[j] != 0x7f {
		j++
	}
	switch {
	case j == len(b):
		return method, "", ErrNeedMore
	case j == i+1 || b[j] != ' ':
		return "", "", fmt.Errorf("%w: no request target", ErrNoMatch)
	}
	// The version: HTTP/1.0 or HTTP/1.1 (any minor digit), then CRLF or LF.
	rest := b[j+1:]
	const proto = "HTTP/1."
	if n := min(len(rest), len(proto)); !bytes.Equal(rest[:n], []byte(proto[:n])) {
		return "", "", fmt.Errorf("%w: not HTTP/1.x", ErrNoMatch)
	} else if n < len(proto) {
		return method, "", ErrNeedMore
	}
	rest = rest[len(proto):]
	switch {
	case len(rest) == 0:
		return method, "", ErrNeedMore
	case rest[0] < '0' || rest[0] > '9':
		return "", "", fmt.Errorf("%w: bad HTTP version", ErrNoMatch)
	}
	version = proto + string(rest[0])
	rest = rest[1:]
	switch {
	case len(rest) == 0:
		return method, "", ErrNeedMore
	case rest[0] == '\n':
		return method, version, nil
	case rest[0] != '\r':
		return "", "", fmt.Errorf("%w: request line not ended", ErrNoMatch)
	case len(rest) == 1:
		return method, "", ErrNeedMore
	case rest[1] != '\n':
		return "", "", fmt.Errorf("%w: request line not ended", ErrNoMatch)
	}
	return method, version, nil
}

// isTokenChar reports whether c may appear in an HTTP token (RFC 9110
// §5.6.2).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c != 0 && bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}
