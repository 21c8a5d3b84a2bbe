package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"meshgate/proxy/jwtauth"
	"meshgate/proxy/policy"
	"meshgate/proxy/resilience"
)

// ExplainQuery is a call to explain: what the access control (IP lists,
// header blocks) and policy would decide of it, and why (`meshgate policy explain`, the admin API's /explain).
type ExplainQuery struct {
	Direction policy.Direction // inbound (default) or outbound
	Port      uint16           // the app's port (inbound) or the destination's (outbound)
	// From is the caller's SPIFFE ID (inbound; zero: plaintext), and
	// SourceIP its address.
	From     spiffeid.ID
	SourceIP netip.Addr
	// DestIP, DestHost and DestID are the destination (outbound).
	DestIP   netip.Addr
	DestHost string
	DestID   spiffeid.ID
	// HTTP: the call is an HTTP request (Method set); otherwise a
	// connection that is not HTTP.
	Method    string
	Path      string
	Authority string
	Header    http.Header
	// Token is a bearer token, validated as the jwt stage would.
	Token string
}

// ExplainResult is a call explained.
type ExplainResult struct {
	// Access is what the IP lists and header blocks would do, before
	// anything else (access.go).
	Access AccessTrace
	// TokenError is why the token was refused (the request would be
	// answered 401 before policy); the trace is then as without a token.
	TokenError string
	Trace      policy.Trace
	// RateLimits are the rate limits of the config, each saying whether
	// it would count the call and under which key value. They decide
	// nothing here: no token is taken.
	RateLimits []ExplainRateLimit
	// Resilience is the resilience policy an outbound call would get:
	// its destination and route, timeouts and retries, faults and
	// mirror, circuit breakers, bulkhead and fallback (nil inbound).
	Resilience *ExplainResilience
	claims     policy.Claims // the token's, when it was valid
}

// Allowed says whether the call would go through.
func (r *ExplainResult) Allowed() bool {
	return r.Access.Denied == "" && r.TokenError == "" && r.Trace.Allowed()
}

// Format writes r for people.
func (r *ExplainResult) Format(w io.Writer) {
	r.Access.format(w)
	if r.TokenError != "" {
		fmt.Fprintf(w, "token:    REFUSED (401): %s\n", r.TokenError)
		fmt.Fprintln(w, "          the request would be refused before policy; as without the token:")
	}
	r.Trace.Format(w)
	formatRateLimits(w, r.RateLimits)
	r.Resilience.format(w)
}

// Explain explains q under the policy of cfg (which must have passed
// Validate), offline: a token is checked against the providers' keys,
// read from their files or fetched from their URLs directly.
func Explain(ctx context.Context, cfg Config, q ExplainQuery) (*ExplainResult, error) {
	eng, err := policy.Compile(cfg.Policy.Rules, policyOptions(cfg.Policy, cfg.Protocols))
	if err != nil {
		return nil, err
	}
	var set *jwtauth.Set
	if q.Token != "" && len(cfg.Policy.JWTProviders) > 0 {
		var provs []*jwtauth.Provider
		for i, jp := range cfg.Policy.JWTProviders {
			pr, err := jwtauth.New(jwtOptions(jp, nil))
			if err != nil {
				return nil, fmt.Errorf("policy.jwtProviders[%d]: %w", i, err)
			}
			provs = append(provs, pr)
		}
		if set, err = jwtauth.NewSet(provs...); err != nil {
			return nil, err
		}
	}
	acc, err := newAccessState(cfg.Access, nil, nil, zap.NewNop())
	if err != nil {
		return nil, err
	}
	res := explainWith(ctx, eng, set, q)
	res.Access = acc.explain(q)
	res.RateLimits = explainRateLimits(cfg.RateLimits, q, res.claims)
	table, err := resilience.New(cfg.Resilience)
	if err != nil {
		return nil, err
	}
	res.Resilience = explainResilience(table, q, cfg.Timeouts)
	return res, nil
}

func explainWith(ctx context.Context, eng *policy.Engine, set *jwtauth.Set, q ExplainQuery) *ExplainResult {
	res := &ExplainResult{}
	c := policy.Conn{Dir: q.Direction, Port: q.Port, Source: q.From, SourceIP: q.SourceIP,
		DestIP: q.DestIP, DestHost: q.DestHost, DestID: q.DestID}
	if c.Dir == "" {
		c.Dir = policy.Inbound
	}
	var cl policy.Claims
	if q.Token != "" {
		switch {
		case set == nil:
			res.TokenError = "no JWT provider is configured (policy.jwtProviders)"
		default:
			claims, _, err := set.Verify(ctx, q.Token)
			if err != nil {
				res.TokenError = err.Error()
			} else {
				cl, res.claims = claims, claims
			}
		}
	}
	var r policy.Request
	if q.Method != "" {
		path := q.Path
		if path == "" {
			path = "/"
		}
		r = explainRequest{method: q.Method, target: path, authority: q.Authority, h: q.Header}
	}
	res.Trace = eng.Explain(c, r, cl)
	return res
}

