package sniff

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestDetect pins the verdicts on the first bytes of real protocols and
// the points at which each is decided.
func TestDetect(t *testing.T) {
	hello := realHello(t, &tls.Config{ServerName: "api.example.com", NextProtos: []string{"h2", "http/1.1"}})
	for _, tc := range []struct {
		name    string
		in      string
		want    Protocol
		method  string
		version string
	}{
		{"HTTP/1.1 GET", "GET /index.html HTTP/1.1\r\nHost: web\r\n\r\n", HTTP1, "GET", "HTTP/1.1"},
		{"HTTP/1.0 POST", "POST /api?q=1 HTTP/1.0\r\n", HTTP1, "POST", "HTTP/1.0"},
		{"bare LF", "DELETE /x HTTP/1.1\n", HTTP1, "DELETE", "HTTP/1.1"},
		{"CONNECT authority", "CONNECT db.example:5432 HTTP/1.1\r\n", HTTP1, "CONNECT", "HTTP/1.1"},
		{"OPTIONS asterisk", "OPTIONS * HTTP/1.1\r\n", HTTP1, "OPTIONS", "HTTP/1.1"},
		{"extension method", "PROPPATCH /dav HTTP/1.1\r\n", HTTP1, "PROPPATCH", "HTTP/1.1"},
		{"HTTP/2 preface", http2Preface + "\x00\x00\x12\x04", HTTP2, "", ""},
		{"app TLS", string(hello), TLS, "", ""},
		{"Redis inline command", "PING\r\n", Opaque, "", ""},
		{"Redis RESP", "*1\r\n$4\r\nPING\r\n", Opaque, "", ""},
		{"SSH banner", "SSH-2.0-OpenSSH_9.2\r\n", Opaque, "", ""},
		{"HTTP/2.0 request line", "GET / HTTP/2.0\r\n", Opaque, "", ""},
		{"lowercase version", "GET / http/1.1\r\n", Opaque, "", ""},
		{"two spaces", "GET  / HTTP/1.1\r\n", Opaque, "", ""},
		{"control byte in target", "GET /a\x01b HTTP/1.1\r\n", Opaque, "", ""},
		// Servers skip empty lines before a request (RFC 9112 §2.2).
		{"empty lines first", "\r\n\nGET / HTTP/1.1\r\n", HTTP1, "GET", "HTTP/1.1"},
		{"CR, not an empty line", "\rGET / HTTP/1.1\r\n", Opaque, "", ""},
		{"PostgreSQL startup", "\x00\x00\x00\x08\x04\xd2\x16\x2f", Opaque, "", ""},
		{"TLS record, not a hello", "\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", Opaque, "", ""},
		{"long method", strings.Repeat("A", MaxMethodLen+1) + " / HTTP/1.1\r\n", Opaque, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Detect([]byte(tc.in))
			if err != nil {
				t.Fatalf("Detect: %v", err)
			}
			if d.Protocol != tc.want || d.Method != tc.method || d.Version != tc.version {
				t.Errorf("Detect = %v %q %q, want %v %q %q", d.Protocol, d.Method, d.Version, tc.want, tc.method, tc.version)
			}
			if tc.want == TLS && (d.Hello.ServerName != "api.example.com" || !slices.Equal(d.Hello.ALPN, []string{"h2", "http/1.1"})) {
				t.Errorf("TLS: SNI %q, ALPN %q", d.Hello.ServerName, d.Hello.ALPN)
			}
		})
	}
	// Prefixes of what is not decided yet need more, and say what they
	// could still become.
	for _, tc := range []struct {
		in    string
		maybe Protocol
	}{
		{"", Opaque}, {"\r", HTTP1}, {"\r\n", HTTP1}, {"\nG", HTTP1}, {"G", HTTP1}, {"GET", HTTP1}, {"GET ", HTTP1}, {"GET /", HTTP1}, {"GET / ", HTTP1}, {"GET / HTTP/1", HTTP1},
		{"GET / HTTP/1.1", HTTP1}, {"GET / HTTP/1.1\r", HTTP1}, {"P", HTTP2}, {"PRI * HTTP/2.0\r\n", HTTP2}, {string(hello[:40]), TLS},
	} {
		if d, err := Detect([]byte(tc.in)); err != ErrNeedMore || d.Protocol != tc.maybe {
			t.Errorf("Detect(%q) = %v, %v; want %v, ErrNeedMore", tc.in, d.Protocol, err, tc.maybe)
		}
	}
	// A request line too long to buffer is HTTP all the same (servers
	// take longer ones), of a version not read; empty lines that fill the
	// buffer are not.
	long := "GET /" + strings.Repeat("a", MaxRequestLineLen)
	if d, err := Detect([]byte(long)); err != nil || d.Protocol != HTTP1 || d.Method != "GET" || d.Version != "" {
		t.Errorf("a %d-byte request target: %v %q %q, %v; want http1 GET, no version", len(long), d.Protocol, d.Method, d.Version, err)
	}
	long = strings.Repeat("GET / HTTP/1.1", MaxRequestLineLen/14) + " HTTP/1.1\r\n"
	if d, err := Detect([]byte(long)); err != nil || d.Protocol != Opaque {
		t.Errorf("a malformed request line: %v, %v; want opaque", d.Protocol, err)
	}
	if d, err := Detect([]byte(strings.Repeat("\r\n", MaxRequestLineLen))); err != nil || d.Protocol != Opaque {
		t.Errorf("%d empty lines: %v, %v; want opaque", MaxRequestLineLen, d.Protocol, err)
	}
}

