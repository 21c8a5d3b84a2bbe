package redirect

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"go.uber.org/zap"

	"meshgate/nsrun"
)

// Options says where Apply and Cleanup work and where they log.
type Options struct {
	// NetnsPath is the network namespace to change, e.g. /proc/1234/ns/net
	// or /run/netns/pod-a. Empty means the caller's own namespace. Every
	// iptables command and netlink call runs inside it (nsrun.Do).
	NetnsPath string
	// Logger receives what changed (debug) and the outcome (info). Nil
	// means no logging.
	Logger *zap.Logger

	// openSystem, when set, replaces the real iptables, nftables and
	// netlink with fakes (unit tests) or wraps them (tests that count or
	// inject failures). It is called inside the namespace.
	openSystem func(log *zap.Logger) (*system, error)
}

func (o Options) logger() *zap.Logger {
	if o.Logger == nil {
		return zap.NewNop()
	}
	return o.Logger
}

// iptablesAPI is the part of github.com/coreos/go-iptables that Apply and
// Cleanup call, for one address family. Errors that mean "no such chain or
// rule" have an IsNotExist() bool method that says so.
type iptablesAPI interface {
	ListChains(table string) ([]string, error)
	List(table, chain string) ([]string, error)
	NewChain(table, chain string) error
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	Append(table, chain string, rulespec ...string) error
	Insert(table, chain string, pos int, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
}

// tablesAPI deals with whole tables, which iptables does not: whether one
// exists (iptables-nft creates a table on first use and iptables-legacy on
// first access, even a read), and removing one that is left empty.
type tablesAPI interface {
	Exists(f Family, table string) (bool, error)
	// DeleteIfEmpty deletes the table if it holds nothing: no rules, no
	// chains but built-in ones with policy ACCEPT, nothing else. It
	// reports whether it deleted it.
	DeleteIfEmpty(f Family, table string) (bool, error)
	// CanDelete is false where tables cannot be deleted (legacy iptables:
	// the kernel keeps a table once it has been used).
	CanDelete() bool
}

// netAPI is the routing part of the rules (netlink): tproxy's policy rule
// and local route, and the ::6 address on lo.
type netAPI interface {
	HasPolicyRule(f Family, r PolicyRule) (bool, error)
	AddPolicyRule(f Family, r PolicyRule) error
	DelPolicyRule(f Family, r PolicyRule) error
	HasLocalRoute(f Family, r LocalRoute) (bool, error)
	AddLocalRoute(f Family, r LocalRoute) error
	DelLocalRoute(f Family, r LocalRoute) error
	HasLoopbackAddr(p netip.Prefix) (bool, error)
	AddLoopbackAddr(p netip.Prefix) error
	DelLoopbackAddr(p netip.Prefix) error
}

// system is everything Apply and Cleanup touch in one namespace.
type system struct {
	backend string                 // "nft" or "legacy", for logs
	ipt     map[Family]iptablesAPI // no IPv6 entry when ip6tables is unusable
	noIPv6  string                 // why, when there is no IPv6 entry
	tables  tablesAPI
	net     netAPI
	// ipv6Enabled reports whether the namespace has IPv6 enabled.
	ipv6Enabled func() (bool, error)
}

// ChainOwner is an empty chain Apply creates in a table it had to create
// (nft backend). Cleanup deletes such a table once it holds nothing else,
// so iptables-save shows what it showed before Apply; a table that existed
// before Apply has no ChainOwner and is left in place, even empty.
const ChainOwner = "MESHGATE_OWNED_TABLE"

// builtinPolicyChains are the chains of each table (iptables-nft creates them on first use).
var builtinPolicyChains = map[string][]string{
	"raw":      {"PREROUTING", "OUTPUT"},
	"mangle":   {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"nat":      {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"filter":   {"INPUT", "FORWARD", "OUTPUT"},
	"security": {"INPUT", "FORWARD", "OUTPUT"},
}

// managedTables are the tables Build may use, in the order Apply visits
// them; cleanupTables are the tables Cleanup looks in for chains of ours.
var (
	managedTables = []string{"raw", "mangle", "nat"}
	cleanupTables = []string{"raw", "mangle", "nat", "filter", "security"}
)

// Apply installs the rules for c in the namespace of o, so that afterwards
// the namespace holds exactly Build(c) (with IPv6 auto resolved there).
//
// It is idempotent: it compares what exists with what is wanted and only
// changes the difference; a second Apply with the same Config changes
// nothing. Chains of ours that the Config no longer wants (a different
// mode, DNS capture turned off) are removed.
//
// It never leaves the namespace half-applied: every change is recorded
// with its inverse, and on any failure (or cancelled ctx) the changes are
// undone in reverse order, so the namespace is as it was before. The
// error names the table, chain and rule, and what iptables said.
func Apply(ctx context.Context, c Config, o Options) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("redirect: invalid config: %w", err)
	}
	log := o.logger().With(zap.String("netns", o.NetnsPath))
	return inNetns(o.NetnsPath, func() error {
		sys, err := o.open(log)
		if err != nil {
			return err
		}
		if c, err = resolveIPv6(c, sys, log); err != nil {
			return err
		}
		a := &applier{ctx: ctx, sys: sys, log: log, tx: txn{log: log}}
		if err := a.apply(Build(c)); err != nil {
			if rerr := a.tx.rollback(); rerr != nil {
				return errors.Join(err, fmt.Errorf("redirect: undoing the changes also failed, the namespace may be half-configured; run 'meshgate redirect --cleanup': %w", rerr))
			}
			log.Debug("redirect: changes undone after failure", zap.Int("undone", len(a.tx.undo)))
			return err
		}
		log.Info("redirect rules in place", zap.String("backend", sys.backend), zap.String("ipv6", string(c.IPv6)),
			zap.String("mode", string(c.Mode)), zap.Int("changes", a.tx.changes))
		return nil
	})
}

// Cleanup removes everything of ours from the namespace of o: jumps to our
// chains from built-in chains, our chains in every table, tables Apply
// created (ChainOwner), tproxy's policy rules and routes, and the ::6
// address. Anything already gone counts as removed, so Cleanup is safe to
// run twice, or on a namespace that never had rules. It does not need the
// Config the rules were applied with.
//
// Cleanup does not stop at the first problem: it removes what it can and
// returns every problem; running it again finishes the job.
func Cleanup(ctx context.Context, o Options) error {
	log := o.logger().With(zap.String("netns", o.NetnsPath))
	return inNetns(o.NetnsPath, func() error {
		sys, err := o.open(log)
		if err != nil {
			return err
		}
		cl := &cleaner{ctx: ctx, sys: sys, log: log}
		if err := cl.cleanup(); err != nil {
			return err
		}
		log.Info("redirect rules removed", zap.String("backend", sys.backend), zap.Int("changes", cl.changes))
		return nil
	})
}

// inNetns runs fn in the namespace at path; errors of fn come back as they
// are, errors entering or leaving the namespace get our prefix.
func inNetns(path string, fn func() error) error {
	var inner error
	err := nsrun.Do(path, func() error {
		inner = fn()
		return inner
	})
	if err != nil && inner == nil {
		return fmt.Errorf("redirect: %w", err)
	}
	return err
}

func (o Options) open(log *zap.Logger) (*system, error) {
	if o.openSystem != nil {
		return o.openSystem(log)
	}
	return openRealSystem(log)
}

// resolveIPv6 turns IPv6 auto into on or off for this namespace, and
// checks that on is possible.
func resolveIPv6(c Config, sys *system, log *zap.Logger) (Config, error) {
	if c.IPv6 == IPv6Off {
		return c, nil
	}
	enabled, err := sys.ipv6Enabled()
	if err != nil {
		return c, fmt.Errorf("redirect: --ipv6=%s: find out whether the namespace has IPv6: %w", c.IPv6, err)
	}
	_, haveIP6tables := sys.ipt[IPv6]
	switch {
	case c.IPv6 == IPv6On && !haveIP6tables:
		return c, fmt.Errorf("redirect: --ipv6=on but %s; install it (apt-get install iptables) or use --ipv6=off", sys.noIPv6)
	case c.IPv6 == IPv6On && !enabled:
		return c, errors.New("redirect: --ipv6=on but IPv6 is disabled in the namespace (net.ipv6.conf.all.disable_ipv6=1, or no IPv6 in the kernel); enable it there or use --ipv6=off")
	case enabled && haveIP6tables:
		c.IPv6 = IPv6On
	default:
		why := "IPv6 is disabled in the namespace"
		if !haveIP6tables {
			why = sys.noIPv6
		}
		log.Info("redirect: --ipv6=auto: IPv4 rules only", zap.String("why", why))
		c.IPv6 = IPv6Off
	}
	return c, nil
}

// txn records each change with its inverse, to undo them all on failure.
type txn struct {
	log     *zap.Logger
	undo    []undoStep
	changes int
}

type undoStep struct {
	what string
	fn   func() error
}

// step runs op and, if it succeeded, records undo. For changes that are
// all or nothing.
func (t *txn) step(what string, op, undo func() error) error {
	t.log.Debug("redirect: "+what, zap.String("op", "apply"))
	if err := op(); err != nil {
		return err
	}
	t.changes++
	if undo != nil {
		t.undo = append(t.undo, undoStep{what, undo})
	}
	return nil
}

// compound records undo, then runs op: for changes made of several
// commands, which may fail half way and still need undoing.
func (t *txn) compound(what string, op, undo func() error) error {
	t.undo = append(t.undo, undoStep{what, undo})
	t.log.Debug("redirect: "+what, zap.String("op", "apply"))
	t.changes++
	return op()
}

// rollback undoes every recorded change, newest first. It keeps going
// after a failure and returns every failure.
func (t *txn) rollback() error {
	var errs []error
	for i := len(t.undo) - 1; i >= 0; i-- {
		u := t.undo[i]
		t.log.Debug("redirect: undo "+u.what, zap.String("op", "undo"))
		if err := u.fn(); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", u.what, err))
		}
	}
	return errors.Join(errs...)
}

