package main

import (
	"flag"
	"io"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestCertFlagsProxyArgs: enroll hands the sidecar the certificate flags
// it was given, and only those, with paths made absolute (the sidecar
// runs from another directory).
func TestCertFlagsProxyArgs(t *testing.T) {
	cwd, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, nil},
		{[]string{"--cert-dir", "certs/web"}, []string{"--cert-dir", filepath.Join(cwd, "certs/web")}},
		{[]string{"--ca-server", "ca:15012", "--id", "spiffe://td/ns/a/sa/b", "--ca-token-file", "/t", "--ca-root", "r.pem", "--dns", "a.example", "--dns", "b.example"},
			[]string{"--ca-root", filepath.Join(cwd, "r.pem"), "--ca-server", "ca:15012", "--ca-token-file", "/t", "--dns", "a.example", "--dns", "b.example", "--id", "spiffe://td/ns/a/sa/b"}},
		{[]string{"--workload-api", "unix:///run/spire/agent.sock"}, []string{"--workload-api", "unix:///run/spire/agent.sock"}},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var c certFlags
		c.add(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, c.proxyArgs()); diff != "" {
			t.Errorf("%q: proxy args (-want +got):\n%s", tc.args, diff)
		}
	}
}
