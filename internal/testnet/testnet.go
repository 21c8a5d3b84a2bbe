package testnet

import (
	"net"
	"testing"
)

// FreePort returns a loopback port of network ("tcp" or "udp") that was
// free a moment ago, for a server that cannot report the port it bound.
func FreePort(t testing.TB, network string) uint16 {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}
