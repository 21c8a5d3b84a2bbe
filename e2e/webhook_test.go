package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"
)

// The webhook tests run the admission webhook, 'meshgate inject serve', as
// the real binary, behind a real kube-apiserver and etcd (issue 14): the
// API server calls it for the pods it is asked to create and stores what
// the webhook's JSON Patch made of them. kube-controller-manager runs the
// Deployment and ReplicaSet controllers, so a Deployment's pods are created
// by the real ReplicaSet controller, through the webhook; no scheduler or
// kubelet runs, so they stay Pending, which is all the test reads. The
// cases that are not about a Deployment create bare pods themselves.
//
// kube-apiserver, kube-controller-manager and etcd are built from the Go
// module proxy by 'make k8s-assets' (scripts/k8s-assets.sh) into a cache
// outside the repo; controller-runtime's envtest runs etcd and the API
// server from KUBEBUILDER_ASSETS, the test runs the controller manager.

const (
	injectLabel      = "meshgate.io/inject"
	injectedAnnot    = "meshgate.io/injected"
	healthPort       = 15021
	webhookConfigKey = "MutatingWebhookConfiguration"
)

// TestWebhook starts one control plane and runs the webhook's cases on it.
func TestWebhook(t *testing.T) {
	needRoot(t)
	cp := startControlPlane(t)
	startControllerManager(t, cp)
	docs := readDeploy(t)

	t.Run("DeployDryRun", func(t *testing.T) { testDeployDryRun(t, cp, docs) })

	inj := startInjector(t)
	hook := registerWebhook(t, cp, docs, inj)
	t.Run("InjectsDeploymentPod", func(t *testing.T) { testInjectsDeploymentPod(t, cp, docs) })
	t.Run("LeavesOthersUntouched", func(t *testing.T) { testLeavesOthersUntouched(t, cp, docs) })
	t.Run("FailurePolicy", func(t *testing.T) { testFailurePolicy(t, cp, docs, inj, hook) })
}

// controlPlane is a running kube-apiserver and etcd, and clients of it.
type controlPlane struct {
	env     *envtest.Environment
	assets  string // the directory of the binaries
	cfg     *rest.Config
	cs      *kubernetes.Clientset
	dyn     *dynamic.DynamicClient
	mapper  *restmapper.DeferredDiscoveryRESTMapper
	created int // namespaces made by newNamespace
}

// k8sAssets is the directory holding kube-apiserver,
// kube-controller-manager and etcd: KUBEBUILDER_ASSETS, or where
// 'make k8s-assets' puts them.
func k8sAssets(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		out, err := exec.Command("../scripts/k8s-assets.sh", "--print-dir").Output()
		if err != nil {
			t.Fatalf("e2e: scripts/k8s-assets.sh --print-dir: %v", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("e2e: no %s in %s (KUBEBUILDER_ASSETS): run 'make k8s-assets' to build kube-apiserver, kube-controller-manager and etcd (a few minutes, once), or set KUBEBUILDER_ASSETS to a directory holding them", b, dir)
		}
	}
	return dir
}

// startControlPlane runs etcd and kube-apiserver with envtest, stopped when
// the test ends; their output is shown if the test fails.
func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	assets := k8sAssets(t)
	// envtest logs through controller-runtime's global logger; unset, it
	// complains after a while with a stack trace.
	ctrllog.SetLogger(funcr.New(func(prefix, args string) { fmt.Fprintln(os.Stderr, "envtest:", prefix, args) }, funcr.Options{}))

	var apiOut, etcdOut syncBuffer
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		UseExistingCluster:       new(bool), // never a cluster from the environment
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	env.ControlPlane.Etcd = &envtest.Etcd{Out: &etcdOut, Err: &etcdOut}
	api := env.ControlPlane.GetAPIServer()
	api.Out, api.Err = &apiOut, &apiOut
	// Advertise loopback, which the API server accepts only with no
	// endpoint reconciler (there are no nodes or kube-proxy here anyway):
	// otherwise it looks for a default route, which a test VM may lack.
	api.Configure().Set("advertise-address", "127.0.0.1").Set("endpoint-reconciler-type", "none")

	cfg, err := env.Start()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-apiserver output (last lines):\n%s", apiOut.tail(40))
			t.Logf("etcd output (last lines):\n%s", etcdOut.tail(20))
		}
		if err := env.Stop(); err != nil {
			t.Errorf("stopping kube-apiserver and etcd: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("starting kube-apiserver and etcd from %s: %v", assets, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &controlPlane{
		env:    env,
		assets: assets,
		cfg:    cfg,
		cs:     cs,
		dyn:    dyn,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery())),
	}
}

