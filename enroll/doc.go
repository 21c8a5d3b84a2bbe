// Package enroll enrolls a running workload into the mesh from the host,
// with no restart and no change to it: it starts a sidecar ("meshgate
// proxy") inside the workload's network namespace, waits until the
// sidecar is ready, then applies the redirect rules there (package
// redirect), so nothing is captured before a sidecar can take it. Undo
// removes the rules first, then drains and stops the sidecar.
//
// The sidecar runs detached from the enrolling process; its PID file and
// log are kept in a State directory, so a later Undo finds what Do
// started. "meshgate enroll" and "meshgate demo" use it.
package enroll
