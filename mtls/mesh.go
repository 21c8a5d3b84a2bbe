package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Mesh is one sidecar's side of mesh mTLS over a Source: the TLS configs
// that terminate mesh connections (ServerConfig) and originate them
// (ClientConfig), and the reason a handshake was refused (Reason). Its
// methods are those of package proxy's MeshTLS, which it satisfies; they
// are safe for concurrent use.
//
// Inbound, a client of our own trust domain is accepted (the trust domain
// is that of the certificate we hold, read at each handshake). Outbound,
// the server must present the identity the caller expects, or, when the
// caller expects none in particular, one of our trust domain.
type Mesh struct {
	src   Source
	opts  []Option
	cache tls.ClientSessionCache // shared by every client config

	server atomic.Pointer[meshServer]
	mu     sync.Mutex // serialises building configs
	client map[string]*tls.Config
}

// meshServer is a server config and the certificate and bundle it was
// made under.
type meshServer struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
	cfg    *tls.Config
}

// NewMesh returns the mesh mTLS of the workload whose certificate and
// trust bundles src holds. opts are passed to ServerConfig and
// ClientConfig; client configs share one session cache (WithSessionCache
// among opts replaces it).
func NewMesh(src Source, opts ...Option) *Mesh {
	cache := newOptions(opts).sessionCache
	if cache == nil {
		cache = tls.NewLRUClientSessionCache(DefaultSessionCacheSize)
	}
	return &Mesh{
		src:    src,
		opts:   append([]Option{WithSessionCache(cache)}, opts...),
		cache:  cache,
		client: make(map[string]*tls.Config),
	}
}

// ServerConfig returns the config that terminates inbound mesh TLS, or nil
// while the source has no certificate. The same pointer comes back until
// the certificate or our trust domain's bundle changes; then a new config
// is made, with session ticket keys of its own, so no session resumed
// after a rotation carries the old certificate.
func (m *Mesh) ServerConfig() *tls.Config {
	svid, err := m.src.GetX509SVID()
	if err != nil || svid == nil {
		return nil
	}
	bundle, _ := m.src.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if s := m.server.Load(); s != nil && s.svid == svid && s.bundle == bundle {
		return s.cfg
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.server.Load(); s != nil && s.svid == svid && s.bundle == bundle {
		return s.cfg
	}
	cfg := ServerConfig(m.src, m.ownTrustDomain, m.opts...)
	m.server.Store(&meshServer{svid: svid, bundle: bundle, cfg: cfg})
	return cfg
}

// ClientConfig returns the config that originates mesh TLS to a server
// that must present expected (nil: any identity of our trust domain), or
// nil while the source has no certificate. Configs are kept per expected
// identity, so sessions resume across connections.
func (m *Mesh) ClientConfig(expected *spiffeid.ID) *tls.Config {
	if svid, err := m.src.GetX509SVID(); err != nil || svid == nil {
		return nil
	}
	key := ""
	if expected != nil {
		key = expected.String()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cfg := m.client[key]; cfg != nil {
		return cfg
	}
	authz := m.ownTrustDomain
	if expected != nil {
		authz = AuthorizeID(*expected)
	}
	cfg := ClientConfig(m.src, authz, m.opts...)
	m.client[key] = cfg
	return cfg
}

// Reason classifies a refused handshake, see the package function Reason.
func (m *Mesh) Reason(err error) string { return Reason(err) }

// ownTrustDomain accepts peers of the trust domain of the certificate we
// hold now.
func (m *Mesh) ownTrustDomain(id spiffeid.ID, chains [][]*x509.Certificate) error {
	svid, err := m.src.GetX509SVID()
	if err != nil || svid == nil {
		return fmt.Errorf("%w: we hold no certificate, so no trust domain", ErrWrongTrustDomain)
	}
	return AuthorizeMemberOf(svid.ID.TrustDomain())(id, chains)
}
