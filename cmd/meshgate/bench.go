package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"meshgate/bench"
)

const benchDescription = `
Drive load against URL (http1, h2c) or ADDR (grpc, tcp) and report
throughput and latency percentiles from HDR histograms.

With --rate the load is open loop at a fixed rate: request k is due at
start + k/rate and its latency counts from then, so a stall shows in every
request it delayed (no coordinated omission). Without it, each connection
sends its next request once the last is answered, as fast as it goes.

  meshgate bench --rate 1000 --connections 16 --body 1024 http://10.0.0.2:8080/
  meshgate bench --protocol tcp --body 1024 10.0.0.2:9000

Subcommands:
  meshgate bench serve   the backend: HTTP/1.1 + h2c, gRPC, TCP echo
  meshgate bench mesh    build a lab of network namespaces and measure the
                         same load without and with meshgate sidecars`

// benchFlags are the load flags shared by bench and bench mesh.
type benchFlags struct {
	cfg                   bench.Config
	protocol              string
	jsonPath, plotPath    string
	repetitions           int
	quiet                 bool
	connections, bodySize int
}

func (b *benchFlags) add(fs *flag.FlagSet, mesh bool) {
	fs.Float64Var(&b.cfg.Rate, "rate", 0, "requests per `N` per second, all connections together (fixed rate, open loop); 0: as fast as possible")
	fs.IntVar(&b.connections, "connections", 16, "`N` connections, each with one request in flight")
	if mesh {
		fs.DurationVar(&b.cfg.Duration, "duration", 10*time.Second, "how long to measure each scenario, split over the repetitions")
		fs.DurationVar(&b.cfg.Warmup, "warmup", 500*time.Millisecond, "load before each run, not counted")
	} else {
		fs.DurationVar(&b.cfg.Duration, "duration", 10*time.Second, "how long to measure")
		fs.DurationVar(&b.cfg.Warmup, "warmup", time.Second, "load before measuring, not counted")
	}
	fs.StringVar(&b.protocol, "protocol", "http1", "`P`: http1, h2c, h2 (TLS), grpc or tcp")
	fs.BoolVar(&b.cfg.Insecure, "insecure", false, "do not verify an https:// target's certificate (bench serve's is self-signed)")
	fs.IntVar(&b.bodySize, "body", 1024, "request body of `N` bytes, echoed back")
	fs.BoolVar(&b.cfg.NewConnection, "new-connection", false, "a new connection for every request")
	fs.DurationVar(&b.cfg.Timeout, "timeout", 10*time.Second, "a request's time limit")
	fs.StringVar(&b.jsonPath, "json", "", "write the report as JSON to `FILE`")
	fs.StringVar(&b.plotPath, "plot", "", "draw latency by percentile to `FILE` (.svg or .png)")
	fs.BoolVar(&b.quiet, "quiet", false, "no progress bar")
	if mesh {
		fs.IntVar(&b.repetitions, "repetitions", 3, "run each scenario `N` times, interleaved")
	}
}

func (b *benchFlags) config() bench.Config {
	c := b.cfg
	c.Protocol = bench.Protocol(b.protocol)
	c.Connections = b.connections
	c.BodySize = b.bodySize
	return c
}

// write prints the table and writes the JSON and the plot when asked.
func (b *benchFlags) write(r *bench.Report, stdout io.Writer) error {
	if err := r.WriteTable(stdout); err != nil {
		return err
	}
	var errs []error
	if b.jsonPath != "" {
		if err := r.WriteJSON(b.jsonPath); err != nil {
			errs = append(errs, fmt.Errorf("--json %s: %w", b.jsonPath, err))
		} else {
			fmt.Fprintf(stdout, "JSON: %s\n", b.jsonPath)
		}
	}
	if b.plotPath != "" {
		if err := r.WritePlot(b.plotPath); err != nil {
			errs = append(errs, fmt.Errorf("--plot %s: %w", b.plotPath, err))
		} else {
			fmt.Fprintf(stdout, "plot: %s\n", b.plotPath)
		}
	}
	return errors.Join(errs...)
}

// checkPlot refuses a --plot of an unknown format before any load runs.
func (b *benchFlags) checkPlot() error {
	if b.plotPath == "" {
		return nil
	}
	if err := bench.PlotFormat(b.plotPath); err != nil {
		return fmt.Errorf("--plot %s: %w", b.plotPath, err)
	}
	return nil
}

