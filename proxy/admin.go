package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"sigs.k8s.io/yaml"

	"meshgate/proxy/appprobe"
)

// adminEndpoints are listed by the admin index, in order.
var adminEndpoints = []struct{ path, what string }{
	{"/config", "the effective configuration, as YAML (?format=json for JSON)"},
	{"/resilience", "circuit breakers, bulkheads and stale caches per destination, as JSON"},
	{"/explain", "how policy decides a call: ?from=SPIFFE_ID&port=N&method=GET&path=/x&header=k:v, the flags of meshgate policy explain"},
	{"/quitquitquit", "POST: drain and exit"},
	{"/debug/pprof/", "Go profiles"},
}

// adminHandler serves the admin port (loopback by default: it can stop
// the proxy).
func (p *Proxy) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "meshgate proxy admin")
		for _, e := range adminEndpoints {
			fmt.Fprintf(w, "  %-15s %s\n", e.path, e.what)
		}
	})
	mux.HandleFunc("GET /config", p.serveConfig)
	mux.HandleFunc("GET /explain", p.serveExplain)
	mux.HandleFunc("GET /resilience", p.serveResilience)
	mux.HandleFunc("/quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "use POST", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "draining")
		p.quitOnce.Do(func() { close(p.quit) })
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// serveConfig writes the effective config: YAML, or JSON when asked with
// ?format=json or Accept: application/json.
func (p *Proxy) serveConfig(w http.ResponseWriter, r *http.Request) {
	asJSON := r.URL.Query().Get("format") == "json" ||
		strings.Contains(r.Header.Get("Accept"), "application/json")
	var (
		body []byte
		err  error
	)
	p.cfgMu.Lock()
	cfg := p.cfg
	p.cfgMu.Unlock()
	if asJSON {
		body, err = json.MarshalIndent(cfg, "", "  ")
		body = append(body, '\n')
		w.Header().Set("Content-Type", "application/json")
	} else {
		body, err = yaml.Marshal(cfg)
		w.Header().Set("Content-Type", "application/yaml")
	}
	if err != nil {
		// Config is plain data; this would be a bug in its marshalers.
		p.log.Error("admin /config: marshal", zap.Error(err))
		http.Error(w, "cannot marshal config", http.StatusInternalServerError)
		return
	}
	w.Write(body)
}

// metricsHandler serves /metrics from the proxy's registry.
func (p *Proxy) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{
		ErrorLog: zap.NewStdLog(p.log.Named("metrics")),
	}))
	return mux
}

// healthHandler serves the probes. /healthz/ready is 200 once every
// listener is up and 503 before that and once draining, so load balancers
// and kubelet stop sending work; /healthz/live is 200 while the process
// serves at all. The app's own probes (WithAppProbes) are served beside
// them, each running the app's original probe, through marked sockets.
func (p *Proxy) healthHandler() http.Handler {
	mux := http.NewServeMux()
	if len(p.appProbes) > 0 {
		h := appprobe.Handler(p.appProbes, appprobe.NewRunner(p.markCtl), p.log.Named("appprobe"))
		for path := range p.appProbes {
			mux.Handle("GET "+path, h)
		}
	}
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		switch {
		case p.draining.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "draining")
		case !p.listening.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "starting")
		default:
			fmt.Fprintln(w, "ready")
		}
	})
	mux.HandleFunc("GET /healthz/live", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "live")
	})
	return mux
}
