package proxy

import (
	"bytes"
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestExplainResilience: explain says which resilience policy an
// outbound call gets: its destination, route, timeouts and retries.
func TestExplainResilience(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
resilience:
  destinations:
  - name: api
    match: {hosts: [api.shop.mesh]}
    timeouts: {request: 5s, perTry: 1s}
    retries: {on: [connect-failure, "503", unavailable], budget: {ratio: 0.1, minPerSecond: 5}}
    routes:
    - {name: checkout, match: {methods: [POST], paths: [/checkout]}, retries: {attempts: 0}}
`))
	if err != nil {
		t.Fatal(err)
	}
	explain := func(v url.Values) string {
		t.Helper()
		q, err := ParseExplainQuery(v, func(k string) string { return k })
		if err != nil {
			t.Fatal(err)
		}
		res, err := Explain(context.Background(), cfg, q)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		res.Resilience.format(&b)
		return b.String()
	}
	out := url.Values{"direction": {"outbound"}, "port": {"8080"}, "to-host": {"api.shop.mesh"}, "method": {"GET"}, "path": {"/items"}}
	want := `resilience:
  destination api
  route       none (the destination's own settings)
  timeouts    connect 10s (timeouts.connect), idle 1h0m0s (timeouts.idle), request 5s, perTry 1s, streamIdle none
  retries     attempts 2 on [connect-failure, 503, unavailable], methods GET,HEAD,PUT,DELETE,OPTIONS, backoff 25ms to 250ms, maxBodyBytes 65536, maxRetryAfter 10s
  budget      0.1 of the destination's requests + 5 a second
`
	if diff := cmp.Diff(want, explain(out)); diff != "" {
		t.Errorf("explain GET /items (-want +got):\n%s", diff)
	}
	out.Set("method", "POST")
	out.Set("path", "/checkout")
	if got := explain(out); !strings.Contains(got, "route       checkout\n") || !strings.Contains(got, "retries     none (attempts 0)\n") {
		t.Errorf("explain POST /checkout:\n%s", got)
	}
	out.Set("to-host", "db.shop.mesh")
	if got := explain(out); !strings.Contains(got, "destination default (no entry") {
		t.Errorf("explain of another host:\n%s", got)
	}
	if got := explain(url.Values{"port": {"8080"}}); got != "" {
		t.Errorf("explain inbound: %q, want nothing of resilience", got)
	}
}