// startControllerManager runs kube-controller-manager against the API
// server with the Deployment and ReplicaSet controllers only, and stops it
// (SIGTERM, then SIGKILL) and waits for it when the test ends, before the
// API server stops; its output is shown if the test fails. It runs as an
// envtest user in system:masters, with its own credentials for every
// controller: no ServiceAccount tokens are needed, and envtest's API
// server admits pods without their ServiceAccount (it disables that
// admission plugin), so the serviceaccount controllers are left out. It
// serves nothing (--secure-port=0): nothing here reads its health or
// metrics, and without serving it needs no certificates.
func startControllerManager(t *testing.T, cp *controlPlane) {
	t.Helper()
	user, err := cp.env.AddUser(envtest.User{Name: "meshgate-e2e-controller-manager", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatalf("envtest user for kube-controller-manager: %v", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}

	out := &syncBuffer{}
	cmd := exec.Command(filepath.Join(cp.assets, "kube-controller-manager"),
		"--kubeconfig="+path,
		"--controllers=deployment-controller,replicaset-controller",
		"--leader-elect=false",
		"--secure-port=0",
		"--v=2",
	)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		select {
		case <-done:
			t.Errorf("kube-controller-manager exited during the test (%v)", cmd.ProcessState)
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Errorf("kube-controller-manager did not stop within 10s of SIGTERM")
				cmd.Process.Kill()
				<-done
			}
		}
		if t.Failed() {
			t.Logf("kube-controller-manager output (last lines):\n%s", out.tail(40))
		}
	})
}

// newNamespace creates a namespace with the labels and returns its name.
// It goes with the control plane when the test ends.
func (cp *controlPlane) newNamespace(t *testing.T, prefix string, labels map[string]string) string {
	t.Helper()
	cp.created++
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", prefix, cp.created), Labels: labels}}
	if _, err := cp.cs.CoreV1().Namespaces().Create(ctxFor(t, 10*time.Second), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", ns.Name, err)
	}
	return ns.Name
}

// readDeploy reads every object of the manifests in deploy/, in file order.
func readDeploy(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob("../deploy/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/ (%v)", err)
	}
	sort.Strings(files)
	var objs []*unstructured.Unstructured
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for i := 1; ; i++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", f, i, err)
			}
			var m map[string]any
			if err := yaml.UnmarshalStrict(doc, &m); err != nil {
				t.Fatalf("%s: document %d: %v", f, i, err)
			}
			if len(m) == 0 {
				continue
			}
			o := &unstructured.Unstructured{Object: m}
			o.SetAnnotations(mergeMaps(o.GetAnnotations(), map[string]string{"e2e.meshgate.io/source": fmt.Sprintf("%s#%d", filepath.Base(f), i)}))
			objs = append(objs, o)
		}
	}
	return objs
}

func source(o *unstructured.Unstructured) string {
	return o.GetAnnotations()["e2e.meshgate.io/source"]
}

// find returns the object of deploy/ with that kind, namespace and name.
func find(t *testing.T, docs []*unstructured.Unstructured, kind, ns, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range docs {
		if o.GetKind() == kind && o.GetNamespace() == ns && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("deploy/: no %s %s/%s", kind, ns, name)
	return nil
}

// convert decodes an object of deploy/ into its API type, refusing
// unknown fields.
func convert(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
		t.Fatalf("%s: %s %s: %v", source(o), o.GetKind(), o.GetName(), err)
	}
}

