package proxy

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/proxy/jwtauth"
)

// The request path, in one place (shared/DESIGN.md §5). Every HTTP
// request the proxy serves, whichever codec read it (the HTTP/1 engine of
// h1serve.go or net/http for HTTP/2), runs through the chain of its
// direction, in this order, before it is sent on. A stage reads the
// request, may edit its header fields, and passes it on (nil) or answers
// it itself (an *Answer): the request then goes no further, and nothing
// of it reaches the upstream.
//
//	outbound (the app's request, to a peer sidecar):
//	  request-ids        X-Request-Id, X-Correlation-Id, traceparent, made when absent
//	  client-identity    any X-Forwarded-Client-Cert the app sent is removed
//	  block              header blocks (access.go): 403, gRPC PERMISSION_DENIED
//	  … route match
//	  policy             egress authorization (authz.go): 403, gRPC PERMISSION_DENIED
//	  rate-limit         rateLimits (ratelimit_stage.go): 429, gRPC RESOURCE_EXHAUSTED
//	  fault              resilience faults (fault_stage.go): a delay; an abort, with the
//	                     configured status (gRPC status)
//	  mirror             resilience mirror (mirror_stage.go): a copy sent apart, never an answer
//	  → exchange (h1serve.go: balance → pooled mesh connection → response)
//	    where circuit breaking, bulkheads, per-try timeouts and retries wrap the try
//	    (retries and timeouts: retry.go)
//
//	inbound (a client's request, to the app):
//	  client-identity    X-Forwarded-Client-Cert set to the verified peer, any other removed
//	  block              header blocks (access.go): 403, gRPC PERMISSION_DENIED
//	  … header and slow-client limits
//	  jwt                the bearer token validated (401 if it fails), its claims for policy
//	  policy             authorization (authz.go): 403, gRPC PERMISSION_DENIED
//	  rate-limit         rateLimits (ratelimit_stage.go): 429, gRPC RESOURCE_EXHAUSTED
//	  … fault injection
//	  → exchange (pooled app connection → response)
//
// A stage that is off is not in the chain: it costs nothing per request.
// Chains are built once, by newChains, from the config; a stage keeps what
// it needs of the config itself.

// Stage is one step of the request path.
type Stage interface {
	// Name names the stage in an answer's X-Meshgate-Error, the access log
	// and metrics.
	Name() string
	// Decide passes r on (nil) or answers it (the request ends here). It
	// must not keep r or what its methods return past the call, except
	// strings it copies.
	Decide(r *Request) *Answer
}

// Answer is a stage's own response to a request it stops.
type Answer struct {
	Status int    // an HTTP status, 4xx or 5xx
	Reason string // why, for X-Meshgate-Error, the body and the log
	stage  string // the stage's name, set by the chain
	// logReason, when set, is what the log says instead of Reason (which
	// the caller sees).
	logReason string
	// grpcStatus, when set, answers a gRPC request with this status,
	// trailers-only, instead of Status.
	grpcStatus int
	// challenge is a WWW-Authenticate value for a 401.
	challenge string
	// fields are more header fields of the answer (e.g. Retry-After).
	fields []headerField
}

// headerField is one header field of an answer.
type headerField struct{ name, value string }

// logged is the reason for the log.
func (a *Answer) logged() string {
	if a.logReason != "" {
		return a.stage + ": " + a.logReason
	}
	return a.stage + ": " + a.Reason
}

// Request is what a stage sees of one HTTP request.
type Request struct {
	Dir Direction
	// Peer is the client's verified identity (inbound; zero for plaintext)
	// or the destination's expected one (outbound, zero when unknown).
	Peer spiffeid.ID
	// Dst is the connection's original destination: the app's address
	// (inbound), the service address the app dialed (outbound).
	Dst netip.AddrPort
	// Src is the client's address (inbound); unset outbound.
	Src netip.AddrPort
	// ctx is the request's context (nil: none; see context).
	ctx context.Context
	// clientCert is hdrClientCert's value for Peer ("" for none), made
	// once per connection.
	clientCert string
	// authz is the connection's authorization, nil when no rule applies
	// (authz.go); claims, the request's validated JWT's, set by the jwt
	// stage (nil: none).
	authz  *connAuthz
	claims *jwtauth.Claims
	msg    requestFields
	// limits are the rate limits the request met, for its access log
	// line (ratelimit_stage.go); nil until one is noted (HTTP/2), or the
	// connection's (HTTP/1).
	limits *rlNotes
	// conn is the client's connection (the HTTP/1 engine's), which the
	// fault stage watches while it delays the request; nil for HTTP/2,
	// whose ctx ends with the client.
	conn *net.TCPConn
	// inject is what the fault and mirror stages did to the request
	// (inject.go), ended by endInject once it is answered.
	inject injectNotes
}

