package mtls

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source gives the current workload certificate and trust bundles; it is
// go-spiffe's two source interfaces, so a workloadapi.X509Source is one too.
// Both methods are called at every handshake and must be cheap and safe
// for concurrent use. An SVID or bundle, once returned, must not change in
// place: a source publishes new values instead (as go-spiffe's do).
type Source interface {
	x509svid.Source
	x509bundle.Source
}

// Authorizer decides whether a verified peer may talk to us (inbound) or
// is the one we meant to talk to (outbound). It is called after the
// peer's chain has been verified, with the peer's SPIFFE ID and the
// verified chains, on full and resumed handshakes alike. An error refuses
// the handshake; one that wraps no error of this package counts as
// ErrWrongIdentity.
type Authorizer func(id spiffeid.ID, verifiedChains [][]*x509.Certificate) error

// AuthorizeMemberOf accepts any identity of trust domain td.
func AuthorizeMemberOf(td spiffeid.TrustDomain) Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if id.MemberOf(td) {
			return nil
		}
		return fmt.Errorf("%w: want trust domain %s", ErrWrongTrustDomain, td)
	}
}

// AuthorizeID accepts exactly the given identities. With none it accepts
// nobody.
func AuthorizeID(ids ...spiffeid.ID) Authorizer {
	ids = append([]spiffeid.ID(nil), ids...)
	var want string
	switch len(ids) {
	case 0:
		want = "no identity is accepted"
	case 1:
		want = "want " + ids[0].String()
	default:
		s := make([]string, len(ids))
		for i, id := range ids {
			s[i] = id.String()
		}
		want = "want one of " + strings.Join(s, ", ")
	}
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		for _, ok := range ids {
			if id == ok {
				return nil
			}
		}
		return fmt.Errorf("%w: %s", ErrWrongIdentity, want)
	}
}

// AuthorizeAny accepts every identity whose chain verified against our
// trust bundles, whatever its trust domain.
func AuthorizeAny() Authorizer {
	return func(spiffeid.ID, [][]*x509.Certificate) error { return nil }
}

// ServerConfig returns a TLS 1.3-only config for terminating mesh mTLS.
//
// The certificate is read from src at each handshake (GetCertificate), so a
// rotated one is used at once, with no restart. A client certificate is
// required; its chain is verified against src's bundle for the client's
// trust domain (VerifyConnection, which crypto/tls calls on full and
// resumed handshakes alike, so a resumed session is re-checked against the
// current bundle and clock) and then authz decides. Session tickets are on
// (crypto/tls's default, with keys it rotates), so a returning client
// resumes without a full handshake; a ticket issued before the bundle of
// the client's trust domain changed is declined, so the client makes a
// full handshake instead of failing (see session.go). NextProtos is left for the caller to
// set. authz must not be nil.
func ServerConfig(src Source, authz Authorizer, opts ...Option) *tls.Config {
	o := newOptions(opts)
	v := newVerifier(src, authz, o, x509.ExtKeyUsageClientAuth)
	cert := &certCache{src: src}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain is verified in VerifyConnection against the bundle of
		// the client's own trust domain; ClientCAs would be one pool for all.
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cert.get()
		},
		VerifyConnection: v.verifyConnection,
		Time:             o.resumeClock(),
	}
	serverSessions(cfg, &trustMarks{bundles: src})
	return cfg
}

// ClientConfig returns a TLS 1.3-only config for originating mesh mTLS.
//
// It presents src's certificate, read at each handshake
// (GetClientCertificate). It verifies the server's chain against src's
// bundle for the server's trust domain, and that the server's SPIFFE ID
// passes authz: give it the identity the destination is expected to have
// (AuthorizeID), or at least the trust domain (AuthorizeMemberOf). The
// check runs on full and resumed handshakes alike (VerifyConnection), so
// a session to a server whose certificate has since expired, or whose root
// has left the bundle, is refused. Sessions are cached
// (DefaultSessionCacheSize, or WithSessionCache) so repeated connections
// resume with a TLS 1.3 PSK instead of a full handshake; a session is
// found by ServerName, or by the remote address when ServerName is empty.
// A session stored before the bundle of our trust domain changed is not
// offered, so a root rotation costs a full handshake, not a failure.
// NextProtos is left for the caller to set. authz must not be nil.
func ClientConfig(src Source, authz Authorizer, opts ...Option) *tls.Config {
	o := newOptions(opts)
	v := newVerifier(src, authz, o, x509.ExtKeyUsageServerAuth)
	cert := &certCache{src: src}
	inner := o.sessionCache
	if inner == nil {
		inner = tls.NewLRUClientSessionCache(DefaultSessionCacheSize)
	}
	cache := &clientSessions{inner: inner, svid: src, marks: &trustMarks{bundles: src}}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Mesh servers are named by SPIFFE ID, not by host name, so the
		// chain and the identity are verified in VerifyConnection instead
		// (which crypto/tls calls even when this is set).
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert.get()
		},
		VerifyConnection:   v.verifyConnection,
		ClientSessionCache: cache,
		Time:               o.resumeClock(),
	}
}

// PeerID returns the SPIFFE ID of the peer of a completed handshake. With
// a config from ServerConfig or ClientConfig, the handshake completes only
// when that ID has been verified and authorized.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if !cs.HandshakeComplete {
		return spiffeid.ID{}, errors.New("mtls: peer ID: the handshake is not complete")
	}
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, fmt.Errorf("mtls: peer ID: %w", ErrNoCertificate)
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: peer ID: %w", err)
	}
	return id, nil
}

// certCache turns the source's SVID into a tls.Certificate once per SVID,
// not once per handshake.
type certCache struct {
	src  x509svid.Source
	last atomic.Pointer[certEntry]
}