// applier makes one namespace hold one Ruleset.
type applier struct {
	ctx context.Context
	sys *system
	log *zap.Logger
	tx  txn
}

func (a *applier) apply(rs Ruleset) error {
	for _, f := range []Family{IPv4, IPv6} {
		want := FamilyRules{Family: f}
		for _, fr := range rs.Families {
			if fr.Family == f {
				want = fr
			}
		}
		if ipt := a.sys.ipt[f]; ipt != nil {
			for _, name := range managedTables {
				if err := a.table(f, ipt, name, want.table(name)); err != nil {
					return err
				}
			}
		} else if len(want.Tables) > 0 {
			return fmt.Errorf("redirect: %s rules wanted but %s", f, a.sys.noIPv6)
		}
		if err := a.routing(f, want); err != nil {
			return err
		}
	}
	return nil
}

func (fr FamilyRules) table(name string) *Table {
	for i := range fr.Tables {
		if fr.Tables[i].Name == name {
			return &fr.Tables[i]
		}
	}
	return nil
}

// where names a table or chain in errors: "nat/MESHGATE_OUTPUT", with
// "ip6tables " in front for IPv6.
func where(f Family, table, chain string) string {
	s := table
	if chain != "" {
		s += "/" + chain
	}
	if f == IPv6 {
		s = "ip6tables " + s
	}
	return s
}

