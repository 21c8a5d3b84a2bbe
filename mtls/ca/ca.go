package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/mtls/internal/pemfile"
)

// The files of a CA directory.
const (
	RootCertFile         = "root.pem"
	RootKeyFile          = "root.key"
	IntermediateCertFile = "intermediate.pem"
	IntermediateKeyFile  = "intermediate.key"
)

// Lifetimes and margins.
const (
	// RootTTL is how long a root made by Init is valid.
	RootTTL = 10 * 365 * 24 * time.Hour
	// IntermediateTTL is how long an intermediate made by Init is valid.
	// Workload certificates never outlive it.
	IntermediateTTL = 365 * 24 * time.Hour
	// ClockSkew backdates every certificate's NotBefore, so that a peer
	// whose clock is a little behind ours accepts a certificate issued a
	// moment ago.
	ClockSkew = time.Minute
)

// ErrExists is returned by Init when the directory already holds a CA.
var ErrExists = errors.New("a CA already exists")

// CA issues workload certificates of one trust domain. It is safe for
// concurrent use.
type CA struct {
	td       spiffeid.TrustDomain
	root     *x509.Certificate
	inter    *x509.Certificate
	interKey crypto.Signer
	now      func() time.Time
}

// InitOption tunes Init.
type InitOption func(*initOptions)

type initOptions struct {
	overwrite bool
	now       func() time.Time
}

// Overwrite lets Init replace a CA that already exists in the directory.
// Every certificate it issued stops being trusted once the new root
// replaces the old one in the bundles.
func Overwrite() InitOption { return func(o *initOptions) { o.overwrite = true } }

// WithClock makes Init and the CA read the time from now instead of
// time.Now. For tests.
func WithClock(now func() time.Time) InitOption { return func(o *initOptions) { o.now = now } }

// Init creates a CA for trust domain td in dir (created 0700 if missing):
// a self-signed root valid for RootTTL and an intermediate valid for
// IntermediateTTL, both ECDSA P-256 and carrying the trust domain's SPIFFE
// ID (spiffe://<td>) as URI SAN. It refuses, with ErrExists, to replace a
// CA already in dir unless given Overwrite.
func Init(dir string, td spiffeid.TrustDomain, opts ...InitOption) (*CA, error) {
	var o initOptions
	for _, f := range opts {
		f(&o)
	}
	if o.now == nil {
		o.now = time.Now
	}
	if td.IsZero() {
		return nil, &Error{Op: "init " + dir, Err: errors.New("empty trust domain")}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, &Error{Op: "init " + dir, Err: err}
	}
	if !o.overwrite {
		for _, name := range []string{RootCertFile, RootKeyFile, IntermediateCertFile, IntermediateKeyFile} {
			if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
				return nil, &Error{Op: "init " + dir, Err: fmt.Errorf("%w (%s is there)", ErrExists, name)}
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, &Error{Op: "init " + dir, Err: err}
			}
		}
	}

	now := o.now()
	tdURI := &url.URL{Scheme: "spiffe", Host: td.Name()}
	rootKey, err := newKey()
	if err != nil {
		return nil, &Error{Op: "init " + dir, Err: err}
	}
	root, err := sign(&x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"meshgate"}, CommonName: "meshgate root " + td.Name()},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(RootTTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            1,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{tdURI},
	}, nil, rootKey.Public(), rootKey)
	if err != nil {
		return nil, &Error{Op: "init " + dir, Err: fmt.Errorf("root: %w", err)}
	}
	interKey, err := newKey()
	if err != nil {
		return nil, &Error{Op: "init " + dir, Err: err}
	}
	inter, err := sign(&x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"meshgate"}, CommonName: "meshgate intermediate " + td.Name()},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(IntermediateTTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{tdURI},
	}, root, interKey.Public(), rootKey)
	if err != nil {
		return nil, &Error{Op: "init " + dir, Err: fmt.Errorf("intermediate: %w", err)}
	}

	rootKeyPEM, err := pemfile.EncodeKey(rootKey)
	if err != nil {
		return nil, &Error{Op: "init " + dir, Err: err}
	}
	interKeyPEM, err := pemfile.EncodeKey(interKey)
	if err != nil {
		return nil, &Error{Op: "init " + dir, Err: err}
	}
	// Keys first: a crash part way leaves files that make the next Init
	// refuse rather than a CA whose certificates have no keys.
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{RootKeyFile, rootKeyPEM, 0o600},
		{IntermediateKeyFile, interKeyPEM, 0o600},
		{RootCertFile, pemfile.EncodeCerts(root), 0o644},
		{IntermediateCertFile, pemfile.EncodeCerts(inter), 0o644},
	} {
		if err := pemfile.WriteAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return nil, &Error{Op: "init " + dir, Err: err}
		}
	}
	return &CA{td: td, root: root, inter: inter, interKey: interKey, now: o.now}, nil
}

