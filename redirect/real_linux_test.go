package redirect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"meshgate/nsrun"
)

// The tests in this file change real iptables in throwaway network
// namespaces: they need root, and are skipped with -short.

func needRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("real iptables test: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("real iptables test: needs root (network namespaces, iptables)")
	}
	for _, tool := range []string{"iptables-nft", "ip6tables-nft", "iptables-nft-save", "ip6tables-nft-save"} {
		if lookTool(tool) == "" {
			t.Skipf("real iptables test: %s is not installed (apt-get install iptables)", tool)
		}
	}
}

var netnsSeq atomic.Int32

// newNetns creates a named network namespace with lo up, removed when the
// test ends. The thread that creates it is locked and switched back; if
// switching back fails, the thread stays locked and dies with its goroutine.
func newNetns(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("mgtest-%d-%d", os.Getpid(), netnsSeq.Add(1))
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer origin.Close()
		h, nerr := netns.NewNamed(name)
		if nerr == nil {
			h.Close()
		}
		if err := netns.Set(origin); err != nil {
			errc <- errors.Join(nerr, err) // stay locked: the thread is retired
			return
		}
		runtime.UnlockOSThread()
		errc <- nerr
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create network namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	path := "/run/netns/" + name
	err := nsrun.Do(path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		t.Fatalf("lo up in %s: %v", name, err)
	}
	return path
}

// run runs a command inside the namespace at path.
func run(t *testing.T, path string, args ...string) string {
	t.Helper()
	var out []byte
	err := nsrun.Do(path, func() error {
		var err error
		out, err = exec.Command(args[0], args[1:]...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// save returns what the save commands print, without the comment lines
// and with counters zeroed.
func save(t *testing.T, path string, cmds ...string) string {
	t.Helper()
	var b strings.Builder
	for _, c := range cmds {
		for _, l := range strings.Split(run(t, path, c), "\n") {
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			b.WriteString(counters.ReplaceAllString(l, "[0:0]") + "\n")
		}
	}
	return b.String()
}

// state is everything of a namespace these tests compare: iptables-save of
// both families and both backends, nft's view, and the routing objects.
func state(t *testing.T, path string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(save(t, path, "iptables-nft-save", "ip6tables-nft-save"))
	b.WriteString("--- legacy\n" + save(t, path, "iptables-legacy-save", "ip6tables-legacy-save"))
	b.WriteString("--- routing\n" + routing(t, path))
	return b.String()
}

func routing(t *testing.T, path string) string {
	return run(t, path, "ip", "-4", "rule") + run(t, path, "ip", "-6", "rule") +
		run(t, path, "ip", "-4", "route", "show", "table", "all", "type", "local", "dev", "lo") +
		run(t, path, "ip", "-6", "addr", "show", "dev", "lo")
}

// parseSave turns iptables-save output of one family into a fakeNS, so
// the fake's dump can compare real states with expected ones.
func parseSave(t *testing.T, ns *fakeNS, f Family, text string) {
	t.Helper()
	x := &fakeIPT{ns, f}
	table := ""
	for _, l := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
			x.table(table, true)
		case strings.HasPrefix(l, ":"):
			name := strings.Fields(l[1:])[0]
			if !isBuiltinChain(name) {
				must(x.NewChain(table, name))
			}
		case strings.HasPrefix(l, "-A "):
			args, err := splitRule(l)
			if err != nil {
				t.Fatal(err)
			}
			c := x.chain(table, args[1])
			if c == nil {
				t.Fatalf("rule for unknown chain: %s", l)
			}
			c.rules = append(c.rules, args[2:])
		}
	}
}

func nftState(t *testing.T, path string) *fakeNS {
	ns := newFakeNS()
	parseSave(t, ns, IPv4, save(t, path, "iptables-nft-save"))
	parseSave(t, ns, IPv6, save(t, path, "ip6tables-nft-save"))
	ns.calls = nil
	return ns
}

// counting wraps the real system: it counts the changes Apply and Cleanup
// make, and can sabotage the nth one. Rules and chains are sabotaged so
// the kernel refuses them for real (a jump to a chain that does not
// exist, a chain name that is too long); other changes fail outright.
type counting struct {
	n        int
	sabotage int
}

func (c *counting) next() bool {
	c.n++
	return c.n == c.sabotage
}

var errInjected = errors.New("injected failure")

func (c *counting) opts(t *testing.T, path string) Options {
	return Options{NetnsPath: path, Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)), openSystem: func(log *zap.Logger) (*system, error) {
		sys, err := openRealSystem(log)
		if err != nil {
			return nil, err
		}
		for f, ipt := range sys.ipt {
			sys.ipt[f] = &countingIPT{ipt, c}
		}
		sys.net = &countingNet{sys.net, c}
		return sys, nil
	}}
}

