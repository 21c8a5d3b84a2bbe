package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// The tests of this file run meshgate the way users of containers meet
// it: the image built by podman from the repository's Dockerfile, real
// containers run by podman and runc, enrolled from the host with "meshgate
// enroll --pid", and pods played by "podman kube play" from the manifests
// "meshgate inject" writes (issue 14, DESIGN §8).
//
// Every container lives on a podman network of the test's own, internal
// (no gateway, no NAT, no route off the machine); the host gets an
// address on its bridge, as a node has one on its pods' network, to probe
// them as kubelet would.

const podmanImage = "localhost/meshgate:e2e"

// baseImage is the Dockerfile's base; "make base-image" provides it.
const baseImage = "docker.io/library/debian:bookworm-slim"

var imageBuild struct {
	once sync.Once
	err  error
	out  string
}

// needPodman skips nothing: where podman or the base image is missing,
// the test fails, saying which make target provides it.
func needPodman(t *testing.T) {
	t.Helper()
	needRoot(t)
	for _, tool := range []string{"podman", "runc", "catatonit", "tcpdump", "tshark", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("e2e: %s not found: run 'make podman-deps deps'", tool)
		}
	}
	if os.Getenv("CONTAINERS_CONF") == "" {
		// What podman 4.3 needs on these machines (see the file).
		abs, err := filepath.Abs("../scripts/containers.conf")
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("CONTAINERS_CONF", abs)
	}
	if _, err := podman(t, "image", "exists", baseImage); err != nil {
		t.Fatalf("e2e: podman has no %s, the Dockerfile's base image: run 'make base-image'", baseImage)
	}
}

// buildImage builds the image from the repository's Dockerfile with the
// meshgate binary under test, once per test run.
func buildImage(t *testing.T) string {
	t.Helper()
	imageBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "meshgate-image-")
		if err != nil {
			imageBuild.err = err
			return
		}
		defer os.RemoveAll(dir)
		for _, f := range []string{"Dockerfile", ".dockerignore"} {
			b, err := os.ReadFile(filepath.Join("..", f))
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, f), b, 0o644)
			}
			if err != nil {
				imageBuild.err = err
				return
			}
		}
		b, err := os.ReadFile(bin)
		if err == nil {
			err = os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "bin", "meshgate"), b, 0o755)
		}
		if err != nil {
			imageBuild.err = err
			return
		}
		old, _ := podman(t, "image", "inspect", "-f", "{{.Id}}", podmanImage)
		// The host's network for the build steps: podman sets up no
		// network (nor firewall chains) on the host for them.
		imageBuild.out, imageBuild.err = podman(t, "build", "--pull=never", "--network=host", "-t", podmanImage, dir)
		if imageBuild.err != nil {
			return
		}
		// The last run's image, untagged now unless this build made the
		// very same one (same binary, same layers): not kept for ever.
		now, _ := podman(t, "image", "inspect", "-f", "{{.Id}}", podmanImage)
		if old, now = strings.TrimSpace(old), strings.TrimSpace(now); old != "" && old != now {
			podman(t, "rmi", old)
		}
	})
	if imageBuild.err != nil {
		t.Fatalf("podman build of the Dockerfile: %v\n%s", imageBuild.err, tail(imageBuild.out, 30))
	}
	return podmanImage
}

// podman runs podman and returns its combined output.
func podman(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "podman", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("podman %s: %w: %s", strings.Join(args, " "), err, tail(string(out), 10))
	}
	return string(out), nil
}

