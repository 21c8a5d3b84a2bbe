package inject

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"meshgate/internal/testca"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// review is an AdmissionReview as the API server sends it, built with the
// Kubernetes types.
func review(uid, namespace string, op admissionv1.Operation, pod []byte) []byte {
	dry := false
	r := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:             types.UID(uid),
			Kind:            metav1.GroupVersionKind{Group: "", Version: "v1", Kind: "Pod"},
			Resource:        metav1.GroupVersionResource{Group: "", Version: "v1", Resource: "pods"},
			RequestKind:     &metav1.GroupVersionKind{Group: "", Version: "v1", Kind: "Pod"},
			RequestResource: &metav1.GroupVersionResource{Group: "", Version: "v1", Resource: "pods"},
			Namespace:       namespace,
			Operation:       op,
			UserInfo:        authenticationv1.UserInfo{Username: "system:serviceaccount:kube-system:replicaset-controller", Groups: []string{"system:serviceaccounts"}},
			Object:          runtime.RawExtension{Raw: pod},
			DryRun:          &dry,
			Options:         runtime.RawExtension{Raw: []byte(`{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}`)},
		},
	}
	b, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	return b
}

// post sends body to the handler and decodes the answer strictly into
// the Kubernetes AdmissionReview.
func post(t *testing.T, url string, body []byte) (int, *admissionv1.AdmissionReview, string) {
	t.Helper()
	resp, err := http.Post(url+"/inject", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil, string(b)
	}
	var out admissionv1.AdmissionReview
	strictUnmarshal(t, "response", b, &out)
	return resp.StatusCode, &out, string(b)
}

// podJSON is the Pod of a YAML file, as JSON, as the API server sends it.
func podJSON(t *testing.T, y string) []byte {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// TestWebhookEqualsCLI sends the Pods of the golden inputs through the
// webhook, applies its patch, and checks the result is the pod the
// "meshgate inject" code makes of the same input.
func TestWebhookEqualsCLI(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	for _, tc := range []struct {
		name   string
		file   string
		config func(*Config)
	}{
		{"pod", "pod", nil},
		{"grpc probes", "grpc-probes", nil},
		{"secret certs", "secret-certs", goldenCases[len(goldenCases)-1].config},
		{"classic", "pod", classic},
		{"already injected", "already-injected-pod", nil},
		{"job's pod, classic", "job-pod", classic},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(tc.config)
			srv := httptest.NewServer(&Webhook{Config: cfg, Log: zap.New(core)})
			defer srv.Close()

			var in []byte
			switch tc.file {
			case "already-injected-pod":
				in = mustInject(t, testConfig(func(c *Config) { c.Native, c.CertSource = false, CertSourceSecret }), readFile(t, "testdata/pod.in.yaml"))
			case "job-pod":
				in = []byte(jobPod)
			default:
				in = readFile(t, "testdata/"+tc.file+".in.yaml")
			}
			want := mustInject(t, cfg, in)

			pod := podJSON(t, string(in))
			code, rev, body := post(t, srv.URL, review("uid-1", "shop", admissionv1.Create, pod))
			if code != http.StatusOK {
				t.Fatalf("HTTP %d: %s", code, body)
			}
			r := rev.Response
			if rev.APIVersion != "admission.k8s.io/v1" || rev.Kind != "AdmissionReview" || r == nil || r.UID != "uid-1" || !r.Allowed {
				t.Fatalf("response: %s", body)
			}
			if r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch {
				t.Fatalf("patchType %v, want JSONPatch", r.PatchType)
			}
			patched, err := applyPatch(pod, r.Patch)
			if err != nil {
				t.Fatalf("apply %s: %v", r.Patch, err)
			}
			if d := cmp.Diff(generic(t, podJSON(t, string(want))), generic(t, patched)); d != "" {
				t.Errorf("patched pod differs from inject's (-inject +webhook):\n%s\npatch: %s", d, r.Patch)
			}
			strictObject(t, "patched pod", patched)
		})
	}
	if n := logs.FilterMessage("admission review").FilterField(zap.String("outcome", "injected")).Len(); n != 6 {
		t.Errorf("%d log lines of injected reviews, want 6: %v", n, logs.All())
	}
}

