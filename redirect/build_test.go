package redirect

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"meshgate/intercept"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenCase is one configuration whose rules are pinned by
// testdata/<name>.golden and, as root, applied for real.
type goldenCase struct {
	name string
	cfg  Config
}

// goldenCases is the one table of configurations that drives the golden
// files, the invariant checks and the real-iptables tests.
func goldenCases() []goldenCase {
	with := func(edit func(c *Config)) Config {
		c := DefaultConfig()
		c.IPv6 = IPv6Off
		edit(&c)
		return c
	}
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	return []goldenCase{
		{"defaults", DefaultConfig()},
		{"inbound-ports", with(func(c *Config) { c.InboundAllPorts, c.InboundPorts = false, []uint16{80, 443, 8080} })},
		{"no-inbound", with(func(c *Config) { c.InboundAllPorts = false })},
		{"exclude-inbound-ports", with(func(c *Config) { c.ExcludeInboundPorts = []uint16{22, 9090} })},
		{"exclude-outbound-ports", with(func(c *Config) { c.ExcludeOutboundPorts = []uint16{5432, 6379} })},
		{"exclude-outbound-cidrs", with(func(c *Config) {
			c.IPv6 = IPv6On
			c.ExcludeOutboundCIDRs = []netip.Prefix{pfx("10.96.0.0/12"), pfx("169.254.169.254/32"), pfx("fd00::/8")}
		})},
		{"include-outbound-cidrs", with(func(c *Config) {
			c.IPv6 = IPv6On
			c.IncludeOutboundAll = false
			c.IncludeOutboundCIDRs = []netip.Prefix{pfx("10.0.0.0/8"), pfx("192.168.0.0/16")}
			c.ExcludeOutboundCIDRs = []netip.Prefix{pfx("10.96.0.0/12")}
		})},
		{"dns", with(func(c *Config) { c.CaptureDNS = true })},
		{"dns-servers", with(func(c *Config) {
			c.IPv6 = IPv6On
			c.CaptureDNS = true
			c.DNSServers = []netip.Addr{addr("10.96.0.10"), addr("127.0.0.53"), addr("fd00::a")}
		})},
		{"ipv6", with(func(c *Config) { c.IPv6 = IPv6On })},
		{"gid", with(func(c *Config) { c.ProxyGIDs = []uint32{1337, 2000} })},
		{"uid-only", with(func(c *Config) { c.ProxyMark = 0; c.CaptureDNS = true })},
		{"mark-only", with(func(c *Config) { c.ProxyUID = nil; c.CaptureDNS = true })},
		{"tproxy", with(func(c *Config) { c.IPv6 = IPv6On; c.Mode = intercept.ModeTProxy })},
		{"tproxy-inbound-ports", with(func(c *Config) {
			c.Mode = intercept.ModeTProxy
			c.InboundAllPorts, c.InboundPorts = false, []uint16{8080}
			c.ExcludeInboundPorts = []uint16{22}
		})},
	}
}

func TestGolden(t *testing.T) {
	names := map[string]bool{}
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			if names[tc.name] {
				t.Fatalf("two cases named %s", tc.name)
			}
			names[tc.name] = true
			if err := tc.cfg.Validate(); err != nil {
				t.Fatalf("case config is invalid: %v", err)
			}
			got := Build(tc.cfg).Render()
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./redirect -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("Build(%s).Render() differs from %s (-want +got); if intended, run go test ./redirect -update:\n%s", tc.name, path, diff)
			}
		})
	}
	// No stale golden files.
	files, _ := filepath.Glob(filepath.Join("testdata", "*.golden"))
	for _, f := range files {
		if name := strings.TrimSuffix(filepath.Base(f), ".golden"); !names[name] && !*update {
			t.Errorf("%s has no case in goldenCases; delete it", f)
		}
	}
}

func TestBuildIsDeterministic(t *testing.T) {
	for _, tc := range goldenCases() {
		if a, b := Build(tc.cfg).Render(), Build(tc.cfg).Render(); a != b {
			t.Errorf("%s: two Builds differ", tc.name)
		}
	}
}

// standardTargets are the targets that are not chains.
var standardTargets = []string{"RETURN", "ACCEPT", "DROP", "REDIRECT", "TPROXY", "MARK", "CONNMARK", "CT"}

