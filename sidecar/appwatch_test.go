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

// fakeProc is a /proc tree: a directory per process with its stat file
// and an exe link.
type fakeProc struct {
	t    *testing.T
	root string
	bins string
}

func newFakeProc(t *testing.T, self int) *fakeProc {
	p := &fakeProc{t: t, root: t.TempDir(), bins: t.TempDir()}
	for _, b := range []string{"meshgate", "pause", "sh", "app"} {
		if err := os.WriteFile(filepath.Join(p.bins, b), []byte(b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(fmt.Sprint(self), filepath.Join(p.root, "self")); err != nil {
		t.Fatal(err)
	}
	return p
}

// add makes process pid; exe "" leaves its exe link dangling (a process
// the sidecar may not look at).
func (p *fakeProc) add(pid, ppid int, state, comm, exe string) {
	dir := filepath.Join(p.root, fmt.Sprint(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.t.Fatal(err)
	}
	stat := fmt.Sprintf("%d (%s) %s %d 1 1 0 -1 4194560 100 0 0 0 0 0\n", pid, comm, state, ppid)
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		p.t.Fatal(err)
	}
	target := filepath.Join(p.bins, exe)
	if exe == "" {
		target = filepath.Join(p.bins, "missing")
	}
	if err := os.Symlink(target, filepath.Join(dir, "exe")); err != nil {
		p.t.Fatal(err)
	}
}

func (p *fakeProc) remove(pid int) {
	if err := os.RemoveAll(filepath.Join(p.root, fmt.Sprint(pid))); err != nil {
		p.t.Fatal(err)
	}
}

// TestAppWatchExclusions: the app is every process but PID 1, the
// sidecar, its descendants, other meshgate processes and zombies.
func TestAppWatchExclusions(t *testing.T) {
	p := newFakeProc(t, 100)
	p.add(1, 0, "S", "pause", "pause")
	p.add(100, 1, "S", "meshgate", "meshgate")   // the sidecar
	p.add(101, 100, "S", "sh", "sh")             // its child
	p.add(102, 101, "S", "sh", "sh")             // its grandchild
	p.add(200, 0, "S", "meshgate", "meshgate")   // the postStart hook, meshgate wait
	p.add(300, 1, "S", "my app (v2) S 7", "app") // the app; its name looks like stat fields
	p.add(301, 300, "Z", "worker", "app")        // a zombie: exited
	p.add(302, 1, "S", "other user's", "")       // its exe cannot be read: not ours
	p.add(303, 300, "R", "worker", "app")        // the app's child
	w, err := newAppWatch(p.root)
	if err != nil {
		t.Fatal(err)
	}
	got, err := w.apps()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{300, 302, 303}, got); diff != "" {
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
	p.add(1, 0, "S", "pause", "pause")
	p.add(10, 1, "S", "meshgate", "meshgate")
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
	p.add(42, 1, "S", "app", "app")
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
