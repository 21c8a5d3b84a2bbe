package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"meshgate/sockmark"
)

// Options configure a Server.
type Options struct {
	// Addrs are the UDP and TCP addresses to serve on; the sidecar's are
	// 127.0.0.1:15053 and [::1]:15053.
	Addrs []string
	// Upstreams are the resolvers (host:port) names outside the mesh are
	// asked, in order; usually those of resolv.conf (Upstreams).
	Upstreams []string
	// Registry holds the mesh's names; nil: none. SetRegistry replaces it.
	Registry Registry
	// Balance configures how connections to a service are spread over its
	// endpoints (see Pick).
	Balance BalanceOptions
	// Timeout bounds one question to one upstream; 0 means 2s.
	Timeout time.Duration
	// Mark is the socket mark (SO_MARK) on every upstream socket, UDP and
	// TCP, so that capture rules exempting the sidecar's mark do not send
	// its own questions back to it; the sidecar's is its config's mark,
	// 0x539 by default. 0 marks nothing. See sockmark.Control for a mark
	// the process may not set.
	Mark uint32
	// CacheSize bounds the cached answers; 0 means 10 000.
	CacheSize int
	// Log gets a line per failed upstream; nil logs nothing.
	Log *zap.Logger
	// Now is the clock that TTLs (of cached answers, of the names and
	// endpoints learnt from them) and balancing go by; nil: time.Now.
	Now func() time.Time
	// Registerer gets the metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Server is the DNS proxy.
type Server struct {
	o       Options
	log     *zap.Logger
	cache   *cache
	names   *nameMemory
	queries *prometheus.CounterVec

	mu    sync.Mutex
	bound []string // the addresses served, once Run has bound them
	ready chan struct{}

	convMu sync.Mutex
	conv   map[string]convention // name → what its TXT record says

	reg atomic.Pointer[registryBox]
	eps *endpointSets

	dialer *net.Dialer // every upstream socket's, carrying the mark
	// clients ask the upstreams over UDP, then TCP, through dialer.
	clients [2]*dns.Client
}

// registryBox holds the registry in use (nil: none).
type registryBox struct{ r Registry }

// convention is what a name's TXT record says of it in the meshgate
// convention, and until when.
type convention struct {
	identity spiffeid.ID
	meshed   bool
	until    time.Time
}

// UpstreamEDNSSize is the UDP payload size asked of upstreams (and
// offered to clients): 1232 bytes avoids IP fragmentation on any path
// (DNS flag day 2020).
const UpstreamEDNSSize = 1232

// New returns a Server; it binds nothing until Run.
func New(o Options) (*Server, error) {
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second
	}
	if o.CacheSize == 0 {
		o.CacheSize = 10000
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var errs []error
	if len(o.Addrs) == 0 {
		errs = append(errs, errors.New("no address to serve on"))
	}
	for _, u := range o.Upstreams {
		if _, _, err := net.SplitHostPort(u); err != nil {
			errs = append(errs, fmt.Errorf("upstream %q: want host:port, e.g. 10.0.0.10:53", u))
		}
	}
	if err := o.Balance.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("balance: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, &Error{Err: err}
	}
	s := &Server{o: o, log: o.Log, cache: newCache(o.CacheSize), names: newNameMemory(65536), ready: make(chan struct{}),
		conv: make(map[string]convention), dialer: &net.Dialer{Timeout: o.Timeout, Control: sockmark.Control(o.Mark)}}
	for i, network := range []string{"udp", "tcp"} {
		s.clients[i] = &dns.Client{Net: network, Timeout: o.Timeout, UDPSize: UpstreamEDNSSize, Dialer: s.dialer}
	}
	s.queries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_dns_queries_total",
		Help: "DNS questions the proxy answered, by type and how: registry (a mesh name), cache, upstream, " +
			"and the failures servfail (no upstream answered) and formerr.",
	}, []string{"qtype", "result"})
	s.reg.Store(&registryBox{o.Registry})
	s.eps = newEndpointSets(s, o.Balance)
	if o.Registerer != nil {
		for _, c := range append([]prometheus.Collector{s.queries}, s.eps.collectors()...) {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("discovery: metrics: %w", err)
			}
		}
	}
	return s, nil
}

