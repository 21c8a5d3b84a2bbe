package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultRule names the default decision where no rule decided.
const DefaultRule = "default"

// Conn is what is known of a connection when it is authorized.
type Conn struct {
	Dir Direction
	// Port is the app's port (inbound) or the destination port (outbound).
	Port uint16
	// Source is the client's verified identity; zero for a client without
	// one (plaintext). Inbound.
	Source spiffeid.ID
	// SourceIP is the client's address. Inbound.
	SourceIP netip.Addr
	// DestIP is the destination's address; DestHost, the name the app
	// resolved it by ("" when unknown); DestID, the identity its sidecar
	// must present (zero: not in the mesh). Outbound.
	DestIP   netip.Addr
	DestHost string
	DestID   spiffeid.ID
}

// Request is what policy reads of an HTTP request.
type Request interface {
	Method() string
	Target() string    // the request target as sent
	Authority() string // Host or :authority
	Has(name string) bool
	Get(name string) string // the first value, "" if none
}

// Claims are a validated JWT's claims.
type Claims interface {
	// Lookup returns the claim at the path of nested keys.
	Lookup(path ...string) (any, bool)
}

// RuleRef is a compiled rule as decisions name it.
type RuleRef struct {
	Index  int // in policy.rules
	Name   string
	Policy string // "main" when the rule names none
	Action Action
	DryRun bool
	Reveal bool // tell the caller when it denies

	dir   Direction
	ports []uint16 // none: every port
}

// Decision is what was decided, and by which rule.
type Decision struct {
	Allowed bool
	// Rule decided; nil: the default.
	Rule *RuleRef
	// Reason says why, naming the condition that matched or failed. Set
	// for denials; for allows only by Explain.
	Reason string
	// Reveal: the caller may be told Reason.
	Reveal bool
	// Reports are what audit and dryRun rules found, which change
	// nothing.
	Reports []Report
}

// RuleName is the deciding rule's name, or DefaultRule.
func (d *Decision) RuleName() string {
	if d.Rule == nil {
		return DefaultRule
	}
	return d.Rule.Name
}

// PolicyName is the deciding rule's policy, or DefaultRule.
func (d *Decision) PolicyName() string {
	if d.Rule == nil {
		return DefaultRule
	}
	return d.Rule.Policy
}

// Report is an audit rule's match, or what a dryRun rule would have
// decided.
type Report struct {
	Rule   *RuleRef
	Result string // ResultAudited, ResultDryRunAllowed or ResultDryRunDenied
	Reason string
}

// The results of decisions, as the metric's result label says them.
const (
	ResultAllowed       = "allowed"
	ResultDenied        = "denied"
	ResultAudited       = "audited"
	ResultDryRunAllowed = "dry-run-allowed"
	ResultDryRunDenied  = "dry-run-denied"
)

// Options are what Compile needs beyond the rules.
type Options struct {
	// RevealReason is policy.revealReason: whether callers are told why
	// they were denied, for rules that do not say, and for the default.
	RevealReason bool
	// OpaquePorts are the ports declared opaque (protocols.ports): no
	// connection to them is HTTP, so a rule with HTTP or JWT conditions
	// and no ports of its own does not apply to them (it could never
	// allow there, and a deny rule would deny every connection).
	OpaquePorts []uint16
}

// Engine is compiled rules. It is safe for concurrent use and never
// changes: a reload compiles a new one.
type Engine struct {
	rules   []*rule
	refs    []*RuleRef
	enforce [2]ruleset // by direction index
	shadow  [2]ruleset // as if dryRun rules were enforced; empty when none
	hasDry  bool
	reveal  bool
	opaque  map[uint16]bool
}

// Rules returns the compiled rules, in config order.
func (e *Engine) Rules() []*RuleRef { return e.refs }

// Empty reports whether the engine has no rule for dir: connections and
// requests that way need not ask it.
func (e *Engine) Empty(dir Direction) bool {
	d := dirIndex(dir)
	return len(e.enforce[d].any.rules) == 0 && len(e.enforce[d].byPort) == 0 && len(e.shadow[d].any.rules) == 0 && len(e.shadow[d].byPort) == 0
}

