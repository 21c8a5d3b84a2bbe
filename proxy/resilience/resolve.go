package resilience

import (
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	"meshgate/internal/confval"
	"meshgate/proxy/policy"
)

// Dest is what the proxy knows of an outbound connection's destination
// before anything is sent: what Table.Lookup picks a destination by.
type Dest struct {
	// Names are the names the destination's address is known by: those
	// the app resolved it from through the sidecar's DNS proxy, or the
	// mesh service it is an endpoint of. Any case; a trailing dot is
	// ignored. None: a destination's hosts never match.
	Names []string
	// Identity is the SPIFFE ID the destination's sidecar must present;
	// zero outside the mesh (a destination's identities never match).
	Identity spiffeid.ID
	// IP and Port are the destination's address, as the app dialed it.
	IP   netip.Addr
	Port uint16
}

// Table is a compiled resilience section: read-only, safe for any number
// of goroutines. A nil (or zero) Table is the built-in defaults.
type Table struct {
	entries []entry // in config order
	def     *DestPolicy
	all     []*DestPolicy
}

type entry struct {
	match destMatch
	pol   *DestPolicy
}

// destMatch is a compiled Match; a list left out (nil, false) holds for
// any destination.
type destMatch struct {
	ports           []uint16
	hosts           policy.Hosts
	ids             policy.Patterns
	cidrs           []netip.Prefix
	anyHost, anyIDs bool
}

// DestPolicy is the settings of one destination: one entry of
// resilience.destinations, or the built-in one of the destinations no
// entry matches. Its exported fields are what holds per destination;
// they, and the Policies it gives, are shared and must not be changed.
type DestPolicy struct {
	// Budget bounds the destination's retries, its routes' included.
	Budget BudgetPolicy
	// Breaker is the destination's circuit breaker (off unless Enabled).
	Breaker BreakerPolicy
	// EndpointBreaker is each endpoint's circuit breaker (off unless
	// Enabled).
	EndpointBreaker BreakerPolicy
	// Bulkhead caps what is in flight to the destination.
	Bulkhead BulkheadPolicy
	// TCPFaults are the faults of its opaque TCP connections.
	TCPFaults TCPFaultPolicy

	name    string
	builtin bool
	base    Policy
	routes  []route
}

type route struct {
	methods Methods // 0: any
	paths   policy.Patterns
	anyPath bool
	pol     Policy
}

// Policy is the settings in effect for one HTTP request (or, from
// DestPolicy.Policy, for a destination's connections): the route's over
// the destination's over the defaults, merged at New into plain values.
// It is shared and must not be changed.
type Policy struct {
	Timeouts TimeoutPolicy
	Retry    RetryPolicy
	Fallback FallbackPolicy
	Mirror   *MirrorPolicy // nil: no mirror
	Faults   FaultPolicy

	dest      *DestPolicy
	routeName string
}

// TimeoutPolicy is Timeouts in effect. A zero duration is no limit, but
// for Connect and Idle, whose zero is the proxy's own timeouts.connect
// and timeouts.idle.
type TimeoutPolicy struct {
	Connect, Request, PerTry, Idle, StreamIdle time.Duration
}

// RetryPolicy is Retries in effect; the budget is the destination's
// (DestPolicy.Budget).
type RetryPolicy struct {
	// Attempts is the retries after the first try; 0: none.
	Attempts int
	// On is what is retried.
	On Conditions
	// Methods are the methods retried but on connect failures, which
	// any method is.
	Methods Methods
	// Backoff is the wait before each retry, with full jitter.
	Backoff BackoffPolicy
	// MaxBodyBytes is the longest request body kept to send again.
	MaxBodyBytes int64
	// MaxRetryAfter is the longest Retry-After waited for.
	MaxRetryAfter time.Duration
}

// BackoffPolicy is the wait before the n-th retry (n from 1): a random
// duration from 0 to min(Max, Base × 2^(n-1)).
type BackoffPolicy struct{ Base, Max time.Duration }

// BudgetPolicy is a destination's retry budget: retries at most Ratio of
// its requests, plus MinPerSecond a second.
type BudgetPolicy struct {
	Ratio        float64
	MinPerSecond int
}

