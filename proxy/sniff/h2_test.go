package sniff

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// h2Frames returns what an HTTP/2 framer writes with write.
func h2Frames(t testing.TB, write func(*http2.Framer) error) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := write(http2.NewFramer(&b, nil)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// netHTTP2Greeting returns the first bytes golang.org/x/net/http2's
// server sends on a connection, before it has read anything.
func netHTTP2Greeting(t testing.TB) []byte {
	t.Helper()
	cli, srv := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&http2.Server{}).ServeConn(srv, &http2.ServeConnOpts{Handler: http.NotFoundHandler()})
	}()
	defer func() { cli.Close(); <-done }()
	cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1024)
	n, err := cli.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// TestServerPreface pins what is an HTTP/2 server's greeting and what
// is not, and when it is decided.
func TestServerPreface(t *testing.T) {
	grpcGo := h2Frames(t, func(f *http2.Framer) error {
		return f.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16384})
	})
	withWindow := h2Frames(t, func(f *http2.Framer) error {
		if err := f.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100}); err != nil {
			return err
		}
		return f.WriteWindowUpdate(0, 1<<20)
	})
	settings := func(s ...http2.Setting) []byte {
		return h2Frames(t, func(f *http2.Framer) error { return f.WriteSettings(s...) })
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want error // nil, ErrNeedMore or ErrNoMatch
	}{
		{"x/net/http2's server", netHTTP2Greeting(t), nil},
		{"grpc-go's server", grpcGo, nil},
		{"SETTINGS then WINDOW_UPDATE", withWindow, nil},
		{"empty SETTINGS", settings(), nil},
		{"unknown setting", settings(http2.Setting{ID: 0xf0, Val: 1 << 31}), nil},
		{"SETTINGS then anything", append(slices.Clip(grpcGo), "220 ready\r\n"...), nil},
		{"nothing", nil, ErrNeedMore},
		{"header cut", grpcGo[:5], ErrNeedMore},
		{"payload cut", grpcGo[:len(grpcGo)-1], ErrNeedMore},
		{"ACK", h2Frames(t, func(f *http2.Framer) error { return f.WriteSettingsAck() }), ErrNoMatch},
		{"WINDOW_UPDATE first", h2Frames(t, func(f *http2.Framer) error { return f.WriteWindowUpdate(0, 1) }), ErrNoMatch},
		{"on stream 1", []byte{0, 0, 0, 4, 0, 0, 0, 0, 1}, ErrNoMatch},
		{"reserved bit", []byte{0, 0, 0, 4, 0, 0x80, 0, 0, 0}, ErrNoMatch},
		{"length not whole settings", []byte{0, 0, 5, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, ErrNoMatch},
		{"longer than a first frame may be", []byte{0, 0x40, 0x06, 4, 0}, ErrNoMatch},
		{"ENABLE_PUSH 2", settings(http2.Setting{ID: http2.SettingEnablePush, Val: 2}), ErrNoMatch},
		{"MAX_FRAME_SIZE too small", settings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1024}), ErrNoMatch},
		{"INITIAL_WINDOW_SIZE too big", settings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31}), ErrNoMatch},
		{"SMTP", []byte("220 mail.example ESMTP\r\n"), ErrNoMatch},
		{"MySQL", []byte{0x4a, 0, 0, 0, 0x0a, '8', '.', '0'}, ErrNoMatch},
		{"HTTP/1 response", []byte("HTTP/1.1 400 Bad Request\r\n"), ErrNoMatch},
	} {
		err := ServerPreface(tc.in)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: ServerPreface(% x) = %v, want %v", tc.name, tc.in, err, tc.want)
		}
	}
	// The proxy asks on every connection whose server speaks first.
	smtp := []byte("220 mail.example ESMTP\r\n")
	if n := testing.AllocsPerRun(100, func() { ServerPreface(smtp) }); n != 0 {
		t.Errorf("ServerPreface allocates %v times on an SMTP greeting, want 0", n)
	}
}

// FuzzServerPreface holds ServerPreface to its contract on any input:
//   - it never panics and answers nil, ErrNeedMore or an error wrapping
//     ErrNoMatch;
//   - ErrNeedMore is honest: every prefix of an input that needs more
//     needs more, and an answer does not change as bytes are appended;
//   - it accepts exactly the first frames that x/net/http2 reads as a
//     valid SETTINGS frame a server may send first.
func FuzzServerPreface(f *testing.F) {
	f.Add(h2Frames(f, func(fr *http2.Framer) error {
		return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16384})
	}))
	f.Add(netHTTP2Greeting(f))
	f.Add([]byte{0, 0, 0, 4, 1, 0, 0, 0, 0})
	f.Add([]byte("220 ready\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		err := ServerPreface(in)
		switch {
		case err == nil:
			for _, tail := range [][]byte{{0}, {0, 0, 0, 4, 0, 0, 0, 0, 1}, bytes.Repeat([]byte{0xff}, 64)} {
				if err := ServerPreface(append(slices.Clip(in), tail...)); err != nil {
					t.Fatalf("a preface, then with % x appended %v", tail, err)
				}
			}
		case err == ErrNeedMore:
			for i := range in {
				if err := ServerPreface(in[:i]); err != ErrNeedMore {
					t.Fatalf("input needs more but its %d-byte prefix gives %v", i, err)
				}
			}
		case errors.Is(err, ErrNoMatch):
			if err2 := ServerPreface(append(slices.Clip(in), make([]byte, 64)...)); !errors.Is(err2, ErrNoMatch) {
				t.Fatalf("no match (%v), but with bytes appended %v", err, err2)
			}
		default:
			t.Fatalf("error %v is neither ErrNeedMore nor ErrNoMatch", err)
		}

		fr, rerr := http2.NewFramer(nil, bytes.NewReader(in)).ReadFrame()
		sf, ok := fr.(*http2.SettingsFrame)
		valid := rerr == nil && ok && !sf.IsAck() && sf.Length <= 1<<14 && in[5]&0x80 == 0 &&
			sf.ForeachSetting(func(s http2.Setting) error {
				if s.ID == 0x9 && s.Val > 1 { // NO_RFC7540_PRIORITIES, which x/net does not check
					return errors.New("out of range")
				}
				return s.Valid()
			}) == nil
		if valid != (err == nil) {
			t.Fatalf("x/net/http2 reads a valid first SETTINGS frame: %v (%v); ServerPreface says %v", valid, rerr, err)
		}
	})
}
