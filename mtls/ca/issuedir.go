package ca

import (
	"crypto/x509"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"meshgate/mtls"
)

// IssueDir issues a workload certificate for id (see Issue) over a new
// ECDSA P-256 key and writes it as a certificate directory (mtls.WriteDir):
// the chain, the key, and a bundle of the CA's root and extraRoots. It
// returns the chain. Errors are Issue's and mtls.WriteDir's, unwrapped.
func (c *CA) IssueDir(dir string, id spiffeid.ID, dnsNames []string, ttl time.Duration, extraRoots ...*x509.Certificate) ([]*x509.Certificate, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	chain, err := c.Issue(id, dnsNames, ttl, key.Public())
	if err != nil {
		return nil, err
	}
	roots := append([]*x509.Certificate{c.root}, extraRoots...)
	if err := mtls.WriteDir(dir, chain, key, roots); err != nil {
		return nil, err
	}
	return chain, nil
}