// testDeployDryRun: every manifest of deploy/ is accepted by the API
// server in a server-side dry run (server-side apply, unknown fields
// refused), and the container arguments of the meshgate image are flags
// the binary knows.
func testDeployDryRun(t *testing.T, cp *controlPlane, docs []*unstructured.Unstructured) {
	// What a user of deploy/ counts on; a missing piece fails here rather
	// than passing a dry run of less.
	for _, w := range []struct{ kind, ns, name string }{
		{"Namespace", "", "meshgate-system"},
		{"Deployment", "meshgate-system", "meshgate-ca"},
		{"Service", "meshgate-system", "meshgate-ca"},
		{"Deployment", "meshgate-system", "meshgate-injector"},
		{"Service", "meshgate-system", "meshgate-injector"},
		{webhookConfigKey, "", "meshgate-injector"},
		{"Namespace", "", "meshgate-demo"},
		{"Deployment", "meshgate-demo", "web"},
		{"Service", "meshgate-demo", "web"},
		{"ServiceAccount", "meshgate-demo", "web"},
	} {
		find(t, docs, w.kind, w.ns, w.name)
	}
	if l := find(t, docs, "Namespace", "", "meshgate-demo").GetLabels()[injectLabel]; l != "enabled" {
		t.Errorf("deploy/: namespace meshgate-demo has label %s=%q; want enabled, for the webhook", injectLabel, l)
	}

	ctx := ctxFor(t, 60*time.Second)
	apply := func(o *unstructured.Unstructured, dryRun bool) error {
		m, err := cp.mapper.RESTMapping(o.GroupVersionKind().GroupKind(), o.GroupVersionKind().Version)
		if err != nil {
			return err
		}
		body, err := json.Marshal(o.Object)
		if err != nil {
			return err
		}
		force := true
		opts := metav1.PatchOptions{FieldManager: "meshgate-e2e", FieldValidation: "Strict", Force: &force}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		var ri dynamic.ResourceInterface = cp.dyn.Resource(m.Resource)
		if m.Scope.Name() == "namespace" {
			if o.GetNamespace() == "" {
				return fmt.Errorf("namespaced, but metadata.namespace is empty")
			}
			ri = cp.dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		_, err = ri.Patch(ctx, o.GetName(), types.ApplyPatchType, body, opts)
		return err
	}
	// The namespaces first: objects in them are refused, even in a dry
	// run, while they do not exist. So dry-run them, then create them.
	var rest []*unstructured.Unstructured
	for _, o := range docs {
		if o.GetKind() != "Namespace" {
			rest = append(rest, o)
			continue
		}
		if err := apply(o, true); err != nil {
			t.Errorf("%s: dry run of Namespace %s: %v", source(o), o.GetName(), err)
		}
		if err := apply(o, false); err != nil {
			t.Fatalf("%s: creating Namespace %s: %v", source(o), o.GetName(), err)
		}
	}
	for _, o := range rest {
		if err := apply(o, true); err != nil {
			t.Errorf("%s: dry run of %s %s/%s: %v", source(o), o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	// A dry run stores nothing: the webhook registration above all must
	// not be there, or it would call a service that does not exist.
	if _, err := cp.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "meshgate-injector", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after a dry run, MutatingWebhookConfiguration meshgate-injector: got err %v; want NotFound", err)
	}

	// The arguments of each container running the meshgate image parse:
	// with --help appended the binary exits 0 only if every flag before
	// it is one it knows.
	for _, o := range docs {
		if o.GetKind() != "Deployment" {
			continue
		}
		var d appsv1.Deployment
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &d, true); err != nil {
			t.Errorf("%s: Deployment %s: %v", source(o), o.GetName(), err)
			continue
		}
		for _, c := range d.Spec.Template.Spec.Containers {
			if !strings.HasPrefix(c.Image, "meshgate:") {
				continue
			}
			args := append(slices.Clone(c.Args), "--help")
			if out, err := meshgate(t, args...); err != nil {
				t.Errorf("%s: container %s of Deployment %s: 'meshgate %s' refuses its arguments: %v\n%s",
					source(o), c.Name, d.Name, strings.Join(c.Args, " "), err, firstLines(out, 3))
			}
		}
	}
}

// injector is 'meshgate inject serve' running on loopback.
type injector struct {
	url    string // of its /inject endpoint
	caPEM  []byte // the root that signed its serving certificate
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
	waitMu sync.Mutex
}

// startInjector runs the real binary's webhook server on a loopback port,
// with a serving certificate made the way the README's "On Kubernetes"
// commands make it — 'meshgate ca init', 'meshgate ca issue --dns', the
// CA's root.pem as the webhook's caBundle — for localhost instead of the
// Service's name, and waits for its /healthz.
func startInjector(t *testing.T) *injector {
	t.Helper()
	dir := publicTempDir(t)
	caDir, tlsDir := filepath.Join(dir, "ca"), filepath.Join(dir, "injector-tls")
	mustMeshgate(t, "ca", "init", "--dir", caDir, "--trust-domain", "cluster.local")
	mustMeshgate(t, "ca", "issue", "--dir", caDir, "--id", "spiffe://cluster.local/ns/meshgate-system/sa/meshgate-injector",
		"--dns", "localhost", "--ttl", "8760h", "--out", tlsDir)
	rootPEM, err := os.ReadFile(filepath.Join(caDir, "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("%s/root.pem: no certificate", caDir)
	}

	port := freePort(t)
	inj := &injector{
		url:   fmt.Sprintf("https://localhost:%d/inject", port),
		caPEM: rootPEM,
		out:   &syncBuffer{},
		done:  make(chan struct{}),
	}
	inj.cmd = exec.Command(bin, "inject", "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--tls-cert", filepath.Join(tlsDir, "cert.pem"), "--tls-key", filepath.Join(tlsDir, "key.pem"))
	inj.cmd.Stdout, inj.cmd.Stderr = inj.out, inj.out
	if err := inj.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		inj.cmd.Wait()
		close(inj.done)
	}()
	t.Cleanup(func() {
		inj.stop(t)
		if t.Failed() {
			t.Logf("meshgate inject serve output:\n%s", inj.out.tail(40))
		}
	})

	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}
	defer client.CloseIdleConnections()
	healthz := fmt.Sprintf("https://localhost:%d/healthz", port)
	eventually(t, 15*time.Second, func() error {
		select {
		case <-inj.done:
			t.Fatalf("meshgate inject serve exited (%v):\n%s", inj.cmd.ProcessState, inj.out.tail(20))
		default:
		}
		resp, err := client.Get(healthz)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", healthz, resp.Status)
		}
		return nil
	})
	return inj
}

