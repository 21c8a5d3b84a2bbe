// Package mtls holds the mesh's identities and the mutual TLS between
// sidecars (shared/DESIGN.md §6).
//
// A workload's identity is a SPIFFE ID of the form
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> (WorkloadID,
// ParseWorkloadID), carried as the URI SAN of an X.509 certificate. The
// certificate and the trust bundles come from a Source: a directory of PEM
// files that is reloaded when it changes (DirSource, which follows
// Kubernetes' symlink swap), the mesh CA server, renewing short-lived
// certificates at about half their life (CAClientSource), or the SPIFFE
// Workload API (WorkloadAPISource, for SPIRE). ServerConfig and ClientConfig build TLS
// 1.3 configurations that read the Source at every handshake, so a rotated
// certificate or bundle is used at once with no restart and no dropped
// connection; both verify the peer's chain against the bundle of its trust
// domain and then ask an Authorizer whether that identity may talk to us
// (inbound) or is the one we meant to reach (outbound), on full and
// resumed handshakes alike. Reason turns a refused handshake into a short
// label for logs and metrics.
//
// Sessions are resumed (TLS 1.3 PSK) between sidecars, and a session is
// set aside instead of failing when the trust bundle it was verified under
// changes or its peer's certificate is about to expire (session.go); chains
// that verified are remembered, so a resumed handshake costs no more than
// crypto/tls's own (verifycache.go).
//
// Mesh puts these together for the sidecar: over one Source it hands
// package proxy the configs that terminate and originate mesh
// connections, a new server config whenever the certificate or bundle
// changes (so no session ticket outlives a rotation), and one client
// config per identity expected, all sharing a session cache.
//
// The mesh certificate authority that issues these certificates, and its
// server ("meshgate ca serve"), are the sub-package ca.
package mtls