func (a *applier) checkCtx(what string) error {
	if err := a.ctx.Err(); err != nil {
		return fmt.Errorf("redirect: apply %s: %w", what, err)
	}
	return nil
}

// table makes one table hold want (nil: nothing of ours).
func (a *applier) table(f Family, ipt iptablesAPI, name string, want *Table) error {
	exists, err := a.sys.tables.Exists(f, name)
	if err != nil {
		return fmt.Errorf("redirect: read %s: %w", where(f, name, ""), err)
	}
	live := liveTable{}
	if exists {
		if live, err = readTable(f, ipt, name); err != nil {
			return err
		}
	}
	if want == nil && !live.hasOurs() {
		return nil
	}

	var wantChains []Chain
	if want != nil {
		// A table we create gets ChainOwner first, so that undoing its
		// creation comes last and can delete the table.
		if a.sys.tables.CanDelete() && (!exists || live.has(ChainOwner)) {
			wantChains = append(wantChains, Chain{Name: ChainOwner})
		}
		for _, c := range want.Chains {
			if !c.Builtin {
				wantChains = append(wantChains, c)
			}
		}
	}

	// 1. Create the chains that are missing.
	for _, c := range wantChains {
		if live.has(c.Name) {
			continue
		}
		loc := where(f, name, c.Name)
		if err := a.checkCtx(loc); err != nil {
			return err
		}
		undo := func() error {
			if err := ipt.ClearChain(name, c.Name); err != nil {
				return err
			}
			if err := ipt.DeleteChain(name, c.Name); err != nil {
				return err
			}
			if c.Name == ChainOwner && !exists {
				_, err := a.sys.tables.DeleteIfEmpty(f, name)
				return err
			}
			return nil
		}
		err := a.tx.step("create chain "+loc, func() error { return ipt.NewChain(name, c.Name) }, undo)
		if err != nil {
			return fmt.Errorf("redirect: apply %s: create chain: %w", loc, toolErr(err))
		}
	}

	// 2. Fill the chains whose rules differ from what is wanted; a chain
	// that is already right is not touched.
	for _, c := range wantChains {
		old := live.rules[c.Name]
		if rulesEqual(old, c.Rules) {
			continue
		}
		loc := where(f, name, c.Name)
		if err := a.checkCtx(loc); err != nil {
			return err
		}
		var failed error
		err := a.tx.compound("fill "+loc,
			func() error {
				if len(old) > 0 {
					if err := ipt.ClearChain(name, c.Name); err != nil {
						failed = fmt.Errorf("redirect: apply %s: flush: %w", loc, toolErr(err))
						return failed
					}
				}
				for _, r := range c.Rules {
					if err := ipt.Append(name, c.Name, r.Args...); err != nil {
						failed = fmt.Errorf("redirect: apply %s rule %q: %w", loc, strings.Join(r.Args, " "), toolErr(err))
						return failed
					}
				}
				return nil
			},
			func() error { return restoreChain(ipt, name, c.Name, old) })
		if err != nil {
			return failed
		}
	}

	// 3. Jumps from built-in chains: remove ours that are not wanted,
	// insert the wanted ones that are missing, at the top, in order.
	var builtins []string
	for _, b := range builtinChains {
		if len(live.jumps(b)) > 0 || (want != nil && want.builtin(b) != nil) {
			builtins = append(builtins, b)
		}
	}
	for _, b := range builtins {
		var wantJumps []Rule
		if want != nil {
			if c := want.builtin(b); c != nil {
				wantJumps = c.Rules
			}
		}
		if err := a.jumps(f, ipt, name, b, live.jumps(b), wantJumps); err != nil {
			return err
		}
	}

	// 4. Remove chains of ours that are not wanted: flush them all first,
	// as they may jump to each other, then delete them.
	var stale []string
	for _, c := range live.chains {
		if strings.HasPrefix(c, ChainPrefix) && !slices.ContainsFunc(wantChains, func(w Chain) bool { return w.Name == c }) {
			stale = append(stale, c)
		}
	}
	for _, c := range stale {
		loc := where(f, name, c)
		if len(live.rules[c]) == 0 {
			continue
		}
		old := live.rules[c]
		err := a.tx.step("flush stale "+loc, func() error { return ipt.ClearChain(name, c) },
			func() error { return restoreChain(ipt, name, c, old) })
		if err != nil {
			return fmt.Errorf("redirect: apply %s: flush stale chain: %w", loc, toolErr(err))
		}
	}
	for _, c := range stale {
		loc := where(f, name, c)
		err := a.tx.step("delete stale "+loc, func() error { return ipt.DeleteChain(name, c) },
			func() error { return ipt.NewChain(name, c) })
		if err != nil {
			return fmt.Errorf("redirect: apply %s: delete stale chain: %w", loc, toolErr(err))
		}
	}

	// 5. A table we created and no longer use goes too.
	if want == nil && live.has(ChainOwner) && a.sys.tables.CanDelete() {
		loc := where(f, name, "")
		var deleted bool
		err := a.tx.step("delete table "+loc,
			func() (err error) { deleted, err = a.sys.tables.DeleteIfEmpty(f, name); return err },
			func() error {
				if !deleted {
					return nil
				}
				// Bring back the (empty) table; undoing step 4 then
				// brings back its chains.
				if err := ipt.NewChain(name, ChainOwner); err != nil {
					return err
				}
				return ipt.DeleteChain(name, ChainOwner)
			})
		if err != nil {
			return fmt.Errorf("redirect: apply %s: delete the table we created: %w", loc, err)
		}
	}
	return nil
}