func dirIndex(d Direction) int {
	if d == Outbound {
		return 1
	}
	return 0
}

// ruleset is the rules of one direction, by port.
type ruleset struct {
	byPort map[uint16]*portRules
	any    portRules // rules with no ports: every port not in byPort
}

// portRules is the rules that apply to one port, in config order.
type portRules struct {
	rules []*rule
	// byCaller indexes the rules that only a caller of one of a few
	// exact identities can match (from.identities lists no pattern),
	// by identity; rest are the others. A connection looks at its
	// caller's and the rest, not at every rule.
	byCaller map[string][]*rule
	rest     []*rule
	// allowApplies: an (enforced) allow rule applies, so the default is
	// deny.
	allowApplies bool
	allows       []*rule // the allow rules, for the reason of a default deny
}

// candidates calls fn with the rules of pr that c's caller may match,
// in config order, until fn returns false.
func (pr *portRules) candidates(c *Conn, fn func(*rule) bool) {
	if pr.byCaller == nil {
		for _, r := range pr.rules {
			if !fn(r) {
				return
			}
		}
		return
	}
	var mine []*rule
	if !c.Source.IsZero() {
		mine = pr.byCaller[c.Source.String()]
	}
	// Merge the caller's rules with the rest, by index.
	i, j := 0, 0
	for i < len(mine) || j < len(pr.rest) {
		var r *rule
		if j == len(pr.rest) || i < len(mine) && mine[i].ref.Index < pr.rest[j].ref.Index {
			r, i = mine[i], i+1
		} else {
			r, j = pr.rest[j], j+1
		}
		if !fn(r) {
			return
		}
	}
}

func (s *ruleset) forPort(port uint16) *portRules {
	if pr, ok := s.byPort[port]; ok {
		return pr
	}
	return &s.any
}

// rule is a compiled Rule.
type rule struct {
	ref *RuleRef
	// callers are the exact identities one of which a caller must have
	// for the rule to match (from.identities without patterns); nil:
	// any caller may.
	callers []string
	l4      []cond // on the connection
	l7      []cond // on the request: HTTP and JWT
	http    bool   // has HTTP conditions (not only JWT)
}

// cond is one compiled condition.
type cond struct {
	field string // the config field, e.g. "from.namespaces" or "http.not.paths"
	want  string // what it lists, for explain
	neg   bool   // under not: holds when the test fails
	l4    func(c *Conn) bool
	l7    func(r Request, cl Claims) bool
	found func(c *Conn, r Request, cl Claims) string // what was there, for reasons
}

func (c *cond) holds(cn *Conn, r Request, cl Claims) bool {
	var ok bool
	if c.l4 != nil {
		ok = c.l4(cn)
	} else {
		ok = c.l7(r, cl)
	}
	return ok != c.neg
}

// Compile compiles rules, which must have passed Validate.
func Compile(rules []Rule, o Options) (*Engine, error) {
	e := &Engine{reveal: o.RevealReason, opaque: map[uint16]bool{}}
	for _, port := range o.OpaquePorts {
		e.opaque[port] = true
	}
	for i, r := range rules {
		cr, err := compileRule(i, r, o)
		if err != nil {
			return nil, fmt.Errorf("policy.rules[%d]: %w", i, err)
		}
		e.rules = append(e.rules, cr)
		e.refs = append(e.refs, cr.ref)
		if r.DryRun {
			e.hasDry = true
		}
	}
	for d := range 2 {
		e.enforce[d] = e.build(d, false)
		if e.hasDry {
			e.shadow[d] = e.build(d, true)
		}
	}
	return e, nil
}