// context is the request's context: it ends when the client goes away.
func (r *Request) context() context.Context {
	if r.ctx == nil {
		return context.Background()
	}
	return r.ctx
}

// Method returns the request's method.
func (r *Request) Method() string { return r.msg.method() }

// Target returns the request target as sent (path and query, usually).
func (r *Request) Target() string { return r.msg.target() }

// SetTarget replaces the request target (origin form: path and query).
func (r *Request) SetTarget(t string) { r.msg.setTarget(t) }

// Authority returns the Host header (HTTP/1) or :authority (HTTP/2).
func (r *Request) Authority() string { return r.msg.authority() }

// Has reports whether the request has a header field named name.
func (r *Request) Has(name string) bool { return r.msg.has(name) }

// Get returns the first value of the header field named name, "" if none.
func (r *Request) Get(name string) string { return r.msg.get(name) }

// Set replaces the header field named name with one of value.
func (r *Request) Set(name, value string) { r.msg.set(name, value) }

// Match reports whether re matches the value of any header field named
// name (any case): a field sent twice is looked at twice.
func (r *Request) Match(name string, re *regexp.Regexp) bool { return r.msg.match(name, re) }

// DelAlike removes every header field an app could read as name: equal
// but for ASCII case, '_' taken for '-' (CGI-style frameworks (WSGI,
// PHP, Rack) read X_Forwarded_Client_Cert as X-Forwarded-Client-Cert).
func (r *Request) DelAlike(name string) { r.msg.delAlike(name) }

// requestFields is a request as one codec holds it.
type requestFields interface {
	method() string
	target() string
	setTarget(t string)
	authority() string
	has(name string) bool
	get(name string) string
	set(name, value string)
	delAlike(name string)
	match(name string, re *regexp.Regexp) bool
}

// chain is the stages of one direction, in order.
type chain []Stage

// decide runs r through the chain until a stage answers it.
func (c chain) decide(r *Request) *Answer {
	for _, s := range c {
		if a := s.Decide(r); a != nil {
			a.stage = s.Name()
			return a
		}
	}
	return nil
}

// newChains builds each direction's chain from the config (see the order
// above), with the stages tests add (withStage) last. A reload of a
// section that has stages rebuilds them (rebuildChains).
func (p *Proxy) newChains() *[2]chain {
	var c [2]chain
	acc := p.acl.Load()
	c[Outbound] = chain{requestIDs{}, clientIdentity{}}
	if b := acc.blocks[Outbound]; len(b) > 0 {
		c[Outbound] = append(c[Outbound], blockStage{b})
	}
	c[Outbound] = append(c[Outbound], authzStage{p})
	rl := p.rateLimits.Load()
	if len(rl.req[Outbound]) > 0 {
		c[Outbound] = append(c[Outbound], rateLimitStage{p})
	}
	inj := p.injectStateFor(p.resilienceTable())
	if inj.faults {
		c[Outbound] = append(c[Outbound], faultStage{p, inj})
	}
	if inj.mirrors {
		c[Outbound] = append(c[Outbound], mirrorStage{p, inj})
	}
	c[Inbound] = chain{clientIdentity{}}
	if b := acc.blocks[Inbound]; len(b) > 0 {
		c[Inbound] = append(c[Inbound], blockStage{b})
	}
	c[Inbound] = append(c[Inbound], jwtStage{p}, authzStage{p})
	if len(rl.req[Inbound]) > 0 {
		c[Inbound] = append(c[Inbound], rateLimitStage{p})
	}
	for d := range c {
		c[d] = append(c[d], p.extraStages[d]...)
	}
	return &c
}

// rebuildChains puts chains made from the config in effect now in
// place; requests already in a chain finish it.
func (p *Proxy) rebuildChains() { p.chains.Store(p.newChains()) }

// withStage appends s to the chain of dir: tests plug stages in with it.
func withStage(dir Direction, s Stage) Option {
	return func(p *Proxy) { p.extraStages[dir] = append(p.extraStages[dir], s) }
}

// requestIDs makes the request identifiers an app did not send:
// X-Request-Id and X-Correlation-Id (a random UUID each; the correlation
// ID is the request ID unless sent) and a W3C traceparent (a new trace,
// sampled).
type requestIDs struct{}

func (requestIDs) Name() string { return "request-ids" }