func mustPodman(t *testing.T, args ...string) string {
	t.Helper()
	out, err := podman(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// podNet is a podman network of a test's own.
type podNet struct {
	t      *testing.T
	name   string
	subnet netip.Prefix
	bridge string
	node   netip.Addr // the host's address on the bridge
}

// newPodNet creates an internal podman network and removes it, and every
// container on it, when the test ends. netavark turns on IPv4 forwarding
// for a network: the host's setting is put back.
func newPodNet(t *testing.T) *podNet {
	t.Helper()
	forward, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	n := &podNet{
		t:      t,
		name:   fmt.Sprintf("mge2e-%d", os.Getpid()%10000),
		subnet: netip.MustParsePrefix(fmt.Sprintf("10.213.%d.0/24", os.Getpid()%200+10)),
	}
	// Containers get addresses from the lower half; the node's is .254.
	a := n.subnet.Addr().As4()
	a[3] = 254
	n.node = netip.AddrFrom4(a)
	mustPodman(t, "network", "create", "--internal", "--disable-dns", "--subnet", n.subnet.String(),
		"--ip-range", netip.PrefixFrom(n.subnet.Addr(), 25).String(), n.name)
	t.Cleanup(func() {
		// Containers and pods on the network first (a pod by its
		// containers), then the network.
		ids, _ := podman(t, "ps", "-a", "-q", "--filter", "network="+n.name)
		for _, id := range strings.Fields(ids) {
			podman(t, "rm", "-f", "-t", "0", id)
		}
		pods, _ := podman(t, "pod", "ps", "-q", "--filter", "network="+n.name)
		for _, id := range strings.Fields(pods) {
			podman(t, "pod", "rm", "-f", "-t", "0", id)
		}
		if _, err := podman(t, "network", "rm", "-f", n.name); err != nil {
			t.Errorf("podman network %s left behind: %v", n.name, err)
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", forward, 0o644); err != nil {
			t.Errorf("putting back ip_forward: %v", err)
		}
	})
	n.bridge = mustPodman(t, "network", "inspect", "-f", "{{.NetworkInterface}}", n.name)
	return n
}

// nodeAddress gives the host an address on the network's bridge, as a
// node has on its pods' network; the bridge exists once a container is
// on it, and goes with the network.
func (n *podNet) nodeAddress(t *testing.T) {
	t.Helper()
	cmd := exec.Command("ip", "addr", "replace", netip.PrefixFrom(n.node, n.subnet.Bits()).String(), "dev", n.bridge)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
}

// ipOf is the address of container c on the network.
func (n *podNet) ipOf(t *testing.T, c string) netip.Addr {
	t.Helper()
	s := mustPodman(t, "inspect", "-f", `{{(index .NetworkSettings.Networks "`+n.name+`").IPAddress}}`, c)
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatalf("container %s: address %q: %v", c, s, err)
	}
	return a
}

// pidOf is the host PID of container c's first process.
func pidOf(t *testing.T, c string) string {
	t.Helper()
	return mustPodman(t, "inspect", "-f", "{{.State.Pid}}", c)
}

// curlFrom runs curl in the network namespace of container c (nsenter
// from the host: a process of UID 0 there, captured like the app's own).
func curlFrom(t *testing.T, c string, args ...string) (string, error) {
	t.Helper()
	argv := append([]string{"-t", pidOf(t, c), "-n", "curl", "-sS", "--max-time", "10"}, args...)
	out, err := exec.Command("nsenter", argv...).CombinedOutput()
	return string(out), err
}

// bridgeCapture records the TCP traffic that crosses the network's
// bridge, between the containers.
type bridgeCapture struct {
	cmd  *exec.Cmd
	file string
	out  *bytes.Buffer
}

func (n *podNet) capture(t *testing.T, filter string) *bridgeCapture {
	t.Helper()
	c := &bridgeCapture{file: filepath.Join(t.TempDir(), "bridge.pcap"), out: new(bytes.Buffer)}
	c.cmd = exec.Command("tcpdump", "-n", "--immediate-mode", "-U", "-Z", "root", "-i", n.bridge, "-w", c.file, filter)
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.cmd.Process.Kill(); c.cmd.Wait() })
	waitFor(t, "tcpdump to listen", 15*time.Second, func() bool { return strings.Contains(c.out.String(), "listening on") })
	return c
}

// stop ends the capture and returns tshark's reading of it: the frames
// that match display, with the fields asked, port 8080 read as TLS.
func (c *bridgeCapture) stop(t *testing.T) {
	t.Helper()
	time.Sleep(100 * time.Millisecond)
	c.cmd.Process.Signal(os.Interrupt)
	c.cmd.Wait()
}

func (c *bridgeCapture) fields(t *testing.T, display string, fields ...string) string {
	t.Helper()
	argv := []string{"-n", "-r", c.file, "-d", "tcp.port==8080,tls", "-T", "fields", "-Y", display}
	for _, f := range fields {
		argv = append(argv, "-e", f)
	}
	out, err := exec.Command("tshark", argv...).Output()
	if err != nil {
		t.Fatalf("tshark %s: %v", strings.Join(argv, " "), err)
	}
	return strings.TrimSpace(string(out))
}

// demoReply is what demo-app answers on GET /.
type demoReply struct {
	Name       string `json:"name"`
	ClientCert string `json:"client_cert"`
}

