package discovery

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"meshgate/internal/confval"
)

// Service is a named service of the mesh: where it runs, on which ports,
// and the identity its endpoints must present.
type Service struct {
	// Name is its DNS name, e.g. web.shop.mesh.
	Name string `json:"name"`
	// Identity is the SPIFFE ID its endpoints present; empty for a service
	// outside the mesh.
	Identity string `json:"identity,omitempty"`
	// Meshed says its endpoints run a meshgate sidecar (mTLS to them).
	Meshed bool `json:"meshed"`
	// Ports are its named ports, answered as SRV records
	// _NAME._tcp.SERVICE.
	Ports []Port `json:"ports,omitempty"`
	// Endpoints are its addresses, answered as A and AAAA records.
	Endpoints []netip.Addr `json:"endpoints"`
	// TTL is the TTL of the records; 0 means 30s.
	TTL Duration `json:"ttl,omitempty"`
}

// Port is a named port of a service.
type Port struct {
	Name string `json:"name"`
	Port uint16 `json:"port"`
}

// Duration is a time.Duration written as "30s"; a bare number is refused.
type Duration = confval.Duration

// Registry says what the mesh's names are.
type Registry interface {
	// Service returns the service named name (fully qualified, lower
	// case), if there is one.
	Service(name string) (*Service, bool)
	// MeshService returns the meshed service a is an endpoint of, if any:
	// a connection to a is mTLS, expecting its identity, whether or not
	// the app found a by DNS.
	MeshService(a netip.Addr) (*Service, bool)
}

// StaticRegistry is a registry read from a file, the embedded default.
type StaticRegistry struct {
	services map[string]*Service
	meshAt   map[netip.Addr]*Service // meshed services by endpoint
}

// registryFile is the file's shape.
type registryFile struct {
	Services []*Service `json:"services"`
}

// ParseRegistry reads a registry file's contents (YAML):
//
//	services:
//	- name: web.shop.mesh
//	  identity: spiffe://cluster.local/ns/shop/sa/web
//	  meshed: true
//	  ports: [{name: http, port: 8080}]
//	  endpoints: [10.0.0.5, 10.0.0.6]
//	  ttl: 30s
//
// Every problem is reported at once, each naming its field.
func ParseRegistry(data []byte) (*StaticRegistry, error) {
	if err := confval.Check[registryFile](data); err != nil {
		return nil, &Error{Op: "registry", Err: err}
	}
	var f registryFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		// Not reached after confval.Check, short of a bug in it.
		return nil, &Error{Op: "registry", Err: err}
	}
	r := &StaticRegistry{services: make(map[string]*Service), meshAt: make(map[netip.Addr]*Service)}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for i, s := range f.Services {
		field := fmt.Sprintf("services[%d]", i)
		if s == nil {
			bad("%s: empty", field)
			continue
		}
		name := strings.ToLower(dns.Fqdn(s.Name))
		if !validName(s.Name) {
			bad("%s.name: %q is not a DNS name; want e.g. web.shop.mesh", field, s.Name)
		} else if _, dup := r.services[name]; dup {
			bad("%s.name: %s is listed twice", field, s.Name)
		}
		if s.Identity != "" {
			if _, err := spiffeid.FromString(s.Identity); err != nil {
				bad("%s.identity: %q is not a SPIFFE ID (%v)", field, s.Identity, err)
			}
		}
		if s.Meshed && s.Identity == "" {
			bad("%s.identity: a meshed service needs the SPIFFE ID its endpoints present", field)
		}
		for j, p := range s.Ports {
			if p.Port == 0 {
				bad("%s.ports[%d].port: want 1 to 65535", field, j)
			}
			if !validName(p.Name) || strings.Contains(p.Name, ".") {
				bad("%s.ports[%d].name: %q: want a label, e.g. http", field, j, p.Name)
			}
		}
		for j, a := range s.Endpoints {
			if !a.IsValid() {
				bad("%s.endpoints[%d]: want an IP address", field, j)
				continue
			}
			s.Endpoints[j] = a.Unmap()
			if !s.Meshed || s.Identity == "" {
				continue
			}
			if prev, ok := r.meshAt[a.Unmap()]; ok && prev.Identity != s.Identity {
				bad("%s.endpoints[%d]: %s is an endpoint of %s (%s) too; an address has one identity", field, j, a, prev.Name, prev.Identity)
			} else if !ok {
				r.meshAt[a.Unmap()] = s
			}
		}
		if s.TTL < 0 {
			bad("%s.ttl: want 0 or more", field)
		}
		if s.TTL == 0 {
			s.TTL = Duration(30 * time.Second)
		}
		r.services[name] = s
	}
	if err := errors.Join(errs...); err != nil {
		return nil, &Error{Op: "registry", Err: err}
	}
	return r, nil
}