func (requestIDs) Decide(r *Request) *Answer {
	id := ""
	if !r.Has(hdrRequestID) {
		id = newUUID()
		r.Set(hdrRequestID, id)
	}
	if !r.Has(hdrCorrelation) {
		if id == "" {
			id = r.Get(hdrRequestID)
		}
		r.Set(hdrCorrelation, id)
	}
	if !r.Has(hdrTraceparent) {
		r.Set(hdrTraceparent, newTraceparent())
	}
	return nil
}

// newUUID returns a random (version 4) UUID. Request identifiers need
// to be unique, not secret: the runtime's per-thread ChaCha8 generator
// (math/rand/v2) is seeded from the kernel and costs no system call.
func newUUID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var x [36]byte
	hex.Encode(x[:8], b[:4])
	x[8] = '-'
	hex.Encode(x[9:13], b[4:6])
	x[13] = '-'
	hex.Encode(x[14:18], b[6:8])
	x[18] = '-'
	hex.Encode(x[19:23], b[8:10])
	x[23] = '-'
	hex.Encode(x[24:], b[10:])
	return string(x[:])
}

// newTraceparent returns a W3C traceparent starting a new sampled trace:
// 00-<trace ID>-<parent ID>-01.
func newTraceparent() string {
	var b [24]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:16], rand.Uint64())
	binary.LittleEndian.PutUint64(b[16:], rand.Uint64())
	var x [55]byte
	copy(x[:], "00-")
	hex.Encode(x[3:35], b[:16])
	x[35] = '-'
	hex.Encode(x[36:52], b[16:])
	copy(x[52:], "-01")
	return string(x[:])
}

// clientIdentity makes hdrClientCert the sidecar's own, the one place
// that says what an app learns of its client: any the request carries,
// in any spelling an app could read as it, is removed; inbound, it is
// then set to the verified peer's identity (none for plaintext).
type clientIdentity struct{}

func (clientIdentity) Name() string { return "client-identity" }

func (clientIdentity) Decide(r *Request) *Answer {
	r.DelAlike(hdrClientCert)
	if r.Dir == Inbound && r.clientCert != "" {
		r.Set(hdrClientCert, r.clientCert)
	}
	return nil
}

// httpFields is a net/http request as a stage sees it (HTTP/2).
type httpFields struct{ r *http.Request }

func (h httpFields) method() string { return h.r.Method }
func (h httpFields) target() string { return h.r.RequestURI }
func (h httpFields) setTarget(t string) {
	h.r.RequestURI = t
	path, q, _ := strings.Cut(t, "?")
	if path != h.r.URL.EscapedPath() {
		if u, err := url.ParseRequestURI(t); err == nil {
			h.r.URL.Path, h.r.URL.RawPath = u.Path, u.RawPath
		}
	}
	h.r.URL.RawQuery = q
}
func (h httpFields) authority() string { return h.r.Host }
func (h httpFields) has(name string) bool {
	_, ok := h.r.Header[http.CanonicalHeaderKey(name)]
	return ok
}
func (h httpFields) get(name string) string { return h.r.Header.Get(name) }
func (h httpFields) set(name, value string) { h.r.Header.Set(name, value) }
func (h httpFields) match(name string, re *regexp.Regexp) bool {
	for _, v := range h.r.Header.Values(name) {
		if re.MatchString(v) {
			return true
		}
	}
	return false
}
func (h httpFields) delAlike(name string) {
	for k := range h.r.Header {
		if sameHeaderName(k, name) {
			delete(h.r.Header, k)
		}
	}
}

// h1Fields is the HTTP/1 engine's request as a stage sees it.
type h1Fields struct{ m *h1Msg }

func (h h1Fields) method() string         { return string(h.m.method) }
func (h h1Fields) target() string         { return string(h.m.target) }
func (h h1Fields) setTarget(t string)     { h.m.target = []byte(t) }
func (h h1Fields) authority() string      { return string(h.m.get("host")) }
func (h h1Fields) has(name string) bool   { return h.m.has(name) }
func (h h1Fields) get(name string) string { return string(h.m.get(name)) }
func (h h1Fields) set(name, value string) { h.m.set(name, value) }
func (h h1Fields) match(name string, re *regexp.Regexp) bool {
	for _, f := range h.m.fields {
		if f.name != nil && equalFold(f.name, name) && re.Match(f.value) {
			return true
		}
	}
	return false
}
func (h h1Fields) delAlike(name string) {
	h.m.delMatch(func(n []byte) bool { return sameHeaderName(n, name) })
}
