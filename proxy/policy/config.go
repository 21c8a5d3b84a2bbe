package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/internal/confval"
	"meshgate/netlist"
)

// Rule is one authorization rule, an entry of policy.rules. Its
// conditions are sections (from, to, http, jwt); a rule matches a
// connection or request when every condition it lists holds. A list
// holds when any of its entries matches; a section's not holds when none
// of what it lists matches. A rule with no condition matches everything
// on its ports.
type Rule struct {
	// Name names the rule in denials, logs, metrics and explain. Unique;
	// letters, digits, '.', '_' and '-'.
	Name string `json:"name"`
	// Policy groups rules for the metric's policy label (e.g. a team's
	// or an app's); "main" when unset.
	Policy string `json:"policy"`
	// Action is allow, deny or audit (log and count a match, never
	// block).
	Action Action `json:"action"`
	// DryRun decides and reports what the rule would do, never enforces
	// it: to roll a rule out safely.
	DryRun bool `json:"dryRun"`
	// Direction is inbound (the default: calls to the app) or outbound
	// (calls the app makes).
	Direction Direction `json:"direction"`
	// Ports are the app's ports (inbound) or the destination ports
	// (outbound) the rule applies to; none: every port. An allow rule
	// turns its ports to default deny.
	Ports []uint16 `json:"ports"`
	// From is who calls (inbound rules only).
	From *Source `json:"from"`
	// To is what is called (outbound rules only; inbound, the port says).
	To *Destination `json:"to"`
	// HTTP is the request. A connection that is not HTTP never meets it.
	HTTP *HTTPMatch `json:"http"`
	// JWT is the request's validated bearer token (inbound rules only).
	JWT *JWTMatch `json:"jwt"`
	// RevealReason tells the caller which rule denied it and why, in the
	// X-Meshgate-Error response header and body (HTTP) when this rule
	// denies. Unset: policy.revealReason.
	RevealReason *bool `json:"revealReason"`
}

// Action is what a rule does when it matches.
type Action string

// The actions.
const (
	Allow Action = "allow"
	Deny  Action = "deny"
	Audit Action = "audit"
)

// Direction is the side of the app a rule guards.
type Direction string

// The directions.
const (
	Inbound  Direction = "inbound"
	Outbound Direction = "outbound"
)

// Source is who calls. Identity patterns are SPIFFE IDs: exact, a prefix
// ending in "*" (spiffe://td/ns/shop/*), or with "*" standing for one
// path segment (spiffe://td/ns/*/sa/web); "*" alone is any authenticated
// caller.
type Source struct {
	Identities      []string       `json:"identities"`
	TrustDomains    []string       `json:"trustDomains"`
	Namespaces      []string       `json:"namespaces"`      // the ID's /ns/<namespace>/
	ServiceAccounts []string       `json:"serviceAccounts"` // the ID's /sa/<account>
	CIDRs           []netip.Prefix `json:"cidrs"`           // the client's address
	// Unauthenticated true holds for a client with no verified identity
	// (plaintext, in permissive mode); false for one with an identity.
	Unauthenticated *bool `json:"unauthenticated"`
	// Not holds when none of what it lists matches.
	Not *Source `json:"not"`
}

// Destination is what the app calls (outbound rules).
type Destination struct {
	// Hosts are names as the app resolved them through the sidecar's DNS
	// proxy: exact, or "*.example.com" for any name under example.com.
	Hosts []string `json:"hosts"`
	// Identities are the SPIFFE ID the destination's sidecar must present
	// (patterns as in Source); a destination outside the mesh has none.
	Identities []string       `json:"identities"`
	CIDRs      []netip.Prefix `json:"cidrs"`
	Not        *Destination   `json:"not"`
}

// HTTPMatch is an HTTP request.
type HTTPMatch struct {
	Methods []string `json:"methods"` // GET, POST, ...
	// Hosts are the Host header or :authority, port left out: exact, or
	// "*.example.com".
	Hosts []string `json:"hosts"`
	// Paths are request paths, the query left out, after normalising
	// (percent-decoding, merged slashes, resolved "." and ".."): exact;
	// a prefix ending in "*" ("/api/*" is everything under /api/, not
	// /api itself); or with "*" standing for one segment
	// ("/users/*/orders").
	Paths []string `json:"paths"`
	// Headers map a header name to what its value must be: a string (the
	// exact value), or a section with one of exact, prefix, regex (RE2,
	// the whole value) or present (true: sent with any value; false: not
	// sent).
	Headers map[string]HeaderMatch `json:"headers"`
	// GRPC are gRPC methods, "package.Service/Method" or
	// "package.Service/*"; a request that is not gRPC meets none.
	GRPC []string   `json:"grpc"`
	Not  *HTTPMatch `json:"not"`
}

