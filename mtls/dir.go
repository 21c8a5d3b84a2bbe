package mtls

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"meshgate/mtls/internal/pemfile"
)

// The files of a certificate directory, as "meshgate ca issue --out"
// writes them and DirSource reads them.
const (
	// CertFile holds the workload certificate, then the intermediates
	// that chain it to a root of the bundle (PEM CERTIFICATE blocks).
	CertFile = "cert.pem"
	// KeyFile holds the certificate's private key: PEM PKCS#8 ("PRIVATE
	// KEY") or SEC1 ("EC PRIVATE KEY").
	KeyFile = "key.pem"
	// BundleFile holds the roots of the certificate's trust domain: one,
	// or the old and the new during a root rotation.
	BundleFile = "bundle.pem"
)

// WriteDir writes a certificate directory: chain (the workload
// certificate first) to cert.pem, key to key.pem (mode 0600) and roots to
// bundle.pem, creating dir if needed. Each file is replaced by a rename,
// so a DirSource watching dir never reads a half-written file.
func WriteDir(dir string, chain []*x509.Certificate, key crypto.Signer, roots []*x509.Certificate) error {
	if len(chain) == 0 || len(roots) == 0 {
		return &Error{Op: "write " + dir, Err: errors.New("want a certificate and at least one root")}
	}
	keyPEM, err := pemfile.EncodeKey(key)
	if err != nil {
		return &Error{Op: "write " + dir, Err: fmt.Errorf("%s: %w", KeyFile, err)}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return &Error{Op: "write " + dir, Err: err}
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{KeyFile, keyPEM, 0o600},
		{CertFile, pemfile.EncodeCerts(chain...), 0o644},
		{BundleFile, pemfile.EncodeCerts(roots...), 0o644},
	} {
		if err := pemfile.WriteAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return &Error{Op: "write " + dir, Err: err}
		}
	}
	return nil
}

// ChownDir gives a certificate directory and its files to uid and gid,
// as a secret volume mounted for the sidecar's user would be.
func ChownDir(dir string, uid, gid int) error {
	for _, f := range []string{"", CertFile, KeyFile, BundleFile} {
		if err := os.Chown(filepath.Join(dir, f), uid, gid); err != nil {
			return fmt.Errorf("mtls: chown %s: %w", dir, err)
		}
	}
	return nil
}

// dirFiles is the raw content of a certificate directory.
type dirFiles struct {
	cert, key, bundle []byte
}

func (f dirFiles) equal(g dirFiles) bool {
	return bytes.Equal(f.cert, g.cert) && bytes.Equal(f.key, g.key) && bytes.Equal(f.bundle, g.bundle)
}

// dirState is one good set of a certificate directory's files.
type dirState struct {
	files   dirFiles
	svid    *x509svid.SVID
	bundles *x509bundle.Set
}

func readDir(dir string) (dirFiles, error) {
	var f dirFiles
	for _, x := range []struct {
		name string
		dst  *[]byte
	}{{CertFile, &f.cert}, {KeyFile, &f.key}, {BundleFile, &f.bundle}} {
		data, err := os.ReadFile(filepath.Join(dir, x.name))
		if err != nil {
			return dirFiles{}, err
		}
		*x.dst = data
	}
	return f, nil
}

// parseDir checks a set of files: cert.pem parses and is an X509-SVID,
// key.pem is its key, and cert.pem verifies at now against the roots in
// bundle.pem. Errors name the file.
func parseDir(f dirFiles, now time.Time) (*dirState, error) {
	certs, err := pemfile.ParseCerts(f.cert)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CertFile, err)
	}
	key, err := pemfile.ParseKey(f.key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", KeyFile, err)
	}
	if !publicKeysEqual(key.Public(), certs[0].PublicKey) {
		return nil, fmt.Errorf("%s is not the key of the first certificate in %s", KeyFile, CertFile)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", KeyFile, err)
	}
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.Raw...)
	}
	// go-spiffe's own checks of an X509-SVID: a SPIFFE ID with a path, a
	// leaf that is not a CA, signing certificates that are.
	svid, err := x509svid.ParseRaw(raw, pkcs8)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CertFile, err)
	}
	roots, err := pemfile.ParseCerts(f.bundle)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", BundleFile, err)
	}
	bundles := x509bundle.NewSet(x509bundle.FromX509Authorities(svid.ID.TrustDomain(), roots))
	if _, _, err := verifyChain(certs, bundles, now, x509.ExtKeyUsageAny, nil); err != nil {
		return nil, fmt.Errorf("%s does not verify against %s: %w", CertFile, BundleFile, err)
	}
	return &dirState{files: f, svid: svid, bundles: bundles}, nil
}

func loadDir(dir string, now time.Time) (*dirState, error) {
	f, err := readDir(dir)
	if err != nil {
		return nil, err
	}
	return parseDir(f, now)
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}
