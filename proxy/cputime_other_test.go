//go:build !unix

package proxy

import "time"

// processCPU is unknown here.
func processCPU() (time.Duration, bool) { return 0, false }
