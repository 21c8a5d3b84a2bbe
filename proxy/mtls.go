package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// MeshTLS supplies the TLS configs of mesh connections. It is the seam
// between the data plane and wherever certificates come from (a
// directory, the mesh CA, the SPIFFE Workload API): mtls.Mesh is the
// implementation the sidecar runs; tests build one from plain tls.Configs. Its methods are
// called for every mesh connection, concurrently.
type MeshTLS interface {
	// ServerConfig terminates inbound mesh TLS: it requires and verifies
	// the client certificate and authorizes the peer. The proxy sets
	// NextProtos.
	//
	// The proxy derives its own config from the one returned and keeps
	// it while the same pointer comes back, so that session tickets
	// outlive a connection. Return a new *tls.Config when the certificate
	// or the trust bundle changes: the proxy then derives a new one, with
	// new session ticket keys, so no session resumed after a rotation
	// carries the old certificate. A nil config refuses the connection
	// (no certificate yet).
	ServerConfig() *tls.Config
	// ClientConfig originates mesh TLS to a peer whose SPIFFE ID must pass
	// expected (nil: any member of our trust domain). Configs are cached by
	// the implementation so TLS session resumption works across
	// connections: the proxy derives its own from each distinct pointer
	// (setting NextProtos) and shares its ClientSessionCache.
	ClientConfig(expected *spiffeid.ID) *tls.Config
	// Reason classifies a handshake error for logs and the metric label:
	// unknown_ca, wrong_trust_domain, expired, not_yet_valid,
	// wrong_identity, no_certificate, not_tls13, other.
	Reason(err error) string
}

// DestinationResolver says, for an address that mtls.meshCIDRs and
// mtls.destinations do not cover, whether a sidecar runs there and the
// SPIFFE ID it must present. Package discovery's DNS proxy is one: it
// knows the names it answered and what their registry entry or DNS TXT
// record says. It is called for outbound connections, concurrently.
type DestinationResolver interface {
	MeshDestination(a netip.Addr) (id spiffeid.ID, ok bool)
}

// WithDestinations adds r to the proxy's mesh destinations.
func WithDestinations(r DestinationResolver) Option {
	return func(p *Proxy) { p.destinations = r }
}

// WithMeshTLS gives the proxy the certificates of mesh mTLS (see
// MTLSConfig for what it does with them). Without it, or with nil, mTLS
// is off and mtls.mode may be only disable or unset.
func WithMeshTLS(m MeshTLS) Option {
	return func(p *Proxy) { p.meshTLS = m }
}

// The ALPN protocols of mesh connections. The client sidecar names the
// inner protocol, so the server sidecar need not detect it again
// (shared/DESIGN.md §5): meshgate/tcp here, and meshgate/h2 and
// meshgate/http1 for L7 HTTP (l7.go).
const (
	alpnPrefix = "meshgate/"
	alpnTCP    = "meshgate/tcp" // opaque TCP: the bytes as the app sent them
)

// meshProtocols are the mesh protocols the inbound side serves, in its
// order of preference.
var meshProtocols = []string{alpnTCP, alpnH2, alpnHTTP1}

// Handshake failure reasons that the proxy finds itself, beside those of
// MeshTLS.Reason.
const (
	reasonTimeout     = "timeout"              // no handshake within timeouts.handshake
	reasonALPN        = "alpn_mismatch"        // the server is not a meshgate sidecar (or does not serve the protocol)
	reasonUnsupported = "unsupported_protocol" // a client offered meshgate/ protocols none of which we serve
	reasonNoID        = "no_spiffe_id"         // the peer's certificate carries no SPIFFE ID
	reasonNotReady    = "not_ready"            // MeshTLS had no config (no certificate yet)
)

// Log reasons of connections refused before any handshake.
const (
	refusedStrict      = "plaintext refused: mtls strict"
	refusedOutside     = "plaintext refused: outside the mesh"
	refusedUnsupported = "mesh protocol not served"
)

// meshState is what the proxy derives from MTLSConfig and MeshTLS once,
// at New: the mode in effect, the destination tables, and the TLS
// configs it derives from MeshTLS's.
type meshState struct {
	tls       MeshTLS // nil: mTLS off
	mode      MTLSMode
	portModes map[uint16]MTLSMode
	mesh      []netip.Prefix
	dests     []meshDestination // most specific first
	plainOut  bool
	resolver  DestinationResolver // nil: the static tables only

	server atomic.Pointer[derivedConfig]
	mu     sync.Mutex // serialises deriving configs
	client map[clientKey]*derivedConfig
}

