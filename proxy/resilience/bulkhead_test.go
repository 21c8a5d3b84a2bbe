package resilience

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

func TestLimiter(t *testing.T) {
	l := NewLimiter(2)
	if !l.TryAcquire() || !l.TryAcquire() {
		t.Fatal("refused under its max")
	}
	if l.TryAcquire() {
		t.Fatal("admitted a third of 2")
	}
	if got := l.InUse(); got != 2 {
		t.Fatalf("InUse = %d; want 2 (a refusal takes nothing)", got)
	}
	l.Release()
	if !l.TryAcquire() {
		t.Fatal("refused after a release")
	}
	l.Release()
	l.Release()
	if got := l.InUse(); got != 0 {
		t.Fatalf("InUse = %d after releasing all; want 0", got)
	}
	if l.Max() != 2 {
		t.Errorf("Max = %d; want 2", l.Max())
	}
}

func TestLimiterUnlimited(t *testing.T) {
	for name, l := range map[string]*Limiter{"NewLimiter(0)": NewLimiter(0), "zero Limiter": {}} {
		for i := range 10_000 {
			if !l.TryAcquire() {
				t.Fatalf("%s refused request %d", name, i+1)
			}
		}
		// It still counts, for the metric.
		if got := l.InUse(); got != 10_000 {
			t.Errorf("%s: InUse = %d; want 10000", name, got)
		}
		if l.Max() != 0 {
			t.Errorf("%s: Max = %d; want 0", name, l.Max())
		}
	}
}

func TestLimiterReleaseWithoutAcquirePanics(t *testing.T) {
	l := NewLimiter(1)
	defer func() {
		if recover() == nil {
			t.Error("Release with nothing in use did not panic")
		}
		if got := l.InUse(); got != 0 {
			t.Errorf("InUse = %d after the bad release; want 0", got)
		}
		if !l.TryAcquire() || l.TryAcquire() {
			t.Error("after a bad release the limiter no longer admits exactly its max")
		}
	}()
	l.Release()
}

func TestNewLimiterPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewLimiter(-1) did not panic")
		}
	}()
	NewLimiter(-1)
}

// TestLimiterConcurrent has many goroutines take and give back units:
// never more than max in use at once.
func TestLimiterConcurrent(t *testing.T) {
	for _, max := range []int64{1, 3, 16} {
		t.Run(fmt.Sprint(max), func(t *testing.T) {
			l := NewLimiter(max)
			var held, peak, admitted atomic.Int64
			var wg sync.WaitGroup
			for range 32 {
				wg.Go(func() {
					for range 2000 {
						if !l.TryAcquire() {
							continue
						}
						admitted.Add(1)
						n := held.Add(1)
						for {
							p := peak.Load()
							if n <= p || peak.CompareAndSwap(p, n) {
								break
							}
						}
						if n > max {
							t.Errorf("%d held at once; max %d", n, max)
						}
						runtime.Gosched()
						held.Add(-1)
						l.Release()
					}
				})
			}
			wg.Wait()
			if l.InUse() != 0 {
				t.Errorf("InUse = %d after all released", l.InUse())
			}
			if admitted.Load() == 0 || peak.Load() < 1 {
				t.Errorf("admitted %d, peak %d: nothing went through", admitted.Load(), peak.Load())
			}
			t.Logf("admitted %d of %d, peak %d", admitted.Load(), 32*2000, peak.Load())
		})
	}
}

// TestLimiterNeverRefusesUnderMax: as many goroutines as max, each
// holding at most one unit, are never refused.
func TestLimiterNeverRefusesUnderMax(t *testing.T) {
	const n = 8
	l := NewLimiter(n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for range 5000 {
				if !l.TryAcquire() {
					t.Error("refused with fewer than max in use")
					return
				}
				runtime.Gosched()
				l.Release()
			}
		})
	}
	wg.Wait()
}

func BenchmarkLimiter(b *testing.B) {
	l := NewLimiter(100)
	b.ReportAllocs()
	for b.Loop() {
		if l.TryAcquire() {
			l.Release()
		}
	}
}

func BenchmarkLimiterParallel(b *testing.B) {
	l := NewLimiter(1 << 20)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if l.TryAcquire() {
				l.Release()
			}
		}
	})
}
