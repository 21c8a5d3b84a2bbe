package topology

import (
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"meshgate/nsrun"
)

func needRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs root and network namespaces; skipped in -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
}

// TestPodsReachEachOther checks the lab wiring that every e2e test stands
// on: two pods talk over IPv4 and IPv6 across the bridge, and Close leaves
// no namespace and no process behind.
func TestPodsReachEachOther(t *testing.T) {
	needRoot(t)
	lab, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := lab.AddPod("a")
	if err != nil {
		lab.Close()
		t.Fatal(err)
	}
	b, err := lab.AddPod("b")
	if err != nil {
		lab.Close()
		t.Fatal(err)
	}
	var ln4, ln6 net.Listener
	if err := nsrun.Do(b.Path(), func() (err error) {
		if ln4, err = net.Listen("tcp4", netip.AddrPortFrom(b.IPv4, 7777).String()); err != nil {
			return err
		}
		ln6, err = net.Listen("tcp6", netip.AddrPortFrom(b.IPv6, 7777).String())
		return err
	}); err != nil {
		lab.Close()
		t.Fatal(err)
	}
	for _, ln := range []net.Listener{ln4, ln6} {
		go func() {
			c, err := ln.Accept()
			if err == nil {
				io.Copy(c, c)
				c.Close()
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, dst := range []netip.Addr{b.IPv4, b.IPv6} {
		c, err := a.Dial(ctx, "tcp", netip.AddrPortFrom(dst, 7777).String())
		if err != nil {
			t.Errorf("dial %s from pod a: %v", dst, err)
			continue
		}
		c.Write([]byte("ping"))
		c.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != "ping" {
			t.Errorf("echo via %s = %q, want ping", dst, got)
		}
	}
	ln4.Close()
	ln6.Close()

	p, err := a.Start([]string{"sleep", "60"}, ProcOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := a.Run(ctx, "ip", "-o", "addr", "show", "dev", "eth0")
	if err != nil || !contains(out, a.IPv4.String()) {
		t.Errorf("ip addr in pod a = %q, %v; want %s", out, err, a.IPv4)
	}
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() {
		t.Error("process started in a pod still runs after Close")
	}
	if left := Leftovers(); len(left) != 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestCaptureSeesTheWire: a capture on a pod's link records the bytes the
// pod sends, so e2e tests can show what crosses the wire.
func TestCaptureSeesTheWire(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Skip("tshark not installed (apt-get install tshark)")
	}
	lab, err := New(Options{NoIPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	a, _ := lab.AddPod("a")
	b, _ := lab.AddPod("b")
	var ln net.Listener
	if err := nsrun.Do(b.Path(), func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(b.IPv4, 7777).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	capt, err := lab.Capture(a, "tcp port 7777", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Echo(ctx, netip.AddrPortFrom(b.IPv4, 7777).String(), []byte("plain words on the wire")); err != nil {
		t.Fatal(err)
	}
	if err := capt.Stop(); err != nil {
		t.Fatal(err)
	}
	out, err := capt.Fields(ctx, "tcp.len > 0", "tcp.payload")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, hex.EncodeToString([]byte("plain words"))) {
		t.Errorf("capture lacks the payload; tshark printed:\n%s", out)
	}
}
