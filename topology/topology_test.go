package topology

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
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
