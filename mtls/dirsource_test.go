package mtls

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"meshgate/internal/testca"
)

// observed returns a logger that records everything, and its records.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// waitFor polls cond until it holds, failing the test after 10 s. It
// waits for an asynchronous reload; it is not a timing assertion.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func serialOf(s *DirSource) string {
	return fmt.Sprintf("%x", s.CurrentSVID().Certificates[0].SerialNumber)
}
func serialHex(l *testca.Leaf) string { return fmt.Sprintf("%x", l.Cert.SerialNumber) }

func newDirSource(t *testing.T, dir string) (*DirSource, *observer.ObservedLogs) {
	t.Helper()
	log, logs := observed()
	s, err := NewDirSource(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s, logs
}

func TestDirSourceServesTheDirectory(t *testing.T) {
	ca := testca.New(t, "a.example")
	leaf := ca.Issue(t, serverID, testca.LeafOptions{})
	dir := t.TempDir()
	leaf.WriteDir(t, dir, ca)
	s, logs := newDirSource(t, dir)

	svid, err := s.GetX509SVID()
	if err != nil || svid.ID.String() != serverID || serialOf(s) != serialHex(leaf) || len(svid.Certificates) != 2 {
		t.Fatalf("GetX509SVID = %v, %v", svid, err)
	}
	b, err := s.GetX509BundleForTrustDomain(tdA)
	if err != nil || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(ca.Root) {
		t.Fatalf("bundle of a.example: %v", err)
	}
	_, err = s.GetX509BundleForTrustDomain(mustID("spiffe://b.example/x").TrustDomain())
	if want := fmt.Sprintf(`mtls: cert dir %s: x509bundle: no X.509 bundle for trust domain "b.example"`, dir); errText(err) != want {
		t.Errorf("bundle of b.example:\n got %v\nwant %s", err, want)
	}
	if e := logs.FilterMessage("workload certificate loaded").All(); len(e) != 1 || e[0].ContextMap()["serial"] != serialHex(leaf) {
		t.Errorf("load log: %v", e)
	}

	// It is a Source the TLS configs take.
	cliSrc := newMemSource(t, ca.Issue(t, clientID, testca.LeafOptions{}), ca)
	x := startServer(t, ServerConfig(s, AuthorizeMemberOf(tdA))).dial(t, ClientConfig(cliSrc, AuthorizeID(mustID(serverID))))
	if x.client.err != nil || x.server.err != nil {
		t.Fatalf("handshake with a DirSource: client: %v; server: %v", x.client.err, x.server.err)
	}
}

// TestDirSourceSEC1Key: a key in SEC1 form, as "openssl ecparam -genkey"
// writes it (EC PARAMETERS block first), is read as well as PKCS#8.
func TestDirSourceSEC1Key(t *testing.T) {
	ca := testca.New(t, "a.example")
	leaf := ca.Issue(t, serverID, testca.LeafOptions{})
	dir := t.TempDir()
	leaf.WriteDir(t, dir, ca)
	der, err := x509.MarshalECPrivateKey(leaf.Key)
	if err != nil {
		t.Fatal(err)
	}
	sec1 := append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...)
	if err := os.WriteFile(filepath.Join(dir, KeyFile), sec1, 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := newDirSource(t, dir)
	if serialOf(s) != serialHex(leaf) {
		t.Error("wrong certificate")
	}
}

// TestDirSourceRejects pins the error for each kind of bad directory.
// Fixtures are named after their defect.
func TestDirSourceRejects(t *testing.T) {
	ca, rogue := testca.New(t, "a.example"), testca.New(t, "a.example")
	now := time.Now()
	good := ca.Issue(t, serverID, testca.LeafOptions{})
	expired := ca.Issue(t, serverID, testca.LeafOptions{NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})
	withoutSPIFFEID := ca.Issue(t, "https://web.a.example/", testca.LeafOptions{})
	rootless := ca.Issue(t, "spiffe://a.example", testca.LeafOptions{})
	other := ca.Issue(t, serverID, testca.LeafOptions{})

	write := func(leaf *testca.Leaf, bundle ...*testca.CA) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) { leaf.WriteDir(t, dir, bundle...) }
	}
	then := func(a, b func(t *testing.T, dir string)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) { a(t, dir); b(t, dir) }
	}
	truncate := func(name string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			p := filepath.Join(dir, name)
			data, _ := os.ReadFile(p)
			os.WriteFile(p, data[:len(data)-40], 0o600)
		}
	}
	replace := func(name, content string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) { os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600) }
	}
	keyOf := func(leaf *testca.Leaf) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			tmp := t.TempDir()
			leaf.WriteDir(t, tmp, ca)
			data, _ := os.ReadFile(filepath.Join(tmp, KeyFile))
			os.WriteFile(filepath.Join(dir, KeyFile), data, 0o600)
		}
	}
	for _, tc := range []struct {
		name   string
		layout func(t *testing.T, dir string)
		want   string
	}{
		{"empty directory", func(*testing.T, string) {}, "open DIR/cert.pem: no such file or directory"},
		{"missing bundle.pem", then(write(good, ca), func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, BundleFile)) }),
			"open DIR/bundle.pem: no such file or directory"},
		{"truncated cert.pem", then(write(good, ca), truncate(CertFile)),
			"cert.pem: text after certificate 1 is not a PEM block (truncated file?)"},
		{"truncated key.pem", then(write(good, ca), truncate(KeyFile)),
			"key.pem: no PEM PRIVATE KEY or EC PRIVATE KEY block (truncated file?)"},
		{"empty bundle.pem", then(write(good, ca), replace(BundleFile, "")), "bundle.pem: no PEM CERTIFICATE block"},
		{"key in cert.pem", then(write(good, ca), func(t *testing.T, dir string) {
			data, _ := os.ReadFile(filepath.Join(dir, KeyFile))
			os.WriteFile(filepath.Join(dir, CertFile), data, 0o600)
		}), `cert.pem: PEM block 1 is "PRIVATE KEY"; want CERTIFICATE`},
		{"key.pem of another certificate", then(write(good, ca), keyOf(other)),
			"key.pem is not the key of the first certificate in cert.pem"},
		{"cert.pem without a SPIFFE ID", write(withoutSPIFFEID, ca),
			"cert.pem: x509svid: certificate validation failed: cannot get leaf certificate SPIFFE ID: scheme is missing or invalid"},
		{"cert.pem naming the trust domain only", write(rootless, ca),
			"cert.pem: x509svid: certificate validation failed: leaf certificate SPIFFE ID must have a non-root path"},
		{"bundle.pem of another CA", write(good, rogue),
			"cert.pem does not verify against bundle.pem: spiffe://a.example/ns/default/sa/server: certificate signed by an unknown authority: no chain to a root of the a.example trust bundle"},
		{"expired cert.pem", write(expired, ca),
			fmt.Sprintf("cert.pem does not verify against bundle.pem: spiffe://a.example/ns/default/sa/server: certificate expired: expired at %s, now is ", expired.Cert.NotAfter.UTC().Format(time.RFC3339))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.layout(t, dir)
			s, err := NewDirSource(dir, nil)
			if s != nil {
				s.Close()
			}
			want := "mtls: cert dir " + dir + ": " + strings.ReplaceAll(tc.want, "DIR", dir)
			got := errText(err)
			if strings.HasSuffix(want, "now is ") {
				got = got[:min(len(got), len(want))] // the time of the check varies
			}
			if got != want {
				t.Errorf("error\n got %v\nwant %s", err, want)
			}
		})
	}
}

