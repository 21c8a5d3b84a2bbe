package demo

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

// Options configures a Run.
type Options struct {
	// Requests is how many HTTP requests client sends web by address;
	// twice as many go by name. At least 1.
	Requests int
	// Self is the meshgate binary: the pods run it as their apps
	// ("meshgate demo-app") and as their sidecars ("meshgate proxy").
	Self string
	// Log receives the enrollments' logs; nil discards them.
	Log *zap.Logger
	// Progress, if set, is told each step as it is done, with the report
	// so far (Run's own, to read during the call only).
	Progress func(Step, *Report)
}

// TrustDomain is the trust domain of the demo's mesh CA.
const TrustDomain = "demo.local"

// Service is the name of web's two replicas in client's registry.
const Service = "web.demo.mesh"

// The sizes of the traffic sent.
const (
	downloadBytes = 16 << 20
	echoSessions  = 10
	echoBytes     = 64 << 10
)

// Run builds the demo's lab, enrolls its pods, sends the traffic, reads
// the sidecars' metrics and removes everything it made, in that order. It
// needs root. The Report holds as much as was done, also with an error.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Requests < 1 {
		return nil, fmt.Errorf("demo: Options.Requests %d: want at least 1", o.Requests)
	}
	if o.Self == "" {
		return nil, errors.New("demo: Options.Self is empty: want the meshgate binary")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	d := &run{o: o, r: &Report{}}
	err := d.run(ctx)
	d.close(ctx)
	if err != nil {
		return d.r, fmt.Errorf("demo: %w", err)
	}
	return d.r, nil
}

// run is one Run: what it made, to be removed by close.
type run struct {
	o        Options
	r        *Report
	lab      *topology.Lab
	enrolled []enroll.Enrollment
	stateDir string
}

func (d *run) step(s Step) {
	if d.o.Progress != nil {
		d.o.Progress(s, d.r)
	}
}

// roles are the demo's pods and what each does, in the order they are
// made; all but the outsider are meshed.
var roles = []struct{ name, role string }{
	{"client", "sends the traffic"},
	{"web", "HTTP app on :8080"},
	{"web2", "web's second replica"},
	{"echo", "TCP echo app on :9000"},
	{"outsider", "no sidecar: not in the mesh"},
}

