package mtls

import (
	"crypto/x509"
	"errors"
	"net"
	"strings"
)

// The reasons a peer is refused. Handshake errors from ServerConfig and
// ClientConfig wrap exactly one of them; Reason maps them to labels.
var (
	// ErrNoCertificate: the peer presented no certificate.
	ErrNoCertificate = errors.New("no certificate")
	// ErrUnknownCA: the chain does not lead to a root in the trust bundle
	// of the peer's trust domain.
	ErrUnknownCA = errors.New("certificate signed by an unknown authority")
	// ErrWrongTrustDomain: we hold no trust bundle for the peer's trust
	// domain, or the Authorizer accepts only another one.
	ErrWrongTrustDomain = errors.New("trust domain not accepted")
	// ErrExpired: a certificate of the chain is past its NotAfter.
	ErrExpired = errors.New("certificate expired")
	// ErrNotYetValid: a certificate of the chain is before its NotBefore.
	ErrNotYetValid = errors.New("certificate not yet valid")
	// ErrWrongIdentity: the peer's certificate carries no SPIFFE ID, or
	// the Authorizer refused the one it carries.
	ErrWrongIdentity = errors.New("identity not accepted")
	// ErrBadCertificate: the certificate is unusable for another reason
	// (a CA certificate used as a leaf, a wrong key usage, ...).
	ErrBadCertificate = errors.New("bad certificate")
)

// The labels Reason returns.
const (
	ReasonUnknownCA        = "unknown_ca"
	ReasonWrongTrustDomain = "wrong_trust_domain"
	ReasonExpired          = "expired"
	ReasonNotYetValid      = "not_yet_valid"
	ReasonWrongIdentity    = "wrong_identity"
	ReasonNoCertificate    = "no_certificate"
	ReasonNotTLS13         = "not_tls13"
	ReasonOther            = "other"
)

// Reason classifies a handshake failure for logs and metric labels:
// unknown_ca, wrong_trust_domain, expired, not_yet_valid, wrong_identity,
// no_certificate, not_tls13 or other; "" for a nil error.
//
// It knows the errors of this package's verification, crypto/tls's own
// refusals (a peer without TLS 1.3, a client without a certificate),
// crypto/x509's verification errors, and the alerts a peer sends back,
// so the side that was refused gets a reason too where the alert says one.
// A peer whose verification callback refused us sends only "bad
// certificate", which is other.
func Reason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrNoCertificate):
		return ReasonNoCertificate
	case errors.Is(err, ErrUnknownCA):
		return ReasonUnknownCA
	case errors.Is(err, ErrWrongTrustDomain):
		return ReasonWrongTrustDomain
	case errors.Is(err, ErrExpired):
		return ReasonExpired
	case errors.Is(err, ErrNotYetValid):
		return ReasonNotYetValid
	case errors.Is(err, ErrWrongIdentity):
		return ReasonWrongIdentity
	case errors.Is(err, ErrBadCertificate):
		return ReasonOther
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return ReasonUnknownCA
	}
	if e, ok := errors.AsType[x509.CertificateInvalidError](err); ok && e.Reason == x509.Expired {
		return expiryReason(e)
	}
	// crypto/tls returns its own refusals and the peer's alerts as plain
	// errors (the alert type is unexported), so these are matched by text.
	msg := err.Error()
	if op, ok := errors.AsType[*net.OpError](err); ok && op.Op == "remote error" {
		switch {
		case strings.HasSuffix(msg, "tls: protocol version not supported"):
			return ReasonNotTLS13
		case strings.HasSuffix(msg, "tls: certificate required"):
			return ReasonNoCertificate
		case strings.HasSuffix(msg, "tls: unknown certificate authority"):
			return ReasonUnknownCA
		case strings.HasSuffix(msg, "tls: expired certificate"):
			return ReasonExpired
		}
		return ReasonOther
	}
	switch {
	case strings.Contains(msg, "tls: client offered only unsupported versions"),
		strings.Contains(msg, "tls: client offered TLS version older than TLS 1.3"),
		strings.Contains(msg, "tls: server selected unsupported protocol version"):
		return ReasonNotTLS13
	case strings.Contains(msg, "tls: client didn't provide a certificate"):
		return ReasonNoCertificate
	}
	return ReasonOther
}

// expiryReason tells "expired" from "not yet valid": crypto/x509 reports
// both as Expired, with the difference only in the detail text.
func expiryReason(e x509.CertificateInvalidError) string {
	if strings.Contains(e.Detail, " is before ") {
		return ReasonNotYetValid
	}
	return ReasonExpired
}

// Error is an error of this package: Op says what failed (a certificate
// source that could not start: "cert dir /etc/certs", "workload API
// unix:///run/agent.sock", "CA client"; or "write DIR", "read roots
// FILE"), Err why. A caller that names the thing its own way (a command
// naming its flag) prints Err alone.
type Error struct {
	Op  string
	Err error
}

func (e *Error) Error() string { return "mtls: " + e.Op + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }
