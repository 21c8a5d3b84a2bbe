package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"meshgate/discovery"
	"meshgate/mtls"
	"meshgate/proxy"
	"meshgate/proxy/appprobe"
	"meshgate/sockmark"
)

// Options is a sidecar: the proxy's configuration and what surrounds it.
// Field comments name the flag of "meshgate proxy" that sets the field.
type Options struct {
	// Config is the proxy's configuration, validated (--config and the
	// flags that override it).
	Config proxy.Config
	// ConfigFile is the file Config was read from, watched: its policy
	// section is reloaded when it changes (proxy.WatchConfig). "": none.
	// --config.
	ConfigFile string
	// Log receives the sidecar's logs; nil logs nothing.
	Log *zap.Logger
	// Certs says where the mesh certificate comes from; the zero Certs is
	// none.
	Certs Certs
	// DNSListen are the addresses (host:port) of the DNS proxy, UDP and
	// TCP; an IPv6 one is skipped where the namespace has no IPv6. Empty:
	// no DNS proxy. --dns-listen.
	DNSListen []string
	// ResolvConf is the file whose resolvers answer the names outside the
	// mesh. --resolv-conf.
	ResolvConf string
	// ResolvConfRequired makes a missing ResolvConf an error (it was
	// given explicitly); otherwise the DNS proxy answers mesh names only.
	ResolvConfRequired bool
	// Registry holds the mesh names the DNS proxy answers, watched for
	// changes; nil: none. --registry.
	Registry *Registry
	// GC tunes the garbage collector (unless GOGC or GOMEMLIMIT is set).
	GC GC
	// AppProbes are the app's original probes, served on the health port
	// (package appprobe); nil: none. --app-probes, MESHGATE_APP_PROBES.
	AppProbes appprobe.Set
	// ExitWithApp shuts the sidecar down, as on SIGTERM, once every
	// process of the app has exited: for the classic sidecar of a Job,
	// whose pod shares one PID namespace (appwatch.go). --exit-with-app,
	// MESHGATE_EXIT_WITH_APP.
	ExitWithApp bool
	// procRoot is where ExitWithApp reads the processes; "": /proc.
	procRoot string
}

// Certs is where the sidecar's certificate comes from: at most one of Dir,
// WorkloadAPI and CA.Server is set.
type Certs struct {
	// Dir holds cert.pem, key.pem and bundle.pem, reloaded when they
	// change. --cert-dir.
	Dir string
	// WorkloadAPI is the address of the SPIFFE Workload API.
	// --workload-api.
	WorkloadAPI string
	// CA, when CA.Server is set, gets certificates from "meshgate ca
	// serve". --ca-server, --id, --ca-token-file, --ca-root, --dns.
	CA mtls.CAClientConfig
	// CAWait is how long to keep trying for the first certificate from
	// CA.Server. --ca-wait.
	CAWait time.Duration
}

// Registry is a registry file, read.
type Registry struct {
	Path   string
	static *discovery.StaticRegistry
	data   []byte // what was read, so the watch reloads only on a change
}

// LoadRegistry reads and parses the registry file at path. Its error
// names --registry.
func LoadRegistry(path string) (*Registry, error) {
	b, err := os.ReadFile(path)
	var static *discovery.StaticRegistry
	if err == nil {
		static, err = discovery.ParseRegistry(b)
	}
	if err != nil {
		return nil, fmt.Errorf("--registry %s: %w", path, causeOf[*discovery.Error](err))
	}
	return &Registry{Path: path, static: static, data: b}, nil
}