// build indexes the rules of direction d by port; withDry includes the
// dryRun rules as if they were enforced.
func (e *Engine) build(d int, withDry bool) ruleset {
	s := ruleset{byPort: map[uint16]*portRules{}}
	var ports []uint16
	for _, r := range e.rules {
		if dirIndex(r.ref.dir) != d {
			continue
		}
		ports = append(ports, r.ref.ports...)
		if len(r.ref.ports) == 0 && len(r.l7) > 0 {
			// Not for the opaque ports, which get rules of their own.
			for port := range e.opaque {
				ports = append(ports, port)
			}
		}
	}
	slices.Sort(ports)
	ports = slices.Compact(ports)
	add := func(pr *portRules, r *rule) {
		if r.ref.DryRun && !withDry {
			return
		}
		pr.rules = append(pr.rules, r)
		if ids := r.callers; ids != nil {
			if pr.byCaller == nil {
				pr.byCaller = map[string][]*rule{}
			}
			for _, id := range ids {
				pr.byCaller[id] = append(pr.byCaller[id], r)
			}
		} else {
			pr.rest = append(pr.rest, r)
		}
		if r.ref.Action == Allow {
			pr.allowApplies = true
			pr.allows = append(pr.allows, r)
		}
	}
	for _, port := range ports {
		pr := &portRules{}
		for _, r := range e.rules {
			if dirIndex(r.ref.dir) == d && e.applies(r, port) {
				add(pr, r)
			}
		}
		s.byPort[port] = pr
	}
	for _, r := range e.rules {
		if dirIndex(r.ref.dir) == d && len(r.ref.ports) == 0 {
			add(&s.any, r)
		}
	}
	if len(s.byPort) == 0 {
		s.byPort = nil
	}
	return s
}

// applies reports whether r applies to port: a port of its own, or any
// (but, for a rule with HTTP or JWT conditions, one declared opaque).
func (e *Engine) applies(r *rule, port uint16) bool {
	if len(r.ref.ports) == 0 {
		return len(r.l7) == 0 || !e.opaque[port]
	}
	return slices.Contains(r.ref.ports, port)
}

func compileRule(i int, r Rule, o Options) (*rule, error) {
	ref := &RuleRef{Index: i, Name: r.Name, Policy: r.Policy, Action: r.Action, DryRun: r.DryRun, Reveal: o.RevealReason}
	if ref.Policy == "" {
		ref.Policy = "main"
	}
	if r.RevealReason != nil {
		ref.Reveal = *r.RevealReason
	}
	ref.dir = r.Direction
	if ref.dir == "" {
		ref.dir = Inbound
	}
	ref.ports = slices.Clone(r.Ports)
	cr := &rule{ref: ref}
	var err error
	if r.From != nil {
		if ids := r.From.Identities; len(ids) > 0 && !slices.ContainsFunc(ids, func(s string) bool { return strings.Contains(s, "*") }) {
			cr.callers = slices.Compact(slices.Sorted(slices.Values(ids)))
		}
		cr.l4 = append(cr.l4, sourceConds("from", r.From, false)...)
		if r.From.Not != nil {
			cr.l4 = append(cr.l4, sourceConds("from.not", r.From.Not, true)...)
		}
	}
	if r.To != nil {
		cr.l4 = append(cr.l4, destConds("to", r.To, false)...)
		if r.To.Not != nil {
			cr.l4 = append(cr.l4, destConds("to.not", r.To.Not, true)...)
		}
	}
	if r.HTTP != nil {
		var cs []cond
		if cs, err = httpConds("http", r.HTTP, false); err != nil {
			return nil, err
		}
		cr.l7 = append(cr.l7, cs...)
		if r.HTTP.Not != nil {
			if cs, err = httpConds("http.not", r.HTTP.Not, true); err != nil {
				return nil, err
			}
			cr.l7 = append(cr.l7, cs...)
		}
		cr.http = true
	}
	if r.JWT != nil {
		// A JWT condition needs a token, even negated: a request
		// without one meets the rule's jwt section not at all.
		cr.l7 = append(cr.l7, cond{field: "jwt", want: "[a validated token]",
			l7:    func(_ Request, cl Claims) bool { return cl != nil },
			found: func(_ *Conn, _ Request, cl Claims) string { return tokenFound(cl) }})
		cr.l7 = append(cr.l7, jwtConds("jwt", r.JWT, false)...)
		if r.JWT.Not != nil {
			cr.l7 = append(cr.l7, jwtConds("jwt.not", r.JWT.Not, true)...)
		}
	}
	return cr, nil
}

