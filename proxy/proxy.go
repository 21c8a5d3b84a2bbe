package proxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"meshgate/proxy/appprobe"
	"meshgate/proxy/resilience"
	"meshgate/sockmark"
)

// Direction says which way a captured connection goes.
type Direction uint8

// The two directions. Their String values label metrics and logs.
const (
	// Outbound connections are made by the app, to anywhere.
	Outbound Direction = iota
	// Inbound connections are made to the app, from anywhere.
	Inbound
)

// String returns "outbound" or "inbound".
func (d Direction) String() string {
	if d == Inbound {
		return "inbound"
	}
	return "outbound"
}

// Option configures a Proxy beyond its Config.
type Option func(*Proxy)

// WithRegistry registers the proxy's metrics with reg and serves reg on
// the metrics port. Without it the proxy owns a registry that also holds
// the Go runtime and process collectors.
func WithRegistry(reg *prometheus.Registry) Option {
	return func(p *Proxy) { p.reg = reg }
}

// WithAppProbes serves the app's original probes on the health port, each
// at its path (package appprobe: Istio-style probe rewriting). The set
// must be valid (appprobe.Parse).
func WithAppProbes(set appprobe.Set) Option {
	return func(p *Proxy) { p.appProbes = maps.Clone(set) }
}

// Addrs are the addresses a running proxy is bound to; with port 0 in the
// Config they are how a test finds its proxy.
type Addrs struct {
	// Outbound and Inbound hold the IPv4 listener, then the IPv6 one when
	// the namespace has IPv6.
	Outbound []netip.AddrPort
	Inbound  []netip.AddrPort
	Admin    netip.AddrPort
	Metrics  netip.AddrPort
	Health   netip.AddrPort
}

// Proxy is the L4 data plane: capture listeners, the per-connection
// pipeline (see the package doc) and the admin, metrics and health
// servers. Create it with New and start it with Run, once.
type Proxy struct {
	cfg      Config
	log      *zap.Logger
	reg      *prometheus.Registry
	metrics  *metrics
	origDst  OriginalDstFunc // nil: the default lookup of cfg.Mode
	copyMode copyMode        // how forward moves bytes; tests set copyBuffer
	// parkAfter is fwdTimes.park: parkAfter, or a test's (withParkAfter).
	parkAfter time.Duration
	meshTLS   MeshTLS // WithMeshTLS; nil: no certificates
	// destinations is WithDestinations' resolver; nil: none.
	destinations DestinationResolver
	// balancer is WithBalancer's; nil: connections go where they were sent.
	balancer Balancer
	// names is WithHostNames'; nil: outbound policy knows no names.
	names HostNamer
	// appProbes is WithAppProbes'; nil: none.
	appProbes appprobe.Set
	// policy is the authorization in effect (authz.go); a reload swaps
	// it. cfgMu serialises reloads, and guards cfg.Policy for /config.
	policy atomic.Pointer[policyState]
	// rateLimits are the rate limits in effect (ratelimit_stage.go),
	// swapped by a reload under cfgMu.
	rateLimits atomic.Pointer[rlState]
	// resilience is the resilience section in effect, compiled
	// (resilienceTable); a reload swaps it under cfgMu.
	resilience atomic.Pointer[resilience.Table]
	// guards are the circuit breakers, bulkheads and stale caches per
	// destination (guard.go), following resilience.
	guards *guards
	// res is the state of retries and timeouts (retry.go).
	res   *resRuntime
	cfgMu sync.Mutex
	// stopped: Run has returned (under cfgMu); a reload starts nothing.
	stopped bool
	mesh    *meshState // cfg.MTLS resolved against meshTLS
	// serverFirst remembers destinations that spoke first; httpDests
	// those whose clients spoke HTTP (their connections skip the dial
	// made while detecting, as they go to the pooled L7 connections).
	serverFirst *destMemory
	httpDests   *destMemory
	l7          *l7
	access      *zap.Logger // the access log: a line per L7 request
	httpServers sync.Map    // *http.Server of each L7 connection being served
	h1Mu        sync.Mutex
	h1Conns     map[*h1Conn]struct{} // each HTTP/1 connection being served, under h1Mu
	// chains are the request stages of each direction (stages.go),
	// rebuilt when a reload changes them; extraStages, those tests add
	// (withStage).
	chains      atomic.Pointer[[2]chain]
	extraStages [2][]Stage
	// acl is the IP lists and header blocks in effect (access.go); a
	// reload swaps it.
	acl atomic.Pointer[accessState]
	// protect is the connection caps and request limits (protect.go).
	protect *protection
	// inject is fault injection and mirroring (inject.go).
	inject injector

	started atomic.Bool
	ready   chan struct{} // closed once every listener is bound and serving
	addrs   Addrs         // written before ready is closed

	listening atomic.Bool // all listeners up
	draining  atomic.Bool // shutdown started
	quit      chan struct{}
	quitOnce  sync.Once

	// Set by Run before any connection is served, then read-only.
	markCtl        func(network, address string, c syscall.RawConn) error // marks a dialed socket; nil when the proxy may not mark
	transparentCtl func(network, address string, c syscall.RawConn) error // makes a dialed socket transparent (tproxy mode), and marks it
	ownPorts       map[ownPort]struct{}                                   // the capture listeners' ports, for the loop guard

	// noSource[family] is set once binding the passthrough source failed
	// with EADDRNOTAVAIL (::6 is rarely assigned): later inbound
	// connections of that family go without an explicit source.
	noSource [2]atomic.Bool // 0: IPv4, 1: IPv6

	// upstreams holds every connection the proxy dialed and still has
	// open (upstreamKey → *net.TCPConn), so a connection of its own that
	// the rules capture again is recognised and refused (capturedAgain),
	// and so that the end of a drain's grace period cuts them all
	// (cutUpstreams). cut is set then: a connection registered after is
	// closed at once (register).
	upstreams sync.Map
	cut       atomic.Bool

	mu     sync.Mutex
	conns  map[*net.TCPConn]*flow // client sides in flight, with their L4 flow once it runs
	killed bool                   // grace period over: close new arrivals too
}

// New returns a Proxy for cfg that logs to log (nil: nowhere); it binds
// nothing until Run. It fails if cfg does not validate or the metrics
// cannot be registered.
func New(cfg Config, log *zap.Logger, opts ...Option) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("proxy: invalid config: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	p := &Proxy{
		cfg:       cfg,
		log:       log,
		ready:     make(chan struct{}),
		quit:      make(chan struct{}),
		conns:     make(map[*net.TCPConn]*flow),
		parkAfter: parkAfter,
	}
	for _, o := range opts {
		o(p)
	}
	mesh, err := newMeshState(cfg.MTLS, p.meshTLS)
	if err != nil {
		return nil, fmt.Errorf("proxy: invalid config: %w", err)
	}
	p.mesh = mesh
	mesh.resolver = p.destinations
	p.serverFirst = newDestMemory(cfg.Protocols.ServerFirstMemory.D())
	p.httpDests = newDestMemory(cfg.Protocols.ServerFirstMemory.D())
	p.l7 = newL7(p)
	p.access = log.Named("access")
	p.cfg.Protocols.Ports = maps.Clone(cfg.Protocols.Ports)
	// The config is the caller's; keep a copy, with the mode in effect
	// for /config.
	p.cfg.MTLS.Mode = mesh.mode
	p.cfg.MTLS.PortModes = maps.Clone(cfg.MTLS.PortModes)
	p.cfg.MTLS.MeshCIDRs = slices.Clone(cfg.MTLS.MeshCIDRs)
	p.cfg.MTLS.Destinations = slices.Clone(cfg.MTLS.Destinations)
	if p.reg == nil {
		p.reg = prometheus.NewRegistry()
		p.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	m, err := newMetrics(p.reg)
	if err != nil {
		return nil, fmt.Errorf("proxy: register metrics: %w", err)
	}
	p.metrics = m
	if p.res, err = newResRuntime(p.reg); err != nil {
		return nil, fmt.Errorf("proxy: register metrics: %w", err)
	}
	p.protect = newProtection(cfg.Limits, m.protectionEvents, log)
	st, err := p.newPolicyState(cfg.Policy, nil)
	if err != nil {
		return nil, fmt.Errorf("proxy: invalid config: %w", err)
	}
	p.policy.Store(st)
	acc, err := newAccessState(cfg.Access, nil, p.metrics, log.Named("acl"))
	if err != nil {
		return nil, fmt.Errorf("proxy: invalid config: %w", err)
	}
	p.acl.Store(acc)
	rl, err := p.newRateLimitState(cfg.RateLimits, cfg.Redis, nil)
	if err != nil {
		return nil, fmt.Errorf("proxy: invalid config: %w", err)
	}
	p.rateLimits.Store(rl)
	res, err := resilience.New(cfg.Resilience)
	if err != nil {
		return nil, fmt.Errorf("proxy: invalid config: %w", err)
	}
	p.resilience.Store(res)
	if p.guards, err = newGuards(p, p.reg); err != nil {
		return nil, fmt.Errorf("proxy: register metrics: %w", err)
	}
	p.guards.retable(res, cfg.Resilience)
	p.rebuildChains()
	return p, nil
}

// Ready is closed once Run has bound every listener and serves them.
func (p *Proxy) Ready() <-chan struct{} { return p.ready }

// Addrs returns the bound addresses; they are set once Ready is closed.
func (p *Proxy) Addrs() Addrs {
	select {
	case <-p.ready:
		return p.addrs
	default:
		return Addrs{}
	}
}

// Run binds the listeners, serves until ctx is cancelled or /quitquitquit
// is posted, then drains: it stops accepting, reports not ready, lets
// in-flight connections finish for timeouts.drainGrace, closes the rest
// and returns nil. A bind failure is returned at once, with nothing left
// bound.
func (p *Proxy) Run(ctx context.Context) error {
	if !p.started.CompareAndSwap(false, true) {
		return errors.New("proxy: Run called twice")
	}
	if p.checkMark() {
		p.markCtl = sockmark.Control(uint32(p.cfg.Mark))
	}
	p.transparentCtl = func(network, address string, c syscall.RawConn) error {
		if err := transparentControl(network, address, c); err != nil || p.markCtl == nil {
			return err
		}
		return p.markCtl(network, address, c)
	}

	capture, servers, err := p.bind()
	if err != nil {
		return err
	}
	p.ownPorts = make(map[ownPort]struct{})
	for _, l := range capture {
		p.ownPorts[ownPortOf(l.addr)] = struct{}{}
	}
	// JWT keys are refreshed while the proxy runs (a JWKS URL is fetched
	// through the mesh, which needs the marks set above).
	p.cfgMu.Lock()
	p.policy.Load().start()
	p.acl.Load().start()
	p.cfgMu.Unlock()
	defer func() {
		p.cfgMu.Lock()
		p.stopped = true
		p.policy.Load().close()
		p.acl.Load().close()
		p.closeRateLimits()
		p.cfgMu.Unlock()
	}()

	// In-flight connections outlive ctx for the grace period, so they get a
	// context of their own, cancelled only when the grace period is over.
	connCtx, killConns := context.WithCancel(context.WithoutCancel(ctx))
	defer killConns()

	var acceptWG, connWG, serveWG sync.WaitGroup
	serveErr := make(chan error, len(servers))
	for _, s := range servers {
		serveWG.Go(func() {
			if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("proxy: %s server on %s: %w", s.name, s.ln.Addr(), err)
			}
		})
	}
	stopAccept := make(chan struct{})
	handlers := newHandlerPool()
	for _, l := range capture {
		acceptWG.Go(func() { p.acceptLoop(connCtx, l, stopAccept, handlers, &connWG) })
	}
	p.listening.Store(true)
	close(p.ready)
	p.log.Info("proxy ready",
		zap.String("mode", string(p.cfg.Mode)),
		zap.String("mtls", string(p.mesh.mode)),
		zap.Stringers("outbound", p.addrs.Outbound),
		zap.Stringers("inbound", p.addrs.Inbound),
		zap.Stringer("admin", p.addrs.Admin),
		zap.Stringer("metrics", p.addrs.Metrics),
		zap.Stringer("health", p.addrs.Health))

	var runErr error
	select {
	case <-ctx.Done():
		p.log.Info("shutting down: signal received")
	case <-p.quit:
		p.log.Info("shutting down: /quitquitquit")
	case runErr = <-serveErr:
		p.log.Error("shutting down: server failed", zap.Error(runErr))
	}

	// Phase 1: stop accepting and report not ready; existing connections
	// keep going.
	p.draining.Store(true)
	close(stopAccept)
	for _, l := range capture {
		l.ln.Close()
	}
	acceptWG.Wait()
	p.drainHTTP()

	// Phase 2: let them finish within the grace period, then cut them.
	grace := p.cfg.Timeouts.DrainGrace.D()
	p.log.Info("draining", zap.Int("connections", p.inFlight()), zap.Duration("grace_period", grace))
	drained := make(chan struct{})
	go func() { connWG.Wait(); close(drained) }()
	timer := time.NewTimer(grace)
	select {
	case <-drained:
		timer.Stop()
	case <-timer.C:
		// Everything still in flight is cut: the client connections
		// with their L4 flows, the contexts (nothing dials or retries
		// any more), then the upstream connections, which an L7 request
		// waits on rather than its client.
		n := p.killAll()
		killConns()
		if up := p.cutUpstreams(); n > 0 || up > 0 {
			p.log.Warn("grace period over: closing connections", zap.Int("connections", n), zap.Int("upstream_connections", up))
		}
		<-drained
	}
	handlers.close()
	p.inject.stop() // the mirror copies still in flight

	p.l7.closeIdle()

	// Phase 3: the HTTP servers go last, so /healthz/ready keeps saying 503
	// while draining.
	for _, s := range servers {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := s.srv.Shutdown(sctx); err != nil {
			s.srv.Close()
		}
		cancel()
	}
	serveWG.Wait()
	p.log.Info("proxy stopped")
	return runErr
}