func (t *Table) builtin(name string) *Chain {
	for i := range t.Chains {
		if t.Chains[i].Builtin && t.Chains[i].Name == name {
			return &t.Chains[i]
		}
	}
	return nil
}

// jumps makes built-in chain b hold exactly want among its jumps to our
// chains, leaving other rules alone.
func (a *applier) jumps(f Family, ipt iptablesAPI, table, b string, live []liveRule, want []Rule) error {
	loc := where(f, table, b)
	// Keep the first live copy of each wanted jump; the rest go.
	kept := make([]bool, len(want))
	var remove []liveRule
	for _, l := range live {
		i := slices.IndexFunc(want, func(r Rule) bool { return slices.Equal(r.Args, l.args) })
		if i >= 0 && !kept[i] {
			kept[i] = true
			continue
		}
		remove = append(remove, l)
	}
	// Highest position first, so the positions of the others hold and
	// re-inserting in reverse order puts every rule back where it was.
	slices.SortFunc(remove, func(x, y liveRule) int { return y.pos - x.pos })
	for _, l := range remove {
		if err := a.checkCtx(loc); err != nil {
			return err
		}
		spec := strings.Join(l.args, " ")
		err := a.tx.step("delete stale jump "+loc+" "+spec, func() error { return ipt.Delete(table, b, l.args...) },
			func() error { return ipt.Insert(table, b, l.pos, l.args...) })
		if err != nil {
			return fmt.Errorf("redirect: apply %s: delete stale rule %q: %w", loc, spec, toolErr(err))
		}
	}
	for i, r := range want {
		if kept[i] {
			continue
		}
		if err := a.checkCtx(loc); err != nil {
			return err
		}
		spec := strings.Join(r.Args, " ")
		err := a.tx.step("insert jump "+loc+" "+spec, func() error { return ipt.Insert(table, b, i+1, r.Args...) },
			func() error { return ipt.Delete(table, b, r.Args...) })
		if err != nil {
			return fmt.Errorf("redirect: apply %s rule %q: %w", loc, spec, toolErr(err))
		}
	}
	return nil
}

