package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"meshgate/proxy/jwtauth"
	"meshgate/proxy/policy"
)

// PolicyConfig is authorization (shared/DESIGN.md §5 Policy, §5b): the
// rules (package policy says what they mean) and the JWT providers whose
// tokens rules may ask for. It is hot-reloaded with the config file
// (Proxy.Reload): new connections and requests are decided by the new
// rules at once; a connection already allowed at connect time keeps that
// decision, its requests are decided by the rules it was accepted under.
type PolicyConfig struct {
	// Rules are decided in a fixed precedence: deny, then allow, then the
	// default (allow on a port no allow rule applies to, deny once one
	// does). See policy.Rule.
	Rules []policy.Rule `json:"rules"`
	// JWTProviders validate bearer tokens on inbound HTTP requests. A
	// request with a token that fails validation is refused (401); one
	// without a token goes on, and meets no rule's jwt conditions.
	JWTProviders []JWTProvider `json:"jwtProviders"`
	// RevealReason tells a denied caller which rule denied it and why,
	// in X-Meshgate-Error and the body, for rules that do not say
	// (policy.Rule.RevealReason) and for the default. Off, a denied
	// caller learns only "access denied"; the log always has the reason.
	RevealReason bool `json:"revealReason"`
}

// JWTProvider is an issuer of bearer tokens and where its keys are.
type JWTProvider struct {
	// Name names the provider in logs.
	Name string `json:"name"`
	// Issuer is the tokens' iss; a token's iss chooses its provider.
	Issuer string `json:"issuer"`
	// Audiences, if set: a token's aud must hold one of them.
	Audiences []string `json:"audiences"`
	// JWKSFile is a JWKS file, re-read when it changes; or JWKSURL, an
	// http(s) URL fetched through the mesh (mTLS when the server has a
	// sidecar) every refreshInterval, and at once (at most every 5s)
	// when a token names a key it does not hold. Exactly one.
	JWKSFile string `json:"jwksFile"`
	JWKSURL  string `json:"jwksURL"`
	// Ports are the app ports whose requests it validates; none: all.
	Ports []uint16 `json:"ports"`
	// FromHeaders are where tokens are looked for, in order; default
	// Authorization with prefix "Bearer ".
	FromHeaders []JWTHeader `json:"fromHeaders"`
	// FromParams are query parameters looked in after the headers.
	FromParams []string `json:"fromParams"`
	// OutputPayloadHeader, if set, hands the app the validated token's
	// payload (JSON, base64url) in this header.
	OutputPayloadHeader string `json:"outputPayloadHeader"`
	// OutputClaimHeaders hand the app claims (nested keys joined with
	// '.') in headers, e.g. {sub: x-user}. A header named here or in
	// outputPayloadHeader is always removed from what the client sent.
	OutputClaimHeaders map[string]string `json:"outputClaimHeaders"`
	// StripToken removes the token (its header, or its query parameter)
	// before the request goes to the app.
	StripToken bool `json:"stripToken"`
	// ClockSkew is the leeway on exp, nbf and iat.
	ClockSkew Duration `json:"clockSkew"`
	// RefreshInterval is how often the keys are fetched or re-read.
	RefreshInterval Duration `json:"refreshInterval"`
}

// JWTHeader is a header a token is sent in.
type JWTHeader struct {
	Name   string `json:"name"`
	Prefix string `json:"prefix"` // e.g. "Bearer "; "" for the whole value
}