// BreakerPolicy is a circuit breaker's settings; the zero value is no
// breaker.
type BreakerPolicy struct {
	// ConsecutiveFailures opens after that many failures in a row; 0:
	// not on consecutive failures.
	ConsecutiveFailures int
	// FailurePercent opens when at least that share of the requests of
	// the last FailureWindow failed, once there were FailureMinRequests;
	// 0: not on a failure rate.
	FailurePercent     float64
	FailureWindow      time.Duration
	FailureMinRequests int
	// OpenFor is how long it stays open, HalfOpenRequests the trial
	// requests then let through.
	OpenFor          time.Duration
	HalfOpenRequests int
}

// Enabled reports whether the breaker can open.
func (b *BreakerPolicy) Enabled() bool { return b.ConsecutiveFailures > 0 || b.FailurePercent > 0 }

// BulkheadPolicy caps what is in flight to a destination; 0 is no limit.
type BulkheadPolicy struct {
	MaxConnections, MaxPending, MaxActive, MaxRetries int
}

// Enabled reports whether any cap is set.
func (b *BulkheadPolicy) Enabled() bool { return *b != BulkheadPolicy{} }

// FallbackPolicy is what a request is answered while its destination's
// circuit is open or its bulkhead full: a stale response when Stale is
// set and one is kept, else Static when set.
type FallbackPolicy struct {
	Stale  *StalePolicy  // nil: none
	Static *StaticPolicy // nil: none
}

// Enabled reports whether there is a fallback.
func (f *FallbackPolicy) Enabled() bool { return f.Stale != nil || f.Static != nil }

// StalePolicy bounds the responses kept for stale fallbacks. One cache
// is kept per StalePolicy: the Policies that take their fallback from
// the same level (a destination's own and its routes' that set none)
// share it.
type StalePolicy struct {
	MaxAge   time.Duration
	MaxBytes int64
}

// StaticPolicy is a configured response. Header's keys are canonical; it
// is shared: copy it into a response, never hand it out.
type StaticPolicy struct {
	Status int
	Header http.Header
	Body   []byte
}

// MirrorPolicy is where and how much to mirror. The Policies that take
// their mirror from the same level (a destination's own and its routes'
// that set none) share one MirrorPolicy, and so its MaxConcurrent.
type MirrorPolicy struct {
	// Addr is Host and Port joined.
	Addr string
	Host string // a lower-case name or an IP address
	Port uint16
	// Percent is the share of requests copied, 0 to 100.
	Percent       float64
	MaxConcurrent int
	MaxBodyBytes  int64
}

// Enabled reports whether any request is mirrored.
func (m *MirrorPolicy) Enabled() bool { return m != nil && m.Percent > 0 }

// FaultPolicy is the faults injected into HTTP requests.
type FaultPolicy struct {
	// Delay, for DelayPercent of requests; 0: none.
	Delay        time.Duration
	DelayPercent float64
	// AbortStatus answers AbortPercent of requests (0: requests that
	// are not gRPC are not aborted); AbortGRPC, when not codes.OK, is
	// what gRPC requests are answered instead.
	AbortStatus  int
	AbortGRPC    codes.Code
	AbortPercent float64
}

// Enabled reports whether any request may meet a fault.
func (f *FaultPolicy) Enabled() bool {
	return f.Delay > 0 && f.DelayPercent > 0 || (f.AbortStatus != 0 || f.AbortGRPC != codes.OK) && f.AbortPercent > 0
}

// TCPFaultPolicy is the faults injected into opaque TCP connections.
type TCPFaultPolicy struct {
	// Delay, for DelayPercent of connections; 0: none.
	Delay        time.Duration
	DelayPercent float64
	// ResetPercent of connections are reset.
	ResetPercent float64
}

// Enabled reports whether any connection may meet a fault.
func (f *TCPFaultPolicy) Enabled() bool {
	return f.Delay > 0 && f.DelayPercent > 0 || f.ResetPercent > 0
}