func getDemo(t *testing.T, from, url string) (demoReply, error) {
	t.Helper()
	out, err := curlFrom(t, from, "-f", url)
	if err != nil {
		return demoReply{}, fmt.Errorf("curl %s from %s: %v: %s", url, from, err, out)
	}
	var r demoReply
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return demoReply{}, fmt.Errorf("curl %s from %s: %v: %q", url, from, err, out)
	}
	return r, nil
}

// TestPodmanEnrollRunningContainers (issue 14, 3a): two containers that
// podman runs, neither knowing of a mesh, are enrolled from the host with
// "meshgate enroll --pid", with no restart. From then on what one sends
// the other crosses the wire as mTLS only, and the server's app learns
// the client's SPIFFE ID; "enroll --cleanup" puts both back as they were,
// still running.
func TestPodmanEnrollRunningContainers(t *testing.T) {
	needPodman(t)
	image := buildImage(t)
	net := newPodNet(t)
	ca := meshCA(t)

	run := func(name string) string {
		c := net.name + "-" + name
		mustPodman(t, "run", "-d", "--name", c, "--network", net.name, "--user", "1000", image,
			"demo-app", "--name", name, "--http", ":8080")
		return c
	}
	web, client := run("web"), run("client")
	webIP := net.ipOf(t, web)
	webURL := url(webIP, 8080, "/")
	eventually(t, 10*time.Second, func() error { _, err := getDemo(t, client, webURL); return err })
	webPID, clientPID := pidOf(t, web), pidOf(t, client)

	stateDir := t.TempDir()
	for c, pid := range map[string]string{web: webPID, client: clientPID} {
		name := strings.TrimPrefix(c, net.name+"-")
		id := spiffeForName(name)
		certs := certsFor(t, ca, name, id)
		mustMeshgate(t, "enroll", "--pid", pid, "--state-dir", stateDir, "--cert-dir", certs, "--mesh-cidrs", net.subnet.String())
		t.Cleanup(func() { meshgate(t, "enroll", "--cleanup", "--pid", pid, "--state-dir", stateDir) })
	}

	capt := net.capture(t, "tcp")
	var got demoReply
	eventually(t, 10*time.Second, func() (err error) { got, err = getDemo(t, client, webURL); return err })
	capt.stop(t)
	if want := spiffeForName("client"); !strings.Contains(got.ClientCert, want) {
		t.Errorf("web's app saw client certificate %q; want the client's ID %s", got.ClientCert, want)
	}
	if http := capt.fields(t, "http", "frame.number"); http != "" {
		t.Errorf("plaintext HTTP crossed the bridge between enrolled containers (frames %s)", strings.Fields(http))
	}
	if hello := capt.fields(t, "tls.handshake.type == 1", "ip.src", "ip.dst"); !strings.Contains(hello, webIP.String()) {
		t.Errorf("no TLS ClientHello to web %s crossed the bridge; frames with a ClientHello:\n%s", webIP, hello)
	}

	// Unenroll: the rules go, the sidecars stop, the apps run on, and
	// plaintext is what crosses again.
	for _, pid := range []string{webPID, clientPID} {
		mustMeshgate(t, "enroll", "--cleanup", "--pid", pid, "--state-dir", stateDir)
	}
	for _, c := range []string{web, client} {
		if s := mustPodman(t, "inspect", "-f", "{{.State.Status}}", c); s != "running" {
			t.Errorf("container %s is %s after unenrolling; want running (untouched)", c, s)
		}
		if pid := pidOf(t, c); pid != map[string]string{web: webPID, client: clientPID}[c] {
			t.Errorf("container %s restarted (pid %s)", c, pid)
		}
	}
	if got, err := getDemo(t, client, webURL); err != nil || got.ClientCert != "" {
		t.Errorf("after --cleanup: reply %+v, %v; want a plaintext answer with no client certificate", got, err)
	}
}

