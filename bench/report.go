package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
)

// Scenario is one named line of a report: a run's result, and for mesh
// runs what the sidecars cost.
type Scenario struct {
	Name   string  `json:"name"`
	Result *Result `json:"result"`
	// Added is the latency added over the baseline scenario (direct), in
	// milliseconds; nil for the baseline itself.
	Added *Latency `json:"added_ms,omitempty"`
	// Sidecars are the costs of each sidecar, for mesh scenarios.
	Sidecars []SidecarCost `json:"sidecars,omitempty"`
}

// SidecarCost is what one sidecar spent on a scenario's load.
type SidecarCost struct {
	Pod string `json:"pod"`
	// CPUSeconds is user+system CPU time over the measured runs.
	CPUSeconds float64 `json:"cpu_seconds"`
	// CPUPer10kRequests is CPU seconds per 10 000 requests;
	// VCPUPer1000RPS the cores it keeps busy per 1000 requests per second.
	CPUPer10kRequests float64 `json:"cpu_seconds_per_10k_requests"`
	VCPUPer1000RPS    float64 `json:"vcpu_per_1000_rps"`
	// IdleRSS is the resident memory before the load, PeakRSS the high
	// water mark after it (bytes).
	IdleRSS int64 `json:"idle_rss_bytes"`
	PeakRSS int64 `json:"peak_rss_bytes"`
	// LoadRSS is the resident memory under load, with the run's
	// connections open: the median of samples every 100 ms over the
	// second half of a run, the largest over repetitions (bytes).
	// PerConnectionRSS is (LoadRSS - IdleRSS) / connections: what an open
	// connection costs the sidecar, for many connections (issue 12).
	LoadRSS          int64 `json:"load_rss_bytes"`
	PerConnectionRSS int64 `json:"per_connection_rss_bytes"`
}

// Report is what a bench command prints and writes.
type Report struct {
	// Config is the load that every scenario ran.
	Target      string      `json:"target,omitempty"`
	Protocol    Protocol    `json:"protocol"`
	Rate        float64     `json:"rate"`
	Connections int         `json:"connections"`
	Duration    string      `json:"duration"`
	BodySize    int         `json:"body_bytes"`
	Repetitions int         `json:"repetitions,omitempty"`
	Scenarios   []*Scenario `json:"scenarios"`
}

// WriteTable prints the report as an aligned text table.
func (r *Report) WriteTable(w io.Writer) error {
	mode := fmt.Sprintf("fixed rate %.0f rps", r.Rate)
	if r.Rate == 0 {
		mode = "as fast as possible"
	}
	fmt.Fprintf(w, "%s, %s, %d connections, %s", r.Protocol, mode, r.Connections, r.Duration)
	if r.BodySize > 0 {
		fmt.Fprintf(w, ", %d-byte body", r.BodySize)
	}
	if r.Repetitions > 1 {
		fmt.Fprintf(w, ", %d interleaved repetitions", r.Repetitions)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\treq/s\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tmax ms\terrors\tadded p50\tadded p99\t")
	for _, s := range r.Scenarios {
		l := s.Result.Latency
		added50, added99 := "-", "-"
		if s.Added != nil {
			added50, added99 = fmt.Sprintf("%+.3f", s.Added.P50), fmt.Sprintf("%+.3f", s.Added.P99)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.3f\t%.3f\t%.3f\t%.3f\t%.1f\t%d\t%s\t%s\t\n", s.Name, s.Result.Throughput,
			l.P50, l.P90, l.P99, l.P999, l.Max, s.Result.ErrorCount(), added50, added99)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var costs bool
	for _, s := range r.Scenarios {
		costs = costs || len(s.Sidecars) > 0
	}
	if !costs {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tsidecar\tCPU s\tCPU s / 10k req\tvCPU / 1000 rps\tidle RSS MB\tload RSS MB\tpeak RSS MB\tRSS KB / conn\t")
	for _, s := range r.Scenarios {
		for _, c := range s.Sidecars {
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.3f\t%.3f\t%.1f\t%.1f\t%.1f\t%.1f\t\n", s.Name, c.Pod, c.CPUSeconds, c.CPUPer10kRequests,
				c.VCPUPer1000RPS, float64(c.IdleRSS)/(1<<20), float64(c.LoadRSS)/(1<<20), float64(c.PeakRSS)/(1<<20),
				float64(c.PerConnectionRSS)/(1<<10))
		}
	}
	return tw.Flush()
}

// WriteJSON writes the report as indented JSON to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