// builtinPolicy is the policy of a nil Table.
var builtinPolicy = func() *DestPolicy {
	t, err := New(Config{})
	if err != nil {
		panic(err)
	}
	return t.def
}()

// New compiles cfg into a Table. It returns Validate's error when cfg
// does not validate.
func New(cfg Config) (*Table, error) {
	if err := Validate(cfg); err != nil {
		return nil, err
	}
	def := cfg.Defaults
	if def == nil {
		def = &Defaults{}
	}
	taken := map[string]bool{DefaultName: true}
	for _, d := range cfg.Destinations {
		taken[d.Name] = true
	}
	t := &Table{}
	for _, d := range cfg.Destinations {
		name := d.Name
		if name == "" {
			name = unique(destName(d.Match), taken)
		}
		dp := compileDest(d, def, name)
		t.entries = append(t.entries, entry{match: compileMatch(d.Match), pol: dp})
		t.all = append(t.all, dp)
	}
	t.def = compileDest(Destination{}, def, DefaultName)
	t.def.builtin = true
	t.all = append(t.all, t.def)
	return t, nil
}

// Lookup returns the policy of the first destination entry whose match
// holds for dst, else the default one. It does not allocate.
func (t *Table) Lookup(dst Dest) *DestPolicy {
	if t == nil || t.def == nil {
		return builtinPolicy
	}
	for i := range t.entries {
		if t.entries[i].match.matches(&dst) {
			return t.entries[i].pol
		}
	}
	return t.def
}

// Default returns the policy of destinations no entry matches.
func (t *Table) Default() *DestPolicy {
	if t == nil || t.def == nil {
		return builtinPolicy
	}
	return t.def
}

// Destinations returns every DestPolicy Lookup may return: the entries'
// in config order, then Default's.
func (t *Table) Destinations() []*DestPolicy {
	if t == nil || t.def == nil {
		return []*DestPolicy{builtinPolicy}
	}
	return slices.Clone(t.all)
}

// Key is the destination's name: the destination label of its metrics,
// its name in logs, and the key of the state kept per destination (retry
// budget, circuit breakers, bulkhead), which a reload that keeps the
// name may keep. DefaultName for the built-in policy, which every
// destination no entry matches shares: state kept per destination
// should be kept per destination address for it (see IsDefault).
func (d *DestPolicy) Key() string { return d.name }

// IsDefault reports whether d is the policy of destinations no entry
// matches.
func (d *DestPolicy) IsDefault() bool { return d.builtin }

// Policy returns the destination's own settings, those of its requests
// no route matches and of its connections.
func (d *DestPolicy) Policy() *Policy { return &d.base }

// Route returns the settings of a request: those of the first route
// whose match holds for method and path (the path normalised, as
// policy.NormalizePath returns it), else the destination's own. It does
// not allocate.
func (d *DestPolicy) Route(method, path string) *Policy {
	if len(d.routes) > 0 {
		m := MethodOf(method)
		for i := range d.routes {
			r := &d.routes[i]
			if r.methods != 0 && r.methods&m == 0 {
				continue
			}
			if !r.anyPath && !r.paths.Match(path) {
				continue
			}
			return &r.pol
		}
	}
	return &d.base
}

// Dest returns the destination p is a policy of.
func (p *Policy) Dest() *DestPolicy { return p.dest }

// RouteName is the name of the route p is of; "" for the destination's
// own settings.
func (p *Policy) RouteName() string { return p.routeName }

func (m *destMatch) matches(d *Dest) bool {
	if m.ports != nil && !slices.Contains(m.ports, d.Port) {
		return false
	}
	if m.cidrs != nil {
		ip, in := d.IP.Unmap(), false
		for _, p := range m.cidrs {
			if p.Contains(ip) {
				in = true
				break
			}
		}
		if !in {
			return false
		}
	}
	if !m.anyIDs && (d.Identity.IsZero() || !m.ids.Match(d.Identity.String())) {
		return false
	}
	if !m.anyHost {
		for _, n := range d.Names {
			if m.hosts.Match(n) {
				return true
			}
		}
		return false
	}
	return true
}

