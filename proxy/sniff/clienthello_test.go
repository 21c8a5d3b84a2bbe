package sniff

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// realHello returns the first flight crypto/tls sends as a client with
// cfg: the records of its ClientHello.
func realHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c := &scriptConn{}
	if err := tls.Client(c, cfg).Handshake(); err == nil {
		t.Fatal("handshake with no server succeeded")
	}
	if len(c.written) == 0 {
		t.Fatal("crypto/tls wrote no ClientHello")
	}
	return c.written
}

// scriptConn is a net.Conn that reads from in (then EOF) and records
// what is written.
type scriptConn struct {
	in      []byte
	written []byte
}

func (c *scriptConn) Read(b []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(b, c.in)
	c.in = c.in[n:]
	return n, nil
}
func (c *scriptConn) Write(b []byte) (int, error) {
	c.written = append(c.written, b...)
	return len(b), nil
}
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// helloBody builds a ClientHello message body with the given extensions
// (each already encoded: type, length, data).
func helloBody(exts ...[]byte) []byte {
	b := []byte{3, 3}                  // legacy_version
	b = append(b, make([]byte, 32)...) // random
	b = append(b, 0)                   // session id
	b = append(b, 0, 2, 0x13, 0x01)    // one suite
	b = append(b, 1, 0)                // null compression
	if exts == nil {
		return b
	}
	all := bytes.Join(exts, nil)
	return append(append(b, u16(len(all))...), all...)
}

func u16(n int) []byte { return []byte{byte(n >> 8), byte(n)} }

// ext encodes one extension.
func ext(typ int, data []byte) []byte {
	return append(append(u16(typ), u16(len(data))...), data...)
}

func sniExt(names ...string) []byte {
	var list []byte
	for _, n := range names {
		list = append(append(append(list, 0), u16(len(n))...), n...)
	}
	return ext(extServerName, append(u16(len(list)), list...))
}

func alpnExt(protos ...string) []byte {
	var list []byte
	for _, p := range protos {
		list = append(append(list, byte(len(p))), p...)
	}
	return ext(extALPN, append(u16(len(list)), list...))
}