// FuzzDetect holds Detect to its contract on any input:
//   - it never panics and answers a Detection or ErrNeedMore;
//   - ErrNeedMore is honest: every prefix of an input that needs more
//     needs more, and a verdict does not change as bytes are appended;
//   - a request that net/http reads as HTTP/1.x is detected as HTTP1,
//     with the same method and version.
func FuzzDetect(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST /upload HTTP/1.0\r\nContent-Length: 1\r\n\r\nx"))
	f.Add([]byte(http2Preface))
	f.Add([]byte("PING\r\n"))
	f.Add([]byte("SSH-2.0-x\r\n"))
	f.Add(realHello(f, &tls.Config{ServerName: "a.example", NextProtos: []string{"h2"}}))
	f.Fuzz(func(t *testing.T, in []byte) {
		d, err := Detect(in)
		switch {
		case err == nil:
			for _, tail := range [][]byte{{'\r', '\n'}, {0}, []byte(" HTTP/1.1\r\n"), bytes.Repeat([]byte{'a'}, 64)} {
				again, err := Detect(append(slices.Clip(in), tail...))
				if err != nil || again.Protocol != d.Protocol || again.Method != d.Method || again.Version != d.Version {
					t.Fatalf("verdict %v %q %q, then with %q appended %v %q %q, %v", d.Protocol, d.Method, d.Version, tail, again.Protocol, again.Method, again.Version, err)
				}
			}
		case err == ErrNeedMore:
			// A sample of prefixes: each costs a scan of up to the whole
			// input, so all of a long one would slow fuzzing to a crawl.
			step := max(1, len(in)/32)
			for i := 0; i < len(in); i += step {
				if _, err := Detect(in[:i]); err != ErrNeedMore {
					t.Fatalf("input needs more but its %d-byte prefix gives %v", i, err)
				}
			}
		default:
			t.Fatalf("Detect returned %v; want a verdict or ErrNeedMore", err)
		}

		if len(in) >= MaxRequestLineLen {
			return
		}
		req, rerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
		if rerr != nil || req.ProtoMajor != 1 || len(req.Method) > MaxMethodLen || !errors.Is(rerr, nil) {
			return
		}
		if err != nil || d.Protocol != HTTP1 || d.Method != req.Method || d.Version != req.Proto {
			t.Fatalf("net/http reads %s %s, Detect says %v %q %q, %v", req.Method, req.Proto, d.Protocol, d.Method, d.Version, err)
		}
	})
}