// TestChainInvariants checks, on every golden case, what README.md
// promises: built-in chains hold only jumps to our chains, every chain we
// jump to is declared in the same table, every chain we declare is ours
// and reachable, and the proxy's own ports are never captured inbound.
func TestChainInvariants(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			rs := Build(tc.cfg)
			for _, fr := range rs.Families {
				for _, tb := range fr.Tables {
					checkTable(t, fr.Family, tb)
				}
				checkProxyPortsNeverCaptured(t, tc.cfg, fr)
				checkProxyNeverCapturesItself(t, tc.cfg, fr)
			}
		})
	}
}

func checkTable(t *testing.T, f Family, tb Table) {
	t.Helper()
	declared := map[string]bool{}
	for _, c := range tb.Chains {
		if c.Builtin != isBuiltinChain(c.Name) {
			t.Errorf("%s %s: chain %s: Builtin=%v is wrong", f, tb.Name, c.Name, c.Builtin)
		}
		if !c.Builtin {
			if !strings.HasPrefix(c.Name, ChainPrefix) {
				t.Errorf("%s %s: chain %s is not named %s*", f, tb.Name, c.Name, ChainPrefix)
			}
			if len(c.Name) > 28 {
				t.Errorf("%s %s: chain %s is longer than iptables allows (28)", f, tb.Name, c.Name)
			}
			if declared[c.Name] {
				t.Errorf("%s %s: chain %s declared twice", f, tb.Name, c.Name)
			}
			declared[c.Name] = true
		}
	}
	jumped := map[string]bool{}
	for _, c := range tb.Chains {
		if len(c.Rules) == 0 && !c.Builtin {
			t.Errorf("%s %s: chain %s is empty", f, tb.Name, c.Name)
		}
		for _, r := range c.Rules {
			target := r.Target()
			if c.Builtin && !strings.HasPrefix(target, ChainPrefix) {
				t.Errorf("%s %s: built-in chain %s has a rule that is not a jump to one of ours: %q", f, tb.Name, c.Name, r.Args)
			}
			if c.Builtin && r.Why != "" {
				t.Errorf("%s %s: jump in %s has a comment; put it on the chain's rules", f, tb.Name, c.Name)
			}
			if slices.Contains(standardTargets, target) {
				continue
			}
			if !declared[target] {
				t.Errorf("%s %s: %s jumps to undeclared chain %q", f, tb.Name, c.Name, target)
			}
			if target == c.Name {
				t.Errorf("%s %s: %s jumps to itself", f, tb.Name, c.Name)
			}
			jumped[target] = true
		}
	}
	for name := range declared {
		if !jumped[name] {
			t.Errorf("%s %s: chain %s is declared but nothing jumps to it", f, tb.Name, name)
		}
	}
}

// famAddr returns the pod address, a remote address, and the loopback
// address of family f for the walks.
func famAddr(f Family) (pod, remote, loopback, passthrough netip.Addr) {
	if f == IPv6 {
		return netip.MustParseAddr("fd00::5"), netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("::1"), netip.MustParseAddr("::6")
	}
	return netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.6")
}

// inbound walks a new inbound TCP connection from a remote client through
// PREROUTING (mangle, then nat).
func inbound(t *testing.T, fr FamilyRules, dport uint16) verdict {
	t.Helper()
	pod, remote, _, _ := famAddr(fr.Family)
	p := packet{proto: "tcp", src: remote, dst: pod, sport: 40000, dport: dport, in: "eth0", ctstate: "NEW"}
	if v := walk(t, fr, "mangle", "PREROUTING", p); v.captured() || v.accepted {
		return v
	}
	return walk(t, fr, "nat", "PREROUTING", p)
}

// output walks a new locally generated packet through raw, mangle and nat
// OUTPUT and returns the nat verdict (raw's zone included).
func output(t *testing.T, fr FamilyRules, p packet) verdict {
	t.Helper()
	p.local, p.ctstate = true, "NEW"
	pod, _, _, passthrough := famAddr(fr.Family)
	p.srcLocal = p.src == pod || p.src == passthrough || p.src.IsLoopback()
	raw := walk(t, fr, "raw", "OUTPUT", p)
	walk(t, fr, "mangle", "OUTPUT", p)
	v := walk(t, fr, "nat", "OUTPUT", p)
	v.zone, v.zoneOrig = raw.zone, raw.zoneOrig
	return v
}

