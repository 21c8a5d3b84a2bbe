package enroll

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"meshgate/nsrun"
	"meshgate/redirect"
	"meshgate/sidecar"
	"meshgate/sockmark"
)

// DefaultStateDir holds one State directory per enrolled namespace.
const DefaultStateDir = "/run/meshgate/enroll"

// StopMargin is how long Undo waits for a sidecar to exit after its drain
// grace period (its HTTP servers and DNS proxy close after the drain)
// before it kills it.
const StopMargin = 5 * time.Second

// State is the directory of one enrolled namespace, named after the
// namespace's inode so a PID's namespace and its path agree.
type State struct{ Dir string }

// OpenState returns the State under root of the namespace at nsPath,
// which must exist. It creates nothing.
func OpenState(root, nsPath string) (State, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(nsPath, &st); err != nil {
		return State{}, fmt.Errorf("network namespace %s: %w (is the process running, is the path right?)", nsPath, err)
	}
	return State{Dir: filepath.Join(root, fmt.Sprintf("netns-%d-%d", st.Dev, st.Ino))}, nil
}

// PIDPath is the sidecar's PID file.
func (s State) PIDPath() string { return filepath.Join(s.Dir, "sidecar.pid") }

// LogPath is the sidecar's log.
func (s State) LogPath() string { return filepath.Join(s.Dir, "sidecar.log") }

// GracePath holds the drain grace period of the sidecar Do started, so
// that Undo waits for it to drain without being given its config again.
func (s State) GracePath() string { return filepath.Join(s.Dir, "sidecar.drain-grace") }

// Enrollment enrolls one namespace, or undoes it.
type Enrollment struct {
	// State is where the sidecar's PID file and log are kept.
	State State
	// Netns is the namespace's path.
	Netns string
	// Log receives what enrollment does; nil logs nothing.
	Log *zap.Logger
	// DrainGrace is the sidecar's drain grace period (its config's
	// timeouts.drainGrace): Undo waits that long and StopMargin for it to
	// exit after SIGTERM, then SIGKILLs it. Do records it in the State, and
	// Undo takes the longer of the recorded one and this.
	DrainGrace time.Duration
}

func (e Enrollment) log() *zap.Logger {
	if e.Log == nil {
		return zap.NewNop()
	}
	return e.Log
}

// Do starts the sidecar, the meshgate binary running args (unless one of
// ours already runs there), as rules.ProxyUID; waits up to readyTimeout
// for it to be ready on healthPort; then applies the rules. If the rules
// fail, the sidecar it started is stopped again: nothing is left
// half-enrolled. It returns the sidecar's PID.
func (e Enrollment) Do(ctx context.Context, rules redirect.Config, args []string, healthPort uint16, readyTimeout time.Duration) (int, error) {
	if err := os.MkdirAll(e.State.Dir, 0o755); err != nil {
		return 0, fmt.Errorf("state directory: %w", err)
	}
	pid, running := e.runningSidecar()
	if !running {
		var exited <-chan struct{}
		var err error
		if pid, exited, err = e.startSidecar(args, rules.ProxyUID); err != nil {
			return 0, err
		}
		if err := os.WriteFile(e.State.GracePath(), []byte(e.DrainGrace.String()+"\n"), 0o644); err != nil {
			e.stopSidecar(pid)
			return 0, fmt.Errorf("write %s: %w", e.State.GracePath(), err)
		}
		if err := e.waitReady(ctx, healthPort, readyTimeout, exited); err != nil {
			e.stopSidecar(pid)
			return 0, err
		}
	} else {
		e.log().Info("sidecar already running", zap.Int("pid", pid), zap.String("netns", e.Netns))
	}
	if err := redirect.Apply(ctx, rules, redirect.Options{NetnsPath: e.Netns, Logger: e.Log}); err != nil {
		if !running { // started here
			e.stopSidecar(pid)
		}
		return 0, err
	}
	return pid, nil
}

// Undo removes the rules first, so no new connection is sent to a sidecar
// that is going away, then drains and stops the sidecar.
func (e Enrollment) Undo(ctx context.Context) error {
	if err := redirect.Cleanup(ctx, redirect.Options{NetnsPath: e.Netns, Logger: e.Log}); err != nil {
		return err
	}
	if pid, ok := e.runningSidecar(); ok {
		if err := e.stopSidecar(pid); err != nil {
			return err
		}
	}
	return os.RemoveAll(e.State.Dir)
}