func compileMatch(m *Match) destMatch {
	c := destMatch{ports: slices.Clone(m.Ports), anyHost: m.Hosts == nil, anyIDs: m.Identities == nil}
	if m.Hosts != nil {
		c.hosts = policy.CompileHosts(m.Hosts)
	}
	if m.Identities != nil {
		c.ids = policy.CompilePatterns(m.Identities)
	}
	if m.CIDRs != nil {
		for _, p := range m.CIDRs {
			c.cidrs = append(c.cidrs, p.Masked())
		}
	}
	return c
}

func compileDest(d Destination, def *Defaults, name string) *DestPolicy {
	dp := &DestPolicy{name: name}
	ts := []*Timeouts{d.Timeouts, def.Timeouts}
	rs := []*Retries{d.Retries, def.Retries}

	b := first(budgetOf(d.Retries), budgetOf(def.Retries))
	dp.Budget = BudgetPolicy{Ratio: DefaultBudgetRatio, MinPerSecond: DefaultBudgetMinPerSecond}
	if b != nil {
		dp.Budget = BudgetPolicy{Ratio: or(b.Ratio, DefaultBudgetRatio), MinPerSecond: or(b.MinPerSecond, DefaultBudgetMinPerSecond)}
	}

	if cbs := []*CircuitBreaker{d.CircuitBreaker, def.CircuitBreaker}; d.CircuitBreaker != nil || def.CircuitBreaker != nil {
		dp.Breaker = compileBreaker(
			get(cbs, func(c *CircuitBreaker) *int { return c.ConsecutiveFailures }, DefaultConsecutiveFailures),
			getSection(cbs, func(c *CircuitBreaker) *FailureRate { return c.FailureRate }),
			get(cbs, func(c *CircuitBreaker) *confval.Duration { return c.OpenFor }, confval.Duration(DefaultOpenFor)),
			get(cbs, func(c *CircuitBreaker) *int { return c.HalfOpenRequests }, DefaultHalfOpenRequests))
		if e := getSection(cbs, func(c *CircuitBreaker) *EndpointBreaker { return c.PerEndpoint }); e != nil && *e != (EndpointBreaker{}) {
			dp.EndpointBreaker = compileBreaker(or(e.ConsecutiveFailures, DefaultConsecutiveFailures), e.FailureRate,
				or(e.OpenFor, confval.Duration(DefaultOpenFor)), or(e.HalfOpenRequests, DefaultHalfOpenRequests))
		}
	}

	bs := []*Bulkhead{d.Bulkhead, def.Bulkhead}
	dp.Bulkhead = BulkheadPolicy{
		MaxConnections: get(bs, func(b *Bulkhead) *int { return b.MaxConnections }, 0),
		MaxPending:     get(bs, func(b *Bulkhead) *int { return b.MaxPending }, 0),
		MaxActive:      get(bs, func(b *Bulkhead) *int { return b.MaxActive }, 0),
		MaxRetries:     get(bs, func(b *Bulkhead) *int { return b.MaxRetries }, 0),
	}

	if f := d.TCPFaults; f != nil {
		if f.Delay != nil {
			dp.TCPFaults.Delay, dp.TCPFaults.DelayPercent = f.Delay.Duration.D(), or(f.Delay.Percent, 100)
		}
		if f.Reset != nil {
			dp.TCPFaults.ResetPercent = or(f.Reset.Percent, 100)
		}
	}

	sh := shared{fallbacks: map[*Fallback]FallbackPolicy{}, mirrors: map[*Mirror]*MirrorPolicy{}}
	dp.base = compilePolicy(dp, "", ts, rs, sh.fallback(d.Fallback), sh.mirror(d.Mirror), d.Faults)
	taken := map[string]bool{}
	for _, r := range d.Routes {
		taken[r.Name] = true
	}
	for _, r := range d.Routes {
		name := r.Name
		if name == "" {
			name = unique(routeName(r.Match), taken)
		}
		c := route{anyPath: r.Match.Paths == nil}
		for _, m := range r.Match.Methods {
			c.methods |= MethodOf(m)
		}
		if r.Match.Paths != nil {
			c.paths = policy.CompilePatterns(r.Match.Paths)
		}
		c.pol = compilePolicy(dp, name,
			[]*Timeouts{r.Timeouts, d.Timeouts, def.Timeouts},
			[]*Retries{r.Retries, d.Retries, def.Retries},
			sh.fallback(first(r.Fallback, d.Fallback)), sh.mirror(first(r.Mirror, d.Mirror)), first(r.Faults, d.Faults))
		dp.routes = append(dp.routes, c)
	}
	return dp
}

