package main

import (
	"bytes"
	"testing"
)

// TestInitRefuses: through main, a bad variable is one line naming it,
// exit 1, and nothing is applied.
func TestInitRefuses(t *testing.T) {
	t.Setenv("MESHGATE_PROXY_UID", "envoy")
	t.Setenv("MESHGATE_CAPTURE_DNS", "")
	var stdout, stderr bytes.Buffer
	code := mainExit([]string{"init", "--mode", "nat"}, &stdout, &stderr)
	want := "meshgate init: MESHGATE_PROXY_UID \"envoy\": want a numeric UID like 1337, or none; --mode \"nat\": want redirect or tproxy\n"
	if code != 1 || stderr.String() != want || stdout.Len() != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q; want 1, nothing, %q", code, stdout.String(), stderr.String(), want)
	}
}
