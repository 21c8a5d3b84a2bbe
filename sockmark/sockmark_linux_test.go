package sockmark

import (
	"net"
	"syscall"
	"testing"
)

const mark = 0x539

// TestControl: a socket dialed with Control carries the mark, over TCP
// and UDP; mark 0 is no hook at all.
func TestControl(t *testing.T) {
	if Control(0) != nil {
		t.Error("Control(0) is a hook; want nil, no mark")
	}
	if err := Probe(mark); err != nil {
		t.Skipf("cannot mark sockets here (needs CAP_NET_ADMIN): %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	d := net.Dialer{Control: Control(mark)}
	for network, addr := range map[string]string{"tcp": ln.Addr().String(), "udp": pc.LocalAddr().String()} {
		c, err := d.Dial(network, addr)
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if got := markOf(t, c); got != mark {
			t.Errorf("%s: mark %#x, want %#x", network, got, mark)
		}
		c.Close()
	}
}

// TestControlWithoutPermission: where marks cannot be set, a dial goes
// on unmarked, as the proxy's data path always has (see Control).
func TestControlWithoutPermission(t *testing.T) {
	if err := Probe(mark); err == nil {
		t.Skip("this process may set marks; run as a user without CAP_NET_ADMIN")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := (&net.Dialer{Control: Control(mark)}).Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial with a mark that may not be set: %v; want it to go on unmarked", err)
	}
	defer c.Close()
	if got := markOf(t, c); got != 0 {
		t.Errorf("mark %#x, want none", got)
	}
}

func markOf(t *testing.T, c net.Conn) uint32 {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	m, err := Get(rc)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
