// Package policy is the sidecar's authorization: which callers may reach
// the app (inbound rules) and what the app may call (outbound, egress
// rules), by identity, address, port, HTTP request and JWT claims
// (shared/DESIGN.md §5 Policy, §5b).
//
// Rules are the policy section of the proxy config (see Rule). They are
// validated as a whole, every problem named with its field path, and
// compiled once (Compile) into an Engine, which the proxy swaps on a
// config reload. The proxy asks the Engine twice:
//
//   - once per connection (Engine.Connection), before the app (inbound)
//     or the destination (outbound) is dialed, with what is known then:
//     the peer's verified SPIFFE ID or none, the addresses, the port, the
//     destination's name and identity. Rules with only such conditions
//     decide here.
//   - per HTTP request (ConnDecision.Request), for the rules with HTTP or
//     JWT conditions whose connection conditions held. A connection that
//     turns out not to be HTTP (ConnDecision.Opaque) can meet no HTTP
//     condition: an allow rule with one never allows it, and a deny rule
//     with one denies it (fail closed).
//
// Precedence is fixed: a matching deny rule denies; else a matching allow
// rule allows; else the default decides, which is allow on a port no
// allow rule applies to and deny once one does. audit rules never change
// a decision: a match is logged and counted. A dryRun rule is decided and
// reported (as what it would have done) but never enforced.
//
// Every decision names the rule that made it (or "default") and why, the
// condition that matched or failed, for the log, the metric
// meshgate_policy_decisions_total and, where a rule opts in, the caller.
// Explain evaluates rule by rule and says what each condition found: it
// is `meshgate policy explain` and the admin API's /explain.
package policy
