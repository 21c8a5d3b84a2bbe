package redirect

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"meshgate/intercept"
)

// Chains of ours. Built-in chains only ever hold jumps to these; everything
// else lives in them. A name may exist in more than one table (chains are
// per table): MESHGATE_INBOUND decides which inbound connections to
// capture, in nat (REDIRECT) and, in tproxy mode, in mangle (TPROXY).
const (
	ChainInbound      = "MESHGATE_INBOUND"       // nat, mangle: which inbound TCP to capture
	ChainInRedirect   = "MESHGATE_IN_REDIRECT"   // nat: REDIRECT to the inbound port
	ChainOutput       = "MESHGATE_OUTPUT"        // nat: what locally generated TCP to capture
	ChainRedirect     = "MESHGATE_REDIRECT"      // nat: REDIRECT to the outbound port
	ChainDNS          = "MESHGATE_DNS"           // nat: REDIRECT DNS to the DNS port
	ChainDNSZoneOut   = "MESHGATE_DNS_ZONE_OUT"  // raw: conntrack zone of the proxy's upstream DNS
	ChainDNSZoneIn    = "MESHGATE_DNS_ZONE_IN"   // raw: conntrack zone of upstream DNS replies
	ChainZoneOut      = "MESHGATE_ZONE_OUT"      // raw: conntrack zone of the proxy's own TCP connections
	ChainTProxy       = "MESHGATE_TPROXY"        // mangle: TPROXY to the inbound port
	ChainDivert       = "MESHGATE_DIVERT"        // mangle: packets of transparent sockets, routed locally
	ChainTProxyOutput = "MESHGATE_TPROXY_OUTPUT" // mangle: replies to the proxy's transparent connections

	// ChainPrefix starts the name of every chain we own; Cleanup removes
	// every chain with this prefix, and every jump to one.
	ChainPrefix = "MESHGATE_"
)

// Family is an IP address family.
type Family int

// The address families: iptables and ip6tables.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Ruleset is everything Apply installs for one Config, as data: the
// iptables rules of each address family, and for tproxy mode and IPv6 the
// routing rules, routes and addresses that go with them.
type Ruleset struct {
	// Families holds IPv4, then IPv6 when IPv6 is on (or auto).
	Families []FamilyRules
	// IPv6Auto is set when the Config said IPv6 "auto": the IPv6 rules are
	// installed only if the namespace has IPv6. Render says so.
	IPv6Auto bool
}

// FamilyRules is the part of a Ruleset for one address family.
type FamilyRules struct {
	Family Family
	// Tables are the iptables tables with rules, in the order packets
	// meet them: raw, mangle, nat.
	Tables []Table
	// PolicyRules and LocalRoutes are tproxy mode's policy routing:
	// packets carrying TProxyMark are delivered locally.
	PolicyRules []PolicyRule
	LocalRoutes []LocalRoute
	// LoopbackAddrs are addresses Apply puts on lo: ::6, the source the
	// inbound proxy connects to the app from, which IPv6 does not have on
	// lo the way IPv4 has all of 127.0.0.0/8.
	LoopbackAddrs []netip.Prefix
}

// Table is one iptables table ("nat", "mangle", "raw").
type Table struct {
	Name string
	// Chains are the built-in chains we jump from (with only jump rules),
	// then our own chains in the order they are declared.
	Chains []Chain
}

// Chain is one chain and its rules, in order.
type Chain struct {
	Name    string
	Builtin bool
	Rules   []Rule
}

// Rule is one iptables rule.
type Rule struct {
	// Args is the rule specification as iptables-save prints it (after
	// "-A CHAIN"), so Apply can compare it with what the kernel holds.
	Args []string
	// Why says what the rule is for; Render shows it as a comment.
	Why string
}

// Target is the rule's -j (or -g) target.
func (r Rule) Target() string {
	for i := 0; i+1 < len(r.Args); i++ {
		if r.Args[i] == "-j" || r.Args[i] == "-g" {
			return r.Args[i+1]
		}
	}
	return ""
}

// PolicyRule is "ip rule add fwmark Mark/Mask lookup Table".
type PolicyRule struct {
	Mark, Mask uint32
	Table      int
}

// LocalRoute is "ip route add local Dst dev Dev table Table".
type LocalRoute struct {
	Dst   netip.Prefix
	Dev   string
	Table int
}

