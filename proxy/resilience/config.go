package resilience

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"meshgate/internal/confval"
	"meshgate/netlist"
	"meshgate/proxy/policy"
)

// Config is the resilience section of the proxy config: how the sidecar
// keeps the network from hurting the app's outbound calls (issue 16).
// Field names are the YAML keys (the json tags). Hot-reloaded: a changed
// section is in effect for the next connections and requests; a section
// with any problem is refused whole, and the running one stays.
//
// Settings come in levels, the narrowest that sets a field winning: a
// route of the destination a request goes to (Route), that destination
// (Destination), Defaults, then the built-in defaults each field's
// comment states. A field left out is unset; a field written, even as 0,
// is set. The sections timeouts, retries, circuitBreaker and bulkhead
// are merged field by field: each field left out comes from the level
// above. The sections inside them (retries.backoff, retries.budget,
// circuitBreaker.failureRate, circuitBreaker.perEndpoint), and fallback,
// mirror, faults and tcpFaults, are taken whole from the narrowest level
// that writes them, the fields they leave out being the built-in
// defaults; written empty ({}), those that are optional (all but backoff
// and budget) turn off what a level above sets. With no resilience section
// at all, every outbound destination gets the built-in defaults: an
// idempotent request (GET, HEAD, OPTIONS, PUT, DELETE) is retried up to
// 2 times on a connect failure, a reset before any response byte and a
// 503, within a retry budget of 20% of the destination's requests plus 3
// retries a second; there is no circuit breaker, no bulkhead limit, no
// fallback, no mirror and no fault.
//
// Example:
//
//	resilience:
//	  defaults:
//	    timeouts: {request: 15s}
//	  destinations:
//	  - name: shop-api
//	    match: {hosts: [api.shop.mesh], ports: [8080]}
//	    timeouts: {connect: 1s, request: 5s, perTry: 1s}
//	    retries: {attempts: 2, on: [connect-failure, reset, "503"], budget: {ratio: 0.2, minPerSecond: 3}}
//	    circuitBreaker: {consecutiveFailures: 5, openFor: 10s, halfOpenRequests: 1}
//	    bulkhead: {maxConnections: 100, maxPending: 100, maxActive: 100}
//	    routes:
//	    - name: checkout
//	      match: {methods: [POST], paths: [/api/checkout]}
//	      retries: {attempts: 0}
type Config struct {
	// Defaults are the settings of every destination that does not set
	// its own, including destinations no entry of Destinations matches.
	// Unset: the built-in defaults.
	Defaults *Defaults `json:"defaults"`
	// Destinations are the destination services with settings of their
	// own. An outbound connection gets the first entry, in this order,
	// whose match holds for its destination; with none, the defaults.
	// Each entry is one destination for what is counted per destination
	// (its retry budget, circuit breakers and bulkhead): hosts listed in
	// one entry share them; give services entries of their own to keep
	// them apart.
	Destinations []Destination `json:"destinations"`
}

// Defaults are settings for every destination, under what each
// destination and route sets. Fallbacks, mirrors and faults are not
// among them: they are chosen per destination or route.
type Defaults struct {
	// Timeouts, merged field by field under each destination's.
	Timeouts *Timeouts `json:"timeouts"`
	// Retries, merged field by field under each destination's.
	Retries *Retries `json:"retries"`
	// CircuitBreaker, set here, gives every destination a circuit breaker
	// of its own (merged field by field under the destination's).
	CircuitBreaker *CircuitBreaker `json:"circuitBreaker"`
	// Bulkhead limits apply to each destination on its own, merged field
	// by field under the destination's.
	Bulkhead *Bulkhead `json:"bulkhead"`
}

// Destination is the settings of one destination service, an entry of
// resilience.destinations.
//
// Example:
//
//	destinations:
//	- name: payments
//	  match: {identities: ["spiffe://cluster.local/ns/pay/sa/api"]}
//	  timeouts: {request: 3s, perTry: 1s}
//	  circuitBreaker: {consecutiveFailures: 5, openFor: 30s}
//	  fallback: {static: {status: 503, headers: {retry-after: "30"}, body: "payments unavailable"}}
type Destination struct {
	// Name names the destination in metrics (the destination label),
	// logs and explain. Optional; letters, digits, '.', '_' and '-', at
	// most 64, unique, not "default" (the name of the built-in policy).
	// Unset: derived from the match, the same for the same match
	// whatever else changes: its first host (else identity, else CIDR),
	// "+N" when it lists N more, then ":port" likewise, e.g.
	// "api.shop.mesh:8080", "10.0.0.0/8+1:5432", "*:5432" (ports only)
	// or "*" (an empty match); "#2", "#3", ... is appended to a name
	// already taken.
	Name string `json:"name"`
	// Match is which destinations the entry is for. Required.
	Match *Match `json:"match"`
	// Timeouts bound connecting, requests and idling. Unset fields:
	// Defaults'.
	Timeouts *Timeouts `json:"timeouts"`
	// Retries say which failed requests are tried again, how often and
	// how fast. Unset fields: Defaults'.
	Retries *Retries `json:"retries"`
	// CircuitBreaker stops sending to a failing destination (and, with
	// perEndpoint, to a failing endpoint) for a while. Unset: Defaults',
	// or none.
	CircuitBreaker *CircuitBreaker `json:"circuitBreaker"`
	// Bulkhead caps what the app may have in flight to the destination,
	// so that one slow service cannot take all of the app's connections
	// and memory. Unset fields: Defaults', or no limit.
	Bulkhead *Bulkhead `json:"bulkhead"`
	// Fallback is what a request is answered while the destination's
	// circuit is open or its bulkhead is full. Unset: none; the request
	// fails (503).
	Fallback *Fallback `json:"fallback"`
	// Mirror copies a share of the HTTP requests to another service, for
	// audit or testing; the copy's answer is dropped. Unset: none.
	Mirror *Mirror `json:"mirror"`
	// Faults delay or fail a share of the HTTP requests on purpose, to
	// test how the app copes. Unset: none.
	Faults *Faults `json:"faults"`
	// TCPFaults delay or reset a share of the connections that are not
	// HTTP (opaque TCP). Unset: none.
	TCPFaults *TCPFaults `json:"tcpFaults"`
	// Routes override timeouts, retries, fallback, mirror and faults for
	// some of the destination's HTTP requests. A request gets the first
	// route, in this order, whose match holds; with none, the
	// destination's own settings.
	Routes []Route `json:"routes"`
}

