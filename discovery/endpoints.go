package discovery

import (
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// endpointSets are the endpoints of the mesh's services and their
// balancers. A registry service's endpoints are the registry's; a name
// outside the registry that its TXT record says is meshed has the
// addresses of its latest A and AAAA answers, asked again once their TTL
// is over, so that a replica added, removed or a TTL changed upstream is
// followed without a restart.
type endpointSets struct {
	s   *Server
	o   BalanceOptions
	log *zap.Logger

	mu   sync.Mutex
	dns  map[familyKey]*dnsSet
	bals map[svcKey]*balancer
	seed uint64
	wg   sync.WaitGroup // refreshes in flight

	picks, failures, ejections *prometheus.CounterVec
	ejectedNow                 *prometheus.GaugeVec
}

// familyKey names a name's addresses of one family.
type familyKey struct {
	name string // lower case, fully qualified
	v6   bool
}

// svcKey names a balancer: a service's endpoints of one family at one
// port.
type svcKey struct {
	name string
	port uint16
	v6   bool
}

// dnsSet is what DNS last said of a name's addresses of one family.
type dnsSet struct {
	addrs      []netip.Addr
	until      time.Time // asked again after
	refreshing bool
}

// maxDNSSets bounds the names whose addresses are kept.
const maxDNSSets = 65536

func newEndpointSets(s *Server, o BalanceOptions) *endpointSets {
	labels := []string{"service", "endpoint"}
	return &endpointSets{s: s, o: o, log: s.log, dns: make(map[familyKey]*dnsSet), bals: make(map[svcKey]*balancer),
		seed: uint64(time.Now().UnixNano()),
		picks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshgate_endpoint_picks_total",
			Help: "Outbound connections and HTTP requests to a service sent to each of its endpoints by the balancer.",
		}, labels),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshgate_endpoint_failures_total",
			Help: "Connections and requests to an endpoint that failed: connect or mesh handshake failure, reset before any byte, HTTP 502, 503 or 504.",
		}, labels),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshgate_endpoint_ejections_total",
			Help: "Times an endpoint was ejected from its service's balancer for failing in a row.",
		}, labels),
		ejectedNow: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshgate_endpoint_ejected",
			Help: "1 while an endpoint is ejected from its service's balancer.",
		}, labels),
	}
}

func (e *endpointSets) collectors() []prometheus.Collector {
	return []prometheus.Collector{e.picks, e.failures, e.ejections, e.ejectedNow}
}

// Pick chooses where an outbound connection (or HTTP request) to dst
// goes: when dst was answered for a mesh service's name, one of that
// service's endpoints of dst's family, at dst's port, chosen by the
// balancer, avoiding those in avoid (endpoints already tried). done must
// be called once the try is over, with how long it spent setting up a
// connection (dial and mesh handshake; 0 over a pooled one), how long it
// took after that to get the response's headers (0 for a connection of
// its own) and whether it failed; it feeds the latency estimate, which
// set-up does not, and outlier ejection. ok is false when dst is not a
// service address (the connection goes to dst itself) or every endpoint
// is in avoid. It implements package proxy's Balancer.
func (s *Server) Pick(dst netip.AddrPort, avoid []netip.AddrPort) (ep netip.AddrPort, done func(setup, latency time.Duration, failed bool), ok bool) {
	return s.eps.pick(dst, avoid)
}

func (e *endpointSets) pick(dst netip.AddrPort, avoid []netip.AddrPort) (netip.AddrPort, func(time.Duration, time.Duration, bool), bool) {
	a := dst.Addr().Unmap()
	name, ok := e.s.NameOf(a)
	if !ok {
		return netip.AddrPort{}, nil, false
	}
	fq := dns.Fqdn(name)
	v6 := a.Is6()
	var addrs []netip.Addr
	if svc, ok := e.registryService(fq); ok {
		for _, x := range svc.Endpoints {
			if x.Is6() == v6 {
				addrs = append(addrs, x)
			}
		}
	} else {
		if !e.s.meshedName(fq) {
			return netip.AddrPort{}, nil, false
		}
		now := e.s.o.Now()
		e.mu.Lock()
		set := e.dns[familyKey{fq, v6}]
		if set != nil {
			addrs = set.addrs
			if !now.Before(set.until) && !set.refreshing {
				set.refreshing = true
				e.wg.Go(func() { e.refresh(fq, v6) })
			}
		}
		e.mu.Unlock()
	}
	if len(addrs) == 0 {
		return netip.AddrPort{}, nil, false
	}
	key := svcKey{fq, dst.Port(), v6}
	e.mu.Lock()
	b := e.bals[key]
	if b == nil {
		e.seed++
		b = newBalancer(strings.TrimSuffix(fq, "."), e.o, e, e.s.o.Now, e.seed)
		e.bals[key] = b
	}
	e.mu.Unlock()
	b.sync(addrs, dst.Port())
	picked, ok := b.pick(avoid)
	if !ok {
		return netip.AddrPort{}, nil, false
	}
	var once sync.Once
	return picked.addr, func(setup, latency time.Duration, failed bool) {
		once.Do(func() { b.done(picked, setup, latency, failed) })
	}, true
}

// registryService looks fq up in the registry in use.
func (e *endpointSets) registryService(fq string) (*Service, bool) {
	reg := e.s.registry()
	if reg == nil {
		return nil, false
	}
	return reg.Service(fq)
}

// learn keeps the addresses of m, the answer to q: per name that owns
// A or AAAA records in it, until the smallest of their TTLs (1s at
// least); an answer with no records at all empties q's name, until its
// negative TTL.
func (e *endpointSets) learn(q dns.Question, m *dns.Msg, now time.Time) {
	if q.Qclass != dns.ClassINET || (q.Qtype != dns.TypeA && q.Qtype != dns.TypeAAAA) {
		return
	}
	v6 := q.Qtype == dns.TypeAAAA
	sets := map[familyKey]*dnsSet{}
	for _, rr := range m.Answer {
		a, ok := addrOf(rr)
		if !ok || a.Is6() != v6 {
			continue
		}
		k := familyKey{strings.ToLower(rr.Header().Name), v6}
		until := now.Add(max(time.Duration(rr.Header().Ttl)*time.Second, time.Second))
		set := sets[k]
		if set == nil {
			set = &dnsSet{until: until}
			sets[k] = set
		}
		set.addrs = append(set.addrs, a)
		if until.Before(set.until) {
			set.until = until
		}
	}
	if len(m.Answer) == 0 && (m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError) {
		ttl, ok := cacheTTL(m)
		if !ok {
			ttl = 30
		}
		sets[familyKey{strings.ToLower(dns.Fqdn(q.Name)), v6}] = &dnsSet{until: now.Add(max(time.Duration(ttl)*time.Second, time.Second))}
	}
	if len(sets) == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.dns) > maxDNSSets {
		for k, set := range e.dns {
			if now.After(set.until.Add(time.Minute)) && !set.refreshing {
				delete(e.dns, k)
			}
		}
	}
	for k, set := range sets {
		e.dns[k] = set
	}
}

// addrOf is the address of an A or AAAA record, unmapped.
func addrOf(rr dns.RR) (netip.Addr, bool) {
	var a netip.Addr
	switch v := rr.(type) {
	case *dns.A:
		a, _ = netip.AddrFromSlice(v.A.To4())
	case *dns.AAAA:
		a, _ = netip.AddrFromSlice(v.AAAA)
	}
	return a.Unmap(), a.IsValid()
}

// refresh asks again for fq's addresses of one family, through the cache
// as an app's question would go, and its TXT record with them.
func (e *endpointSets) refresh(fq string, v6 bool) {
	qtype := dns.TypeA
	if v6 {
		qtype = dns.TypeAAAA
	}
	q := new(dns.Msg)
	q.SetQuestion(fq, qtype)
	q.RecursionDesired = true
	now := e.s.o.Now()
	key := keyOf(q.Question[0], false)
	e.s.learn(fq, now)
	m := e.s.cache.get(key, now)
	if m == nil {
		var err error
		if m, err = e.s.forward(q); err != nil {
			e.log.Debug("endpoint refresh failed; the endpoints known stay", zap.String("name", fq), zap.Error(err))
			e.mu.Lock()
			if set := e.dns[familyKey{fq, v6}]; set != nil {
				set.refreshing = false
				set.until = now.Add(5 * time.Second)
			}
			e.mu.Unlock()
			return
		}
		e.s.cache.put(key, m, now)
	}
	e.s.remember(q.Question[0], m)
	e.mu.Lock()
	if set := e.dns[familyKey{fq, v6}]; set != nil {
		set.refreshing = false
	}
	e.mu.Unlock()
}

// wait waits for the refreshes in flight.
func (e *endpointSets) wait() { e.wg.Wait() }

// The balancers' events: metrics and log lines.

func (e *endpointSets) picked(svc string, ep netip.AddrPort) {
	e.picks.WithLabelValues(svc, ep.String()).Inc()
}

func (e *endpointSets) failed(svc string, ep netip.AddrPort) {
	e.failures.WithLabelValues(svc, ep.String()).Inc()
}

func (e *endpointSets) ejected(svc string, ep netip.AddrPort, failures int, d time.Duration) {
	e.ejections.WithLabelValues(svc, ep.String()).Inc()
	e.ejectedNow.WithLabelValues(svc, ep.String()).Set(1)
	e.log.Warn("endpoint ejected", zap.String("service", svc), zap.Stringer("endpoint", ep),
		zap.Int("consecutive_failures", failures), zap.Duration("for", d))
}

func (e *endpointSets) returned(svc string, ep netip.AddrPort) {
	e.ejectedNow.WithLabelValues(svc, ep.String()).Set(0)
	e.log.Info("endpoint back from ejection", zap.String("service", svc), zap.Stringer("endpoint", ep))
}

func (e *endpointSets) removed(svc string, ep netip.AddrPort) {
	for _, v := range []*prometheus.CounterVec{e.picks, e.failures, e.ejections} {
		v.DeleteLabelValues(svc, ep.String())
	}
	e.ejectedNow.DeleteLabelValues(svc, ep.String())
}
