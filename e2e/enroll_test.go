package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestEnrollRunningServer: "meshgate enroll --pid" puts a server that is
// already running behind a sidecar without restarting it; traffic then
// flows through the sidecar; "enroll --cleanup" undoes all of it.
func TestEnrollRunningServer(t *testing.T) {
	needRoot(t)
	pods := newLab(t, "a", "b")
	a, b := pods[0], pods[1]
	app := startApp(t, b)
	startTime := procStart(t, app.PID())
	curl(t, a, url(b.IPv4, 8080, "/")) // reachable before enrolling: no mesh yet

	stateDir := publicTempDir(t)
	pid := strconv.Itoa(app.PID())
	out := mustMeshgate(t, "enroll", "--pid", pid, "--state-dir", stateDir)
	if !strings.Contains(out, "enrolled") {
		t.Errorf("enroll output: %q", out)
	}
	cleaned := false
	t.Cleanup(func() {
		if !cleaned {
			meshgate(t, "enroll", "--cleanup", "--pid", pid, "--state-dir", stateDir)
		}
	})
	sidecarPID := readPIDFile(t, stateDir)

	curl(t, a, url(b.IPv4, 8080, "/"))
	echo(t, a, hostPort(b.IPv4, 9000), []byte("through the enrolled sidecar"))
	eventually(t, 5*time.Second, func() error {
		m, err := b.Scrape(ctxFor(t, 5*time.Second), 15020)
		if err != nil {
			return err
		}
		if n := m["meshgate_tcp_connections_opened_total{direction=inbound}"]; n != 2 {
			return fmt.Errorf("enrolled sidecar saw %v inbound connections, want 2", n)
		}
		return nil
	})
	if app.Exited() || procStart(t, app.PID()) != startTime {
		t.Error("the workload was restarted by enroll; it must keep running untouched")
	}
	// Enrolling again is harmless: same sidecar, same rules.
	mustMeshgate(t, "enroll", "--netns", b.Path(), "--state-dir", stateDir)
	if again := readPIDFile(t, stateDir); again != sidecarPID {
		t.Errorf("second enroll started another sidecar (%d, was %d)", again, sidecarPID)
	}

	mustMeshgate(t, "enroll", "--cleanup", "--pid", pid, "--state-dir", stateDir)
	cleaned = true
	if rules := saveRules(t, b); strings.Contains(rules, "MESHGATE") {
		t.Errorf("rules left after enroll --cleanup:\n%s", rules)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/cmdline", sidecarPID)); err == nil && !isZombie(sidecarPID) {
		t.Errorf("sidecar %d still running after enroll --cleanup", sidecarPID)
	}
	curl(t, a, url(b.IPv4, 8080, "/")) // the app still serves, directly again
	if app.Exited() {
		t.Error("the workload stopped during unenroll")
	}
}

// TestEnrollRefusesBadInput: enroll's mistakes are reported in one line
// naming the flag.
func TestEnrollRefusesBadInput(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"enroll"}, "--pid or --netns is required"},
		{[]string{"enroll", "--pid", "1", "--netns", "/run/netns/x"}, "give one, not both"},
		{[]string{"enroll", "--netns", "/run/netns/does-not-exist-mg"}, "/run/netns/does-not-exist-mg"},
	} {
		out, err := meshgate(t, tc.args...)
		if err == nil || !strings.Contains(out, tc.want) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("meshgate %s = %v, %q; want one line with %q", strings.Join(tc.args, " "), err, out, tc.want)
		}
	}
}

func readPIDFile(t *testing.T, stateDir string) int {
	t.Helper()
	var found []int
	entries, _ := os.ReadDir(stateDir)
	for _, e := range entries {
		b, err := os.ReadFile(stateDir + "/" + e.Name() + "/sidecar.pid")
		if err == nil {
			n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			found = append(found, n)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one sidecar PID file under %s, found %v", stateDir, found)
	}
	return found[0]
}

// procStart returns a process's start time in clock ticks since boot, which
// changes if the process is replaced under the same PID.
func procStart(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	return fields[19] // field 22 overall: starttime
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+2:])[0] == "Z"
}
