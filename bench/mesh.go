package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/intercept"
	"meshgate/mtls"
	"meshgate/mtls/ca"
	"meshgate/redirect"
	"meshgate/sidecar"
	"meshgate/topology"
)

// MeshOptions configure Mesh.
type MeshOptions struct {
	// Load is the load every scenario runs; its Target and Dial are set
	// by Mesh. Its Duration is each scenario's measured time in all,
	// split evenly over the repetitions; its Warmup precedes every run.
	Load Config
	// Repetitions is how many times each scenario runs, interleaved
	// (direct, mesh, direct, mesh, ...), so that a machine's drift hits
	// them alike; 0 means 3.
	Repetitions int
	// Self is the meshgate binary, run in the pods as the backend
	// ("bench serve") and the sidecars ("proxy").
	Self string
	// LogDir, if set, receives each sidecar's log (POD.log); otherwise
	// they go with the lab.
	LogDir string
	// Progress, if set, is told each run's progress, with its name.
	Progress func(scenario string, rep int, done float64, requests int64)
}

// meshPair is a client pod and a server pod, with sidecars or without.
type meshPair struct {
	name           string
	client, server *topology.Pod
	sidecars       []*runningSidecar
	runs           []*Result
}

// runningSidecar is a running meshgate proxy of a scenario.
type runningSidecar struct {
	pod  *topology.Pod
	proc *topology.Process
	cpu0 float64 // CPU seconds when the measured runs began
	cpu  float64 // CPU seconds spent in measured runs
	idle int64   // RSS before any load
	load int64   // RSS under load, see SidecarCost.LoadRSS
}

