package policy

import (
	"fmt"
	"io"
	"strings"
)

// Trace is a decision explained rule by rule.
type Trace struct {
	Conn     Conn
	HTTP     bool // a request was given; false: the connection is taken as not HTTP
	Decision Decision
	Rules    []RuleTrace
}

// RuleTrace is what one rule found.
type RuleTrace struct {
	Rule *RuleRef
	// Skipped says why the rule was not considered ("" if it was): its
	// direction or ports.
	Skipped string
	Conds   []CondTrace
	// Matched: every condition held (for a rule with HTTP conditions on
	// a connection that is not HTTP, never).
	Matched bool
	// NeedsHTTP: the rule has HTTP or JWT conditions and there is no
	// request.
	NeedsHTTP bool
	// FailsClosed: a deny rule with HTTP or JWT conditions whose
	// connection conditions hold, on a connection that is not HTTP: it
	// denies.
	FailsClosed bool
}

// CondTrace is one condition and what it found.
type CondTrace struct {
	Field string
	Want  string
	Found string
	Not   bool // under not
	Holds bool
}

// Explain decides c and, when r is not nil, its request r with the
// token claims cl (nil: none), as the proxy would, and says what every
// rule of c's direction found. It is for people (meshgate policy
// explain, the admin API's /explain), not the request path.
func (e *Engine) Explain(c Conn, r Request, cl Claims) Trace {
	t := Trace{Conn: c, HTTP: r != nil}
	d := e.Connection(c)
	switch {
	case d.Final() != nil:
		t.Decision = *d.Final()
	case r != nil:
		t.Decision = d.Request(r, cl)
	default:
		t.Decision = d.Opaque()
	}
	if t.Decision.Allowed && t.Decision.Reason == "" {
		if t.Decision.Rule != nil {
			t.Decision.Reason = fmt.Sprintf("rule %s (allow) matched", t.Decision.Rule.Name)
		} else {
			t.Decision.Reason = fmt.Sprintf("no deny rule matched, and no allow rule applies to %s port %d, so the default is allow", dirWord(c.Dir), c.Port)
		}
	}
	dir := c.Dir
	if dir == "" {
		dir = Inbound
	}
	for _, ru := range e.rules {
		rt := RuleTrace{Rule: ru.ref}
		switch {
		case ru.ref.dir != dir:
			rt.Skipped = "it is an " + string(ru.ref.dir) + " rule"
		case len(ru.ref.ports) == 0 && !e.applies(ru, c.Port):
			rt.Skipped = fmt.Sprintf("it has HTTP or JWT conditions, and port %d is declared opaque (protocols.ports)", c.Port)
		case !e.applies(ru, c.Port):
			rt.Skipped = fmt.Sprintf("it applies to ports %v, not %d", ru.ref.ports, c.Port)
		}
		if rt.Skipped == "" {
			rt.Matched = true
			for _, cs := range [][]cond{ru.l4, ru.l7} {
				for i := range cs {
					cd := &cs[i]
					if cd.l7 != nil && r == nil {
						rt.NeedsHTTP, rt.Matched = true, false
						continue
					}
					ct := CondTrace{Field: cd.field, Want: cd.want, Not: cd.neg, Holds: cd.holds(&c, r, cl), Found: cd.found(&c, r, cl)}
					rt.Matched = rt.Matched && ct.Holds
					rt.Conds = append(rt.Conds, ct)
				}
			}
			rt.FailsClosed = rt.NeedsHTTP && ru.ref.Action == Deny && allHold(rt.Conds)
		}
		t.Rules = append(t.Rules, rt)
	}
	return t
}

// Allowed is the decision's outcome.
func (t *Trace) Allowed() bool { return t.Decision.Allowed }

// Format writes t for people: the decision, then each rule.
func (t *Trace) Format(w io.Writer) {
	verdict := "DENY"
	if t.Decision.Allowed {
		verdict = "ALLOW"
	}
	fmt.Fprintf(w, "decision: %s by %s (policy %s)\n", verdict, t.Decision.RuleName(), t.Decision.PolicyName())
	fmt.Fprintf(w, "reason:   %s\n", t.Decision.Reason)
	for _, rep := range t.Decision.Reports {
		name := DefaultRule
		if rep.Rule != nil {
			name = rep.Rule.Name
		}
		fmt.Fprintf(w, "report:   %s by %s", rep.Result, name)
		if rep.Reason != "" {
			fmt.Fprintf(w, ": %s", rep.Reason)
		}
		fmt.Fprintln(w)
	}
	if !t.HTTP {
		fmt.Fprintln(w, "request:  none (the connection is taken as not HTTP)")
	}
	fmt.Fprintln(w, "rules:")
	if len(t.Rules) == 0 {
		fmt.Fprintln(w, "  (none)")
	}
	for _, rt := range t.Rules {
		tags := []string{string(rt.Rule.Action)}
		if rt.Rule.DryRun {
			tags = append(tags, "dryRun")
		}
		fmt.Fprintf(w, "  %d. %s (%s): ", rt.Rule.Index+1, rt.Rule.Name, strings.Join(tags, ", "))
		switch {
		case rt.Skipped != "":
			fmt.Fprintf(w, "skipped: %s\n", rt.Skipped)
			continue
		case rt.Matched:
			fmt.Fprintln(w, "MATCHED")
		case rt.FailsClosed:
			fmt.Fprintln(w, "FAILS CLOSED: a deny rule with HTTP or JWT conditions, on a connection that is not HTTP: it denies")
		case rt.NeedsHTTP && allHold(rt.Conds):
			fmt.Fprintln(w, "no match: it has HTTP or JWT conditions, and there is no HTTP request")
		default:
			fmt.Fprintln(w, "no match")
		}
		if len(rt.Conds) == 0 && !rt.NeedsHTTP {
			fmt.Fprintln(w, "       (no conditions: matches everything on its ports)")
		}
		for _, ct := range rt.Conds {
			mark := "ok  "
			if !ct.Holds {
				mark = "FAIL"
			}
			op := "in"
			if ct.Holds == ct.Not {
				op = "not in"
			}
			fmt.Fprintf(w, "       %s %s: %s %s %s\n", mark, ct.Field, ct.Found, op, ct.Want)
		}
	}
}

func allHold(cs []CondTrace) bool {
	for _, c := range cs {
		if !c.Holds {
			return false
		}
	}
	return true
}
