// Package sidecar assembles a whole meshgate sidecar from its parts: the
// proxy (package proxy) on its certificate source (package mtls), the DNS
// proxy and balancer (package discovery) beside it, and the one Prometheus
// registry they all report to. "meshgate proxy" runs it after turning its
// flags into Options; tests may start it the same way.
//
// It tunes the process's garbage collector (GC: Go's GOGC 100 unless the
// user says otherwise, an optional memory limit) and gives free heap back to
// the system after a burst, so that a sidecar's memory follows its
// connections (issue 12).
//
// For Kubernetes (issue 14) it serves the app's rewritten probes on the
// health port (AppProbes, package proxy/appprobe), and, for the classic
// sidecar of a Job, exits with the app (ExitWithApp: it watches the pod's
// shared PID namespace, appwatch.go).
//
// It also holds WaitReady, the one way to wait for a running sidecar to
// be ready, used by enrollment, "meshgate wait", the bench harness and the
// tests.
//
// Errors name the "meshgate proxy" flag that sets the option at fault,
// so the command can print them as they are.
package sidecar
