// Package caproto is the wire protocol between "meshgate ca serve"
// (package mtls/ca) and the sidecars that get their certificates from it
// (mtls.CAClientSource): JSON over HTTPS, TLS 1.3.
//
// A client sends a PKCS#10 certificate signing request for its SPIFFE ID,
// made with a fresh ECDSA P-256 key that never leaves it, to SignPath. It
// authenticates either with the certificate it holds (mutual TLS: a client
// may renew its own identity only) or, for its first certificate, with a
// bootstrap token (Authorization: Bearer) that names the identity it may
// obtain. The answer is the signed chain and the trust bundle, which is how
// a new root reaches every client during a root rotation.
package caproto