// registry returns the registry in use, nil if none.
func (s *Server) registry() Registry { return s.reg.Load().r }

// SetRegistry replaces the registry, at once for every question and
// connection after it (WatchRegistry calls it when the file changes).
func (s *Server) SetRegistry(r Registry) { s.reg.Store(&registryBox{r}) }

// Upstreams returns the resolvers of a resolv.conf file, as host:port.
func Upstreams(resolvConf string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil, &Error{Op: resolvConf, Err: err}
	}
	var out []string
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	return out, nil
}

// Run serves UDP and TCP on every address until ctx ends. A bind failure
// is returned at once, with nothing left bound.
func (s *Server) Run(ctx context.Context) error {
	var servers []*dns.Server
	var bound []string
	stopAll := func() {
		for _, srv := range servers {
			srv.Shutdown()
		}
	}
	for _, a := range s.o.Addrs {
		pc, ln, err := ListenBoth(a)
		if err != nil {
			stopAll()
			return &Error{Err: err}
		}
		bound = append(bound, pc.LocalAddr().String())
		for _, srv := range []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: ln, Handler: s}} {
			servers = append(servers, srv)
		}
	}
	s.mu.Lock()
	s.bound = bound
	s.mu.Unlock()
	errc := make(chan error, len(servers))
	var wg sync.WaitGroup
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() {
			if err := srv.ActivateAndServe(); err != nil {
				errc <- err
			}
		})
		<-started
	}
	close(s.ready)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	stopAll()
	wg.Wait()
	s.eps.wait()
	return err
}

// ListenBoth listens on addr for UDP and TCP, on one port: with port 0,
// the port the UDP socket gets, tried again with another when TCP has it
// taken.
func ListenBoth(addr string) (net.PacketConn, net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	for try := 0; ; try++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen udp %s: %w", addr, err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if port != "0" || try == 20 {
			return nil, nil, fmt.Errorf("listen tcp %s: %w", addr, err)
		}
	}
}

// Ready is closed once Run serves every address.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addrs returns the addresses being served (UDP and TCP alike), once Run
// has bound them.
func (s *Server) Addrs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bound...)
}

// NameOf returns the name an address was last answered for, while that
// answer's TTL lasts: how outbound connections to it are routed, logged
// and authorized by name.
func (s *Server) NameOf(a netip.Addr) (string, bool) { return s.names.get(a.Unmap(), s.o.Now()) }

// ServeDNS answers one question: from the registry for mesh names, else
// from the cache, else from the upstreams. Over UDP the answer is cut to
// what the client can take (512 bytes, or its EDNS0 size) with TC set,
// so it asks again over TCP.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	resp, result := s.answer(r)
	qtype := "none"
	if len(r.Question) == 1 {
		qtype = qtypeLabel(r.Question[0].Qtype)
	}
	s.queries.WithLabelValues(qtype, result).Inc()
	if w.LocalAddr().Network() == "udp" {
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			size = max(int(opt.UDPSize()), dns.MinMsgSize)
		}
		resp.Truncate(size)
	}
	w.WriteMsg(resp)
}