// Validate reports the problems of o that its parts do not check
// themselves (Config has its own Validate).
func (o Options) Validate() error {
	var errs []error
	if o.Registry != nil && len(o.DNSListen) == 0 {
		errs = append(errs, errors.New("--registry: its names are answered by the DNS proxy, which --dns-listen \"\" turns off"))
	}
	errs = append(errs, o.GC.Validate())
	if o.AppProbes != nil {
		if err := o.AppProbes.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("--app-probes: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Run runs the sidecar until ctx ends, then drains it (proxy.Run); its
// parts are closed before it returns.
func Run(ctx context.Context, o Options) error {
	log := o.Log
	if log == nil {
		log = zap.NewNop()
	}
	if err := o.Validate(); err != nil {
		return err
	}
	if o.ExitWithApp {
		proc := o.procRoot
		if proc == "" {
			proc = "/proc"
		}
		w, err := newAppWatch(proc)
		if err != nil {
			return err
		}
		var stop context.CancelFunc
		ctx, stop = context.WithCancel(ctx)
		var watching sync.WaitGroup
		defer watching.Wait()
		defer stop() // before the Wait: the watcher returns when ctx ends
		watching.Go(func() {
			if watchApp(ctx, w, appPollInterval, appNotSharedAfter, log) {
				stop()
			}
		})
	}
	gcPercent, memLimit := o.GC.apply(os.Getenv)
	log.Info("garbage collector", zap.String("gc_percent", gcPercent), zap.String("memory_limit", memLimit))
	tctx, stopTrim := context.WithCancel(ctx)
	var trimming sync.WaitGroup
	trimming.Go(func() { trimHeap(tctx, log) })
	defer trimming.Wait()
	defer stopTrim()
	// The parts' own sockets carry the mark as the proxy's do; where it
	// cannot be set (no CAP_NET_ADMIN: the proxy warns), they go without,
	// rather than fail a setsockopt on every socket.
	mark := uint32(o.Config.Mark)
	if mark != 0 && sockmark.Probe(mark) != nil {
		mark = 0
	}
	src, err := openCerts(ctx, o.Certs, mark, log)
	if err != nil {
		return err
	}
	// One registry for every part: the proxy serves it on the metrics port.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts := []proxy.Option{proxy.WithRegistry(reg)}
	if len(o.AppProbes) > 0 {
		opts = append(opts, proxy.WithAppProbes(o.AppProbes))
		log.Info("serving the app's probes on the health port", zap.Strings("paths", slices.Sorted(maps.Keys(o.AppProbes))))
	}
	if src != nil {
		defer src.Close()
		reg.MustRegister(mtls.NewCertCollector(src))
		opts = append(opts, proxy.WithMeshTLS(mtls.NewMesh(src)))
	}
	if len(o.DNSListen) == 0 {
		p, err := proxy.New(o.Config, log, opts...)
		if err != nil {
			return err
		}
		return runWatched(ctx, p, o.ConfigFile, log)
	}
	dns, err := newDNSProxy(o, mark, balanceOptions(o.Config.LoadBalancing), reg, log)
	if err != nil {
		return err
	}
	// Names the DNS proxy answered lead to mesh destinations (the
	// registry's, and those whose TXT record says so), connections to a
	// service's address are balanced over its endpoints, and the names
	// the proxy sends to of its own (mirror targets) are resolved by it.
	p, err := proxy.New(o.Config, log, append(opts, proxy.WithDestinations(dns), proxy.WithBalancer(dns), proxy.WithHostNames(dns), proxy.WithResolver(dns))...)
	if err != nil {
		return err
	}
	dctx, stopDNS := context.WithCancel(ctx)
	defer stopDNS()
	dnsDone := make(chan error, 1)
	go func() { dnsDone <- dns.Run(dctx) }()
	select {
	case <-dns.Ready():
		log.Info("DNS proxy ready", zap.Strings("listen", dns.Addrs()))
	case err := <-dnsDone:
		return fmt.Errorf("--dns-listen: %w", causeOf[*discovery.Error](err))
	}
	watchDone := make(chan error, 1)
	if o.Registry != nil {
		go func() { watchDone <- dns.WatchRegistry(dctx, o.Registry.Path, o.Registry.data) }()
	} else {
		watchDone <- nil
	}
	runErr := runWatched(ctx, p, o.ConfigFile, log)
	stopDNS()
	if err := <-dnsDone; err != nil && runErr == nil {
		runErr = fmt.Errorf("DNS proxy: %w", err)
	}
	if err := <-watchDone; err != nil && runErr == nil {
		runErr = fmt.Errorf("--registry: %w", err)
	}
	return runErr
}

// runWatched runs p, and while it runs, reloads its config file (if
// any) when it changes.
func runWatched(ctx context.Context, p *proxy.Proxy, file string, log *zap.Logger) error {
	if file == "" {
		return p.Run(ctx)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := p.WatchConfig(wctx, file); err != nil {
			log.Warn("config file not watched: changes need a restart", zap.Error(err))
		}
	}()
	err := p.Run(ctx)
	stop()
	<-done
	return err
}

// certSource is a certificate source the sidecar closes when it ends.
type certSource interface {
	mtls.CurrentSource
	Close() error
}

// openCerts opens the source c chooses; nil, nil when it chooses none. The
// sockets it opens to a CA server or a Workload API over TCP carry mark,
// so the pod's rules never capture them.
func openCerts(ctx context.Context, c Certs, mark uint32, log *zap.Logger) (certSource, error) {
	switch {
	case c.Dir != "":
		src, err := mtls.NewDirSource(c.Dir, log)
		if err != nil {
			msg := causeOf[*mtls.Error](err).Error()
			if errors.Is(err, fs.ErrNotExist) {
				msg += "; want cert.pem, key.pem and bundle.pem there, e.g. from 'meshgate ca issue --out " + c.Dir + "'"
			}
			return nil, fmt.Errorf("--cert-dir %s: %s", c.Dir, msg)
		}
		return src, nil
	case c.WorkloadAPI != "":
		src, err := mtls.NewWorkloadAPISource(ctx, c.WorkloadAPI, mark, log)
		if err != nil {
			// What failed names the Workload API's address, which the
			// flag may not have given (SPIFFE_ENDPOINT_SOCKET): keep it.
			var me *mtls.Error
			if errors.As(err, &me) {
				return nil, fmt.Errorf("--workload-api: %s: %w", me.Op, me.Err)
			}
			return nil, fmt.Errorf("--workload-api: %w", err)
		}
		return src, nil
	case c.CA.Server != "":
		c.CA.Mark = mark
		src, err := mtls.WaitCAClientSource(ctx, c.CA, c.CAWait, log)
		var we *mtls.CAWaitError
		if errors.As(err, &we) {
			return nil, fmt.Errorf("--ca-server %s: no certificate within --ca-wait %s: %w", c.CA.Server, we.Wait, we.Err)
		}
		if err != nil {
			return nil, err
		}
		return src, nil
	}
	return nil, nil
}

// causeOf is the cause inside the first E of err's chain (an error of
// package mtls or discovery, which names what failed its own way), for a
// message that names the flag instead; err itself when it holds no E.
func causeOf[E interface {
	error
	Unwrap() error
}](err error) error {
	var e E
	if errors.As(err, &e) {
		return e.Unwrap()
	}
	return err
}

// balanceOptions is the config's loadBalancing section for package
// discovery's balancers.
func balanceOptions(c proxy.LoadBalancingConfig) discovery.BalanceOptions {
	o := discovery.BalanceOptions{
		Policy:              discovery.Policy(c.Policy),
		Decay:               c.Decay.D(),
		ConsecutiveFailures: c.OutlierDetection.ConsecutiveFailures,
		BaseEjection:        c.OutlierDetection.BaseEjectionTime.D(),
		MaxEjection:         c.OutlierDetection.MaxEjectionTime.D(),
		MaxEjectedPercent:   c.OutlierDetection.MaxEjectionPercent,
	}
	if o.ConsecutiveFailures == 0 {
		o.ConsecutiveFailures = -1 // the config's 0 is "no ejection"
	}
	return o
}

// newDNSProxy makes the sidecar's DNS proxy: on the addresses of
// o.DNSListen that this namespace has, asking the resolvers of
// o.ResolvConf. A missing resolv.conf leaves it with no upstream (mesh
// names only) unless it is required.
func newDNSProxy(o Options, mark uint32, balance discovery.BalanceOptions, reg prometheus.Registerer, log *zap.Logger) (*discovery.Server, error) {
	var addrs []string
	for _, a := range o.DNSListen {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("--dns-listen %q: want host:port, e.g. 127.0.0.1:15053", a)
		}
		if ip, err := netip.ParseAddr(host); err == nil && ip.Is6() {
			if pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0")); err != nil {
				log.Info("no IPv6 here: DNS proxy on IPv4 only", zap.String("skipped", a))
				continue
			} else {
				pc.Close()
			}
		}
		addrs = append(addrs, a)
	}
	ups, err := discovery.Upstreams(o.ResolvConf)
	if err != nil {
		if o.ResolvConfRequired {
			return nil, fmt.Errorf("--resolv-conf %s: %w", o.ResolvConf, causeOf[*discovery.Error](err))
		}
		log.Warn("no resolv.conf: the DNS proxy answers mesh names only", zap.Error(err))
	}
	do := discovery.Options{Addrs: addrs, Upstreams: ups, Balance: balance, Mark: mark, Log: log.Named("dns"), Registerer: reg}
	if o.Registry != nil {
		do.Registry = o.Registry.static
	}
	s, err := discovery.New(do)
	if err != nil {
		return nil, fmt.Errorf("--dns-listen: %w", causeOf[*discovery.Error](err))
	}
	return s, nil
}