func compileBreaker(consecutive int, rate *FailureRate, openFor confval.Duration, halfOpen int) BreakerPolicy {
	b := BreakerPolicy{ConsecutiveFailures: consecutive, OpenFor: openFor.D(), HalfOpenRequests: halfOpen}
	if rate != nil && *rate != (FailureRate{}) {
		b.FailurePercent = rate.Percent
		b.FailureWindow = or(rate.Window, confval.Duration(DefaultFailureWindow)).D()
		b.FailureMinRequests = or(rate.MinRequests, DefaultFailureMinRequests)
	}
	if !b.Enabled() {
		return BreakerPolicy{}
	}
	return b
}

func compilePolicy(dp *DestPolicy, name string, ts []*Timeouts, rs []*Retries, fb FallbackPolicy, mi *MirrorPolicy, fa *Faults) Policy {
	dur := func(field func(*Timeouts) *confval.Duration) time.Duration { return get(ts, field, 0).D() }
	p := Policy{dest: dp, routeName: name}
	p.Timeouts = TimeoutPolicy{
		Connect:    dur(func(t *Timeouts) *confval.Duration { return t.Connect }),
		Request:    dur(func(t *Timeouts) *confval.Duration { return t.Request }),
		PerTry:     dur(func(t *Timeouts) *confval.Duration { return t.PerTry }),
		Idle:       dur(func(t *Timeouts) *confval.Duration { return t.Idle }),
		StreamIdle: dur(func(t *Timeouts) *confval.Duration { return t.StreamIdle }),
	}

	r := &p.Retry
	r.Attempts = get(rs, func(r *Retries) *int { return r.Attempts }, DefaultAttempts)
	for _, c := range getList(rs, func(r *Retries) []RetryOn { return r.On }, defaultOn) {
		r.On.add(c)
	}
	for _, m := range getList(rs, func(r *Retries) []string { return r.Methods }, idempotent) {
		r.Methods |= MethodOf(m)
	}
	r.Backoff = BackoffPolicy{Base: DefaultBackoffBase, Max: DefaultMaxBackoff}
	if b := getSection(rs, func(r *Retries) *Backoff { return r.Backoff }); b != nil {
		base := or(b.Base, confval.Duration(DefaultBackoffBase)).D()
		r.Backoff = BackoffPolicy{Base: base, Max: or(b.Max, confval.Duration(10*base)).D()}
	}
	r.MaxBodyBytes = get(rs, func(r *Retries) *int64 { return r.MaxBodyBytes }, DefaultMaxRetryBodyBytes)
	r.MaxRetryAfter = get(rs, func(r *Retries) *confval.Duration { return r.MaxRetryAfter }, confval.Duration(DefaultMaxRetryAfter)).D()

	p.Fallback, p.Mirror = fb, mi

	if fa != nil {
		if d := fa.Delay; d != nil {
			p.Faults.Delay, p.Faults.DelayPercent = d.Duration.D(), or(d.Percent, 100)
		}
		if a := fa.Abort; a != nil {
			p.Faults.AbortStatus, p.Faults.AbortPercent = a.Status, or(a.Percent, 100)
			if a.GRPC != "" {
				p.Faults.AbortGRPC, _ = grpcCode(a.GRPC)
			}
		}
	}
	return p
}

// shared compiles the fallbacks and mirrors of a destination's levels
// once each, so that the policies that take one from the same level share
// it, and the state kept for it.
type shared struct {
	fallbacks map[*Fallback]FallbackPolicy
	mirrors   map[*Mirror]*MirrorPolicy
}

