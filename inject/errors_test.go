package inject

import (
	"os/exec"
	"strings"
	"testing"
)

// podWith is a Deployment whose template has the annotations ann (YAML
// lines, indented) and whose container has the extra lines ctr.
func podWith(ann, ctr string) string {
	return `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    metadata:
      annotations:
        x: y
` + ann + `    spec:
      containers:
      - name: web
        image: demo:1
        ports:
        - name: http
          containerPort: 8080
` + ctr
}

func TestErrors(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{
			name: "port not a number",
			in:   podWith("        meshgate.io/exclude-inbound-ports: \"22,ssh\"\n", ""),
			want: `document 1 (deployment/web): annotation meshgate.io/exclude-inbound-ports "22,ssh": "ssh": not a port number; want a comma-separated list like 80,443`,
		},
		{
			name: "port out of range and port 0",
			in:   podWith("        meshgate.io/exclude-outbound-ports: \"0,70000\"\n", ""),
			want: `document 1 (deployment/web): annotation meshgate.io/exclude-outbound-ports "0,70000": "0": port 0 is not a port; want a port from 1 to 65535` + "\n" +
				`document 1 (deployment/web): annotation meshgate.io/exclude-outbound-ports "0,70000": "70000": out of range; want a port from 1 to 65535`,
		},
		{
			name: "inbound ports star is all, but not inside a list",
			in:   podWith("        meshgate.io/inbound-ports: \"80,*\"\n", ""),
			want: `document 1 (deployment/web): annotation meshgate.io/inbound-ports "80,*": "*": not allowed in this list; list the ports`,
		},
		{
			name: "CIDR with host bits",
			in:   podWith("        meshgate.io/exclude-outbound-cidrs: \"10.1.2.3/8\"\n", ""),
			want: `document 1 (deployment/web): annotation meshgate.io/exclude-outbound-cidrs "10.1.2.3/8": 10.1.2.3/8: bits set past the /8; want 10.0.0.0/8`,
		},
		{
			name: "not a CIDR",
			in:   podWith("        meshgate.io/include-outbound-cidrs: \"cluster\"\n", ""),
			want: `document 1 (deployment/web): annotation meshgate.io/include-outbound-cidrs "cluster": "cluster": not an IP address or CIDR; want a CIDR like 10.0.0.0/8 or an address like 10.1.2.3`,
		},
		{
			name: "capture-dns not a boolean",
			in:   podWith("        meshgate.io/capture-dns: \"yes\"\n", ""),
			want: `document 1 (deployment/web): annotation meshgate.io/capture-dns: "yes": want "true" or "false"`,
		},
		{
			name: "unquoted annotation value",
			in:   podWith("        meshgate.io/capture-dns: true\n", ""),
			want: `document 1 (deployment/web): annotation meshgate.io/capture-dns: true is a boolean; annotation values are strings: quote it`,
		},
		{
			name: "mtls mode",
			in:   podWith("        meshgate.io/mtls-mode: strictest\n", ""),
			want: `document 1 (deployment/web): annotation meshgate.io/mtls-mode: "strictest": want strict, permissive or disable`,
		},
		{
			name: "inject annotation",
			in:   podWith("        meshgate.io/inject: \"no\"\n", ""),
			want: `document 1 (deployment/web): annotation meshgate.io/inject: "no": want "true" or "false" (quoted)`,
		},
		{
			name: "named probe port that does not exist",
			in:   podWith("", "        readinessProbe:\n          httpGet:\n            port: http-admin\n"),
			want: `document 1 (deployment/web): container "web": readinessProbe.httpGet.port: "http-admin": the container has no port of that name; add it to the container's ports or give the port number`,
		},
		{
			name: "named TCP probe port that does not exist",
			in:   podWith("", "        livenessProbe:\n          tcpSocket:\n            port: db\n"),
			want: `document 1 (deployment/web): container "web": livenessProbe.tcpSocket.port: "db": the container has no port of that name; add it to the container's ports or give the port number`,
		},
		{
			name: "gRPC probe port by name",
			in:   podWith("", "        startupProbe:\n          grpc:\n            port: http\n"),
			want: `document 1 (deployment/web): container "web": startupProbe.grpc.port: "http": a gRPC probe's port is a number`,
		},
		{
			// YAML 1.1 reads an unquoted on as true.
			name: "every problem at once",
			in: podWith("        meshgate.io/exclude-inbound-ports: \"x\"\n        meshgate.io/mtls-mode: on\n",
				"        readinessProbe:\n          httpGet:\n            port: nope\n"),
			want: `document 1 (deployment/web): annotation meshgate.io/exclude-inbound-ports "x": "x": not a port number; want a comma-separated list like 80,443` + "\n" +
				`document 1 (deployment/web): annotation meshgate.io/mtls-mode: true is a boolean; annotation values are strings: quote it` + "\n" +
				`document 1 (deployment/web): container "web": readinessProbe.httpGet.port: "nope": the container has no port of that name; add it to the container's ports or give the port number`,
		},
		{
			name: "item of a list, in the second document",
			in:   "kind: ConfigMap\nmetadata: {name: c}\n---\nkind: List\nitems:\n- kind: Service\n- kind: Pod\n  metadata: {name: p, annotations: {meshgate.io/capture-dns: \"1\"}}\n  spec: {containers: [{name: a, image: b}]}\n",
			want: `document 2, item 2 (pod/p): annotation meshgate.io/capture-dns: "1": want "true" or "false"`,
		},
		{
			name: "not an object",
			in:   "kind: Pod\n---\n- a\n- b\n",
			want: `document 2: a list, not a Kubernetes object (a mapping with apiVersion and kind)`,
		},
		{
			name: "YAML syntax",
			in:   "kind: Pod\nmetadata: {name: [\n",
			want: `document 1: yaml: line 2: did not find expected node content`,
		},
		{
			name: "containers not a list",
			in:   "kind: Pod\nmetadata: {name: p}\nspec:\n  containers: {name: a}\n",
			want: `document 1 (pod/p): spec.containers: want a list, not an object`,
		},
	}
	cfg := testConfig(nil)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := cfg.Manifests([]byte(tc.in))
			if err == nil {
				t.Fatalf("no error; output:\n%s", out)
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n%s\nwant:\n%s", err, tc.want)
			}
			if out != nil {
				t.Errorf("output with an error:\n%s", out)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"defaults", func(*Config) {}, ""},
		{"secret with a name", func(c *Config) { c.CertSource, c.CertSecret = CertSourceSecret, "web-certs" }, ""},
		{"everything wrong", func(c *Config) {
			c.Image, c.CAServer, c.TrustDomain, c.CertSecret, c.MTLSMode = "", "ca", "Cluster Local", "x", "on"
		}, "--image: empty; name the meshgate image, e.g. meshgate:latest\n" +
			`--ca-server "ca": want host:port, e.g. meshgate-ca.meshgate-system.svc:15012` + "\n" +
			`--trust-domain "Cluster Local": want a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_'), e.g. cluster.local` + "\n" +
			"--cert-secret with --cert-source ca-server: the secret is only read with --cert-source secret; drop one\n" +
			`--mtls-mode "on": want strict, permissive or disable`},
		{"cert source", func(c *Config) { c.CertSource = "vault" }, `--cert-source "vault": want ca-server or secret`},
		{"secret name", func(c *Config) { c.CertSource, c.CertSecret = CertSourceSecret, "Web_Certs" },
			`--cert-secret "Web_Certs": not a secret name (lowercase letters, digits, '-' and '.')`},
		{"port zero", func(c *Config) { c.CAServer = "ca:0" }, `--ca-server "ca:0": want host:port, e.g. meshgate-ca.meshgate-system.svc:15012`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			got := ""
			if err := c.Validate(); err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("Validate:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

// TestRestoreNeedsOriginal: a probe pointing at the sidecar's app-health
// path with no original to restore is refused, not wrapped again.
func TestRestoreNeedsOriginal(t *testing.T) {
	in := podWith("", "        readinessProbe:\n          httpGet:\n            port: 15021\n            path: /app-health/web/readyz\n")
	_, _, err := testConfig(nil).Manifests([]byte(in))
	want := `document 1 (deployment/web): container "web": readinessProbe: goes to the sidecar's /app-health/web/readyz but the sidecar's MESHGATE_APP_PROBES has no original for it; write the original probe back`
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %s", err, want)
	}
}

// TestBinaryLean keeps the Kubernetes libraries out of the meshgate
// binary: they are for the tests only.
func TestBinaryLean(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "meshgate/cmd/meshgate").CombinedOutput()
	if err != nil {
		t.Skipf("go list: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "k8s.io/") || strings.HasPrefix(p, "sigs.k8s.io/controller-runtime") {
			t.Errorf("the meshgate binary imports %s", p)
		}
	}
}
