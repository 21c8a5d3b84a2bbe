package mtls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	randv2 "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	"meshgate/mtls/internal/caproto"
	"meshgate/sockmark"
)

// CAClientConfig configures NewCAClientSource.
type CAClientConfig struct {
	// Server is the host:port of "meshgate ca serve".
	Server string
	// ID is the identity to obtain, e.g. spiffe://cluster.local/ns/default/sa/web.
	ID spiffeid.ID
	// DNSNames are asked for as DNS SANs.
	DNSNames []string
	// Token is the bootstrap token for the first certificate, and again
	// should the certificate ever expire unrenewed. Empty: Roots alone
	// cannot get a certificate, so NewCAClientSource fails.
	Token string
	// Roots are the trust domain's roots (the CA's root.pem), to verify
	// the CA server on the first contact. Later contacts use the bundle
	// the server hands out, which may add a new root.
	Roots []*x509.Certificate
	// RenewAt is the fraction of a certificate's life after which it is
	// renewed; 0 means 0.5.
	RenewAt float64
	// Jitter spreads renewals by up to this fraction of a certificate's
	// life either way, so that sidecars started together do not renew
	// together; 0 means 0.05.
	Jitter float64
	// Mark is the socket mark (SO_MARK) on every connection to the CA
	// server, so that capture rules exempting the sidecar's mark do not
	// catch them; the sidecar's is its config's mark, 0x539 by default. 0
	// marks nothing. See sockmark.Control for a mark the process may not
	// set.
	Mark uint32
}

// CAClientSource is a Source whose certificate comes from "meshgate ca
// serve": it gets the first one with a bootstrap token, then renews it at
// about half its life (with jitter), authenticating with the certificate
// it holds, with a new key each time. A failed renewal is retried with
// backoff while the certificate lasts. Close it when done.
type CAClientSource struct {
	cfg    CAClientConfig
	log    *zap.Logger
	state  atomic.Pointer[caState]
	renew  *http.Client // authenticates with the current certificate
	boot   *http.Client // authenticates with the token
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

type caState struct {
	svid    *x509svid.SVID
	bundles *x509bundle.Set
	renewAt time.Time
}

// NewCAClientSource gets the first certificate, with cfg.Token, before it
// returns: an unreachable server, a refusal or the end of ctx is an error
// (retrying is the caller's choice). It then renews the certificate in the
// background until Close. log gets a line per certificate and per failed
// renewal; nil logs nothing.
func NewCAClientSource(ctx context.Context, cfg CAClientConfig, log *zap.Logger) (*CAClientSource, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.RenewAt == 0 {
		cfg.RenewAt = 0.5
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = 0.05
	}
	var problems []error
	if cfg.Server == "" {
		problems = append(problems, errors.New("Server: empty; want the host:port of meshgate ca serve"))
	}
	if cfg.ID.IsZero() {
		problems = append(problems, errors.New("ID: empty; want the SPIFFE ID to obtain"))
	}
	if cfg.Token == "" {
		problems = append(problems, errors.New("Token: empty; the first certificate needs a bootstrap token"))
	}
	if len(cfg.Roots) == 0 {
		problems = append(problems, errors.New("Roots: none; want the CA's root.pem, to verify the CA server"))
	}
	if cfg.RenewAt <= 0 || cfg.RenewAt >= 1 {
		problems = append(problems, fmt.Errorf("RenewAt %v: want a fraction between 0 and 1", cfg.RenewAt))
	}
	if cfg.Jitter < 0 || cfg.Jitter >= cfg.RenewAt || cfg.Jitter >= 1-cfg.RenewAt {
		problems = append(problems, fmt.Errorf("Jitter %v: want a fraction smaller than RenewAt and 1-RenewAt", cfg.Jitter))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, &Error{Op: "CA client", Err: err}
	}
	s := &CAClientSource{
		cfg:  cfg,
		log:  log.With(zap.String("ca_server", cfg.Server), zap.String("spiffe_id", cfg.ID.String())),
		done: make(chan struct{}),
	}
	serverID := caproto.ServerID(cfg.ID.TrustDomain())
	renewTLS := ClientConfig(s, AuthorizeID(serverID))
	renewTLS.NextProtos = []string{"http/1.1"}
	bootTLS := ClientConfig(&rootsSource{x509bundle.FromX509Authorities(cfg.ID.TrustDomain(), cfg.Roots)}, AuthorizeID(serverID))
	bootTLS.NextProtos = []string{"http/1.1"}
	bootTLS.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &tls.Certificate{}, nil // none yet: the token authenticates
	}
	dialer := &net.Dialer{Control: sockmark.Control(cfg.Mark)}
	s.renew = httpClient(renewTLS, dialer)
	s.boot = httpClient(bootTLS, dialer)

	if err := s.fetch(ctx, true); err != nil {
		return nil, &Error{Op: "CA client", Err: fmt.Errorf("first certificate: %w", err)}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(runCtx)
	return s, nil
}

func httpClient(cfg *tls.Config, dialer *net.Dialer) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: cfg,
			DialContext:     dialer.DialContext,
			// Renewals are rare, and each must present the certificate
			// of the moment: no connection is kept.
			DisableKeepAlives: true,
		},
	}
}

// GetX509SVID returns the current certificate. It implements x509svid.Source.
func (s *CAClientSource) GetX509SVID() (*x509svid.SVID, error) {
	if st := s.state.Load(); st != nil {
		return st.svid, nil
	}
	return nil, errors.New("mtls: CA client: no certificate yet")
}

