//go:build !linux

package proxy

import "net"

// waitReadable does not wait off Linux: the caller's Read waits instead,
// holding its buffer meanwhile, which costs memory but changes no result.
func waitReadable(*net.TCPConn) error { return nil }

// idleAlive cannot look without reading off Linux: a pooled connection is
// taken as alive (a request that finds it closed is sent again).
func idleAlive(*net.TCPConn) bool { return true }
