package redirect

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"meshgate/intercept"
	"meshgate/netlist"
)

// DefaultResolvConf is where --capture-dns looks for the DNS servers to
// capture when --dns-servers is not given.
const DefaultResolvConf = "/etc/resolv.conf"

// AddFlags registers the rule flags of "meshgate redirect" on fs (every
// flag that shapes the Config; not --netns, --dry-run, --cleanup or
// --log-level, which belong to the command) and returns a function to call
// after fs.Parse. That function parses every flag, reads the resolv.conf
// file when DNS capture needs it, validates the result, and returns the
// Config, or every problem at once (errors.Join), each naming its flag.
//
// "meshgate redirect" and "meshgate enroll" both use it, so the two accept
// exactly the same rule flags.
func AddFlags(fs *flag.FlagSet) func() (Config, error) {
	d := DefaultConfig()
	mode := fs.String("mode", string(d.Mode), "how inbound connections reach the proxy: `redirect` (NAT; the app sees them coming from 127.0.0.6) or tproxy (TPROXY; keeps the client's source address)")
	ipv6 := fs.String("ipv6", string(d.IPv6), "install ip6tables rules too: `auto` (when the namespace has IPv6 and ip6tables is installed), on (fail if it can't), off")
	uid := fs.String("proxy-uid", fmt.Sprint(*d.ProxyUID), "the proxy runs as this `UID`; its traffic is never captured (none: no UID exemption)")
	gids := fs.String("proxy-gid", "", "never capture the traffic of processes whose group is in this comma-separated `LIST` of GIDs")
	mark := fs.String("proxy-mark", fmt.Sprintf("%#x", d.ProxyMark), "the proxy marks its sockets with this `MARK` (SO_MARK); marked packets are never captured (0: no mark exemption)")
	inPorts := fs.String("inbound-ports", "*", "capture inbound TCP to these ports, a comma-separated `LIST` like 80,443; * for every port; empty for none")
	exInPorts := fs.String("exclude-inbound-ports", "", "never capture inbound TCP to these ports (`LIST`); the proxy's own ports 15000-15053 are never captured anyway")
	exOutPorts := fs.String("exclude-outbound-ports", "", "never capture outbound TCP to these destination ports (`LIST`)")
	exOutCIDRs := fs.String("exclude-outbound-cidrs", "", "never capture outbound TCP to these destinations, a `LIST` of CIDRs or addresses like 10.0.0.0/8,192.168.1.7")
	inOutCIDRs := fs.String("include-outbound-cidrs", "*", "capture outbound TCP only to these destinations (`LIST` of CIDRs); * for everywhere; empty for nowhere")
	captureDNS := fs.Bool("capture-dns", false, "send DNS (UDP and TCP port 53) to the proxy's DNS server on port 15053")
	dnsServers := fs.String("dns-servers", "", "with --capture-dns, capture only DNS sent to these servers (`LIST` of addresses), or * for any server (default: the nameservers of --resolv-conf)")
	resolvConf := fs.String("resolv-conf", DefaultResolvConf, "with --capture-dns and no --dns-servers, read the servers to capture from this `FILE`; with --netns it is read from the host, so point it at the workload's own (e.g. /proc/PID/root/etc/resolv.conf)")

	return func() (Config, error) {
		c := DefaultConfig()
		var errs []error
		fail := func(flag string, err error) {
			errs = append(errs, netlist.Named("--"+flag, err)...)
		}
		var err error

		c.Mode = intercept.Mode(strings.TrimSpace(*mode))
		c.IPv6 = IPv6Mode(strings.TrimSpace(*ipv6))
		if c.ProxyUID, err = ParseUID(*uid); err != nil {
			fail("proxy-uid", err)
			c.ProxyUID = d.ProxyUID
		}
		if c.ProxyGIDs, err = ParseGIDs(*gids); err != nil {
			fail("proxy-gid", err)
		}
		if c.ProxyMark, err = ParseMark(*mark); err != nil {
			fail("proxy-mark", err)
			c.ProxyMark = d.ProxyMark
		}
		if c.InboundAllPorts, c.InboundPorts, err = netlist.ParsePortsOrAll(*inPorts); err != nil {
			fail("inbound-ports", err)
			c.InboundAllPorts = true
		}
		if c.ExcludeInboundPorts, err = netlist.ParsePorts(*exInPorts); err != nil {
			fail("exclude-inbound-ports", err)
		}
		if c.ExcludeOutboundPorts, err = netlist.ParsePorts(*exOutPorts); err != nil {
			fail("exclude-outbound-ports", err)
		}
		if c.ExcludeOutboundCIDRs, err = netlist.ParseCIDRs(*exOutCIDRs); err != nil {
			fail("exclude-outbound-cidrs", err)
		}
		if c.IncludeOutboundAll, c.IncludeOutboundCIDRs, err = netlist.ParseCIDRsOrAll(*inOutCIDRs); err != nil {
			fail("include-outbound-cidrs", err)
			c.IncludeOutboundAll = true
		}

		c.CaptureDNS = *captureDNS
		switch servers := strings.TrimSpace(*dnsServers); {
		case servers == "*" && !c.CaptureDNS:
			errs = append(errs, errors.New("--dns-servers without --capture-dns: the servers only limit DNS capture; add --capture-dns or drop --dns-servers"))
		case servers == "*":
			// Any server: no address filter.
		case servers != "":
			if c.DNSServers, err = netlist.ParseAddrs(servers); err != nil {
				fail("dns-servers", err)
			}
		case c.CaptureDNS:
			if c.DNSServers, err = readResolvConf(*resolvConf); err != nil {
				errs = append(errs, err)
			}
		}

		if err := c.Validate(); err != nil {
			errs = append(errs, err)
		}
		if err := errors.Join(errs...); err != nil {
			return Config{}, err
		}
		return c, nil
	}
}

func readResolvConf(path string) ([]netip.Addr, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--capture-dns: read the DNS servers: %w; pass --dns-servers with a list, or * to capture DNS to any server", err)
	}
	defer f.Close()
	addrs, err := ParseResolvConf(f)
	if err != nil {
		return nil, fmt.Errorf("--capture-dns: read %s: %w; pass --dns-servers with a list, or * to capture DNS to any server", path, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("--capture-dns: %s lists no nameserver; pass --dns-servers with a list, or * to capture DNS to any server", path)
	}
	return addrs, nil
}
