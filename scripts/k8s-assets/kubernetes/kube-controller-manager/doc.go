// Command kube-controller-manager is Kubernetes' controller manager, built
// like kube-apiserver (in the same module, so the two share their
// dependencies and a warm build only links it) for meshgate's webhook e2e
// test: it runs the Deployment and ReplicaSet controllers, so the test
// reads back a pod that a real ReplicaSet controller created through the
// webhook rather than one the test made from the template.
// Built by scripts/k8s-assets.sh ('make k8s-assets'), outside the repo.
package main
