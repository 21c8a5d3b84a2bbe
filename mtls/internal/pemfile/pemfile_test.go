package pemfile

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func selfSigned(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func TestRoundTrip(t *testing.T) {
	cert, key := selfSigned(t)
	certs, err := ParseCerts(EncodeCerts(cert, cert))
	if err != nil || len(certs) != 2 || !certs[1].Equal(cert) {
		t.Fatalf("ParseCerts = %d certs, %v", len(certs), err)
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKey(keyPEM)
	if err != nil || !key.Public().(*ecdsa.PublicKey).Equal(k.Public()) {
		t.Fatalf("ParseKey = %v", err)
	}
	if _, err := ParseKey(append(keyPEM, keyPEM...)); errText(err) != "more after the key; want one key alone" {
		t.Errorf("two keys: %v", err)
	}
}

// TestParseCertsRefuses: what is not a whole file of certificates is
// refused, saying where it went wrong.
func TestParseCertsRefuses(t *testing.T) {
	cert, key := selfSigned(t)
	certPEM := EncodeCerts(cert)
	keyPEM, _ := EncodeKey(key)
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "no PEM CERTIFICATE block"},
		{"not PEM", []byte("not PEM"), "no complete PEM CERTIFICATE block (truncated file?)"},
		{"truncated", certPEM[:len(certPEM)/2], "no complete PEM CERTIFICATE block (truncated file?)"},
		{"second truncated", append(EncodeCerts(cert), certPEM[:len(certPEM)/2]...), "text after certificate 1 is not a PEM block (truncated file?)"},
		{"a key", keyPEM, `PEM block 1 is "PRIVATE KEY"; want CERTIFICATE`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseCerts(tc.data); errText(err) != tc.want {
				t.Errorf("ParseCerts = %v; want %s", err, tc.want)
			}
		})
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteAtomic(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(p)
	info, _ := os.Stat(p)
	entries, _ := os.ReadDir(dir)
	if string(data) != "new" || info.Mode().Perm() != 0o600 || len(entries) != 1 {
		t.Errorf("content %q, mode %v, %d files in the directory", data, info.Mode().Perm(), len(entries))
	}
}

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// FuzzParse: the parsers of files an operator hands us never panic, and
// what ParseCerts accepts is certificates only.
func FuzzParse(f *testing.F) {
	cert, key := selfSigned(f)
	keyPEM, _ := EncodeKey(key)
	f.Add(EncodeCerts(cert))
	f.Add(keyPEM)
	f.Add(append(EncodeCerts(cert), "garbage"...))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if certs, err := ParseCerts(data); err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificate")
		}
		if k, err := ParseKey(data); err == nil && k == nil {
			t.Fatal("no error and no key")
		}
	})
}
