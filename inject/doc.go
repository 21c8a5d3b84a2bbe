// Package inject adds meshgate to Kubernetes workloads: the init container
// that installs the capture rules (meshgate-init), the sidecar
// (meshgate-proxy, a native sidecar by default), its certificate volumes,
// and the rewriting of HTTP, gRPC and TCP probes to the sidecar's health
// port so that they keep working under strict mTLS (the sidecar runs the
// original probe against the app, see MESHGATE_APP_PROBES).
//
// Manifests works on YAML as generic data (maps and slices), so every field
// it does not know survives untouched and the package needs no Kubernetes
// client libraries: "meshgate inject -f FILE" uses it. Webhook serves the
// same mutation as a Kubernetes mutating admission webhook
// (AdmissionReview v1 in, JSON Patch out): "meshgate inject serve".
//
// Injection is idempotent: an injected object is first stripped of what a
// previous injection added (its containers, volumes and annotations; its
// probes restored from the sidecar's MESHGATE_APP_PROBES), then injected
// again, so injecting twice, or again with other flags, equals injecting
// once with the last flags.
//
// The contract with the sidecar and the init container (names, ports,
// paths, environment) is that of issue 14's plan; this package only emits
// it.
package inject