// stop ends the webhook server (SIGTERM, then SIGKILL) and waits for it.
func (inj *injector) stop(t *testing.T) {
	inj.waitMu.Lock()
	defer inj.waitMu.Unlock()
	select {
	case <-inj.done:
		return
	default:
	}
	inj.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-inj.done:
	case <-time.After(10 * time.Second):
		t.Errorf("meshgate inject serve did not stop within 10s of SIGTERM")
		inj.cmd.Process.Kill()
		<-inj.done
	}
}

// freePort returns a loopback TCP port nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// registerWebhook registers deploy/'s MutatingWebhookConfiguration — its
// rules, selectors, failure policy and all — with the client config
// pointing at the injector on loopback instead of its Service.
func registerWebhook(t *testing.T, cp *controlPlane, docs []*unstructured.Unstructured, inj *injector) *admissionv1.MutatingWebhookConfiguration {
	t.Helper()
	var cfg admissionv1.MutatingWebhookConfiguration
	convert(t, find(t, docs, webhookConfigKey, "", "meshgate-injector"), &cfg)
	if len(cfg.Webhooks) != 1 {
		t.Fatalf("deploy/: MutatingWebhookConfiguration meshgate-injector has %d webhooks; the test expects 1", len(cfg.Webhooks))
	}
	w := &cfg.Webhooks[0]
	if w.ClientConfig.Service == nil || w.ClientConfig.Service.Path == nil || *w.ClientConfig.Service.Path != "/inject" {
		t.Fatalf("deploy/: webhook %s: clientConfig.service.path should be /inject (the injector's endpoint): %+v", w.Name, w.ClientConfig.Service)
	}
	w.ClientConfig = admissionv1.WebhookClientConfig{URL: &inj.url, CABundle: inj.caPEM}
	cfg.Annotations = nil
	got, err := cp.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctxFor(t, 10*time.Second), &cfg, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("registering the webhook of deploy/: %v", err)
	}
	return got
}

