package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"meshgate/intercept"
	"meshgate/nsrun"
	meshsidecar "meshgate/sidecar"
	"meshgate/topology"
)

// bin is the meshgate binary under test, built once by TestMain.
var bin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	if testing.Short() || os.Geteuid() != 0 {
		// Every test skips itself with the reason.
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "meshgate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The sidecar runs as intercept.ProxyUID: it must be able to reach the binary.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bin = filepath.Join(dir, "meshgate")
	build := exec.Command("go", "build", "-o", bin, "meshgate/cmd/meshgate")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build makes it
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building meshgate:", err)
		return 1
	}
	code := m.Run()
	if left := topology.Leftovers(); len(left) > 0 {
		fmt.Fprintln(os.Stderr, "e2e: namespaces left behind:", left)
		return 1
	}
	return code
}

func needRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: needs root, network namespaces and iptables; skipped in -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("e2e: needs root to create network namespaces and iptables rules")
	}
	for _, tool := range []string{"iptables", "ip6tables", "curl", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("e2e: %s not found: run 'make deps' (apt-get install iptables iproute2 curl)", tool)
		}
	}
}

// newLab builds a lab with the named pods and removes it when the test ends,
// failing the test if anything is left behind.
func newLab(t *testing.T, names ...string) []*topology.Pod {
	t.Helper()
	_, pods := newLabWith(t, names...)
	return pods
}

// newLabWith is newLab that also returns the lab, for captures.
func newLabWith(t *testing.T, names ...string) (*topology.Lab, []*topology.Pod) {
	t.Helper()
	lab, err := topology.New(topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns := lab.Namespaces()
		if err := lab.Close(); err != nil {
			t.Errorf("lab cleanup: %v", err)
		}
		for _, n := range ns {
			if _, err := os.Stat("/run/netns/" + n); err == nil {
				t.Errorf("namespace %s left behind", n)
			}
		}
	})
	pods := make([]*topology.Pod, len(names))
	for i, n := range names {
		if pods[i], err = lab.AddPod(n); err != nil {
			t.Fatal(err)
		}
	}
	return lab, pods
}

// publicTempDir is a temporary directory that the sidecar's UID can read.
func publicTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "meshgate-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// meshgate runs the binary on the host and returns its combined output.
func meshgate(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

func mustMeshgate(t *testing.T, args ...string) string {
	t.Helper()
	out, err := meshgate(t, args...)
	if err != nil {
		t.Fatalf("meshgate %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// startApp runs the example workload in pod: HTTP on 8080, TCP echo on 9000.
func startApp(t *testing.T, pod *topology.Pod) *topology.Process {
	t.Helper()
	p, err := pod.Start([]string{bin, "demo-app", "--name", pod.Name, "--http", ":8080", "--echo", ":9000"}, topology.ProcOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitListening(t, pod, netip.AddrPortFrom(pod.IPv4, 8080), p)
	waitListening(t, pod, netip.AddrPortFrom(pod.IPv4, 9000), p)
	return p
}

// waitListening waits until addr accepts connections inside pod, failing
// at once if p (when not nil) exits first.
func waitListening(t *testing.T, pod *topology.Pod, addr netip.AddrPort, p *topology.Process) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p != nil {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			select {
			case <-p.Done():
				cancel()
			case <-stop:
			}
		}()
	}
	if err := pod.WaitListening(ctx, addr); err != nil {
		if p != nil && p.Exited() {
			t.Fatalf("%s exited before listening on %s:\n%s", p.Cmd.Path, addr, p.Output())
		}
		t.Fatalf("nothing listening on %s in pod %s: %v", addr, pod.Name, err)
	}
}

// eventually runs check until it returns nil, and fails the test with its
// last error once limit has passed. Tests wait for what they expect rather
// than sleep and then look: a sleep long enough on an idle machine is too
// short on a busy one. A check of an exact count passes once the count is
// reached; one that goes past it fails at limit with the count it saw.
// The pause between tries grows from 20 ms to 250 ms.
func eventually(t *testing.T, limit time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	pause := 20 * time.Millisecond
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still, after %s: %v", limit, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, 250*time.Millisecond)
	}
}

// waitFor is eventually for a condition that needs no explaining beyond
// what it is.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	eventually(t, limit, func() error {
		if cond() {
			return nil
		}
		return fmt.Errorf("waiting for %s", what)
	})
}