// Mesh builds a lab of network namespaces on this machine — a client pod
// and a server pod running Serve, once without sidecars ("direct") and
// with a pair of meshgate sidecars with mTLS ("mesh"; for HTTP and gRPC
// "mesh L7", the default, and "mesh L4", with L7 off) — runs the same load through each,
// repetitions interleaved, and reports latency, the latency added over
// direct, and what the sidecars spent. It needs root; everything it
// creates is removed before it returns.
func Mesh(ctx context.Context, o MeshOptions) (*Report, error) {
	if o.Repetitions == 0 {
		o.Repetitions = 3
	}
	load := o.Load.withDefaults()
	load.Target = targetOf(load.Protocol, netip.MustParseAddr("192.0.2.1"))
	load.Insecure = true // bench serve's certificate is self-signed
	if err := load.Validate(); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if o.Repetitions < 1 || o.Repetitions > 100 {
		return nil, fmt.Errorf("bench: --repetitions %d: want 1 to 100", o.Repetitions)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench: mesh needs root (it creates network namespaces and iptables rules): run it with sudo")
	}
	// The state (certificates) goes after the lab, whose sidecars read it
	// until they stop.
	state, err := os.MkdirTemp("", "meshgate-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(state)
	if err := os.Chmod(state, 0o755); err != nil {
		return nil, err
	}
	lab, err := topology.New(topology.Options{})
	if err != nil {
		return nil, err
	}
	defer lab.Close()

	names := []string{"direct", "mesh"}
	if load.Protocol == HTTP1 || load.Protocol == H2C || load.Protocol == GRPC {
		// Plaintext HTTP and gRPC ride L7 by default; L4 shows what L7
		// adds. The app's own TLS (h2) and raw TCP pass as bytes.
		names = []string{"direct", "mesh L7", "mesh L4"}
	}
	var pairs []*meshPair
	for i, name := range names {
		c, err := lab.AddPod(fmt.Sprintf("b%dc", i))
		if err != nil {
			return nil, err
		}
		s, err := lab.AddPod(fmt.Sprintf("b%ds", i))
		if err != nil {
			return nil, err
		}
		pairs = append(pairs, &meshPair{name: name, client: c, server: s})
	}
	for _, p := range pairs {
		if _, err := p.server.Start([]string{o.Self, "bench", "serve", "--http", ":8080", "--tls", ":8443", "--grpc", ":8081", "--tcp", ":9000"}, topology.ProcOptions{}); err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := p.server.WaitListening(wctx, netip.AddrPortFrom(p.server.IPv4, 8080))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("bench: the backend in %s did not start: %w", p.server.Name, err)
		}
	}
	c, err := ca.Init(filepath.Join(state, "ca"), spiffeid.RequireTrustDomainFromString("bench.local"))
	if err != nil {
		return nil, err
	}
	for _, p := range pairs[1:] {
		if err := p.enroll(ctx, o.Self, state, o.LogDir, c, p.name == "mesh L4"); err != nil {
			return nil, err
		}
	}

	rep := &Report{Protocol: load.Protocol, Rate: load.Rate, Connections: load.Connections,
		Duration: load.Duration.String(), BodySize: load.BodySize, Repetitions: o.Repetitions}
	for _, p := range pairs {
		for _, s := range p.sidecars {
			s.idle, _ = readRSS(s.proc.PID(), "VmRSS")
		}
	}
	perRun := load.Duration / time.Duration(o.Repetitions)
	if perRun < 100*time.Millisecond {
		return nil, fmt.Errorf("bench: --duration %s over %d repetitions leaves %s a run; want at least 100ms a run", load.Duration, o.Repetitions, perRun)
	}
	for r := 0; r < o.Repetitions; r++ {
		for _, p := range pairs {
			cfg := load
			cfg.Duration = perRun
			cfg.Target = targetOf(load.Protocol, p.server.IPv4)
			cfg.Dial = p.client.Dial
			for _, s := range p.sidecars {
				s.cpu0, _ = readCPU(s.proc.PID())
			}
			var progress Progress
			if o.Progress != nil {
				progress = func(done float64, n int64) { o.Progress(p.name, r+1, done, n) }
			}
			stopSampling := sampleRSS(p.sidecars, cfg.Warmup+cfg.Duration)
			res, err := Run(ctx, cfg, progress)
			stopSampling()
			if err != nil {
				return nil, err
			}
			for _, s := range p.sidecars {
				now, _ := readCPU(s.proc.PID())
				s.cpu += now - s.cpu0
			}
			p.runs = append(p.runs, res)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
	}
	var base *Result
	for _, p := range pairs {
		sc := &Scenario{Name: p.name, Result: mergeResults(p.runs)}
		if base == nil {
			base = sc.Result
		} else {
			added := Latency{P50: sc.Result.Latency.P50 - base.Latency.P50, P90: sc.Result.Latency.P90 - base.Latency.P90,
				P99: sc.Result.Latency.P99 - base.Latency.P99, P999: sc.Result.Latency.P999 - base.Latency.P999,
				Mean: sc.Result.Latency.Mean - base.Latency.Mean, Max: sc.Result.Latency.Max - base.Latency.Max}
			sc.Added = &added
		}
		for _, s := range p.sidecars {
			peak, _ := readRSS(s.proc.PID(), "VmHWM")
			cost := SidecarCost{Pod: s.pod.Name, CPUSeconds: s.cpu, IdleRSS: s.idle, PeakRSS: peak, LoadRSS: s.load}
			if s.load > 0 {
				cost.PerConnectionRSS = (s.load - s.idle) / int64(load.Connections)
			}
			if sc.Result.Requests > 0 {
				cost.CPUPer10kRequests = s.cpu / float64(sc.Result.Requests) * 10000
				cost.VCPUPer1000RPS = (s.cpu / sc.Result.Elapsed.Seconds()) / (sc.Result.Throughput / 1000)
			}
			sc.Sidecars = append(sc.Sidecars, cost)
		}
		rep.Scenarios = append(rep.Scenarios, sc)
	}
	return rep, nil
}

// targetOf is the backend's address in a server pod for protocol p.
func targetOf(p Protocol, server netip.Addr) string {
	switch p {
	case GRPC:
		return net.JoinHostPort(server.String(), "8081")
	case TCP:
		return net.JoinHostPort(server.String(), "9000")
	case H2:
		return "https://" + net.JoinHostPort(server.String(), "8443") + "/"
	}
	return "http://" + net.JoinHostPort(server.String(), "8080") + "/"
}

// enroll gives both pods of p a certificate and a sidecar with mTLS, then
// the capture rules.
func (p *meshPair) enroll(ctx context.Context, self, state, logDir string, c *ca.CA, noL7 bool) error {
	if logDir == "" {
		logDir = state
	}
	mesh := netip.PrefixFrom(p.client.IPv4, 32).String() + "," + netip.PrefixFrom(p.server.IPv4, 32).String()
	rules := redirect.DefaultConfig()
	uid := intercept.ProxyUID
	for _, pod := range []*topology.Pod{p.client, p.server} {
		dir := filepath.Join(state, pod.Name)
		if _, err := c.IssueDir(dir, spiffeid.RequireFromString("spiffe://bench.local/ns/bench/sa/"+pod.Name), nil, 24*time.Hour); err != nil {
			return err
		}
		if err := mtls.ChownDir(dir, int(uid), int(uid)); err != nil {
			return err
		}
		args := []string{self, "proxy", "--cert-dir", dir, "--mesh-cidrs", mesh}
		if noL7 {
			cfgPath := filepath.Join(state, pod.Name+".yaml")
			if err := os.WriteFile(cfgPath, []byte("protocols: {l7: false}\n"), 0o644); err != nil {
				return err
			}
			args = append(args, "--config", cfgPath)
		}
		log, err := os.Create(filepath.Join(logDir, pod.Name+".log"))
		if err != nil {
			return err
		}
		proc, err := pod.Start(args, topology.ProcOptions{UID: &uid, GID: &uid, Output: log})
		log.Close()
		if err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err = sidecar.WaitReady(rctx, pod.Dial, intercept.HealthPort, proc.Done())
		cancel()
		if err != nil {
			b, _ := os.ReadFile(filepath.Join(logDir, pod.Name+".log"))
			return fmt.Errorf("bench: the sidecar in %s is not ready: %w: %s", pod.Name, err, strings.TrimSpace(string(b)))
		}
		if err := redirect.Apply(ctx, rules, redirect.Options{NetnsPath: pod.Path()}); err != nil {
			return err
		}
		p.sidecars = append(p.sidecars, &runningSidecar{pod: pod, proc: proc})
	}
	return nil
}

// sampleRSS reads the sidecars' RSS every 100 ms over the second half of
// a run of length d, when its connections are open, and on stop keeps
// each sidecar's median in its load field if larger than what is there.
func sampleRSS(sidecars []*runningSidecar, d time.Duration) (stop func()) {
	if len(sidecars) == 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	samples := make([][]int64, len(sidecars))
	wg.Go(func() {
		select {
		case <-time.After(d / 2):
		case <-done:
			return
		}
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			for i, s := range sidecars {
				if rss, err := readRSS(s.proc.PID(), "VmRSS"); err == nil {
					samples[i] = append(samples[i], rss)
				}
			}
			select {
			case <-t.C:
			case <-done:
				return
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
		for i, s := range sidecars {
			if len(samples[i]) == 0 {
				continue
			}
			slices.Sort(samples[i])
			s.load = max(s.load, samples[i][len(samples[i])/2])
		}
	}
}

// mergeResults adds up the repetitions of a scenario.
func mergeResults(runs []*Result) *Result {
	m := *runs[0]
	m.Hist = hdrhistogram.Import(runs[0].Hist.Export())
	m.Errors = map[string]int64{}
	for k, v := range runs[0].Errors {
		m.Errors[k] = v
	}
	for _, r := range runs[1:] {
		m.Hist.Merge(r.Hist)
		m.Requests += r.Requests
		m.Elapsed += r.Elapsed
		for k, v := range r.Errors {
			m.Errors[k] += v
		}
	}
	m.Throughput = float64(m.Requests) / m.Elapsed.Seconds()
	m.Latency = summarise(m.Hist)
	return &m
}

// clockTicks is the unit of /proc/PID/stat's CPU times (USER_HZ).
const clockTicks = 100

// readCPU returns the user+system CPU seconds of process pid.
func readCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields count from after it.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("bench: /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("bench: /proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (utime + stime) / clockTicks, nil
}

// readRSS returns a /proc/PID/status memory field (VmRSS, VmHWM) in bytes.
func readRSS(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		fs := strings.Fields(rest)
		if len(fs) == 0 {
			break
		}
		kb, err := strconv.ParseInt(fs[0], 10, 64)
		return kb << 10, err
	}
	return 0, fmt.Errorf("bench: /proc/%d/status: no %s", pid, field)
}