// Service implements Registry.
func (r *StaticRegistry) Service(name string) (*Service, bool) {
	s, ok := r.services[name]
	return s, ok
}

// MeshService implements Registry.
func (r *StaticRegistry) MeshService(a netip.Addr) (*Service, bool) {
	s, ok := r.meshAt[a.Unmap()]
	return s, ok
}

// registryAnswer answers q from the registry, if its name (or the
// service of an SRV name, _port._tcp.SERVICE) is a mesh name: A and AAAA
// with the endpoints, SRV with the ports, and TXT with the meshgate
// convention ("meshgate.identity=<SPIFFE ID>", "meshgate.meshed=true");
// other types get an empty answer (NODATA). ok is false for names the
// registry does not hold.
func registryAnswer(reg Registry, q dns.Question) (m *dns.Msg, ok bool) {
	if reg == nil || q.Qclass != dns.ClassINET {
		return nil, false
	}
	name := strings.ToLower(dns.Fqdn(q.Name))
	m = new(dns.Msg)
	m.Authoritative = true
	if s, found := reg.Service(name); found {
		ttl := uint32(time.Duration(s.TTL) / time.Second)
		hdr := func(t uint16) dns.RR_Header {
			return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
		}
		switch q.Qtype {
		case dns.TypeA, dns.TypeAAAA:
			for _, a := range s.Endpoints {
				switch {
				case a.Is4() && q.Qtype == dns.TypeA:
					m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: a.AsSlice()})
				case a.Is6() && !a.Is4In6() && q.Qtype == dns.TypeAAAA:
					m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: a.AsSlice()})
				}
			}
		case dns.TypeTXT:
			txt := []string{"meshgate.meshed=" + fmt.Sprint(s.Meshed)}
			if s.Identity != "" {
				txt = append([]string{"meshgate.identity=" + s.Identity}, txt...)
			}
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: txt})
		}
		if len(m.Answer) == 0 {
			m.Ns = []dns.RR{soaFor(s.Name, ttl)}
		}
		return m, true
	}
	// _port._tcp.SERVICE
	labels := dns.SplitDomainName(name)
	if len(labels) > 2 && strings.HasPrefix(labels[0], "_") && labels[1] == "_tcp" {
		svc := dns.Fqdn(strings.Join(labels[2:], "."))
		s, found := reg.Service(svc)
		if !found {
			return nil, false
		}
		ttl := uint32(time.Duration(s.TTL) / time.Second)
		if q.Qtype == dns.TypeSRV {
			for _, p := range s.Ports {
				if "_"+strings.ToLower(p.Name) == labels[0] {
					m.Answer = append(m.Answer, &dns.SRV{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl},
						Priority: 0, Weight: 100, Port: p.Port, Target: dns.Fqdn(s.Name)})
				}
			}
		}
		if len(m.Answer) == 0 {
			m.Ns = []dns.RR{soaFor(s.Name, ttl)}
		}
		return m, true
	}
	return nil, false
}

// soaFor is the SOA of a registry answer without records (NODATA), so
// resolvers cache the absence for ttl.
func soaFor(name string, ttl uint32) *dns.SOA {
	return &dns.SOA{Hdr: dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns: "meshgate.", Mbox: "hostmaster.meshgate.", Serial: 1, Refresh: ttl, Retry: ttl, Expire: ttl, Minttl: ttl}
}

// validName reports whether s is a host name as the registry takes them:
// dot-separated labels of letters, digits, '-' and '_' (1 to 63 each, 253
// in all), an optional final dot.
func validName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