type countingIPT struct {
	iptablesAPI
	c *counting
}

var refusedRule = []string{"-j", "MESHGATE_NO_SUCH_CHAIN"}

func (x *countingIPT) NewChain(table, chain string) error {
	if x.c.next() {
		chain = strings.Repeat("MESHGATE_TOO_LONG", 3)
	}
	return x.iptablesAPI.NewChain(table, chain)
}
func (x *countingIPT) ClearChain(table, chain string) error {
	if x.c.next() {
		return errInjected
	}
	return x.iptablesAPI.ClearChain(table, chain)
}
func (x *countingIPT) DeleteChain(table, chain string) error {
	if x.c.next() {
		return errInjected
	}
	return x.iptablesAPI.DeleteChain(table, chain)
}
func (x *countingIPT) Append(table, chain string, rule ...string) error {
	if x.c.next() {
		rule = refusedRule
	}
	return x.iptablesAPI.Append(table, chain, rule...)
}
func (x *countingIPT) Insert(table, chain string, pos int, rule ...string) error {
	if x.c.next() {
		rule = refusedRule
	}
	return x.iptablesAPI.Insert(table, chain, pos, rule...)
}
func (x *countingIPT) Delete(table, chain string, rule ...string) error {
	if x.c.next() {
		return errInjected
	}
	return x.iptablesAPI.Delete(table, chain, rule...)
}

type countingNet struct {
	netAPI
	c *counting
}

func (x *countingNet) try(fn func() error) error {
	if x.c.next() {
		return errInjected
	}
	return fn()
}
func (x *countingNet) AddPolicyRule(f Family, r PolicyRule) error {
	return x.try(func() error { return x.netAPI.AddPolicyRule(f, r) })
}
func (x *countingNet) DelPolicyRule(f Family, r PolicyRule) error {
	return x.try(func() error { return x.netAPI.DelPolicyRule(f, r) })
}
func (x *countingNet) AddLocalRoute(f Family, r LocalRoute) error {
	return x.try(func() error { return x.netAPI.AddLocalRoute(f, r) })
}
func (x *countingNet) DelLocalRoute(f Family, r LocalRoute) error {
	return x.try(func() error { return x.netAPI.DelLocalRoute(f, r) })
}
func (x *countingNet) AddLoopbackAddr(p netip.Prefix) error {
	return x.try(func() error { return x.netAPI.AddLoopbackAddr(p) })
}
func (x *countingNet) DelLoopbackAddr(p netip.Prefix) error {
	return x.try(func() error { return x.netAPI.DelLoopbackAddr(p) })
}

// ownRules gives a namespace rules of its own in nat OUTPUT and filter
// INPUT (both families) before we come, so those tables exist already.
func ownRules(t *testing.T, path string) {
	for _, cmd := range [][]string{
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1/32", "-p", "tcp", "-j", "RETURN"},
		{"iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"},
		{"ip6tables", "-t", "nat", "-A", "OUTPUT", "-d", "2001:db8::1/128", "-p", "tcp", "-j", "RETURN"},
		{"ip6tables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"},
	} {
		run(t, path, cmd...)
	}
}

