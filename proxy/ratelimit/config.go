package ratelimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"meshgate/internal/confval"
)

// Limit is one rate limit, an entry of rateLimits. A request (or, at L4,
// a new connection) it matches takes a token from the bucket of its key
// value, or (type quota) counts against its key value's quota; without
// a token, or over the quota, it is refused.
type Limit struct {
	// Name names the limit in answers, logs, metrics and explain. Unique;
	// letters, digits, '.', '_' and '-'.
	Name string `json:"name"`
	// Direction is inbound (the default: calls to the app) or outbound
	// (calls the app makes).
	Direction Direction `json:"direction"`
	// Key is what gets a bucket of its own: sourceIdentity, sourceIP,
	// route, jwtSubject or header:NAME (see Key).
	Key Key `json:"key"`
	// Match is what the limit applies to; unset: every request on every
	// port.
	Match *Match `json:"match"`
	// Type is what the limit counts with: rate (the default) is a token
	// bucket that Rate refills and Burst sizes; quota allows at most
	// Rate's N requests per window (see Quota).
	Type Type `json:"type"`
	// Rate is how fast a bucket refills: N/s, N/m, N/h or N/d; of a
	// quota, N requests per window (a second, minute, hour or day).
	Rate Rate `json:"rate"`
	// Burst is how many tokens a bucket holds: how many requests a key
	// may send at once. Unset (0): the rate per second rounded up, at
	// least 1 (50/s: 50; 600/m: 10; 100/h: 1). A quota has none.
	Burst int `json:"burst"`
	// Overrides give some key values a rate and burst (a quota: a quota)
	// of their own.
	Overrides []Override `json:"overrides"`
	// MaxKeys bounds the key values remembered (least recently used out
	// first); unset (0): 10000. A key value forgotten and seen again
	// starts with a full bucket.
	MaxKeys int `json:"maxKeys"`
	// Global counts the limit in Redis, shared by every sidecar using it
	// (the redis section), instead of in each sidecar alone.
	Global bool `json:"global"`
	// Per is what the limit counts: request (the default: HTTP requests;
	// a connection that is not HTTP never meets it) or connection (new
	// connections, counted when accepted and refused before anything is
	// forwarded; inbound only, keyed by sourceIP or sourceIdentity).
	Per Per `json:"per"`
}

// Type is how a limit counts: a token bucket or a quota.
type Type string

// The types of limit.
const (
	// TypeRate is a token bucket per key value: Rate refills it, Burst
	// is its size; over a span T it allows Burst + Rate×T, spread out.
	TypeRate Type = "rate"
	// TypeQuota allows a key value at most Rate.N requests per window
	// (Rate.Window). A key value's window starts at its first counted
	// request and lasts Rate.Window, whatever the wall clock says (600/m
	// from 12:00:40 runs to 12:01:40); the count starts again from zero
	// with the first request after it ends. A fixed window aligned to the
	// clock would let 2N through around a boundary; this one never lets
	// more than N through in any window started by a counted request. A
	// refused request is not counted: it does not use up the next
	// window, nor move the end of this one.
	TypeQuota Type = "quota"
)

// Quota reports whether l is a quota rather than a token bucket.
func (l *Limit) Quota() bool { return l.Type == TypeQuota }

// Per is what a limit counts.
type Per string

// The things a limit counts.
const (
	PerRequest    Per = "request"
	PerConnection Per = "connection"
)

// Connections reports whether l counts new connections rather than
// requests.
func (l *Limit) Connections() bool { return l.Per == PerConnection }

// Override is a rate and burst for one key value (of a quota: a quota,
// N per window, the window its own).
type Override struct {
	// Value is the key value, as the key reads it (e.g. a SPIFFE ID for
	// sourceIdentity, an address for sourceIP).
	Value string `json:"value"`
	// Rate is required.
	Rate Rate `json:"rate"`
	// Burst unset (0): the rate per second rounded up, at least 1. A
	// quota's override has none.
	Burst int `json:"burst"`
}

