package policy

import (
	"fmt"
	"strings"
)

// ConnDecision is a connection's authorization: decided once its
// connection conditions are known (Final), or left to its HTTP requests
// (Request) or, if it turns out not to be HTTP, to Opaque.
type ConnDecision struct {
	conn  Conn
	enf   connState
	shd   *connState // as if dryRun rules were enforced; nil when there are none
	final *Decision
	// audits are the audit rules whose connection conditions held and
	// that have request conditions still to check.
	audits  []*rule
	reports []Report // connection-level audit matches
}

// connState is what the connection's conditions decided of one ruleset.
type connState struct {
	reveal    bool // a default deny tells the caller why
	pr        *portRules
	deny      *rule // a deny rule with connection conditions only matched
	allowed   *rule // an allow rule with connection conditions only matched
	pendDeny  []*rule
	pendAllow []*rule
}

// Connection decides what it can of a connection.
func (e *Engine) Connection(c Conn) *ConnDecision {
	dir := dirIndex(c.Dir)
	if len(e.enforce[dir].forPort(c.Port).rules) == 0 && (!e.hasDry || len(e.shadow[dir].forPort(c.Port).rules) == 0) {
		return noRules
	}
	d := &ConnDecision{conn: c}
	d.enf = e.connState(&e.enforce[dir], &c)
	if e.hasDry {
		s := e.connState(&e.shadow[dir], &c)
		d.shd = &s
	}
	e.enforce[dir].forPort(c.Port).candidates(&c, func(r *rule) bool {
		if r.ref.Action != Audit || !holdAll(r.l4, &c, nil, nil) {
			return true
		}
		if len(r.l7) == 0 {
			d.reports = append(d.reports, Report{Rule: r.ref, Result: ResultAudited, Reason: matchedReason(r, &c, nil, nil)})
		} else {
			d.audits = append(d.audits, r)
		}
		return true
	})
	if len(d.audits) > 0 {
		return d
	}
	f, ok := d.enf.connFinal(&c)
	if !ok {
		return d
	}
	if d.shd != nil {
		sf, ok := d.shd.connFinal(&c)
		if !ok {
			return d
		}
		f.Reports = shadowReport(&f, &sf)
	}
	f.Reports = append(d.reports, f.Reports...)
	d.final = &f
	return d
}

// noRules is the decision where no rule applies: allowed, by default.
var noRules = &ConnDecision{final: &Decision{Allowed: true}}

// NoRules reports whether no rule applies to the connection at all: it
// is allowed, and there is nothing to report.
func (d *ConnDecision) NoRules() bool { return d == noRules }

// Final is the connection's decision, or nil when its HTTP requests
// decide (Request), or, if it is not HTTP, Opaque.
func (d *ConnDecision) Final() *Decision { return d.final }

// Request decides an HTTP request on the connection; cl are its
// validated JWT's claims, nil for none.
func (d *ConnDecision) Request(r Request, cl Claims) Decision {
	if d.final != nil {
		return *d.final
	}
	c := &d.conn
	f := d.enf.request(c, r, cl)
	if d.shd != nil {
		sf := d.shd.request(c, r, cl)
		f.Reports = shadowReport(&f, &sf)
	}
	if len(d.audits) > 0 || len(d.reports) > 0 {
		var reps []Report
		reps = append(reps, d.reports...)
		for _, a := range d.audits {
			if holdAll(a.l7, c, r, cl) {
				reps = append(reps, Report{Rule: a.ref, Result: ResultAudited, Reason: matchedReason(a, c, r, cl)})
			}
		}
		f.Reports = append(reps, f.Reports...)
	}
	return f
}

// Opaque decides the connection when it is not HTTP, so no HTTP or JWT
// condition can hold: an allow rule with one never allows it, and a deny
// rule with one denies it (fail closed).
func (d *ConnDecision) Opaque() Decision {
	if d.final != nil {
		return *d.final
	}
	c := &d.conn
	f := d.enf.opaque(c)
	if d.shd != nil {
		sf := d.shd.opaque(c)
		f.Reports = shadowReport(&f, &sf)
	}
	f.Reports = append(d.reports, f.Reports...)
	return f
}

func (e *Engine) connState(s *ruleset, c *Conn) connState {
	st := connState{pr: s.forPort(c.Port), reveal: e.reveal}
	st.pr.candidates(c, func(r *rule) bool {
		if r.ref.Action == Audit || !holdAll(r.l4, c, nil, nil) {
			return true
		}
		switch {
		case len(r.l7) > 0 && r.ref.Action == Deny:
			st.pendDeny = append(st.pendDeny, r)
		case len(r.l7) > 0:
			st.pendAllow = append(st.pendAllow, r)
		case r.ref.Action == Deny:
			st.deny = r
			return false // deny wins
		case st.allowed == nil:
			st.allowed = r
		}
		return true
	})
	return st
}

// connFinal is the decision when the connection's conditions settle it.
func (st *connState) connFinal(c *Conn) (Decision, bool) {
	switch {
	case st.deny != nil:
		return denied(st.deny, matchedReason(st.deny, c, nil, nil)), true
	case len(st.pendDeny) > 0:
		return Decision{}, false
	case st.allowed != nil:
		return Decision{Allowed: true, Rule: st.allowed.ref}, true
	case !st.pr.allowApplies:
		return Decision{Allowed: true}, true
	case len(st.pendAllow) > 0:
		return Decision{}, false
	}
	return Decision{Reason: st.defaultReason(c, nil, nil, false), Reveal: st.reveal}, true
}

