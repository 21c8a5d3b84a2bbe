package ca

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	"meshgate/mtls"
	"meshgate/mtls/internal/caproto"
)

// DefaultServeTTL is the lifetime of the certificates Server issues when
// ServerOptions.TTL is zero: short, since clients renew at half of it.
const DefaultServeTTL = time.Hour

// MinTokenLength is the shortest bootstrap token accepted: 128 bits in hex.
const MinTokenLength = 32

// ServerOptions configures a Server. The zero value issues for
// DefaultServeTTL and renews only (no bootstrap tokens).
type ServerOptions struct {
	// TTL is the lifetime of the certificates issued; 0 means
	// DefaultServeTTL.
	TTL time.Duration
	// TokensFile holds the bootstrap tokens: one per line, the SPIFFE ID
	// the token may obtain, a space, the token (at least MinTokenLength
	// characters); blank lines and lines starting with # are skipped. It
	// is read again at every bootstrap request, so tokens can be added
	// and revoked without a restart. Empty: no bootstrap, renewal only.
	TokensFile string
	// DNSNames go into the server's own certificate, for clients that
	// reach it by name.
	DNSNames []string
	// ExtraRoots join the CA's root in the bundle the server hands out and
	// trusts for renewals: the other root, during a root rotation.
	ExtraRoots []*x509.Certificate
	// Log gets one line per certificate issued and per refusal (the
	// audit log); nil logs nothing.
	Log *zap.Logger
}

// Server issues workload certificates over HTTPS (caproto): the first
// one against a bootstrap token, renewals against the certificate the
// client holds. It serves with a certificate of its own, for
// caproto.ServerID, that it issues itself and renews at half its life.
type Server struct {
	ca      *CA
	ttl     time.Duration
	tokens  string
	log     *zap.Logger
	self    *selfSource
	tlsConf *tls.Config
}

// NewServer returns a Server issuing from c. A TokensFile that cannot be
// read or holds a bad line is an error here, not at the first request.
func NewServer(c *CA, o ServerOptions) (*Server, error) {
	if o.TTL == 0 {
		o.TTL = DefaultServeTTL
	}
	if o.TTL < 0 {
		return nil, &Error{Op: "serve", Err: fmt.Errorf("TTL %s: want a positive duration", o.TTL)}
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.TokensFile != "" {
		if _, err := readTokens(o.TokensFile); err != nil {
			return nil, &Error{Op: "serve", Err: err}
		}
	}
	for _, n := range o.DNSNames {
		if err := ValidateDNSName(n); err != nil {
			return nil, &Error{Op: "serve", Err: fmt.Errorf("DNS name %q: %v", n, err)}
		}
	}
	roots := append([]*x509.Certificate{c.root}, o.ExtraRoots...)
	s := &Server{
		ca:     c,
		ttl:    o.TTL,
		tokens: o.TokensFile,
		log:    o.Log,
		self: &selfSource{
			ca:     c,
			dns:    o.DNSNames,
			bundle: x509bundle.FromX509Authorities(c.td, roots),
		},
	}
	if _, err := s.self.GetX509SVID(); err != nil {
		return nil, &Error{Op: "serve", Err: err}
	}
	// Clients without a certificate yet come with a bootstrap token, so
	// a client certificate is asked for but not required; when one is
	// sent, it is verified like any mesh peer's.
	cfg := mtls.ServerConfig(s.self, mtls.AuthorizeMemberOf(c.td))
	cfg.ClientAuth = tls.RequestClientCert
	verify := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		return verify(cs)
	}
	cfg.NextProtos = []string{"http/1.1"}
	s.tlsConf = cfg
	return s, nil
}

// Serve answers on ln until ctx is done, then finishes the requests in
// flight (for up to 5 s) and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		ErrorLog:          zap.NewStdLog(s.log.Named("http")),
	}
	s.log.Info("CA server listening", zap.String("addr", ln.Addr().String()),
		zap.String("trust_domain", s.ca.td.Name()), zap.Duration("ttl", s.ttl), zap.Bool("bootstrap_tokens", s.tokens != ""))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(ln, s.tlsConf)) }()
	select {
	case err := <-errc:
		return &Error{Op: "serve", Err: err}
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(shutdown)
	<-errc // http.ErrServerClosed
	if err != nil {
		return &Error{Op: "serve", Err: fmt.Errorf("shutdown: %w", err)}
	}
	return nil
}