// answer builds the reply to r and says where it came from.
func (s *Server) answer(r *dns.Msg) (*dns.Msg, string) {
	if len(r.Question) != 1 || r.Opcode != dns.OpcodeQuery {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeFormatError)
		return m, "formerr"
	}
	q := r.Question[0]
	reply := func(m *dns.Msg) *dns.Msg {
		m.Id, m.Response, m.Opcode = r.Id, true, r.Opcode
		m.RecursionDesired, m.RecursionAvailable = r.RecursionDesired, true
		m.Question = r.Question
		// EDNS0 answers EDNS0 (RFC 6891 §7), and only it.
		var extra []dns.RR
		for _, rr := range m.Extra {
			if rr.Header().Rrtype != dns.TypeOPT {
				extra = append(extra, rr)
			}
		}
		m.Extra = extra
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(UpstreamEDNSSize, opt.Do())
		}
		return m
	}
	if m, ok := registryAnswer(s.registry(), q); ok {
		s.remember(q, m)
		return reply(m), "registry"
	}
	do := false
	if opt := r.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	key := keyOf(q, do)
	now := s.o.Now()
	// An address answered for a name must be known as in the mesh or not
	// before the app can connect to it: the name's TXT record is asked
	// alongside (and kept for its TTL).
	var learn sync.WaitGroup
	if q.Qclass == dns.ClassINET && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA) {
		learn.Go(func() { s.learn(q.Name, now) })
	}
	defer learn.Wait()
	if m := s.cache.get(key, now); m != nil {
		s.remember(q, m)
		return reply(m), "cache"
	}
	m, err := s.forward(r)
	if err != nil {
		s.log.Warn("no DNS upstream answered", zap.String("name", q.Name), zap.String("qtype", dns.TypeToString[q.Qtype]), zap.Error(err))
		f := new(dns.Msg)
		f.SetRcode(r, dns.RcodeServerFailure)
		return reply(f), "servfail"
	}
	s.cache.put(key, m, now)
	s.remember(q, m)
	return reply(m), "upstream"
}

// forward asks the upstreams in turn: over UDP with room for 1232 bytes,
// and again over TCP when the answer comes back truncated.
func (s *Server) forward(r *dns.Msg) (*dns.Msg, error) {
	q := r.Copy()
	q.Id = dns.Id()
	if opt := q.IsEdns0(); opt != nil {
		opt.SetUDPSize(UpstreamEDNSSize)
	} else {
		q.SetEdns0(UpstreamEDNSSize, false)
	}
	var errs []error
	for _, up := range s.o.Upstreams {
		for _, c := range s.clients {
			network := c.Net
			m, _, err := c.Exchange(q, up)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s over %s: %w", up, network, err))
				break // the next upstream
			}
			if m.Truncated && network == "udp" {
				continue // the whole answer over TCP
			}
			if m.Rcode == dns.RcodeServerFailure || m.Rcode == dns.RcodeRefused {
				errs = append(errs, fmt.Errorf("%s: %s", up, dns.RcodeToString[m.Rcode]))
				break
			}
			return m, nil
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("no upstream resolver configured")
	}
	return nil, errors.Join(errs...)
}

// learn makes sure the meshgate convention of name is known: what its
// TXT record says (meshgate.identity=..., meshgate.meshed=true), asked
// upstream when not known or expired. No record, or none of the
// convention, is a name outside the mesh, remembered for a minute.
func (s *Server) learn(name string, now time.Time) {
	name = strings.ToLower(dns.Fqdn(name))
	s.convMu.Lock()
	c, ok := s.conv[name]
	s.convMu.Unlock()
	if ok && now.Before(c.until) {
		return
	}
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeTXT)
	q.RecursionDesired = true
	key := keyOf(q.Question[0], false)
	m := s.cache.get(key, now)
	if m == nil {
		var err error
		if m, err = s.forward(q); err != nil {
			return // unknown: asked again next time
		}
		s.cache.put(key, m, now)
	}
	c = convention{until: now.Add(time.Minute)}
	for _, rr := range m.Answer {
		txt, ok := rr.(*dns.TXT)
		if !ok {
			continue
		}
		c.until = now.Add(max(time.Duration(txt.Hdr.Ttl)*time.Second, 5*time.Second))
		for _, t := range txt.Txt {
			k, v, _ := strings.Cut(strings.TrimSpace(t), "=")
			switch k {
			case "meshgate.identity":
				if id, err := spiffeid.FromString(v); err == nil {
					c.identity = id
				}
			case "meshgate.meshed":
				c.meshed = v == "true"
			}
		}
	}
	if c.meshed && c.identity.IsZero() {
		c.meshed = false // a mesh member without an identity cannot be verified
		s.log.Warn("TXT record says meshed but names no identity; taken as outside the mesh", zap.String("name", name))
	}
	s.convMu.Lock()
	if len(s.conv) > 65536 {
		for k, e := range s.conv {
			if now.After(e.until) {
				delete(s.conv, k)
			}
		}
	}
	s.conv[name] = c
	s.convMu.Unlock()
}