// Match is what a limit applies to. Each list holds when any of its
// entries matches; unset, it holds for anything.
type Match struct {
	// Ports are the app's ports (inbound) or the destination ports
	// (outbound).
	Ports []uint16   `json:"ports"`
	HTTP  *HTTPMatch `json:"http"`
}

// HTTPMatch is an HTTP request. A connection that is not HTTP never meets
// it.
type HTTPMatch struct {
	Methods []string `json:"methods"` // GET, POST, ...
	// Paths are request paths, the query left out, after the proxy
	// normalises them: exact ("/login"), or a prefix ending in "*"
	// ("/api/*" is everything under /api/, not /api itself).
	Paths []string `json:"paths"`
}

// Direction is the side of the app a limit guards.
type Direction string

// The directions.
const (
	Inbound  Direction = "inbound"
	Outbound Direction = "outbound"
)

// Key says what key value a request is counted under.
type Key string

// The keys. A header key is "header:" followed by the header's name
// (HeaderKey).
const (
	// SourceIdentity is the caller's verified SPIFFE ID.
	SourceIdentity Key = "sourceIdentity"
	// SourceIP is the caller's address.
	SourceIP Key = "sourceIP"
	// Route is the request's method and the matched path pattern.
	Route Key = "route"
	// JWTSubject is the sub claim of the request's validated bearer token.
	JWTSubject Key = "jwtSubject"
)

const headerPrefix = "header:"

// HeaderKey is the key of the value of header name.
func HeaderKey(name string) Key { return Key(headerPrefix + name) }

// Header returns the header name of a header key, and whether k is one.
func (k Key) Header() (name string, ok bool) {
	return strings.CutPrefix(string(k), headerPrefix)
}

// Rate is N requests per window; the zero Rate is unset.
type Rate struct {
	N      int64
	Window time.Duration // time.Second, time.Minute, time.Hour or 24h
}

// Day is the window of N/d.
const Day = 24 * time.Hour

var windows = map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour, "d": Day}

// maxN keeps N exact in a float64 and its per-second rate meaningful.
const maxN = 1_000_000_000

// ParseRate reads N/s, N/m, N/h or N/d, N a positive integer.
func ParseRate(s string) (Rate, error) {
	n, unit, ok := strings.Cut(s, "/")
	w, wok := windows[unit]
	if !ok || !wok {
		return Rate{}, confval.Errorf("%q: want N/s, N/m, N/h or N/d", s)
	}
	v, err := strconv.ParseInt(n, 10, 64)
	if err != nil || v <= 0 || v > maxN || n[0] == '+' {
		return Rate{}, confval.Errorf("%q: N must be a whole number from 1 to %d, e.g. 50/%s", s, maxN, unit)
	}
	return Rate{N: v, Window: w}, nil
}

// String writes r as it is read, e.g. 50/s; "" when unset. A window
// other than s, m, h or d is written as a duration, e.g. 50/3s.
func (r Rate) String() string {
	if r.N == 0 {
		return ""
	}
	var u string
	switch r.Window {
	case time.Second:
		u = "s"
	case time.Minute:
		u = "m"
	case time.Hour:
		u = "h"
	case Day:
		u = "d"
	default: // a sidecar's share of a global limit (RedisConfig.Instances)
		u = r.Window.String()
	}
	return strconv.FormatInt(r.N, 10) + "/" + u
}

// PerSecond is r in requests per second.
func (r Rate) PerSecond() float64 {
	if r.Window <= 0 {
		return 0
	}
	return float64(r.N) / r.Window.Seconds()
}

// DefaultBurst is the burst of a limit that sets none: r per second,
// rounded up, at least 1.
func (r Rate) DefaultBurst() int {
	return max(1, int(math.Ceil(r.PerSecond())))
}

// UnmarshalJSON reads a string such as "50/s".
func (r *Rate) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return confval.Errorf("%s is not a rate; want N/s, N/m, N/h or N/d, e.g. \"50/s\"", b)
	}
	v, err := ParseRate(s)
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// MarshalJSON writes r as a string such as "50/s".
func (r Rate) MarshalJSON() ([]byte, error) { return json.Marshal(r.String()) }

// DefaultMaxKeys is the key table's size of a limit that sets none.
const DefaultMaxKeys = 10000

