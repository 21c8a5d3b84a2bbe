package enroll

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOpenStateNamesTheNamespace: two paths to one namespace share a
// state directory, so --pid and --netns of one workload agree.
func TestOpenStateNamesTheNamespace(t *testing.T) {
	root := t.TempDir()
	a, err := OpenState(root, "/proc/self/ns/net")
	if err != nil {
		t.Skipf("no network namespace files here: %v", err)
	}
	b, err := OpenState(root, fmt.Sprintf("/proc/%d/ns/net", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if a != b || !strings.HasPrefix(a.Dir, root+"/netns-") {
		t.Errorf("states %q and %q; want one, under %s/netns-", a.Dir, b.Dir, root)
	}
	if _, err := OpenState(root, "/nonexistent/ns"); err == nil || !strings.Contains(err.Error(), "is the process running, is the path right?") {
		t.Errorf("missing namespace: got %v", err)
	}
}

// TestDrainGraceRecorded: "enroll --cleanup" is not given the sidecar's
// config, so Undo waits for the drain grace Do recorded, when it is the
// longer.
func TestDrainGraceRecorded(t *testing.T) {
	st := State{Dir: t.TempDir()}
	e := Enrollment{State: st, DrainGrace: 5 * time.Second}
	if got := e.drainGrace(); got != 5*time.Second {
		t.Errorf("nothing recorded: %v, want 5s", got)
	}
	for _, tc := range []struct {
		recorded string
		want     time.Duration
	}{{"30s\n", 30 * time.Second}, {"1s\n", 5 * time.Second}, {"soon\n", 5 * time.Second}} {
		if err := os.WriteFile(filepath.Join(st.Dir, "sidecar.drain-grace"), []byte(tc.recorded), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := e.drainGrace(); got != tc.want {
			t.Errorf("recorded %q: %v, want %v", strings.TrimSpace(tc.recorded), got, tc.want)
		}
	}
}
