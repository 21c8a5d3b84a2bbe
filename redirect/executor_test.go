package redirect

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"meshgate/intercept"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func fakeOpts(t *testing.T, ns *fakeNS) Options {
	return Options{Logger: zaptest.NewLogger(t), openSystem: ns.system()}
}

// expect returns the state a namespace in state pre should be in after
// Apply of rs: pre plus our chains (and ChainOwner in tables Apply had to
// create, where tables can be deleted), our jumps at the top of built-in
// chains, and the routing objects.
func expect(pre *fakeNS, rs Ruleset) *fakeNS {
	ns := pre.clone()
	for _, fr := range rs.Families {
		x := &fakeIPT{ns, fr.Family}
		for _, t := range fr.Tables {
			if x.table(t.Name, false) == nil && ns.canDelete {
				x.table(t.Name, true)
				must(x.NewChain(t.Name, ChainOwner))
			}
			for _, c := range t.Chains {
				if !c.Builtin {
					must(x.NewChain(t.Name, c.Name))
				}
			}
			for _, c := range t.Chains {
				for i, r := range c.Rules {
					if c.Builtin {
						must(x.Insert(t.Name, c.Name, i+1, r.Args...))
					} else {
						must(x.Append(t.Name, c.Name, r.Args...))
					}
				}
			}
		}
		n := fakeNet{ns}
		for _, r := range fr.PolicyRules {
			must(n.AddPolicyRule(fr.Family, r))
		}
		for _, r := range fr.LocalRoutes {
			must(n.AddLocalRoute(fr.Family, r))
		}
		for _, a := range fr.LoopbackAddrs {
			must(n.AddLoopbackAddr(a))
		}
	}
	return ns
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// resolved returns c with IPv6 auto resolved the way Apply resolves it in ns.
func resolved(c Config, ns *fakeNS) Config {
	if c.IPv6 == IPv6Auto {
		c.IPv6 = IPv6Off
		if ns.ipv6 && !ns.noIP6 {
			c.IPv6 = IPv6On
		}
	}
	return c
}

// prestates are namespaces as Apply may find them.
func prestates() map[string]func() *fakeNS {
	return map[string]func() *fakeNS{
		"fresh": newFakeNS,
		"with-own-rules": func() *fakeNS {
			ns := newFakeNS()
			for _, f := range []Family{IPv4, IPv6} {
				x := &fakeIPT{ns, f}
				must(x.Append("nat", "OUTPUT", "-p", "tcp", "-m", "tcp", "--dport", "5555", "-j", "RETURN"))
				must(x.Append("filter", "INPUT", "-p", "tcp", "-m", "tcp", "--dport", "22", "-j", "ACCEPT"))
				must(x.NewChain("nat", "USER_CHAIN"))
				must(x.Append("nat", "USER_CHAIN", "-m", "comment", "--comment", `a "quoted" comment`, "-j", "RETURN"))
				must(x.Append("nat", "PREROUTING", "-j", "USER_CHAIN"))
			}
			ns.calls = nil
			return ns
		},
		"legacy": func() *fakeNS {
			ns := newFakeNS()
			ns.canDelete = false
			return ns
		},
		"no-ipv6": func() *fakeNS {
			ns := newFakeNS()
			ns.ipv6 = false
			return ns
		},
	}
}

func TestApplyCleanup(t *testing.T) {
	for pname, pre := range prestates() {
		for _, tc := range goldenCases() {
			t.Run(pname+"/"+tc.name, func(t *testing.T) {
				cfg := tc.cfg
				if pname == "no-ipv6" && cfg.IPv6 == IPv6On {
					cfg.IPv6 = IPv6Auto
				}
				ns := pre()
				before := ns.dump()
				ctx := context.Background()
				if err := Apply(ctx, cfg, fakeOpts(t, ns)); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				want := expect(pre(), Build(resolved(cfg, ns))).dump()
				if diff := cmp.Diff(want, ns.dump()); diff != "" {
					t.Fatalf("after Apply (-want +got):\n%s", diff)
				}

				ns.calls = nil
				if err := Apply(ctx, cfg, fakeOpts(t, ns)); err != nil {
					t.Fatalf("second Apply: %v", err)
				}
				if len(ns.calls) != 0 {
					t.Errorf("second Apply changed things:\n%s", strings.Join(ns.calls, "\n"))
				}

				if err := Cleanup(ctx, fakeOpts(t, ns)); err != nil {
					t.Fatalf("Cleanup: %v", err)
				}
				after := ns.dump()
				if !ns.canDelete {
					// Legacy tables outlive their rules; compare without
					// the empty tables Apply brought into being.
					after = withoutEmptyTables(ns)
				}
				if diff := cmp.Diff(before, after); diff != "" {
					t.Errorf("Cleanup did not restore the namespace (-before +after):\n%s", diff)
				}
				ns.calls = nil
				if err := Cleanup(ctx, fakeOpts(t, ns)); err != nil {
					t.Fatalf("second Cleanup: %v", err)
				}
				if len(ns.calls) != 0 {
					t.Errorf("second Cleanup changed things:\n%s", strings.Join(ns.calls, "\n"))
				}
			})
		}
	}
}

func withoutEmptyTables(ns *fakeNS) string {
	c := ns.clone()
	for _, tables := range c.tables {
		for name, t := range tables {
			empty := true
			for _, ch := range t.chains {
				if !ch.builtin || len(ch.rules) > 0 {
					empty = false
				}
			}
			if empty {
				delete(tables, name)
			}
		}
	}
	return c.dump()
}

// TestApplyRollback fails every mutating call of Apply in turn, from
// several starting states (including one holding rules of an earlier,
// different Apply), and checks each time that the namespace is left
// exactly as it was.
func TestApplyRollback(t *testing.T) {
	earlier := DefaultConfig()
	earlier.Mode, earlier.CaptureDNS, earlier.ExcludeOutboundPorts = intercept.ModeTProxy, true, []uint16{9}
	starts := prestates()
	starts["earlier-apply"] = func() *fakeNS {
		ns := newFakeNS()
		must(Apply(context.Background(), earlier, Options{openSystem: ns.system()}))
		ns.calls = nil
		return ns
	}
	for sname, start := range starts {
		for _, tc := range goldenCases() {
			t.Run(sname+"/"+tc.name, func(t *testing.T) {
				ns := start()
				if !ns.ipv6 && tc.cfg.IPv6 == IPv6On {
					tc.cfg.IPv6 = IPv6Auto
				}
				if err := Apply(context.Background(), tc.cfg, Options{openSystem: ns.system()}); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				n := len(ns.calls)
				if n == 0 {
					return // nothing to change, nothing to fail
				}
				for k := 1; k <= n; k++ {
					ns := start()
					before := ns.dump()
					ns.fail = func(i int, call string) error {
						if i == k {
							return &fakeError{args: strings.Fields(call), status: 4, msg: "iptables v1.8.9 (nf_tables):  RULE_APPEND failed (Invalid argument): injected\n"}
						}
						return nil
					}
					err := Apply(context.Background(), tc.cfg, Options{openSystem: ns.system()})
					if err == nil {
						t.Fatalf("call %d of %d failed, Apply did not", k, n)
					}
					if !strings.HasPrefix(err.Error(), "redirect: apply ") || !strings.Contains(err.Error(), "injected") {
						t.Errorf("call %d: error %q does not say where and what", k, err)
					}
					after := ns.dump()
					if !ns.canDelete {
						after = withoutEmptyTables(ns) // legacy tables outlive their rules
					}
					if diff := cmp.Diff(before, after); diff != "" {
						t.Fatalf("call %d of %d (%s) failed; the namespace changed (-before +after):\n%s", k, n, ns.calls[k-1], diff)
					}
				}
			})
		}
	}
}

// TestApplySwitch applies one Config over another: the result is exactly
// the second, with no trace of the first, and undoing a failed switch
// gives back the first.
func TestApplySwitch(t *testing.T) {
	cases := goldenCases()
	for _, from := range cases {
		for _, to := range cases {
			if from.name == to.name {
				continue
			}
			t.Run(from.name+"->"+to.name, func(t *testing.T) {
				ns := newFakeNS()
				ctx := context.Background()
				must(Apply(ctx, from.cfg, Options{openSystem: ns.system()}))
				if err := Apply(ctx, to.cfg, Options{openSystem: ns.system()}); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				want := expect(newFakeNS(), Build(resolved(to.cfg, ns))).dump()
				if diff := cmp.Diff(want, ns.dump()); diff != "" {
					t.Errorf("after switching (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestApplyErrorNamesTableChainRule(t *testing.T) {
	ns := newFakeNS()
	ns.fail = func(_ int, call string) error {
		if strings.HasSuffix(call, "-A MESHGATE_REDIRECT -p tcp -j REDIRECT --to-ports 15001") {
			return &fakeError{args: strings.Fields(call), status: 4, msg: "iptables v1.8.9 (nf_tables):  RULE_APPEND failed (Invalid argument): rule in chain MESHGATE_REDIRECT\n"}
		}
		return nil
	}
	c := DefaultConfig()
	c.IPv6 = IPv6Off
	err := Apply(context.Background(), c, fakeOpts(t, ns))
	want := `redirect: apply nat/MESHGATE_REDIRECT rule "-p tcp -j REDIRECT --to-ports 15001": iptables v1.8.9 (nf_tables):  RULE_APPEND failed (Invalid argument): rule in chain MESHGATE_REDIRECT`
	if err == nil || err.Error() != want {
		t.Errorf("error:\n got %v\nwant %s", err, want)
	}
	var fe *fakeError
	if !errors.As(err, &fe) {
		t.Errorf("the iptables error is not wrapped")
	}
}

func TestApplyUndoFailureSaysSo(t *testing.T) {
	ns := newFakeNS()
	ns.fail = func(_ int, call string) error {
		if strings.Contains(call, "MESHGATE_REDIRECT -p tcp -j REDIRECT") || strings.Contains(call, "-X MESHGATE_OUTPUT") {
			return &fakeError{args: strings.Fields(call), status: 1, msg: "iptables: Resource temporarily unavailable.\n"}
		}
		return nil
	}
	c := DefaultConfig()
	c.IPv6 = IPv6Off
	err := Apply(context.Background(), c, fakeOpts(t, ns))
	if err == nil || !strings.Contains(err.Error(), "undoing the changes also failed") || !strings.Contains(err.Error(), "meshgate redirect --cleanup") {
		t.Errorf("error %v does not say the undo failed and what to do", err)
	}
}

func TestApplyInvalidConfig(t *testing.T) {
	ns := newFakeNS()
	c := DefaultConfig()
	c.Mode = "nat"
	err := Apply(context.Background(), c, fakeOpts(t, ns))
	if want := `redirect: invalid config: --mode "nat": want redirect or tproxy`; err == nil || err.Error() != want {
		t.Errorf("error %v, want %s", err, want)
	}
	if len(ns.calls) != 0 {
		t.Errorf("an invalid config changed things: %v", ns.calls)
	}
}

func TestApplyCancelled(t *testing.T) {
	ns := newFakeNS()
	before := ns.dump()
	ctx, cancel := context.WithCancel(context.Background())
	ns.fail = func(n int, _ string) error {
		if n == 5 {
			cancel()
		}
		return nil
	}
	err := Apply(ctx, DefaultConfig(), fakeOpts(t, ns))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if diff := cmp.Diff(before, ns.dump()); diff != "" {
		t.Errorf("a cancelled Apply left changes (-before +after):\n%s", diff)
	}
}

func TestApplyIPv6(t *testing.T) {
	for _, tc := range []struct {
		name        string
		mode        IPv6Mode
		ipv6, noIP6 bool
		wantV6      bool
		wantErr     string
	}{
		{"auto with IPv6", IPv6Auto, true, false, true, ""},
		{"auto without IPv6", IPv6Auto, false, false, false, ""},
		{"auto without ip6tables", IPv6Auto, true, true, false, ""},
		{"off", IPv6Off, true, false, false, ""},
		{"on", IPv6On, true, false, true, ""},
		{"on without IPv6", IPv6On, false, false, false, "redirect: --ipv6=on but IPv6 is disabled in the namespace (net.ipv6.conf.all.disable_ipv6=1, or no IPv6 in the kernel); enable it there or use --ipv6=off"},
		{"on without ip6tables", IPv6On, true, true, false, "redirect: --ipv6=on but ip6tables is not installed; install it (apt-get install iptables) or use --ipv6=off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newFakeNS()
			ns.ipv6, ns.noIP6 = tc.ipv6, tc.noIP6
			c := DefaultConfig()
			c.IPv6 = tc.mode
			err := Apply(context.Background(), c, fakeOpts(t, ns))
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error %v, want %s", err, tc.wantErr)
				}
				if len(ns.calls) != 0 {
					t.Errorf("a refused Apply changed things: %v", ns.calls)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			_, gotV6 := ns.tables[IPv6]["nat"]
			if gotV6 != tc.wantV6 {
				t.Errorf("IPv6 rules installed = %v, want %v", gotV6, tc.wantV6)
			}
			if got := ns.policy[addrKey(passthroughIPv6)]; got != tc.wantV6 {
				t.Errorf("::6 on lo = %v, want %v", got, tc.wantV6)
			}
		})
	}
}

// TestCleanupKeepsTableOthersUse: a table Apply created is kept by
// Cleanup when someone else has put rules in it since.
func TestCleanupKeepsTableOthersUse(t *testing.T) {
	ns := newFakeNS()
	ctx := context.Background()
	c := DefaultConfig()
	c.IPv6 = IPv6Off
	must(Apply(ctx, c, fakeOpts(t, ns)))
	x := &fakeIPT{ns, IPv4}
	must(x.Append("nat", "POSTROUTING", "-j", "MASQUERADE"))
	if err := Cleanup(ctx, fakeOpts(t, ns)); err != nil {
		t.Fatal(err)
	}
	want := "IPv4 *nat\n-A POSTROUTING -j MASQUERADE\n"
	if diff := cmp.Diff(want, ns.dump()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestCleanupRemovesStrays: Cleanup needs no Config: it finds chains of
// ours by name, duplicated jumps included, in any table.
func TestCleanupRemovesStrays(t *testing.T) {
	ns := newFakeNS()
	x := &fakeIPT{ns, IPv4}
	must(x.NewChain("filter", "MESHGATE_FROM_THE_FUTURE"))
	must(x.Append("filter", "MESHGATE_FROM_THE_FUTURE", "-j", "RETURN"))
	must(x.Append("filter", "INPUT", "-j", "MESHGATE_FROM_THE_FUTURE"))
	must(x.Append("filter", "INPUT", "-p", "tcp", "-j", "ACCEPT"))
	must(x.Append("filter", "INPUT", "-j", "MESHGATE_FROM_THE_FUTURE"))
	must(fakeNet{ns}.AddPolicyRule(IPv6, PolicyRule{TProxyMark, TProxyMark, TProxyTable}))
	if err := Cleanup(context.Background(), fakeOpts(t, ns)); err != nil {
		t.Fatal(err)
	}
	want := "IPv4 *filter\n-A INPUT -p tcp -j ACCEPT\n"
	if diff := cmp.Diff(want, ns.dump()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestCleanupReportsEveryProblem(t *testing.T) {
	ns := newFakeNS()
	ctx := context.Background()
	must(Apply(ctx, DefaultConfig(), fakeOpts(t, ns)))
	ns.fail = func(_ int, call string) error {
		if strings.Contains(call, "-X MESHGATE_REDIRECT") {
			return &fakeError{args: strings.Fields(call), status: 4, msg: "iptables: Resource temporarily unavailable.\n"}
		}
		return nil
	}
	err := Cleanup(ctx, fakeOpts(t, ns))
	want := "redirect: cleanup nat/MESHGATE_REDIRECT: delete chain: iptables: Resource temporarily unavailable.\n" +
		"redirect: cleanup ip6tables nat/MESHGATE_REDIRECT: delete chain: iptables: Resource temporarily unavailable."
	if err == nil || err.Error() != want {
		t.Fatalf("error:\n%v\nwant:\n%s", err, want)
	}
	// Everything else is gone; a second Cleanup finishes.
	ns.fail = nil
	if err := Cleanup(ctx, fakeOpts(t, ns)); err != nil {
		t.Fatal(err)
	}
	if got := ns.dump(); got != "" {
		t.Errorf("left after two Cleanups:\n%s", got)
	}
}

func TestApplyLeavesForeignRulesAlone(t *testing.T) {
	ns := newFakeNS()
	x := &fakeIPT{ns, IPv4}
	// A user rule above which our jump goes, and a jump of ours that an
	// admin moved below a rule of theirs: Apply neither moves nor
	// duplicates it.
	must(x.Append("nat", "OUTPUT", "-d", "192.0.2.1/32", "-j", "ACCEPT"))
	c := DefaultConfig()
	c.IPv6 = IPv6Off
	must(Apply(context.Background(), c, fakeOpts(t, ns)))
	nat := ns.tables[IPv4]["nat"]
	want := [][]string{{"-p", "tcp", "-j", "MESHGATE_OUTPUT"}, {"-d", "192.0.2.1/32", "-j", "ACCEPT"}}
	if diff := cmp.Diff(want, nat.chains["OUTPUT"].rules); diff != "" {
		t.Errorf("nat OUTPUT (-want +got):\n%s", diff)
	}
	must(x.Delete("nat", "OUTPUT", "-p", "tcp", "-j", "MESHGATE_OUTPUT"))
	must(x.Append("nat", "OUTPUT", "-p", "tcp", "-j", "MESHGATE_OUTPUT"))
	ns.calls = nil
	must(Apply(context.Background(), c, fakeOpts(t, ns)))
	if len(ns.calls) != 0 {
		t.Errorf("Apply moved a jump that was in place: %v", ns.calls)
	}
}

func TestSplitRule(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
	}{
		{"-A OUTPUT -p tcp -j MESHGATE_OUTPUT", []string{"-A", "OUTPUT", "-p", "tcp", "-j", "MESHGATE_OUTPUT"}},
		{`-A X -m comment --comment "a b \"c\" \\d" -j RETURN`, []string{"-A", "X", "-m", "comment", "--comment", `a b "c" \d`, "-j", "RETURN"}},
		{`-A X -m comment --comment "" -j RETURN`, []string{"-A", "X", "-m", "comment", "--comment", "", "-j", "RETURN"}},
		{"  -N   X  ", []string{"-N", "X"}},
	} {
		got, err := splitRule(tc.line)
		if err != nil {
			t.Fatalf("%q: %v", tc.line, err)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tc.line, diff)
		}
		if q := quoteArgs(got); q != strings.Join(strings.Fields(tc.line), " ") && !strings.Contains(tc.line, `"`) {
			t.Errorf("quoteArgs round trip: %q", q)
		}
	}
	if _, err := splitRule(`-A X --comment "open`); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func TestToolErr(t *testing.T) {
	err := &fakeError{args: []string{"iptables", "-t", "nat"}, status: 2, msg: "iptables v1.8.9 (nf_tables): Chain 'X' does not exist\nTry `iptables -h' or 'iptables --help' for more information.\n"}
	got := toolErr(err)
	if want := "iptables v1.8.9 (nf_tables): Chain 'X' does not exist"; got.Error() != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if !errors.Is(got, err) {
		t.Error("not wrapped")
	}
	plain := fmt.Errorf("boom")
	if toolErr(plain) != plain {
		t.Error("a non-iptables error was changed")
	}
}
