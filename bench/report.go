package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
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

// plotQuantiles are the percentiles the plot draws, as "nines": 0 is the
// median, 1 p90, 2 p99, 3 p99.9, 4 p99.99.
var plotQuantiles = []float64{50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99}

// PlotFormat refuses a plot file that is neither SVG nor PNG, by its
// extension, as WritePlot does: to check before any load runs.
func PlotFormat(path string) error {
	if ext := strings.ToLower(filepath.Ext(path)); ext != ".svg" && ext != ".png" {
		return errors.New("want a .svg or .png file")
	}
	return nil
}

// WritePlot draws the latency of every scenario against the percentile
// (on a log scale of nines, as HDR histogram plots do) to path: SVG or
// PNG by its extension.
func (r *Report) WritePlot(path string) error {
	if err := PlotFormat(path); err != nil {
		return fmt.Errorf("bench: plot %s: %w", path, err)
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("latency by percentile: %s, %s", r.Protocol, rateText(r.Rate))
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "latency (ms)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = oneTwoFive{}
	p.X.Tick.Marker = plot.ConstantTicks(nineTicks())
	p.Legend.Top = true
	p.Legend.Left = true
	for i, s := range r.Scenarios {
		pts := make(plotter.XYs, 0, len(plotQuantiles))
		for _, q := range plotQuantiles {
			v := float64(s.Result.Hist.ValueAtQuantile(q)) / 1000
			pts = append(pts, plotter.XY{X: nines(q), Y: math.Max(v, 0.001)})
		}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		c := plotutil.Color(i)
		line.Color, points.Color = c, c
		line.Width = vg.Points(1.5)
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(s.Name, line, points)
	}
	p.Add(plotter.NewGrid())
	p.BackgroundColor = color.White
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}

// nines maps a percentile to the log scale of its nines: 90 → 1, 99 → 2.
func nines(q float64) float64 { return -math.Log10(1 - q/100) }

func nineTicks() []plot.Tick {
	var t []plot.Tick
	for _, q := range []float64{50, 90, 99, 99.9, 99.99} {
		t = append(t, plot.Tick{Value: nines(q), Label: fmt.Sprintf("p%g", q)})
	}
	return t
}

func rateText(rate float64) string {
	if rate == 0 {
		return "as fast as possible"
	}
	return fmt.Sprintf("%.0f rps", rate)
}

// oneTwoFive ticks a log axis at 1, 2 and 5 of every power of ten, all
// labelled, so that a latency can be read off the plot.
type oneTwoFive struct{}

func (oneTwoFive) Ticks(lo, hi float64) []plot.Tick {
	var t []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v >= lo && v <= hi {
				t = append(t, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	return t
}
