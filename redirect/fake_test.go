package redirect

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// fakeNS is a stateful stand-in for one namespace: iptables of both
// families (behaving like iptables-nft: a table appears on first write),
// whole-table operations, and the routing objects. Its errors read like
// the real ones, and "does not exist" errors say so through IsNotExist,
// as go-iptables' do.
type fakeNS struct {
	tables    map[Family]map[string]*fakeTable
	policy    map[string]bool // routing rules, routes, addresses by description
	ipv6      bool            // IPv6 enabled in the namespace
	noIP6     bool            // ip6tables missing
	canDelete bool            // nft backend (tables can be deleted)

	calls []string // every mutating call, in order
	// fail, if set, is asked before every mutating call (n counts them
	// from 1); a non-nil error fails the call without changing anything.
	fail func(n int, call string) error
}

type fakeTable struct {
	chains map[string]*fakeChain
	order  []string // chains, built-in first, then ours by name
}

type fakeChain struct {
	builtin bool
	rules   [][]string
}

func newFakeNS() *fakeNS {
	return &fakeNS{tables: map[Family]map[string]*fakeTable{IPv4: {}, IPv6: {}}, policy: map[string]bool{}, ipv6: true, canDelete: true}
}

// system returns Options.openSystem for this namespace.
func (ns *fakeNS) system() func(*zap.Logger) (*system, error) {
	return func(*zap.Logger) (*system, error) {
		backend := "nft"
		if !ns.canDelete {
			backend = "legacy"
		}
		s := &system{
			backend:     backend,
			ipt:         map[Family]iptablesAPI{IPv4: &fakeIPT{ns, IPv4}},
			tables:      fakeTables{ns},
			net:         fakeNet{ns},
			ipv6Enabled: func() (bool, error) { return ns.ipv6, nil },
		}
		if ns.noIP6 {
			s.noIPv6 = "ip6tables is not installed"
		} else {
			s.ipt[IPv6] = &fakeIPT{ns, IPv6}
		}
		return s, nil
	}
}

// fakeError is shaped like *iptables.Error.
type fakeError struct {
	args   []string
	status int
	msg    string
}

func (e *fakeError) Error() string {
	return fmt.Sprintf("running %v: exit status %d: %s", e.args, e.status, e.msg)
}
func (e *fakeError) ExitStatus() int { return e.status }
func (e *fakeError) IsNotExist() bool {
	for _, s := range []string{"Bad rule (does a matching rule exist in that chain?)", "No chain/target/match by that name", "does not exist"} {
		if strings.Contains(e.msg, s) {
			return true
		}
	}
	return false
}

type fakeIPT struct {
	ns *fakeNS
	f  Family
}

