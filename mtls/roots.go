package mtls

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"

	"meshgate/mtls/internal/pemfile"
)

// ReadRoots reads a PEM file of CA certificates, such as a CA's root.pem,
// to trust: every block must be a certificate and every certificate a CA
// certificate, so a workload certificate or a half-written file given by
// mistake is an error, not a trust bundle. Errors are *Error, with Op
// "read roots PATH".
func ReadRoots(path string) ([]*x509.Certificate, error) {
	roots, err := readRoots(path)
	if err != nil {
		return nil, &Error{Op: "read roots " + path, Err: err}
	}
	return roots, nil
}

func readRoots(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(filepath.Clean(path))
	if err != nil {
		return nil, err
	}
	roots, err := pemfile.ParseCerts(data)
	if err != nil {
		return nil, err
	}
	for _, c := range roots {
		if !c.IsCA {
			return nil, fmt.Errorf("%q is not a CA certificate", c.Subject)
		}
	}
	return roots, nil
}