// maxMaxKeys bounds a key table: each key value costs a few hundred bytes.
const maxMaxKeys = 10_000_000

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	methodRE = regexp.MustCompile(`^[A-Z][A-Z0-9_-]*$`)
	tokenRE  = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// Validate reports every problem of limits at once (errors.Join, one per
// line), each with its field path under rateLimits and the fix.
func Validate(limits []Limit) error {
	var errs []error
	seen := map[string]int{}
	for i, l := range limits {
		v := validator{confval.Problems{Field: fmt.Sprintf("rateLimits[%d]", i)}}
		v.limit(l)
		if l.Name != "" {
			if j, dup := seen[l.Name]; dup {
				v.Bad("name", "%q is also rateLimits[%d].name; give each limit its own name", l.Name, j)
			} else {
				seen[l.Name] = i
			}
		}
		errs = append(errs, v.Errs...)
	}
	return errors.Join(errs...)
}

// validator gathers one entry's problems (confval.Problems).
type validator struct{ confval.Problems }

func (v *validator) limit(l Limit) {
	switch {
	case l.Name == "":
		v.Bad("name", "missing; every limit needs a name, e.g. per-caller")
	case !nameRE.MatchString(l.Name):
		v.Bad("name", "%q: want 1 to 64 letters, digits, '.', '_' or '-'", l.Name)
	}
	out := false
	switch l.Direction {
	case "", Inbound:
	case Outbound:
		out = true
	default:
		v.Bad("direction", "%q is not a direction; want inbound or outbound", string(l.Direction))
	}
	v.key(l.Key, out)
	if l.Match != nil {
		v.match(l.Match)
	}
	v.per(l)
	quota := false
	switch l.Type {
	case "", TypeRate:
	case TypeQuota:
		quota = true
	default:
		v.Bad("type", "%q: want rate (a token bucket: rate and burst) or quota (at most N requests per window)", string(l.Type))
	}
	v.rate("rate", l.Rate)
	v.burst("burst", l.Burst, quota)
	switch {
	case l.MaxKeys < 0:
		v.Bad("maxKeys", "%d: want a positive number, or leave it out for %d", l.MaxKeys, DefaultMaxKeys)
	case l.MaxKeys > maxMaxKeys:
		v.Bad("maxKeys", "%d is more than %d; each key value takes memory", l.MaxKeys, maxMaxKeys)
	}
	if l.Overrides != nil && len(l.Overrides) == 0 {
		v.Bad("overrides", "empty list; remove it, or list key values with their own rate")
	}
	seen := map[string]int{}
	for i, o := range l.Overrides {
		f := fmt.Sprintf("overrides[%d]", i)
		if o.Value == "" {
			v.Bad(f+".value", "missing; want the key value this rate is for")
		} else if j, dup := seen[o.Value]; dup {
			v.Bad(f+".value", "%q is also overrides[%d].value; give each key value one override", o.Value, j)
		} else {
			seen[o.Value] = i
		}
		v.rate(f+".rate", o.Rate)
		v.burst(f+".burst", o.Burst, quota)
	}
}

func (v *validator) key(k Key, out bool) {
	if name, ok := k.Header(); ok {
		if !tokenRE.MatchString(name) {
			v.Bad("key", "%q is not a header name; want e.g. header:x-api-key", name)
		}
		return
	}
	switch k {
	case Route:
	case SourceIdentity, SourceIP, JWTSubject:
		if out {
			v.Bad("key", "%s: outbound calls have one caller, the app; key outbound limits by route or header:NAME", k)
		}
	case "":
		v.Bad("key", "missing; want sourceIdentity, sourceIP, route, jwtSubject or header:NAME")
	default:
		v.Bad("key", "%q is not a key; want sourceIdentity, sourceIP, route, jwtSubject or header:NAME", string(k))
	}
}