// Match is which destinations a Destination entry is for: what the proxy
// knows of an outbound connection's destination before anything is sent.
// Each list holds when any of its entries matches, and the match when
// all its lists hold; a list left out holds for any destination, so
// match: {} matches every destination (put it last).
//
// Example: match: {hosts: [api.shop.mesh, "*.api.shop.mesh"], ports: [8080, 8443]}
type Match struct {
	// Hosts are names of the destination, as the app resolved its
	// address through the sidecar's DNS proxy (or the mesh service it is
	// an address of): exact, or "*.example.com" for any name under
	// example.com. Lower case, no port. A destination whose address was
	// not resolved through the sidecar has no name and meets no host.
	Hosts []string `json:"hosts"`
	// Ports are destination ports, 1 to 65535.
	Ports []uint16 `json:"ports"`
	// Identities are the SPIFFE ID the destination's sidecar must
	// present, as patterns: exact, a prefix ending in "*"
	// (spiffe://cluster.local/ns/shop/*) or "*" standing for one segment
	// (spiffe://cluster.local/ns/*/sa/api). A destination outside the
	// mesh has none and meets no identity.
	Identities []string `json:"identities"`
	// CIDRs are destination addresses, e.g. 10.1.0.0/16 or
	// 192.0.2.7/32.
	CIDRs []netip.Prefix `json:"cidrs"`
}

// Route is settings for some of a destination's HTTP requests, an entry
// of a destination's routes. Its timeouts and retries are merged field by
// field over the destination's; its fallback, mirror and faults, when
// set, replace the destination's whole, and written empty ({}) turn them
// off for the route.
//
// Example:
//
//	routes:
//	- name: search
//	  match: {methods: [GET], paths: ["/api/search", "/api/search/*"]}
//	  timeouts: {request: 2s}
//	  fallback: {stale: {maxAge: 10m}}
type Route struct {
	// Name names the route in metrics, logs and explain. Optional;
	// letters, digits, '.', '_' and '-', at most 64, unique within the
	// destination. Unset: derived from the match: its methods joined
	// with ',' and its first path ("+N" when it lists N more), e.g.
	// "GET,HEAD /api/*"; "#2", ... appended to a name already taken.
	Name string `json:"name"`
	// Match is which requests the route is for. Required, with methods
	// or paths or both.
	Match *RouteMatch `json:"match"`
	// Timeouts: request, perTry and streamIdle; connect and idle are the
	// destination's (connections are shared by its routes).
	Timeouts *Timeouts `json:"timeouts"`
	// Retries: any field but budget (a budget is the destination's).
	Retries *Retries `json:"retries"`
	// Fallback replaces the destination's; {} turns it off.
	Fallback *Fallback `json:"fallback"`
	// Mirror replaces the destination's; {} turns it off.
	Mirror *Mirror `json:"mirror"`
	// Faults replace the destination's; {} turns them off.
	Faults *Faults `json:"faults"`
}

// RouteMatch is which requests a route is for. Each list holds when any
// of its entries matches, and the match when both do; a list left out
// holds for any request.
type RouteMatch struct {
	// Methods are request methods, upper case: GET, HEAD, POST, PUT,
	// DELETE, CONNECT, OPTIONS, TRACE or PATCH.
	Methods []string `json:"methods"`
	// Paths are request paths, the query left out, after the proxy
	// normalises them (percent-decoding, merged slashes, resolved "."
	// and ".."), written as policy rules write them: exact
	// ("/api/items"), a prefix ending in "*" ("/api/*" is everything
	// under /api/, not /api itself), "*" standing for one segment
	// ("/users/*/orders"), or "*" alone for any path.
	Paths []string `json:"paths"`
}

// Timeouts bound the phases of a destination's connections and
// requests. A duration is written with its unit: "250ms", "5s", "1m".
//
// Example: timeouts: {connect: 1s, request: 5s, perTry: 1s, streamIdle: 5m}
type Timeouts struct {
	// Connect bounds connecting to the destination (and the mesh
	// handshake), for each endpoint tried. More than 0. Unset: the
	// proxy's timeouts.connect (10s). Not in routes.
	Connect *confval.Duration `json:"connect"`
	// Request bounds a whole HTTP request, from the moment the proxy has
	// it until the response's headers arrive, all tries and the waits
	// between them included; past it the app is answered 504. 0: no
	// limit. Unset: no limit.
	Request *confval.Duration `json:"request"`
	// PerTry bounds each try of a request, until its response's headers;
	// a try past it is abandoned and, when the retries allow, tried
	// again. At most Request. 0: no limit. Unset: no limit.
	PerTry *confval.Duration `json:"perTry"`
	// Idle closes a connection to the destination when no byte has moved
	// either way for this long (opaque TCP, a WebSocket), or a pooled
	// HTTP/1 or HTTP/2 mesh connection that has carried no request for
	// this long. More than 0. Unset: the proxy's timeouts.idle (1h). Not
	// in routes.
	Idle *confval.Duration `json:"idle"`
	// StreamIdle ends a request whose body or response body has not
	// moved for this long, for long-lived streams (gRPC streaming,
	// server-sent events, WebSocket) that Request must not bound. 0: no
	// limit. Unset: no limit.
	StreamIdle *confval.Duration `json:"streamIdle"`
}

