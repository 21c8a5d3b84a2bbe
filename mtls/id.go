package mtls

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Workload is a mesh identity taken apart: the SPIFFE ID
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> and its
// namespace and service account.
type Workload struct {
	ID             spiffeid.ID
	Namespace      string
	ServiceAccount string
}

// String returns the SPIFFE ID.
func (w Workload) String() string { return w.ID.String() }

// workloadForm is the mesh form of an ID, for error messages.
const workloadForm = "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"

// WorkloadID returns the mesh identity of service account sa in namespace
// ns of trust domain td. Namespace and service account must be valid
// SPIFFE path segments (letters, digits, '.', '-', '_'; not "." or ".."),
// which Kubernetes names always are.
func WorkloadID(td spiffeid.TrustDomain, ns, sa string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, fmt.Errorf("mtls: workload ID: empty trust domain")
	}
	if err := spiffeid.ValidatePathSegment(ns); err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: workload ID: namespace %q: %w", ns, err)
	}
	if err := spiffeid.ValidatePathSegment(sa); err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: workload ID: service account %q: %w", sa, err)
	}
	id, err := spiffeid.FromSegments(td, "ns", ns, "sa", sa)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: workload ID: %w", err)
	}
	return id, nil
}

// ParseWorkloadID parses s as a mesh identity (see WorkloadFromID).
func ParseWorkloadID(s string) (Workload, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return Workload{}, fmt.Errorf("mtls: %q: not a SPIFFE ID (%w); want %s", s, err, workloadForm)
	}
	return WorkloadFromID(id)
}

// WorkloadFromID splits id into namespace and service account. It fails
// for a SPIFFE ID whose path is not exactly /ns/<namespace>/sa/<service-account>.
func WorkloadFromID(id spiffeid.ID) (Workload, error) {
	if id.IsZero() {
		return Workload{}, fmt.Errorf("mtls: empty SPIFFE ID; want %s", workloadForm)
	}
	// spiffeid has validated the path: segments are non-empty and are not
	// "." or "..", so splitting on "/" is exact.
	parts := strings.Split(id.Path(), "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return Workload{}, fmt.Errorf("mtls: %q: not a workload ID; want %s", id, workloadForm)
	}
	return Workload{ID: id, Namespace: parts[2], ServiceAccount: parts[4]}, nil
}
