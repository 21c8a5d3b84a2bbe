package sidecar

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
	appPollInterval = 500 * time.Millisecond
	// appNotSharedAfter is how long the watcher waits to see any app
	// process before it warns that the PID namespace is not shared.
	appNotSharedAfter = 60 * time.Second
)

// fileID identifies an executable file: device and inode.
type fileID struct{ dev, ino uint64 }

// appWatch scans a /proc tree for the app's processes: every process but
// PID 1 (the pod's pause process), the sidecar itself and its
// descendants, and other processes of the sidecar's executable (the
// postStart hook "meshgate wait" runs in the sidecar's container).
type appWatch struct {
	proc    string // the /proc root; a fake tree in tests
	self    int    // the sidecar's PID, as proc shows it
	selfExe fileID
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
	exe, err := exeID(filepath.Join(proc, "self", "exe"))
	if err != nil {
		return nil, fmt.Errorf("--exit-with-app: the sidecar's own executable: %w", err)
	}
	return &appWatch{proc: proc, self: self, selfExe: exe}, nil
}

func exeID(path string) (fileID, error) {
	st, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, fmt.Errorf("%s: no device and inode here", path)
	}
	return fileID{dev: uint64(sys.Dev), ino: sys.Ino}, nil
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
	var apps []int
	for pid, info := range procs {
		if pid == 1 || info.state == 'Z' || info.state == 'X' || w.descends(pid, procs) {
			continue
		}
		// Another meshgate (the postStart hook). An executable the
		// sidecar may not look at (another user's process) is not its own.
		if id, err := exeID(filepath.Join(w.proc, strconv.Itoa(pid), "exe")); err == nil && id == w.selfExe {
			continue
		}
		apps = append(apps, pid)
	}
	slices.Sort(apps)
	return apps, nil
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
