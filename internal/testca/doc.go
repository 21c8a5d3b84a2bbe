// Package testca makes throwaway certificate authorities for tests: a root,
// an intermediate that signs workloads, and SPIFFE workload certificates
// (ECDSA P-256, the identity as a URI SAN), built in memory in
// milliseconds. Fixtures with a defect (expired, another trust domain,
// wrong identity) are made by the same calls with other arguments.
package testca
