package testnet

import (
	"fmt"
	"net"
	"testing"
)

// FreePort returns a loopback port of network that was free a moment ago,
// for a server that cannot report the port it bound. network is "tcp",
// or "udp", which also checks TCP: a server that binds the same port
// over both (a DNS proxy) needs a port free over both.
func FreePort(t testing.TB, network string) uint16 {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		free := true
		if network == "udp" {
			pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
			if free = err == nil; free {
				pc.Close()
			}
		}
		ln.Close()
		if free {
			return uint16(port)
		}
	}
	t.Fatalf("testnet: no loopback port free over %s", network)
	return 0
}
