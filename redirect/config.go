package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"meshgate/intercept"
	"meshgate/netlist"
)

// Ports and marks of interception alone (the ports, mark, UID and mode that
// the proxy shares are package intercept's).
const (
	// TProxyMark is the packet-mark bit that sends a packet to the local
	// routing table TProxyTable in tproxy mode. It must not share a bit with
	// the proxy mark: 0x539 has bit 0x1 set, so the usual 0x1 would route
	// every packet the proxy sends to itself. 0x1000 is clear in 0x539 and
	// outside the bits Kubernetes (0x4000, 0x8000) and Tailscale (0xff0000)
	// use.
	TProxyMark uint32 = 0x1000
	// TProxyTable is the routing table holding the "local" default route of
	// tproxy mode.
	TProxyTable = 133

	// DNSConntrackZone is the conntrack zone of the proxy's own upstream DNS
	// traffic (see dnsRules for why it needs a zone of its own).
	DNSConntrackZone uint16 = 1337
	// ProxyConntrackZone is the conntrack zone of the proxy's own TCP
	// connections, in their original direction (see tcpZoneRules).
	ProxyConntrackZone uint16 = 1337
)

// IPv6Mode says whether to install ip6tables rules.
type IPv6Mode string

const (
	// IPv6Auto installs IPv6 rules when the namespace has IPv6 enabled and
	// ip6tables is installed. Apply decides; Build cannot (see Build).
	IPv6Auto IPv6Mode = "auto"
	// IPv6On requires IPv6: Apply fails if the namespace cannot have it.
	IPv6On IPv6Mode = "on"
	// IPv6Off installs IPv4 rules only.
	IPv6Off IPv6Mode = "off"
)

// Config is what the rules capture and what they leave alone. Start from
// DefaultConfig; the zero Config is not valid. Field comments name the
// flag of "meshgate redirect" that sets the field.
type Config struct {
	// Mode is redirect (nat REDIRECT) or tproxy (mangle TPROXY) for inbound
	// capture; outbound always uses REDIRECT. --mode.
	Mode intercept.Mode
	// IPv6 says whether ip6tables rules are installed too. --ipv6.
	IPv6 IPv6Mode

	// ProxyUID exempts the traffic of processes running as this UID: the
	// proxy's own. Nil means no UID exemption. --proxy-uid (none for nil).
	ProxyUID *uint32
	// ProxyGIDs exempts the traffic of processes whose effective GID is one
	// of these. Empty means none. --proxy-gid.
	ProxyGIDs []uint32
	// ProxyMark exempts packets carrying exactly this mark (the proxy sets
	// it with SO_MARK). 0 means no mark exemption. --proxy-mark.
	//
	// Any one of ProxyUID, ProxyGIDs and ProxyMark is enough to keep the
	// proxy from capturing its own connections; Validate refuses none.
	ProxyMark uint32

	// InboundAllPorts captures inbound TCP to every port except the proxy's
	// own and ExcludeInboundPorts. --inbound-ports "*".
	InboundAllPorts bool
	// InboundPorts captures inbound TCP to these ports only, when
	// InboundAllPorts is false. Empty (and not all) captures nothing
	// inbound. --inbound-ports.
	InboundPorts []uint16
	// ExcludeInboundPorts are never captured inbound. --exclude-inbound-ports.
	ExcludeInboundPorts []uint16

	// ExcludeOutboundPorts are never captured outbound (destination
	// port). --exclude-outbound-ports.
	ExcludeOutboundPorts []uint16
	// ExcludeOutboundCIDRs are never captured outbound (destination
	// address). --exclude-outbound-cidrs.
	ExcludeOutboundCIDRs []netip.Prefix
	// IncludeOutboundAll captures outbound TCP to every destination not
	// excluded. --include-outbound-cidrs "*".
	IncludeOutboundAll bool
	// IncludeOutboundCIDRs captures outbound TCP to these destinations
	// only, when IncludeOutboundAll is false. Empty (and not all) captures
	// nothing outbound. --include-outbound-cidrs.
	IncludeOutboundCIDRs []netip.Prefix

	// CaptureDNS sends DNS (UDP and TCP to port 53) to the DNS proxy.
	// --capture-dns.
	CaptureDNS bool
	// DNSServers limits DNS capture to queries sent to these servers
	// (usually the nameservers of resolv.conf). Empty captures DNS to any
	// server. --dns-servers (default: from --resolv-conf).
	DNSServers []netip.Addr

	// OutboundPort, InboundPort and DNSPort are where captured traffic is
	// sent. They default to intercept.OutboundPort, InboundPort and
	// DNSPort and have no flags: DESIGN §3 fixes them.
	OutboundPort uint16
	InboundPort  uint16
	DNSPort      uint16
}

