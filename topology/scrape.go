package topology

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// HTTPClient returns a client whose connections are made from inside the
// pod, without keep-alive, so every request is a new connection that the
// pod's rules see.
func (p *Pod) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Transport: &http.Transport{DialContext: p.Dial, DisableKeepAlives: true},
		Timeout:   timeout,
	}
}

// NameClient returns an HTTP client that behaves as an app in the pod
// calling services by name: it asks dnsServer (host:port) from inside the
// pod, so the pod's DNS capture applies, and connects from inside the pod
// to the first IPv4 address of the answer. keepAlive keeps connections
// open for the next requests; without it every request is a new
// connection.
func (p *Pod) NameClient(dnsServer string, timeout time.Duration, keepAlive bool) *http.Client {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return p.Dial(ctx, network, dnsServer)
	}}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 8,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			ips, err := r.LookupNetIP(ctx, "ip4", host)
			if err != nil {
				return nil, err
			}
			return p.Dial(ctx, network, net.JoinHostPort(ips[0].String(), port))
		},
	}}
}

// Samples are scraped Prometheus samples keyed "name{label=value,...}"
// with labels sorted by name, or just "name" when there are none.
type Samples map[string]float64

// Sum adds up the samples of the metric name whose labels contain every
// one of want (e.g. "result=ok", "direction=inbound").
func (s Samples) Sum(name string, want ...string) float64 {
	var sum float64
next:
	for k, v := range s {
		if !strings.HasPrefix(k, name+"{") {
			continue
		}
		for _, w := range want {
			if !strings.Contains(k, w) {
				continue next
			}
		}
		sum += v
	}
	return sum
}

// Scrape reads the Prometheus text endpoint http://127.0.0.1:port/metrics
// from inside the pod, where a sidecar serves it.
func (p *Pod) Scrape(ctx context.Context, port uint16) (Samples, error) {
	url := "http://" + netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port).String() + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s in %s: %w", url, p.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s in %s: %s", url, p.Name, resp.Status)
	}
	tp := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := tp.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s in %s: %w", url, p.Name, err)
	}
	out := Samples{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Untyped != nil:
				out[key] = m.GetUntyped().GetValue()
			}
		}
	}
	return out, nil
}

// WaitScrape scrapes port inside the pod every 20 ms until until accepts
// the samples, and returns them; when ctx ends first, an error with the
// last scrape's outcome. It is how to wait for a sidecar's counters to
// show that something has happened, rather than sleeping and hoping.
func (p *Pod) WaitScrape(ctx context.Context, port uint16, until func(Samples) bool) (Samples, error) {
	var m Samples
	err := poll(ctx, func() error {
		var err error
		if m, err = p.Scrape(ctx, port); err == nil && !until(m) {
			err = errors.New("the metrics never showed it")
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("wait for the metrics of %s: %w", p.Name, err)
	}
	return m, nil
}
