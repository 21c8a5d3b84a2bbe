package testca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a root and an intermediate of one trust domain.
type CA struct {
	TrustDomain  string
	Root         *x509.Certificate
	Intermediate *x509.Certificate
	rootKey      *ecdsa.PrivateKey
	interKey     *ecdsa.PrivateKey
}

var serial atomic.Int64

func nextSerial() *big.Int { return big.NewInt(time.Now().UnixNano() + serial.Add(1)) }

// New returns a CA for trustDomain (e.g. "example.org") valid from an hour
// ago for a day.
func New(t testing.TB, trustDomain string) *CA {
	t.Helper()
	ca := &CA{TrustDomain: trustDomain}
	ca.rootKey = newKey(t)
	ca.Root = sign(t, &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{Organization: []string{"meshgate test"}, CommonName: trustDomain + " root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}, nil, &ca.rootKey.PublicKey, ca.rootKey)
	ca.interKey = newKey(t)
	ca.Intermediate = sign(t, &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{Organization: []string{"meshgate test"}, CommonName: trustDomain + " intermediate"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}, ca.Root, &ca.interKey.PublicKey, ca.rootKey)
	return ca
}

// Leaf is a workload certificate with its chain and key.
type Leaf struct {
	Cert  *x509.Certificate
	Chain []*x509.Certificate // leaf, intermediate
	Key   *ecdsa.PrivateKey
}

// LeafOptions tunes Issue. The zero value issues a certificate valid from
// an hour ago for an hour.
type LeafOptions struct {
	NotBefore, NotAfter time.Time
	DNSNames            []string
}

// Issue signs a workload certificate for the SPIFFE ID id (for example
// "spiffe://example.org/ns/default/sa/web"), usable as client and server.
func (ca *CA) Issue(t testing.TB, id string, o LeafOptions) *Leaf {
	t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		t.Fatalf("testca: id %q: %v", id, err)
	}
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = time.Now().Add(time.Hour)
	}
	key := newKey(t)
	cert := sign(t, &x509.Certificate{
		SerialNumber:          nextSerial(),
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{u},
		DNSNames:              o.DNSNames,
	}, ca.Intermediate, &key.PublicKey, ca.interKey)
	return &Leaf{Cert: cert, Chain: []*x509.Certificate{cert, ca.Intermediate}, Key: key}
}

// TLSCertificate returns the leaf as a tls.Certificate (chain included).
func (l *Leaf) TLSCertificate() tls.Certificate {
	c := tls.Certificate{PrivateKey: l.Key, Leaf: l.Cert}
	for _, x := range l.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// Pool returns a pool holding the given roots.
func Pool(roots ...*CA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range roots {
		p.AddCert(r.Root)
	}
	return p
}

// WriteDir writes the layout "meshgate proxy --cert-dir" reads: cert.pem
// (leaf then intermediate), key.pem (PKCS#8) and bundle.pem (the roots of
// the CAs in bundle: one for a plain trust bundle, two during a root
// rotation).
func (l *Leaf) WriteDir(t testing.TB, dir string, bundle ...*CA) {
	t.Helper()
	var certPEM, bundlePEM []byte
	for _, c := range l.Chain {
		certPEM = append(certPEM, pemBlock("CERTIFICATE", c.Raw)...)
	}
	for _, b := range bundle {
		bundlePEM = append(bundlePEM, pemBlock("CERTIFICATE", b.Root.Raw)...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(l.Key)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"cert.pem":   certPEM,
		"key.pem":    pemBlock("PRIVATE KEY", der),
		"bundle.pem": bundlePEM,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// RootPEM returns the CA's root certificate in PEM.
func (ca *CA) RootPEM() []byte { return pemBlock("CERTIFICATE", ca.Root.Raw) }

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