// playInjected writes the manifest, runs "meshgate inject" over it with
// args, turns the certificate secret into a host directory (podman has no
// secret store to fill here), and plays it on the network; it returns the
// injected manifest.
func (n *podNet) playInjected(t *testing.T, manifest string, certs string, args ...string) map[string]any {
	t.Helper()
	in := filepath.Join(t.TempDir(), "in.yaml")
	if err := os.WriteFile(in, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"inject", "-f", in}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("meshgate inject: %v\n%s", err, stderr.String())
	}
	var obj map[string]any
	if err := yaml.Unmarshal(stdout.Bytes(), &obj); err != nil {
		t.Fatalf("meshgate inject output: %v\n%s", err, stdout.String())
	}
	pod := obj
	if obj["kind"] == "Job" {
		// podman plays pods, not Jobs: play the pod the Job controller
		// would create from the template.
		tmpl := dig(obj, "spec", "template").(map[string]any)
		meta, _ := tmpl["metadata"].(map[string]any)
		if meta == nil {
			meta = map[string]any{}
		}
		meta["name"] = dig(obj, "metadata", "name")
		pod = map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": tmpl["spec"]}
	}
	spec := pod["spec"].(map[string]any)
	for _, v := range spec["volumes"].([]any) {
		vol := v.(map[string]any)
		if _, ok := vol["secret"]; ok {
			delete(vol, "secret")
			vol["hostPath"] = map[string]any{"path": certs, "type": "Directory"}
		}
	}
	// podman kube play publishes a container's ports on the host, which
	// Kubernetes does not: leave them out (named ports are resolved by
	// now), so the pods are reached on their own addresses only.
	for _, list := range []string{"initContainers", "containers"} {
		cs, _ := spec[list].([]any)
		for _, c := range cs {
			delete(c.(map[string]any), "ports")
		}
	}
	out, err := yaml.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	play := filepath.Join(t.TempDir(), "play.yaml")
	if err := os.WriteFile(play, out, 0o644); err != nil {
		t.Fatal(err)
	}
	mustPodman(t, "kube", "play", "--network", n.name, play)
	name := pod["metadata"].(map[string]any)["name"].(string)
	t.Cleanup(func() { podman(t, "pod", "rm", "-f", "-t", "0", name) })
	return obj
}