func TestRealApplyCleanup(t *testing.T) {
	needRoot(t)
	for _, own := range []bool{false, true} {
		for _, tc := range goldenCases() {
			name := "fresh/" + tc.name
			if own {
				name = "with-own-rules/" + tc.name
			}
			t.Run(name, func(t *testing.T) {
				path := newNetns(t)
				if own {
					ownRules(t, path)
				}
				ctx := context.Background()
				before := state(t, path)
				pre := nftState(t, path)

				c := &counting{}
				if err := Apply(ctx, tc.cfg, c.opts(t, path)); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				// The namespace holds exactly what was there plus our rules
				// (IPv6 auto is on here: the test namespaces have IPv6).
				cfg := tc.cfg
				if cfg.IPv6 == IPv6Auto {
					cfg.IPv6 = IPv6On
				}
				exp := expect(pre, Build(cfg))
				exp.policy = map[string]bool{} // routing is checked below
				want := exp.dump()
				if diff := cmp.Diff(want, nftState(t, path).dump()); diff != "" {
					t.Fatalf("after Apply, iptables-save differs from the rules (-want +got):\n%s", diff)
				}
				if legacy := save(t, path, "iptables-legacy-save", "ip6tables-legacy-save"); legacy != "" {
					t.Errorf("Apply touched the legacy backend:\n%s", legacy)
				}
				checkRouting(t, path, Build(cfg))
				first := state(t, path)

				c.n = 0
				if err := Apply(ctx, tc.cfg, c.opts(t, path)); err != nil {
					t.Fatalf("second Apply: %v", err)
				}
				if c.n != 0 {
					t.Errorf("second Apply made %d changes, want none", c.n)
				}
				if diff := cmp.Diff(first, state(t, path)); diff != "" {
					t.Errorf("second Apply changed the namespace (-first +second):\n%s", diff)
				}

				if err := Cleanup(ctx, c.opts(t, path)); err != nil {
					t.Fatalf("Cleanup: %v", err)
				}
				if diff := cmp.Diff(before, state(t, path)); diff != "" {
					t.Errorf("Cleanup did not restore the namespace (-before +after):\n%s", diff)
				}
				if !own {
					if nft := run(t, path, "nft", "list", "ruleset"); nft != "" {
						t.Errorf("nft still lists tables after Cleanup:\n%s", nft)
					}
				}
				c.n = 0
				if err := Cleanup(ctx, c.opts(t, path)); err != nil {
					t.Fatalf("second Cleanup: %v", err)
				}
				if c.n != 0 {
					t.Errorf("second Cleanup made %d changes, want none", c.n)
				}
			})
		}
	}
}

// checkRouting checks the routing objects of rs are in place.
func checkRouting(t *testing.T, path string, rs Ruleset) {
	t.Helper()
	for _, fr := range rs.Families {
		ip := "-4"
		if fr.Family == IPv6 {
			ip = "-6"
		}
		rules := run(t, path, "ip", ip, "rule")
		for _, r := range fr.PolicyRules {
			if want := fmt.Sprintf("fwmark %#x/%#x lookup %d", r.Mark, r.Mask, r.Table); !strings.Contains(rules, want) {
				t.Errorf("ip %s rule lacks %q:\n%s", ip, want, rules)
			}
		}
		for _, r := range fr.LocalRoutes {
			routes := run(t, path, "ip", ip, "route", "show", "table", fmt.Sprint(r.Table))
			if want := fmt.Sprintf("local default dev %s", r.Dev); !strings.Contains(routes, want) {
				t.Errorf("ip %s route table %d lacks %q:\n%s", ip, r.Table, want, routes)
			}
		}
		for _, a := range fr.LoopbackAddrs {
			addrs := run(t, path, "ip", "-6", "addr", "show", "dev", "lo")
			if !strings.Contains(addrs, "inet6 "+a.String()) {
				t.Errorf("lo lacks %s:\n%s", a, addrs)
			}
		}
	}
}