// podFromTemplate is a bare pod made from the Deployment's template the
// way the ReplicaSet controller makes one — its template's labels and
// annotations, the pod-template-hash label, a generated name — but with no
// owner: the cases that are not about a Deployment create it themselves.
func podFromTemplate(d *appsv1.Deployment, ns string) *corev1.Pod {
	const hash = "5d4c7b9f8"
	tmpl := d.Spec.Template.DeepCopy()
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: d.Name + "-" + hash + "-",
			Namespace:    ns,
			Labels:       mergeMaps(tmpl.Labels, map[string]string{appsv1.DefaultDeploymentUniqueLabelKey: hash}),
			Annotations:  tmpl.Annotations,
		},
		Spec: tmpl.Spec,
	}
}

func mergeMaps(a, b map[string]string) map[string]string {
	m := map[string]string{}
	for k, v := range a {
		m[k] = v
	}
	for k, v := range b {
		m[k] = v
	}
	return m
}

// exampleDeployment is deploy/'s example Deployment, moved to namespace ns
// and created there.
func exampleDeployment(t *testing.T, cp *controlPlane, docs []*unstructured.Unstructured, ns string) *appsv1.Deployment {
	t.Helper()
	var d appsv1.Deployment
	convert(t, find(t, docs, "Deployment", "meshgate-demo", "web"), &d)
	d.Namespace = ns
	d.Annotations = nil
	stored, err := cp.cs.AppsV1().Deployments(ns).Create(ctxFor(t, 10*time.Second), &d, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Deployment %s/%s: %v", ns, d.Name, err)
	}
	return stored
}

// createPod creates pod and returns what the API server stored, read back.
func (cp *controlPlane) createPod(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx := ctxFor(t, 20*time.Second)
	created, err := cp.cs.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod in %s: %v", pod.Namespace, err)
	}
	stored, err := cp.cs.CoreV1().Pods(pod.Namespace).Get(ctx, created.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod %s/%s: %v", pod.Namespace, created.Name, err)
	}
	return stored
}

