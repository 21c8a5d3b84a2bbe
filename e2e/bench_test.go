package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshgate/bench"
)

// TestBenchMesh runs 'meshgate bench mesh' briefly, as 'make bench' does
// at length: every scenario answers every request due, the sidecars'
// costs are measured, and the table, the JSON and the plot are written.
func TestBenchMesh(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		protocol  string
		scenarios []string
	}{
		{"http1", []string{"direct", "mesh L7", "mesh L4"}},
		{"grpc", []string{"direct", "mesh L7", "mesh L4"}},
		{"h2", []string{"direct", "mesh"}}, // the app's own TLS: bytes inside the mTLS
		{"tcp", []string{"direct", "mesh"}},
	} {
		t.Run(tc.protocol, func(t *testing.T) {
			dir := t.TempDir()
			js, svg := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.svg")
			cmd := exec.CommandContext(ctxFor(t, 2*time.Minute), bin, "bench", "mesh", "--protocol", tc.protocol, "--rate", "500",
				"--connections", "8", "--duration", "2s", "--warmup", "200ms", "--repetitions", "2", "--json", js, "--plot", svg)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("bench mesh: %v\n%s", err, out)
			}
			t.Logf("bench mesh --protocol %s:\n%s", tc.protocol, out)
			var r bench.Report
			b, err := os.ReadFile(js)
			if err != nil || json.Unmarshal(b, &r) != nil {
				t.Fatalf("JSON report: %v\n%s", err, b)
			}
			if len(r.Scenarios) != len(tc.scenarios) {
				t.Fatalf("%d scenarios, want %v", len(r.Scenarios), tc.scenarios)
			}
			for i, s := range r.Scenarios {
				if s.Name != tc.scenarios[i] || s.Result.Requests != 1000 || len(s.Result.Errors) != 0 {
					t.Errorf("scenario %q: %d requests, errors %v; want %q with the 1000 due and none failed", s.Name, s.Result.Requests, s.Result.Errors, tc.scenarios[i])
				}
				if !strings.Contains(string(out), s.Name) {
					t.Errorf("the table lacks scenario %q", s.Name)
				}
				if i == 0 {
					continue
				}
				if s.Added == nil || len(s.Sidecars) != 2 {
					t.Errorf("scenario %q: added %v, %d sidecars; want the latency added and both sidecars' costs", s.Name, s.Added, len(s.Sidecars))
				}
				for _, c := range s.Sidecars {
					if c.CPUSeconds <= 0 || c.VCPUPer1000RPS <= 0 || c.IdleRSS <= 0 || c.PeakRSS < c.IdleRSS {
						t.Errorf("scenario %q, sidecar %s: %+v; want CPU and memory measured", s.Name, c.Pod, c)
					}
				}
			}
			if b, err := os.ReadFile(svg); err != nil || !bytes.Contains(b, []byte("<svg")) {
				t.Errorf("plot: %v", err)
			}
		})
	}
}
