package appprobe

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	svc := "api"
	got, err := Parse([]byte(`{
		"/app-health/web/readyz": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP", "httpHeaders": [{"name": "X-A", "value": "1"}]}, "timeoutSeconds": 3},
		"/app-health/web/livez": {"grpc": {"port": 9090, "service": "api"}, "timeoutSeconds": 1},
		"/app-health/db/startupz": {"tcpSocket": {"port": 5432, "host": "10.0.0.7"}}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Set{
		"/app-health/web/readyz":  {HTTPGet: &HTTPGet{Path: "/ready", Port: 8080, Scheme: "HTTP", HTTPHeaders: []Header{{"X-A", "1"}}}, TimeoutSeconds: 3},
		"/app-health/web/livez":   {GRPC: &GRPC{Port: 9090, Service: &svc}, TimeoutSeconds: 1},
		"/app-health/db/startupz": {TCPSocket: &TCPSocket{Port: 5432, Host: "10.0.0.7"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Parse mismatch (-want +got):\n%s", diff)
	}
	if d := got["/app-health/db/startupz"].Timeout().String(); d != "1s" {
		t.Errorf("default timeout %s, want 1s", d)
	}
}

func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct{ name, json, want string }{
		{"not JSON", `{`, "not a JSON object of path to probe: unexpected end of JSON input"},
		{"null", `null`, `not a JSON object of path to probe: want e.g. {"/app-health/web/readyz":{"httpGet":{"path":"/ready","port":8080}}}`},
		{"a list", `[]`, "not a JSON object of path to probe: json: cannot unmarshal array into Go value of type map[string]json.RawMessage"},
		{"port out of range", `{"/app-health/a/readyz": {"httpGet": {"port": 70000}}}`,
			`entry "/app-health/a/readyz": httpGet.port 70000: want 1-65535`},
		{"port 0", `{"/app-health/a/readyz": {"tcpSocket": {}}}`,
			`entry "/app-health/a/readyz": tcpSocket.port 0: want 1-65535`},
		{"named port", `{"/app-health/a/readyz": {"grpc": {"port": "grpc"}}}`,
			`entry "/app-health/a/readyz": grpc.port is a string (a named port?): want the port number (meshgate inject resolves named ports)`},
		{"two handlers", `{"/app-health/a/livez": {"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}}`,
			`entry "/app-health/a/livez": two handlers or more: want exactly one of httpGet, grpc or tcpSocket`},
		{"no handler", `{"/app-health/a/livez": {"timeoutSeconds": 1}}`,
			`entry "/app-health/a/livez": no handler: want one of httpGet, grpc or tcpSocket (exec probes stay with kubelet)`},
		{"exec", `{"/app-health/a/livez": {"exec": {"command": ["true"]}}}`,
			`entry "/app-health/a/livez": unknown field "exec"`},
		{"unknown scheme", `{"/app-health/a/livez": {"httpGet": {"port": 80, "scheme": "https"}}}`,
			`entry "/app-health/a/livez": httpGet.scheme "https": want HTTP or HTTPS`},
		{"not under /app-health/", `{"/healthz/ready": {"httpGet": {"port": 80}}}`,
			`entry "/healthz/ready": the path must be under /app-health/, e.g. /app-health/web/readyz`},
		{"just the prefix", `{"/app-health/": {"httpGet": {"port": 80}}}`,
			`entry "/app-health/": the path must be under /app-health/, e.g. /app-health/web/readyz`},
		{"unclean path", `{"/app-health/a/../../x": {"httpGet": {"port": 80}}}`,
			`entry "/app-health/a/../../x": the path must be a clean path of letters, digits and - . _ ~ /`},
		{"pattern characters", `{"/app-health/{x}": {"httpGet": {"port": 80}}}`,
			`entry "/app-health/{x}": the path must be a clean path of letters, digits and - . _ ~ /`},
		{"bad host", `{"/app-health/a/readyz": {"tcpSocket": {"port": 80, "host": "a b"}}}`,
			`entry "/app-health/a/readyz": tcpSocket.host "a b": want an IP address or a host name`},
		{"bad header", `{"/app-health/a/readyz": {"httpGet": {"port": 80, "httpHeaders": [{"name": "a b", "value": "x"}]}}}`,
			`entry "/app-health/a/readyz": httpGet.httpHeaders: "a b" is not a header name`},
		{"negative timeout", `{"/app-health/a/readyz": {"tcpSocket": {"port": 80}, "timeoutSeconds": -1}}`,
			`entry "/app-health/a/readyz": timeoutSeconds -1: want 1 or more (0: the default, 1)`},
		{"every problem at once", `{"/x": {}, "/app-health/b": {"httpGet": {"port": 0}}}`,
			"entry \"/app-health/b\": httpGet.port 0: want 1-65535\n" +
				"entry \"/x\": the path must be under /app-health/, e.g. /app-health/web/readyz; no handler: want one of httpGet, grpc or tcpSocket (exec probes stay with kubelet)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := Parse([]byte(tc.json))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", set)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("error:\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{`{}`, `{"/app-health/a/readyz":{"httpGet":{"path":"/r","port":8080}}}`, `{"/app-health/a":{"grpc":{"port":1}}}`, `[`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := Parse(data)
		if err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("empty error")
			}
			return
		}
		if err := set.Validate(); err != nil {
			t.Fatalf("Parse accepted what Validate refuses: %v", err)
		}
	})
}