// Retries say which failed requests are tried again. A retry goes to an
// endpoint picked anew, after a backoff, while the request's timeout
// lasts and the destination's retry budget allows; a response's
// Retry-After is waited for, within MaxRetryAfter. The last try's
// outcome is the app's.
//
// Example: retries: {attempts: 3, on: [connect-failure, reset, "503", unavailable], methods: [GET, POST]}
type Retries struct {
	// Attempts is how many times a request may be tried again after its
	// first try, 0 to 10. 0: never. Unset: 2.
	Attempts *int `json:"attempts"`
	// On is what is worth a retry:
	//   - connect-failure: no connection could be made (or its mesh
	//     handshake failed); nothing was sent.
	//   - reset: the connection was reset or closed before any byte of a
	//     response came.
	//   - an HTTP status, 429 or 500 to 599, e.g. "503".
	//   - a gRPC status code (of a response's grpc-status), e.g.
	//     unavailable or resource-exhausted (also written UNAVAILABLE,
	//     RESOURCE_EXHAUSTED).
	// Unset: [connect-failure, reset, "503"].
	On []RetryOn `json:"on"`
	// Methods are the request methods retried. Unset: the idempotent
	// ones, [GET, HEAD, OPTIONS, PUT, DELETE]; list others (POST, PATCH)
	// to opt them in, e.g. for a route whose requests carry an
	// idempotency key. A connect failure is retried whatever the method:
	// nothing was sent.
	Methods []string `json:"methods"`
	// Backoff is the wait before each retry. Unset: base 25ms, max 250ms.
	Backoff *Backoff `json:"backoff"`
	// Budget bounds the destination's retries. Unset: ratio 0.2,
	// minPerSecond 3. Not in routes: a budget is the destination's.
	Budget *Budget `json:"budget"`
	// MaxBodyBytes is how much of a request's body is kept to send it
	// again, 0 to 16 MiB: a request whose body is longer is not retried
	// once any of its body is sent. 0: a request with a body is retried
	// only on connect-failure. Unset: 65536 (64 KiB).
	MaxBodyBytes *int64 `json:"maxBodyBytes"`
	// MaxRetryAfter bounds a response's Retry-After: a retry waits for
	// it, unless it asks for longer than this (or than the request's
	// time left), and then the response is the app's. 0: a response with
	// a Retry-After other than 0 is not retried. Unset: 10s.
	MaxRetryAfter *confval.Duration `json:"maxRetryAfter"`
}

// RetryOn is a condition for a retry, see Retries.On: connect-failure,
// reset, an HTTP status such as "503" (in YAML it may be written as a
// number), or a gRPC code such as unavailable.
type RetryOn string

// The retry conditions that are not a status.
const (
	OnConnectFailure RetryOn = "connect-failure"
	OnReset          RetryOn = "reset"
)

// UnmarshalJSON reads a string, or an HTTP status written as a number
// (503); which conditions exist is Validate's to say.
func (r *RetryOn) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*r = RetryOn(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err == nil {
		*r = RetryOn(n.String())
		return nil
	}
	return confval.Errorf("%s is not a condition; want connect-failure, reset, a status code such as \"503\", or a gRPC code such as unavailable", b)
}

// Backoff is the wait before each retry, with full jitter: before the
// n-th retry (n from 1), a random duration from 0 to min(Max, Base ×
// 2^(n-1)), so that clients that failed together do not retry together.
//
// Example: backoff: {base: 50ms, max: 1s}
type Backoff struct {
	// Base is the first retry's longest wait. More than 0. Unset: 25ms.
	Base *confval.Duration `json:"base"`
	// Max bounds every wait. At least Base. Unset: 10 × Base.
	Max *confval.Duration `json:"max"`
}

// Budget bounds a destination's retries so that retries cannot multiply
// the load of a destination already failing: its retries may be at most
// Ratio of its recent requests, plus MinPerSecond a second so that a
// destination with few requests can still retry. A retry over the budget
// is not made; the failure is the app's.
//
// Example: budget: {ratio: 0.1, minPerSecond: 5}
type Budget struct {
	// Ratio is retries allowed per request, 0 to 1. Unset: 0.2.
	Ratio *float64 `json:"ratio"`
	// MinPerSecond is retries a second allowed whatever the ratio, 0 to
	// 10000. Unset: 3.
	MinPerSecond *int `json:"minPerSecond"`
}

// CircuitBreaker stops sending requests (and connections) to a failing
// destination for a while, answering them at once (with the fallback,
// or 503) instead of waiting on it. It counts as failures connect
// failures, resets and timeouts before a response, and 502, 503 and
// 504. Closed, it counts; when a trigger fires it opens: for OpenFor
// nothing is sent; then, half-open, HalfOpenRequests trial requests are
// let through, the others refused: if all succeed it closes, if one
// fails it opens again.
//
// Example: circuitBreaker: {consecutiveFailures: 5, failureRate: {percent: 50, window: 30s, minRequests: 20}, openFor: 10s}
type CircuitBreaker struct {
	// ConsecutiveFailures opens the circuit after this many failures in
	// a row, 0 to 10000. 0: not on consecutive failures (with no
	// failureRate either, there is no breaker: a way to turn off one
	// that defaults sets). Unset: 5.
	ConsecutiveFailures *int `json:"consecutiveFailures"`
	// FailureRate opens the circuit when the share of failed requests
	// over a window is too high. Unset: not on a failure rate. {}: not on
	// a failure rate, even when defaults set one.
	FailureRate *FailureRate `json:"failureRate"`
	// OpenFor is how long the circuit stays open before trial requests.
	// More than 0. Unset: 10s.
	OpenFor *confval.Duration `json:"openFor"`
	// HalfOpenRequests is how many trial requests are let through
	// half-open, 1 to 1000. Unset: 1.
	HalfOpenRequests *int `json:"halfOpenRequests"`
	// PerEndpoint gives each endpoint of the destination a breaker of
	// its own, which leaves a failing endpoint out of the balancing
	// while it is open. Unset: none (the load balancer's outlier
	// detection still ejects failing endpoints). {}: none, even when
	// defaults set one.
	PerEndpoint *EndpointBreaker `json:"perEndpoint"`
}

// EndpointBreaker is a circuit breaker per endpoint; its fields mean
// what CircuitBreaker's do, with the same defaults, for one endpoint.
//
// Example: perEndpoint: {consecutiveFailures: 3, openFor: 30s}
type EndpointBreaker struct {
	ConsecutiveFailures *int              `json:"consecutiveFailures"`
	FailureRate         *FailureRate      `json:"failureRate"`
	OpenFor             *confval.Duration `json:"openFor"`
	HalfOpenRequests    *int              `json:"halfOpenRequests"`
}

// FailureRate opens a circuit when at least Percent of the requests of
// the last Window failed, once there were at least MinRequests of them.
//
// Example: failureRate: {percent: 50, window: 30s, minRequests: 20}
type FailureRate struct {
	// Percent of failed requests that opens the circuit, more than 0, at
	// most 100. Required.
	Percent float64 `json:"percent"`
	// Window is how far back requests are counted. More than 0. Unset:
	// 10s.
	Window *confval.Duration `json:"window"`
	// MinRequests is how many requests the window must hold before the
	// rate counts, 1 to 1000000. Unset: 20.
	MinRequests *int `json:"minRequests"`
}