// HeaderMatch is a condition on one header's value, see HTTPMatch.Headers.
type HeaderMatch struct {
	Exact   string `json:"exact,omitempty"`
	Prefix  string `json:"prefix,omitempty"`
	Regex   string `json:"regex,omitempty"`
	Present *bool  `json:"present,omitempty"`
}

// UnmarshalJSON reads a string (exact) or a section.
func (h *HeaderMatch) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*h = HeaderMatch{Exact: s}
		return nil
	}
	type plain HeaderMatch
	var p plain
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return confval.Errorf("%s is not a header condition; want a value (exact) or a section with one of exact, prefix, regex, present", b)
	}
	*h = HeaderMatch(p)
	return nil
}

// JWTMatch is the request's validated bearer token. A request without
// one (or with one that failed validation: it is refused before policy)
// meets no JWT condition.
type JWTMatch struct {
	Issuers   []string `json:"issuers"`
	Audiences []string `json:"audiences"`
	// Claims map a claim, nested keys joined with '.' (realm.roles), to
	// the values it may have: it holds when the claim equals one of them,
	// or, a list, contains one.
	Claims map[string]StringList `json:"claims"`
	Not    *JWTMatch             `json:"not"`
}

// StringList is a list of strings that may be written as one string.
type StringList []string

// UnmarshalJSON reads a string or a list of strings.
func (l *StringList) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*l = StringList{s}
		return nil
	}
	var ss []string
	if err := json.Unmarshal(b, &ss); err != nil {
		return confval.Errorf("%s is not a claim value; want a string or a list of strings", b)
	}
	*l = ss
	return nil
}

// Issuers are the JWT issuers rules may name (policy.jwtProviders).
type Issuers map[string]bool

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	methodRE = regexp.MustCompile(`^[A-Z][A-Z0-9_-]*$`)
	tokenRE  = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	grpcRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*/([A-Za-z_][A-Za-z0-9_]*|\*)$`)
	hostRE   = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?$`)
)

// Validate reports every problem of rules at once, each with its field
// path under prefix (e.g. "policy.rules"). issuers are the configured JWT
// providers' issuers, which jwt.issuers must name.
func Validate(prefix string, rules []Rule, issuers Issuers) error {
	var errs []error
	seen := map[string]int{}
	for i, r := range rules {
		v := validator{confval.Problems{Field: fmt.Sprintf("%s[%d]", prefix, i)}}
		v.rule(r, issuers)
		if r.Name != "" {
			if j, dup := seen[r.Name]; dup {
				v.Bad("name", "%q is also %s[%d].name; give each rule its own name", r.Name, prefix, j)
			} else {
				seen[r.Name] = i
			}
		}
		errs = append(errs, v.Errs...)
	}
	return errors.Join(errs...)
}

// validator gathers one entry's problems (confval.Problems).
type validator struct{ confval.Problems }

func (v *validator) rule(r Rule, issuers Issuers) {
	switch {
	case r.Name == "":
		v.Bad("name", "missing; every rule needs a name, e.g. api-read")
	case r.Name == DefaultRule:
		v.Bad("name", "%q names the default decision; choose another", r.Name)
	case !nameRE.MatchString(r.Name):
		v.Bad("name", "%q: want 1 to 64 letters, digits, '.', '_' or '-'", r.Name)
	}
	if r.Policy != "" && !nameRE.MatchString(r.Policy) {
		v.Bad("policy", "%q: want 1 to 64 letters, digits, '.', '_' or '-'", r.Policy)
	}
	switch r.Action {
	case Allow, Deny:
	case Audit:
		if r.DryRun {
			v.Bad("dryRun", "an audit rule never enforces anything; remove dryRun")
		}
	case "":
		v.Bad("action", "missing; want allow, deny or audit")
	default:
		v.Bad("action", "%q is not an action; want allow, deny or audit", string(r.Action))
	}
	out := false
	switch r.Direction {
	case "", Inbound:
	case Outbound:
		out = true
	default:
		v.Bad("direction", "%q is not a direction; want inbound or outbound", string(r.Direction))
	}
	if r.Ports != nil && len(r.Ports) == 0 {
		v.Bad("ports", "empty list; remove it to apply the rule to every port")
	}
	seenPort := map[uint16]bool{}
	for i, p := range r.Ports {
		switch {
		case p == 0:
			v.Bad(fmt.Sprintf("ports[%d]", i), "0 is not a port; want a number from 1 to 65535")
		case seenPort[p]:
			v.Bad(fmt.Sprintf("ports[%d]", i), "%d is listed twice", p)
		}
		seenPort[p] = true
	}
	if r.From != nil {
		if out {
			v.Bad("from", "outbound rules have one caller, the app; say what it may call with to, or make the rule inbound")
		} else {
			v.source("from", r.From, true)
		}
	}
	if r.To != nil {
		if !out {
			v.Bad("to", "inbound rules guard the app's ports; use ports, or make the rule outbound (direction: outbound)")
		} else {
			v.dest("to", r.To, true)
		}
	}
	if r.HTTP != nil {
		v.http("http", r.HTTP, true)
	}
	if r.JWT != nil {
		if out {
			v.Bad("jwt", "JWT conditions apply to inbound requests only")
		} else {
			v.jwt("jwt", r.JWT, issuers, true)
		}
	}
}