// startSidecar starts "meshgate proxy" inside the namespace, detached in a
// session of its own so it outlives this process. exited is closed when
// it ends while this process still runs.
func (e Enrollment) startSidecar(args []string, uid *uint32) (pid int, exited <-chan struct{}, err error) {
	self, err := os.Executable()
	if err != nil {
		return 0, nil, fmt.Errorf("find the meshgate binary: %w", err)
	}
	logf, err := os.OpenFile(e.State.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return 0, nil, fmt.Errorf("sidecar log: %w", err)
	}
	defer logf.Close()
	attr := &os.ProcAttr{
		Dir:   "/",
		Env:   os.Environ(),
		Files: []*os.File{nil, logf, logf},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
	if uid != nil {
		// The proxy runs as the exempted UID, keeping CAP_NET_ADMIN so it
		// can also mark its sockets: either exemption alone suffices.
		sockmark.AsUser(attr.Sys, *uid, *uid)
	}
	var proc *os.Process
	err = nsrun.Do(e.Netns, func() error {
		var err error
		proc, err = os.StartProcess(self, append([]string{self}, args...), attr)
		return err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("start sidecar in %s: %w", e.Netns, err)
	}
	pid = proc.Pid
	// Reap it if it dies while we are still here; after we exit, init does.
	done := make(chan struct{})
	go func() {
		proc.Wait()
		close(done)
	}()
	if err := os.WriteFile(e.State.PIDPath(), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		_ = proc.Kill()
		return 0, nil, fmt.Errorf("write %s: %w", e.State.PIDPath(), err)
	}
	e.log().Info("sidecar started", zap.Int("pid", pid), zap.String("netns", e.Netns), zap.String("log", e.State.LogPath()))
	return pid, done, nil
}

// runningSidecar returns the PID in the state directory if that process is
// still a meshgate proxy in this namespace (a recycled PID is not ours).
func (e Enrollment) runningSidecar() (int, bool) {
	b, err := os.ReadFile(e.State.PIDPath())
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), "\x00proxy\x00") {
		return 0, false
	}
	if sameFile(nsrun.PathForPID(pid), e.Netns) {
		return pid, true
	}
	return 0, false
}

func sameFile(a, b string) bool {
	var sa, sb syscall.Stat_t
	return syscall.Stat(a, &sa) == nil && syscall.Stat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// waitReady waits for the sidecar's readiness probe from inside the
// namespace.
func (e Enrollment) waitReady(ctx context.Context, port uint16, timeout time.Duration, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nsrun.Dial(ctx, e.Netns, network, addr)
	}
	switch err := sidecar.WaitReady(ctx, dial, port, exited); {
	case errors.Is(err, sidecar.ErrExited):
		return fmt.Errorf("sidecar exited during start; its log %s says: %s", e.State.LogPath(), lastLine(e.State.LogPath()))
	case err != nil:
		return fmt.Errorf("sidecar not ready after %s (%v); see %s", timeout, err, e.State.LogPath())
	}
	return nil
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// Field 3, after "pid (comm) ".
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

func lastLine(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// drainGrace is how long the sidecar of the State drains: the longer of
// what Do recorded there and e.DrainGrace.
func (e Enrollment) drainGrace() time.Duration {
	b, err := os.ReadFile(e.State.GracePath())
	if err != nil {
		return e.DrainGrace
	}
	d, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return e.DrainGrace
	}
	return max(d, e.DrainGrace)
}

// stopSidecar sends SIGTERM so the sidecar drains, and SIGKILLs it if it
// has not exited after its drain grace period and StopMargin.
func (e Enrollment) stopSidecar(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("stop sidecar %d: %w", pid, err)
	}
	wait := e.drainGrace() + StopMargin
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil || isZombie(pid) {
			e.log().Info("sidecar stopped", zap.Int("pid", pid))
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	e.log().Warn("sidecar did not stop after SIGTERM; killed", zap.Int("pid", pid), zap.Duration("waited", wait))
	return nil
}