func (st *connState) request(c *Conn, r Request, cl Claims) Decision {
	if st.deny != nil {
		return denied(st.deny, matchedReason(st.deny, c, nil, nil))
	}
	for _, d := range st.pendDeny {
		if holdAll(d.l7, c, r, cl) {
			return denied(d, matchedReason(d, c, r, cl))
		}
	}
	switch {
	case st.allowed != nil:
		return Decision{Allowed: true, Rule: st.allowed.ref}
	case !st.pr.allowApplies:
		return Decision{Allowed: true}
	}
	for _, a := range st.pendAllow {
		if holdAll(a.l7, c, r, cl) {
			return Decision{Allowed: true, Rule: a.ref}
		}
	}
	return Decision{Reason: st.defaultReason(c, r, cl, false), Reveal: st.reveal}
}

func (st *connState) opaque(c *Conn) Decision {
	switch {
	case st.deny != nil:
		return denied(st.deny, matchedReason(st.deny, c, nil, nil))
	case len(st.pendDeny) > 0:
		d := st.pendDeny[0]
		return denied(d, fmt.Sprintf("rule %s denies by HTTP or JWT conditions, and this connection is not HTTP, so they cannot be checked: denied (fail closed)", d.ref.Name))
	case st.allowed != nil:
		return Decision{Allowed: true, Rule: st.allowed.ref}
	case !st.pr.allowApplies:
		return Decision{Allowed: true}
	}
	return Decision{Reason: st.defaultReason(c, nil, nil, true), Reveal: st.reveal}
}

func denied(r *rule, reason string) Decision {
	return Decision{Rule: r.ref, Reason: reason, Reveal: r.ref.Reveal}
}

func holdAll(cs []cond, c *Conn, r Request, cl Claims) bool {
	for i := range cs {
		if !cs[i].holds(c, r, cl) {
			return false
		}
	}
	return true
}

// matchedReason says why rule r matched: each of its conditions, and
// what held it.
func matchedReason(r *rule, c *Conn, req Request, cl Claims) string {
	var b strings.Builder
	fmt.Fprintf(&b, "rule %s (%s) matched", r.ref.Name, r.ref.Action)
	n := 0
	for _, cs := range [][]cond{r.l4, r.l7} {
		if cs == nil || (req == nil && len(cs) > 0 && cs[0].l7 != nil) {
			continue
		}
		for i := range cs {
			if cs[i].field == "jwt" {
				continue
			}
			if n == 0 {
				b.WriteString(": ")
			} else {
				b.WriteString("; ")
			}
			n++
			writeCond(&b, &cs[i], c, req, cl)
		}
	}
	if n == 0 {
		if len(r.ref.ports) > 0 {
			fmt.Fprintf(&b, ": it has no conditions, and applies to port %d", c.Port)
		} else {
			b.WriteString(": it has no conditions")
		}
	}
	return b.String()
}

func writeCond(b *strings.Builder, cd *cond, c *Conn, r Request, cl Claims) {
	op := "in"
	if cd.neg {
		op = "not in"
	}
	fmt.Fprintf(b, "%s: %s %s %s", cd.field, cd.found(c, r, cl), op, cd.want)
}

// firstFailed returns the first condition of r that does not hold, nil
// if all do.
func firstFailed(r *rule, c *Conn, req Request, cl Claims, opaque bool) (*cond, bool) {
	for i := range r.l4 {
		if !r.l4[i].holds(c, req, cl) {
			return &r.l4[i], false
		}
	}
	if len(r.l7) > 0 && (opaque || req == nil) {
		return nil, true // needs HTTP
	}
	for i := range r.l7 {
		if !r.l7[i].holds(c, req, cl) {
			return &r.l7[i], false
		}
	}
	return nil, false
}

// defaultReason explains a default deny: the allow rules of the port and
// the first condition each failed (up to three).
func (st *connState) defaultReason(c *Conn, req Request, cl Claims, opaque bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "no allow rule matched, and %d allow rule(s) apply to %s port %d, so the default is deny", len(st.pr.allows), dirWord(c.Dir), c.Port)
	for i, a := range st.pr.allows {
		if i == 3 {
			fmt.Fprintf(&b, "; … %d more", len(st.pr.allows)-3)
			break
		}
		b.WriteString("; ")
		cd, needHTTP := firstFailed(a, c, req, cl, opaque)
		switch {
		case needHTTP:
			fmt.Fprintf(&b, "%s has HTTP or JWT conditions, and this connection is not HTTP", a.ref.Name)
		case cd == nil:
			fmt.Fprintf(&b, "%s matched", a.ref.Name) // not reached
		case cd.neg:
			fmt.Fprintf(&b, "%s: %s: %s is in %s", a.ref.Name, cd.field, cd.found(c, req, cl), cd.want)
		default:
			fmt.Fprintf(&b, "%s: %s: %s not in %s", a.ref.Name, cd.field, cd.found(c, req, cl), cd.want)
		}
	}
	return b.String()
}

func dirWord(d Direction) string {
	if d == Outbound {
		return "destination"
	}
	return "app"
}

// shadowReport compares the enforced decision f with the shadow one sf
// (dryRun rules enforced): it reports sf when a dryRun rule made it, or
// when it differs from f (a dryRun allow rule that turned its port to
// default deny: the report names the default, and its reason the rules).
func shadowReport(f, sf *Decision) []Report {
	byDry := sf.Rule != nil && sf.Rule.DryRun
	if !byDry && sf.Allowed == f.Allowed {
		return f.Reports
	}
	rep := Report{Rule: sf.Rule, Result: ResultDryRunAllowed}
	if !sf.Allowed {
		rep.Result, rep.Reason = ResultDryRunDenied, sf.Reason
	}
	return append(f.Reports, rep)
}
