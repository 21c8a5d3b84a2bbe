// Package appprobe answers the app's Kubernetes probes on the sidecar's
// health port (Istio-style probe rewriting, the sidecar's half).
//
// Under strict mTLS, kubelet's plaintext probes to the app's ports would be
// refused by the sidecar, so "meshgate inject" rewrites every httpGet, grpc
// and tcpSocket probe of an app container to an httpGet of the sidecar's
// health port (15021) at /app-health/<container>/<livez|readyz|startupz>,
// and hands the original probes to the sidecar as JSON in
// MESHGATE_APP_PROBES (or --app-probes). For each request to such a path
// the sidecar runs the original probe against the app, from inside the pod
// (127.0.0.1 by default), with the probe's timeout, and answers 200 when it
// passes (HTTP: the app answered 200-399; gRPC: grpc.health.v1 SERVING;
// TCP: it connected) or 503 with the reason.
//
// The probe connections carry the proxy's socket mark (and the sidecar runs
// as the exempt UID), so the capture rules never send them back to the
// sidecar itself.
package appprobe
