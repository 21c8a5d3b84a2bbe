package initcontainer

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"meshgate/nsrun"
	"meshgate/redirect"
)

// podNetns creates a throwaway network namespace shaped like a pod's: lo,
// an address of its own (10.78.0.1 on one end of a veth pair whose both
// ends stay inside) and a route to TEST-NET-1 over it, so the outbound
// self-check runs and nothing can leave. Removed when the test ends.
func podNetns(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("mginit-%d", os.Getpid())
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ip("-n", name, "link", "set", "lo", "up")
	ip("-n", name, "link", "add", "mg0", "type", "veth", "peer", "name", "mg1")
	ip("-n", name, "addr", "add", "10.78.0.1/24", "dev", "mg0")
	ip("-n", name, "link", "set", "mg0", "up")
	ip("-n", name, "link", "set", "mg1", "up")
	ip("-n", name, "route", "add", "192.0.2.0/24", "dev", "mg0")
	return "/run/netns/" + name
}

// TestRunReal runs meshgate init's Run inside a pod-like namespace, as the
// init container does: the rules go in, the self-check proves them, and
// the summary says so.
func TestRunReal(t *testing.T) {
	if testing.Short() {
		t.Skip("real iptables test: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("real iptables test: needs root")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("needs iptables")
	}
	path := podNetns(t)
	o, err := parse(t, []string{"--ipv6", "off"}, map[string]string{"MESHGATE_EXCLUDE_INBOUND_PORTS": "22"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err = nsrun.Do(path, func() error { return Run(t.Context(), o, zaptest.NewLogger(t), &out) })
	if err != nil {
		t.Fatal(err)
	}
	want := "meshgate init: capture rules installed: --mode=redirect --ipv6=off --proxy-uid=1337 --proxy-mark=0x539 --inbound-ports=* --exclude-inbound-ports=22 --include-outbound-cidrs=*\n" +
		"meshgate init: self-check: inbound ok (a connection to 10.78.0.1:15999 arrived at port 15006); outbound ok (a connection to 192.0.2.1:80 arrived at port 15001)\n"
	if out.String() != want {
		t.Errorf("summary:\n got %s\nwant %s", out.String(), want)
	}

	// Without the self-check; the rules are there already: nothing changes.
	o.SelfCheck = false
	out.Reset()
	if err := nsrun.Do(path, func() error { return Run(t.Context(), o, zaptest.NewLogger(t), &out) }); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out.String(), "meshgate init: self-check skipped (--self-check=false)\n") {
		t.Errorf("summary: %s", out.String())
	}
	if err := redirect.Cleanup(t.Context(), redirect.Options{NetnsPath: path}); err != nil {
		t.Error(err)
	}
}