// per checks what a limit counts against what it can know: a new
// connection has a source (address, and identity once its mesh
// handshake is done) and a port, nothing of HTTP.
func (v *validator) per(l Limit) {
	switch l.Per {
	case "", PerRequest:
		return
	case PerConnection:
	default:
		v.Bad("per", "%q: want request or connection", string(l.Per))
		return
	}
	if l.Direction == Outbound {
		v.Bad("per", "connection: connection limits are inbound only (a new connection's key is its source); "+
			"limit the app's calls per request, keyed by route or header:NAME")
	}
	switch _, hdr := l.Key.Header(); {
	case hdr, l.Key == Route, l.Key == JWTSubject:
		v.Bad("key", "%s: a new connection has no HTTP request to read it from; key a connection limit by sourceIP or sourceIdentity, or set per: request", l.Key)
	}
	if l.Match != nil && l.Match.HTTP != nil {
		v.Bad("match.http", "a connection limit counts connections before any request is read; remove match.http, or set per: request")
	}
}

func (v *validator) rate(field string, r Rate) {
	if r.N == 0 {
		v.Bad(field, "missing; want N/s, N/m, N/h or N/d, e.g. 50/s")
		return
	}
	switch r.Window {
	case time.Second, time.Minute, time.Hour, Day:
	default:
		v.Bad(field, "window %v: want a second, minute, hour or day", r.Window)
	}
	if r.N < 0 || r.N > maxN {
		v.Bad(field, "%d per window: want a whole number from 1 to %d", r.N, maxN)
	}
}

func (v *validator) burst(field string, b int, quota bool) {
	switch {
	case quota && b != 0:
		v.Bad(field, "a quota has no burst: it allows the rate's N requests at any pace within its window; "+
			"remove burst, or set type: rate for a token bucket")
	case b < 0:
		v.Bad(field, "%d: want a positive number, or leave it out for the rate per second", b)
	case b > maxN:
		v.Bad(field, "%d is more than %d", b, maxN)
	}
}

func (v *validator) match(m *Match) {
	if m.Ports != nil && len(m.Ports) == 0 {
		v.Bad("match.ports", "empty list; remove it to apply the limit to every port")
	}
	seenPort := map[uint16]bool{}
	for i, p := range m.Ports {
		switch {
		case p == 0:
			v.Bad(fmt.Sprintf("match.ports[%d]", i), "0 is not a port; want a number from 1 to 65535")
		case seenPort[p]:
			v.Bad(fmt.Sprintf("match.ports[%d]", i), "%d is listed twice", p)
		}
		seenPort[p] = true
	}
	h := m.HTTP
	if h == nil {
		return
	}
	if h.Methods != nil && len(h.Methods) == 0 {
		v.Bad("match.http.methods", "empty list; remove it to match any method")
	}
	for i, meth := range h.Methods {
		if !methodRE.MatchString(meth) {
			v.Bad(fmt.Sprintf("match.http.methods[%d]", i), "%q is not a method; want upper case, e.g. GET", meth)
		}
	}
	if h.Paths != nil && len(h.Paths) == 0 {
		v.Bad("match.http.paths", "empty list; remove it to match any path")
	}
	for i, p := range h.Paths {
		f := fmt.Sprintf("match.http.paths[%d]", i)
		switch {
		case !strings.HasPrefix(p, "/"):
			v.Bad(f, "%q does not start with /; want e.g. /login or /api/*", p)
		case strings.Contains(strings.TrimSuffix(p, "*"), "*"):
			v.Bad(f, "%q has a * before its end: * only ends a prefix; want e.g. /api/*", p)
		}
	}
}

// Port says whether m applies on port p.
func (m *Match) Port(p uint16) bool {
	if m == nil || m.Ports == nil {
		return true
	}
	for _, q := range m.Ports {
		if q == p {
			return true
		}
	}
	return false
}

// Request says whether m's HTTP conditions hold for a request; path is
// normalised, without the query.
func (m *Match) Request(method, path string) bool {
	if m == nil || m.HTTP == nil {
		return true
	}
	h := m.HTTP
	if h.Methods != nil {
		ok := false
		for _, x := range h.Methods {
			if x == method {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if h.Paths == nil {
		return true
	}
	for _, p := range h.Paths {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			if strings.HasPrefix(path, prefix) {
				return true
			}
		} else if path == p {
			return true
		}
	}
	return false
}
