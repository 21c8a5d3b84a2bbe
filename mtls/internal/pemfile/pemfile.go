package pemfile

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// EncodeCerts returns certs as PEM CERTIFICATE blocks, in order.
func EncodeCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// EncodeKey returns key as a PEM PKCS#8 PRIVATE KEY block.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCerts parses PEM CERTIFICATE blocks. Anything else in data (other
// block types, text that is not PEM, a truncated block) is an error, so a
// file caught half-written is refused rather than read in part.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for i := 1; ; i++ {
		block, rest := pem.Decode(data)
		if block == nil {
			switch {
			case len(strings.TrimSpace(string(data))) == 0:
			case i == 1:
				return nil, errors.New("no complete PEM CERTIFICATE block (truncated file?)")
			default:
				return nil, fmt.Errorf("text after certificate %d is not a PEM block (truncated file?)", i-1)
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q; want CERTIFICATE", i, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		certs = append(certs, c)
		data = rest
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return certs, nil
}

// ParseKey parses a PEM private key: PKCS#8 ("PRIVATE KEY") or SEC1 EC
// ("EC PRIVATE KEY"; an "EC PARAMETERS" block before it, as openssl
// ecparam writes, is skipped).
func ParseKey(data []byte) (crypto.Signer, error) {
	for {
		block, rest := pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM PRIVATE KEY or EC PRIVATE KEY block (truncated file?)")
		}
		data = rest
		var key any
		var err error
		switch block.Type {
		case "EC PARAMETERS":
			continue
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			return nil, fmt.Errorf("PEM block is %q; want PRIVATE KEY (PKCS#8) or EC PRIVATE KEY (SEC1)", block.Type)
		}
		if err != nil {
			return nil, err
		}
		if len(strings.TrimSpace(string(data))) > 0 {
			return nil, errors.New("more after the key; want one key alone")
		}
		s, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("a %T cannot sign", key)
		}
		return s, nil
	}
}

// WriteAtomic writes data to path through a temporary file in the same
// directory and a rename, so that a reader (or a directory watcher) sees
// the old file or the new one, never a part.
func WriteAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename, a no-op
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
