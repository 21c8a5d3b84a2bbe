// Package redirect is meshgate's interception step: it rewrites a network
// namespace's iptables (and ip6tables) so that every inbound and outbound
// TCP connection of the workload, and optionally its DNS, goes through the
// sidecar proxy, which never captures its own traffic.
//
// The rules are data. Build turns a Config into a Ruleset without touching
// the system; Render prints it as iptables-save text (--dry-run and the
// golden files under testdata/ are that text). Apply installs a Ruleset in
// a namespace, idempotently and all or nothing; Cleanup removes everything
// of ours. SelfCheck, after Apply, proves with probe connections inside
// the namespace that the rules capture traffic (selfcheck.go). AddFlags
// gives "meshgate redirect" and "meshgate enroll" the same rule flags.
//
// README.md states the chain invariants and walks through the rule flow.
package redirect