// Bulkhead caps what the app may have in flight to one destination.
// What is over a cap is refused at once (503, or the fallback), so a
// slow destination costs the app only its share. Each cap is 0 to
// 1000000; 0 is no limit, and so is unset.
//
// Example: bulkhead: {maxConnections: 100, maxPending: 50, maxActive: 200, maxRetries: 10}
type Bulkhead struct {
	// MaxConnections caps the connections open to the destination.
	MaxConnections *int `json:"maxConnections"`
	// MaxPending caps the requests waiting for a connection or for a
	// place under MaxActive.
	MaxPending *int `json:"maxPending"`
	// MaxActive caps the requests in flight.
	MaxActive *int `json:"maxActive"`
	// MaxRetries caps the retries in flight (waiting out their backoff
	// or sent).
	MaxRetries *int `json:"maxRetries"`
}

// Fallback is what a request is answered while its destination's
// circuit is open or its bulkhead is full, instead of a 503: a stale
// response when one is kept, else the static one. {}: no fallback.
//
// Example: fallback: {stale: {maxAge: 5m, maxBytes: 1048576}, static: {status: 503, body: "try later"}}
type Fallback struct {
	// Stale keeps the last good response of each cacheable GET (a 200
	// that its Cache-Control allows to store, neither no-store nor
	// private) and answers it again, as stale-if-error (RFC 5861) would.
	// Unset: none.
	Stale *StaleFallback `json:"stale"`
	// Static is a configured response. Unset: none.
	Static *StaticResponse `json:"static"`
}

// StaleFallback bounds the responses kept for stale fallbacks: a
// destination keeps its own, shared by its routes that set no fallback,
// and each route with a fallback of its own keeps its own.
type StaleFallback struct {
	// MaxAge is how old a kept response may be and still be answered.
	// More than 0. Unset: 5m.
	MaxAge *confval.Duration `json:"maxAge"`
	// MaxBytes bounds the kept responses' size, headers and bodies, 1
	// byte to 1 GiB; the least recently used go first, and a response
	// larger than it is not kept. Unset: 1048576 (1 MiB).
	MaxBytes *int64 `json:"maxBytes"`
}

// StaticResponse is a configured fallback response.
//
// Example: static: {status: 200, headers: {content-type: application/json}, body: '{"items": []}'}
type StaticResponse struct {
	// Status is the response's status, 100 to 599. Required.
	Status int `json:"status"`
	// Headers are the response's headers; not Content-Length (it is the
	// body's), Transfer-Encoding or Connection.
	Headers map[string]string `json:"headers"`
	// Body is the response's body, at most 1 MiB.
	Body string `json:"body"`
}

// Mirror copies a share of HTTP requests to another service and drops
// its answers: fire and forget, for audit services and testing a new
// version with real traffic. The app's request never waits for the
// copy. {}: no mirror.
//
// Example: mirror: {to: "audit.shop.mesh:8080", percent: 10}
type Mirror struct {
	// To is where copies are sent, host:port (a name or an IP address,
	// an IPv6 address in brackets). Required, unless the section is
	// empty.
	To string `json:"to"`
	// Percent is the share of requests copied, 0 to 100 (fractions such
	// as 0.5 too). Unset: 100.
	Percent *float64 `json:"percent"`
	// MaxConcurrent caps the copies in flight, 1 to 10000; a request
	// over it is not copied. A destination's mirror is shared by its
	// routes that set none, and so is its cap. Unset: 10.
	MaxConcurrent *int `json:"maxConcurrent"`
	// MaxBodyBytes is the longest body copied, 0 to 16 MiB; a request
	// with a longer body is not copied. 0: only requests without a body.
	// Unset: 65536 (64 KiB).
	MaxBodyBytes *int64 `json:"maxBodyBytes"`
}

// Faults inject failures into HTTP requests on purpose, to test how the
// app copes: off unless configured. A request may be both delayed and
// aborted (the delay first). {}: no faults.
//
// Example: faults: {delay: {duration: 2s, percent: 10}, abort: {status: 503, grpc: unavailable, percent: 5}}
type Faults struct {
	// Delay holds a share of requests before they are sent. Unset: none.
	Delay *DelayFault `json:"delay"`
	// Abort answers a share of requests with an error, without sending
	// them. Unset: none.
	Abort *AbortFault `json:"abort"`
}

// DelayFault delays a share of requests (or connections) by a fixed
// duration.
//
// Example: delay: {duration: 500ms, percent: 20}
type DelayFault struct {
	// Duration is the delay. More than 0, at most 1h. Required.
	Duration confval.Duration `json:"duration"`
	// Percent is the share delayed, 0 to 100. Unset: 100.
	Percent *float64 `json:"percent"`
}

// AbortFault answers a share of requests with an error. At least one of
// Status and GRPC is required. A gRPC request gets GRPC when it is set,
// else Status; any other request gets Status, and is not aborted when
// only GRPC is set.
//
// Example: abort: {status: 503, percent: 1}
type AbortFault struct {
	// Status is the HTTP status answered, 400 to 599.
	Status int `json:"status"`
	// GRPC is the gRPC status code answered to gRPC requests, e.g.
	// unavailable (also written UNAVAILABLE); not ok.
	GRPC string `json:"grpc"`
	// Percent is the share aborted, 0 to 100. Unset: 100.
	Percent *float64 `json:"percent"`
}

// TCPFaults inject failures into a destination's connections that are
// not HTTP (opaque TCP): off unless configured. {}: no faults.
//
// Example: tcpFaults: {delay: {duration: 1s, percent: 10}, reset: {percent: 1}}
type TCPFaults struct {
	// Delay holds a share of connections before the destination is
	// dialed. Unset: none.
	Delay *DelayFault `json:"delay"`
	// Reset resets a share of connections at once, without dialing the
	// destination. Unset: none.
	Reset *ResetFault `json:"reset"`
}

// ResetFault resets a share of connections.
type ResetFault struct {
	// Percent is the share reset, 0 to 100. Unset: 100.
	Percent *float64 `json:"percent"`
}