// sidecar is a meshgate proxy running in a pod.
type sidecar struct {
	pod  *topology.Pod
	proc *topology.Process
}

// enrollOpts says how to enroll a pod by hand (redirect + proxy).
type enrollOpts struct {
	redirectArgs []string // extra flags for meshgate redirect
	proxyConfig  string   // YAML for --config; empty runs on defaults
	proxyArgs    []string // extra flags for meshgate proxy
	uid          *uint32  // run the proxy as this UID; nil = intercept.ProxyUID
	root         bool     // run the proxy as root
	rulesFirst   bool     // install the rules before starting the proxy, as an init container does
}

// exemption is one way the capture rules keep the sidecar's own traffic
// from being captured again: DESIGN §3 exempts it by socket mark or by
// UID, and either alone must suffice.
type exemption struct {
	name string
	opts enrollOpts // applied over a test's own options (see with)
}

// exemptions are the two, each alone: the mark, with the sidecar running
// as root (which no UID rule covers) and the rules exempting no UID; and
// the UID, with the sidecar as 1337 marking nothing and the rules
// exempting no mark.
var exemptions = []exemption{
	{"mark-only", enrollOpts{redirectArgs: []string{"--proxy-uid", "none"}, root: true}},
	{"uid-only", enrollOpts{redirectArgs: []string{"--proxy-mark", "0"}, proxyConfig: "mark: 0\n"}},
}

// with returns o under the exemption alone.
func (e exemption) with(o enrollOpts) enrollOpts {
	o.redirectArgs = append(slices.Clip(o.redirectArgs), e.opts.redirectArgs...)
	o.proxyConfig += e.opts.proxyConfig
	o.root = e.opts.root
	return o
}

// eachExemption runs test as a sub-test under each exemption.
func eachExemption(t *testing.T, test func(t *testing.T, e exemption)) {
	for _, e := range exemptions {
		t.Run(e.name, func(t *testing.T) { test(t, e) })
	}
}

