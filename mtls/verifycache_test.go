package mtls

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	"meshgate/internal/testca"
)

// TestChainCache: a hit needs the same chain, the same bundle and a time
// within the chain's validity; the cache stays bounded.
func TestChainCache(t *testing.T) {
	ca := testca.New(t, "a.example")
	leaf := ca.Issue(t, serverID, testca.LeafOptions{})
	bundle := x509bundle.FromX509Authorities(tdA, []*x509.Certificate{ca.Root})
	sameRootsNewBundle := x509bundle.FromX509Authorities(tdA, []*x509.Certificate{ca.Root})
	c := newChainCache()
	key := chainKey(leaf.Chain)
	now := time.Now()
	if _, ok := c.get(key, bundle, now); ok {
		t.Fatal("hit in an empty cache")
	}
	c.put(key, bundle, [][]*x509.Certificate{append(leaf.Chain, ca.Root)})
	for _, tc := range []struct {
		name   string
		key    [32]byte
		bundle *x509bundle.Bundle
		at     time.Time
		hit    bool
	}{
		{"same chain, bundle and time", key, bundle, now, true},
		{"another chain", chainKey(leaf.Chain[:1]), bundle, now, false},
		{"a new bundle value", key, sameRootsNewBundle, now, false},
		{"after the leaf expired", key, bundle, leaf.Cert.NotAfter.Add(time.Second), false},
		{"before the leaf is valid", key, bundle, leaf.Cert.NotBefore.Add(-time.Second), false},
	} {
		if _, ok := c.get(tc.key, tc.bundle, tc.at); ok != tc.hit {
			t.Errorf("%s: hit = %v, want %v", tc.name, ok, tc.hit)
		}
	}
	for i := range chainCacheSize + 10 {
		var k [32]byte
		k[0], k[1] = byte(i), byte(i>>8)
		c.put(k, bundle, [][]*x509.Certificate{leaf.Chain})
	}
	if n := len(c.entries); n > chainCacheSize {
		t.Errorf("%d entries, want at most %d", n, chainCacheSize)
	}
}
