package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// fakeResult is a result whose latencies are n values from lo to hi µs.
func fakeResult(n int, lo, hi int64) *Result {
	h := hdrhistogram.New(histMin, histMax, histSig)
	for i := 0; i < n; i++ {
		h.RecordValue(lo + (hi-lo)*int64(i)/int64(n))
	}
	return &Result{Protocol: HTTP1, Mode: "fixed-rate", Requests: int64(n), Errors: map[string]int64{}, Elapsed: time.Second,
		Throughput: float64(n), Hist: h, Latency: summarise(h)}
}

// TestReport: the table shows every scenario and the latency it adds over
// the first, the JSON reads back, and the plot is a real SVG and PNG.
func TestReport(t *testing.T) {
	direct, mesh := fakeResult(1000, 100, 300), fakeResult(1000, 300, 900)
	r := &Report{Protocol: HTTP1, Rate: 1000, Connections: 16, Duration: "1s", BodySize: 1024, Repetitions: 2,
		Scenarios: []*Scenario{{Name: "direct", Result: direct}, {Name: "mesh L7", Result: mesh,
			Added: &Latency{P50: mesh.Latency.P50 - direct.Latency.P50, P99: mesh.Latency.P99 - direct.Latency.P99},
			Sidecars: []SidecarCost{{Pod: "c", CPUSeconds: 1.5, CPUPer10kRequests: 1.5, VCPUPer1000RPS: 0.15, IdleRSS: 20 << 20, PeakRSS: 30 << 20,
				LoadRSS: 28 << 20, PerConnectionRSS: 512 << 10}}}}}
	var table bytes.Buffer
	if err := r.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"http1, fixed rate 1000 rps, 16 connections, 1s, 1024-byte body, 2 interleaved repetitions",
		"direct", "mesh L7", "+0.400", "vCPU / 1000 rps", "0.150", "30.0", "28.0", "512.0"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	dir := t.TempDir()
	js := filepath.Join(dir, "r.json")
	if err := r.WriteJSON(js); err != nil {
		t.Fatal(err)
	}
	var back Report
	b, _ := os.ReadFile(js)
	if err := json.Unmarshal(b, &back); err != nil || len(back.Scenarios) != 2 || back.Scenarios[1].Added == nil ||
		back.Scenarios[1].Result.Latency.P50 != mesh.Latency.P50 || back.Scenarios[1].Sidecars[0].VCPUPer1000RPS != 0.15 {
		t.Errorf("JSON does not read back: %v\n%s", err, b)
	}
	for _, f := range []string{"r.svg", "r.png"} {
		path := filepath.Join(dir, f)
		if err := r.WritePlot(path); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(path)
		if (f == "r.svg" && !bytes.Contains(b, []byte("<svg"))) || (f == "r.png" && !bytes.HasPrefix(b, []byte("\x89PNG"))) {
			t.Errorf("%s is not the picture it names (%d bytes)", f, len(b))
		}
	}
	if err := r.WritePlot(filepath.Join(dir, "r.gif")); err == nil {
		t.Error("a .gif plot was accepted")
	}
}
