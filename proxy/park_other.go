//go:build !linux

package proxy

import "net"

// parker cannot park off Linux: a copy direction waits on its goroutine.
type parker struct{}

var parking = &parker{}

func (*parker) park(*pump, *net.TCPConn) bool { return false }
func (*parker) cancel(*pump, error)           {}
func (*parker) count() int                    { return 0 }
