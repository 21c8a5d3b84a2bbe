package sidecar

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Exit-with-app (issue 14): a classic sidecar of a Kubernetes Job would
// keep the pod running after the app has finished, so the Job would never
// complete. With a shared PID namespace (shareProcessNamespace: true) the
// sidecar sees the app's processes in /proc, and once they are all gone it
// shuts down as on SIGTERM.

// appWatchDefaults are the watcher's timings.
const (
	// appPollInterval: an app that starts and ends between two polls is
	// not seen, and the sidecar stays (and warns, after appNotSharedAfter).
	// A scan reads two /proc files per process, about 40 µs a process on
	// a busy 2-core VM: a pod of 5 processes, 0.2 ms every 100 ms, 0.2%
	// of a core, and only for the classic sidecar of a Job.
	appPollInterval = 100 * time.Millisecond
	// appNotSharedAfter is how long the watcher waits to see any app
	// process before it warns that the PID namespace is not shared.
	appNotSharedAfter = 60 * time.Second
)

// appWatch scans a /proc tree for the app's processes: every process but
// PID 1 (the pod's pause process), the sidecar itself and its
// descendants, and the other processes of the sidecar's container (the
// postStart hook "meshgate wait" runs there).
//
// A container is told by its cgroup: the runtime (Kubernetes, podman)
// gives each container of a pod its own, and a process exec'd into a
// container (a hook, "kubectl exec") joins that container's. Where PID 1
// shares the sidecar's cgroup, cgroups do not tell the containers apart,
// and only the sidecar's descendants are its own. Not the executable: the
// app may run the same binary (meshgate demo-app does), and whether the
// sidecar may look at another user's /proc/PID/exe depends on how that
// process started.
type appWatch struct {
	proc       string // the /proc root; a fake tree in tests
	self       int    // the sidecar's PID, as proc shows it
	selfCgroup string // the content of proc/self/cgroup
	// seen: an app process was seen once; gone counts the polls in a row
	// since then that saw none.
	seen bool
	gone int
}

// newAppWatch reads who the sidecar is from proc's "self".
func newAppWatch(proc string) (*appWatch, error) {
	link, err := os.Readlink(filepath.Join(proc, "self"))
	if err != nil {
		return nil, fmt.Errorf("--exit-with-app: find this process in %s: %w", proc, err)
	}
	self, err := strconv.Atoi(filepath.Base(link))
	if err != nil {
		return nil, fmt.Errorf("--exit-with-app: %s/self is %q, not a PID", proc, link)
	}
	cg, err := os.ReadFile(filepath.Join(proc, "self", "cgroup"))
	if err != nil {
		return nil, fmt.Errorf("--exit-with-app: the sidecar's own cgroup: %w", err)
	}
	return &appWatch{proc: proc, self: self, selfCgroup: string(cg)}, nil
}

// procInfo is what the watcher needs of one process.
type procInfo struct {
	ppid  int
	state byte // R, S, D, Z, ...
}

// readStat parses /proc/PID/stat: "pid (comm) state ppid ...", where comm
// may hold spaces and parentheses, so the fields are read after the last
// ')'.
func readStat(path string) (procInfo, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return procInfo{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procInfo{}, fmt.Errorf("%s: no ')' in %q", path, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 || len(f[0]) != 1 {
		return procInfo{}, fmt.Errorf("%s: want state and ppid after the command in %q", path, s)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procInfo{}, fmt.Errorf("%s: ppid %q: %w", path, f[1], err)
	}
	return procInfo{ppid: ppid, state: f[0][0]}, nil
}

// apps returns the PIDs of the app's processes now, in ascending order.
// A process that ends while it is read is skipped; so are zombies, which
// have exited already.
func (w *appWatch) apps() ([]int, error) {
	entries, err := os.ReadDir(w.proc)
	if err != nil {
		return nil, err
	}
	procs := map[int]procInfo{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		info, err := readStat(filepath.Join(w.proc, e.Name(), "stat"))
		if err != nil {
			continue // gone since the directory was read
		}
		procs[pid] = info
	}
	// Do the containers have cgroups of their own? PID 1, the pause
	// process, is in a container of its own where they do.
	split := w.cgroupOf(1) != w.selfCgroup
	var apps []int
	for pid, info := range procs {
		if pid == 1 || info.state == 'Z' || info.state == 'X' || w.descends(pid, procs) {
			continue
		}
		if split {
			cg := w.cgroupOf(pid)
			if cg == "" || cg == w.selfCgroup {
				continue // gone since, or in the sidecar's container
			}
		}
		apps = append(apps, pid)
	}
	slices.Sort(apps)
	return apps, nil
}

// cgroupOf returns the content of pid's cgroup file, "" if it cannot be
// read (the process has gone).
func (w *appWatch) cgroupOf(pid int) string {
	b, err := os.ReadFile(filepath.Join(w.proc, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return ""
	}
	return string(b)
}

// descends reports whether pid is the sidecar or one of its descendants.
func (w *appWatch) descends(pid int, procs map[int]procInfo) bool {
	for range len(procs) + 1 { // a parent loop cannot hang us
		if pid == w.self {
			return true
		}
		info, ok := procs[pid]
		if !ok || pid <= 1 {
			return false
		}
		pid = info.ppid
	}
	return false
}

// step takes one poll's app processes and reports whether the app is
// gone: it was seen once, and then not for two polls in a row (one poll
// could fall between an app's process ending and the next one starting).
func (w *appWatch) step(apps []int) bool {
	if len(apps) > 0 {
		w.seen, w.gone = true, 0
		return false
	}
	if !w.seen {
		return false
	}
	w.gone++
	return w.gone >= 2
}

// watchApp polls proc every interval until the app's processes have all
// exited (it returns true) or ctx ends (false). If no app process shows up
// within notShared, it warns once that the PID namespace is not shared
// and keeps watching.
func watchApp(ctx context.Context, w *appWatch, interval, notShared time.Duration, log *zap.Logger) bool {
	start := time.Now()
	warned := false
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last []int
	for {
		apps, err := w.apps()
		if err != nil {
			log.Warn("--exit-with-app: cannot read the processes; the sidecar will not exit with the app", zap.String("proc", w.proc), zap.Error(err))
			<-ctx.Done()
			return false
		}
		if len(apps) > 0 {
			last = apps
		}
		if !w.seen && len(apps) > 0 {
			log.Info("--exit-with-app: watching the app's processes", zap.Ints("pids", apps))
		}
		if w.step(apps) {
			log.Info("--exit-with-app: every process of the app has exited: shutting down as on SIGTERM",
				zap.Ints("exited", last))
			return true
		}
		if !w.seen && !warned && time.Since(start) >= notShared {
			warned = true
			log.Warn("--exit-with-app: no process of the app seen: the pod's PID namespace is not shared, so the sidecar cannot tell when the app exits; set shareProcessNamespace: true in the pod spec (meshgate inject does for Jobs)",
				zap.Duration("after", notShared))
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}
