package enroll

import (
	"fmt"
	"os"
	"strings"
	"testing"
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