// ServeHTTP answers caproto.SignPath.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != caproto.SignPath {
		writeError(w, http.StatusNotFound, "no such endpoint; POST to "+caproto.SignPath)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "want POST")
		return
	}
	log := s.log.With(zap.String("remote", r.RemoteAddr))
	refuse := func(status int, id spiffeid.ID, msg string) {
		fields := []zap.Field{zap.Int("status", status), zap.String("reason", msg)}
		if !id.IsZero() {
			fields = append(fields, zap.String("spiffe_id", id.String()))
		}
		log.Warn("certificate refused", fields...)
		writeError(w, status, msg)
	}

	var req caproto.SignRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, caproto.MaxRequestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		refuse(http.StatusBadRequest, spiffeid.ID{}, "request body: "+err.Error())
		return
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		refuse(http.StatusBadRequest, spiffeid.ID{}, "csr: not a DER PKCS#10 certificate request")
		return
	}
	if err := csr.CheckSignature(); err != nil {
		refuse(http.StatusBadRequest, spiffeid.ID{}, "csr: signature: "+err.Error())
		return
	}
	if len(csr.URIs) != 1 {
		refuse(http.StatusBadRequest, spiffeid.ID{}, fmt.Sprintf("csr: want one URI SAN, the SPIFFE ID; found %d", len(csr.URIs)))
		return
	}
	id, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		refuse(http.StatusBadRequest, spiffeid.ID{}, fmt.Sprintf("csr: URI SAN %s: %v", csr.URIs[0], err))
		return
	}
	auth, status, err := s.authenticate(r, id)
	if err != nil {
		refuse(status, id, err.Error())
		return
	}
	chain, err := s.ca.Issue(id, csr.DNSNames, s.ttl, csr.PublicKey)
	if err != nil {
		refuse(http.StatusBadRequest, id, strings.TrimPrefix(err.Error(), "mtls/ca: "))
		return
	}
	resp := caproto.SignResponse{}
	for _, c := range chain {
		resp.Chain = append(resp.Chain, c.Raw)
	}
	for _, c := range s.self.bundle.X509Authorities() {
		resp.Bundle = append(resp.Bundle, c.Raw)
	}
	log.Info("certificate issued", zap.String("spiffe_id", id.String()), zap.String("auth", auth),
		zap.String("serial", fmt.Sprintf("%x", chain[0].SerialNumber)), zap.Time("not_after", chain[0].NotAfter),
		zap.Strings("dns", csr.DNSNames))
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

// authenticate says how the client proved it may have id: "certificate
// <its ID>" or "token sha256:<prefix>" (never the token itself).
func (s *Server) authenticate(r *http.Request, id spiffeid.ID) (string, int, error) {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		peer, err := mtls.PeerID(*r.TLS)
		if err != nil {
			return "", http.StatusUnauthorized, err
		}
		if peer != id {
			return "", http.StatusForbidden, fmt.Errorf("the certificate of %s may renew %s only", peer, peer)
		}
		return "certificate " + peer.String(), 0, nil
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return "", http.StatusUnauthorized, errors.New("present your current certificate, or a bootstrap token (Authorization: Bearer)")
	}
	if s.tokens == "" {
		return "", http.StatusUnauthorized, errors.New("bootstrap tokens are off on this CA server; present your current certificate")
	}
	tokens, err := readTokens(s.tokens)
	if err != nil {
		s.log.Error("bootstrap tokens unreadable", zap.Error(err))
		return "", http.StatusInternalServerError, errors.New("the CA server cannot read its bootstrap tokens")
	}
	var allowed spiffeid.ID
	for _, t := range tokens { // every entry compared, in constant time each
		if subtle.ConstantTimeCompare([]byte(t.token), []byte(token)) == 1 {
			allowed = t.id
		}
	}
	sum := sha256.Sum256([]byte(token))
	name := "token sha256:" + hex.EncodeToString(sum[:4])
	switch {
	case allowed.IsZero():
		return "", http.StatusUnauthorized, errors.New("unknown bootstrap token")
	case allowed != id:
		return "", http.StatusForbidden, fmt.Errorf("this bootstrap token is for %s, not %s", allowed, id)
	}
	return name, 0, nil
}

type tokenEntry struct {
	id    spiffeid.ID
	token string
}

func readTokens(path string) ([]tokenEntry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &TokensError{Path: path, Err: err}
	}
	var out []tokenEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, &TokensError{Path: path, Line: n, Err: errors.New("want a SPIFFE ID, a space and a token")}
		}
		id, err := spiffeid.FromString(fields[0])
		if err != nil {
			return nil, &TokensError{Path: path, Line: n, Err: fmt.Errorf("%q: %v", fields[0], err)}
		}
		if len(fields[1]) < MinTokenLength {
			return nil, &TokensError{Path: path, Line: n, Err: fmt.Errorf("token shorter than %d characters; make one with: openssl rand -hex 16", MinTokenLength)}
		}
		out = append(out, tokenEntry{id: id, token: fields[1]})
	}
	return out, sc.Err()
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(caproto.ErrorResponse{Error: msg})
}

// selfSource is the CA server's own certificate, which it issues to
// itself and renews at half its life, when a handshake asks for it (so no
// goroutine is needed).
type selfSource struct {
	ca     *CA
	dns    []string
	bundle *x509bundle.Bundle

	mu      sync.Mutex
	svid    *x509svid.SVID
	renewAt time.Time
}

// selfTTL is the lifetime of the server's own certificate.
const selfTTL = 24 * time.Hour

func (s *selfSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.ca.now()
	if s.svid != nil && now.Before(s.renewAt) {
		return s.svid, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	id := caproto.ServerID(s.ca.td)
	chain, err := s.ca.Issue(id, s.dns, selfTTL, key.Public())
	if err != nil {
		if s.svid != nil {
			return s.svid, nil // keep serving the current one while it lasts
		}
		return nil, err
	}
	s.svid = &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
	s.renewAt = now.Add(chain[0].NotAfter.Sub(now) / 2)
	return s.svid, nil
}

func (s *selfSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.ca.td {
		return nil, fmt.Errorf("no bundle for trust domain %s", td)
	}
	return s.bundle, nil
}