// dryRunPod is pod as the API server would store it in namespace ns
// (defaults applied), stored nowhere.
func (cp *controlPlane) dryRunPod(t *testing.T, pod *corev1.Pod, ns string) (*corev1.Pod, error) {
	t.Helper()
	p := pod.DeepCopy()
	p.Namespace = ns
	return cp.cs.CoreV1().Pods(ns).Create(ctxFor(t, 20*time.Second), p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
}

// deploymentPods waits for the ReplicaSet controller to create every
// replica of Deployment d, and returns the pods and their ReplicaSet,
// checking that the Deployment owns the one and the ReplicaSet each pod.
func (cp *controlPlane) deploymentPods(t *testing.T, d *appsv1.Deployment) ([]corev1.Pod, *appsv1.ReplicaSet) {
	t.Helper()
	selector, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	want := int(*d.Spec.Replicas)
	var pods []corev1.Pod
	ctx := ctxFor(t, 70*time.Second)
	eventually(t, 60*time.Second, func() error {
		l, err := cp.cs.CoreV1().Pods(d.Namespace).List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
		if err != nil {
			return err
		}
		if len(l.Items) != want {
			return fmt.Errorf("Deployment %s/%s: %d pods; want %d, created by the ReplicaSet controller", d.Namespace, d.Name, len(l.Items), want)
		}
		pods = l.Items
		return nil
	})
	owner := metav1.GetControllerOf(&pods[0])
	if owner == nil || owner.Kind != "ReplicaSet" {
		t.Fatalf("pod %s: controller %+v; want a ReplicaSet", pods[0].Name, owner)
	}
	rs, err := cp.cs.AppsV1().ReplicaSets(d.Namespace).Get(ctx, owner.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := metav1.GetControllerOf(rs); c == nil || c.UID != d.UID {
		t.Fatalf("ReplicaSet %s: controller %+v; want Deployment %s (%s)", rs.Name, c, d.Name, d.UID)
	}
	for _, p := range pods[1:] {
		if c := metav1.GetControllerOf(&p); c == nil || c.UID != rs.UID {
			t.Fatalf("pod %s: controller %+v; want ReplicaSet %s (%s)", p.Name, c, rs.Name, rs.UID)
		}
	}
	return pods, rs
}

// testInjectsDeploymentPod: the pods that the ReplicaSet controller creates
// for a Deployment in a labelled namespace are stored injected: the init
// container, the native sidecar, the probes rewritten to the sidecar's
// health port with the originals in its environment, the certificate
// volumes, the status annotation — the same pod 'meshgate inject -f' makes
// of the ReplicaSet's template.
func testInjectsDeploymentPod(t *testing.T, cp *controlPlane, docs []*unstructured.Unstructured) {
	ns := cp.newNamespace(t, "mesh", map[string]string{injectLabel: "enabled"})
	plain := cp.newNamespace(t, "plain", nil)
	d := exampleDeployment(t, cp, docs, ns)
	pods, rs := cp.deploymentPods(t, d)
	got := &pods[0]
	// Every replica is injected alike.
	for _, p := range pods[1:] {
		if diff := cmp.Diff(got.Spec, p.Spec); diff != "" {
			t.Errorf("pods %s and %s of the Deployment differ (-%s +%s):\n%s", got.Name, p.Name, got.Name, p.Name, diff)
		}
		if diff := cmp.Diff(meshgateKeys(got.Annotations), meshgateKeys(p.Annotations)); diff != "" {
			t.Errorf("meshgate.io/ annotations of pods %s and %s differ:\n%s", got.Name, p.Name, diff)
		}
	}

	if v := got.Annotations[injectedAnnot]; v == "" {
		t.Errorf("annotation %s missing; annotations: %v", injectedAnnot, got.Annotations)
	}
	if names := containerNames(got.Spec.InitContainers); !slices.Equal(names, []string{"meshgate-init", "meshgate-proxy"}) {
		t.Fatalf("init containers %v; want [meshgate-init meshgate-proxy]", names)
	}
	if names := containerNames(got.Spec.Containers); !slices.Equal(names, []string{"web"}) {
		t.Errorf("containers %v; want [web] (the sidecar is native, among the init containers)", names)
	}

	init := got.Spec.InitContainers[0]
	if len(init.Args) == 0 || init.Args[0] != "init" {
		t.Errorf("meshgate-init args %q; want them to start with init", init.Args)
	}
	if sc := init.SecurityContext; sc == nil || sc.Capabilities == nil ||
		!slices.Contains(sc.Capabilities.Add, "NET_ADMIN") || !slices.Contains(sc.Capabilities.Add, "NET_RAW") ||
		sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("meshgate-init securityContext %s; want runAsUser 0 and capabilities NET_ADMIN, NET_RAW", jsonOf(init.SecurityContext))
	}

	proxy := got.Spec.InitContainers[1]
	if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("meshgate-proxy restartPolicy %v; want Always (a native sidecar)", proxy.RestartPolicy)
	}
	if len(proxy.Args) == 0 || proxy.Args[0] != "proxy" {
		t.Errorf("meshgate-proxy args %q; want them to start with proxy", proxy.Args)
	}
	for name, p := range map[string]*corev1.Probe{"startupProbe": proxy.StartupProbe, "readinessProbe": proxy.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz/ready" || p.HTTPGet.Port.IntValue() != healthPort {
			t.Errorf("meshgate-proxy %s %s; want httpGet :%d /healthz/ready", name, jsonOf(p), healthPort)
		}
	}
	if sc := proxy.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 1337 {
		t.Errorf("meshgate-proxy securityContext %s; want runAsUser 1337", jsonOf(proxy.SecurityContext))
	}

	// The app's HTTP probes go to the sidecar's health port, which runs the
	// originals (in MESHGATE_APP_PROBES, the named port resolved).
	web := got.Spec.Containers[0]
	orig := d.Spec.Template.Spec.Containers[0]
	for _, c := range []struct {
		name      string
		got, orig *corev1.Probe
		path      string
	}{
		{"readinessProbe", web.ReadinessProbe, orig.ReadinessProbe, "/app-health/web/readyz"},
		{"livenessProbe", web.LivenessProbe, orig.LivenessProbe, "/app-health/web/livez"},
	} {
		want := c.orig.DeepCopy()
		want.HTTPGet = &corev1.HTTPGetAction{Path: c.path, Port: intstr.FromInt32(healthPort), Scheme: corev1.URISchemeHTTP}
		if diff := cmp.Diff(want, c.got); diff != "" {
			t.Errorf("web %s (-want +got):\n%s", c.name, diff)
		}
	}
	var appProbes map[string]struct {
		HTTPGet        *corev1.HTTPGetAction `json:"httpGet"`
		TimeoutSeconds int32                 `json:"timeoutSeconds"`
	}
	if env := envValue(proxy, "MESHGATE_APP_PROBES"); env == "" {
		t.Errorf("meshgate-proxy has no MESHGATE_APP_PROBES; env: %s", jsonOf(proxy.Env))
	} else if err := json.Unmarshal([]byte(env), &appProbes); err != nil {
		t.Errorf("MESHGATE_APP_PROBES %s: %v", env, err)
	} else {
		for _, path := range []string{"/app-health/web/readyz", "/app-health/web/livez"} {
			p, ok := appProbes[path]
			if !ok || p.HTTPGet == nil || p.HTTPGet.Path != "/" || p.HTTPGet.Port.IntValue() != 8080 {
				t.Errorf("MESHGATE_APP_PROBES[%q] = %s; want httpGet / on port 8080 (the named port http resolved)", path, jsonOf(p))
			}
		}
	}

	// The certificate from the CA server: its root and the bootstrap token
	// of the pod's service account, mounted into the sidecar.
	for _, v := range []struct{ what, mount string }{
		{"configMap meshgate-ca-root", "/var/run/meshgate/ca"},
		{"secret meshgate-token-web", "/var/run/meshgate/token"},
	} {
		vol := volumeOf(got.Spec.Volumes, v.what)
		if vol == "" {
			t.Errorf("no volume from %s; volumes: %s", v.what, jsonOf(got.Spec.Volumes))
			continue
		}
		if !slices.ContainsFunc(proxy.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == vol && m.MountPath == v.mount }) {
			t.Errorf("meshgate-proxy does not mount volume %s (%s) at %s; mounts: %s", vol, v.what, v.mount, jsonOf(proxy.VolumeMounts))
		}
	}

	// The webhook does what 'meshgate inject -f' does: inject the pod the
	// webhook saw — the ReplicaSet's template, as the controller sent it
	// (owner references aside), with the API server's defaults applied —
	// with the command line, store both the same way, compare.
	tmpl := rs.Spec.Template.DeepCopy()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: got.GenerateName, Labels: tmpl.Labels, Annotations: tmpl.Annotations},
		Spec:       tmpl.Spec,
	}
	defaulted, err := cp.dryRunPod(t, pod, plain)
	if err != nil {
		t.Fatalf("dry run of the pod in namespace %s: %v", plain, err)
	}
	defaulted.Namespace, defaulted.Name = ns, ""
	cli := injectCLI(t, defaulted)
	want, err := cp.dryRunPod(t, cli, plain)
	if err != nil {
		t.Fatalf("dry run of the pod 'meshgate inject -f' made: %v", err)
	}
	if diff := cmp.Diff(want.Spec, got.Spec); diff != "" {
		t.Errorf("the webhook's pod differs from 'meshgate inject -f' (-cli +webhook):\n%s", diff)
	}
	if diff := cmp.Diff(meshgateKeys(want.Annotations), meshgateKeys(got.Annotations)); diff != "" {
		t.Errorf("meshgate.io/ annotations differ (-cli +webhook):\n%s", diff)
	}
}