type certEntry struct {
	svid *x509svid.SVID
	cert *tls.Certificate
}

func (c *certCache) get() (*tls.Certificate, error) {
	svid, err := c.src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("mtls: workload certificate: %w", err)
	}
	if e := c.last.Load(); e != nil && e.svid == svid {
		return e.cert, nil
	}
	if len(svid.Certificates) == 0 {
		return nil, errors.New("mtls: workload certificate: the source returned no certificate")
	}
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, x := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, x.Raw)
	}
	c.last.Store(&certEntry{svid: svid, cert: cert})
	return cert, nil
}

// verifier checks a peer's chain against the bundle of the peer's trust
// domain, then asks the Authorizer.
type verifier struct {
	bundles x509bundle.Source
	authz   Authorizer
	opts    options
	usage   x509.ExtKeyUsage
	cache   *chainCache
}

func newVerifier(src x509bundle.Source, authz Authorizer, o options, usage x509.ExtKeyUsage) *verifier {
	if authz == nil {
		panic("mtls: nil Authorizer; use AuthorizeAny to accept every verified peer")
	}
	return &verifier{bundles: src, authz: authz, opts: o, usage: usage, cache: newChainCache()}
}

func (v *verifier) verifyConnection(cs tls.ConnectionState) error {
	if cs.Version != tls.VersionTLS13 {
		// Not reached while MinVersion is 1.3; guards a caller that lowers it.
		return fmt.Errorf("mtls: peer negotiated %s; mesh traffic is TLS 1.3 only", tls.VersionName(cs.Version))
	}
	_, err := v.verify(cs.PeerCertificates)
	return err
}

// verify returns the peer's SPIFFE ID once its chain is verified and
// authorized. Every error wraps one of the Err variables.
func (v *verifier) verify(certs []*x509.Certificate) (spiffeid.ID, error) {
	if len(certs) == 0 {
		return spiffeid.ID{}, fmt.Errorf("mtls: peer: %w", ErrNoCertificate)
	}
	id, chains, err := verifyChain(certs, v.bundles, v.opts.time(), v.usage, v.cache)
	if err != nil {
		return id, fmt.Errorf("mtls: peer %w", err)
	}
	if err := v.authz(id, chains); err != nil {
		if !errors.Is(err, ErrWrongTrustDomain) && !errors.Is(err, ErrWrongIdentity) {
			return id, fmt.Errorf("mtls: peer %s: %w: %w", id, ErrWrongIdentity, err)
		}
		return id, fmt.Errorf("mtls: peer %s: %w", id, err)
	}
	return id, nil
}

// verifyChain verifies an X509-SVID chain (leaf first) at now against the
// bundle of the leaf's trust domain, for the extended key usage usage
// (ExtKeyUsageAny for either). Every error wraps one of the Err variables,
// and starts with the certificate's SPIFFE ID (or, lacking one, its
// subject and serial). A non-nil cache remembers chains that verified.
func verifyChain(certs []*x509.Certificate, bundles x509bundle.Source, now time.Time, usage x509.ExtKeyUsage, cache *chainCache) (spiffeid.ID, [][]*x509.Certificate, error) {
	leaf := certs[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("certificate %q (serial %x): %w: %v", leaf.Subject, leaf.SerialNumber, ErrWrongIdentity, err)
	}
	switch {
	case leaf.IsCA:
		return id, nil, fmt.Errorf("%s: %w: a CA certificate used as a leaf", id, ErrBadCertificate)
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return id, nil, fmt.Errorf("%s: %w: a leaf with certificate or CRL signing key usage", id, ErrBadCertificate)
	}
	// Validity first, so that an expired leaf is reported as expired
	// whatever else is wrong with it.
	if err := checkValidity(leaf, now); err != nil {
		return id, nil, fmt.Errorf("%s: %w", id, err)
	}
	bundle, err := bundles.GetX509BundleForTrustDomain(id.TrustDomain())
	if err != nil {
		return id, nil, fmt.Errorf("%s: %w: no trust bundle for trust domain %s", id, ErrWrongTrustDomain, id.TrustDomain())
	}
	var key [sha256.Size]byte
	if cache != nil {
		key = chainKey(certs)
		if chains, ok := cache.get(key, bundle, now); ok {
			return id, chains, nil
		}
	}
	var inter *x509.CertPool
	if len(certs) > 1 {
		inter = x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         cache.pool(bundle),
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	if err == nil {
		if cache != nil {
			cache.put(key, bundle, chains)
		}
		return id, chains, nil
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return id, nil, fmt.Errorf("%s: %w: no chain to a root of the %s trust bundle", id, ErrUnknownCA, id.TrustDomain())
	}
	if e, ok := errors.AsType[x509.CertificateInvalidError](err); ok && e.Reason == x509.Expired {
		// An intermediate or root out of its validity period.
		sentinel := ErrExpired
		if expiryReason(e) == ReasonNotYetValid {
			sentinel = ErrNotYetValid
		}
		return id, nil, fmt.Errorf("%s: %w: %s: %s", id, sentinel, e.Cert.Subject, e.Detail)
	}
	return id, nil, fmt.Errorf("%s: %w: %w", id, ErrBadCertificate, err)
}

// checkValidity says whether cert is within its validity period at now.
func checkValidity(cert *x509.Certificate, now time.Time) error {
	switch {
	case now.Before(cert.NotBefore):
		return fmt.Errorf("%w: valid from %s, now is %s", ErrNotYetValid, cert.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case now.After(cert.NotAfter):
		return fmt.Errorf("%w: expired at %s, now is %s", ErrExpired, cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}
