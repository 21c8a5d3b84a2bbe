package proxy

import (
	"net/http"
	"regexp"
	"testing"
)

// ensureRequestIDs runs the request-ids stage on a request with header h.
func ensureRequestIDs(h http.Header) {
	requestIDs{}.Decide(&Request{Dir: Outbound, msg: httpFields{&http.Request{Header: h}}})
}

// TestEnsureRequestIDs: the request-ids stage makes the identifiers an
// app did not send, and keeps those it did.
func TestEnsureRequestIDs(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	traceparent := regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-01$`)

	t.Run("generated", func(t *testing.T) {
		h := http.Header{}
		ensureRequestIDs(h)
		id := h.Get(hdrRequestID)
		if !uuid.MatchString(id) {
			t.Errorf("X-Request-Id %q is no version 4 UUID", id)
		}
		if got := h.Values(hdrCorrelation); len(got) != 1 || got[0] != id {
			t.Errorf("X-Correlation-Id %q, want the request ID %q", got, id)
		}
		if tp := h.Get(hdrTraceparent); !traceparent.MatchString(tp) {
			t.Errorf("traceparent %q is not a new sampled W3C trace", tp)
		}
		h2 := http.Header{}
		ensureRequestIDs(h2)
		if h2.Get(hdrRequestID) == id || h2.Get(hdrTraceparent) == h.Get(hdrTraceparent) {
			t.Errorf("two requests got the same IDs: %v and %v", h, h2)
		}
	})
	t.Run("kept", func(t *testing.T) {
		h := http.Header{hdrRequestID: {"r"}, hdrCorrelation: {"c"}, hdrTraceparent: {"t"}}
		ensureRequestIDs(h)
		want := http.Header{hdrRequestID: {"r"}, hdrCorrelation: {"c"}, hdrTraceparent: {"t"}}
		for k, v := range want {
			if got := h.Values(k); len(got) != 1 || got[0] != v[0] {
				t.Errorf("%s: %q, want %q", k, got, v)
			}
		}
	})
	t.Run("correlation from request ID", func(t *testing.T) {
		h := http.Header{hdrRequestID: {"r"}}
		ensureRequestIDs(h)
		if got := h.Get(hdrCorrelation); got != "r" {
			t.Errorf("X-Correlation-Id %q, want the app's request ID", got)
		}
	})
}

func BenchmarkEnsureRequestIDs(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		ensureRequestIDs(http.Header{})
	}
}