// DefaultConfig returns the configuration of shared/DESIGN.md §3: redirect
// mode, IPv6 auto, every inbound port and every outbound destination
// captured, the proxy exempt by UID 1337 and by mark 0x539, DNS not captured.
func DefaultConfig() Config {
	uid := intercept.ProxyUID
	return Config{
		Mode:               intercept.ModeRedirect,
		IPv6:               IPv6Auto,
		ProxyUID:           &uid,
		ProxyMark:          intercept.ProxyMark,
		InboundAllPorts:    true,
		IncludeOutboundAll: true,
		OutboundPort:       intercept.OutboundPort,
		InboundPort:        intercept.InboundPort,
		DNSPort:            intercept.DNSPort,
	}
}

// proxyPorts returns the ports that are never captured inbound, with what
// each one is, in ascending order.
func (c Config) proxyPorts() []namedPort {
	ports := []namedPort{
		{intercept.AdminPort, "the proxy's admin port"},
		{c.OutboundPort, "the proxy's outbound capture port"},
		{c.InboundPort, "the proxy's inbound capture port"},
		{intercept.TunnelPort, "the proxy's mesh tunnel port"},
		{intercept.MetricsPort, "the proxy's metrics port"},
		{intercept.HealthPort, "the proxy's health port"},
		{c.DNSPort, "the proxy's DNS port"},
	}
	slices.SortStableFunc(ports, func(a, b namedPort) int { return int(a.port) - int(b.port) })
	return slices.CompactFunc(ports, func(a, b namedPort) bool { return a.port == b.port })
}

type namedPort struct {
	port uint16
	what string
}

// Validate reports every problem of c at once, joined with errors.Join.
// Each problem names the flag of "meshgate redirect" that sets the field
// and says how to fix it, so it can be shown to a user as it is; Apply
// wraps the whole with "redirect: invalid config".
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if !c.Mode.Valid() {
		bad("--mode %q: want redirect or tproxy", string(c.Mode))
	}
	switch c.IPv6 {
	case IPv6Auto, IPv6On, IPv6Off:
	default:
		bad("--ipv6 %q: want auto, on or off", string(c.IPv6))
	}

	// Exemptions: the proxy must never capture its own connections.
	if c.ProxyUID == nil && c.ProxyMark == 0 && len(c.ProxyGIDs) == 0 {
		bad("--proxy-uid none with --proxy-mark 0: the proxy would capture its own connections; keep --proxy-uid (default %d) or --proxy-mark (default %#x)", intercept.ProxyUID, intercept.ProxyMark)
	}
	if c.ProxyUID != nil && *c.ProxyUID == 0 {
		bad("--proxy-uid 0: the traffic of every root process would escape capture, and apps in containers often run as root; run the proxy as a UID of its own, e.g. %d", intercept.ProxyUID)
	}
	for _, g := range duplicates(c.ProxyGIDs) {
		bad("--proxy-gid: GID %d is listed twice; list it once", g)
	}
	if slices.Contains(c.ProxyGIDs, 0) {
		bad("--proxy-gid 0: the traffic of every root-group process would escape capture; use a group of the proxy's own")
	}
	if c.Mode == intercept.ModeTProxy && c.ProxyMark&TProxyMark != 0 {
		bad("--proxy-mark %#x: shares bit %#x with the tproxy routing mark, so the proxy's own packets would be routed back to itself; pick a mark without that bit, e.g. %#x", c.ProxyMark, TProxyMark, intercept.ProxyMark)
	}

	// Capture ports: set in code only, named by field.
	for _, p := range []struct {
		name string
		port uint16
	}{{"OutboundPort", c.OutboundPort}, {"InboundPort", c.InboundPort}, {"DNSPort", c.DNSPort}} {
		if p.port == 0 {
			bad("redirect.Config.%s is 0: want a port, e.g. from DefaultConfig", p.name)
		}
	}
	if c.OutboundPort != 0 && (c.OutboundPort == c.InboundPort || c.OutboundPort == c.DNSPort) || c.InboundPort != 0 && c.InboundPort == c.DNSPort {
		bad("redirect.Config: OutboundPort %d, InboundPort %d and DNSPort %d must differ", c.OutboundPort, c.InboundPort, c.DNSPort)
	}

	// Inbound.
	if c.InboundAllPorts && len(c.InboundPorts) > 0 {
		bad(`--inbound-ports: "*" and a list of ports at once; give one`)
	}
	errs = append(errs, checkPorts("--inbound-ports", c.InboundPorts)...)
	errs = append(errs, checkPorts("--exclude-inbound-ports", c.ExcludeInboundPorts)...)
	proxy := c.proxyPorts()
	for _, p := range c.InboundPorts {
		if i := slices.IndexFunc(proxy, func(n namedPort) bool { return n.port == p }); i >= 0 {
			bad("--inbound-ports: %d is %s and is never captured; remove it", p, proxy[i].what)
		}
		if slices.Contains(c.ExcludeInboundPorts, p) {
			bad("--inbound-ports and --exclude-inbound-ports both list %d; remove it from one", p)
		}
	}

	// Outbound.
	errs = append(errs, checkPorts("--exclude-outbound-ports", c.ExcludeOutboundPorts)...)
	errs = append(errs, checkPrefixes("--exclude-outbound-cidrs", c.ExcludeOutboundCIDRs)...)
	if c.IncludeOutboundAll && len(c.IncludeOutboundCIDRs) > 0 {
		bad(`--include-outbound-cidrs: "*" and a list of CIDRs at once; give one`)
	}
	errs = append(errs, checkPrefixes("--include-outbound-cidrs", c.IncludeOutboundCIDRs)...)

	// DNS.
	if !c.CaptureDNS && len(c.DNSServers) > 0 {
		bad("--dns-servers without --capture-dns: the servers only limit DNS capture; add --capture-dns or drop --dns-servers")
	}
	for _, a := range c.DNSServers {
		switch {
		case !a.IsValid():
			bad("--dns-servers: an empty address; want IP addresses like 10.96.0.10")
		case a.Is4In6():
			bad("--dns-servers %q: an IPv4-mapped IPv6 address; write it as IPv4 (%s)", a.String(), a.Unmap())
		case a.Zone() != "":
			bad("--dns-servers %q: iptables cannot match a zone; drop %%%s", a.String(), a.Zone())
		}
	}
	for _, a := range duplicates(c.DNSServers) {
		bad("--dns-servers: %s is listed twice; list it once", a)
	}
	return errors.Join(errs...)
}