// validate reports the problems of the policy section.
func (c PolicyConfig) validate() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	issuers := policy.Issuers{}
	names := map[string]int{}
	for i, jp := range c.JWTProviders {
		f := fmt.Sprintf("policy.jwtProviders[%d]", i)
		if jp.Name == "" {
			bad("%s.name: missing; name the provider, e.g. corp", f)
		} else if j, dup := names[jp.Name]; dup {
			bad("%s.name: %q is also policy.jwtProviders[%d].name", f, jp.Name, j)
		} else {
			names[jp.Name] = i
		}
		if jp.Issuer != "" && issuers[jp.Issuer] {
			bad("%s.issuer: %q is the issuer of another provider; a token's iss must choose one", f, jp.Issuer)
		}
		if err := jwtOptions(jp, nil).Validate(); err != nil {
			for _, e := range splitJoined(err) {
				bad("%s.%v", f, e)
			}
		}
		if jp.Issuer != "" {
			issuers[jp.Issuer] = true
		}
		for j, h := range jp.FromHeaders {
			if !validHeaderName(h.Name) {
				bad("%s.fromHeaders[%d].name: %q is not a header name", f, j, h.Name)
			}
		}
		for j, q := range jp.FromParams {
			if q == "" {
				bad("%s.fromParams[%d]: empty; name a query parameter, e.g. access_token", f, j)
			}
		}
		if h := jp.OutputPayloadHeader; h != "" && !validHeaderName(h) {
			bad("%s.outputPayloadHeader: %q is not a header name", f, h)
		}
		for claim, h := range jp.OutputClaimHeaders {
			if !validHeaderName(h) {
				bad("%s.outputClaimHeaders.%s: %q is not a header name", f, claim, h)
			}
		}
		for j, p := range jp.Ports {
			if p == 0 {
				bad("%s.ports[%d]: 0 is not a port; want a number from 1 to 65535", f, j)
			}
		}
	}
	if err := policy.Validate("policy.rules", c.Rules, issuers); err != nil {
		errs = append(errs, splitJoined(err)...)
	}
	return errs
}

// splitJoined undoes errors.Join, so that each problem is its own line
// in the config's error.
func splitJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// jwtOptions is jp as package jwtauth takes it.
func jwtOptions(jp JWTProvider, client *http.Client) jwtauth.Options {
	return jwtauth.Options{
		Name:            jp.Name,
		Issuer:          jp.Issuer,
		Audiences:       jp.Audiences,
		JWKSFile:        jp.JWKSFile,
		JWKSURL:         jp.JWKSURL,
		HTTPClient:      client,
		RefreshInterval: jp.RefreshInterval.D(),
		ClockSkew:       jp.ClockSkew.D(),
	}
}

// policyState is the policy in effect: the compiled rules, the JWT
// providers (their keys refreshed by a goroutine of their own) and the
// decision counters. A reload swaps in a new one.
type policyState struct {
	cfg       PolicyConfig
	eng       *policy.Engine
	providers []*tokenSource // nil: no JWT stage
	jwt       *jwtauth.Set
	counters  []ruleCounters // by rule index
	defaults  [2]ruleCounters
	// stop ends the providers' refreshing; done is closed when it has.
	stop context.CancelFunc
	done chan struct{}
	// allowed is the decision of every connection allowed outright under
	// this state (shared: one allocation less per connection).
	allowed *authzAt
}

// tokenSource is a JWT provider as the JWT stage uses it.
type tokenSource struct {
	cfg   JWTProvider
	ports map[uint16]bool // nil: every port
	prov  *jwtauth.Provider
	from  []JWTHeader // cfg.FromHeaders, or the default Authorization: Bearer
}

// The results a rule's counters count.
var results = [...]string{policy.ResultAllowed, policy.ResultDenied, policy.ResultAudited, policy.ResultDryRunAllowed, policy.ResultDryRunDenied}

// ruleCounters are a rule's children of the decisions counter, by
// result, made on first use.
type ruleCounters [len(results)]atomic.Pointer[counterBox]

type counterBox struct{ c prometheus.Counter }