func checkProxyPortsNeverCaptured(t *testing.T, c Config, fr FamilyRules) {
	t.Helper()
	pod, _, _, _ := famAddr(fr.Family)
	for _, np := range c.proxyPorts() {
		if v := inbound(t, fr, np.port); v.captured() {
			t.Errorf("%s: inbound connection to %s (%d) is captured: %s\n%s", fr.Family, np.what, np.port, v, strings.Join(v.trace, "\n"))
		}
		// The app (or a probe in the pod) calling the pod's own address.
		p := packet{proto: "tcp", src: pod, dst: pod, sport: 40000, dport: np.port, out: "lo", uid: 1000}
		if v := output(t, fr, p); v.captured() {
			t.Errorf("%s: local connection to the pod's %s (%d) is captured: %s", fr.Family, np.what, np.port, v)
		}
	}
}

func checkProxyNeverCapturesItself(t *testing.T, c Config, fr FamilyRules) {
	t.Helper()
	pod, remote, _, _ := famAddr(fr.Family)
	// Each exemption alone must keep every kind of the proxy's own
	// upstream traffic out.
	var proxies []packet
	if c.ProxyUID != nil {
		proxies = append(proxies, packet{uid: *c.ProxyUID})
	}
	for _, g := range c.ProxyGIDs {
		proxies = append(proxies, packet{uid: 4242, gids: []uint32{g}})
	}
	if c.ProxyMark != 0 {
		proxies = append(proxies, packet{uid: 0, mark: c.ProxyMark})
	}
	if len(proxies) == 0 {
		t.Fatalf("config has no exemption")
	}
	for _, proxy := range proxies {
		for _, kind := range []struct {
			proto string
			dport uint16
		}{{"tcp", 80}, {"tcp", 53}, {"udp", 53}} {
			p := proxy
			p.proto, p.src, p.dst, p.sport, p.dport, p.out = kind.proto, pod, remote, 50000, kind.dport, "eth0"
			if v := output(t, fr, p); v.captured() {
				t.Errorf("%s: the proxy's own %s connection to port %d (uid %d gids %v mark %#x) is captured: %s\n%s",
					fr.Family, kind.proto, kind.dport, p.uid, p.gids, p.mark, v, strings.Join(v.trace, "\n"))
			}
		}
	}
}