func (x *fakeIPT) cmd() string {
	if x.f == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

func (x *fakeIPT) err(status int, msg string, args ...string) error {
	return &fakeError{args: append([]string{"/usr/sbin/" + x.cmd() + "-nft"}, args...), status: status, msg: msg + "\n"}
}

var (
	msgNoChain   = "iptables: No chain/target/match by that name."
	msgBadRule   = "iptables: Bad rule (does a matching rule exist in that chain?)."
	msgExists    = "iptables: Chain already exists."
	msgNotEmpty  = "iptables: Directory not empty."
	msgTooBig    = "iptables: Index of insertion too big."
	msgBusyChain = "iptables v1.8.9 (nf_tables):  CHAIN_DEL failed (Device or resource busy): chain %s"
)

// mutate counts a mutating call and lets ns.fail refuse it.
func (x *fakeIPT) mutate(args ...string) error {
	call := x.cmd() + " " + strings.Join(args, " ")
	x.ns.calls = append(x.ns.calls, call)
	if x.ns.fail != nil {
		if err := x.ns.fail(len(x.ns.calls), call); err != nil {
			return err
		}
	}
	return nil
}

func (x *fakeIPT) table(name string, create bool) *fakeTable {
	t := x.ns.tables[x.f][name]
	if t == nil && create {
		t = &fakeTable{chains: map[string]*fakeChain{}}
		for _, b := range builtinPolicyChains[name] {
			t.chains[b] = &fakeChain{builtin: true}
			t.order = append(t.order, b)
		}
		x.ns.tables[x.f][name] = t
	}
	return t
}

func (x *fakeIPT) chain(table, chain string) *fakeChain {
	if t := x.table(table, false); t != nil {
		return t.chains[chain]
	}
	return nil
}

func (x *fakeIPT) ListChains(table string) ([]string, error) {
	t := x.table(table, false)
	if t == nil {
		return slices.Clone(builtinPolicyChains[table]), nil // iptables-nft lists the policies of a table it has not created
	}
	return slices.Clone(t.order), nil
}

func (x *fakeIPT) List(table, chain string) ([]string, error) {
	c := x.chain(table, chain)
	if c == nil {
		if x.table(table, false) == nil && slices.Contains(builtinPolicyChains[table], chain) {
			return []string{"-P " + chain + " ACCEPT"}, nil
		}
		return nil, x.err(1, fmt.Sprintf("iptables v1.8.9 (nf_tables): chain `%s' in table `%s' is incompatible, use 'nft' tool.", chain, table), "-t", table, "-S", chain)
	}
	out := []string{"-N " + chain}
	if c.builtin {
		out = []string{"-P " + chain + " ACCEPT"}
	}
	for _, r := range c.rules {
		out = append(out, "-A "+chain+" "+quoteArgs(r))
	}
	return out, nil
}

// quoteArgs joins args the way iptables -S prints them.
func quoteArgs(args []string) string {
	parts := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \"\\") {
			a = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}

func (x *fakeIPT) NewChain(table, chain string) error {
	args := []string{"-t", table, "-N", chain}
	if err := x.mutate(args...); err != nil {
		return err
	}
	if x.chain(table, chain) != nil {
		return x.err(1, msgExists, args...)
	}
	t := x.table(table, true)
	t.chains[chain] = &fakeChain{}
	// Both backends list user chains after the built-in ones, by name.
	i := len(t.order)
	for i > 0 && !t.chains[t.order[i-1]].builtin && t.order[i-1] > chain {
		i--
	}
	t.order = slices.Insert(t.order, i, chain)
	return nil
}

func (x *fakeIPT) ClearChain(table, chain string) error {
	if x.chain(table, chain) == nil {
		return x.NewChain(table, chain)
	}
	args := []string{"-t", table, "-F", chain}
	if err := x.mutate(args...); err != nil {
		return err
	}
	x.chain(table, chain).rules = nil
	return nil
}

func (x *fakeIPT) DeleteChain(table, chain string) error {
	args := []string{"-t", table, "-X", chain}
	if err := x.mutate(args...); err != nil {
		return err
	}
	c := x.chain(table, chain)
	switch {
	case c == nil:
		return x.err(1, msgNoChain, args...)
	case c.builtin:
		return x.err(2, "iptables v1.8.9 (nf_tables): Cannot delete built-in chain", args...)
	case len(c.rules) > 0:
		return x.err(1, msgNotEmpty, args...)
	}
	t := x.table(table, false)
	for _, other := range t.chains {
		for _, r := range other.rules {
			if (Rule{Args: r}).Target() == chain {
				return x.err(4, fmt.Sprintf(msgBusyChain, chain), args...)
			}
		}
	}
	delete(t.chains, chain)
	t.order = slices.DeleteFunc(t.order, func(c string) bool { return c == chain })
	return nil
}

// checkRule refuses what iptables would: a missing chain, a jump to a
// chain that does not exist.
func (x *fakeIPT) checkRule(table, chain string, rule []string, args []string) error {
	if x.chain(table, chain) == nil && !slices.Contains(builtinPolicyChains[table], chain) {
		return x.err(1, msgNoChain, args...)
	}
	target := Rule{Args: rule}.Target()
	isTarget := slices.Contains(standardTargets, target) || slices.Contains([]string{"MASQUERADE", "SNAT", "DNAT", "LOG", "REJECT"}, target)
	if target != "" && !isTarget && x.chain(table, target) == nil {
		return x.err(2, fmt.Sprintf("iptables v1.8.9 (nf_tables): Chain '%s' does not exist", target), args...)
	}
	return nil
}

func (x *fakeIPT) Append(table, chain string, rule ...string) error {
	args := append([]string{"-t", table, "-A", chain}, rule...)
	if err := x.mutate(args...); err != nil {
		return err
	}
	if err := x.checkRule(table, chain, rule, args); err != nil {
		return err
	}
	x.table(table, true)
	c := x.chain(table, chain)
	c.rules = append(c.rules, slices.Clone(rule))
	return nil
}

func (x *fakeIPT) Insert(table, chain string, pos int, rule ...string) error {
	args := append([]string{"-t", table, "-I", chain, strconv.Itoa(pos)}, rule...)
	if err := x.mutate(args...); err != nil {
		return err
	}
	if err := x.checkRule(table, chain, rule, args); err != nil {
		return err
	}
	x.table(table, true)
	c := x.chain(table, chain)
	if pos < 1 || pos > len(c.rules)+1 {
		return x.err(1, msgTooBig, args...)
	}
	c.rules = slices.Insert(c.rules, pos-1, slices.Clone(rule))
	return nil
}

func (x *fakeIPT) Delete(table, chain string, rule ...string) error {
	args := append([]string{"-t", table, "-D", chain}, rule...)
	if err := x.mutate(args...); err != nil {
		return err
	}
	c := x.chain(table, chain)
	if c == nil {
		return x.err(1, msgNoChain, args...)
	}
	i := slices.IndexFunc(c.rules, func(r []string) bool { return slices.Equal(r, rule) })
	if i < 0 {
		return x.err(1, msgBadRule, args...)
	}
	c.rules = slices.Delete(c.rules, i, i+1)
	return nil
}

type fakeTables struct{ ns *fakeNS }

func (t fakeTables) CanDelete() bool { return t.ns.canDelete }

func (t fakeTables) Exists(f Family, table string) (bool, error) {
	return t.ns.tables[f][table] != nil, nil
}

func (t fakeTables) DeleteIfEmpty(f Family, table string) (bool, error) {
	if !t.ns.canDelete {
		return false, nil
	}
	x := &fakeIPT{t.ns, f}
	if err := x.mutate("delete-table-if-empty", table); err != nil {
		return false, err
	}
	tb := t.ns.tables[f][table]
	if tb == nil {
		return false, nil
	}
	for _, c := range tb.chains {
		if !c.builtin || len(c.rules) > 0 {
			return false, nil
		}
	}
	delete(t.ns.tables[f], table)
	return true, nil
}

type fakeNet struct{ ns *fakeNS }

func (n fakeNet) set(key string, on bool) error {
	x := &fakeIPT{n.ns, IPv4}
	verb := "del"
	if on {
		verb = "add"
	}
	if err := x.mutate("ip", verb, key); err != nil {
		return err
	}
	if n.ns.policy[key] == on {
		if on {
			return fmt.Errorf("file exists")
		}
		return fmt.Errorf("no such process")
	}
	if on {
		n.ns.policy[key] = true
	} else {
		delete(n.ns.policy, key)
	}
	return nil
}

func ruleKey(f Family, r PolicyRule) string {
	return fmt.Sprintf("%s rule fwmark %#x/%#x lookup %d", ipCommand(f), r.Mark, r.Mask, r.Table)
}
func routeKey(f Family, r LocalRoute) string {
	return fmt.Sprintf("%s route local %s dev %s table %d", ipCommand(f), r.Dst, r.Dev, r.Table)
}
func addrKey(p netip.Prefix) string { return "addr " + p.String() + " dev lo" }

func (n fakeNet) HasPolicyRule(f Family, r PolicyRule) (bool, error) {
	return n.ns.policy[ruleKey(f, r)], nil
}
func (n fakeNet) AddPolicyRule(f Family, r PolicyRule) error { return n.set(ruleKey(f, r), true) }
func (n fakeNet) DelPolicyRule(f Family, r PolicyRule) error { return n.set(ruleKey(f, r), false) }
func (n fakeNet) HasLocalRoute(f Family, r LocalRoute) (bool, error) {
	return n.ns.policy[routeKey(f, r)], nil
}
func (n fakeNet) AddLocalRoute(f Family, r LocalRoute) error { return n.set(routeKey(f, r), true) }
func (n fakeNet) DelLocalRoute(f Family, r LocalRoute) error { return n.set(routeKey(f, r), false) }
func (n fakeNet) HasLoopbackAddr(p netip.Prefix) (bool, error) {
	return n.ns.policy[addrKey(p)], nil
}
func (n fakeNet) AddLoopbackAddr(p netip.Prefix) error { return n.set(addrKey(p), true) }
func (n fakeNet) DelLoopbackAddr(p netip.Prefix) error { return n.set(addrKey(p), false) }

// dump prints the whole state, deterministically, for comparisons.
func (ns *fakeNS) dump() string {
	var b strings.Builder
	for _, f := range []Family{IPv4, IPv6} {
		var names []string
		for name := range ns.tables[f] {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			t := ns.tables[f][name]
			fmt.Fprintf(&b, "%s *%s\n", f, name)
			for _, c := range t.order {
				if !t.chains[c].builtin {
					fmt.Fprintf(&b, ":%s\n", c)
				}
			}
			for _, c := range t.order {
				for _, r := range t.chains[c].rules {
					fmt.Fprintf(&b, "-A %s %s\n", c, strings.Join(r, " "))
				}
			}
		}
	}
	var keys []string
	for k := range ns.policy {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintln(&b, k)
	}
	return b.String()
}

// clone copies the state (not the call log or failure hook).
func (ns *fakeNS) clone() *fakeNS {
	c := &fakeNS{tables: map[Family]map[string]*fakeTable{IPv4: {}, IPv6: {}}, policy: map[string]bool{},
		ipv6: ns.ipv6, noIP6: ns.noIP6, canDelete: ns.canDelete}
	for f, tables := range ns.tables {
		for name, t := range tables {
			nt := &fakeTable{chains: map[string]*fakeChain{}, order: slices.Clone(t.order)}
			for cn, ch := range t.chains {
				rules := make([][]string, len(ch.rules))
				for i, r := range ch.rules {
					rules[i] = slices.Clone(r)
				}
				nt.chains[cn] = &fakeChain{builtin: ch.builtin, rules: rules}
			}
			c.tables[f][name] = nt
		}
	}
	for k, v := range ns.policy {
		c.policy[k] = v
	}
	return c
}
