package proxy

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"meshgate/proxy/appprobe"
)

// TestAppProbes: the health port serves the app's probes beside its own.
func TestAppProbes(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ready" {
			http.Error(w, "not ready", http.StatusInternalServerError)
		}
	}))
	defer app.Close()
	port := int(netip.MustParseAddrPort(strings.TrimPrefix(app.URL, "http://")).Port())
	r := startProxy(t, testConfig(), WithAppProbes(appprobe.Set{
		"/app-health/web/readyz": {HTTPGet: &appprobe.HTTPGet{Path: "/ready", Port: port}},
		"/app-health/web/livez":  {HTTPGet: &appprobe.HTTPGet{Path: "/live", Port: port}},
	}))
	health := "http://" + r.Addrs().Health.String()
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/app-health/web/readyz", 200, "app httpGet probe passed\n"},
		{"/app-health/web/livez", 503, "app httpGet probe failed: GET " + app.URL + "/live: status 500 Internal Server Error\n"},
		{"/app-health/web/startupz", 404, "404 page not found\n"},
		{"/healthz/ready", 200, "ready\n"},
	} {
		status, body := httpGet(t, http.MethodGet, health+tc.path)
		if status != tc.status || body != tc.body {
			t.Errorf("GET %s: %d %q, want %d %q", tc.path, status, body, tc.status, tc.body)
		}
	}
}