// jobPod is a pod as the Job controller creates it: no name yet, owned by
// its Job, no namespace in the object.
const jobPod = `apiVersion: v1
kind: Pod
metadata:
  generateName: report-
  labels:
    batch.kubernetes.io/job-name: report
  ownerReferences:
  - apiVersion: batch/v1
    kind: Job
    name: report
    uid: 0b6f5a3e-8f84-4a35-9d3b-8b0a5d1b1c11
    controller: true
    blockOwnerDeletion: true
spec:
  restartPolicy: Always
  serviceAccountName: default
  containers:
  - name: report
    image: report:1
`

// TestJobPodClassic: a pod its Job made gets the Job's treatment through
// the webhook too, which sees only the pod.
func TestJobPodClassic(t *testing.T) {
	res, err := testConfig(classic).Pod(podJSON(t, jobPod))
	if err != nil {
		t.Fatal(err)
	}
	patch, _ := json.Marshal(res.Patch)
	for _, want := range []string{`"path":"/spec/shareProcessNamespace","value":true`, `"name":"MESHGATE_EXIT_WITH_APP","value":"true"`} {
		if !strings.Contains(string(patch), want) {
			t.Errorf("patch lacks %s: %s", want, patch)
		}
	}
}

func TestWebhookAnswers(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	srv := httptest.NewServer(&Webhook{Config: testConfig(nil), Log: zap.New(core)})
	defer srv.Close()
	pod := func(ann string) []byte {
		return []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","annotations":{` + ann + `}},"spec":{"containers":[{"name":"web","image":"demo:1"}]}}`)
	}

	t.Run("opted out: allowed, no patch, the reason", func(t *testing.T) {
		_, rev, body := post(t, srv.URL, review("u2", "shop", admissionv1.Create, pod(`"meshgate.io/inject":"false"`)))
		r := rev.Response
		if !r.Allowed || r.Patch != nil || r.PatchType != nil || r.Result == nil || r.Result.Message != `meshgate inject: not injected: annotation meshgate.io/inject is "false"` {
			t.Errorf("response: %s", body)
		}
	})
	t.Run("hostNetwork: allowed, no patch, the reason", func(t *testing.T) {
		p := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"n"},"spec":{"hostNetwork":true,"containers":[{"name":"a","image":"b"}]}}`)
		_, rev, body := post(t, srv.URL, review("u3", "shop", admissionv1.Create, p))
		r := rev.Response
		if !r.Allowed || r.Patch != nil || r.Result == nil || !strings.Contains(r.Result.Message, "hostNetwork pods share the node's network namespace") {
			t.Errorf("response: %s", body)
		}
	})
	t.Run("bad annotation: denied with the reason", func(t *testing.T) {
		_, rev, body := post(t, srv.URL, review("u4", "shop", admissionv1.Create, pod(`"meshgate.io/exclude-inbound-ports":"ssh"`)))
		r := rev.Response
		want := `meshgate inject: pod web in namespace shop: annotation meshgate.io/exclude-inbound-ports "ssh": "ssh": not a port number; want a comma-separated list like 80,443`
		if r.Allowed || r.Patch != nil || r.Result == nil || r.Result.Message != want || r.Result.Code != 400 || r.UID != "u4" {
			t.Errorf("response: %s\nwant message: %s", body, want)
		}
	})
	t.Run("update: allowed unchanged", func(t *testing.T) {
		_, rev, body := post(t, srv.URL, review("u5", "shop", admissionv1.Update, pod("")))
		if r := rev.Response; !r.Allowed || r.Patch != nil {
			t.Errorf("response: %s", body)
		}
	})
	for _, tc := range []struct {
		name, body, want string
		code             int
	}{
		{"not JSON", `{"apiVersion":`, "meshgate inject: not an AdmissionReview: unexpected end of JSON input\n", 400},
		{"v1beta1", `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}`,
			"meshgate inject: apiVersion \"admission.k8s.io/v1beta1\", kind \"AdmissionReview\": want admission.k8s.io/v1 AdmissionReview (admissionReviewVersions: [v1])\n", 400},
		{"no request", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`,
			"meshgate inject: the AdmissionReview has no request, or no request.uid\n", 400},
		{"pod not an object", string(review("u6", "shop", admissionv1.Create, []byte(`["a"]`))),
			"meshgate inject: request u6: request.object: pod: a list, not an object\n", 400},
		{"no object", string(review("u7", "shop", admissionv1.Create, nil)),
			"meshgate inject: request u7: request.object: missing; a CREATE review carries the pod\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, body := post(t, srv.URL, []byte(tc.body))
			if code != tc.code || body != tc.want {
				t.Errorf("HTTP %d %q, want %d %q", code, body, tc.code, tc.want)
			}
		})
	}

	t.Run("healthz and methods", func(t *testing.T) {
		for _, c := range []struct {
			method, path string
			code         int
		}{{"GET", "/healthz", 200}, {"GET", "/inject", 405}, {"POST", "/healthz", 405}, {"GET", "/other", 404}} {
			req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.code {
				t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.code)
			}
		}
		resp, err := http.Post(srv.URL+"/inject", "text/plain", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnsupportedMediaType {
			t.Errorf("text/plain: %d, want 415", resp.StatusCode)
		}
	})

	got := map[string]int{}
	for _, e := range logs.FilterMessage("admission review").All() {
		got[e.ContextMap()["outcome"].(string)]++
	}
	if d := cmp.Diff(map[string]int{"skipped": 2, "denied": 1, "ignored": 1}, got); d != "" {
		t.Errorf("logged outcomes (-want +got):\n%s", d)
	}
}