// Load reads the CA in dir. It needs root.pem, intermediate.pem and
// intermediate.key; root.key is not read. An error for a missing file
// wraps fs.ErrNotExist.
func Load(dir string, opts ...InitOption) (*CA, error) {
	var o initOptions
	for _, f := range opts {
		f(&o)
	}
	if o.now == nil {
		o.now = time.Now
	}
	fail := func(name string, err error) error {
		return &Error{Op: "load " + dir, Err: fmt.Errorf("%s: %w", name, err)}
	}
	root, err := readCert(filepath.Join(dir, RootCertFile))
	if err != nil {
		return nil, fail(RootCertFile, err)
	}
	inter, err := readCert(filepath.Join(dir, IntermediateCertFile))
	if err != nil {
		return nil, fail(IntermediateCertFile, err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, IntermediateKeyFile))
	if err != nil {
		return nil, fail(IntermediateKeyFile, err)
	}
	key, err := pemfile.ParseKey(keyPEM)
	if err != nil {
		return nil, fail(IntermediateKeyFile, err)
	}
	td, err := trustDomainOf(root)
	if err != nil {
		return nil, fail(RootCertFile, err)
	}
	switch {
	case !root.IsCA || root.CheckSignatureFrom(root) != nil:
		return nil, fail(RootCertFile, errors.New("not a self-signed CA certificate"))
	case !inter.IsCA:
		return nil, fail(IntermediateCertFile, errors.New("not a CA certificate"))
	case inter.CheckSignatureFrom(root) != nil:
		return nil, fail(IntermediateCertFile, fmt.Errorf("not signed by the root in %s", RootCertFile))
	case !publicKeysEqual(key.Public(), inter.PublicKey):
		return nil, fail(IntermediateKeyFile, fmt.Errorf("not the key of the certificate in %s", IntermediateCertFile))
	}
	if itd, err := trustDomainOf(inter); err != nil || itd != td {
		return nil, fail(IntermediateCertFile, fmt.Errorf("its URI SAN is not spiffe://%s, the root's trust domain", td))
	}
	return &CA{td: td, root: root, inter: inter, interKey: key, now: o.now}, nil
}

// TrustDomain returns the trust domain the CA issues for.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Root returns the root certificate.
func (c *CA) Root() *x509.Certificate { return c.root }

// Intermediate returns the intermediate certificate, which signs workloads.
func (c *CA) Intermediate() *x509.Certificate { return c.inter }

// Bundle returns the trust bundle of the CA's trust domain: its root.
func (c *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.td, []*x509.Certificate{c.root})
}