func (sh shared) fallback(fb *Fallback) FallbackPolicy {
	if fb == nil {
		return FallbackPolicy{}
	}
	if f, ok := sh.fallbacks[fb]; ok {
		return f
	}
	var f FallbackPolicy
	if fb.Stale != nil {
		f.Stale = &StalePolicy{
			MaxAge:   or(fb.Stale.MaxAge, confval.Duration(DefaultStaleMaxAge)).D(),
			MaxBytes: or(fb.Stale.MaxBytes, DefaultStaleMaxBytes),
		}
	}
	if fb.Static != nil {
		s := &StaticPolicy{Status: fb.Static.Status, Header: http.Header{}, Body: []byte(fb.Static.Body)}
		for _, k := range sortedKeys(fb.Static.Headers) {
			s.Header.Set(k, fb.Static.Headers[k])
		}
		f.Static = s
	}
	sh.fallbacks[fb] = f
	return f
}

func (sh shared) mirror(mi *Mirror) *MirrorPolicy {
	if mi == nil || *mi == (Mirror{}) {
		return nil
	}
	if m, ok := sh.mirrors[mi]; ok {
		return m
	}
	host, port, _ := parseHostPort(mi.To) // validated
	m := &MirrorPolicy{
		Addr: net.JoinHostPort(host, strconv.Itoa(int(port))), Host: host, Port: port,
		Percent:       or(mi.Percent, 100),
		MaxConcurrent: or(mi.MaxConcurrent, DefaultMirrorMaxConcurrent),
		MaxBodyBytes:  or(mi.MaxBodyBytes, DefaultMirrorMaxBodyBytes),
	}
	sh.mirrors[mi] = m
	return m
}

func budgetOf(r *Retries) *Budget {
	if r == nil {
		return nil
	}
	return r.Budget
}

// getSection returns the section field of the narrowest level that sets
// it, nil when none does.
func getSection[S, T any](levels []*S, field func(*S) *T) *T {
	for _, l := range levels {
		if l == nil {
			continue
		}
		if p := field(l); p != nil {
			return p
		}
	}
	return nil
}

// getList is get for a list field, nil when unset.
func getList[S, V any](levels []*S, field func(*S) []V, def []V) []V {
	for _, l := range levels {
		if l == nil {
			continue
		}
		if s := field(l); s != nil {
			return s
		}
	}
	return def
}

// first returns the first of ps that is set.
func first[T any](ps ...*T) *T {
	for _, p := range ps {
		if p != nil {
			return p
		}
	}
	return nil
}

// or returns *p, or def when p is nil.
func or[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// destName derives a destination's name from its match, see
// Destination.Name.
func destName(m *Match) string {
	var b strings.Builder
	more := func(n int) {
		if n > 1 {
			b.WriteString("+" + strconv.Itoa(n-1))
		}
	}
	switch {
	case len(m.Hosts) > 0:
		b.WriteString(m.Hosts[0])
		more(len(m.Hosts))
	case len(m.Identities) > 0:
		b.WriteString(m.Identities[0])
		more(len(m.Identities))
	case len(m.CIDRs) > 0:
		b.WriteString(m.CIDRs[0].String())
		more(len(m.CIDRs))
	default:
		b.WriteString("*")
	}
	if len(m.Ports) > 0 {
		b.WriteString(":" + strconv.Itoa(int(m.Ports[0])))
		more(len(m.Ports))
	}
	return b.String()
}

// routeName derives a route's name from its match, see Route.Name.
func routeName(m *RouteMatch) string {
	var parts []string
	if len(m.Methods) > 0 {
		parts = append(parts, strings.Join(m.Methods, ","))
	}
	if len(m.Paths) > 0 {
		p := m.Paths[0]
		if len(m.Paths) > 1 {
			p += "+" + strconv.Itoa(len(m.Paths)-1)
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " ")
}

// unique returns name, or name#2, name#3, ... the first not taken, and
// takes it.
func unique(name string, taken map[string]bool) string {
	n := name
	for i := 2; taken[n]; i++ {
		n = name + "#" + strconv.Itoa(i)
	}
	taken[n] = true
	return n
}
