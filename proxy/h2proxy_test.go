package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Pair starts an h2c app serving h behind a pair of sidecars and
// returns the address its clients dial.
func h2Pair(t *testing.T, h http.HandlerFunc) string {
	return startMeshPair(t, startHTTPApp(t, "", h), pairOptions{}).client.out()
}

// TestH2TrailersOnly: a gRPC answer that is all headers (an error before
// any message) crosses the sidecars as one HEADERS frame that ends the
// stream, as the app sent it: split into headers and an empty DATA
// frame, gRPC clients reject it (see flushNote).
func TestH2TrailersOnly(t *testing.T) {
	addr := h2Pair(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "5")
		w.Header().Set("Grpc-Message", "not found")
		w.WriteHeader(http.StatusOK)
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "app"}, {":path", "/pkg.Svc/Get"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	var frames []string
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %q: %v", frames, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
			continue
		case *http2.MetaHeadersFrame:
			if f.StreamID != 1 {
				continue
			}
			frames = append(frames, "HEADERS grpc-status="+f.PseudoValue("status")+"/"+headerValue(f, "grpc-status"))
			if f.StreamEnded() {
				frames[len(frames)-1] += " END_STREAM"
			}
		case *http2.DataFrame:
			if f.StreamID != 1 {
				continue
			}
			frames = append(frames, "DATA")
			if f.StreamEnded() {
				frames[len(frames)-1] += " END_STREAM"
			}
		default:
			continue
		}
		if f.Header().Flags.Has(http2.FlagHeadersEndStream) {
			break
		}
	}
	if want := []string{"HEADERS grpc-status=200/5 END_STREAM"}; strings.Join(frames, "; ") != strings.Join(want, "; ") {
		t.Errorf("stream 1 got %q, want %q", frames, want)
	}
}

func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.RegularFields() {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// TestH2Stream: an answer of unknown length (a gRPC stream) has its
// header sent at once and every write passed on as it comes, not held
// until the app has written more or ended.
func TestH2Stream(t *testing.T) {
	next := make(chan struct{})
	addr := h2Pair(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		for _, s := range []string{"a", "b"} {
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
			io.WriteString(w, s)
			http.NewResponseController(w).Flush()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/pkg.Svc/Stream", nil)
	resp, err := h2cClient(t).Do(req) // returns with the header: nothing was written yet
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 8)
	for _, want := range []string{"a", "b"} {
		next <- struct{}{}
		n, err := resp.Body.Read(buf)
		if got := string(buf[:n]); got != want || err != nil {
			t.Fatalf("read %q (%v), want %q", got, err, want)
		}
	}
	if rest, err := io.ReadAll(resp.Body); len(rest) != 0 || err != nil {
		t.Errorf("after the stream: %q, %v", rest, err)
	}
}

// TestH2Informational: a 1xx answer (103 Early Hints) reaches the client
// before the final one, with its own header.
func TestH2Informational(t *testing.T) {
	addr := h2Pair(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "done")
	})
	var got []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got = append(got, http.StatusText(code)+": "+h.Get("Link"))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, "http://"+addr+"/", nil)
	resp, err := h2cClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "Early Hints: </style.css>; rel=preload"; len(got) != 1 || got[0] != want || string(body) != "done" || resp.Header.Get("Link") != "" {
		t.Errorf("1xx %q, final %q with Link %q; want [%q], done without Link", got, body, resp.Header.Get("Link"), want)
	}
}

// TestH2RequestHeaders: what the app sees of an HTTP/2 request's header
// through the sidecars: TE trailers and the client's own headers kept,
// hop-by-hop and forwarding ones removed as ReverseProxy removes them,
// no User-Agent made up, request trailers passed on; and a query that
// ReverseProxy would re-encode is re-encoded (it serves those).
func TestH2RequestHeaders(t *testing.T) {
	type seen struct {
		header  http.Header
		trailer http.Header
		query   string
	}
	got := make(chan seen, 1)
	addr := h2Pair(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		got <- seen{r.Header.Clone(), r.Trailer.Clone(), r.URL.RawQuery}
	})
	c := h2cClient(t)

	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader("body"))
	req.Header["Te"] = []string{"trailers"}
	req.Header["User-Agent"] = nil // sent without one
	req.Header.Set("Proxy-Authorization", "Basic eA==")
	req.Header.Set("X-Forwarded-For", "192.0.2.1")
	req.Header.Set("X-App", "kept")
	req.Trailer = http.Header{"X-Sum": nil}
	req.Body = io.NopCloser(&trailerSetter{r: strings.NewReader("body"), set: func() { req.Trailer.Set("X-Sum", "42") }})
	req.ContentLength = -1
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	s := <-got
	for k, want := range map[string]string{"Te": "trailers", "X-App": "kept", "User-Agent": "", "Proxy-Authorization": "", "X-Forwarded-For": "192.0.2.1", hdrAppProtocol: ""} {
		if v := s.header.Get(k); v != want {
			t.Errorf("app saw %s %q, want %q", k, v, want)
		}
	}
	if v := s.trailer.Get("X-Sum"); v != "42" {
		t.Errorf("app saw trailer X-Sum %q, want 42", v)
	}

	resp, _ = get(t, c, "http://"+addr+"/?a=1;b=2&c=%zz&d=4", nil)
	s = <-got
	if resp.StatusCode != 200 || s.query != "d=4" {
		t.Errorf("query a=1;b=2&c=%%zz&d=4 reached the app as %q (status %d), want ReverseProxy's d=4", s.query, resp.StatusCode)
	}
}

