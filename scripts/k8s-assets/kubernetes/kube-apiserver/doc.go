// Command kube-apiserver is Kubernetes' API server, built from the Go module
// proxy for meshgate's webhook e2e test (issue 14): no binary can be
// downloaded on the machines the tests run on, but the module proxy is
// reachable. The module's go.mod (one directory up, shared with
// kube-controller-manager) replaces every k8s.io/* staging module, which
// k8s.io/kubernetes requires at v0.0.0, with the same release (v0.37.2).
// Built by scripts/k8s-assets.sh ('make k8s-assets'), outside the repo.
package main