// newPolicyState compiles cfg and makes its JWT providers (a JWKS file
// is read here; a URL is fetched once running). A provider prev has with
// the same config is taken over with its keys, so that a reload does not
// leave tokens without keys until a fetch.
func (p *Proxy) newPolicyState(cfg PolicyConfig, prev *policyState) (*policyState, error) {
	eng, err := policy.Compile(cfg.Rules, policyOptions(cfg, p.cfg.Protocols))
	if err != nil {
		return nil, err
	}
	st := &policyState{cfg: cfg, eng: eng, counters: make([]ruleCounters, len(cfg.Rules))}
	st.allowed = &authzAt{st: st}
	var provs []*jwtauth.Provider
	for i, jp := range cfg.JWTProviders {
		var pr *jwtauth.Provider
		if prev != nil {
			for _, old := range prev.providers {
				if reflect.DeepEqual(old.cfg, jp) {
					pr = old.prov
				}
			}
		}
		if pr == nil {
			o := jwtOptions(jp, nil)
			if jp.JWKSURL != "" {
				o.HTTPClient = p.meshHTTPClient()
			}
			o.Log = p.log.Named("jwt")
			var err error
			if pr, err = jwtauth.New(o); err != nil {
				return nil, fmt.Errorf("policy.jwtProviders[%d]: %w", i, err)
			}
		}
		provs = append(provs, pr)
		ts := &tokenSource{cfg: jp, prov: pr}
		if len(jp.Ports) > 0 {
			ts.ports = map[uint16]bool{}
			for _, port := range jp.Ports {
				ts.ports[port] = true
			}
		}
		if len(jp.FromHeaders) == 0 && len(jp.FromParams) == 0 {
			ts.from = []JWTHeader{{Name: "Authorization", Prefix: "Bearer "}}
		} else {
			ts.from = jp.FromHeaders
		}
		st.providers = append(st.providers, ts)
	}
	if len(provs) > 0 {
		if st.jwt, err = jwtauth.NewSet(provs...); err != nil {
			return nil, fmt.Errorf("policy.jwtProviders: %w", err)
		}
	}
	return st, nil
}

// policyOptions are what the policy engine needs of the config.
func policyOptions(pc PolicyConfig, protocols ProtocolsConfig) policy.Options {
	o := policy.Options{RevealReason: pc.RevealReason}
	for port, decl := range protocols.Ports {
		if decl == PortOpaque {
			o.OpaquePorts = append(o.OpaquePorts, port)
		}
	}
	return o
}

// start runs the state's JWT key refreshing until stopped.
func (st *policyState) start() {
	ctx, cancel := context.WithCancel(context.Background())
	st.stop, st.done = cancel, make(chan struct{})
	go func() {
		defer close(st.done)
		if st.jwt != nil {
			st.jwt.Run(ctx)
		}
	}()
}

// close stops the state's refreshing and waits for it.
func (st *policyState) close() {
	if st.stop != nil {
		st.stop()
		<-st.done
	}
}

// authorize is what policy decides of c with what is known at connect
// time (policy.Engine.Connection), nil when no rule applies to it.
func authorize(st *policyState, c policy.Conn) *policy.ConnDecision {
	if st.eng.Empty(c.Dir) {
		return nil
	}
	d := st.eng.Connection(c)
	if d.NoRules() {
		return nil
	}
	return d
}

// connAuthz is a connection's authorization: what policy decided of it
// at connect time, and, for its HTTP requests, decided anew once the
// policy is reloaded, so that a change reaches the requests of
// long-lived (pooled) connections as well as new ones.
type connAuthz struct {
	c   policy.Conn
	dir Direction
	cur atomic.Pointer[authzAt]
	// out, when valid, is an outbound connection's destination, whose
	// facts (its name, its identity: c) are looked up only once a policy
	// has outbound rules.
	out   netip.AddrPort
	facts sync.Once
}

// authzAt is a connection's decision under one policy.
type authzAt struct {
	st *policyState
	// d is nil when the connection is allowed outright (counted once,
	// when decided) or no rule applies to it; otherwise denied, or left
	// to its requests.
	d *policy.ConnDecision
}

// authorizeConn decides c under the policy in effect.
func (p *Proxy) authorizeConn(c policy.Conn, dir Direction) *connAuthz {
	a := &connAuthz{c: c, dir: dir}
	a.decide(p, p.policy.Load())
	return a
}

// authorizeOut decides the app's connection to dst under the policy in
// effect.
func (p *Proxy) authorizeOut(dst netip.AddrPort) *connAuthz {
	a := &connAuthz{c: policy.Conn{Dir: policy.Outbound}, dir: Outbound, out: dst}
	a.decide(p, p.policy.Load())
	return a
}

