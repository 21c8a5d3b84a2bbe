package discovery

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/miekg/dns"
)

// LookupNetIP resolves host to its addresses as an app's question would
// be answered (registry, cache, upstreams) and learns what the answer
// says as ServeDNS does: the name of each address (NameOf), its mesh
// identity (MeshDestination) and its endpoints (Pick). The proxy resolves
// the names it sends requests to of its own with it (a mirror's target),
// so that they go where the app's would. IPv4 addresses first; IPv6 ones
// when there are none. It implements package proxy's NameResolver.
func (s *Server) LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(host), qtype)
		q.RecursionDesired = true
		m, _ := s.answer(q)
		switch m.Rcode {
		case dns.RcodeSuccess:
		case dns.RcodeNameError:
			return nil, fmt.Errorf("discovery: lookup %s: no such host", host)
		default:
			return nil, fmt.Errorf("discovery: lookup %s: %s", host, dns.RcodeToString[m.Rcode])
		}
		for _, rr := range m.Answer {
			if a, ok := addrOf(rr); ok {
				out = append(out, a)
			}
		}
		if len(out) > 0 {
			return out, nil
		}
	}
	return nil, fmt.Errorf("discovery: lookup %s: no address", host)
}
