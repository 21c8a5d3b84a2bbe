package mtls

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
)

// chainCache remembers which certificate chains verified against which
// bundle, so that a peer seen before, and every resumed session (whose
// certificates VerifyConnection checks again), costs a hash and a map
// lookup instead of the chain's signature checks. A hit still checks the
// validity period against the current time, and the bundle must be the
// very one the chain verified against: a new bundle (a source publishes a
// new value on every change) misses. The TLS handshake's own proof of key
// possession is crypto/tls's and is never cached.
type chainCache struct {
	mu      sync.RWMutex
	entries map[[sha256.Size]byte]*verifiedChain
	// roots memoizes the pool of the last bundle verified against.
	roots atomic.Pointer[rootPool]
}

// chainCacheSize bounds the cache: about one entry per peer certificate
// in use, so a sidecar talking to more peers than this just verifies more.
const chainCacheSize = 4096

type verifiedChain struct {
	bundle              *x509bundle.Bundle
	chains              [][]*x509.Certificate
	notBefore, notAfter time.Time // where every certificate of chains[0] is valid
}

type rootPool struct {
	bundle *x509bundle.Bundle
	pool   *x509.CertPool
}

func newChainCache() *chainCache {
	return &chainCache{entries: make(map[[sha256.Size]byte]*verifiedChain)}
}

func chainKey(certs []*x509.Certificate) [sha256.Size]byte {
	h := sha256.New()
	var n [4]byte
	for _, c := range certs {
		binary.BigEndian.PutUint32(n[:], uint32(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// get returns the chains of certs if they verified against bundle and
// now is within their validity.
func (c *chainCache) get(key [sha256.Size]byte, bundle *x509bundle.Bundle, now time.Time) ([][]*x509.Certificate, bool) {
	c.mu.RLock()
	e := c.entries[key]
	c.mu.RUnlock()
	if e == nil || e.bundle != bundle || now.Before(e.notBefore) || now.After(e.notAfter) {
		return nil, false
	}
	return e.chains, true
}

func (c *chainCache) put(key [sha256.Size]byte, bundle *x509bundle.Bundle, chains [][]*x509.Certificate) {
	e := &verifiedChain{bundle: bundle, chains: chains}
	for i, cert := range chains[0] {
		if i == 0 || cert.NotBefore.After(e.notBefore) {
			e.notBefore = cert.NotBefore
		}
		if i == 0 || cert.NotAfter.Before(e.notAfter) {
			e.notAfter = cert.NotAfter
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= chainCacheSize {
		for k := range c.entries { // map order is random: evict one at random
			delete(c.entries, k)
			break
		}
	}
	c.entries[key] = e
}

// pool returns the roots of bundle as a pool, built once per bundle.
func (c *chainCache) pool(bundle *x509bundle.Bundle) *x509.CertPool {
	if c != nil {
		if p := c.roots.Load(); p != nil && p.bundle == bundle {
			return p.pool
		}
	}
	pool := x509.NewCertPool()
	for _, r := range bundle.X509Authorities() {
		pool.AddCert(r)
	}
	if c != nil {
		c.roots.Store(&rootPool{bundle: bundle, pool: pool})
	}
	return pool
}