// meshDestination is a compiled MTLSDestination.
type meshDestination struct {
	prefix netip.Prefix
	id     spiffeid.ID
}

// derivedConfig is the proxy's own config derived from one returned by
// MeshTLS.
type derivedConfig struct {
	src, cfg *tls.Config
}

// clientKey names a derived client config: the identity expected and the
// mesh protocol.
type clientKey struct {
	expected string // "" for any member of the trust domain
	proto    string
}

// newMeshState resolves cfg's mode against m and checks that the modes
// asked for have certificates. Every problem is reported, named by field.
func newMeshState(cfg MTLSConfig, m MeshTLS) (*meshState, error) {
	s := &meshState{
		tls:       m,
		mode:      cfg.Mode,
		portModes: cfg.PortModes,
		mesh:      slices.Clone(cfg.MeshCIDRs),
		plainOut:  cfg.PlaintextOutsideMesh,
		client:    make(map[clientKey]*derivedConfig),
	}
	if s.mode == "" {
		s.mode = MTLSDisable
		if m != nil {
			s.mode = MTLSStrict
		}
	}
	if m == nil {
		var errs []error
		if s.mode != MTLSDisable {
			errs = append(errs, fmt.Errorf("mtls.mode: %s needs the mesh certificates; give --cert-dir, or set mtls.mode to disable", s.mode))
		}
		ports := make([]uint16, 0, len(cfg.PortModes))
		for port, pm := range cfg.PortModes {
			if pm != MTLSDisable {
				ports = append(ports, port)
			}
		}
		slices.Sort(ports)
		for _, port := range ports {
			errs = append(errs, fmt.Errorf("mtls.portModes.%d: %s needs the mesh certificates; give --cert-dir, or remove it", port, cfg.PortModes[port]))
		}
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
	}
	if len(cfg.PortModes) > 0 {
		s.portModes = make(map[uint16]MTLSMode, len(cfg.PortModes))
		for k, v := range cfg.PortModes {
			s.portModes[k] = v
		}
	}
	for _, d := range cfg.Destinations {
		s.dests = append(s.dests, meshDestination{prefix: d.CIDR, id: d.Identity})
	}
	slices.SortStableFunc(s.dests, func(a, b meshDestination) int { return b.prefix.Bits() - a.prefix.Bits() })
	return s, nil
}

// inboundMode is the mode of inbound connections to the app's port.
func (s *meshState) inboundMode(port uint16) MTLSMode {
	if m, ok := s.portModes[port]; ok {
		return m
	}
	return s.mode
}

// outboundMTLS reports whether outbound connections to the mesh are mTLS.
func (s *meshState) outboundMTLS() bool {
	return s.tls != nil && s.mode != MTLSDisable
}

// inMesh reports whether a has a sidecar, by mtls.meshCIDRs and
// mtls.destinations.
func (s *meshState) inMesh(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.mesh {
		if p.Contains(a) {
			return true
		}
	}
	return s.expected(a) != nil
}

// resolve asks the resolver, if any, about a.
func (s *meshState) resolve(a netip.Addr) *spiffeid.ID {
	if s.resolver == nil {
		return nil
	}
	if id, ok := s.resolver.MeshDestination(a); ok {
		return &id
	}
	return nil
}

// expected returns the identity the server at a must present, nil for
// any member of our trust domain: mtls.destinations first, then the
// resolver.
func (s *meshState) expected(a netip.Addr) *spiffeid.ID {
	a = a.Unmap()
	for i := range s.dests {
		if s.dests[i].prefix.Contains(a) {
			return &s.dests[i].id
		}
	}
	return s.resolve(a)
}

