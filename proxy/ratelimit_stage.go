package proxy

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"meshgate/proxy/policy"
	"meshgate/proxy/ratelimit"
)

// Rate limits on the request path (shared/DESIGN.md §5, §5b rateLimits
// and redis; issue 15). Package ratelimit holds the limiters; this file
// puts them in the proxy:
//
//   - per request: the rate-limit stage, in both chains after policy
//     (stages.go). Every limit of the request's direction whose match
//     holds is asked, the most specific first (http.paths, then
//     http.methods, then ports; the config's order among equals); the
//     first that refuses answers 429 with Retry-After and the RateLimit
//     and RateLimit-Policy fields (gRPC: RESOURCE_EXHAUSTED). Each limit
//     asked before takes its token: as Envoy's descriptors do.
//   - per connection (per: connection, inbound): checked when a
//     connection is accepted, before anything is forwarded. A sourceIP
//     limit is decided before the mesh handshake (a refused client costs
//     no TLS); a sourceIdentity one once the handshake has verified the
//     peer. A refused connection is reset and logged ("connection
//     closed", reason rate-limit: NAME).
//
// Key values: sourceIdentity is the verified peer's SPIFFE ID; a
// plaintext caller (permissive or disable mode) has none and is counted
// under its source address instead, so it cannot dodge the limit by
// skipping mTLS (overrides may name an address). sourceIP is the
// connection's source address. route is the method, a space and the
// first of match.http.paths that holds (the normalised path itself when
// the limit lists none). jwtSubject is the sub claim of the token the
// jwt stage validated. header:NAME is the header's first value. A
// request that has no value for the key (no token, no such header)
// counts under the empty value: such requests share one bucket.
//
// A quota (type: quota) answers the same way: its RateLimit-Policy is
// its N and window, RateLimit's r what is left of the window and t, as
// Retry-After, the seconds until it ends.
//
// With accessLog on, a request's access log line lists the limits it met
// and what each decided (rate_limits: ["per-caller:allowed", ...], the
// results of the metric; at most maxRateLimitNotes, then "+N more"), so
// that a request allowed while Redis failed says so in its own line.
// With it off, or when no limit applies, nothing is noted: no cost.
//
// A global limit asks Redis (one round trip, bounded by redis.timeout);
// when Redis fails the redis section's onError decides, and the
// decision says so in the metric's result (allowed_failopen,
// limited_failclosed, allowed_local, limited_local) and in a warning
// logged at most once a second.
//
// The limits and the redis section are hot-reloaded with the policy
// (WatchConfig). A limit whose config is unchanged keeps its buckets
// (and a global one its Redis connection, when the redis section is
// unchanged); any other starts with full buckets.
//
// The stage is in both chains whatever the config, since limits can
// come with a reload: with no limits of its direction it costs one
// atomic load per request; the connection check likewise.

// stageRateLimit is the stage's name in answers, logs and metrics.
const stageRateLimit = "rate-limit"

// grpcResourceExhausted is gRPC's answer to a request over its limit.
const grpcResourceExhausted = 8

// The results of meshgate_ratelimit_decisions_total.
const (
	rlAllowed = iota
	rlLimited
	rlAllowedFailOpen
	rlLimitedFailClosed
	rlAllowedLocal
	rlLimitedLocal
	rlResults
)

var rlResultNames = [rlResults]string{"allowed", "limited", "allowed_failopen", "limited_failclosed", "allowed_local", "limited_local"}

// newRateLimitDecisions is meshgate_ratelimit_decisions_total. Its
// cardinality is bounded by the config: two directions, the limits'
// names, and six results.
func newRateLimitDecisions() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshgate_ratelimit_decisions_total",
		Help: "Rate limit decisions, by direction, limit and result: allowed, limited; for a global limit while " +
			"Redis fails, what redis.onError did: allowed_failopen, limited_failclosed, allowed_local, limited_local. " +
			"Counted per request, or per new connection for per: connection limits.",
	}, []string{"direction", "limit", "result"})
}

// validateRateLimits reports the problems of the rateLimits and redis
// sections, each with its field path.
func (c Config) validateRateLimits() []error {
	if err := ratelimit.ValidateWithRedis(c.RateLimits, c.Redis); err != nil {
		return splitJoined(err)
	}
	return nil
}