// list checks a list that is set: given, it must not be empty (an empty
// list would match nothing, or, as other meshes read it, anything).
func (v *validator) list(field string, n int, set bool) {
	if set && n == 0 {
		v.Bad(field, "empty list; remove it to match any, or list what to match")
	}
}

func (v *validator) not(field string, top bool, isNil bool) {
	if !top && !isNil {
		v.Bad(field+".not", "not may not be nested; list every negated condition in one not")
	}
}

func (v *validator) source(field string, s *Source, top bool) {
	v.not(field, top, s.Not == nil)
	v.list(field+".identities", len(s.Identities), s.Identities != nil)
	for i, id := range s.Identities {
		v.identity(fmt.Sprintf("%s.identities[%d]", field, i), id)
	}
	v.list(field+".trustDomains", len(s.TrustDomains), s.TrustDomains != nil)
	for i, td := range s.TrustDomains {
		if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "/") {
			v.Bad(fmt.Sprintf("%s.trustDomains[%d]", field, i), "%q is not a trust domain; want e.g. cluster.local", td)
		}
	}
	v.list(field+".namespaces", len(s.Namespaces), s.Namespaces != nil)
	for i, ns := range s.Namespaces {
		if !segmentOK(ns) {
			v.Bad(fmt.Sprintf("%s.namespaces[%d]", field, i), "%q is not a namespace; want e.g. shop", ns)
		}
	}
	v.list(field+".serviceAccounts", len(s.ServiceAccounts), s.ServiceAccounts != nil)
	for i, sa := range s.ServiceAccounts {
		if !segmentOK(sa) {
			v.Bad(fmt.Sprintf("%s.serviceAccounts[%d]", field, i), "%q is not a service account; want e.g. web", sa)
		}
	}
	v.cidrs(field+".cidrs", s.CIDRs)
	if s.Not != nil && top {
		v.source(field+".not", s.Not, false)
	}
}

func (v *validator) dest(field string, d *Destination, top bool) {
	v.not(field, top, d.Not == nil)
	v.list(field+".hosts", len(d.Hosts), d.Hosts != nil)
	for i, h := range d.Hosts {
		v.host(fmt.Sprintf("%s.hosts[%d]", field, i), h)
	}
	v.list(field+".identities", len(d.Identities), d.Identities != nil)
	for i, id := range d.Identities {
		v.identity(fmt.Sprintf("%s.identities[%d]", field, i), id)
	}
	v.cidrs(field+".cidrs", d.CIDRs)
	if d.Not != nil && top {
		v.dest(field+".not", d.Not, false)
	}
}

func (v *validator) http(field string, h *HTTPMatch, top bool) {
	v.not(field, top, h.Not == nil)
	v.list(field+".methods", len(h.Methods), h.Methods != nil)
	for i, m := range h.Methods {
		if !methodRE.MatchString(m) {
			v.Bad(fmt.Sprintf("%s.methods[%d]", field, i), "%q is not a method; want upper case, e.g. GET", m)
		}
	}
	v.list(field+".hosts", len(h.Hosts), h.Hosts != nil)
	for i, host := range h.Hosts {
		v.host(fmt.Sprintf("%s.hosts[%d]", field, i), host)
	}
	v.list(field+".paths", len(h.Paths), h.Paths != nil)
	for i, p := range h.Paths {
		if err := CheckPath(p); err != nil {
			v.Bad(fmt.Sprintf("%s.paths[%d]", field, i), "%v", err)
		}
	}
	v.list(field+".headers", len(h.Headers), h.Headers != nil)
	for name, m := range h.Headers {
		f := fmt.Sprintf("%s.headers.%s", field, name)
		if !tokenRE.MatchString(name) {
			v.Bad(fmt.Sprintf("%s.headers", field), "%q is not a header name", name)
			continue
		}
		n := 0
		if m.Exact != "" {
			n++
		}
		if m.Prefix != "" {
			n++
		}
		if m.Regex != "" {
			n++
			if _, err := regexp.Compile(m.Regex); err != nil {
				v.Bad(f+".regex", "%q does not compile: %v", m.Regex, err)
			}
		}
		if m.Present != nil {
			n++
		}
		if n != 1 {
			v.Bad(f, "want exactly one of exact, prefix, regex or present")
		}
	}
	v.list(field+".grpc", len(h.GRPC), h.GRPC != nil)
	for i, g := range h.GRPC {
		if !grpcRE.MatchString(g) {
			v.Bad(fmt.Sprintf("%s.grpc[%d]", field, i), "%q is not a gRPC method; want package.Service/Method or package.Service/*", g)
		}
	}
	if h.Not != nil && top {
		v.http(field+".not", h.Not, false)
	}
}

