package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProxyRejects pins the refusals of 'meshgate proxy': every problem
// of the flags at once, each naming its flag and the fix.
func TestProxyRejects(t *testing.T) {
	tmp := t.TempDir()
	token := filepath.Join(tmp, "token")
	os.WriteFile(token, []byte("\n"), 0o600)
	badRegistry := filepath.Join(tmp, "registry.yaml")
	os.WriteFile(badRegistry, []byte("services:\n- name: web.shop.mesh\n  meshed: true\n  endpoints: [10.0.0.1]\n- name: api.shop.mesh\n  identity: spiffe://a.example/ns/shop/sa/api\n  meshed: true\n  endpoints: [10.0.0.1]\n"), 0o600)
	goodRegistry := filepath.Join(tmp, "good.yaml")
	os.WriteFile(goodRegistry, []byte("services: []\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad mode and CIDRs", []string{"--mtls-mode", "tight", "--mesh-cidrs", "10.1.2.3/8,fd00::/8,mesh"}, strings.Join([]string{
			`--mtls-mode "tight": want strict, permissive or disable`,
			`--mesh-cidrs 10.1.2.3/8: bits set past the /8; want 10.0.0.0/8`,
			`--mesh-cidrs "mesh": not an IP address or CIDR; want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`,
		}, "\n")},
		{"two sources", []string{"--cert-dir", tmp, "--workload-api", "unix:///run/spire.sock"},
			"--cert-dir, --workload-api: give one certificate source, not 2"},
		{"CA flags without the CA", []string{"--id", "spiffe://a.example/ns/default/sa/web", "--ca-root", "root.pem"}, strings.Join([]string{
			"--id: goes with --ca-server; add --ca-server ADDR or drop --id",
			"--ca-root: goes with --ca-server; add --ca-server ADDR or drop --ca-root",
		}, "\n")},
		{"the CA without its flags", []string{"--ca-server", "ca:15012"}, strings.Join([]string{
			"--id is required with --ca-server: the sidecar's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web",
			"--ca-token-file is required with --ca-server: a file holding the bootstrap token issued for --id",
			"--ca-root is required with --ca-server: the CA's root.pem, to verify the CA server",
		}, "\n")},
		{"the CA with bad flags", []string{"--ca-server", "ca:15012", "--id", "web", "--ca-token-file", token, "--ca-root", filepath.Join(tmp, "none.pem"), "--ca-wait", "0s"}, strings.Join([]string{
			`--id "web": not a SPIFFE ID (scheme is missing or invalid); want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
			"--ca-token-file " + token + ": empty; want the bootstrap token on one line",
			"--ca-root " + filepath.Join(tmp, "none.pem") + ": open " + filepath.Join(tmp, "none.pem") + ": no such file or directory; want a PEM file of root certificates, like a CA's root.pem",
			"--ca-wait 0s: want a positive duration, e.g. 30s",
		}, "\n")},
		{"no certificates there", []string{"--cert-dir", tmp},
			"--cert-dir " + tmp + ": open " + filepath.Join(tmp, "cert.pem") + ": no such file or directory; want cert.pem, key.pem and bundle.pem there, e.g. from 'meshgate ca issue --out " + tmp + "'"},
		{"bad registry", []string{"--registry", badRegistry},
			"--registry " + badRegistry + ": services[0].identity: a meshed service needs the SPIFFE ID its endpoints present"},
		{"registry without the DNS proxy", []string{"--registry", goodRegistry, "--dns-listen", ""},
			`--registry: its names are answered by the DNS proxy, which --dns-listen "" turns off`},
		{"strict without certificates", []string{"--mtls-mode", "strict"},
			"proxy: invalid config: mtls.mode: strict needs the mesh certificates; give --cert-dir, or set mtls.mode to disable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := runProxy(context.Background(), append(tc.args, "--config", testProxyConfig(t)), io.Discard, io.Discard)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error:\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}

// testProxyConfig writes a config binding every port on loopback.
func testProxyConfig(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "proxy.yaml")
	cfg := "logLevel: error\noutbound: {port: 0}\ninbound: {port: 0}\nadmin: {address: \"127.0.0.1:0\"}\nmetrics: {address: \"127.0.0.1:0\"}\nhealth: {address: \"127.0.0.1:0\"}\n"
	if err := os.WriteFile(f, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
