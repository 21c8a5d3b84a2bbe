package sidecar

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// fakeProc is a /proc tree: a directory per process with its stat and
// cgroup files.
type fakeProc struct {
	t    *testing.T
	root string
}

func newFakeProc(t *testing.T, self int) *fakeProc {
	p := &fakeProc{t: t, root: t.TempDir()}
	if err := os.Symlink(fmt.Sprint(self), filepath.Join(p.root, "self")); err != nil {
		t.Fatal(err)
	}
	return p
}

// add makes process pid in container (its cgroup path).
func (p *fakeProc) add(pid, ppid int, state, comm, container string) {
	dir := filepath.Join(p.root, fmt.Sprint(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.t.Fatal(err)
	}
	stat := fmt.Sprintf("%d (%s) %s %d 1 1 0 -1 4194560 100 0 0 0 0 0\n", pid, comm, state, ppid)
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		p.t.Fatal(err)
	}
	cgroup := fmt.Sprintf("4:memory:%s\n0::%s\n", container, container)
	if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cgroup), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func (p *fakeProc) remove(pid int) {
	if err := os.RemoveAll(filepath.Join(p.root, fmt.Sprint(pid))); err != nil {
		p.t.Fatal(err)
	}
}

// TestAppWatchExclusions: the app is every process but PID 1, the
// sidecar, its descendants, the other processes of its container and
// zombies, even when the app runs meshgate too.
func TestAppWatchExclusions(t *testing.T) {
	p := newFakeProc(t, 100)
	p.add(1, 0, "S", "pause", "/pod/pause")
	p.add(100, 1, "S", "meshgate", "/pod/sidecar")    // the sidecar
	p.add(101, 100, "S", "sh", "/pod/sidecar")        // its child
	p.add(102, 101, "S", "sh", "/pod/sidecar")        // its grandchild
	p.add(200, 0, "S", "meshgate", "/pod/sidecar")    // the postStart hook, meshgate wait
	p.add(300, 0, "S", "my app (v2) S 7", "/pod/app") // the app; its name looks like stat fields
	p.add(301, 300, "Z", "worker", "/pod/app")        // a zombie: exited
	p.add(302, 0, "S", "meshgate", "/pod/app")        // the app's container runs meshgate demo-app
	p.add(303, 300, "R", "worker", "/pod/app")        // the app's child
	p.add(400, 0, "S", "other", "/pod/other")         // another app container
	w, err := newAppWatch(p.root)
	if err != nil {
		t.Fatal(err)
	}
	got, err := w.apps()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{300, 302, 303, 400}, got); diff != "" {
		t.Errorf("apps (-want +got):\n%s", diff)
	}
}

// TestAppWatchOneCgroup: where every container shares one cgroup (PID 1
// is in the sidecar's), cgroups tell nothing, and every process but PID
// 1, the sidecar and its descendants is the app's.
func TestAppWatchOneCgroup(t *testing.T) {
	p := newFakeProc(t, 100)
	p.add(1, 0, "S", "sh", "/")
	p.add(100, 1, "S", "meshgate", "/")
	p.add(101, 100, "S", "sh", "/")
	p.add(300, 1, "S", "app", "/")
	w, err := newAppWatch(p.root)
	if err != nil {
		t.Fatal(err)
	}
	got, err := w.apps()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{300}, got); diff != "" {
		t.Errorf("apps (-want +got):\n%s", diff)
	}
}

// TestAppWatchStep: the app is gone after it was seen and then not seen
// for two polls in a row; never, if it was never seen.
func TestAppWatchStep(t *testing.T) {
	w := &appWatch{}
	for i, tc := range []struct {
		apps []int
		gone bool
	}{
		{nil, false}, {nil, false}, {nil, false}, // not started yet
		{[]int{7}, false},
		{nil, false},      // one poll without: maybe between two processes
		{[]int{8}, false}, // there it is again
		{nil, false},
		{nil, true},
	} {
		if got := w.step(tc.apps); got != tc.gone {
			t.Fatalf("poll %d (%v): gone %v, want %v", i, tc.apps, got, tc.gone)
		}
	}
}