func (d *run) run(ctx context.Context) error {
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
	for _, x := range roles {
		p, err := lab.AddPod(x.name)
		if err != nil {
			return err
		}
		pods[x.name] = p
		d.r.Pods = append(d.r.Pods, Pod{Name: p.Name, IPv4: p.IPv4, IPv6: p.IPv6, Role: x.role, Meshed: x.name != "outsider"})
	}
	client, web, web2, echoPod, outsider := pods["client"], pods["web"], pods["web2"], pods["echo"], pods["outsider"]
	meshed := []*topology.Pod{client, web, web2, echoPod}
	d.step(PodsMade)

	// The apps start first, as running containers would, and are never
	// restarted: enrollment happens around them.
	if _, err := web.Start([]string{d.o.Self, "demo-app", "--name", "web", "--http", ":8080"}, topology.ProcOptions{}); err != nil {
		return err
	}
	if _, err := web2.Start([]string{d.o.Self, "demo-app", "--name", "web2", "--http", ":8080"}, topology.ProcOptions{}); err != nil {
		return err
	}
	if _, err := echoPod.Start([]string{d.o.Self, "demo-app", "--name", "echo", "--echo", ":9000"}, topology.ProcOptions{}); err != nil {
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
	certDirs, err := d.issueCerts(meshed, *rules.ProxyUID)
	if err != nil {
		return err
	}
	d.step(CertsIssued)
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
		Service, podID(web), web.IPv4, web2.IPv4, web.IPv6, web2.IPv6)
	if err := os.WriteFile(registry, []byte(reg), 0o644); err != nil {
		return err
	}

	// web's sidecar decides who may call it, and what (README, Policy).
	webConfig := filepath.Join(d.stateDir, "web-proxy.yaml")
	d.r.Policy = fmt.Sprintf(WebPolicy, podID(client))
	if err := os.WriteFile(webConfig, []byte(d.r.Policy), 0o644); err != nil {
		return err
	}

	d.step(Enrolling)
	for _, p := range meshed {
		st, err := enroll.OpenState(d.stateDir, p.Path())
		if err != nil {
			return err
		}
		e := enroll.Enrollment{State: st, Netns: p.Path(), Log: d.o.Log, DrainGrace: proxy.DefaultConfig().Timeouts.DrainGrace.D()}
		args := []string{"proxy", "--cert-dir", certDirs[p.Name], "--mesh-cidrs", strings.Join(cidrs, ",")}
		if p == web || p == web2 {
			args = append(args, "--config", webConfig)
		}
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
		d.r.Sidecars = append(d.r.Sidecars, Sidecar{Pod: p.Name, PID: pid, ID: podID(p)})
		d.step(Enrolled)
	}

	d.step(TrafficStarts)
	if err := d.sendByAddress(client, web); err != nil {
		return err
	}
	d.step(SentByAddress)
	if err := d.download(client, web); err != nil {
		return err
	}
	d.step(Downloaded)
	msg := make([]byte, echoBytes)
	rand.Read(msg)
	for i := range echoSessions {
		if err := echoSession(ctx, client, net.JoinHostPort(echoPod.IPv4.String(), "9000"), msg); err != nil {
			return fmt.Errorf("echo session %d: %w", i+1, err)
		}
	}
	d.r.EchoSessions, d.r.EchoBytes = echoSessions, echoBytes
	d.step(Echoed)
	// Requests web's policy does not allow, answered by web's sidecar,
	// which tells the client why (revealReason); they never reach web.
	// They go by address before any by name: once the client's sidecar
	// has answered web.demo.mesh, connections to web's address are
	// balanced over both replicas.
	for _, r := range []struct{ method, path string }{{http.MethodDelete, "/"}, {http.MethodGet, "/admin/users"}} {
		req, _ := http.NewRequestWithContext(ctx, r.method, "http://"+net.JoinHostPort(web.IPv4.String(), "8080")+r.path, nil)
		resp, err := client.HTTPClient(10 * time.Second).Do(req)
		if err != nil {
			return fmt.Errorf("%s %s to web: %w", r.method, r.path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			return fmt.Errorf("%s %s to web: status %s, want 403 from web's policy", r.method, r.path, resp.Status)
		}
		d.r.Denied = append(d.r.Denied, Denial{Request: r.method + " " + r.path, Status: resp.StatusCode, Reason: resp.Header.Get("X-Meshgate-Error")})
	}
	d.step(PolicyDenied)

	served, err := byName(client, outsider, 2*d.o.Requests)
	if err != nil {
		return err
	}
	d.r.Service, d.r.ByName, d.r.Served = Service, 2*d.o.Requests, served
	d.step(SentByName)

	// A pod without a sidecar speaks plaintext, which strict mTLS refuses.
	ohc := outsider.HTTPClient(5 * time.Second)
	if resp, err := ohc.Get("http://" + net.JoinHostPort(web.IPv4.String(), "8080") + "/"); err == nil {
		resp.Body.Close()
		return fmt.Errorf("outsider reached web in plaintext (%s): strict mTLS should have refused it", resp.Status)
	}
	d.step(OutsiderRefused)

	if err := settled(ctx, client, echoPod, web); err != nil {
		return err
	}
	for _, p := range meshed {
		m, err := p.Scrape(ctx, intercept.MetricsPort)
		if err != nil {
			return fmt.Errorf("metrics of %s: %w", p.Name, err)
		}
		for _, dir := range []string{"outbound", "inbound"} {
			if s := readStats(m, dir); s.Connections > 0 {
				s.Pod = p.Name
				d.r.Stats = append(d.r.Stats, s)
			}
		}
	}
	d.step(Measured)
	return nil
}

// WebPolicy is the policy of web's sidecars (a format taking the
// client's SPIFFE ID): the client may GET and HEAD, nothing under
// /admin/.
const WebPolicy = `policy:
  revealReason: true
  rules:
  - name: client-reads
    action: allow
    ports: [8080]
    from: {identities: ["%s"]}
    http: {methods: [GET, HEAD]}
  - name: no-admin
    action: deny
    http: {paths: ["/admin/*"]}
`

// podID is the SPIFFE ID of a demo pod; web2, a replica of web, shares
// web's.
func podID(p *topology.Pod) spiffeid.ID {
	name := p.Name
	if name == "web2" {
		name = "web"
	}
	return spiffeid.RequireFromString("spiffe://" + TrustDomain + "/ns/demo/sa/" + name)
}

// issueCerts makes the demo's mesh CA and a certificate directory for each
// pod, readable by the sidecars' UID only, as a secret volume would be.
func (d *run) issueCerts(pods []*topology.Pod, uid uint32) (map[string]string, error) {
	td := spiffeid.RequireTrustDomainFromString(TrustDomain)
	c, err := ca.Init(filepath.Join(d.stateDir, "ca"), td)
	if err != nil {
		return nil, err
	}
	dirs := map[string]string{}
	for _, p := range pods {
		dir := filepath.Join(d.stateDir, "certs", p.Name)
		if _, err := c.IssueDir(dir, podID(p), nil, 24*time.Hour); err != nil {
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
	d.r.TrustDomain = td
	return dirs, nil
}

// sendByAddress makes Options.Requests HTTP requests from client to web,
// by address, alternating IPv4 and IPv6, a new connection each.
func (d *run) sendByAddress(client, web *topology.Pod) error {
	hc := client.HTTPClient(20 * time.Second)
	var lat []time.Duration
	for i := 0; i < d.o.Requests; i++ {
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
	d.r.Requests, d.r.Median = d.o.Requests, lat[len(lat)/2]
	return nil
}

// download fetches downloadBytes from web and checks their SHA-256.
func (d *run) download(client, web *topology.Pod) error {
	hc := client.HTTPClient(20 * time.Second)
	start := time.Now()
	resp, err := hc.Get("http://" + net.JoinHostPort(web.IPv4.String(), "8080") + "/bytes?n=" + strconv.Itoa(downloadBytes))
	if err != nil {
		return fmt.Errorf("download from web: %w", err)
	}
	sum, n, err := demoapp.HashBody(resp.Body)
	resp.Body.Close()
	if err != nil || n != downloadBytes || sum != resp.Header.Get("X-Content-Sha256") {
		return fmt.Errorf("download from web: %d bytes, sha256 %s, want %d bytes, %s (%v)", n, sum, downloadBytes, resp.Header.Get("X-Content-Sha256"), err)
	}
	d.r.DownloadBytes, d.r.DownloadTime = downloadBytes, time.Since(start)
	return nil
}

func echoSession(ctx context.Context, p *topology.Pod, addr string, msg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.Echo(ctx, addr, msg)
}

// byName makes n HTTP requests from client to Service, resolved by an
// ordinary DNS client asking dnsPod's address (captured on the way, and
// answered by client's sidecar), a new connection each, four at a time;
// it counts the answers by the replica that served them.
func byName(client, dnsPod *topology.Pod, n int) (map[string]int, error) {
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
				name, err := getName(hc, "http://"+Service+":8080/")
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("request %d to %s: %w", i+1, Service, err))
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

// close undoes every enrollment and deletes the lab and the state
// directory, whatever happened, even if ctx is done.
func (d *run) close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
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
	d.r.CleanupErr = errors.Join(errs...)
	if d.lab != nil {
		d.step(CleanedUp)
	}
}
