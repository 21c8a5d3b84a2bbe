package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"meshgate/demoapp"
	"meshgate/enroll"
	"meshgate/intercept"
	"meshgate/mtls"
	"meshgate/mtls/ca"
	"meshgate/proxy"
	"meshgate/redirect"
	"meshgate/topology"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "[--requests N] [--keep]", `
Build a small mesh on this machine and show it working: five pods (network
namespaces joined by a bridge) run ordinary apps that know nothing of the
mesh. meshgate makes a mesh CA, gives four of the pods a SPIFFE identity
and enrolls them while they run; it sends real traffic between them over
IPv4 and IPv6, which the sidecars carry as mutual TLS 1.3, calls web's two
replicas by name (the client's sidecar answers the DNS and balances the
requests), shows that the fifth pod, without a sidecar, is refused, and
prints what flowed through
each sidecar, read from the sidecars' own /metrics. Everything it creates
is removed at the end, also on failure or Ctrl-C. Needs root.`, stderr)
	requests := fs.Int("requests", 40, "HTTP requests to send from client to web (twice as many go by name, to both replicas)")
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
	enrolled []enroll.Enrollment
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
	// The state directory holds the CA and the certificates, which the
	// sidecars (UID 1337) must reach.
	if err := os.Chmod(d.stateDir, 0o755); err != nil {
		return err
	}
	pods := map[string]*topology.Pod{}
	for _, name := range []string{"client", "web", "web2", "echo", "outsider"} {
		p, err := lab.AddPod(name)
		if err != nil {
			return err
		}
		pods[name] = p
	}
	client, web, web2, echoPod, outsider := pods["client"], pods["web"], pods["web2"], pods["echo"], pods["outsider"]
	meshed := []*topology.Pod{client, web, web2, echoPod}
	d.say("meshgate demo: 5 pods, each a network namespace on bridge br0")
	for _, p := range []*topology.Pod{client, web, web2, echoPod, outsider} {
		role := map[string]string{"client": "sends the traffic", "web": "HTTP app on :8080", "web2": "web's second replica",
			"echo": "TCP echo app on :9000", "outsider": "no sidecar: not in the mesh"}[p.Name]
		d.say("  %-8s %-14s %-22s %s", p.Name, p.IPv4, p.IPv6, role)
	}

	// The apps start first, as running containers would, and are never
	// restarted: enrollment happens around them.
	if _, err := web.Start([]string{d.self, "demo-app", "--name", "web", "--http", ":8080"}, topology.ProcOptions{}); err != nil {
		return err
	}
	if _, err := web2.Start([]string{d.self, "demo-app", "--name", "web2", "--http", ":8080"}, topology.ProcOptions{}); err != nil {
		return err
	}
	if _, err := echoPod.Start([]string{d.self, "demo-app", "--name", "echo", "--echo", ":9000"}, topology.ProcOptions{}); err != nil {
		return err
	}
	for _, w := range []struct {
		p    *topology.Pod
		port uint16
	}{{web, 8080}, {web2, 8080}, {echoPod, 9000}} {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := w.p.WaitListening(wctx, netip.AddrPortFrom(w.p.IPv4, w.port))
		cancel()
		if err != nil {
			return fmt.Errorf("app in %s did not start: %w", w.p.Name, err)
		}
	}

	rules := redirect.DefaultConfig()
	uid := intercept.ProxyUID
	if rules.ProxyUID != nil {
		uid = *rules.ProxyUID
	}
	certDirs, err := d.issueCerts(meshed, uid)
	if err != nil {
		return err
	}
	var cidrs []string
	for _, p := range meshed {
		cidrs = append(cidrs, netip.PrefixFrom(p.IPv4, 32).String(), netip.PrefixFrom(p.IPv6, 128).String())
	}
	// The client finds web by name: its sidecar's DNS proxy answers
	// web.demo.mesh from a registry listing both replicas, and balances
	// its connections over them. The client's DNS is captured (sent to
	// the outsider's address, which never sees it).
	registry := filepath.Join(d.stateDir, "registry.yaml")
	reg := fmt.Sprintf("services:\n- name: %s\n  identity: %s\n  meshed: true\n  endpoints: [%s, %s, %q, %q]\n",
		demoService, demoID(web), web.IPv4, web2.IPv4, web.IPv6, web2.IPv6)
	if err := os.WriteFile(registry, []byte(reg), 0o644); err != nil {
		return err
	}

	d.say("\nenrolling the running pods (sidecar started in each namespace, then rules applied):")
	for _, p := range meshed {
		st, err := enroll.OpenState(d.stateDir, p.Path())
		if err != nil {
			return err
		}
		e := enroll.Enrollment{State: st, Netns: p.Path(), Log: d.log, DrainGrace: proxy.DefaultConfig().Timeouts.DrainGrace.D()}
		args := []string{"proxy", "--cert-dir", certDirs[p.Name], "--mesh-cidrs", strings.Join(cidrs, ",")}
		r := rules
		if p == client {
			args = append(args, "--registry", registry)
			r.CaptureDNS, r.DNSServers = true, []netip.Addr{outsider.IPv4}
		}
		pid, err := e.Do(ctx, r, args, intercept.HealthPort, 15*time.Second)
		if err != nil {
			return fmt.Errorf("enroll %s: %w", p.Name, err)
		}
		d.enrolled = append(d.enrolled, e)
		d.say("  %-8s sidecar pid %d, identity %s", p.Name, pid, demoID(p))
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
	sum, n, err := demoapp.HashBody(resp.Body)
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

	served, err := d.byName(client, outsider, requests*2)
	if err != nil {
		return err
	}
	d.say("  client → %s  %d HTTP requests by name, 4 at a time, balanced by client's sidecar: web %d, web2 %d",
		demoService, requests*2, served["web"], served["web2"])

	// A pod without a sidecar speaks plaintext, which strict mTLS refuses.
	ohc := outsider.HTTPClient(5 * time.Second)
	if resp, err := ohc.Get("http://" + net.JoinHostPort(web.IPv4.String(), "8080") + "/"); err == nil {
		resp.Body.Close()
		return fmt.Errorf("outsider reached web in plaintext (%s): strict mTLS should have refused it", resp.Status)
	}
	d.say("  outsider → web plaintext from a pod without a sidecar: refused (mTLS strict)")

	if err := settled(ctx, client, echoPod, web); err != nil {
		return err
	}
	d.say("\nwhat each sidecar saw (its /metrics on :%d):", intercept.MetricsPort)
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "pod\tdirection\tconnections\tHTTP requests\tbytes app→peer\tbytes peer→app\tmTLS full\tresumed\tfailed\tplaintext refused\tpeers verified\t")
	for _, p := range meshed {
		m, err := p.Scrape(ctx, intercept.MetricsPort)
		if err != nil {
			return fmt.Errorf("metrics of %s: %w", p.Name, err)
		}
		for _, dir := range []string{"outbound", "inbound"} {
			get := func(name string) float64 { return m[name+"{direction="+dir+"}"] }
			if get("meshgate_tcp_connections_opened_total") == 0 {
				continue
			}
			hs := handshakeSummary(m, dir)
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t\n", p.Name, dir, get("meshgate_tcp_connections_opened_total"),
				hs.requests, humanBytes(get("meshgate_tcp_sent_bytes_total")), humanBytes(get("meshgate_tcp_received_bytes_total")),
				hs.full, hs.resumed, hs.failed, hs.plaintextRefused, strings.Join(hs.peers, " "))
		}
	}
	tw.Flush()
	d.say("\nEvery connection left client through its sidecar (outbound) and entered web or")
	d.say("echo through theirs (inbound), with the original destination kept; between the")
	d.say("sidecars it was mutual TLS 1.3, each side verifying the other's SPIFFE identity.")
	d.say("The sidecars told HTTP from raw TCP by the first bytes: HTTP went request by")
	d.say("request over one pooled HTTP/2 mTLS connection per destination (web got the")
	d.say("client's verified identity in X-Forwarded-Client-Cert), raw TCP as it was, and")
	d.say("repeated TCP connections resumed their TLS session. Asked by name, the client's")
	d.say("sidecar answered its DNS from its registry and spread its connections over both")
	d.say("replicas of web, each verified to present web's identity.")
	return nil
}