// restoreChain makes chain hold exactly rules again (undo).
func restoreChain(ipt iptablesAPI, table, chain string, rules [][]string) error {
	if err := ipt.ClearChain(table, chain); err != nil {
		return err
	}
	for _, r := range rules {
		if err := ipt.Append(table, chain, r...); err != nil {
			return err
		}
	}
	return nil
}

func rulesEqual(live [][]string, want []Rule) bool {
	return slices.EqualFunc(live, want, func(l []string, w Rule) bool { return slices.Equal(l, w.Args) })
}

// routing makes the namespace hold want's policy rules, routes and
// addresses, and none of ours it does not want.
func (a *applier) routing(f Family, want FamilyRules) error {
	if f == IPv6 {
		enabled, err := a.sys.ipv6Enabled()
		if err != nil {
			return fmt.Errorf("redirect: apply: find out whether the namespace has IPv6: %w", err)
		}
		if !enabled {
			return nil // nothing of ours can be there, and nothing can be added
		}
	}
	ip := ipCommand(f)
	n := a.sys.net
	for _, r := range knownPolicyRules() {
		desc := fmt.Sprintf("%s rule fwmark %#x/%#x lookup %d", ip, r.Mark, r.Mask, r.Table)
		err := ensure(a, desc, slices.Contains(want.PolicyRules, r),
			func() (bool, error) { return n.HasPolicyRule(f, r) },
			func() error { return n.AddPolicyRule(f, r) },
			func() error { return n.DelPolicyRule(f, r) })
		if err != nil {
			return err
		}
	}
	for _, r := range knownLocalRoutes(f) {
		desc := fmt.Sprintf("%s route local %s dev %s table %d", ip, r.Dst, r.Dev, r.Table)
		err := ensure(a, desc, slices.Contains(want.LocalRoutes, r),
			func() (bool, error) { return n.HasLocalRoute(f, r) },
			func() error { return n.AddLocalRoute(f, r) },
			func() error { return n.DelLocalRoute(f, r) })
		if err != nil {
			return err
		}
	}
	for _, p := range knownLoopbackAddrs(f) {
		desc := fmt.Sprintf("%s addr %s dev lo", ip, p)
		err := ensure(a, desc, slices.Contains(want.LoopbackAddrs, p),
			func() (bool, error) { return n.HasLoopbackAddr(p) },
			func() error { return n.AddLoopbackAddr(p) },
			func() error { return n.DelLoopbackAddr(p) })
		if err != nil {
			return err
		}
	}
	return nil
}

