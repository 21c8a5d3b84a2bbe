package sidecar

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// DefaultGCPercent is the sidecar's garbage collection target when
// neither GC.Percent nor GOGC says otherwise: Go's own, the heap may
// double before a collection. Half of that (50) was measured in one
// peerbench run beside it (issue 12): it saved 1.5-2 MB of peak RSS per
// sidecar under load, and cost 5% more CPU per keep-alive request, 9%
// per new connection and 13% per mTLS handshake. The sidecar sits in
// every request's path, so CPU wins by default; --gc-percent 50 or
// --memory-limit trade it back for memory. With the allocations of the
// HTTP/1 engine (a dozen per request over both sidecars) the collector
// runs seldom either way.
const DefaultGCPercent = 100

// GC tunes the Go garbage collector of the sidecar's process. The
// environment wins: GOGC and GOMEMLIMIT, when set, are the user's word
// and are left to the Go runtime.
type GC struct {
	// Percent is the collection target, as GOGC: how much the heap may
	// grow, in percent of live memory, before a collection. 0 means
	// DefaultGCPercent; -1 turns the collector off, for use with
	// MemoryLimit. --gc-percent.
	Percent int
	// MemoryLimit is a soft limit of the Go runtime's memory in bytes, as
	// GOMEMLIMIT: the collector works harder as it nears it. 0: none.
	// --memory-limit.
	MemoryLimit int64
}

// Validate reports the problems of g, each naming its flag.
func (g GC) Validate() error {
	var errs []error
	if g.Percent < -1 {
		errs = append(errs, fmt.Errorf("--gc-percent %d: want a percentage, 0 for the default (%d), or -1 to turn the collector off", g.Percent, DefaultGCPercent))
	}
	if g.MemoryLimit < 0 {
		errs = append(errs, fmt.Errorf("--memory-limit %d: want bytes, or 0 for none", g.MemoryLimit))
	}
	if g.Percent == -1 && g.MemoryLimit == 0 {
		errs = append(errs, errors.New("--gc-percent -1: with the collector off, the heap grows without bound; give --memory-limit too"))
	}
	return errors.Join(errs...)
}

// apply sets the collector as g says, where getenv finds no GOGC or
// GOMEMLIMIT, and returns what is in effect, for the log.
func (g GC) apply(getenv func(string) string) (percent, limit string) {
	percent, limit = "GOGC="+getenv("GOGC"), "GOMEMLIMIT="+getenv("GOMEMLIMIT")
	if getenv("GOGC") == "" {
		p := g.Percent
		if p == 0 {
			p = DefaultGCPercent
		}
		debug.SetGCPercent(p)
		percent = strconv.Itoa(p)
	}
	if getenv("GOMEMLIMIT") == "" {
		limit = "none"
		if g.MemoryLimit > 0 {
			debug.SetMemoryLimit(g.MemoryLimit)
			limit = strconv.FormatInt(g.MemoryLimit, 10)
		}
	}
	return percent, limit
}

// ParseBytes reads a size as GOMEMLIMIT spells it: a number of bytes,
// optionally with a unit B, KiB, MiB, GiB or TiB (e.g. 64MiB).
func ParseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	num, mult := s, int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || (n > 0 && mult > math.MaxInt64/n) {
		return 0, fmt.Errorf("%q: want bytes, e.g. 67108864 or 64MiB (units B, KiB, MiB, GiB, TiB)", s)
	}
	return n * mult, nil
}

// Heap trimming: after a burst (a storm of handshakes, a spike of
// requests) what the burst left is garbage until the next collection,
// and an idle sidecar allocates too little to collect again soon; once
// collected, the Go runtime gives the memory back to the system only
// slowly, paced against the heap goal of the last collection, which the
// burst raised. The pages stay in the sidecar's RSS meanwhile (issue 12:
// at 2 000 open connections, up to 18 MB of free heap was still
// resident a minute after the handshakes). Envoy's overload manager has
// the same action, shrink_heap.
const (
	// trimEvery is how often the heap is looked at.
	trimEvery = 5 * time.Second
	// trimAbove is how much resident heap beyond the live heap (garbage
	// and free pages) is tolerated: below it, or below a quarter of the
	// live heap, nothing is done.
	trimAbove = 4 << 20
)

// trimHeap gives heap back to the system, every trimEvery, when more of
// it than trimAbove and than a quarter of the live heap is resident
// beyond what the last collection found live: debug.FreeOSMemory, a
// collection and a release. It costs at most one collection per
// trimEvery, next to which a loaded sidecar collects many times a second.
// It returns when ctx ends.
func trimHeap(ctx context.Context, log *zap.Logger) {
	t := time.NewTicker(trimEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		trimOnce(log)
	}
}

// trimOnce is one look of trimHeap's; it reports whether it trimmed.
func trimOnce(log *zap.Logger) bool {
	excess, live := heapExcess()
	if excess <= trimAbove || excess <= live/4 {
		return false
	}
	debug.FreeOSMemory()
	if ce := log.Check(zap.DebugLevel, "heap trimmed"); ce != nil {
		after, live := heapExcess()
		ce.Write(zap.Uint64("excess_before", excess), zap.Uint64("excess_after", after), zap.Uint64("live", live))
	}
	return true
}

// heapExcess returns how much resident heap (objects, and free pages not
// given back) there is beyond the live heap, and the live heap, as the
// last collection found it.
func heapExcess() (excess, live uint64) {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/gc/heap/live:bytes"},
	}
	metrics.Read(s)
	resident, live := s[0].Value.Uint64()+s[1].Value.Uint64(), s[2].Value.Uint64()
	if resident < live {
		return 0, live
	}
	return resident - live, live
}