// trailerSetter reads r, and calls set at its end, before the EOF (when
// a client sends the request's trailers).
type trailerSetter struct {
	r   io.Reader
	set func()
}

func (t *trailerSetter) Read(b []byte) (int, error) {
	n, err := t.r.Read(b)
	if err == io.EOF {
		t.set()
	}
	return n, err
}

// TestH2ResponseHeaders: the answer's hop-by-hop headers are removed, and
// trailers the app did not announce reach the client as trailers.
func TestH2ResponseHeaders(t *testing.T) {
	addr := h2Pair(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App", "kept")
		w.Header().Set("Proxy-Authenticate", "Basic")
		io.WriteString(w, "body")
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
	})
	resp, body := get(t, h2cClient(t), "http://"+addr+"/", nil)
	if body != "body" || resp.Header.Get("X-App") != "kept" || resp.Header.Get("Proxy-Authenticate") != "" || resp.Trailer.Get("Grpc-Status") != "0" {
		t.Errorf("got %q, header %v, trailer %v; want body, X-App kept, no Proxy-Authenticate, Grpc-Status 0 trailer", body, resp.Header, resp.Trailer)
	}
}

func TestIsEventStream(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream":                true,
		"Text/Event-Stream; charset=utf-8": true,
		" text/event-stream ;":             true,
		"text/event-streams":               false,
		"text/plain":                       false,
		"":                                 false,
	} {
		if got := isEventStream(ct); got != want {
			t.Errorf("isEventStream(%q) = %v, want %v", ct, got, want)
		}
	}
}

// TestH2Balanced: HTTP/2 requests are balanced as HTTP/1 ones are (see
// TestBalancedConnections and TestBalancerToldSetUpApart), with the
// request's one trace reporting to the balancer: an endpoint that cannot
// be connected to is reported failed and the next tried, the app sees
// no error, each request is counted under the peer sidecar's identity,
// and a connection's set-up is told apart from the latency after it.
func TestH2Balanced(t *testing.T) {
	app, _ := startL7App(t)
	good, b, cli := startBalanced(t, app, nil, closedAddr(t))
	c := h2cClient(t)
	for i := range 4 {
		if resp, body := get(t, c, "http://"+cli.out()+"/", nil); resp.StatusCode != 200 || body != "HTTP/2.0" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	waitFor(t, func() bool { return b.count(good.String()+" ok") >= 4 })
	if n := b.count(b.eps[0].String() + " failed"); n < 2 {
		t.Errorf("reports %q: want the dead endpoint reported failed each time it was picked", b.got())
	}
	if n := cli.counter(t, "meshgate_http_requests_total", map[string]string{"direction": "outbound", "peer_identity": serverID}); n != 4 {
		t.Errorf("%v requests counted from %s, want 4", n, serverID)
	}

	_, b, cli = startBalanced(t, app, nil)
	c = h2cClient(t)
	for _, step := range []struct {
		what string
		want []string
	}{
		// Detection dials while it waits for the app's bytes; the request
		// then goes by a pooled connection, opened for it.
		{"first request", []string{"set-up", "set-up+latency"}},
		{"second request", []string{"latency"}},
	} {
		n := len(b.phases())
		if resp, body := get(t, c, "http://"+cli.out()+"/", nil); resp.StatusCode != 200 || body != "HTTP/2.0" {
			t.Fatalf("%s: %d %q", step.what, resp.StatusCode, body)
		}
		waitFor(t, func() bool { return len(b.phases()) >= n+len(step.want) })
		if got := b.phases()[n:]; strings.Join(got, ",") != strings.Join(step.want, ",") {
			t.Errorf("%s: reports %q, want %q", step.what, got, step.want)
		}
	}
}