// demoTrustDomain is the trust domain of the demo's mesh CA.
const demoTrustDomain = "demo.local"

// demoService is the name of web's two replicas in the client's registry.
const demoService = "web.demo.mesh"

// demoID is the SPIFFE ID of a demo pod; web2, a replica of web, shares
// web's.
func demoID(p *topology.Pod) string {
	name := p.Name
	if name == "web2" {
		name = "web"
	}
	return "spiffe://" + demoTrustDomain + "/ns/demo/sa/" + name
}

// byName makes n HTTP requests from client to demoService, resolved by
// an ordinary DNS client asking dnsPod's address (captured on the way,
// and answered by client's sidecar), a new connection each, four at a
// time; it counts the answers by the replica that served them.
func (d *demo) byName(client, dnsPod *topology.Pod, n int) (map[string]int, error) {
	hc := client.NameClient(net.JoinHostPort(dnsPod.IPv4.String(), "53"), 20*time.Second, false)
	// Four at a time, as an app under load would: the balancer weighs
	// each replica's requests in flight as well as its latency.
	var (
		mu     sync.Mutex
		served = map[string]int{}
		errs   []error
		wg     sync.WaitGroup
	)
	next := make(chan int)
	for range 4 {
		wg.Go(func() {
			for i := range next {
				name, err := getName(hc, "http://"+demoService+":8080/")
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("request %d to %s: %w", i+1, demoService, err))
				} else {
					served[name]++
				}
				mu.Unlock()
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return served, errors.Join(errs...)
}

// getName GETs url and returns the name of the demo app that answered.
func getName(hc *http.Client, url string) (string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var v struct{ Name string }
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || resp.StatusCode != 200 {
		return "", fmt.Errorf("status %s (%v)", resp.Status, err)
	}
	return v.Name, nil
}

// issueCerts makes the demo's mesh CA and a certificate directory for each
// pod, readable by the sidecars' UID only, as a secret volume would be.
func (d *demo) issueCerts(pods []*topology.Pod, uid uint32) (map[string]string, error) {
	c, err := ca.Init(filepath.Join(d.stateDir, "ca"), spiffeid.RequireTrustDomainFromString(demoTrustDomain))
	if err != nil {
		return nil, err
	}
	dirs := map[string]string{}
	for _, p := range pods {
		dir := filepath.Join(d.stateDir, "certs", p.Name)
		if _, err := c.IssueDir(dir, spiffeid.RequireFromString(demoID(p)), nil, 24*time.Hour); err != nil {
			return nil, err
		}
		if err := mtls.ChownDir(dir, int(uid), int(uid)); err != nil {
			return nil, err
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, err
		}
		dirs[p.Name] = dir
	}
	d.say("\nmesh CA made for trust domain %s; a certificate issued to each pod", demoTrustDomain)
	return dirs, nil
}

// handshakes sums a sidecar's mTLS handshakes in one direction, and the
// plaintext connections it refused.
type handshakes struct {
	full, resumed, failed float64
	plaintextRefused      float64
	requests              float64  // HTTP requests carried as L7
	peers                 []string // the peers' names (the last part of their SPIFFE IDs), sorted
}

func handshakeSummary(m topology.Samples, dir string) handshakes {
	var h handshakes
	for k, v := range m {
		if strings.HasPrefix(k, "meshgate_mtls_plaintext_refused_total{") && strings.Contains(k, "direction="+dir) {
			h.plaintextRefused += v
		}
		if strings.HasPrefix(k, "meshgate_http_requests_total{") && strings.Contains(k, "direction="+dir) {
			h.requests += v
		}
		if !strings.HasPrefix(k, "meshgate_tls_handshakes_total{") || !strings.Contains(k, "direction="+dir) {
			continue
		}
		switch {
		case strings.Contains(k, "result=failed"):
			h.failed += v
		case strings.Contains(k, "resumed=true"):
			h.resumed += v
		default:
			h.full += v
		}
		if _, rest, ok := strings.Cut(k, "peer_identity="); ok && strings.Contains(k, "result=ok") {
			id, _, _ := strings.Cut(rest, ",")
			id = strings.TrimSuffix(id, "}")
			name := id[strings.LastIndex(id, "/")+1:]
			if !slices.Contains(h.peers, name) {
				h.peers = append(h.peers, name)
			}
		}
	}
	slices.Sort(h.peers)
	return h
}

// close undoes every enrollment and deletes the lab, whatever happened.
func (d *demo) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var errs []error
	for _, e := range d.enrolled {
		if err := e.Undo(ctx); err != nil {
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

func echoSession(ctx context.Context, p *topology.Pod, addr string, msg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.Echo(ctx, addr, msg)
}

// settled waits until the sidecars' counters hold all the traffic above:
// every connection client's app made has closed in its sidecar, so have
// the echo sessions in echo's, and web's has counted the outsider's
// plaintext refused. (web's inbound connections from client's sidecar stay
// open in its pool, so they are not waited for.)
func settled(ctx context.Context, client, echoPod, web *topology.Pod) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, w := range []struct {
		pod   *topology.Pod
		until func(topology.Samples) bool
	}{
		{client, func(m topology.Samples) bool { return m["meshgate_tcp_connections_active{direction=outbound}"] == 0 }},
		{echoPod, func(m topology.Samples) bool { return m["meshgate_tcp_connections_active{direction=inbound}"] == 0 }},
		{web, func(m topology.Samples) bool { return handshakeSummary(m, "inbound").plaintextRefused > 0 }},
	} {
		if _, err := w.pod.WaitScrape(ctx, intercept.MetricsPort, w.until); err != nil {
			return err
		}
	}
	return nil
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