func (a *connAuthz) decide(p *Proxy, st *policyState) *policy.ConnDecision {
	var d *policy.ConnDecision
	pd := policy.Inbound
	if a.dir == Outbound {
		pd = policy.Outbound
	}
	if !st.eng.Empty(pd) {
		if a.out.IsValid() {
			a.facts.Do(func() { a.c = p.outboundConn(a.out) })
		}
		d = authorize(st, a.c)
	}
	if d != nil {
		if f := d.Final(); f != nil && f.Allowed {
			p.countDecision(st, a.dir, f)
			d = nil
		}
	}
	if d == nil {
		a.cur.Store(st.allowed)
	} else {
		a.cur.Store(&authzAt{st: st, d: d})
	}
	return d
}

// pending is the connection's decision when it was made: nil when it is
// allowed outright; a final deny; or one its requests decide.
func (a *connAuthz) pending() *policy.ConnDecision {
	if a == nil {
		return nil
	}
	return a.cur.Load().d
}

// forRequest is the decision the connection's next request is to get
// (see pending), decided anew if the policy changed.
func (a *connAuthz) forRequest(p *Proxy) (*policyState, *policy.ConnDecision) {
	st := p.policy.Load()
	if a == nil {
		return st, nil
	}
	if at := a.cur.Load(); at.st == st {
		return st, at.d
	}
	return st, a.decide(p, st)
}

// dialEarly reports whether the app may be dialed before a client's
// first bytes (while detecting) under d: only when the client is
// allowed outright.
func dialEarly(d *policy.ConnDecision) bool {
	return d == nil || d.Final() != nil && d.Final().Allowed
}

// inboundConn is policy's view of an inbound connection from src to the
// app's port, by the client peer (zero: plaintext).
func inboundConn(port uint16, src netip.AddrPort, peer spiffeid.ID) policy.Conn {
	return policy.Conn{Dir: policy.Inbound, Port: port, Source: peer, SourceIP: src.Addr().Unmap()}
}

// outboundConn is policy's view of the app's connection to dst.
func (p *Proxy) outboundConn(dst netip.AddrPort) policy.Conn {
	c := policy.Conn{Dir: policy.Outbound, Port: dst.Port(), DestIP: dst.Addr().Unmap()}
	if p.names != nil {
		c.DestHost, _ = p.names.NameOf(c.DestIP)
	}
	if p.mesh.inMesh(c.DestIP) {
		if id := p.mesh.expected(c.DestIP); id != nil {
			c.DestID = *id
		}
	}
	return c
}

// HostNamer says which name the app resolved an address by: package
// discovery's DNS proxy is one. Outbound policy rules match it (to.hosts).
type HostNamer interface {
	NameOf(a netip.Addr) (string, bool)
}

// WithHostNames has outbound policy learn destination names from n.
func WithHostNames(n HostNamer) Option {
	return func(p *Proxy) { p.names = n }
}

// connDenied is a connection refused by policy (the error of its
// outcome); the reason names the rule.
type connDenied struct{ d policy.Decision }

func (e *connDenied) Error() string { return "denied by policy: " + e.d.Reason }

// refuseByPolicy is the outcome of a connection policy denied, counted.
func (p *Proxy) refuseByPolicy(o outcome, az *connAuthz, d policy.Decision) outcome {
	p.countDecision(az.cur.Load().st, az.dir, &d)
	o.err, o.refused = &connDenied{d}, true
	o.reason = "policy: " + d.RuleName()
	return o
}

// noCall reports whether a connection policy has yet to allow needs no
// decision: its client closed before sending a byte (d), so it called
// nothing (a sidecar's spare connection, a TCP health check). It is
// closed, not counted or logged as a denial; its app was never dialed.
func noCall(d detection, az *connAuthz) bool {
	return d.by == byClosed && az.pending() != nil
}

// opaqueAllowed decides a connection that is not HTTP and counts the
// decision; false: refuse it (refuseByPolicy with the decision).
func (p *Proxy) opaqueAllowed(az *connAuthz) (policy.Decision, bool) {
	pd := az.pending()
	if pd == nil {
		return policy.Decision{Allowed: true}, true
	}
	d := pd.Opaque()
	if d.Allowed {
		p.countDecision(az.cur.Load().st, az.dir, &d)
	}
	return d, d.Allowed
}

