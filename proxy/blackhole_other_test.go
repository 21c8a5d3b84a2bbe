//go:build !linux

package proxy

import "testing"

// blackhole skips the test off Linux: it relies on a backlog of 0 making
// Linux drop SYNs, and on SOCK_CLOEXEC.
func blackhole(t *testing.T) string {
	t.Skip("blackhole: needs Linux (backlog 0 drops SYNs)")
	return ""
}