// serverConfig returns the config that terminates inbound mesh TLS, nil
// when MeshTLS has none.
func (s *meshState) serverConfig() *tls.Config {
	src := s.tls.ServerConfig()
	if src == nil {
		return nil
	}
	if d := s.server.Load(); d != nil && d.src == src {
		return d.cfg
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.server.Load(); d != nil && d.src == src {
		return d.cfg
	}
	cfg := meshConfig(src, meshProtocols)
	// The contract says ServerConfig requires a client certificate; make
	// sure of it rather than let a mistake there open the mesh.
	switch cfg.ClientAuth {
	case tls.NoClientCert, tls.RequestClientCert:
		cfg.ClientAuth = tls.RequireAnyClientCert
	case tls.VerifyClientCertIfGiven:
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	s.server.Store(&derivedConfig{src: src, cfg: cfg})
	return cfg
}

// clientConfig returns the config that originates mesh TLS for proto to
// a server that must present expected, nil when MeshTLS has none.
func (s *meshState) clientConfig(expected *spiffeid.ID, proto string) *tls.Config {
	src := s.tls.ClientConfig(expected)
	if src == nil {
		return nil
	}
	key := clientKey{proto: proto}
	if expected != nil {
		key.expected = expected.String()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.client[key]; d != nil && d.src == src {
		return d.cfg
	}
	cfg := meshConfig(src, []string{proto})
	s.client[key] = &derivedConfig{src: src, cfg: cfg}
	return cfg
}

// meshConfig derives the proxy's config from src: its ALPN protocols, and
// TLS 1.3 at least, as all mesh traffic is (shared/DESIGN.md §6).
func meshConfig(src *tls.Config, protos []string) *tls.Config {
	cfg := src.Clone()
	cfg.NextProtos = protos
	if cfg.MinVersion < tls.VersionTLS13 {
		cfg.MinVersion = tls.VersionTLS13
	}
	if cfg.MaxVersion != 0 && cfg.MaxVersion < tls.VersionTLS13 {
		cfg.MaxVersion = tls.VersionTLS13
	}
	return cfg
}

// tlsInfo is what a finished mesh handshake tells the log and metrics.
type tlsInfo struct {
	peer    spiffeid.ID
	resumed bool
	// authz is what policy decided of the connection, given the peer
	// (authz.go); nil when no rule applies.
	authz *connAuthz
}

// meshConn is a mesh TLS connection after its handshake.
type meshConn struct {
	conn *tls.Conn
	info tlsInfo
}

// handshakeError is a refused mesh handshake with its reason label.
type handshakeError struct {
	reason string
	err    error
	// alerted: crypto/tls told the peer why with an alert, which a
	// graceful close lets it read (a reset would discard it).
	alerted bool
}

func (e *handshakeError) Error() string { return e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

// peerInfo checks a finished handshake: the protocol negotiated and the
// peer's SPIFFE ID.
func peerInfo(st *tls.ConnectionState, proto string) (tlsInfo, error) {
	if st.NegotiatedProtocol != proto {
		return tlsInfo{}, &handshakeError{reason: reasonALPN, err: fmt.Errorf("peer negotiated ALPN %q, want %q: it is not a meshgate sidecar serving %s", st.NegotiatedProtocol, proto, proto)}
	}
	if len(st.PeerCertificates) == 0 {
		return tlsInfo{}, &handshakeError{reason: reasonNoID, err: errors.New("peer presented no certificate")}
	}
	id, err := x509svid.IDFromCert(st.PeerCertificates[0])
	if err != nil {
		return tlsInfo{}, &handshakeError{reason: reasonNoID, err: fmt.Errorf("peer certificate: %w", err)}
	}
	return tlsInfo{peer: id, resumed: st.DidResume}, nil
}

// handshakeFailed gives a failed handshake its reason: the proxy's own
// (a timeout, a protocol or identity it checked), or MeshTLS's
// classification of the verification error.
func (p *Proxy) handshakeFailed(err error, timeout time.Duration) *handshakeError {
	var he *handshakeError
	if errors.As(err, &he) {
		return he
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return &handshakeError{reason: reasonTimeout, err: fmt.Errorf("no handshake within timeouts.handshake (%v): %w", timeout, err)}
	}
	reason := p.meshTLS.Reason(err)
	if reason == "" {
		reason = "other"
	}
	return &handshakeError{reason: reason, err: err}
}

// reasonOf returns the reason label of a handshake error, "" if it has
// none.
func reasonOf(err error) string {
	var he *handshakeError
	if errors.As(err, &he) {
		return he.reason
	}
	return ""
}

// countHandshake counts a mesh handshake, failed when err is not nil.
func (p *Proxy) countHandshake(dir Direction, info tlsInfo, err error) {
	result, resumed := "ok", "false"
	if err != nil {
		result = "failed"
	}
	if info.resumed {
		resumed = "true"
	}
	p.metrics.handshakes.WithLabelValues(dir.String(), result, reasonOf(err), resumed, info.peer.String()).Inc()
}