// The built-in defaults, and bounds that keep a setting from costing
// unbounded memory or meaning nothing.
const (
	DefaultAttempts           = 2
	DefaultBackoffBase        = 25 * time.Millisecond
	DefaultBudgetRatio        = 0.2
	DefaultBudgetMinPerSecond = 3
	DefaultMaxRetryBodyBytes  = 64 << 10
	DefaultMaxRetryAfter      = 10 * time.Second
	// DefaultMaxBackoff is 10 × the backoff's base, this with the
	// default base.
	DefaultMaxBackoff = 10 * DefaultBackoffBase

	DefaultConsecutiveFailures = 5
	DefaultOpenFor             = 10 * time.Second
	DefaultHalfOpenRequests    = 1
	DefaultFailureWindow       = 10 * time.Second
	DefaultFailureMinRequests  = 20

	DefaultStaleMaxAge   = 5 * time.Minute
	DefaultStaleMaxBytes = 1 << 20

	DefaultMirrorMaxConcurrent = 10
	DefaultMirrorMaxBodyBytes  = 64 << 10

	maxAttempts        = 10
	maxMinPerSecond    = 10000
	maxBodyBytes       = 16 << 20
	maxStaleBytes      = 1 << 30
	maxStaticBody      = 1 << 20
	maxLimit           = 1_000_000
	maxFailures        = 10000
	maxHalfOpen        = 1000
	maxMirrorConc      = 10000
	maxFaultDelay      = time.Hour
	maxRetryConditions = 100
)

// DefaultName is the name (DestPolicy.Key) of the built-in policy, that
// of destinations no entry matches; no entry may take it.
const DefaultName = "default"

