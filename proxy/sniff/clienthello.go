package sniff

import (
	"errors"
	"fmt"
)

// ErrNeedMore says the bytes so far are a prefix of what the parser looks
// for: read more and ask again.
var ErrNeedMore = errors.New("sniff: need more bytes")

// ErrNoMatch says the bytes are not what the parser looks for, whatever
// follows them. Parsers wrap it with the reason.
var ErrNoMatch = errors.New("sniff: no match")

// ClientHello is what the proxy needs to know of a TLS ClientHello.
type ClientHello struct {
	// ServerName is the host name of the server_name extension (SNI); ""
	// when none was sent.
	ServerName string
	// ALPN lists the protocols of the application_layer_protocol_negotiation
	// extension in the client's order of preference; nil when none was
	// sent.
	ALPN []string
}

// OffersALPN reports whether the client offers protocol proto.
func (h *ClientHello) OffersALPN(proto string) bool {
	for _, p := range h.ALPN {
		if p == proto {
			return true
		}
	}
	return false
}

// TLS record layer and handshake constants (RFC 8446 §5.1, §4).
const (
	recordHeaderLen     = 5
	recordTypeHandshake = 22
	// maxRecordLen is the longest record accepted: 2^14 bytes of plaintext
	// (RFC 8446 §5.1) plus the 2048 bytes of slack crypto/tls allows, so
	// that whatever crypto/tls would read as a ClientHello, this does too.
	maxRecordLen = 1<<14 + 2048
	// handshakeHeaderLen is the type and uint24 length of a handshake
	// message.
	handshakeHeaderLen  = 4
	typeClientHello     = 1
	maxHandshakeBodyLen = 1 << 16 // as crypto/tls

	extServerName = 0  // RFC 6066 §3
	extALPN       = 16 // RFC 7301 §3.1
	sniHostName   = 0
)

// MaxClientHelloLen is the most input ParseClientHello reads: a
// ClientHello that has not ended within it is ErrNoMatch, so a caller
// peeking at a connection never buffers more than this. It fits the
// largest ClientHello crypto/tls accepts split over up to 16 records;
// real ones take one record of a few hundred bytes to 2 KiB.
const MaxClientHelloLen = handshakeHeaderLen + maxHandshakeBodyLen + 16*recordHeaderLen

// ParseClientHello reads b, the first bytes a client sent, as TLS records
// carrying a ClientHello handshake message. It returns the hello once
// the whole message is in b; ErrNeedMore while b is a prefix of one;
// otherwise an error wrapping ErrNoMatch that says what is wrong.
//
// It decides as early as the bytes allow: a first byte other than 22
// (handshake) is no match, so plaintext is told apart on its first byte.
// It checks the message's structure as strictly as crypto/tls does for
// the parts it reads (lengths, the server_name and ALPN extensions) and
// skips the contents of the others; anything crypto/tls parses as a
// ClientHello parses here with the same server name and protocols (the
// fuzz test holds it to that).
func ParseClientHello(b []byte) (ClientHello, error) {
	if len(b) > MaxClientHelloLen {
		b = b[:MaxClientHelloLen]
	}
	var (
		msg    []byte // the handshake bytes so far
		joined bool   // msg is a copy: the message spans records
		need   = -1   // the whole message's length, once its header is in
	)
	for off := 0; ; {
		// The record header, judged byte by byte so that plaintext is
		// refused as soon as possible.
		hdr := b[off:min(off+recordHeaderLen, len(b))]
		if len(hdr) > 0 && hdr[0] != recordTypeHandshake {
			if off == 0 {
				return ClientHello{}, noMatch("first byte 0x%02x is not a TLS handshake record", hdr[0])
			}
			return ClientHello{}, noMatch("record of type %d inside the ClientHello", hdr[0])
		}
		if len(hdr) > 1 && hdr[1] != 3 {
			return ClientHello{}, noMatch("record version %d.x is not TLS 3.x", hdr[1])
		}
		if len(hdr) < recordHeaderLen {
			return ClientHello{}, needMore(len(b))
		}
		n := int(hdr[3])<<8 | int(hdr[4])
		if n == 0 || n > maxRecordLen {
			return ClientHello{}, noMatch("handshake record length %d", n)
		}
		start := off + recordHeaderLen
		payload := b[start:min(start+n, len(b))]

		switch {
		case off == 0:
			msg = payload
		case !joined:
			msg = append(append(make([]byte, 0, len(msg)+len(payload)), msg...), payload...)
			joined = true
		default:
			msg = append(msg, payload...)
		}

		if need < 0 && len(msg) > 0 && msg[0] != typeClientHello {
			return ClientHello{}, noMatch("handshake message type %d is not ClientHello", msg[0])
		}
		if need < 0 && len(msg) >= handshakeHeaderLen {
			body := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
			if body > maxHandshakeBodyLen {
				return ClientHello{}, noMatch("ClientHello length %d exceeds %d", body, maxHandshakeBodyLen)
			}
			need = handshakeHeaderLen + body
		}
		if need >= 0 && len(msg) >= need {
			return parseClientHelloBody(msg[handshakeHeaderLen:need])
		}
		if len(payload) < n {
			return ClientHello{}, needMore(len(b))
		}
		off = start + n
	}
}