// TestDirSourceReloads: each way of replacing the files is picked up, and
// a bad set in between is refused while the last good one stays.
func TestDirSourceReloads(t *testing.T) {
	ca := testca.New(t, "a.example")
	dir := t.TempDir()
	first := ca.Issue(t, serverID, testca.LeafOptions{})
	first.WriteDir(t, dir, ca)
	s, logs := newDirSource(t, dir)

	// Rename over the old files, as "meshgate ca issue --out" and mv do.
	second := ca.Issue(t, serverID, testca.LeafOptions{})
	if err := WriteDir(dir, second.Chain, second.Key, []*x509.Certificate{ca.Root}); err != nil {
		t.Fatal(err)
	}
	// The new certificate is in effect a moment before its log line.
	waitFor(t, "the renamed files", func() bool {
		return serialOf(s) == serialHex(second) && logs.FilterMessage("workload certificate reloaded").Len() > 0
	})
	reloaded := logs.FilterMessage("workload certificate reloaded").All()
	if len(reloaded) != 1 || reloaded[0].ContextMap()["previous_serial"] != serialHex(first) || reloaded[0].ContextMap()["serial"] != serialHex(second) {
		t.Errorf("reload log: %v", reloaded)
	}

	// Overwrite in place (truncate and write), as a plain cp does.
	third := ca.Issue(t, serverID, testca.LeafOptions{})
	third.WriteDir(t, dir, ca)
	waitFor(t, "the files written in place", func() bool { return serialOf(s) == serialHex(third) })

	// A half-written cert.pem is refused, and the last good set stays.
	certPath := filepath.Join(dir, CertFile)
	data, _ := os.ReadFile(certPath)
	if err := os.WriteFile(certPath, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rejection", func() bool {
		return logs.FilterMessage("cert dir rejected; keeping the previous certificate").Len() > 0
	})
	e := logs.FilterMessage("cert dir rejected; keeping the previous certificate").All()[0]
	if e.Level != zapcore.WarnLevel || e.ContextMap()["error"] != "cert.pem: text after certificate 1 is not a PEM block (truncated file?)" || e.ContextMap()["serial"] != serialHex(third) {
		t.Errorf("rejection log: %v %v", e.Level, e.ContextMap())
	}
	if serialOf(s) != serialHex(third) {
		t.Fatal("a bad set replaced the good one")
	}
	// Handshakes go on with the last good certificate.
	cliSrc := newMemSource(t, ca.Issue(t, clientID, testca.LeafOptions{}), ca)
	x := startServer(t, ServerConfig(s, AuthorizeMemberOf(tdA))).dial(t, ClientConfig(cliSrc, AuthorizeMemberOf(tdA)))
	if x.client.err != nil || x.server.err != nil {
		t.Fatalf("handshake after a rejected set: client: %v; server: %v", x.client.err, x.server.err)
	}

	// Once the set is whole again, it is used.
	fourth := ca.Issue(t, serverID, testca.LeafOptions{})
	fourth.WriteDir(t, dir, ca)
	waitFor(t, "the repaired files", func() bool { return serialOf(s) == serialHex(fourth) })
}