// GetX509BundleForTrustDomain returns the roots of td, as the CA server
// last handed them out. It implements x509bundle.Source.
func (s *CAClientSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	st := s.state.Load()
	if st == nil {
		return nil, errors.New("mtls: CA client: no bundle yet")
	}
	return st.bundles.GetX509BundleForTrustDomain(td)
}

// CurrentSVID returns the certificate in use, for metrics and logs.
func (s *CAClientSource) CurrentSVID() *x509svid.SVID {
	return s.state.Load().svid
}

// Close stops renewing. The last certificate stays readable, for
// connections that are still draining.
func (s *CAClientSource) Close() error {
	s.once.Do(func() {
		s.cancel()
		<-s.done
	})
	return nil
}

// run renews until ctx is done.
func (s *CAClientSource) run(ctx context.Context) {
	defer close(s.done)
	for {
		if !sleepCtx(ctx, time.Until(s.state.Load().renewAt)) {
			return
		}
		backoff := time.Second
		for {
			// With the certificate while it is valid; with the token once
			// it has expired (the sidecar was suspended, say).
			expired := time.Now().After(s.state.Load().svid.Certificates[0].NotAfter)
			err := s.fetch(ctx, expired)
			if err == nil || ctx.Err() != nil {
				break
			}
			left := time.Until(s.state.Load().svid.Certificates[0].NotAfter)
			s.log.Warn("certificate renewal failed; retrying", zap.Error(err), zap.Duration("retry_in", backoff),
				zap.Duration("expires_in", left.Truncate(time.Second)))
			if !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, 30*time.Second, max(time.Second, left/4))
		}
	}
}

// renewalTime is when a certificate received at received and expiring
// at notAfter is due for renewal: RenewAt of the way, give or take Jitter.
func (s *CAClientSource) renewalTime(received, notAfter time.Time) time.Time {
	life := notAfter.Sub(received)
	jitter := time.Duration((randv2.Float64()*2 - 1) * s.cfg.Jitter * float64(life))
	return received.Add(time.Duration(s.cfg.RenewAt*float64(life)) + jitter)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// fetch asks for a certificate with a new key, with the token (bootstrap)
// or the current certificate, and makes it current.
func (s *CAClientSource) fetch(ctx context.Context, bootstrap bool) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs:     []*url.URL{s.cfg.ID.URL()},
		DNSNames: s.cfg.DNSNames,
	}, key)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(caproto.SignRequest{CSR: csr})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+s.cfg.Server+caproto.SignPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	client := s.renew
	if bootstrap {
		client = s.boot
		req.Header.Set("Authorization", "Bearer "+s.cfg.Token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e caproto.ErrorResponse
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("the CA server refused (%s): %s", resp.Status, e.Error)
		}
		return fmt.Errorf("the CA server answered %s", resp.Status)
	}
	var sr caproto.SignResponse
	if err := json.Unmarshal(data, &sr); err != nil {
		return fmt.Errorf("the CA server's answer: %w", err)
	}
	st, err := s.accept(sr, key)
	if err != nil {
		return fmt.Errorf("the CA server's answer: %w", err)
	}
	prev := s.state.Swap(st)
	leaf := st.svid.Certificates[0]
	fields := []zap.Field{zap.String("serial", fmt.Sprintf("%x", leaf.SerialNumber)), zap.Time("not_after", leaf.NotAfter),
		zap.Time("renew_at", st.renewAt), zap.Bool("bootstrap", bootstrap)}
	if prev != nil {
		fields = append(fields, zap.String("previous_serial", fmt.Sprintf("%x", prev.svid.Certificates[0].SerialNumber)))
	}
	s.log.Info("workload certificate issued by the CA server", fields...)
	return nil
}

// accept checks an answer: a chain for our ID and key that verifies
// against the bundle that comes with it.
func (s *CAClientSource) accept(sr caproto.SignResponse, key *ecdsa.PrivateKey) (*caState, error) {
	var certs, roots []*x509.Certificate
	for _, der := range sr.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("chain: %w", err)
		}
		certs = append(certs, c)
	}
	for _, der := range sr.Bundle {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
		roots = append(roots, c)
	}
	if len(certs) == 0 || len(roots) == 0 {
		return nil, errors.New("no certificate or no root")
	}
	if !publicKeysEqual(certs[0].PublicKey, key.Public()) {
		return nil, errors.New("the certificate is not for the key we sent")
	}
	bundles := x509bundle.NewSet(x509bundle.FromX509Authorities(s.cfg.ID.TrustDomain(), roots))
	id, _, err := verifyChain(certs, bundles, time.Now(), x509.ExtKeyUsageAny, nil)
	if err != nil {
		return nil, err
	}
	if id != s.cfg.ID {
		return nil, fmt.Errorf("a certificate for %s, not %s", id, s.cfg.ID)
	}
	return &caState{
		svid:    &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key},
		bundles: bundles,
		renewAt: s.renewalTime(time.Now(), certs[0].NotAfter),
	}, nil
}

// rootsSource is a bundle with no certificate, to verify the CA server
// before the first certificate.
type rootsSource struct{ bundle *x509bundle.Bundle }

func (r *rootsSource) GetX509SVID() (*x509svid.SVID, error) {
	return nil, errors.New("no certificate yet")
}

func (r *rootsSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != r.bundle.TrustDomain() {
		return nil, fmt.Errorf("no bundle for trust domain %s", td)
	}
	return r.bundle, nil
}
