package testca

import (
	"crypto/x509"
	"testing"
	"time"
)

// TestChainVerifies: a leaf verifies against its own root only, and an
// expired leaf does not verify at all.
func TestChainVerifies(t *testing.T) {
	a, b := New(t, "a.example"), New(t, "b.example")
	leaf := a.Issue(t, "spiffe://a.example/ns/default/sa/web", LeafOptions{})
	inter := x509.NewCertPool()
	inter.AddCert(a.Intermediate)
	opts := x509.VerifyOptions{Roots: Pool(a), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	if _, err := leaf.Cert.Verify(opts); err != nil {
		t.Fatalf("leaf does not verify against its root: %v", err)
	}
	opts.Roots = Pool(b)
	if _, err := leaf.Cert.Verify(opts); err == nil {
		t.Fatal("leaf verifies against another trust domain's root")
	}
	old := a.Issue(t, "spiffe://a.example/ns/default/sa/web", LeafOptions{NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	opts.Roots = Pool(a)
	if _, err := old.Cert.Verify(opts); err == nil {
		t.Fatal("expired leaf verifies")
	}
	if got := leaf.Cert.URIs[0].String(); got != "spiffe://a.example/ns/default/sa/web" {
		t.Errorf("URI SAN = %s", got)
	}
}
