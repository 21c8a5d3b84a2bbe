package caproto

import (
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SignPath is where a client POSTs a SignRequest.
const SignPath = "/v1/sign"

// SignRequest asks for a certificate.
type SignRequest struct {
	// CSR is a DER PKCS#10 request: the SPIFFE ID as its one URI SAN, the
	// DNS names wanted, and an ECDSA P-256 public key.
	CSR []byte `json:"csr"`
}

// SignResponse is the signed certificate.
type SignResponse struct {
	// Chain is the certificate, then the intermediate, each DER.
	Chain [][]byte `json:"chain"`
	// Bundle is the roots of the trust domain, each DER.
	Bundle [][]byte `json:"bundle"`
}

// ErrorResponse is the body of every refusal.
type ErrorResponse struct {
	Error string `json:"error"`
}

// ServerID is the SPIFFE ID of the CA server of trust domain td: clients
// check that the server they reach has it.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "meshgate", "ca")
}

// MaxRequestBytes bounds a request body.
const MaxRequestBytes = 64 << 10