// TestRuleFlow walks packets through the rules of a few configurations
// and checks where they end up: the semantics README.md describes.
func TestRuleFlow(t *testing.T) {
	type want struct {
		redirect, tproxy uint16
		zone, zoneOrig   int
	}
	cfg := func(edit func(c *Config)) Config {
		c := DefaultConfig()
		c.IPv6 = IPv6On
		edit(&c)
		return c
	}
	redirectCfg := cfg(func(c *Config) {
		c.CaptureDNS = true
		c.ExcludeOutboundPorts = []uint16{5432}
		c.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:1::/48")}
		c.ExcludeInboundPorts = []uint16{22}
	})
	tproxyCfg := cfg(func(c *Config) { c.Mode = intercept.ModeTProxy })
	listedCfg := cfg(func(c *Config) {
		c.InboundAllPorts, c.InboundPorts = false, []uint16{8080}
		c.IncludeOutboundAll, c.IncludeOutboundCIDRs = false, []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	})

	for _, f := range []Family{IPv4, IPv6} {
		pod, remote, lo, passthrough := famAddr(f)
		other := netip.MustParseAddr("198.51.100.9")
		if f == IPv6 {
			other = netip.MustParseAddr("2001:db8:1::9")
		}
		app := packet{proto: "tcp", src: pod, dst: remote, sport: 40000, dport: 443, out: "eth0", uid: 1000}
		with := func(p packet, edit func(p *packet)) packet { edit(&p); return p }
		cases := []struct {
			name string
			cfg  Config
			run  func(fr FamilyRules) verdict
			want want
		}{
			{"app outbound is captured", redirectCfg, func(fr FamilyRules) verdict { return output(t, fr, app) }, want{redirect: 15001}},
			{"app outbound to excluded port", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, with(app, func(p *packet) { p.dport = 5432 }))
			}, want{}},
			{"app outbound to excluded CIDR", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, with(app, func(p *packet) { p.dst = other }))
			}, want{}},
			{"proxy outbound by UID", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, with(app, func(p *packet) { p.uid = 1337 }))
			}, want{zoneOrig: 1337}},
			{"proxy outbound by mark", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, with(app, func(p *packet) { p.uid = 0; p.mark = 0x539 }))
			}, want{zoneOrig: 1337}},
			{"inbound is captured", redirectCfg, func(fr FamilyRules) verdict { return inbound(t, fr, 8080) }, want{redirect: 15006}},
			{"inbound excluded port", redirectCfg, func(fr FamilyRules) verdict { return inbound(t, fr, 22) }, want{}},
			{"inbound proxy passthrough to the app", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, packet{proto: "tcp", src: passthrough, dst: pod, sport: 40001, dport: 8080, out: "lo", uid: 1337, mark: 0x539})
			}, want{zoneOrig: 1337}},
			{"app calls its own pod address", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, packet{proto: "tcp", src: pod, dst: pod, sport: 40002, dport: 8080, out: "lo", uid: 1000})
			}, want{redirect: 15006}},
			{"app calls its own pod address on an excluded inbound port", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, packet{proto: "tcp", src: pod, dst: pod, sport: 40002, dport: 22, out: "lo", uid: 1000})
			}, want{}},
			{"proxy calls the pod's own address (service VIP resolved to itself)", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, packet{proto: "tcp", src: pod, dst: pod, sport: 40003, dport: 8080, out: "lo", uid: 1337, mark: 0x539})
			}, want{redirect: 15006, zoneOrig: 1337}},
			{"app calls localhost", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, packet{proto: "tcp", src: lo, dst: lo, sport: 40004, dport: 8080, out: "lo", uid: 1000})
			}, want{}},
			{"proxy calls its admin port on localhost", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, packet{proto: "tcp", src: lo, dst: lo, sport: 40005, dport: 15000, out: "lo", uid: 1337})
			}, want{zoneOrig: 1337}},
			{"app DNS over UDP", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, with(app, func(p *packet) { p.proto, p.dport = "udp", 53 }))
			}, want{redirect: 15053}},
			{"app DNS over TCP", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, with(app, func(p *packet) { p.dport = 53 }))
			}, want{redirect: 15053}},
			{"app DNS to a local stub resolver", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, packet{proto: "udp", src: lo, dst: lo, sport: 40006, dport: 53, out: "lo", uid: 1000})
			}, want{redirect: 15053}},
			{"proxy upstream DNS by UID: own zone", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, with(app, func(p *packet) { p.proto, p.dport, p.uid = "udp", 53, 1337 }))
			}, want{zone: 1337}},
			{"proxy upstream DNS by mark: own zone", redirectCfg, func(fr FamilyRules) verdict {
				return output(t, fr, with(app, func(p *packet) { p.proto, p.dport, p.uid, p.mark = "udp", 53, 0, 0x539 }))
			}, want{zone: 1337}},
			{"upstream DNS reply: proxy's zone", redirectCfg, func(fr FamilyRules) verdict {
				return walk(t, fr, "raw", "PREROUTING", packet{proto: "udp", src: remote, dst: pod, sport: 53, dport: 50000, in: "eth0"})
			}, want{zone: 1337}},
			{"listed inbound port", listedCfg, func(fr FamilyRules) verdict { return inbound(t, fr, 8080) }, want{redirect: 15006}},
			{"unlisted inbound port", listedCfg, func(fr FamilyRules) verdict { return inbound(t, fr, 9090) }, want{}},
			{"included outbound CIDR", listedCfg, func(fr FamilyRules) verdict {
				return output(t, fr, with(app, func(p *packet) { p.dst = netip.MustParseAddr("203.0.113.9") }))
			}, want{redirect: 15001 * b2u(f == IPv4)}},
			{"outbound outside the include list", listedCfg, func(fr FamilyRules) verdict {
				return output(t, fr, with(app, func(p *packet) { p.dst = other }))
			}, want{}},
			{"tproxy inbound", tproxyCfg, func(fr FamilyRules) verdict { return inbound(t, fr, 8080) }, want{tproxy: 15006}},
			{"tproxy: reply to the proxy's outbound connection passes", tproxyCfg, func(fr FamilyRules) verdict {
				return walk(t, fr, "mangle", "PREROUTING", packet{proto: "tcp", src: remote, dst: pod, sport: 443, dport: 50000, in: "eth0", ctstate: "ESTABLISHED"})
			}, want{}},
			{"tproxy: the proxy's transparent connection to the app", tproxyCfg, func(fr FamilyRules) verdict {
				return output(t, fr, packet{proto: "tcp", src: remote, dst: pod, sport: 40000, dport: 8080, out: "lo", uid: 1337, mark: 0x539})
			}, want{zoneOrig: 1337}},
			{"tproxy: the app's own pod address still uses the inbound port", tproxyCfg, func(fr FamilyRules) verdict {
				return output(t, fr, packet{proto: "tcp", src: pod, dst: pod, sport: 40002, dport: 8080, out: "lo", uid: 1000})
			}, want{redirect: 15006}},
		}
		for _, tc := range cases {
			t.Run(f.String()+"/"+tc.name, func(t *testing.T) {
				var fr FamilyRules
				for _, x := range Build(tc.cfg).Families {
					if x.Family == f {
						fr = x
					}
				}
				v := tc.run(fr)
				got := want{redirect: v.redirect, tproxy: v.tproxy, zone: v.zone, zoneOrig: v.zoneOrig}
				if got != tc.want {
					t.Errorf("got %s zone %d zone-orig %d, want %+v; rules matched:\n%s", v, v.zone, v.zoneOrig, tc.want, strings.Join(v.trace, "\n"))
				}
			})
		}
	}
}

