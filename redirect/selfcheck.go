package redirect

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"meshgate/intercept"
)

// The self-check (shared/DESIGN.md §4): after Apply, a probe connection
// proves that the namespace's rules capture traffic, so that a broken
// namespace (rules of another iptables backend running first, a kernel
// without NAT, a CNI plugin that replaced the rules) fails at enrollment
// rather than at the app's first request.

// OutboundProbeAddr is where the outbound self-check connects: 192.0.2.1
// of TEST-NET-1 (RFC 5737), documentation space. Some networks use it
// all the same, so the probe leaves with a hop limit of 1: a probe the
// rules fail to capture dies at the first router.
var OutboundProbeAddr = netip.AddrFrom4([4]byte{192, 0, 2, 1})

// selfCheckTimeout bounds each probe connection.
const selfCheckTimeout = 2 * time.Second

// SelfCheckResult says what the self-check did in each direction: what it
// proved, or why it did not check.
type SelfCheckResult struct {
	Inbound  string
	Outbound string
}

func (r SelfCheckResult) String() string {
	return "inbound " + r.Inbound + "; outbound " + r.Outbound
}

// SelfCheckError is a failed self-check: a probe connection that the rules
// should have sent to the proxy's port did not arrive there.
type SelfCheckError struct {
	// Direction is "inbound" or "outbound".
	Direction string
	// Dst is where the probe connection went; Port the proxy's port it
	// should have arrived at.
	Dst  netip.AddrPort
	Port uint16
	// Got says what happened instead.
	Got string
	// Cause says what likely broke it.
	Cause string
}

func (e *SelfCheckError) Error() string {
	return fmt.Sprintf("redirect: self-check %s: a connection to %s should have been redirected to port %d with original destination %s, but %s; likely cause: %s",
		e.Direction, e.Dst, e.Port, e.Dst, e.Got, e.Cause)
}

// causeNotInEffect is the usual reason a probe is not redirected.
const causeNotInEffect = "the rules are not in effect: compare iptables-nft-save and iptables-legacy-save -t nat in the namespace " +
	"(rules of the other iptables backend run regardless of ours), check that the kernel has NAT (nf_nat; iptable_nat or nft_chain_nat), " +
	"and that nothing (a CNI plugin) replaced the rules after they were applied"

// causeRewritten is why a probe arrives with another original destination.
const causeRewritten = "another NAT rule rewrote the connection before ours (a CNI plugin's or kube-proxy's DNAT in nat OUTPUT); ours must come first"

// inboundProbePort picks a port the config captures inbound: the first of
// --inbound-ports, or, when every port is captured, a high port that is
// neither excluded nor the proxy's. ok is false when nothing inbound is
// captured.
func inboundProbePort(c Config) (port uint16, ok bool) {
	if !c.InboundAllPorts {
		for _, p := range c.InboundPorts {
			if !slices.Contains(c.ExcludeInboundPorts, p) {
				return p, true
			}
		}
		return 0, false
	}
	proxy := c.proxyPorts()
	for p := uint16(15999); p > 1024; p-- {
		if !slices.Contains(c.ExcludeInboundPorts, p) && !slices.ContainsFunc(proxy, func(n namedPort) bool { return n.port == p }) {
			return p, true
		}
	}
	return 0, false
}

// outboundProbe picks the outbound probe's destination, or says why the
// config (or who runs the check) does not let the probe be captured.
func outboundProbe(c Config, euid, egid uint32) (netip.AddrPort, string) {
	dst := OutboundProbeAddr
	switch {
	case !c.IncludeOutboundAll && !slices.ContainsFunc(c.IncludeOutboundCIDRs, func(p netip.Prefix) bool { return p.Contains(dst) }):
		return netip.AddrPort{}, fmt.Sprintf("--include-outbound-cidrs does not cover %s, the probe address", dst)
	case slices.ContainsFunc(c.ExcludeOutboundCIDRs, func(p netip.Prefix) bool { return p.Contains(dst) }):
		return netip.AddrPort{}, fmt.Sprintf("--exclude-outbound-cidrs covers %s, the probe address", dst)
	case c.ProxyUID != nil && *c.ProxyUID == euid:
		return netip.AddrPort{}, fmt.Sprintf("this process runs as UID %d, the proxy's, whose connections are never captured", euid)
	case slices.Contains(c.ProxyGIDs, egid):
		return netip.AddrPort{}, fmt.Sprintf("this process runs as GID %d, one of --proxy-gid, whose connections are never captured", egid)
	}
	for _, p := range []uint16{80, 443, 8080, 9} {
		if !slices.Contains(c.ExcludeOutboundPorts, p) {
			return netip.AddrPortFrom(dst, p), ""
		}
	}
	for p := uint16(15999); p > 1024; p-- {
		if !slices.Contains(c.ExcludeOutboundPorts, p) {
			return netip.AddrPortFrom(dst, p), ""
		}
	}
	return netip.AddrPort{}, "--exclude-outbound-ports leaves no port to probe"
}

// inboundNotChecked says why inbound capture cannot be checked from inside
// the namespace, "" when it can.
func inboundNotChecked(c Config) string {
	switch {
	case c.Mode == intercept.ModeTProxy:
		return "tproxy mode captures connections arriving from outside the namespace only"
	case !c.InboundAllPorts && len(c.InboundPorts) == 0:
		return "no inbound port is captured"
	}
	return ""
}

// notChecked formats a direction that was not checked.
func notChecked(why string) string { return "not checked (" + why + ")" }