func tokenFound(cl Claims) string {
	if cl == nil {
		return "no validated token"
	}
	iss, _ := cl.Lookup("iss")
	return fmt.Sprintf("a token of %v", iss)
}

func listed(ss []string) string {
	if len(ss) > 6 {
		return "[" + strings.Join(ss[:6], ", ") + fmt.Sprintf(", … %d more]", len(ss)-6)
	}
	return "[" + strings.Join(ss, ", ") + "]"
}

func listedPrefixes(ps []netip.Prefix) string {
	ss := make([]string, len(ps))
	for i, p := range ps {
		ss[i] = p.String()
	}
	return listed(ss)
}

func peerFound(c *Conn, _ Request, _ Claims) string {
	if c.Source.IsZero() {
		return "no identity (plaintext)"
	}
	return c.Source.String()
}

func sourceConds(field string, s *Source, neg bool) []cond {
	var cs []cond
	if s.Identities != nil {
		p := compilePatterns(s.Identities)
		cs = append(cs, cond{field: field + ".identities", want: listed(s.Identities), neg: neg,
			l4:    func(c *Conn) bool { return !c.Source.IsZero() && p.match(c.Source.String()) },
			found: peerFound})
	}
	if s.TrustDomains != nil {
		m := newSet(s.TrustDomains)
		cs = append(cs, cond{field: field + ".trustDomains", want: listed(s.TrustDomains), neg: neg,
			l4:    func(c *Conn) bool { return !c.Source.IsZero() && m.has(c.Source.TrustDomain().Name()) },
			found: peerFound})
	}
	if s.Namespaces != nil {
		cs = append(cs, idPartCond(field+".namespaces", "namespace", s.Namespaces, neg, func(id spiffeid.ID) (string, bool) {
			ns, _, ok := nsSA(id)
			return ns, ok
		}))
	}
	if s.ServiceAccounts != nil {
		cs = append(cs, idPartCond(field+".serviceAccounts", "service account", s.ServiceAccounts, neg, func(id spiffeid.ID) (string, bool) {
			_, sa, ok := nsSA(id)
			return sa, ok
		}))
	}
	if s.CIDRs != nil {
		m := cidrs(s.CIDRs)
		cs = append(cs, cond{field: field + ".cidrs", want: listedPrefixes(s.CIDRs), neg: neg,
			l4:    func(c *Conn) bool { return c.SourceIP.IsValid() && m.match(c.SourceIP) },
			found: func(c *Conn, _ Request, _ Claims) string { return "address " + c.SourceIP.String() }})
	}
	if s.Unauthenticated != nil {
		want := *s.Unauthenticated
		cs = append(cs, cond{field: field + ".unauthenticated", want: fmt.Sprint(want), neg: neg,
			l4:    func(c *Conn) bool { return c.Source.IsZero() == want },
			found: peerFound})
	}
	return cs
}

// idPartCond is a condition on a part of the caller's SPIFFE ID (its
// namespace, its service account), called what in reasons.
func idPartCond(field, what string, vals []string, neg bool, part func(spiffeid.ID) (string, bool)) cond {
	m := newSet(vals)
	return cond{field: field, want: listed(vals), neg: neg,
		l4: func(c *Conn) bool {
			v, ok := part(c.Source)
			return ok && m.has(v)
		},
		found: func(c *Conn, _ Request, _ Claims) string {
			if v, ok := part(c.Source); ok {
				return what + " " + v
			}
			return peerFound(c, nil, nil)
		}}
}