// rlState is the rate limits in effect; a reload swaps in a new one.
type rlState struct {
	limits []ratelimit.Limit
	rconf  *ratelimit.RedisConfig
	redis  *ratelimit.Redis // nil: no global limit
	// req are each direction's request limits, conn the inbound
	// connection limits, the most specific first.
	req  [2][]*rlLimit
	conn []*rlLimit
	// fallbackLogged is when a fallback was last logged (UnixNano), and
	// fallbacks how many went unlogged since.
	fallbackLogged atomic.Int64
	fallbacks      atomic.Int64
}

// rlLimit is one limit with its limiter and counters.
type rlLimit struct {
	conf   ratelimit.Limit
	dir    Direction
	local  *ratelimit.Local  // a local limit's, or
	global *ratelimit.Global // a global one's
	// onError is what the redis section does without Redis (global).
	onError ratelimit.OnError
	header  string // the header of a header key
	// policy is the RateLimit-Policy value of the limit's default rate.
	policy  string
	counted [rlResults]prometheus.Counter
	// noted is each result's entry of the access log's rate_limits:
	// "NAME:RESULT".
	noted [rlResults]string
}

// maxRateLimitNotes bounds the limits a request's access log line lists.
const maxRateLimitNotes = 4

// rlNotes are the limits a request met and what each decided, for its
// access log line: an HTTP/1 connection's, reused by its requests; an
// HTTP/2 request's own, made when the first limit is noted.
type rlNotes struct {
	n    int
	note [maxRateLimitNotes]rlNote
}

type rlNote struct {
	l   *rlLimit
	res int
}

// add notes l's decision res.
func (ns *rlNotes) add(l *rlLimit, res int) {
	if ns.n < maxRateLimitNotes {
		ns.note[ns.n] = rlNote{l, res}
	}
	ns.n++
}

// MarshalLogArray writes the notes as the access log's rate_limits.
func (ns rlNotes) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, n := range ns.note[:min(ns.n, maxRateLimitNotes)] {
		enc.AppendString(n.l.noted[n.res])
	}
	if more := ns.n - maxRateLimitNotes; more > 0 {
		enc.AppendString("+" + strconv.Itoa(more) + " more")
	}
	return nil
}

// rateLimitsField adds the access log's rate_limits to fields when the
// request met a limit. The field holds a copy: a core may encode it
// after the request's notes are reused (a pooled HTTP/1 connection's).
func rateLimitsField(fields []zap.Field, ns *rlNotes) []zap.Field {
	if ns == nil || ns.n == 0 {
		return fields
	}
	return append(fields, zap.Array("rate_limits", *ns))
}

// newRateLimitState builds the limiters of limits (validated), taking
// over those of prev (nil: none) whose config is unchanged, with their
// buckets. The Redis connection is lazy: nothing is dialed here.
func (p *Proxy) newRateLimitState(limits []ratelimit.Limit, rc *ratelimit.RedisConfig, prev *rlState) (*rlState, error) {
	st := &rlState{limits: limits, rconf: rc}
	global := slices.ContainsFunc(limits, func(l ratelimit.Limit) bool { return l.Global })
	sameRedis := prev != nil && prev.redis != nil && rc != nil && reflect.DeepEqual(*prev.rconf, *rc)
	if global {
		if sameRedis {
			st.redis = prev.redis
		} else {
			r, err := ratelimit.NewRedis(*rc)
			if err != nil {
				return nil, err
			}
			st.redis = r
		}
	}
	for _, l := range limits {
		rl := &rlLimit{conf: l, dir: Inbound, policy: rateLimitPolicy(l.Name, l.Rate)}
		if l.Direction == ratelimit.Outbound {
			rl.dir = Outbound
		}
		if h, ok := l.Key.Header(); ok {
			rl.header = h
		}
		var old *rlLimit
		if prev != nil {
			for _, o := range prev.all() {
				if reflect.DeepEqual(o.conf, l) && (!l.Global || sameRedis) {
					old = o
				}
			}
		}
		switch {
		case old != nil:
			rl.local, rl.global = old.local, old.global
		case l.Global:
			rl.global = ratelimit.NewGlobal(l, st.redis)
		default:
			rl.local = ratelimit.New(l)
		}
		results := []int{rlAllowed, rlLimited}
		if l.Global {
			rl.onError = cmp.Or(rc.OnError, ratelimit.FailOpen)
			switch rl.onError {
			case ratelimit.FailOpen:
				results = append(results, rlAllowedFailOpen)
			case ratelimit.FailClosed:
				results = append(results, rlLimitedFailClosed)
			case ratelimit.FailLocal:
				results = append(results, rlAllowedLocal, rlLimitedLocal)
			}
		}
		for _, res := range results {
			rl.counted[res] = p.metrics.rateLimitDecisions.WithLabelValues(rl.dir.String(), l.Name, rlResultNames[res])
			rl.noted[res] = l.Name + ":" + rlResultNames[res]
		}
		if l.Connections() {
			st.conn = append(st.conn, rl)
		} else {
			st.req[rl.dir] = append(st.req[rl.dir], rl)
		}
	}
	for d := range st.req {
		slices.SortStableFunc(st.req[d], func(a, b *rlLimit) int { return specificity(b.conf) - specificity(a.conf) })
	}
	slices.SortStableFunc(st.conn, func(a, b *rlLimit) int { return specificity(b.conf) - specificity(a.conf) })
	return st, nil
}

