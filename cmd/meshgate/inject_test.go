package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"meshgate/internal/testca"
)

// TestInject runs "meshgate inject -f -" end to end through mainExit.
func TestInject(t *testing.T) {
	const deployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    metadata:
      annotations:
        meshgate.io/exclude-inbound-ports: "22"
    spec:
      containers:
      - name: web
        image: demo:1
        readinessProbe:
          httpGet: {path: /ready, port: 8080}
---
apiVersion: v1
kind: Pod
metadata: {name: node, annotations: {meshgate.io/inject: "false"}}
spec:
  containers: [{name: a, image: b}]
`
	run := func(stdin string, args ...string) (int, string, string) {
		t.Helper()
		injectStdin = strings.NewReader(stdin)
		defer func() { injectStdin = os.Stdin }()
		var stdout, stderr bytes.Buffer
		code := mainExit(append([]string{"inject"}, args...), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}

	code, out, errOut := run(deployment, "-f", "-", "--native-sidecar=false", "--image", "reg.example/meshgate:9")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if want := "deployment/web: injected\npod/node: skipped: annotation meshgate.io/inject is \"false\"\n"; errOut != want {
		t.Errorf("stderr %q, want %q", errOut, want)
	}
	docs := strings.Split(out, "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("%d documents out:\n%s", len(docs), out)
	}
	var d struct {
		Spec struct {
			Template struct {
				Metadata struct{ Annotations map[string]string }
				Spec     struct {
					InitContainers []struct {
						Name string
						Args []string
					} `json:"initContainers"`
					Containers []struct {
						Name  string
						Image string
					}
				}
			}
		}
	}
	if err := yaml.Unmarshal([]byte(docs[0]), &d); err != nil {
		t.Fatal(err)
	}
	tmpl := d.Spec.Template
	if len(tmpl.Spec.Containers) != 2 || tmpl.Spec.Containers[0].Name != "meshgate-proxy" || tmpl.Spec.Containers[0].Image != "reg.example/meshgate:9" {
		t.Errorf("containers %+v: want the classic sidecar first, with --image", tmpl.Spec.Containers)
	}
	if len(tmpl.Spec.InitContainers) != 1 || strings.Join(tmpl.Spec.InitContainers[0].Args, " ") != "init --exclude-inbound-ports 22" {
		t.Errorf("init containers %+v", tmpl.Spec.InitContainers)
	}
	if tmpl.Metadata.Annotations["meshgate.io/injected"] != version {
		t.Errorf("annotations %v: want meshgate.io/injected: %s", tmpl.Metadata.Annotations, version)
	}
	if !strings.HasPrefix(docs[1], "apiVersion: v1\nkind: Pod\nmetadata: {name: node,") {
		t.Errorf("the skipped pod is not written as it was:\n%s", docs[1])
	}

	// Injecting the output again changes nothing.
	code, again, _ := run(out, "-f", "-", "--native-sidecar=false", "--image", "reg.example/meshgate:9")
	if code != 0 || again != out {
		t.Errorf("injecting twice: exit %d, output differs:\n%s", code, again)
	}

	// From a file.
	file := filepath.Join(t.TempDir(), "in.yaml")
	os.WriteFile(file, []byte(deployment), 0o644)
	if code, fromFile, _ := run("", "-f", file, "--native-sidecar=false", "--image", "reg.example/meshgate:9"); code != 0 || fromFile != out {
		t.Errorf("-f FILE: exit %d, output differs from -f -", code)
	}
}

func TestInjectErrors(t *testing.T) {
	cases := []struct {
		name   string
		stdin  string
		args   []string
		code   int
		stderr string
	}{
		{name: "bad annotation: one line naming document, object, annotation",
			stdin: "kind: Pod\nmetadata: {name: p, annotations: {meshgate.io/exclude-outbound-cidrs: \"10.0.0.1/8\"}}\nspec: {containers: [{name: a, image: b}]}\n",
			args:  []string{"-f", "-"}, code: 1,
			stderr: "meshgate inject: document 1 (pod/p): annotation meshgate.io/exclude-outbound-cidrs \"10.0.0.1/8\": 10.0.0.1/8: bits set past the /8; want 10.0.0.0/8\n"},
		{name: "two problems fold into one line",
			stdin: "kind: Pod\nmetadata: {name: p, annotations: {meshgate.io/capture-dns: \"on\"}}\nspec: {containers: [{name: a, image: b, livenessProbe: {httpGet: {port: http}}}]}\n",
			args:  []string{"-f", "-"}, code: 1,
			stderr: "meshgate inject: document 1 (pod/p): annotation meshgate.io/capture-dns: \"on\": want \"true\" or \"false\"; document 1 (pod/p): container \"a\": livenessProbe.httpGet.port: \"http\": the container has no port of that name; add it to the container's ports or give the port number\n"},
		{name: "no -f", args: nil, code: 2,
			stderr: "meshgate inject: -f: missing; name the manifests file, or - to read stdin\n"},
		{name: "bad flags, all at once", args: []string{"-f", "-", "--cert-source", "vault", "--mtls-mode", "on"}, code: 2,
			stderr: "meshgate inject: --cert-source \"vault\": want ca-server or secret\nmeshgate inject: --mtls-mode \"on\": want strict, permissive or disable\n"},
		{name: "missing file", args: []string{"-f", "/nonexistent/x.yaml"}, code: 1,
			stderr: "meshgate inject: -f: open /nonexistent/x.yaml: no such file or directory\n"},
		{name: "serve needs the certificate", args: []string{"serve"}, code: 2,
			stderr: "meshgate inject serve: --tls-cert: missing; name the webhook's certificate file\nmeshgate inject serve: --tls-key: missing; name the webhook's private key file\n"},
		{name: "serve with a certificate that does not exist", args: []string{"serve", "--tls-cert", "/nonexistent/c", "--tls-key", "/nonexistent/k"}, code: 1,
			stderr: "meshgate inject: --tls-cert: stat /nonexistent/c: no such file or directory\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			injectStdin = strings.NewReader(tc.stdin)
			defer func() { injectStdin = os.Stdin }()
			var stdout, stderr bytes.Buffer
			code := mainExit(append([]string{"inject"}, tc.args...), &stdout, &stderr)
			if code != tc.code || stderr.String() != tc.stderr {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d, stderr:\n%s", code, stderr.String(), tc.code, tc.stderr)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout with an error: %s", stdout.String())
			}
		})
	}
}

func TestInjectHelp(t *testing.T) {
	for _, args := range [][]string{{"inject", "--help"}, {"inject", "serve", "--help"}} {
		var stdout, stderr bytes.Buffer
		if code := mainExit(args, &stdout, &stderr); code != 0 {
			t.Errorf("%v: exit %d", args, code)
		}
		if !strings.Contains(stderr.String(), "Examples:") && !strings.Contains(stderr.String(), "Example:") {
			t.Errorf("%v: no examples in the help:\n%s", args, stderr.String())
		}
	}
}

// TestInjectServe runs "meshgate inject serve" on loopback with a
// certificate from a test CA, asks /healthz and /inject over TLS, and stops
// it as SIGTERM does (the context), which must return cleanly.
func TestInjectServe(t *testing.T) {
	ca := testca.New(t, "test")
	dir := t.TempDir()
	ca.Issue(t, "spiffe://test/webhook", testca.LeafOptions{DNSNames: []string{"localhost"}}).WriteDir(t, dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- runInjectServe(ctx, []string{"--listen", addr, "--tls-cert", filepath.Join(dir, "cert.pem"), "--tls-key", filepath.Join(dir, "key.pem"),
			"--native-sidecar=false", "--log-level", "warn"}, io.Discard, &stderr)
	}()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: testca.Pool(ca), ServerName: "localhost"}}}
	defer client.CloseIdleConnections()
	var resp *http.Response
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err = client.Get("https://" + addr + "/healthz"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("healthz: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("healthz: %d", resp.StatusCode)
	}

	review := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},` +
		`"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"shop","operation":"CREATE",` +
		`"object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"a","image":"b"}]}}}}`
	resp, err = client.Post("https://"+addr+"/inject", "application/json", strings.NewReader(review))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"uid":"u1","allowed":true`) || !strings.Contains(string(body), `"patchType":"JSONPatch"`) {
		t.Errorf("review: %d %s", resp.StatusCode, body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop")
	}
	if stderr.Len() != 0 {
		t.Errorf("warnings logged: %s", stderr.String())
	}
}