// nsSA returns the namespace and service account of an ID of the form
// spiffe://td/ns/<ns>/sa/<sa>.
func nsSA(id spiffeid.ID) (ns, sa string, ok bool) {
	if id.IsZero() {
		return "", "", false
	}
	p := id.Path()
	rest, ok := strings.CutPrefix(p, "/ns/")
	if !ok {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, "/sa/")
	if !ok || strings.Contains(ns, "/") || strings.Contains(sa, "/") {
		return "", "", false
	}
	return ns, sa, true
}

func destConds(field string, d *Destination, neg bool) []cond {
	var cs []cond
	if d.Hosts != nil {
		h := compileHosts(d.Hosts)
		cs = append(cs, cond{field: field + ".hosts", want: listed(d.Hosts), neg: neg,
			l4: func(c *Conn) bool { return c.DestHost != "" && h.match(c.DestHost) },
			found: func(c *Conn, _ Request, _ Claims) string {
				if c.DestHost == "" {
					return "no name (the address was not resolved through the sidecar's DNS proxy)"
				}
				return "host " + c.DestHost
			}})
	}
	if d.Identities != nil {
		p := compilePatterns(d.Identities)
		cs = append(cs, cond{field: field + ".identities", want: listed(d.Identities), neg: neg,
			l4: func(c *Conn) bool { return !c.DestID.IsZero() && p.match(c.DestID.String()) },
			found: func(c *Conn, _ Request, _ Claims) string {
				if c.DestID.IsZero() {
					return "no mesh identity (outside the mesh)"
				}
				return c.DestID.String()
			}})
	}
	if d.CIDRs != nil {
		m := cidrs(d.CIDRs)
		cs = append(cs, cond{field: field + ".cidrs", want: listedPrefixes(d.CIDRs), neg: neg,
			l4:    func(c *Conn) bool { return m.match(c.DestIP) },
			found: func(c *Conn, _ Request, _ Claims) string { return "address " + c.DestIP.String() }})
	}
	return cs
}

func httpConds(field string, h *HTTPMatch, neg bool) ([]cond, error) {
	var cs []cond
	if h.Methods != nil {
		m := newSet(h.Methods)
		cs = append(cs, cond{field: field + ".methods", want: listed(h.Methods), neg: neg,
			l7:    func(r Request, _ Claims) bool { return r != nil && m.has(r.Method()) },
			found: func(_ *Conn, r Request, _ Claims) string { return "method " + r.Method() }})
	}
	if h.Hosts != nil {
		hs := compileHosts(h.Hosts)
		cs = append(cs, cond{field: field + ".hosts", want: listed(h.Hosts), neg: neg,
			l7:    func(r Request, _ Claims) bool { return r != nil && hs.match(r.Authority()) },
			found: func(_ *Conn, r Request, _ Claims) string { return "host " + r.Authority() }})
	}
	if h.Paths != nil {
		p := compilePatterns(h.Paths)
		cs = append(cs, cond{field: field + ".paths", want: listed(h.Paths), neg: neg,
			l7:    func(r Request, _ Claims) bool { return r != nil && p.match(NormalizePath(r.Target())) },
			found: func(_ *Conn, r Request, _ Claims) string { return "path " + NormalizePath(r.Target()) }})
	}
	names := make([]string, 0, len(h.Headers))
	for n := range h.Headers {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		hm := h.Headers[n]
		c := header{name: strings.ToLower(n), exact: hm.Exact, prefix: hm.Prefix, present: hm.Present}
		want := "= " + hm.Exact
		switch {
		case hm.Regex != "":
			re, err := regexp.Compile("^(?:" + hm.Regex + ")$")
			if err != nil {
				return nil, fmt.Errorf("%s.headers.%s.regex: %w", field, n, err)
			}
			c.re, want = re, "~ "+hm.Regex
		case hm.Prefix != "":
			want = "starts with " + hm.Prefix
		case hm.Present != nil && *hm.Present:
			want = "present"
		case hm.Present != nil:
			want = "absent"
		}
		cs = append(cs, cond{field: field + ".headers." + n, want: want, neg: neg,
			l7: func(r Request, _ Claims) bool { return r != nil && c.match(r) },
			found: func(_ *Conn, r Request, _ Claims) string {
				if !r.Has(c.name) {
					return "no " + n + " header"
				}
				return fmt.Sprintf("%s: %q", n, r.Get(c.name))
			}})
	}
	if h.GRPC != nil {
		p := compilePatterns(h.GRPC)
		cs = append(cs, cond{field: field + ".grpc", want: listed(h.GRPC), neg: neg,
			l7: func(r Request, _ Claims) bool {
				m, ok := grpcMethod(r)
				return ok && p.match(m)
			},
			found: func(_ *Conn, r Request, _ Claims) string {
				if m, ok := grpcMethod(r); ok {
					return "gRPC method " + m
				}
				return "not a gRPC request"
			}})
	}
	// globs of gRPC patterns are "svc/*": compilePatterns reads them as
	// prefixes "svc/", which is what they mean.
	return cs, nil
}