// progressBar draws a one-line bar on stderr when it is a terminal, and
// nothing otherwise (logs, CI).
func progressBar(stderr io.Writer, quiet bool) func(label string, done float64, requests int64) {
	f, ok := stderr.(*os.File)
	if quiet || !ok {
		return nil
	}
	if st, err := f.Stat(); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return func(label string, done float64, requests int64) {
		const width = 30
		n := int(done * width)
		fmt.Fprintf(f, "\r%-16s [%s%s] %3.0f%% %d requests ", label, strings.Repeat("#", n), strings.Repeat(".", width-n), done*100, requests)
		if done >= 1 {
			fmt.Fprint(f, "\r\033[K")
		}
	}
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "serve":
			return runBenchServe(ctx, args[1:], stdout, stderr)
		case "mesh":
			return runBenchMesh(ctx, args[1:], stdout, stderr)
		}
	}
	fs := newFlagSet("bench", "[flags] URL|ADDR | serve [flags] | mesh [flags]", benchDescription, stderr)
	var b benchFlags
	b.add(fs, false)
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "meshgate bench: give one target: a URL (http1, h2c) or host:port (grpc, tcp); see --help")
		return errUsage
	}
	cfg := b.config()
	cfg.Target = fs.Arg(0)
	if err := errors.Join(cfg.Validate(), b.checkPlot()); err != nil {
		return err
	}
	bar := progressBar(stderr, b.quiet)
	var progress bench.Progress
	if bar != nil {
		progress = func(done float64, n int64) { bar(cfg.Target, done, n) }
	}
	res, err := bench.Run(ctx, cfg, progress)
	if err != nil {
		return err
	}
	r := &bench.Report{Target: cfg.Target, Protocol: cfg.Protocol, Rate: cfg.Rate, Connections: cfg.Connections,
		Duration: cfg.Duration.String(), BodySize: cfg.BodySize, Scenarios: []*bench.Scenario{{Name: cfg.Target, Result: res}}}
	return b.write(r, stdout)
}

func runBenchServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench serve", "[--http ADDR] [--tls ADDR] [--grpc ADDR] [--tcp ADDR] [--response-size N]", `
The backend of meshgate bench: HTTP/1.1 and h2c on --http (POST echoes the
body; GET answers ?size=N bytes, --response-size by default), the same
over TLS on --tls (HTTP/1.1 and h2 by ALPN, a self-signed certificate made
at start: clients use --insecure), gRPC on --grpc (the raw-bytes echo
method meshgate bench --protocol grpc calls), and a TCP echo on --tcp. It
runs until SIGTERM or Ctrl-C.`, stderr)
	httpAddr := fs.String("http", ":8080", "serve HTTP/1.1 and h2c on `ADDR` (empty: not)")
	tlsAddr := fs.String("tls", ":8443", "serve HTTP/1.1 and h2 over TLS on `ADDR` (empty: not)")
	grpcAddr := fs.String("grpc", ":8081", "serve gRPC on `ADDR` (empty: not)")
	tcpAddr := fs.String("tcp", ":9000", "serve the TCP echo on `ADDR` (empty: not)")
	size := fs.Int("response-size", 1024, "bytes a GET answers without ?size")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if *size < 0 {
		return fmt.Errorf("--response-size %d: want 0 or more bytes", *size)
	}
	return bench.Serve(ctx, bench.ServeOptions{HTTP: *httpAddr, TLS: *tlsAddr, GRPC: *grpcAddr, TCP: *tcpAddr, ResponseSize: *size,
		Ready: func(h, s, g, t net.Addr) {
			for _, a := range []struct {
				name string
				addr net.Addr
			}{{"HTTP/1.1 + h2c", h}, {"HTTP/1.1 + h2 over TLS", s}, {"gRPC", g}, {"TCP echo", t}} {
				if a.addr != nil {
					fmt.Fprintf(stdout, "bench serve: %s on %s\n", a.name, a.addr)
				}
			}
		}})
}

func runBenchMesh(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench mesh", "[flags]", `
Measure what the mesh costs, on this machine, in one run: build a lab of
network namespaces, each scenario a client pod and a server pod running
'meshgate bench serve' — "direct" without sidecars, "mesh" with a pair of
meshgate sidecars and mTLS (for HTTP and gRPC "mesh L7", the default, and
"mesh L4" with L7 off) — and run
the same load through each, repetitions interleaved. The report gives
latency percentiles, the latency added over direct, and for each sidecar
its CPU (seconds per 10k requests, vCPU per 1000 rps) and memory (RSS idle,
under load with the connections open, and peak; and under load less idle
per connection). Needs root; everything it creates is removed at the end.

  meshgate bench mesh --rate 1000 --connections 16 --body 1024 --duration 10s --json r.json --plot r.svg`, stderr)
	var b benchFlags
	b.add(fs, true)
	logDir := fs.String("logs", "", "write each sidecar's log to `DIR`/POD.log (default: removed with the lab)")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := b.checkPlot(); err != nil {
		return err
	}
	if *logDir != "" {
		if err := os.MkdirAll(*logDir, 0o755); err != nil {
			return fmt.Errorf("--logs %s: %v", *logDir, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bar := progressBar(stderr, b.quiet)
	o := bench.MeshOptions{Load: b.config(), Repetitions: b.repetitions, Self: self, LogDir: *logDir}
	if bar != nil {
		o.Progress = func(name string, rep int, done float64, n int64) { bar(fmt.Sprintf("%s #%d", name, rep), done, n) }
	}
	r, err := bench.Mesh(ctx, o)
	if err != nil {
		return err
	}
	return b.write(r, stdout)
}