func b2u(b bool) uint16 {
	if b {
		return 1
	}
	return 0
}

// TestTProxyDivert: packets of the proxy's transparent sockets get the
// routing mark and are accepted, and the app's replies to a connection the
// proxy made from a client's address are marked for local delivery.
func TestTProxyDivert(t *testing.T) {
	c := DefaultConfig()
	c.Mode, c.IPv6 = intercept.ModeTProxy, IPv6Off
	fr := Build(c).Families[0]
	pod, remote, _, _ := famAddr(IPv4)
	v := walk(t, fr, "mangle", "PREROUTING", packet{proto: "tcp", src: remote, dst: pod, sport: 40000, dport: 8080, in: "eth0", ctstate: "ESTABLISHED", transparent: true})
	if !v.accepted || v.mark&TProxyMark == 0 {
		t.Errorf("transparent socket's packet: %s mark %#x, want ACCEPT with mark bit %#x", v, v.mark, TProxyMark)
	}
	// The proxy's SYN from the client's address sets the connmark ...
	p := packet{proto: "tcp", src: remote, dst: pod, sport: 40000, dport: 8080, out: "lo", local: true, uid: 1337, mark: 0x539, ctstate: "NEW"}
	w := walker{t: t, tb: fr.table("mangle"), p: p, v: &verdict{mark: p.mark}}
	w.chain("OUTPUT", 0)
	if w.p.connmark&TProxyMark == 0 {
		t.Fatalf("the proxy's transparent connection did not get connmark %#x", TProxyMark)
	}
	if w.v.mark != 0x539 {
		t.Errorf("the proxy's SYN mark changed to %#x; the nat exemption by mark needs 0x539", w.v.mark)
	}
	// ... so the app's reply is routed back locally.
	reply := packet{proto: "tcp", src: pod, dst: remote, sport: 8080, dport: 40000, out: "eth0", local: true, uid: 1000, ctstate: "ESTABLISHED", connmark: w.p.connmark, srcLocal: true}
	if v := walk(t, fr, "mangle", "OUTPUT", reply); v.mark&TProxyMark == 0 {
		t.Errorf("the app's reply has mark %#x, want bit %#x for local delivery", v.mark, TProxyMark)
	}
}

func TestBuildIPv6Modes(t *testing.T) {
	for _, tc := range []struct {
		mode     IPv6Mode
		families int
		auto     bool
	}{{IPv6Off, 1, false}, {IPv6On, 2, false}, {IPv6Auto, 2, true}} {
		c := DefaultConfig()
		c.IPv6 = tc.mode
		rs := Build(c)
		if len(rs.Families) != tc.families || rs.IPv6Auto != tc.auto {
			t.Errorf("IPv6 %s: %d families auto=%v, want %d auto=%v", tc.mode, len(rs.Families), rs.IPv6Auto, tc.families, tc.auto)
		}
		if tc.auto && !strings.Contains(rs.Render(), "--ipv6=auto") {
			t.Errorf("IPv6 auto: Render does not say the IPv6 rules are conditional")
		}
	}
}
