// Package sniff classifies the first bytes of a connection without
// consuming them: the proxy peeks, asks this package what it has seen, and
// replays the bytes to whoever handles the connection next
// (shared/DESIGN.md §5).
//
// Everything here is pure: functions of a byte slice, no I/O, no clock,
// safe on any input (each parser has a native fuzz test). A parser answers
// one of three ways, so the caller knows whether to read on:
//
//   - a result: the bytes are what the parser looks for;
//   - ErrNeedMore: a prefix of it so far; read more and ask again;
//   - ErrNotMatch (wrapped, with the reason): it is something else, and no
//     further bytes can change that.
//
// ParseClientHello reads a TLS ClientHello (RFC 8446 §4.1.2) far enough to
// report the server name (SNI, RFC 6066 §3) and the offered application
// protocols (ALPN, RFC 7301). The inbound side uses the ALPN to recognise
// mesh TLS from another sidecar ("meshgate/tcp", ...).
//
// Detect classifies a connection's first bytes for protocol detection: a
// TLS ClientHello (the app's own TLS, with its SNI and ALPN), an HTTP/1.x
// request line, the HTTP/2 prior-knowledge preface, or opaque bytes.
//
// ServerPreface reads a server's first bytes: whether they are an HTTP/2
// server's SETTINGS, which makes no server-first protocol (the proxy
// then waits on for the client's bytes to decide).
package sniff
