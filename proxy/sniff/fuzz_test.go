package sniff

import (
	"bytes"
	"crypto/tls"
	"errors"
	"slices"
	"testing"
)

// FuzzParseClientHello holds ParseClientHello to its contract on any
// input:
//   - it never panics and answers one of: a hello, ErrNeedMore, or an
//     error wrapping ErrNoMatch;
//   - ErrNeedMore is honest: every prefix of an input that needs more also
//     needs more, and an answer, once given, does not change as bytes are
//     appended;
//   - whatever crypto/tls reads as a ClientHello it reads too, with the
//     same server name and protocols.
func FuzzParseClientHello(f *testing.F) {
	f.Add(realHello(f, &tls.Config{ServerName: "web.default.svc", NextProtos: []string{"meshgate/tcp", "h2"}}))
	f.Add(realHello(f, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}))
	f.Add(records(message(typeClientHello, helloBody(sniExt("a.example"), alpnExt("meshgate/tcp"))), 40))
	f.Add(records(message(typeClientHello, helloBody()), 1<<14))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := ParseClientHello(in)
		switch {
		case err == nil:
			// Bytes appended after a complete hello change nothing.
			again, err := ParseClientHello(append(slices.Clip(in), 0x16, 3, 3))
			if err != nil || !equal(h, again) {
				t.Fatalf("hello %+v, then with bytes appended %+v, %v", h, again, err)
			}
		case errors.Is(err, ErrNeedMore):
			if err != ErrNeedMore {
				t.Fatalf("ErrNeedMore wrapped: %v", err)
			}
			// Every prefix of a short input, a sample of a long one (each
			// costs a parse: many would slow fuzzing to a crawl).
			step := max(1, len(in)/32)
			for i := 0; i < len(in); i += step {
				if _, err := ParseClientHello(in[:i]); err != ErrNeedMore {
					t.Fatalf("input needs more but its %d-byte prefix gives %v", i, err)
				}
			}
		case errors.Is(err, ErrNoMatch):
			if _, err2 := ParseClientHello(append(slices.Clip(in), make([]byte, 64)...)); !errors.Is(err2, ErrNoMatch) {
				t.Fatalf("no match (%v), but with bytes appended %v", err, err2)
			}
		default:
			t.Fatalf("error %v is neither ErrNeedMore nor ErrNoMatch", err)
		}

		ref, ok := cryptoTLSHello(in)
		if !ok {
			return
		}
		if err != nil {
			t.Fatalf("crypto/tls reads a ClientHello (%+v) but ParseClientHello says %v", ref, err)
		}
		if !equal(h, ref) {
			t.Fatalf("ParseClientHello = %+v, crypto/tls = %+v", h, ref)
		}
	})
}

func equal(a, b ClientHello) bool {
	return a.ServerName == b.ServerName && slices.Equal(a.ALPN, b.ALPN)
}

// errStop ends a crypto/tls handshake once it has parsed the hello.
var errStop = errors.New("stop")

// cryptoTLSHello runs a crypto/tls server over in and reports the server
// name and protocols it parsed, if it parsed a ClientHello. Inputs with a
// record version other than 3.x, which crypto/tls tolerates and this
// package refuses on purpose, and Encrypted Client Hellos (which crypto/tls
// would unwrap) are left out.
func cryptoTLSHello(in []byte) (ClientHello, bool) {
	for off := 0; off+recordHeaderLen <= len(in); off += recordHeaderLen + (int(in[off+3])<<8 | int(in[off+4])) {
		if in[off+1] != 3 {
			return ClientHello{}, false
		}
	}
	var got ClientHello
	parsed := false
	srv := tls.Server(&scriptConn{in: bytes.Clone(in)}, &tls.Config{
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			got = ClientHello{ServerName: chi.ServerName, ALPN: chi.SupportedProtos}
			parsed = true
			return nil, errStop
		},
	})
	srv.Handshake()
	if parsed && bytes.Contains(in, []byte{0xfe, 0x0d}) {
		return ClientHello{}, false // possibly ECH (extension 0xfe0d)
	}
	return got, parsed
}