// kubeletWrite updates dir the way the kubelet's atomic writer updates a
// secret volume: the files go into a new hidden timestamped directory, a
// "..data_tmp" symlink to it is renamed over "..data", the visible names
// are symlinks through "..data", and the old directory is removed.
func kubeletWrite(t *testing.T, dir string, gen int, leaf *testca.Leaf, bundle ...*testca.CA) {
	t.Helper()
	stage := t.TempDir()
	leaf.WriteDir(t, stage, bundle...)
	ts := fmt.Sprintf("..2026_03_01_12_00_%02d.%d", gen, 1000+gen)
	if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{CertFile, KeyFile, BundleFile} {
		data, _ := os.ReadFile(filepath.Join(stage, name))
		if err := os.WriteFile(filepath.Join(dir, ts, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := os.Symlink(ts, filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{CertFile, KeyFile, BundleFile} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDirSourceKubernetesSecretVolume follows a secret volume through a
// root rotation: old root, both roots, a certificate of the new root,
// new root only.
func TestDirSourceKubernetesSecretVolume(t *testing.T) {
	oldCA, newCA := testca.New(t, "a.example"), testca.New(t, "a.example")
	dir := t.TempDir()
	first := oldCA.Issue(t, serverID, testca.LeafOptions{})
	kubeletWrite(t, dir, 1, first, oldCA)
	s, logs := newDirSource(t, dir)
	if serialOf(s) != serialHex(first) {
		t.Fatal("wrong first certificate")
	}
	roots := func() int {
		b, err := s.GetX509BundleForTrustDomain(tdA)
		if err != nil {
			return 0
		}
		return len(b.X509Authorities())
	}

	kubeletWrite(t, dir, 2, first, oldCA, newCA)
	waitFor(t, "both roots", func() bool { return roots() == 2 })
	second := newCA.Issue(t, serverID, testca.LeafOptions{})
	kubeletWrite(t, dir, 3, second, oldCA, newCA)
	waitFor(t, "the certificate of the new root", func() bool { return serialOf(s) == serialHex(second) })
	kubeletWrite(t, dir, 4, second, newCA)
	waitFor(t, "the new root alone", func() bool { return roots() == 1 })
	if b, _ := s.GetX509BundleForTrustDomain(tdA); !b.X509Authorities()[0].Equal(newCA.Root) {
		t.Error("the remaining root is not the new one")
	}
	if n := logs.FilterMessage("cert dir rejected; keeping the previous certificate").Len(); n != 0 {
		t.Errorf("%d sets rejected during atomic swaps", n)
	}
}

func TestDirSourceCloseTwice(t *testing.T) {
	ca := testca.New(t, "a.example")
	dir := t.TempDir()
	ca.Issue(t, serverID, testca.LeafOptions{}).WriteDir(t, dir, ca)
	s, err := NewDirSource(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if svid, err := s.GetX509SVID(); err != nil || svid == nil {
		t.Errorf("after Close: %v, %v; want the last certificate", svid, err)
	}
}