// explainRequest is a request described by hand.
type explainRequest struct {
	method, target, authority string
	h                         http.Header
}

func (r explainRequest) Method() string    { return r.method }
func (r explainRequest) Target() string    { return r.target }
func (r explainRequest) Authority() string { return r.authority }
func (r explainRequest) Has(n string) bool { return len(r.h.Values(n)) > 0 }
func (r explainRequest) Get(n string) string {
	return r.h.Get(n)
}

// ParseExplainQuery reads a call to explain from named values, as the
// admin API's /explain takes them as query parameters and `meshgate
// policy explain` as flags: direction, port, from, source-ip, to-ip,
// to-host, to-identity, method, path, authority, header (repeated,
// name=value or "name: value") and token. A path, header or authority
// without a method is a GET. Every problem is reported, each named by
// field(key) (e.g. "--from" for a flag).
func ParseExplainQuery(v url.Values, field func(key string) string) (ExplainQuery, error) {
	q := ExplainQuery{DestHost: v.Get("to-host"), Method: v.Get("method"), Path: v.Get("path"),
		Authority: v.Get("authority"), Token: v.Get("token"), Header: http.Header{}}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch d := v.Get("direction"); d {
	case "", "inbound":
		q.Direction = policy.Inbound
	case "outbound":
		q.Direction = policy.Outbound
	default:
		bad("%s %q: want inbound or outbound", field("direction"), d)
	}
	if n, err := strconv.ParseUint(v.Get("port"), 10, 16); err != nil || n == 0 {
		bad("%s: want the port the call is made to, 1 to 65535: the app's (inbound) or the destination's (outbound)", field("port"))
	} else {
		q.Port = uint16(n)
	}
	for _, k := range []struct {
		key string
		dst *spiffeid.ID
	}{{"from", &q.From}, {"to-identity", &q.DestID}} {
		if s := v.Get(k.key); s != "" {
			id, err := spiffeid.FromString(s)
			if err != nil {
				bad("%s %q: not a SPIFFE ID (%v); want e.g. spiffe://cluster.local/ns/shop/sa/web", field(k.key), s, err)
			}
			*k.dst = id
		}
	}
	for _, k := range []struct {
		key string
		dst *netip.Addr
	}{{"source-ip", &q.SourceIP}, {"to-ip", &q.DestIP}} {
		if s := v.Get(k.key); s != "" {
			a, err := netip.ParseAddr(s)
			if err != nil {
				bad("%s %q: not an IP address", field(k.key), s)
			}
			*k.dst = a
		}
	}
	for _, h := range v["header"] {
		i := strings.IndexAny(h, "=:")
		if i <= 0 {
			bad("%s %q: want name=value or name: value", field("header"), h)
			continue
		}
		name, value := strings.TrimSpace(h[:i]), strings.TrimSpace(h[i+1:])
		if !validHeaderName(name) {
			bad("%s %q: %q is not a header name", field("header"), h, name)
			continue
		}
		q.Header.Add(name, value)
	}
	if q.Method == "" && (q.Path != "" || len(q.Header) > 0 || q.Authority != "") {
		q.Method = http.MethodGet
	}
	return q, errors.Join(errs...)
}

// serveExplain explains a call under the running policy:
// /explain?from=ID&port=N[&direction=outbound][&source-ip=IP][&to-ip=IP]
// [&to-host=NAME][&to-identity=ID][&method=M&path=P&authority=A]
// [&header=k:v ...][&token=JWT] (ParseExplainQuery).
func (p *Proxy) serveExplain(w http.ResponseWriter, r *http.Request) {
	q, err := ParseExplainQuery(r.URL.Query(), func(k string) string { return k })
	if err != nil {
		http.Error(w, "explain: "+err.Error(), http.StatusBadRequest)
		return
	}
	st := p.policy.Load()
	res := explainWith(r.Context(), st.eng, st.jwt, q)
	res.Access = p.acl.Load().explain(q)
	res.RateLimits = explainRateLimits(p.rateLimits.Load().limits, q, res.claims)
	res.Resilience = explainResilience(p.resilienceTable(), q, p.cfg.Timeouts)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	res.Format(w)
}