// specificity orders limits, the most specific first: one for paths,
// then methods, then ports.
func specificity(l ratelimit.Limit) int {
	n := 0
	if m := l.Match; m != nil {
		if m.Ports != nil {
			n++
		}
		if h := m.HTTP; h != nil {
			if h.Methods != nil {
				n += 2
			}
			if h.Paths != nil {
				n += 4
			}
		}
	}
	return n
}

// all is every limit of st.
func (st *rlState) all() []*rlLimit {
	return slices.Concat(st.req[Outbound], st.req[Inbound], st.conn)
}

// close closes st's Redis connection, unless next (nil: none) took it
// over.
func (st *rlState) close(next *rlState) {
	if st.redis != nil && (next == nil || next.redis != st.redis) {
		st.redis.Close()
	}
}

// ReloadRateLimits puts limits and the redis section in effect (they
// must have passed Config.Validate); see the comment at the top of this
// file for what happens to buckets. A redis section whose password file
// cannot be read is refused, and the running limits stay.
func (p *Proxy) ReloadRateLimits(limits []ratelimit.Limit, rc *ratelimit.RedisConfig) error {
	st, err := p.prepareRateLimits(limits, rc)
	if err != nil {
		return err
	}
	p.commitRateLimits(st)
	return nil
}

// prepareRateLimits builds the state ReloadRateLimits would put in
// effect, for commitRateLimits (or, when something else of the reload
// fails, discardRateLimits).
func (p *Proxy) prepareRateLimits(limits []ratelimit.Limit, rc *ratelimit.RedisConfig) (*rlState, error) {
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	return p.newRateLimitState(limits, rc, p.rateLimits.Load())
}

// discardRateLimits closes what prepareRateLimits made of its own.
func (p *Proxy) discardRateLimits(st *rlState) {
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	if cur := p.rateLimits.Load(); st.redis != nil && st.redis != cur.redis {
		st.redis.Close()
	}
}

// commitRateLimits swaps st in. Decisions in flight on the old state's
// Redis connection, when it is replaced, end in its fallback.
func (p *Proxy) commitRateLimits(st *rlState) {
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	old := p.rateLimits.Swap(st)
	old.close(st)
	if p.stopped {
		st.close(nil)
	}
	p.cfg.RateLimits, p.cfg.Redis = st.limits, st.rconf
	p.rebuildChains() // the rate-limit stage is in a chain only while it has limits
	keep := map[[2]string]bool{}
	for _, l := range st.all() {
		keep[[2]string{l.dir.String(), l.conf.Name}] = true
	}
	for _, l := range old.all() {
		if k := [2]string{l.dir.String(), l.conf.Name}; !keep[k] {
			p.metrics.rateLimitDecisions.DeletePartialMatch(prometheus.Labels{"direction": k[0], "limit": k[1]})
		}
	}
}

// closeRateLimits closes the Redis connection when the proxy stops.
func (p *Proxy) closeRateLimits() {
	p.rateLimits.Load().close(nil)
}

// rateLimitStage is the rate-limit stage of both chains.
type rateLimitStage struct{ p *Proxy }

func (rateLimitStage) Name() string { return stageRateLimit }