// message wraps a body in a handshake header of type typ.
func message(typ byte, body []byte) []byte {
	return append([]byte{typ, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
}

// records splits msg into handshake records of at most size bytes.
func records(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(append(append(out, recordTypeHandshake, 3, 1), u16(n)...), msg[:n]...)
		msg = msg[n:]
	}
	return out
}

func TestParseClientHello(t *testing.T) {
	real := realHello(t, &tls.Config{ServerName: "web.default.svc", NextProtos: []string{"meshgate/tcp", "h2"}})
	bare := realHello(t, &tls.Config{InsecureSkipVerify: true})
	good := message(typeClientHello, helloBody(sniExt("a.example"), alpnExt("meshgate/tcp")))

	tests := []struct {
		name    string
		in      []byte
		want    ClientHello
		wantErr string // "" for success
	}{
		{name: "crypto/tls client with SNI and ALPN", in: real,
			want: ClientHello{ServerName: "web.default.svc", ALPN: []string{"meshgate/tcp", "h2"}}},
		{name: "crypto/tls client with neither", in: bare},
		{name: "bytes after the hello are ignored", in: append(records(good, 1<<14), "more"...),
			want: ClientHello{ServerName: "a.example", ALPN: []string{"meshgate/tcp"}}},
		{name: "hello split over three records", in: records(good, 30),
			want: ClientHello{ServerName: "a.example", ALPN: []string{"meshgate/tcp"}}},
		{name: "no extensions", in: records(message(typeClientHello, helloBody()), 1<<14)},
		{name: "non-host server names are skipped", in: records(message(typeClientHello, helloBody(
			ext(extServerName, append(u16(9), append([]byte{7, 0, 1, 'x'}, 0, 0, 2, 'h', 'i')...)))), 1<<14),
			want: ClientHello{ServerName: "hi"}},

		{name: "empty", in: nil, wantErr: "sniff: need more bytes"},
		{name: "one byte", in: real[:1], wantErr: "sniff: need more bytes"},
		{name: "record header only", in: real[:5], wantErr: "sniff: need more bytes"},
		{name: "all but the last byte", in: real[:len(real)-1], wantErr: "sniff: need more bytes"},
		{name: "first of three records", in: records(good, 30)[:35], wantErr: "sniff: need more bytes"},

		{name: "HTTP request", in: []byte("GET / HTTP/1.1\r\n"),
			wantErr: "sniff: no match: first byte 0x47 is not a TLS handshake record"},
		{name: "HTTP/2 preface", in: []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
			wantErr: "sniff: no match: first byte 0x50 is not a TLS handshake record"},
		{name: "application data record", in: []byte{23, 3, 3, 0, 1, 0},
			wantErr: "sniff: no match: first byte 0x17 is not a TLS handshake record"},
		{name: "SSLv2-style version", in: []byte{22, 2},
			wantErr: "sniff: no match: record version 2.x is not TLS 3.x"},
		{name: "empty record", in: []byte{22, 3, 1, 0, 0},
			wantErr: "sniff: no match: handshake record length 0"},
		{name: "oversized record", in: []byte{22, 3, 1, 0x48, 1},
			wantErr: "sniff: no match: handshake record length 18433"},
		{name: "server hello", in: records(message(2, helloBody()), 1<<14)[:7],
			wantErr: "sniff: no match: handshake message type 2 is not ClientHello"},
		{name: "alert between the records", in: append(records(good, 30)[:35], 21, 3, 3, 0, 2),
			wantErr: "sniff: no match: record of type 21 inside the ClientHello"},
		{name: "hello longer than crypto/tls takes", in: []byte{22, 3, 1, 0, 4, 1, 1, 0, 1},
			wantErr: "sniff: no match: ClientHello length 65537 exceeds 65536"},
		{name: "truncated body", in: records(message(typeClientHello, []byte{3, 3, 0}), 1<<14),
			wantErr: "sniff: no match: malformed ClientHello"},
		{name: "odd cipher suites", in: records(message(typeClientHello,
			append(append([]byte{3, 3}, make([]byte, 32)...), 0, 0, 1, 0x13, 1, 0)), 1<<14),
			wantErr: "sniff: no match: malformed ClientHello"},
		{name: "trailing bytes after the extensions", in: records(message(typeClientHello,
			append(helloBody(alpnExt("h2")), 0)), 1<<14),
			wantErr: "sniff: no match: malformed ClientHello extensions"},
		{name: "duplicate ALPN", in: records(message(typeClientHello, helloBody(alpnExt("h2"), alpnExt("h2"))), 1<<14),
			wantErr: "sniff: no match: duplicate ALPN extension"},
		{name: "empty protocol name", in: records(message(typeClientHello, helloBody(alpnExt("h2", ""))), 1<<14),
			wantErr: "sniff: no match: malformed ALPN extension"},
		{name: "empty ALPN list", in: records(message(typeClientHello, helloBody(ext(extALPN, u16(0)))), 1<<14),
			wantErr: "sniff: no match: malformed ALPN extension"},
		{name: "two host names", in: records(message(typeClientHello, helloBody(sniExt("a", "b"))), 1<<14),
			wantErr: "sniff: no match: more than one host name in server_name"},
		{name: "extension longer than the block", in: records(message(typeClientHello,
			helloBody(append(u16(extALPN), 0, 9, 0))), 1<<14),
			wantErr: "sniff: no match: malformed ClientHello extension"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseClientHello(tc.in)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseClientHello = %+v, want error %q", got, tc.wantErr)
				}
				if err.Error() != tc.wantErr {
					t.Errorf("error = %q, want %q", err, tc.wantErr)
				}
				if strings.Contains(tc.wantErr, "no match") != errors.Is(err, ErrNoMatch) {
					t.Errorf("errors.Is(%v, ErrNoMatch) is wrong", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseClientHello mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEveryPrefixNeedsMore: a real ClientHello cut anywhere is ErrNeedMore,
// never a wrong answer.
func TestEveryPrefixNeedsMore(t *testing.T) {
	for _, in := range [][]byte{
		realHello(t, &tls.Config{ServerName: "x.example", NextProtos: []string{"meshgate/tcp"}}),
		records(message(typeClientHello, helloBody(sniExt("a.example"), alpnExt("meshgate/tcp"))), 7),
	} {
		for i := range len(in) {
			if _, err := ParseClientHello(in[:i]); err != ErrNeedMore {
				t.Fatalf("prefix of %d/%d bytes: %v, want ErrNeedMore", i, len(in), err)
			}
		}
		if _, err := ParseClientHello(in); err != nil {
			t.Fatalf("whole: %v", err)
		}
	}
}

func TestOffersALPN(t *testing.T) {
	h := ClientHello{ALPN: []string{"h2", "meshgate/tcp"}}
	if !h.OffersALPN("meshgate/tcp") || h.OffersALPN("meshgate/h2") {
		t.Errorf("OffersALPN wrong for %v", h.ALPN)
	}
}

func TestMaxClientHelloLen(t *testing.T) {
	// The largest hello crypto/tls takes, split into one-byte records, does
	// not end within the limit: the parser gives up rather than ask for
	// more for ever.
	msg := append([]byte{typeClientHello, 1, 0, 0}, make([]byte, maxHandshakeBodyLen)...)
	in := records(msg, 1)
	if _, err := ParseClientHello(in[:MaxClientHelloLen-1]); err != ErrNeedMore {
		t.Errorf("just under the limit: %v, want ErrNeedMore", err)
	}
	_, err := ParseClientHello(in)
	if want := "sniff: no match: no complete ClientHello within 65620 bytes"; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %q", err, want)
	}
}

func BenchmarkParseClientHello(b *testing.B) {
	in := realHello(b, &tls.Config{ServerName: "web.default.svc", NextProtos: []string{"meshgate/tcp"}})
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := ParseClientHello(in); err != nil {
			b.Fatal(err)
		}
	}
}