// MeshDestination says whether a sidecar runs at a and which identity
// it must present: a is an endpoint of a meshed service of the registry,
// or was answered for a name that the registry or the name's TXT record
// (the meshgate convention) says is meshed. It implements package
// proxy's DestinationResolver.
func (s *Server) MeshDestination(a netip.Addr) (spiffeid.ID, bool) {
	reg := s.registry()
	if reg != nil {
		if svc, ok := reg.MeshService(a); ok {
			id, err := spiffeid.FromString(svc.Identity)
			return id, err == nil
		}
	}
	name, ok := s.NameOf(a)
	if !ok {
		return spiffeid.ID{}, false
	}
	fq := dns.Fqdn(name)
	if reg != nil {
		if svc, ok := reg.Service(fq); ok {
			if !svc.Meshed {
				return spiffeid.ID{}, false
			}
			id, err := spiffeid.FromString(svc.Identity)
			return id, err == nil
		}
	}
	s.convMu.Lock()
	c, ok := s.conv[fq]
	s.convMu.Unlock()
	if !ok || !c.meshed {
		return spiffeid.ID{}, false
	}
	return c.identity, true
}

// meshedName reports whether fq's TXT record, as last learned, says it
// is in the mesh.
func (s *Server) meshedName(fq string) bool {
	s.convMu.Lock()
	defer s.convMu.Unlock()
	c, ok := s.conv[strings.ToLower(fq)]
	return ok && c.meshed
}

// remember notes which name each address of m, the answer to q, belongs
// to, and the name's endpoints (see endpointSets.learn).
func (s *Server) remember(q dns.Question, m *dns.Msg) {
	now := s.o.Now()
	s.eps.learn(q, m, now)
	for _, rr := range m.Answer {
		a, ok := addrOf(rr)
		if !ok {
			continue
		}
		ttl := max(time.Duration(rr.Header().Ttl)*time.Second, 30*time.Second)
		s.names.put(a, strings.TrimSuffix(strings.ToLower(rr.Header().Name), "."), now, now.Add(ttl))
	}
}

// qtypeLabel bounds the qtype label of the metric.
func qtypeLabel(t uint16) string {
	switch t {
	case dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeTXT, dns.TypePTR, dns.TypeCNAME, dns.TypeMX,
		dns.TypeNS, dns.TypeSOA, dns.TypeHTTPS, dns.TypeSVCB, dns.TypeANY:
		return dns.TypeToString[t]
	}
	return "other"
}

// nameMemory maps addresses to the names they were answered for, each
// until its TTL, bounded in size.
type nameMemory struct {
	mu  sync.Mutex
	m   map[netip.Addr]nameEntry
	max int
}

type nameEntry struct {
	name  string
	until time.Time
}

func newNameMemory(max int) *nameMemory {
	return &nameMemory{m: make(map[netip.Addr]nameEntry), max: max}
}

func (n *nameMemory) put(a netip.Addr, name string, now, until time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.m[a]; !ok && len(n.m) >= n.max {
		for k, e := range n.m {
			if now.After(e.until) || len(n.m) >= n.max {
				delete(n.m, k)
			}
			if len(n.m) < n.max {
				break
			}
		}
	}
	n.m[a] = nameEntry{name: name, until: until}
}

func (n *nameMemory) get(a netip.Addr, now time.Time) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	e, ok := n.m[a]
	if !ok || now.After(e.until) {
		return "", false
	}
	return e.name, true
}