// dig walks nested maps.
func dig(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

// waitExited waits until container c has exited and returns its exit
// code.
func waitExited(t *testing.T, c string, limit time.Duration) int {
	t.Helper()
	for deadline := time.Now().Add(limit); ; time.Sleep(200 * time.Millisecond) {
		status := mustPodman(t, "inspect", "-f", "{{.State.Status}}", c)
		if status == "exited" || status == "stopped" {
			break
		}
		if time.Now().After(deadline) {
			ps, _ := podman(t, "top", c, "pid", "ppid", "user", "args")
			logs, _ := podman(t, "logs", c)
			t.Fatalf("%s still %s after %s; its processes:\n%s\nits log:\n%s", c, status, limit, ps, tail(logs, 30))
		}
	}
	code, err := strconv.Atoi(mustPodman(t, "inspect", "-f", "{{.State.ExitCode}}", c))
	if err != nil {
		t.Fatal(err)
	}
	return code
}

const webPodManifest = `apiVersion: v1
kind: Pod
metadata:
  name: NAME
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: IMAGE
    args: [demo-app, --name, NAME, --http, ":8080"]
    securityContext: {runAsUser: 1000}
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /, port: http}
      periodSeconds: 2
`

const jobManifest = `apiVersion: batch/v1
kind: Job
metadata:
  name: NAME
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: app
        image: IMAGE
        args: [demo-app, --name, NAME, --http, ":8080"]
        securityContext: {runAsUser: 1000}
`

// TestPodmanInjectedPods (issue 14, 3b): pods as Kubernetes would run
// them, from the manifests "meshgate inject" writes (classic sidecars:
// podman 4.3 does not run native ones), played by podman: the init
// container installs the rules and checks them, the sidecar container
// and the app share the pod's network namespace.
//   - A request from a second pod reaches the app over mTLS only.
//   - The app's HTTP readiness probe, rewritten to the sidecar's health
//     port, passes in strict mode, where the original probe could not,
//     and fails once the app is gone.
//   - A Job's pod: when its app container stops, the sidecar exits 0, so
//     the Job can finish.
func TestPodmanInjectedPods(t *testing.T) {
	needPodman(t)
	image := buildImage(t)
	net := newPodNet(t)
	ca := meshCA(t)
	inject := []string{"--native-sidecar=false", "--cert-source", "secret", "--image", image, "--mesh-cidrs", net.subnet.String()}
	fill := func(m, name string) string {
		return strings.NewReplacer("NAME", name, "IMAGE", image).Replace(m)
	}
	web, client := net.name+"-web", net.name+"-client"
	net.playInjected(t, fill(webPodManifest, web), certsFor(t, ca, "web", spiffeForName("web")), inject...)
	net.playInjected(t, fill(webPodManifest, client), certsFor(t, ca, "client", spiffeForName("client")), inject...)
	net.nodeAddress(t)

	for _, p := range []string{web, client} {
		initDone(t, p)
	}
	webIP := net.ipOf(t, web+"-app")
	webURL := url(webIP, 8080, "/")

	// Kubelet's view: the rewritten probe on the sidecar's health port
	// passes once the app is up; the original one, plaintext to the
	// app's port, is refused by the strict inbound port.
	probe := url(webIP, 15021, "/app-health/app/readyz")
	eventually(t, 20*time.Second, func() error { return httpStatus(probe, http.StatusOK) })
	if err := httpStatus(webURL, http.StatusOK); err == nil {
		t.Errorf("the original probe, plaintext to %s, passed: the inbound port is not strict", webURL)
	}

	capt := net.capture(t, "tcp port 8080")
	var got demoReply
	eventually(t, 20*time.Second, func() (err error) { got, err = getDemo(t, client+"-app", webURL); return err })
	capt.stop(t)
	if !strings.Contains(got.ClientCert, spiffeForName("client")) {
		t.Errorf("web's app saw client certificate %q; want %s", got.ClientCert, spiffeForName("client"))
	}
	if h := capt.fields(t, "http", "frame.number"); h != "" {
		t.Errorf("plaintext HTTP crossed the bridge between the pods (frames %s)", strings.Fields(h))
	}
	if h := capt.fields(t, "tls.handshake.type == 1", "ip.dst"); !strings.Contains(h, webIP.String()) {
		t.Errorf("no TLS ClientHello to web %s crossed the bridge", webIP)
	}

	// The app goes: its readiness, through the sidecar, says so.
	mustPodman(t, "stop", "-t", "2", web+"-app")
	if err := waitStatus(probe, http.StatusServiceUnavailable, 10*time.Second); err != nil {
		logs, _ := podman(t, "logs", web+"-meshgate-proxy")
		ps, _ := podman(t, "ps", "-a", "--pod", "--filter", "pod="+web, "--format", "{{.Names}} {{.Status}}")
		t.Fatalf("after the app stopped, its readiness through the sidecar: %v\ncontainers:\n%s\nsidecar log:\n%s", err, ps, tail(logs, 20))
	}

	// A Job's pod: the sidecar leaves with the app.
	job := net.name + "-job"
	net.playInjected(t, fill(jobManifest, job), certsFor(t, ca, "job", spiffeForName("job")), inject...)
	initDone(t, job)
	eventually(t, 20*time.Second, func() error {
		return httpStatus(url(net.ipOf(t, job+"-app"), 15021, "/healthz/ready"), http.StatusOK)
	})
	// The app runs a while, as a Job's does: the sidecar has seen it.
	waitFor(t, "the Job's sidecar to see the app's processes", 10*time.Second, func() bool {
		logs, _ := podman(t, "logs", job+"-meshgate-proxy")
		return strings.Contains(logs, "watching the app's processes")
	})
	mustPodman(t, "stop", "-t", "2", job+"-app")
	if code := waitExited(t, job+"-meshgate-proxy", 30*time.Second); code != 0 {
		logs, _ := podman(t, "logs", job+"-meshgate-proxy")
		t.Errorf("the Job's sidecar exited %d once its app stopped; want 0\n%s", code, tail(logs, 20))
	}
}

// initDone checks that pod's init container did its work: podman runs it
// before the pod's other containers and removes it once it succeeded (it
// would not have started them had it failed), and the rules it installed
// are in the pod's namespace.
func initDone(t *testing.T, pod string) {
	t.Helper()
	waitFor(t, pod+"'s app container to run", 30*time.Second, func() bool {
		s, err := podman(t, "inspect", "-f", "{{.State.Status}}", pod+"-app")
		return err == nil && strings.TrimSpace(s) == "running"
	})
	if s, err := podman(t, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", pod+"-meshgate-init"); err == nil && strings.TrimSpace(s) != "exited 0" {
		logs, _ := podman(t, "logs", pod+"-meshgate-init")
		t.Fatalf("%s: init container %s:\n%s", pod, s, logs)
	}
	out, err := exec.Command("nsenter", "-t", pidOf(t, pod+"-app"), "-n", "iptables-save", "-t", "nat").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "-A MESHGATE_INBOUND") {
		t.Fatalf("%s: no capture rules in the pod's namespace after its init container (%v):\n%s", pod, err, out)
	}
}

// waitStatus tries httpStatus until it holds or limit has passed, and
// returns its last error.
func waitStatus(url string, want int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		err := httpStatus(url, want)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// httpStatus GETs url from the host, on a connection of its own as
// kubelet's prober does, and checks the status.
func httpStatus(url string, want int) error {
	c := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != want {
		return fmt.Errorf("GET %s: %s %q; want %d", url, resp.Status, body, want)
	}
	return nil
}