// countDecision counts d and its reports, and logs the reports (denials
// are logged with their connection or request).
func (p *Proxy) countDecision(st *policyState, dir Direction, d *policy.Decision) {
	res := 0 // allowed
	if !d.Allowed {
		res = 1
	}
	p.decisionCounter(st, dir, d.Rule, res).Inc()
	for i := range d.Reports {
		r := &d.Reports[i]
		idx := slices.Index(results[:], r.Result)
		p.decisionCounter(st, dir, r.Rule, idx).Inc()
		if ce := p.log.Check(zap.InfoLevel, "policy "+r.Result); ce != nil {
			name, pol := policy.DefaultRule, policy.DefaultRule
			if r.Rule != nil {
				name, pol = r.Rule.Name, r.Rule.Policy
			}
			ce.Write(zap.String("direction", dir.String()), zap.String("policy", pol), zap.String("rule", name),
				zap.String("reason", r.Reason))
		}
	}
}

func (p *Proxy) decisionCounter(st *policyState, dir Direction, r *policy.RuleRef, res int) prometheus.Counter {
	rc := &st.defaults[dir]
	pol, name, action := policy.DefaultRule, policy.DefaultRule, "default"
	if r != nil && r.Index < len(st.counters) {
		rc = &st.counters[r.Index]
		pol, name, action = r.Policy, r.Name, string(r.Action)
	}
	if b := rc[res].Load(); b != nil {
		return b.c
	}
	c := p.metrics.policyDecisions.WithLabelValues(dir.String(), pol, name, action, results[res])
	rc[res].Store(&counterBox{c})
	return c
}

// authzStage is the authorization of HTTP requests: the connection's
// decision, or, where rules have HTTP or JWT conditions, the request's.
type authzStage struct{ p *Proxy }

func (authzStage) Name() string { return "policy" }

func (s authzStage) Decide(r *Request) *Answer {
	st, cd := r.authz.forRequest(s.p)
	if cd == nil {
		return nil
	}
	var cl policy.Claims
	if r.claims != nil {
		cl = r.claims
	}
	d := cd.Request(r, cl)
	s.p.countDecision(st, r.Dir, &d)
	if d.Allowed {
		return nil
	}
	a := &Answer{Status: http.StatusForbidden, Reason: "access denied", grpcStatus: grpcPermissionDenied,
		logReason: "denied by rule " + d.RuleName() + " (policy " + d.PolicyName() + "): " + d.Reason}
	if d.Reveal {
		a.Reason = a.logReason
	}
	return a
}

// The gRPC status codes the proxy answers with.
const (
	grpcPermissionDenied = 7
	grpcUnauthenticated  = 16
)

// jwtStage validates the bearer token of inbound HTTP requests, refusing
// a request whose token fails (401), and hands the policy stage the
// validated claims.
type jwtStage struct{ p *Proxy }

func (jwtStage) Name() string { return "jwt" }