// enroll starts a sidecar in pod and installs the redirect rules, the way
// an init container and a sidecar container would; both are undone when
// the test ends. The rules go in once the sidecar is ready, unless
// o.rulesFirst.
func enroll(t *testing.T, pod *topology.Pod, o enrollOpts) *sidecar {
	t.Helper()
	redirect := func() {
		rargs := append([]string{"redirect", "--netns", pod.Path()}, o.redirectArgs...)
		mustMeshgate(t, rargs...)
		t.Cleanup(func() {
			if out, err := meshgate(t, "redirect", "--netns", pod.Path(), "--cleanup"); err != nil {
				t.Errorf("redirect --cleanup in %s: %v\n%s", pod.Name, err, out)
			}
		})
	}
	if o.rulesFirst {
		redirect()
	}
	args := []string{bin, "proxy", "--log-level", "debug"}
	if o.proxyConfig != "" {
		f := filepath.Join(publicTempDir(t), "proxy.yaml")
		if err := os.WriteFile(f, []byte(o.proxyConfig), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", f)
	}
	args = append(args, o.proxyArgs...)
	var po topology.ProcOptions
	if !o.root {
		uid := intercept.ProxyUID
		if o.uid != nil {
			uid = *o.uid
		}
		po.UID = &uid
	}
	proc, err := pod.Start(args, po)
	if err != nil {
		t.Fatal(err)
	}
	sc := &sidecar{pod: pod, proc: proc}
	t.Cleanup(func() {
		if err := proc.Stop(10 * time.Second); err != nil {
			t.Errorf("sidecar in %s: exit: %v\n%s", pod.Name, err, tail(proc.Output(), 20))
		}
		if t.Failed() {
			t.Logf("sidecar log of %s:\n%s", pod.Name, tail(proc.Output(), 40))
		}
	})
	sc.waitReady(t)
	if !o.rulesFirst {
		redirect()
	}
	return sc
}

func (s *sidecar) waitReady(t *testing.T) {
	t.Helper()
	switch err := meshsidecar.WaitReady(ctxFor(t, 10*time.Second), s.pod.Dial, intercept.HealthPort, s.proc.Done()); {
	case errors.Is(err, meshsidecar.ErrExited):
		t.Fatalf("sidecar in %s exited:\n%s", s.pod.Name, s.proc.Output())
	case err != nil:
		t.Fatalf("sidecar in %s not ready after 10s (%v):\n%s", s.pod.Name, err, tail(s.proc.Output(), 20))
	}
}

// podGet makes an HTTP GET from inside pod (for the sidecar's own
// endpoints, which are never captured).
func podGet(pod *topology.Pod, url string) (int, string, error) {
	resp, err := pod.HTTPClient(5 * time.Second).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metrics scrapes the sidecar's Prometheus endpoint.
func (s *sidecar) metrics(t *testing.T) topology.Samples {
	t.Helper()
	m, err := s.pod.Scrape(ctxFor(t, 10*time.Second), intercept.MetricsPort)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// conns returns the connections opened through the sidecar in direction.
func (s *sidecar) conns(t *testing.T, direction string) float64 {
	return s.metrics(t)["meshgate_tcp_connections_opened_total{direction="+direction+"}"]
}

// logLine is one JSON line of a sidecar's log.
type logLine map[string]any

// closedConns returns the sidecar's "connection closed" log lines.
func (s *sidecar) closedConns() []logLine {
	var out []logLine
	sc := bufio.NewScanner(strings.NewReader(s.proc.Output()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l["msg"] == "connection closed" {
			out = append(out, l)
		}
	}
	return out
}

// waitLog waits until a "connection closed" line in direction with dst
// appears in the sidecar's log (lines are written when a connection ends,
// which can be a moment after the client saw its answer).
func (s *sidecar) waitLog(t *testing.T, direction, dst string) logLine {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, l := range s.closedConns() {
			if l["direction"] == direction && l["dst"] == dst {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar in %s logged no %s connection to %s; log:\n%s", s.pod.Name, direction, dst, tail(s.proc.Output(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitOutput waits until the sidecar's log says substr (a line written
// as a connection closes can come a moment after the client saw it end);
// if it never does, the test fails saying what.
func (s *sidecar) waitOutput(t *testing.T, substr, what string) {
	t.Helper()
	eventually(t, 5*time.Second, func() error {
		if !strings.Contains(s.proc.Output(), substr) {
			return fmt.Errorf("%s:\n%s", what, tail(s.proc.Output(), 10))
		}
		return nil
	})
}

// skipNoIPv6 skips an IPv6 sub-test on a kernel without IPv6.
func skipNoIPv6(t *testing.T, fam family) {
	t.Helper()
	if _, err := os.Stat("/proc/net/if_inet6"); fam.name == "ipv6" && err != nil {
		t.Skip("this kernel has no IPv6 (/proc/net/if_inet6 missing)")
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// warnings returns the sidecar's last n log lines at warn level or
// above: what a failure message quotes, since the whole log printed at
// the end may be cut.
func (s *sidecar) warnings(n int) string {
	var out []string
	for _, l := range strings.Split(s.proc.Output(), "\n") {
		if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) {
			out = append(out, l)
		}
	}
	return tail(strings.Join(out, "\n"), n)
}

// hostPort formats addr:port with brackets for IPv6.
func hostPort(a netip.Addr, port int) string {
	return net.JoinHostPort(a.String(), strconv.Itoa(port))
}

// url returns http://addr:port/path.
func url(a netip.Addr, port int, path string) string {
	return "http://" + hostPort(a, port) + path
}

// curl runs curl inside pod and returns its stdout.
func curl(t *testing.T, pod *topology.Pod, args ...string) string {
	t.Helper()
	argv := append([]string{"curl", "-sS", "--fail", "--max-time", "20"}, args...)
	out, err := pod.Run(ctxFor(t, 30*time.Second), argv...)
	if err != nil {
		t.Fatalf("curl in %s: %v", pod.Name, err)
	}
	return out
}

// listenIn listens on port of every address inside pod.
func listenIn(t *testing.T, pod *topology.Pod, port int) net.Listener {
	t.Helper()
	var ln net.Listener
	err := nsrun.Do(pod.Path(), func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// serveHTTPIn serves srv (HTTP/1.x and h2c) on port of every address
// inside pod until the test ends, and waits until it listens.
func serveHTTPIn(t *testing.T, pod *topology.Pod, port int, srv *http.Server) {
	t.Helper()
	ln := listenIn(t, pod, port)
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	waitListening(t, pod, netip.AddrPortFrom(pod.IPv4, uint16(port)), nil)
}