// ensure adds (wanted) or removes (not wanted) one routing object.
func ensure(a *applier, desc string, wanted bool, has func() (bool, error), add, del func() error) error {
	if err := a.checkCtx(desc); err != nil {
		return err
	}
	present, err := has()
	if err != nil {
		return fmt.Errorf("redirect: read %s: %w", desc, err)
	}
	switch {
	case wanted && !present:
		if err := a.tx.step("add "+desc, add, del); err != nil {
			return fmt.Errorf("redirect: apply %s: %w", desc, err)
		}
	case !wanted && present:
		if err := a.tx.step("delete "+desc, del, add); err != nil {
			return fmt.Errorf("redirect: apply %s: delete stale: %w", desc, err)
		}
	}
	return nil
}

func ipCommand(f Family) string {
	if f == IPv6 {
		return "ip -6"
	}
	return "ip -4"
}

// The routing objects that are ours whatever the Config: Apply removes
// those it does not want, Cleanup removes them all.
func knownPolicyRules() []PolicyRule {
	return []PolicyRule{{Mark: TProxyMark, Mask: TProxyMark, Table: TProxyTable}}
}

func knownLocalRoutes(f Family) []LocalRoute {
	return []LocalRoute{{Dst: addrsOf(f).defaultDst, Dev: "lo", Table: TProxyTable}}
}

func knownLoopbackAddrs(f Family) []netip.Prefix {
	if f == IPv6 {
		return []netip.Prefix{passthroughIPv6}
	}
	return nil
}

// cleaner removes everything of ours.
type cleaner struct {
	ctx     context.Context
	sys     *system
	log     *zap.Logger
	changes int
}

func (cl *cleaner) cleanup() error {
	var errs []error
	for _, f := range []Family{IPv4, IPv6} {
		if ipt := cl.sys.ipt[f]; ipt != nil {
			for _, name := range cleanupTables {
				if err := cl.ctx.Err(); err != nil {
					return errors.Join(append(errs, fmt.Errorf("redirect: cleanup: %w", err))...)
				}
				errs = append(errs, cl.table(f, ipt, name)...)
			}
		}
		errs = append(errs, cl.routing(f)...)
	}
	return errors.Join(errs...)
}

// done does op, counting "does not exist" as done.
func (cl *cleaner) done(what string, op func() error) error {
	err := op()
	switch {
	case err == nil:
		cl.changes++
		cl.log.Debug("redirect: "+what, zap.String("op", "cleanup"))
		return nil
	case isNotExist(err):
		return nil
	}
	return err
}