func (v *validator) jwt(field string, j *JWTMatch, issuers Issuers, top bool) {
	v.not(field, top, j.Not == nil)
	v.list(field+".issuers", len(j.Issuers), j.Issuers != nil)
	for i, iss := range j.Issuers {
		if !issuers[iss] {
			v.Bad(fmt.Sprintf("%s.issuers[%d]", field, i), "%q is the issuer of no provider in policy.jwtProviders; add the provider, or fix the issuer", iss)
		}
	}
	v.list(field+".audiences", len(j.Audiences), j.Audiences != nil)
	v.list(field+".claims", len(j.Claims), j.Claims != nil)
	for name, vals := range j.Claims {
		f := fmt.Sprintf("%s.claims.%s", field, name)
		for _, seg := range strings.Split(name, ".") {
			if seg == "" {
				v.Bad(f, "empty key in claim path; want e.g. role or realm_access.roles")
				break
			}
		}
		if len(vals) == 0 {
			v.Bad(f, "empty list; list the values the claim may have")
		}
	}
	if len(issuers) == 0 && top {
		v.Bad(field, "no JWT provider is configured, so no request has a validated token; add one to policy.jwtProviders")
	}
	if j.Not != nil && top {
		v.jwt(field+".not", j.Not, issuers, false)
	}
}

func (v *validator) identity(field, id string) {
	if err := CheckIdentity(id); err != nil {
		v.Bad(field, "%v", err)
	}
}

func (v *validator) host(field, h string) {
	if err := CheckHost(h); err != nil {
		v.Bad(field, "%v", err)
	}
}

// CheckIdentity says what is wrong with a SPIFFE ID pattern as rules
// write it (exact, a prefix ending in "*", "*" for one path segment, or
// "*" alone), and the fix; nil when nothing is.
func CheckIdentity(id string) error {
	if id == "*" {
		return nil
	}
	if !strings.HasPrefix(id, "spiffe://") {
		return fmt.Errorf("%q is not a SPIFFE ID pattern; want e.g. spiffe://cluster.local/ns/shop/sa/web, spiffe://cluster.local/ns/shop/* or *", id)
	}
	if err := checkPattern(strings.TrimPrefix(id, "spiffe:/"), "/"); err != "" {
		return fmt.Errorf("%q %s; want e.g. spiffe://cluster.local/ns/shop/sa/web or spiffe://cluster.local/ns/*/sa/web", id, err)
	}
	if !strings.Contains(id, "*") {
		if _, err := spiffeid.FromString(id); err != nil {
			return fmt.Errorf("%q is not a SPIFFE ID: %v", id, err)
		}
	}
	return nil
}

// CheckHost says what is wrong with a host name as rules write it
// (exact, or "*.example.com"; lower case, no port), and the fix; nil
// when nothing is.
func CheckHost(h string) error {
	if h != strings.ToLower(h) {
		return fmt.Errorf("%q: write host names in lower case", h)
	}
	if !hostRE.MatchString(h) {
		return fmt.Errorf("%q is not a host name; want e.g. api.example.com or *.example.com (no port, no scheme)", h)
	}
	return nil
}

// CheckPath says what is wrong with a request path pattern as rules
// write it (see HTTPMatch.Paths), and the fix; nil when nothing is.
func CheckPath(p string) error {
	if err := checkPattern(p, "/"); err != "" {
		return fmt.Errorf("%q %s; want e.g. /api/items, /api/* or /users/*/orders", p, err)
	}
	return nil
}

func (v *validator) cidrs(field string, ps []netip.Prefix) {
	v.list(field, len(ps), ps != nil)
	for i, p := range ps {
		if err := netlist.CheckPrefix(p); err != nil {
			v.Bad(fmt.Sprintf("%s[%d]", field, i), "%v", err)
		}
	}
}

// segmentOK reports whether s can be one segment of a SPIFFE ID's path.
func segmentOK(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// checkPattern says what is wrong with a path pattern ("" when nothing):
// it must start with "/" (or be "*"), and "*" may only be a whole
// segment, or end the pattern.
func checkPattern(p, _ string) string {
	if p == "*" {
		return ""
	}
	if !strings.HasPrefix(p, "/") {
		return "does not start with /"
	}
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		if strings.Contains(s, "*") && s != "*" && !(i == len(segs)-1 && strings.HasSuffix(s, "*") && strings.Count(s, "*") == 1) {
			return "has a * inside a segment: * stands for a whole segment, or ends a prefix"
		}
	}
	return ""
}