// TestWatchApp runs the watcher on a fake /proc: it warns once when no
// app shows up, then returns once the app has come and gone.
func TestWatchApp(t *testing.T) {
	p := newFakeProc(t, 10)
	p.add(1, 0, "S", "pause", "/pod/pause")
	p.add(10, 1, "S", "meshgate", "/pod/sidecar")
	w, err := newAppWatch(p.root)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	done := make(chan bool, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- watchApp(ctx, w, 5*time.Millisecond, 50*time.Millisecond, zap.New(core)) }()

	waitUntil(t, func() bool { return logs.FilterMessageSnippet("not shared").Len() > 0 })
	time.Sleep(50 * time.Millisecond)
	if n := logs.FilterMessageSnippet("not shared").Len(); n != 1 {
		t.Errorf("%d warnings that the PID namespace is not shared, want 1", n)
	}
	p.add(42, 0, "S", "app", "/pod/app")
	waitUntil(t, func() bool { return logs.FilterMessageSnippet("watching the app's processes").Len() > 0 })
	select {
	case <-done:
		t.Fatal("the watcher returned while the app runs")
	case <-time.After(30 * time.Millisecond):
	}
	p.remove(42)
	select {
	case gone := <-done:
		if !gone {
			t.Fatal("watchApp returned false, want true: the app exited")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher did not notice the app exit")
	}
	if e := logs.FilterMessageSnippet("every process of the app has exited").All(); len(e) != 1 || fmt.Sprint(e[0].ContextMap()["exited"]) != "[42]" {
		t.Errorf("log of the exit: %+v", e)
	}

	// A watcher stopped by its context says the app is not gone.
	cancel()
	if w, err = newAppWatch(p.root); err != nil {
		t.Fatal(err)
	}
	if watchApp(ctx, w, time.Millisecond, time.Hour, zap.NewNop()) {
		t.Error("watchApp on a done context returned true")
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestExitWithApp runs the sidecar with ExitWithApp in a PID namespace of
// its own (as a pod with shareProcessNamespace: true is), on the real
// /proc: it keeps running while its own child runs, and shuts down (Run
// returns nil, as on SIGTERM) once the app process, a separate process
// tree, has exited. The test re-runs itself under "unshare --pid --fork
// --mount-proc sh -c ...", so sh is PID 1 (the pod's pause process) and
// the app is an orphan sh reparents.
func TestExitWithApp(t *testing.T) {
	if os.Getenv("MESHGATE_TEST_IN_PIDNS") == "" {
		if testing.Short() {
			t.Skip("needs a PID namespace of its own: skipped with -short")
		}
		if os.Geteuid() != 0 {
			t.Skip("needs root, for a PID namespace of its own")
		}
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			t.Skip("needs unshare (util-linux)")
		}
		cmd := exec.Command(unshare, "--pid", "--fork", "--mount-proc", "sh", "-c", `"$0" -test.run='^TestExitWithApp$' -test.v -test.count=1; exit $?`, os.Args[0])
		cmd.Env = append(os.Environ(), "MESHGATE_TEST_IN_PIDNS=1")
		out, err := cmd.CombinedOutput()
		t.Logf("in a PID namespace of its own:\n%s", out)
		if err != nil || !strings.Contains(string(out), "--- PASS: TestExitWithApp") {
			t.Fatalf("the test in its own PID namespace failed: %v", err)
		}
		return
	}
	if os.Getpid() == 1 {
		t.Fatal("the test is PID 1; want sh there, the pod's pause process")
	}
	// A child of the sidecar's own: it must not keep the sidecar up.
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	health := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	core, logs := observer.New(zapcore.InfoLevel)
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Options{Config: loopback(0, health), ExitWithApp: true, Log: zap.New(core)})
	}()
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := WaitReady(wctx, (&net.Dialer{}).DialContext, health, nil); err != nil {
		t.Fatal(err)
	}
	// The app: sleep, left by a shell that exits at once, so it is no
	// descendant of the sidecar.
	started := time.Now()
	if out, err := exec.Command("sh", "-c", "sleep 1.5 >/dev/null 2>&1 &").CombinedOutput(); err != nil {
		t.Fatalf("start the app: %v %s", err, out)
	}
	select {
	case err := <-done:
		took := time.Since(started)
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if took < 1500*time.Millisecond {
			t.Errorf("the sidecar exited after %s, before the app did (1.5s)", took)
		}
		t.Logf("the sidecar exited %s after the app started", took)
	case <-time.After(10 * time.Second):
		t.Fatal("the sidecar still runs 10s after the app started")
	}
	if logs.FilterMessageSnippet("every process of the app has exited").Len() != 1 {
		t.Errorf("no log line saying why it shut down: %v", logs.All())
	}
}
