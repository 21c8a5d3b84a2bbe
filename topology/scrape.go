package topology

import (
	"context"
	"fmt"
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

// Samples are scraped Prometheus samples keyed "name{label=value,...}"
// with labels sorted by name, or just "name" when there are none.
type Samples map[string]float64

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