func (s rateLimitStage) Decide(r *Request) *Answer {
	st := s.p.rateLimits.Load()
	limits := st.req[r.Dir]
	if len(limits) == 0 {
		return nil
	}
	port := r.Dst.Port()
	var path string // normalised, once a limit needs it
	for _, l := range limits {
		m := l.conf.Match
		if !m.Port(port) {
			continue
		}
		needPath := l.conf.Key == ratelimit.Route || m != nil && m.HTTP != nil && m.HTTP.Paths != nil
		if needPath && path == "" {
			path = policy.NormalizePath(r.Target())
		}
		if m != nil && m.HTTP != nil && !m.Request(r.Method(), path) {
			continue
		}
		key := l.requestKey(r, path)
		d, res := l.decide(st, r.context(), key, s.p.log)
		if s.p.cfg.AccessLog {
			if r.limits == nil {
				r.limits = new(rlNotes)
			}
			r.limits.add(l, res)
		}
		if !d.Allowed {
			return l.answer(d, key)
		}
	}
	return nil
}

// requestKey is r's key value under l (see the top of this file).
func (l *rlLimit) requestKey(r *Request, path string) string {
	switch l.conf.Key {
	case ratelimit.SourceIdentity:
		if !r.Peer.IsZero() {
			return r.Peer.String()
		}
		return r.Src.Addr().String()
	case ratelimit.SourceIP:
		return r.Src.Addr().String()
	case ratelimit.Route:
		return r.Method() + " " + routePattern(l.conf.Match, path)
	case ratelimit.JWTSubject:
		if r.claims != nil {
			if v, ok := r.claims.Lookup("sub"); ok {
				if s, ok := v.(string); ok {
					return s
				}
				return fmt.Sprint(v)
			}
		}
		return ""
	}
	return r.Get(l.header)
}

// routePattern is the first of m's paths that path matches, or path
// itself when m lists none.
func routePattern(m *ratelimit.Match, path string) string {
	if m == nil || m.HTTP == nil || m.HTTP.Paths == nil {
		return path
	}
	for _, p := range m.HTTP.Paths {
		if (&ratelimit.Match{HTTP: &ratelimit.HTTPMatch{Paths: []string{p}}}).Request("", path) {
			return p
		}
	}
	return path
}

// decide asks l's limiter about key and counts the decision, res (one
// of the results of the metric); a fallback (Redis failed) is logged, at
// most once a second.
func (l *rlLimit) decide(st *rlState, ctx context.Context, key string, log *zap.Logger) (d ratelimit.Decision, res int) {
	if l.global != nil {
		d = l.global.Allow(ctx, key)
	} else {
		d = l.local.Allow(key, time.Now())
	}
	res = rlLimited
	if d.Allowed {
		res = rlAllowed
	}
	if d.Source == ratelimit.FromFallback {
		switch {
		case l.onError == ratelimit.FailLocal && d.Allowed:
			res = rlAllowedLocal
		case l.onError == ratelimit.FailLocal:
			res = rlLimitedLocal
		case d.Allowed:
			res = rlAllowedFailOpen
		default:
			res = rlLimitedFailClosed
		}
		st.logFallback(log, l, d)
	}
	if c := l.counted[res]; c != nil {
		c.Inc()
	}
	return d, res
}

// logFallback warns that a global limit fell back to onError, at most
// once a second, with how many fallbacks went unlogged before.
func (st *rlState) logFallback(log *zap.Logger, l *rlLimit, d ratelimit.Decision) {
	now := time.Now().UnixNano()
	last := st.fallbackLogged.Load()
	if now-last < int64(time.Second) || !st.fallbackLogged.CompareAndSwap(last, now) {
		st.fallbacks.Add(1)
		return
	}
	if ce := log.Check(zap.WarnLevel, "global rate limit without Redis: redis.onError decides"); ce != nil {
		ce.Write(zap.String("limit", l.conf.Name), zap.String("on_error", string(l.onError)),
			zap.Bool("allowed", d.Allowed), zap.Int64("unlogged_since_last", st.fallbacks.Swap(0)), zap.Error(d.Err))
	}
}