// grpcMethod returns "package.Service/Method" of a gRPC request.
func grpcMethod(r Request) (string, bool) {
	if r == nil || r.Method() != "POST" || !strings.HasPrefix(r.Get("content-type"), "application/grpc") {
		return "", false
	}
	p := NormalizePath(r.Target())
	m := p[1:]
	if strings.Count(m, "/") != 1 || strings.HasSuffix(m, "/") || strings.HasPrefix(m, "/") {
		return "", false
	}
	return m, true
}

func jwtConds(field string, j *JWTMatch, neg bool) []cond {
	var cs []cond
	if j.Issuers != nil {
		m := newSet(j.Issuers)
		cs = append(cs, cond{field: field + ".issuers", want: listed(j.Issuers), neg: neg,
			l7: func(_ Request, cl Claims) bool {
				if cl == nil {
					return false
				}
				iss, _ := cl.Lookup("iss")
				s, _ := iss.(string)
				return m.has(s)
			},
			found: func(_ *Conn, _ Request, cl Claims) string { return claimFound(cl, "iss") }})
	}
	if j.Audiences != nil {
		m := newSet(j.Audiences)
		cs = append(cs, cond{field: field + ".audiences", want: listed(j.Audiences), neg: neg,
			l7: func(_ Request, cl Claims) bool {
				if cl == nil {
					return false
				}
				v, _ := cl.Lookup("aud")
				return valueIn(v, m)
			},
			found: func(_ *Conn, _ Request, cl Claims) string { return claimFound(cl, "aud") }})
	}
	names := make([]string, 0, len(j.Claims))
	for n := range j.Claims {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		path := strings.Split(n, ".")
		m := newSet(j.Claims[n])
		cs = append(cs, cond{field: field + ".claims." + n, want: listed(j.Claims[n]), neg: neg,
			l7: func(_ Request, cl Claims) bool {
				if cl == nil {
					return false
				}
				v, _ := cl.Lookup(path...)
				return valueIn(v, m)
			},
			found: func(_ *Conn, _ Request, cl Claims) string { return claimFound(cl, path...) }})
	}
	return cs
}

func claimFound(cl Claims, path ...string) string {
	if cl == nil {
		return "no validated token"
	}
	v, ok := cl.Lookup(path...)
	if !ok {
		return "no claim " + strings.Join(path, ".")
	}
	return fmt.Sprintf("%s %v", strings.Join(path, "."), v)
}

// valueIn reports whether the claim value v is (a string, number or
// bool whose text is) in m, or is a list holding one.
func valueIn(v any, m set) bool {
	switch v := v.(type) {
	case nil:
		return false
	case string:
		return m.has(v)
	case []any:
		for _, e := range v {
			if valueIn(e, m) {
				return true
			}
		}
		return false
	case []string:
		for _, e := range v {
			if m.has(e) {
				return true
			}
		}
		return false
	case map[string]any:
		return false
	default:
		return m.has(fmt.Sprint(v))
	}
}
