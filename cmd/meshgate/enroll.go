package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"meshgate/nsrun"
	"meshgate/proxy"
	"meshgate/redirect"
)

// defaultStateDir holds one directory per enrolled namespace: the sidecar's
// PID file and log, so "enroll --cleanup" finds what "enroll" started.
const defaultStateDir = "/run/meshgate/enroll"

func runEnroll(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("enroll", "(--pid PID | --netns PATH) [--config FILE] [--cleanup] [rule flags]", `
Enroll a running container or process into the mesh from the host, with no
restart and no change to it: meshgate starts a sidecar proxy inside the
workload's network namespace, waits until it is ready, then installs the
redirect rules there, so from that moment every new inbound and outbound
TCP connection of the workload passes through the sidecar. Connections
that were already open are left alone.

The sidecar runs detached (as --proxy-uid, keeping only CAP_NET_ADMIN so it
can mark its sockets); its PID file and log are kept under --state-dir.
"meshgate enroll --cleanup" with the same --pid or --netns removes the
rules first, then drains and stops the sidecar.

The rule flags are those of "meshgate redirect" (see its --help). With
--pid and --capture-dns, the DNS servers to capture are read from the
workload's own /proc/PID/root/etc/resolv.conf.

Examples:
  meshgate enroll --pid 4242
  meshgate enroll --netns /run/netns/web --exclude-outbound-ports 5432
  meshgate enroll --cleanup --netns /run/netns/web`, stderr)
	pid := fs.Int("pid", 0, "enroll the network namespace of process `PID`")
	nsPath := fs.String("netns", "", "enroll the network namespace at `PATH` (e.g. /run/netns/web)")
	configPath := fs.String("config", "", "sidecar config `FILE` (YAML, see 'meshgate proxy --help'); default: the built-in defaults")
	cleanup := fs.Bool("cleanup", false, "undo an enrollment: remove the rules, then drain and stop the sidecar")
	stateDir := fs.String("state-dir", defaultStateDir, "where the sidecar's PID file and log are kept")
	readyTimeout := fs.Duration("ready-timeout", 15*time.Second, "how long to wait for the sidecar to become ready")
	logLevel := fs.String("log-level", "info", "log level of enroll itself and of the sidecar: debug, info, warn, error")
	ruleConfig := redirect.AddFlags(fs)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}

	var problems []error
	switch {
	case *pid != 0 && *nsPath != "":
		problems = append(problems, errors.New("--pid and --netns: give one, not both"))
	case *pid == 0 && *nsPath == "":
		problems = append(problems, errors.New("--pid or --netns is required: which workload to enroll?"))
	case *pid < 0:
		problems = append(problems, fmt.Errorf("--pid %d: want a process ID", *pid))
	}
	if *pid > 0 && !flagSet(fs, "resolv-conf") {
		// The workload's DNS servers are in its own root, not the host's.
		_ = fs.Set("resolv-conf", fmt.Sprintf("/proc/%d/root/etc/resolv.conf", *pid))
	}
	rules, err := ruleConfig()
	if err != nil {
		problems = append(problems, err)
	}
	var pcfg proxy.Config
	if *configPath != "" && !*cleanup {
		abs, err := filepath.Abs(*configPath)
		if err == nil {
			*configPath = abs
			pcfg, err = proxy.LoadConfig(abs)
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("--config: %w", err))
		}
	} else {
		pcfg = proxy.DefaultConfig()
	}
	if len(problems) > 0 {
		return errors.Join(problems...)
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		return err
	}
	defer log.Sync()

	path := *nsPath
	if *pid != 0 {
		path = nsrun.PathForPID(*pid)
	}
	st, err := openEnrollState(*stateDir, path)
	if err != nil {
		return err
	}
	e := enrollment{state: st, netns: path, log: log}
	if *cleanup {
		if err := e.undo(ctx); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "unenrolled %s: rules removed, sidecar stopped\n", path)
		return nil
	}
	sidecarArgs := []string{"proxy", "--log-level", *logLevel}
	if *configPath != "" {
		sidecarArgs = append(sidecarArgs, "--config", *configPath)
	}
	spid, err := e.do(ctx, rules, sidecarArgs, pcfg.Health.Address.Port(), *readyTimeout)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "enrolled %s: sidecar pid %d, log %s\nundo with: meshgate enroll --cleanup --netns %s\n",
		path, spid, st.logPath(), path)
	return nil
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// enrollState is the directory of one enrolled namespace, named after the
// namespace's inode so --pid and --netns of the same namespace agree.
type enrollState struct{ dir string }

func openEnrollState(root, nsPath string) (enrollState, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(nsPath, &st); err != nil {
		return enrollState{}, fmt.Errorf("network namespace %s: %w (is the process running, is the path right?)", nsPath, err)
	}
	return enrollState{dir: filepath.Join(root, fmt.Sprintf("netns-%d-%d", st.Dev, st.Ino))}, nil
}