func (cl *cleaner) table(f Family, ipt iptablesAPI, name string) []error {
	exists, err := cl.sys.tables.Exists(f, name)
	if err != nil {
		return []error{fmt.Errorf("redirect: cleanup %s: %w", where(f, name, ""), err)}
	}
	if !exists {
		return nil
	}
	live, err := readTable(f, ipt, name)
	if err != nil {
		return []error{fmt.Errorf("redirect: cleanup: %w", err)}
	}
	if !live.hasOurs() {
		return nil
	}
	var errs []error
	for _, b := range builtinChains {
		for _, j := range live.jumps(b) {
			spec := strings.Join(j.args, " ")
			if err := cl.done("delete jump "+where(f, name, b)+" "+spec, func() error { return ipt.Delete(name, b, j.args...) }); err != nil {
				errs = append(errs, fmt.Errorf("redirect: cleanup %s rule %q: %w", where(f, name, b), spec, toolErr(err)))
			}
		}
	}
	// ChainOwner goes last, once everything else is gone, so that a
	// Cleanup that fails half way still knows next time whose table it is.
	var ours []string
	for _, c := range live.chains {
		if strings.HasPrefix(c, ChainPrefix) && c != ChainOwner {
			ours = append(ours, c)
		}
	}
	for _, c := range ours {
		if len(live.rules[c]) == 0 {
			continue
		}
		if err := cl.done("flush "+where(f, name, c), func() error { return ipt.ClearChain(name, c) }); err != nil {
			errs = append(errs, fmt.Errorf("redirect: cleanup %s: flush: %w", where(f, name, c), toolErr(err)))
		}
	}
	for _, c := range ours {
		if err := cl.done("delete chain "+where(f, name, c), func() error { return ipt.DeleteChain(name, c) }); err != nil {
			errs = append(errs, fmt.Errorf("redirect: cleanup %s: delete chain: %w", where(f, name, c), toolErr(err)))
		}
	}
	if len(errs) > 0 || !live.has(ChainOwner) {
		return errs
	}
	if err := cl.done("delete chain "+where(f, name, ChainOwner), func() error { return ipt.DeleteChain(name, ChainOwner) }); err != nil {
		return append(errs, fmt.Errorf("redirect: cleanup %s: delete chain: %w", where(f, name, ChainOwner), toolErr(err)))
	}
	if cl.sys.tables.CanDelete() {
		deleted, err := cl.sys.tables.DeleteIfEmpty(f, name)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("redirect: cleanup %s: delete the table Apply created: %w", where(f, name, ""), err))
		case deleted:
			cl.changes++
			cl.log.Debug("redirect: deleted table "+where(f, name, ""), zap.String("op", "cleanup"))
		default:
			cl.log.Info("redirect: kept a table Apply created: it holds rules of others now", zap.String("table", where(f, name, "")))
		}
	}
	return errs
}

func (cl *cleaner) routing(f Family) []error {
	if f == IPv6 {
		enabled, err := cl.sys.ipv6Enabled()
		if err != nil {
			return []error{fmt.Errorf("redirect: cleanup: find out whether the namespace has IPv6: %w", err)}
		}
		if !enabled {
			return nil
		}
	}
	var errs []error
	ip := ipCommand(f)
	n := cl.sys.net
	remove := func(desc string, has func() (bool, error), del func() error) {
		present, err := has()
		if err != nil {
			errs = append(errs, fmt.Errorf("redirect: cleanup: read %s: %w", desc, err))
			return
		}
		if present {
			if err := cl.done("delete "+desc, del); err != nil {
				errs = append(errs, fmt.Errorf("redirect: cleanup: delete %s: %w", desc, err))
			}
		}
	}
	for _, r := range knownPolicyRules() {
		remove(fmt.Sprintf("%s rule fwmark %#x/%#x lookup %d", ip, r.Mark, r.Mask, r.Table),
			func() (bool, error) { return n.HasPolicyRule(f, r) }, func() error { return n.DelPolicyRule(f, r) })
	}
	for _, r := range knownLocalRoutes(f) {
		remove(fmt.Sprintf("%s route local %s dev %s table %d", ip, r.Dst, r.Dev, r.Table),
			func() (bool, error) { return n.HasLocalRoute(f, r) }, func() error { return n.DelLocalRoute(f, r) })
	}
	for _, p := range knownLoopbackAddrs(f) {
		remove(fmt.Sprintf("%s addr %s dev lo", ip, p),
			func() (bool, error) { return n.HasLoopbackAddr(p) }, func() error { return n.DelLoopbackAddr(p) })
	}
	return errs
}