// answer is the 429 (gRPC RESOURCE_EXHAUSTED) of a request l refused.
func (l *rlLimit) answer(d ratelimit.Decision, key string) *Answer {
	retry := retrySeconds(d.RetryAfter)
	why := l.conf.Name + ": over " + d.Limit.String()
	if l.conf.Quota() {
		why = l.conf.Name + ": over quota " + d.Limit.String()
	}
	if d.Source == ratelimit.FromFallback {
		why = l.conf.Name + ": refused while the quota store is unreachable (redis.onError " + string(l.onError) + ")"
	}
	a := &Answer{Status: http.StatusTooManyRequests, Reason: why + "; retry after " + strconv.Itoa(retry) + "s",
		grpcStatus: grpcResourceExhausted}
	a.logReason = a.Reason + " (" + l.keyForLog(key) + ")"
	if d.Err != nil {
		a.logReason += ": " + d.Err.Error()
	}
	pol := l.policy
	if d.Limit != l.conf.Rate {
		pol = rateLimitPolicy(l.conf.Name, d.Limit) // an override's
	}
	a.fields = []headerField{
		{"Retry-After", strconv.Itoa(retry)},
		{"RateLimit-Policy", pol},
		{"RateLimit", `"` + l.conf.Name + `";r=` + strconv.Itoa(d.Remaining) + ";t=" + strconv.Itoa(retry)},
	}
	return a
}

// keyForLog names the key value a decision was about, for the log: a
// header's value is left out, since it may be a secret (an API key).
func (l *rlLimit) keyForLog(key string) string {
	if l.header != "" {
		return "key " + string(l.conf.Key)
	}
	return "key " + string(l.conf.Key) + " " + strconv.Quote(key)
}

// retrySeconds is Retry-After for a wait: whole seconds, rounded up, at
// least 1 (RFC 9110 §10.2.3 has no fractions).
func retrySeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

// rateLimitPolicy is the RateLimit-Policy field of a limit's rate
// (draft-ietf-httpapi-ratelimit-headers, structured-field form): its
// name, quota and window in seconds.
func rateLimitPolicy(name string, r ratelimit.Rate) string {
	return `"` + name + `";q=` + strconv.FormatInt(r.N, 10) + ";w=" + strconv.FormatInt(int64(r.Window/time.Second), 10)
}

// requestLimited reports whether some request limit of dir applies on
// port: a connection that would otherwise pass as bytes is then to be
// read, so that its HTTP requests meet the limits.
func (p *Proxy) requestLimited(dir Direction, port uint16) bool {
	for _, l := range p.rateLimits.Load().req[dir] {
		if l.conf.Match.Port(port) {
			return true
		}
	}
	return false
}

// The key kinds a connection limit is decided at (connLimited).
const (
	connKeySourceIP = 1 << iota
	connKeySourceIdentity
)

// errConnRateLimited is a connection refused by a connection limit.
type errConnRateLimited struct {
	limit string
	rate  ratelimit.Rate
	quota bool
	err   error // Redis's, under a fallback
}

func (e *errConnRateLimited) Error() string {
	over := "over "
	if e.quota {
		over = "over quota "
	}
	s := "rate-limit: " + e.limit + ": new connections " + over + e.rate.String()
	if e.err != nil {
		s += ": " + e.err.Error()
	}
	return s
}

// connLimited decides the inbound connection limits keyed by the kinds
// in keys for a new connection from src (peer: its verified identity,
// zero for plaintext) to dst; nil: allowed. A refusal is the outcome to
// return: the connection is reset, nothing forwarded.
func (p *Proxy) connLimited(dst, src netip.AddrPort, peer spiffeid.ID, keys int) *outcome {
	st := p.rateLimits.Load()
	if len(st.conn) == 0 {
		return nil
	}
	for _, l := range st.conn {
		var key string
		switch l.conf.Key {
		case ratelimit.SourceIP:
			if keys&connKeySourceIP == 0 {
				continue
			}
			key = src.Addr().String()
		case ratelimit.SourceIdentity:
			if keys&connKeySourceIdentity == 0 {
				continue
			}
			if key = src.Addr().String(); !peer.IsZero() {
				key = peer.String()
			}
		default:
			continue
		}
		if !l.conf.Match.Port(dst.Port()) {
			continue
		}
		if d, _ := l.decide(st, context.Background(), key, p.log); !d.Allowed {
			return &outcome{dst: dst, refused: true, reason: stageRateLimit + ": " + l.conf.Name,
				err: &errConnRateLimited{limit: l.conf.Name, rate: d.Limit, quota: l.conf.Quota(), err: d.Err}}
		}
	}
	return nil
}