// TestRealApplyFailureChangesNothing makes the kernel refuse a change in
// the middle of Apply (or fails a netlink call) and checks the namespace
// is exactly as before, in every iptables table and routing table.
func TestRealApplyFailureChangesNothing(t *testing.T) {
	needRoot(t)
	byName := map[string]Config{}
	for _, tc := range goldenCases() {
		byName[tc.name] = tc.cfg
	}
	for _, tc := range []struct {
		name string
		all  bool // sabotage every change in turn, not a sample
	}{{"defaults", true}, {"dns-servers", false}, {"tproxy", false}, {"mark-only", false}} {
		for _, own := range []bool{false, true} {
			name := tc.name + "/fresh"
			if own {
				name = tc.name + "/with-own-rules"
			}
			t.Run(name, func(t *testing.T) {
				cfg := byName[tc.name]
				// How many changes does this Apply make?
				probe := newNetns(t)
				if own {
					ownRules(t, probe)
				}
				c := &counting{}
				if err := Apply(context.Background(), cfg, c.opts(t, probe)); err != nil {
					t.Fatal(err)
				}
				n := c.n
				ks := []int{1, 2, n / 3, n / 2, 2 * n / 3, n - 1, n}
				if tc.all {
					ks = ks[:0]
					for k := 1; k <= n; k++ {
						ks = append(ks, k)
					}
				}
				path := newNetns(t)
				if own {
					ownRules(t, path)
				}
				before := state(t, path)
				for _, k := range ks {
					c := &counting{sabotage: k}
					err := Apply(context.Background(), cfg, c.opts(t, path))
					if err == nil {
						t.Fatalf("change %d of %d was sabotaged, Apply succeeded", k, n)
					}
					if !strings.HasPrefix(err.Error(), "redirect: apply ") {
						t.Errorf("change %d: error %q does not say where", k, err)
					}
					if strings.Contains(err.Error(), "undoing the changes also failed") {
						t.Fatalf("change %d: %v", k, err)
					}
					if diff := cmp.Diff(before, state(t, path)); diff != "" {
						t.Fatalf("change %d of %d failed (%v); the namespace changed (-before +after):\n%s", k, n, err, diff)
					}
				}
			})
		}
	}
}

// TestRealErrorText: the error of a rule the kernel refuses names the
// table, chain and rule, and says what iptables said.
func TestRealErrorText(t *testing.T) {
	needRoot(t)
	path := newNetns(t)
	// Change 26 in a fresh namespace is MESHGATE_REDIRECT's rule: the
	// chains and the rules before it (raw's conntrack zones, nat's
	// MESHGATE_INBOUND and MESHGATE_OUTPUT) come first.
	c := &counting{sabotage: 26}
	cfg := DefaultConfig()
	cfg.IPv6 = IPv6Off
	o := c.opts(t, path)
	err := Apply(context.Background(), cfg, o)
	want := `redirect: apply nat/MESHGATE_REDIRECT rule "-p tcp -j REDIRECT --to-ports 15001": iptables v1.8.9 (nf_tables): Chain 'MESHGATE_NO_SUCH_CHAIN' does not exist`
	if err == nil || err.Error() != want {
		t.Errorf("error:\n got %v\nwant %s", err, want)
	}
}

// TestRealNetnsPath: with NetnsPath, Apply and Cleanup change that
// namespace and not the caller's.
func TestRealNetnsPath(t *testing.T) {
	needRoot(t)
	path := newNetns(t)
	// Everything runs in the test's own namespace, except through o.
	mine := save(t, "", "iptables-nft-save")
	cfg := DefaultConfig()
	cfg.CaptureDNS, cfg.DNSServers = true, []netip.Addr{netip.MustParseAddr("10.96.0.10")}
	o := Options{NetnsPath: path, Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))}
	if err := Apply(context.Background(), cfg, o); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(save(t, path, "iptables-save"), "MESHGATE_DNS") {
		t.Error("the namespace at NetnsPath has no rules")
	}
	if got := save(t, "", "iptables-nft-save"); got != mine {
		t.Errorf("Apply changed the caller's namespace:\n%s", got)
	}
	if err := Cleanup(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if got := save(t, path, "iptables-save", "ip6tables-save"); got != "" {
		t.Errorf("after Cleanup:\n%s", got)
	}
	if err := Apply(context.Background(), cfg, Options{NetnsPath: "/run/netns/mgtest-does-not-exist"}); err == nil ||
		!strings.HasPrefix(err.Error(), "redirect: open network namespace /run/netns/mgtest-does-not-exist: ") {
		t.Errorf("a missing namespace: %v", err)
	}
}