// TestWireStructs proves the AdmissionReview structs against the
// Kubernetes types: a request made with them reads the same, and every
// kind of answer decodes strictly into them with the values meant.
func TestWireStructs(t *testing.T) {
	pod := []byte(`{"kind":"Pod","metadata":{"name":"p"}}`)
	var r AdmissionReview
	if err := json.Unmarshal(review("u-1", "ns1", admissionv1.Create, pod), &r); err != nil {
		t.Fatal(err)
	}
	dry := false
	want := AdmissionReview{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview", Request: &AdmissionRequest{
		UID: "u-1", Kind: GroupVersionKind{Version: "v1", Kind: "Pod"}, Resource: GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: "ns1", Operation: "CREATE", Object: pod, DryRun: &dry,
	}}
	if d := cmp.Diff(want, r); d != "" {
		t.Errorf("request (-want +got):\n%s", d)
	}

	pt := PatchTypeJSONPatch
	k8sPT := admissionv1.PatchTypeJSONPatch
	for _, tc := range []struct {
		name string
		mine AdmissionResponse
		want admissionv1.AdmissionResponse
	}{
		{"patch", AdmissionResponse{UID: "a", Allowed: true, Patch: []byte(`[{"op":"add","path":"/x","value":1}]`), PatchType: &pt},
			admissionv1.AdmissionResponse{UID: "a", Allowed: true, Patch: []byte(`[{"op":"add","path":"/x","value":1}]`), PatchType: &k8sPT}},
		{"denied", AdmissionResponse{UID: "b", Result: &Status{Status: "Failure", Message: "m", Reason: "BadRequest", Code: 400}, Warnings: []string{"w"}},
			admissionv1.AdmissionResponse{UID: "b", Result: &metav1.Status{Status: "Failure", Message: "m", Reason: metav1.StatusReasonBadRequest, Code: 400}, Warnings: []string{"w"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(AdmissionReview{APIVersion: AdmissionAPIVersion, Kind: "AdmissionReview", Response: &tc.mine})
			if err != nil {
				t.Fatal(err)
			}
			var got admissionv1.AdmissionReview
			strictUnmarshal(t, "response", b, &got)
			if d := cmp.Diff(admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Response: &tc.want}, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestJSONPatchEscaping(t *testing.T) {
	old := obj{"metadata": obj{"annotations": obj{"a/b": "1", "c~d": "2"}, "name": "p"}, "spec": obj{"x": 1.0}}
	new := obj{"metadata": obj{"annotations": obj{"a/b": "1", "c~d": "3", "e/f~g": "4"}, "labels": obj{"l": "v"}}, "spec": obj{"x": 1.0}, "status": obj{}}
	ops := jsonPatch(old, new)
	b, _ := json.Marshal(ops)
	want := `[{"op":"replace","path":"/metadata/annotations","value":{"a/b":"1","c~d":"3","e/f~g":"4"}},` +
		`{"op":"add","path":"/metadata/labels","value":{"l":"v"}},{"op":"remove","path":"/metadata/name"},{"op":"add","path":"/status","value":{}}]`
	if string(b) != want {
		t.Errorf("patch\n%s\nwant\n%s", b, want)
	}
	if got := escapePointer("a~/b/~"); got != "a~0~1b~1~0" {
		t.Errorf("escapePointer: %s", got)
	}
	// The patch applies to old and gives new, through an RFC 6902 applier
	// that unescapes the paths.
	oj, _ := json.Marshal(old)
	res, err := applyPatch(oj, b)
	if err != nil {
		t.Fatal(err)
	}
	nj, _ := json.Marshal(new)
	if d := cmp.Diff(generic(t, nj), generic(t, res)); d != "" {
		t.Error(d)
	}
	// And a path with an escaped key applies too.
	res, err = applyPatch(oj, []byte(`[{"op":"replace","path":"/metadata/annotations/a~1b","value":"9"}]`))
	if err != nil || !strings.Contains(string(res), `"a/b":"9"`) {
		t.Errorf("escaped path: %s, %v", res, err)
	}
}

func generic(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// applyPatch applies a JSON Patch (RFC 6902) to doc: add, remove and
// replace, on object members and array elements ("-" appends).
func applyPatch(doc, patch []byte) ([]byte, error) {
	var root any
	if err := json.Unmarshal(doc, &root); err != nil {
		return nil, err
	}
	var ops []struct {
		Op    string           `json:"op"`
		Path  string           `json:"path"`
		Value *json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(patch, &ops); err != nil {
		return nil, err
	}
	for _, op := range ops {
		if !strings.HasPrefix(op.Path, "/") {
			return nil, fmt.Errorf("path %q: does not start with /", op.Path)
		}
		var tokens []string
		for _, tok := range strings.Split(op.Path[1:], "/") {
			tokens = append(tokens, strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~"))
		}
		var value any
		switch op.Op {
		case "add", "replace":
			if op.Value == nil {
				return nil, fmt.Errorf("%s %s: no value", op.Op, op.Path)
			}
			if err := json.Unmarshal(*op.Value, &value); err != nil {
				return nil, err
			}
		case "remove":
		default:
			return nil, fmt.Errorf("op %q not supported", op.Op)
		}
		var err error
		if root, err = applyOp(root, tokens, op.Op, value); err != nil {
			return nil, fmt.Errorf("%s %s: %w", op.Op, op.Path, err)
		}
	}
	return json.Marshal(root)
}

func applyOp(node any, tokens []string, op string, value any) (any, error) {
	tok, last := tokens[0], len(tokens) == 1
	switch n := node.(type) {
	case map[string]any:
		child, exists := n[tok]
		if !last {
			if !exists {
				return nil, fmt.Errorf("%q: no such member", tok)
			}
			v, err := applyOp(child, tokens[1:], op, value)
			n[tok] = v
			return n, err
		}
		switch {
		case op == "add":
			n[tok] = value
		case !exists:
			return nil, fmt.Errorf("%q: no such member to %s", tok, op)
		case op == "replace":
			n[tok] = value
		default:
			delete(n, tok)
		}
		return n, nil
	case []any:
		i := len(n)
		if tok != "-" {
			var err error
			if i, err = strconv.Atoi(tok); err != nil || i < 0 || i > len(n) {
				return nil, fmt.Errorf("%q: not an index of an array of %d", tok, len(n))
			}
		}
		if !last {
			if i == len(n) {
				return nil, errors.New("index past the end")
			}
			v, err := applyOp(n[i], tokens[1:], op, value)
			n[i] = v
			return n, err
		}
		switch {
		case op == "add":
			return append(n[:i], append([]any{value}, n[i:]...)...), nil
		case i == len(n):
			return nil, errors.New("index past the end")
		case op == "replace":
			n[i] = value
			return n, nil
		default:
			return append(n[:i], n[i+1:]...), nil
		}
	}
	return nil, fmt.Errorf("%q: parent is not an object or array", tok)
}

// TestServeTLSReload serves the webhook over TLS with the CertReloader and
// replaces the certificate files: the next connection gets the new one; a
// bad pair keeps the old one and is reported once.
func TestServeTLSReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca := testca.New(t, "test")
	first := writePair(t, ca, certFile, keyFile, 1)
	r, err := NewCertReloader(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	var reported []string
	r.OnError = func(err error) { reported = append(reported, err.Error()) }

	srv := httptest.NewUnstartedServer(&Webhook{Config: testConfig(nil)})
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
	srv.StartTLS()
	defer srv.Close()
	// httptest's own certificate serves clients that send no server name
	// (SNI); the reloader serves those that do, as the API server does.

	served := func() string {
		t.Helper()
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: testca.Pool(ca), ServerName: "localhost"}, DisableKeepAlives: true}}
		defer c.CloseIdleConnections()
		resp, err := c.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.String()
	}
	if got := served(); got != first {
		t.Fatalf("served %s, want the first certificate %s", got, first)
	}
	second := writePair(t, ca, certFile, keyFile, 2)
	if got := served(); got != second {
		t.Errorf("after the files changed: served %s, want the second certificate %s", got, second)
	}
	os.WriteFile(keyFile, []byte("not a key"), 0o600)
	later := time.Now().Add(time.Minute)
	os.Chtimes(keyFile, later, later)
	for range 2 {
		if got := served(); got != second {
			t.Errorf("with a bad key: served %s, want the second certificate %s", got, second)
		}
	}
	if len(reported) != 1 || !strings.Contains(reported[0], "reload the certificate (serving the previous one): --tls-cert") {
		t.Errorf("reported %q, want one reload error", reported)
	}

	// TLS 1.1 is refused.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}}}
	if _, err := c.Get(srv.URL + "/healthz"); err == nil {
		t.Error("a TLS 1.1 client was served")
	}
	c.CloseIdleConnections()

	if _, err := NewCertReloader(filepath.Join(dir, "none.crt"), keyFile); err == nil || !strings.HasPrefix(err.Error(), "--tls-cert: stat ") {
		t.Errorf("missing file: %v", err)
	}
}

// writePair writes a fresh certificate for localhost from ca as certFile
// and keyFile, with a modification time after the previous pair's, and
// returns its serial number.
func writePair(t *testing.T, ca *testca.CA, certFile, keyFile string, n int) string {
	t.Helper()
	leaf := ca.Issue(t, "spiffe://test/webhook", testca.LeafOptions{DNSNames: []string{"localhost"}})
	dir := t.TempDir()
	leaf.WriteDir(t, dir)
	for from, to := range map[string]string{"cert.pem": certFile, "key.pem": keyFile} {
		b, err := os.ReadFile(filepath.Join(dir, from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
		// Coarse file system clocks: make the change visible.
		next := time.Now().Add(time.Duration(n) * time.Second)
		os.Chtimes(to, next, next)
	}
	return leaf.Cert.SerialNumber.String()
}