// familyAddrs are the addresses the rules name, per family.
type familyAddrs struct {
	loopback    string // the loopback range: never the pod's own address
	passthrough string // the inbound proxy's source address towards the app
	anyAddr     string // TPROXY --on-ip
	defaultDst  netip.Prefix
}

func addrsOf(f Family) familyAddrs {
	if f == IPv6 {
		return familyAddrs{"::1/128", "::6/128", "::", netip.MustParsePrefix("::/0")}
	}
	return familyAddrs{"127.0.0.0/8", "127.0.0.6/32", "0.0.0.0", netip.MustParsePrefix("0.0.0.0/0")}
}

// passthroughIPv6 is the IPv6 twin of 127.0.0.6.
var passthroughIPv6 = netip.MustParsePrefix("::6/128")

// Build returns the rules for c. It is pure: no I/O, no environment, no
// clock, so the same Config always gives the same Ruleset, byte for byte.
//
// Build cannot look at a namespace, so IPv6 "auto" is resolved by the
// caller: Apply decides on or off inside the target namespace before it
// calls Build. Given "auto", Build includes the IPv6 rules (as for "on")
// and marks the Ruleset IPv6Auto, which is what --dry-run shows.
//
// c must be valid (Validate); Build does not check it again.
func Build(c Config) Ruleset {
	rs := Ruleset{IPv6Auto: c.IPv6 == IPv6Auto}
	rs.Families = append(rs.Families, buildFamily(c, IPv4))
	if c.IPv6 != IPv6Off {
		rs.Families = append(rs.Families, buildFamily(c, IPv6))
	}
	return rs
}

// builder collects the chains of one table in order of first use.
type builder struct {
	tables map[string]*Table
}

func (b *builder) add(table, chain, why string, args ...string) {
	t := b.tables[table]
	if t == nil {
		t = &Table{Name: table}
		b.tables[table] = t
	}
	i := slices.IndexFunc(t.Chains, func(c Chain) bool { return c.Name == chain })
	if i < 0 {
		t.Chains = append(t.Chains, Chain{Name: chain, Builtin: isBuiltinChain(chain)})
		i = len(t.Chains) - 1
	}
	t.Chains[i].Rules = append(t.Chains[i].Rules, Rule{Args: args, Why: why})
}

func (b *builder) result() []Table {
	var out []Table
	for _, name := range []string{"raw", "mangle", "nat"} {
		t := b.tables[name]
		if t == nil {
			continue
		}
		// Built-in chains first, in hook order; ours keep their order.
		slices.SortStableFunc(t.Chains, func(x, y Chain) int { return builtinOrder(x.Name) - builtinOrder(y.Name) })
		out = append(out, *t)
	}
	return out
}

var builtinChains = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

func isBuiltinChain(name string) bool { return slices.Contains(builtinChains, name) }

func builtinOrder(name string) int {
	if i := slices.Index(builtinChains, name); i >= 0 {
		return i
	}
	return len(builtinChains)
}

