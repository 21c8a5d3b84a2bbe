package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("a.example")
	webID   = spiffeid.RequireFromString("spiffe://a.example/ns/default/sa/web")
	testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

func clockAt(t time.Time) InitOption { return WithClock(func() time.Time { return t }) }

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	c, err := Init(dir, td, clockAt(testNow))
	if err != nil {
		t.Fatal(err)
	}
	modes := map[string]os.FileMode{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		modes[e.Name()] = info.Mode().Perm()
	}
	want := map[string]os.FileMode{RootCertFile: 0o644, RootKeyFile: 0o600, IntermediateCertFile: 0o644, IntermediateKeyFile: 0o600}
	if diff := cmp.Diff(want, modes); diff != "" {
		t.Errorf("files and modes (-want +got):\n%s", diff)
	}
	if info, _ := os.Stat(dir); info.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", info.Mode().Perm())
	}

	root, inter := c.Root(), c.Intermediate()
	for _, x := range []struct {
		name     string
		cert     *x509.Certificate
		notAfter time.Time
		pathLen  int
	}{
		{"root", root, testNow.Add(RootTTL), 1},
		{"intermediate", inter, testNow.Add(IntermediateTTL), 0},
	} {
		if !x.cert.IsCA || x.cert.MaxPathLen != x.pathLen || x.cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
			t.Errorf("%s: IsCA %v, MaxPathLen %d, KeyUsage %v", x.name, x.cert.IsCA, x.cert.MaxPathLen, x.cert.KeyUsage)
		}
		if !x.cert.NotBefore.Equal(testNow.Add(-ClockSkew)) || !x.cert.NotAfter.Equal(x.notAfter) {
			t.Errorf("%s: valid %s to %s, want %s to %s", x.name, x.cert.NotBefore, x.cert.NotAfter, testNow.Add(-ClockSkew), x.notAfter)
		}
		if k, ok := x.cert.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("%s: key %T, want ECDSA P-256", x.name, x.cert.PublicKey)
		}
		if len(x.cert.URIs) != 1 || x.cert.URIs[0].String() != "spiffe://a.example" {
			t.Errorf("%s: URI SANs %v, want spiffe://a.example", x.name, x.cert.URIs)
		}
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Errorf("intermediate not signed by the root: %v", err)
	}

	loaded, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Root().Equal(root) || !loaded.Intermediate().Equal(inter) || loaded.TrustDomain() != td {
		t.Error("Load does not give back the CA Init made")
	}
}