// TestRealBackendDetection: a namespace whose rules live in the legacy
// backend gets ours there too, though iptables means nft here.
func TestRealBackendDetection(t *testing.T) {
	needRoot(t)
	if lookTool("iptables-legacy") == "" {
		t.Skip("iptables-legacy is not installed")
	}
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			path := newNetns(t)
			run(t, path, "iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
			beforeNft := save(t, path, "iptables-nft-save", "ip6tables-nft-save")
			beforeLegacy := save(t, path, "iptables-legacy-save", "ip6tables-legacy-save")
			c := &counting{}
			o := c.opts(t, path)
			if err := Apply(context.Background(), tc.cfg, o); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(save(t, path, "iptables-legacy-save"), "-A MESHGATE_OUTPUT") {
				t.Errorf("rules are not in the legacy backend")
			}
			if got := save(t, path, "iptables-nft-save", "ip6tables-nft-save"); got != beforeNft {
				t.Errorf("rules went to nft as well:\n%s", got)
			}
			// Legacy prints rules as nft does: a second Apply finds them right.
			c.n = 0
			if err := Apply(context.Background(), tc.cfg, o); err != nil {
				t.Fatal(err)
			}
			if c.n != 0 {
				t.Errorf("second Apply on legacy made %d changes, want none", c.n)
			}
			if err := Cleanup(context.Background(), o); err != nil {
				t.Fatal(err)
			}
			// Legacy tables outlive their rules: compare without empty tables.
			if got := dropEmptyTables(save(t, path, "iptables-legacy-save", "ip6tables-legacy-save")); got != dropEmptyTables(beforeLegacy) {
				t.Errorf("after Cleanup, legacy:\n%s\nbefore:\n%s", got, beforeLegacy)
			}
		})
	}
}

// dropEmptyTables removes tables without rules or user chains from
// iptables-save output.
func dropEmptyTables(s string) string {
	var out bytes.Buffer
	for _, section := range strings.SplitAfter(s, "COMMIT\n") {
		if strings.Contains(section, "\n-A ") || regexp.MustCompile(`\n:\S+ - `).MatchString(section) {
			out.WriteString(section)
		}
	}
	return out.String()
}

// TestRealIPv6Auto: with IPv6 disabled in the namespace, auto installs
// IPv4 rules only, and on is refused.
func TestRealIPv6Auto(t *testing.T) {
	needRoot(t)
	path := newNetns(t)
	run(t, path, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
	o := Options{NetnsPath: path, Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))}
	if err := Apply(context.Background(), DefaultConfig(), o); err != nil {
		t.Fatal(err)
	}
	if got := save(t, path, "ip6tables-save"); got != "" {
		t.Errorf("IPv6 rules with IPv6 disabled:\n%s", got)
	}
	if !strings.Contains(save(t, path, "iptables-save"), "MESHGATE_OUTPUT") {
		t.Errorf("no IPv4 rules")
	}
	on := DefaultConfig()
	on.IPv6 = IPv6On
	err := Apply(context.Background(), on, o)
	if err == nil || !strings.Contains(err.Error(), "--ipv6=on but IPv6 is disabled in the namespace") {
		t.Errorf("--ipv6=on without IPv6: %v", err)
	}
	if err := Cleanup(context.Background(), o); err != nil {
		t.Fatal(err)
	}
}