// injectCLI runs 'meshgate inject -f -' on pod.
func injectCLI(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	p := pod.DeepCopy()
	p.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
	p.ResourceVersion, p.UID, p.CreationTimestamp, p.ManagedFields = "", "", metav1.Time{}, nil
	in, err := yaml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "inject", "-f", "-")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(in), &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("meshgate inject -f -: %v\n%s", err, stderr.String())
	}
	var out corev1.Pod
	if err := yaml.UnmarshalStrict(stdout.Bytes(), &out); err != nil {
		t.Fatalf("meshgate inject -f - output: %v\n%s", err, stdout.String())
	}
	return &out
}

// testLeavesOthersUntouched: a pod that opts out with its annotation, a
// pod in a namespace without the label and one in kube-system (excluded
// even when labelled) are stored as they were sent.
func testLeavesOthersUntouched(t *testing.T, cp *controlPlane, docs []*unstructured.Unstructured) {
	mesh := cp.newNamespace(t, "mesh", map[string]string{injectLabel: "enabled"})
	plain := cp.newNamespace(t, "plain", nil)
	var d appsv1.Deployment
	convert(t, find(t, docs, "Deployment", "meshgate-demo", "web"), &d)

	ctx := ctxFor(t, 10*time.Second)
	ks, err := cp.cs.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ks.Labels = mergeMaps(ks.Labels, map[string]string{injectLabel: "enabled"})
	if _, err := cp.cs.CoreV1().Namespaces().Update(ctx, ks, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	optOut := podFromTemplate(&d, mesh)
	optOut.Annotations = mergeMaps(optOut.Annotations, map[string]string{injectLabel: "false"})
	for _, c := range []struct {
		name string
		pod  *corev1.Pod
	}{
		{"opted out with meshgate.io/inject: \"false\"", optOut},
		{"in a namespace without the label", podFromTemplate(&d, plain)},
		{"in kube-system, labelled", podFromTemplate(&d, "kube-system")},
	} {
		t.Run(c.name, func(t *testing.T) {
			// What the API server stores with no webhook involved.
			want, err := cp.dryRunPod(t, c.pod, plain)
			if err != nil {
				t.Fatalf("dry run in %s: %v", plain, err)
			}
			got := cp.createPod(t, c.pod)
			if diff := cmp.Diff(want.Spec, got.Spec); diff != "" {
				t.Errorf("pod changed (-sent +stored):\n%s", diff)
			}
			if diff := cmp.Diff(want.Annotations, got.Annotations); diff != "" {
				t.Errorf("annotations changed (-sent +stored):\n%s", diff)
			}
		})
	}
}

// testFailurePolicy: with the webhook down, failurePolicy Ignore lets pods
// be created (uninjected) and Fail refuses them.
func testFailurePolicy(t *testing.T, cp *controlPlane, docs []*unstructured.Unstructured, inj *injector, hook *admissionv1.MutatingWebhookConfiguration) {
	mesh := cp.newNamespace(t, "mesh", map[string]string{injectLabel: "enabled"})
	var d appsv1.Deployment
	convert(t, find(t, docs, "Deployment", "meshgate-demo", "web"), &d)
	pod := podFromTemplate(&d, mesh)

	inj.stop(t)

	setPolicy := func(p admissionv1.FailurePolicyType) {
		t.Helper()
		ctx := ctxFor(t, 10*time.Second)
		h, err := cp.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, hook.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		h.Webhooks[0].FailurePolicy = &p
		if _, err := cp.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(ctx, h, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("set failurePolicy %s: %v", p, err)
		}
	}

	// The API server applies a changed webhook configuration once its
	// informer sees it: try dry runs until the new policy shows.
	setPolicy(admissionv1.Ignore)
	eventually(t, 20*time.Second, func() error {
		_, err := cp.dryRunPod(t, pod, mesh)
		return err
	})
	got := cp.createPod(t, pod)
	if names := append(containerNames(got.Spec.InitContainers), containerNames(got.Spec.Containers)...); !slices.Equal(names, []string{"web"}) {
		t.Errorf("failurePolicy Ignore, webhook down: containers %v; want [web], uninjected", names)
	}

	setPolicy(admissionv1.Fail)
	eventually(t, 20*time.Second, func() error {
		if _, err := cp.dryRunPod(t, pod, mesh); err == nil {
			return errors.New("pod accepted with failurePolicy Fail and the webhook down")
		}
		return nil
	})
	_, err := cp.cs.CoreV1().Pods(mesh).Create(ctxFor(t, 20*time.Second), pod, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "failed calling webhook") || !strings.Contains(err.Error(), hook.Webhooks[0].Name) {
		t.Errorf("failurePolicy Fail, webhook down: create pod: err %v; want a refusal naming webhook %s", err, hook.Webhooks[0].Name)
	}
}

func containerNames(cs []corev1.Container) []string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// volumeOf returns the name of the volume whose source is what
// ("configMap NAME" or "secret NAME").
func volumeOf(vols []corev1.Volume, what string) string {
	for _, v := range vols {
		switch {
		case v.ConfigMap != nil && what == "configMap "+v.ConfigMap.Name,
			v.Secret != nil && what == "secret "+v.Secret.SecretName:
			return v.Name
		}
	}
	return ""
}

func meshgateKeys(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if strings.HasPrefix(k, "meshgate.io/") {
			out[k] = v
		}
	}
	return out
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// syncBuffer is an io.Writer safe for the goroutines of os/exec.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return lastLines(b.buf.String(), n)
}
