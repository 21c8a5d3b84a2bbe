package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"meshgate/redirect"
	"meshgate/topology"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "[--requests N] [--keep]", `
Build a small mesh on this machine and show it working: three pods (network
namespaces joined by a bridge) run ordinary apps that know nothing of the
mesh; meshgate enrolls them while they run, sends real traffic between
them over IPv4 and IPv6, and prints what flowed through each sidecar, read
from the sidecars' own /metrics. Everything it creates is removed at the
end, also on failure or Ctrl-C. Needs root.`, stderr)
	requests := fs.Int("requests", 40, "HTTP requests to send from client to web")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if *requests < 1 {
		return fmt.Errorf("--requests %d: want at least 1", *requests)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (it creates network namespaces and iptables rules): run 'sudo meshgate demo' or 'make demo'")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	d := &demo{out: stdout, self: self, log: zap.NewNop()}
	defer d.close()
	return d.run(ctx, *requests)
}

type demo struct {
	out      io.Writer
	self     string
	log      *zap.Logger
	lab      *topology.Lab
	enrolled []enrollment
	stateDir string
}

func (d *demo) say(format string, a ...any) { fmt.Fprintf(d.out, format+"\n", a...) }

func (d *demo) run(ctx context.Context, requests int) error {
	lab, err := topology.New(topology.Options{})
	if err != nil {
		return err
	}
	d.lab = lab
	if d.stateDir, err = os.MkdirTemp("", "meshgate-demo-"); err != nil {
		return err
	}
	pods := map[string]*topology.Pod{}
	for _, name := range []string{"client", "web", "echo"} {
		p, err := lab.AddPod(name)
		if err != nil {
			return err
		}
		pods[name] = p
	}
	client, web, echoPod := pods["client"], pods["web"], pods["echo"]
	d.say("meshgate demo: 3 pods, each a network namespace on bridge br0")
	for _, p := range []*topology.Pod{client, web, echoPod} {
		role := map[string]string{"client": "sends the traffic", "web": "HTTP app on :8080", "echo": "TCP echo app on :9000"}[p.Name]
		d.say("  %-7s %-14s %-22s %s", p.Name, p.IPv4, p.IPv6, role)
	}

	// The apps start first, as running containers would, and are never
	// restarted: enrollment happens around them.
	if _, err := web.Start([]string{d.self, "demo-app", "--name", "web", "--http", ":8080"}, topology.ProcOptions{}); err != nil {
		return err
	}
	if _, err := echoPod.Start([]string{d.self, "demo-app", "--name", "echo", "--echo", ":9000"}, topology.ProcOptions{}); err != nil {
		return err
	}
	for _, w := range []struct {
		p    *topology.Pod
		port uint16
	}{{web, 8080}, {echoPod, 9000}} {
		if err := waitDial(ctx, w.p, netip.AddrPortFrom(w.p.IPv4, w.port)); err != nil {
			return fmt.Errorf("app in %s did not start: %w", w.p.Name, err)
		}
	}

	d.say("\nenrolling the running pods (sidecar started in each namespace, then rules applied):")
	for _, p := range []*topology.Pod{client, web, echoPod} {
		st, err := openEnrollState(d.stateDir, p.Path())
		if err != nil {
			return err
		}
		e := enrollment{state: st, netns: p.Path(), log: d.log}
		rules := redirect.DefaultConfig()
		pid, err := e.do(ctx, rules, []string{"proxy"}, 15021, 15*time.Second)
		if err != nil {
			return fmt.Errorf("enroll %s: %w", p.Name, err)
		}
		d.enrolled = append(d.enrolled, e)
		d.say("  %-7s sidecar pid %d", p.Name, pid)
	}

	d.say("\ntraffic from client (an ordinary client: it does not know about the mesh):")
	hc := client.HTTPClient(20 * time.Second)
	var lat []time.Duration
	for i := 0; i < requests; i++ {
		addr := web.IPv4
		if i%2 == 1 {
			addr = web.IPv6
		}
		start := time.Now()
		resp, err := hc.Get("http://" + net.JoinHostPort(addr.String(), "8080") + "/")
		if err != nil {
			return fmt.Errorf("request %d to web: %w", i+1, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("request %d to web: status %s", i+1, resp.Status)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	d.say("  client → web   %d HTTP requests, half IPv4 half IPv6, a new connection each: all 200, median %.2f ms",
		requests, float64(lat[len(lat)/2].Microseconds())/1000)

	const size = 16 << 20
	start := time.Now()
	resp, err := hc.Get("http://" + net.JoinHostPort(web.IPv4.String(), "8080") + "/bytes?n=" + strconv.Itoa(size))
	if err != nil {
		return fmt.Errorf("download from web: %w", err)
	}
	sum, n, err := hashBody(resp.Body)
	resp.Body.Close()
	if err != nil || n != size || sum != resp.Header.Get("X-Content-Sha256") {
		return fmt.Errorf("download from web: %d bytes, sha256 %s, want %d bytes, %s (%v)", n, sum, size, resp.Header.Get("X-Content-Sha256"), err)
	}
	d.say("  client → web   16 MiB download, SHA-256 verified, %.0f MB/s", float64(size)/1e6/time.Since(start).Seconds())

	msg := make([]byte, 64<<10)
	rand.Read(msg)
	for i := 0; i < 10; i++ {
		if err := echoSession(ctx, client, net.JoinHostPort(echoPod.IPv4.String(), "9000"), msg); err != nil {
			return fmt.Errorf("echo session %d: %w", i+1, err)
		}
	}
	d.say("  client → echo  10 raw TCP sessions of 64 KiB, client half-closes then reads the echo: all intact")

	time.Sleep(100 * time.Millisecond) // let the last close lines and counters land
	d.say("\nwhat each sidecar saw (its /metrics on :15020):")
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "pod\tdirection\tconnections\tbytes app→peer\tbytes peer→app\tactive\t")
	for _, p := range []*topology.Pod{client, web, echoPod} {
		m, err := p.Scrape(ctx, 15020)
		if err != nil {
			return fmt.Errorf("metrics of %s: %w", p.Name, err)
		}
		for _, dir := range []string{"outbound", "inbound"} {
			get := func(name string) float64 { return m[name+"{direction="+dir+"}"] }
			if get("meshgate_tcp_connections_opened_total") == 0 {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%s\t%s\t%.0f\t\n", p.Name, dir, get("meshgate_tcp_connections_opened_total"),
				humanBytes(get("meshgate_tcp_sent_bytes_total")), humanBytes(get("meshgate_tcp_received_bytes_total")),
				get("meshgate_tcp_connections_active"))
		}
	}
	tw.Flush()
	d.say("\nEvery connection left client through its sidecar (outbound) and entered web or")
	d.say("echo through theirs (inbound), with the original destination kept. mTLS between")
	d.say("the sidecars, L7 and DNS discovery arrive in later releases.")
	return nil
}

// close undoes every enrollment and deletes the lab, whatever happened.
func (d *demo) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var errs []error
	for _, e := range d.enrolled {
		if err := e.undo(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if d.lab != nil {
		if err := d.lab.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if d.stateDir != "" {
		os.RemoveAll(d.stateDir)
	}
	if len(errs) > 0 {
		d.say("cleanup problems: %v", errors.Join(errs...))
		return
	}
	if d.lab != nil {
		d.say("\ncleaned up: rules removed, sidecars drained and stopped, namespaces deleted.")
	}
}

func waitDial(ctx context.Context, p *topology.Pod, addr netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		c, err := p.Dial(ctx, "tcp", addr.String())
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func echoSession(ctx context.Context, p *topology.Pod, addr string, msg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.Echo(ctx, addr, msg)
}

func humanBytes(v float64) string {
	switch {
	case v >= 1<<20:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case v >= 1<<10:
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	}
	return fmt.Sprintf("%.0f B", v)
}