func checkPorts(flag string, ports []uint16) []error {
	var errs []error
	if slices.Contains(ports, 0) {
		errs = append(errs, fmt.Errorf("%s: port 0 is not a port; want 1-65535", flag))
	}
	for _, p := range duplicates(ports) {
		errs = append(errs, fmt.Errorf("%s: port %d is listed twice; list it once", flag, p))
	}
	return errs
}

func checkPrefixes(flag string, prefixes []netip.Prefix) []error {
	var errs []error
	for _, p := range prefixes {
		switch err := netlist.CheckPrefix(p); {
		case err != nil && !p.IsValid():
			errs = append(errs, fmt.Errorf("%s: %w", flag, err))
		case err != nil:
			errs = append(errs, fmt.Errorf("%s %w", flag, err))
		}
	}
	for _, p := range duplicates(prefixes) {
		errs = append(errs, fmt.Errorf("%s: %s is listed twice; list it once", flag, p))
	}
	return errs
}

// duplicates returns the values that occur more than once in s, once each,
// in the order of their second occurrence.
func duplicates[T comparable](s []T) []T {
	seen := make(map[T]int, len(s))
	var dup []T
	for _, v := range s {
		seen[v]++
		if seen[v] == 2 {
			dup = append(dup, v)
		}
	}
	return dup
}

// String renders c as the flags of "meshgate redirect" that produce it,
// for logs.
func (c Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "--mode=%s --ipv6=%s", c.Mode, c.IPv6)
	if c.ProxyUID == nil {
		b.WriteString(" --proxy-uid=none")
	} else {
		fmt.Fprintf(&b, " --proxy-uid=%d", *c.ProxyUID)
	}
	if len(c.ProxyGIDs) > 0 {
		fmt.Fprintf(&b, " --proxy-gid=%s", joinNums(c.ProxyGIDs))
	}
	fmt.Fprintf(&b, " --proxy-mark=%#x", c.ProxyMark)
	if c.InboundAllPorts {
		b.WriteString(" --inbound-ports=*")
	} else {
		fmt.Fprintf(&b, " --inbound-ports=%s", joinNums(c.InboundPorts))
	}
	if len(c.ExcludeInboundPorts) > 0 {
		fmt.Fprintf(&b, " --exclude-inbound-ports=%s", joinNums(c.ExcludeInboundPorts))
	}
	if len(c.ExcludeOutboundPorts) > 0 {
		fmt.Fprintf(&b, " --exclude-outbound-ports=%s", joinNums(c.ExcludeOutboundPorts))
	}
	if len(c.ExcludeOutboundCIDRs) > 0 {
		fmt.Fprintf(&b, " --exclude-outbound-cidrs=%s", joinStrings(c.ExcludeOutboundCIDRs))
	}
	if c.IncludeOutboundAll {
		b.WriteString(" --include-outbound-cidrs=*")
	} else {
		fmt.Fprintf(&b, " --include-outbound-cidrs=%s", joinStrings(c.IncludeOutboundCIDRs))
	}
	if c.CaptureDNS {
		b.WriteString(" --capture-dns")
		if len(c.DNSServers) > 0 {
			fmt.Fprintf(&b, " --dns-servers=%s", joinStrings(c.DNSServers))
		} else {
			b.WriteString(" --dns-servers=*")
		}
	}
	return b.String()
}

func joinNums[T uint16 | uint32](s []T) string {
	parts := make([]string, len(s))
	for i, v := range s {
		parts[i] = fmt.Sprint(v)
	}
	return strings.Join(parts, ",")
}

func joinStrings[T fmt.Stringer](s []T) string {
	parts := make([]string, len(s))
	for i, v := range s {
		parts[i] = v.String()
	}
	return strings.Join(parts, ",")
}
