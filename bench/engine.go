package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds, from 1 µs to 5 minutes, with 3
// significant digits.
const (
	histMin = 1
	histMax = int64(5 * time.Minute / time.Microsecond)
	histSig = 3
)

// Result is what one run measured.
type Result struct {
	// Protocol and Mode ("fixed-rate" or "max") say what ran.
	Protocol Protocol `json:"protocol"`
	Mode     string   `json:"mode"`
	// Rate is the requested rate (0 for max), Connections the workers.
	Rate        float64 `json:"rate"`
	Connections int     `json:"connections"`
	// Requests counts the requests answered in the measured period,
	// Errors the failed ones by kind (connect, timeout, reset, eof,
	// status_5xx, ...).
	Requests int64            `json:"requests"`
	Errors   map[string]int64 `json:"errors"`
	// Elapsed is the measured period; Throughput the answered requests
	// per second over it.
	Elapsed    time.Duration `json:"elapsed_ns"`
	Throughput float64       `json:"throughput_rps"`
	// Latency is in milliseconds; for fixed-rate runs from each request's
	// intended send time.
	Latency Latency `json:"latency_ms"`
	// Hist holds every latency (µs), for plots and merging.
	Hist *hdrhistogram.Histogram `json:"-"`
}

// Latency summarises a histogram, in milliseconds.
type Latency struct {
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

// summarise reads the percentiles of h (µs) in milliseconds.
func summarise(h *hdrhistogram.Histogram) Latency {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Latency{
		Mean: h.Mean() / 1000,
		P50:  ms(h.ValueAtQuantile(50)),
		P90:  ms(h.ValueAtQuantile(90)),
		P99:  ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)),
		Max:  ms(h.Max()),
	}
}

// Progress is told, about every 100 ms, how far a run is (0 to 1, warm-up
// included) and how many requests it has answered.
type Progress func(done float64, requests int64)

// Run drives the load cfg describes until it is done or ctx ends, and
// returns what it measured. It fails only on bad config or when no
// client could be made; failed requests are counted in Result.Errors.
func Run(ctx context.Context, cfg Config, progress Progress) (*Result, error) {
	if err := cfg.withDefaults().Validate(); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	cfg = cfg.withDefaults()
	workers := make([]client, cfg.Connections)
	for i := range workers {
		c, err := newClient(cfg)
		if err != nil {
			for _, w := range workers[:i] {
				w.close()
			}
			return nil, fmt.Errorf("bench: %w", err)
		}
		workers[i] = c
	}
	defer func() {
		for _, w := range workers {
			w.close()
		}
	}()

	total := cfg.Warmup + cfg.Duration
	begin := time.Now()
	var answered atomic.Int64
	stopProgress := make(chan struct{})
	var progressWG sync.WaitGroup
	if progress != nil {
		progressWG.Go(func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					progress(1, answered.Load())
					return
				case <-t.C:
					progress(min(1, float64(time.Since(begin))/float64(total)), answered.Load())
				}
			}
		})
	}
	if cfg.Warmup > 0 {
		phase(ctx, cfg, workers, cfg.Warmup, nil)
	}
	start := time.Now()
	res := phase(ctx, cfg, workers, cfg.Duration, &answered)
	res.Elapsed = time.Since(start)
	close(stopProgress)
	progressWG.Wait()

	res.Protocol, res.Rate, res.Connections = cfg.Protocol, cfg.Rate, cfg.Connections
	res.Mode = "max"
	if cfg.Rate > 0 {
		res.Mode = "fixed-rate"
	}
	res.Throughput = float64(res.Requests) / res.Elapsed.Seconds()
	res.Latency = summarise(res.Hist)
	return res, nil
}

// phase runs the load for d. Fixed rate: request k is due at start +
// k/Rate; a worker takes the next due request once its last is answered.
// If that is ahead of time, it waits and sends it on time, and the latency
// counts from the send. If the request is overdue — every worker was
// still waiting for the server when it fell due — it goes at once and
// its latency counts from the due time: the wait the server caused is
// part of it (no coordinated omission). As fast as possible: each worker sends its next
// request once the last is answered. counted, if set, counts answers as
// they come (for progress); with nil nothing is recorded (warm-up).
func phase(ctx context.Context, cfg Config, workers []client, d time.Duration, counted *atomic.Int64) *Result {
	start := time.Now()
	deadline := start.Add(d)
	// Requests due before the deadline but not yet sent when it passes
	// (all workers stuck) are given up after one more timeout.
	hardStop := deadline.Add(cfg.Timeout)
	ctx, cancel := context.WithDeadline(ctx, hardStop)
	defer cancel()
	var period time.Duration
	if cfg.Rate > 0 {
		period = time.Duration(float64(time.Second) / cfg.Rate)
	}
	var next atomic.Int64
	type partial struct {
		hist     *hdrhistogram.Histogram
		requests int64
		errors   map[string]int64
	}
	parts := make([]partial, len(workers))
	var wg sync.WaitGroup
	for i, w := range workers {
		parts[i] = partial{hist: hdrhistogram.New(histMin, histMax, histSig), errors: map[string]int64{}}
		part := &parts[i]
		wg.Go(func() {
			for ctx.Err() == nil {
				var due time.Time
				if period > 0 {
					due = start.Add(time.Duration(next.Add(1)-1) * period)
					if !due.Before(deadline) {
						return
					}
					if wait := time.Until(due); wait > 0 {
						// Free before its time: the request goes when the
						// timer fires, and counts from then, so the timer's
						// own lateness (the client's) is not the server's.
						select {
						case <-time.After(wait):
						case <-ctx.Done():
							return
						}
						due = time.Now()
					}
					// Otherwise every worker was still busy when it fell
					// due: the server held it back, and that wait counts.
				} else {
					due = time.Now()
					if !due.Before(deadline) {
						return
					}
				}
				rctx, rcancel := context.WithTimeout(ctx, cfg.Timeout)
				err := w.do(rctx)
				rcancel()
				took := time.Since(due)
				if counted == nil {
					continue
				}
				if err != nil {
					if ctx.Err() != nil && time.Now().After(hardStop) {
						return // cut off at the hard stop: not the server's failure
					}
					part.errors[errorKind(err)]++
					continue
				}
				part.requests++
				part.hist.RecordValue(max(histMin, min(histMax, took.Microseconds())))
				counted.Add(1)
			}
		})
	}
	wg.Wait()
	res := &Result{Hist: hdrhistogram.New(histMin, histMax, histSig), Errors: map[string]int64{}}
	for _, p := range parts {
		res.Hist.Merge(p.hist)
		res.Requests += p.requests
		for k, v := range p.errors {
			res.Errors[k] += v
		}
	}
	return res
}

// statusError is an HTTP or gRPC answer that is not a success.
type statusError struct{ kind string }

func (e *statusError) Error() string { return e.kind }

// errorKind names a failed request's error for Result.Errors.
func errorKind(err error) string {
	var se *statusError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		return se.kind
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connect_refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return "connect"
	}
	return "other"
}

// ErrorKinds returns the kinds of r.Errors in a stable order.
func (r *Result) ErrorKinds() []string {
	var k []string
	for kind := range r.Errors {
		k = append(k, kind)
	}
	sort.Strings(k)
	return k
}

// ErrorCount is the number of failed requests.
func (r *Result) ErrorCount() int64 {
	var n int64
	for _, v := range r.Errors {
		n += v
	}
	return n
}