// ExplainRateLimit is one rate limit as explain sees it.
type ExplainRateLimit struct {
	Name string
	// Applies says whether the call would be counted; Why, when not.
	Applies bool
	Why     string
	Key     ratelimit.Key
	// KeyValue is what the call would be counted under, and Rate and
	// Burst that value's (an override's, when one names it). Type is
	// rate (a token bucket) or quota (N per window; Burst 0).
	KeyValue string
	Type     ratelimit.Type
	Rate     ratelimit.Rate
	Burst    int
	Global   bool
	Per      ratelimit.Per
}

// explainRateLimits says which of limits would count q, with which key
// value, without taking a token. claims are q's validated token's (nil:
// none).
func explainRateLimits(limits []ratelimit.Limit, q ExplainQuery, claims policy.Claims) []ExplainRateLimit {
	dir := ratelimit.Inbound
	if q.Direction == policy.Outbound {
		dir = ratelimit.Outbound
	}
	var out []ExplainRateLimit
	path := ""
	if q.Method != "" {
		path = policy.NormalizePath(cmp.Or(q.Path, "/"))
	}
	for _, l := range limits {
		e := ExplainRateLimit{Name: l.Name, Key: l.Key, Global: l.Global, Per: cmp.Or(l.Per, ratelimit.PerRequest),
			Type: cmp.Or(l.Type, ratelimit.TypeRate), Rate: l.Rate, Burst: l.Burst}
		switch {
		case cmp.Or(l.Direction, ratelimit.Inbound) != dir:
			e.Why = "direction " + string(cmp.Or(l.Direction, ratelimit.Inbound))
		case !l.Match.Port(q.Port):
			e.Why = "port " + strconv.Itoa(int(q.Port)) + " not in match.ports"
		case !l.Connections() && q.Method == "":
			e.Why = "counts HTTP requests; the call is not HTTP"
		case !l.Connections() && l.Match != nil && l.Match.HTTP != nil && !l.Match.Request(q.Method, path):
			e.Why = "match.http does not hold for " + q.Method + " " + path
		default:
			e.Applies = true
		}
		if e.Applies {
			src := q.SourceIP.String()
			if !q.SourceIP.IsValid() {
				src = "(the caller's address: give source-ip)"
			}
			switch l.Key {
			case ratelimit.SourceIdentity:
				e.KeyValue = src
				if !q.From.IsZero() {
					e.KeyValue = q.From.String()
				}
			case ratelimit.SourceIP:
				e.KeyValue = src
			case ratelimit.Route:
				e.KeyValue = q.Method + " " + routePattern(l.Match, path)
			case ratelimit.JWTSubject:
				if claims != nil {
					if v, ok := claims.Lookup("sub"); ok {
						e.KeyValue = fmt.Sprint(v)
					}
				}
			default:
				h, _ := l.Key.Header()
				e.KeyValue = q.Header.Get(h)
			}
			for _, o := range l.Overrides {
				if o.Value == e.KeyValue {
					e.Rate, e.Burst = o.Rate, o.Burst
				}
			}
		}
		if e.Burst == 0 && !l.Quota() {
			e.Burst = e.Rate.DefaultBurst()
		}
		out = append(out, e)
	}
	return out
}

// formatRateLimits writes explain's rate limit lines.
func formatRateLimits(w interface{ Write([]byte) (int, error) }, limits []ExplainRateLimit) {
	if len(limits) == 0 {
		return
	}
	fmt.Fprintln(w, "rate limits:")
	for _, e := range limits {
		if !e.Applies {
			fmt.Fprintf(w, "  %-16s does not apply: %s\n", e.Name, e.Why)
			continue
		}
		where := "local"
		if e.Global {
			where = "global (redis)"
		}
		what := fmt.Sprintf("rate %s burst %d", e.Rate, e.Burst)
		if e.Type == ratelimit.TypeQuota {
			what = "quota " + e.Rate.String()
		}
		fmt.Fprintf(w, "  %-16s applies per %s: key %s = %q, %s, %s\n", e.Name, e.Per, e.Key, e.KeyValue, what, where)
	}
}