func (s enrollState) pidPath() string { return filepath.Join(s.dir, "sidecar.pid") }
func (s enrollState) logPath() string { return filepath.Join(s.dir, "sidecar.log") }

// enrollment enrolls one namespace, or undoes it.
type enrollment struct {
	state enrollState
	netns string
	log   *zap.Logger
}

// do starts the sidecar (unless one of ours already runs there), waits for
// it to be ready, then applies the rules. If the rules fail, the sidecar
// it started is stopped again: nothing is left half-enrolled.
func (e enrollment) do(ctx context.Context, rules redirect.Config, args []string, healthPort uint16, readyTimeout time.Duration) (int, error) {
	if err := os.MkdirAll(e.state.dir, 0o755); err != nil {
		return 0, fmt.Errorf("state directory: %w", err)
	}
	pid, running := e.runningSidecar()
	started := false
	if !running {
		var err error
		if pid, err = e.startSidecar(args, rules.ProxyUID); err != nil {
			return 0, err
		}
		started = true
		if err := e.waitReady(ctx, pid, healthPort, readyTimeout); err != nil {
			e.stopSidecar(pid)
			return 0, err
		}
	} else {
		e.log.Info("sidecar already running", zap.Int("pid", pid), zap.String("netns", e.netns))
	}
	if err := redirect.Apply(ctx, rules, redirect.Options{NetnsPath: e.netns, Logger: e.log}); err != nil {
		if started {
			e.stopSidecar(pid)
		}
		return 0, err
	}
	return pid, nil
}

// undo removes the rules first, so no new connection is sent to a sidecar
// that is going away, then drains and stops the sidecar.
func (e enrollment) undo(ctx context.Context) error {
	if err := redirect.Cleanup(ctx, redirect.Options{NetnsPath: e.netns, Logger: e.log}); err != nil {
		return err
	}
	if pid, ok := e.runningSidecar(); ok {
		if err := e.stopSidecar(pid); err != nil {
			return err
		}
	}
	return os.RemoveAll(e.state.dir)
}

// startSidecar starts "meshgate proxy" inside the namespace, detached in a
// session of its own so it outlives this command.
func (e enrollment) startSidecar(args []string, uid *uint32) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("find the meshgate binary: %w", err)
	}
	logf, err := os.OpenFile(e.state.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return 0, fmt.Errorf("sidecar log: %w", err)
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
		attr.Sys.Credential = &syscall.Credential{Uid: *uid, Gid: *uid}
		keepNetAdmin(attr.Sys)
	}
	var proc *os.Process
	err = nsrun.Do(e.netns, func() error {
		var err error
		proc, err = os.StartProcess(self, append([]string{self}, args...), attr)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("start sidecar in %s: %w", e.netns, err)
	}
	pid := proc.Pid
	// Reap it if it dies while we are still here; after we exit, init does.
	go proc.Wait()
	if err := os.WriteFile(e.state.pidPath(), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		_ = proc.Kill()
		return 0, fmt.Errorf("write %s: %w", e.state.pidPath(), err)
	}
	e.log.Info("sidecar started", zap.Int("pid", pid), zap.String("netns", e.netns), zap.String("log", e.state.logPath()))
	return pid, nil
}

// runningSidecar returns the PID in the state directory if that process is
// still a meshgate proxy in this namespace (a recycled PID is not ours).
func (e enrollment) runningSidecar() (int, bool) {
	b, err := os.ReadFile(e.state.pidPath())
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
	if sameFile(nsrun.PathForPID(pid), e.netns) {
		return pid, true
	}
	return 0, false
}

func sameFile(a, b string) bool {
	var sa, sb syscall.Stat_t
	return syscall.Stat(a, &sa) == nil && syscall.Stat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// waitReady polls the sidecar's /healthz/ready from inside the namespace.
func (e enrollment) waitReady(ctx context.Context, pid int, port uint16, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := nsrun.Do(e.netns, func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Second}
	url := "http://" + netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port).String() + "/healthz/ready"
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if syscall.Kill(pid, 0) != nil || isZombie(pid) {
			return fmt.Errorf("sidecar exited during start; its log %s says: %s", e.state.logPath(), lastLine(e.state.logPath()))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sidecar not ready after %s (%s); see %s", timeout, url, e.state.logPath())
		case <-time.After(50 * time.Millisecond):
		}
	}
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

// stopSidecar sends SIGTERM so the sidecar drains, and SIGKILLs it if it
// has not exited after its drain grace period and a margin.
func (e enrollment) stopSidecar(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("stop sidecar %d: %w", pid, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil || isZombie(pid) {
			e.log.Info("sidecar stopped", zap.Int("pid", pid))
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	e.log.Warn("sidecar did not stop after SIGTERM; killed", zap.Int("pid", pid))
	return nil
}