// liveTable is what a table holds now: its chains, and the rules of the
// built-in chains and of ours (not of other chains: we never touch them).
type liveTable struct {
	chains []string
	rules  map[string][][]string // chain -> rule specs, as iptables -S prints them after "-A CHAIN"
}

type liveRule struct {
	pos  int // 1-based position in its chain
	args []string
}

func (t liveTable) has(chain string) bool { return slices.Contains(t.chains, chain) }

func (t liveTable) hasOurs() bool {
	return slices.ContainsFunc(t.chains, func(c string) bool { return strings.HasPrefix(c, ChainPrefix) })
}

// jumps returns the rules of built-in chain b that jump to a chain of ours.
func (t liveTable) jumps(b string) []liveRule {
	var out []liveRule
	for i, r := range t.rules[b] {
		if strings.HasPrefix(Rule{Args: r}.Target(), ChainPrefix) {
			out = append(out, liveRule{pos: i + 1, args: r})
		}
	}
	return out
}

func readTable(f Family, ipt iptablesAPI, table string) (liveTable, error) {
	chains, err := ipt.ListChains(table)
	if err != nil {
		return liveTable{}, fmt.Errorf("redirect: read %s: %w", where(f, table, ""), toolErr(err))
	}
	t := liveTable{chains: chains, rules: map[string][][]string{}}
	for _, c := range chains {
		if !isBuiltinChain(c) && !strings.HasPrefix(c, ChainPrefix) {
			continue
		}
		lines, err := ipt.List(table, c)
		if err != nil {
			return liveTable{}, fmt.Errorf("redirect: read %s: %w", where(f, table, c), toolErr(err))
		}
		for _, l := range lines {
			args, err := splitRule(l)
			if err != nil {
				return liveTable{}, fmt.Errorf("redirect: read %s: rule %q: %w", where(f, table, c), l, err)
			}
			if len(args) >= 2 && args[0] == "-A" && args[1] == c {
				t.rules[c] = append(t.rules[c], args[2:])
			}
		}
	}
	return t, nil
}

// splitRule splits a line of "iptables -S" into arguments. iptables
// quotes an argument holding spaces or quotes in double quotes, escaping
// '"' and '\' with a backslash.
func splitRule(line string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inArg, quoted := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case quoted && ch == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case quoted && ch == '"':
			quoted = false
		case quoted:
			cur.WriteByte(ch)
		case ch == '"':
			quoted, inArg = true, true
		case ch == ' ' || ch == '\t':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(ch)
			inArg = true
		}
	}
	if quoted {
		return nil, errors.New("unterminated quote")
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// isNotExist reports whether err says a chain, rule or table does not exist.
func isNotExist(err error) bool {
	var ne interface{ IsNotExist() bool }
	return errors.As(err, &ne) && ne.IsNotExist()
}

// toolError is the error of an iptables command, printed as what the
// command wrote to stderr (the command line itself is in the message
// already: table, chain and rule).
type toolError struct {
	msg string
	err error
}

func (e *toolError) Error() string { return e.msg }
func (e *toolError) Unwrap() error { return e.err }

// toolErr shortens the error of an iptables command to its stderr, one
// line, without the usage hint.
func toolErr(err error) error {
	var ee interface{ ExitStatus() int }
	if !errors.As(err, &ee) {
		return err
	}
	s := err.Error()
	marker := fmt.Sprintf("exit status %d: ", ee.ExitStatus())
	i := strings.Index(s, marker)
	if i < 0 {
		return err
	}
	var lines []string
	for _, l := range strings.Split(s[i+len(marker):], "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "Try `") {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) == 0 {
		lines = []string{fmt.Sprintf("exit status %d", ee.ExitStatus())}
	}
	return &toolError{msg: strings.Join(lines, "; "), err: err}
}