// Issue signs a workload certificate for id, with the given DNS names as
// DNS SANs, valid for ttl (but never past the intermediate), over pub,
// which must be an ECDSA P-256 key. It returns the chain to present: the
// certificate, then the intermediate. The certificate is backdated by
// ClockSkew. IDs of another trust domain are refused.
func (c *CA) Issue(id spiffeid.ID, dnsNames []string, ttl time.Duration, pub crypto.PublicKey) ([]*x509.Certificate, error) {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("mtls/ca: issue %s: %s", id, fmt.Sprintf(format, a...))
	}
	switch {
	case id.IsZero():
		return nil, errors.New("mtls/ca: issue: empty SPIFFE ID")
	case !id.MemberOf(c.td):
		return nil, fail("trust domain %s is not this CA's (%s)", id.TrustDomain(), c.td)
	case id.Path() == "":
		return nil, fail("the ID names the trust domain, not a workload; want a path like /ns/<namespace>/sa/<service-account>")
	case ttl <= 0:
		return nil, fail("lifetime %s: want a positive duration", ttl)
	}
	for _, n := range dnsNames {
		if err := ValidateDNSName(n); err != nil {
			return nil, fail("DNS name %q: %v", n, err)
		}
	}
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fail("public key: want ECDSA P-256, got %s", keyType(pub))
	}
	if k.Curve != elliptic.P256() {
		return nil, fail("public key: want ECDSA P-256, got ECDSA %s", k.Curve.Params().Name)
	}
	now := c.now()
	notBefore, notAfter := now.Add(-ClockSkew), now.Add(ttl)
	if notBefore.Before(c.inter.NotBefore) {
		notBefore = c.inter.NotBefore
	}
	if notAfter.After(c.inter.NotAfter) {
		notAfter = c.inter.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fail("the intermediate expired at %s; create a new CA", c.inter.NotAfter.UTC().Format(time.RFC3339))
	}
	leaf, err := sign(&x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"meshgate"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              append([]string(nil), dnsNames...),
	}, c.inter, pub, c.interKey)
	if err != nil {
		return nil, fail("%v", err)
	}
	return []*x509.Certificate{leaf, c.inter}, nil
}

// ValidateDNSName checks a name for a certificate's DNS SAN: dot-separated
// labels of letters, digits and '-', optionally starting with "*." for a
// wildcard. The error says what is wrong, not which name.
func ValidateDNSName(name string) error {
	bad := errors.New
	rest := strings.TrimPrefix(name, "*.")
	if rest == "" {
		return bad("empty")
	}
	if len(name) > 253 {
		return bad("longer than 253 characters")
	}
	for _, label := range strings.Split(rest, ".") {
		switch {
		case label == "":
			return bad("empty label")
		case len(label) > 63:
			return bad("a label is longer than 63 characters")
		case label[0] == '-' || label[len(label)-1] == '-':
			return bad("a label starts or ends with '-'")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("%q is not allowed; want letters, digits, '-' and '.'", r)
			}
		}
	}
	return nil
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// newSerial returns a random positive 128-bit serial number (RFC 5280
// allows up to 20 octets; CA/B forum practice is at least 64 random bits).
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	return n.Add(n, big.NewInt(1)), nil
}

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func trustDomainOf(cert *x509.Certificate) (spiffeid.TrustDomain, error) {
	if len(cert.URIs) != 1 {
		return spiffeid.TrustDomain{}, fmt.Errorf("want one URI SAN spiffe://<trust-domain>, found %d", len(cert.URIs))
	}
	td, err := spiffeid.TrustDomainFromURI(cert.URIs[0])
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("URI SAN %s: %w", cert.URIs[0], err)
	}
	return td, nil
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := pemfile.ParseCerts(data)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("want one certificate, found %d", len(certs))
	}
	return certs[0], nil
}

func keyType(pub crypto.PublicKey) string {
	switch pub.(type) {
	case nil:
		return "no key"
	case *ecdsa.PublicKey:
		return "ECDSA"
	default:
		t := fmt.Sprintf("%T", pub)
		t = strings.TrimPrefix(t, "*")
		t, _, _ = strings.Cut(t, ".")
		return strings.ToUpper(t)
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}
