package inject

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// CertReloader serves the webhook's TLS certificate from a certificate
// and a key file, reloaded when either changes: Kubernetes updates a
// mounted secret in place (an atomic symlink swap), and cert-manager
// renews it before it expires, so the server never needs a restart.
//
// Each handshake stats the two files (cheap next to the handshake); a
// changed pair is loaded, and used only if it loads: a pair caught half
// written keeps the old certificate until the next handshake finds both.
type CertReloader struct {
	certFile, keyFile string
	// OnError, when set, is told of a changed pair that does not load
	// (once per change).
	OnError func(error)

	mu     sync.Mutex
	cert   *tls.Certificate
	loaded stamp // the files' stamp when cert was loaded
	failed stamp // the stamp of the last pair that did not load
}

// stamp identifies a version of the two files.
type stamp struct {
	certMod, keyMod   time.Time
	certSize, keySize int64
}

// NewCertReloader loads the pair once, so that a server starts only with
// a usable certificate.
func NewCertReloader(certFile, keyFile string) (*CertReloader, error) {
	r := &CertReloader{certFile: certFile, keyFile: keyFile}
	s, err := r.stat()
	if err != nil {
		return nil, err
	}
	if err := r.load(s); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *CertReloader) stat() (stamp, error) {
	c, err := os.Stat(r.certFile)
	if err != nil {
		return stamp{}, fmt.Errorf("--tls-cert: %w", err)
	}
	k, err := os.Stat(r.keyFile)
	if err != nil {
		return stamp{}, fmt.Errorf("--tls-key: %w", err)
	}
	return stamp{c.ModTime(), k.ModTime(), c.Size(), k.Size()}, nil
}

func (r *CertReloader) load(s stamp) error {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("--tls-cert %s, --tls-key %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert, r.loaded = &cert, s
	return nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, err := r.stat()
	if err == nil && s != r.loaded {
		err = r.load(s)
		if err != nil && s == r.failed {
			err = nil // said already
		}
		if err != nil {
			r.failed = s
		}
	}
	if err != nil && r.OnError != nil {
		r.OnError(fmt.Errorf("reload the certificate (serving the previous one): %w", err))
	}
	return r.cert, nil
}