// idempotent are the methods retried by default (RFC 9110 §9.2.2, less
// TRACE, which no app retries).
var idempotent = []string{"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Validate reports every problem of cfg at once (errors.Join, one per
// line), each with its field path under resilience and the fix.
func Validate(cfg Config) error {
	var errs []error
	if d := cfg.Defaults; d != nil {
		v := validator{Problems: confval.Problems{Field: "resilience.defaults"}, level: levelDefaults}
		v.timeouts(d.Timeouts, nil, nil)
		v.retries(d.Retries)
		v.circuitBreaker(d.CircuitBreaker)
		v.bulkhead(d.Bulkhead)
		errs = append(errs, v.Errs...)
	}
	names := map[string]int{}
	catchAll := -1
	for i, d := range cfg.Destinations {
		v := validator{Problems: confval.Problems{Field: fmt.Sprintf("resilience.destinations[%d]", i)}, level: levelDestination}
		v.destination(cfg, i)
		if d.Name != "" && nameRE.MatchString(d.Name) && d.Name != DefaultName {
			if j, dup := names[d.Name]; dup {
				v.Bad("name", "%q is also resilience.destinations[%d].name; give each destination its own name", d.Name, j)
			} else {
				names[d.Name] = i
			}
		}
		if d.Match != nil {
			if catchAll >= 0 {
				v.Bad("match", "never applies: resilience.destinations[%d].match matches every destination first; "+
					"put this entry before it", catchAll)
			} else {
				for j, e := range cfg.Destinations[:i] {
					if e.Match != nil && reflect.DeepEqual(e.Match, d.Match) {
						v.Bad("match", "never applies: the same as resilience.destinations[%d].match, which comes first; "+
							"merge the two entries, or make the matches differ", j)
						break
					}
				}
			}
			if d.Match.any() && catchAll < 0 {
				catchAll = i
			}
		}
		errs = append(errs, v.Errs...)
	}
	return errors.Join(errs...)
}

// level is where a section is written: what it may set depends on it.
type level int

const (
	levelDefaults level = iota
	levelDestination
	levelRoute
)

// validator gathers the problems of one level's sections
// (confval.Problems), each field named under Field.
type validator struct {
	confval.Problems
	level level
}

func (m *Match) any() bool {
	return m.Hosts == nil && m.Ports == nil && m.Identities == nil && m.CIDRs == nil
}

func (v *validator) destination(cfg Config, i int) {
	d := cfg.Destinations[i]
	switch {
	case d.Name == "":
	case !nameRE.MatchString(d.Name):
		v.Bad("name", "%q: want 1 to 64 letters, digits, '.', '_' or '-'", d.Name)
	case d.Name == DefaultName:
		v.Bad("name", "%q is the name of the built-in policy, for destinations no entry matches; "+
			"pick another, or set resilience.defaults to change that policy", d.Name)
	}
	if d.Match == nil {
		v.Bad("match", "missing; want e.g. match: {hosts: [api.shop.mesh], ports: [8080]}, or match: {} for every destination")
	} else {
		v.match(d.Match)
	}
	var defT *Timeouts
	if cfg.Defaults != nil {
		defT = cfg.Defaults.Timeouts
	}
	v.timeouts(d.Timeouts, defT, nil)
	v.retries(d.Retries)
	v.circuitBreaker(d.CircuitBreaker)
	v.bulkhead(d.Bulkhead)
	v.fallback(d.Fallback, nil)
	v.mirror(d.Mirror)
	v.faults(d.Faults)
	v.tcpFaults(d.TCPFaults)

	names := map[string]int{}
	for j, r := range d.Routes {
		rv := validator{Problems: confval.Problems{Field: fmt.Sprintf("%s.routes[%d]", v.Field, j)}, level: levelRoute}
		rv.route(r)
		rv.timeouts(r.Timeouts, d.Timeouts, defT)
		if r.Name != "" && nameRE.MatchString(r.Name) {
			if k, dup := names[r.Name]; dup {
				rv.Bad("name", "%q is also routes[%d].name; give each route of a destination its own name", r.Name, k)
			} else {
				names[r.Name] = j
			}
		}
		if r.Match != nil {
			for k, e := range d.Routes[:j] {
				if e.Match != nil && reflect.DeepEqual(e.Match, r.Match) {
					rv.Bad("match", "never applies: the same as routes[%d].match, which comes first; merge the two routes", k)
					break
				}
			}
		}
		v.Errs = append(v.Errs, rv.Errs...)
	}
}

func (v *validator) match(m *Match) {
	v.list("match.hosts", m.Hosts != nil, len(m.Hosts), "match any name")
	for i, h := range m.Hosts {
		if err := policy.CheckHost(h); err != nil {
			v.Bad(fmt.Sprintf("match.hosts[%d]", i), "%v", err)
		}
	}
	v.list("match.ports", m.Ports != nil, len(m.Ports), "match any port")
	seen := map[uint16]int{}
	for i, p := range m.Ports {
		f := fmt.Sprintf("match.ports[%d]", i)
		if p == 0 {
			v.Bad(f, "0 is not a port; want a number from 1 to 65535")
		} else if j, dup := seen[p]; dup {
			v.Bad(f, "%d is also match.ports[%d]; list it once", p, j)
		}
		seen[p] = i
	}
	v.list("match.identities", m.Identities != nil, len(m.Identities), "match any identity")
	for i, id := range m.Identities {
		if err := policy.CheckIdentity(id); err != nil {
			v.Bad(fmt.Sprintf("match.identities[%d]", i), "%v", err)
		}
	}
	v.list("match.cidrs", m.CIDRs != nil, len(m.CIDRs), "match any address")
	for i, p := range m.CIDRs {
		if err := netlist.CheckPrefix(p); err != nil {
			v.Bad(fmt.Sprintf("match.cidrs[%d]", i), "%v", err)
		}
	}
}

// list refuses a list written empty: it would match nothing, which is
// surely not meant.
func (v *validator) list(field string, set bool, n int, leftOut string) {
	if set && n == 0 {
		v.Bad(field, "empty list; remove it to %s", leftOut)
	}
}

func (v *validator) route(r Route) {
	if r.Name != "" && !nameRE.MatchString(r.Name) {
		v.Bad("name", "%q: want 1 to 64 letters, digits, '.', '_' or '-'", r.Name)
	}
	m := r.Match
	switch {
	case m == nil:
		v.Bad("match", "missing; want e.g. match: {methods: [GET], paths: [\"/api/*\"]}")
	case m.Methods == nil && m.Paths == nil:
		v.Bad("match", "matches every request; set methods or paths, or move the route's settings to the destination")
	}
	if m != nil {
		v.list("match.methods", m.Methods != nil, len(m.Methods), "match any method")
		v.methods("match.methods", m.Methods)
		v.list("match.paths", m.Paths != nil, len(m.Paths), "match any path")
		for i, p := range m.Paths {
			if err := policy.CheckPath(p); err != nil {
				v.Bad(fmt.Sprintf("match.paths[%d]", i), "%v", err)
			}
		}
	}
	v.retries(r.Retries)
	var methods []string
	if m != nil {
		methods = m.Methods
	}
	v.fallback(r.Fallback, methods)
	v.mirror(r.Mirror)
	v.faults(r.Faults)
}

func (v *validator) methods(field string, ms []string) {
	seen := map[string]int{}
	for i, m := range ms {
		f := fmt.Sprintf("%s[%d]", field, i)
		if MethodOf(m) == 0 {
			v.Bad(f, "%q is not a method; want GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE or PATCH", m)
		} else if j, dup := seen[m]; dup {
			v.Bad(f, "%s is also %s[%d]; list it once", m, field, j)
		}
		seen[m] = i
	}
}

// timeouts checks t, written at v's level; above are the levels above,
// narrowest first, for perTry ≤ request as merged.
func (v *validator) timeouts(t *Timeouts, above ...*Timeouts) {
	if t == nil {
		return
	}
	positive := func(field string, d *confval.Duration, eg string) {
		if d != nil && *d <= 0 {
			v.Bad("timeouts."+field, "%v: must be more than 0, e.g. %s; leave it out for the default", d.D(), eg)
		}
	}
	notNegative := func(field string, d *confval.Duration, eg string) {
		if d != nil && *d < 0 {
			v.Bad("timeouts."+field, "%v: must be 0 (no limit) or more, e.g. %s", d.D(), eg)
		}
	}
	positive("connect", t.Connect, "1s")
	notNegative("request", t.Request, "5s")
	notNegative("perTry", t.PerTry, "1s")
	positive("idle", t.Idle, "5m")
	notNegative("streamIdle", t.StreamIdle, "5m")
	if v.level == levelRoute {
		if t.Connect != nil {
			v.Bad("timeouts.connect", "a route cannot set it: connections are shared by the destination's routes; "+
				"set it in the destination's timeouts")
		}
		if t.Idle != nil {
			v.Bad("timeouts.idle", "a route cannot set it: connections are shared by the destination's routes; "+
				"set it in the destination's timeouts, or streamIdle for the route's requests")
		}
	}
	// perTry ≤ request, as merged with the levels above; said where
	// either is written, at the narrowest level that writes one.
	if t.PerTry == nil && t.Request == nil {
		return
	}
	levels := append([]*Timeouts{t}, above...)
	perTry := get(levels, func(t *Timeouts) *confval.Duration { return t.PerTry }, 0)
	request := get(levels, func(t *Timeouts) *confval.Duration { return t.Request }, 0)
	if perTry > 0 && request > 0 && perTry > request {
		if t.PerTry != nil {
			v.Bad("timeouts.perTry", "%v is longer than the request timeout (%v), which bounds all tries; "+
				"make it shorter, e.g. a third of it", perTry.D(), request.D())
		} else {
			v.Bad("timeouts.request", "%v is shorter than the per-try timeout (%v) it bounds; make it longer, "+
				"or set perTry here too", request.D(), perTry.D())
		}
	}
}

func (v *validator) retries(r *Retries) {
	if r == nil {
		return
	}
	if a := r.Attempts; a != nil && (*a < 0 || *a > maxAttempts) {
		v.Bad("retries.attempts", "%d: want 0 (no retries) to %d", *a, maxAttempts)
	}
	switch {
	case r.On != nil && len(r.On) == 0:
		v.Bad("retries.on", "empty list; want e.g. [connect-failure, reset, \"503\"], or set attempts: 0 for no retries")
	case len(r.On) > maxRetryConditions:
		v.Bad("retries.on", "%d conditions: want at most %d", len(r.On), maxRetryConditions)
	}
	seen := map[RetryOn]int{}
	for i, c := range r.On {
		f := fmt.Sprintf("retries.on[%d]", i)
		var cs Conditions
		if !cs.add(c) {
			v.Bad(f, "%q is not a condition; want connect-failure, reset, a status code 429 or 500-599 such as \"503\", "+
				"or a gRPC code such as unavailable", string(c))
		} else if j, dup := seen[c]; dup {
			v.Bad(f, "%s is also retries.on[%d]; list it once", c, j)
		}
		seen[c] = i
	}
	if r.Methods != nil && len(r.Methods) == 0 {
		v.Bad("retries.methods", "empty list; want e.g. [GET, HEAD, OPTIONS, PUT, DELETE], or set attempts: 0 for no retries")
	}
	v.methods("retries.methods", r.Methods)
	for i, m := range r.Methods {
		if m == "CONNECT" {
			v.Bad(fmt.Sprintf("retries.methods[%d]", i), "CONNECT opens a tunnel, which cannot be sent again; remove it")
		}
	}
	if b := r.Backoff; b != nil {
		if b.Base != nil && *b.Base <= 0 {
			v.Bad("retries.backoff.base", "%v: must be more than 0, e.g. 25ms", b.Base.D())
		}
		base := DefaultBackoffBase
		if b.Base != nil {
			base = b.Base.D()
		}
		switch {
		case b.Max == nil:
		case *b.Max <= 0:
			v.Bad("retries.backoff.max", "%v: must be more than 0, e.g. 250ms", b.Max.D())
		case b.Max.D() < base:
			v.Bad("retries.backoff.max", "%v is less than the base (%v); make it at least the base", b.Max.D(), base)
		}
	}
	if b := r.Budget; b != nil {
		if v.level == levelRoute {
			v.Bad("retries.budget", "a route cannot set it: a retry budget is the destination's, shared by its routes; "+
				"set it in the destination's retries")
		}
		if b.Ratio != nil && !(*b.Ratio >= 0 && *b.Ratio <= 1) {
			v.Bad("retries.budget.ratio", "%v: want 0 to 1, the retries allowed per request, e.g. 0.2", *b.Ratio)
		}
		if m := b.MinPerSecond; m != nil && (*m < 0 || *m > maxMinPerSecond) {
			v.Bad("retries.budget.minPerSecond", "%d: want 0 to %d retries a second, e.g. 3", *m, maxMinPerSecond)
		}
	}
	if n := r.MaxBodyBytes; n != nil && (*n < 0 || *n > maxBodyBytes) {
		v.Bad("retries.maxBodyBytes", "%d: want 0 to %d (16 MiB): a body kept to send again takes memory until its request ends", *n, maxBodyBytes)
	}
	if d := r.MaxRetryAfter; d != nil && *d < 0 {
		v.Bad("retries.maxRetryAfter", "%v: must be 0 or more, e.g. 10s", d.D())
	}
}

func (v *validator) circuitBreaker(c *CircuitBreaker) {
	if c == nil {
		return
	}
	v.breaker("circuitBreaker", c.ConsecutiveFailures, c.FailureRate, c.OpenFor, c.HalfOpenRequests)
	if e := c.PerEndpoint; e != nil {
		v.breaker("circuitBreaker.perEndpoint", e.ConsecutiveFailures, e.FailureRate, e.OpenFor, e.HalfOpenRequests)
	}
}

func (v *validator) breaker(field string, consecutive *int, rate *FailureRate, openFor *confval.Duration, halfOpen *int) {
	if n := consecutive; n != nil && (*n < 0 || *n > maxFailures) {
		v.Bad(field+".consecutiveFailures", "%d: want 0 (not on consecutive failures) to %d, e.g. 5", *n, maxFailures)
	}
	if r := rate; r != nil && *r != (FailureRate{}) {
		if !(r.Percent > 0 && r.Percent <= 100) {
			if r.Percent == 0 {
				v.Bad(field+".failureRate.percent", "missing; want the share of failed requests that opens the circuit, "+
					"more than 0 and at most 100, e.g. 50; or write failureRate: {} for none")
			} else {
				v.Bad(field+".failureRate.percent", "%v: want more than 0 and at most 100, e.g. 50", r.Percent)
			}
		}
		if r.Window != nil && *r.Window <= 0 {
			v.Bad(field+".failureRate.window", "%v: must be more than 0, e.g. 30s", r.Window.D())
		}
		if n := r.MinRequests; n != nil && (*n < 1 || *n > maxLimit) {
			v.Bad(field+".failureRate.minRequests", "%d: want 1 to %d, e.g. 20", *n, maxLimit)
		}
	}
	if openFor != nil && *openFor <= 0 {
		v.Bad(field+".openFor", "%v: must be more than 0, e.g. 10s", openFor.D())
	}
	if n := halfOpen; n != nil && (*n < 1 || *n > maxHalfOpen) {
		v.Bad(field+".halfOpenRequests", "%d: want 1 to %d, e.g. 1", *n, maxHalfOpen)
	}
}

func (v *validator) bulkhead(b *Bulkhead) {
	if b == nil {
		return
	}
	for _, f := range []struct {
		name string
		n    *int
	}{{"maxConnections", b.MaxConnections}, {"maxPending", b.MaxPending}, {"maxActive", b.MaxActive}, {"maxRetries", b.MaxRetries}} {
		if f.n != nil && (*f.n < 0 || *f.n > maxLimit) {
			v.Bad("bulkhead."+f.name, "%d: want 0 (no limit) to %d", *f.n, maxLimit)
		}
	}
}

// fallback checks f; methods are the methods of its route's match (nil
// at the destination: any).
func (v *validator) fallback(f *Fallback, methods []string) {
	if f == nil {
		return
	}
	if s := f.Stale; s != nil {
		if s.MaxAge != nil && *s.MaxAge <= 0 {
			v.Bad("fallback.stale.maxAge", "%v: must be more than 0, e.g. 5m", s.MaxAge.D())
		}
		if n := s.MaxBytes; n != nil && (*n < 1 || *n > maxStaleBytes) {
			v.Bad("fallback.stale.maxBytes", "%d: want 1 to %d (1 GiB), e.g. 1048576", *n, maxStaleBytes)
		}
		if methods != nil && !slices.Contains(methods, "GET") {
			v.Bad("fallback.stale", "the route matches no GET, and only responses to GET are kept; "+
				"remove stale, or use a static fallback")
		}
	}
	if s := f.Static; s != nil {
		switch {
		case s.Status == 0:
			v.Bad("fallback.static.status", "missing; want a status from 100 to 599, e.g. 503")
		case s.Status < 100 || s.Status > 599:
			v.Bad("fallback.static.status", "%d: want a status from 100 to 599, e.g. 503", s.Status)
		}
		for _, name := range sortedKeys(s.Headers) {
			f := "fallback.static.headers." + name
			switch strings.ToLower(name) {
			case "content-length", "transfer-encoding", "connection":
				v.Bad(f, "the proxy sets it; remove it")
				continue
			}
			if !tokenRE.MatchString(name) {
				v.Bad("fallback.static.headers", "%q is not a header name", name)
			} else if strings.ContainsAny(s.Headers[name], "\r\n\x00") {
				v.Bad(f, "a header value cannot hold a line break or NUL")
			}
		}
		if len(s.Body) > maxStaticBody {
			v.Bad("fallback.static.body", "%d bytes: want at most %d (1 MiB)", len(s.Body), maxStaticBody)
		}
	}
}

var tokenRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

func (v *validator) mirror(m *Mirror) {
	if m == nil || *m == (Mirror{}) {
		return
	}
	if m.To == "" {
		v.Bad("mirror.to", "missing; want the host:port copies go to, e.g. audit.shop.mesh:8080; or write mirror: {} for no mirror")
	} else if _, _, err := parseHostPort(m.To); err != nil {
		v.Bad("mirror.to", "%v", err)
	}
	v.percent("mirror.percent", m.Percent)
	if n := m.MaxConcurrent; n != nil && (*n < 1 || *n > maxMirrorConc) {
		v.Bad("mirror.maxConcurrent", "%d: want 1 to %d, e.g. 10", *n, maxMirrorConc)
	}
	if n := m.MaxBodyBytes; n != nil && (*n < 0 || *n > maxBodyBytes) {
		v.Bad("mirror.maxBodyBytes", "%d: want 0 to %d (16 MiB)", *n, maxBodyBytes)
	}
}

// hostRE is a DNS name, or an IPv4 address (netip parses those first).
var hostRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$`)

// parseHostPort reads host:port, a name or an IP address and a port from
// 1 to 65535.
func parseHostPort(s string) (host string, port uint16, err error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port; want e.g. audit.shop.mesh:8080, 10.0.0.7:8080 or [fd00::7]:8080", s)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("%q: %q is not a port; want a number from 1 to 65535", s, p)
	}
	if a, err := netip.ParseAddr(h); err == nil {
		if a.Zone() != "" {
			return "", 0, fmt.Errorf("%q: an address with a zone cannot be reached from a pod; want e.g. [fd00::7]:8080", s)
		}
		return h, uint16(n), nil
	}
	if strings.Contains(s, "[") || !hostRE.MatchString(h) {
		return "", 0, fmt.Errorf("%q: %q is not a host name or IP address; want e.g. audit.shop.mesh:8080", s, h)
	}
	return strings.TrimSuffix(strings.ToLower(h), "."), uint16(n), nil
}

func (v *validator) percent(field string, p *float64) {
	if p != nil && !(*p >= 0 && *p <= 100) {
		v.Bad(field, "%v: want 0 to 100, e.g. 10", *p)
	}
}

func (v *validator) delay(field string, d *DelayFault) {
	if d == nil {
		return
	}
	switch {
	case d.Duration == 0:
		v.Bad(field+".duration", "missing; want how long to delay, e.g. 500ms")
	case d.Duration < 0 || d.Duration.D() > maxFaultDelay:
		v.Bad(field+".duration", "%v: want more than 0 and at most 1h, e.g. 500ms", d.Duration.D())
	}
	v.percent(field+".percent", d.Percent)
}

func (v *validator) faults(f *Faults) {
	if f == nil {
		return
	}
	v.delay("faults.delay", f.Delay)
	if a := f.Abort; a != nil {
		if a.Status == 0 && a.GRPC == "" {
			v.Bad("faults.abort", "want status or grpc or both, e.g. {status: 503, grpc: unavailable}")
		}
		if a.Status != 0 && (a.Status < 400 || a.Status > 599) {
			v.Bad("faults.abort.status", "%d: want an error status from 400 to 599, e.g. 503", a.Status)
		}
		if a.GRPC != "" {
			if c, ok := grpcCode(a.GRPC); !ok {
				v.Bad("faults.abort.grpc", "%q is not a gRPC status code; want e.g. unavailable, deadline-exceeded or internal", a.GRPC)
			} else if c == codes.OK {
				v.Bad("faults.abort.grpc", "%q is success; want an error code, e.g. unavailable", a.GRPC)
			}
		}
		v.percent("faults.abort.percent", a.Percent)
	}
}

func (v *validator) tcpFaults(f *TCPFaults) {
	if f == nil {
		return
	}
	v.delay("tcpFaults.delay", f.Delay)
	if r := f.Reset; r != nil {
		v.percent("tcpFaults.reset.percent", r.Percent)
	}
}

// grpcNames are the gRPC status codes by their names in lower case with
// '-' (gRPC's own names, UPPER_SNAKE, are read too).
var grpcNames = map[string]codes.Code{
	"ok": codes.OK, "cancelled": codes.Canceled, "unknown": codes.Unknown,
	"invalid-argument": codes.InvalidArgument, "deadline-exceeded": codes.DeadlineExceeded,
	"not-found": codes.NotFound, "already-exists": codes.AlreadyExists,
	"permission-denied": codes.PermissionDenied, "resource-exhausted": codes.ResourceExhausted,
	"failed-precondition": codes.FailedPrecondition, "aborted": codes.Aborted,
	"out-of-range": codes.OutOfRange, "unimplemented": codes.Unimplemented, "internal": codes.Internal,
	"unavailable": codes.Unavailable, "data-loss": codes.DataLoss, "unauthenticated": codes.Unauthenticated,
}

// grpcCode reads a gRPC status code's name: unavailable or UNAVAILABLE,
// resource-exhausted or RESOURCE_EXHAUSTED.
func grpcCode(s string) (codes.Code, bool) {
	c, ok := grpcNames[s]
	if !ok && s == strings.ToUpper(s) {
		c, ok = grpcNames[strings.ReplaceAll(strings.ToLower(s), "_", "-")]
	}
	return c, ok
}

// CodeName is the name of gRPC status code c as the config writes it
// (retries.on, faults.abort.grpc): unavailable, resource-exhausted,
// cancelled; its number for a code gRPC does not define.
func CodeName(c codes.Code) string {
	for name, code := range grpcNames {
		if code == c {
			return name
		}
	}
	return strconv.Itoa(int(c))
}

// statusCode reads an HTTP status written as digits, lo to hi.
func statusCode(s string, lo, hi int) (int, bool) {
	if len(s) != 3 {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= lo && n <= hi
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// get returns the first value field has at levels, narrowest first; def
// when none sets it.
func get[S, V any](levels []*S, field func(*S) *V, def V) V {
	for _, l := range levels {
		if l == nil {
			continue
		}
		if p := field(l); p != nil {
			return *p
		}
	}
	return def
}