// tcpPort is the match of TCP destination port p, as iptables-save prints it.
func tcpPort(p uint16) []string {
	return []string{"-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(int(p))}
}

func hexMark(m uint32) string { return fmt.Sprintf("%#x", m) }

func join(parts ...[]string) []string { return slices.Concat(parts...) }

// exemption matches the proxy's own traffic: by UID, by a GID or by mark.
// Each alone is enough.
type exemption struct {
	match []string
	what  string
}

func buildFamily(c Config, f Family) FamilyRules {
	a := addrsOf(f)
	b := &builder{tables: map[string]*Table{}}
	fr := FamilyRules{Family: f}

	var exemptions []exemption
	if c.ProxyUID != nil {
		exemptions = append(exemptions, exemption{[]string{"-m", "owner", "--uid-owner", strconv.FormatUint(uint64(*c.ProxyUID), 10)}, "UID"})
	}
	for _, g := range c.ProxyGIDs {
		exemptions = append(exemptions, exemption{[]string{"-m", "owner", "--gid-owner", strconv.FormatUint(uint64(g), 10)}, "GID"})
	}
	if c.ProxyMark != 0 {
		exemptions = append(exemptions, exemption{[]string{"-m", "mark", "--mark", hexMark(c.ProxyMark)}, "mark"})
	}

	inbound := c.InboundAllPorts || len(c.InboundPorts) > 0

	// nat MESHGATE_INBOUND: which inbound TCP connections go to the inbound
	// port. Reached from PREROUTING (redirect mode) and, in both modes, from
	// MESHGATE_OUTPUT for connections to the pod's own address over lo.
	if inbound {
		if c.Mode == intercept.ModeRedirect {
			b.add("nat", "PREROUTING", "", "-p", "tcp", "-j", ChainInbound)
		}
		inboundSelect(b, c, "nat", ChainInRedirect)
		b.add("nat", ChainInRedirect, "inbound capture: to the proxy's inbound port",
			"-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(c.InboundPort)))
	}

	// nat MESHGATE_OUTPUT: locally generated TCP.
	if c.CaptureDNS && dnsServersOf(c, f) != nil {
		b.add("nat", "OUTPUT", "", "-p", "udp", "-m", "udp", "--dport", "53", "-j", ChainDNS)
	}
	b.add("nat", "OUTPUT", "", "-p", "tcp", "-j", ChainOutput)
	b.add("nat", ChainOutput, "the inbound proxy's connection to the app (from the passthrough source) is not captured again",
		"-s", a.passthrough, "-o", "lo", "-j", "RETURN")
	if c.Mode == intercept.ModeTProxy {
		b.add("nat", ChainOutput, "tproxy: the inbound proxy connects to the app from the client's own (non-local) address",
			"-o", "lo", "-m", "addrtype", "!", "--src-type", "LOCAL", "-j", "RETURN")
	}
	if c.CaptureDNS && dnsServersOf(c, f) != nil {
		// Before the loopback rules: a resolver on 127.0.0.53 is still DNS.
		b.add("nat", ChainOutput, "DNS over TCP is captured by the DNS rules",
			"-p", "tcp", "-m", "tcp", "--dport", "53", "-j", ChainDNS)
	}
	if inbound {
		b.add("nat", ChainOutput, "a connection to this pod's own address (over lo, not a loopback address), from the app or the proxy, is inbound traffic",
			"!", "-d", a.loopback, "-o", "lo", "-j", ChainInbound)
	}
	b.add("nat", ChainOutput, "other loopback traffic stays local", "-o", "lo", "-j", "RETURN")
	for _, e := range exemptions {
		b.add("nat", ChainOutput, "the proxy's own connections (by "+e.what+") are not captured", join(e.match, []string{"-j", "RETURN"})...)
	}
	for _, p := range c.ExcludeOutboundPorts {
		b.add("nat", ChainOutput, "excluded outbound ports", join(tcpPort(p), []string{"-j", "RETURN"})...)
	}
	for _, p := range prefixesOf(c.ExcludeOutboundCIDRs, f) {
		b.add("nat", ChainOutput, "excluded outbound destinations", "-d", p.String(), "-j", "RETURN")
	}
	switch {
	case c.IncludeOutboundAll:
		b.add("nat", ChainOutput, "everything else is captured", "-j", ChainRedirect)
	default:
		for _, p := range prefixesOf(c.IncludeOutboundCIDRs, f) {
			b.add("nat", ChainOutput, "included outbound destinations are captured", "-d", p.String(), "-j", ChainRedirect)
		}
	}
	if c.IncludeOutboundAll || len(prefixesOf(c.IncludeOutboundCIDRs, f)) > 0 {
		b.add("nat", ChainRedirect, "outbound capture: to the proxy's outbound port",
			"-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(c.OutboundPort)))
	}

	if c.CaptureDNS {
		if servers := dnsServersOf(c, f); servers != nil {
			dnsRules(b, c, servers, exemptions)
		}
	}
	tcpZoneRules(b, exemptions)

	if c.Mode == intercept.ModeTProxy && inbound {
		tproxyRules(b, c, a)
		fr.PolicyRules = []PolicyRule{{Mark: TProxyMark, Mask: TProxyMark, Table: TProxyTable}}
		fr.LocalRoutes = []LocalRoute{{Dst: a.defaultDst, Dev: "lo", Table: TProxyTable}}
	}
	if f == IPv6 {
		fr.LoopbackAddrs = []netip.Prefix{passthroughIPv6}
	}
	fr.Tables = b.result()
	return fr
}

// inboundSelect fills MESHGATE_INBOUND of table: the proxy's own ports and
// the excluded ports return; the captured ports (or all) jump to target.
func inboundSelect(b *builder, c Config, table, target string) {
	for _, p := range c.proxyPorts() {
		b.add(table, ChainInbound, "the proxy's own ports are never captured", join(tcpPort(p.port), []string{"-j", "RETURN"})...)
	}
	for _, p := range c.ExcludeInboundPorts {
		b.add(table, ChainInbound, "excluded inbound ports", join(tcpPort(p), []string{"-j", "RETURN"})...)
	}
	if c.InboundAllPorts {
		b.add(table, ChainInbound, "every other inbound port is captured", "-p", "tcp", "-j", target)
		return
	}
	for _, p := range c.InboundPorts {
		b.add(table, ChainInbound, "captured inbound ports", join(tcpPort(p), []string{"-j", target})...)
	}
}

// dnsServersOf returns the DNS servers of family f to capture DNS to: an
// empty non-nil slice for "any server", nil for "none of this family".
func dnsServersOf(c Config, f Family) []netip.Addr {
	if len(c.DNSServers) == 0 {
		return []netip.Addr{}
	}
	var out []netip.Addr
	for _, a := range c.DNSServers {
		if (f == IPv6) == a.Is6() {
			out = append(out, a)
		}
	}
	return out
}

func prefixesOf(ps []netip.Prefix, f Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if (f == IPv6) == p.Addr().Is6() {
			out = append(out, p)
		}
	}
	return out
}

// dnsRules sends the app's DNS to the DNS port, and keeps the proxy's own
// upstream DNS apart in a conntrack zone of its own.
//
// Why the zone: a UDP "connection" is only a conntrack entry, kept for
// 30-120 s after the last packet. The app's query from pod:P to R:53 leaves
// an entry that is NAT-ed to 127.0.0.1:15053. When the app's socket is gone
// the kernel may give port P to the proxy's upstream socket; the proxy's
// query pod:P -> R:53 then matches the app's old entry, is NAT-ed like it,
// and loops back into the DNS proxy: the UID and mark exemptions cannot
// help, because NAT rules only see the first packet of an entry. The other
// way round, an app query can match an un-NAT-ed entry the proxy left, and
// escape capture. Putting the proxy's queries (raw OUTPUT, by UID/GID/mark)
// and the upstream replies (raw PREROUTING, source port 53) in zone
// DNSConntrackZone makes the two sets of entries distinct even when their
// addresses and ports are equal. The app's queries and the DNS proxy's
// answers to them stay in the default zone, where the app's NAT entry is,
// so the answers are un-NAT-ed back to R:53. Replies from sport 53 can
// only be for the proxy: the app's queries to the captured servers never
// leave the pod. TCP has a zone of its own too (tcpZoneRules), in one
// direction only.
func dnsRules(b *builder, c Config, servers []netip.Addr, exemptions []exemption) {
	port := strconv.Itoa(int(c.DNSPort))
	zone := strconv.Itoa(int(DNSConntrackZone))
	for _, e := range exemptions {
		b.add("nat", ChainDNS, "the proxy's own DNS queries (by "+e.what+") go upstream", join(e.match, []string{"-j", "RETURN"})...)
	}
	if len(servers) == 0 {
		b.add("nat", ChainDNS, "DNS to any server goes to the DNS proxy", "-p", "udp", "-j", "REDIRECT", "--to-ports", port)
		b.add("nat", ChainDNS, "DNS to any server goes to the DNS proxy", "-p", "tcp", "-j", "REDIRECT", "--to-ports", port)
	}
	for _, s := range servers {
		host := netip.PrefixFrom(s, s.BitLen()).String()
		b.add("nat", ChainDNS, "DNS to the listed servers goes to the DNS proxy", "-d", host, "-p", "udp", "-j", "REDIRECT", "--to-ports", port)
		b.add("nat", ChainDNS, "DNS to the listed servers goes to the DNS proxy", "-d", host, "-p", "tcp", "-j", "REDIRECT", "--to-ports", port)
	}

	// raw: conntrack zones, UDP only.
	if len(servers) == 0 {
		b.add("raw", "OUTPUT", "", "-p", "udp", "-m", "udp", "--dport", "53", "-j", ChainDNSZoneOut)
		b.add("raw", "PREROUTING", "", "-p", "udp", "-m", "udp", "--sport", "53", "-j", ChainDNSZoneIn)
	}
	for _, s := range servers {
		host := netip.PrefixFrom(s, s.BitLen()).String()
		b.add("raw", "OUTPUT", "", "-d", host, "-p", "udp", "-m", "udp", "--dport", "53", "-j", ChainDNSZoneOut)
		b.add("raw", "PREROUTING", "", "-s", host, "-p", "udp", "-m", "udp", "--sport", "53", "-j", ChainDNSZoneIn)
	}
	for _, e := range exemptions {
		b.add("raw", ChainDNSZoneOut, "the proxy's upstream DNS queries (by "+e.what+") get a conntrack zone of their own", join(e.match, []string{"-j", "CT", "--zone", zone})...)
	}
	b.add("raw", ChainDNSZoneIn, "DNS replies from upstream are for the proxy: its zone", "-j", "CT", "--zone", zone)
}

// tcpZoneRules puts the proxy's own TCP connections (by UID, GID or mark)
// in conntrack zone ProxyConntrackZone in their original direction only
// (CT --zone-orig): the entries of the app's captured connections and of
// the proxy's own are then distinct even when their addresses and ports
// are equal, while replies, which carry no mark, still find the proxy's
// entries by their reply tuple in the default zone.
//
// Why: the kernel gives a port back as soon as a connection is gone, and
// the app's connections and the proxy's upstream connections to the same
// destination draw local ports from the same range. A connection of the
// app the proxy reset (a reset in the reply direction) leaves a closed
// entry, NAT-ed to the outbound port, that a new SYN on the same tuple
// does not replace: conntrack reopens a closed entry only when the close
// came from the SYN's own side. The proxy's upstream connection that gets
// the app's old port then matches that entry, is NAT-ed like it, and
// loops back into the proxy (whose loop guard refuses it), however the
// rules exempt the proxy: NAT rules only see an entry's first packet.
// Seen in peerbench (issue 12): one of ~2 000 connections opened right
// after a run of resets.
func tcpZoneRules(b *builder, exemptions []exemption) {
	if len(exemptions) == 0 {
		return
	}
	zone := strconv.Itoa(int(ProxyConntrackZone))
	b.add("raw", "OUTPUT", "", "-p", "tcp", "-j", ChainZoneOut)
	for _, e := range exemptions {
		b.add("raw", ChainZoneOut, "the proxy's own connections (by "+e.what+") get a conntrack zone of their own, one way",
			join(e.match, []string{"-j", "CT", "--zone-orig", zone})...)
	}
}

// tproxyRules captures inbound TCP with TPROXY in mangle PREROUTING. The
// packets of a connection the proxy accepted this way (and the app's
// replies to a connection the proxy made from the client's address) belong
// to a transparent socket but may be addressed to a non-local address:
// they carry TProxyMark, which the policy rule routes to the "local" table.
func tproxyRules(b *builder, c Config, a familyAddrs) {
	mark := hexMark(TProxyMark) + "/" + hexMark(TProxyMark)
	b.add("mangle", "PREROUTING", "", "-p", "tcp", "-j", ChainInbound)
	b.add("mangle", ChainInbound, "packets of the proxy's transparent sockets are delivered to them",
		"-p", "tcp", "-m", "socket", "--transparent", "-j", ChainDivert)
	b.add("mangle", ChainInbound, "replies to connections we did not capture pass (TPROXY would drop them)",
		"-p", "tcp", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN")
	b.add("mangle", ChainInbound, "loopback traffic is handled in nat OUTPUT", "-i", "lo", "-j", "RETURN")
	inboundSelect(b, c, "mangle", ChainTProxy)
	b.add("mangle", ChainTProxy, "inbound capture: to the proxy's inbound port, keeping the client's address",
		"-p", "tcp", "-j", "TPROXY", "--on-port", strconv.Itoa(int(c.InboundPort)), "--on-ip", a.anyAddr, "--tproxy-mark", mark)
	b.add("mangle", ChainDivert, "route to the local table", "-j", "MARK", "--set-xmark", mark)
	b.add("mangle", ChainDivert, "deliver", "-j", "ACCEPT")

	b.add("mangle", "OUTPUT", "", "-p", "tcp", "-j", ChainTProxyOutput)
	b.add("mangle", ChainTProxyOutput, "the app's replies to the proxy's transparent connections are routed back to the proxy",
		"-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "MARK", "--set-xmark", mark)
	b.add("mangle", ChainTProxyOutput, "remember connections the proxy opens from a client's (non-local) address",
		"-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-m", "addrtype", "!", "--src-type", "LOCAL", "-j", "CONNMARK", "--set-xmark", mark)
}
