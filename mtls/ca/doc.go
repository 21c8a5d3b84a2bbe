// Package ca is the mesh certificate authority (shared/DESIGN.md §6): a
// self-signed root, kept for ten years, and an intermediate, kept for one,
// that signs short-lived workload certificates (X509-SVIDs: the SPIFFE ID
// as URI SAN, ECDSA P-256, usable as TLS client and server).
//
// Init creates the authority in a directory, Load reads it back, and
// Issue signs a workload's public key. The directory holds root.pem,
// root.key, intermediate.pem and intermediate.key; the keys are mode 0600.
// Issuing needs only the intermediate: root.key may be kept offline.
package ca
