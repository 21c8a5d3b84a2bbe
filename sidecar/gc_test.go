package sidecar

import (
	"math"
	"runtime"
	"runtime/debug"
	"testing"

	"go.uber.org/zap"
)

func TestGCApply(t *testing.T) {
	// apply changes the process's collector: put it back after.
	oldPercent := debug.SetGCPercent(100)
	oldLimit := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() {
		debug.SetGCPercent(oldPercent)
		debug.SetMemoryLimit(oldLimit)
	})
	for _, tc := range []struct {
		name                         string
		gc                           GC
		env                          map[string]string
		wantPercent                  int
		wantLimit                    int64
		wantPercentLog, wantLimitLog string
	}{
		{"defaults", GC{}, nil, DefaultGCPercent, math.MaxInt64, "100", "none"},
		{"flags", GC{Percent: 80, MemoryLimit: 64 << 20}, nil, 80, 64 << 20, "80", "67108864"},
		{"environment wins", GC{Percent: 80, MemoryLimit: 64 << 20}, map[string]string{"GOGC": "200", "GOMEMLIMIT": "1GiB"},
			100, math.MaxInt64, "GOGC=200", "GOMEMLIMIT=1GiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetGCPercent(100)
			debug.SetMemoryLimit(math.MaxInt64)
			p, l := tc.gc.apply(func(k string) string { return tc.env[k] })
			if p != tc.wantPercentLog || l != tc.wantLimitLog {
				t.Errorf("apply says %q, %q; want %q, %q", p, l, tc.wantPercentLog, tc.wantLimitLog)
			}
			if got := debug.SetGCPercent(100); got != tc.wantPercent {
				t.Errorf("GC percent %d, want %d", got, tc.wantPercent)
			}
			if got := debug.SetMemoryLimit(-1); got != tc.wantLimit {
				t.Errorf("memory limit %d, want %d", got, tc.wantLimit)
			}
		})
	}
}

func TestGCValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		gc   GC
		want string
	}{
		{"zero", GC{}, ""},
		{"off with a limit", GC{Percent: -1, MemoryLimit: 1 << 30}, ""},
		{"off without a limit", GC{Percent: -1},
			"--gc-percent -1: with the collector off, the heap grows without bound; give --memory-limit too"},
		{"negative", GC{Percent: -5, MemoryLimit: -1},
			"--gc-percent -5: want a percentage, 0 for the default (100), or -1 to turn the collector off\n" +
				"--memory-limit -1: want bytes, or 0 for none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.gc.Validate()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("Validate() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"0", 0, false},
		{"1024", 1024, false},
		{"64MiB", 64 << 20, false},
		{"2GiB", 2 << 30, false},
		{"512KiB", 512 << 10, false},
		{"10B", 10, false},
		{"1TiB", 1 << 40, false},
		{"", 0, true},
		{"64MB", 0, true},
		{"-1", 0, true},
		{"9999999999TiB", 0, true},
	} {
		got, err := ParseBytes(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// sink keeps a test's allocation from being optimised away.
var sink [][]byte

func TestTrimOnceGivesFreeHeapBack(t *testing.T) {
	// No collection but ours, as in an idle sidecar.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	// A burst of 64 MiB, then dropped: garbage not yet collected, or
	// collected and not given back.
	for _, collect := range []bool{false, true} {
		runtime.GC()
		for range 64 {
			sink = append(sink, make([]byte, 1<<20))
		}
		if collect {
			runtime.GC() // the burst is live at this collection
		}
		sink = nil
		if collect {
			runtime.GC()
		}
		if excess, _ := heapExcess(); excess <= trimAbove {
			t.Skipf("collect %v: the runtime gave the burst back already (%d bytes beyond live): nothing to trim", collect, excess)
		}
		if !trimOnce(zap.NewNop()) {
			t.Fatalf("collect %v: trimOnce did not trim", collect)
		}
		if excess, _ := heapExcess(); excess > trimAbove {
			t.Errorf("collect %v: after trimming, %d bytes beyond the live heap are resident; want at most %d", collect, excess, trimAbove)
		}
		if trimOnce(zap.NewNop()) {
			t.Errorf("collect %v: trimOnce trimmed again with nothing to give back", collect)
		}
	}
}