func (s jwtStage) Decide(r *Request) *Answer {
	r.claims = nil
	st := s.p.policy.Load()
	if st.jwt == nil || r.Dir != Inbound {
		return nil
	}
	port := r.Dst.Port()
	var (
		tok   string
		from  *tokenSource
		hdr   string // the header the token came in, or
		param string // the query parameter
	)
	for _, ts := range st.providers {
		if ts.ports != nil && !ts.ports[port] {
			continue
		}
		// Headers the provider hands the app are the sidecar's to set.
		if ts.cfg.OutputPayloadHeader != "" {
			r.DelAlike(ts.cfg.OutputPayloadHeader)
		}
		for _, h := range ts.cfg.OutputClaimHeaders {
			r.DelAlike(h)
		}
		if tok != "" {
			continue
		}
		for _, h := range ts.from {
			v := r.Get(h.Name)
			if v == "" {
				continue
			}
			if h.Prefix != "" {
				if len(v) < len(h.Prefix) || !strings.EqualFold(v[:len(h.Prefix)], h.Prefix) {
					continue
				}
				v = strings.TrimSpace(v[len(h.Prefix):])
			}
			tok, from, hdr = v, ts, h.Name
			break
		}
		if tok == "" && len(ts.cfg.FromParams) > 0 {
			if _, q, ok := strings.Cut(r.Target(), "?"); ok {
				if vals, err := url.ParseQuery(q); err == nil {
					for _, name := range ts.cfg.FromParams {
						if v := vals.Get(name); v != "" {
							tok, from, param = v, ts, name
							break
						}
					}
				}
			}
		}
	}
	if tok == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	claims, _, err := st.jwt.Verify(ctx, tok)
	cancel()
	if err != nil {
		reason := err.Error()
		var je *jwtauth.Error
		if errors.As(err, &je) {
			reason = je.Reason + ": " + je.Detail
		}
		return &Answer{Status: http.StatusUnauthorized, Reason: "invalid token: " + reason, grpcStatus: grpcUnauthenticated,
			challenge: `Bearer error="invalid_token"`}
	}
	r.claims = claims
	switch {
	case !from.cfg.StripToken:
	case hdr != "":
		r.DelAlike(hdr)
	case param != "":
		r.SetTarget(withoutParam(r.Target(), param))
	}
	if h := from.cfg.OutputPayloadHeader; h != "" {
		r.Set(h, base64.RawURLEncoding.EncodeToString(claims.Payload))
	}
	for claim, h := range from.cfg.OutputClaimHeaders {
		if v, ok := claims.Lookup(strings.Split(claim, ".")...); ok {
			if s, ok := v.(string); ok {
				r.Set(h, s)
			} else {
				r.Set(h, fmt.Sprint(v))
			}
		}
	}
	return nil
}

// withoutParam returns target without the query parameter name (every
// occurrence), the rest of the query as it was.
func withoutParam(target, name string) string {
	path, q, ok := strings.Cut(target, "?")
	if !ok {
		return target
	}
	var kept []string
	for _, kv := range strings.Split(q, "&") {
		k, _, _ := strings.Cut(kv, "=")
		if uk, err := url.QueryUnescape(k); err == nil && uk == name {
			continue
		}
		kept = append(kept, kv)
	}
	if len(kept) == 0 {
		return path
	}
	return path + "?" + strings.Join(kept, "&")
}

// meshHTTPClient is the client the sidecar fetches JWKS with: through
// the mesh, as the app's own requests go (mTLS to a destination with a
// sidecar; plaintext elsewhere where mtls.plaintextOutsideMesh allows).
func (p *Proxy) meshHTTPClient() *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
			if err != nil {
				return nil, err
			}
			pn, err := net.LookupPort("tcp", port)
			if err != nil {
				return nil, err
			}
			dst := netip.AddrPortFrom(ips[0].Unmap(), uint16(pn))
			inMesh := p.mesh.inMesh(dst.Addr())
			if !inMesh && !p.mesh.plainOut {
				return nil, errOutsideMesh
			}
			svc, err := p.dialService(ctx, dst, inMesh && p.mesh.outboundMTLS(), alpnTCP)
			if err != nil {
				return nil, err
			}
			svc.finish(false)
			if svc.conn.tls != nil {
				return &ownedConn{Conn: svc.conn.tls, p: p, tcp: svc.conn.tcp}, nil
			}
			return &ownedConn{Conn: svc.conn.tcp, p: p, tcp: svc.conn.tcp}, nil
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// ownedConn is a connection the proxy dialed for itself, unregistered
// from the loop guard when closed.
type ownedConn struct {
	net.Conn
	p    *Proxy
	tcp  *net.TCPConn
	once atomic.Bool
}

func (c *ownedConn) Close() error {
	err := c.Conn.Close()
	if c.once.CompareAndSwap(false, true) {
		c.p.closeUpstream(c.tcp)
	}
	return err
}

// answerGRPC reports whether an answer to r (its content type) is to be
// a gRPC status.
func isGRPC(contentType string) bool {
	return strings.HasPrefix(contentType, "application/grpc")
}
