package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const explainConfig = `
policy:
  rules:
  - name: api-read
    action: allow
    ports: [8080]
    from: {identities: ["spiffe://cluster.local/ns/shop/sa/web"]}
    http: {methods: [GET], paths: ["/api/*"]}
  - name: no-debug
    action: deny
    http: {headers: {x-debug: {present: true}}}
`

// TestPolicyExplain: the exit status says allowed (0) or denied (1), the
// output names the rule and the condition that decided, and bad flags
// or a bad config are usage errors (2) that name the flag or field.
func TestPolicyExplain(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "proxy.yaml")
	if err := os.WriteFile(cfg, []byte(explainConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("policy:\n  rules:\n  - {name: a, action: permit}\n"), 0o600)
	web := "spiffe://cluster.local/ns/shop/sa/web"
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr string
	}{
		{"allowed", []string{"--from", web, "--method", "GET", "--path", "/api/items"}, 0,
			[]string{"decision: ALLOW by api-read (policy main)", "1. api-read (allow): MATCHED"}, ""},
		{"denied by the default", []string{"--from", web, "--method", "POST", "--path", "/api/items"}, 1,
			[]string{"decision: DENY by default (policy default)", "api-read: http.methods: method POST not in [GET]", "FAIL http.methods: method POST not in [GET]"}, ""},
		{"denied by a rule", []string{"--from", web, "--path", "/api/x", "--header", "x-debug=1"}, 1,
			[]string{"decision: DENY by no-debug (policy main)", `ok   http.headers.x-debug: x-debug: "1" in present`}, ""},
		{"opaque fails closed", []string{"--from", web}, 1,
			[]string{"decision: DENY by no-debug", "fail closed", "request:  none (the connection is taken as not HTTP)"}, ""},
		{"a port declared opaque is not HTTP's", []string{"--from", web, "--port", "5432"}, 0,
			[]string{"decision: ALLOW by default", "2. no-debug (deny): skipped: it has HTTP or JWT conditions, and port 5432 is declared opaque (protocols.ports)"}, ""},
		{"bad flags", []string{"--from", "web", "--port", "0"}, 2, nil, `--from "web": not a SPIFFE ID`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"policy", "explain", "--config", cfg, "--port", "8080"}, tc.args...)
			var stdout, stderr bytes.Buffer
			if code := mainExit(args, &stdout, &stderr); code != tc.code {
				t.Errorf("exit %d; want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout.String(), stderr.String())
			}
			for _, w := range tc.stdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			if !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, stderr.String())
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := mainExit([]string{"policy", "explain", "--config", bad, "--port", "80"}, &stdout, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), `policy.rules[0].action: "permit" is not an action`) {
		t.Errorf("bad config: exit %d, stderr %q", code, stderr.String())
	}
}