// inFlight returns how many connections are being served.
func (p *Proxy) inFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// track registers a client connection for force-closing; it reports false
// when the grace period is already over.
func (p *Proxy) track(c *net.TCPConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.killed {
		return false
	}
	p.conns[c] = nil
	return true
}

// setFlow records the L4 flow c's connection runs, for killAll.
func (p *Proxy) setFlow(c *net.TCPConn, f *flow) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.conns[c]; ok {
		p.conns[c] = f
	}
}

func (p *Proxy) untrack(c *net.TCPConn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// killAll resets every client connection in flight; their forwarders see
// the error and close the upstream side (L7 requests need cutUpstreams
// too).
func (p *Proxy) killAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.killed = true
	for c, f := range p.conns {
		if f != nil {
			f.kill() // resets both sides, parked or not
		} else {
			reset(c)
		}
	}
	return len(p.conns)
}

// checkMark reports whether sockets can be marked, logging once when not.
// What it logs holds for every socket of the process: the DNS proxy and
// the certificate clients mark theirs with the same mark, and go on
// unmarked when they may not, as the proxy's do (see sockmark.Control).
func (p *Proxy) checkMark() bool {
	if p.cfg.Mark == 0 {
		p.log.Info("socket mark disabled (mark: 0): the proxy UID exemption alone keeps its traffic out of the capture")
		return false
	}
	if err := sockmark.Probe(uint32(p.cfg.Mark)); err != nil {
		p.log.Warn("cannot mark sockets; continuing unmarked: the proxy UID exemption must keep its traffic out of the capture",
			zap.Stringer("mark", p.cfg.Mark), zap.Error(err),
			zap.String("hint", "setting SO_MARK needs CAP_NET_ADMIN"))
		return false
	}
	return true
}