func TestInitRefusesExistingCA(t *testing.T) {
	dir := t.TempDir()
	first, err := Init(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Init(dir, td)
	if want := "mtls/ca: init " + dir + ": a CA already exists (root.pem is there)"; errText(err) != want || !errors.Is(err, ErrExists) {
		t.Fatalf("second Init:\n got %v\nwant %s", err, want)
	}
	if c, err := Load(dir); err != nil || !c.Root().Equal(first.Root()) {
		t.Fatalf("the refused Init changed the CA: %v", err)
	}
	second, err := Init(dir, td, Overwrite())
	if err != nil {
		t.Fatal(err)
	}
	if second.Root().Equal(first.Root()) {
		t.Error("Overwrite kept the old root")
	}
	if c, err := Load(dir); err != nil || !c.Root().Equal(second.Root()) {
		t.Errorf("after Overwrite, Load gives another root: %v", err)
	}
}

func TestIssue(t *testing.T) {
	c, err := Init(t.TempDir(), td, clockAt(testNow))
	if err != nil {
		t.Fatal(err)
	}
	key := p256(t)
	chain, err := c.Issue(webID, []string{"web.default.svc", "web"}, 24*time.Hour, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[1].Equal(c.Intermediate()) {
		t.Fatalf("chain of %d, want the leaf and the intermediate", len(chain))
	}
	leaf := chain[0]
	got := map[string]any{
		"URIs":        []string{leaf.URIs[0].String()},
		"DNSNames":    leaf.DNSNames,
		"KeyUsage":    leaf.KeyUsage,
		"ExtKeyUsage": leaf.ExtKeyUsage,
		"IsCA":        leaf.IsCA,
		"NotBefore":   leaf.NotBefore,
		"NotAfter":    leaf.NotAfter,
	}
	want := map[string]any{
		"URIs":        []string{"spiffe://a.example/ns/default/sa/web"},
		"DNSNames":    []string{"web.default.svc", "web"},
		"KeyUsage":    x509.KeyUsageDigitalSignature,
		"ExtKeyUsage": []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		"IsCA":        false,
		"NotBefore":   testNow.Add(-ClockSkew),
		"NotAfter":    testNow.Add(24 * time.Hour),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("leaf (-want +got):\n%s", diff)
	}
	// The chain is a valid X509-SVID for go-spiffe, against the CA's bundle.
	id, _, err := x509svid.Verify(chain, c.Bundle(), x509svid.WithTime(testNow))
	if err != nil || id != webID {
		t.Errorf("x509svid.Verify = %v, %v", id, err)
	}

	capped, err := c.Issue(webID, nil, 2*IntermediateTTL, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if !capped[0].NotAfter.Equal(c.Intermediate().NotAfter) {
		t.Errorf("a lifetime past the intermediate's gives NotAfter %s, want the intermediate's %s", capped[0].NotAfter, c.Intermediate().NotAfter)
	}
}

func TestIssueRejects(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(dir, td, clockAt(testNow)); err != nil {
		t.Fatal(err)
	}
	c, err := Load(dir, clockAt(testNow))
	if err != nil {
		t.Fatal(err)
	}
	afterIntermediate, err := Load(dir, clockAt(testNow.Add(IntermediateTTL+time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	good := p256(t).Public()
	for _, tc := range []struct {
		name string
		ca   *CA
		id   spiffeid.ID
		dns  []string
		ttl  time.Duration
		pub  crypto.PublicKey
		want string
	}{
		{"ID of another trust domain", c, spiffeid.RequireFromString("spiffe://b.example/ns/default/sa/web"), nil, time.Hour, good,
			"mtls/ca: issue spiffe://b.example/ns/default/sa/web: trust domain b.example is not this CA's (a.example)"},
		{"ID without a path", c, spiffeid.RequireFromString("spiffe://a.example"), nil, time.Hour, good,
			"mtls/ca: issue spiffe://a.example: the ID names the trust domain, not a workload; want a path like /ns/<namespace>/sa/<service-account>"},
		{"empty ID", c, spiffeid.ID{}, nil, time.Hour, good, "mtls/ca: issue: empty SPIFFE ID"},
		{"zero lifetime", c, webID, nil, 0, good, "mtls/ca: issue spiffe://a.example/ns/default/sa/web: lifetime 0s: want a positive duration"},
		{"RSA key", c, webID, nil, time.Hour, rsaKey.Public(), "mtls/ca: issue spiffe://a.example/ns/default/sa/web: public key: want ECDSA P-256, got RSA"},
		{"Ed25519 key", c, webID, nil, time.Hour, edPub, "mtls/ca: issue spiffe://a.example/ns/default/sa/web: public key: want ECDSA P-256, got ED25519"},
		{"P-384 key", c, webID, nil, time.Hour, p384.Public(), "mtls/ca: issue spiffe://a.example/ns/default/sa/web: public key: want ECDSA P-256, got ECDSA P-384"},
		{"no key", c, webID, nil, time.Hour, nil, "mtls/ca: issue spiffe://a.example/ns/default/sa/web: public key: want ECDSA P-256, got no key"},
		{"DNS name with a space", c, webID, []string{"web svc"}, time.Hour, good,
			`mtls/ca: issue spiffe://a.example/ns/default/sa/web: DNS name "web svc": ' ' is not allowed; want letters, digits, '-' and '.'`},
		{"DNS name with an empty label", c, webID, []string{"web..svc"}, time.Hour, good,
			`mtls/ca: issue spiffe://a.example/ns/default/sa/web: DNS name "web..svc": empty label`},
		{"DNS name that is a URL", c, webID, []string{"https://web"}, time.Hour, good,
			`mtls/ca: issue spiffe://a.example/ns/default/sa/web: DNS name "https://web": ':' is not allowed; want letters, digits, '-' and '.'`},
		{"intermediate expired", afterIntermediate, webID, nil, time.Hour, good,
			"mtls/ca: issue spiffe://a.example/ns/default/sa/web: the intermediate expired at " + testNow.Add(IntermediateTTL).Format(time.RFC3339) + "; create a new CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chain, err := tc.ca.Issue(tc.id, tc.dns, tc.ttl, tc.pub)
			if errText(err) != tc.want || chain != nil {
				t.Errorf("error\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}

func TestLoadRejects(t *testing.T) {
	good := t.TempDir()
	if _, err := Init(good, td); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if _, err := Init(other, td); err != nil {
		t.Fatal(err)
	}
	copyFrom := func(src, name string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			data, err := os.ReadFile(filepath.Join(src, name))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	truncate := func(name string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			p := filepath.Join(dir, name)
			data, _ := os.ReadFile(p)
			os.WriteFile(p, data[:len(data)/2], 0o600)
		}
	}
	for _, tc := range []struct {
		name     string
		defect   func(t *testing.T, dir string)
		want     string
		notExist bool
	}{
		{"missing intermediate key", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, IntermediateKeyFile)) },
			"mtls/ca: load DIR: intermediate.key: open DIR/intermediate.key: no such file or directory", true},
		{"intermediate of another root", copyFrom(other, IntermediateCertFile),
			"mtls/ca: load DIR: intermediate.pem: not signed by the root in root.pem", false},
		{"key of another intermediate", copyFrom(other, IntermediateKeyFile),
			"mtls/ca: load DIR: intermediate.key: not the key of the certificate in intermediate.pem", false},
		{"truncated root", truncate(RootCertFile),
			"mtls/ca: load DIR: root.pem: no complete PEM CERTIFICATE block (truncated file?)", false},
		{"truncated key", truncate(IntermediateKeyFile),
			"mtls/ca: load DIR: intermediate.key: no PEM PRIVATE KEY or EC PRIVATE KEY block (truncated file?)", false},
		{"intermediate in place of the root", func(t *testing.T, dir string) {
			data, _ := os.ReadFile(filepath.Join(dir, IntermediateCertFile))
			os.WriteFile(filepath.Join(dir, RootCertFile), data, 0o644)
		}, "mtls/ca: load DIR: root.pem: not a self-signed CA certificate", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, name := range []string{RootCertFile, IntermediateCertFile, IntermediateKeyFile} {
				copyFrom(good, name)(t, dir)
			}
			tc.defect(t, dir)
			_, err := Load(dir)
			if want := strings.ReplaceAll(tc.want, "DIR", dir); errText(err) != want {
				t.Errorf("error\n got %v\nwant %s", err, want)
			}
			if errors.Is(err, fs.ErrNotExist) != tc.notExist {
				t.Errorf("errors.Is(err, fs.ErrNotExist) = %v, want %v", !tc.notExist, tc.notExist)
			}
		})
	}
}