// needMore is ErrNeedMore, or ErrNoMatch once the input is as long as a
// ClientHello may be.
func needMore(have int) error {
	if have >= MaxClientHelloLen {
		return noMatch("no complete ClientHello within %d bytes", MaxClientHelloLen)
	}
	return ErrNeedMore
}

func noMatch(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrNoMatch, fmt.Sprintf(format, args...))
}

// parseClientHelloBody parses the ClientHello message body (RFC 8446
// §4.1.2), mirroring crypto/tls's checks for what it reads.
func parseClientHelloBody(body []byte) (ClientHello, error) {
	s := reader(body)
	var sessionID, suites, compression reader
	if !s.skip(2+32) || // legacy_version, random
		!s.prefixed8(&sessionID) ||
		!s.prefixed16(&suites) || len(suites)%2 != 0 ||
		!s.prefixed8(&compression) {
		return ClientHello{}, noMatch("malformed ClientHello")
	}
	var h ClientHello
	if len(s) == 0 {
		return h, nil // no extensions (allowed before TLS 1.3)
	}
	var exts reader
	if !s.prefixed16(&exts) || len(s) != 0 {
		return ClientHello{}, noMatch("malformed ClientHello extensions")
	}
	var seenSNI, seenALPN bool
	for len(exts) > 0 {
		var typ uint16
		var data reader
		if !exts.uint16(&typ) || !exts.prefixed16(&data) {
			return ClientHello{}, noMatch("malformed ClientHello extension")
		}
		switch typ {
		case extServerName:
			if seenSNI {
				return ClientHello{}, noMatch("duplicate server_name extension")
			}
			seenSNI = true
			name, err := parseSNI(data)
			if err != nil {
				return ClientHello{}, err
			}
			h.ServerName = name
		case extALPN:
			if seenALPN {
				return ClientHello{}, noMatch("duplicate ALPN extension")
			}
			seenALPN = true
			protos, err := parseALPN(data)
			if err != nil {
				return ClientHello{}, err
			}
			h.ALPN = protos
		}
	}
	return h, nil
}

// parseSNI reads a server_name extension (RFC 6066 §3): a non-empty list
// of typed names, at most one of them a host name.
func parseSNI(data reader) (string, error) {
	var list reader
	if !data.prefixed16(&list) || len(list) == 0 || len(data) != 0 {
		return "", noMatch("malformed server_name extension")
	}
	var host string
	for len(list) > 0 {
		var typ uint8
		var name reader
		if !list.uint8(&typ) || !list.prefixed16(&name) || len(name) == 0 {
			return "", noMatch("malformed server_name extension")
		}
		if typ != sniHostName {
			continue
		}
		if host != "" {
			return "", noMatch("more than one host name in server_name")
		}
		host = string(name)
	}
	return host, nil
}

// parseALPN reads an application_layer_protocol_negotiation extension
// (RFC 7301 §3.1): a non-empty list of non-empty protocol names.
func parseALPN(data reader) ([]string, error) {
	var list reader
	if !data.prefixed16(&list) || len(list) == 0 || len(data) != 0 {
		return nil, noMatch("malformed ALPN extension")
	}
	var protos []string
	for len(list) > 0 {
		var p reader
		if !list.prefixed8(&p) || len(p) == 0 {
			return nil, noMatch("malformed ALPN extension")
		}
		protos = append(protos, string(p))
	}
	return protos, nil
}

// reader consumes big-endian fields from the front of a byte slice; each
// method reports false, consuming nothing, when the slice is too short.
type reader []byte

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

func (r *reader) uint8(v *uint8) bool {
	if len(*r) < 1 {
		return false
	}
	*v = (*r)[0]
	*r = (*r)[1:]
	return true
}

func (r *reader) uint16(v *uint16) bool {
	if len(*r) < 2 {
		return false
	}
	*v = uint16((*r)[0])<<8 | uint16((*r)[1])
	*r = (*r)[2:]
	return true
}

// prefixed8 reads a vector with a one-byte length into out.
func (r *reader) prefixed8(out *reader) bool {
	if len(*r) < 1 || len(*r)-1 < int((*r)[0]) {
		return false
	}
	n := int((*r)[0])
	*out = (*r)[1 : 1+n]
	*r = (*r)[1+n:]
	return true
}

// prefixed16 reads a vector with a two-byte length into out.
func (r *reader) prefixed16(out *reader) bool {
	if len(*r) < 2 {
		return false
	}
	n := int((*r)[0])<<8 | int((*r)[1])
	if len(*r)-2 < n {
		return false
	}
	*out = (*r)[2 : 2+n]
	*r = (*r)[2+n:]
	return true
}
